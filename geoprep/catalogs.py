"""Candidate STAC items for many locations at once: STAC APIs, stac-geoparquet, static catalogs.

Every catalog answers `candidates(locations, collection, start, end, ...)`: for each location id,
the items whose footprint contains the point and whose datetime lies in [start, end], ordered by
(datetime, id). A builder that knows several slots per location asks once per batch, either over
the union range (`scenes.slots_span`) and filters per slot with `scenes.rank`, or with
`candidates_in_windows`, which takes each location's own windows (a STAC API then searches only
those windows, tile by tile, instead of the whole span). Items keep their unsigned hrefs; call
`sign` right before reading and never write or log what it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cql2
import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import planetary_computer
import pyarrow as pa
import pyarrow.dataset as pads
import pystac
import requests
import shapely
from planetary_computer.sas import get_token
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import shape
from urllib3.util.retry import Retry

from geoprep.errors import SourceError, UserError
from geoprep.scenes import item_datetime
from geoprep.signing import unsigned_href as unsigned_href
from geoprep.specs import CatalogSpec
from geoprep.storage import is_local, local_path

log = logging.getLogger(__name__)

CLOUD_KEY = "eo:cloud_cover"
Window = tuple[dt.datetime, dt.datetime]

#: Planetary Computer collections whose items do / do not carry eo:cloud_cover. A CQL2 filter on
#: a property the items lack matches nothing, so it is only sent where the property exists.
KNOWN_CLOUD_COVER: dict[str, bool] = {
    "sentinel-2-l2a": True,
    "landsat-c2-l2": True,
    "landsat-c2-l1": True,
    "hls2-s30": True,
    "hls2-l30": True,
    "naip": False,
    "sentinel-1-rtc": False,
    "sentinel-1-grd": False,
}


def utc_time(value: dt.date | dt.datetime | str, end_of_day: bool = False) -> dt.datetime:
    """An aware UTC datetime; a bare date means its first instant (or last, with end_of_day)."""
    if isinstance(value, str):
        text = value.strip()
        value = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
    if not isinstance(value, dt.datetime):
        day = value + dt.timedelta(days=1) if end_of_day else value
        moment = dt.datetime.combine(day, dt.time(0, tzinfo=dt.UTC))
        return moment - dt.timedelta(microseconds=1) if end_of_day else moment
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def as_points(locations: pd.DataFrame) -> gpd.GeoDataFrame:
    """`id` and point `geometry` (EPSG:4326) of a location table with a geometry or lat/lon."""
    if "id" not in locations.columns:
        raise UserError("locations need an 'id' column")
    if isinstance(locations, gpd.GeoDataFrame) and locations.geometry.name in locations.columns:
        geometry = locations.geometry.to_crs(4326) if locations.crs else locations.geometry
        geometry = gpd.GeoSeries(geometry.to_numpy(), crs=4326)
    elif {"lat", "lon"} <= set(locations.columns):
        geometry = gpd.GeoSeries(gpd.points_from_xy(locations["lon"], locations["lat"]), crs=4326)
    else:
        raise UserError("locations need a point geometry or 'lat' and 'lon' columns")
    return gpd.GeoDataFrame({"id": locations["id"].astype(str).to_numpy()}, geometry=geometry)


def cloud_filter(max_cloud_cover: float) -> dict[str, Any]:
    return {"op": "<=", "args": [{"property": CLOUD_KEY}, max_cloud_cover]}


def _needs_cloud_filter(max_cloud_cover: float | None) -> bool:
    return max_cloud_cover is not None and max_cloud_cover < 100


def _checked_filter(extra_filter: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if extra_filter is None:
        return None
    try:
        cql2.Expr(dict(extra_filter)).validate()
    except Exception as error:  # cql2 raises its own ValidationError and plain ValueErrors
        raise UserError(
            f"sensor filter {json.dumps(extra_filter)} is not valid CQL2-JSON: {error}"
        ) from None
    return dict(extra_filter)


def _footprints(times: Any, clouds: Any, item_ids: Any, geometry: Any) -> gpd.GeoDataFrame:
    """The footprint table `match_footprints` takes: time (UTC), cloud (float), item_id."""
    return gpd.GeoDataFrame(
        {"time": pd.to_datetime(times, utc=True), "cloud": clouds, "item_id": item_ids},
        geometry=geometry,
        crs=4326,
    )


def _footprint_frame(items: Sequence[pystac.Item]) -> gpd.GeoDataFrame:
    """One row per item: geometry, time, cloud (NaN where absent), item_id; row = position."""
    clouds = [item.properties.get(CLOUD_KEY) for item in items]
    return _footprints(
        [item_datetime(item) for item in items],
        np.array([np.nan if c is None else float(c) for c in clouds], dtype=float),
        [item.id for item in items],
        [shape(item.geometry) if item.geometry else None for item in items],
    )


def _nanoseconds(values: Any) -> np.ndarray:
    """Times as int64 nanoseconds since 1970 (UTC): fast to compare, merge and sort."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


def _window_frame(windows: Mapping[str, Sequence[Window]]) -> pd.DataFrame:
    rows = [(loc, start, end) for loc, spans in windows.items() for start, end in spans]
    ids, starts, ends = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {"id": list(ids), "start": _nanoseconds(list(starts)), "end": _nanoseconds(list(ends))}
    )


def match_footprints(
    points: gpd.GeoDataFrame,
    footprints: gpd.GeoDataFrame,
    windows: Mapping[str, Sequence[Window]],
    max_cloud_cover: float | None,
) -> pd.DataFrame:
    """(id, row) pairs: footprint row contains the point, time in one of the location's windows.

    `footprints` has geometry, time, cloud (NaN where absent) and item_id, one row per item. One
    spatial join for all points; items without cloud cover pass the cloud limit. Pairs are
    ordered by location (as in `points`), then time, then item id.
    """
    footprints = footprints.reset_index(drop=True)
    times = _nanoseconds(footprints["time"])
    usable = footprints.geometry.notna().to_numpy() & footprints["time"].notna().to_numpy()
    joined = gpd.sjoin(
        points[["id", "geometry"]], footprints.loc[usable, ["geometry"]], predicate="intersects"
    )
    rows = joined["index_right"].to_numpy()
    pairs = pd.DataFrame({"id": joined["id"].to_numpy(), "row": rows, "time": times[rows]})
    merged = pairs.merge(_window_frame(windows), on="id")
    inside = (merged["time"] >= merged["start"]) & (merged["time"] <= merged["end"])
    hits = merged.loc[inside, ["id", "row", "time"]].drop_duplicates(["id", "row"])
    if _needs_cloud_filter(max_cloud_cover):
        cloud = footprints["cloud"].to_numpy()[hits["row"].to_numpy()]
        hits = hits[np.isnan(cloud) | (cloud <= max_cloud_cover)]
    order = {loc: index for index, loc in enumerate(points["id"].tolist())}
    hits = hits.assign(
        item_id=footprints["item_id"].to_numpy()[hits["row"].to_numpy()],
        order=hits["id"].map(order),
    )
    return hits.sort_values(["order", "time", "item_id"], kind="stable")[["id", "row"]]


class Catalog(ABC):
    """Finds candidate items for a batch of locations; see the module docstring."""

    #: True where the catalog applies the sensor's extra CQL2 filter itself (a STAC API).
    filters_on_server = False

    def __init__(self, spec: CatalogSpec) -> None:
        self.spec = spec

    def candidates(
        self,
        locations: pd.DataFrame,
        collection: str,
        start: dt.date | dt.datetime | str,
        end: dt.date | dt.datetime | str,
        max_cloud_cover: float | None = None,
        extra_filter: Mapping[str, Any] | None = None,
    ) -> dict[str, list[pystac.Item]]:
        """For every location id, the items over the point in [start, end] (dates: whole days)."""
        window = (utc_time(start), utc_time(end, end_of_day=True))
        windows = {loc: [window] for loc in locations["id"].astype(str).tolist()}
        return self.candidates_in_windows(
            locations, collection, windows, max_cloud_cover, extra_filter
        )

    def candidates_in_windows(
        self,
        locations: pd.DataFrame,
        collection: str,
        windows: Mapping[str, Sequence[Window]],
        max_cloud_cover: float | None = None,
        extra_filter: Mapping[str, Any] | None = None,
    ) -> dict[str, list[pystac.Item]]:
        """Like `candidates`, with each location's own (start, end) windows, e.g. its slots
        (`Slot.window`); a STAC API searches only these windows."""
        points = as_points(locations)
        ids = points["id"].tolist()
        missing = set(ids) - set(windows)
        if missing:
            raise ValueError(f"no time windows for locations {sorted(missing)[:5]}")
        windows = {
            loc: [(utc_time(s), utc_time(e, end_of_day=True)) for s, e in windows[loc]]
            for loc in ids
        }
        found = self._find(
            points, collection, windows, max_cloud_cover, _checked_filter(extra_filter)
        )
        if extra_filter is not None and not self.filters_on_server:
            found = _apply_filter(found, extra_filter)
        return {loc: found.get(loc, []) for loc in ids}

    @abstractmethod
    def _find(
        self,
        points: gpd.GeoDataFrame,
        collection: str,
        windows: dict[str, list[Window]],
        max_cloud_cover: float | None,
        extra_filter: dict[str, Any] | None,
    ) -> dict[str, list[pystac.Item]]: ...

    def sign(self, item: pystac.Item) -> pystac.Item:
        """A copy of `item` whose asset hrefs can be read (Planetary Computer); else `item`."""
        if self.spec.provider != "planetary-computer":
            return item
        try:
            return planetary_computer.sign(item)
        except requests.RequestException as error:
            raise SourceError(
                f"could not get a SAS token for item {item.id}: {type(error).__name__} "
                f"({getattr(error.response, 'status_code', 'no answer')})"
            ) from None


def _apply_filter(
    found: dict[str, list[pystac.Item]], extra_filter: Mapping[str, Any]
) -> dict[str, list[pystac.Item]]:
    expr = cql2.Expr(dict(extra_filter))
    verdicts: dict[str, bool] = {}

    def passes(item: pystac.Item) -> bool:
        if item.id not in verdicts:
            document = {
                "id": item.id,
                "collection": item.collection_id,
                "properties": item.properties,
            }
            try:
                verdicts[item.id] = bool(expr.matches(document))
            except Exception:  # a property the item lacks: the filter does not match it
                verdicts[item.id] = False
        return verdicts[item.id]

    return {loc: [item for item in items if passes(item)] for loc, items in found.items()}


def _group_hits(hits: pd.DataFrame, item_at: Any) -> dict[str, list[pystac.Item]]:
    found: dict[str, list[pystac.Item]] = defaultdict(list)
    for loc, row in zip(hits["id"].tolist(), hits["row"].tolist(), strict=True):
        found[loc].append(item_at(row))
    return found


def merge_windows(windows: Iterable[Window]) -> list[Window]:
    """Overlapping or touching windows merged into disjoint ones, in time order."""
    merged: list[list[dt.datetime]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


class StacApiCatalog(Catalog):
    """A STAC API searched with pystac-client, one search per tile of nearby locations.

    Locations are grouped on a `tile_degrees` grid; each group is searched once per merged time
    window over the bounding box of its points (paging with `limit` = page_size), and the items
    are assigned to points by footprint. The eo:cloud_cover limit is sent as a CQL2-JSON filter
    only where the collection's items carry it (`KNOWN_CLOUD_COVER`, else the collection's
    queryables); otherwise it is applied to the returned items. Requests answered 429 or 5xx
    are retried `retries` times with exponential backoff (`backoff_factor` seconds, doubling).
    """

    filters_on_server = True

    def __init__(
        self,
        spec: CatalogSpec,
        tile_degrees: float = 0.5,
        retries: int = 6,
        backoff_factor: float = 1.0,
        timeout: float = 120.0,
    ) -> None:
        super().__init__(spec)
        if tile_degrees <= 0:
            raise UserError(f"tile_degrees must be positive, got {tile_degrees}")
        self.tile_degrees = tile_degrees
        self.retries = retries
        self.backoff_factor = backoff_factor
        self.timeout = timeout
        self._client: Client | None = None
        self._has_cloud: dict[str, bool] = {}
        self._collections: set[str] = set()

    @property
    def client(self) -> Client:
        if self._client is None:
            retry = Retry(
                total=self.retries,
                backoff_factor=self.backoff_factor,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=None,  # searches are POSTs, which urllib3 does not retry by default
                raise_on_status=False,  # the last answer reaches pystac-client, which reports it
            )
            stac_io = StacApiIO(max_retries=retry, timeout=self.timeout)
            try:
                self._client = Client.open(self.spec.url, stac_io=stac_io)
            except APIError as error:
                raise SourceError(f"STAC API {self.spec.url} did not open: {error}") from None
        return self._client

    def _check_collection(self, collection: str) -> None:
        # A search of a collection the API lacks finds nothing, which would look like no imagery.
        if collection in self._collections:
            return
        try:
            found = self.client.get_collection(collection)  # None when the API answers 404
        except APIError as error:
            raise SourceError(
                f"STAC API {self.spec.url}: collection {collection}: {error}"
            ) from None
        if found is None:
            raise UserError(f"collection {collection!r} is not in the STAC API {self.spec.url}")
        self._collections.add(collection)

    def has_cloud_cover(self, collection: str) -> bool:
        """Whether a cloud-cover filter can be sent for `collection` (see the class docstring)."""
        if collection in KNOWN_CLOUD_COVER:
            return KNOWN_CLOUD_COVER[collection]
        if collection not in self._has_cloud:
            try:
                queryables = self.client.get_merged_queryables([collection])
            except Exception as error:  # no filter extension, no queryables: decide client-side
                log.debug("no queryables for %s: %s", collection, error)
                queryables = {}
            self._has_cloud[collection] = CLOUD_KEY in (queryables.get("properties") or {})
        return self._has_cloud[collection]

    def _find(
        self,
        points: gpd.GeoDataFrame,
        collection: str,
        windows: dict[str, list[Window]],
        max_cloud_cover: float | None,
        extra_filter: dict[str, Any] | None,
    ) -> dict[str, list[pystac.Item]]:
        self._check_collection(collection)
        clauses = [] if extra_filter is None else [extra_filter]
        if _needs_cloud_filter(max_cloud_cover) and self.has_cloud_cover(collection):
            clauses.insert(0, cloud_filter(max_cloud_cover))
        server_filter = {"op": "and", "args": clauses} if len(clauses) > 1 else None
        if len(clauses) == 1:
            server_filter = clauses[0]
        tiles = points.assign(
            tile_y=np.floor(points.geometry.y / self.tile_degrees),
            tile_x=np.floor(points.geometry.x / self.tile_degrees),
        )
        found: dict[str, list[pystac.Item]] = {}
        for _, tile in tiles.groupby(["tile_y", "tile_x"], sort=True):
            tile_windows = {loc: windows[loc] for loc in tile["id"].tolist()}
            pad = 1e-5  # a point's box has no area; some servers reject or miss those
            west, south, east, north = tile.total_bounds
            bbox = [west - pad, south - pad, east + pad, north + pad]
            items: dict[str, pystac.Item] = {}
            for start, end in merge_windows(w for spans in tile_windows.values() for w in spans):
                for item in self._search(collection, bbox, start, end, server_filter):
                    items.setdefault(item.id, item)
            if not items:
                continue
            listed = list(items.values())
            hits = match_footprints(tile, _footprint_frame(listed), tile_windows, max_cloud_cover)
            found.update(_group_hits(hits, listed.__getitem__))
        return found

    def _search(
        self,
        collection: str,
        bbox: list[float],
        start: dt.datetime,
        end: dt.datetime,
        server_filter: dict[str, Any] | None,
    ) -> list[pystac.Item]:
        options: dict[str, Any] = {}
        if server_filter is not None:
            options = {"filter": server_filter, "filter_lang": "cql2-json"}
        try:
            search = self.client.search(
                collections=[collection],
                bbox=bbox,
                datetime=[start, end],
                limit=self.spec.page_size,
                **options,
            )
            items = list(search.items())
        except APIError as error:
            status = getattr(error, "status_code", None)
            raise SourceError(
                f"STAC API {self.spec.url}: search of {collection} in {bbox} failed"
                f"{f' with HTTP {status}' if status else ''}: {str(error)[:300]}"
            ) from None
        log.debug("%s %s %s/%s: %d items", collection, bbox, start, end, len(items))
        return items


@dataclass
class _Table:
    """The slim columns of a collection's stac-geoparquet rows over [start, end], and its items."""

    dataset: pads.Dataset
    start: dt.datetime
    end: dt.datetime
    footprints: gpd.GeoDataFrame
    items: dict[str, pystac.Item]


class GeoParquetCatalog(Catalog):
    """stac-geoparquet files (one file or a directory of parts), matched in one spatial join.

    Reads only id, datetime, geometry and eo:cloud_cover of the rows in the requested time range
    (row groups outside it are skipped by their statistics), joins all locations against the
    footprints at once, then reads the full rows of the matched items only. Loaded tables are
    cached per (url, collection) and grow to cover later time ranges. Both layouts are read:
    `bbox` as a struct (current spec) or a list (2023 files), `assets` as a struct or JSON.
    """

    def __init__(self, spec: CatalogSpec, storage_options: Mapping[str, Any] | None = None):
        super().__init__(spec)
        self.storage_options = dict(storage_options or {})
        self._tables: dict[tuple[str, str], _Table] = {}

    def url_for(self, collection: str) -> str:
        return self.spec.url.replace("{collection}", collection)

    def _open(self, url: str) -> pads.Dataset:
        options = dict(self.storage_options)
        scheme = urlsplit(url).scheme
        if self.spec.provider == "planetary-computer" and scheme in ("abfs", "az"):
            if "credential" not in options:
                account = options.setdefault("account_name", "pcstacitems")
                options["credential"] = get_token(account, urlsplit(url).netloc).token
        try:
            # Local files go to pyarrow's own filesystem; URLs through fsspec.
            filesystem, path = (
                (None, str(local_path(url)))
                if is_local(url)
                else fsspec.core.url_to_fs(url, **options)
            )
            first = pads.dataset(path, filesystem=filesystem, format="parquet")
            # Parts written years apart differ in their columns: read them under one schema.
            schemas = [fragment.physical_schema for fragment in first.get_fragments()]
            if not schemas:
                raise FileNotFoundError(f"no parquet files under {url}")
            schema = pa.unify_schemas(schemas, promote_options="permissive")
            return pads.dataset(path, filesystem=filesystem, format="parquet", schema=schema)
        except (OSError, ImportError, ValueError, pa.ArrowException) as error:
            raise UserError(f"catalog url {url}: cannot read stac-geoparquet ({error})") from None

    def _rows(
        self, dataset: pads.Dataset, collection: str, start: dt.datetime, end: dt.datetime
    ) -> pads.Expression:
        names = dataset.schema.names
        for needed in ("id", "geometry", "datetime"):
            if needed not in names:
                raise UserError(f"stac-geoparquet {self.url_for(collection)} lacks column {needed}")
        time_type = dataset.schema.field("datetime").type
        time = pads.field("datetime")
        rows = (time >= pa.scalar(start, type=time_type)) & (time <= pa.scalar(end, type=time_type))
        if "collection" in names:
            rows &= pads.field("collection") == collection
        return rows

    def _table(self, collection: str, start: dt.datetime, end: dt.datetime) -> _Table:
        key = (self.url_for(collection), collection)
        table = self._tables.get(key)
        if table is not None and table.start <= start and end <= table.end:
            return table
        if table is not None:
            start, end = min(start, table.start), max(end, table.end)
        dataset = table.dataset if table is not None else self._open(key[0])
        if dataset.schema.field("geometry").type not in (pa.binary(), pa.large_binary()):
            raise UserError(f"stac-geoparquet {key[0]}: geometry is not WKB")
        columns = ["id", "datetime", "geometry"]
        columns += [CLOUD_KEY] if CLOUD_KEY in dataset.schema.names else []
        slim = dataset.to_table(columns=columns, filter=self._rows(dataset, collection, start, end))
        cloud = (
            slim[CLOUD_KEY].to_pandas()
            if CLOUD_KEY in columns
            else pd.Series(np.nan, range(len(slim)))
        )
        footprints = _footprints(
            slim["datetime"].to_pandas(),
            pd.to_numeric(cloud, errors="coerce").to_numpy(dtype=float),
            slim["id"].to_pandas().to_numpy(),
            shapely.from_wkb(slim["geometry"].to_numpy(zero_copy_only=False)),
        )
        log.debug("%s: %d rows for %s/%s", key[0], len(footprints), start, end)
        items = table.items if table is not None else {}
        self._tables[key] = _Table(dataset, start, end, footprints, items)
        return self._tables[key]

    def _materialize(self, table: _Table, collection: str, ids: Iterable[str]) -> None:
        needed = sorted(set(ids) - set(table.items))
        if not needed:
            return
        rows = self._rows(table.dataset, collection, table.start, table.end)
        rows &= pads.field("id").isin(needed)
        for record in table.dataset.to_table(filter=rows).to_pylist():
            item = item_from_row(record)
            table.items[item.id] = item

    def _find(
        self,
        points: gpd.GeoDataFrame,
        collection: str,
        windows: dict[str, list[Window]],
        max_cloud_cover: float | None,
        extra_filter: dict[str, Any] | None,
    ) -> dict[str, list[pystac.Item]]:
        spans = [span for spans in windows.values() for span in spans]
        if not spans:
            return {}
        table = self._table(collection, min(s for s, _ in spans), max(e for _, e in spans))
        hits = match_footprints(points, table.footprints, windows, max_cloud_cover)
        item_ids = table.footprints["item_id"].to_numpy()
        self._materialize(table, collection, item_ids[hits["row"].to_numpy()])
        return _group_hits(hits, lambda row: table.items[item_ids[row]])


_TOP_LEVEL = {"type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links"}
_TOP_LEVEL |= {"assets", "collection"}


def _plain(value: Any) -> Any:
    """A JSON value from a pyarrow row value; nulls of absent struct fields are dropped."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return pystac.utils.datetime_to_str(utc_time(value))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bbox(value: Any) -> list[float] | None:
    if isinstance(value, dict):  # current spec: {xmin, ymin, [zmin,] xmax, ymax, [zmax]}
        axes = ("x", "y", "z") if value.get("zmin") is not None else ("x", "y")
        return [value[f"{a}min"] for a in axes] + [value[f"{a}max"] for a in axes]
    return None if value is None else list(value)


def _json_or_plain(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else _plain(value)


def item_from_row(record: Mapping[str, Any]) -> pystac.Item:
    """The STAC item of one stac-geoparquet row (properties are the non-reserved columns)."""
    properties = {
        key: _plain(value)
        for key, value in record.items()
        if key not in _TOP_LEVEL and not key.startswith("__") and value is not None
    }
    geometry = record.get("geometry")
    if isinstance(geometry, bytes | bytearray):
        geometry = json.loads(shapely.to_geojson(shapely.from_wkb(geometry)))
    document = {
        "type": "Feature",
        "stac_version": record.get("stac_version") or pystac.get_stac_version(),
        "stac_extensions": list(record.get("stac_extensions") or []),
        "id": record["id"],
        "geometry": geometry,
        "bbox": _bbox(record.get("bbox")),
        "properties": properties,
        # Root, parent and collection links lead to the API: pystac would fetch them to write
        # the item out (relative hrefs), so only the item's own links are kept.
        "links": [
            link
            for link in _json_or_plain(record.get("links")) or []
            if link.get("rel") not in ("root", "parent", "collection")
        ],
        "assets": _json_or_plain(record.get("assets")) or {},
    }
    if record.get("collection"):
        document["collection"] = record["collection"]
    return pystac.Item.from_dict(document, preserve_dict=False)


class StaticCatalog(Catalog):
    """A static STAC catalog (catalog.json and its children): all items of a collection, once."""

    def __init__(self, spec: CatalogSpec) -> None:
        super().__init__(spec)
        self._loaded: dict[str, tuple[list[pystac.Item], gpd.GeoDataFrame]] = {}

    def _load(self, collection: str) -> tuple[list[pystac.Item], gpd.GeoDataFrame]:
        if collection not in self._loaded:
            try:
                root = pystac.Catalog.from_file(self.spec.url)
                collections = {c.id: c for c in root.get_all_collections()}
            except (OSError, pystac.STACError, json.JSONDecodeError) as error:
                raise UserError(
                    f"catalog url {self.spec.url}: not a STAC catalog ({error})"
                ) from None
            if collection not in collections:
                raise UserError(
                    f"collection {collection!r} is not in {self.spec.url}; it has "
                    f"{sorted(collections)}"
                )
            items = sorted(collections[collection].get_items(recursive=True), key=lambda i: i.id)
            for item in items:
                item.make_asset_hrefs_absolute()
            self._loaded[collection] = (items, _footprint_frame(items))
        return self._loaded[collection]

    def _find(
        self,
        points: gpd.GeoDataFrame,
        collection: str,
        windows: dict[str, list[Window]],
        max_cloud_cover: float | None,
        extra_filter: dict[str, Any] | None,
    ) -> dict[str, list[pystac.Item]]:
        items, footprints = self._load(collection)
        if not items:
            return {}
        hits = match_footprints(points, footprints, windows, max_cloud_cover)
        return _group_hits(hits, items.__getitem__)


def open_catalog(spec: CatalogSpec, **options: Any) -> Catalog:
    """The catalog `spec` describes; `options` go to its class (e.g. tile_degrees, retries,
    backoff_factor, timeout for a STAC API; storage_options for geoparquet)."""
    if spec.kind == "stac-api":
        return StacApiCatalog(spec, **options)
    if spec.kind == "geoparquet":
        return GeoParquetCatalog(spec, **options)
    return StaticCatalog(spec, **options)

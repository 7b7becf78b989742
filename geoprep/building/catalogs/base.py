"""The Catalog contract and the footprint, time-window and filter helpers all catalogs share.

Every catalog answers `candidates(locations, collection, start, end, ...)`: for each location id,
the items whose footprint contains the point and whose datetime lies in [start, end], ordered by
(datetime, id). A builder that knows several slots per location asks once per batch, either over
the union range (`scenes.slots_span`) and filters per slot with `scenes.rank`, or with
`candidates_in_windows`, which takes each location's own windows (a STAC API then searches only
those windows tile by tile, or, given the build's envelope of windows, each tile once over it).
Items keep their unsigned hrefs; call `sign` right before reading and never write or log what
it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import cql2
import geopandas as gpd
import numpy as np
import pandas as pd
import planetary_computer.settings as pc_settings
import planetary_computer.utils as pc_utils
import pystac
import requests
from planetary_computer import sas as pc_sas
from shapely.geometry import shape

from geoprep.building.faults import ReadFailure
from geoprep.building.scenes import item_datetime
from geoprep.core.errors import UserError
from geoprep.recipe.sections import CatalogSpec

CLOUD_KEY = "eo:cloud_cover"
Window = tuple[dt.datetime, dt.datetime]


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


def needs_cloud_filter(max_cloud_cover: float | None) -> bool:
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


def footprint_table(times: Any, clouds: Any, item_ids: Any, geometry: Any) -> gpd.GeoDataFrame:
    """The footprint table `match_footprints` takes: time (UTC), cloud (float), item_id."""
    return gpd.GeoDataFrame(
        {"time": pd.to_datetime(times, utc=True), "cloud": clouds, "item_id": item_ids},
        geometry=geometry,
        crs=4326,
    )


def footprint_frame(items: Sequence[pystac.Item]) -> gpd.GeoDataFrame:
    """One row per item: geometry, time, cloud (NaN where absent), item_id; row = position."""
    clouds = [item.properties.get(CLOUD_KEY) for item in items]
    return footprint_table(
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
    if needs_cloud_filter(max_cloud_cover):
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
        self._signed: dict[tuple[str | None, str], tuple[pystac.Item, pystac.Item, dict]] = {}

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
        envelope: Sequence[Window] | None = None,
    ) -> dict[str, list[pystac.Item]]:
        """Like `candidates`, with each location's own (start, end) windows, e.g. its slots
        (`Slot.window`); a STAC API searches only these windows. `envelope`, when given, holds
        the windows of every batch of the build (`scenes.slots_envelope`): a STAC API then
        searches a tile whose windows fill enough of it once over it, and keeps the answer for
        the later batches. The items found are the same either way."""
        points = as_points(locations)
        ids = points["id"].tolist()
        missing = set(ids) - set(windows)
        if missing:
            raise ValueError(f"no time windows for locations {sorted(missing)[:5]}")
        windows = {
            loc: [(utc_time(s), utc_time(e, end_of_day=True)) for s, e in windows[loc]]
            for loc in ids
        }
        if envelope is not None:
            envelope = [(utc_time(s), utc_time(e, end_of_day=True)) for s, e in envelope]
        found = self._find(
            points, collection, windows, max_cloud_cover, _checked_filter(extra_filter), envelope
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
        envelope: list[Window] | None,
    ) -> dict[str, list[pystac.Item]]: ...

    def sign(self, item: pystac.Item, fresh: bool = False) -> pystac.Item:
        """A copy of `item` whose asset hrefs can be read (Planetary Computer); else `item`.

        `fresh` asks for new tokens (after a 403). A failure to get a token is a `ReadFailure`:
        transient for 429/5xx, systemic-looking (the breaker decides) when nothing answers.
        """
        if self.spec.provider != "planetary-computer":
            return item
        # A signed copy is kept while its tokens are fresh: the slots and neighbours reading a
        # scene sign it once (a copy of an item with all its assets costs more than a read).
        key = (item.collection_id, item.id)
        kept = self._signed.get(key)
        if kept is not None and not fresh and kept[0] is item:
            if all(token.ttl() >= 60 for token in kept[2].values()):  # the SDK's margin
                return kept[1]
        signed = item.clone()
        tokens: dict[tuple[str, str], pc_sas.SASToken] = {}
        for asset in signed.assets.values():
            parts = urlsplit(asset.href)
            if not (parts.hostname or "").endswith(BLOB_HOST) or _is_signed(parts.query):
                continue
            if parts.hostname in PUBLIC_BLOB_HOSTS:  # readable without a token
                continue
            container = pc_utils.parse_blob_url(parts)
            if container not in tokens:
                tokens[container] = _token(*container, fresh)
            asset.href = tokens[container].sign(asset.href).href
        if len(self._signed) >= SIGNED_ITEMS_KEPT:
            self._signed.clear()
        self._signed[key] = (item, signed, tokens)
        return signed

    def asset_names(self, collection: str) -> set[str] | None:
        """The asset keys of the collection's items (None: this catalog cannot tell cheaply)."""
        return None

    def forget(self) -> None:
        """Drop what the catalog kept from earlier calls (signed items; a STAC API's answers):
        a new build asks the sources again, as a new process would."""
        self._signed.clear()


BLOB_HOST = ".blob.core.windows.net"
#: Signed copies of items a catalog keeps (per process; a few MB).
SIGNED_ITEMS_KEPT = 4096
#: Planetary Computer's public assets (thumbnails): signing leaves them alone.
PUBLIC_BLOB_HOSTS = frozenset({"ai4edatasetspublicassets.blob.core.windows.net"})


def _is_signed(query: str) -> bool:
    return bool({"st", "se", "sp"} & {pair.partition("=")[0] for pair in query.split("&")})


#: (connect, read) seconds for one token request: a stalled token service fails the request (and,
#: repeated, trips the breaker) instead of hanging the build.
TOKEN_TIMEOUT_S = (10.0, 30.0)


def _token(account: str, container: str, fresh: bool) -> pc_sas.SASToken:
    """The SAS token of one container, from planetary_computer's cache (renewed when it nears its
    expiry, or when `fresh`): one request, no retries of its own; retries, backoff and the
    breaker are the caller's.

    The request is `planetary_computer.sas.get_token`'s (same URL, key header and cache), sent
    here because the SDK sends it without a time-out and retries for minutes."""
    url = f"{pc_settings.Settings.get().sas_url}/{account}/{container}"
    cached = pc_sas.TOKEN_CACHE.get(url)
    if cached is not None and not fresh and cached.ttl() >= 60:  # the SDK's margin
        return cached
    key = pc_settings.Settings.get().subscription_key
    headers = {"Ocp-Apim-Subscription-Key": key} if key else None
    try:
        response = requests.get(url, headers=headers, timeout=TOKEN_TIMEOUT_S)
        response.raise_for_status()
        token = pc_sas.SASToken(**response.json())
    except requests.RequestException as error:
        raise token_failure(error, url) from None
    except (ValueError, TypeError) as error:  # an answer cut short or not a token
        raise ReadFailure(
            f"could not get a SAS token from {url}: unusable answer ({error})",
            "token unusable answer",
            fix="is PC_SDK_SAS_URL right?",
        ) from None
    pc_sas.TOKEN_CACHE[url] = token
    return token


def token_failure(error: requests.RequestException, url: str) -> ReadFailure:
    """The `ReadFailure` for a token request that failed."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    # the SDK's retry settings turn a 429/5xx answer into "too many 503 error responses"
    if status is None and (found := re.search(r"too many (\d{3}) error", str(error))):
        status = int(found.group(1))
    if status is not None:
        transient = status == 429 or status >= 500
        return ReadFailure(
            f"could not get a SAS token from {url}: HTTP {status}",
            f"token HTTP {status}",
            retry=transient,
            fix="the token service is down or throttling; try again later (the build resumes)"
            if transient
            else "is PC_SDK_SAS_URL (or PC_SDK_SUBSCRIPTION_KEY) right?",
        )
    text = str(error)
    if isinstance(error, requests.ConnectionError) and "refused" in text.lower():
        reason = "connection refused"
    elif "resolve" in text.lower() or "Name or service" in text:
        reason = "name not resolved"
    elif isinstance(error, requests.Timeout):
        reason = "timed out"
    else:
        reason = type(error).__name__
    return ReadFailure(
        f"could not get a SAS token from {url}: {reason}",
        f"token {reason}",
        fix="is PC_SDK_SAS_URL right?",
    )


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


def group_hits(hits: pd.DataFrame, item_at: Any) -> dict[str, list[pystac.Item]]:
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

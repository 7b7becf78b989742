"""GeoParquetCatalog: stac-geoparquet read through pyarrow and matched in one spatial join."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pystac
import shapely
from planetary_computer.sas import get_token

from geoprep.building.catalogs.base import (
    CLOUD_KEY,
    Catalog,
    Window,
    footprint_table,
    group_hits,
    match_footprints,
    utc_time,
)
from geoprep.core.errors import UserError
from geoprep.core.storage import is_local, local_path
from geoprep.recipe.sections import CatalogSpec

# The package's logger, whichever backend logs: verbose output names geoprep.building.catalogs.
log = logging.getLogger(__package__)


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
        self._datasets: dict[str, pads.Dataset] = {}

    def url_for(self, collection: str) -> str:
        return self.spec.url.replace("{collection}", collection)

    def _dataset(self, url: str) -> pads.Dataset:
        """The dataset at `url`, opened once (opening reads every part's footer)."""
        if url not in self._datasets:
            self._datasets[url] = self._open(url)
        return self._datasets[url]

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

    def asset_names(self, collection: str) -> set[str] | None:
        """The asset keys of the collection's first row (stac-geoparquet keeps no item_assets)."""
        dataset = self._dataset(self.url_for(collection))
        if "assets" not in dataset.schema.names:
            return None
        names = dataset.schema.names
        rows = pads.field("collection") == collection if "collection" in names else None
        first = dataset.head(1, columns=["assets"], filter=rows).to_pylist()
        assets = _json_or_plain(first[0]["assets"]) if first else None
        if not isinstance(assets, dict):
            return None
        # a struct column unified over parts lists every part's keys: absent ones are null
        return {key for key, value in assets.items() if value is not None}

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
        dataset = table.dataset if table is not None else self._dataset(key[0])
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
        footprints = footprint_table(
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
        envelope: list[Window] | None = None,  # a search hint; the table is read as asked
    ) -> dict[str, list[pystac.Item]]:
        spans = [span for spans in windows.values() for span in spans]
        if not spans:
            return {}
        table = self._table(collection, min(s for s, _ in spans), max(e for _, e in spans))
        hits = match_footprints(points, table.footprints, windows, max_cloud_cover)
        item_ids = table.footprints["item_id"].to_numpy()
        self._materialize(table, collection, item_ids[hits["row"].to_numpy()])
        return group_hits(hits, lambda row: table.items[item_ids[row]])


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

"""Candidate STAC items for many locations at once: STAC APIs, stac-geoparquet, static catalogs."""

from __future__ import annotations

from typing import Any

from geoprep.building.catalogs.base import (
    CLOUD_KEY,
    Catalog,
    Window,
    as_points,
    cloud_filter,
    match_footprints,
    merge_windows,
    utc_time,
)
from geoprep.building.catalogs.geoparquet import GeoParquetCatalog, item_from_row
from geoprep.building.catalogs.stac_api import KNOWN_CLOUD_COVER, StacApiCatalog
from geoprep.building.catalogs.static import StaticCatalog
from geoprep.core.signing import unsigned_href
from geoprep.recipe.sections import CatalogSpec

__all__ = [
    "CLOUD_KEY",
    "KNOWN_CLOUD_COVER",
    "Catalog",
    "GeoParquetCatalog",
    "StacApiCatalog",
    "StaticCatalog",
    "Window",
    "as_points",
    "cloud_filter",
    "item_from_row",
    "match_footprints",
    "merge_windows",
    "open_catalog",
    "unsigned_href",
    "utc_time",
]


def open_catalog(spec: CatalogSpec, **options: Any) -> Catalog:
    """The catalog `spec` describes; `options` go to its class (e.g. tile_degrees, retries,
    backoff_factor, timeout for a STAC API; storage_options for geoparquet)."""
    if spec.kind == "stac-api":
        return StacApiCatalog(spec, **options)
    if spec.kind == "geoparquet":
        return GeoParquetCatalog(spec, **options)
    return StaticCatalog(spec, **options)

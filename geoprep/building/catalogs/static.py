"""StaticCatalog: a static STAC catalog on disk or a URL, loaded once per collection."""

from __future__ import annotations

import json
from typing import Any

import geopandas as gpd
import pystac

from geoprep.building.catalogs.base import (
    Catalog,
    Window,
    footprint_frame,
    group_hits,
    match_footprints,
)
from geoprep.core.errors import UserError
from geoprep.recipe.sections import CatalogSpec


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
            self._loaded[collection] = (items, footprint_frame(items))
        return self._loaded[collection]

    def asset_names(self, collection: str) -> set[str] | None:
        items, _ = self._load(collection)
        return set(items[0].assets) if items else None

    def _find(
        self,
        points: gpd.GeoDataFrame,
        collection: str,
        windows: dict[str, list[Window]],
        max_cloud_cover: float | None,
        extra_filter: dict[str, Any] | None,
        envelope: list[Window] | None = None,  # a search hint; the catalog is read once
    ) -> dict[str, list[pystac.Item]]:
        items, footprints = self._load(collection)
        if not items:
            return {}
        hits = match_footprints(points, footprints, windows, max_cloud_cover)
        return group_hits(hits, items.__getitem__)

"""StacApiCatalog: a STAC API searched tile by tile with pystac-client, filtered in CQL2-JSON."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import geopandas as gpd
import numpy as np
import pystac
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from geoprep.building.catalogs.base import (
    CLOUD_KEY,
    Catalog,
    Window,
    cloud_filter,
    footprint_frame,
    group_hits,
    match_footprints,
    merge_windows,
    needs_cloud_filter,
)
from geoprep.core.errors import SourceError, UserError
from geoprep.recipe.sections import CatalogSpec

# The package's logger, whichever backend logs: verbose output names geoprep.building.catalogs.
log = logging.getLogger(__package__)

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
        if needs_cloud_filter(max_cloud_cover) and self.has_cloud_cover(collection):
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
            hits = match_footprints(tile, footprint_frame(listed), tile_windows, max_cloud_cover)
            found.update(group_hits(hits, listed.__getitem__))
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

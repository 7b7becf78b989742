"""StacApiCatalog: a STAC API searched tile by tile with pystac-client, filtered in CQL2-JSON."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from geoprep.building.faults import DEFAULT_RETRY, RetryPolicy
from geoprep.core.errors import SourceError, UserError
from geoprep.recipe.sections import CatalogSpec

T = TypeVar("T")
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

    Locations are grouped on a `tile_degrees` grid. Each tile is searched once per window of
    the build's envelope that its batch touches, when the caller gives one (a multi-date
    recipe's windows of all its locations, `scenes.slots_envelope`) and the batch's windows
    fill enough of it (`search_windows`); else once per merged time window of the batch. Pages
    are `limit` = page_size items; up to `concurrency` searches go at once; the items of all
    tiles are assigned to points by footprint and each location's own windows. The last
    `kept_searches` answers (at most `kept_items` items) are kept: later batches of locations
    in the same tiles (a build's next shards) reuse an answer whose time range holds theirs.
    The eo:cloud_cover limit is sent as a CQL2-JSON filter only where the collection's items
    carry it (`KNOWN_CLOUD_COVER`, else the collection's queryables); otherwise it is applied
    to the returned items. Requests answered 429 or 5xx are retried `retries` times with
    exponential backoff (`backoff_factor` seconds, doubling).
    """

    filters_on_server = True

    def __init__(
        self,
        spec: CatalogSpec,
        tile_degrees: float = 0.5,
        retries: int = 6,
        backoff_factor: float = 1.0,
        timeout: float = 120.0,
        pages: RetryPolicy = DEFAULT_RETRY,
        concurrency: int = 8,
        kept_searches: int = 256,
        kept_items: int = 5_000,
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
        self._collections: dict[str, pystac.Collection] = {}
        self.pages = pages
        self.concurrency = concurrency  # searches under way at once
        self.kept_searches = kept_searches
        # a Planetary Computer Sentinel-2 item holds about 45 kB: 5,000 are about 220 MB
        self.kept_items = kept_items
        self._kept: dict[tuple, list[pystac.Item]] = {}  # answers, for the next batches
        self._kept_lock = threading.Lock()

    @property
    def client(self) -> Client:
        if self._client is None:
            retry = Retry(
                total=self.retries,
                connect=1,  # an API that is not there is reported, not waited for
                backoff_factor=self.backoff_factor,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=None,  # searches are POSTs, which urllib3 does not retry by default
                raise_on_status=False,  # the last answer reaches pystac-client, which reports it
            )
            stac_io = StacApiIO(max_retries=retry, timeout=self.timeout)
            self._client = self._retried(
                lambda: Client.open(self.spec.url, stac_io=stac_io), "did not open"
            )
        return self._client

    def _retried(self, request: Callable[[], T], what: str) -> T:
        """`request()`, again after answers that were cut short or did not parse (urllib3
        retries statuses, but not a body that breaks off), with backoff; then a SourceError."""
        for attempt in range(self.pages.attempts):
            try:
                return request()
            except (APIError, pystac.STACError, ValueError) as error:
                status = getattr(error, "status_code", None)
                last = attempt == self.pages.attempts - 1
                # statuses were retried by urllib3 already (`retries`)
                if last or status is not None:
                    raise SourceError(
                        f"STAC API {self.spec.url}: {what}"
                        f"{f' with HTTP {status}' if status else ''}: {str(error)[:300]}"
                        f"{'' if status else '; is the catalog url right?'}"
                    ) from None
                log.debug("STAC API %s: %s (%s); retrying", self.spec.url, what, error)
                time.sleep(self.pages.pause(attempt))
        raise AssertionError("unreachable")

    def _collection(self, collection: str) -> pystac.Collection:
        # A search of a collection the API lacks finds nothing, which would look like no imagery.
        if collection not in self._collections:
            found = self._retried(  # None when the API answers 404
                lambda: self.client.get_collection(collection), f"collection {collection}"
            )
            if found is None:
                raise UserError(f"collection {collection!r} is not in the STAC API {self.spec.url}")
            self._collections[collection] = found
        return self._collections[collection]

    def forget(self) -> None:
        super().forget()
        with self._kept_lock:
            self._kept.clear()

    def asset_names(self, collection: str) -> set[str] | None:
        found = self._collection(collection)
        declared = getattr(found, "item_assets", None) or found.extra_fields.get("item_assets")
        if declared:
            return set(declared)
        first = self._retried(
            lambda: list(self.client.search(collections=[collection], max_items=1).items()),
            f"first item of {collection}",
        )
        return set(first[0].assets) if first else None

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
        envelope: list[Window] | None,
    ) -> dict[str, list[pystac.Item]]:
        self._collection(collection)
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
        searches = []
        for _, tile in tiles.groupby(["tile_y", "tile_x"], sort=True):
            tile_windows = {loc: windows[loc] for loc in tile["id"].tolist()}
            # The whole tile is searched, not the box of this batch's points: the next batch
            # (shard) of the tile then finds its answer kept (`kept_searches`).
            row, col = tile["tile_y"].iloc[0], tile["tile_x"].iloc[0]
            size = self.tile_degrees
            bbox = [col * size, row * size, (col + 1) * size, (row + 1) * size]
            searches += [
                (bbox, start, end) for start, end in search_windows(tile_windows, envelope)
            ]
        # The searches go out together (each waits on the network); results merge in order.
        text = json.dumps(server_filter, sort_keys=True)
        keys = [(collection, tuple(bbox), start, end, text) for bbox, start, end in searches]
        with self._kept_lock:
            known = {k: found for k in keys if (found := self._kept_answer(k)) is not None}
        missing = [k for k in dict.fromkeys(keys) if k not in known]
        if missing:
            with ThreadPoolExecutor(max(1, min(self.concurrency, len(missing)))) as pool:
                answers = pool.map(
                    lambda k: self._search(collection, list(k[1]), k[2], k[3], server_filter),
                    missing,
                )
                fetched = dict(zip(missing, answers, strict=True))
            known.update(fetched)
            with self._kept_lock:
                self._kept.update(fetched)
                # the oldest answers go first: a build's shards move on from tile to tile
                while len(self._kept) > 1 and (
                    len(self._kept) > self.kept_searches
                    or sum(map(len, self._kept.values())) > self.kept_items
                ):
                    del self._kept[next(iter(self._kept))]
        # One footprint match for the whole batch (pandas costs milliseconds a call): an item
        # over a point of one tile is in that tile's answer, so the union changes no match.
        items: dict[str, pystac.Item] = {}
        for key in keys:
            for item in known[key]:
                items.setdefault(item.id, item)
        if not items:
            return {}
        listed = list(items.values())
        hits = match_footprints(points, footprint_frame(listed), windows, max_cloud_cover)
        return group_hits(hits, listed.__getitem__)

    def _kept_answer(self, key: tuple) -> list[pystac.Item] | None:
        """A kept answer for `key` (collection, bbox, start, end, filter): its own, or that of
        a search of the same tile over a longer time (its items are a superset, and each
        location takes only its own windows' items). The kept lock is held."""
        if key in self._kept:
            return self._kept[key]
        collection, bbox, start, end, text = key
        for (c, b, kept_start, kept_end, t), items in self._kept.items():
            if (c, b, t) == (collection, bbox, text) and kept_start <= start and end <= kept_end:
                return items
        return None

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
        search = functools.partial(
            self.client.search,
            collections=[collection],
            bbox=bbox,
            datetime=[start, end],
            limit=self.spec.page_size,
            **options,
        )
        # a page that breaks off restarts the search: pages are not numbered, only linked
        items = self._retried(
            lambda: list(search().items()), f"search of {collection} in {bbox} failed"
        )
        log.debug("%s %s %s/%s: %d items", collection, bbox, start, end, len(items))
        return items


#: A tile is searched over the build's envelope once its batch's windows fill this share of the
#: envelope windows they touch: the answer then holds at most 4 times the items the batch needs,
#: and serves every later batch of the tile. Sparser tiles (a few locations, as in a global
#: plan) search their own windows, which later batches reuse where a kept answer holds them.
ENVELOPE_MIN_COVER = 0.25


def _overlap(window: Window, other: Window) -> dt.timedelta:
    return max(min(window[1], other[1]) - max(window[0], other[0]), dt.timedelta(0))


def search_windows(windows: dict[str, list[Window]], envelope: list[Window] | None) -> list[Window]:
    """The time windows to search a tile in for these locations' windows: the windows of the
    build's `envelope` they touch (the same for every batch, so later batches find the answers
    kept) plus any window outside the envelope, where the locations' windows fill
    `ENVELOPE_MIN_COVER` of those; else the merged windows themselves."""
    merged = merge_windows(w for spans in windows.values() for w in spans)
    if not envelope or not merged:
        return merged
    touched = [e for e in envelope if any(_overlap(e, w) for w in merged)]
    covered = sum((_overlap(e, w) for e in touched for w in merged), dt.timedelta(0))
    length = sum((end - start for start, end in touched), dt.timedelta(0))
    if not touched or covered < ENVELOPE_MIN_COVER * length:
        return merged
    outside = [w for w in merged if not any(e[0] <= w[0] and w[1] <= e[1] for e in touched)]
    return merge_windows([*touched, *outside])

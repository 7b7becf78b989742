"""Open rasterio datasets: GDAL settings, an LRU bounded by count and memory, facts read once."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import rasterio
import rasterio.env
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoprep.building.faults import forget_in_gdal, gdal_failure
from geoprep.core.errors import UserError
from geoprep.core.signing import redact, unsigned_href

#: What an open dataset holds besides its blocks (GDAL's dataset and band objects, the TIFF
#: directory, the file handle): about 60 kB each, measured by RSS over 500 demo-world COGs.
OPEN_DATASET_BYTES = 64 * 1024
#: Once read, a GeoTIFF dataset also keeps a block's raw bytes and a decoded block of its own
#: (outside GDAL's block cache, which GDAL_CACHEMAX bounds process-wide) and its VSI cache of
#: raw bytes: about 220 kB more for the demo world's 256-px uint16 blocks (128 kB decoded).
#: Two decoded blocks per dataset is the estimate that covers it.
BLOCKS_KEPT_PER_DATASET = 2

#: Defaults of `DatasetCache`: enough open files for a shard of a multi-date recipe (8 dates of
#: 13 Sentinel-2 assets for each location, neighbours reading the same scenes), and the memory
#: they may hold (about 600 of the demo world's files, 48 of Planetary Computer's 1024-px
#: Sentinel-2 bands).
MAX_OPEN = 1024
MAX_BYTES = 192 * 1024 * 1024


def gdal_env(**overrides: Any) -> dict[str, Any]:
    """GDAL options for reading COGs over HTTP, for `rasterio.Env(**gdal_env())`.

    Overrides win, e.g. `gdal_env(GDAL_HTTP_MAX_RETRY="0", GDAL_HTTP_PROXY=url)`.
    """
    options: dict[str, Any] = {
        # Opening a COG must not list directories or probe for sidecar files: each is a request.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        # COG headers usually fit in the first 32 kB; one request instead of several at open.
        "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        # GDAL's own retries are kept short: geoprep retries failed reads itself, reopening the
        # file, and a dead server must reach the circuit breaker in seconds, not minutes.
        "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        # a time-out the user set wins (a read that stalls is then retried sooner)
        "GDAL_HTTP_TIMEOUT": os.environ.get("GDAL_HTTP_TIMEOUT", "60"),
        # Raw bytes kept per open file (headers, neighbouring ranges); per file, so kept small.
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(8 * 1024 * 1024),
        # Bytes of decoded blocks (rasterio passes it to GDALSetCacheMax64 as is); neighbouring
        # patches of one scene share tiles.
        "GDAL_CACHEMAX": 512 * 1024 * 1024,
    }
    options.update(overrides)
    return options


#: The cache whose `environment` this thread is in.
_ACTIVE = threading.local()


@lru_cache(maxsize=64)
def crs_of(epsg: int) -> CRS:
    """rasterio's CRS of an EPSG code, built once (building one runs PROJ)."""
    return CRS.from_epsg(epsg)


@dataclass(frozen=True)
class DatasetInfo:
    """What reads need to know of an open dataset, read once when it is opened: rasterio's
    properties build new objects on every access (the CRS from WKT, through PROJ)."""

    count: int
    dtype: np.dtype
    nodata: float | None
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    overviews: tuple[int, ...]
    block_bytes: int  # one decoded block of every band

    @classmethod
    def of(cls, dataset: DatasetReader) -> DatasetInfo:
        return cls(
            count=dataset.count,
            dtype=np.dtype(dataset.dtypes[0]),
            nodata=dataset.nodata,
            crs=dataset.crs,
            transform=dataset.transform,
            width=dataset.width,
            height=dataset.height,
            bounds=tuple(dataset.bounds),
            overviews=tuple(dataset.overviews(1)),
            block_bytes=math.prod(dataset.block_shapes[0])
            * np.dtype(dataset.dtypes[0]).itemsize
            * dataset.count,
        )

    @property
    def indexes(self) -> list[int]:
        return list(range(1, self.count + 1))


@dataclass(eq=False)
class OpenDataset:
    """One cached dataset, held by one thread at a time (GDAL datasets are not re-entrant)."""

    href: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    dataset: DatasetReader | None = None
    info: DatasetInfo | None = None
    evicted: bool = False
    counted: bool = False  # its bytes are in the cache's total
    _same_crs: dict[int, bool] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """The memory the dataset is estimated to hold, once read."""
        blocks = self.info.block_bytes * BLOCKS_KEPT_PER_DATASET if self.info is not None else 0
        return OPEN_DATASET_BYTES + blocks

    def same_crs(self, epsg: int) -> bool:
        """Whether the dataset's CRS is EPSG:`epsg` (compared through PROJ once per code)."""
        if epsg not in self._same_crs:
            self._same_crs[epsg] = self.info.crs == crs_of(epsg)
        return self._same_crs[epsg]

    def close(self) -> None:
        with self.lock:
            self.evicted = True
            if self.dataset is not None:
                self.dataset.close()
                self.dataset = None


class DatasetCache:
    """An LRU of open rasterio datasets, keyed by unsigned href and overview level, bounded by
    `max_open` datasets and by `max_bytes` of the memory they hold (`OpenDataset.bytes`).

    Neighbouring locations and the dates of one location read the same scenes: keeping their
    datasets open saves opening them again (about 1 ms of CPU each, plus the header requests
    over HTTP) and keeps their decoded blocks. Thread-safe: a dataset is used by one thread at a
    time and evicted ones are closed once nobody uses them. A signed href whose token changed
    reopens the dataset, so expired tokens are not reused. Every open and read runs inside
    `rasterio.Env(**env)` (default `gdal_env()`), except GDAL_CACHEMAX: the block cache is
    process-wide, and changing its size on every read would flush it, so it is set once, here.
    `opens` counts the datasets opened.
    """

    def __init__(
        self,
        max_open: int = MAX_OPEN,
        env: Mapping[str, Any] | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if max_open < 1:
            raise UserError(f"DatasetCache max_open must be at least 1, got {max_open}")
        if max_bytes < 0:
            raise UserError(f"DatasetCache max_bytes must not be negative, got {max_bytes}")
        self.max_open, self.max_bytes = max_open, max_bytes
        self.env = dict(gdal_env() if env is None else env)
        cache_max = self.env.pop("GDAL_CACHEMAX", None)
        if cache_max is not None:
            rasterio.env.set_gdal_config("GDAL_CACHEMAX", cache_max)
        self._entries: OrderedDict[tuple[str, int | None], OpenDataset] = OrderedDict()
        self._lock = threading.Lock()
        self.opens = 0
        self._bytes = 0

    def __enter__(self) -> DatasetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Memory the open datasets are estimated to hold."""
        return self._bytes

    def keys(self) -> list[tuple[str, int | None]]:
        """(unsigned href, overview level) of the open datasets, least recently used first."""
        with self._lock:
            return list(self._entries)

    @contextmanager
    def dataset(self, href: str, overview_level: int | None = None) -> Iterator[DatasetReader]:
        """The open dataset of `href` (at `overview_level`), held exclusively while in use."""
        with self.opened(href, overview_level) as entry:
            yield entry.dataset  # type: ignore[misc]

    @contextmanager
    def opened(self, href: str, overview_level: int | None = None) -> Iterator[OpenDataset]:
        """Like `dataset`, with the dataset's `info` (an `OpenDataset`)."""
        with self.environment():
            entry = self._checkout(href, overview_level)
            try:
                yield entry
            finally:
                entry.lock.release()
            self._shrink()

    def enter_for_thread(self) -> None:
        """Enter the cache's GDAL options on this thread for good: for threads that only ever
        read through this cache (a pool's initializer)."""
        rasterio.Env(**self.env).__enter__()
        _ACTIVE.cache = self

    @contextmanager
    def environment(self) -> Iterator[None]:
        """The cache's GDAL options on this thread. Reads inside skip setting them again: a
        `rasterio.Env` costs 60-80 µs, as much as a cached read, so a run of reads (a build's
        slot of a location) enters it once."""
        if getattr(_ACTIVE, "cache", None) is self:
            yield
            return
        previous = getattr(_ACTIVE, "cache", None)
        with rasterio.Env(**self.env):
            _ACTIVE.cache = self
            try:
                yield
            finally:
                _ACTIVE.cache = previous

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._bytes = 0
        for entry in entries:
            entry.close()

    def forget(self, href: str) -> None:
        """Close `href`'s datasets (every overview level) and drop what GDAL cached of the file,
        so that the next read asks the server again instead of repeating a failure."""
        unsigned = unsigned_href(href)
        with self._lock:
            gone = [key for key in self._entries if key[0] == unsigned]
            entries = [self._pop(key) for key in gone]
        for entry in entries:
            entry.close()
        forget_in_gdal(unsigned)

    def _pop(self, key: tuple[str, int | None]) -> OpenDataset:
        """Remove an entry (cache lock held); the caller closes it."""
        entry = self._entries.pop(key)
        if entry.counted:
            self._bytes -= entry.bytes
            entry.counted = False
        return entry

    def _over_budget(self) -> bool:
        return len(self._entries) > self.max_open or (
            self._bytes > self.max_bytes and len(self._entries) > 1
        )

    def _shrink(self) -> None:
        """Close least recently used datasets until the cache is within its bounds."""
        stale = []
        with self._lock:
            while self._over_budget():
                stale.append(self._pop(next(iter(self._entries))))
        for old in stale:  # outside the cache lock: closing waits for the old entry's user
            old.close()

    def _checkout(self, href: str, overview_level: int | None) -> OpenDataset:
        """An entry with an open dataset, its lock held by the caller."""
        key = (unsigned_href(href), overview_level)
        while True:
            stale: list[OpenDataset] = []
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.href != href:
                    stale.append(self._pop(key))
                    entry = None
                if entry is None:
                    entry = self._entries[key] = OpenDataset(href)
                    while self._over_budget() and next(iter(self._entries)) != key:
                        stale.append(self._pop(next(iter(self._entries))))
                else:
                    self._entries.move_to_end(key)
            for old in stale:  # outside the cache lock: closing waits for the old entry's user
                old.close()
            entry.lock.acquire()
            if entry.evicted:  # closed between the lookup and the lock; look again
                entry.lock.release()
                continue
            if entry.dataset is None:
                try:
                    entry.dataset = _open(href, overview_level)
                    entry.info = DatasetInfo.of(entry.dataset)
                except BaseException:
                    entry.lock.release()
                    raise
                with self._lock:
                    self.opens += 1
                    if self._entries.get(key) is entry:  # still cached: account for it
                        entry.counted = True
                        self._bytes += entry.bytes
            return entry


def _open(href: str, overview_level: int | None) -> DatasetReader:
    try:
        if overview_level is None:
            return rasterio.open(href)
        return rasterio.open(href, overview_level=overview_level)
    except RasterioError as error:
        raise gdal_failure(f"cannot open: {redact(str(error))}", redact(href)) from error


# rasterio's `read()` asks GDAL for every band's mask flags on each call (to decide whether to
# return a masked array), which cost a tenth of a multi-date build's CPU; geoprep never wants a
# masked array, so it calls the method `read()` ends in, with the same arguments. Checked at
# import; a rasterio without it gets `read()` (same pixels, slower).
_READ_INTO = getattr(DatasetReader, "_read", None)


def read_into(entry: OpenDataset, out: np.ndarray, window: Window) -> None:
    """Read every band of `window` into `out` ((bands, rows, cols), C-contiguous)."""
    if _READ_INTO is not None:
        _READ_INTO(entry.dataset, entry.info.indexes, out, window, out.dtype.name)
    else:  # pragma: no cover - older or newer rasterio
        entry.dataset.read(entry.info.indexes, out=out, window=window)

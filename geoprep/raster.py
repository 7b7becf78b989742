"""Reading COG assets onto target grids, scene masks, and Sentinel-2/Landsat value conventions."""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.env
import rasterio.warp
from rasterio.crs import CRS
from rasterio.enums import Resampling as RasterioResampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoprep.errors import SourceError, UserError
from geoprep.grid import TargetGrid
from geoprep.signing import redact, unsigned_href
from geoprep.specs import Resampling

# rasterio.warp.reproject hides this warning for georeferenced arrays with catch_warnings(),
# which is not thread-safe: under concurrent reads it leaks although every array is placed.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")

log = logging.getLogger(__name__)

MaskKind = Literal["scl", "qa_pixel"]

# ---------------------------------------------------------------------------------------------
# GDAL settings and signed hrefs


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
        "GDAL_HTTP_MAX_RETRY": "5",
        "GDAL_HTTP_RETRY_DELAY": "1",
        "GDAL_HTTP_TIMEOUT": "60",
        # Raw bytes kept per open file (headers, neighbouring ranges); per file, so kept small.
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(8 * 1024 * 1024),
        # Bytes of decoded blocks (rasterio passes it to GDALSetCacheMax64 as is); neighbouring
        # patches of one scene share tiles.
        "GDAL_CACHEMAX": 512 * 1024 * 1024,
    }
    options.update(overrides)
    return options


class _RedactSignedUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _redact_rasterio_logs() -> None:
    # rasterio's debug messages name datasets by their (signed) href, and GDAL's errors, relayed
    # through rasterio._env, quote the URL with its token. Logger filters only see records of
    # their own logger, hence one filter on each rasterio module's logger.
    names = {"rasterio", "rasterio._base", "rasterio._env", "rasterio._io", "rasterio._warp"}
    names |= {name for name in logging.root.manager.loggerDict if name.startswith("rasterio.")}
    redacting = _RedactSignedUrls()
    for name in sorted(names):
        logging.getLogger(name).addFilter(redacting)


_redact_rasterio_logs()


# ---------------------------------------------------------------------------------------------
# Open datasets


@dataclass(eq=False)
class _Entry:
    href: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    dataset: DatasetReader | None = None
    evicted: bool = False

    def close(self) -> None:
        with self.lock:
            self.evicted = True
            if self.dataset is not None:
                self.dataset.close()
                self.dataset = None


class DatasetCache:
    """An LRU of open rasterio datasets, keyed by unsigned href and overview level.

    Neighbouring locations read the same scenes: keeping datasets open saves the header
    requests and keeps GDAL's block cache warm. Thread-safe: a dataset is used by one thread at a
    time (GDAL datasets are not re-entrant) and evicted ones are closed once nobody uses them.
    A signed href whose token changed reopens the dataset, so expired tokens are not reused.
    Every open and read runs inside `rasterio.Env(**env)` (default `gdal_env()`), except
    GDAL_CACHEMAX: the block cache is process-wide, and changing its size on every read would
    flush it, so it is set once, here.
    """

    def __init__(self, max_open: int = 64, env: Mapping[str, Any] | None = None) -> None:
        if max_open < 1:
            raise UserError(f"DatasetCache max_open must be at least 1, got {max_open}")
        self.max_open = max_open
        self.env = dict(gdal_env() if env is None else env)
        cache_max = self.env.pop("GDAL_CACHEMAX", None)
        if cache_max is not None:
            rasterio.env.set_gdal_config("GDAL_CACHEMAX", cache_max)
        self._entries: OrderedDict[tuple[str, int | None], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> DatasetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[tuple[str, int | None]]:
        """(unsigned href, overview level) of the open datasets, least recently used first."""
        with self._lock:
            return list(self._entries)

    @contextmanager
    def dataset(self, href: str, overview_level: int | None = None) -> Iterator[DatasetReader]:
        """The open dataset of `href` (at `overview_level`), held exclusively while in use."""
        with rasterio.Env(**self.env):
            entry = self._checkout(href, overview_level)
            try:
                yield entry.dataset  # type: ignore[misc]
            finally:
                entry.lock.release()

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.close()

    def _checkout(self, href: str, overview_level: int | None) -> _Entry:
        """An entry with an open dataset, its lock held by the caller."""
        key = (unsigned_href(href), overview_level)
        while True:
            stale: list[_Entry] = []
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.href != href:
                    stale.append(self._entries.pop(key))
                    entry = None
                if entry is None:
                    entry = self._entries[key] = _Entry(href)
                    while len(self._entries) > self.max_open:
                        stale.append(self._entries.popitem(last=False)[1])
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
                except BaseException:
                    entry.lock.release()
                    raise
            return entry


def _open(href: str, overview_level: int | None) -> DatasetReader:
    try:
        if overview_level is None:
            return rasterio.open(href)
        return rasterio.open(href, overview_level=overview_level)
    except RasterioError as error:
        raise SourceError(f"cannot open {redact(href)}: {redact(str(error))}") from error


# ---------------------------------------------------------------------------------------------
# Reading a patch


@dataclass(frozen=True)
class Patch:
    """An asset read onto a grid: (bands, h, w) in the native dtype, and its nodata value.

    `overview_level` is the COG overview read (None: full resolution); `aligned` says the
    pixels were copied from the source grid without resampling.
    """

    array: np.ndarray
    nodata: float | None
    overview_level: int | None = None
    aligned: bool = False


# Kernel radius in source pixels, widened by the downsampling ratio (GDAL scales kernels).
_KERNEL_RADIUS = {"nearest": 1, "bilinear": 1, "cubic": 2, "lanczos": 3, "average": 1, "mode": 1}
# Overviews of class rasters are often built with averaging or cubic kernels, which invents
# class codes; categorical reads always use the full-resolution pixels.
_CATEGORICAL = {"nearest", "mode"}


@lru_cache(maxsize=64)
def _crs(epsg: int) -> CRS:
    return CRS.from_epsg(epsg)


def _fill_value(dtype: np.dtype, nodata: float | None) -> float:
    if nodata is not None:
        return nodata
    return float("nan") if np.issubdtype(dtype, np.floating) else 0


def read_patch(
    href: str,
    grid: TargetGrid,
    resampling: Resampling = "bilinear",
    *,
    cache: DatasetCache | None = None,
    nodata: float | None = None,
) -> Patch:
    """Read every band of the raster at `href` (path or URL, possibly signed) onto `grid`.

    Only the source window under the grid (plus a margin for the kernel) is read. A grid in the
    source's CRS and pixel size at a whole-pixel offset is copied without resampling. Otherwise,
    for non-categorical resampling, the coarsest COG overview still at least as fine as the
    target is read, then warped onto the grid. Source nodata propagates; pixels outside the
    source footprint get the nodata value. `nodata` is used when the file declares none; with
    neither, 0 (integers) or NaN (floats) is filled in and returned as the nodata.
    """
    if resampling not in _KERNEL_RADIUS:
        raise UserError(f"resampling {resampling!r} is not one of {sorted(_KERNEL_RADIUS)}")
    if cache is None:
        with DatasetCache(max_open=2) as one_off:
            return read_patch(href, grid, resampling, cache=one_off, nodata=nodata)
    try:
        return _read_patch(href, grid, resampling, cache, nodata)
    except RasterioError as error:
        raise SourceError(f"cannot read {redact(href)}: {redact(str(error))}") from error


def _read_patch(
    href: str, grid: TargetGrid, resampling: str, cache: DatasetCache, nodata: float | None
) -> Patch:
    with cache.dataset(href) as src:
        dtype = np.dtype(src.dtypes[0])
        fill = _fill_value(dtype, src.nodata if src.nodata is not None else nodata)
        same_crs = src.crs == _crs(grid.crs)
        if same_crs:
            offset = _aligned_offset(src.transform, grid)
            if offset is not None:
                array = _read_window(src, offset, grid.shape, dtype, fill)
                return Patch(array, fill, aligned=True)
            src_bounds = grid.bounds
        else:
            src_bounds = rasterio.warp.transform_bounds(
                _crs(grid.crs), src.crs, *grid.bounds, densify_pts=21
            )
        if not all(math.isfinite(value) for value in src_bounds):  # beyond the source CRS
            return Patch(np.full((src.count, *grid.shape), fill, dtype=dtype), fill)
        target_res = min(
            (src_bounds[2] - src_bounds[0]) / grid.width,
            (src_bounds[3] - src_bounds[1]) / grid.height,
        )
        level = None
        if resampling not in _CATEGORICAL:
            level = _overview_level(abs(src.transform.a), src.overviews(1), target_res)
        if level is None:
            return _warp(src, src_bounds, target_res, grid, resampling, dtype, fill, None)
    with cache.dataset(href, level) as overview:
        return _warp(overview, src_bounds, target_res, grid, resampling, dtype, fill, level)


def _aligned_offset(transform: Any, grid: TargetGrid) -> tuple[int, int] | None:
    """(row, col) of the grid's corner in the source grid, if the pixels coincide exactly."""
    t, gsd = transform, grid.gsd
    if t.b != 0 or t.d != 0 or not math.isclose(t.a, gsd) or not math.isclose(t.e, -gsd):
        return None
    col = (grid.transform.c - t.c) / gsd
    row = (t.f - grid.transform.f) / gsd
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _read_window(
    src: DatasetReader,
    offset: tuple[int, int],
    shape: tuple[int, int],
    dtype: np.dtype,
    fill: float,
) -> np.ndarray:
    """The (bands, h, w) block at `offset`, with `fill` where it extends past the source."""
    row, col = offset
    height, width = shape
    out = np.full((src.count, height, width), fill, dtype=dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, src.height), min(col + width, src.width)
    if r1 > r0 and c1 > c0:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = src.read(window=window)
    return out


def _overview_level(source_res: float, factors: Sequence[int], target_res: float) -> int | None:
    """Index of the coarsest overview no coarser than `target_res` (None: full resolution)."""
    level = None
    for index, factor in enumerate(factors):
        if source_res * factor <= target_res * (1 + 1e-6):
            level = index
    return level


def _warp(
    src: DatasetReader,
    src_bounds: tuple[float, float, float, float],
    target_res: float,
    grid: TargetGrid,
    resampling: str,
    dtype: np.dtype,
    fill: float,
    level: int | None,
) -> Patch:
    out = np.full((src.count, *grid.shape), fill, dtype=dtype)
    source_res = abs(src.transform.a)
    ratio = max(1.0, target_res / source_res)
    margin = math.ceil(_KERNEL_RADIUS[resampling] * ratio) + 1
    left, bottom, right, top = src_bounds
    to_pixels = ~src.transform
    corners = [to_pixels @ (x, y) for x in (left, right) for y in (bottom, top)]
    cols, rows = [col for col, _ in corners], [row for _, row in corners]
    c0 = max(math.floor(min(cols)) - margin, 0)
    r0 = max(math.floor(min(rows)) - margin, 0)
    c1 = min(math.ceil(max(cols)) + margin, src.width)
    r1 = min(math.ceil(max(rows)) + margin, src.height)
    if c1 <= c0 or r1 <= r0:  # the grid lies outside the source footprint
        return Patch(out, fill, level)
    # GDAL reads the blocks under the grid itself (through the block cache), which saves a
    # window read and an in-memory source dataset per call.
    rasterio.warp.reproject(
        source=rasterio.band(src, list(range(1, src.count + 1))),
        destination=out,
        src_nodata=fill,
        dst_transform=grid.transform,
        dst_crs=_crs(grid.crs),
        dst_nodata=fill,
        resampling=RasterioResampling[resampling],
    )
    return Patch(out, fill, level)


# ---------------------------------------------------------------------------------------------
# Scene masks


SCL_NODATA = 0
SCL_CLOUD_CLASSES = (3, 8, 9, 10)  # cloud shadow, cloud medium/high probability, thin cirrus
QA_PIXEL_FILL = 1 << 0
QA_PIXEL_CLOUD = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)  # dilated, cirrus, cloud, shadow
DEFAULT_MASK_ASSETS = {"sentinel-2-l2a": "SCL", "landsat-c2-l2": "qa_pixel"}
_MASK_KINDS: dict[str, MaskKind] = {"scl": "scl", "qa_pixel": "qa_pixel"}


def mask_kind(asset_key: str) -> MaskKind | None:
    """How to read a mask asset: 'scl' (Sentinel-2 SCL), 'qa_pixel' (Landsat), None (unknown)."""
    return _MASK_KINDS.get(asset_key.lower())


def cloud_fraction(mask: np.ndarray, kind: MaskKind) -> float:
    """Share of the valid pixels of a mask patch that are cloud or cloud shadow.

    Nodata pixels (SCL 0; qa_pixel fill bit 0, which is also what `read_patch` fills outside the
    footprint) are left out of the denominator: missing data is judged by `nodata_fraction`.
    A patch without any valid pixel counts as fully cloudy (1.0), so it is never accepted.
    """
    values = np.asarray(mask)
    if kind == "scl":
        valid = values != SCL_NODATA
        cloudy = np.isin(values, SCL_CLOUD_CLASSES)
    elif kind == "qa_pixel":
        bits = values.astype(np.uint16, copy=False)
        valid = (bits & QA_PIXEL_FILL) == 0
        cloudy = valid & ((bits & QA_PIXEL_CLOUD) != 0)
    else:
        raise UserError(f"mask kind {kind!r} is not one of {sorted(_MASK_KINDS.values())}")
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return 1.0
    return int(np.count_nonzero(cloudy)) / n_valid


def _missing(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where any band is nodata (or NaN)."""
    data = array if array.ndim == 3 else array[np.newaxis]
    missing = np.zeros(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        missing |= np.isnan(data).any(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        missing |= (data == nodata).any(axis=0)
    return missing


def nodata_fraction(
    arrays: np.ndarray | Sequence[np.ndarray], nodata: float | None | Sequence[float | None]
) -> float:
    """Share of pixels where any band of any array is nodata (NaN counts for floats).

    `arrays` is one (bands, h, w) or (h, w) array or a list of them, with one nodata value for
    all or one per array. Arrays of different (h, w) (native layout groups) are judged per size
    and the worst size is returned.
    """
    items = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
    if not items:
        raise UserError("nodata_fraction needs at least one array")
    if isinstance(nodata, Sequence) and not isinstance(nodata, str):
        values = list(nodata)
        if len(values) != len(items):
            raise UserError(f"{len(values)} nodata values for {len(items)} arrays")
    else:
        values = [nodata] * len(items)
    by_size: dict[tuple[int, int], np.ndarray] = {}
    for array, value in zip(items, values, strict=True):
        missing = _missing(np.asarray(array), value)
        previous = by_size.get(missing.shape)
        by_size[missing.shape] = missing if previous is None else previous | missing
    return max(float(missing.mean()) for missing in by_size.values())


# ---------------------------------------------------------------------------------------------
# Value conventions


S2_REFLECTANCE_ASSETS = frozenset(
    ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
)
S2_OFFSET_BASELINE = (4, 0)
S2_BOA_OFFSET = 1000


def _baseline(value: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", value)
    return (int(match.group(1)), int(match.group(2))) if match else None


def harmonize_s2(
    array: np.ndarray, processing_baseline: str | None, nodata: float = 0
) -> tuple[np.ndarray, bool]:
    """Sentinel-2 L2A reflectance in the pre-04.00 convention; returns (array, applied).

    From processing baseline 04.00 (January 2022) the DN carry a +1000 offset
    (BOA_ADD_OFFSET). For such scenes 1000 is subtracted, results below 1 are clipped to 1 so
    that they stay apart from nodata, and nodata pixels stay nodata; the dtype is kept. Pass
    reflectance bands only (`S2_REFLECTANCE_ASSETS`), never SCL, AOT, WVP or visual. Without a
    readable baseline nothing is changed.
    """
    parsed = _baseline(processing_baseline) if processing_baseline else None
    if parsed is None:
        if processing_baseline:
            log.warning("unreadable s2:processing_baseline %r: not harmonised", processing_baseline)
        return array, False
    if parsed < S2_OFFSET_BASELINE:
        return array, False
    shifted = np.clip(array.astype(np.int64) - S2_BOA_OFFSET, 1, None)
    result = np.where(array == nodata, array, shifted).astype(array.dtype)
    return result, True


def _asset_fields(item: Any, asset_key: str) -> dict[str, Any]:
    assets = item["assets"] if isinstance(item, Mapping) else item.assets
    if asset_key not in assets:
        item_id = item.get("id") if isinstance(item, Mapping) else item.id
        raise UserError(f"item {item_id!r} has no asset {asset_key!r}; it has {sorted(assets)}")
    asset = assets[asset_key]
    return dict(asset) if isinstance(asset, Mapping) else asset.to_dict()


def _item_properties(item: Any) -> Mapping[str, Any]:
    return item.get("properties", {}) if isinstance(item, Mapping) else item.properties


def band_scale_offset(item: Any, asset_key: str) -> tuple[list[float], list[float]]:
    """Per-band (scale, offset) from the asset's `raster:bands` (1 and 0 where absent).

    `item` is a pystac Item or its dict. Planetary Computer puts `raster:bands` on assets.
    """
    bands = _asset_fields(item, asset_key).get("raster:bands") or [{}]
    scales = [float(band.get("scale", 1.0)) for band in bands]
    offsets = [float(band.get("offset", 0.0)) for band in bands]
    return scales, offsets


def apply_scale_offset(
    array: np.ndarray, scale: Sequence[float], offset: Sequence[float], nodata: float | None
) -> np.ndarray:
    """float32 `array * scale + offset` per band, with NaN where the input is nodata."""
    data = array if array.ndim == 3 else array[np.newaxis]
    if len(scale) not in (1, data.shape[0]) or len(offset) not in (1, data.shape[0]):
        raise UserError(
            f"{len(scale)} scales / {len(offset)} offsets for an array of {data.shape[0]} bands"
        )
    scales = np.asarray(scale, dtype=np.float32).reshape(-1, 1, 1)
    offsets = np.asarray(offset, dtype=np.float32).reshape(-1, 1, 1)
    result = data.astype(np.float32) * scales + offsets
    if nodata is not None:
        result[data == nodata] = np.nan
    return result.reshape(array.shape)


def asset_gsd(item: Any, asset_key: str, *, cache: DatasetCache | None = None) -> float:
    """Native pixel size of an asset, in CRS units (metres for UTM).

    Looks, in order, at the asset's `proj:transform`, its `raster:bands[0].spatial_resolution`,
    the item's `proj:transform`, the asset's then the item's `gsd` (the sensor's resolution,
    which can differ from the file's pixel size, as for Landsat thermal), and last opens the
    file (a header read).
    """
    asset = _asset_fields(item, asset_key)
    properties = _item_properties(item)
    bands = asset.get("raster:bands") or [{}]
    candidates = [
        _transform_res(asset.get("proj:transform")),
        bands[0].get("spatial_resolution"),
        _transform_res(properties.get("proj:transform")),
        asset.get("gsd"),
        properties.get("gsd"),
    ]
    for value in candidates:
        if value is not None and float(value) > 0:
            return float(value)
    href = asset["href"]
    if cache is None:
        with DatasetCache(max_open=1) as one_off, one_off.dataset(href) as dataset:
            return float(math.hypot(dataset.transform.a, dataset.transform.d))
    with cache.dataset(href) as dataset:
        return float(math.hypot(dataset.transform.a, dataset.transform.d))


def _transform_res(transform: Sequence[float] | None) -> float | None:
    if not transform or len(transform) < 6:
        return None
    return math.hypot(float(transform[0]), float(transform[3]))

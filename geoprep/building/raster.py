"""Reading COG assets onto target grids: windowed reads and warps, signed hrefs kept out of logs."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.env
import rasterio.warp
from rasterio.enums import Resampling as RasterioResampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geoprep.building.datasets import (  # noqa: F401 - gdal_env is imported from here too
    DatasetCache,
    OpenDataset,
    crs_of,
    gdal_env,
    read_into,
)
from geoprep.building.faults import gdal_failure
from geoprep.building.grid import TargetGrid
from geoprep.core.errors import UserError
from geoprep.core.gdal_messages import route_gdal_messages
from geoprep.core.signing import redact, unsigned_href  # noqa: F401 - re-exported
from geoprep.recipe.sections import Resampling

# rasterio.warp.reproject hides this warning for georeferenced arrays with catch_warnings(),
# which is not thread-safe: under concurrent reads it leaks although every array is placed.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Signed hrefs in logs


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
route_gdal_messages()  # GDAL's messages outside rasterio's handlers, too


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
    #: the source declares no nodata, yet the grid reaches past its footprint: geoprep filled
    #: those pixels with `nodata` (0 or NaN), a value it chose (recorded in the sample JSON)
    nodata_chosen: bool = False


# Kernel radius in source pixels, widened by the downsampling ratio (GDAL scales kernels).
_KERNEL_RADIUS = {"nearest": 1, "bilinear": 1, "cubic": 2, "lanczos": 3, "average": 1, "mode": 1}
# Overviews of class rasters are often built with averaging or cubic kernels, which invents
# class codes; categorical reads always use the full-resolution pixels.
_CATEGORICAL = {"nearest", "mode"}


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
    source footprint get the nodata value. `nodata` is used when the file declares none. With
    neither, the patch has no nodata (a black NAIP pixel is data) unless the grid reaches past
    the footprint: then 0 (integers) or NaN (floats) fills it and is returned as a nodata that
    geoprep chose (`nodata_chosen`).
    """
    if resampling not in _KERNEL_RADIUS:
        raise UserError(f"resampling {resampling!r} is not one of {sorted(_KERNEL_RADIUS)}")
    if cache is None:
        with DatasetCache(max_open=2) as one_off:
            return read_patch(href, grid, resampling, cache=one_off, nodata=nodata)
    try:
        return _read_patch(href, grid, resampling, cache, nodata)
    except RasterioError as error:
        raise gdal_failure(f"cannot read: {redact(str(error))}", redact(href)) from error


def _read_patch(
    href: str, grid: TargetGrid, resampling: str, cache: DatasetCache, nodata: float | None
) -> Patch:
    with cache.opened(href) as entry:
        info = entry.info
        dtype = info.dtype
        declared = info.nodata if info.nodata is not None else nodata
        fill = _fill_value(dtype, declared)
        if entry.same_crs(grid.crs):
            offset = _aligned_offset(info.transform, grid)
            if offset is not None:
                array = _read_window(entry, offset, grid.shape, fill)
                inside = _inside(info.bounds, grid.bounds)
                return _patch(array, declared, fill, inside, aligned=True)
            src_bounds = grid.bounds
        else:
            src_bounds = rasterio.warp.transform_bounds(
                crs_of(grid.crs), info.crs, *grid.bounds, densify_pts=21
            )
        if not all(math.isfinite(value) for value in src_bounds):  # beyond the source CRS
            array = np.full((info.count, *grid.shape), fill, dtype=dtype)
            return _patch(array, declared, fill, inside=False)
        fill_info = (declared, fill, _inside(info.bounds, src_bounds))
        target_res = min(
            (src_bounds[2] - src_bounds[0]) / grid.width,
            (src_bounds[3] - src_bounds[1]) / grid.height,
        )
        level = None
        if resampling not in _CATEGORICAL:
            level = _overview_level(abs(info.transform.a), info.overviews, target_res)
        if level is None:
            return _warp(entry, src_bounds, target_res, grid, resampling, fill_info, None)
    with cache.opened(href, level) as overview:
        return _warp(overview, src_bounds, target_res, grid, resampling, fill_info, level)


def _inside(outer: Sequence[float], inner: Sequence[float]) -> bool:
    """Bounds (left, bottom, right, top) `inner` lie within `outer` (to a millimetre)."""
    return (
        inner[0] >= outer[0] - 1e-3
        and inner[1] >= outer[1] - 1e-3
        and inner[2] <= outer[2] + 1e-3
        and inner[3] <= outer[3] + 1e-3
    )


def _patch(
    array: np.ndarray, declared: float | None, fill: float, inside: bool, **kw: Any
) -> Patch:
    """The patch's nodata: the declared one; else none, unless pixels past the footprint had to
    be filled."""
    if declared is not None:
        return Patch(array, declared, **kw)
    return Patch(array, None if inside else fill, nodata_chosen=not inside, **kw)


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
    entry: OpenDataset, offset: tuple[int, int], shape: tuple[int, int], fill: float
) -> np.ndarray:
    """The (bands, h, w) block at `offset`, with `fill` where it extends past the source."""
    info = entry.info
    row, col = offset
    height, width = shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, info.height), min(col + width, info.width)
    if (r0, c0, r1, c1) == (row, col, row + height, col + width):  # wholly inside
        out = np.empty((info.count, height, width), dtype=info.dtype)
        read_into(entry, out, Window(c0, r0, width, height))
        return out
    out = np.full((info.count, height, width), fill, dtype=info.dtype)
    if r1 > r0 and c1 > c0:
        part = np.empty((info.count, r1 - r0, c1 - c0), dtype=info.dtype)
        read_into(entry, part, Window(c0, r0, c1 - c0, r1 - r0))
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = part
    return out


def _overview_level(source_res: float, factors: Sequence[int], target_res: float) -> int | None:
    """Index of the coarsest overview no coarser than `target_res` (None: full resolution)."""
    level = None
    for index, factor in enumerate(factors):
        if source_res * factor <= target_res * (1 + 1e-6):
            level = index
    return level


def _warp(
    entry: OpenDataset,
    src_bounds: tuple[float, float, float, float],
    target_res: float,
    grid: TargetGrid,
    resampling: str,
    fill_info: tuple[float | None, float, bool],
    level: int | None,
) -> Patch:
    declared, fill, inside = fill_info
    src, info = entry.dataset, entry.info
    out = np.full((info.count, *grid.shape), fill, dtype=info.dtype)
    source_res = abs(info.transform.a)
    ratio = max(1.0, target_res / source_res)
    margin = math.ceil(_KERNEL_RADIUS[resampling] * ratio) + 1
    left, bottom, right, top = src_bounds
    to_pixels = ~info.transform
    corners = [to_pixels @ (x, y) for x in (left, right) for y in (bottom, top)]
    cols, rows = [col for col, _ in corners], [row for _, row in corners]
    c0 = max(math.floor(min(cols)) - margin, 0)
    r0 = max(math.floor(min(rows)) - margin, 0)
    c1 = min(math.ceil(max(cols)) + margin, info.width)
    r1 = min(math.ceil(max(rows)) + margin, info.height)
    if c1 <= c0 or r1 <= r0:  # the grid lies outside the source footprint
        return _patch(out, declared, fill, False, overview_level=level)
    # GDAL reads the blocks under the grid itself (through the block cache), which saves a
    # window read and an in-memory source dataset per call.
    rasterio.warp.reproject(
        source=rasterio.band(src, info.indexes),
        destination=out,
        # none declared: every integer pixel is data (black NAIP pixels too); NaN never is
        src_nodata=fill if declared is None and np.isnan(fill) else declared,
        dst_transform=grid.transform,
        dst_crs=crs_of(grid.crs),
        dst_nodata=fill,
        resampling=RasterioResampling[resampling],
    )
    return _patch(out, declared, fill, inside, overview_level=level)

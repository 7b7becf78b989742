"""What every demo sensor product shares: planned shots, written scenes, blob paths and COGs.

A :class:`Shot` fixes one acquisition at planning time, a :class:`Ground` holds the surface as
each sensor's grid sees it, and each product writer (:mod:`geoprep.demo.s2_products`,
:mod:`~geoprep.demo.landsat_products`, :mod:`~geoprep.demo.s1_products`,
:mod:`~geoprep.demo.naip_products`) returns a :class:`Scene` from which
:mod:`geoprep.demo.stac_items` builds the STAC item.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from shapely.geometry import Polygon, box

from geoprep.demo.render import Grid, Sky

#: Collection id -> (storage account, container), as on Planetary Computer.
STORAGE = {
    "sentinel-2-l2a": ("sentinel2l2a01", "sentinel2-l2"),
    "naip": ("naipeuwest", "naip"),
    "landsat-c2-l2": ("landsateuwest", "landsat-c2"),
    "sentinel-1-rtc": ("sentinel1euwestrtc", "sentinel1-grd-rtc"),
}


@dataclass
class AssetFile:
    """One written file of a scene: its path under ``blobs/`` and, for rasters, its grid."""

    path: str
    grid: Grid | None = None


@dataclass
class Scene:
    """What a written product needs for its STAC item."""

    collection: str
    id: str
    aoi: str
    datetime: dt.datetime
    footprint: Polygon  # EPSG:4326
    properties: dict
    assets: dict[str, AssetFile] = field(default_factory=dict)


@dataclass(frozen=True)
class Shot:
    """One planned acquisition: which sensor, where, when, under which sky, and product details
    (platform, orbit, baseline ...) fixed at planning time so rendering order does not matter."""

    collection: str
    aoi: str
    season: str
    when: dt.datetime
    sky: Sky
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Ground:
    """The surface of one AOI at one date, area-averaged onto the grids of every sensor."""

    s2_grids: dict[int, Grid]
    s2: dict[int, np.ndarray]  # reflectance in all :data:`BANDS` per pixel size (10, 20, 60)
    water20: np.ndarray
    landsat_grid: Grid
    landsat: np.ndarray  # reflectance in the Landsat bands (LANDSAT_BANDS order)
    water30: np.ndarray
    heat30: np.ndarray  # surface temperature offsets (K) by land cover
    radar: tuple[np.ndarray, np.ndarray] | None  # speckle-free VV, VH on s2_grids[10]


def blob_path(collection: str, path: str) -> str:
    """Path under ``OUT/blobs`` of a file of ``collection``: ``<account>/<container>/<path>``."""
    account, container = STORAGE[collection]
    return f"{account}/{container}/{path}"


def write_cog(path: Path, data: np.ndarray, grid: Grid, nodata, categorical=False) -> None:
    """Write (bands, rows, cols) ``data`` as a cloud-optimised GeoTIFF: 256 px deflate tiles,
    internal overviews stored ahead of the full-resolution data (GDAL reports LAYOUT=COG).

    Overviews are built even for rasters smaller than a tile so every asset has them, as
    real products do; categorical bands (SCL, QA) get nearest-neighbour overviews.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count, rows, cols = data.shape
    levels = int(np.clip(np.floor(np.log2(min(rows, cols) / 8)), 1, 6))
    tiles = {"tiled": True, "blockxsize": 256, "blockysize": 256}
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": count,
        "dtype": data.dtype,
        "crs": f"EPSG:{grid.crs}",
        "transform": grid.transform,
        "nodata": nodata,
        **tiles,
    }
    with MemoryFile() as memory, memory.open(**profile) as dataset:
        dataset.write(data)
        resampling = Resampling.nearest if categorical else Resampling.average
        dataset.build_overviews([2**i for i in range(1, levels + 1)], resampling)
        rasterio.shutil.copy(
            dataset,
            path,
            driver="GTiff",
            compress="DEFLATE",
            predictor=3 if data.dtype.kind == "f" else 2,
            copy_src_overviews=True,
            **tiles,
        )


def footprint(grid: Grid, valid_half_plane: tuple[float, float, float] | None) -> Polygon:
    """Lon/lat outline of the grid, cut by the scene's swath edge when there is one."""
    outline = box(*grid.bounds)
    if valid_half_plane is not None:
        a, b, c = valid_half_plane
        west, south, east, north = grid.bounds
        big = 4 * (east - west)
        # the valid side of a*x + b*y <= c, as a huge polygon clipped to the grid
        cx, cy = (west + east) / 2, (south + north) / 2
        t = (c - a * cx - b * cy) / (a * a + b * b)
        px, py = cx + a * t, cy + b * t  # a point on the edge line
        dx, dy = -b, a  # along the edge
        side = Polygon(
            [
                (px + dx * big, py + dy * big),
                (px - dx * big, py - dy * big),
                (px - dx * big - a * big, py - dy * big - b * big),
                (px + dx * big - a * big, py + dy * big - b * big),
            ]
        )
        outline = outline.intersection(side)
    to_lonlat = Transformer.from_crs(grid.crs, 4326, always_xy=True)
    xs, ys = outline.exterior.coords.xy
    lons, lats = to_lonlat.transform(np.asarray(xs), np.asarray(ys))
    return Polygon(np.column_stack([np.round(lons, 7), np.round(lats, 7)]))


def stamp(when: dt.datetime, fmt: str = "%Y%m%dT%H%M%S") -> str:
    return when.strftime(fmt)


def iso(when: dt.datetime, digits: int = 6) -> str:
    """``2019-07-15T16:48:49.024000Z`` style, as PC writes datetimes."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{when.microsecond:06d}"[:digits]
    return text + "Z"

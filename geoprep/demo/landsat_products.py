"""Landsat Collection 2 Level-2 products of the demo world: SR and ST scaling, QA_PIXEL flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import Affine

from geoprep.demo.products import (
    AssetFile,
    Ground,
    Scene,
    Shot,
    blob_path,
    footprint,
    iso,
    write_cog,
)
from geoprep.demo.render import Grid, SkyLayers, apply_sky, sky_layers
from geoprep.demo.truth import CLASS_CODES

#: Landsat C2 L2 asset key -> (file suffix, Sentinel-2 band with the nearest response).
LANDSAT_BANDS = {
    "coastal": ("SR_B1", "B01"), "blue": ("SR_B2", "B02"), "green": ("SR_B3", "B03"),
    "red": ("SR_B4", "B04"), "nir08": ("SR_B5", "B8A"), "swir16": ("SR_B6", "B11"),
    "swir22": ("SR_B7", "B12"),
}  # fmt: skip
LANDSAT_SCALE, LANDSAT_OFFSET = 2.75e-05, -0.2
LANDSAT_ST_SCALE, LANDSAT_ST_OFFSET = 0.00341802, 149.0


def landsat_qa(water30: np.ndarray, sky30: SkyLayers) -> np.ndarray:
    """QA_PIXEL bit flags of Collection 2 (fill 0, dilated 1, cirrus 2, cloud 3, shadow 4,
    clear 6, water 7; confidences in bit pairs 8-9 cloud, 10-11 shadow, 12-13 snow, 14-15
    cirrus), consistent with the rendered sky."""
    low = (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)
    qa = np.full(water30.shape, low | (1 << 6), np.uint16)
    qa[water30 == CLASS_CODES["water"]] |= 1 << 7
    cirrus = sky30.cirrus > 0.1
    qa[cirrus] = (qa[cirrus] & ~np.uint16(3 << 14)) | (3 << 14) | (1 << 2)
    shadow = (sky30.shadow > 0.35) & (sky30.opacity <= 0.2)
    qa[shadow] = low | (1 << 4) | (3 << 10)
    dilated = (sky30.opacity > 0.2) & (sky30.opacity <= 0.5)
    qa[dilated] = (low & ~np.uint16(3 << 8)) | (2 << 8) | (1 << 1)
    cloud = sky30.opacity > 0.5
    qa[cloud] = (low & ~np.uint16(3 << 8)) | (3 << 8) | (1 << 3)
    qa[~sky30.valid] = 1
    return qa


def write_landsat(shot: Shot, ground: Ground, blobs: Path) -> Scene:
    """Write one Landsat Collection 2 Level-2 product (SR bands, ST_B10, QA_PIXEL).

    The product grid is offset by half a pixel from the 60 m AOI grid, as USGS grids are, and
    southern scenes keep the northern UTM code with negative northings, as USGS products do.
    """
    m = shot.meta
    grid = ground.landsat_grid
    keys = list(LANDSAT_BANDS)
    sky30 = sky_layers(shot.sky, grid)
    s2_bands = tuple(LANDSAT_BANDS[k][1] for k in keys)
    reflect = apply_sky(ground.landsat, s2_bands, shot.sky, sky30)
    out_grid = grid
    if grid.crs // 100 == 327:
        t = grid.transform
        out_grid = Grid(grid.crs - 100, Affine(t.a, 0, t.c, 0, t.e, t.f - 10_000_000), grid.shape)
    name = m["product"]
    folder = f"level-2/standard/oli-tirs/{shot.when:%Y}/{m['path']:03d}/{m['row']:03d}/{name}"
    scene = Scene("landsat-c2-l2", m["item_id"], shot.aoi, shot.when, footprint(grid, None), {})

    def put(key: str, suffix: str, data: np.ndarray, nodata, categorical=False):
        path = blob_path(scene.collection, f"{folder}/{name}_{suffix}.TIF")
        write_cog(blobs / path, data, out_grid, nodata, categorical)
        scene.assets[key] = AssetFile(path, out_grid)

    for i, key in enumerate(keys):
        dn = np.clip(np.rint((reflect[i] - LANDSAT_OFFSET) / LANDSAT_SCALE), 1, 65535)
        dn = dn.astype(np.uint16)
        dn[~sky30.valid] = 0
        put(key, LANDSAT_BANDS[key][0], dn[None], 0)
    kelvin = m["surface_kelvin"] + ground.heat30 - 45.0 * sky30.opacity
    st = np.clip(np.rint((kelvin - LANDSAT_ST_OFFSET) / LANDSAT_ST_SCALE), 1, 65535)
    st = st.astype(np.uint16)
    st[~sky30.valid] = 0
    put("lwir11", "ST_B10", st[None], 0)
    qa = landsat_qa(ground.water30, sky30)
    put("qa_pixel", "QA_PIXEL", qa[None], 1, categorical=True)
    cloud = float(((qa & (1 << 3)) > 0).mean() * 100)
    zenith, azimuth = m["sun"]
    t = out_grid.transform
    scene.properties = {
        "gsd": 30,
        "created": iso(m["created"]),
        "sci:doi": "10.5066/P9OGBGM6",
        "datetime": iso(shot.when),
        "platform": m["platform"],
        "proj:epsg": out_grid.crs,
        "proj:shape": list(out_grid.shape),
        "description": "Landsat Collection 2 Level-2",
        "instruments": ["oli", "tirs"],
        "eo:cloud_cover": round(cloud, 2),
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "view:off_nadir": 0,
        "landsat:wrs_row": f"{m['row']:03d}",
        "landsat:scene_id": m["scene_id"],
        "landsat:wrs_path": f"{m['path']:03d}",
        "landsat:wrs_type": "2",
        "view:sun_azimuth": round(azimuth, 8),
        "landsat:correction": "L2SP",
        "view:sun_elevation": round(90 - zenith, 8),
        "landsat:cloud_cover_land": round(cloud, 2),
        "landsat:collection_number": "02",
        "landsat:collection_category": "T1",
    }
    return scene

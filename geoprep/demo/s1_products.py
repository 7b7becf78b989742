"""Sentinel-1 RTC products of the demo world: speckled float32 VV and VH gamma-naught."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from geoprep.demo.products import (
    AssetFile,
    Ground,
    Scene,
    Shot,
    blob_path,
    footprint,
    iso,
    stamp,
    write_cog,
)
from geoprep.demo.render import sky_layers

S1_ENL = 4.4  # equivalent number of looks of the real product (collection summary)
S1_NODATA = -32768.0


def speckle(linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative gamma speckle with the product's equivalent number of looks."""
    return (linear * rng.gamma(S1_ENL, 1.0 / S1_ENL, linear.shape)).astype(np.float32)


def write_s1(shot: Shot, ground: Ground, blobs: Path, rng: np.random.Generator) -> Scene:
    """Write one Sentinel-1 RTC product: VV and VH gamma-naught, float32, speckled."""
    m = shot.meta
    grid = ground.s2_grids[10]
    valid = sky_layers(shot.sky, grid).valid
    start, end = shot.when, shot.when + dt.timedelta(seconds=25)
    product = f"{m['sat']}_IW_GRDH_1SDV_{stamp(start)}_{stamp(end)}_{m['absolute_orbit']:06d}"
    product += f"_{m['datatake']:06X}"
    folder = f"GRD/{start.year}/{start.month}/{start.day}/IW/DV/{product}_{m['unique']}"
    scene = Scene(
        "sentinel-1-rtc",
        f"{product}_rtc",
        shot.aoi,
        start + (end - start) / 2,
        footprint(grid, shot.sky.swath),
        {},
    )
    for key, linear in zip(("vv", "vh"), ground.radar, strict=True):
        data = speckle(linear, rng)
        data[~valid] = S1_NODATA
        path = blob_path(scene.collection, f"{folder}/measurement/iw-{key}.rtc.tiff")
        write_cog(blobs / path, data[None], grid, S1_NODATA)
        scene.assets[key] = AssetFile(path, grid)
    t = grid.transform
    quirk = "%Y-%m-%d %H:%M:%S.%f+00:00"  # PC writes start/end with a space and +00:00
    scene.properties = {
        "datetime": iso(scene.datetime),
        "platform": m["platform"],
        "proj:bbox": list(grid.bounds),
        "proj:epsg": grid.crs,
        "proj:shape": list(grid.shape),
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "constellation": "Sentinel-1",
        "end_datetime": end.strftime(quirk),
        "start_datetime": start.strftime(quirk),
        "s1:datatake_id": str(m["datatake"]),
        "s1:orbit_source": "RESORB",
        "s1:resolution": "high",
        "s1:product_timeliness": "Fast-24h",
        "s1:processing_level": "1",
        "s1:instrument_configuration_ID": "7",
        "s1:slice_number": "12",
        "s1:total_slices": "20",
        "sar:looks_range": 5,
        "sar:looks_azimuth": 1,
        "sar:product_type": "GRD",
        "sar:frequency_band": "C",
        "sar:polarizations": ["VV", "VH"],
        "sar:instrument_mode": "IW",
        "sar:center_frequency": 5.405,
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:pixel_spacing_azimuth": 10,
        "sar:observation_direction": "right",
        "sar:looks_equivalent_number": S1_ENL,
        "sat:orbit_state": m["orbit_state"],
        "sat:relative_orbit": m["orbit"],
        "sat:absolute_orbit": m["absolute_orbit"],
        "sat:platform_international_designator": m["designator"],
    }
    return scene

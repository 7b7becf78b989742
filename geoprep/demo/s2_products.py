"""Sentinel-2 L2A products of the demo world: DN encoding, scene classification and metadata."""

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
from geoprep.demo.render import BANDS, Grid, SkyLayers, apply_sky, area_average, sky_layers
from geoprep.demo.truth import CLASS_CODES

#: Sentinel-2 band -> pixel size in metres (B10 is not distributed as L2A).
S2_GSD = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}  # fmt: skip
#: Scene classification (SCL) codes of Sentinel-2 L2A.
SCL = {
    "no_data": 0, "saturated": 1, "dark": 2, "cloud_shadow": 3, "vegetation": 4,
    "not_vegetated": 5, "water": 6, "unclassified": 7, "cloud_medium": 8, "cloud_high": 9,
    "thin_cirrus": 10, "snow": 11,
}  # fmt: skip


def mgrs_tile(epsg: int, x: float, y: float, lat: float) -> str:
    """The MGRS 100 km square (= Sentinel-2 tile name) of a UTM point."""
    zone = epsg % 100
    bands = "CDEFGHJKLMNPQRSTUVWX"
    band = bands[int(np.clip((lat + 80) // 8, 0, 19))]
    columns = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    # southern-hemisphere UTM northings already include the 10 000 km false northing
    row = (int(y // 100_000) + (5 if zone % 2 == 0 else 0)) % 20
    return f"{zone}{band}{columns[int(x // 100_000) - 1]}{rows[row]}"


def s2_baseline(when: dt.date) -> str:
    """Processing baseline in force on a date (04.00 introduced the +1000 DN offset)."""
    for start, baseline in (
        (dt.date(2022, 12, 6), "05.09"),
        (dt.date(2022, 1, 25), "04.00"),
        (dt.date(2021, 3, 30), "03.00"),
        (dt.date(2020, 1, 28), "02.14"),
        (dt.date(2019, 11, 6), "02.13"),
    ):
        if when >= start:
            return baseline
    return "02.12"


def boa_offset(baseline: str) -> int:
    """The DN offset a baseline adds to L2A reflectance (reflectance = (DN + offset) / 1e4)."""
    return 1000 if float(baseline) >= 4.0 else 0


def scene_classification(
    reflect20: np.ndarray, water20: np.ndarray, sky20: SkyLayers
) -> np.ndarray:
    """SCL codes at 20 m from what the scene shows (bands in :data:`BANDS` order) and where
    the truth has water (``water20``, the water class code where water dominates a pixel)."""
    red, nir = reflect20[list(BANDS).index("B04")], reflect20[list(BANDS).index("B08")]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.where(ndvi > 0.35, SCL["vegetation"], SCL["not_vegetated"]).astype(np.uint8)
    scl[(water20 == CLASS_CODES["water"]) & (nir < 0.08)] = SCL["water"]
    scl[sky20.shadow > 0.35] = SCL["cloud_shadow"]
    scl[sky20.cirrus > 0.1] = SCL["thin_cirrus"]
    scl[(sky20.opacity > 0.2) & (sky20.opacity <= 0.4)] = SCL["unclassified"]
    scl[(sky20.opacity > 0.4) & (sky20.opacity <= 0.7)] = SCL["cloud_medium"]
    scl[sky20.opacity > 0.7] = SCL["cloud_high"]
    scl[~sky20.valid] = SCL["no_data"]
    return scl


def s2_percentages(scl: np.ndarray) -> dict[str, float]:
    """The ``s2:*_percentage`` properties and ``eo:cloud_cover`` computed from SCL."""
    total = scl.size
    valid = max(int((scl != SCL["no_data"]).sum()), 1)

    def pct(*names: str) -> float:
        return round(100.0 * sum(int((scl == SCL[n]).sum()) for n in names) / valid, 6)

    return {
        "eo:cloud_cover": pct("cloud_medium", "cloud_high", "thin_cirrus"),
        "s2:water_percentage": pct("water"),
        "s2:snow_ice_percentage": pct("snow"),
        "s2:vegetation_percentage": pct("vegetation"),
        "s2:thin_cirrus_percentage": pct("thin_cirrus"),
        "s2:cloud_shadow_percentage": pct("cloud_shadow"),
        "s2:nodata_pixel_percentage": round(100.0 * (total - valid) / total, 6),
        "s2:unclassified_percentage": pct("unclassified"),
        "s2:dark_features_percentage": pct("dark"),
        "s2:not_vegetated_percentage": pct("not_vegetated"),
        "s2:degraded_msi_data_percentage": 0.0,
        "s2:high_proba_clouds_percentage": pct("cloud_high"),
        "s2:medium_proba_clouds_percentage": pct("cloud_medium"),
        "s2:saturated_defective_pixel_percentage": pct("saturated"),
    }


def sky_on(sky: SkyLayers, src: Grid, dst: Grid) -> SkyLayers:
    """Area-averaged sky on a coarser grid; a pixel is valid only if all its parts are."""
    return SkyLayers(
        area_average(sky.opacity, src, dst),
        area_average(sky.cirrus, src, dst),
        area_average(sky.shadow, src, dst),
        area_average(sky.valid.astype(np.float32), src, dst) > 0.999,
    )


def _dn_s2(reflectance: np.ndarray, offset: int, valid: np.ndarray) -> np.ndarray:
    dn = np.clip(np.rint(reflectance * 10_000.0) + offset, 1, 65535).astype(np.uint16)
    dn[..., ~valid] = 0
    return dn


def write_s2(shot: Shot, ground: Ground, blobs: Path) -> Scene:
    """Write one Sentinel-2 L2A product (12 bands, SCL, AOT, WVP, TCI, MTD_MSIL2A.xml)."""
    m = shot.meta
    grids = ground.s2_grids
    skies = {10: sky_layers(shot.sky, grids[10])}
    skies[20] = sky_on(skies[10], grids[10], grids[20])
    skies[60] = sky_on(skies[20], grids[20], grids[60])
    seen = {res: apply_sky(ground.s2[res], tuple(BANDS), shot.sky, skies[res]) for res in skies}
    offset = boa_offset(m["baseline"])
    tile, when, gen = m["tile"], shot.when, m["generated"]
    product = (
        f"{m['sat']}_MSIL2A_{stamp(when)}_N{m['baseline'].replace('.', '')}"
        f"_R{m['orbit']:03d}_T{tile}_{stamp(gen)}.SAFE"
    )
    granule = f"L2A_T{tile}_A{m['absolute_orbit']:06d}_{stamp(when + dt.timedelta(seconds=7))}"
    root = f"{tile[:2]}/{tile[2]}/{tile[3:]}/{when:%Y/%m/%d}/{product}"
    img = f"{root}/GRANULE/{granule}/IMG_DATA"
    scene = Scene(
        "sentinel-2-l2a",
        _s2_id(m, when, tile, gen),
        shot.aoi,
        when,
        footprint(grids[10], shot.sky.swath),
        {},
    )

    def put(key: str, res: int, name: str, data: np.ndarray, nodata, categorical=False):
        path = blob_path(scene.collection, f"{img}/R{res}m/T{tile}_{stamp(when)}_{name}_{res}m.tif")
        write_cog(blobs / path, data, grids[res], nodata, categorical)
        scene.assets[key] = AssetFile(path, grids[res])

    for i, band in enumerate(BANDS):
        res = S2_GSD[band]
        put(band, res, band, _dn_s2(seen[res][i], offset, skies[res].valid)[None], 0)
    scl = scene_classification(seen[20], ground.water20, skies[20])
    put("SCL", 20, "SCL", scl[None], 0, categorical=True)
    rgb = seen[10][[3, 2, 1]]
    tci = np.clip(np.rint(rgb / 0.2 * 254 + 1), 1, 255).astype(np.uint8)
    tci[:, ~skies[10].valid] = 0
    put("visual", 10, "TCI", tci, 0)
    aot = 100 + 4000 * shot.sky.haze + 30 * skies[10].opacity
    put("AOT", 10, "AOT", _dn_s2(aot[None] / 10_000, 0, skies[10].valid), 0)
    wvp = 1200 + 900 * m["humidity"] + 200 * skies[10].opacity
    put("WVP", 10, "WVP", _dn_s2(wvp[None] / 10_000, 0, skies[10].valid), 0)
    xml = blob_path(scene.collection, f"{root}/MTD_MSIL2A.xml")
    (blobs / xml).write_text(_s2_product_metadata(product, m["baseline"], offset))
    scene.assets["product-metadata"] = AssetFile(xml)
    zenith, azimuth = m["sun"]
    scene.properties = {
        "datetime": iso(when),
        "platform": m["platform"],
        "proj:epsg": grids[10].crs,
        "instruments": ["msi"],
        "s2:mgrs_tile": tile,
        "constellation": "Sentinel 2",
        "s2:granule_id": f"{m['sat']}_OPER_MSI_L2A_TL_{m['centre']}_{stamp(gen)}"
        f"_A{m['absolute_orbit']:06d}_T{tile}_N{m['baseline']}",
        "s2:datatake_id": f"G{m['sat']}_{stamp(when)}_{m['absolute_orbit']:06d}_N{m['baseline']}",
        "s2:product_uri": product,
        "s2:datastrip_id": f"{m['sat']}_OPER_MSI_L2A_DS_{m['centre']}"
        f"_{stamp(gen)}_S{stamp(when - dt.timedelta(seconds=2))}_N{m['baseline']}",
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "s2:datatake_type": "INS-NOBS",
        "s2:generation_time": iso(gen),
        "sat:relative_orbit": m["orbit"],
        **s2_percentages(scl),
        "s2:mean_solar_zenith": round(zenith, 10),
        "s2:mean_solar_azimuth": round(azimuth, 10),
        "s2:processing_baseline": m["baseline"],
        "s2:reflectance_conversion_factor": round(
            1 + 0.0334 * np.cos(2 * np.pi * (when.timetuple().tm_yday - 3) / 365.25), 12
        ),
    }
    return scene


def _s2_id(m: dict, when: dt.datetime, tile: str, generated: dt.datetime) -> str:
    return f"{m['sat']}_MSIL2A_{stamp(when)}_R{m['orbit']:03d}_T{tile}_{stamp(generated)}"


def _s2_product_metadata(product: str, baseline: str, offset: int) -> str:
    """The parts of MTD_MSIL2A.xml a reader needs to turn DN into reflectance."""
    offsets = "".join(
        f'      <BOA_ADD_OFFSET band_id="{i}">{-offset}</BOA_ADD_OFFSET>\n' for i in range(13)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-2A.xsd">\n'
        "  <n1:General_Info>\n    <Product_Info>\n"
        f"      <PRODUCT_URI>{product}</PRODUCT_URI>\n"
        f"      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>\n"
        "    </Product_Info>\n    <Product_Image_Characteristics>\n"
        "      <QUANTIFICATION_VALUES_LIST>\n"
        '        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
        "      </QUANTIFICATION_VALUES_LIST>\n"
        + (
            f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{offsets}      </BOA_ADD_OFFSET_VALUES_LIST>\n"
            if offset
            else ""
        )
        + "    </Product_Image_Characteristics>\n  </n1:General_Info>\n"
        "</n1:Level-2A_User_Product>\n"
    )

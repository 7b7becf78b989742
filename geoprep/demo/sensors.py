"""The demo world's four sensors: pixel encodings, quality bands and cloud-optimised GeoTIFFs.

:func:`ground_views` area-averages a rendered surface onto every sensor's grid; each
``write_*`` function turns rendered reflectance (or backscatter) into the files a real
product of that collection has, in that product's data type, scaling, nodata and quality-band
conventions, under a blob path shaped like Planetary Computer's, and returns a :class:`Scene`
(id, time, footprint, properties, assets) from which :mod:`geoprep.demo.stac_items` builds the
STAC item.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from shapely.geometry import Polygon, box

from geoprep.demo.render import (
    BANDS,
    Grid,
    Sky,
    SkyLayers,
    Surface,
    apply_sky,
    area_average,
    sky_layers,
)
from geoprep.demo.truth import CLASS_CODES

log = logging.getLogger(__name__)

#: Collection id -> (storage account, container), as on Planetary Computer.
STORAGE = {
    "sentinel-2-l2a": ("sentinel2l2a01", "sentinel2-l2"),
    "naip": ("naipeuwest", "naip"),
    "landsat-c2-l2": ("landsateuwest", "landsat-c2"),
    "sentinel-1-rtc": ("sentinel1euwestrtc", "sentinel1-grd-rtc"),
}
#: Sentinel-2 band -> pixel size in metres (B10 is not distributed as L2A).
S2_GSD = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}  # fmt: skip
#: Landsat C2 L2 asset key -> (file suffix, Sentinel-2 band with the nearest response).
LANDSAT_BANDS = {
    "coastal": ("SR_B1", "B01"), "blue": ("SR_B2", "B02"), "green": ("SR_B3", "B03"),
    "red": ("SR_B4", "B04"), "nir08": ("SR_B5", "B8A"), "swir16": ("SR_B6", "B11"),
    "swir22": ("SR_B7", "B12"),
}  # fmt: skip
LANDSAT_SCALE, LANDSAT_OFFSET = 2.75e-05, -0.2
LANDSAT_ST_SCALE, LANDSAT_ST_OFFSET = 0.00341802, 149.0
#: Scene classification (SCL) codes of Sentinel-2 L2A.
SCL = {
    "no_data": 0, "saturated": 1, "dark": 2, "cloud_shadow": 3, "vegetation": 4,
    "not_vegetated": 5, "water": 6, "unclassified": 7, "cloud_medium": 8, "cloud_high": 9,
    "thin_cirrus": 10, "snow": 11,
}  # fmt: skip
#: NAIP bands (R, G, B, NIR) and the Sentinel-2 bands they are rendered from.
NAIP_BANDS = ("B04", "B03", "B02", "B08")
S1_ENL = 4.4  # equivalent number of looks of the real product (collection summary)
S1_NODATA = -32768.0


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


def solar_angles(when: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """Approximate solar zenith and azimuth (degrees, azimuth clockwise from north)."""
    doy = when.timetuple().tm_yday
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365.0)
    solar_hour = when.hour + when.minute / 60 + lon / 15.0
    hour_angle = np.radians(15.0 * (solar_hour - 12.0))
    phi = np.radians(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    zenith = np.arccos(np.clip(cos_z, -1, 1))
    azimuth = np.arctan2(
        -np.sin(hour_angle), np.tan(decl) * np.cos(phi) - np.sin(phi) * np.cos(hour_angle)
    )
    return float(np.degrees(zenith)), float(np.degrees(azimuth) % 360)


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


def sky_on(sky: SkyLayers, src: Grid, dst: Grid) -> SkyLayers:
    """Area-averaged sky on a coarser grid; a pixel is valid only if all its parts are."""
    return SkyLayers(
        area_average(sky.opacity, src, dst),
        area_average(sky.cirrus, src, dst),
        area_average(sky.shadow, src, dst),
        area_average(sky.valid.astype(np.float32), src, dst) > 0.999,
    )


def majority_class(classes: np.ndarray, src: Grid, dst: Grid, code: int) -> np.ndarray:
    """``code`` where at least half of a coarse pixel has that class, else 0."""
    share = area_average((classes == code).astype(np.float32), src, dst)
    return np.where(share >= 0.5, code, 0).astype(np.uint8)


def speckle(linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative gamma speckle with the product's equivalent number of looks."""
    return (linear * rng.gamma(S1_ENL, 1.0 / S1_ENL, linear.shape)).astype(np.float32)


def stamp(when: dt.datetime, fmt: str = "%Y%m%dT%H%M%S") -> str:
    return when.strftime(fmt)


def iso(when: dt.datetime, digits: int = 6) -> str:
    """``2019-07-15T16:48:49.024000Z`` style, as PC writes datetimes."""
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{when.microsecond:06d}"[:digits]
    return text + "Z"


def transform9(transform: Affine) -> list[float]:
    """NAIP items carry the full 3x3 affine matrix."""
    return [float(v) for v in list(transform)[:9]]


# --- acquisitions -------------------------------------------------------------------------------


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


def ground_views(surface: Surface, when: dt.date, bounds, radar: bool) -> Ground:
    """Render the surface at ``when`` and area-average it to the S2, Landsat and S1 grids."""
    canvas = surface.grid
    reflect = surface.reflectance(when)
    grids = {res: canvas.covering(bounds, res) for res in (10, 20, 60)}
    s2 = {10: area_average(reflect, canvas, grids[10])}
    s2[20] = area_average(s2[10], grids[10], grids[20])
    s2[60] = area_average(s2[20], grids[20], grids[60])
    landsat_grid = canvas.covering(bounds, 30, anchor=15)
    order = list(BANDS)
    landsat = area_average(
        reflect[[order.index(LANDSAT_BANDS[k][1]) for k in LANDSAT_BANDS]], canvas, landsat_grid
    )
    water = CLASS_CODES["water"]
    backscatter = None
    if radar:
        vv, vh = surface.backscatter(when)
        backscatter = (area_average(vv, canvas, grids[10]), area_average(vh, canvas, grids[10]))
    return Ground(
        grids,
        s2,
        majority_class(surface.classes, canvas, grids[20], water),
        landsat_grid,
        landsat,
        majority_class(surface.classes, canvas, landsat_grid, water),
        _heat(surface.classes, canvas, landsat_grid),
        backscatter,
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


def _heat(classes: np.ndarray, canvas: Grid, grid: Grid) -> np.ndarray:
    """Surface temperature offsets (K) by land cover: warm towns and rock, cool water and trees."""
    offsets = np.zeros(len(CLASS_CODES), np.float32)
    warmth = {"water": -5, "forest": -3, "built_up": 5, "bare_rock": 4, "quarry": 4}
    warmth |= {"substation": 5, "stadium": 3, "farmland": 1}
    for name, kelvin in warmth.items():
        offsets[CLASS_CODES[name]] = kelvin
    return area_average(offsets[classes], canvas, grid)


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


def write_naip(shot: Shot, grid: Grid, reflect: np.ndarray, blobs: Path) -> Scene:
    """Write one NAIP quarter quad: a single 4-band (R, G, B, NIR) uint8 COG, no nodata."""
    m = shot.meta
    dn = np.clip(np.rint(reflect * 500.0 + 10.0), 0, 255).astype(np.uint8)
    name = m["name"]
    path = blob_path(
        "naip",
        f"v002/{m['state']}/{shot.when.year}/{m['state']}_{m['cm']}cm_{shot.when.year}"
        f"/{m['block']}/{name}.tif",
    )
    write_cog(blobs / path, dn, grid, None)
    scene = Scene("naip", f"{m['state']}_{name}", shot.aoi, shot.when, footprint(grid, None), {})
    scene.assets["image"] = AssetFile(path, grid)
    west, south, east, north = grid.bounds
    centre = Transformer.from_crs(grid.crs, 4326, always_xy=True).transform(
        (west + east) / 2, (south + north) / 2
    )
    scene.properties = {
        "gsd": grid.res,
        "datetime": shot.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "naip:year": str(shot.when.year),
        "proj:bbox": [west, south, east, north],
        "proj:epsg": grid.crs,
        "providers": [
            {
                "url": "https://www.fsa.usda.gov/programs-and-services/aerial-photography/"
                "imagery-programs/naip-imagery/",
                "name": "USDA Farm Service Agency",
                "roles": ["producer", "licensor"],
            }
        ],
        "naip:state": m["state"],
        "proj:shape": list(grid.shape),
        "proj:centroid": {"lat": round(centre[1], 5), "lon": round(centre[0], 5)},
        "proj:transform": transform9(grid.transform),
    }
    return scene

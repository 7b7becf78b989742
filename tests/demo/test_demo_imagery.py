"""Tests of the demo world's imagery: COG structure, encodings, clouds, nodata, change, texture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.features import geometry_mask
from scipy import ndimage
from shapely.geometry import Polygon, shape

from geoprep.core.errors import UserError
from geoprep.demo.naip_products import NAIP_NOISE
from geoprep.demo.s2_products import S2_GSD, SCL
from geoprep.demo.truth import CHANGE_YEAR, CLASS_CODES, Truth
from geoprep.demo.world import WorldManifest, build_world


def items(world: Path, collection: str) -> list[dict]:
    """Items of the local catalog with asset hrefs resolved to absolute paths."""
    out = []
    for path in sorted((world / "stac" / "local" / collection).glob("*/*.json")):
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            if not asset["href"].startswith("http"):
                asset["path"] = (path.parent / asset["href"]).resolve()
        out.append(item)
    return out


def read(item: dict, key: str, band: int = 1):
    with rasterio.open(item["assets"][key]["path"]) as ds:
        return ds.read(band), ds.transform, ds.crs, ds.nodata


def reflectance(item: dict, key: str) -> np.ndarray:
    """Harmonised S2 reflectance (NaN at nodata), undoing the 04.00 offset."""
    dn, *_ = read(item, key)
    offset = 1000 if float(item["properties"]["s2:processing_baseline"]) >= 4 else 0
    return np.where(dn == 0, np.nan, (dn.astype(float) - offset) / 10_000)


def truth_on(truth: Truth, item: dict, key: str, year: int | None = None) -> np.ndarray:
    dn, transform, crs, _ = read(item, key)
    year = year or int(item["properties"]["datetime"][:4])
    return truth.rasterize(aoi_of(truth, item), year, crs, transform, dn.shape)


def aoi_of(truth: Truth, item: dict) -> str:
    """Name of the AOI an item covers (its bbox centre lies in the AOI)."""
    west, south, east, north = item["bbox"]
    x, y = (west + east) / 2, (south + north) / 2
    for aoi in truth.aois:
        w, s, e, n = aoi.bounds_lonlat
        if w <= x <= e and s <= y <= n:
            return aoi.name
    raise AssertionError(f"{item['id']} lies in no AOI")


@pytest.fixture(scope="module")
def truth(demo_world) -> Truth:
    return Truth.read(demo_world / "truth")


def test_world_layout_and_manifest(demo_world):
    for name in (
        "world.json",
        "truth/aois.geojson",
        "truth/landcover.parquet",
        "truth/cities.csv",
        "stac/pc/catalog.json",
        "stac/local/catalog.json",
    ):
        assert (demo_world / name).is_file(), name
    manifest = WorldManifest.read(demo_world / "world.json")
    assert (manifest.seed, manifest.scale) == (0, "tiny")
    assert set(manifest.sensors) == {"sentinel-2-l2a", "landsat-c2-l2", "sentinel-1-rtc", "naip"}
    assert set(manifest.parts) >= {"imagery", "stac"}
    accounts = {p.name for p in (demo_world / "blobs").iterdir()}
    assert accounts == {"sentinel2l2a01", "naipeuwest", "landsateuwest", "sentinel1euwestrtc"}


EXPECTED = {  # collection: (dtype, nodata)
    "sentinel2l2a01": ("uint16", 0), "landsateuwest": ("uint16", None),
    "sentinel1euwestrtc": ("float32", -32768), "naipeuwest": ("uint8", None),
}  # fmt: skip


def test_every_raster_is_a_cloud_optimised_geotiff(demo_world):
    rasters = [
        p for p in (demo_world / "blobs").rglob("*") if p.suffix.lower() in (".tif", ".tiff")
    ]
    assert len(rasters) > 200
    for path in rasters:
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
            assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256), path
            assert ds.overviews(1), path
            assert ds.compression.name.lower() == "deflate", path
            dtype, nodata = EXPECTED[path.relative_to(demo_world / "blobs").parts[0]]
            if "_TCI_" in path.name or "_SCL_" in path.name:
                dtype = "uint8"
            assert ds.dtypes[0] == dtype, path
            if nodata is not None:
                assert ds.nodata == nodata, path
            if "naip" in str(path):
                assert ds.nodata is None and ds.count == 4 and ds.crs.to_epsg() // 100 == 269


def digest(world: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(world.glob(pattern))
    }


def test_same_seed_gives_identical_bytes(demo_world, tmp_path):
    again = tmp_path / "again"
    build_world(again, seed=0, scale="tiny")
    for pattern in (
        "blobs/sentinel2l2a01/**/*B04_10m.tif",
        "blobs/sentinel1euwestrtc/**/*.tiff",
        "blobs/naipeuwest/**/*.tif",
        "stac/pc/**/*.json",
        "stac/geoparquet/*.parquet",
        "truth/*",
        "world.json",
    ):
        first, second = digest(demo_world, pattern), digest(again, pattern)
        assert first and first == second, pattern


def test_rebuild_replaces_a_world_but_never_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo world"):
        build_world(foreign, seed=0, scale="tiny")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".mine.*"))


def test_s2_bands_have_their_real_pixel_sizes(demo_world):
    item = items(demo_world, "sentinel-2-l2a")[0]
    for band, gsd in S2_GSD.items():
        _, transform, crs, nodata = read(item, band)
        assert transform.a == gsd and crs.to_epsg() == item["properties"]["proj:epsg"]
        assert nodata == 0
        assert list(transform)[:6] == item["assets"][band]["proj:transform"]
    assert "B10" not in item["assets"]
    assert read(item, "SCL")[1].a == 20 and read(item, "visual")[1].a == 10


def test_processing_baseline_04_adds_the_dn_offset(demo_world, truth):
    by_baseline = {}
    for item in items(demo_world, "sentinel-2-l2a"):
        baseline = item["properties"]["s2:processing_baseline"]
        dn, *_ = read(item, "B04")
        scl, *_ = read(item, "SCL")
        water = np.kron(scl == SCL["water"], np.ones((2, 2), bool))
        if water.sum() > 20:
            by_baseline.setdefault(float(baseline) >= 4, []).append((item, dn, water))
    assert set(by_baseline) == {False, True}
    raw = {k: np.median([np.median(dn[w]) for _, dn, w in v]) for k, v in by_baseline.items()}
    assert raw[True] - raw[False] > 800  # same water, about 1000 DN apart before harmonising
    # Dark water lies below 1000 DN in the old convention and never in the new one: the offset
    # is added to every valid pixel. (Water medians of different dates also differ by haze, so
    # comparing them across baselines would test the weather, not the offset.)
    lowest = {k: min(int(dn[w & (dn > 0)].min()) for _, dn, w in v) for k, v in by_baseline.items()}
    assert lowest[False] < 1000 <= lowest[True]
    newer = by_baseline[True][0][0]
    xml = Path(newer["assets"]["product-metadata"]["path"]).read_text()
    assert "<BOA_ADD_OFFSET" in xml and ">-1000<" in xml


def test_scene_classification_follows_the_rendered_clouds(demo_world):
    cloudy = [
        i for i in items(demo_world, "sentinel-2-l2a") if i["properties"]["eo:cloud_cover"] > 30
    ]
    assert cloudy
    compared = 0
    for item in cloudy:
        scl, *_ = read(item, "SCL")
        blue = reflectance(item, "B02")[::2, ::2]  # 10 m -> 20 m grid
        cloud = np.isin(scl, [SCL["cloud_medium"], SCL["cloud_high"]])
        ground = np.isin(scl, [SCL["vegetation"], SCL["not_vegetated"]])
        if ground.any():  # an overcast tile has no ground to compare with
            assert np.nanmean(blue[cloud]) > 3 * np.nanmean(blue[ground]), item["id"]
            compared += 1
        valid = scl != SCL["no_data"]
        cover = np.isin(scl[valid], [8, 9, 10]).mean() * 100
        assert abs(cover - item["properties"]["eo:cloud_cover"]) < 0.01
    assert compared > 0


def test_nodata_wedges_match_the_item_footprint(demo_world):
    wedged = [
        i
        for i in items(demo_world, "sentinel-2-l2a")
        if i["properties"]["s2:nodata_pixel_percentage"] > 10
    ]
    assert wedged
    for item in wedged:
        dn, transform, crs, _ = read(item, "B02")
        scl, *_ = read(item, "SCL")
        assert (scl == 0).mean() > 0.1 and (dn == 0).mean() > 0.1
        to_utm = Transformer.from_crs(4326, crs, always_xy=True)
        lon, lat = np.asarray(shape(item["geometry"]).exterior.coords).T
        footprint = Polygon(np.column_stack(to_utm.transform(lon, lat)))
        inside = geometry_mask([footprint.buffer(-15)], dn.shape, transform, invert=True)
        outside = geometry_mask([footprint.buffer(15)], dn.shape, transform, invert=False)
        assert inside.sum() > 0.5 * dn.size and outside.sum() > 0.05 * dn.size
        assert (dn[inside] > 0).all() and (dn[outside] == 0).all()


def test_landsat_quality_bits_follow_clouds_and_the_usgs_grid(demo_world):
    scenes = items(demo_world, "landsat-c2-l2")
    cloudy = [i for i in scenes if i["properties"]["eo:cloud_cover"] > 5]
    assert cloudy
    for item in cloudy:
        qa, transform, crs, _ = read(item, "qa_pixel")
        blue, *_ = read(item, "blue")
        cloud = (qa & (1 << 3)) > 0
        clear = (qa & (1 << 6)) > 0
        reflect = blue * 2.75e-5 - 0.2
        assert reflect[cloud].mean() > reflect[clear].mean() + 0.2
        assert abs(cloud.mean() * 100 - item["properties"]["eo:cloud_cover"]) < 0.01
    for item in scenes:
        _, transform, crs, _ = read(item, "red")
        assert transform.c % 30 == 15 and crs.to_epsg() // 100 == 326  # northern codes only
        if item["id"].startswith("LC08_L2SP_092085"):  # the southern AOI
            assert transform.f < 0


def test_radar_has_speckle_and_dark_water(demo_world, truth):
    for item in items(demo_world, "sentinel-1-rtc"):
        vv, transform, crs, nodata = read(item, "vv")
        assert nodata == -32768 and vv.dtype == np.float32
        codes = truth_on(truth, item, "vv")
        valid = vv != nodata
        water = ndimage.binary_erosion(codes == CLASS_CODES["water"], iterations=2) & valid
        land = (codes == CLASS_CODES["farmland"]) & valid
        assert np.median(vv[water]) < 0.2 * np.median(vv[land])
        variation = vv[water].std() / vv[water].mean()
        assert 0.3 < variation < 0.8  # multiplicative speckle of ~4.4 looks
    assert any(
        (read(i, "vv")[0] == -32768).mean() > 0.1 for i in items(demo_world, "sentinel-1-rtc")
    )


def local_texture(image: np.ndarray, size: int = 9) -> np.ndarray:
    """Standard deviation in a ``size`` x ``size`` window."""
    mean = ndimage.uniform_filter(image, size)
    return np.sqrt(np.maximum(ndimage.uniform_filter(image**2, size) - mean**2, 0))


def test_classes_differ_in_texture_not_only_in_brightness(demo_world, truth):
    item = items(demo_world, "naip")[0]
    with rasterio.open(item["assets"]["image"]["path"]) as ds:
        nir = ds.read(4).astype(float)
        codes = truth.rasterize(
            "iowa", int(item["properties"]["naip:year"]), ds.crs, ds.transform, nir.shape
        )
    # the texture of the ground, above the camera's noise
    texture = np.sqrt(np.maximum(local_texture(nir) ** 2 - (NAIP_NOISE * 500) ** 2, 0))
    core = {
        name: ndimage.binary_erosion(codes == CLASS_CODES[name], iterations=5)
        for name in ("water", "other", "farmland", "forest", "built_up")
    }
    level = {name: texture[mask].mean() for name, mask in core.items() if mask.sum() > 500}
    assert {"water", "other", "farmland"} <= set(level)
    # meadow and fields are both bright in the near infrared; drill rows set fields apart
    assert level["farmland"] > 2 * max(level["water"], level["other"])
    # crowns and roofs are rougher still, though open woodland stands are smoother than closed
    rough = [level[name] for name in ("forest", "built_up") if name in level]
    assert rough and min(rough) > 1.5 * level["farmland"]


def test_satellite_texture_sets_towns_and_rock_apart_from_fields(demo_world, truth):
    energy: dict[str, list[float]] = {}
    for item in items(demo_world, "sentinel-2-l2a"):
        if (
            item["properties"]["eo:cloud_cover"] > 1
            or item["properties"]["s2:nodata_pixel_percentage"]
        ):
            continue
        red = reflectance(item, "B04")
        codes = truth_on(truth, item, "B04")
        gradient = np.hypot(*np.gradient(red))
        for name in ("water", "farmland", "built_up", "bare_rock", "quarry"):
            mask = ndimage.binary_erosion(codes == CLASS_CODES[name], iterations=1)
            if mask.sum() > 20:
                energy.setdefault(name, []).append(float(np.median(gradient[mask])))
    level = {name: np.median(values) for name, values in energy.items()}
    assert level["water"] < level["farmland"] < level["built_up"]
    assert level["built_up"] > 2 * level["farmland"]


def test_land_cover_change_shows_between_years(demo_world, truth):
    """The forest turned quarry reflects far more red light after the change year."""
    f = truth.features
    pits = f[(f["cls"] == "quarry") & (f["valid_from_year"] == CHANGE_YEAR)]
    assert not pits.empty
    red = {False: [], True: []}
    for item in items(demo_world, "sentinel-2-l2a"):
        year = int(item["properties"]["datetime"][:4])
        _, transform, crs, _ = read(item, "B04")
        scl, *_ = read(item, "SCL")
        clear = np.kron(np.isin(scl, [4, 5]), np.ones((2, 2), bool))
        values = reflectance(item, "B04")
        for pit in pits.to_crs(crs).geometry:
            inside = geometry_mask([pit.buffer(-10)], values.shape, transform, invert=True) & clear
            if inside.sum() > 5:
                red[year >= CHANGE_YEAR].extend(values[inside].tolist())
    assert red[False] and red[True]
    assert np.median(red[True]) > np.median(red[False]) + 0.08


@pytest.mark.parametrize(
    ("collection", "key", "nir_band", "scale", "offset", "threshold"),
    [
        ("sentinel-2-l2a", "B08", 1, 1e-4, 0.0, 0.08),
        ("landsat-c2-l2", "nir08", 1, 2.75e-5, -0.2, 0.08),
        ("naip", "image", 4, 1 / 500, -10 / 500, 0.08),
    ],
)
def test_every_sensor_sees_the_water_where_the_truth_has_it(
    demo_world, truth, collection, key, nir_band, scale, offset, threshold
):
    overlaps = []
    for item in items(demo_world, collection):
        dn, transform, crs, _ = read(item, key, nir_band)
        year = int(item["properties"]["datetime"][:4])
        codes = truth_on(truth, item, key, year)
        if collection == "sentinel-2-l2a":
            base = 1000 if float(item["properties"]["s2:processing_baseline"]) >= 4 else 0
            dn = dn.astype(float) - base
            scl, *_ = read(item, "SCL")
            clear = np.kron(np.isin(scl, [4, 5, 6]), np.ones((2, 2), bool))
        elif collection == "landsat-c2-l2":
            qa, *_ = read(item, "qa_pixel")
            clear = (qa & (1 << 6)) > 0
        else:
            clear = np.ones(dn.shape, bool)
        if clear.mean() < 0.8:
            continue
        dark = (dn * scale + offset < threshold) & clear
        # creeks and farm ponds are narrower than a Landsat pixel: judge the pixels that are
        # surely water (an eroded mask), and dark pixels against water within one pixel
        water = codes == CLASS_CODES["water"]
        pure, near = ndimage.binary_erosion(water) & clear, ndimage.binary_dilation(water)
        overlaps.append(
            min((dark & pure).sum() / max(pure.sum(), 1), (dark & near).sum() / max(dark.sum(), 1))
        )
    assert overlaps and np.median(overlaps) > 0.75, overlaps

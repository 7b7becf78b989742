"""Tests of the demo world's ground truth: AOIs, land-cover polygons, change, cities, I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml
from global_land_mask import globe
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import Point, box

from geoprep.core.errors import UserError
from geoprep.demo.landscape import build_truth
from geoprep.demo.truth import (
    ALWAYS_FROM,
    ALWAYS_TO,
    CHANGE_YEAR,
    CLASS_CODES,
    CSF_CLASSES,
    SCALE_SIDES,
    YEARS,
    Truth,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "demo"


@pytest.fixture(scope="module")
def tiny() -> Truth:
    return build_truth(0, "tiny")


@pytest.fixture(scope="module")
def small() -> Truth:
    return build_truth(0, "small")


def in_utm(truth: Truth, aoi_name: str, cls: str, year: int = YEARS[-1]):
    feats = truth.features_at(year)
    feats = feats[(feats["aoi"] == aoi_name) & (feats["cls"] == cls)]
    return feats.to_crs(truth.aoi(aoi_name).epsg)


def test_aois_are_on_land_in_several_utm_zones_and_both_hemispheres(small):
    assert len(small.aois) >= 3
    assert len({a.epsg for a in small.aois}) >= 2
    assert any(a.epsg // 100 == 327 for a in small.aois)  # southern UTM
    for aoi in small.aois:
        west, south, east, north = aoi.bounds_lonlat
        lats, lons = np.meshgrid(np.linspace(south, north, 9), np.linspace(west, east, 9))
        assert globe.is_land(lats.ravel(), lons.ravel()).all(), aoi.name
        assert all(v % 60 == 0 for v in aoi.bounds_utm), aoi.bounds_utm
        assert aoi.side == SCALE_SIDES["small"]


@pytest.mark.parametrize("year", [YEARS[0], YEARS[-1]])
@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_every_class_lies_in_every_aoi_every_year(scale, year, tiny, small):
    truth = tiny if scale == "tiny" else small
    feats = truth.features_at(year)
    for aoi in truth.aois:
        present = set(feats.loc[feats["aoi"] == aoi.name, "cls"])
        assert set(CSF_CLASSES) | {"built_up"} <= present, aoi.name


def test_small_scale_has_several_instances_of_each_class(small):
    counts = small.features_at(YEARS[-1]).groupby(["aoi", "cls"]).size()
    for aoi in small.aois:
        assert (counts[aoi.name][list(CSF_CLASSES)] >= 2).all(), counts[aoi.name]


def test_the_naip_aoi_holds_dozens_of_each_evaluation_class(small):
    """The demo CSF-OSM set needs 30+ polygons of each of its classes under the NAIP imagery
    (all of the Iowa AOI at the small scale); bridges, one per creek crossing, are fewer."""
    recipe = yaml.safe_load((RECIPES / "csf-osm-eval.yaml").read_text())
    classes = recipe["sampler"]["classes"]
    counts = small.features_at(YEARS[-1]).query("aoi == 'iowa'").groupby("cls").size()
    assert len(classes) >= 8
    for cls in classes:
        assert counts[cls] >= (20 if cls == "bridge" else 40), (cls, counts[cls])


@pytest.mark.parametrize(
    ("cls", "short_side", "long_side"),
    [
        ("bridge", (6, 30), (16, 130)),  # farm bridges over creeks to river bridges
        ("stadium", (150, 200), (200, 240)),
        ("farm_building", (12, 26), (24, 52)),
        ("farmland", (60, 450), (150, 600)),
        ("breakwater", (8, 15), (45, 115)),
    ],
)
def test_object_sizes_are_realistic(small, cls, short_side, long_side):
    for aoi in small.aois:
        for geom in in_utm(small, aoi.name, cls).geometry:
            rect = shapely.minimum_rotated_rectangle(geom)
            xy = np.asarray(rect.exterior.coords)
            sides = sorted(np.hypot(*np.diff(xy[:3], axis=0).T))
            assert short_side[0] <= sides[0] <= short_side[1], (cls, sides)
            assert long_side[0] <= sides[1] <= long_side[1], (cls, sides)


def test_bridges_and_dams_cross_water(small):
    for aoi in small.aois:
        water = in_utm(small, aoi.name, "water").union_all()
        for cls in ("bridge", "dam"):
            for geom in in_utm(small, aoi.name, cls).geometry:
                share = geom.intersection(water).area / geom.area
                assert 0.3 < share < 0.95, (aoi.name, cls, share)


def test_some_water_bodies_have_islands_or_several_parts(tiny):
    water = tiny.features[tiny.features["cls"] == "water"].geometry
    assert (water.geom_type == "MultiPolygon").any()
    holes = shapely.get_num_interior_rings(shapely.get_parts(water.to_numpy()))
    assert (holes > 0).any()
    assert water.is_valid.all() and tiny.features.is_valid.all()


def test_land_cover_changes_in_change_year(tiny):
    f = tiny.features
    ended = f[f["valid_to_year"] == CHANGE_YEAR - 1]
    started = f[f["valid_from_year"] == CHANGE_YEAR]
    assert {"farmland", "forest"} <= set(ended["cls"])
    assert {"built_up", "quarry"} <= set(started["cls"])
    assert set(f["valid_from_year"]) <= {ALWAYS_FROM, CHANGE_YEAR}
    assert set(f["valid_to_year"]) <= {ALWAYS_TO, CHANGE_YEAR - 1}
    # a new quarry lies where forest stood and is forest no more
    for aoi in tiny.aois:
        new_pits = started[(started["aoi"] == aoi.name) & (started["cls"] == "quarry")]
        if new_pits.empty:
            continue
        aoi_ = tiny.aoi(aoi.name)
        transform, shape = aoi_.grid(10.0)
        before = tiny.rasterize(aoi.name, CHANGE_YEAR - 1, aoi_.epsg, transform, shape)
        after = tiny.rasterize(aoi.name, CHANGE_YEAR, aoi_.epsg, transform, shape)
        changed = after == CLASS_CODES["quarry"]
        changed &= before != CLASS_CODES["quarry"]
        assert changed.sum() > 10
        assert (before[changed] == CLASS_CODES["forest"]).mean() > 0.9


def test_truth_is_deterministic_and_follows_the_seed(tiny):
    again = build_truth(0, "tiny")
    assert again.features.drop(columns="geometry").equals(tiny.features.drop(columns="geometry"))
    assert (
        shapely.to_wkb(again.features.geometry.to_numpy()).tolist()
        == shapely.to_wkb(tiny.features.geometry.to_numpy()).tolist()
    )
    assert again.cities.equals(tiny.cities)
    other = build_truth(1, "tiny")
    assert not other.features.geometry.geom_equals(tiny.features.geometry).all()


def test_write_and_read_round_trip(tiny, tmp_path):
    tiny.write(tmp_path / "truth")
    names = sorted(p.name for p in (tmp_path / "truth").iterdir())
    assert names == ["aois.geojson", "cities.csv", "landcover.parquet"]
    back = Truth.read(tmp_path / "truth")
    assert back.aois == tiny.aois
    assert (back.seed, back.scale) == (0, "tiny")
    assert list(back.features.columns) == [
        "fid",
        "aoi",
        "cls",
        "valid_from_year",
        "valid_to_year",
        "geometry",
    ]
    assert back.features.crs.to_epsg() == 4326
    assert back.features.geometry.geom_equals_exact(tiny.features.geometry, 1e-9).all()
    assert list(back.cities.columns)[:4] == ["name", "lat", "lon", "population"]


def test_read_of_a_missing_truth_names_the_file(tmp_path):
    with pytest.raises(UserError, match="aois.geojson"):
        Truth.read(tmp_path)


def test_unknown_scale_and_aoi_are_user_errors(tiny):
    with pytest.raises(UserError, match="scale"):
        build_truth(0, "huge")
    with pytest.raises(UserError, match="atlantis"):
        tiny.aoi("atlantis")


def test_cities_lie_inside_their_aoi_and_gaussian_samples_stay_mostly_inside(small):
    rng = np.random.default_rng(0)
    for aoi in small.aois:
        cities = small.cities[small.cities["aoi"] == aoi.name]
        assert len(cities) >= 2
        to_utm = Transformer.from_crs(4326, aoi.epsg, always_xy=True)
        footprint = box(*aoi.bounds_utm)
        for city in cities.itertuples():
            assert footprint.contains(Point(to_utm.transform(city.lon, city.lat)))
        main = cities.loc[cities["population"].idxmax()]
        x, y = to_utm.transform(main.lon, main.lat)
        points = rng.normal([x, y], 1500.0, size=(500, 2))
        inside = shapely.contains_xy(footprint, points[:, 0], points[:, 1]).mean()
        assert inside > 0.7, (aoi.name, inside)


def test_rasterize_paints_classes_in_order_on_any_grid(tiny):
    aoi = tiny.aoi("iowa")
    transform, shape = aoi.grid(10.0)
    codes = tiny.rasterize("iowa", YEARS[-1], aoi.epsg, transform, shape)
    assert codes.dtype == np.uint8 and codes.shape == shape
    assert set(np.unique(codes)) <= set(CLASS_CODES.values())
    # bridges are painted over the river they cross
    assert (codes == CLASS_CODES["bridge"]).any()
    fids = tiny.rasterize_fids("iowa", YEARS[-1], aoi.epsg, transform, shape)
    cls_of = dict(zip(tiny.features["fid"], tiny.features["cls"], strict=True))
    some = np.flatnonzero(fids.ravel() >= 0)[::97]
    assert all(CLASS_CODES[cls_of[int(fids.ravel()[i])]] == codes.ravel()[i] for i in some)
    # the same truth on a lon/lat grid
    west, south, east, north = aoi.bounds_lonlat
    geo = tiny.rasterize(
        "iowa",
        YEARS[-1],
        4326,
        Affine(1e-4, 0, west, 0, -1e-4, north),
        (int((north - south) / 1e-4), int((east - west) / 1e-4)),
    )
    assert abs(np.mean(geo == CLASS_CODES["farmland"]) - np.mean(codes == 9)) < 0.05


def test_every_town_builds_over_its_nearest_fields(small):
    from geoprep.demo.landscape import FIELDS_BUILT_PER_TOWN

    f = small.features
    for aoi in small.aois:
        here = f[f["aoi"] == aoi.name].to_crs(aoi.epsg)
        towns = here[(here["cls"] == "built_up") & (here["valid_from_year"] == ALWAYS_FROM)]
        built = here[(here["cls"] == "built_up") & (here["valid_from_year"] == CHANGE_YEAR)]
        fields = here[here["cls"] == "farmland"]
        assert len(towns) >= 2, aoi.name
        assert len(built) == FIELDS_BUILT_PER_TOWN * len(towns), aoi.name
        for town in towns.geometry:
            # the field nearest the town's centre is among those built over
            nearest = fields.geometry.distance(town.centroid).idxmin()
            assert fields.loc[nearest, "valid_to_year"] == CHANGE_YEAR - 1, aoi.name

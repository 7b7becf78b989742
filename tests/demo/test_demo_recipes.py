"""The CSF demo recipes: training and evaluation sets imaged alike, inside the NAIP imagery."""

from __future__ import annotations

import json

import pytest
from pyproj import Transformer
from shapely.geometry import Polygon, box

from geoprep.core.errors import UserError
from geoprep.demo.run import RECIPE_DIR, demo_overrides, naip_box
from geoprep.recipe.load import load_recipe


def test_the_evaluation_set_is_imaged_like_the_pretraining_set():
    train = load_recipe(RECIPE_DIR / "csf.yaml").imagery
    evaluation = load_recipe(RECIPE_DIR / "csf-osm-eval.yaml").imagery
    assert list(evaluation.sensors) == list(train.sensors) == ["naip", "s2", "landsat"]
    for name, sensor in train.sensors.items():
        other = evaluation.sensors[name]
        assert (other.collection, other.assets) == (sensor.collection, sensor.assets), name
        assert other.resampling == sensor.resampling, name
    assert evaluation.grid == train.grid
    assert (train.grid.layout, train.grid.gsd, train.grid.size) == ("common", 1.0, 96)
    # the evaluation imagery is of another year than the pretraining imagery
    assert evaluation.time.start.year != train.time.start.year


def test_the_sets_are_large_enough_to_learn_and_to_measure():
    train = load_recipe(RECIPE_DIR / "csf.yaml").sampler
    evaluation = load_recipe(RECIPE_DIR / "csf-osm-eval.yaml").sampler
    # 96 m patches whose centres lie over 96 m apart overlap at most at a corner
    assert train.n >= 1000 and train.min_distance_m > 96
    assert len(evaluation.classes) >= 8 and evaluation.n >= 30
    assert evaluation.patch_size_m == 96


def test_naip_box_lies_inside_the_naip_imagery_by_the_inset(demo_world):
    (cover,) = json.loads((demo_world / "world.json").read_text())["parts"]["imagery"][
        "naip_coverage"
    ].values()
    west, south, east, north = naip_box(demo_world, inset_m=50)
    to_utm = Transformer.from_crs(4326, cover["epsg"], always_xy=True)
    xs, ys = to_utm.transform([west, east, east, west], [south, south, north, north])
    inner = box(*cover["bounds"]).buffer(-50, join_style="mitre")
    corners = Polygon(zip(xs, ys, strict=True))
    assert inner.contains(corners)
    assert corners.area > 0.95 * inner.area  # and it is not much smaller


def test_demo_points_both_csf_sets_at_the_naip_box(demo_world):
    class Services:  # the two URLs the overrides read
        overpass_url = "http://127.0.0.1:1/api/interpreter"
        stac_url = "http://127.0.0.1:2/"

    expected = json.dumps(naip_box(demo_world))
    assert f"sampler.bounds={expected}" in demo_overrides("csf", demo_world, Services)
    assert f"sampler.bboxes=[{expected}]" in demo_overrides("csf-osm-eval", demo_world, Services)


def test_a_world_without_naip_coverage_is_a_user_error(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"parts": {"imagery": {"scenes": {}}}}))
    with pytest.raises(UserError, match="no NAIP coverage"):
        naip_box(tmp_path)

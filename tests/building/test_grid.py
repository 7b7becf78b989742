"""Target grids: UTM zones, patches centred on points, JSON round trips, native groups."""

from __future__ import annotations

import json
import math

import pytest
from affine import Affine
from pyproj import Transformer

from geoprep.building.grid import TargetGrid, group_name, native_groups, utm_epsg
from geoprep.core.errors import UserError
from geoprep.recipe.sections import GridSpec


@pytest.mark.parametrize(
    ("lat", "lon", "epsg"),
    [
        (48.0, 11.99, 32632),  # just west of the 12°E zone edge
        (48.0, 12.0, 32633),  # the edge belongs to the zone east of it
        (-33.9, 18.4, 32734),  # Cape Town
        (0.0, 0.0, 32631),  # the equator is north
        (-0.0001, 5.0, 32731),
        (10.0, -180.0, 32601),
        (10.0, 180.0, 32601),  # the antimeridian wraps to zone 1
        (60.0, 5.0, 32631),  # Bergen: the Norway exception (32V) is not applied
        (78.0, 15.0, 32633),  # Svalbard: standard zone, not 33X's widened one
        (-80.0, -70.0, 32719),
    ],
)
def test_utm_epsg_standard_zones(lat: float, lon: float, epsg: int) -> None:
    assert utm_epsg(lat, lon) == epsg


@pytest.mark.parametrize(("lat", "lon"), [(91.0, 0.0), (0.0, 180.5), (math.nan, 0.0)])
def test_utm_epsg_rejects_impossible_coordinates(lat: float, lon: float) -> None:
    with pytest.raises(UserError, match="outside"):
        utm_epsg(lat, lon)


@pytest.mark.parametrize(
    ("lat", "lon", "gsd", "size"),
    [
        (48.137, 11.575, 10.0, 128),
        (-33.92, 18.42, 30.0, 64),
        (64.1, -21.9, 10.0, 33),
        (0.5, 179.9, 0.6, 100),
    ],
)
def test_around_centres_the_patch_on_the_point(
    lat: float, lon: float, gsd: float, size: int
) -> None:
    grid = TargetGrid.around(lat, lon, gsd, size)
    assert grid.crs == utm_epsg(lat, lon)
    assert (grid.width, grid.height, grid.gsd) == (size, size, gsd)
    x, y = Transformer.from_crs(4326, grid.crs, always_xy=True).transform(lon, lat)
    centre_x, centre_y = grid.transform @ (size / 2, size / 2)
    # Snapping the corner to the gsd moves the centre by at most half a pixel.
    assert abs(centre_x - x) <= gsd / 2 + 1e-6
    assert abs(centre_y - y) <= gsd / 2 + 1e-6
    left, bottom, right, top = grid.bounds
    assert math.isclose(right - left, size * gsd) and math.isclose(top - bottom, size * gsd)
    for corner in (left, top):
        assert math.isclose(corner / gsd, round(corner / gsd), abs_tol=1e-6)


def test_neighbouring_patches_share_pixel_boundaries() -> None:
    first = TargetGrid.around(48.1371, 11.5754, 10.0, 64)
    second = TargetGrid.around(48.1402, 11.5811, 10.0, 64)
    assert first.crs == second.crs
    shift_x = (second.transform.c - first.transform.c) / 10.0
    shift_y = (second.transform.f - first.transform.f) / 10.0
    assert (shift_x, shift_y) == (round(shift_x), round(shift_y)) != (0, 0)


def test_around_with_a_coarser_snap_keeps_the_centre_within_half_the_snap() -> None:
    grid = TargetGrid.around(48.137, 11.575, 10.0, 128, snap=60.0)
    assert grid.transform.c % 60 == 0 and grid.transform.f % 60 == 0
    x, y = Transformer.from_crs(4326, grid.crs, always_xy=True).transform(11.575, 48.137)
    centre_x, centre_y = grid.transform @ (64, 64)
    assert abs(centre_x - x) <= 30 and abs(centre_y - y) <= 30


def test_json_round_trip() -> None:
    grid = TargetGrid.around(-33.92, 18.42, 10.0, 128)
    data = json.loads(json.dumps(grid.to_json()))
    assert data["crs"] == "EPSG:32734"
    assert data["transform"] == [10.0, 0.0, grid.transform.c, 0.0, -10.0, grid.transform.f]
    assert (data["width"], data["height"], data["gsd"]) == (128, 128, 10.0)
    assert TargetGrid.from_json(data) == grid


@pytest.mark.parametrize(
    "data",
    [
        {"crs": "EPSG:32633", "transform": [10, 0, 0, 0, -10, 0], "width": 4},
        {"crs": "WGS84", "transform": [10, 0, 0, 0, -10, 0], "width": 4, "height": 4},
        {"crs": "EPSG:32633", "transform": [10, 0, 0], "width": 4, "height": 4},
        {"crs": 32633, "transform": [10, 0, 0, 0, -10, 0], "width": 4, "height": 4, "gsd": 20},
        {"crs": "EPSG:32633", "transform": [10, 0, 0, 0, 10, 0], "width": 4, "height": 4},
    ],
)
def test_from_json_rejects_malformed_grids(data: dict) -> None:
    with pytest.raises(UserError):
        TargetGrid.from_json(data)


def test_grid_rejects_rotated_or_empty_grids() -> None:
    with pytest.raises(UserError, match="north-up"):
        TargetGrid(32633, Affine(10, 1, 0, 0, -10, 0), 4, 4)
    with pytest.raises(UserError, match="positive"):
        TargetGrid(32633, Affine(10, 0, 0, 0, -10, 0), 0, 4)


S2_GSDS = {"B02": 10.0, "B03": 10.0, "B05": 20.0, "SCL": 20.0, "B01": 60.0, "B8A": 20.0}


def test_native_groups_follow_the_sentinel2_layout() -> None:
    spec = GridSpec(layout="native", gsd=10.0, size=264)
    groups = native_groups(spec, S2_GSDS, 48.137, 11.575)
    assert list(groups) == ["10m", "20m", "60m"]
    assert groups["10m"][1] == ["B02", "B03"]
    assert groups["20m"][1] == ["B05", "SCL", "B8A"]
    assert groups["60m"][1] == ["B01"]
    sizes = {name: (grid.width, grid.height, grid.gsd) for name, (grid, _) in groups.items()}
    assert sizes == {"10m": (264, 264, 10.0), "20m": (132, 132, 20.0), "60m": (44, 44, 60.0)}
    grids = [grid for grid, _ in groups.values()]
    assert len({(grid.crs, grid.bounds) for grid in grids}) == 1  # one extent, one corner
    # 60 divides by 10 and 20: the corner is snapped to 60 m, aligning every group with S2 tiles.
    assert grids[0].transform.c % 60 == 0 and grids[0].transform.f % 60 == 0


def test_native_groups_round_up_when_the_extent_is_not_a_multiple() -> None:
    groups = native_groups(GridSpec(layout="native", gsd=10.0, size=128), S2_GSDS, 10.0, 20.0)
    grid_60 = groups["60m"][0]
    assert grid_60.width == grid_60.height == math.ceil(1280 / 60)
    assert grid_60.transform.c == groups["10m"][0].transform.c


def test_native_groups_snap_to_the_finest_gsd_when_gsds_do_not_nest() -> None:
    groups = native_groups(GridSpec(gsd=20.0, size=30), {"a": 20.0, "b": 30.0}, 48.0, 11.0)
    corner = groups["20m"][0].transform
    assert corner.c % 20 == 0 and corner.f % 20 == 0
    assert groups["30m"][0].width == 20


def test_group_names_have_no_dots() -> None:
    assert [group_name(g) for g in (10.0, 20.0, 0.6, 2.5)] == ["10m", "20m", "0p6m", "2p5m"]


@pytest.mark.parametrize("gsds", [{}, {"B02": 0.0}, {"B02": math.inf}])
def test_native_groups_reject_bad_gsds(gsds: dict) -> None:
    with pytest.raises(UserError):
        native_groups(GridSpec(), gsds, 0.0, 0.0)

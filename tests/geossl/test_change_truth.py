"""The change truth of `change_auc`: the share of a footprint whose land cover changed."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import box

from geossl.change import changed_fraction

CRS = "EPSG:32615"
PATCH = (500_000, 4_600_000, 500_200, 4_600_200)  # 200 m square


def truth(*rows) -> gpd.GeoDataFrame:
    frame = gpd.GeoDataFrame(
        list(rows), columns=["cls", "valid_from_year", "valid_to_year", "geometry"], crs=CRS
    )
    return frame.to_crs(4326)


def part(west: float, east: float):
    return box(PATCH[0] + west, PATCH[1], PATCH[0] + east, PATCH[3])


def test_a_forest_cut_back_by_a_quarry_changes_only_where_the_pit_is() -> None:
    # the demo world's way: the old forest ends, a smaller forest and the pit begin
    whole, pit = part(0, 200), part(150, 200)
    rows = [
        ("forest", 0, 2020, whole),
        ("forest", 2021, 9999, whole.difference(pit)),
        ("quarry", 2021, 9999, pit),
    ]
    assert changed_fraction(truth(*rows), CRS, PATCH, (2019, 2022)) == pytest.approx(0.25, 0.02)
    assert changed_fraction(truth(*rows), CRS, PATCH, (2019, 2020)) == 0.0


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # a field built over: farmland gone and built-up new, over the same half
        ([("farmland", 0, 2020, part(0, 100)), ("built_up", 2021, 9999, part(0, 100))], 0.5),
        # a barn torn down on a field that stays
        ([("farmland", 0, 9999, part(0, 200)), ("farm_building", 0, 2020, part(0, 20))], 0.1),
        # one polygon split in two of the same class: nothing changed on the ground
        ([("forest", 0, 2020, part(0, 200)), ("forest", 2021, 9999, part(0, 100)),
          ("forest", 2021, 9999, part(100, 200))], 0.0),
        ([("water", 0, 9999, part(0, 200))], 0.0),
    ],
)  # fmt: skip
def test_changed_share_per_class(rows, expected: float) -> None:
    found = changed_fraction(truth(*rows), CRS, PATCH, (2019, 2022))
    assert found == pytest.approx(expected, abs=0.01)

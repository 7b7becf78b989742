"""The demo world's picture: its land map, stretches, scene choice and the figure itself."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from PIL import Image

from geoprep.demo.quicklook import (
    WorldView,
    land_fraction_grid,
    main,
    percentile_stretch,
    season_of,
    world_figure,
)


def _land_at(lat: float, lon: float) -> float:
    grid = land_fraction_grid()
    rows, cols = grid.shape
    row = int((90 - lat) / 180 * rows)
    col = int((lon + 180) / 360 * cols)
    return float(grid[row, col])


def test_land_grid_tells_land_from_sea():
    grid = land_fraction_grid()
    assert grid.shape == (720, 1440) and not grid.flags.writeable
    assert 0.25 < grid.mean() < 0.35  # land is about 29 % of the globe
    assert _land_at(42.0, -93.5) == 1.0  # Iowa
    assert _land_at(-25.0, 134.0) == 1.0  # central Australia
    assert _land_at(0.0, -150.0) == 0.0  # the Pacific
    assert _land_at(45.0, -30.0) == 0.0  # the North Atlantic


def test_percentile_stretch_keeps_colour_balance_and_blacks_out_nodata():
    rng = np.random.default_rng(0)
    bands = rng.uniform(100, 1000, (3, 20, 20))
    bands[1] += 500  # a brighter green band stays brighter after the stretch
    valid = np.ones((20, 20), dtype=bool)
    valid[:2] = False
    rgb = percentile_stretch(bands, valid)
    assert rgb.shape == (20, 20, 3) and rgb.min() == 0.0 and rgb.max() == 1.0
    assert np.all(rgb[:2] == 0.0)
    assert rgb[2:, :, 1].mean() > rgb[2:, :, 0].mean() + 0.2
    assert np.all(percentile_stretch(bands, np.zeros((20, 20), dtype=bool)) == 0.0)


@pytest.mark.parametrize(
    ("day", "season"),
    [
        (date(2019, 4, 24), "spring"),
        (date(2022, 7, 24), "summer"),
        (date(2019, 10, 18), "autumn"),
        (date(2022, 1, 27), "winter"),
        (date(2021, 12, 28), "winter"),  # nearer next January than October
    ],
)
def test_season_of(day, season):
    assert season_of(day) == season


def test_scene_choice_prefers_clear_complete_passes(demo_world):
    view = WorldView(demo_world)
    assert view.aoi.name == "iowa"  # the AOI with NAIP
    s2 = view.items("sentinel-2-l2a")
    assert s2 and all(a.when <= b.when for a, b in zip(s2, s2[1:], strict=False))
    for year in {item.when.year for item in s2}:
        chosen = view.clearest("sentinel-2-l2a", year, "summer")
        same = [i for i in s2 if i.when.year == year and season_of(i.when.date()) == "summer"]
        assert chosen.cloud + chosen.nodata_share == min(i.cloud + i.nodata_share for i in same)
    cloudy = view.partly_cloudy()
    assert cloudy is not None and cloudy.cloud > 5
    assert view.clearest("sentinel-2-l2a", 1990, None) is None


def test_world_figure_writes_a_png(demo_world, tmp_path):
    out = world_figure(demo_world, tmp_path / "figure" / "world.png")
    assert out == tmp_path / "figure" / "world.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert 900 < width < 1300 and 900 < height < 1300
    assert colours is not None and len(colours) > 100, "a picture, not a blank page"
    assert out.stat().st_size < 400_000


def test_module_entry_point_refuses_a_directory_that_is_not_a_world(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out.png")]) == 2
    assert "world.json" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()

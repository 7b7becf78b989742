"""The patch throughput benchmark runs end to end and refuses to compare different patches."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geoprep.building.catalogs import open_catalog
from geoprep.building.grid import TargetGrid
from geoprep.building.raster import gdal_env
from geoprep.core.errors import UserError
from geoprep.recipe.sections import CatalogSpec

pytest.importorskip("odc.stac", reason="the benchmark needs the 'bench' extra (odc-stac)")

ROOT = Path(__file__).resolve().parents[1]
# odc-geo calls APIs that newer affine and shapely releases deprecate; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:odc.geo"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:odc.geo"),
]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.patch_throughput")


@pytest.fixture
def readers(bench):
    return importlib.import_module("benchmarks.patch_readers")


METHODS = [
    "geoprep (2 threads)",
    "geoprep (1 thread)",
    "naive rasterio loop",
    "odc-stac",
    "odc-stac pool=4",
    "odc-stac (2 threads)",
]


def _check(result: dict, patches: int, served: bool) -> None:
    assert result["patches"] == patches
    assert list(result["methods"]) == METHODS
    for numbers in result["methods"].values():
        assert numbers["max_abs_diff"] == 0  # same pixels: the 10 m grid is the S2 grid
        assert numbers["patches_per_s"] > 0 and len(numbers["seconds"]) == 1
        # served sources report the blob store's CPU time, local files none; its value is not
        # checked: a few patches can cost less CPU than the process clock resolves
        server_ms = numbers["server_cpu_ms_per_patch"]
        assert server_ms >= 0 if served else server_ms is None
    assert {"geoprep/naive", "geoprep/odc-stac", "best odc-stac"} <= set(result["ratios"])


def test_command_line_times_every_method_on_the_served_world(demo_world: Path, tmp_path: Path):
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "benchmarks.patch_throughput", "--world", str(demo_world)]
    command += ["--n", "3", "--size", "32", "--repeat", "1", "--threads", "2"]
    command += ["--sources", "http", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["sources"]) == ["http"] and report["bands"] == ["B02", "B03", "B04", "B08"]
    _check(report["sources"]["http"], 3, served=True)
    assert "geoprep/odc-stac" in done.stdout and "--world" in report["command"]
    assert "server CPU ms/patch" in done.stdout


def _setup(readers):
    options = gdal_env()
    options.pop("GDAL_CACHEMAX")
    return readers.Setup(readers.SENSORS["s2"], "bilinear", 2, options)


def test_local_files_give_the_same_patches_with_every_method(bench, readers, demo_world: Path):
    jobs = _local_jobs(bench, demo_world, 2)
    setup, methods = _setup(readers), readers.methods(2, 4)
    result = bench.run_source("local", jobs, False, setup, methods, 1, 0.0)
    _check(result, 2, served=False)


def _local_jobs(bench, world: Path, n: int):
    locations = bench.pick_locations(world, n, 320.0, seed=1)
    catalog = open_catalog(CatalogSpec(kind="static", url=str(world / "stac/local/catalog.json")))
    jobs, _ = bench.patch_jobs(catalog, locations, "sentinel-2-l2a", (10.0, 32), 1, "random")
    return jobs


def test_a_method_reading_other_pixels_stops_the_benchmark(bench, readers, demo_world: Path):
    jobs = _local_jobs(bench, demo_world, 2)

    def one_pixel_east(jobs, href, setup):
        moved = [
            readers.PatchJob(
                job.location_id,
                TargetGrid(job.grid.crs, job.grid.transform @ Affine.translation(1, 0), 32, 32),
                job.item,
            )
            for job in jobs
        ]
        return readers.read_geoprep(moved, href, setup)

    setup = _setup(readers)
    chosen = {"geoprep": readers.read_geoprep, "naive": readers.read_naive, "east": one_pixel_east}
    with pytest.raises(SystemExit, match="different patches.*'east'"):
        bench.run_source("local", jobs, False, setup, chosen, 1, 0.0)


@pytest.mark.parametrize(
    ("offset", "max_diff", "share"), [(0, 0.0, 0.0), (1, 1.0, 0.0), (5, 5.0, 0.25)]
)
def test_compare_counts_pixels_off_by_more_than_one(bench, offset, max_diff, share):
    reference = [np.full((2, 4, 4), 100, dtype=np.uint16)]
    other = [reference[0].copy()]
    other[0][0, :2, :2] += offset  # a quarter of the first band's pixels
    assert bench.compare(reference, other) == {
        "max_abs_diff": max_diff,
        "mismatch_share": share / 2,
    }


def test_compare_flags_different_shapes(bench):
    result = bench.compare([np.zeros((1, 4, 4))], [np.zeros((1, 4, 5))])
    assert result["mismatch_share"] == 1.0


def test_locations_are_seeded_and_leave_room_for_the_patch(bench, demo_world: Path):
    first = bench.pick_locations(demo_world, 6, 320.0, seed=3)
    assert first.equals(bench.pick_locations(demo_world, 6, 320.0, seed=3))
    assert not first.equals(bench.pick_locations(demo_world, 6, 320.0, seed=4))
    assert first["id"].is_unique
    jobs = _local_jobs(bench, demo_world, 3)
    assert [job.grid.shape for job in jobs] == [(32, 32)] * 3
    with pytest.raises(UserError, match="does not fit"):
        bench.pick_locations(demo_world, 1, 5000.0, seed=0)

"""The build stage on the served tiny demo world: catalogs, layouts, time modes, resume, workers.

Locations are placed from the world's AOIs (world.json) where the tiny world's scenes are known:
in Iowa the July 2019 Sentinel-2 pass is clear across the middle rows and NAIP covers 480 m around
the centre; in Victoria the July 2019 pass is cloudy everywhere and the April 2022 pass has no data
along the western edge; Bavaria has no NAIP. The tiny world images each season once, so the
multi-year (CACo-like) recipe accepts cloudy patches; cloud rejection has its own recipes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import rasterio
import webdataset as wds
import yaml
from conftest import fresh_tokens
from planetary_computer import sas as pc_sas
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine, rowcol
from rasterio.warp import Resampling, reproject

from geoprep.building.build import build
from geoprep.cli import main
from geoprep.core.errors import UserError
from geoprep.demo import sas_server
from geoprep.demo.servers import WorldServices
from geoprep.recipe.load import validate_recipe
from geoprep.recipe.model import Recipe
from geoprep.shards.schema import entry_hrefs

S2_NATIVE_BANDS = ["B02", "B08", "B05", "B11", "B01"]  # 10, 10, 20, 20, 60 m
GROUP_GSDS = {"10m": 10, "20m": 20, "60m": 60}
SINGLE = {"mode": "single", "start": "2019-06-01", "end": "2019-08-31", "window_days": 30}


# ---------------------------------------------------------------------------------- helpers
def _aois(world: Path) -> dict[str, dict]:
    return {aoi["name"]: aoi for aoi in json.loads((world / "world.json").read_text())["aois"]}


def place(world: Path, aoi: str, dx: float, dy: float, **columns) -> dict:
    """A location `dx`, `dy` metres east and north of an AOI's centre."""
    box = _aois(world)[aoi]
    west, south, east, north = box["bounds_utm"]
    to_lonlat = Transformer.from_crs(box["epsg"], 4326, always_xy=True)
    lon, lat = to_lonlat.transform((west + east) / 2 + dx, (south + north) / 2 + dy)
    return {"lat": round(lat, 7), "lon": round(lon, 7), **columns}


def make_recipe(
    tmp: Path, name: str, rows: list[dict], imagery: dict, per_shard: int = 4
) -> Recipe:
    path = tmp / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return validate_recipe(
        {
            "name": name,
            "seed": 7,
            "sampler": {"kind": "points", "path": str(path), "id_column": "id"},
            "clusters": {"k": 2},
            "imagery": imagery,
            "output": {"format": "tif", "samples_per_shard": per_shard},
        },
        source=name,
    )


def pc_catalog(services: WorldServices, kind: str = "stac-api") -> dict:
    world = services.world_dir
    if kind == "stac-api":
        return {"kind": kind, "url": services.stac_url, "provider": "planetary-computer"}
    if kind == "geoparquet":
        url = str(world / "stac" / "geoparquet" / "{collection}.parquet")
        return {"kind": kind, "url": url, "provider": "planetary-computer"}
    return {"kind": "static", "url": str(world / "stac" / "local" / "catalog.json")}


def tar_urls(out: Path) -> list[str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [str(out / tar["path"]) for shard in manifest["shards"] for tar in shard["tars"]]


def read_samples(out: Path) -> dict[str, dict]:
    """Every sample through stock WebDataset, in shard order: key → {suffix: bytes}."""
    samples = {}
    for raw in wds.WebDataset(tar_urls(out), shardshuffle=False):
        key = raw["__key__"]
        assert key not in samples, f"{key} appears twice"
        samples[key] = {k: v for k, v in raw.items() if not k.startswith("__")}
    return samples


def shard_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "shards").iterdir())}


def stats_without_duration(out: Path) -> dict[str, dict]:
    stats = {}
    for path in sorted((out / "shards").glob("*_stats.json")):
        doc = json.loads(path.read_text())
        doc.pop("duration_s")
        stats[path.name] = doc
    return stats


def assert_same_shards(out: Path, reference: Path) -> None:
    """Equal stats (but for durations), the same files, and tars equal byte for byte."""
    # stats first: where samples differ, their failure details say why
    assert stats_without_duration(out) == stats_without_duration(reference)
    files, expected = shard_files(out), shard_files(reference)
    assert files.keys() == expected.keys()
    differing = [
        name for name in expected if name.endswith(".tar") and files[name] != expected[name]
    ]
    assert not differing, f"tars differ from {reference}: {differing}"


def local_source(world: Path, href: str) -> Path:
    """The demo world file behind an asset href (a blob URL, or a path from the local catalog)."""
    if "://" not in href:
        return Path(href)
    parts = urlsplit(href)
    return world / "blobs" / parts.hostname.split(".")[0] / parts.path.lstrip("/")


def utm_xy(crs: str, lat: float, lon: float) -> tuple[float, float]:
    return Transformer.from_crs(4326, crs, always_xy=True).transform(lon, lat)


def check_samples(out: Path, recipe: Recipe, world: Path) -> dict[str, dict]:
    """Decode every GeoTIFF member and check it against the json: grid, shape, bands, source.

    Returns key → parsed json. The pixels are compared with the source files of the demo world
    (see `expect_source_pixels`).
    """
    grid_spec = recipe.imagery.grid
    extent = grid_spec.size * grid_spec.gsd
    docs = {}
    for key, members in read_samples(out).items():
        doc = json.loads(members.pop("json"))
        docs[key] = doc
        assert doc["id"] == key
        assert doc["recipe_digest"] == recipe.digest()
        assert set(members) == {entry["member"] for entry in doc["images"]}
        if grid_spec.layout == "common":
            assert "grids" not in doc
            grids, snap = {None: doc["grid"]}, grid_spec.gsd
        else:
            assert "grid" not in doc
            grids = doc["grids"]
            snap = max(grid["gsd"] for grid in grids.values())
        for group, grid in grids.items():
            # the patch of size × gsd metres is centred on the location (corner snapped)
            x, y = utm_xy(grid["crs"], doc["lat"], doc["lon"])
            left, top = grid["transform"][2], grid["transform"][5]
            assert abs(left + extent / 2 - x) <= snap / 2 + 1e-6, (key, group)
            assert abs(top - extent / 2 - y) <= snap / 2 + 1e-6, (key, group)
            assert grid["width"] == grid["height"] == int(np.ceil(extent / grid["gsd"] - 1e-9))
        for entry in doc["images"]:
            grid = grids[entry["group"]]
            suffix = [entry["sensor"], entry["slot"], entry["group"]]
            assert entry["member"] == ".".join(p for p in suffix if p) + ".tif"
            with MemoryFile(members[entry["member"]]) as memory, memory.open() as image:
                assert image.crs == CRS.from_user_input(grid["crs"])
                assert image.transform.almost_equals(Affine(*grid["transform"]), precision=1e-9)
                assert [image.count, image.height, image.width] == entry["shape"]
                assert (image.height, image.width) == (grid["height"], grid["width"])
                assert list(image.descriptions) == entry["bands"]
                assert image.dtypes[0] == entry["dtype"]
                assert image.nodata == entry["nodata"]
                array = image.read()
            sensor = recipe.imagery.sensors[entry["sensor"]]
            assert entry["cloud_fraction"] <= sensor.max_patch_cloud
            assert entry["nodata_fraction"] <= sensor.max_patch_nodata
            expect_source_pixels(world, entry, grid, array)
    return docs


@dataclass(frozen=True)
class SourceBand:
    array: np.ndarray
    transform: Affine
    crs: CRS
    nodata: float | None


@functools.cache
def source_band(path: Path, band: int) -> SourceBand:
    with rasterio.open(path) as src:
        return SourceBand(src.read(band), src.transform, src.crs, src.nodata)


def expect_source_pixels(world: Path, entry: dict, grid: dict, array: np.ndarray) -> None:
    """Each band matches its source file under the json grid.

    A band on its own pixel grid (Sentinel-2 at native resolution) must equal the source window
    (harmonised where the json says so); a resampled band must match the source warped onto the
    json grid better than onto the grid shifted by one pixel in any direction.
    """
    hrefs = entry_hrefs(entry)
    for index, name in enumerate(entry["bands"]):
        if name in hrefs:
            asset, band = name, 1
        else:  # band i of a multi-band asset ("image_2")
            asset, number = name.rsplit("_", 1)
            band = int(number) + 1
        source = source_band(local_source(world, hrefs[asset]), band)
        if is_aligned(source, grid):
            expected = source_window(source, grid)
            if entry["harmonized"]:
                shifted = np.clip(expected.astype(np.int64) - 1000, 1, None).astype(expected.dtype)
                expected = np.where(expected == 0, expected, shifted)
            np.testing.assert_array_equal(
                array[index], expected, err_msg=f"{entry['member']} {name}"
            )
            continue
        errors = {}
        for dx, dy in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]:
            transform = list(grid["transform"])
            transform[2] += dx * grid["gsd"]
            transform[5] += dy * grid["gsd"]
            warped = np.zeros(array.shape[1:], np.float64)
            reproject(
                source.array,
                warped,
                src_transform=source.transform,
                src_crs=source.crs,
                src_nodata=source.nodata,
                dst_transform=Affine(*transform),
                dst_crs=grid["crs"],
                resampling=Resampling.bilinear,
            )
            errors[dx, dy] = float(np.mean(np.abs(warped - array[index])))
        nearest_other = min(error for shift, error in errors.items() if shift != (0, 0))
        assert errors[0, 0] < nearest_other, (entry["member"], name, errors)


def is_aligned(source: SourceBand, grid: dict) -> bool:
    """Whether the grid's pixels coincide with source pixels (a copy, no resampling)."""
    if source.crs != CRS.from_user_input(grid["crs"]) or not np.isclose(
        source.transform.a, grid["gsd"]
    ):
        return False
    col = (grid["transform"][2] - source.transform.c) / grid["gsd"]
    row = (source.transform.f - grid["transform"][5]) / grid["gsd"]
    return bool(np.isclose(col, round(col)) and np.isclose(row, round(row)))


def source_window(source: SourceBand, grid: dict) -> np.ndarray:
    """The source pixels under an aligned grid (nodata past the source's edge)."""
    half = grid["gsd"] / 2  # the corner pixel's centre, safely inside one source pixel
    row, col = rowcol(source.transform, grid["transform"][2] + half, grid["transform"][5] - half)
    window = np.full((grid["height"], grid["width"]), source.nodata or 0, source.array.dtype)
    rows = slice(max(row, 0), min(row + grid["height"], source.array.shape[0]))
    cols = slice(max(col, 0), min(col + grid["width"], source.array.shape[1]))
    window[rows.start - row : rows.stop - row, cols.start - col : cols.stop - col] = source.array[
        rows, cols
    ]
    return window


def token_ids() -> list[bytes]:
    """Fixed parts of every token the stand-in mints (its object and tenant ids)."""
    return [sas_server._SIGNING_OBJECT_ID.encode(), sas_server._SIGNING_TENANT_ID.encode()]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


def common_recipe(services: WorldServices, tmp: Path, kind: str) -> Recipe:
    """CSF-like: S2, Landsat and NAIP on one 10 m grid, one coterminous scene each."""
    world = services.world_dir
    offsets = [(0, 0), (50, 0), (-50, 0), (0, 50), (0, -50), (40, -40)]
    rows = [place(world, "iowa", dx, dy, id=f"iowa-{i}") for i, (dx, dy) in enumerate(offsets)]
    rows.append(place(world, "bavaria", 0, 0, id="bavaria-0"))  # no NAIP outside the US
    imagery = {
        "catalogs": {"pc": pc_catalog(services, kind)},
        "sensors": {
            "s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B02", "B04"]},
            "landsat": {"catalog": "pc", "collection": "landsat-c2-l2", "assets": ["red", "nir08"]},
            "naip": {"catalog": "pc", "collection": "naip", "assets": ["image"]},
        },
        "time": SINGLE,
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }
    return make_recipe(tmp, "csf", rows, imagery)


@pytest.fixture(scope="module")
def common_builds(services, tmp_module) -> dict[str, tuple[Recipe, Path, int]]:
    """The CSF-like recipe built from each catalog kind: kind → (recipe, OUT, tokens minted)."""
    built = {}
    for kind in ("stac-api", "geoparquet", "static"):
        (tmp_module / kind).mkdir()
        recipe = common_recipe(services, tmp_module / kind, kind)
        fresh_tokens(services)
        out = tmp_module / kind / "out"
        build(recipe, str(out), io_threads=4)
        built[kind] = (recipe, out, sum(services.sas_server.token_requests.values()))
    return built


def native_recipe(services: WorldServices, tmp: Path) -> Recipe:
    """CACo-like: two year groups three years apart, spring and summer, 10/20/60 m groups."""
    world = services.world_dir
    offsets = [(0, 0), (400, 300), (-400, -300), (300, -400)]
    rows = [
        place(world, aoi, dx, dy, id=f"{aoi}-{i}")
        for aoi in ("iowa", "bavaria", "victoria")
        for i, (dx, dy) in enumerate(offsets)
    ]
    s2 = {
        "catalog": "pc",
        "collection": "sentinel-2-l2a",
        "assets": S2_NATIVE_BANDS,
        "max_patch_cloud": 1.0,
        "max_patch_nodata": 1.0,
    }
    imagery = {
        "catalogs": {"pc": pc_catalog(services)},
        "sensors": {"s2": s2},
        "time": {
            "mode": "multi-year",
            "first_year": 2019,
            "last_year": 2022,
            "min_gap_years": 3,
            "dates_per_group": 2,
            "spacing_days": 85,
            "window_days": 25,
            "day_of_year": [100, 108],
        },
        "grid": {"layout": "native", "gsd": 10, "size": 36},
    }
    return make_recipe(tmp, "caco", rows, imagery)


@pytest.fixture(scope="module")
def native_build(services, tmp_module) -> tuple[Recipe, Path]:
    """The CACo-like recipe, built in this process with one worker: the reference output."""
    recipe = native_recipe(services, tmp_module)
    out = tmp_module / "caco-w1"
    build(recipe, str(out), workers=1, io_threads=4)
    return recipe, out


def seasonal_recipe(services: WorldServices, tmp: Path) -> Recipe:
    """Two dates 84 days apart; Victoria's and Bavaria's are cloudy on one of them."""
    world = services.world_dir
    rows = [place(world, "iowa", dx, 0, id=f"iowa-{i}") for i, dx in enumerate((-400, 0, 400))]
    rows += [place(world, "victoria", 0, 0, id="victoria-0")]
    rows += [place(world, "bavaria", 0, 0, id="bavaria-0")]
    imagery = {
        "catalogs": {"pc": pc_catalog(services)},
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B03"]}},
        "time": {
            "mode": "seasonal",
            "reference": "2019-07-10",
            "n_dates": 2,
            "spacing_days": 84,
            "window_days": 10,
            "max_shift_days": 3,
        },
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }
    return make_recipe(tmp, "seasonal", rows, imagery)


@pytest.fixture(scope="module")
def seasonal_build(services, tmp_module) -> tuple[Recipe, Path]:
    recipe = seasonal_recipe(services, tmp_module)
    out = tmp_module / "seasonal"
    build(recipe, str(out), io_threads=4)
    return recipe, out


def dated_imagery(services: WorldServices, **time) -> dict:
    """S2 B08 at 10 m near each date of the locations' `dates` column (timestamps mode)."""
    return {
        "catalogs": {"pc": pc_catalog(services)},
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B08"]}},
        "time": {"mode": "timestamps", "column": "dates", "window_days": 3, **time},
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }


@pytest.fixture(scope="module")
def timestamps_build(services, tmp_module) -> tuple[Recipe, Path]:
    """fMoW-like: each location's own dates; Victoria's western edge has no data in April 2022
    (the item footprint ends 400 m west of the centre; the patch reaches over that edge)."""
    world = services.world_dir
    rows = [
        place(world, "iowa", 0, 0, id="iowa-0", dates='["2019-07-07T16:52:53Z", "2019-04-17"]'),
        place(world, "bavaria", 300, 0, id="bavaria-0", dates='["2019-07-08", "2022-07-16"]'),
        place(world, "victoria", -380, 0, id="victoria-edge", dates='["2022-04-11"]'),
        place(world, "iowa", 100, 0, id="iowa-undated", dates="[]"),
    ]
    recipe = make_recipe(tmp_module, "timestamps", rows, dated_imagery(services))
    out = tmp_module / "timestamps"
    build(recipe, str(out), io_threads=4)
    return recipe, out


@pytest.fixture(scope="module")
def radar_optical_build(services, tmp_module) -> tuple[Recipe, Path]:
    """SSL4EO-like: Sentinel-1 and Sentinel-2 at their native resolutions in one sample."""
    world = services.world_dir
    rows = [place(world, "iowa", dx, 0, id=f"iowa-{i}") for i, dx in enumerate((-400, 0, 400))]
    rows.append(place(world, "bavaria", 0, 0, id="bavaria-0"))
    imagery = {
        "catalogs": {"pc": pc_catalog(services)},
        "sensors": {
            "s2": {
                "catalog": "pc",
                "collection": "sentinel-2-l2a",
                "assets": ["B02", "B05", "B01"],
                "max_patch_cloud": 1.0,
            },
            "s1": {"catalog": "pc", "collection": "sentinel-1-rtc", "assets": ["vv", "vh"]},
        },
        "time": {"mode": "timestamps", "dates": ["2019-07-07"], "window_days": 3},
        "grid": {"layout": "native", "gsd": 10, "size": 32},
    }
    recipe = make_recipe(tmp_module, "radar-optical", rows, imagery)
    out = tmp_module / "radar-optical"
    build(recipe, str(out), io_threads=4)
    return recipe, out


# ---------------------------------------------------------------------------------- catalogs
def test_three_catalog_kinds_give_the_same_samples(common_builds, services):
    by_kind = {kind: read_samples(out) for kind, (_, out, _) in common_builds.items()}
    reference = by_kind["stac-api"]
    assert sorted(reference) == [f"iowa-{i}" for i in range(6)]
    world = services.world_dir
    for kind, samples in by_kind.items():
        assert sorted(samples) == sorted(reference), kind
        for key, members in samples.items():
            images = {k: v for k, v in members.items() if k != "json"}
            assert images == {k: v for k, v in reference[key].items() if k != "json"}, (kind, key)
            doc, expected = json.loads(members["json"]), json.loads(reference[key]["json"])
            for entry, other in zip(doc["images"], expected["images"], strict=True):
                # a local catalog names files, the others blob URLs; both are the same files
                assert {
                    a: local_source(world, h).resolve() for a, h in entry_hrefs(entry).items()
                } == {a: local_source(world, h).resolve() for a, h in entry_hrefs(other).items()}
                entry["hrefs"], entry["href_base"] = other["hrefs"], other["href_base"]
            # the recipes differ in their catalog only
            assert doc.pop("recipe_digest") != expected.pop("recipe_digest") or kind == "stac-api"
            assert doc == expected, (kind, key)


def test_blob_catalogs_are_signed_by_the_sas_stand_in(common_builds):
    minted = {kind: tokens for kind, (_, _, tokens) in common_builds.items()}
    # unsigned blob reads are refused, so the samples above prove the tokens were used
    assert minted["stac-api"] > 0 and minted["geoparquet"] > 0
    assert minted["static"] == 0


def test_common_layout_images_lie_on_the_grid_of_their_json(common_builds, services):
    recipe, out, _ = common_builds["stac-api"]
    docs = check_samples(out, recipe, services.world_dir)
    window = dt.timedelta(days=recipe.imagery.time.window_days)
    for key, doc in docs.items():
        assert doc["grid"]["crs"] == "EPSG:32615" and doc["grid"]["gsd"] == 10
        assert list(doc["slots"]) == ["t0"]
        members = sorted(entry["member"] for entry in doc["images"])
        assert members == ["landsat.t0.tif", "naip.t0.tif", "s2.t0.tif"], key
        times = [dt.datetime.fromisoformat(e["datetime"]) for e in doc["images"]]
        assert max(times) - min(times) <= window
        assert all(dt.datetime(2019, 6, 1, tzinfo=dt.UTC) <= t for t in times)
        naip = next(e for e in doc["images"] if e["sensor"] == "naip")
        assert naip["shape"] == [4, 32, 32] and naip["bands"] == [f"image_{i}" for i in range(4)]
    stats = json.loads((out / "shards" / "00001_stats.json").read_text())
    assert stats["failed"] == [
        {"id": "bavaria-0", "reason": "no_scene", "detail": "naip: no scene in the window"}
    ]


# ---------------------------------------------------------------------------------- layouts
def test_native_layout_gives_each_resolution_its_own_grid(native_build, services):
    recipe, out = native_build
    docs = check_samples(out, recipe, services.world_dir)
    assert len(docs) >= 9
    slots = ["y0s0", "y0s1", "y1s0", "y1s1"]
    groups = {"10m": ["B02", "B08"], "20m": ["B05", "B11"], "60m": ["B01"]}
    for doc in docs.values():
        assert list(doc["slots"]) == slots
        assert {name: grid["gsd"] for name, grid in doc["grids"].items()} == GROUP_GSDS
        assert [g["width"] for g in doc["grids"].values()] == [36, 18, 6]
        members = sorted(entry["member"] for entry in doc["images"])
        assert members == sorted(f"s2.{s}.{g}.tif" for s in slots for g in groups)
        for entry in doc["images"]:
            assert entry["bands"] == groups[entry["group"]]
            start = dt.date.fromisoformat(doc["slots"][entry["slot"]]["start"])
            end = dt.date.fromisoformat(doc["slots"][entry["slot"]]["end"])
            assert start <= dt.datetime.fromisoformat(entry["datetime"]).date() <= end
        years = {s: int(doc["slots"][s]["target"][:4]) for s in slots}
        assert years["y1s0"] - years["y0s0"] >= 3 and years["y0s0"] == years["y0s1"]


def test_seasonal_dates_come_oldest_first(seasonal_build, services):
    recipe, out = seasonal_build
    docs = check_samples(out, recipe, services.world_dir)
    assert sorted(docs) == ["iowa-0", "iowa-1", "iowa-2"]
    for doc in docs.values():
        targets = [dt.date.fromisoformat(doc["slots"][s]["target"]) for s in ("t0", "t1")]
        assert targets[1] - targets[0] == dt.timedelta(days=84)
        assert dt.date(2019, 7, 7) <= targets[1] <= dt.date(2019, 7, 10)
        dates = [e["datetime"][:10] for e in sorted(doc["images"], key=lambda e: e["slot"])]
        assert dates == ["2019-04-17", "2019-07-07"]


def test_timestamps_take_each_locations_own_dates(timestamps_build, services):
    recipe, out = timestamps_build
    docs = check_samples(out, recipe, services.world_dir)
    assert sorted(docs) == ["bavaria-0", "iowa-0"]
    found = {k: [e["datetime"][:10] for e in d["images"]] for k, d in docs.items()}
    assert found["iowa-0"] == ["2019-04-17", "2019-07-07"]  # in time order, not as listed
    assert found["bavaria-0"] == ["2019-07-08", "2022-07-16"]
    assert [e["member"] for e in docs["iowa-0"]["images"]] == ["s2.t0.tif", "s2.t1.tif"]
    assert json.loads(docs["iowa-0"]["location"]["dates"])[1] == "2019-04-17"
    failed = {
        entry["id"]: entry["reason"]
        for path in (out / "shards").glob("*_stats.json")
        for entry in json.loads(path.read_text())["failed"]
    }
    assert failed == {"victoria-edge": "no_clear_scene", "iowa-undated": "no_dates"}


@pytest.mark.parametrize("min_found", [1, 2])
def test_timestamps_with_min_found_leave_out_the_dates_without_a_scene(
    services, tmp_path, min_found
):
    """fMoW-Sentinel keeps the fMoW dates that Sentinel-2 saw: 2020 has no scene in the world."""
    world = services.world_dir
    rows = [
        place(world, "bavaria", 300, 0, id="bavaria-2020", dates='["2019-07-08", "2020-07-16"]'),
        place(world, "iowa", 0, 0, id="iowa-one", dates='["2019-07-07"]'),
    ]
    imagery = dated_imagery(services, min_found=min_found)
    recipe = make_recipe(tmp_path, "min-found", rows, imagery)
    summary = build(recipe, str(tmp_path / "out"), io_threads=2)
    failed = {
        entry["id"]: entry
        for path in (tmp_path / "out" / "shards").glob("*_stats.json")
        for entry in json.loads(path.read_text())["failed"]
    }
    if min_found == 1:
        docs = check_samples(tmp_path / "out", recipe, world)
        assert sorted(docs) == ["bavaria-2020", "iowa-one"] and not failed
        bavaria = docs["bavaria-2020"]
        assert [e["member"] for e in bavaria["images"]] == ["s2.t0.tif"]
        assert list(bavaria["slots"]) == ["t0"]
        assert bavaria["skipped_slots"]["t1"]["reason"] == "no_scene"
        assert docs["iowa-one"]["skipped_slots"] == {}
    else:
        assert summary.samples == 0
        assert failed["bavaria-2020"]["reason"] == "no_scene"
        assert "1 of 2 dates matched, 2 needed" in failed["bavaria-2020"]["detail"]
        assert failed["iowa-one"]["reason"] == "too_few_dates"


def test_radar_and_optical_share_the_grid_of_each_resolution(radar_optical_build, services):
    recipe, out = radar_optical_build
    docs = check_samples(out, recipe, services.world_dir)
    assert sorted(docs) == ["bavaria-0", "iowa-0", "iowa-1", "iowa-2"]
    for doc in docs.values():
        members = sorted(entry["member"] for entry in doc["images"])
        assert members == ["s1.t0.10m.tif", "s2.t0.10m.tif", "s2.t0.20m.tif", "s2.t0.60m.tif"]
        # one 10 m grid for both sensors, its corner on Sentinel-2's 60 m lattice
        assert doc["grids"]["10m"]["transform"][2] % 60 == 0
        radar = next(entry for entry in doc["images"] if entry["sensor"] == "s1")
        assert radar["bands"] == ["vv", "vh"] and radar["collection"] == "sentinel-1-rtc"


# ---------------------------------------------------------------------------------- failures
@pytest.mark.parametrize(
    ("which", "location", "scene", "why"),
    [
        ("seasonal_build", "victoria-0", "S2B_MSIL2A_20190704", "cloudy"),
        ("seasonal_build", "bavaria-0", "S2A_MSIL2A_20190419", "cloudy"),
        ("timestamps_build", "victoria-edge", "S2A_MSIL2A_20220411", "nodata"),
    ],
)
def test_unusable_scenes_are_recorded_and_the_build_goes_on(request, which, location, scene, why):
    _, out = request.getfixturevalue(which)
    failed = [
        entry
        for path in sorted((out / "shards").glob("*_stats.json"))
        for entry in json.loads(path.read_text())["failed"]
    ]
    entry = next(e for e in failed if e["id"] == location)
    assert entry["reason"] == "no_clear_scene"
    assert scene in entry["detail"] and why in entry["detail"], entry["detail"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    reasons = [e["reason"] for e in failed]
    assert manifest["failures"]["no_clear_scene"] == reasons.count("no_clear_scene")
    assert manifest["totals"]["successes"] + len(failed) == manifest["totals"]["locations"]
    assert manifest["totals"]["successes"] >= 2  # the other locations were built


def test_unreadable_scenes_are_read_errors_not_clouds(services, tmp_path):
    catalog = pc_catalog(services, "geoparquet") | {"provider": "none"}  # blob reads unsigned
    imagery = {
        "catalogs": {"pc": catalog},
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B02"]}},
        "time": {"mode": "timestamps", "dates": ["2019-07-07"], "window_days": 3},
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }
    rows = [place(services.world_dir, "iowa", 0, 0, id="iowa-0")]
    summary = build(make_recipe(tmp_path, "unsigned", rows, imagery), str(tmp_path / "out"))
    # no read worked: the 404 may be a wrong setting, not a missing file; nothing is committed
    assert summary.samples == 0 and not summary.complete and summary.incomplete == [0]
    assert summary.causes == {"HTTP 404": 1} and summary.failures == {}
    assert "404" in summary.example and "S2B_MSIL2A_20190707" in summary.example
    assert not (tmp_path / "out" / "shards" / "00000_stats.json").exists()


def test_no_signed_url_or_token_in_any_output(
    common_builds, native_build, seasonal_build, timestamps_build, radar_optical_build
):
    outs = [out for _, out, _ in common_builds.values()]
    outs += [b[1] for b in (native_build, seasonal_build, timestamps_build, radar_optical_build)]
    secrets = [b"sig=", b"se=", b"skoid", *token_ids()]
    cached = [t.token.encode() for t in pc_sas.TOKEN_CACHE.values()]
    assert cached, "the builds in this process left no token to look for"
    checked = 0
    for out in outs:
        for path in out.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in secrets + cached:
                    assert secret not in data, f"{secret[:20]!r} in {path}"
                checked += 1
    assert checked > 20


def test_debug_logs_carry_no_token(services, tmp_path, caplog):
    rows = [place(services.world_dir, "iowa", 0, 0, id="iowa-0")]
    imagery = {
        "catalogs": {"pc": pc_catalog(services)},
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B02"]}},
        "time": {"mode": "timestamps", "dates": ["2019-07-07"], "window_days": 3},
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }
    recipe = make_recipe(tmp_path, "logged", rows, imagery)
    fresh_tokens(services)
    with caplog.at_level(logging.DEBUG):
        assert build(recipe, str(tmp_path / "out"), io_threads=1).samples == 1
    tokens = [token.token for token in pc_sas.TOKEN_CACHE.values()]
    assert tokens and "T15TVG_20190707T165253_B02_10m.tif" in caplog.text  # reads were logged
    for secret in ["sig=", "skoid", *tokens]:
        assert secret not in caplog.text


# ---------------------------------------------------------------------------------- reads
@pytest.mark.parametrize("io_threads", [1, 4])
def test_a_multi_date_build_opens_each_file_once(native_build, tmp_path, monkeypatch, io_threads):
    """The slots of a shard's locations are read scene by scene, and the datasets stay open
    across locations, dates and shards: every file is opened once (the 12 locations read 4 dates
    of 6 assets each from a few scenes), and the shards do not change."""
    import geoprep.building.datasets as datasets
    from geoprep.building.build import forget_open_files

    recipe, reference = native_build
    opened: list[tuple[str, int | None]] = []
    real_open = datasets._open

    def counting(href: str, level: int | None):
        opened.append((href.split("?")[0], level))
        return real_open(href, level)

    monkeypatch.setattr(datasets, "_open", counting)
    forget_open_files()  # as a new worker: nothing open yet
    build(recipe, str(tmp_path / "out"), workers=1, io_threads=io_threads)
    assert_same_shards(tmp_path / "out", reference)
    assert len(set(opened)) > 12  # several scenes of several assets
    assert len(opened) == len(set(opened))


def test_a_multi_date_build_searches_each_tile_once(native_build, tmp_path, monkeypatch):
    """The shards' locations have windows of their own (jittered dates), yet each tile is
    searched once per window of the recipe's envelope for the whole build; searched per shard
    window, as before, the shards come out the same byte for byte."""
    import geoprep.building.build as building
    from geoprep.building.catalogs import StacApiCatalog
    from geoprep.building.scenes import slots_envelope

    recipe, _ = native_build
    # a shard per location: each shard's own windows differ
    output = recipe.output.model_copy(update={"samples_per_shard": 1})
    recipe = recipe.model_copy(update={"output": output})
    searched: list[tuple] = []
    real_search = StacApiCatalog._search

    def counting(self, collection, bbox, start, end, server_filter):
        searched.append((tuple(bbox), start, end))
        return real_search(self, collection, bbox, start, end, server_filter)

    monkeypatch.setattr(StacApiCatalog, "_search", counting)
    build(recipe, str(tmp_path / "envelope"), workers=1, io_threads=2)
    tiles = {bbox for bbox, _, _ in searched}
    envelope = slots_envelope(recipe.imagery.time)
    assert len(tiles) == 4 and len(envelope) == 4  # Bavaria straddles 11° E; spring, summer
    assert sorted(searched) == sorted((tile, *window) for tile in tiles for window in envelope)
    with_envelope = len(searched)
    searched.clear()
    monkeypatch.setattr(building, "slots_envelope", lambda time: None)
    build(recipe, str(tmp_path / "windows"), workers=1, io_threads=2)
    assert_same_shards(tmp_path / "windows", tmp_path / "envelope")
    assert len(searched) > 2 * with_envelope  # each shard's windows, per tile


@pytest.mark.parametrize(("reads", "threads"), [(10, 3), (7, 1), (2, 8), (0, 4), (33, 8)])
def test_reads_are_dealt_to_threads_in_runs_of_scenes(reads, threads):
    """Every read once; taken `threads` at a time, each thread's turn comes from its own run of
    the scene-sorted reads (neighbours in the sorted order stay with one thread)."""
    from geoprep.building.build import _striped

    dealt = _striped(list(range(reads)), threads)
    assert sorted(dealt) == list(range(reads))
    if not reads:
        return
    size = -(-reads // min(threads, reads))  # reads per run
    starts = list(range(0, reads, size))
    assert dealt[: len(starts)] == starts  # the first turn: the start of every run
    for start in starts:  # each run in its own order
        run = [value for value in dealt if start <= value < start + size]
        assert run == list(range(start, min(start + size, reads)))


# ---------------------------------------------------------------------------------- workers
def test_two_worker_processes_write_the_same_shards(native_build, tmp_path):
    recipe, reference = native_build
    out = tmp_path / "w2"
    summary = build(recipe, str(out), workers=2, io_threads=2)
    assert summary.built == summary.shards == 3
    assert_same_shards(out, reference)
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


def test_dask_cluster_writes_the_same_shards(native_build, seasonal_build, tmp_path):
    distributed = pytest.importorskip("distributed")
    builds = {"caco": native_build, "seasonal": seasonal_build}
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        # two builds on one scheduler at once: their shard tasks must not be taken for another's
        with ThreadPoolExecutor(2) as pool:
            running = {
                name: pool.submit(
                    build, recipe, str(tmp_path / name), 1, 2, cluster.scheduler_address
                )
                for name, (recipe, _) in builds.items()
            }
            summaries = {name: future.result() for name, future in running.items()}
    for name, (_, reference) in builds.items():
        out = tmp_path / name
        assert summaries[name].built == summaries[name].shards
        assert_same_shards(out, reference)


# ---------------------------------------------------------------------------------- resume
def test_killed_build_resumes_to_the_same_shards(native_build, tmp_path):
    recipe, reference = native_build
    recipe_file = tmp_path / "caco.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "geoprep.cli", "build", str(recipe_file), "-o", str(out)]
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would stall the build
        process = subprocess.Popen(
            [*command, "--workers", "1", "--io-threads", "1"],  # slow shards: time to kill
            env=dict(os.environ),  # the served world's settings
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("shards/*_stats.json")):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no shard was committed within a minute"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    committed = sorted(p.name for p in out.glob("shards/*_stats.json"))
    assert 1 <= len(committed) < 3, committed  # one worker builds the shards in order
    assert not (out / "manifest.json").exists()
    assert b"sig=" not in log.read_bytes()
    # what a kill while writing the last shard leaves: its temporary tar, or the tar unstamped
    (out / "shards" / ".00002-killed.tar.tmp").write_bytes(b"partial")
    (out / "shards" / "00002.tar").write_bytes(b"uncommitted")

    assert main(["build", str(recipe_file), "-o", str(out), "--io-threads", "2"]) == 0

    assert_same_shards(out, reference)
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------- refusals
def test_another_recipe_into_the_same_output_is_refused(common_builds, tmp_path):
    recipe, out, _ = common_builds["static"]
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = shard_files(copy)
    other = validate_recipe(recipe.model_dump(mode="json") | {"seed": recipe.seed + 1})
    with pytest.raises(UserError, match="another recipe"):
        build(other, str(copy))
    assert shard_files(copy) == before
    # the same recipe again finds every shard done
    assert build(recipe, str(copy)).skipped == 2


def test_a_recipe_fixed_before_any_shard_was_written_takes_the_output_over(services, tmp_path):
    rows = [place(services.world_dir, "iowa", 0, 0, id="iowa-0")]
    imagery = {
        "catalogs": {"pc": {"kind": "static", "url": str(tmp_path / "no-catalog.json")}},
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B02"]}},
        "time": {"mode": "timestamps", "dates": ["2019-07-07"], "window_days": 3},
        "grid": {"layout": "common", "gsd": 10, "size": 32},
    }
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match="no-catalog.json"):
        build(make_recipe(tmp_path, "typo", rows, imagery), out)
    imagery["catalogs"]["pc"] = pc_catalog(services, "static")
    fixed = make_recipe(tmp_path, "typo", rows, imagery)
    assert build(fixed, out).samples == 1
    assert validate_recipe(yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())) == fixed


def test_cli_build_without_imagery_exits_2_with_one_line(tmp_path, capsys):
    points = tmp_path / "points.csv"
    points.write_text("lat,lon\n42.02,-93.45\n")
    recipe_file = tmp_path / "plan-only.yaml"
    recipe_file.write_text(
        yaml.safe_dump({"name": "plan-only", "sampler": {"kind": "points", "path": str(points)}})
    )
    assert main(["build", str(recipe_file), "-o", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoprep: error:") and "imagery" in lines[0]
    assert not (tmp_path / "out").exists()

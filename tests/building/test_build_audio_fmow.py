"""SoundingEarth and GASSL samples built from the served tiny demo world.

SoundingEarth: the aporee sampler crawls the world's archive.org stand-in through its proxy; each
kept recording becomes a FLAC, a log-mel spectrogram and a patch around it, NAIP where NAIP has a
scene over the spot and Sentinel-2 (its fallback) elsewhere. No kept Iowa recording of the tiny
world lies inside its 480 m NAIP footprint (the nearest is 30 m north of its edge), so a second
build places the item whose metadata lacks coordinates at its true spot, which NAIP covers.
GASSL: the fmow sampler reads the world's fMoW-rgb tree; each location becomes its whole image
sequence, cropped around its box.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import webdataset as wds
import yaml
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from shapely.geometry import Point, shape
from test_build import (
    assert_same_shards,
    expect_source_pixels,
    stats_without_duration,
    tar_urls,
)

from geoprep.building.audio import from_pcm16, log_mel
from geoprep.building.build import BuildSummary, build
from geoprep.cli import main
from geoprep.demo.aporee_world import read_manifest
from geoprep.demo.servers import WorldServices
from geoprep.planning.samplers.aporee import choose_audio_file, download_url
from geoprep.reader import GeoArray, decoder, open_dataset
from geoprep.recipe.load import validate_recipe
from geoprep.recipe.model import Recipe
from geoprep.shards.schema import shared_grid

GSD, SIZE = 4.0, 32
MAX_DURATION_S = 5.0  # shorter than a few of the tiny world's recordings: they are cut


@dataclass(frozen=True)
class Built:
    recipe: Recipe
    out: Path
    summary: BuildSummary


# ---------------------------------------------------------------------------------- helpers
def aoi_epsg(world: Path) -> dict[str, str]:
    aois = json.loads((world / "world.json").read_text())["aois"]
    return {aoi["name"]: f"EPSG:{aoi['epsg']}" for aoi in aois}


def naip_footprints(world: Path) -> list:
    items = (world / "stac" / "pc" / "naip").glob("*/*.json")
    return [shape(json.loads(path.read_text())["geometry"]) for path in sorted(items)]


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample through stock WebDataset, in shard order: key → {suffix: bytes}."""
    samples = {}
    for raw in wds.WebDataset(tar_urls(out), shardshuffle=False):
        assert raw["__key__"] not in samples
        samples[raw["__key__"]] = {k: v for k, v in raw.items() if not k.startswith("__")}
    return samples


def failed_by_id(out: Path) -> dict[str, str]:
    return {
        entry["id"]: entry["reason"]
        for path in sorted((out / "shards").glob("*_stats.json"))
        for entry in json.loads(path.read_text())["failed"]
    }


def plan_frame(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "plan" / "locations.parquet")


def soundingearth_imagery(services: WorldServices) -> dict:
    catalog = {"kind": "stac-api", "url": services.stac_url, "provider": "planetary-computer"}
    return {
        "catalogs": {"pc": catalog},
        "sensors": {
            "naip": {"catalog": "pc", "collection": "naip", "assets": ["image"]},
            "s2": {
                "catalog": "pc",
                "collection": "sentinel-2-l2a",
                "assets": ["B04", "B03", "B02", "B08"],
                "max_patch_cloud": 0.1,
                "max_candidates": 8,
                "fallback_for": "naip",
            },
        },
        "time": {"mode": "single", "start": "2019-01-01", "end": "2022-12-31"},
        "grid": {"layout": "common", "gsd": GSD, "size": SIZE},
    }


def soundingearth_recipe(services: WorldServices, sampler: dict, name: str) -> Recipe:
    proxy = services.archive_proxy_url
    return validate_recipe(
        {
            "name": name,
            "seed": 5,
            "sampler": sampler,
            "imagery": soundingearth_imagery(services),
            "audio": {"max_duration_s": MAX_DURATION_S, "segment": "centre", "proxy": proxy},
            "output": {"format": "tif", "samples_per_shard": 4},
            "clusters": {"k": 2},
        },
        source=name,
    )


def aporee_sampler(services: WorldServices) -> dict:
    return {
        "kind": "aporee",
        "order": "identifier",
        "proxy": services.archive_proxy_url,
        "secure": False,
        "backoff_s": 0.01,
    }


def gassl_recipe(world: Path) -> Recipe:
    return validate_recipe(
        {
            "name": "gassl",
            "seed": 5,
            "sampler": {"kind": "fmow", "root": str(world / "fmow" / "fMoW-rgb")},
            "fmow_images": {"size": SIZE},
            "output": {"format": "tif", "samples_per_shard": 4},
            "clusters": {"k": 2},
        },
        source="gassl",
    )


def fmow_truth(world: Path) -> dict[str, dict]:
    """Per location folder of the fMoW tree: its category and image timestamps in time order."""
    truth = {}
    for folder in sorted((world / "fmow" / "fMoW-rgb").glob("*/*/*")):
        split, category = folder.parts[-3], folder.parts[-2]
        stamps = [json.loads(p.read_text())["timestamp"] for p in folder.glob("*_rgb.json")]
        truth[f"fmow-{split}-{folder.name}"] = {"label": category, "timestamps": sorted(stamps)}
    return truth


def build_once(recipe: Recipe, out: Path, **options) -> Built:
    return Built(recipe, out, build(recipe, str(out), **options))


def grid_offsets(grid: dict, lat: float, lon: float) -> tuple[float, float]:
    """How far (x, y metres) the centre of a common grid lies from a point."""
    x, y = Transformer.from_crs(4326, grid["crs"], always_xy=True).transform(lon, lat)
    left, top = grid["transform"][2], grid["transform"][5]
    return left + grid["width"] * grid["gsd"] / 2 - x, top - grid["height"] * grid["gsd"] / 2 - y


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio-fmow")


@pytest.fixture(scope="module")
def soundingearth(services, tmp_module) -> Built:
    recipe = soundingearth_recipe(services, aporee_sampler(services), "soundingearth")
    return build_once(recipe, tmp_module / "soundingearth", io_threads=4)


@pytest.fixture(scope="module")
def located(services, tmp_module) -> Built:
    """The item without coordinates, placed at its true spot (inside NAIP) by the user's CSV."""
    world = services.world_dir
    truth = read_manifest(world).set_index("problem").loc["no_coordinates"]
    item = json.loads((world / "aporee" / truth["identifier"] / "_metadata.json").read_text())
    audio = choose_audio_file(item["files"])
    row = {
        "id": truth["identifier"],
        "lat": truth["lat"],
        "lon": truth["lon"],
        "identifier": truth["identifier"],
        "audio_file": audio.name,
        "audio_format": audio.audio_format,
        "audio_size": audio.size,
        "audio_md5": audio.md5,
        "creator": truth["creator"],
        "title": truth["title"],
        "license_url": truth["license_url"],
        "download_url": download_url(truth["identifier"], audio.name, "http:"),
    }
    points = tmp_module / "located.csv"
    pd.DataFrame([row]).to_csv(points, index=False)
    sampler = {"kind": "points", "path": str(points), "id_column": "id"}
    recipe = soundingearth_recipe(services, sampler, "located")
    return build_once(recipe, tmp_module / "located", io_threads=2)


@pytest.fixture(scope="module")
def gassl(services, tmp_module) -> Built:
    return build_once(gassl_recipe(services.world_dir), tmp_module / "gassl", io_threads=4)


@pytest.fixture(scope="module")
def builds(soundingearth, gassl) -> dict[str, Built]:
    return {"soundingearth": soundingearth, "gassl": gassl}


# ---------------------------------------------------------------------------------- SoundingEarth
def test_recordings_decode_to_their_json_and_spectrogram(soundingearth, services):
    truth = read_manifest(services.world_dir).set_index("identifier")
    spec = soundingearth.recipe.audio
    samples = read_samples(soundingearth.out)
    assert len(samples) == soundingearth.summary.samples == 11
    cut = 0
    for key, members in samples.items():
        doc = json.loads(members["json"])
        audio = doc["audio"]
        wave, rate = soundfile.read(io.BytesIO(members["audio.flac"]), dtype="int16")
        assert wave.ndim == 1 and rate == audio["sample_rate"] == spec.sample_rate
        assert len(wave) / rate == pytest.approx(audio["duration_s"], abs=1e-6)
        original = truth.loc[doc["location"]["identifier"], "duration_s"]
        assert audio["original_duration_s"] == pytest.approx(original, abs=0.05), key
        kept = min(original, MAX_DURATION_S)
        assert audio["duration_s"] == pytest.approx(kept, abs=0.05), key
        if original > MAX_DURATION_S:  # the centre is kept
            cut += 1
            assert audio["offset_s"] == pytest.approx((original - kept) / 2, abs=0.05), key
        mel = np.load(io.BytesIO(members["mel.npy"]), allow_pickle=False)
        assert mel.dtype == np.float16
        assert mel.shape == (128, audio["frames"]) == (audio["n_mels"], 1 + len(wave) // 512)
        # the spectrogram is of exactly the stored samples
        np.testing.assert_array_equal(mel, log_mel(from_pcm16(wave), spec), err_msg=key)
    assert cut >= 2


def test_attribution_comes_with_every_recording(soundingearth, services):
    truth = read_manifest(services.world_dir).set_index("identifier")
    for key, members in read_samples(soundingearth.out).items():
        attribution = json.loads(members["json"])["audio"]["attribution"]
        expected = truth.loc[attribution["identifier"]]
        assert attribution == {
            "identifier": key,
            "file": expected["original"],
            "creator": expected["creator"],
            "title": expected["title"],
            "license_url": expected["license_url"],
            "source_url": f"https://archive.org/details/{key}",
        }


@pytest.mark.parametrize("which", ["soundingearth", "located"])
def test_naip_where_it_covers_the_recording_else_sentinel2(request, which, services):
    built: Built = request.getfixturevalue(which)
    world = services.world_dir
    epsg, footprints = aoi_epsg(world), naip_footprints(world)
    aoi = read_manifest(world).set_index("identifier")["aoi"]
    sensors = Counter()
    for key, members in read_samples(built.out).items():
        doc = json.loads(members["json"])
        grid = doc["grid"]
        assert grid["crs"] == epsg[aoi[key]] and grid["gsd"] == GSD
        assert grid["width"] == grid["height"] == SIZE
        dx, dy = grid_offsets(grid, doc["lat"], doc["lon"])
        assert abs(dx) <= GSD / 2 + 1e-6 and abs(dy) <= GSD / 2 + 1e-6, key
        (entry,) = doc["images"]
        inside = any(f.contains(Point(doc["lon"], doc["lat"])) for f in footprints)
        assert entry["sensor"] == ("naip" if inside else "s2"), key
        assert entry["member"] == f"{entry['sensor']}.t0.tif"
        with MemoryFile(members[entry["member"]]) as memory, memory.open() as image:
            assert image.crs == CRS.from_user_input(grid["crs"])
            assert image.transform.almost_equals(Affine(*grid["transform"]), precision=1e-9)
            array = image.read()
        assert list(array.shape) == entry["shape"] == [4, SIZE, SIZE]
        expect_source_pixels(world, entry, grid, array)
        sensors[aoi[key], entry["sensor"]] += 1
    if which == "located":
        assert sensors == {("iowa", "naip"): 1}
    else:  # every AOI is there; outside the NAIP footprint Iowa gets Sentinel-2 as well
        assert {a for a, _ in sensors} == {"iowa", "bavaria", "victoria"}
        assert sensors["iowa", "s2"] >= 3 and sensors["iowa", "naip"] == 0


def test_items_the_crawler_drops_are_counted_in_the_plan(soundingearth, services):
    truth = read_manifest(services.world_dir)
    dropped = truth[truth["expected_drop"] != ""]
    assert set(dropped["problem"]) >= {"testsound", "no_coordinates", "null_island", "reupload"}
    plan = json.loads((soundingearth.out / "plan" / "plan.json").read_text())
    assert plan["dropped"] == dict(Counter(dropped["expected_drop"]))
    planned = set(plan_frame(soundingearth.out)["id"])
    assert planned == set(truth.loc[truth["expected_drop"] == "", "identifier"])
    assert not planned & set(dropped["identifier"])
    assert not set(read_samples(soundingearth.out)) & set(dropped["identifier"])


def test_recordings_only_the_audio_stage_can_reject_are_shard_failures(soundingearth, services):
    truth = read_manifest(services.world_dir).set_index("problem")["identifier"]
    rejected = {truth["too_short"]: "too_short", truth["corrupt_audio"]: "undecodable"}
    assert failed_by_id(soundingearth.out) == rejected
    details = {
        entry["id"]: entry["detail"]
        for path in sorted((soundingearth.out / "shards").glob("*_stats.json"))
        for entry in json.loads(path.read_text())["failed"]
    }
    assert "spectrogram frames" in details[truth["too_short"]]
    assert "cannot be decoded" in details[truth["corrupt_audio"]]
    manifest = json.loads((soundingearth.out / "manifest.json").read_text())
    expected = {"too_short": 1, "undecodable": 1}
    assert manifest["failures"] == soundingearth.summary.failures == expected
    samples = read_samples(soundingearth.out)
    assert not set(samples) & set(rejected)
    assert len(samples) + len(rejected) == len(plan_frame(soundingearth.out))


# ---------------------------------------------------------------------------------- GASSL
def test_one_gassl_sample_per_location_with_its_images_in_time_order(gassl, services):
    truth = fmow_truth(services.world_dir)
    plan = plan_frame(gassl.out).set_index("id")
    samples = read_samples(gassl.out)
    assert sorted(samples) == sorted(truth) == sorted(plan.index)
    categories = json.loads((gassl.out / "categories.json").read_text())
    names = [entry["name"] for entry in categories]
    assert len(names) == 62 and names == sorted(names)  # fMoW's classes, alphabetical
    assert [entry["index"] for entry in categories] == list(range(62))
    singles = 0
    for key, members in samples.items():
        doc = json.loads(members["json"])
        expected = truth[key]
        assert doc["label"] == expected["label"]
        assert names[doc["location"]["label_index"]] == expected["label"]
        listed = [image["timestamp"] for image in json.loads(plan.loc[key, "images"])]
        assert listed == expected["timestamps"]
        slots = [f"t{i}" for i in range(len(listed))]
        assert [entry["slot"] for entry in doc["images"]] == slots
        assert [entry["datetime"] for entry in doc["images"]] == listed
        assert list(doc["slots"]) == slots
        assert [doc["slots"][s]["target"] for s in slots] == [t[:10] for t in listed]
        times = [dt.datetime.fromisoformat(t) for t in listed]
        assert times == sorted(set(times))
        assert sorted(members) == sorted(["json", *(f"fmow.{slot}.tif" for slot in slots)])
        for entry in doc["images"]:
            with MemoryFile(members[entry["member"]]) as memory, memory.open() as image:
                assert image.crs == CRS.from_epsg(4326) and image.dtypes[0] == "uint8"
                grid = entry.get("grid") or shared_grid(doc, None)  # one image: the sample's
                assert image.transform.almost_equals(Affine(*grid["transform"]))
                assert (image.count, image.height, image.width) == (3, SIZE, SIZE)
                # the object the location stands for lies in the middle of every crop
                row, col = image.index(doc["lon"], doc["lat"])
                assert abs(row + 0.5 - SIZE / 2) <= 2 and abs(col + 0.5 - SIZE / 2) <= 2, key
        singles += len(slots) == 1
    assert singles >= 1  # a location with one image is a sample like any other
    assert failed_by_id(gassl.out) == {}


def test_sentinel2_at_the_fmow_timestamps(services, tmp_path):
    """fMoW-Sentinel: a scene within 60 days of every image; the tiny world has four S2 dates
    per AOI (April and July of 2019 and 2022), so only a location whose every image falls
    near one of them becomes a sample."""
    world = services.world_dir
    recipe = gassl_recipe(world).model_dump(mode="json")
    del recipe["fmow_images"]
    recipe["imagery"] = soundingearth_imagery(services) | {
        "sensors": {"s2": {"catalog": "pc", "collection": "sentinel-2-l2a", "assets": ["B04"]}},
        "time": {"mode": "timestamps", "column": "images", "window_days": 60},
    }
    summary = build(validate_recipe(recipe), str(tmp_path / "out"), io_threads=4)
    truth = fmow_truth(world)
    # the stadium's one image is of mid-April 2022, days from the April 2022 pass
    assert truth["fmow-train-stadium_0"]["timestamps"][0].startswith("2022-04")
    assert summary.samples == 1
    assert summary.failures == {"no_scene": 10}
    failed = {
        entry["id"]: entry["detail"]
        for path in sorted((tmp_path / "out" / "shards").glob("*_stats.json"))
        for entry in json.loads(path.read_text())["failed"]
    }
    assert sorted(failed) == sorted(set(truth) - {"fmow-train-stadium_0"})
    first = truth["fmow-train-crop_field_0"]["timestamps"][0]
    assert failed["fmow-train-crop_field_0"] == "s2 t0: no scene in the window", first
    (sample,) = open_dataset(str(tmp_path / "out"))
    assert sample.key == "fmow-train-stadium_0"
    assert (tmp_path / "out" / "categories.json").exists()


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("which", ["soundingearth", "gassl"])
def test_a_build_elsewhere_with_two_workers_gives_the_same_bytes(builds, which, tmp_path):
    reference = builds[which]  # built in this process, by one worker with four I/O threads
    two = build_once(reference.recipe, tmp_path / "w2", workers=2, io_threads=1)
    assert two.summary.built == two.summary.shards >= 3
    assert two.summary.samples == reference.summary.samples
    assert_same_shards(two.out, reference.out)
    for name in ("manifest.json", "categories.json"):
        if (reference.out / name).exists():
            assert (two.out / name).read_bytes() == (reference.out / name).read_bytes()


@pytest.mark.parametrize("which", ["soundingearth", "gassl"])
def test_an_interrupted_build_resumes_to_the_same_bytes(builds, which, tmp_path):
    reference = builds[which]
    out = tmp_path / "resumed"
    shutil.copytree(reference.out / "plan", out / "plan")
    shutil.copy(reference.out / "recipe.yaml", out / "recipe.yaml")
    shards = sorted((reference.out / "shards").glob("*.tar"))
    (out / "shards").mkdir()
    for tar in shards[:-1]:  # every shard but the last was committed before the build stopped
        shutil.copy(tar, out / "shards" / tar.name)
        stats = tar.with_name(f"{tar.stem}_stats.json")
        shutil.copy(stats, out / "shards" / stats.name)
    (out / "shards" / shards[-1].name).write_bytes(b"uncommitted")  # a tar without its stats
    (out / "shards" / f".{shards[-1].stem}-killed.tar.tmp").write_bytes(b"partial")

    resumed = build(reference.recipe, str(out), io_threads=2)

    assert (resumed.built, resumed.skipped) == (1, len(shards) - 1)
    assert stats_without_duration(out) == stats_without_duration(reference.out)
    assert_same_shards(out, reference.out)
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    for name in ("manifest.json", "categories.json"):
        if (reference.out / name).exists():
            assert (out / name).read_bytes() == (reference.out / name).read_bytes()


# ---------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("which", ["soundingearth", "gassl"])
def test_stock_webdataset_decodes_every_member(builds, which):
    built = builds[which]
    count = 0
    for sample in wds.WebDataset(tar_urls(built.out), shardshuffle=False).decode(decoder):
        count += 1
        assert isinstance(sample["json"], dict) and sample["json"]["id"] == sample["__key__"]
        for entry in sample["json"]["images"]:
            image = sample[entry["member"]]
            assert isinstance(image, GeoArray) and list(image.shape) == entry["shape"]
            assert list(image.bands) == entry["bands"]
        if which == "soundingearth":
            wave, rate = sample["audio.flac"]
            assert wave.dtype == np.float32 and rate == sample["json"]["audio"]["sample_rate"]
            assert sample["mel.npy"].shape == (128, sample["json"]["audio"]["frames"])
    assert count == built.summary.samples


def test_open_dataset_gives_audio_spectrograms_and_time_series(soundingearth, gassl):
    heard = 0
    for sample in open_dataset(str(soundingearth.out)):
        wave, rate = sample.audio()
        assert len(wave) / rate == pytest.approx(sample.meta["audio"]["duration_s"], abs=1e-6)
        assert sample.spectrogram().shape == (128, sample.meta["audio"]["frames"])
        assert sample.image("s2").crs == sample.meta["grid"]["crs"]
        heard += 1
    assert heard == soundingearth.summary.samples
    lengths = []
    for sample in open_dataset(str(gassl.out)):
        series = sample.time_series("fmow")
        times = [when for when, _ in series]
        assert times == sorted(times) and len(series) == len(sample.meta["images"])
        assert all(image.shape == (3, SIZE, SIZE) for _, image in series)
        lengths.append(len(series))
    assert len(lengths) == gassl.summary.samples and min(lengths) == 1 and max(lengths) > 3


@pytest.mark.parametrize("which", ["soundingearth", "gassl"])
def test_geoprep_inspect_finds_the_dataset_clean(builds, which, capsys):
    built = builds[which]
    capsys.readouterr()
    assert main(["inspect", str(built.out), "--json", "--no-stats"]) == 0
    printed = capsys.readouterr().out
    result, _ = json.JSONDecoder().raw_decode(printed[printed.index("{") :])
    assert result["samples"] == built.summary.samples
    assert result["problems"] == []


@pytest.mark.parametrize(
    ("threads", "workers"),
    [("1", "1"), ("3", "2")],
    ids=["one-blas-thread-in-process", "three-blas-threads-two-workers"],
)
def test_builds_in_differently_configured_processes_give_the_same_bytes(
    soundingearth, tmp_path, threads, workers
):
    """Float paths (FFT, mel filterbank, resampling) must not depend on the BLAS/OpenMP thread
    count or on what ran earlier in a process: build in fresh processes with other settings."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(soundingearth.recipe.model_dump(mode="json")))
    env = os.environ | {
        name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    out = tmp_path / "out"
    command = [sys.executable, "-m", "geoprep.cli", "build", str(recipe), "-o", str(out)]
    done = subprocess.run(
        [*command, "--workers", workers, "--io-threads", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_shards(out, soundingearth.out)

"""Faults injected between a build and the served demo world: nothing changes or goes silently.

A `FaultRelay` stands in front of each of the world's services (STAC API, SAS token service,
blob store). Transient faults (429, 5xx, resets, slow and cut-short answers) must leave the
dataset byte-identical to an undisturbed build, at once or after a rerun once the faults stop;
systemic ones (a dead service, every read refused) must stop the build early with one line and
exit 1, and a manifest that does not claim a complete dataset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import fresh_tokens
from test_build import assert_same_shards, common_recipe

from geoprep.building.build import build, forget_open_files
from geoprep.cli import main
from geoprep.demo.relay import FaultRelay
from geoprep.demo.sas_server import TOKEN_PATH
from geoprep.recipe.load import validate_recipe

TRANSIENT = ["429", "503", "reset", "slow", "truncate"]
SERVICES = ["stac", "tokens", "blobs"]


@pytest.fixture(scope="module")
def relays(services):
    """A relay in front of each service, and the environment that routes the build through
    them; blob reads time out after 1 s here, so a stalled answer is retried."""
    with (
        FaultRelay(services.stac_url) as stac,
        FaultRelay(services.sas_server.url) as tokens,
        FaultRelay(services.blob_url, slow_s=2.5) as blobs,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("GDAL_HTTP_PROXY", blobs.url)
        patch.setenv("PC_SDK_SAS_URL", tokens.url + TOKEN_PATH)
        patch.setenv("GDAL_HTTP_TIMEOUT", "1")
        yield {"stac": stac, "tokens": tokens, "blobs": blobs}


@pytest.fixture(autouse=True)
def no_faults_left(relays, services):
    """Each test starts as a new process would (no token, no open file, nothing cached in
    GDAL), so its reads reach the relays, and leaves no fault behind."""
    fresh_tokens(services)
    forget_open_files()
    yield
    for relay in relays.values():
        relay.clear()
        relay.delay = 0.0


@pytest.fixture(scope="module")
def reference(relays, services, tmp_path_factory):
    """The CSF-like recipe (S2, Landsat, NAIP; 7 locations, 2 shards) built without faults."""
    tmp = tmp_path_factory.mktemp("faults")
    through_relay = SimpleNamespace(world_dir=services.world_dir, stac_url=relays["stac"].url)
    recipe = common_recipe(through_relay, tmp, "stac-api")
    fresh_tokens(services)
    summary = build(recipe, str(tmp / "reference"), io_threads=4)
    assert summary.complete and summary.samples == 6, summary
    return recipe, tmp / "reference"


def recipe_file(recipe, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------------------ transient
@pytest.mark.parametrize("kind", TRANSIENT)
@pytest.mark.parametrize("service", SERVICES)
def test_transient_faults_leave_the_same_bytes(service, kind, relays, reference, tmp_path):
    recipe, expected = reference
    relay = relays[service]
    relay.inject(kind, rate=0.5, limit=4, seed=len(service) + len(kind))
    out = tmp_path / "out"
    summary = build(recipe, str(out), io_threads=4)
    assert relay.injected[kind] > 0, "no fault reached the build"
    # no read meets more faults (4) than its retries (5 attempts) absorb
    assert summary.complete, (summary.causes, summary.example)
    assert_same_shards(out, expected)
    assert manifest(out)["complete"]
    assert manifest(out)["failure_kinds"] == {"location": 1, "transient": 0, "systemic": 0}


def test_faults_that_outlast_the_retries_leave_shards_for_a_rerun(relays, reference, tmp_path):
    recipe, expected = reference
    # every answer for the Sentinel-2 red band is cut short, whatever the retries
    relays["blobs"].inject("truncate", match=lambda method, target: "_B04_" in target)
    out = tmp_path / "out"
    summary = build(recipe, str(out), io_threads=4)
    assert not summary.complete and summary.incomplete == [0, 1]
    assert summary.transient == 6 and summary.causes == {"unreadable answer": 6}
    assert not list((out / "shards").glob("*_stats.json"))  # nothing committed
    assert manifest(out)["complete"] is False
    assert manifest(out)["failure_kinds"] == {"location": 0, "transient": 6, "systemic": 0}
    relays["blobs"].clear()
    assert build(recipe, str(out), io_threads=4).complete
    assert_same_shards(out, expected)


def test_a_cut_short_blob_is_not_remembered_by_gdal(relays, reference, tmp_path):
    """One truncated answer for a file's header: without a fresh request GDAL keeps saying the
    file is "not recognized", and every location on that scene would be lost."""
    recipe, expected = reference
    relays["blobs"].inject("truncate", limit=1)
    summary = build(recipe, str(tmp_path / "out"), io_threads=1)
    assert relays["blobs"].injected["truncate"] == 1
    assert summary.complete and summary.transient == 0
    assert_same_shards(tmp_path / "out", expected)


# ------------------------------------------------------------------------------ systemic
def run_cli(args: list[str], capsys) -> tuple[int, list[str], float]:
    started = time.monotonic()
    code = main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geoprep:")]
    return code, lines, time.monotonic() - started


@pytest.mark.parametrize(
    ("service", "kind", "expected"),
    [
        ("tokens", "refuse", "could not get a SAS token from .*connection refused.*PC_SDK_SAS_URL"),
        ("tokens", "503", "SAS token .*HTTP 503.*try again later"),
        ("blobs", "503", "blobs failed with HTTP 503.*try again later"),
        ("blobs", "403", "blobs failed with HTTP 403.*PC_SDK_SAS_URL"),
        ("blobs", "404", "blobs failed with HTTP 404.*hrefs do not exist"),
        ("blobs", "refuse", "blobs failed with connection refused.*GDAL_HTTP_PROXY"),
        ("stac", "refuse", "STAC API .*is the catalog url right"),
    ],
)
def test_a_dead_service_stops_the_build_with_one_line(
    service, kind, expected, relays, reference, tmp_path, capsys
):
    recipe, reference_out = reference
    path = recipe_file(recipe, tmp_path / "recipe.yaml")
    out = tmp_path / "out"
    relays[service].inject(kind)
    code, lines, seconds = run_cli(["build", str(path), "-o", str(out)], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("geoprep: source error:")
    assert __import__("re").search(expected, lines[0]), lines[0]
    assert seconds < 30
    assert not (out / "manifest.json").exists() or not manifest(out)["complete"]
    # once the service is back, the same command builds the same dataset
    relays[service].clear()
    code, lines, _ = run_cli(["build", str(path), "-o", str(out)], capsys)
    assert code == 0 and not lines, lines
    assert_same_shards(out, reference_out)


def test_a_misspelled_asset_is_refused_before_building(reference, tmp_path, capsys):
    recipe, _ = reference
    document = recipe.model_dump(mode="json")
    document["imagery"]["sensors"]["s2"]["assets"] = ["B02", "B4"]
    path = recipe_file(validate_recipe(document), tmp_path / "recipe.yaml")
    code, lines, _ = run_cli(["build", str(path), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "imagery.sensors.s2.assets: B4 not in collection sentinel-2-l2a" in lines[0]
    assert "B04" in lines[0] and "SCL" in lines[0]  # the assets there are
    assert not (tmp_path / "out" / "shards").exists()


# ------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_with_workers_stops_at_once_and_commits_nothing_after(relays, reference, tmp_path):
    recipe, _ = reference
    path = recipe_file(recipe, tmp_path / "recipe.yaml")
    out = tmp_path / "out"
    relays["blobs"].delay = 0.3  # every read slow: shards take seconds each
    command = [sys.executable, "-m", "geoprep.cli", "build", str(path), "-o", str(out)]
    command += ["--workers", "2", "--io-threads", "1", "--samples-per-shard", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        # a session of its own: Ctrl-C in a terminal signals the whole process group
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("shards/*_stats.json")):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no shard was committed"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        signalled = time.monotonic()
        committed = sorted(p.name for p in out.glob("shards/*_stats.json"))
        code = process.wait(30)
        stopped = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 130, log.read_text()[-2000:]
    assert stopped < 5, f"took {stopped:.1f} s to stop"
    time.sleep(1)  # anything left running would commit now
    assert sorted(p.name for p in out.glob("shards/*_stats.json")) == committed
    assert len(committed) < 7

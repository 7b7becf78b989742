"""`geoprep demo-world` run as a user runs it: building, refusing, rebuilding and serving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from geoprep.demo.file_server import port_is_open

NO_PROXY = {"http": "", "https": ""}
TREE = [
    "world.json",
    "truth/aois.geojson",
    "truth/landcover.parquet",
    "truth/cities.csv",
    "stac/pc/catalog.json",
    "stac/local/catalog.json",
    "stac/geoparquet/sentinel-2-l2a.parquet",
    "blobs/sentinel2l2a01/sentinel2-l2",
    "blobs/naipeuwest/naip",
    "blobs/landsateuwest/landsat-c2",
    "blobs/sentinel1euwestrtc/sentinel1-grd-rtc",
]


def _geoprep() -> list[str]:
    """The installed console script, or the module when the venv has none."""
    script = Path(sys.executable).with_name("geoprep")
    return [str(script)] if script.exists() else [sys.executable, "-m", "geoprep.cli"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*_geoprep(), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@dataclass
class Built:
    """One world directory taken through the CLI: an earlier world, kept, then rebuilt."""

    out: Path
    kept: subprocess.CompletedProcess[str]
    rebuilt: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    mtime_after_rebuild: int


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    # One build only (a tiny world takes 10-20 s): the directory starts as a stale earlier
    # world, which a plain run keeps and `--force` replaces whole; a last run keeps the new one.
    out = tmp_path_factory.mktemp("cli") / "world"
    out.mkdir()
    (out / "world.json").write_text(json.dumps({"seed": 7, "scale": "small"}))
    (out / "stale.txt").write_text("from the earlier world")
    kept = _run("demo-world", str(out), "--scale", "tiny")
    stale_kept = (out / "stale.txt").exists()
    rebuilt = _run("demo-world", str(out), "--scale", "tiny", "--force")
    mtime = (out / "world.json").stat().st_mtime_ns
    again = _run("demo-world", str(out), "--scale", "tiny")
    assert stale_kept, "a plain run must not touch an existing world"
    return Built(out, kept, rebuilt, again, mtime)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    # The CLI talks through a rich console; which stream it uses is not the point here.
    return result.stdout + result.stderr


def test_a_run_over_an_existing_world_keeps_it(built):
    for result in (built.kept, built.again):
        assert result.returncode == 0, result.stderr
        said = _said(result)
        assert f"{built.out} already holds a demo world" in said and "--force" in said
    assert (built.out / "world.json").stat().st_mtime_ns == built.mtime_after_rebuild


def test_force_rebuilds_the_whole_tree(built):
    out, result = built.out, built.rebuilt
    assert result.returncode == 0, result.stderr
    assert f"demo world written to {out}" in _said(result)
    assert not (out / "stale.txt").exists(), "the earlier world is replaced, not merged into"
    missing = [path for path in TREE if not (out / path).exists()]
    assert not missing
    manifest = json.loads((out / "world.json").read_text())
    assert (manifest["seed"], manifest["scale"]) == (0, "tiny")
    assert set(manifest["sensors"]) == {"sentinel-2-l2a", "naip", "landsat-c2-l2", "sentinel-1-rtc"}
    assert manifest["counts"]["items"] == sum(manifest["sensors"].values())
    items = list((out / "stac" / "pc").glob("*/*/*.json"))
    assert len(items) == manifest["counts"]["items"]
    assert not list(out.parent.glob(f".{out.name}.*")), "no temporary build directory is left"


def test_a_directory_that_is_not_a_world_is_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    result = _run("demo-world", str(out), "--scale", "tiny")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geoprep: error: ") and str(out) in lines[0]
    assert "not a demo world" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_help_mentions_serve():
    result = _run("demo-world", "--help")
    assert result.returncode == 0
    assert "geoprep serve-demo OUT" in result.stdout


def test_serve_prints_urls_answers_and_stops_on_ctrl_c(built, serve_run):
    server, lines = serve_run.start([*_geoprep(), "serve-demo", str(built.out)])
    urls = dict(
        re.match(r"(STAC API|SAS tokens|blob store)\s+(http://127\.0\.0\.1:\d+\S*)", line).groups()
        for line in lines
        if re.match(r"(STAC API|SAS tokens|blob store)\s", line)
    )
    assert set(urls) == {"STAC API", "SAS tokens", "blob store"}, lines
    landing = requests.get(urls["STAC API"] + "/", proxies=NO_PROXY, timeout=10).json()
    assert landing["type"] == "Catalog"
    assert any(link["rel"] == "search" for link in landing["links"])
    assert "export PC_SDK_SAS_URL=" + urls["SAS tokens"] in lines
    serve_run.stop(server, signal.SIGINT)
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls.values()]
    assert not any(port_is_open(port) for port in ports)

"""geoprep inspect --report: figures and the self-contained report.html, checked in Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from inspect_datasets import (
    ROWS,
    S1_BANDS,
    S2_BANDS,
    edit_json,
    flac,
    members_of,
    meta_of,
    npy,
    rewrite,
    utm_grid,
    write_dataset,
)
from PIL import Image

from geoprep.inspect.dataset import inspect_dataset
from geoprep.inspect.findings import PreviewImage
from geoprep.inspect.previews import display_bands, preview_image
from geoprep.report.figures import dense_regions, land_grids
from geoprep.shards.records import ImageRecord, SampleRecord

CHROMIUM = shutil.which("chromium")
SLOTS = ("t0", "t1", "t2", "t3")
ODD_KEY = "odd<b>key"  # markup in a key must be shown as text, never parsed
LAND_RGB = (217, 211, 195)


def seasonal_record(row: dict, index: int) -> SampleRecord:
    """SeCo/GASSL-like: S2 and S1 over four seasons, plus a SoundingEarth-like recording."""
    rng = np.random.default_rng(index)
    grid = utm_grid(index, 32)
    yy, xx = np.mgrid[0:32, 0:32]
    images = []
    for t, slot in enumerate(SLOTS):
        when = {"datetime": f"2021-{1 + 3 * t:02d}-15T10:00:00Z"}
        base = 800 + 300 * t + 40 * ((xx // 8 + yy // 8 + index) % 3)
        s2 = np.stack([base * (0.8 + 0.2 * b) + rng.normal(0, 20, (32, 32)) for b in range(4)])
        images.append(ImageRecord("s2", slot, s2.astype(np.uint16), grid, S2_BANDS, 0, None, when))
        s1 = rng.gamma(2.0, 0.05, (2, 32, 32)).astype(np.float32)
        images.append(ImageRecord("s1", slot, s1, grid, S1_BANDS, None, None, when))
    frames = 40
    mel = (rng.normal(-50, 8, (24, frames)) + np.linspace(20, -20, 24)[:, None]).astype(np.float16)
    seconds = (frames - 1) * 256 / 8000
    audio = {"sample_rate": 8000, "duration_s": seconds, "n_mels": 24, "frames": frames}
    meta = meta_of(row) | {"audio": audio, "slots": {s: {} for s in SLOTS}}
    extras = {"audio.flac": flac(seconds), "mel.npy": npy(mel)}
    key = ODD_KEY if index == 1 else row["id"]
    return SampleRecord(key, meta, images, extras)


def report_rows() -> list[dict]:
    """Five locations near Munich (a dense region the map zooms into) and three elsewhere."""
    rows = [dict(row) for row in ROWS[:8]]
    for i, row in enumerate(rows[:5]):
        row["lat"], row["lon"] = 48.1 + 0.01 * i, 11.5 + 0.013 * (i % 3)
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, object]:
    """A dataset with one broken sample, its report, and the inspection result."""
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    write_dataset(out, report_rows(), seasonal_record)
    tar = out / "shards" / "00000.tar"
    rewrite(tar, edit_json(f"{ODD_KEY}.json", lambda doc: doc.pop("split"))(members_of(tar)))
    before = {p for p in root.rglob("*")}
    report_dir = root / "report"
    result = inspect_dataset([str(out)], str(report_dir))
    created = {p for p in root.rglob("*")} - before
    assert created == {report_dir, out / "stats.json", *report_dir.iterdir()}
    return out, report_dir, result


def test_report_files_and_page(report) -> None:
    _, report_dir, result = report
    assert result.report_path == str(report_dir / "report.html")
    names = sorted(p.name for p in report_dir.iterdir())
    assert names == [
        "bands.png",
        "counts.png",
        "map.png",
        "report.html",
        "spectrograms.png",
        "thumbnails.png",
        "timestrip-0-s2.png",
        "timestrip-1-s1.png",
    ]
    page = (report_dir / "report.html").read_text()
    # self-contained: no scripts, no external resources, every image inline and decodable
    assert not re.search(r"<script|<link|@import|url\(|src=\"(?!data:)", page)
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == 7
    for data in sources:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and min(image.size) > 100
    assert "odd&lt;b&gt;key" in page and ODD_KEY not in page
    assert [p.code for p in result.problems] == ["missing-field", "stats-mismatch"]


def run_chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def console_errors(stderr: str) -> list[str]:
    """Lines where the page logged to its console or a resource failed to load."""
    pattern = re.compile(r"CONSOLE|Uncaught|net::ERR_|Not allowed to load|Failed to load")
    return [line for line in stderr.splitlines() if pattern.search(line)]


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH (apt-get install -y chromium)"
)


@needs_chromium
def test_console_error_detection_works(tmp_path: Path) -> None:
    """The check below must be able to fail: a page with a script error and a missing image."""
    page = tmp_path / "bad.html"
    page.write_text('<img src="missing.png"><script>console.error("boom"); nope();</script>')
    done = run_chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert done.returncode == 0
    assert console_errors(done.stderr)


@needs_chromium
def test_report_in_a_real_browser(report, tmp_path: Path) -> None:
    _, report_dir, _ = report
    url = (report_dir / "report.html").as_uri()
    dom = run_chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    for element_id in (
        "status",
        "summary-table",
        "problems-table",
        "map-image",
        "counts-image",
        "thumbnails-image",
        "timestrip-0-s2",
        "timestrip-1-s1",
        "spectrograms-image",
        "bands-image",
        "band-stats-s2",
        "band-stats-s1",
        "shards-table",
    ):
        assert f'id="{element_id}"' in dom.stdout, element_id
    assert "<b>" not in dom.stdout and "odd&lt;b&gt;key" in dom.stdout
    shot = tmp_path / "report.png"
    done = run_chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,7000")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert console_errors(done.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    land = (np.abs(pixels - LAND_RGB).sum(axis=2) < 6).sum()
    assert land > 20000  # the map's land background was drawn by the browser
    assert (pixels.std(axis=(0, 1)) > 20).all()  # not a blank page


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    "sensor, bands, shown",
    [
        ("s2", ["B02", "B03", "B04", "B08"], [2, 1, 0]),
        ("landsat", ["nir08", "blue", "green", "red"], [3, 2, 1]),
        ("fmow", ["red", "green", "blue"], [0, 1, 2]),
        ("s1", ["vh", "vv"], [1]),
        ("naip", ["image_0", "image_1", "image_2", "image_3"], [0, 1, 2]),
        ("dem", ["elevation"], [0]),
    ],
)
def test_display_bands_by_name(sensor: str, bands: list[str], shown: list[int]) -> None:
    assert display_bands(sensor, bands)[0] == shown


def test_preview_strides_large_images_and_blanks_nodata() -> None:
    array = np.arange(3 * 300 * 300, dtype=np.uint16).reshape(3, 300, 300)
    array[:, 0, 0] = 0
    small, names = preview_image("x", ["B04", "B03", "B02"], array, 0)
    assert small.shape == (3, 100, 100) and names == ["B04", "B03", "B02"]
    assert np.isnan(small[:, 0, 0]).all() and np.isfinite(small[:, 1:, :]).all()


def test_thumbnails_stretch_with_the_dataset_percentiles(report) -> None:
    from geoprep.report.mosaics import _stretched

    _, _, result = report
    entry = result.stats["sensors"]["s2"]
    low, high = entry["p2"][0], entry["p98"][0]
    layer = np.array([[low, high, (low + high) / 2, np.nan]], np.float32)
    image = PreviewImage("s2", "t0", None, None, ["B04"], layer[None])
    rgb = _stretched(image, result.stats)
    assert rgb.shape == (1, 4, 3)
    np.testing.assert_allclose(rgb[0, :, 0], [0.0, 1.0, 0.5, 0.0], atol=1e-6)


def test_dense_regions_and_land_background(report) -> None:
    _, _, result = report
    lats, lons = (np.array([p[i] for p in result.points]) for i in (0, 1))
    [region] = dense_regions(lats, lons)  # the lone points elsewhere need no zoom
    west, south, east, north = region
    assert west < 11.5 and east > 11.526 and south < 48.1 and north > 48.14
    world, [(crop, extent)] = land_grids((region,))  # cached: the report read it already
    assert world.shape == (1080, 2160)
    assert 0.25 < world.mean() < 0.4  # about a third of the cells of a lat/lon grid are land
    row, col = int((90 - 0) / 180 * 1080), int((-30 + 180) / 360 * 2160)
    assert not world[row, col]  # the middle of the Atlantic
    assert crop.all()  # Bavaria is land
    assert extent == pytest.approx((west, east, south, north), abs=0.01)


def test_json_and_report_agree(report) -> None:
    out, report_dir, result = report
    doc = result.to_json()
    assert doc["report_path"] == str(report_dir / "report.html")
    assert json.loads((out / "stats.json").read_text())["sensors"].keys() == {"s1", "s2"}
    with tarfile.open(out / "shards" / "00000.tar") as tar:
        assert f"{ODD_KEY}.json" in tar.getnames()


def test_summary_tables_print_data_literally(report) -> None:
    """Keys and reasons come from the data: rich must not read them as markup."""
    import dataclasses

    from rich.console import Console

    from geoprep.inspect.findings import Problem

    _, _, result = report
    odd = Problem("x/00000.tar", "[/bold]key", "bad-json", "[red]not red[/red]")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for table in dataclasses.replace(result, problems=[odd]).summary_tables():
        console.print(table)
    text = console.file.getvalue()
    assert "[/bold]key" in text and "[red]not red[/red]" in text
    assert "train" in text and "band statistics: s2" in text


def test_figures_show_data_text_literally(report) -> None:
    """Labels and keys with $…$ must not be read as (broken) mathtext."""
    import dataclasses
    from collections import Counter

    from geoprep.report.figures import counts_figure
    from geoprep.report.mosaics import thumbnails_figure

    _, _, result = report
    odd = r"$\notacommand{$"
    counts = dict(result.counts, label=Counter({odd: 3, "plain": 1}))
    assert counts_figure(dataclasses.replace(result, counts=counts)).startswith(b"\x89PNG")
    previews = [dataclasses.replace(result.previews[0], key=odd)]
    assert thumbnails_figure(previews, result.stats).startswith(b"\x89PNG")

"""The decoding and planning benchmarks run end to end and print their tables."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geoprep.shards.records import ImageRecord, SampleRecord
from geoprep.shards.writer import ShardWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return lambda name: importlib.import_module(f"benchmarks.{name}")


def small_dataset(out: Path) -> None:
    grid = {"crs": "EPSG:32633", "transform": [10.0, 0, 6e5, 0, -10.0, 4e6], "width": 24}
    grid |= {"height": 24, "gsd": 10.0}
    with ShardWriter(str(out), 0, "tif") as writer:
        for n in range(3):
            rng = np.random.default_rng(n)
            optical = (rng.random((4, 24, 24)) * 900).astype("uint16")
            radar = rng.random((2, 24, 24)).astype("float32")
            sources = {"hrefs": {"B02": "/a/B02.tif"}}
            images = [
                ImageRecord(
                    "s2", "t0", optical, grid, ["B02", "B03", "B04", "B08"], 0, None, sources
                ),
                ImageRecord("s1", "t0", radar, grid, ["vv", "vh"], float("nan")),
            ]
            writer.add(SampleRecord(f"loc{n}", {"split": "train"}, images))
        writer.close(0)


def test_decode_benchmark_compares_the_three_decoders(benchmarks, tmp_path, capsys) -> None:
    small_dataset(tmp_path / "ds")
    report = tmp_path / "report.json"
    argv = [str(tmp_path / "ds"), "--samples", "3", "--repeat", "1", "--json", str(report)]
    assert benchmarks("read_decode").main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    assert "| ds | 2 |" in out
    (result,) = json.loads(report.read_text())["results"]
    assert result["samples"] == 3 and result["schema_version"] == [3]
    assert set(result["variants"]) == {"tif via GDAL", "tif (geoprep decoder)", "npy"}


def test_write_benchmark_compares_gdal_and_geoprep_members(benchmarks, tmp_path, capsys) -> None:
    small_dataset(tmp_path / "ds")
    report = tmp_path / "report.json"
    argv = [str(tmp_path / "ds"), "--samples", "3", "--repeat", "1", "--json", str(report)]
    assert benchmarks("write_members").main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "| ds | 6 |" in out
    (result,) = json.loads(report.read_text())["results"]
    assert set(result["variants"]) == {"GDAL", "geoprep"} and result["members"] == 6


def test_write_benchmark_stops_when_gdal_reads_a_member_otherwise(
    benchmarks, tmp_path, monkeypatch
) -> None:
    small_dataset(tmp_path / "ds")
    bench = benchmarks("write_members")
    real = bench.encode_with_gdal
    monkeypatch.setattr(bench, "encode_with_gdal", lambda r: real(replace(r, bands=["x"] * 4)))
    with pytest.raises(SystemExit, match="GDAL reads geoprep's member otherwise"):
        bench.main([str(tmp_path / "ds"), "--samples", "1", "--repeat", "1"])


def test_plan_benchmark_reports_time_memory_and_stages(benchmarks, tmp_path, capsys) -> None:
    report = tmp_path / "report.json"
    assert benchmarks("plan_scale").main(["--n", "3000", "--json", str(report)]) == 0
    (result,) = json.loads(report.read_text())["results"]
    assert result["planned"] == 3000 and result["peak_rss_gb"] > 0
    assert set(result["stages"]) == {"sampler", "clusters", "write"}
    assert "| 3,000 |" in capsys.readouterr().out

"""Shard writing: deterministic GeoTIFF/npy members, reproducible tars, commit markers, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import webdataset as wds
from rasterio.io import MemoryFile

import geoprep.shards.writer
from geoprep.recipe.sections import OutputSpec
from geoprep.shards.layout import ShardStats, clean_partial, done_shards, read_stats
from geoprep.shards.manifest import write_manifest
from geoprep.shards.records import (
    ImageRecord,
    SampleRecord,
    encode_image,
    sample_json,
    sample_members,
)
from geoprep.shards.schema import SCHEMA_VERSION, entry_hrefs
from geoprep.shards.writer import TAR_MTIME, ShardWriter

SIGNED = "https://acct.blob.core.windows.net/c/B04.tif?st=2024&se=2024&sp=rl&sig=SECRET%3D"


def grid(size: int = 32, gsd: float = 10.0) -> dict:
    transform = [gsd, 0.0, 500000.0, 0.0, -gsd, 5000000.0]
    return {"crs": "EPSG:32632", "transform": transform, "width": size, "height": size, "gsd": gsd}


def image(
    sensor: str = "s2",
    slot: str = "t0",
    bands: tuple[str, ...] = ("B02", "B03", "B04"),
    dtype: str = "uint16",
    size: int = 32,
    seed: int = 0,
    group: str | None = None,
    nodata: float | None = 0,
) -> ImageRecord:
    rng = np.random.default_rng(seed)
    array = (rng.random((len(bands), size, size)) * 3000).astype(dtype)
    provenance = {
        "collection": "sentinel-2-l2a",
        "item_id": f"S2A_{seed}",
        "datetime": "2021-06-01T10:20:31Z",
        "hrefs": {"B04": SIGNED},
        "scale": [0.0001] * len(bands),
        "offset": [-0.1] * len(bands),
    }
    return ImageRecord(sensor, slot, array, grid(size), list(bands), nodata, group, provenance)


def sample(key: str, seed: int = 0, size: int = 32) -> SampleRecord:
    meta = {"lat": 45.1, "lon": 9.2, "label": None, "split": "train", "recipe_digest": "abc"}
    return SampleRecord(key, meta, [image(seed=seed, size=size)])


def write_shard(out: str, index: int, keys: list[str], fmt: str = "tif", **kw) -> ShardStats:
    with ShardWriter(out, index, fmt, **kw) as writer:
        for n, key in enumerate(keys):
            writer.add(sample(key, seed=index * 100 + n))
        writer.fail(f"bad{index}", "no_scene", f"no item for {SIGNED}")
        return writer.close(duration_s=1.5)


def files(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "shards").iterdir())


@pytest.mark.parametrize(
    ("dtype", "nodata", "size"),
    [("uint16", 0, 32), ("int16", -9999, 20), ("float32", float("nan"), 32), ("uint8", None, 300)],
)
def test_encoded_tif_is_georeferenced_and_lossless(dtype: str, nodata, size: int) -> None:
    record = image(dtype=dtype, size=size, nodata=nodata)
    data = encode_image(record, "tif")
    assert data == encode_image(record, "tif")
    with MemoryFile(data) as memory, memory.open() as src:
        np.testing.assert_array_equal(src.read(), record.array)
        assert src.crs.to_epsg() == 32632
        assert tuple(src.transform)[:6] == tuple(record.grid["transform"])
        assert src.descriptions == ("B02", "B03", "B04")
        tile = 16 * -(-min(size, 256) // 16)
        assert src.compression.value == "DEFLATE" and src.block_shapes[0] == (tile, tile)
        assert src.tags()["item_id"] == "S2A_0" and src.scales == (0.0001,) * 3
        if nodata is None or np.isnan(nodata):
            assert (src.nodata is None) if nodata is None else np.isnan(src.nodata)
        else:
            assert src.nodata == nodata


def run_python(code: str, *objects: object, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; `objects` are unpickled there as `args`."""
    (tmp_path / "args.pkl").write_bytes(pickle.dumps(objects))
    path = str(tmp_path / "args.pkl")
    prelude = f"import pickle\nargs = pickle.loads(open({path!r}, 'rb').read())\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True)


def test_encoded_tif_bytes_match_a_fresh_process(tmp_path: Path) -> None:
    code = (
        "import hashlib\nfrom geoprep.shards.records import encode_image\n"
        "print(hashlib.sha256(encode_image(args[0], 'tif')).hexdigest())"
    )
    result = run_python(code, image(), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(encode_image(image(), "tif")).hexdigest()


def test_encoded_npy_round_trips() -> None:
    record = image(dtype="float32")
    array = np.load(__import__("io").BytesIO(encode_image(record, "npy")), allow_pickle=False)
    np.testing.assert_array_equal(array, record.array)


@pytest.mark.parametrize("fmt", ["tif", "npy"])
def test_stock_webdataset_reads_keys_and_members(tmp_path: Path, fmt: str) -> None:
    stats = write_shard(str(tmp_path), 0, ["loc_a", "loc_b", "loc_c"], fmt)
    tar = tmp_path / "shards" / "00000.tar"
    samples = list(wds.WebDataset(str(tar), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["loc_a", "loc_b", "loc_c"]
    members = [{k for k in s if not k.startswith("__")} for s in samples]
    assert members == [{"json", f"s2.t0.{fmt}"}] * 3
    meta = json.loads(samples[0]["json"])
    assert meta["id"] == "loc_a" and meta["grid"] == grid()
    assert meta["images"][0]["member"] == f"s2.t0.{fmt}"
    assert entry_hrefs(meta["images"][0]) == {"B04": SIGNED.split("?")[0]}
    assert meta["images"][0]["hrefs"] == {"B04": "B04.tif"}
    assert meta["schema_version"] == SCHEMA_VERSION and "grid" not in meta["images"][0]
    with tarfile.open(tar) as archive:
        members = archive.getmembers()
    keys = [m.name.split(".")[0] for m in members]
    assert keys == sorted(keys)  # each sample's members contiguous, in plan order
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (TAR_MTIME, 0, 0, "geoprep", "geoprep", 0o644)
    }
    assert stats.successes == 3 and stats.count == 4 and stats.tars[0].nsamples == 3


@pytest.mark.parametrize("fmt", ["tif", "npy"])
def test_tar_bytes_identical_across_writes(tmp_path: Path, fmt: str) -> None:
    first = write_shard(str(tmp_path / "a"), 3, ["p1", "p2"], fmt)
    second = write_shard(str(tmp_path / "b"), 3, ["p1", "p2"], fmt)
    data_a = (tmp_path / "a" / "shards" / "00003.tar").read_bytes()
    assert data_a == (tmp_path / "b" / "shards" / "00003.tar").read_bytes()
    assert first == second
    assert first.sha256 == hashlib.sha256(data_a).hexdigest() and first.bytes == len(data_a)


def test_failures_are_counted_and_signed_urls_redacted(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path), 0) as writer:
        writer.add(sample("ok"))
        writer.fail("cloudy", "too_cloudy", "all 6 candidates over 0.1")
        writer.fail("gone", "read_error", f"HTTP 403 for {SIGNED} after 3 tries")
        writer.close(0.1)
    stats = json.loads((tmp_path / "shards" / "00000_stats.json").read_text())
    assert stats["failures"] == {"read_error": 1, "too_cloudy": 1}
    assert [f["id"] for f in stats["failed"]] == ["cloudy", "gone"]
    assert "sig=" not in json.dumps(stats) and SIGNED.split("?")[0] in stats["failed"][1]["detail"]
    tar = str(tmp_path / "shards" / "00000.tar")
    assert [s["__key__"] for s in wds.WebDataset(tar, shardshuffle=False)] == ["ok"]


def test_stats_are_written_after_the_tar_and_a_crash_between_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(url: str, data: bytes) -> None:
        assert (tmp_path / "shards" / "00000.tar").exists()  # the tar is already in place
        raise KeyboardInterrupt

    monkeypatch.setattr(geoprep.shards.writer, "write_bytes_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shard(str(tmp_path), 0, ["a", "b"])
    assert done_shards(str(tmp_path)) == set()
    assert files(tmp_path) == ["00000.tar"]  # no temporaries left, and no commit marker
    monkeypatch.undo()
    clean = write_shard(str(tmp_path / "clean"), 0, ["a", "b"])
    assert write_shard(str(tmp_path), 0, ["a", "b"]) == clean
    assert done_shards(str(tmp_path)) == {0}
    assert files(tmp_path) == ["00000.tar", "00000_stats.json"]


def test_interrupt_while_adding_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), ShardWriter(str(tmp_path), 7) as writer:
        writer.add(sample("a"))
        raise KeyboardInterrupt
    assert files(tmp_path) == []
    with ShardWriter(str(tmp_path), 7) as writer:
        writer.add(sample("a"))  # never closed: discarded, not committed
    assert files(tmp_path) == []


def test_killed_run_leftovers_are_ignored_then_cleaned(tmp_path: Path) -> None:
    pid = os.fork()  # a child that dies mid-shard, as under SIGKILL: no cleanup code runs
    if pid == 0:
        try:
            ShardWriter(str(tmp_path), 1).add(sample("a"))
        finally:
            os._exit(9)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    write_shard(str(tmp_path), 2, ["c"])
    (tmp_path / "shards" / "00004.tar").write_bytes(b"half")  # renamed, but stats never written
    leftovers = [n for n in files(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".00001-")
    assert done_shards(str(tmp_path)) == {2}
    assert sorted(clean_partial(str(tmp_path))) == sorted([*leftovers, "00004.tar"])
    assert files(tmp_path) == ["00002.tar", "00002_stats.json"]


def test_size_cap_splits_a_shard_into_ordered_parts(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(5)]
    one = len(sample_members(sample("k0"), "tif")["s2.t0.tif"])
    cap = 10240 * ((2 * one) // 10240 + 2)  # room for about two samples per part
    stats = write_shard(str(tmp_path), 0, keys, max_bytes=cap)
    names = [t.name for t in stats.tars]
    assert len(names) > 1 and names == [f"00000-{i}.tar" for i in range(len(names))]
    assert all((tmp_path / "shards" / n).stat().st_size <= cap for n in names)
    urls = [str(tmp_path / "shards" / n) for n in names]
    assert [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)] == keys
    assert write_shard(str(tmp_path / "again"), 0, keys, max_bytes=cap) == stats
    joined = b"".join((tmp_path / "shards" / n).read_bytes() for n in names)
    assert stats.sha256 == hashlib.sha256(joined).hexdigest()
    write_shard(str(tmp_path), 0, keys)  # rewritten without a cap: stale parts go away
    assert files(tmp_path) == ["00000.tar", "00000_stats.json"]


def test_a_sample_above_the_cap_gets_its_own_part(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path), 0, max_bytes=20_000) as writer:
        writer.add(sample("small", size=8))
        writer.add(sample("huge", size=96))
        writer.add(sample("small2", size=8))
        stats = writer.close(0)
    assert [t.nsamples for t in stats.tars] == [1, 1, 1]


def test_from_spec_uses_the_output_section(tmp_path: Path) -> None:
    writer = ShardWriter.from_spec(str(tmp_path), 0, OutputSpec(format="npy", max_shard_mb=2))
    assert (writer.fmt, writer.max_bytes) == ("npy", 2_000_000)
    writer.abort()


def test_manifest_totals_and_wids_index(tmp_path: Path) -> None:
    out = str(tmp_path)
    write_shard(out, 0, ["a", "b"])
    write_shard(out, 1, ["c"], max_bytes=20_000)  # one part: keeps the plain name
    write_shard(out, 2, [])
    manifest = write_manifest(out, {"name": "demo"}, "d1g3st", n_shards=4)
    assert manifest == json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["totals"] == {
        "locations": 6,
        "successes": 3,
        "failures": 3,
        "bytes": sum((tmp_path / "shards" / f"0000{i}.tar").stat().st_size for i in range(3)),
    }
    assert manifest["failures"] == {"no_scene": 3}
    assert (manifest["complete"], manifest["missing"]) == (False, [3])
    assert manifest["recipe_digest"] == "d1g3st" and manifest["recipe"] == {"name": "demo"}
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    assert manifest["shards"][0]["tars"][0]["path"] == "shards/00000.tar"
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["name"] == "demo"
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [
        ("shards/00000.tar", 2),
        ("shards/00001.tar", 1),
    ]
    assert index["shardlist"][0]["filesize"] == (tmp_path / "shards" / "00000.tar").stat().st_size


def test_extracted_tif_opens_in_rasterio(tmp_path: Path) -> None:
    write_shard(str(tmp_path), 0, ["loc_a"])
    with tarfile.open(tmp_path / "shards" / "00000.tar") as archive:
        archive.extractall(tmp_path / "x", filter="data")
    with rasterio.open(tmp_path / "x" / "loc_a.s2.t0.tif") as src:
        assert (src.crs.to_epsg(), src.count, src.res) == (32632, 3, (10.0, 10.0))
        assert src.descriptions == ("B02", "B03", "B04")


def test_remote_output_through_fsspec(tmp_path: Path) -> None:
    import fsspec

    out = "memory://geoprep-test-out"
    remote = write_shard(out, 0, ["a", "b"])
    local = write_shard(str(tmp_path), 0, ["a", "b"])
    assert remote == local and done_shards(out) == {0} and read_stats(out, 0) == remote
    with fsspec.open(f"{out}/shards/00000.tar", "rb") as handle:
        assert handle.read() == (tmp_path / "shards" / "00000.tar").read_bytes()
    assert write_manifest(out, {}, "x", 1)["complete"]
    fsspec.filesystem("memory").rm("/geoprep-test-out", recursive=True)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SampleRecord("a.b", {}),
        lambda: SampleRecord("a", {"images": []}),
        lambda: ImageRecord("s2", "t0", np.zeros((3, 8, 8)), grid(), ["a", "b", "c"]),
        lambda: ImageRecord("s2", "t0", np.zeros((2, 32, 32)), grid(), ["a", "b", "c"]),
        lambda: ImageRecord("s.2", "t0", np.zeros((1, 32, 32)), grid(), ["a"]),
        lambda: sample_json(SampleRecord("a", {}, [image(), image(group="10m")]), "tif"),
    ],
)
def test_invalid_records_are_refused(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_a_key_is_written_once(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path), 0) as writer:
        writer.add(sample("a"))
        with pytest.raises(ValueError, match="twice"):
            writer.fail("a", "x")
        writer.close(0)
    assert os.path.exists(tmp_path / "shards" / "00000_stats.json")

"""Hostile shards and indexes: nothing runs, nothing huge is read, every refusal says why."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from inspect_datasets import members_of, rewrite

from geoprep.core.errors import UserError
from geoprep.inspect.dataset import inspect_dataset
from geoprep.reader import decoder, open_dataset, shard_urls
from geoprep.shards.records import ImageRecord, SampleRecord
from geoprep.shards.untrusted import UnsafeShardError, check_shard_url
from geoprep.shards.writer import ShardWriter


class Trap:
    """Unpickling it creates `path`: proof that code from a shard ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def valid_shard(out: Path) -> Path:
    array = np.arange(2 * 8 * 8, dtype="uint16").reshape(2, 8, 8)
    grid = {"crs": "EPSG:32633", "transform": [10.0, 0, 6e5, 0, -10.0, 4e6], "width": 8}
    grid |= {"height": 8, "gsd": 10.0}
    with ShardWriter(str(out), 0, "tif") as writer:
        for key in ("a", "b"):
            record = ImageRecord("s2", "t0", array, grid, ["B04", "B08"], 0, None, {})
            writer.add(SampleRecord(key, {"lat": 1.0, "lon": 2.0, "split": "train"}, [record]))
        writer.close(0)
    return out / "shards" / "00000.tar"


def member(name: str, data: bytes | None = b"", **fields) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def with_member(tar: Path, extra: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    """The sample `a` gains one member (inside its run of members, as WebDataset groups them)."""
    members = members_of(tar)
    rewrite(tar, members[:1] + [extra] + members[1:])
    return tar


def object_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def huge_tif_header() -> bytes:
    """A tiny GeoTIFF whose header announces 60000 × 60000 × 4 bands of float64 (115 GB)."""
    from rasterio.io import MemoryFile

    with MemoryFile() as memory:
        profile = {"driver": "GTiff", "width": 60000, "height": 60000, "count": 4}
        with memory.open(**profile, dtype="float64", sparse_ok=True, tiled=True, compress="lzw"):
            pass
        return memory.read()


CODE = {
    "pyd": lambda trap: pickle.dumps(trap),
    "pickle": lambda trap: pickle.dumps(trap),
    "pth": lambda trap: pickle.dumps(trap),
    "npy": lambda trap: object_npy(),
}


@pytest.mark.parametrize("suffix", sorted(CODE))
def test_members_that_would_run_code_are_refused_by_stock_webdataset_and_open_dataset(
    tmp_path: Path, suffix: str
) -> None:
    trap = tmp_path / "code-ran"
    tar = with_member(
        valid_shard(tmp_path / "out"), member(f"a.evil.{suffix}", CODE[suffix](Trap(trap)))
    )
    with pytest.raises(Exception) as stock:
        list(wds.WebDataset(str(tar), shardshuffle=False).decode(decoder))
    assert isinstance(stock.value.__cause__, UnsafeShardError), stock.value
    with pytest.raises(UnsafeShardError, match="refuse|pickle"):
        list(open_dataset(str(tar)))
    assert not trap.exists()


def test_gzip_members_are_not_expanded_by_open_dataset(tmp_path: Path) -> None:
    import gzip

    tar = with_member(valid_shard(tmp_path / "out"), member("a.meta.json.gz", gzip.compress(b"{}")))
    with pytest.raises(UnsafeShardError, match="refuses .gz"):
        list(open_dataset(str(tar)))


HOSTILE_TARS: dict[str, tuple[Callable[[Path], tuple], str, str]] = {
    "dotdot": (lambda _: member("../a.evil.json", b"{}"), "outside the sample", "unsafe-member"),
    "absolute": (lambda _: member("/tmp/a.evil.json", b"{}"), "absolute path", "unsafe-member"),
    "symlink": (
        lambda _: member("a.link.json", None, type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "symlink",
        "unsafe-member",
    ),
    "hardlink": (
        lambda _: member("a.link.json", None, type=tarfile.LNKTYPE, linkname="a.json"),
        "hard link",
        "unsafe-member",
    ),
    "device": (
        lambda _: member("a.dev.json", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        "not a regular file",
        "unsafe-member",
    ),
    "deep-json": (
        lambda _: member("a.deep.json", b"[" * 200_000 + b"]" * 200_000),
        "nested too deeply",
        "unlisted-member",
    ),
    "huge-tif-header": (
        lambda _: member("a.big.tif", huge_tif_header()),
        "over the cap",
        "unlisted-member",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TARS))
def test_hostile_members_are_refused_by_the_reader_and_reported_by_inspect(
    tmp_path: Path, name: str
) -> None:
    make, reason, code = HOSTILE_TARS[name]
    tar = with_member(valid_shard(tmp_path / "out"), make(tmp_path))
    with pytest.raises(UnsafeShardError, match=reason):
        list(open_dataset(str(tar)))
    result = inspect_dataset([str(tar)], write_stats=False)
    assert code in {p.code for p in result.problems}, result.problems


def test_a_deeply_nested_sample_json_is_bad_json_for_inspect(tmp_path: Path) -> None:
    tar = valid_shard(tmp_path / "out")
    deep = b"[" * 200_000 + b"]" * 200_000
    rewrite(tar, [(i, deep if i.name == "a.json" else d) for i, d in members_of(tar)])
    with pytest.raises(UnsafeShardError, match="nested too deeply"):
        list(open_dataset(str(tar)))
    result = inspect_dataset([str(tar)], write_stats=False)
    assert [p.key for p in result.problems if p.code == "bad-json"] == ["a"]


def sparse_tar(path: Path, size: int) -> Path:
    """A tar whose one member holds `size` zero bytes, stored sparsely on disk (instant to make)."""
    info = tarfile.TarInfo("a.huge.npy")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with open(path, "wb") as handle:
        handle.write(header)
        end = len(header) + -(-size // 512) * 512 + 1024
        handle.truncate(end + (-end) % 10240)
    return path


def test_a_sparse_giant_member_is_refused_from_its_header(tmp_path: Path) -> None:
    tar = sparse_tar(tmp_path / "00000.tar", int(1.2 * (1 << 30)))
    started = time.perf_counter()
    with pytest.raises(UnsafeShardError, match="over the cap"):
        next(iter(open_dataset(str(tar))))
    assert time.perf_counter() - started < 5  # refused from the header, not after reading 1.2 GiB
    result = inspect_dataset([str(tar)], write_stats=False, max_member_bytes=1 << 20)
    (too_large,) = [p for p in result.problems if p.code == "too-large"]
    assert "over the cap of 1048576" in too_large.reason


def test_inspect_cap_is_lower_than_the_readers_and_configurable(tmp_path: Path) -> None:
    tar = with_member(valid_shard(tmp_path / "out"), member("a.blob.npy", bytes(300 << 20)))
    result = inspect_dataset([str(tar)], write_stats=False)
    assert "too-large" in {p.code for p in result.problems}
    result = inspect_dataset([str(tar)], write_stats=False, max_member_bytes=400 << 20)
    assert "too-large" not in {p.code for p in result.problems}


@pytest.mark.parametrize("lie", ["shorter", "longer"])
def test_a_lying_size_header_is_refused(tmp_path: Path, lie: str) -> None:
    """A header that says fewer bytes than follow (the rest parses as garbage headers, where
    tarfile would stop silently) or more than the tar holds (a truncated tar)."""
    tar = valid_shard(tmp_path / "out")
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as archive:
        first = max(archive.getmembers(), key=lambda m: m.size)
    info = tarfile.TarInfo(first.name)
    info.size = first.size - 600 if lie == "shorter" else 1 << 28
    info.mtime, info.mode = first.mtime, first.mode
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    data[first.offset_data - 512 : first.offset_data] = header
    tar.write_bytes(bytes(data))
    with pytest.raises(UnsafeShardError, match="damaged|header|end marker"):
        list(open_dataset(str(tar)))


@pytest.mark.parametrize(
    "url",
    ["pipe:touch {marker}", "pipe:cat x.tar", "-", "reference://x.json", "simplecache::/x.tar"],
)
def test_an_index_naming_a_command_or_unknown_scheme_is_refused(tmp_path: Path, url: str) -> None:
    marker = tmp_path / "command-ran"
    out = tmp_path / "out"
    valid_shard(out)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "x"}
    index["shardlist"] = [{"url": url.format(marker=marker), "nsamples": 2}]
    (out / "index.json").write_text(json.dumps(index))
    for source in (str(out), str(out / "index.json")):
        with pytest.raises(UserError, match="not read"):
            list(open_dataset(source))
    with pytest.raises(UserError, match="not read"):
        shard_urls([url.format(marker=marker)])
    with pytest.raises(UserError, match="not read"):
        inspect_dataset([str(out / "index.json")])
    assert not marker.exists()


@pytest.mark.parametrize(
    "url",
    ["/data/00000.tar", "shards/00000.tar", "file:///data/x.tar", "s3://b/x.tar", "C:\\x.tar"],
)
def test_paths_and_known_fsspec_urls_are_read(url: str) -> None:
    assert check_shard_url(url) == url


def test_a_clean_shard_still_reads(tmp_path: Path) -> None:
    tar = valid_shard(tmp_path / "out")
    assert [s.key for s in open_dataset(str(tar))] == ["a", "b"]
    assert os.path.getsize(tar) > 0

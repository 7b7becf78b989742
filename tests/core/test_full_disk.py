"""A full disk: one line naming the device and the file, exit 1, nothing half-written left."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from geoprep.cli import main
from geoprep.core.errors import DiskFullError
from geoprep.core.storage import write_bytes_atomic
from geoprep.shards import writer as shard_writer
from geoprep.shards.records import ImageRecord, SampleRecord
from geoprep.shards.writer import ShardWriter

RECIPE = "name: full\nseed: 1\nsampler: {kind: urban, n: 40, sigma_km: 5, land_only: false}\n"


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs (root only: skipped elsewhere; the injected ENOSPC test still runs)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def record(key: str, seed: int) -> SampleRecord:
    pixels = np.random.default_rng(seed).integers(0, 60000, (4, 64, 64)).astype("uint16")
    grid = {"crs": "EPSG:32633", "transform": [10.0, 0, 6e5, 0, -10.0, 4e6], "width": 64}
    image = ImageRecord("s2", "t0", pixels, grid | {"height": 64, "gsd": 10.0}, list("abcd"), 0)
    return SampleRecord(key, {"lat": 1.0, "lon": 2.0}, [image])


def fill_shard(out: Path) -> None:
    with ShardWriter(str(out), 0, "npy") as writer:
        for n in range(200):  # 32 kB each: 6 MB, far past the tmpfs
            writer.add(record(f"k{n}", n))
        writer.close(0.0)


def test_a_full_tmpfs_is_one_error_naming_device_and_file(tiny_tmpfs: Path) -> None:
    out = tiny_tmpfs / "out"
    with pytest.raises(DiskFullError) as raised:
        fill_shard(out)
    message = str(raised.value)
    assert message.startswith(f"no space left on tmpfs ({tiny_tmpfs}) while writing {out}")
    assert message.endswith("; free space and rerun")
    assert list((out / "shards").iterdir()) == []  # the temporary tar is gone
    with pytest.raises(DiskFullError, match="while writing .*big.bin"):
        write_bytes_atomic(str(tiny_tmpfs / "big.bin"), bytes(1 << 20))
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["out"]


def test_plan_onto_a_full_disk_exits_1_with_one_line(tiny_tmpfs: Path, tmp_path: Path, capsys):
    (tiny_tmpfs / "filler").write_bytes(bytes(250 << 10))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    assert main(["plan", str(recipe), "-o", str(tiny_tmpfs / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("geoprep: error: no space left on tmpfs") and "rerun" in line


def test_an_injected_enospc_while_writing_a_tar(tmp_path: Path, monkeypatch) -> None:
    """The same path without root: the tar write layer fails as a full disk makes it fail."""

    def full(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shard_writer._HashingFile, "write", full)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError, match=f"no space left on .* while writing {out}/shards/"):
        fill_shard(out)
    assert list((out / "shards").iterdir()) == []

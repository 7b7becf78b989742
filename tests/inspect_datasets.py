"""Small geoprep datasets written through the real writer, and ways to damage their tars: shared
by the inspect and report tests."""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from geoprep.shards.manifest import write_manifest
from geoprep.shards.records import ImageRecord, SampleRecord
from geoprep.shards.writer import ShardWriter

PER_SHARD = 4
S2_BANDS = ["B04", "B03", "B02", "B08"]
S1_BANDS = ["vv", "vh"]
NAIP_BANDS = ["image_0", "image_1", "image_2", "image_3"]
LABELS = ["forest", "water", "urban", None]
SPLITS = ["train", "train", "val", "test"]


# ---------------------------------------------------------------- datasets


def plan_rows(n: int) -> list[dict]:
    """A plan: ids, locations, clusters, splits, labels (what geoprep plan would write)."""
    rng = np.random.default_rng(7)
    return [
        {
            "id": f"loc{i:03d}",
            "lat": float(rng.uniform(-60, 70)),
            "lon": float(rng.uniform(-180, 180)),
            "cluster": int(i % 3),
            "split": SPLITS[i % 4],
            "label": LABELS[(i // 2) % 4],
            "source": "points",
        }
        for i in range(n)
    ]


def utm_grid(i: int, size: int = 16, gsd: float = 10.0, crs: str = "EPSG:32633") -> dict:
    transform = [gsd, 0.0, 500000.0 + 1000 * i, 0.0, -gsd, 4000000.0]
    return {"crs": crs, "transform": transform, "width": size, "height": size, "gsd": gsd}


def meta_of(row: dict) -> dict:
    meta = {k: row[k] for k in ("lat", "lon", "label", "cluster", "split", "source")}
    return meta | {"slots": {"t0": {"start": "2021-05-01", "end": "2021-09-30"}}}


def csf_record(row: dict, index: int, size: int = 16) -> SampleRecord:
    """Common layout: S2 (uint16, nodata 0), S1 (float32, NaN nodata), NAIP (uint8) on one grid."""
    rng = np.random.default_rng(index)
    grid = utm_grid(index, size)
    s2 = rng.integers(0, 6000, (4, size, size)).astype(np.uint16)
    s2[:, :2, :3] = 0  # a nodata corner
    s1 = rng.gamma(2.0, 0.05 * (1 + index % 5), (2, size, size)).astype(np.float32)
    s1[:, -1, :] = np.nan
    naip = rng.integers(1, 256, (4, size, size)).astype(np.uint8)
    when = {"datetime": f"2021-07-{1 + index % 28:02d}T10:00:00Z"}
    images = [
        ImageRecord("s2", "t0", s2, grid, S2_BANDS, 0, provenance=when),
        ImageRecord("s1", "t0", s1, grid, S1_BANDS, float("nan"), provenance=when),
        ImageRecord("naip", "t0", naip, grid, NAIP_BANDS, 0, provenance=when),
    ]
    return SampleRecord(row["id"], meta_of(row), images)


def flac(seconds: float, rate: int = 8000) -> bytes:
    wave = 0.3 * np.sin(np.arange(int(seconds * rate)) * 0.05)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def audio_fmow_record(row: dict, index: int) -> SampleRecord:
    """SoundingEarth-like audio members plus an fMoW-like series on an EPSG:4326 grid."""
    rng = np.random.default_rng(100 + index)
    lon, lat = row["lon"], row["lat"]
    grid = {
        "crs": "EPSG:4326",
        "transform": [1e-5, 0.0, lon - 8e-5, 0.0, -1e-5, lat + 8e-5],
        "width": 16,
        "height": 16,
        "gsd": 1.1,
    }
    slots = 2 + index % 3  # fMoW sequences differ in length
    images = [
        ImageRecord(
            "fmow",
            f"t{t}",
            rng.integers(0, 256, (3, 16, 16)).astype(np.uint8),
            grid,
            ["red", "green", "blue"],
            None,
            provenance={"datetime": f"201{t}-03-01T00:00:00Z"},
        )
        for t in range(slots)
    ]
    frames = 20 + index
    seconds = (frames - 1) * 256 / 8000
    mel = rng.normal(-40, 10, (32, frames)).astype(np.float16)
    audio = {"sample_rate": 8000, "duration_s": seconds, "n_mels": 32, "frames": frames}
    meta = meta_of(row) | {"audio": audio}
    meta["slots"] = {f"t{t}": {} for t in range(slots)}
    extras = {"audio.flac": flac(seconds), "mel.npy": npy(mel)}
    return SampleRecord(row["id"], meta, images, extras)


def write_dataset(
    out: Path,
    rows: list[dict],
    make: Callable[[dict, int], SampleRecord] = csf_record,
    failed: frozenset[str] = frozenset(),
) -> None:
    n_shards = math.ceil(len(rows) / PER_SHARD)
    for shard in range(n_shards):
        with ShardWriter(str(out), shard) as writer:
            for index in range(shard * PER_SHARD, min(len(rows), (shard + 1) * PER_SHARD)):
                row = rows[index]
                if row["id"] in failed:
                    writer.fail(row["id"], "no_clear_scene", "every candidate was cloudy")
                else:
                    writer.add(make(row, index))
            writer.close(0.0)
    write_manifest(str(out), {"name": "test-dataset"}, "0123456789abcdef", n_shards)


ROWS = plan_rows(14)


def members_of(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(info, tar.extractfile(info).read()) for info in tar.getmembers()]


def rewrite(tar_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[list], list]:
    def edit(members: list) -> list:
        out = []
        for info, data in members:
            if info.name == name:
                doc = json.loads(data)
                change(doc)
                data = json.dumps(doc).encode()
            out.append((info, data))
        return out

    return edit

"""Tiny geoprep-format datasets written directly as tars (the sample schema, .npy images)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Per sensor: band names, per-band mean and spread of the synthetic values, dtype, nodata.
SENSORS = {
    "naip": (["R", "G", "B", "N"], [100, 110, 90, 150], [10, 12, 8, 20], "uint8", None),
    "s2": (["B04", "B03", "B02", "B08"], [800, 900, 700, 2500], [100, 90, 80, 300], "uint16", 0),
}
CLASSES = ["farm", "forest", "water"]


def _grid(size: int) -> dict:
    transform = [1.0, 0.0, 500000.0, 0.0, -1.0, 4600000.0]
    return {"crs": "EPSG:32615", "transform": transform, "width": size, "height": size, "gsd": 1.0}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def sample_members(
    key: str, split: str, label: str | None, size: int, rng: np.random.Generator, sensors
) -> dict[str, bytes]:
    """{member name: bytes} of one common-grid sample, as geoprep's writer lays it out."""
    grid = _grid(size)
    images, members = [], {}
    class_shift = CLASSES.index(label) if label in CLASSES else 0
    for sensor in sensors:
        bands, mean, spread, dtype, nodata = SENSORS[sensor]
        values = [
            rng.normal(m + 3 * s * class_shift, s, (size, size))
            for m, s in zip(mean, spread, strict=True)
        ]
        array = np.clip(np.stack(values), 1, None).round().astype(dtype)
        member = f"{sensor}.t0.npy"
        members[f"{key}.{member}"] = _npy(array)
        images.append(
            {
                "member": member,
                "sensor": sensor,
                "slot": "t0",
                "group": None,
                "bands": bands,
                "dtype": dtype,
                "shape": list(array.shape),
                "nodata": nodata,
                "grid": grid,
            }
        )
    doc = {"id": key, "split": split, "label": label, "grid": grid, "images": images}
    members[f"{key}.json"] = json.dumps(doc).encode()
    return members


def write_dataset(
    root: Path,
    n: int = 24,
    per_shard: int = 4,
    size: int = 32,
    splits: tuple[str, ...] = ("train", "train", "val", "test"),
    labelled: bool = False,
    sensors: tuple[str, ...] = ("naip", "s2"),
    seed: int = 0,
) -> Path:
    """A dataset directory with index.json and shards/NNNNN.tar; sample i has split
    splits[i % len(splits)] and key s{shard}x{i}."""
    rng = np.random.default_rng(seed)

    def members(shard: int, i: int) -> dict[str, bytes]:
        label = CLASSES[i % len(CLASSES)] if labelled else None
        return sample_members(f"s{shard}x{i}", splits[i % len(splits)], label, size, rng, sensors)

    return write_shards(root, n, per_shard, members)


def write_shards(
    root: Path, n: int, per_shard: int, members: Callable[[int, int], dict[str, bytes]]
) -> Path:
    """index.json and shards/NNNNN.tar holding members(shard, i) of samples i = 0 … n-1."""
    (root / "shards").mkdir(parents=True, exist_ok=True)
    shardlist = []
    for shard in range(-(-n // per_shard)):
        name = f"shards/{shard:05d}.tar"
        count = 0
        with tarfile.open(root / name, "w") as tar:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                for member, data in members(shard, i).items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        shardlist.append({"url": name, "nsamples": count})
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shardlist}
    (root / "index.json").write_text(json.dumps(index))
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "csf")


@pytest.fixture
def labelled_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "eval", n=36, per_shard=12, labelled=True, seed=1)


def tiny_config(source: Path, **sections) -> dict:
    """A config dict for a tiny CSF run on `source` (ResNet-18, 32 px, batch 8)."""
    config = {
        "method": {"name": "csf", "crop_fraction": 0.25, "dropout": {"warmup_batches": 4}},
        "data": {"source": str(source), "num_workers": 0, "shuffle_buffer": 4},
        "model": {"arch": "resnet18"},
        "optim": {"warmup_steps": 2},
        "trainer": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1},
        "seed": 3,
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_audio_dataset(
    root: Path,
    n: int = 16,
    per_shard: int = 4,
    size: int = 32,
    frames: tuple[int, int] = (60, 300),
    fallback_every: int = 3,
    seed: int = 0,
) -> Path:
    """SoundingEarth-shaped shards: per sample one image (NAIP, or Sentinel-2 for every
    `fallback_every`-th as a build's fallback) and a float16 log-mel `mel.npy` (128 × frames,
    frame counts drawn in `frames`) whose loudest band follows the label."""
    rng = np.random.default_rng(seed)
    splits = ("train", "train", "train", "test")

    def members(shard: int, i: int) -> dict[str, bytes]:
        key, label = f"a{shard}x{i}", CLASSES[i % len(CLASSES)]
        fallback = fallback_every and i % fallback_every == fallback_every - 1
        found = sample_members(
            key, splits[i % 4], label, size, rng, ("s2" if fallback else "naip",)
        )
        length = int(rng.integers(frames[0], frames[1] + 1))
        mel = rng.normal(-60, 5, (128, length))
        mel[20 + 30 * CLASSES.index(label) : 30 + 30 * CLASSES.index(label)] += 30
        found[f"{key}.mel.npy"] = _npy(mel.astype(np.float16))
        doc = json.loads(found[f"{key}.json"])
        doc["audio"] = {"n_mels": 128, "frames": length, "hop_length": 512}
        doc["audio"]["attribution"] = {"identifier": f"aporee_{i}_{1000 + i}"}
        found[f"{key}.json"] = json.dumps(doc).encode()
        return found

    return write_shards(root, n, per_shard, members)


AUDIO_BANDS = ["naip.R", "naip.G", "naip.B", "naip.N", "s2.B04", "s2.B03", "s2.B02", "s2.B08"]


def sound_config(source: Path, **sections) -> dict:
    """A config dict for a tiny SoundingEarth run (ResNet-18, 32 px patches, batch 8)."""
    config = {
        "method": {"name": "soundingearth", "sensor": "naip", "center_fraction": 1.0,
                   "crop_fraction": [0.75, 1.0]},
        "data": {"source": str(source), "num_workers": 0, "shuffle_buffer": 4,
                 "bands": AUDIO_BANDS},
        "model": {"arch": "resnet18"},
        "optim": {"warmup_steps": 0},
        "trainer": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1},
        "seed": 5,
    }  # fmt: skip
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@pytest.fixture
def audio_dataset(tmp_path: Path) -> Path:
    return write_audio_dataset(tmp_path / "aporee")

"""Tiny fMoW-style and multi-year Sentinel-2 datasets in geoprep's sample format (.npy images)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def _grid(size: int, gsd: float, east: float = 500000.0) -> dict:
    transform = [gsd, 0.0, east, 0.0, -gsd, 4600000.0]
    return {"crs": "EPSG:32615", "transform": transform, "width": size, "height": size, "gsd": gsd}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _entry(
    member: str, sensor: str, slot: str, group, bands, array, grid, nodata=None, year=2017
) -> dict:
    return {
        "member": member, "sensor": sensor, "slot": slot, "group": group, "bands": bands,
        "dtype": str(array.dtype), "shape": list(array.shape), "nodata": nodata, "grid": grid,
        "datetime": f"{year}-06-01T00:00:00Z",
    }  # fmt: skip


def _write(root: Path, samples: list[dict[str, bytes]], per_shard: int) -> Path:
    (root / "shards").mkdir(parents=True, exist_ok=True)
    shardlist = []
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        name = f"shards/{shard:05d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for members in samples[start : start + per_shard]:
                for member, data in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shardlist.append({"url": name, "nsamples": len(samples[start : start + per_shard])})
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shardlist}
    (root / "index.json").write_text(json.dumps(index))
    return root


def write_fmow(
    root: Path, n: int = 16, size: int = 32, clusters: int = 3, seed: int = 0, per_shard: int = 8
) -> Path:
    """fMoW locations: location i has 1 + i % 3 RGB images `fmow.tN`, cluster i % clusters,
    label one of three categories, splits train/train/val/test in turn."""
    rng = np.random.default_rng(seed)
    splits = ("train", "train", "val", "test")
    samples = []
    for i in range(n):
        key, label = f"loc{i:04d}", ("airport", "farm", "port")[i % 3]
        grid = _grid(size, 0.5)
        members, images = {}, []
        for t in range(1 + i % 3):
            base = np.array([60, 120, 180])[(np.arange(3) + i) % 3].reshape(3, 1, 1)
            array = np.clip(base + rng.normal(0, 20, (3, size, size)), 0, 255).astype(np.uint8)
            members[f"{key}.fmow.t{t}.npy"] = _npy(array)
            images.append(
                _entry(
                    f"fmow.t{t}.npy",
                    "fmow",
                    f"t{t}",
                    None,
                    ["red", "green", "blue"],
                    array,
                    grid,
                    year=2015 + t,
                )  # fmt: skip
            )
        doc = {
            "id": key, "lat": 10.0 + i, "lon": 20.0, "label": label, "cluster": i % clusters,
            "split": splits[i % 4], "grid": grid, "images": images,
        }  # fmt: skip
        members[f"{key}.json"] = json.dumps(doc).encode()
        samples.append(members)
    return _write(root, samples, per_shard)


GROUPS = {"10m": (["B02", "B03", "B04"], 1), "20m": (["B05"], 2)}
YEARS = (2019, 2022)


def footprint_east(i: int) -> float:
    """Western edge (UTM 15N metres) of multi-year location i; locations lie 1 km apart."""
    return 500000.0 + 1000.0 * i


def write_multiyear(
    root: Path, n: int = 8, size: int = 16, seasons: int = 3, seed: int = 0, per_shard: int = 4
) -> Path:
    """Native-layout S2 locations with slots y0sS (2019) and y1sS (2022) and 10 m patches
    starting at `footprint_east(i)`; odd locations change between the years."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        key = f"caco{i:04d}"
        grids = {g: _grid(size // f, 10.0 * f, footprint_east(i)) for g, (_, f) in GROUPS.items()}
        members, images = {}, []
        for year in (0, 1):
            level = 800 + 100 * (i % 4) + (600 if year and i % 2 else 0)
            for s in range(seasons):
                for group, (bands, factor) in GROUPS.items():
                    side = size // factor
                    array = rng.normal(level + 30 * s, 40, (len(bands), side, side))
                    array = np.clip(array, 1, None).astype(np.uint16)
                    member = f"s2.y{year}s{s}.{group}.npy"
                    members[f"{key}.{member}"] = _npy(array)
                    images.append(
                        _entry(
                            member,
                            "s2",
                            f"y{year}s{s}",
                            group,
                            bands,
                            array,
                            grids[group],
                            0,
                            YEARS[year],
                        )  # fmt: skip
                    )
        doc = {
            "id": key, "lat": 1.0, "lon": 2.0 + i, "label": None, "cluster": i % 2,
            "split": "train" if i % 4 else "val", "grids": grids, "images": images,
        }  # fmt: skip
        members[f"{key}.json"] = json.dumps(doc).encode()
        samples.append(members)
    return _write(root, samples, per_shard)

"""Decoding shards for training on one core: GeoTIFF members through GDAL, through geoprep's
numpy decoder (the default), and the same pixels as .npy members, side by side in one run.

    python -m benchmarks.read_decode demo-out/csf demo-out/caco

Each dataset's first samples are read into memory once (tar reading is left out: it is the same
for every variant), then decoded into `geoprep.reader.Sample`s: JSON parsed, every image member
decoded with its georeferencing. The npy variant re-encodes the same arrays as .npy members
(and names them so in the JSON) before timing. Before timing, every variant's arrays are
compared with GDAL's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.read_common import describe, machine, timed_rounds
from geoprep import reader
from geoprep.shards.listing import shard_urls
from geoprep.shards.untrusted import MAX_MEMBER_BYTES, tar_members


def load_samples(dataset: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` raw samples (member → bytes) of a dataset, in shard order."""
    from webdataset.tariterators import group_by_keys

    found: list[dict[str, Any]] = []
    for url in shard_urls(dataset):
        for raw in group_by_keys(tar_members(url, MAX_MEMBER_BYTES)):
            found.append(raw)
            if len(found) >= limit:
                return found
    return found


def as_npy(raw: dict[str, Any]) -> dict[str, Any]:
    """The same sample with every .tif member stored as .npy (the JSON names them so)."""
    doc = json.loads(raw["json"])
    out = {k: v for k, v in raw.items() if not k.endswith(".tif")}
    for entry in doc["images"]:
        member = entry["member"]
        if member.endswith(".tif"):
            buffer = io.BytesIO()
            np.save(buffer, reader.decode_tif(raw[member.lower()]).array, allow_pickle=False)
            entry["member"] = member[: -len("tif")] + "npy"
            out[entry["member"].lower()] = buffer.getvalue()
    out["json"] = json.dumps(doc).encode()
    return out


@contextlib.contextmanager
def gdal_tifs() -> Iterator[None]:
    """Decode .tif members with GDAL, as geoprep did before its own decoder."""
    saved = reader.DECODERS["tif"]
    reader.DECODERS["tif"] = reader._decode_tif_gdal
    try:
        yield
    finally:
        reader.DECODERS["tif"] = saved


def decode_all(samples: list[dict[str, Any]]) -> list[reader.Sample]:
    return [reader.Sample.from_wds(raw) for raw in samples]


def check_same(reference: list[reader.Sample], other: list[reader.Sample], name: str) -> None:
    for a, b in zip(reference, other, strict=True):
        for suffix, image in a.images.items():
            twin = b.images[suffix]
            same = np.array_equal(image.array, twin.array, equal_nan=True)
            if not same or image.crs != twin.crs or image.transform != twin.transform:
                raise SystemExit(f"{name}: {a.key} {suffix} differs from GDAL's decoding")


def sizes(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sample: members, JSON bytes, image member bytes, decoded pixel bytes, schema."""
    docs = [json.loads(raw["json"]) for raw in samples]
    images = [
        sum(len(v) for k, v in raw.items() if k.endswith((".tif", ".npy"))) for raw in samples
    ]
    pixels = [
        sum(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in doc["images"])
        for doc in docs
    ]
    n = len(samples)
    return {
        "image_members": sum(len(doc["images"]) for doc in docs) / n,
        "json_bytes": sum(len(raw["json"]) for raw in samples) / n,
        "image_member_bytes": sum(images) / n,
        "pixel_bytes": sum(pixels) / n,
        "schema_version": sorted({doc.get("schema_version", 1) for doc in docs}),
    }


def run_dataset(dataset: str, limit: int, repeat: int, only: str | None) -> dict[str, Any]:
    samples = load_samples(dataset, limit)
    if not samples:
        raise SystemExit(f"{dataset}: no samples")
    npy = [as_npy(raw) for raw in samples]
    with gdal_tifs():
        reference = decode_all(samples)
    check_same(reference, decode_all(samples), "geoprep decoder")
    check_same(reference, decode_all(npy), "npy")

    def gdal() -> int:
        with gdal_tifs():
            return len(decode_all(samples))

    variants = {
        "tif via GDAL": gdal,
        "tif (geoprep decoder)": lambda: len(decode_all(samples)),
        "npy": lambda: len(decode_all(npy)),
    }
    if only:  # e.g. to profile one variant
        variants = {k: v for k, v in variants.items() if only in k}
    return {"dataset": dataset, "samples": len(samples), **sizes(samples)} | {
        "variants": timed_rounds(variants, repeat)
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.read_decode",
        description="Samples decoded per second on one core: GeoTIFF via GDAL, GeoTIFF via "
        "geoprep's decoder (the default) and .npy, on built datasets (e.g. the demo's csf, caco).",
    )
    parser.add_argument("datasets", nargs="+", help="built dataset directories (or shard URLs)")
    parser.add_argument("--samples", type=int, default=200, help="samples per dataset (200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, median (3)")
    parser.add_argument("--only", help="time only the variants whose name contains this")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine("webdataset")
    print(f"machine: {describe(info)}")
    results = [run_dataset(d, args.samples, args.repeat, args.only) for d in args.datasets]
    if args.only:
        print(json.dumps(results, indent=1, default=str))
        return 0
    header = "| dataset | members | JSON KB | JSON / member bytes | GDAL samples/s | geoprep "
    print(header + "samples/s | npy samples/s | geoprep / GDAL | npy / geoprep |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rate = {k: v["per_cpu_s"] for k, v in r["variants"].items()}
        gdal, ours, npy = rate["tif via GDAL"], rate["tif (geoprep decoder)"], rate["npy"]
        share = r["json_bytes"] / r["image_member_bytes"]
        print(
            f"| {Path(r['dataset']).name} | {r['image_members']:.0f} | "
            f"{r['json_bytes'] / 1000:.1f} | {share:.1%} | {gdal:,.0f} | {ours:,.0f} | "
            f"{npy:,.0f} | {ours / gdal:.2f}× | {npy / ours:.2f}× |"
        )
    print("(samples per CPU-second of this one-threaded process, median of rounds; per wall")
    print(" second: " + "; ".join(_wall(r) for r in results) + ")")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


def _wall(result: dict[str, Any]) -> str:
    rates = ", ".join(f"{k} {v['per_s']:,.0f}" for k, v in result["variants"].items())
    return f"{Path(result['dataset']).name}: {rates}"


if __name__ == "__main__":
    sys.exit(main())

"""Writing image members on one core: GeoTIFFs through GDAL (schema 2) and laid out by geoprep
(schema 3, the default), side by side in one run, on the images of built datasets.

    python -m benchmarks.write_members demo-out/csf demo-out/caco

Each dataset's first samples are decoded once into the records a build writes (pixels, grid,
band names, nodata and the provenance the member's tags and scales come from). Before timing,
every member from both writers is opened with GDAL and compared: pixels, CRS, transform, nodata,
band descriptions, scales, offsets and tags must be equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.io import MemoryFile

from benchmarks.read_common import describe, machine, timed_rounds
from benchmarks.read_decode import load_samples
from geoprep import reader
from geoprep.shards.records import ImageRecord, encode_image, encode_with_gdal

#: the keys of an image entry that end up in its GeoTIFF (tags, scales, offsets)
MEMBER_PROVENANCE = ("collection", "item_id", "datetime", "scale", "offset")


def records_of(raw: dict[str, Any]) -> list[ImageRecord]:
    """The image records a build wrote as the sample's GeoTIFF members."""
    doc = json.loads(raw["json"])
    found = []
    for entry in doc["images"]:
        if not entry["member"].endswith(".tif"):
            continue
        image = reader.decode_tif(raw[entry["member"].lower()])
        height, width = image.array.shape[1:]
        grid = {"crs": image.crs, "transform": list(image.transform)[:6]}
        grid |= {"width": width, "height": height, "gsd": abs(image.transform.a)}
        provenance = {key: entry[key] for key in MEMBER_PROVENANCE if key in entry}
        found.append(
            ImageRecord(
                entry["sensor"],
                entry["slot"],
                image.array,
                grid,
                list(image.bands),
                image.nodata,
                entry.get("group"),
                provenance,
            )
        )
    return found


def as_gdal_reads(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    with MemoryFile(data) as memory, memory.open() as src:
        facts = {
            "crs": src.crs,
            "transform": src.transform,
            "nodata": str(src.nodata),  # NaN == NaN
            "descriptions": src.descriptions,
            "scales": src.scales,
            "offsets": src.offsets,
            "tags": src.tags(),
        }
        return src.read(), facts


def check_same(records: list[ImageRecord]) -> None:
    for record in records:
        (ours, facts), (gdals, expected) = (
            as_gdal_reads(encode_image(record, "tif")),
            as_gdal_reads(encode_with_gdal(record)),
        )
        if not np.array_equal(ours, gdals, equal_nan=True) or facts != expected:
            raise SystemExit(f"{record.suffix}: GDAL reads geoprep's member otherwise")


def run_dataset(dataset: str, limit: int, repeat: int) -> dict[str, Any]:
    samples = load_samples(dataset, limit)
    records = [record for raw in samples for record in records_of(raw)]
    if not records:
        raise SystemExit(f"{dataset}: no GeoTIFF members")
    check_same(records)

    def gdal() -> int:
        return len([encode_with_gdal(record) for record in records])

    def ours() -> int:
        return len([encode_image(record, "tif") for record in records])

    sizes = {
        "GDAL": sum(len(encode_with_gdal(r)) for r in records) / len(records),
        "geoprep": sum(len(encode_image(r, "tif")) for r in records) / len(records),
    }
    pixels = sum(r.array.nbytes for r in records) / len(records)
    return {
        "dataset": dataset,
        "samples": len(samples),
        "members": len(records),
        "pixel_bytes": pixels,
        "member_bytes": sizes,
        "variants": timed_rounds({"GDAL": gdal, "geoprep": ours}, repeat),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.write_members",
        description="GeoTIFF members written per second on one core, through GDAL and laid out "
        "by geoprep, on the images of built datasets (e.g. the demo's csf, caco).",
    )
    parser.add_argument("datasets", nargs="+", help="built dataset directories (or shard URLs)")
    parser.add_argument("--samples", type=int, default=100, help="samples per dataset (100)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, median (3)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine("imagecodecs")
    print(f"machine: {describe(info)}")
    results = [run_dataset(d, args.samples, args.repeat) for d in args.datasets]
    print(
        "| dataset | members | pixel KB / member | GDAL ms / member | geoprep ms / member "
        "| GDAL / geoprep | member bytes geoprep / GDAL |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ms = {k: 1000 / v["per_cpu_s"] for k, v in r["variants"].items()}
        size = r["member_bytes"]["geoprep"] / r["member_bytes"]["GDAL"]
        print(
            f"| {Path(r['dataset']).name} | {r['members']} | {r['pixel_bytes'] / 1000:.1f} | "
            f"{ms['GDAL']:.3f} | {ms['geoprep']:.3f} | {ms['GDAL'] / ms['geoprep']:.2f}× | "
            f"{size:.3f} |"
        )
    print("(CPU milliseconds per member of this one-threaded process, median of rounds)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

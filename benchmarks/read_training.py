"""Training input per DataLoader worker: samples per second that one worker turns from shards
into a method's batches (tar reading, decoding, the method's fields and augmented views), for
each geossl method, side by side in one run; and how many such workers keep one GPU busy.

    python -m benchmarks.read_training --demo demo-out

Each method runs with its paper config (`recipes/train/METHOD.yaml`: crop sizes, views, batch
size) on the demo dataset it trains on (`--set` may change either). The stream is geossl's own
`TrainStream`, iterated in this process with one torch thread, as one DataLoader worker runs.
Normalisation statistics are computed first and left out of the timing.

How many workers a GPU needs is the GPU's rate in samples per second over one worker's. The GPU
rate is an assumption, stated with `--gpu-images-per-s` (training images of 224 × 224 px per
second for the method's backbone); a sample counts as the pixels of every image its views give
the encoders, relative to 224 × 224.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.read_common import describe, machine
from geossl.config import load_config
from geossl.data import TrainStream, dataset_urls
from geossl.methods import build_method
from geossl.train import resolve_normalization

ROOT = Path(__file__).resolve().parents[1]
#: method → the demo dataset it trains on
DATASETS = {"csf": "csf", "caco": "caco", "gassl": "fmow", "soundingearth": "aporee"}
#: assumed training throughput of one modern data-centre GPU (A100-class, mixed precision) in
#: 224 × 224 images per second, by backbone: the order of published ResNet training figures
GPU_IMAGES_PER_S = {"resnet18": 6000.0, "resnet50": 2500.0}


def measure(method: str, dataset: str, batches: int, overrides: list[str]) -> dict[str, Any]:
    recipe = ROOT / "recipes" / "train" / f"{method}.yaml"
    config = load_config(
        recipe,
        [f"data.source={dataset}", "data.num_workers=1", "data.stats_samples=200", *overrides],
    )
    normalization = resolve_normalization(config)
    model = build_method(config, normalization)
    batch_size = config.trainer.batch_size
    stream = TrainStream(
        dataset_urls(config.data.source),
        model.fields(),
        model.views(),
        batch_size=batch_size,
        split=config.data.split,
        seed=0,
        start=0,
        end=batches + 1,
        workers=1,
        shuffle_buffer=min(config.data.shuffle_buffer, 4 * batch_size),
        max_member_bytes=config.data.max_member_bytes,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        batches_iter = iter(stream)
        first = next(batches_iter)  # fills the shuffle buffer: not timed
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(batches_iter)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    # every (rows, channels, h, w) tensor of the batch: rows per sample × h × w
    per_sample = sum(
        value.shape[0] / batch_size * value.shape[-1] * value.shape[-2]
        for value in first.values()
        if isinstance(value, torch.Tensor) and value.dim() == 4
    )
    return {
        "method": method,
        "dataset": config.data.source,
        "arch": config.model.arch,
        "batch_size": batch_size,
        "batches": batches,
        "samples_per_s": batches * batch_size / wall,
        "samples_per_cpu_s": batches * batch_size / max(cpu, 1e-9),
        "images_224_per_sample": per_sample / 224**2,
        "views": {k: list(v.shape) for k, v in first.items() if isinstance(v, torch.Tensor)},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.read_training",
        description="Samples per second per DataLoader worker for each geossl method's input "
        "pipeline on the demo datasets, and the workers one GPU needs.",
    )
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="geoprep demo OUT")
    parser.add_argument("--methods", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per method (8)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, repeatable"
    )
    parser.add_argument(
        "--gpu-images-per-s",
        type=json.loads,
        default=GPU_IMAGES_PER_S,
        help=f"assumed GPU training rate by backbone, JSON (default {GPU_IMAGES_PER_S})",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine("torch", "torchvision", "webdataset")
    print(f"machine: {describe(info)}")
    results = []
    for method in args.methods.split(","):
        dataset = str(args.demo / DATASETS[method])
        results.append(measure(method, dataset, args.batches, args.overrides))
    print(
        "| method | backbone | batch | samples/s per worker | per CPU-s | 224² images per "
        "sample | GPU samples/s (assumed) | workers per GPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        gpu = args.gpu_images_per_s[r["arch"]] / max(r["images_224_per_sample"], 1e-9)
        r["gpu_samples_per_s"] = gpu
        r["workers_per_gpu"] = gpu / r["samples_per_cpu_s"]
        print(
            f"| {r['method']} | {r['arch']} | {r['batch_size']} | {r['samples_per_s']:,.0f} | "
            f"{r['samples_per_cpu_s']:,.0f} | {r['images_224_per_sample']:.2f} | {gpu:,.0f} | "
            f"{r['workers_per_gpu']:.1f} |"
        )
    print("(workers per GPU = assumed GPU samples/s ÷ one worker's samples per CPU-second)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

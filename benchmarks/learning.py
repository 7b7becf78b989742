"""Does pretraining learn? Each method trained on the demo world, evaluated beside random init.

`python -m benchmarks.learning [--methods csf] [--json FILE] [--demo-out DIR]` builds the demo
datasets with `geoprep demo DIR` unless DIR already holds them, trains each method with its demo
config (recipes/train/demo/<method>.yaml) into DIR/runs/benchmark/<method> (a finished run of the
same config is reused, one of another config started again), evaluates the trained and a
randomly initialised encoder of the same architecture on the method's labelled set, prints the
table and writes the rows of `geossl eval --json` with a "method" field (and "bands" for rows
of a band subset). Training throughput (samples/s) and wall time are printed.

CACo also gets `change_auc` (`geossl eval --change-truth`): its locations ranked by the embedding
distance between their year groups against the demo world's 2019→2022 land-cover change, for
the trained encoder, random init and plain MoCo-v2 (the same config with `long_term: never`,
trained into DIR/runs/benchmark/caco-moco, encoder `moco`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPES = ROOT / "recipes" / "train" / "demo"


@dataclass(frozen=True)
class Benchmark:
    """A method's demo: its pretraining set, its labelled set, and band subsets to also try."""

    pretrain: str
    evaluate: str
    band_subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # labels from a table instead of the samples' own: (CSV under DIR, its label column)
    labels: tuple[str, str] | None = None
    # the labelled set's slot when it differs from the training slot (CACo trains on y0s0)
    slot: str | None = None
    # change_auc: the world's land-cover truth (relative to DIR), and the overrides of the
    # baseline run that lacks the method's idea (its encoder is reported as "moco")
    change_truth: str | None = None
    baseline: tuple[str, ...] = ()


# GASSL, CACo and SoundingEarth add their entries (and their own metrics) here.
BENCHMARKS: dict[str, Benchmark] = {
    "csf": Benchmark(
        "csf",
        "csf-osm-eval",
        # CSF's any-subset inference: NAIP alone (the sensor names of the demo recipes)
        band_subsets=(("naip", ("naip.",)),),
    ),
    # linear probe (and k-NN) on the fMoW category of held-out locations
    "gassl": Benchmark("fmow", "fmow"),
    # k-NN and probe on the OSM land-cover classes imaged by Sentinel-2; change AUC
    "caco": Benchmark(
        "caco",
        "csf-osm-eval",
        slot="t0",
        change_truth="world/truth/landcover.parquet",
        baseline=("method.long_term=never",),
    ),
    # retrieval on the held-out recordings (i2a_recall@10, a2i_recall@10, chance_recall@10) and
    # the image encoder's k-NN on each recording's land cover, known to the demo world
    "soundingearth": Benchmark(
        "aporee", "aporee", labels=("world/aporee/recordings.csv", "land_cover")
    ),
}


def ensure_demo(out: Path, names: set[str]) -> None:
    """Build the demo datasets with the geoprep CLI unless `out` has them all."""
    if all((out / name / "index.json").exists() for name in names):
        return
    print(f"building the demo world and datasets in {out} (geoprep demo) …", flush=True)
    script = Path(sys.executable).with_name("geoprep")
    geoprep = str(script) if script.exists() else (shutil.which("geoprep") or "geoprep")
    subprocess.run([geoprep, "demo", str(out), "--train-steps", "0"], check=True)
    missing = [n for n in names if not (out / n / "index.json").exists()]
    if missing:
        raise SystemExit(f"geoprep demo did not build {missing} in {out}")


def train_method(
    name: str, out: Path, steps: int | None, extra: tuple[str, ...] = (), run_name: str = ""
) -> tuple[Path, float, int, int]:
    """Train the method's demo config on DIR/<pretrain>; (run, seconds, steps, batch size)."""
    from geossl.config import load_config
    from geossl.train import train, trained_steps

    spec = BENCHMARKS[name]
    overrides = [f"data.source={out / spec.pretrain}", *extra]
    if steps:
        overrides.append(f"trainer.steps={steps}")
    config = load_config(TRAIN_RECIPES / f"{name}.yaml", overrides)
    run = out / "runs" / "benchmark" / (run_name or name)
    saved = run / "config.yaml"
    if saved.exists() and load_config(saved).digest() != config.digest():
        print(f"{run}: trained with another config; starting again", flush=True)
        shutil.rmtree(run)
    start = trained_steps(run)
    started = time.perf_counter()
    train(config, run)
    seconds = time.perf_counter() - started
    return run, seconds, config.trainer.steps - start, config.trainer.batch_size


def evaluate_method(name: str, out: Path, run: Path) -> tuple[list[dict[str, Any]], str]:
    from geossl.evaluate import evaluate, read_labels, rows_json, table
    from geossl.train import load_run

    spec = BENCHMARKS[name]
    dataset = str(out / spec.evaluate)
    labels = read_labels(out / spec.labels[0], spec.labels[1]) if spec.labels else None
    rows, embedded = evaluate(run, dataset, labels=labels, slot=spec.slot)
    found = rows_json(rows, method=name, dataset=spec.evaluate)
    text = [table(rows, embedded)]
    bands = load_run(run)[1].bands
    for label, prefixes in spec.band_subsets:
        subset = [b for b in bands if b.startswith(prefixes)]
        if not subset or len(subset) == len(bands):
            continue
        sub_rows, _ = evaluate(run, dataset, subset, labels=labels, slot=spec.slot)
        found += rows_json(sub_rows, method=name, dataset=spec.evaluate, bands=label)
        text.append(f"bands: {label} only ({len(subset)} of {len(bands)})")
        text.append(table(sub_rows))
    if spec.change_truth:
        change_rows, counts = change_rows_of(name, out, run)
        found += rows_json(change_rows, method=name, dataset=spec.pretrain)
        text.append(f"change ({counts['changed']} of {counts['locations']} locations changed)")
        text.append(table(change_rows))
    return found, "\n".join(text)


def change_rows_of(name: str, out: Path, run: Path) -> tuple[list[Any], dict[str, int]]:
    """change_auc of the trained, random and baseline ("moco") encoders on the pretraining set."""
    from geossl.change import change_auc
    from geossl.evaluate import random_twin
    from geossl.train import load_run

    spec = BENCHMARKS[name]
    config, trained, _ = load_run(run)
    encoders = {"trained": trained, "random": random_twin(trained, config.seed)}
    encoders["moco"] = load_run(out / "runs" / "benchmark" / f"{name}-moco")[1]
    sensor = getattr(config.method, "sensor", "s2")
    return change_auc(encoders, str(out / spec.pretrain), out / spec.change_truth, sensor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learning",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--methods", default="csf", help=f"comma-separated: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--demo-out", type=Path, default=Path("demo-out"), help="demo directory")
    parser.add_argument("--steps", type=int, help="override trainer.steps (a shorter check)")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(BENCHMARKS)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    out = args.demo_out.resolve()
    ensure_demo(out, {n for m in names for n in (BENCHMARKS[m].pretrain, BENCHMARKS[m].evaluate)})
    rows: list[dict[str, Any]] = []
    for name in names:
        run, seconds, steps, batch = train_method(name, out, args.steps)
        if BENCHMARKS[name].baseline:
            train_method(name, out, args.steps, BENCHMARKS[name].baseline, f"{name}-moco")
        rate = steps * batch / seconds if steps else 0.0
        found, text = evaluate_method(name, out, run)
        if steps:
            print(f"\n== {name}: {steps} steps × {batch} in {seconds:.0f} s ({rate:.1f} samples/s)")
        else:
            print(f"\n== {name}: the finished run in {run} (same config) reused")
        print(text)
        rows += found
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `geossl` command: train (or resume) a run, evaluate an encoder, export a backbone."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from geoprep import UserError

EPILOG = """examples:
  geossl train recipes/train/demo/csf.yaml -o runs/csf
  geossl train recipes/train/csf.yaml -o runs/csf --set trainer.batch_size=256
  torchrun --nproc_per_node=8 -m geossl train recipes/train/csf.yaml -o runs/csf
  geossl train recipes/train/demo/gassl.yaml -o runs/gassl --set method.geo=false
  geossl train recipes/train/demo/caco.yaml -o runs/caco-moco --set method.long_term=never
  geossl eval runs/csf demo-out/csf-osm-eval --json
  geossl eval runs/csf demo-out/csf-osm-eval --bands naip          # one sensor's bands
  geossl eval runs/soundingearth demo-out/aporee \
      --labels demo-out/world/aporee/recordings.csv --label-column land_cover
  geossl eval runs/csf demo-out/csf-osm-eval --bands naip.image_0,naip.image_1,naip.image_2
  geossl eval runs/gassl demo-out/fmow
  geossl eval runs/caco demo-out/csf-osm-eval --slot t0
  geossl eval runs/caco demo-out/caco --change-truth demo-out/world/truth/landcover.parquet \\
      --compare moco=runs/caco-moco
  geossl export runs/csf backbone.pt
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="geossl",
        description="Self-supervised pretraining on geoprep shards, and frozen-feature evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a run (rerun the same command to resume after a crash)",
        description="Train from a config YAML into a run directory. Run under torchrun for DDP. "
        "Rerunning with the same -o resumes from the newest checkpoint; raising "
        "trainer.steps continues a finished run.",
    )
    train.add_argument("config", help="training config YAML (recipes/train/*.yaml)")
    train.add_argument("-o", "--out", required=True, help="run directory")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. trainer.steps=500 (repeatable)",
    )

    ev = sub.add_parser(
        "eval",
        help="k-NN and linear probe of a run's encoder beside a random-init encoder",
        description="Embed every labelled sample of a geoprep dataset with the run's encoder "
        "and a randomly initialised one of the same architecture; k-NN (leave-one-out) "
        "on all samples, linear probe trained on 'train' and scored on 'test' (else 'val'). "
        "For a SoundingEarth run also image<->audio retrieval on the held-out split "
        "(recall@1/5/10, median rank, chance); its k-NN and probe need samples with a 'label'.",
    )
    ev.add_argument("run", help="run directory written by geossl train")
    ev.add_argument("dataset", help="labelled geoprep dataset (directory, index.json or tars)")
    ev.add_argument("--json", action="store_true", help="print the rows as JSON")
    ev.add_argument(
        "--bands",
        help="comma-separated subset of the encoder's bands (names as in backbone.json, or a "
        "sensor name for all its bands); "
        "the others are zero (CSF's any-subset inference)",
    )
    ev.add_argument("-k", type=int, default=10, help="neighbours for k-NN (default 10)")
    ev.add_argument("--pca", type=int, help="PCA components before k-NN and the probe")
    ev.add_argument(
        "--labels",
        help="CSV of labels by sample 'key' or recording 'identifier' instead of the samples' "
        "own (e.g. DEMO/world/aporee/recordings.csv for the recordings' land cover)",
    )
    ev.add_argument(
        "--label-column", default="label", help="the --labels column to use (default label)"
    )
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument(
        "--slot",
        help="the dataset's image slot to embed (default: the training data.slot), e.g. t0 "
        "for a labelled single-date set evaluating a CACo run trained on y0s0",
    )
    ev.add_argument(
        "--change-truth",
        metavar="FILE",
        help="land-cover truth over time (e.g. demo-out/world/truth/landcover.parquet): instead "
        "of k-NN and the probe, rank the multi-year dataset's locations by the embedding "
        "distance between their year groups and report change_auc (ROC-AUC against it)",
    )
    ev.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=RUN",
        help="with --change-truth: another run's encoder as a column, e.g. moco=runs/caco-never",
    )
    ev.add_argument(
        "--min-changed",
        type=float,
        default=0.05,
        help="with --change-truth: share of the patch whose land cover changed for 'changed'",
    )
    ev.add_argument("--workers", type=int, default=0, help="DataLoader workers")

    ex = sub.add_parser("export", help="write the encoder of a run's newest checkpoint")
    ex.add_argument("run", help="run directory")
    ex.add_argument("out", help="output .pt (a .json with the same stem describes it)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        return _export(args)
    except UserError as exc:
        print(f"geossl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geossl: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from geossl.config import load_config

    config = load_config(args.config, args.overrides)
    from geossl.train import train

    out = train(config, Path(args.out))
    if out is not None:
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from geossl.evaluate import evaluate, read_labels, rows_json, table

    if args.change_truth:
        return _change(args)
    bands = [b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else None
    labels = read_labels(args.labels, args.label_column) if args.labels else None
    rows, embedded = evaluate(
        Path(args.run),
        args.dataset,
        bands,
        args.k,
        args.pca,
        args.batch_size,
        args.workers,
        labels,
        args.slot,
    )
    if args.json:
        print(json.dumps(rows_json(rows), indent=1))
    else:
        print(table(rows, embedded))
    return 0


def _change(args: argparse.Namespace) -> int:
    from geossl.change import change_auc
    from geossl.evaluate import random_twin, rows_json, table
    from geossl.train import load_run

    config, trained, _ = load_run(Path(args.run))
    encoders = {"trained": trained, "random": random_twin(trained, config.seed)}
    for item in args.compare:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise UserError(f"--compare {item!r}: expected NAME=RUN, e.g. moco=runs/caco-never")
        encoders[name] = load_run(Path(run))[1]
    sensor = getattr(config.method, "sensor", "s2")
    rows, counts = change_auc(
        encoders, args.dataset, args.change_truth, sensor, args.min_changed, args.batch_size
    )
    if args.json:
        print(json.dumps(rows_json(rows), indent=1))
    else:
        print(table(rows))
        print(f"{counts['changed']} of {counts['locations']} locations changed")
    return 0


def _export(args: argparse.Namespace) -> int:
    from geossl.train import export_to, load_run

    config, method, steps = load_run(Path(args.run))
    out = Path(args.out)
    export_to(out, method, config, steps)
    print(f"wrote {out} and {out.with_suffix('.json')} (step {steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `geoprep` command line: argument parsing and dispatch to the stages.

Commands: plan, build, inspect, check (a recipe), demo-world (generate the offline world),
serve-demo (serve it on loopback) and demo (every stage on the demo world). Exit codes: 0 success
(a complete dataset), 1 a source failed or the build is incomplete, 2 a user mistake, 3 inspect
found problems in the data, 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time

from rich.table import Table

from geoprep import __version__
from geoprep.core.errors import (
    DATA_PROBLEMS_EXIT_CODE,
    INCOMPLETE_EXIT_CODE,
    INTERRUPTED_EXIT_CODE,
    DiskFullError,
    SourceError,
    UserError,
)
from geoprep.core.progress import console, progress_bar

log = logging.getLogger("geoprep")

_EPILOG_SET = (
    "Any recipe key can be overridden with --set KEY.PATH=VALUE (repeatable); values are parsed "
    "as YAML, e.g. --set sampler.n=500 --set clusters.k=20 --set splits.train=0.7."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geoprep",
        description="Plan locations, fetch co-registered imagery and audio, and write WebDataset "
        "shards for self-supervised pretraining on Earth-observation data.",
        epilog="Run 'geoprep COMMAND --help' for the options of each command. "
        "Recipes are documented in README.md.",
    )
    parser.add_argument("--version", action="version", version=f"geoprep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug logs")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: without -v after the command, keep what was given before it (`geoprep -v plan`)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print debug logs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "plan",
        parents=[common],
        help="choose where to sample: write locations.parquet and clusters.parquet",
        description="Run the recipe's sampler, add geo-clusters and splits, and write "
        "OUT/locations.parquet (GeoParquet points), OUT/clusters.parquet (cluster centres), "
        "OUT/recipe.yaml (the validated recipe) and OUT/plan.json (counts; written last).",
        epilog=_EPILOG_SET,
    )
    _add_recipe_args(p, "recipe YAML file, e.g. recipes/urban.yaml", with_out=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "build",
        parents=[common],
        help="fetch imagery for the planned locations and write WebDataset shards",
        description="Plan (unless --plan DIR, OUT or OUT/plan holds a plan of the same recipe "
        "sections seed, sampler, clusters and splits, e.g. one made by 'geoprep plan'), find "
        "scenes in the recipe's catalogs, read co-registered patches, audio and fMoW images, and "
        "write OUT/shards/NNNNN.tar with a "
        "NNNNN_stats.json commit marker each, then OUT/manifest.json. Rerunning the same "
        "command after an interruption builds only the missing shards; the same recipe gives "
        "the same shards whatever the worker count.",
        epilog=_EPILOG_SET,
    )
    _add_recipe_args(p, "recipe YAML with an imagery, audio or fmow_images section", with_out=True)
    p.add_argument(
        "--plan",
        metavar="DIR",
        dest="plan_dir",
        help="use the plan in DIR (made by 'geoprep plan RECIPE -o DIR') instead of planning; "
        "it must come from the same seed, sampler, clusters and splits",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--io-threads", type=int, default=8, help="concurrent locations per worker (default 8)"
    )
    p.add_argument(
        "--samples-per-shard",
        type=int,
        metavar="N",
        help="same as --set output.samples_per_shard=N",
    )
    p.add_argument(
        "--dask",
        metavar="tcp://SCHEDULER:8786",
        help="run the shard tasks on an existing Dask cluster instead of local workers",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="check, count, measure and show a built dataset",
        description="Stream through the shards (nothing is extracted), check every sample against "
        "the schema, count samples per shard/split/cluster/label/sensor and the build's failures, "
        "write per-band statistics to stats.json beside the shards, and with --report draw a map, "
        "histograms, thumbnails, time strips and spectrograms into one self-contained "
        "report.html. Exit code 0 when the dataset is clean, 3 when problems were found in "
        "the data"
        " (2 when a source does not exist).",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SHARDS",
        help="a dataset directory, shard paths, brace patterns ('OUT/shards/{00000..00009}.tar') "
        "or fsspec URLs",
    )
    p.add_argument("--report", metavar="DIR", help="write figures and report.html into DIR")
    p.add_argument("--json", action="store_true", help="print every number as JSON on stdout")
    p.add_argument("--workers", type=int, default=1, help="processes reading shards (default 1)")
    p.add_argument("--no-stats", action="store_true", help="do not write stats.json")
    p.add_argument(
        "--max-member-mb",
        type=float,
        default=256,
        metavar="MB",
        help="report members larger than this as too-large without reading them (default 256; "
        "shards are untrusted, and a sample is held in memory while it is checked)",
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="validate a recipe without running it",
        description="Validate RECIPE (with overrides) and print it resolved, with defaults filled.",
        epilog=_EPILOG_SET,
    )
    _add_recipe_args(p, "recipe YAML file to validate, e.g. recipes/csf.yaml", with_out=False)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "demo-world",
        parents=[common],
        help="generate the offline demo world into OUT",
        description="Write a small, deterministic world that stands in for every real source: "
        "ground truth, Sentinel-2/NAIP/Landsat/Sentinel-1-like COGs with "
        "Planetary-Computer-shaped STAC items (static catalogs and stac-geoparquet), an "
        "OpenStreetMap extract, Radio Aporee recordings in archive.org's shape and an fMoW tree. "
        "'geoprep serve-demo OUT' then serves it.",
    )
    p.add_argument("out", metavar="OUT", help="world directory")
    _add_world_args(p, "world size (default small: about 6 km AOIs, under 3 minutes)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT holds a world")
    p.set_defaults(func=_cmd_demo_world)

    p = sub.add_parser(
        "serve-demo",
        parents=[common],
        help="serve a demo world on loopback until Ctrl-C",
        description="Serve the demo world in WORLD (made by 'geoprep demo-world WORLD') on "
        "loopback: STAC API, blob store with SAS tokens, Overpass and archive.org stand-ins. "
        "Prints the URLs and the environment to use, and runs until Ctrl-C.",
    )
    p.add_argument("world", metavar="WORLD", help="demo world directory")
    p.set_defaults(func=_cmd_serve_demo)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the main job on the demo world (what 'make demo' does)",
        description="Build the demo world under OUT/world if it is missing, serve it on "
        "loopback, and run every stage on the demo recipes (recipes/demo/), then a short CSF "
        "training run (geossl) evaluated beside a random-init encoder, ending with a summary of "
        "what was built and where.",
    )
    p.add_argument("out", nargs="?", default="demo-out", metavar="OUT", help="default demo-out")
    _add_world_args(p, "world size when the world must be built (default small)")
    p.add_argument(
        "--workers", type=int, default=2, help="build worker processes per dataset (default 2)"
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps of the closing CSF training run (default 100); GASSL, CACo and "
        "SoundingEarth then train for a few steps each, at most N (0 skips training)",
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_recipe_args(
    parser: argparse.ArgumentParser, recipe_help: str | None, with_out: bool
) -> None:
    """RECIPE, then -o/--out OUT (commands that write), then the repeatable --set overrides."""
    parser.add_argument("recipe", metavar="RECIPE", help=recipe_help)
    if with_out:
        parser.add_argument(
            "-o", "--out", required=True, metavar="OUT", help="output directory or URL"
        )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe key (repeatable)",
    )


def _add_world_args(parser: argparse.ArgumentParser, scale_help: str) -> None:
    """The demo world's --seed and --scale."""
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument(
        "--scale", choices=("tiny", "small", "full"), default="small", help=scale_help
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    from geoprep.planning.plan import plan
    from geoprep.recipe.load import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    started = time.perf_counter()
    with progress_bar(f"plan {recipe.name} ({recipe.sampler.kind})") as bar:
        summary = plan(recipe, args.out, bar)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({**summary.to_json(), "seconds": round(seconds, 3)}, indent=2))
        return 0
    console.print(f"[bold]{recipe.name}[/]: {summary.n_locations} locations in {seconds:.1f} s")
    table = Table()
    table.add_column("what")
    table.add_column("count", justify="right")
    for split, count in summary.by_split.items():
        table.add_row(f"split {split}", str(count))
    table.add_row("geo-clusters", str(summary.n_clusters))
    for label, count in list(summary.by_label.items())[:20]:
        table.add_row(f"label {label}", str(count))
    for reason, count in summary.dropped.items():
        table.add_row(f"dropped: {reason}", str(count))
    console.print(table)
    console.print(f"wrote {args.out}/locations.parquet and clusters.parquet")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from geoprep.building.console import run_build
    from geoprep.recipe.load import load_recipe

    overrides = list(args.overrides)
    if args.samples_per_shard is not None:
        overrides.append(f"output.samples_per_shard={args.samples_per_shard}")
    if args.workers < 1 or args.io_threads < 1:
        raise UserError("--workers and --io-threads must be at least 1")
    recipe = load_recipe(args.recipe, overrides)
    summary = run_build(
        recipe, args.out, args.workers, args.io_threads, args.dask, plan_dir=args.plan_dir
    )
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    if summary.complete:
        return 0
    causes = ", ".join(f"{n} {cause}" for cause, n in summary.causes.items())
    print(
        f"geoprep: incomplete: {len(summary.incomplete)} shards not written, "
        f"{summary.transient} locations still failing after retries ({causes}; e.g. "
        f"{summary.example[:300]}); run the same command again to build them",
        file=sys.stderr,
    )
    return INCOMPLETE_EXIT_CODE


def _cmd_inspect(args: argparse.Namespace) -> int:
    from geoprep.inspect.dataset import inspect_dataset

    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if not 0 < args.max_member_mb < float("inf"):
        raise UserError("--max-member-mb must be a positive number")
    with progress_bar("inspect") as bar:
        result = inspect_dataset(
            args.sources,
            args.report,
            bar,
            workers=args.workers,
            write_stats=not args.no_stats,
            max_member_bytes=int(args.max_member_mb * (1 << 20)),
        )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        for table in result.summary_tables():
            console.print(table)
        if result.stats_path:
            console.print(f"statistics: {result.stats_path}")
        if result.report_path:
            console.print(f"report: {result.report_path}")
    verdict = "clean" if result.clean else f"{len(result.problems)} problems"
    console.print(f"inspected at {result.samples_per_s:.0f} samples/s: {verdict}")
    return 0 if result.clean else DATA_PROBLEMS_EXIT_CODE


def _cmd_check(args: argparse.Namespace) -> int:
    import yaml

    from geoprep.recipe.load import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
    console.print(f"{args.recipe}: valid (digest {recipe.digest()})")
    return 0


def _cmd_demo_world(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    if (out / "world.json").exists() and not args.force:
        console.print(f"{out} already holds a demo world (use --force to rebuild)")
        return 0
    from geoprep.demo.world import build_world

    started = time.perf_counter()
    with progress_bar("demo world") as bar:
        build_world(out, seed=args.seed, scale=args.scale, progress=bar)
    console.print(f"demo world written to {out} in {time.perf_counter() - started:.0f} s")
    return 0


def _cmd_serve_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geoprep.demo.servers import serve_forever

    serve_forever(Path(args.world))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geoprep.demo.run import DEMO_TRAIN_STEPS, run_demo

    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    steps = DEMO_TRAIN_STEPS if args.train_steps is None else args.train_steps
    if steps < 0:
        raise UserError("--train-steps must be 0 (no training) or more")
    run_demo(
        Path(args.out), seed=args.seed, scale=args.scale, workers=args.workers, train_steps=steps
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # third-party libraries are chatty at INFO
        for name in ("urllib3", "fiona", "rasterio", "numba", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"geoprep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SourceError as exc:
        print(f"geoprep: source error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DiskFullError as exc:
        print(f"geoprep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"geoprep: error: no space left{where}; free space and rerun", file=sys.stderr)
        return DiskFullError.exit_code
    except KeyboardInterrupt:
        print("geoprep: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())

"""The `geoprep` command line: plan, demo-world (and later build, inspect)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from rich.table import Table

from geoprep import __version__
from geoprep.errors import SourceError, UserError
from geoprep.progress import console, progress_bar

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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="print debug logs")
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
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file, e.g. recipes/urban.yaml")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory or URL")
    _add_set(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "check",
        parents=[common],
        help="validate a recipe without running it",
        description="Validate RECIPE (with overrides) and print it resolved, with defaults filled.",
        epilog=_EPILOG_SET,
    )
    p.add_argument("recipe", metavar="RECIPE")
    _add_set(p)
    p.set_defaults(func=_cmd_check)
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe key (repeatable)",
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    from geoprep.plan import plan
    from geoprep.recipe import load_recipe

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


def _cmd_check(args: argparse.Namespace) -> int:
    import yaml

    from geoprep.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
    console.print(f"{args.recipe}: valid (digest {recipe.digest()})")
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
    except KeyboardInterrupt:
        print("geoprep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

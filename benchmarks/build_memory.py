"""Peak memory of a build as its plan grows tenfold: the same demo recipe built from N and 10 N
locations, the resident memory of the geoprep process (and its workers) sampled every 50 ms.
Run `python -m benchmarks.build_memory -h`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from benchmarks.build_common import (
    build,
    console,
    ensure_world,
    machine,
    machine_line,
    plan,
    served,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.build_memory",
        description="Peak RSS of one demo build from N and from 10 N locations, side by side.",
    )
    parser.add_argument("--world", required=True, type=Path, help="demo world (built if missing)")
    parser.add_argument("--recipe", default="caco", help="demo recipe (default caco)")
    parser.add_argument("--n", type=int, default=24, help="the smaller plan (default 24)")
    parser.add_argument("--factor", type=int, default=10, help="how much larger the other is")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every run here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_world(args.world)
    sizes = [args.n, args.n * args.factor]
    before = machine()
    runs = {}
    with served(args.world) as world:
        for n in sizes:
            plan_dir = plan(
                args.recipe, args.world, world, args.world.parent / "bench-plans" /
                f"{args.recipe}-{n}", n,
            )  # fmt: skip
            run = build(
                args.recipe, args.world, world, plan_dir, n=n, workers=args.workers,
            )  # fmt: skip
            runs[n] = run
            console.print(f"{n} locations: {run.samples} samples, peak {run.peak_rss_mb:.0f} MB")
    after = machine()
    table = Table(title=f"{args.recipe}, --workers {args.workers}: peak resident memory")
    for column in ("locations", "samples", "peak RSS MB", f"× {sizes[0]} locations"):
        table.add_column(column, justify="right")
    for n, run in runs.items():
        table.add_row(
            str(n),
            str(run.samples),
            f"{run.peak_rss_mb:.0f}",
            f"{run.peak_rss_mb / runs[sizes[0]].peak_rss_mb:.2f}",
        )
    console.print(table)
    print(f"before: {machine_line(before)}")
    print(f"after:  {machine_line(after)}")
    if args.json:
        report = {
            "runs": {n: run.to_json() for n, run in runs.items()},
            "machine_before": before,
            "machine_after": after,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

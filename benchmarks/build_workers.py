"""Build scaling with worker processes: the same demo build with --workers 1 and 2, side by side.

Each round builds the plan once per worker count, in alternating order, from the served demo
world (servers in another process). Run `python -m benchmarks.build_workers -h`.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
        prog="python -m benchmarks.build_workers",
        description="Wall time and CPU per sample of one demo build with 1 and with N worker "
        "processes (the geoprep command, servers in another process), side by side.",
    )
    parser.add_argument("--world", required=True, type=Path, help="demo world (built if missing)")
    parser.add_argument("--recipe", default="caco", help="demo recipe (default caco)")
    parser.add_argument("--n", type=int, default=240, help="locations planned (default 240)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes to compare")
    parser.add_argument("--io-threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_world(args.world)
    counts = [1, args.workers]
    before = machine()
    runs: dict[int, list] = {count: [] for count in counts}
    with served(args.world) as world:
        plan_dir = plan(args.recipe, args.world, world, args.world.parent / "bench-plans" /
                        f"{args.recipe}-{args.n}", args.n)  # fmt: skip
        for round_ in range(args.repeat):
            order = counts if round_ % 2 == 0 else counts[::-1]
            for count in order:
                run = build(
                    args.recipe, args.world, world, plan_dir, n=args.n, workers=count,
                    io_threads=args.io_threads,
                )  # fmt: skip
                runs[count].append(run)
                console.print(
                    f"round {round_ + 1}: --workers {count}: {run.samples} samples in "
                    f"{run.wall_s:.1f} s, {run.per_sample(run.cpu_s):.3f} CPU-s/sample"
                )
    after = machine()
    table = Table(title=f"{args.recipe}, {args.n} locations, --io-threads {args.io_threads}")
    for column in ("workers", "wall s", "samples/s", "CPU-s/sample", "server CPU-s/sample"):
        table.add_column(column, justify="right")
    wall = {count: statistics.median(r.wall_s for r in runs[count]) for count in counts}
    for count in counts:
        samples = runs[count][0].samples
        table.add_row(
            str(count),
            f"{wall[count]:.1f}",
            f"{samples / wall[count]:.2f}",
            f"{statistics.median(r.per_sample(r.cpu_s) for r in runs[count]):.3f}",
            f"{statistics.median(r.per_sample(r.server_cpu_s) for r in runs[count]):.3f}",
        )
    console.print(table)
    ratio = wall[1] / wall[args.workers]
    print(f"--workers {args.workers} / --workers 1: {ratio:.2f}x faster (median wall)")
    print(f"before: {machine_line(before)}")
    print(f"after:  {machine_line(after)}")
    print("The wall ratio depends on the load: other processes on the same cores take from it.")
    if args.json:
        report = {
            "runs": {count: [r.to_json() for r in runs[count]] for count in counts},
            "ratio": ratio,
            "machine_before": before,
            "machine_after": after,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

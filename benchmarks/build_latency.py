"""Build throughput against slow servers: every STAC API and blob request 50 ms late (a relay on
loopback), at --io-threads 1, 8 and 32, side by side. Run `python -m benchmarks.build_latency -h`.
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
        prog="python -m benchmarks.build_latency",
        description="Samples per second of one demo build when each request to the STAC API "
        "and the blob store takes --delay seconds more, at several --io-threads.",
    )
    parser.add_argument("--world", required=True, type=Path, help="demo world (built if missing)")
    parser.add_argument("--recipe", default="caco", help="demo recipe (default caco)")
    parser.add_argument("--n", type=int, default=48, help="locations planned (default 48)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added per request")
    parser.add_argument("--threads", default="1,8,32", help="--io-threads values (default 1,8,32)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_world(args.world)
    threads = [int(value) for value in args.threads.split(",")]
    before = machine()
    runs = {}
    with served(args.world, delay=args.delay) as world:
        plan_dir = args.world.parent / "bench-plans" / f"{args.recipe}-{args.n}"
        plan(args.recipe, args.world, world, plan_dir, args.n)
        for count in threads:
            run = build(args.recipe, args.world, world, plan_dir, n=args.n, io_threads=count)
            runs[count] = run
            console.print(
                f"--io-threads {count}: {run.samples} samples in {run.wall_s:.1f} s "
                f"({sum(run.requests.values())} requests)"
            )
    after = machine()
    title = f"{args.recipe}, {args.n} locations, {args.delay * 1000:.0f} ms per request"
    table = Table(title=title)
    columns = ("--io-threads", "wall s", "samples/s", f"× --io-threads {threads[0]}")
    for column in (*columns, "requests/sample", "CPU-s/sample"):
        table.add_column(column, justify="right")
    base = runs[threads[0]]
    for count, run in runs.items():
        table.add_row(
            str(count),
            f"{run.wall_s:.1f}",
            f"{run.samples / run.wall_s:.2f}",
            f"{base.wall_s / run.wall_s:.1f}",
            f"{run.per_sample(sum(run.requests.values())):.1f}",
            f"{run.per_sample(run.cpu_s):.3f}",
        )
    console.print(table)
    print(f"before: {machine_line(before)}")
    print(f"after:  {machine_line(after)}")
    if args.json:
        report = {
            "delay_s": args.delay,
            "runs": {count: run.to_json() for count, run in runs.items()},
            "machine_before": before,
            "machine_after": after,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

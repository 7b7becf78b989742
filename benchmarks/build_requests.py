"""Requests per sample: STAC API searches and blob requests (GDAL's range reads and HEADs) that
each demo recipe's build sends, counted by relays in front of the servers, per sample and per
group of nearby locations (the catalog's 0.5° tiles). Run `python -m benchmarks.build_requests -h`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
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

#: the demo recipes with imagery
RECIPES = ("csf", "caco", "csf-osm-eval", "aporee", "fmow-sentinel")
TILE_DEGREES = 0.5  # StacApiCatalog's default grouping of nearby locations


def groups(plan_dir: Path) -> int:
    """Groups of nearby locations: the catalog's tiles holding at least one planned location."""
    frame = pd.read_parquet(plan_dir / "locations.parquet", columns=["lat", "lon"])
    return len(
        {
            (math.floor(lat / TILE_DEGREES), math.floor(lon / TILE_DEGREES))
            for lat, lon in zip(frame["lat"], frame["lon"], strict=True)
        }
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.build_requests",
        description="STAC searches and blob requests per sample of each demo recipe's build.",
    )
    parser.add_argument("--world", required=True, type=Path, help="demo world (built if missing)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="demo recipes to build")
    parser.add_argument("--io-threads", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write every count here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_world(args.world)
    before = machine()
    rows = {}
    with served(args.world) as world:
        for name in args.recipes.split(","):
            plan_dir = plan(name, args.world, world, args.world.parent / "bench-plans" / name)
            run = build(name, args.world, world, plan_dir, io_threads=args.io_threads)
            shards = math.ceil(len(pd.read_parquet(plan_dir / "locations.parquet")) / 16)
            rows[name] = {**run.to_json(), "groups": groups(plan_dir), "shards": shards}
            console.print(f"{name}: {run.samples} samples, {run.requests}")
    after = machine()
    table = Table(title=f"requests per sample (--io-threads {args.io_threads})")
    columns = ("recipe", "samples", "groups", "STAC searches", "searches/group", "searches/sample")
    for column in (*columns, "other STAC/sample", "blob requests/sample"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        requests, samples = row["requests"], max(row["samples"], 1)
        searches = requests.get("stac search", 0)
        blobs = sum(count for kind, count in requests.items() if kind.startswith("blob"))
        table.add_row(
            name,
            str(row["samples"]),
            str(row["groups"]),
            str(searches),
            f"{searches / row['groups']:.1f}",
            f"{searches / samples:.2f}",
            f"{requests.get('stac other', 0) / samples:.2f}",
            f"{blobs / samples:.1f}",
        )
    console.print(table)
    print(f"before: {machine_line(before)}")
    print(f"after:  {machine_line(after)}")
    if args.json:
        report = {"recipes": rows, "machine_before": before, "machine_after": after}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

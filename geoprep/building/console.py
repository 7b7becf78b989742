"""A build on the console: a live bar (shards, samples/s, failures) and a summary table."""

from __future__ import annotations

import time

from rich.table import Table

from geoprep.building.build import BuildSummary, IncompleteShard, build
from geoprep.core.progress import console, progress_bar
from geoprep.recipe.model import Recipe


def run_build(
    recipe: Recipe,
    out: str,
    workers: int = 1,
    io_threads: int = 8,
    dask: str | None = None,
    plan_dir: str | None = None,
) -> BuildSummary:
    """Build with a live bar (shards, samples/s, failures) and a final summary table."""
    with progress_bar(f"build {recipe.name}") as bar:
        counts = {"samples": 0, "failed": 0}
        started = time.perf_counter()

        def on_start(total: int, skipped: int) -> None:
            bar.set_total(total)
            bar.advance(skipped)

        def on_shard(stats) -> None:
            if isinstance(stats, IncompleteShard):
                counts["failed"] += stats.transient
            else:
                counts["samples"] += stats.successes
                counts["failed"] += stats.count - stats.successes
            rate = counts["samples"] / max(time.perf_counter() - started, 1e-9)
            bar.describe(
                f"build {recipe.name}: {counts['samples']} samples, {rate:.1f}/s, "
                f"{counts['failed']} failed"
            )
            bar.advance()

        summary = build(
            recipe,
            out,
            workers,
            io_threads,
            dask,
            on_shard=on_shard,
            on_start=on_start,
            plan_dir=plan_dir,
        )
    table = Table(title=f"{recipe.name}: build summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "shards", f"{summary.shards} ({summary.built} built, {summary.skipped} done before)"
    )
    table.add_row("samples written", str(summary.samples))
    for kind, count in summary.failure_kinds.items():
        table.add_row(f"failed ({kind})", str(count))
    for reason, count in summary.failures.items():
        table.add_row(f"  location: {reason}", str(count))
    for cause, count in summary.causes.items():
        table.add_row(f"  transient: {cause}", str(count))
    if summary.incomplete:
        table.add_row("shards not written", str(len(summary.incomplete)))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("samples/s", f"{summary.samples_per_s:.1f}")
    console.print(table)
    console.print(f"shards in {out}/shards, manifest {out}/manifest.json")
    return summary

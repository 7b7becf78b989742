"""The result of an inspection: per-shard summaries, counts, problems and its tables."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from geoprep.inspect.bandstats import StatsCollector
from geoprep.inspect.findings import Preview, Problem


@dataclass
class ShardSummary:
    url: str
    samples: int
    bytes: int
    sha256: str
    seconds: float
    expected: int | None  # samples the build recorded for this tar

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class InspectResult:
    """What `inspect_dataset` found. `clean` is True when no problem was found."""

    sources: list[str]
    root: str | None
    shards: list[ShardSummary]
    samples: int
    counts: dict[str, Counter]
    build: dict[str, Any]
    problems: list[Problem]
    stats: dict[str, Any]
    seconds: float
    stats_path: str | None = None
    report_path: str | None = None
    report_seconds: float = 0.0
    points: list[tuple[float, float, str, str]] = field(default_factory=list, repr=False)
    previews: list[Preview] = field(default_factory=list, repr=False)
    collector: StatsCollector = field(default_factory=StatsCollector, repr=False)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def problem_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.code for p in self.problems).items()))

    def to_json(self) -> dict[str, Any]:
        """Every number of the inspection, JSON-ready (what `--json` prints)."""
        return {
            "clean": self.clean,
            "sources": self.sources,
            "root": self.root,
            "samples": self.samples,
            "shards": [s.to_json() for s in self.shards],
            "counts": {name: _sorted_counts(c) for name, c in self.counts.items()},
            "build": self.build,
            "problem_counts": self.problem_counts(),
            "problems": [p.to_json() for p in self.problems],
            "timing": {
                "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples_per_s, 1),
                "report_seconds": round(self.report_seconds, 3),
            },
            "stats_path": self.stats_path,
            "report_path": self.report_path,
            "stats": self.stats,
        }

    def summary_tables(self, max_rows: int = 20) -> list[Any]:
        """rich Tables: summary, counts, build failures, problems, band statistics."""
        from rich.markup import escape
        from rich.table import Table

        summary = Table(title="dataset", show_header=False)
        summary.add_column("what", style="bold")
        summary.add_column("value")
        status = "[green]clean[/]" if self.clean else f"[red]{len(self.problems)} problem(s)[/]"
        for name, value in (
            ("status", status),
            ("samples", str(self.samples)),
            ("shards", str(len(self.shards))),
            ("build failures", str(sum(self.build["failures"].values()))),
            ("speed", f"{self.samples_per_s:.1f} samples/s ({self.seconds:.1f} s)"),
            ("stats.json", escape(self.stats_path or "not written")),
            ("report", escape(self.report_path or "-")),
        ):
            summary.add_row(name, value)
        tables = [summary]
        for name in ("split", "cluster", "label", "source", "sensor", "slot"):
            counts = _sorted_counts(self.counts.get(name, Counter()))
            if counts:
                tables.append(_count_table(f"samples per {name}", counts, max_rows))
        if self.build["failures"]:
            tables.append(_count_table("build failures", self.build["failures"], max_rows))
        if self.problems:
            table = Table(title=f"problems ({len(self.problems)})")
            for column in ("shard", "key", "code", "reason"):
                table.add_column(column, overflow="fold")
            for problem in self.problems[:max_rows]:
                cells = (_tail(problem.shard), problem.key or "", problem.code, problem.reason)
                table.add_row(*map(escape, cells))
            tables.append(table)
        for key, group in self.stats.get("sensors", {}).items():
            table = Table(
                title=f"band statistics: {key} ({group['dtype']}, {group['images']} images)"
            )
            for column in ("band", "mean", "std", "min", "p2", "p98", "max", "nodata %"):
                table.add_column(column, justify="right" if column != "band" else "left")
            for i, band in enumerate(group["bands"]):
                row = [group[c][i] for c in ("mean", "std", "min", "p2", "p98", "max")]
                fraction = group["nodata_fraction"][i]
                table.add_row(
                    escape(band),
                    *(_fmt(v) for v in row),
                    "-" if fraction is None else f"{100 * fraction:.2f}",
                )
            tables.append(table)
        return tables


def _count_table(title: str, counts: dict[str, int], max_rows: int) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("value")
    table.add_column("n", justify="right")
    items = list(counts.items())
    for value, n in items[:max_rows]:
        table.add_row(escape(value), str(n))
    if len(items) > max_rows:
        table.add_row(f"… {len(items) - max_rows} more", str(sum(n for _, n in items[max_rows:])))
    return table


def _tail(url: str, parts: int = 2) -> str:
    return "/".join(url.rstrip("/").split("/")[-parts:])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _sorted_counts(counts: Counter) -> dict[str, int]:
    return {str(k): counts[k] for k in sorted(counts, key=lambda k: _sort_key(str(k)))}

"""The inspection report: the figures as PNGs and one self-contained report.html embedding them."""

from __future__ import annotations

import base64
import html
import re
from typing import TYPE_CHECKING, Any

from geoprep.report.figures import (
    band_histogram_figure,
    counts_figure,
    map_figure,
    natural_key,
    spectrogram_figure,
)
from geoprep.report.mosaics import thumbnails_figure, time_strip_figures

if TYPE_CHECKING:
    from geoprep.inspect.result import InspectResult


# ---------------------------------------------------------------- report.html

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
nav a { margin-right: 0.8rem; }
.status { display: inline-block; padding: 0.2rem 0.6rem; border-radius: 4px; font-weight: bold; }
.clean { background: #d8f0d8; color: #185c18; } .dirty { background: #f8dada; color: #8a1c1c; }
table { border-collapse: collapse; margin: 0.5rem 1.5rem 1rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.tables { display: flex; flex-wrap: wrap; align-items: flex-start; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.2rem; }
footer { color: #777; font-size: 0.8rem; margin-top: 2rem; }
"""


def _table(rows: list[list[Any]], header: list[str], caption: str = "", table_id: str = "") -> str:
    attributes = f' id="{html.escape(table_id)}"' if table_id else ""
    parts = [f"<table{attributes}>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<tr>" + "".join(_th(h) for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(_td(v) for v in row) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def _th(value: str) -> str:
    return f'<th class="text">{html.escape(value)}</th>'


def _td(value: Any) -> str:
    if isinstance(value, float):
        return f"<td>{value:.6g}</td>"
    if isinstance(value, int) or value is None:
        return f"<td>{'-' if value is None else value}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def _image(png: bytes, image_id: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{image_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _counts_tables(result: InspectResult) -> str:
    tables = []
    for name, what in (
        ("split", "samples"),
        ("cluster", "samples"),
        ("label", "samples"),
        ("source", "samples"),
        ("sensor", "samples"),
        ("slot", "samples"),
    ):
        counts = result.counts.get(name) or {}
        items = sorted(counts.items(), key=lambda kv: natural_key(str(kv[0])))
        if len(items) > 60:
            items = sorted(items, key=lambda kv: -kv[1])[:60]
        if items:
            tables.append(_table([list(i) for i in items], [name, what], f"{what} per {name}"))
    return '<div class="tables">' + "".join(tables) + "</div>"


def _shards_table(result: InspectResult) -> str:
    rows = [
        [s.url.rstrip("/").rsplit("/", 1)[-1], s.samples, s.expected, s.bytes, s.seconds]
        for s in result.shards
    ]
    return _table(rows, ["shard", "samples", "built", "bytes", "seconds"], "shards", "shards-table")


def _band_tables(stats: dict[str, Any]) -> str:
    tables = []
    header = ["band", "mean", "std", "min", "p2", "p98", "max", "nodata %", "valid px", "± pct"]
    for key, entry in stats.get("sensors", {}).items():
        rows = []
        for i, band in enumerate(entry["bands"]):
            fraction = entry["nodata_fraction"][i]
            rows.append(
                [band]
                + [entry[c][i] for c in ("mean", "std", "min", "p2", "p98", "max")]
                + [None if fraction is None else round(100 * fraction, 3)]
                + [entry["valid_pixels"][i], entry["percentile_error"][i]]
            )
        caption = f"{key}: {entry['dtype']}, {entry['images']} images, nodata {entry['nodata']}"
        tables.append(_table(rows, header, caption, f"band-stats-{_slug(key)}"))
    return '<div class="tables">' + "".join(tables) + "</div>"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")[:40] or "x"


def write_report(result: InspectResult, report_dir: str, max_problems: int = 1000) -> str:
    """Write the figures (PNG) and report.html into `report_dir` (nothing else, nowhere else);
    returns the URL of report.html."""
    from geoprep.core.storage import join, write_bytes_atomic

    figures: list[tuple[str, str, str, bytes]] = []  # (section, id, file name, png)
    if result.points:
        figures.append(("map", "map-image", "map.png", map_figure(result.points)))
    counts = counts_figure(result)
    if counts:
        figures.append(("counts", "counts-image", "counts.png", counts))
    histogram = band_histogram_figure(result)
    if histogram:
        figures.append(("band-histograms", "bands-image", "bands.png", histogram))
    thumbs = thumbnails_figure(result.previews, result.stats)
    if thumbs:
        figures.append(("thumbnails", "thumbnails-image", "thumbnails.png", thumbs))
    for i, (sensor, png) in enumerate(time_strip_figures(result.previews, result.stats).items()):
        name = f"timestrip-{i}-{_slug(sensor)}"
        figures.append(("time-strips", name, f"{name}.png", png))
    spectrograms = spectrogram_figure(result.previews)
    if spectrograms:
        figures.append(("spectrograms", "spectrograms-image", "spectrograms.png", spectrograms))
    for _, _, name, png in figures:
        write_bytes_atomic(join(report_dir, name), png)
    page = render_html(result, figures, max_problems)
    url = join(report_dir, "report.html")
    write_bytes_atomic(url, page.encode("utf-8"))
    return url


_SECTIONS = {
    "summary": "Summary",
    "problems": "Problems",
    "map": "Locations",
    "counts": "Counts",
    "build": "Build failures",
    "band-stats": "Band statistics",
    "band-histograms": "Band histograms",
    "thumbnails": "Thumbnails",
    "time-strips": "Time strips",
    "spectrograms": "Spectrograms",
}


def render_html(
    result: InspectResult, figures: list[tuple[str, str, str, bytes]], max_problems: int
) -> str:
    """One self-contained page: no scripts, fonts or links outside it."""
    from geoprep import __version__

    name = result.build.get("name") or (result.root or "dataset").rstrip("/").rsplit("/", 1)[-1]
    body: dict[str, str] = {}
    summary = [
        ["status", "clean" if result.clean else f"{len(result.problems)} problem(s)"],
        ["samples", result.samples],
        ["shards", len(result.shards)],
        ["build successes", result.build["successes"]],
        ["build failures", sum(result.build["failures"].values())],
        ["recipe digest", result.build.get("recipe_digest") or "-"],
        ["inspected in", f"{result.seconds:.2f} s ({result.samples_per_s:.1f} samples/s)"],
        ["stats.json", result.stats_path or "not written"],
    ]
    body["summary"] = _table(summary, ["what", "value"], table_id="summary-table")
    body["summary"] += _shards_table(result)
    if result.problems:
        rows = [
            [p.shard.rstrip("/").rsplit("/", 1)[-1], p.key or "", p.code, p.reason]
            for p in result.problems[:max_problems]
        ]
        more = len(result.problems) - len(rows)
        body["problems"] = _table(
            [[code, n] for code, n in result.problem_counts().items()], ["code", "problems"]
        ) + _table(rows, ["shard", "key", "code", "reason"], table_id="problems-table")
        if more > 0:
            body["problems"] += f"<p>… and {more} more (see --json).</p>"
    else:
        body["problems"] = '<p id="no-problems">No problems found.</p>'
    body["counts"] = _counts_tables(result)
    failures = result.build["failures"]
    body["build"] = (
        _table([[k, v] for k, v in failures.items()], ["reason", "locations"], table_id="build")
        if failures
        else "<p>The build recorded no failures.</p>"
    )
    body["band-stats"] = _band_tables(result.stats)
    for section, image_id, _, png in figures:
        body[section] = _image(png, image_id, f"{section} figure") + body.get(section, "")
    status_class = "clean" if result.clean else "dirty"
    status = "clean" if result.clean else f"{len(result.problems)} problem(s)"
    shown = [(s, t) for s, t in _SECTIONS.items() if s in body]
    nav = " ".join(f'<a href="#{s}">{t}</a>' for s, t in shown)
    sections = "".join(f'<section id="{s}"><h2>{t}</h2>{body[s]}</section>' for s, t in shown)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>geoprep inspect: {html.escape(name)}</title><style>{_STYLE}</style></head>"
        f"<body><header><h1>{html.escape(name)}</h1>"
        f'<p><span id="status" class="status {status_class}">{status}</span> '
        f"{result.samples} samples in {len(result.shards)} shard(s)</p><nav>{nav}</nav></header>"
        f"{sections}<footer>geoprep {html.escape(__version__)} inspect</footer></body></html>\n"
    )

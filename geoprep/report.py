"""The inspection report: figures (map, counts, thumbnails, time strips, spectrograms, band
histograms) and one self-contained report.html with the PNGs embedded and the tables inline."""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from geoprep.inspect import InspectResult, Preview, PreviewImage

log = logging.getLogger(__name__)

PREVIEW_PIXELS = 128  # longest side of a stored thumbnail
_RGB_NAMES = (("b04", "b03", "b02"), ("red", "green", "blue"), ("r", "g", "b"))
_SAR_NAMES = ("vv", "hh", "vh", "hv")
_SEA, _LAND = np.array([219, 233, 244]), np.array([217, 211, 195])


def display_bands(sensor: str, bands: list[str]) -> tuple[list[int], int]:
    """Indexes of the bands to show and a rank (lower is better): named RGB, SAR grey, first 3."""
    lower = [b.lower() for b in bands]
    for names in _RGB_NAMES:
        if all(n in lower for n in names):
            return [lower.index(n) for n in names], 0
    for name in _SAR_NAMES:
        if name in lower:
            return [lower.index(name)], 1
    if len(bands) >= 3:
        return [0, 1, 2], 2
    return [0], 3


def best_per_slot(images: list[PreviewImage]) -> list[PreviewImage]:
    """One image per (sensor, slot): in the native layout, the resolution group whose bands
    show best (the 10 m RGB of Sentinel-2 rather than its 60 m bands)."""
    best: dict[tuple[str, str], PreviewImage] = {}
    for image in images:
        key = (image.sensor, image.slot)
        rank = display_bands(image.sensor, image.bands)[1]
        if key not in best or rank < display_bands(best[key].sensor, best[key].bands)[1]:
            best[key] = image
    return list(best.values())


def preview_image(
    sensor: str, bands: list[str], array: np.ndarray, nodata: float | int | None
) -> tuple[np.ndarray, list[str]]:
    """A small display copy of an image: the chosen bands, strided to <= PREVIEW_PIXELS, float32
    with NaN for nodata and non-finite pixels. Returns (array, names of the bands shown)."""
    chosen, _ = display_bands(sensor, bands)
    step = max(1, math.ceil(max(array.shape[1:]) / PREVIEW_PIXELS))
    small = array[chosen, ::step, ::step].astype(np.float32)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        small[array[chosen, ::step, ::step] == nodata] = np.nan
    small[~np.isfinite(small)] = np.nan
    return small, [bands[i] for i in chosen]


# ---------------------------------------------------------------- land background


@functools.lru_cache(maxsize=2)
def land_grids(windows: tuple[tuple[float, float, float, float], ...], world_step: int = 20) -> Any:
    """Land masks (True = land) from the `global_land_mask` package's 1 km grid, read row block
    by row block (unpacked it is 0.9 GB, and importing the package loads all of it): the world at
    `world_step` km and each (west, south, east, north) window at up to ~300 px. Returns
    (world, [(window grid, (west, east, south, north))]) or None when the data is unavailable."""
    from geoprep.landmask import ocean_mask_rows

    try:
        with ocean_mask_rows() as (rows, cols, handle):
            return _read_land(rows, cols, handle, windows, world_step)
    except (ImportError, OSError, KeyError, ValueError) as error:
        log.warning("no land background: %s", error)
        return None


def _read_land(rows: int, cols: int, handle, windows, world_step: int) -> Any:
    degrees = 180.0 / rows  # rows run from 90° N southwards, columns from 180° W eastwards
    plans = []
    for west, south, east, north in windows:
        top, left = max(0, int((90 - north) / degrees)), max(0, int((west + 180) / degrees))
        bottom = min(rows, max(math.ceil((90 - south) / degrees), top + 1))
        right = min(cols, max(math.ceil((east + 180) / degrees), left + 1))
        step = max(1, math.ceil(max(bottom - top, right - left) / 300))
        plans.append((top, bottom, left, right, step))
    world: list[np.ndarray] = []
    crops: list[list[np.ndarray]] = [[] for _ in plans]
    block = world_step * 10
    for first in range(0, rows, block):
        count = min(block, rows - first)
        ocean = np.frombuffer(handle.read(cols * count), dtype=bool).reshape(count, cols)
        index = np.arange(first, first + count)
        world.append(~ocean[index % world_step == 0, ::world_step])
        for crop, (top, bottom, left, right, step) in zip(crops, plans, strict=True):
            wanted = (index >= top) & (index < bottom) & ((index - top) % step == 0)
            if wanted.any():
                crop.append(~ocean[wanted, left:right:step])
    extents = [
        (left * degrees - 180, right * degrees - 180, 90 - bottom * degrees, 90 - top * degrees)
        for top, bottom, left, right, _ in plans
    ]
    return np.vstack(world), [(np.vstack(c), e) for c, e in zip(crops, extents, strict=True)]


def dense_regions(
    lats: np.ndarray, lons: np.ndarray, max_regions: int = 3
) -> list[tuple[float, float, float, float]]:
    """(west, south, east, north) of up to `max_regions` groups of points too small to see on a
    world map (under 20° across), most points first: the map's zoomed panels. Points are grouped
    by connected 1° cells, cells up to 2° apart joining."""
    if lats.size == 0:
        return []
    from scipy import ndimage

    rows = np.clip((90 - lats).astype(int), 0, 179)
    cols = np.clip((lons + 180).astype(int), 0, 359)
    occupied = np.zeros((180, 360), bool)
    occupied[rows, cols] = True
    joined = ndimage.binary_dilation(occupied, iterations=2)
    labels, _ = ndimage.label(joined, structure=np.ones((3, 3)))
    point_labels = labels[rows, cols]
    regions = []
    for label in sorted(set(point_labels.tolist()), key=lambda v: -(point_labels == v).sum()):
        inside = point_labels == label
        if inside.sum() < max(2, math.ceil(0.01 * lats.size)):  # a lone point needs no zoom
            continue
        lat, lon = lats[inside], lons[inside]
        west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
        size = max(east - west, north - south)
        if size >= 20:
            continue
        pad = max(0.1 * size, 0.02)
        box = (west - pad, max(south - pad, -90), east + pad, min(north + pad, 90))
        regions.append(tuple(float(v) for v in box))
        if len(regions) == max_regions:
            break
    return regions


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _panel_axes(figure: Any, rows: int, columns: int, used: int) -> list[Any]:
    """The first `used` axes of a rows × columns grid on `figure`; the rest of it is hidden."""
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[used:]:
        ax.set_visible(False)
    return list(axes[:used])


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _cluster_colours(clusters: list[str]) -> tuple[dict[str, Any], list[str]]:
    from matplotlib import colormaps

    order = sorted(set(clusters), key=_natural)
    if len(order) <= 10:
        colours = [colormaps["tab10"](i) for i in range(10)]
    else:  # tab20's dark tones first, then the light ones: neighbours stay distinct
        colours = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    return {c: colours[i % len(colours)] for i, c in enumerate(order)}, order


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def map_figure(points: list[tuple[float, float, str, str]]) -> bytes:
    """World map of the locations coloured by geo-cluster, with zoomed panels of dense regions."""
    from matplotlib.ticker import MaxNLocator

    lats = np.array([p[0] for p in points], dtype=float)
    lons = np.array([p[1] for p in points], dtype=float)
    clusters = [p[2] for p in points]
    regions = dense_regions(lats, lons)
    land = land_grids(tuple(regions))
    colours, order = _cluster_colours(clusters)
    colour_list = [colours[c] for c in clusters]
    figure = _figure(12, 6.2 if not regions else 10)
    ratios = [2, 1.3] if regions else [1]
    grid = figure.add_gridspec(len(ratios), max(1, len(regions)), height_ratios=ratios)
    world_ax = figure.add_subplot(grid[0, :])
    if land is not None:
        world_ax.imshow(_land_rgb(land[0]), extent=(-180, 180, -90, 90))
    world_ax.scatter(lons, lats, c=colour_list, s=12, edgecolors="black", linewidths=0.3)
    world_ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude °", ylabel="latitude °")
    world_ax.set_title(f"{len(points)} locations, {len(order)} geo-clusters")
    for i, (west, south, east, north) in enumerate(regions):
        world_ax.add_patch(_rectangle(west, south, east, north))
        world_ax.annotate(str(i + 1), (east, north), fontsize=9, color="crimson")
        ax = figure.add_subplot(grid[1, i])
        if land is not None:
            crop, (c_west, c_east, c_south, c_north) = land[1][i]
            ax.imshow(_land_rgb(crop), extent=(c_west, c_east, c_south, c_north))
        inside = (lons >= west) & (lons <= east) & (lats >= south) & (lats <= north)
        ax.scatter(
            lons[inside],
            lats[inside],
            c=[colour_list[j] for j in np.flatnonzero(inside)],
            s=18,
            edgecolors="black",
            linewidths=0.3,
        )
        # degrees of longitude shrink with latitude: keep the panel's shape true
        ax.set(xlim=(west, east), ylim=(south, north))
        ax.set_aspect(1 / max(math.cos(math.radians((south + north) / 2)), 0.1))
        ax.set_title(f"{i + 1}: {int(inside.sum())} locations", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(useOffset=False)
        ax.tick_params(labelsize=7)
    if len(order) <= 20:
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", linestyle="", color=colours[c], label=_plain(f"cluster {c}"))
            for c in order
        ]
        world_ax.legend(handles=handles, loc="lower left", fontsize=7, ncols=2, framealpha=0.8)
    return _png(figure)


def _plain(text: str) -> str:
    """Text from the data, shown as is: matplotlib would read $…$ as mathtext (and fail)."""
    return str(text).replace("$", r"\$")


def _land_rgb(land: np.ndarray) -> np.ndarray:
    """RGB pixels (no colormap pass: the world grid is large): sea blue-grey, land sand."""
    return np.where(land[..., None], _LAND, _SEA).astype(np.uint8)


def _rectangle(west: float, south: float, east: float, north: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (west, south), east - west, north - south, fill=False, edgecolor="crimson", linewidth=1
    )


def counts_figure(result: InspectResult) -> bytes | None:
    """Bar charts of the counts: splits, clusters, labels, sources, shards, images, failures."""
    panels = [
        ("samples per split", result.counts["split"]),
        ("samples per geo-cluster", result.counts["cluster"]),
        ("samples per label", result.counts["label"]),
        ("samples per source", result.counts["source"]),
        ("samples per shard", _shard_names(result.counts["shard"])),
        ("samples per sensor.slot", result.counts["slot"]),
        ("build failures by reason", result.build["failures"]),
    ]
    panels = [(title, counts) for title, counts in panels if counts]
    if not panels:
        return None
    columns = 3
    rows = max(1, math.ceil(len(panels) / columns))
    tallest = max(min(len(c), 40) for _, c in panels)
    figure = _figure(13, rows * max(1.6, 0.5 + 0.16 * tallest))
    axes = _panel_axes(figure, rows, columns, len(panels))
    for ax, (title, counts) in zip(axes, panels, strict=True):
        items = sorted(counts.items(), key=lambda kv: _natural(str(kv[0])))
        if len(items) > 40:  # keep the largest: labels must stay readable
            items = sorted(items, key=lambda kv: -kv[1])[:40]
            title += " (40 largest)"
        names, values = [str(k) for k, _ in items], [v for _, v in items]
        colour = "#c0504d" if "failures" in title else "#4f81bd"
        bars = ax.barh(range(len(values)), values, color=colour)
        ax.bar_label(bars, fontsize=7, padding=2)
        ax.set_yticks(range(len(values)), [_plain(n) for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.15)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    return _png(figure)


def _shard_names(counts: dict[str, int]) -> dict[str, int]:
    return {k.rstrip("/").rsplit("/", 1)[-1]: v for k, v in counts.items()}


def _stretched(image: PreviewImage, stats: dict[str, Any]) -> np.ndarray:
    """(h, w, 3) in [0, 1]: each shown band stretched between its dataset 2nd and 98th
    percentiles (stats.json), or the image's own when the dataset has none; nodata is black."""
    from geoprep.bandstats import group_key

    entry = stats.get("sensors", {}).get(group_key(image.sensor, image.group), {})
    layers = []
    for band, layer in zip(image.bands, image.array, strict=True):
        low = high = None
        if band in entry.get("bands", []):
            i = entry["bands"].index(band)
            low, high = entry["p2"][i], entry["p98"][i]
        if low is None or high is None or not high > low:
            finite = layer[np.isfinite(layer)]
            low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        scaled = (layer - low) / (high - low) if high > low else np.zeros_like(layer)
        layers.append(np.nan_to_num(np.clip(scaled, 0, 1), nan=0.0))
    if len(layers) == 1:
        layers *= 3
    return np.dstack(layers)


def _slot_order(slot: str) -> tuple:
    return tuple(_natural(part) for part in re.findall(r"\d+|\D+", slot))


Cell = tuple[np.ndarray | None, str]  # (RGB in [0, 1] or None for a gap, caption)


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize so the longer side is `size` (thumbnails stay crisp)."""
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    rows = np.minimum((np.arange(max(1, round(height * scale))) / scale).astype(int), height - 1)
    cols = np.minimum((np.arange(max(1, round(width * scale))) / scale).astype(int), width - 1)
    return rgb[np.ix_(rows, cols)]


def mosaic_figure(
    grid: list[list[Cell]], row_labels: list[str], title: str, cell: int = 96
) -> bytes:
    """A grid of images drawn as one picture with captions: one axes instead of one per image
    (a layout engine over dozens of axes is slow), pixel-exact at 100 dpi."""
    gap, left, top = 8, 150, 26 if title else 4
    # a caption band only above the rows that have captions
    bands = [28 if any(text for _, text in row) else 0 for row in grid]
    columns = max(len(row) for row in grid)
    width = left + columns * (cell + gap)
    height = top + sum(bands) + len(grid) * (cell + gap)
    canvas = np.ones((height, width, 3))
    figure = _figure_fixed(width / 100, height / 100)
    ax = figure.add_axes((0, 0, 1, 1))
    y = top
    for row, label, band in zip(grid, row_labels, bands, strict=True):
        y += band
        ax.text(left - 8, y + cell / 2, _plain(label), ha="right", va="center", fontsize=7)
        for c, (rgb, text) in enumerate(row):
            if rgb is None:
                continue
            x = left + c * (cell + gap)
            fitted = _fit(rgb, cell)
            canvas[y : y + fitted.shape[0], x : x + fitted.shape[1]] = fitted
            ax.text(x + cell / 2, y - 3, _plain(text), ha="center", va="bottom", fontsize=6.5)
        y += cell + gap
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.text(width / 2, 4, _plain(title), ha="center", va="top", fontsize=9)
    return _png(figure)


def _band_caption(bands: list[str]) -> str:
    """`B04+B03+B02`; names sharing a long prefix are shortened: `image_0,1,2`."""
    import os.path

    prefix = os.path.commonprefix(bands)
    if len(bands) > 1 and len(prefix) >= 3:
        return prefix + ",".join(b[len(prefix) :] for b in bands)
    return "+".join(bands)


def _figure_fixed(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def thumbnails_figure(previews: list[Preview], stats: dict[str, Any]) -> bytes | None:
    """Rows: samples; columns: each sensor's time slots (only the first slot of each sensor when
    that would pass 8 columns: the time strips show the rest)."""
    columns: list[tuple[str, str]] = []
    for preview in previews:
        for image in preview.images:
            if (image.sensor, image.slot) not in columns:
                columns.append((image.sensor, image.slot))
    if not columns:
        return None
    sensors = list(dict.fromkeys(sensor for sensor, _ in columns))
    columns.sort(key=lambda c: (sensors.index(c[0]), _slot_order(c[1])))
    if len(columns) > 8:
        columns = [next(c for c in columns if c[0] == sensor) for sensor in sensors]
    rows = [p for p in previews if p.images]
    grid = []
    for r, preview in enumerate(rows):
        found = {(i.sensor, i.slot): i for i in preview.images}
        cells: list[Cell] = []
        for column in columns:
            image = found.get(column)
            # captions on the first row only: every row has the same sensor/slot columns
            caption = f"{column[0]} {column[1]}\n{_band_caption(image.bands)}" if image else ""
            cells.append((_stretched(image, stats), "" if r else caption) if image else (None, ""))
        grid.append(cells)
    labels = [f"{p.key}\n{p.split} · cluster {p.cluster}" for p in rows]
    return mosaic_figure(grid, labels, "", cell=112)


def time_strip_figures(previews: list[Preview], stats: dict[str, Any]) -> dict[str, bytes]:
    """{sensor: PNG} for every sensor with more than one slot: its images in time order."""
    sensors = list(dict.fromkeys(i.sensor for p in previews for i in p.images))
    figures = {}
    for sensor in sensors:
        series = []
        for preview in previews:
            images = [i for i in preview.images if i.sensor == sensor]
            images.sort(key=lambda i: (i.datetime or "", _slot_order(i.slot)))
            if len(images) > 1:
                series.append((preview, _evenly(images, 12)))
        if not series:
            continue
        series = series[:4]
        grid = [
            [(_stretched(i, stats), f"{i.slot} {(i.datetime or '')[:10]}") for i in images]
            for _, images in series
        ]
        bands = _band_caption(series[0][1][0].bands)
        title = f"{sensor}: time series ({bands})"
        figures[sensor] = mosaic_figure(grid, [p.key for p, _ in series], title)
    return figures


def _evenly(items: list, most: int) -> list:
    if len(items) <= most:
        return items
    return [items[round(i * (len(items) - 1) / (most - 1))] for i in range(most)]


def spectrogram_figure(previews: list[Preview]) -> bytes | None:
    """The log-mel spectrograms of the previewed audio samples (up to 6)."""
    with_audio = [p for p in previews if p.mel is not None][:6]
    if not with_audio:
        return None
    columns = min(2, len(with_audio))
    rows = math.ceil(len(with_audio) / columns)
    figure = _figure(6 * columns, 2.4 * rows)
    axes = _panel_axes(figure, rows, columns, len(with_audio))
    for ax, preview in zip(axes, with_audio, strict=True):
        mel = preview.mel
        finite = mel[np.isfinite(mel)]
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high)
        label = "" if preview.label is None else f" · {preview.label}"
        ax.set_title(_plain(f"{preview.key}{label}"), fontsize=8)
        ax.set_xlabel("frame", fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=7)
    return _png(figure)


def band_histogram_figure(result: InspectResult) -> bytes | None:
    """Per sensor/group, each band's value histogram (log counts) between its 1st and 99th
    percentiles: what normalising with stats.json will see."""
    keys = sorted(result.collector.groups)
    if not keys:
        return None
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = _figure(4.2 * columns, 2.8 * rows)
    for ax, key in zip(_panel_axes(figure, rows, columns, len(keys)), keys, strict=True):
        entry = result.stats["sensors"].get(key, {})
        for band, (edges, counts) in result.collector.band_histograms(key).items():
            i = entry["bands"].index(band)
            low, high = entry["percentiles"]["1"][i], entry["percentiles"]["99"][i]
            keep = (edges >= low) & (edges <= high)
            if keep.sum() < 2:
                continue
            edges, counts = _coarsen(edges[keep], counts[keep], 200)
            ax.step(edges, np.maximum(counts, 0.8), where="post", label=_plain(band), linewidth=0.9)
        ax.set_yscale("log")
        ax.set_title(_plain(f"{key} ({entry.get('dtype')})"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncols=2)
    return _png(figure)


def _coarsen(edges: np.ndarray, counts: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, math.ceil(edges.size / most))
    if step == 1:
        return edges, counts
    cut = edges.size - edges.size % step
    summed = counts[:cut].reshape(-1, step).sum(axis=1)
    return edges[:cut:step], summed


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
        items = sorted(counts.items(), key=lambda kv: _natural(str(kv[0])))
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
    from geoprep.storage import join, write_bytes_atomic

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

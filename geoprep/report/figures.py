"""The report's charts (map on its land background, counts, band histograms, spectrograms)."""

from __future__ import annotations

import functools
import io
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from geoprep.inspect.findings import Preview
    from geoprep.inspect.result import InspectResult

# matplotlib is imported inside the functions that draw: it loads only when a report is made

# one logger name for the whole report, whichever of its modules warns
log = logging.getLogger("geoprep.report")

_SEA, _LAND = np.array([219, 233, 244]), np.array([217, 211, 195])

# ---------------------------------------------------------------- land background


@functools.lru_cache(maxsize=2)
def land_grids(windows: tuple[tuple[float, float, float, float], ...], world_step: int = 20) -> Any:
    """Land masks (True = land) from the `global_land_mask` package's 1 km grid, read row block
    by row block (unpacked it is 0.9 GB, and importing the package loads all of it): the world at
    `world_step` km and each (west, south, east, north) window at up to ~300 px. Returns
    (world, [(window grid, (west, east, south, north))]) or None when the data is unavailable."""
    from geoprep.core.landmask import ocean_mask_rows

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


def png_bytes(figure: Any) -> bytes:
    """The figure as PNG, without the Software tag (the bytes stay the same across versions)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _cluster_colours(clusters: list[str]) -> tuple[dict[str, Any], list[str]]:
    from matplotlib import colormaps

    order = sorted(set(clusters), key=natural_key)
    if len(order) <= 10:
        colours = [colormaps["tab10"](i) for i in range(10)]
    else:  # tab20's dark tones first, then the light ones: neighbours stay distinct
        colours = [colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    return {c: colours[i % len(colours)] for i, c in enumerate(order)}, order


def natural_key(value: str) -> tuple:
    """Sort key: numbers by value before any text, so `2` comes before `10`."""
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
            Line2D(
                [], [], marker="o", linestyle="", color=colours[c], label=plain_text(f"cluster {c}")
            )
            for c in order
        ]
        world_ax.legend(handles=handles, loc="lower left", fontsize=7, ncols=2, framealpha=0.8)
    return png_bytes(figure)


def plain_text(text: str) -> str:
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
        items = sorted(counts.items(), key=lambda kv: natural_key(str(kv[0])))
        if len(items) > 40:  # keep the largest: labels must stay readable
            items = sorted(items, key=lambda kv: -kv[1])[:40]
            title += " (40 largest)"
        names, values = [str(k) for k, _ in items], [v for _, v in items]
        colour = "#c0504d" if "failures" in title else "#4f81bd"
        bars = ax.barh(range(len(values)), values, color=colour)
        ax.bar_label(bars, fontsize=7, padding=2)
        ax.set_yticks(range(len(values)), [plain_text(n) for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.15)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    return png_bytes(figure)


def _shard_names(counts: dict[str, int]) -> dict[str, int]:
    return {k.rstrip("/").rsplit("/", 1)[-1]: v for k, v in counts.items()}


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
        ax.set_title(plain_text(f"{preview.key}{label}"), fontsize=8)
        ax.set_xlabel("frame", fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=7)
    return png_bytes(figure)


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
            ax.step(
                edges, np.maximum(counts, 0.8), where="post", label=plain_text(band), linewidth=0.9
            )
        ax.set_yscale("log")
        ax.set_title(plain_text(f"{key} ({entry.get('dtype')})"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncols=2)
    return png_bytes(figure)


def _coarsen(edges: np.ndarray, counts: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, math.ceil(edges.size / most))
    if step == 1:
        return edges, counts
    cut = edges.size - edges.size % step
    summed = counts[:cut].reshape(-1, step).sum(axis=1)
    return edges[:cut:step], summed

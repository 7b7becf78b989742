"""The report's image mosaics: thumbnails and time strips, stretched by the dataset percentiles."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from geoprep.report.figures import natural_key, plain_text, png_bytes

if TYPE_CHECKING:
    from geoprep.inspect.findings import Preview, PreviewImage


def _stretched(image: PreviewImage, stats: dict[str, Any]) -> np.ndarray:
    """(h, w, 3) in [0, 1]: each shown band stretched between its dataset 2nd and 98th
    percentiles (stats.json), or the image's own when the dataset has none; nodata is black."""
    from geoprep.inspect.bandstats import group_key

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
    return tuple(natural_key(part) for part in re.findall(r"\d+|\D+", slot))


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
        ax.text(left - 8, y + cell / 2, plain_text(label), ha="right", va="center", fontsize=7)
        for c, (rgb, text) in enumerate(row):
            if rgb is None:
                continue
            x = left + c * (cell + gap)
            fitted = _fit(rgb, cell)
            canvas[y : y + fitted.shape[0], x : x + fitted.shape[1]] = fitted
            ax.text(x + cell / 2, y - 3, plain_text(text), ha="center", va="bottom", fontsize=6.5)
        y += cell + gap
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.text(width / 2, 4, plain_text(title), ha="center", va="top", fontsize=9)
    return png_bytes(figure)


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

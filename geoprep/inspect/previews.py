"""What a preview keeps of an image: the bands worth showing and a small display copy of them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from geoprep.inspect.findings import PreviewImage

PREVIEW_PIXELS = 128  # longest side of a stored thumbnail
_RGB_NAMES = (("b04", "b03", "b02"), ("red", "green", "blue"), ("r", "g", "b"))
_SAR_NAMES = ("vv", "hh", "vh", "hv")


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

"""Normalisation statistics of the training split: from stats.json's per-split view, or computed.

geoprep's `stats.json` (written by `geoprep inspect`) describes all samples of a dataset. The
encoder must be normalised with statistics of the training split only, so they are taken from a
per-split view of stats.json when it has one (`splits.<split>.sensors.<sensor>`) and otherwise
computed here by streaming the split's samples (exact float64 moments, merged per image with
Chan et al.'s update). Training never runs on raw digital numbers.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import fsspec
import numpy as np

from geoprep import UserError
from geossl.data import Normalization, SampleStream, band_layers, valid_mask

log = logging.getLogger(__name__)


def stats_json(source: Any) -> dict[str, Any] | None:
    """The dataset's stats.json, when `source` is a dataset directory that has one."""
    if not isinstance(source, str) or source.endswith((".tar", ".json")) or "{" in source:
        return None
    try:
        with fsspec.open(source.rstrip("/") + "/stats.json") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def from_split_view(doc: dict[str, Any], split: str, bands: list[str]) -> Normalization | None:
    """Mean/std of `bands` from stats.json's per-split view, if it has one covering them."""
    sensors = ((doc.get("splits") or {}).get(split) or {}).get("sensors")
    if not sensors:
        return None
    mean, std = [], []
    for name in bands:
        sensor, _, band = name.partition(".")
        stats = sensors.get(sensor)
        if not stats or band not in stats.get("bands", []):
            return None
        i = stats["bands"].index(band)
        if stats["mean"][i] is None or stats["std"][i] is None:
            return None
        mean.append(float(stats["mean"][i]))
        std.append(float(stats["std"][i]))
    return Normalization(bands, mean, _usable(bands, std), f"stats.json splits.{split}")


class Moments:
    """Streaming count/mean/M2 per band, merged image by image (Chan et al.)."""

    def __init__(self, n: int) -> None:
        self.count = np.zeros(n, np.float64)
        self.mean = np.zeros(n, np.float64)
        self.m2 = np.zeros(n, np.float64)

    def add(self, i: int, values: np.ndarray) -> None:
        if values.size == 0:
            return
        values = values.astype(np.float64)
        n, mean = values.size, float(values.mean())
        m2 = float(np.square(values - mean).sum())
        total = self.count[i] + n
        delta = mean - self.mean[i]
        self.mean[i] += delta * n / total
        self.m2[i] += m2 + delta * delta * self.count[i] * n / total
        self.count[i] = total

    @property
    def std(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / self.count)


def compute(
    urls: list[str], bands: list[str], split: str, slot: str, limit: int, max_bytes: int
) -> Normalization:
    """Mean/std per band over (at most `limit`) samples of `split`, valid pixels only."""
    moments = Moments(len(bands))
    stream = SampleStream(
        urls,
        lambda sample: band_layers(sample, slot),
        splits={split},
        rank=0,
        world=1,
        max_member_bytes=max_bytes,
        limit=limit,
    )
    samples = 0
    for layers in stream:
        samples += 1
        for i, name in enumerate(bands):
            if name in layers:
                array, nodata = layers[name]
                moments.add(i, array[valid_mask(array, nodata)])
    if not samples:
        raise UserError(f"{urls[0]}: no sample of split {split!r} to compute statistics from")
    empty = [b for b, n in zip(bands, moments.count, strict=True) if n == 0]
    if empty:
        raise UserError(f"bands {empty} have no valid pixel in the {split!r} split")
    log.info("normalisation computed from %d %s samples", samples, split)
    std = _usable(bands, [float(s) for s in moments.std])
    return Normalization(
        bands, [float(m) for m in moments.mean], std, f"computed from {samples} {split} samples"
    )


def _usable(bands: list[str], std: list[float]) -> list[float]:
    """A constant band would divide by zero: give it unit scale and say so."""
    fixed = []
    for name, value in zip(bands, std, strict=True):
        if not math.isfinite(value) or value <= 0:
            log.warning("band %s is constant in the training split: std set to 1", name)
            value = 1.0
        fixed.append(value)
    return fixed


def train_normalization(
    source: Any,
    urls: list[str],
    bands: list[str],
    split: str,
    slot: str,
    limit: int,
    max_bytes: int,
) -> Normalization:
    doc = stats_json(source)
    found = from_split_view(doc, split, bands) if doc else None
    if found is not None:
        return found
    if doc is not None:
        log.info("stats.json has no per-split view for %r: computing statistics", split)
    return compute(urls, bands, split, slot, limit, max_bytes)

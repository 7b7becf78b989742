"""Streaming per-band statistics: exact mean/std/min/max and histogram percentiles, mergeable.

Every accumulator can be fed image by image and merged with another one (Chan et al.'s parallel
update for the moments, bin-aligned addition for the histograms), so shards can be scanned in
any order or in parallel: the histograms come out identical, the moments equal up to float64
rounding.

- mean, std (population, ddof=0), min, max: exact up to float64 rounding. Each image band's
  count, mean and sum of squared deviations are computed in float64 and merged pairwise.
- percentiles: from a histogram of `HIST_BINS` bins whose width is a power of two and whose edges
  are multiples of it (so histograms merge exactly). Integer bands use unit bins while their
  values span at most `HIST_BINS` integers, which 8- and 16-bit bands always do: their
  percentiles are exact (numpy's default "linear" interpolation between order statistics).
  Otherwise, when data falls outside the bins, the width doubles and bin pairs merge; a
  percentile is then known to lie within one bin, so its error is at most the final bin width:
  below 4·(max − min) / HIST_BINS (≈ 6·10⁻⁵ of the band's range), or 2⁻⁴⁰·max|value| for
  bands of nearly constant value. It is reported per band as `percentile_error` (0 when exact).
- nodata: pixels equal to the image's nodata value, NaN and ±inf are left out of every statistic
  and counted in `nodata_fraction`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HIST_BINS = 1 << 16
PERCENTILES = (1, 2, 50, 98, 99)
# Bin widths never go below 2^-40 of the data's magnitude, so global bin indexes fit in int64.
_MIN_RELATIVE_WIDTH = 2.0**-40


def _pow2_at_least(value: float) -> float:
    return 2.0 ** math.ceil(math.log2(value)) if value > 0 else 1.0


@dataclass
class Histogram:
    """Counts in `HIST_BINS` bins of width `width` (a power of two); bin i covers
    [(origin + i)·width, (origin + i + 1)·width)."""

    integer: bool
    width: float = 0.0  # 0: no data yet
    origin: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, values: np.ndarray, low: float, high: float) -> None:
        """Count finite `values` whose min/max over everything seen so far are low/high."""
        if values.size == 0:
            return
        self._cover(low, high)
        if self.integer and self.width == 1.0:
            index = values.astype(np.int64, copy=False) - self.origin
        else:
            # float64: dividing float16/float32 values by a small width could overflow
            index = np.floor(values.astype(np.float64) / self.width).astype(np.int64) - self.origin
        np.clip(index, 0, HIST_BINS - 1, out=index)  # float rounding at the very edges
        first = int(index.min())
        # a bincount over the occupied span only: small images need not touch every bin
        found = np.bincount(index - first)
        self.counts[first : first + found.size] += found

    def _cover(self, low: float, high: float) -> None:
        """Widen/shift the bins so [low, high] fits (low/high include all data seen so far)."""
        if not self.width:
            # the width only ever grows: start fine (even for a constant first image)
            if self.integer:  # unit bins while the values fit: 8/16-bit data always does
                self.width = _pow2_at_least(max((high - low + 1) / HIST_BINS, 1.0))
            else:  # room to grow on both sides before the first doubling
                span = (high - low) / (HIST_BINS // 2)
                floor = _MIN_RELATIVE_WIDTH * max(abs(low), abs(high)) or 2.0**-60
                self.width = _pow2_at_least(max(span, floor))
            self.counts = np.zeros(HIST_BINS, np.int64)
            self.origin = math.floor(low / self.width)
        while math.floor(high / self.width) - math.floor(low / self.width) + 1 > HIST_BINS:
            self._double()
        first, last = math.floor(low / self.width), math.floor(high / self.width)
        if first < self.origin or last >= self.origin + HIST_BINS:
            self._shift(first - (HIST_BINS - (last - first + 1)) // 2)

    def _double(self) -> None:
        index = (self.origin + np.arange(HIST_BINS, dtype=np.int64)) // 2
        origin = self.origin // 2
        merged = np.bincount(index - origin, weights=self.counts, minlength=HIST_BINS)
        self.counts = np.rint(merged[:HIST_BINS]).astype(np.int64)
        self.width *= 2.0
        self.origin = origin

    def _shift(self, origin: int) -> None:
        moved = np.zeros(HIST_BINS, np.int64)
        offset = self.origin - origin
        source = slice(max(0, -offset), min(HIST_BINS, HIST_BINS - offset))
        target = slice(source.start + offset, source.stop + offset)
        moved[target] = self.counts[source]
        self.counts, self.origin = moved, origin

    def merge(self, other: Histogram, low: float, high: float) -> None:
        """Add `other`'s counts; low/high: min/max over both histograms' data."""
        if not other.width:
            return
        other = Histogram(other.integer, other.width, other.origin, other.counts.copy())
        if not self.width:
            self.width, self.origin = other.width, other.origin
            self.counts = np.zeros(HIST_BINS, np.int64)
        while self.width < other.width:
            self._double()
        while other.width < self.width:
            other._double()
        self._cover(low, high)
        offset = other.origin - self.origin
        nonzero = np.flatnonzero(other.counts)
        self.counts[nonzero + offset] += other.counts[nonzero]

    def order_statistic(self, k: int, low: float, high: float) -> float:
        """The k-th smallest value (0-based): exact for unit integer bins, else within one bin."""
        cumulative = np.cumsum(self.counts)
        i = int(np.searchsorted(cumulative, k, side="right"))
        start = self.origin + i
        if self.integer and self.width == 1.0:
            return float(start)
        before = int(cumulative[i - 1]) if i else 0
        inside = (k - before + 0.5) / int(self.counts[i])
        return float(min(max((start + inside) * self.width, low), high))

    @property
    def error(self) -> float:
        return 0.0 if self.integer and self.width <= 1.0 else self.width


@dataclass
class BandAccumulator:
    """Streaming statistics of one band: moments (Chan et al.), extremes, histogram, nodata."""

    integer: bool
    count: int = 0
    invalid: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    histogram: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.histogram = Histogram(self.integer)

    def add(self, values: np.ndarray, invalid: int = 0) -> None:
        """Add one image band's valid (finite, not nodata) pixels; `invalid` counts the rest."""
        self.invalid += int(invalid)
        if values.size == 0:
            return
        as_float = values.astype(np.float64, copy=False)
        n = int(values.size)
        mean = float(as_float.mean())
        m2 = float(np.square(as_float - mean).sum())
        low, high = float(values.min()), float(values.max())
        self._merge_moments(n, mean, m2, low, high)
        self.histogram.add(values, self.minimum, self.maximum)

    def _merge_moments(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)

    def merge(self, other: BandAccumulator) -> None:
        self.invalid += other.invalid
        if not other.count:
            return
        if not self.count:
            self.integer = other.integer
        self._merge_moments(other.count, other.mean, other.m2, other.minimum, other.maximum)
        self.histogram.merge(other.histogram, self.minimum, self.maximum)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    def percentile(self, q: float) -> float:
        """numpy's default ("linear") percentile, computed from the histogram."""
        if not self.count:
            return math.nan
        rank = (self.count - 1) * q / 100.0
        below = math.floor(rank)
        lower = self.histogram.order_statistic(below, self.minimum, self.maximum)
        if rank == below:
            return lower
        upper = self.histogram.order_statistic(below + 1, self.minimum, self.maximum)
        return lower + (rank - below) * (upper - lower)

    @property
    def nodata_fraction(self) -> float:
        total = self.count + self.invalid
        return self.invalid / total if total else math.nan


def valid_pixels(band: np.ndarray, nodata: float | int | None) -> tuple[np.ndarray, int]:
    """The band's valid pixels (1-D) and how many were nodata or not finite."""
    flat = band.reshape(-1)
    if np.issubdtype(flat.dtype, np.floating):
        keep = np.isfinite(flat)
        if nodata is not None and math.isfinite(float(nodata)):
            keep &= flat != nodata
    elif nodata is not None and _representable(flat.dtype, nodata):
        keep = flat != nodata
    else:
        return flat, 0
    values = flat[keep]
    return values, flat.size - values.size


def _representable(dtype: np.dtype, nodata: float | int) -> bool:
    value = float(nodata)
    if not math.isfinite(value) or value != math.floor(value):
        return False
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    return info is None or info.min <= value <= info.max


@dataclass
class GroupStats:
    """Statistics of every band of one sensor (and resolution group), bands by name."""

    sensor: str
    group: str | None
    dtype: str
    bands: dict[str, BandAccumulator] = field(default_factory=dict)
    images: int = 0
    nodata: Any = None
    scale: dict[str, float | None] = field(default_factory=dict)
    offset: dict[str, float | None] = field(default_factory=dict)

    def add_image(
        self,
        array: np.ndarray,
        names: list[str],
        nodata: float | int | None,
        scale: list | None = None,
        offset: list | None = None,
    ) -> None:
        self.images += 1
        if self.images == 1:
            self.nodata = nodata
        if array.dtype.name != self.dtype:
            self.dtype = "mixed"
        integer = array.dtype.kind in "iub"
        for i, name in enumerate(names):
            accumulator = self.bands.get(name)
            if accumulator is None:
                accumulator = self.bands[name] = BandAccumulator(integer)
                self.scale[name] = _at(scale, i)
                self.offset[name] = _at(offset, i)
            values, invalid = valid_pixels(array[i], nodata)
            accumulator.add(values, invalid)

    def merge(self, other: GroupStats) -> None:
        if other.dtype != self.dtype:
            self.dtype = "mixed"
        if not self.images:
            self.nodata = other.nodata
        self.images += other.images
        for name, accumulator in other.bands.items():
            if name in self.bands:
                self.bands[name].merge(accumulator)
            else:
                self.bands[name] = accumulator
                self.scale[name], self.offset[name] = other.scale[name], other.offset[name]

    def to_json(self) -> dict[str, Any]:
        bands = list(self.bands)
        accumulators = [self.bands[name] for name in bands]

        def column(value: Any) -> list:
            return [_number(value(a)) for a in accumulators]

        percentiles = {str(q): column(lambda a, q=q: a.percentile(q)) for q in PERCENTILES}
        return {
            "sensor": self.sensor,
            "group": self.group,
            "dtype": self.dtype,
            "nodata": _nodata_json(self.nodata),
            "images": self.images,
            "bands": bands,
            "mean": column(lambda a: a.mean if a.count else math.nan),
            "std": column(lambda a: a.std),
            "min": column(lambda a: a.minimum if a.count else math.nan),
            "max": column(lambda a: a.maximum if a.count else math.nan),
            "p2": percentiles["2"],
            "p98": percentiles["98"],
            "percentiles": percentiles,
            "percentile_error": column(lambda a: a.histogram.error if a.count else math.nan),
            "nodata_fraction": column(lambda a: a.nodata_fraction),
            "valid_pixels": [a.count for a in accumulators],
            "scale": [self.scale[name] for name in bands],
            "offset": [self.offset[name] for name in bands],
        }


def _at(values: list | None, i: int) -> float | None:
    if isinstance(values, list) and i < len(values) and isinstance(values[i], int | float):
        return float(values[i])
    return None


def _number(value: Any) -> float | int | None:
    """JSON-safe: NaN (no valid pixel) becomes null; integral floats stay floats."""
    if isinstance(value, str):
        return None
    value = float(value) if not isinstance(value, int) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _nodata_json(value: Any) -> Any:
    """As in the sample JSON: NaN is written "nan" (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def group_key(sensor: str, group: str | None) -> str:
    """The key of a sensor's statistics in stats.json: `s2`, or `s2.10m` in the native layout."""
    return sensor if group is None else f"{sensor}.{group}"


@dataclass
class StatsCollector:
    """Per-band statistics of every sensor/resolution group of a dataset, plus log-mel audio."""

    groups: dict[str, GroupStats] = field(default_factory=dict)
    mel: GroupStats | None = None

    def add_image(
        self,
        sensor: str,
        group: str | None,
        array: np.ndarray,
        names: list[str],
        nodata: float | int | None,
        scale: list | None = None,
        offset: list | None = None,
    ) -> None:
        key = group_key(sensor, group)
        stats = self.groups.get(key)
        if stats is None:
            stats = self.groups[key] = GroupStats(sensor, group, array.dtype.name)
        stats.add_image(array, names, nodata, scale, offset)

    def add_mel(self, spectrogram: np.ndarray) -> None:
        """A log-mel spectrogram, pooled over all bins and frames into one band `mel`."""
        if self.mel is None:
            self.mel = GroupStats("mel", None, spectrogram.dtype.name)
        self.mel.add_image(spectrogram.reshape(1, 1, -1), ["mel"], None)

    def merge(self, other: StatsCollector) -> None:
        for key, stats in other.groups.items():
            if key in self.groups:
                self.groups[key].merge(stats)
            else:
                self.groups[key] = stats
        if other.mel is not None:
            if self.mel is None:
                self.mel = other.mel
            else:
                self.mel.merge(other.mel)

    def to_json(self) -> dict[str, Any]:
        return {
            "sensors": {key: self.groups[key].to_json() for key in sorted(self.groups)},
            "audio": {"mel": self.mel.to_json()} if self.mel is not None else {},
        }

    def band_histograms(self, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{band: (bin left edges, counts)} over the occupied bins, for plotting."""
        out = {}
        for name, accumulator in self.groups[key].bands.items():
            histogram = accumulator.histogram
            if not accumulator.count:
                continue
            occupied = np.flatnonzero(histogram.counts)
            window = slice(occupied[0], occupied[-1] + 1)
            edges = (histogram.origin + np.arange(window.start, window.stop)) * histogram.width
            out[name] = (edges, histogram.counts[window])
        return out

"""Time slots per location (the recipe's time modes) and the ranking of candidate scenes."""

from __future__ import annotations

import datetime as dt
import heapq
import json
import logging
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pystac

from geoprep.core.errors import UserError
from geoprep.recipe.sections import MultiYearTime, SeasonalTime, SingleTime, TimestampsTime
from geoprep.shards.schema import slot_entry

log = logging.getLogger(__name__)

TimeMode = Literal["single", "seasonal", "multi-year", "timestamps"]

_DAY = dt.timedelta(days=1)
_NOON = dt.time(12, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Slot:
    """One time window a sample needs a scene in: whole UTC days from `start` to `end`.

    `target` is the preferred date (distances are measured to its noon, UTC); `year_group` and
    `season` index multi-year and seasonal slots (None where they do not apply); `mode` is the
    time mode that made the slot and decides how `rank` orders scenes.
    """

    name: str
    start: dt.date
    end: dt.date
    target: dt.date
    year_group: int | None = None
    season: int | None = None
    mode: TimeMode = "single"

    @property
    def start_time(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(0, tzinfo=dt.UTC))

    @property
    def end_time(self) -> dt.datetime:
        """The last instant of the `end` day."""
        return dt.datetime.combine(self.end + _DAY, dt.time(0, tzinfo=dt.UTC)) - dt.timedelta(
            microseconds=1
        )

    @property
    def target_time(self) -> dt.datetime:
        return dt.datetime.combine(self.target, _NOON)

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        """(start_time, end_time), the form catalogs take."""
        return self.start_time, self.end_time

    def contains(self, when: dt.datetime) -> bool:
        return self.start_time <= _as_utc(when) <= self.end_time

    def to_json(self) -> dict[str, Any]:
        """The slot's entry in a sample's json (`"slots": {name: ...}`)."""
        return slot_entry(
            self.start.isoformat(),
            self.end.isoformat(),
            self.target.isoformat(),
            self.year_group,
            self.season,
        )


def slots_for(
    time_spec: SingleTime | SeasonalTime | MultiYearTime | TimestampsTime,
    rng: np.random.Generator,
    location_row: Mapping[str, Any],
) -> list[Slot]:
    """The time slots of one location, oldest first, named as in the sample schema.

    `rng` is the location's own generator; only the seasonal and multi-year modes draw from it.
    `location_row` (a mapping or pandas row) is read by the timestamps mode with `column`.
    """
    if isinstance(time_spec, SingleTime):
        return [_single_slot(time_spec)]
    if isinstance(time_spec, SeasonalTime):
        return _seasonal_slots(time_spec, rng)
    if isinstance(time_spec, MultiYearTime):
        return _multi_year_slots(time_spec, rng)
    if isinstance(time_spec, TimestampsTime):
        return _timestamp_slots(time_spec, location_row)
    raise TypeError(f"unknown time spec {type(time_spec).__name__}")


def _single_slot(spec: SingleTime) -> Slot:
    midpoint = spec.start + (spec.end - spec.start) // 2
    return Slot("t0", spec.start, spec.end, midpoint, mode="single")


def _around(
    name: str, target: dt.date, half_width: int, mode: TimeMode, **indices: int | None
) -> Slot:
    width = dt.timedelta(days=half_width)
    return Slot(name, target - width, target + width, target, mode=mode, **indices)


def _seasonal_slots(spec: SeasonalTime, rng: np.random.Generator) -> list[Slot]:
    # One shift for all dates keeps their spacing (SeCo: reference - delta - k * spacing).
    shift = int(rng.integers(0, spec.max_shift_days + 1))
    latest = spec.reference - dt.timedelta(days=shift)
    slots = []
    for index in range(spec.n_dates):
        target = latest - dt.timedelta(days=(spec.n_dates - 1 - index) * spec.spacing_days)
        slots.append(_around(f"t{index}", target, spec.window_days, "seasonal", season=index))
    return slots


def year_pairs(spec: MultiYearTime) -> list[tuple[int, int]]:
    """Every (older, newer) year pair within the range that is at least min_gap_years apart."""
    return [
        (older, newer)
        for older in range(spec.first_year, spec.last_year - spec.min_gap_years + 1)
        for newer in range(older + spec.min_gap_years, spec.last_year + 1)
    ]


def _multi_year_slots(spec: MultiYearTime, rng: np.random.Generator) -> list[Slot]:
    pairs = year_pairs(spec)
    years = pairs[int(rng.integers(0, len(pairs)))]  # uniform over the allowed pairs
    # One day-of-year for both groups, so season k of one year matches season k of the other.
    # The dates wrap around within the group's own year (a year group stays in its year) and are
    # then taken oldest first.
    day_of_year = int(rng.integers(spec.day_of_year[0], spec.day_of_year[1] + 1))
    days = sorted((day_of_year + k * spec.spacing_days) % 365 for k in range(spec.dates_per_group))
    slots = []
    for group, year in enumerate(years):
        for season, day in enumerate(days):
            target = dt.date(year, 1, 1) + dt.timedelta(days=day)
            slots.append(
                _around(
                    f"y{group}s{season}",
                    target,
                    spec.window_days,
                    "multi-year",
                    year_group=group,
                    season=season,
                )
            )
    return slots


def _timestamp_slots(spec: TimestampsTime, location_row: Mapping[str, Any]) -> list[Slot]:
    if spec.column is None:
        dates = set(spec.dates)
    else:
        dates = set(_dates_in_column(spec.column, location_row))
    # Equal dates would ask twice for the same scene, so each date makes one slot.
    return [
        _around(f"t{index}", target, spec.window_days, "timestamps")
        for index, target in enumerate(sorted(dates))
    ]


def _dates_in_column(column: str, location_row: Mapping[str, Any]) -> list[dt.date]:
    """Dates from a JSON list of ISO timestamps, or of objects with a `timestamp` field.

    A value that cannot be read gives no date (the location then has no slot and is reported
    by the builder), so one bad record does not stop a build.
    """
    try:
        value = location_row[column]
    except KeyError:
        raise UserError(
            f"imagery.time.column is {column!r}, but the locations have no such column"
        ) from None
    location = location_row.get("id", "?")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            log.warning("location %s: column %s is not JSON; no timestamps", location, column)
            return []
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if not isinstance(value, list):
        log.warning("location %s: column %s is not a JSON list; no timestamps", location, column)
        return []
    dates = []
    for entry in value:
        stamp = entry.get("timestamp") if isinstance(entry, dict) else entry
        if stamp is None:
            continue
        try:
            dates.append(_utc_date(str(stamp)))
        except ValueError:
            log.warning("location %s: unreadable timestamp %r in %s", location, stamp, column)
    return dates


def _utc_date(text: str) -> dt.date:
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()


def _as_utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def slots_span(slots: Iterable[Slot]) -> tuple[dt.datetime, dt.datetime]:
    """The smallest (start, end) covering all slots: one catalog query for a batch of them."""
    slots = list(slots)
    if not slots:
        raise ValueError("no slots to span")
    return min(s.start_time for s in slots), max(s.end_time for s in slots)


def slots_envelope(
    time_spec: SingleTime | SeasonalTime | MultiYearTime | TimestampsTime,
) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """The windows (oldest first, disjoint) that hold every window `slots_for` can give any
    location under `time_spec`, whatever its random draws: searched once, they serve every
    batch of the build. None for timestamps: a location's dates are its own (or the same for
    all, whose windows are then searched as they are)."""
    if isinstance(time_spec, SingleTime):
        spans = [(time_spec.start, time_spec.end)]
    elif isinstance(time_spec, SeasonalTime):
        width = dt.timedelta(days=time_spec.window_days)
        spans = []
        for index in range(time_spec.n_dates):  # each date moves by the shift, no further
            latest = time_spec.reference - dt.timedelta(
                days=(time_spec.n_dates - 1 - index) * time_spec.spacing_days
            )
            earliest = latest - dt.timedelta(days=time_spec.max_shift_days)
            spans.append((earliest - width, latest + width))
    elif isinstance(time_spec, MultiYearTime):
        low, high = time_spec.day_of_year
        days = {
            (first + k * time_spec.spacing_days) % 365
            for first in range(low, high + 1)
            for k in range(time_spec.dates_per_group)
        }
        width = dt.timedelta(days=time_spec.window_days)
        years = {year for pair in year_pairs(time_spec) for year in pair}
        spans = [
            (target - width, target + width)
            for year in years
            for day in days
            if (target := dt.date(year, 1, 1) + dt.timedelta(days=day))
        ]
    else:
        return None
    merged: list[list[dt.date]] = []
    for start, end in sorted(spans):  # whole days: touching ones join
        if merged and start <= merged[-1][1] + _DAY:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [Slot("envelope", start, end, start).window for start, end in merged]


def item_datetime(item: pystac.Item) -> dt.datetime | None:
    """The item's acquisition time in UTC: `datetime`, else `start_datetime`."""
    when = item.datetime or item.common_metadata.start_datetime
    return None if when is None else _as_utc(when)


def cloud_cover(item: pystac.Item, cloud_key: str = "eo:cloud_cover") -> float:
    """The item's cloud cover in percent; 0 where the collection has none (SAR, NAIP)."""
    value = item.properties.get(cloud_key)
    return 0.0 if value is None else float(value)


def rank(
    slot: Slot, items: Iterable[pystac.Item], cloud_key: str = "eo:cloud_cover"
) -> list[pystac.Item]:
    """The items inside the slot, best first.

    single: least cloudy first, ties by distance to the target date, then id; other modes:
    closest to the target date first, ties by cloud cover, then id.
    """
    target = slot.target_time
    keyed = []
    for item in items:
        when = item_datetime(item)
        if when is None or not slot.contains(when):
            continue
        distance = abs((when - target).total_seconds())
        cloud = cloud_cover(item, cloud_key)
        order = (cloud, distance) if slot.mode == "single" else (distance, cloud)
        keyed.append((order, item.id, item))
    keyed.sort(key=lambda entry: entry[:2])
    return [item for _, _, item in keyed]


def coterminous(
    ranked: Mapping[str, Sequence[pystac.Item]],
    window_days: int,
    rejected: Container[tuple[str, str]] | None = None,
) -> Iterator[dict[str, pystac.Item]]:
    """Combinations of one item per sensor whose dates lie within `window_days` of each other.

    `ranked` holds each sensor's candidates best first (from `rank`). Combinations come in
    preference order: smallest sum of the items' ranks first, ties in sensor order (the first
    sensor's better item first). Ranks count only items that have a partner within the window
    in every other sensor. The generator is lazy: a caller that adds `(sensor, item_id)` to
    `rejected` (e.g. a scene whose patch was too cloudy) is never offered that item again.
    """
    if not ranked:
        return
    window = dt.timedelta(days=window_days)
    sensors = list(ranked)
    timed = {
        sensor: [(when, item) for item in ranked[sensor] if (when := item_datetime(item))]
        for sensor in sensors
    }
    usable = {
        sensor: [
            (when, item)
            for when, item in timed[sensor]
            if all(
                any(abs(when - other_when) <= window for other_when, _ in timed[other])
                for other in sensors
                if other != sensor
            )
        ]
        for sensor in sensors
    }
    lists = [usable[sensor] for sensor in sensors]
    if any(not candidates for candidates in lists):
        return
    start = (0,) * len(lists)
    heap: list[tuple[int, tuple[int, ...]]] = [(0, start)]
    seen = {start}
    while heap:
        total, indices = heapq.heappop(heap)
        for axis in range(len(lists)):
            following = indices[:axis] + (indices[axis] + 1,) + indices[axis + 1 :]
            if following[axis] < len(lists[axis]) and following not in seen:
                seen.add(following)
                heapq.heappush(heap, (total + 1, following))
        chosen = [lists[axis][index] for axis, index in enumerate(indices)]
        times = [when for when, _ in chosen]
        if max(times) - min(times) > window:
            continue
        if rejected is not None and any(
            (sensor, item.id) in rejected for sensor, (_, item) in zip(sensors, chosen, strict=True)
        ):
            continue
        yield {sensor: item for sensor, (_, item) in zip(sensors, chosen, strict=True)}

"""Time slots of the four time modes, scene ranking and the coterminous combinations."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pystac
import pytest
from pydantic import TypeAdapter

from geoprep.building.scenes import (
    Slot,
    coterminous,
    rank,
    slots_envelope,
    slots_for,
    slots_span,
    year_pairs,
)
from geoprep.core.errors import UserError
from geoprep.recipe.sections import MultiYearTime, TimeSpec

TIME = TypeAdapter(TimeSpec)
ROW = pd.Series({"id": "loc1", "lat": 45.0, "lon": 10.0})


def spec(**fields):
    return TIME.validate_python(fields)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, 12345])


def item(item_id: str, when: str, cloud: float | None = None) -> pystac.Item:
    properties = {} if cloud is None else {"eo:cloud_cover": cloud}
    return pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [10.0, 45.0]},
        bbox=[10.0, 45.0, 10.0, 45.0],
        datetime=dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC),
        properties=properties,
    )


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# --- slots ----------------------------------------------------------------------------------


def test_single_is_one_slot_over_the_whole_range():
    (slot,) = slots_for(spec(mode="single", start="2020-01-01", end="2020-12-31"), rng(), ROW)
    assert (slot.name, slot.start, slot.end) == ("t0", d("2020-01-01"), d("2020-12-31"))
    assert slot.target == d("2020-07-01") and slot.mode == "single"
    assert slot.to_json() == {
        "start": "2020-01-01",
        "end": "2020-12-31",
        "target": "2020-07-01",
        "year_group": None,
        "season": None,
    }


@pytest.mark.parametrize(
    ("n_dates", "spacing", "window", "max_shift"), [(4, 91, 15, 364), (5, 84, 7, 0), (1, 30, 0, 10)]
)
def test_seasonal_dates_are_evenly_spaced_and_shifted_together(n_dates, spacing, window, max_shift):
    time = spec(
        mode="seasonal",
        reference="2021-06-30",
        n_dates=n_dates,
        spacing_days=spacing,
        window_days=window,
        max_shift_days=max_shift,
    )
    shifts = set()
    for seed in range(30):
        slots = slots_for(time, rng(seed), ROW)
        assert [s.name for s in slots] == [f"t{i}" for i in range(n_dates)]
        assert [s.season for s in slots] == list(range(n_dates))
        targets = [s.target for s in slots]
        assert all((b - a).days == spacing for a, b in zip(targets, targets[1:], strict=False))
        shift = (d("2021-06-30") - targets[-1]).days
        assert 0 <= shift <= max_shift
        shifts.add(shift)
        for s in slots:
            assert (s.target - s.start).days == window == (s.end - s.target).days
    assert len(shifts) > 5 if max_shift >= 10 else shifts == {0}


@pytest.mark.parametrize(
    ("first", "last", "gap", "per_group"),
    [(2016, 2023, 2, 4), (2018, 2020, 2, 5), (2017, 2024, 3, 2)],
)
def test_multi_year_groups_are_far_enough_apart_with_matching_seasons(first, last, gap, per_group):
    time = spec(
        mode="multi-year",
        first_year=first,
        last_year=last,
        min_gap_years=gap,
        dates_per_group=per_group,
        spacing_days=91,
        window_days=15,
    )
    names = [f"y{g}s{s}" for g in range(2) for s in range(per_group)]
    pairs = set()
    for seed in range(40):
        slots = slots_for(time, rng(seed), ROW)
        assert [s.name for s in slots] == names
        indices = [(g, s) for g in range(2) for s in range(per_group)]
        assert [(s.year_group, s.season) for s in slots] == indices
        older, newer = slots[:per_group], slots[per_group:]
        years = (older[0].target.year, newer[0].target.year)
        assert first <= years[0] and years[0] + gap <= years[1] <= last
        pairs.add(years)
        # One day-of-year offset for both groups: season k lies as many days after New Year.
        for a, b in zip(older, newer, strict=True):
            offset = (a.target - dt.date(years[0], 1, 1)).days
            assert (b.target - dt.date(years[1], 1, 1)).days == offset
        # Each group stays in its year: its dates are 91 days apart, wrapping within the year.
        assert all(s.target.year == years[0] for s in older)
        assert all(s.target.year == years[1] for s in newer)
        days = [(s.target - dt.date(years[0], 1, 1)).days for s in older]
        assert any(
            sorted((d - d0) % 365 for d in days) == [91 * k for k in range(per_group)]
            for d0 in days
        )
        assert all(s.end - s.start == dt.timedelta(days=30) for s in slots)
        assert slots == sorted(slots, key=lambda s: s.target)  # oldest first
    allowed = year_pairs(time)
    assert pairs <= set(allowed) and (len(pairs) > 1 or len(allowed) == 1)


def test_year_pairs_respect_the_gap():
    time = MultiYearTime(mode="multi-year", first_year=2018, last_year=2021, min_gap_years=2)
    assert year_pairs(time) == [(2018, 2020), (2018, 2021), (2019, 2021)]


@pytest.mark.parametrize(
    "time",
    [
        {"mode": "seasonal", "reference": "2022-01-01"},
        {"mode": "multi-year", "first_year": 2016, "last_year": 2023},
    ],
)
def test_random_modes_are_reproducible_per_seed_and_differ_between_seeds(time):
    time = spec(**time)
    assert slots_for(time, rng(1), ROW) == slots_for(time, rng(1), ROW)
    draws = {tuple(s.target for s in slots_for(time, rng(seed), ROW)) for seed in range(10)}
    assert len(draws) > 5


DEMO_CACO = {"mode": "multi-year", "first_year": 2019, "last_year": 2022, "min_gap_years": 3}
DEMO_CACO |= {"dates_per_group": 2, "spacing_days": 91, "window_days": 45, "day_of_year": [95, 115]}


@pytest.mark.parametrize(
    ("time", "windows"),
    [
        # the demo CACo recipe: 2019 and 2022, first day 95-115 then 91 days on, +-45 days
        (DEMO_CACO, [("2019-02-20", "2019-09-09"), ("2022-02-20", "2022-09-09")]),
        # any day of the years 2017-2023 that a pair 4 years apart holds (2020 is in none)
        (
            {"mode": "multi-year", "first_year": 2017, "last_year": 2023, "min_gap_years": 4},
            [("2016-12-17", "2020-01-15"), ("2020-12-17", "2024-01-15")],
        ),
        (
            {"mode": "seasonal", "reference": "2021-06-30", "n_dates": 3, "spacing_days": 30,
             "window_days": 5, "max_shift_days": 100},
            [("2021-01-16", "2021-07-05")],
        ),
        (  # no shift: each date keeps its own window
            {"mode": "seasonal", "reference": "2021-06-30", "n_dates": 2, "spacing_days": 91,
             "window_days": 10, "max_shift_days": 0},
            [("2021-03-21", "2021-04-10"), ("2021-06-20", "2021-07-10")],
        ),
        (
            {"mode": "single", "start": "2020-01-01", "end": "2020-12-31"},
            [("2020-01-01", "2020-12-31")],
        ),
    ],
)  # fmt: skip
def test_slots_envelope_holds_every_window_any_location_can_draw(time, windows):
    """Searches of the envelope serve every location: it holds each slot of many draws, and
    reaches no further than the time spec lets a slot reach."""
    time = spec(**time)
    envelope = slots_envelope(time)
    assert envelope == [Slot("x", d(start), d(end), d(start)).window for start, end in windows]
    for seed in range(300):
        for slot in slots_for(time, rng(seed), ROW):
            low, high = slot.window
            assert any(start <= low and high <= end for start, end in envelope)


def test_timestamps_have_no_envelope():
    """A location's own dates (or the recipe's, the same for all) are searched as they are."""
    assert slots_envelope(spec(mode="timestamps", column="images")) is None
    assert slots_envelope(spec(mode="timestamps", dates=["2019-01-01", "2022-01-01"])) is None


def test_timestamps_from_the_recipe_are_sorted_and_deduplicated():
    time = spec(mode="timestamps", dates=["2020-05-01", "2019-03-10", "2020-05-01"], window_days=10)
    slots = slots_for(time, rng(), ROW)
    assert [(s.name, s.target) for s in slots] == [("t0", d("2019-03-10")), ("t1", d("2020-05-01"))]
    assert (slots[0].start, slots[0].end) == (d("2019-02-28"), d("2019-03-20"))
    assert {s.mode for s in slots} == {"timestamps"}


FMOW_IMAGES = [  # the fMoW sampler's `images` column: objects with a timestamp (or null)
    {"k": 1, "timestamp": "2016-07-04T10:25:11Z", "url": "x"},
    {"k": 0, "timestamp": "2015-01-31T23:30:00-05:00", "url": "y"},
    {"k": 2, "timestamp": None, "url": "z"},
]


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(FMOW_IMAGES),
        json.dumps(["2016-07-04T10:25:11Z", "2015-01-31T23:30:00-05:00"]),
        ["2016-07-04", "2015-02-01"],
    ],
)
def test_timestamps_from_a_location_column(value):
    time = spec(mode="timestamps", column="images", window_days=30)
    slots = slots_for(time, rng(), {"id": "fmow_1", "images": value})
    # 23:30 at UTC-5 is the next day in UTC.
    assert [(s.name, s.target) for s in slots] == [("t0", d("2015-02-01")), ("t1", d("2016-07-04"))]


@pytest.mark.parametrize("value", ["not json", json.dumps({"a": 1}), None, float("nan"), "[]"])
def test_unreadable_timestamp_columns_give_no_slots(value):
    time = spec(mode="timestamps", column="images")
    assert slots_for(time, rng(), {"id": "x", "images": value}) == []


def test_missing_timestamp_column_is_a_user_error():
    with pytest.raises(UserError, match="'images'"):
        slots_for(spec(mode="timestamps", column="images"), rng(), ROW)


def test_slot_windows_cover_whole_days():
    slot = Slot("t0", d("2020-03-01"), d("2020-03-02"), d("2020-03-01"))
    assert slot.contains(dt.datetime(2020, 3, 1, 0, 0, tzinfo=dt.UTC))
    assert slot.contains(dt.datetime(2020, 3, 2, 23, 59, 59, tzinfo=dt.UTC))
    assert not slot.contains(dt.datetime(2020, 3, 3, 0, 0, tzinfo=dt.UTC))
    assert not slot.contains(dt.datetime(2020, 2, 29, 23, 59, tzinfo=dt.UTC))
    other = Slot("t1", d("2020-05-01"), d("2020-05-03"), d("2020-05-02"))
    assert slots_span([other, slot]) == (slot.start_time, other.end_time)


# --- ranking --------------------------------------------------------------------------------

CANDIDATES = [
    item("far_clear", "2020-06-01T10:00:00", 1.0),
    item("near_cloudy", "2020-06-14T10:00:00", 40.0),
    item("near_clear", "2020-06-16T10:00:00", 5.0),
    item("twin_b", "2020-06-20T12:00:00", 5.0),
    item("twin_a", "2020-06-20T12:00:00", 5.0),
    item("no_cloud_key", "2020-06-25T12:00:00"),
    item("outside", "2020-08-01T10:00:00", 0.0),
]


def test_single_slots_prefer_clear_scenes():
    slot = Slot("t0", d("2020-05-20"), d("2020-07-10"), d("2020-06-15"), mode="single")
    ranked = [i.id for i in rank(slot, CANDIDATES)]
    # Missing cloud cover counts as 0; equal cloud -> closer to the target; then id.
    assert ranked == ["no_cloud_key", "far_clear", "near_clear", "twin_a", "twin_b", "near_cloudy"]


@pytest.mark.parametrize("mode", ["seasonal", "multi-year", "timestamps"])
def test_dated_slots_prefer_scenes_near_the_target(mode):
    slot = Slot("t0", d("2020-05-20"), d("2020-07-10"), d("2020-06-15"), mode=mode)
    ranked = [i.id for i in rank(slot, CANDIDATES)]
    # near_cloudy and near_clear are both 1 day 2 h from noon of the target: less cloudy first.
    assert ranked == ["near_clear", "near_cloudy", "twin_a", "twin_b", "no_cloud_key", "far_clear"]


def test_items_with_only_a_start_datetime_are_ranked_by_it():
    slot = Slot("t0", d("2020-06-01"), d("2020-06-30"), d("2020-06-15"), mode="seasonal")
    ranged = item("ranged", "2020-06-14T00:00:00")
    ranged.datetime = None
    ranged.common_metadata.start_datetime = dt.datetime(2020, 6, 15, 11, tzinfo=dt.UTC)
    ranged.common_metadata.end_datetime = dt.datetime(2020, 6, 15, 13, tzinfo=dt.UTC)
    assert [i.id for i in rank(slot, [CANDIDATES[2], ranged])] == ["ranged", "near_clear"]


def test_rank_reads_another_cloud_property():
    slot = Slot("t0", d("2020-01-01"), d("2020-12-31"), d("2020-06-15"))
    a, b = item("a", "2020-06-01T00:00:00", 1.0), item("b", "2020-06-02T00:00:00", 50.0)
    a.properties["landsat:cloud_cover_land"] = 80.0
    b.properties["landsat:cloud_cover_land"] = 2.0
    assert [i.id for i in rank(slot, [a, b], cloud_key="landsat:cloud_cover_land")] == ["b", "a"]


# --- coterminous combinations ---------------------------------------------------------------


def test_coterminous_yields_in_rank_sum_order_within_the_window():
    s2 = [item("s2_0", "2020-06-10"), item("s2_1", "2020-03-01"), item("s2_2", "2020-07-20")]
    naip = [item("naip_0", "2020-09-01"), item("naip_1", "2020-06-20")]
    combos = [(c["s2"].id, c["naip"].id) for c in coterminous({"s2": s2, "naip": naip}, 60)]
    # s2_1 (March) has no NAIP partner within 60 days, so ranks count without it:
    # s2_0 and s2_2 are ranks 0 and 1; naip_0 rank 0, naip_1 rank 1.
    # (0,0) 83 d: no; (0,1) and (1,0) sum 1: (s2_0, naip_1) 10 d, (s2_2, naip_0) 43 d; (1,1) 30 d.
    assert combos == [("s2_0", "naip_1"), ("s2_2", "naip_0"), ("s2_2", "naip_1")]


def test_coterminous_skips_rejected_items_while_iterating():
    s2 = [item("s2_0", "2020-06-10"), item("s2_1", "2020-06-12")]
    s1 = [item("s1_0", "2020-06-11"), item("s1_1", "2020-06-13")]
    naip = [item("naip_0", "2020-06-20")]
    rejected: set[tuple[str, str]] = set()
    tried = []
    for combo in coterminous({"s2": s2, "s1": s1, "naip": naip}, 30, rejected):
        tried.append(tuple(i.id for i in combo.values()))
        if combo["s2"].id == "s2_0":
            rejected.add(("s2", "s2_0"))  # e.g. its patch was cloudy
    assert tried == [
        ("s2_0", "s1_0", "naip_0"),
        ("s2_1", "s1_0", "naip_0"),
        ("s2_1", "s1_1", "naip_0"),
    ]


@pytest.mark.parametrize(
    "ranked",
    [
        {},
        {"s2": [item("a", "2020-01-01")], "naip": []},
        {"s2": [item("a", "2020-01-01")], "naip": [item("b", "2021-01-01")]},
    ],
)
def test_coterminous_without_a_possible_combination_yields_nothing(ranked):
    assert list(coterminous(ranked, 60)) == []


def test_coterminous_with_one_sensor_follows_its_ranking():
    ranked = [item("x", "2020-01-05"), item("y", "2020-01-01"), item("z", "2020-01-03")]
    assert [c["s2"].id for c in coterminous({"s2": ranked}, 1)] == ["x", "y", "z"]

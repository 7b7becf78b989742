"""Which Radio Aporee recordings the demo world holds: where, when, what is heard, what is wrong.

Recordists go to places of every land-cover class; what a recording sounds like follows the
truth at its spot in its year (waves at the lake, traffic in town, birdsong in the forest, a
field's wind and crickets until it is built over). :func:`plan_items` draws the clean items of
every AOI, a revisit of one spot, and the flawed items a crawler or the audio stage must reject
(:data:`FLAWS`); :mod:`geoprep.demo.aporee_world` renders and writes them.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pyproj import Transformer
from shapely.geometry import Point, box

from geoprep.demo import sounds
from geoprep.demo.truth import PAINT_ORDER, YEARS, Aoi, Truth

#: Clean recordings per AOI (the small world's are enough to train SoundingEarth on: over 300
#: with imagery in all); durations (s) of the short ones and of the few long ones (longer than
#: the demo's 60 s cut). The small world's are short, so that hundreds render, encode and build
#: in a minute or two; each holds one or more spectrogram windows of 128 frames (2.97 s at
#: 22,050 Hz) besides its fades.
RECORDINGS_PER_AOI = {"tiny": 3, "small": 116, "full": 240}
SHORT_DURATION_S = {"tiny": (3.5, 7.0), "small": (4.0, 8.0), "full": (3.5, 45.0)}
LONG_DURATIONS_S = {"tiny": (), "small": (75.0, 90.0), "full": (240.0, 300.0)}
REGIONS = {"iowa": "Iowa, USA", "bavaria": "Bavaria, Germany", "victoria": "Victoria, Australia"}
#: Soundscapes every AOI gets first (so even tiny worlds can compare them), then the others.
FIRST_SOUNDSCAPES = ("water", "built_up", "forest")
OTHER_SOUNDSCAPES = (
    "farmland", "stadium", "quarry", "bridge", "river", "dam", "breakwater", "substation",
    "golf_course", "farm_building", "bare_rock", "other",
)  # fmt: skip
#: Flawed items: (problem, AOI position, land cover, seconds, the crawler's drop reason or "").
#: A recording of 2 s is shorter than one spectrogram window (128 frames at hop 512 and
#: 22,050 Hz last 2.97 s), so only the audio stage can reject it, as it must the corrupt file.
FLAWS = (
    ("testsound", 0, "other", 1.5, "nondescript"),
    ("test_title", -1, "farmland", 3.0, "nondescript"),
    ("coverage_only", 1, "forest", 4.0, ""),
    ("no_coordinates", 0, "built_up", 4.0, "no_coordinates"),
    ("null_island", 1, "water", 4.0, "null_island"),
    ("swapped_coordinates", "far", "farmland", 4.0, "invalid_coordinates"),
    ("no_audio", -1, "built_up", 4.0, "no_audio"),
    ("too_short", 0, "water", 2.0, ""),
    ("corrupt_audio", -1, "other", 5.0, ""),
)
PLACES: dict[str, tuple[str, ...]] = {
    "water": ("Lakeshore", "Reeds by the lake", "Pond edge"),
    "river": ("Riverbank", "River meadow"),
    "breakwater": ("Breakwater", "Harbour mole"),
    "dam": ("Weir", "Dam spillway"),
    "bridge": ("Road bridge", "On the bridge"),
    "built_up": ("Main street", "Market square", "Residential street", "Town centre"),
    "stadium": ("Stadium", "Football ground"),
    "substation": ("Substation fence", "Transformer station"),
    "quarry": ("Gravel pit", "Quarry rim"),
    "bare_rock": ("Rock outcrop", "Crag"),
    "forest": ("Forest", "Woodland path", "Beech wood"),
    "farmland": ("Field edge", "Farm track"),
    "farm_building": ("Farmyard", "Cattle barn"),
    "golf_course": ("Golf course", "Golf club fairway"),
    "other": ("Meadow", "Roadside verge"),
}
CREATORS = (
    "Anna Keller", "J. Moreau", "fieldrec_ia", "Tom Whitaker", "Mia Lindqvist", "soundwalker",
    "Hannes Ortner", "Priya Raman", "Lukas Brandt", "Ellie Fraser",
)  # fmt: skip
LICENSES = (
    "http://creativecommons.org/licenses/by-nc-sa/4.0/",
    "http://creativecommons.org/licenses/by-nc-sa/3.0/",
    "https://creativecommons.org/licenses/by/4.0/",
    "http://creativecommons.org/licenses/by-nc/3.0/",
    "http://creativecommons.org/licenses/by-sa/4.0/",
    "https://creativecommons.org/publicdomain/zero/1.0/",
    "http://creativecommons.org/publicdomain/mark/1.0/",
)


@dataclass
class PlannedItem:
    """One archive.org item to write and what is true about it."""

    identifier: str
    aoi: str
    lat: float
    lon: float
    land_cover: str
    soundscape: str
    layers: tuple[tuple[str, float], ...]
    date: dt.date
    sample_rate: int
    channels: int
    duration_s: float
    original_format: str
    file_stem: str
    title: str
    creator: str | list[str]
    license_url: str
    #: How the item is flawed ("" when clean) and the reason a crawler drops it ("" if kept).
    problem: str = ""
    expected_drop: str = ""
    duplicate_of: str = ""
    metadata_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        heard = sounds.describe(self.layers)
        season = _season(self.date, self.lat)
        return f"{heard[0].upper()}{heard[1:]}. Recorded on a {season} day in {self.date.year}."


def _season(day: dt.date, lat: float) -> str:
    names = ("winter", "spring", "summer", "autumn")
    index = (day.month % 12) // 3
    return names[(index + 2) % 4] if lat < 0 else names[index]


class _Ground:
    """Land cover at points of one AOI (UTM): topmost class, the river, nearby towns."""

    def __init__(self, truth: Truth, aoi: Aoi):
        self.aoi = aoi
        self.to_lonlat = Transformer.from_crs(aoi.epsg, 4326, always_xy=True)
        self.to_utm = Transformer.from_crs(4326, aoi.epsg, always_xy=True)
        self.by_year = {}
        for year in YEARS:
            feats = truth.features_at(year)
            self.by_year[year] = feats[feats["aoi"] == aoi.name].to_crs(aoi.epsg)
        self.rank = {cls: i for i, cls in enumerate(PAINT_ORDER)}
        self.edge = box(*aoi.bounds_utm).exterior

    def soundscape(self, year: int, x: float, y: float) -> tuple[str, str, list]:
        """(land cover, soundscape, layers) at a spot; towns within 250 m add their traffic."""
        feats = self.by_year[year]
        hits = feats.sindex.query(Point(x, y), predicate="intersects")
        cls, name = "other", "other"
        if hits.size:
            top = max(hits, key=lambda i: self.rank[feats["cls"].iat[i]])
            cls = name = feats["cls"].iat[top]
            if cls == "water" and feats.geometry.iat[top].intersects(self.edge):
                name = "river"  # the only water that runs out of the AOI
        layers = list(sounds.SOUNDSCAPES[name])
        towns = feats.geometry[feats["cls"] == "built_up"]
        if cls not in ("built_up", "stadium", "bridge") and len(towns):
            if towns.distance(Point(x, y)).min() < 250:
                layers.append(("traffic", 0.2))
        return cls, name, layers

    def spot(self, year: int, wanted: str, rng: np.random.Generator, central: bool = False):
        """A random (x, y) with the soundscape ``wanted``; None if there is none. ``central``:
        the one nearest the AOI's centre of a dozen such spots (under the NAIP imagery)."""
        feats = self.by_year[year]
        if wanted == "other":
            areas = [box(*self.aoi.bounds_utm).buffer(-30)]
        else:
            cls = "water" if wanted == "river" else wanted
            areas = list(feats.geometry[feats["cls"] == cls])
        found: list[tuple[float, float]] = []
        for _ in range(300 if areas else 0):
            area = areas[int(rng.integers(len(areas)))]
            west, south, east, north = area.bounds
            x, y = rng.uniform(west, east), rng.uniform(south, north)
            if area.contains(Point(x, y)) and self.soundscape(year, x, y)[1] == wanted:
                found.append((x, y))
                if not central or len(found) == 12:
                    break
        if not found:
            return None
        centre = box(*self.aoi.bounds_utm).centroid
        return min(found, key=lambda xy: Point(xy).distance(centre)) if central else found[0]


class _Planner:
    """Draws items: where, when, what is heard, and how each is recorded and described."""

    def __init__(self, truth: Truth, rng: np.random.Generator):
        self.truth, self.rng = truth, rng
        self.grounds = {aoi.name: _Ground(truth, aoi) for aoi in truth.aois}
        self.locs: set[int] = set()

    def new_ids(self) -> tuple[int, int]:
        while True:
            loc = int(self.rng.integers(1000, 60000))
            if loc not in self.locs:
                self.locs.add(loc)
                return loc, loc + int(self.rng.integers(1, 9000))

    def date(self) -> dt.date:
        year, month = int(self.rng.choice(YEARS)), int(self.rng.integers(1, 13))
        last = calendar.monthrange(year, month)[1]
        return dt.date(year, month, int(self.rng.integers(1, last + 1)))

    def item(self, aoi: Aoi, wanted: str, seconds: float, rate: int, channels: int, central=False):
        """A recording of ``wanted`` land cover in ``aoi``; None if there is none to visit."""
        rng, ground = self.rng, self.grounds[aoi.name]
        for _ in range(4):  # another year, if the class is missing in the one drawn
            day = self.date()
            spot = ground.spot(day.year, wanted, rng, central)
            if spot is not None:
                break
        else:
            return None
        lon, lat = ground.to_lonlat.transform(*spot)
        cls, name, layers = ground.soundscape(day.year, *spot)
        towns = self.truth.cities[self.truth.cities["aoi"] == aoi.name]
        town = towns["name"].iat[
            int(np.argmin((towns["lat"] - lat) ** 2 + (towns["lon"] - lon) ** 2))
        ]
        place = str(rng.choice(PLACES[name]))
        loc, snd = self.new_ids()
        creator: str | list[str] = str(rng.choice(CREATORS))
        if rng.random() < 0.15:  # metadata values may be lists of strings
            creator = [creator, str(rng.choice([c for c in CREATORS if c != creator]))]
        return PlannedItem(
            identifier=f"aporee_{loc}_{snd}",
            aoi=aoi.name,
            lat=round(float(lat), 5),
            lon=round(float(lon), 5),
            land_cover=cls,
            soundscape=name,
            layers=tuple(layers),
            date=day,
            sample_rate=rate,
            channels=channels,
            duration_s=round(seconds, 2),
            original_format="mp3" if rng.random() < 0.6 else "ogg",
            file_stem=self.file_stem(day, f"{town}{place}", snd),
            title=f"{place}, {town}, {REGIONS.get(aoi.name, aoi.name)}",
            creator=creator,
            license_url=str(rng.choice(LICENSES)),
        )

    def file_stem(self, day: dt.date, words: str, snd: int) -> str:
        """Upload names are whatever the recorder or recordist called the file."""
        slug = "".join(ch for ch in words.lower() if ch.isalnum())[:24]
        return (
            f"{day:%b%y}".lower() + slug,
            f"soundmap{day:%Y%m%d}{snd % 10}",
            f"{slug}_{day:%d%m%y}",
            f"ZOOM{int(self.rng.integers(1, 999)):04d}",
        )[int(self.rng.integers(4))]

    def revisit(self, first: PlannedItem) -> PlannedItem | None:
        """Another recording at ``first``'s spot on another day: same ``loc``, new ``snd``."""
        ground = self.grounds[first.aoi]
        again = self.item(ground.aoi, "other", 6.0, 22_050, 1)
        if again is None:
            return None
        x, y = ground.to_utm.transform(first.lon, first.lat)
        cls, name, layers = ground.soundscape(again.date.year, x, y)
        loc, snd = (int(part) for part in first.identifier.split("_")[1:])
        return replace(
            again, identifier=f"aporee_{loc}_{snd + int(self.rng.integers(100, 5000))}",
            lat=first.lat, lon=first.lon, land_cover=cls, soundscape=name,
            layers=tuple(layers), title=first.title, creator=first.creator,
        )  # fmt: skip

    def flawed(self, problem: str, where, wanted: str, seconds: float, drop: str):
        aois = self.truth.aois
        if where == "far":  # swapping lat and lon must leave the valid range
            aoi = next((a for a in aois if abs(np.mean(a.bounds_lonlat[0::2])) > 90), aois[0])
        else:
            aoi = aois[where % len(aois)]
        # the recording without coordinates is one a user can place on NAIP imagery
        item = self.item(aoi, wanted, seconds, 22_050, 1, central=problem == "no_coordinates")
        if item is None:
            return None
        overrides: dict[str, Any] = {
            "testsound": {"title": "testsound", "description": "testsound please ignore"},
            "test_title": {"title": "test 2", "description": None},
            "coverage_only": {
                "latitude": None, "longitude": None,
                "coverage": f"{item.title} ({item.lat:.5f}, {item.lon:.5f})",
            },
            "no_coordinates": {"latitude": None, "longitude": None},
            "null_island": {"latitude": "0", "longitude": "0"},
            "swapped_coordinates": {"latitude": f"{item.lon:.5f}", "longitude": f"{item.lat:.5f}"},
        }.get(problem, {})  # fmt: skip
        stem = "testsound" if problem == "testsound" else item.file_stem
        return replace(
            item, problem=problem, expected_drop=drop, metadata_overrides=overrides,
            file_stem=stem, original_format="mp3",
        )  # fmt: skip


def plan_items(truth: Truth, rng: np.random.Generator) -> list[PlannedItem]:
    """Every item of the collection: clean recordings per AOI, a revisit, then flawed ones."""
    scale = truth.scale if truth.scale in RECORDINGS_PER_AOI else "small"
    planner = _Planner(truth, rng)
    per_aoi = RECORDINGS_PER_AOI[scale]
    n_clean = per_aoi * len(truth.aois)
    # every rate and both channel layouts occur; high rates and stereo only for short clips
    rates = rng.permutation(np.resize(sounds.SAMPLE_RATES, n_clean))
    stereo = rng.permutation(np.resize([False, True, False], n_clean))
    low, high = SHORT_DURATION_S[scale]
    longs = list(LONG_DURATIONS_S[scale])
    items: list[PlannedItem] = []
    for aoi in truth.aois:
        wanted = list(FIRST_SOUNDSCAPES) + list(rng.permutation(OTHER_SOUNDSCAPES))
        # every soundscape in turn, as often as the count asks (there is no cap per soundscape)
        turns = [wanted[i % len(wanted)] for i in range(per_aoi)]
        for k, name in enumerate(turns, start=len(items)):
            rate, channels = int(rates[k % n_clean]), 2 if stereo[k % n_clean] else 1
            seconds = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            if rate > 22_050 or channels == 2:
                seconds = min(seconds, 8.0)
            if longs and name in ("forest", "water"):
                seconds, rate, channels = longs.pop(0), 16_000, 1
            items.append(planner.item(aoi, name, seconds, rate, channels))
    items = [item for item in items if item is not None]
    if items:
        items.append(planner.revisit(items[0]))
    flawed = [planner.flawed(*flaw) for flaw in FLAWS]
    if len(items) > 1:  # the same file uploaded twice: a new sound id at the same location
        original = items[1]
        loc, snd = original.identifier.split("_")[1:]
        flawed.append(
            replace(
                original, identifier=f"aporee_{loc}_{int(snd) + 1}", problem="reupload",
                expected_drop="duplicate_audio", duplicate_of=original.identifier,
            )
        )  # fmt: skip
    return [item for item in items + flawed if item is not None]

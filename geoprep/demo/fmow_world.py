"""The demo world's fMoW stand-in: an fMoW-rgb tree of truth objects seen over the years.

Objects of the truth map onto fMoW categories (a stadium is a ``stadium``, a substation an
``electric_substation``, a quarry a ``surface_mine``, a field a ``crop_field``, a field built
over in the change year a ``construction_site`` ...). Each becomes a location folder in the
real layout, ``OUT/fmow/fMoW-rgb/<split>/<category>/<category>_<n>/``, holding
``<category>_<n>_<k>_rgb.jpg`` and ``.json`` for 1 to 6 images from different years and
seasons, each at its own ground sample distance and framing, so that land-cover change shows.
Images are rendered from the truth with the world's renderer (same textures as the satellite
imagery), under a little haze and now and then clouds; per-image JSONs follow the dataset's
schema (``gsd``, ``utm``, ``timestamp``, ``bounding_boxes`` with the object's pixel box and WKT
footprint, ``raw_location``, angles ...).

The temporal index ``k`` is not in time order, so readers have to sort by ``timestamp``.
``OUT/fmow/locations.csv`` records, per location, the truth feature and AOI behind it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import MultiPolygon, Point, box

from geoprep.demo.render import Grid, Sky, Surface, apply_sky, sky_layers
from geoprep.demo.sensors import solar_angles
from geoprep.demo.truth import (
    ALWAYS_FROM,
    CHANGE_YEAR,
    SEASON_DATES,
    SITES,
    YEARS,
    Aoi,
    Truth,
)

if TYPE_CHECKING:
    from geoprep.demo.world import PartContext

log = logging.getLogger(__name__)

PART_DIR = "fmow"
TREE = "fMoW-rgb"
MANIFEST = "locations.csv"
#: Truth class -> fMoW category; fields built over in CHANGE_YEAR are construction sites.
CATEGORY_OF_CLASS = {
    "stadium": "stadium",
    "golf_course": "golf_course",
    "dam": "dam",
    "substation": "electric_substation",
    "quarry": "surface_mine",
    "bridge": "road_bridge",
    "farmland": "crop_field",
    "water": "lake_or_pond",
    "farm_building": "barn",
    "built_up": "single-unit_residential",
}
CHANGED_BUILT_UP = "construction_site"
#: Locations per category (spread over the AOIs in turn), per world scale; categories with
#: fewer objects in the world (stadiums, golf courses, construction sites) have all of theirs.
#: The small world's 500-odd locations are enough to pretrain GASSL on and probe it with.
LOCATIONS_PER_CATEGORY = {"tiny": 1, "small": 64, "full": 96}
#: Probabilities of a location having 1, 2, ... 6 images, per world scale: in the small and
#: full worlds four in five have two or more, so most locations give GASSL a temporal
#: positive; the tiny world (tests) keeps single-image locations common.
IMAGE_COUNT_WEIGHTS = {
    "tiny": (0.3, 0.25, 0.2, 0.1, 0.1, 0.05),
    "small": (0.2, 0.4, 0.2, 0.1, 0.05, 0.05),
    "full": (0.2, 0.4, 0.2, 0.1, 0.05, 0.05),
}
MAX_SIDE_PX, MIN_SIDE_PX = 320, 64
GSD_RANGE = (0.5, 2.0)
VAL_SHARE = 0.25
COUNTRY_CODES = {"iowa": "USA", "bavaria": "DEU", "victoria": "AUS"}
#: Platform -> first digits of its catalog ids.
PLATFORMS = {
    "WORLDVIEW02": "103001",
    "WORLDVIEW03_VNIR": "104001",
    "GEOEYE01": "105001",
    "QUICKBIRD02": "101001",
}
RGB_BANDS = ("B04", "B03", "B02")


@dataclass
class _Location:
    aoi: Aoi
    lat_site: float
    fid: int
    cls: str
    category: str
    target: object  # the object's shape in the AOI's UTM CRS
    changes: bool
    split: str = "train"
    name: str = ""


def _utm_label(epsg: int, lat: float) -> str:
    """fMoW's ``utm`` field: zone number and latitude band letter, e.g. ``"15T"``."""
    bands = "CDEFGHJKLMNPQRSTUVWX"
    return f"{epsg % 100}{bands[int(np.clip((lat + 80) // 8, 0, 19))]}"


def _raw_category(category: str) -> str:
    words = category.replace("_", " ").split()
    return " ".join(w if w == "or" else w[:1].upper() + w[1:] for w in words)


def _wkt_box(west: float, south: float, east: float, north: float) -> str:
    """An axis-aligned lon/lat rectangle as WKT, corners in the dataset's order."""
    ring = [(west, north), (east, north), (east, south), (west, south), (west, north)]
    return "POLYGON ((" + ", ".join(f"{x:.16f} {y:.16f}" for x, y in ring) + "))"


def _choose_locations(truth: Truth, rng: np.random.Generator) -> list[_Location]:
    scale = truth.scale if truth.scale in LOCATIONS_PER_CATEGORY else "small"
    candidates: dict[str, dict[str, list]] = {}  # category -> AOI -> rows
    obstacles = {}  # what stands in towns besides houses: stadiums, substations ...
    for aoi in truth.aois:
        feats = truth.features[truth.features["aoi"] == aoi.name].to_crs(aoi.epsg)
        obstacles[aoi.name] = feats.geometry[feats["cls"] != "built_up"].union_all()
        edge = box(*aoi.bounds_utm).exterior
        for row in feats.sort_values("fid").itertuples():
            category = CATEGORY_OF_CLASS.get(row.cls)
            if category is None:
                continue
            temporary = row.valid_from_year != ALWAYS_FROM or row.valid_to_year < YEARS[-1]
            if row.cls == "built_up" and row.valid_from_year == CHANGE_YEAR:
                category = CHANGED_BUILT_UP
            elif row.cls in ("farmland", "farm_building") and temporary:
                continue  # the built-over fields are construction sites already
            if row.cls == "water" and row.geometry.intersects(edge):
                continue  # the river: not a lake or pond
            candidates.setdefault(category, {}).setdefault(aoi.name, []).append(row)
    sites = {aoi.name: (aoi, site.lat) for aoi, site in zip(truth.aois, SITES, strict=False)}
    # where houses may stand: inside a town, clear of other objects (one shape per AOI and town)
    lots: dict[tuple[str, int], object] = {}
    wanted = LOCATIONS_PER_CATEGORY[scale]
    locations = []
    for turn, category in enumerate(sorted(candidates)):
        pools = {}
        for name, rows in candidates[category].items():
            order = rng.permutation(len(rows))
            if category == "single-unit_residential":  # a town has many houses
                order = np.resize(order, wanted)
            pools[name] = list(order)
        names = sorted(pools)
        names = names[turn % len(names) :] + names[: turn % len(names)]  # rotate the first AOI
        taken = 0
        while taken < wanted and any(pools.values()):
            for name in names:
                if taken == wanted or not pools[name]:
                    continue
                row = candidates[category][name][int(pools[name].pop(0))]
                target = row.geometry
                if isinstance(target, MultiPolygon):
                    target = max(target.geoms, key=lambda g: g.area)
                if category == "single-unit_residential":
                    if (name, row.fid) not in lots:
                        lots[name, row.fid] = _house_lots(target, obstacles[name])
                    target = _house(lots[name, row.fid], rng)
                    if target is None:
                        continue
                changes = category == CHANGED_BUILT_UP or row.valid_from_year == CHANGE_YEAR
                aoi, lat = sites[name]
                locations.append(
                    _Location(aoi, lat, int(row.fid), row.cls, category, target, changes)
                )
                taken += 1
    return locations


def _house_lots(town, obstacles):
    """The part of a town where a house can stand clear of other objects."""
    return town.buffer(-40).difference(obstacles.buffer(30))


def _house(inner, rng: np.random.Generator):
    """A house-sized square somewhere inside ``inner`` (a town's :func:`_house_lots`)."""
    if inner.is_empty:
        return None
    west, south, east, north = inner.bounds
    for _ in range(100):
        x, y = rng.uniform(west, east), rng.uniform(south, north)
        if inner.contains(Point(x, y)):
            half = rng.uniform(8, 13)
            return box(x - half, y - half, x + half, y + half)
    return None


def _acquisitions(
    location: _Location, rng: np.random.Generator, scale: str = "small"
) -> list[dt.datetime]:
    """1 to 6 acquisition times, in order; a changing object is seen before and after."""
    weights = IMAGE_COUNT_WEIGHTS.get(scale, IMAGE_COUNT_WEIGHTS["small"])
    count = int(rng.choice(np.arange(1, 7), p=weights))
    if location.changes:
        count = max(count, 2)
    years = sorted(int(y) for y in rng.choice(YEARS, count))
    if location.changes:
        years[0] = min(years[0], CHANGE_YEAR - 1)
        years[-1] = max(years[-1], CHANGE_YEAR)
    lon = float(np.mean(location.aoi.bounds_lonlat[0::2]))
    times = set()
    for year in years:
        season = str(rng.choice(list(SEASON_DATES)))
        month, day = SEASON_DATES[season]
        date = dt.date(year, month, day) + dt.timedelta(days=int(rng.integers(-25, 26)))
        hours = 10.5 - lon / 15 + rng.uniform(-0.6, 0.6)  # satellites pass mid-morning
        when = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
        times.add(when + dt.timedelta(seconds=int(hours * 3600)))
    return sorted(times)


def _frame(location: _Location, rng: np.random.Generator) -> tuple[Grid, float]:
    """The image grid: the object with context around it, at a drawn gsd, inside the AOI."""
    bx0, by0, bx1, by1 = location.target.bounds
    extent = max(bx1 - bx0, by1 - by0, 50.0)  # small objects come with their surroundings
    # fMoW frames objects with context; large ones with less, to keep their gsd moderate
    side = extent * (rng.uniform(1.5, 2.6) if extent < 300 else rng.uniform(1.15, 1.5))
    width_m, height_m = side * rng.uniform(0.85, 1.15), side * rng.uniform(0.85, 1.15)
    gsd = rng.uniform(*GSD_RANGE)
    gsd = float(
        np.clip(gsd, max(width_m, height_m) / MAX_SIDE_PX, max(width_m, height_m) / MIN_SIDE_PX)
    )
    cols, rows = int(round(width_m / gsd)), int(round(height_m / gsd))
    # the object sits near, not exactly at, the centre
    cx = (bx0 + bx1) / 2 + rng.uniform(-0.12, 0.12) * (cols * gsd - (bx1 - bx0))
    cy = (by0 + by1) / 2 + rng.uniform(-0.12, 0.12) * (rows * gsd - (by1 - by0))
    west, south, east, north = location.aoi.bounds_utm
    left = float(np.clip(cx - cols * gsd / 2, west, max(west, east - cols * gsd)))
    top = float(np.clip(cy + rows * gsd / 2, min(north, south + rows * gsd), north))
    return Grid(location.aoi.epsg, Affine(gsd, 0, left, 0, -gsd, top), (rows, cols)), gsd


class _AoiFeatures:
    """An AOI's truth polygons (lon/lat) with a spatial index in its UTM zone."""

    def __init__(self, truth: Truth, aoi: Aoi):
        self.truth = truth
        self.features = truth.features[truth.features["aoi"] == aoi.name].reset_index(drop=True)
        self.sindex = self.features.to_crs(aoi.epsg).sindex

    def near(self, grid: Grid) -> Truth:
        """A truth holding only the polygons that reach into ``grid`` (renders much faster)."""
        hits = self.sindex.query(box(*grid.bounds), predicate="intersects")
        t = self.truth
        return Truth(t.aois, self.features.iloc[np.sort(hits)], t.cities, t.seed, t.scale)


def _render(near: Truth, location: _Location, grid: Grid, when: dt.datetime, sky: Sky) -> bytes:
    """The JPEG of one acquisition: truth reflectance through the sky, to 8-bit RGB."""
    surface = Surface(near, location.aoi.name, when.year, grid, location.lat_site)
    ground = surface.reflectance(when.date(), RGB_BANDS)
    seen = apply_sky(ground, RGB_BANDS, sky, sky_layers(sky, grid))
    rgb = np.clip(2.6 * seen, 0, 1) ** (1 / 2.2)
    image = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _record(
    location: _Location,
    k: int,
    grid: Grid,
    gsd: float,
    when: dt.datetime,
    cloud: int,
    rng: np.random.Generator,
) -> dict:
    """The per-image JSON in the fMoW schema."""
    to_lonlat = Transformer.from_crs(location.aoi.epsg, 4326, always_xy=True)
    west, south, east, north = grid.bounds
    lons, lats = to_lonlat.transform([west, east, east, west], [south, south, north, north])
    bx0, by0, bx1, by1 = location.target.bounds
    blons, blats = to_lonlat.transform([bx0, bx1, bx1, bx0], [by0, by0, by1, by1])
    rows, cols = grid.shape
    x0, x1 = np.clip([(bx0 - west) / gsd, (bx1 - west) / gsd], 0, cols)
    y0, y1 = np.clip([(north - by1) / gsd, (north - by0) / gsd], 0, rows)
    pixel_box = [
        int(round(x0)),
        int(round(y0)),
        max(1, int(round(x1 - x0))),
        max(1, int(round(y1 - y0))),
    ]
    lat, lon = float(np.mean(lats)), float(np.mean(lons))
    zenith, sun_azimuth = solar_angles(when, lat, lon)
    platform = str(rng.choice(list(PLATFORMS)))
    off_nadir = rng.uniform(5, 32)
    target_azimuth = rng.uniform(0, 360)
    name = f"{location.name}_{k}_rgb"

    def spread(value: float, width: float) -> dict[str, float]:
        """How a value varied across the scan: its range, and which end the scan began at."""
        low, high = value - rng.uniform(0, width), value + rng.uniform(0, width)
        start, end = (low, high) if rng.random() < 0.5 else (high, low)
        return {"min": low, "max": high, "start": start, "end": end}

    pan = spread(gsd, 0.02 * gsd)
    nadir = spread(off_nadir, 2.5)
    box_entry = {
        "ID": -1,
        "box": pixel_box,
        "category": location.category,
        "crowd_rank": round(float(rng.uniform(0.3, 1.0)), 6),
        "epsg": "4326",
        "raw_category": _raw_category(location.category),
        "raw_location": _wkt_box(min(blons), min(blats), max(blons), max(blats)),
        "spatial_reference": "GCS_WGS_1984",
    }
    visible = {
        "ID": int(rng.integers(1000, 999_999)),
        "box": pixel_box,
        "category": location.category,
        "visible": "True",
    }
    record = {
        "approximate_wavelengths": [661, 545, 477],
        # the dataset sometimes stores one object instead of a list
        "bounding_boxes": box_entry if rng.random() < 0.1 else [box_entry, visible],
        "catalog_id": PLATFORMS[platform] + f"{int(rng.integers(16**10)):010X}",
        "cloud_cover": cloud,
        "country_code": COUNTRY_CODES.get(location.aoi.name, "USA"),
        "epsg": "4326",
        "gsd": gsd,
        "img_filename": f"{name}.tif",
        "img_height": rows,
        "img_width": cols,
        "mean_pixel_height": (max(lats) - min(lats)) / rows,
        "mean_pixel_width": (max(lons) - min(lons)) / cols,
        "multi_resolution_dbl": 4 * gsd,
        "multi_resolution_end_dbl": 4 * pan["end"],
        "multi_resolution_max_dbl": 4 * pan["max"],
        "multi_resolution_min_dbl": 4 * pan["min"],
        "multi_resolution_start_dbl": 4 * pan["start"],
        "off_nadir_angle_dbl": off_nadir,
        "off_nadir_angle_end_dbl": nadir["end"],
        "off_nadir_angle_max_dbl": nadir["max"],
        "off_nadir_angle_min_dbl": nadir["min"],
        "off_nadir_angle_start_dbl": nadir["start"],
        "pan_resolution_dbl": gsd,
        "pan_resolution_end_dbl": pan["end"],
        "pan_resolution_max_dbl": pan["max"],
        "pan_resolution_min_dbl": pan["min"],
        "pan_resolution_start_dbl": pan["start"],
        "raw_location": _wkt_box(min(lons), min(lats), max(lons), max(lats)),
        "scan_direction": "Forward" if rng.random() < 0.5 else "Reverse",
        "sensor_platform_name": platform,
        "spatial_reference": "GCS_WGS_1984",
        "sun_azimuth_dbl": sun_azimuth,
        "sun_azimuth_max_dbl": sun_azimuth + rng.uniform(0, 0.8),
        "sun_azimuth_min_dbl": sun_azimuth - rng.uniform(0, 0.8),
        "sun_elevation_dbl": 90 - zenith,
        "sun_elevation_max_dbl": 90 - zenith + rng.uniform(0, 0.2),
        "sun_elevation_min_dbl": 90 - zenith - rng.uniform(0, 0.2),
        "target_azimuth_dbl": target_azimuth,
        "target_azimuth_end_dbl": (target_azimuth - rng.uniform(0, 12)) % 360,
        "target_azimuth_max_dbl": (target_azimuth + rng.uniform(0, 12)) % 360,
        "target_azimuth_min_dbl": (target_azimuth - rng.uniform(0, 12)) % 360,
        "target_azimuth_start_dbl": (target_azimuth + rng.uniform(0, 12)) % 360,
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "utm": _utm_label(location.aoi.epsg, lat),
    }
    return record


def build_fmow(truth: Truth, out_dir: Path, rng: np.random.Generator, progress=None) -> dict:
    """Write the fMoW-rgb tree under ``out_dir/fmow`` and return counts for world.json."""
    root = Path(out_dir) / PART_DIR / TREE
    root.mkdir(parents=True, exist_ok=True)
    locations = _choose_locations(truth, rng)
    val = rng.random(len(locations)) < VAL_SHARE
    if len(locations) > 1 and not val.any():  # both splits always exist
        val[int(rng.integers(1, len(locations)))] = True
    if val.all():
        val[0] = False
    numbers: dict[tuple[str, str], int] = {}
    for location, in_val in zip(locations, val, strict=True):
        location.split = "val" if in_val else "train"
        key = (location.split, location.category)
        numbers[key] = numbers.get(key, -1) + 1
        location.name = f"{location.category}_{numbers[key]}"
    plans = [(location, _acquisitions(location, rng, truth.scale)) for location in locations]
    if progress is not None:
        progress.set_total(sum(len(times) for _, times in plans))
    by_aoi = {aoi.name: _AoiFeatures(truth, aoi) for aoi in truth.aois}
    rows, n_images, total_bytes = [], 0, 0
    for location, times in plans:
        folder = root / location.split / location.category / location.name
        folder.mkdir(parents=True, exist_ok=True)
        order = rng.permutation(len(times))  # k is not chronological
        for when, k in zip(times, order, strict=True):
            grid, gsd = _frame(location, rng)
            cloud = int(rng.choice([0, 0, 0, 0, 0, 0, 8, 15, 30]))
            sky = Sky(
                salt=int(rng.integers(1 << 30)),
                cloud_cover=cloud / 100,
                haze=float(rng.uniform(0.0, 0.04)),
                gain=float(rng.uniform(0.92, 1.08)),
                shadow_shift=(float(rng.uniform(-40, 40)), float(rng.uniform(-40, 40))),
            )
            jpeg = _render(by_aoi[location.aoi.name].near(grid), location, grid, when, sky)
            record = _record(location, int(k), grid, gsd, when, cloud, rng)
            stem = folder / f"{location.name}_{k}_rgb"
            stem.with_suffix(".jpg").write_bytes(jpeg)
            stem.with_suffix(".json").write_text(json.dumps(record, indent=1, sort_keys=True))
            total_bytes += len(jpeg)
            n_images += 1
            if progress is not None:
                progress.advance()
        rows.append(
            {
                "split": location.split,
                "category": location.category,
                "location": location.name,
                "aoi": location.aoi.name,
                "fid": location.fid,
                "truth_class": location.cls,
                "n_images": len(times),
                "first": times[0].isoformat(),
                "last": times[-1].isoformat(),
            }
        )
    (root / "README.md").write_text(
        "fMoW-rgb layout: <split>/<category>/<category>_<n>/<category>_<n>_<k>_rgb.{jpg,json}\n"
        "Images of the geoprep demo world, rendered from its land-cover truth.\n"
    )
    pd.DataFrame(rows).to_csv(root.parent / MANIFEST, index=False)
    categories = pd.Series([location.category for location in locations]).value_counts()
    return {
        "locations": len(locations),
        "images": n_images,
        "splits": {s: int(sum(loc.split == s for loc in locations)) for s in ("train", "val")},
        "categories": {str(k): int(v) for k, v in sorted(categories.items())},
        "bytes": int(total_bytes),
    }


def fmow_part(ctx: PartContext) -> dict:
    """World part ``fmow``: the fMoW-rgb tree."""
    return build_fmow(ctx.truth, ctx.out_dir, ctx.rng, ctx.progress)

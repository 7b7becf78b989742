"""Builds the demo world directory: ground truth, imagery blobs, STAC catalogs and world.json.

``build_world`` writes into a temporary sibling directory and renames it into place when every
part has finished, so a world directory is either complete or absent. Parts run in the order of
:data:`WORLD_PARTS`; each gets a :class:`PartContext` (truth, output directory, its own random
generator derived from the seed and its name, progress) and returns a JSON-able summary that
lands in ``world.json``. Later parts (OSM extract, Overpass features, audio recordings, fMoW
tree) are added by appending to :data:`WORLD_PARTS`; those that read only the truth
(:data:`BESIDE_PARTS`) are built in a second process while the others run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rasterio.transform import Affine

from geoprep.core.errors import UserError
from geoprep.demo import stac_items
from geoprep.demo.aporee_world import aporee_part
from geoprep.demo.fmow_world import fmow_part
from geoprep.demo.landsat_products import write_landsat
from geoprep.demo.landscape import build_truth
from geoprep.demo.naip_products import render_naip, write_naip
from geoprep.demo.osm_world import osm_part
from geoprep.demo.products import Scene, Shot
from geoprep.demo.render import Grid, Sky, Surface
from geoprep.demo.s1_products import write_s1
from geoprep.demo.s2_products import mgrs_tile, s2_baseline, write_s2
from geoprep.demo.sensors import ground_views, solar_angles
from geoprep.demo.truth import SEASON_DATES, SITES, Aoi, Truth

log = logging.getLogger(__name__)

WORLD_VERSION = "1"
#: Pixel size (m) the optical scenes are rendered at before area-averaging to each sensor.
CANVAS_RES = 5.0
#: Margin (m) rendered around each AOI so offset grids (Landsat's) fit inside the canvas.
CANVAS_PAD = 60.0


@dataclass(frozen=True)
class ImagingPlan:
    """Which years and seasons each sensor images at a world scale."""

    years: tuple[int, ...]
    s2_seasons: tuple[str, ...]
    landsat_seasons: tuple[str, ...]
    s1_seasons: tuple[str, ...]
    naip_years: tuple[int, ...]  # among ``years``, so every flight has satellite scenes near it
    # metres; NAIP covers a centred sub-square of the US AOI (all of it at the small scale, so
    # the CSF demo sets have room for a thousand patches that barely overlap)
    naip_side: float
    # Sentinel-2 passes per season, ten days apart: cloud regimes differ between them, so a
    # builder has a clear scene to fall back on when the best-dated one is cloudy.
    s2_revisits: int = 1


ALL_SEASONS = tuple(SEASON_DATES)
PLANS = {
    "tiny": ImagingPlan(
        years=(2019, 2022),
        s2_seasons=("spring", "summer"),
        landsat_seasons=("summer",),
        s1_seasons=("summer",),
        naip_years=(2019, 2022),
        naip_side=960,
    ),
    "small": ImagingPlan(
        years=(2019, 2022),
        s2_seasons=ALL_SEASONS,
        landsat_seasons=ALL_SEASONS,
        s1_seasons=("spring", "autumn"),
        naip_years=(2019, 2022),
        naip_side=5760,
        s2_revisits=2,
    ),
    "full": ImagingPlan(
        years=(2019, 2020, 2021, 2022),
        s2_seasons=ALL_SEASONS,
        landsat_seasons=ALL_SEASONS,
        s1_seasons=ALL_SEASONS,
        naip_years=(2019, 2021),
        naip_side=5760,
        s2_revisits=3,
    ),
}
#: Landsat WRS-2 path/row over each site, and the NAIP state of the one US site.
WRS = {"iowa": (26, 31), "bavaria": (193, 26), "victoria": (92, 85)}
NAIP_STATES = {"iowa": "ia"}


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


class _Tally:
    """Forwards progress so totals declared by successive parts add up on one bar."""

    def __init__(self, outer) -> None:
        self.outer, self.done, self.base = outer or _NoProgress(), 0, 0

    def start_part(self) -> None:
        self.base = self.done

    def set_total(self, total: int | None) -> None:
        self.outer.set_total(None if total is None else self.base + total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.outer.advance(n)


@dataclass
class PartContext:
    """What a world part gets: the truth, where to write, its own RNG, progress, and a
    ``shared`` dict through which parts hand data to later parts (not written anywhere)."""

    truth: Truth
    out_dir: Path
    rng: np.random.Generator
    progress: _Tally
    scale: str
    seed: int
    shared: dict = field(default_factory=dict)


@dataclass
class WorldManifest:
    """Summary of a built world, written as ``world.json``."""

    seed: int
    scale: str
    version: str
    aois: list[dict]
    sensors: dict[str, int]
    parts: dict[str, dict]
    counts: dict[str, int]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> WorldManifest:
        if not path.exists():
            raise UserError(f"{path} does not exist; build a world with `geoprep demo-world OUT`")
        return cls(**json.loads(path.read_text()))


def _swath(aoi: Aoi, rng: np.random.Generator, heading: float) -> tuple[float, float, float]:
    """A swath edge parallel to the ground track (``heading`` degrees) cutting off 20-45 %."""
    normal = np.radians(heading + 90.0)
    a, b = float(np.sin(normal)), float(np.cos(normal))
    if rng.random() < 0.5:
        a, b = -a, -b
    west, south, east, north = aoi.bounds_utm
    centre = a * (west + east) / 2 + b * (south + north) / 2
    return a, b, float(centre + (0.5 - rng.uniform(0.2, 0.45)) * aoi.side)


def plan_shots(truth: Truth, scale: str, rng: np.random.Generator) -> list[Shot]:
    """Every acquisition of the world, with its sky and product details, in a fixed order."""
    plan = PLANS[scale]
    shots: list[Shot] = []
    for index, (aoi, site) in enumerate(zip(truth.aois, SITES, strict=True)):
        planner = _AoiPlanner(aoi, site, index, plan, rng.spawn(1)[0])
        for year in plan.years:
            for season in ALL_SEASONS:
                month, day = SEASON_DATES[season]
                base = dt.date(year, month, day)
                if season in plan.s2_seasons:
                    shots.extend(
                        planner.sentinel2(season, base + dt.timedelta(days=10 * visit))
                        for visit in range(plan.s2_revisits)
                    )
                if season in plan.landsat_seasons:
                    shots.append(planner.landsat(season, base))
                if season in plan.s1_seasons:
                    shots.append(planner.sentinel1(season, base))
        if aoi.name in NAIP_STATES:
            shots.extend(planner.naip(year) for year in plan.naip_years)
    return shots


class _AoiPlanner:
    """Draws the acquisitions of one AOI: dates, skies, orbits and product names.

    Cloud regimes are dealt from a shuffled deck so every AOI gets clear, partly cloudy and
    cloudy scenes; partly cloudy passes of one relative orbit see the AOI at their swath edge.
    """

    def __init__(self, aoi: Aoi, site, index: int, plan: ImagingPlan, rng: np.random.Generator):
        self.aoi, self.site, self.index, self.plan, self.r = aoi, site, index, plan, rng
        west, south, east, north = aoi.bounds_utm
        self.tile = mgrs_tile(aoi.epsg, (west + east) / 2, (south + north) / 2, site.lat)
        self.s2_orbits = [int(o) for o in rng.choice(np.arange(1, 144), 2, replace=False)]
        self.s1_orbits = [int(o) for o in rng.choice(np.arange(1, 176), 2, replace=False)]
        n_seasons = len(plan.years) * len(plan.s2_seasons)
        first_pass = rng.permutation(
            np.resize(["clear", "partial", "cloudy", "partial"], n_seasons)
        )
        # Later passes of a season are clear where the first was not (and vice versa), as when
        # weather changes between revisits; so every season has a usable scene to fall back on.
        later = {
            "clear": ["cloudy", "partial"],
            "partial": ["clear", "cloudy"],
            "cloudy": ["clear", "partial"],
        }
        self.s2_regimes = [
            regime
            for first in first_pass
            for regime in ([str(first)] + later[str(first)])[: plan.s2_revisits]
        ]
        n_ls = len(plan.years) * len(plan.landsat_seasons)
        self.ls_regimes = list(
            rng.permutation(np.resize(["partial", "clear", "cloudy", "clear"], n_ls))
        )
        self.counts = Counter()

    def _when(self, day: dt.date, local_hour: float, spread_s: int) -> dt.datetime:
        """UTC time of a local solar hour at the site, plus up to ``spread_s`` seconds."""
        r = self.r
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        hours = local_hour - self.site.lon / 15
        return start + dt.timedelta(
            hours=hours,
            seconds=int(r.integers(0, spread_s)),
            microseconds=int(r.integers(0, 999_999)),
        )

    def _sky(self, regime: str, when: dt.datetime, swath) -> Sky:
        r = self.r
        cover = {"clear": 0.0, "partial": r.uniform(0.1, 0.4), "cloudy": r.uniform(0.6, 0.92)}[
            regime
        ]
        zenith, azimuth = solar_angles(when, self.site.lat, self.site.lon)
        # cloud shadows fall away from the sun, further when the sun is low
        reach = min(r.uniform(800, 2000) * np.tan(np.radians(zenith)), 3000.0)
        shift = (-np.sin(np.radians(azimuth)) * reach, -np.cos(np.radians(azimuth)) * reach)
        cirrus = float(r.uniform(0.1, 0.25)) if regime == "partial" and r.random() < 0.4 else 0.0
        return Sky(
            salt=int(r.integers(1 << 30)),
            cloud_cover=float(cover),
            cirrus=cirrus,
            haze=float(r.uniform(0.0, 0.03)),
            gain=float(r.uniform(0.94, 1.06)),
            shadow_shift=(float(shift[0]), float(shift[1])),
            swath=swath,
        )

    def sentinel2(self, season: str, base: dt.date) -> Shot:
        r, k = self.r, self.counts["s2"]
        self.counts["s2"] += 1
        when = self._when(base + dt.timedelta(days=int(r.integers(-6, 7))), 10.5, 600)
        when = when.replace(microsecond=24_000)
        regime = self.s2_regimes[k]
        # Some partly cloudy passes see the AOI at their swath edge (a nodata wedge); the clear
        # pass of each season never does, so every season keeps one usable scene.
        edge = regime == "partial" and (k + self.index) % 2 == 0
        swath = _swath(self.aoi, r, 195.0) if edge else None
        sky = self._sky(regime, when, swath)
        sat = "S2A" if r.random() < 0.5 else "S2B"
        launch = dt.date(2015, 6, 23) if sat == "S2A" else dt.date(2017, 3, 7)
        meta = {
            "sat": sat,
            "platform": f"Sentinel-{sat[1:]}",
            "tile": self.tile,
            "orbit": self.s2_orbits[int(edge)],
            "baseline": s2_baseline(when.date()),
            "absolute_orbit": int((when.date() - launch).days * 14.3) + 1,
            "generated": when + dt.timedelta(hours=float(r.uniform(2, 5))),
            "centre": "2BPS" if sat == "S2B" else "2APS",
            "humidity": float(r.random()),
            "sun": solar_angles(when, self.site.lat, self.site.lon),
        }
        return Shot("sentinel-2-l2a", self.aoi.name, season, when, sky, meta)

    def landsat(self, season: str, base: dt.date) -> Shot:
        r, k = self.r, self.counts["landsat"]
        self.counts["landsat"] += 1
        when = self._when(base + dt.timedelta(days=int(r.integers(1, 9))), 10.1, 300)
        sky = self._sky(self.ls_regimes[k], when, None)
        nine = when.year >= 2022 and r.random() < 0.5
        path, row = WRS[self.aoi.name]
        sensor = "LC09" if nine else "LC08"
        created = when + dt.timedelta(days=int(r.integers(3, 12)))
        scene = f"{sensor}_L2SP_{path:03d}{row:03d}_{when:%Y%m%d}"
        summer_doy = 200 if self.site.lat > 0 else 17
        seasonal = np.cos(2 * np.pi * (when.timetuple().tm_yday - summer_doy) / 365.25)
        meta = {
            "platform": "landsat-9" if nine else "landsat-8",
            "path": path,
            "row": row,
            "product": f"{scene}_{created:%Y%m%d}_02_T1",
            "item_id": f"{scene}_02_T1",
            "created": created,
            "scene_id": f"LC{sensor[3]}{path:03d}{row:03d}{when:%Y%j}LGN00",
            "surface_kelvin": 283.0 + 15.0 * float(seasonal),
            "sun": solar_angles(when, self.site.lat, self.site.lon),
        }
        return Shot("landsat-c2-l2", self.aoi.name, season, when, sky, meta)

    def sentinel1(self, season: str, base: dt.date) -> Shot:
        r, k = self.r, self.counts["s1"]
        self.counts["s1"] += 1
        ascending = bool(r.random() < 0.5)
        day = base + dt.timedelta(days=int(r.integers(-5, 6)))
        when = self._when(day, 18.0 if ascending else 6.0, 900)
        edge = (k + self.index) % 4 == 2
        swath = _swath(self.aoi, r, 345.0 if ascending else 195.0) if edge else None
        sat = "S1B" if when.year < 2022 and r.random() < 0.5 else "S1A"
        launch = dt.date(2014, 4, 3) if sat == "S1A" else dt.date(2016, 4, 25)
        meta = {
            "sat": sat,
            "platform": f"SENTINEL-1{sat[-1]}",
            "designator": "2014-016A" if sat == "S1A" else "2016-025A",
            "orbit": self.s1_orbits[int(ascending)],
            "orbit_state": "ascending" if ascending else "descending",
            "absolute_orbit": int((when.date() - launch).days * 175 / 12) + 1,
            "datatake": int(r.integers(0x10000, 0xFFFFF)),
            "unique": f"{int(r.integers(0, 0xFFFF)):04X}",
            "noise_seed": int(r.integers(1 << 62)),
        }
        return Shot("sentinel-1-rtc", self.aoi.name, season, when, Sky(0, swath=swath), meta)

    def naip(self, year: int) -> Shot:
        """A summer NAIP flight over the centre of the AOI, named like a quarter quad."""
        r, lat, lon = self.r, self.site.lat, self.site.lon
        row, col = int((np.ceil(lat) - lat) / 0.125), int((np.ceil(-lon) + lon) / 0.125)
        quad = f"{int(lat):02d}{int(-lon):03d}{8 * row + (7 - col) + 1:02d}"
        quadrant = ("n" if (lat * 16) % 2 >= 1 else "s") + ("e" if (-lon * 16) % 2 < 1 else "w")
        day = dt.date(year, 7, 1) + dt.timedelta(days=int(r.integers(0, 50)))
        processed = day + dt.timedelta(days=int(r.integers(60, 120)))
        name = f"m_{quad}_{quadrant}_{self.aoi.epsg % 100}_100_{day:%Y%m%d}_{processed:%Y%m%d}"
        meta = {
            "state": NAIP_STATES[self.aoi.name],
            "name": name,
            "cm": "100",
            "block": quad[:5],
            "side": min(self.plan.naip_side, self.aoi.side),
            "noise_seed": int(r.integers(1 << 62)),
        }
        when = dt.datetime(year, day.month, day.day, 16, tzinfo=dt.UTC)
        return Shot("naip", self.aoi.name, "summer", when, Sky(0), meta)


def _canvas(aoi: Aoi) -> Grid:
    """The render grid of an AOI: :data:`CANVAS_RES` pixels over the AOI plus a margin."""
    west, south, east, north = aoi.bounds_utm
    cols = round((east - west + 2 * CANVAS_PAD) / CANVAS_RES)
    transform = Affine(CANVAS_RES, 0, west - CANVAS_PAD, 0, -CANVAS_RES, north + CANVAS_PAD)
    return Grid(aoi.epsg, transform, (cols, cols))


def _naip_grid(aoi: Aoi, side: float) -> Grid:
    """A centred sub-square of the AOI on a 1 m grid in NAD83 / UTM (EPSG:269xx)."""
    west = aoi.bounds_utm[0] + ((aoi.side - side) / 2 // 60) * 60
    north = aoi.bounds_utm[3] - ((aoi.side - side) / 2 // 60) * 60
    return Grid(
        26900 + aoi.epsg % 100, Affine(1.0, 0, west, 0, -1.0, north), (int(side), int(side))
    )


def imagery_part(ctx: PartContext) -> dict:
    """Render every planned acquisition and write its files under ``blobs/``."""
    truth, blobs = ctx.truth, ctx.out_dir / "blobs"
    plan = PLANS[ctx.scale]
    shots = plan_shots(truth, ctx.scale, ctx.rng)
    ctx.progress.set_total(len(shots))
    scenes: list[Scene] = []
    coverage: dict[str, dict] = {}
    for aoi, site in zip(truth.aois, SITES, strict=True):
        canvas = _canvas(aoi)
        mine = [s for s in shots if s.aoi == aoi.name]
        for year in plan.years:
            surface = Surface(truth, aoi.name, year, canvas, site.lat)
            for season in ALL_SEASONS:
                todo = [
                    s
                    for s in mine
                    if s.when.year == year and s.season == season and s.collection != "naip"
                ]
                if not todo:
                    continue
                month, day = SEASON_DATES[season]
                radar = any(s.collection == "sentinel-1-rtc" for s in todo)
                ground = ground_views(surface, dt.date(year, month, day), aoi.bounds_utm, radar)
                for shot in todo:
                    if shot.collection == "sentinel-2-l2a":
                        scenes.append(write_s2(shot, ground, blobs))
                    elif shot.collection == "landsat-c2-l2":
                        scenes.append(write_landsat(shot, ground, blobs))
                    else:
                        rng = np.random.default_rng(shot.meta["noise_seed"])
                        scenes.append(write_s1(shot, ground, blobs, rng))
                    ctx.progress.advance()
        for shot in (s for s in mine if s.collection == "naip"):
            grid = _naip_grid(aoi, shot.meta["side"])
            coverage[aoi.name] = {"epsg": grid.crs, "bounds": list(grid.bounds)}
            flight = np.random.default_rng(shot.meta["noise_seed"])
            reflect = render_naip(truth, aoi.name, grid, shot.when.date(), site.lat, flight)
            scenes.append(write_naip(shot, grid, reflect, blobs))
            ctx.progress.advance()
    scenes.sort(key=lambda s: (s.collection, s.datetime, s.id))
    ctx.shared["scenes"] = scenes
    counts = Counter(s.collection for s in scenes)
    return {
        "scenes": dict(sorted(counts.items())),
        "files": sum(len(s.assets) for s in scenes),
        "naip_coverage": coverage,
    }


def stac_part(ctx: PartContext) -> dict:
    """Write the STAC catalogs (pc and local) and the stac-geoparquet files."""
    ctx.progress.set_total(1)
    summary = stac_items.write_stac(ctx.shared["scenes"], ctx.out_dir)
    ctx.progress.advance()
    return summary


# EXTENSION POINT: the parts of a world, run in order after the truth is written. Append
# ``(name, callable)`` pairs; the callable takes a :class:`PartContext`, writes under
# ``ctx.out_dir`` and returns a JSON-able summary that world.json keeps under ``parts[name]``.
# Its RNG depends only on the seed and the part's name, so adding a part changes no other part.
WORLD_PARTS: list[tuple[str, Callable[[PartContext], dict]]] = [
    ("imagery", imagery_part),
    ("stac", stac_part),
    ("osm", osm_part),
    ("aporee", aporee_part),
    ("fmow", fmow_part),
]
#: Parts that read only the truth (no ``shared`` data) and are built in a second process while
#: the others run: on two cores the recordings and the fMoW tree cost little beside the imagery.
#: Each part's RNG depends only on the seed and its name, so the bytes are the same either way.
BESIDE_PARTS = ("aporee", "fmow")


def _part_beside(name: str, truth_dir: str, out_dir: str, seed: int, scale: str) -> dict:
    """Build one part in a worker process (no progress: the main process reports its own)."""
    from geoprep.demo.truth import Truth

    part = dict(WORLD_PARTS)[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    ctx = PartContext(Truth.read(Path(truth_dir)), Path(out_dir), rng, _Tally(None), scale, seed)
    return part(ctx)


def build_world(out: Path, seed: int = 0, scale: str = "small", progress=None) -> WorldManifest:
    """Build the demo world into ``out`` and return its manifest.

    ``out`` must be absent, empty or hold an earlier demo world (it has ``world.json``), which
    is replaced only once the new world is complete.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "world.json").exists():
        raise UserError(
            f"{out} exists and is not a demo world (no world.json); choose an empty directory"
        )
    truth = build_truth(seed, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tally = _Tally(progress)
    # spawn, not fork: GDAL and open handles do not survive a fork
    beside = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        truth.write(tmp / "truth")
        built: dict[str, dict] = {}
        futures = {
            name: beside.submit(_part_beside, name, str(tmp / "truth"), str(tmp), seed, scale)
            for name in BESIDE_PARTS
        }
        shared: dict = {}
        for name, part in WORLD_PARTS:
            if name in futures:
                continue
            tally.start_part()
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            log.info("building demo world part %s", name)
            built[name] = part(PartContext(truth, tmp, rng, tally, scale, seed, shared))
        for name, future in futures.items():
            log.info("waiting for demo world part %s (built beside the others)", name)
            built[name] = future.result()
        parts = {name: built[name] for name, _ in WORLD_PARTS}
        scenes = shared.get("scenes", [])
        manifest = WorldManifest(
            seed=seed,
            scale=scale,
            version=WORLD_VERSION,
            aois=[asdict(a) for a in truth.aois],
            sensors=dict(sorted(Counter(s.collection for s in scenes).items())),
            parts=parts,
            counts={
                "features": len(truth.features),
                "cities": len(truth.cities),
                "items": len(scenes),
            },
        )
        manifest.write(tmp / "world.json")
        beside.shutdown()
        _swap_into_place(tmp, out)
    except BaseException:
        for process in list((beside._processes or {}).values()):  # no public handle
            process.terminate()
        beside.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and then deleted."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)

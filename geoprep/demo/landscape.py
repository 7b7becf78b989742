"""Generates the demo world's ground truth: a procedural landscape for every AOI site.

:func:`build_truth` lays out each site's AOI with a :class:`Landscape` (a river with bridges and
dams, a lake with islands and breakwaters, towns with stadiums and substations, forests, golf
courses, quarries, bare rock, and fields with farm buildings in the gaps), including the
land-cover change of :data:`~geoprep.demo.truth.CHANGE_YEAR`, and returns it as a
:class:`~geoprep.demo.truth.Truth` in EPSG:4326.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import Transformer
from shapely import affinity, transform
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from geoprep.core.errors import UserError
from geoprep.demo.rural import add_rural_details
from geoprep.demo.shapes import blob, rect
from geoprep.demo.truth import (
    ALWAYS_FROM,
    ALWAYS_TO,
    CHANGE_YEAR,
    SCALE_SIDES,
    SITES,
    Truth,
    make_aoi,
)

#: Fields each town builds over in CHANGE_YEAR (the land-cover change CACo has to notice).
FIELDS_BUILT_PER_TOWN = 2


def build_truth(seed: int = 0, scale: str = "small") -> Truth:
    """Generate the ground truth for ``seed`` at ``scale`` (one of :data:`SCALE_SIDES`)."""
    if scale not in SCALE_SIDES:
        raise UserError(f"unknown demo-world scale {scale!r}; expected one of {list(SCALE_SIDES)}")
    side = SCALE_SIDES[scale]
    aois, frames, city_rows = [], [], []
    next_fid = 0
    for index, site in enumerate(SITES):
        aoi = make_aoi(site, side)
        aois.append(aoi)
        rng = np.random.default_rng([seed, index, 7919])
        plan = Landscape(side, rng)
        to_lonlat = Transformer.from_crs(aoi.epsg, 4326, always_xy=True)
        west, south = aoi.bounds_utm[:2]
        rows = []
        for feat in plan.features:
            geom = affinity.translate(feat.geometry, west, south)
            rows.append(
                {
                    "fid": next_fid,
                    "aoi": aoi.name,
                    "cls": feat.cls,
                    "valid_from_year": feat.valid_from,
                    "valid_to_year": feat.valid_to,
                    "geometry": _reproject(geom, to_lonlat),
                }
            )
            next_fid += 1
        frames.append(pd.DataFrame(rows))
        for name, (x, y), population in zip(
            site.cities, plan.city_points, plan.populations, strict=False
        ):
            lon, lat = to_lonlat.transform(west + x, south + y)
            city_rows.append(
                {"name": name, "lat": lat, "lon": lon, "population": population, "aoi": aoi.name}
            )
    table = pd.concat(frames, ignore_index=True)
    features = gpd.GeoDataFrame(table, geometry="geometry", crs=4326)
    features = features.astype(
        {"fid": "int64", "valid_from_year": "int64", "valid_to_year": "int64"}
    )
    cities = pd.DataFrame(city_rows, columns=["name", "lat", "lon", "population", "aoi"])
    cities[["lat", "lon"]] = cities[["lat", "lon"]].round(6)
    return Truth(aois, features, cities, seed, scale)


def _reproject(geom: BaseGeometry, transformer: Transformer) -> BaseGeometry:
    def apply(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return transform(geom, apply)


# --- procedural landscape, in metres from the AOI's south-west corner -------------------------


@dataclass
class _Feature:
    cls: str
    geometry: BaseGeometry
    valid_from: int = ALWAYS_FROM
    valid_to: int = ALWAYS_TO


class Landscape:
    """Lays out rivers, lakes, towns, fields ... in an AOI of ``side`` metres with ``rng``.

    Big features are placed by rejection sampling so they do not overlap; small ones (bridges,
    dams, breakwaters, stadiums, farm buildings) sit on or inside the big ones on purpose.
    """

    def __init__(self, side: float, rng: np.random.Generator):
        self.side, self.rng = side, rng
        self.k = side / SCALE_SIDES["small"]  # linear size factor of large features
        area = self.k**2
        self.count = lambda n: max(1, round(n * area))
        self.features: list[_Feature] = []
        self.occupied: list[BaseGeometry] = []
        self.city_points: list[tuple[float, float]] = []
        self.populations: list[int] = []
        self._river()
        self._settlements()
        self._lake()
        for cls, n, radius, rough, aspect in (
            ("golf_course", 2, (220, 330), 0.2, 1.6),
            ("forest", 7, (200, 480), 0.35, 1.4),
            ("quarry", 2, (110, 200), 0.3, 1.2),
            ("bare_rock", 3, (60, 170), 0.5, 1.3),
        ):
            for _ in range(self.count(n)):
                self._scatter(cls, radius, rough, aspect)
        self._quarry_into_forest()
        add_rural_details(self)
        self._fields()

    def add(self, cls, geometry, occupy=False, valid_from=ALWAYS_FROM, valid_to=ALWAYS_TO):
        feature = _Feature(cls, geometry, valid_from, valid_to)
        self.features.append(feature)
        if occupy:
            self.occupied.append(geometry)
        return feature

    def free(self, geometry: BaseGeometry, margin: float) -> bool:
        inner = box(margin / 2, margin / 2, self.side - margin / 2, self.side - margin / 2)
        if not inner.contains(geometry):
            return False
        return all(geometry.distance(other) >= margin for other in self.occupied)

    def place(self, make, margin: float, tries: int = 200, central: float = 1.0):
        """Call ``make(x, y)`` at random spots until the shape fits; None if it never does.

        Spots are drawn from the central ``central`` fraction of the AOI's side.
        """
        low, high = self.side * (1 - central) / 2, self.side * (1 + central) / 2
        for _ in range(tries):
            x, y = self.rng.uniform(low, high, 2)
            shape = make(x, y)
            if shape is not None and self.free(shape, margin):
                return shape
        return None

    def _river(self) -> None:
        rng, side = self.rng, self.side
        xs = np.arange(-200.0, side + 200.0, 20.0)
        wavelength = rng.uniform(1.2, 2.2) * side
        ys = (
            rng.uniform(0.3, 0.7) * side
            + 0.12 * side * np.sin(2 * np.pi * xs / wavelength + rng.uniform(0, 6.3))
            + 0.03 * side * np.sin(2 * np.pi * xs / (wavelength / 3.7) + rng.uniform(0, 6.3))
        )
        centre = np.column_stack([xs, ys])
        if rng.random() < 0.5:  # some rivers run north-south
            centre = centre[:, ::-1]
        width = rng.uniform(45, 70)
        line = LineString(centre)
        river = line.buffer(width / 2, cap_style="flat").intersection(box(0, 0, side, side))
        self.add("water", river, occupy=True)
        n_bridges, n_dams = self.count(3), self.count(2)
        spots = np.linspace(0.15, 0.85, n_bridges + n_dams)
        spots = spots + rng.uniform(-0.03, 0.03, spots.size)
        kinds = rng.permutation(["bridge"] * n_bridges + ["dam"] * n_dams)
        for spot, kind in zip(spots, kinds, strict=True):
            here = line.interpolate(200 + spot * side)
            ahead = line.interpolate(200 + spot * side + 5)
            angle = np.degrees(np.arctan2(ahead.y - here.y, ahead.x - here.x)) + 90
            if kind == "bridge":
                shape = rect(
                    here.x, here.y, width + rng.uniform(25, 45), rng.uniform(12, 24), angle
                )
            else:
                shape = rect(
                    here.x, here.y, width + rng.uniform(60, 90), rng.uniform(22, 32), angle
                )
            self.add(kind, shape)

    def _lake(self) -> None:
        rng = self.rng
        radius = max(190.0, 520.0 * self.k) * rng.uniform(0.85, 1.15)
        lake = None
        for shrink in (1.0, 0.75, 0.55):  # crowded (tiny) AOIs get a smaller lake, not none
            lake = self.place(lambda x, y, r=radius * shrink: blob(x, y, r, rng, 0.25), 100)
            if lake is not None:
                radius *= shrink
                break
        if lake is None:
            return
        centre = lake.centroid
        islands = []
        for _ in range(1 + int(rng.random() < 0.6)):
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.35) * radius
            island = blob(
                centre.x + dist * np.cos(angle),
                centre.y + dist * np.sin(angle),
                rng.uniform(0.1, 0.17) * radius,
                rng,
                0.3,
            )
            if lake.buffer(-20).contains(island) and all(island.distance(i) > 20 for i in islands):
                islands.append(island)
        lake = lake.difference(unary_union(islands))
        # a pond beside the lake makes the lake's polygon a true multipolygon
        angle = rng.uniform(0, 2 * np.pi)
        far = radius * 1.6 + 60
        pond = blob(centre.x + far * np.cos(angle), centre.y + far * np.sin(angle), 55, rng, 0.2)
        if self.free(pond, 20) and pond.distance(lake) > 15:
            lake = MultiPolygon([lake, pond])
        self.add("water", lake, occupy=True)
        for _ in range(self.count(2)):
            pond = self.place(lambda x, y: blob(x, y, rng.uniform(40, 90), rng, 0.3), margin=60)
            if pond is not None:
                self.add("water", pond, occupy=True)
        shore = Polygon(lake.geoms[0].exterior if isinstance(lake, MultiPolygon) else lake.exterior)
        for angle in rng.uniform(0, 360, self.count(3)):
            direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
            ray = LineString(
                [(centre.x, centre.y), tuple(np.array(centre.coords[0]) + direction * 3 * radius)]
            )
            hit = ray.intersection(shore.exterior)
            if hit.is_empty:
                continue
            hit = min(getattr(hit, "geoms", [hit]), key=lambda p: p.distance(centre))
            length = rng.uniform(50, 110)
            middle = np.array(hit.coords[0]) - direction * (length / 2 - 15)
            self.add("breakwater", rect(*middle, length, rng.uniform(9, 14), angle))

    def _settlements(self) -> None:
        rng = self.rng
        towns = [(max(280.0, 750.0 * self.k), rng.integers(12_000, 45_000))]
        towns += [(rng.uniform(170, 240), rng.integers(800, 4_000)) for _ in range(self.count(2))]
        stadiums_left = self.count(2)
        for number, (radius, population) in enumerate(towns):
            # the main town sits near the middle, so city-centred sampling stays in the AOI
            town = self.place(
                lambda x, y, r=radius: blob(x, y, r, rng, 0.3),
                margin=80,
                central=0.35 if number == 0 else 1.0,
            ) or self.place(lambda x, y, r=radius: blob(x, y, r, rng, 0.3), margin=80)
            if town is None:
                continue
            self.add("built_up", town, occupy=True)
            self.city_points.append((town.centroid.x, town.centroid.y))
            self.populations.append(int(population))
            core = town.buffer(-25)
            for _ in range(min(stadiums_left, 1 + int(radius > 400))):
                angle = rng.uniform(0, 180)
                stadium = self._inside(
                    core,
                    lambda x, y, a=angle: affinity.rotate(
                        affinity.scale(Point(x, y).buffer(1), 110, 85), a
                    ),
                )
                if stadium is not None:
                    self.add("stadium", stadium)
                    stadiums_left -= 1
        for _ in range(self.count(3)):
            towns_union = unary_union([f.geometry for f in self.features if f.cls == "built_up"])
            ring = towns_union.buffer(300).difference(towns_union.buffer(30))
            shape = self._inside(
                ring,
                lambda x, y: rect(
                    x, y, rng.uniform(70, 110), rng.uniform(50, 80), rng.uniform(0, 90)
                ),
                margin=30,
            )
            if shape is not None:
                self.add("substation", shape, occupy=True)

    def _inside(self, area: BaseGeometry, make, margin: float | None = None, tries: int = 200):
        """A shape from ``make(x, y)`` lying inside ``area`` (and free, if ``margin`` is given)."""
        if area.is_empty:
            return None
        west, south, east, north = area.bounds
        for _ in range(tries):
            shape = make(self.rng.uniform(west, east), self.rng.uniform(south, north))
            if area.contains(shape) and (margin is None or self.free(shape, margin)):
                return shape
        return None

    def _scatter(self, cls: str, radius: tuple[float, float], rough: float, aspect: float) -> None:
        rng = self.rng
        size = rng.uniform(*radius) * (max(self.k, 0.6) if cls in ("forest", "golf_course") else 1)
        angle = rng.uniform(0, 180)
        for shrink in (1.0, 0.7, 0.5):  # crowded (tiny) AOIs get smaller patches, not none
            shape = self.place(
                lambda x, y, r=size * shrink: blob(x, y, r, rng, rough, aspect, angle),
                margin=50 * shrink,
                tries=100,
            )
            if shape is not None:
                self.add(cls, shape, occupy=True)
                return

    def _quarry_into_forest(self) -> None:
        """From CHANGE_YEAR on, a quarry eats into one forest (land-cover change for CACo)."""
        forests = [f for f in self.features if f.cls == "forest"]
        if not forests:
            return
        forest = forests[int(self.rng.integers(len(forests)))]
        inner = forest.geometry.buffer(-30)
        if inner.is_empty:
            return
        spot = inner.representative_point()
        pit = blob(spot.x, spot.y, np.sqrt(forest.geometry.area / np.pi) * 0.45, self.rng, 0.2)
        pit = pit.intersection(inner)
        if pit.is_empty or pit.area < 2000:
            return
        forest.valid_to = CHANGE_YEAR - 1
        self.add("forest", forest.geometry.difference(pit), valid_from=CHANGE_YEAR)
        self.add("quarry", pit, valid_from=CHANGE_YEAR)

    def _fields(self) -> None:
        """A rotated grid of fields in the gaps; those nearest each town are built over later."""
        rng, side = self.rng, self.side
        angle = rng.uniform(-12, 12)
        blocked = unary_union(self.occupied).buffer(20)
        widths = rng.uniform(220, 420, 64)
        heights = rng.uniform(180, 360, 64)
        centre = side / 2
        fields = []
        y = -side * 0.75
        for h in heights:
            x = -side * 0.75
            for w in widths:
                cell = box(x + 6, y + 6, x + w - 6, y + h - 6)
                x += w
                cell = affinity.rotate(cell, angle, origin=(centre, centre))
                if not cell.intersects(box(0, 0, side, side)) or rng.random() < 0.12:
                    continue
                piece = cell.intersection(box(0, 0, side, side)).difference(blocked)
                if piece.is_empty:
                    continue
                piece = max(getattr(piece, "geoms", [piece]), key=lambda g: g.area)
                if piece.area > 0.4 * cell.area:
                    fields.append(piece)
            y += h
            if y > side * 1.75:
                break
        # towns grow: the fields nearest each town are built over (the main town's first), so
        # the change is seen around every town that Gaussian sampling centres on
        changed: set[int] = set()
        for town in self.city_points or [(centre, centre)]:
            by_distance = sorted(range(len(fields)), key=lambda i: fields[i].distance(Point(town)))
            changed.update([i for i in by_distance if i not in changed][:FIELDS_BUILT_PER_TOWN])
        for index, piece in enumerate(fields):
            until = CHANGE_YEAR - 1 if index in changed else ALWAYS_TO
            self.add("farmland", piece, valid_to=until)
            if index in changed:
                self.add("built_up", piece, valid_from=CHANGE_YEAR)
            if rng.random() < 0.35:
                self._farmstead(piece, angle, until)

    def _farmstead(self, field_shape: Polygon, angle: float, until: int) -> None:
        rng = self.rng
        west, south, east, north = field_shape.bounds
        corner = np.array(
            [west if rng.random() < 0.5 else east, south if rng.random() < 0.5 else north]
        )
        inner = field_shape.buffer(-12)
        for _ in range(int(rng.integers(1, 4))):
            for _ in range(30):
                x, y = corner + rng.uniform(-90, 90, 2)
                shed = rect(x, y, rng.uniform(25, 50), rng.uniform(14, 24), angle)
                if inner.contains(shed):
                    self.add("farm_building", shed, valid_to=until)
                    break

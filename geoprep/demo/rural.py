"""The countryside's small features: creeks with bridges, farm ponds with dams, woodlots, ...

A farmed landscape is dotted with features far smaller than its towns and forests: creeks
crossed by farm bridges, ponds held back by earth dams, woodlots, gravel pits, rock outcrops
and rural substations. They give every class of the OSM evaluation set dozens of polygons per
AOI (a real Iowa county has hundreds), each in a different setting among fields and meadows,
so a class is recognised by the feature itself, not by a handful of memorable places.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from shapely import affinity
from shapely.geometry import LineString, Point, box
from shapely.ops import unary_union

from geoprep.demo.shapes import blob, rect

if TYPE_CHECKING:
    from geoprep.demo.landscape import Landscape

#: Per small-scale AOI (scaled by area at other scales): class, count, radius range (m),
#: outline roughness and aspect ratio of the scattered features.
SCATTERED = (
    ("forest", 48, (35.0, 110.0), 0.35, 1.5),  # woodlots and shelterbelts
    ("quarry", 48, (30.0, 70.0), 0.3, 1.3),  # gravel and sand pits
    ("bare_rock", 48, (20.0, 60.0), 0.5, 1.6),  # outcrops and scree
)
#: Farm ponds (each behind an earth dam) and rural substations per small-scale AOI.
PONDS, SUBSTATIONS, CREEKS = 52, 48, 5
#: Metres between the places a creek gets a farm bridge.
BRIDGE_SPACING = 300.0


def add_rural_details(land: Landscape) -> None:
    """Creeks first (they run around what is already there), then the scattered features."""
    for _ in range(land.count(CREEKS)):
        _creek(land)
    rng = land.rng
    for cls, n, radius, rough, aspect in SCATTERED:
        for _ in range(land.count(n)):
            size, stretch = rng.uniform(*radius), aspect * rng.uniform(0.7, 1.0)
            outline = blob(0, 0, size, rng, rough, stretch, rng.uniform(0, 180))
            shape = land.place(
                lambda x, y, o=outline: affinity.translate(o, x, y), margin=30, tries=60
            )
            if shape is not None:
                land.add(cls, shape, occupy=True)
    for _ in range(land.count(PONDS)):
        _pond(land)
    for _ in range(land.count(SUBSTATIONS)):
        shape = land.place(
            lambda x, y: rect(x, y, rng.uniform(28, 60), rng.uniform(22, 40), rng.uniform(0, 90)),
            margin=30,
            tries=60,
        )
        if shape is not None:
            land.add("substation", shape, occupy=True)


def _creek(land: Landscape) -> None:
    """A meandering creek across the AOI, cut where it meets earlier features, with bridges."""
    rng, side = land.rng, land.side
    along = np.arange(-100.0, side + 100.0, 15.0)
    offset = rng.uniform(0.15, 0.85) * side
    across = (
        offset
        + 0.06
        * side
        * np.sin(2 * np.pi * along / (rng.uniform(0.6, 1.2) * side) + rng.uniform(0, 6.3))
        + 25.0 * np.sin(2 * np.pi * along / rng.uniform(150, 260) + rng.uniform(0, 6.3))
    )
    centre = np.column_stack([along, across])
    if rng.random() < 0.5:
        centre = centre[:, ::-1]
    line = LineString(centre)
    width = rng.uniform(8, 14)
    channel = line.buffer(width / 2, cap_style="flat").intersection(box(0, 0, side, side))
    if land.occupied:
        channel = channel.difference(unary_union(land.occupied).buffer(25))
    pieces = [p for p in getattr(channel, "geoms", [channel]) if p.area > 40 * width]
    if not pieces:
        return
    creek = unary_union(pieces)
    land.add("water", creek, occupy=True)
    # Bridges where the creek runs on for 25 m on both sides, so each crosses open water.
    clear = creek.buffer(1.0)
    for distance in np.arange(BRIDGE_SPACING / 2, line.length, BRIDGE_SPACING):
        distance += rng.uniform(-0.25, 0.25) * BRIDGE_SPACING
        here, ahead = line.interpolate(distance), line.interpolate(distance + 5)
        heading = np.degrees(np.arctan2(ahead.y - here.y, ahead.x - here.x))
        if not clear.contains(rect(here.x, here.y, 50, width * 0.8, heading)):
            continue
        deck = rng.uniform(6, 10)
        land.add("bridge", rect(here.x, here.y, width + rng.uniform(8, 16), deck, heading + 90))


def _pond(land: Landscape) -> None:
    """A farm pond with the earth dam that holds it, on its downhill (random) side."""
    rng = land.rng
    radius, heading = rng.uniform(18, 45), rng.uniform(0, 2 * np.pi)
    pond = blob(0, 0, radius, rng, 0.2, rng.uniform(1.0, 1.5), np.degrees(heading))
    far = Point(3 * radius * np.cos(heading), 3 * radius * np.sin(heading))
    rim = pond.exterior.interpolate(pond.exterior.project(far))
    # the crest runs along the rim, a little into the water, as the pond laps against it
    crest = rng.uniform(10, 16)
    x, y = rim.x - 0.4 * crest * np.cos(heading), rim.y - 0.4 * crest * np.sin(heading)
    dam = rect(x, y, radius * 1.3, crest, np.degrees(heading) + 90)
    both = unary_union([pond, dam])
    placed = land.place(lambda x, y: affinity.translate(both, x, y), margin=30, tries=60)
    if placed is None:
        return
    x, y = placed.bounds[0] - both.bounds[0], placed.bounds[1] - both.bounds[1]
    land.add("water", affinity.translate(pond, x, y), occupy=True)
    land.add("dam", affinity.translate(dam, x, y), occupy=True)

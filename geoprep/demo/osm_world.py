"""The demo world's OpenStreetMap extract: the truth's current land cover as tagged OSM areas.

OSM is a map of now, so the extract holds the polygons of the latest year (after the land-cover
change): hole-free polygons become closed ways, polygons with holes and multi-part polygons
become ``type=multipolygon`` relations with outer and inner member ways. Tags are the real ones
the osm sampler queries (``man_made=bridge``, ``landuse=quarry``, ...) plus the details mappers
add (names, ``water=lake``, ``leaf_type``, ``voltage``); built-up land is ``landuse=residential``,
which the sampler does not ask for. A little of OSM's everyday untidiness is added per AOI: a
field outline left open, a closed way that lost its tags, a shed of a few square metres.

Ids are stable for a seed: a truth feature ``fid`` is way ``WAY_ID_BASE + fid`` or relation
``RELATION_ID_BASE + fid``. Writes ``OUT/osm/demo.osm.pbf`` (served by the Overpass stand-in)
and, as samples for users, the Overpass ``out geom`` answer to the sampler's query for each AOI
in ``OUT/osm/overpass/<aoi>.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import requests
import shapely
from pyproj import Transformer
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Polygon, box

from geoprep.demo.osm_pbf_writer import write_pbf
from geoprep.demo.overpass_server import OverpassStandIn
from geoprep.demo.truth import YEARS, Truth
from geoprep.planning.overpass import OsmFeature, build_query
from geoprep.planning.samplers.osm import DEFAULT_CLASSES, parse_tag

if TYPE_CHECKING:
    from geoprep.demo.world import PartContext

log = logging.getLogger(__name__)

PART_DIR = "osm"
EXTRACT_NAME = "demo.osm.pbf"
WAY_ID_BASE = 400_000_000
RELATION_ID_BASE = 9_000_000
#: Ways of the mapping mistakes get ids above every feature's.
NOISE_ID_BASE = WAY_ID_BASE + 5_000_000
#: The class of built-up land, tagged but not one of the sampler's classes.
RESIDENTIAL = ("landuse", "residential")
#: When the extract was cut: the end of the world's last year.
SNAPSHOT = f"{YEARS[-1]}-12-31T23:59:59Z"


def class_tags() -> dict[str, tuple[str, str]]:
    """Truth class -> its main OSM tag (the osm sampler's defaults, plus built-up land)."""
    tags = {name: parse_tag(text) for name, text in DEFAULT_CLASSES.items()}
    tags["built_up"] = RESIDENTIAL
    return tags


def osm_id(fid: int, geometry) -> tuple[str, int]:
    """(type, id) of a truth feature: a way when it is a hole-free polygon, else a relation."""
    if isinstance(geometry, Polygon) and not geometry.interiors:
        return "way", WAY_ID_BASE + int(fid)
    return "relation", RELATION_ID_BASE + int(fid)


def truth_fid(osm_type: str, osm_id_: int) -> int:
    """The truth ``fid`` of a feature id made by :func:`osm_id`."""
    return osm_id_ - (WAY_ID_BASE if osm_type == "way" else RELATION_ID_BASE)


class _Tagger:
    """Main tag plus mapper's details for each class, drawn from the part's generator."""

    def __init__(self, truth: Truth, rng: np.random.Generator):
        self.rng = rng
        self.main = class_tags()
        self.cities = truth.cities

    def town(self, aoi: str, point) -> str:
        towns = self.cities[self.cities["aoi"] == aoi]
        if towns.empty:
            return aoi.title()
        distance = (towns["lon"] - point.x) ** 2 + (towns["lat"] - point.y) ** 2
        return str(towns["name"].iloc[int(np.argmin(distance.to_numpy()))])

    def tags(self, cls: str, aoi: str, geometry, is_river: bool) -> dict[str, str]:
        key, value = self.main[cls]
        tags = {key: value}
        rng, town = self.rng, self.town(aoi, geometry.representative_point())
        if cls == "water":
            if is_river:
                tags.update(water="river", name=f"{town} River")
            elif geometry.area > 5e-6:  # about 0.05 km^2 at these latitudes
                tags.update(water="lake", name=f"Lake {town}")
            else:
                tags["water"] = "pond"
        elif cls == "forest":
            tags["leaf_type"] = str(rng.choice(["broadleaved", "needleleaved", "mixed"]))
        elif cls == "substation":
            tags.update(substation="distribution", voltage=str(rng.choice(["20000", "33000"])))
        elif cls == "stadium":
            tags["name"] = f"{town} {rng.choice(['Stadium', 'Park', 'Arena'])}"
        elif cls == "golf_course":
            tags["name"] = f"{town} Golf Club"
        elif cls == "quarry":
            tags["resource"] = str(rng.choice(["gravel", "sand", "limestone"]))
        elif cls == "bridge":
            tags["layer"] = "1"
        elif cls == "built_up":
            tags["name"] = town
        elif cls == "farmland" and rng.random() < 0.3:
            tags["crop"] = str(rng.choice(["maize", "wheat", "soy", "barley"]))
        return tags


def truth_features(truth: Truth, rng: np.random.Generator) -> list[OsmFeature]:
    """The latest year's truth polygons as tagged OSM features, in fid order."""
    current = truth.features_at(YEARS[-1]).sort_values("fid")
    edges = {aoi.name: box(*aoi.bounds_lonlat).exterior for aoi in truth.aois}
    tagger = _Tagger(truth, rng)
    features = []
    for row in current.itertuples():
        geometry = row.geometry
        if isinstance(geometry, MultiPolygon) and len(geometry.geoms) == 1:
            geometry = geometry.geoms[0]
        osm_type, identifier = osm_id(row.fid, geometry)
        is_river = row.cls == "water" and geometry.intersects(edges[row.aoi])
        tags = tagger.tags(row.cls, row.aoi, geometry, is_river)
        if osm_type == "relation":
            tags["type"] = "multipolygon"
        features.append(OsmFeature(osm_type, identifier, tags, geometry))
    return features


def mapping_noise(truth: Truth, rng: np.random.Generator) -> list[OsmFeature]:
    """Per AOI: an unclosed field outline, an untagged closed way and a shed of a few m²."""
    noise = []
    next_id = NOISE_ID_BASE
    current = truth.features_at(YEARS[-1])
    for aoi in truth.aois:
        to_utm = _reprojector(Transformer.from_crs(4326, aoi.epsg, always_xy=True))
        to_lonlat = _reprojector(Transformer.from_crs(aoi.epsg, 4326, always_xy=True))
        # an outline whose tags were lost in an edit, somewhere in the AOI
        west, south, east, north = box(*aoi.bounds_utm).buffer(-0.1 * aoi.side).bounds
        lost = affinity.rotate(box(-15, -10, 15, 10), float(rng.uniform(0, 90)))
        lost = affinity.translate(lost, rng.uniform(west, east), rng.uniform(south, north))
        noise.append(OsmFeature("way", next_id, {}, to_lonlat(lost)))
        fields = current.geometry[(current["aoi"] == aoi.name) & (current["cls"] == "farmland")]
        if len(fields):
            field = to_utm(fields.iloc[int(rng.integers(len(fields)))])
            if isinstance(field, MultiPolygon):
                field = max(field.geoms, key=lambda g: g.area)
            # someone traced most of a field and never closed the way
            ring = list(field.exterior.coords)
            outline = LineString(ring[: max(3, len(ring) - 2)])
            noise.append(
                OsmFeature("way", next_id + 1, {"landuse": "farmland"}, to_lonlat(outline))
            )
            # a garden shed mapped as a farm building: too small to fill a patch
            inside = field.buffer(-10)
            x, y = (inside if not inside.is_empty else field).representative_point().coords[0]
            shed = affinity.translate(box(-1.5, -1.2, 1.5, 1.2), x, y)
            noise.append(OsmFeature("way", next_id + 2, {"building": "farm"}, to_lonlat(shed)))
        next_id += 10
    return noise


def _reprojector(transformer: Transformer):
    def apply(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return lambda geometry: shapely.transform(geometry, apply)


def sample_responses(features: list[OsmFeature], truth: Truth, directory: Path) -> int:
    """Ask the Overpass stand-in the osm sampler's query per AOI and keep the answers."""
    directory.mkdir(parents=True, exist_ok=True)
    tags = [parse_tag(text) for text in DEFAULT_CLASSES.values()]
    with OverpassStandIn(features, timestamp=SNAPSHOT) as stand_in, requests.Session() as session:
        session.trust_env = False  # loopback only, whatever proxies the environment sets
        for aoi in truth.aois:
            query = build_query(tags, aoi.bounds_lonlat, 180)
            response = session.post(stand_in.interpreter_url, data={"data": query}, timeout=60)
            response.raise_for_status()
            (directory / f"{aoi.name}.json").write_bytes(response.content)
    return len(truth.aois)


def build_osm(truth: Truth, out_dir: Path, rng: np.random.Generator, progress=None) -> dict:
    """Write the extract and the sample responses under ``out_dir/osm``; return counts."""
    directory = Path(out_dir) / PART_DIR
    directory.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress.set_total(2 + len(truth.aois))
    features = truth_features(truth, rng)
    noise = mapping_noise(truth, rng)
    everything = features + noise
    write_pbf(directory / EXTRACT_NAME, everything)
    if progress is not None:
        progress.advance(2)
    sample_responses(everything, truth, directory / "overpass")
    if progress is not None:
        progress.advance(len(truth.aois))
    kinds = Counter(f.osm_type for f in features)
    by_tag = Counter("=".join(next(iter(f.tags.items()))) for f in features)
    log.info("OSM extract: %d ways, %d relations", kinds["way"], kinds["relation"])
    return {
        "features": len(features),
        "ways": kinds["way"],
        "relations": kinds["relation"],
        "noise": len(noise),
        "tags": dict(sorted(by_tag.items())),
    }


def osm_part(ctx: PartContext) -> dict:
    """World part ``osm``: the OpenStreetMap extract and sample Overpass answers."""
    return build_osm(ctx.truth, ctx.out_dir, ctx.rng, ctx.progress)

"""Local .osm.pbf extracts: read tagged areas with pyosmium, and write features as OSM data."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import osmium
import shapely
from osmium.osm.mutable import Node, Relation, Way
from shapely.geometry import LineString, MultiPolygon, Polygon

from geoprep.core.errors import UserError
from geoprep.planning.overpass import OsmFeature, Tag

log = logging.getLogger(__name__)


class _AreaCollector(osmium.SimpleHandler):
    """Keeps the areas (closed ways, multipolygons) carrying any of the wanted tags."""

    def __init__(self, tags: Collection[Tag]) -> None:
        super().__init__()
        self.wanted = set(tags)
        self.keys = {key for key, _ in self.wanted}
        self.multipolygon_ids: set[int] = set()
        self.features: list[OsmFeature] = []
        self.dropped: Counter[str] = Counter()
        self._wkb = osmium.geom.WKBFactory()

    def _matches(self, tags: osmium.osm.TagList) -> bool:
        return any((key, tags.get(key)) in self.wanted for key in self.keys if key in tags)

    def relation(self, relation: osmium.osm.Relation) -> None:
        # Area tags lose the relation's "type", so remember which relations are multipolygons
        # (osmium also assembles type=boundary, which the Overpass source never asks for).
        if relation.tags.get("type") == "multipolygon" and self._matches(relation.tags):
            self.multipolygon_ids.add(relation.id)

    def area(self, area: osmium.osm.Area) -> None:
        if not self._matches(area.tags):
            return
        try:
            geometry = shapely.from_wkb(self._wkb.create_multipolygon(area))
        except RuntimeError as exc:
            log.debug("area %s has no usable geometry: %s", area.orig_id(), exc)
            self.dropped["invalid_geometry"] += 1
            return
        if len(geometry.geoms) == 1:
            geometry = geometry.geoms[0]
        osm_type = "way" if area.from_way() else "relation"
        tags = {tag.k: tag.v for tag in area.tags}
        if osm_type == "relation":
            tags["type"] = "multipolygon"
        self.features.append(OsmFeature(osm_type, area.orig_id(), tags, geometry))


def read_pbf_features(path: Path, tags: Collection[Tag]) -> tuple[list[OsmFeature], Counter[str]]:
    """Closed ways and multipolygon relations (holes included) in ``path`` carrying ``tags``."""
    if not path.is_file():
        raise UserError(f"osm sampler: path {str(path)!r} is not a file (expected an .osm.pbf)")
    collector = _AreaCollector(tags)
    try:
        collector.apply_file(str(path), locations=True)
    except RuntimeError as exc:
        raise UserError(f"osm sampler: cannot read OSM extract {str(path)!r}: {exc}") from exc
    features = []
    for feature in collector.features:
        if feature.osm_type == "relation" and feature.osm_id not in collector.multipolygon_ids:
            collector.dropped["not_multipolygon"] += 1
            continue
        features.append(feature)
    log.info("read %d tagged areas from %s", len(features), path)
    return features, collector.dropped


@dataclass
class OsmPrimitives:
    """Features expressed as OSM nodes, ways and relations with generated ids.

    Node ids number distinct coordinates (rounded to OSM's 1e-7 degrees) from 1. Each ring of
    a relation becomes untagged member ways, split in two where possible so that readers must
    join ring segments, as they must with real data.
    """

    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)
    ways: dict[int, tuple[list[int], dict[str, str]]] = field(default_factory=dict)
    relations: dict[int, tuple[list[tuple[int, str]], dict[str, str]]] = field(default_factory=dict)


def features_to_primitives(features: Iterable[OsmFeature]) -> OsmPrimitives:
    """Nodes, ways and relations that reproduce ``features`` (see :class:`OsmPrimitives`)."""
    features = list(features)
    prims = OsmPrimitives()
    node_ids: dict[tuple[float, float], int] = {}
    next_way_id = 1 + max((f.osm_id for f in features if f.osm_type == "way"), default=0)

    def node_list(coords: Iterable[tuple[float, ...]]) -> list[int]:
        ids = []
        for x, y, *_ in coords:
            key = (round(x, 7), round(y, 7))
            if key not in node_ids:
                node_ids[key] = len(node_ids) + 1
                prims.nodes[node_ids[key]] = key
            ids.append(node_ids[key])
        return ids

    for feature in features:
        geometry, tags = feature.geometry, dict(feature.tags)
        if feature.osm_type == "way":
            if isinstance(geometry, Polygon) and not geometry.interiors:
                prims.ways[feature.osm_id] = (node_list(geometry.exterior.coords), tags)
            elif isinstance(geometry, LineString):
                prims.ways[feature.osm_id] = (node_list(geometry.coords), tags)
            else:
                raise ValueError(f"way {feature.osm_id}: a way is a hole-free polygon or a line")
            continue
        if not isinstance(geometry, Polygon | MultiPolygon):
            raise ValueError(f"relation {feature.osm_id}: geometry must be (multi)polygonal")
        members: list[tuple[int, str]] = []
        for polygon in getattr(geometry, "geoms", [geometry]):
            rings = [(polygon.exterior, "outer")] + [(r, "inner") for r in polygon.interiors]
            for ring, role in rings:
                for segment in _split_ring(node_list(ring.coords)):
                    prims.ways[next_way_id] = (segment, {})
                    members.append((next_way_id, role))
                    next_way_id += 1
        tags.setdefault("type", "multipolygon")
        prims.relations[feature.osm_id] = (members, tags)
    return prims


def _split_ring(nodes: list[int]) -> list[list[int]]:
    """A closed node list as two open ways sharing their end nodes (one way if too short)."""
    if len(nodes) < 5:
        return [nodes]
    middle = len(nodes) // 2
    return [nodes[: middle + 1], nodes[middle:]]


def write_pbf(path: Path, features: Iterable[OsmFeature]) -> None:
    """Write ``features`` as an .osm.pbf (nodes, ways, relations, each sorted by id)."""
    prims = features_to_primitives(features)
    writer = osmium.SimpleWriter(str(path), overwrite=True)
    try:
        for node_id in sorted(prims.nodes):
            writer.add_node(Node(id=node_id, location=prims.nodes[node_id], version=1))
        for way_id in sorted(prims.ways):
            nodes, tags = prims.ways[way_id]
            writer.add_way(Way(id=way_id, nodes=nodes, tags=tags, version=1))
        for relation_id in sorted(prims.relations):
            members, tags = prims.relations[relation_id]
            refs = [("w", way_id, role) for way_id, role in members]
            writer.add_relation(Relation(id=relation_id, members=refs, tags=tags, version=1))
    finally:
        writer.close()

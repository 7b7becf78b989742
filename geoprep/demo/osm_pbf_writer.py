"""Writing features as OSM data (.osm.pbf): the demo world's OpenStreetMap extract."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import osmium
from osmium.osm.mutable import Node, Relation, Way
from shapely.geometry import LineString, MultiPolygon, Polygon

from geoprep.planning.overpass import OsmFeature


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

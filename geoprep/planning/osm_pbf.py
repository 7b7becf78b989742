"""Local .osm.pbf extracts: read the tagged areas of an extract with pyosmium."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path

import osmium
import shapely

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

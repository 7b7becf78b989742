"""The osm sampler: OpenStreetMap polygons of 12 classes, one location per polygon (CSF A.4)."""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import shapely
from pydantic import Field, field_validator, model_validator
from pyproj import Transformer
from shapely.errors import ShapelyError
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import polylabel

from geoprep.planning.overpass import (
    DEFAULT_ENDPOINT,
    Bbox,
    OsmFeature,
    OverpassClient,
    RetryPolicy,
    Tag,
    tile_bbox,
)
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult

log = logging.getLogger(__name__)

#: Class name -> OSM tag, in the order of the CSF evaluation set (appendix A.4).
DEFAULT_CLASSES: dict[str, str] = {
    "bridge": "man_made=bridge",
    "breakwater": "man_made=breakwater",
    "farm_building": "building=farm",
    "substation": "power=substation",
    "stadium": "leisure=stadium",
    "golf_course": "leisure=golf_course",
    "dam": "waterway=dam",
    "quarry": "landuse=quarry",
    "farmland": "landuse=farmland",
    "forest": "landuse=forest",
    "water": "natural=water",
    "bare_rock": "natural=bare_rock",
}

# Keys and values end up quoted inside Overpass QL, so quotes, backslashes and '=' are refused.
_TAG_PATTERN = re.compile(r'^([^=\s"\\]+)=([^="\\\n]+)$')
_DTYPES = {
    "id": str,
    "lat": float,
    "lon": float,
    "osm_id": "int64",
    "area_m2": float,
    "inscribed_radius_m": float,
}
_OVERPASS_KEYS = frozenset(
    {
        "endpoint",
        "bboxes",
        "tile_deg",
        "timeout_s",
        "max_retries",
        "retry_delay_s",
        "max_retry_delay_s",
        "max_slot_wait_s",
    }
)


def parse_tag(text: str) -> Tag:
    """``"key=value"`` as ``(key, value)``; ValueError when malformed."""
    match = _TAG_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"tag {text!r} is not of the form key=value (no quotes or backslashes)")
    return match.group(1), match.group(2).strip()


class OsmSamplerConfig(SamplerConfig):
    """OSM areas of each class, one location per polygon, at most ``n`` per class.

    A polygon is kept when its inscribed circle (centred on the pole of inaccessibility) has
    a radius of at least ``min_inscribed_fraction`` times half the patch size: the object then
    fills a disc of that share of the patch around the location. The default 0.05 (3.2 m for
    a 128 m patch) removes slivers and sheds but keeps narrow classes (bridges, dams,
    breakwaters are often only 10-30 m wide).
    """

    kind: Literal["osm"]
    n: int = Field(
        700, gt=0, le=MAX_LOCATIONS, description="cap per class (paper: 12 x 700 = 8,400)"
    )
    classes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLASSES))
    source: Literal["overpass", "pbf"] = "overpass"
    # overpass source
    endpoint: str = DEFAULT_ENDPOINT
    bboxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    tile_deg: float = Field(1.0, gt=0, le=45)
    timeout_s: int = Field(180, ge=1, le=3600)
    max_retries: int = Field(4, ge=0, le=20)
    retry_delay_s: float = Field(30.0, ge=0)
    max_retry_delay_s: float = Field(300.0, ge=0)
    max_slot_wait_s: float = Field(300.0, ge=0)
    # pbf source
    path: Path | None = None
    # placement
    patch_size_m: float = Field(128.0, gt=0)
    min_inscribed_fraction: float = Field(0.05, ge=0, le=1)
    polylabel_tolerance_m: float = Field(1.0, gt=0)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, classes: dict[str, str]) -> dict[str, str]:
        if not classes:
            raise ValueError("classes must name at least one class: {name: 'key=value'}")
        seen: dict[Tag, str] = {}
        for name, text in classes.items():
            if not name.strip():
                raise ValueError("class names must not be empty")
            try:
                tag = parse_tag(text)
            except ValueError as exc:
                raise ValueError(f"classes.{name}: {exc}") from None
            if tag in seen:
                raise ValueError(f"classes.{name}: tag {text!r} is already used by {seen[tag]!r}")
            seen[tag] = name
        return classes

    @field_validator("bboxes")
    @classmethod
    def _check_bboxes(cls, bboxes: list[Bbox]) -> list[Bbox]:
        for i, (west, south, east, north) in enumerate(bboxes):
            where = f"bboxes[{i}] = {[west, south, east, north]}"
            if not (-180 <= west <= 180 and -180 <= east <= 180):
                raise ValueError(f"{where}: longitudes must lie in [-180, 180]")
            if not (-90 <= south <= 90 and -90 <= north <= 90):
                raise ValueError(f"{where}: latitudes must lie in [-90, 90]")
            if not (west < east and south < north):
                raise ValueError(
                    f"{where}: expected [west, south, east, north] with west < east and "
                    "south < north (split boxes that cross the antimeridian)"
                )
        return bboxes

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str) -> str:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {endpoint!r} must be an http:// or https:// URL")
        return endpoint

    @model_validator(mode="after")
    def _check_source(self) -> OsmSamplerConfig:
        if self.source == "overpass":
            if not self.bboxes:
                raise ValueError(
                    "source 'overpass' needs bboxes: a list of [west, south, east, north]"
                )
            if self.path is not None:
                raise ValueError("path belongs to source 'pbf'; source is 'overpass'")
        else:
            if self.path is None:
                raise ValueError("source 'pbf' needs path: a local .osm.pbf extract")
            stray = sorted(_OVERPASS_KEYS & self.model_fields_set)
            if stray:
                raise ValueError(f"{', '.join(stray)} belong(s) to source 'overpass', not 'pbf'")
        if self.max_retry_delay_s < self.retry_delay_s:
            raise ValueError("max_retry_delay_s must be at least retry_delay_s")
        return self

    @property
    def tags(self) -> dict[Tag, str]:
        """OSM tag -> class name, in class order."""
        return {parse_tag(text): name for name, text in self.classes.items()}

    @property
    def min_inscribed_radius_m(self) -> float:
        return self.min_inscribed_fraction * self.patch_size_m / 2

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        features, dropped = self._read_features(progress)
        tags = self.tags
        by_class: dict[str, list[OsmFeature]] = defaultdict(list)
        for feature in features:
            name = next((tags[t] for t in tags if feature.tags.get(t[0]) == t[1]), None)
            if name is None:
                dropped["no_class"] += 1
            else:
                by_class[name].append(feature)

        rows = []
        for name, text in self.classes.items():
            # Sorting first makes the seeded order independent of how the source listed them.
            candidates = sorted(by_class[name], key=lambda f: (f.osm_type, f.osm_id))
            kept = self._place_class(candidates, rng, dropped)
            rows += [_row(feature, placement, name, text) for feature, placement in kept]
            log.info("osm: %s (%s): %d of %d areas", name, text, len(kept), len(candidates))
            progress.advance()
        columns = ["id", "lat", "lon", "source", "label", "osm_type", "osm_id", "tag"]
        frame = pd.DataFrame(rows, columns=[*columns, "area_m2", "inscribed_radius_m"])
        frame = frame.astype(_DTYPES)  # keeps column types when a class or the set is empty
        return SampleResult(locations=frame, dropped=dropped)

    def _read_features(self, progress: Progress) -> tuple[list[OsmFeature], Counter[str]]:
        tags = list(self.tags)
        if self.source == "pbf":
            from geoprep.planning.osm_pbf import read_pbf_features

            assert self.path is not None
            progress.set_total(1 + len(self.classes))
            features, dropped = read_pbf_features(self.path, tags)
            progress.advance()
            return features, dropped
        n_tiles = sum(len(tile_bbox(bbox, self.tile_deg)) for bbox in self.bboxes)
        progress.set_total(n_tiles + len(self.classes))
        client = OverpassClient(
            self.endpoint,
            timeout_s=self.timeout_s,
            retry=RetryPolicy(self.max_retries, self.retry_delay_s, self.max_retry_delay_s),
            max_slot_wait_s=self.max_slot_wait_s,
        )
        return client.fetch_features(tags, self.bboxes, self.tile_deg, on_tile=progress.advance)

    def _place_class(
        self, candidates: list[OsmFeature], rng: np.random.Generator, dropped: Counter[str]
    ) -> list[tuple[OsmFeature, AreaPlacement]]:
        """Visit candidates in seeded random order, placing each, until ``n`` are kept."""
        kept: list[tuple[OsmFeature, AreaPlacement]] = []
        visited = 0
        for index in rng.permutation(len(candidates)):
            if len(kept) == self.n:
                break
            visited += 1
            feature = candidates[index]
            if not isinstance(feature.geometry, Polygon | MultiPolygon):
                dropped["open_way"] += 1
                continue
            try:
                placement = place_in_area(feature.geometry, self.polylabel_tolerance_m)
            except (ShapelyError, ValueError) as exc:
                log.debug("%s %s: cannot place: %s", feature.osm_type, feature.osm_id, exc)
                dropped["invalid_geometry"] += 1
                continue
            if placement.inscribed_radius_m < self.min_inscribed_radius_m:
                dropped["too_small"] += 1
                continue
            kept.append((feature, placement))
        if visited < len(candidates):
            dropped["over_class_cap"] += len(candidates) - visited
        kept.sort(key=lambda pair: (pair[0].osm_type, pair[0].osm_id))
        return kept


def _row(feature: OsmFeature, placement: AreaPlacement, name: str, tag: str) -> dict:
    return {
        "id": f"osm-{feature.osm_type[0]}{feature.osm_id}",
        "lat": placement.lat,
        "lon": placement.lon,
        "source": "osm",
        "label": name,
        "osm_type": feature.osm_type,
        "osm_id": feature.osm_id,
        "tag": tag,
        "area_m2": placement.area_m2,
        "inscribed_radius_m": placement.inscribed_radius_m,
    }


@dataclass(frozen=True)
class AreaPlacement:
    """Where a polygon's location goes: its pole of inaccessibility, and the polygon's size."""

    lon: float
    lat: float
    inscribed_radius_m: float
    area_m2: float


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lon, lat)."""
    zone = int((lon + 180) // 6) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


@lru_cache(maxsize=64)
def _transformers(epsg: int) -> tuple[Transformer, Transformer]:
    to_metric = Transformer.from_crs(4326, epsg, always_xy=True)
    return to_metric, Transformer.from_crs(epsg, 4326, always_xy=True)


def place_in_area(geometry: Polygon | MultiPolygon, tolerance_m: float = 1.0) -> AreaPlacement:
    """The pole of inaccessibility of a lon/lat polygon, found in its local UTM zone.

    Holes count as boundary, so the point never lands in a hole. For a multipolygon the part
    with the widest inscribed circle wins.
    """
    centroid = geometry.centroid
    to_metric, to_lonlat = _transformers(utm_epsg(centroid.x, centroid.y))
    metric = shapely.transform(geometry, lambda xy: np.column_stack(to_metric.transform(*xy.T)))
    best_radius, best_pole = -1.0, None
    # Large parts first: a part whose bounding box is narrower than the best circle so far
    # cannot hold a wider one, which spares most polylabel runs on many-part relations.
    for part in sorted(shapely.get_parts(metric), key=lambda p: -p.area):
        min_x, min_y, max_x, max_y = part.bounds
        if min(max_x - min_x, max_y - min_y) / 2 <= best_radius:
            continue
        pole = polylabel(part, tolerance=tolerance_m)
        radius = part.boundary.distance(pole)
        if radius > best_radius:
            best_radius, best_pole = radius, pole
    if best_pole is None:
        raise ValueError("geometry has no polygonal part")
    lon, lat = to_lonlat.transform(best_pole.x, best_pole.y)
    return AreaPlacement(float(lon), float(lat), float(best_radius), float(metric.area))

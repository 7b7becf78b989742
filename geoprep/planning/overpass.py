"""Overpass API client: tiled area queries, polite pacing, retries and polygon assembly."""

from __future__ import annotations

import html
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import requests
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon

from geoprep.core.errors import SourceError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://overpass-api.de/api/interpreter"

#: (west, south, east, north) in degrees, the order recipes use.
Bbox = tuple[float, float, float, float]
#: An OSM tag as (key, value).
Tag = tuple[str, str]

#: HTTP statuses that mean "busy, try later": rate limited (429), overloaded gateway (502-504).
RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class OsmFeature:
    """One OSM object with its geometry in lon/lat degrees.

    ``osm_type`` is ``"way"`` or ``"relation"``. A way's geometry is a hole-free
    :class:`Polygon` (a closed way) or a :class:`LineString` (an open way, not an area); a
    multipolygon relation's geometry is a :class:`Polygon` or :class:`MultiPolygon`, holes
    included, and its tags carry ``type=multipolygon``.
    """

    osm_type: Literal["way", "relation"]
    osm_id: int
    tags: dict[str, str]
    geometry: Polygon | MultiPolygon | LineString


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed query is repeated (exponential backoff)."""

    max_retries: int = 4
    base_delay_s: float = 30.0
    max_delay_s: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return min(self.base_delay_s * 2**attempt, self.max_delay_s)


@dataclass(frozen=True)
class OverpassStatus:
    """What ``<base>/status`` says about our slots: free now, or free in some seconds."""

    rate_limit: int | None
    slots_available: int
    slot_waits_s: tuple[int, ...] = ()

    @property
    def wait_s(self) -> float:
        """Seconds until we may send a query (0 when a slot is free or nothing is known)."""
        if self.rate_limit == 0 or self.slots_available > 0 or not self.slot_waits_s:
            return 0.0
        return float(max(0, min(self.slot_waits_s)))


def parse_status(text: str) -> OverpassStatus:
    """Parse the plain-text status page (``Rate limit: 2``, ``2 slots available now.``, ...)."""
    rate = re.search(r"^Rate limit:\s*(\d+)", text, re.MULTILINE)
    free = re.search(r"^(\d+) slots? available now", text, re.MULTILINE)
    waits = re.findall(r"^Slot available after:.*?in (-?\d+) seconds?\.", text, re.MULTILINE)
    return OverpassStatus(
        rate_limit=int(rate.group(1)) if rate else None,
        slots_available=int(free.group(1)) if free else 0,
        slot_waits_s=tuple(int(w) for w in waits),
    )


def html_error_message(page: str) -> str:
    """The ``Error: ...`` lines of an Overpass HTML error page, joined; else its bare text."""
    errors = re.findall(
        r"<strong[^>]*>\s*Error\s*</strong>\s*:?\s*(.*?)</p>", page, re.DOTALL | re.IGNORECASE
    )
    if not errors:
        errors = [re.sub(r"<[^>]+>", " ", page)]
    lines = [" ".join(html.unescape(re.sub(r"<[^>]+>", "", e)).split()) for e in errors]
    return "; ".join(line for line in lines if line)[:500]


def runtime_error(payload: dict[str, Any]) -> str | None:
    """The ``remark`` of a failed query (``runtime error: ...``); None for a usable answer.

    Overpass reports timeouts and memory exhaustion with HTTP 200, possibly partial elements,
    and such a remark; ``runtime remark: ...`` is informational.
    """
    remark = payload.get("remark")
    if isinstance(remark, str) and remark.startswith("runtime error:"):
        return remark
    return None


def tile_bbox(bbox: Bbox, tile_deg: float) -> list[Bbox]:
    """Split a (west, south, east, north) box into tiles of at most ``tile_deg`` degrees."""
    west, south, east, north = bbox
    n_x = max(1, math.ceil((east - west) / tile_deg - 1e-9))
    n_y = max(1, math.ceil((north - south) / tile_deg - 1e-9))
    tiles = []
    for j in range(n_y):
        for i in range(n_x):
            tiles.append(
                (
                    west + i * tile_deg,
                    south + j * tile_deg,
                    min(east, west + (i + 1) * tile_deg),
                    min(north, south + (j + 1) * tile_deg),
                )
            )
    return tiles


def _coord(value: float) -> str:
    return f"{value:.7f}".rstrip("0").rstrip(".")


def build_query(tags: Iterable[Tag], bbox: Bbox, timeout_s: int) -> str:
    """Overpass QL selecting ways and multipolygon relations with any of ``tags`` in ``bbox``."""
    west, south, east, north = bbox
    area = f"({_coord(south)},{_coord(west)},{_coord(north)},{_coord(east)})"
    statements = []
    for key, value in tags:
        selector = f'["{key}"="{value}"]'
        statements.append(f"way{selector}{area};")
        statements.append(f'relation{selector}["type"="multipolygon"]{area};')
    body = "".join(f"\n  {s}" for s in statements)
    return f"[out:json][timeout:{timeout_s}];\n({body}\n);\nout geom;"


class OverpassClient:
    """Sends Overpass QL to one endpoint, waiting for a free slot and retrying busy answers."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_s: int = 180,
        retry: RetryPolicy | None = None,
        max_slot_wait_s: float = 300.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.max_slot_wait_s = max_slot_wait_s
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "geoprep (location sampling)")
        self._sleep = sleep

    @property
    def status_url(self) -> str | None:
        """``<base>/status`` beside an ``.../interpreter`` endpoint; None for other URLs."""
        base, sep, _ = self.endpoint.rpartition("/interpreter")
        return f"{base}/status" if sep else None

    def status(self) -> OverpassStatus | None:
        """The endpoint's slot status, or None when it has no readable status page."""
        if self.status_url is None:
            return None
        try:
            response = self.session.get(self.status_url, timeout=30)
        except requests.RequestException as exc:
            log.debug("Overpass status unavailable: %s", exc)
            return None
        if response.status_code != 200:
            log.debug("Overpass status answered HTTP %s", response.status_code)
            return None
        return parse_status(response.text)

    def wait_for_slot(self) -> None:
        """Sleep until the status page says a slot is free (at most ``max_slot_wait_s``)."""
        status = self.status()
        if status is not None and status.wait_s > 0:
            wait = min(status.wait_s, self.max_slot_wait_s)
            log.info("Overpass: no free slot, waiting %.0f s", wait)
            self._sleep(wait)

    def run(self, query: str) -> dict[str, Any]:
        """Run ``query`` and return the decoded JSON, retrying busy or timed-out answers."""
        problem = ""
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                delay = self.retry.delay(attempt - 1)
                log.warning("Overpass: %s; retry %d in %.1f s", problem, attempt, delay)
                self._sleep(delay)
            self.wait_for_slot()
            try:
                response = self.session.post(
                    self.endpoint, data={"data": query}, timeout=self.timeout_s + 30
                )
            except requests.RequestException as exc:
                problem = f"request failed ({exc.__class__.__name__}: {exc})"
                continue
            if response.status_code in RETRIABLE_STATUSES:
                problem = f"HTTP {response.status_code} ({html_error_message(response.text)[:200]})"
                continue
            if response.status_code == 400:
                raise SourceError(
                    f"Overpass at {self.endpoint} rejected the query (HTTP 400): "
                    f"{html_error_message(response.text)}"
                )
            if response.status_code != 200:
                raise SourceError(
                    f"Overpass at {self.endpoint} answered HTTP {response.status_code}: "
                    f"{html_error_message(response.text)[:200]}"
                )
            try:
                payload = response.json()
            except ValueError as exc:
                raise SourceError(
                    f"Overpass at {self.endpoint} answered with something other than JSON: "
                    f"{response.text[:200]!r}"
                ) from exc
            failure = runtime_error(payload)
            if failure:
                problem = failure
                continue
            if payload.get("remark"):
                log.warning("Overpass remark: %s", payload["remark"])
            return payload
        raise SourceError(
            f"Overpass at {self.endpoint} failed after {self.retry.max_retries + 1} attempts; "
            f"last problem: {problem}"
        )

    def fetch_features(
        self,
        tags: list[Tag],
        bboxes: Iterable[Bbox],
        tile_deg: float,
        on_tile: Callable[[], None] | None = None,
    ) -> tuple[list[OsmFeature], Counter[str]]:
        """All ways and multipolygon relations with ``tags`` in ``bboxes``, once each."""
        elements: dict[tuple[str, int], dict[str, Any]] = {}
        for bbox in bboxes:
            for tile in tile_bbox(bbox, tile_deg):
                payload = self.run(build_query(tags, tile, self.timeout_s))
                for element in payload.get("elements", []):
                    if element.get("type") in ("way", "relation"):
                        # Objects crossing a tile edge come back once per tile.
                        elements.setdefault((element["type"], int(element["id"])), element)
                if on_tile is not None:
                    on_tile()
        dropped: Counter[str] = Counter()
        features = list(features_from_elements(elements.values(), dropped))
        return features, dropped


def features_from_elements(
    elements: Iterable[dict[str, Any]], dropped: Counter[str]
) -> Iterator[OsmFeature]:
    """Turn ``out geom`` ways and multipolygon relations into area features.

    Elements that are not areas are counted in ``dropped`` by reason.
    """
    for element in elements:
        kind, tags = element.get("type"), dict(element.get("tags") or {})
        if kind == "way":
            geometry = _way_polygon(element.get("geometry") or [], dropped)
        elif kind == "relation":
            if tags.get("type") != "multipolygon":
                dropped["not_multipolygon"] += 1
                continue
            geometry = _relation_polygon(element.get("members") or [], dropped)
        else:
            continue
        if geometry is not None:
            yield OsmFeature(kind, int(element["id"]), tags, geometry)


def _points(geometry: list[dict[str, float] | None]) -> list[tuple[float, float]] | None:
    """(lon, lat) pairs, or None when a node has no coordinates (clipped or missing)."""
    if any(p is None for p in geometry):
        return None
    return [(float(p["lon"]), float(p["lat"])) for p in geometry]  # type: ignore[index]


def _way_polygon(geometry: list, dropped: Counter[str]) -> Polygon | MultiPolygon | None:
    points = _points(geometry)
    if points is None or len(points) < 2:
        dropped["incomplete_geometry"] += 1
        return None
    if len(points) < 4 or points[0] != points[-1]:
        dropped["open_way"] += 1
        return None
    return _valid_area(Polygon(points), dropped)


def _relation_polygon(members: list[dict], dropped: Counter[str]) -> Polygon | MultiPolygon | None:
    lines = []
    for member in members:
        if member.get("type") != "way" or member.get("role", "") not in ("outer", "inner", ""):
            continue
        points = _points(member.get("geometry") or [])
        if not points or len(points) < 2:
            dropped["incomplete_geometry"] += 1
            return None
        lines.append(LineString(points))
    if not lines:
        dropped["incomplete_geometry"] += 1
        return None
    # Node the member ways (they may touch mid-way), then close rings from the segments.
    faces, cuts, dangles, invalid = shapely.polygonize_full([shapely.unary_union(lines)])
    if not (cuts.is_empty and dangles.is_empty and invalid.is_empty) or faces.is_empty:
        dropped["unclosed_ring"] += 1
        return None
    # Every face's shell is one ring of the relation. Nesting, not the member role, decides
    # what is a hole (even-odd), as osmium's assembler does: a pond on an island in a lake
    # is water again.
    rings = {face.exterior.normalize().wkb: Polygon(face.exterior) for face in faces.geoms}
    area = Polygon()
    for ring in rings.values():
        area = area.symmetric_difference(ring)
    return _valid_area(area, dropped)


def _valid_area(geometry: shapely.Geometry, dropped: Counter[str]) -> Polygon | MultiPolygon | None:
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    # make_valid may return a collection mixing (multi)polygons with stray lines and points.
    polygons = [
        polygon
        for part in shapely.get_parts(geometry)
        for polygon in shapely.get_parts(part)
        if isinstance(polygon, Polygon) and polygon.area > 0
    ]
    if not polygons:
        dropped["invalid_geometry"] += 1
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)

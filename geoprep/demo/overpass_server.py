"""An offline stand-in for the Overpass API: area queries and the status page on loopback.

The server answers from a list of :class:`~geoprep.planning.overpass.OsmFeature` (hole-free
polygons or lines as ways, (multi)polygons as multipolygon relations), in the real response shapes:

* ``POST /api/interpreter`` (form field ``data``, or the raw query as body) and
  ``GET /api/interpreter?data=...``: Overpass JSON (``version``, ``generator``, ``osm3s``,
  ``elements``) with ``out geom`` ways (``bounds``, ``nodes``, ``geometry``, ``tags``) and
  relations (``bounds``, ``members[].geometry``, ``tags``). The query is read with a small
  pattern for ``way|relation[k=v]...(south,west,north,east);`` statements: an element is
  returned when its type and tags match a statement and its geometry meets the box. A query
  without such statements, or not asking for ``[out:json]``, gets the real HTML 400 page.
* ``GET /api/status``: the plain-text status page, with free slots or per-slot waits as set by
  :meth:`OverpassStandIn.set_slots`.

Faults for tests are queued with :meth:`OverpassStandIn.inject`; each interpreter request
takes the next one. Relation rings are served as member ways split in two, so clients must
join ring segments as they must with real data.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from shapely.geometry import box

from geoprep.demo.http_standin import StandInHandler, ThreadedStandIn
from geoprep.demo.osm_pbf_writer import features_to_primitives
from geoprep.planning.overpass import OsmFeature

log = logging.getLogger(__name__)

COPYRIGHT = (
    "The data included in this document is from www.openstreetmap.org. "
    "The data is made available under ODbL."
)
_NUMBER = r"\s*(-?\d+(?:\.\d*)?)\s*"
_STATEMENT = re.compile(
    rf"\b(way|relation)((?:\[[^\]]*\])+)\({_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\)\s*;"
)
_TAG_FILTER = re.compile(r'\[\s*"?([^"=\]]+?)"?\s*=\s*"?([^"\]]*?)"?\s*\]')


class OverpassFault(Enum):
    """Scripted misbehaviour, in the shapes the real service produces."""

    TOO_MANY_REQUESTS = "429"
    GATEWAY_TIMEOUT = "504"
    RUNTIME_ERROR = "runtime_error"
    BAD_REQUEST = "bad_request"


_FAULT_PAGES = {
    OverpassFault.TOO_MANY_REQUESTS: (
        429,
        "runtime error: open64: 0 Success /osm3s_osm_base Dispatcher_Client::"
        "request_read_and_idx::rate_limited. Please check /api/status for the quota of your "
        "IP address.",
    ),
    OverpassFault.GATEWAY_TIMEOUT: (
        504,
        "runtime error: open64: 0 Success /osm3s_osm_base Dispatcher_Client::"
        "request_read_and_idx::timeout. The server is probably too busy to handle your request.",
    ),
    OverpassFault.BAD_REQUEST: (400, "line 2: parse error: ';' expected - 'out' found."),
}
_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
RUNTIME_ERROR_REMARK = 'runtime error: Query timed out in "query" at line 3 after 2 seconds.'


def error_page(message: str) -> str:
    """The XHTML page Overpass sends with HTTP 400/429/504, carrying one ``Error:`` line."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
        '    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        "<head>\n"
        '  <meta http-equiv="content-type" content="text/html; charset=utf-8" lang="en"/>\n'
        "  <title>OSM3S Response</title>\n"
        "</head>\n<body>\n\n"
        f"<p>{COPYRIGHT}</p>\n"
        '<p><strong style="color:#FF0000">Error</strong>: '
        f"{html.escape(message, quote=False)} </p>\n\n"
        "</body>\n</html>\n"
    )


@dataclass(frozen=True)
class RecordedRequest:
    """A request the stand-in received: method, path, the query text (if any) and status."""

    method: str
    path: str
    query: str
    status: int


@dataclass
class _State:
    features: dict[tuple[str, int], OsmFeature]
    elements: dict[tuple[str, int], dict[str, Any]]
    timestamp: str
    faults: deque[OverpassFault] = field(default_factory=deque)
    slots_available: int = 2
    slot_waits_s: tuple[int, ...] = ()
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class OverpassStandIn(ThreadedStandIn[RecordedRequest]):
    """A threaded HTTP server on 127.0.0.1 answering Overpass queries from ``features``."""

    thread_name = "overpass-stand-in"

    def __init__(
        self,
        features: Iterable[OsmFeature],
        timestamp: str = "2024-01-01T00:00:00Z",
        port: int = 0,
    ) -> None:
        features = list(features)
        state = _State(
            features={(f.osm_type, f.osm_id): f for f in features},
            elements=_elements(features),
            timestamp=timestamp,
        )
        super().__init__(state, _Handler, port)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api``; the interpreter is ``<base_url>/interpreter``."""
        return f"{self.root_url}/api"

    @property
    def interpreter_url(self) -> str:
        return f"{self.base_url}/interpreter"

    def inject(self, *faults: OverpassFault) -> None:
        """Answer the next interpreter requests with these faults, one each, in order."""
        with self._state.lock:
            self._state.faults.extend(faults)

    def set_slots(self, available: int, waits_s: Iterable[int] = ()) -> None:
        """What the status page reports: free slots now, else seconds until each frees up."""
        with self._state.lock:
            self._state.slots_available = available
            self._state.slot_waits_s = tuple(waits_s)

    def start(self) -> Self:
        super().start()
        log.info("Overpass stand-in serving %d features at %s", len(self._state.features), self)
        return self

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the server for the ``with`` block and yield its base URL (see :attr:`base_url`)."""
        with self:
            yield self.base_url

    def __repr__(self) -> str:
        return f"OverpassStandIn({self.base_url})"


def _bounds(points: list[dict[str, float]]) -> dict[str, float]:
    lats, lons = [p["lat"] for p in points], [p["lon"] for p in points]
    return {"minlat": min(lats), "minlon": min(lons), "maxlat": max(lats), "maxlon": max(lons)}


def _elements(features: list[OsmFeature]) -> dict[tuple[str, int], dict[str, Any]]:
    """``out geom`` elements for every feature, keyed by (type, id)."""
    prims = features_to_primitives(features)

    def geometry(node_ids: list[int]) -> list[dict[str, float]]:
        return [{"lat": prims.nodes[n][1], "lon": prims.nodes[n][0]} for n in node_ids]

    elements: dict[tuple[str, int], dict[str, Any]] = {}
    for feature in features:
        key = (feature.osm_type, feature.osm_id)
        if feature.osm_type == "way":
            nodes, tags = prims.ways[feature.osm_id]
            points = geometry(nodes)
            elements[key] = {"type": "way", "id": feature.osm_id, "bounds": _bounds(points)}
            elements[key].update(nodes=nodes, geometry=points, tags=tags)
            continue
        members, tags = prims.relations[feature.osm_id]
        member_elements = [
            {"type": "way", "ref": ref, "role": role, "geometry": geometry(prims.ways[ref][0])}
            for ref, role in members
        ]
        all_points = [p for m in member_elements for p in m["geometry"]]
        elements[key] = {"type": "relation", "id": feature.osm_id, "bounds": _bounds(all_points)}
        elements[key].update(members=member_elements, tags=tags)
    return elements


def select(state: _State, query: str) -> list[dict[str, Any]] | None:
    """Elements matching the query's statements (ways first, each by id); None if none parse."""
    statements = _STATEMENT.findall(query)
    if not statements or "[out:json]" not in query.replace(" ", ""):
        return None
    keys: set[tuple[str, int]] = set()
    for osm_type, filters, south, west, north, east in statements:
        wanted = _TAG_FILTER.findall(filters)
        area = box(float(west), float(south), float(east), float(north))
        for key, feature in state.features.items():
            if key in keys or feature.osm_type != osm_type:
                continue
            tags = state.elements[key]["tags"]
            if all(tags.get(k) == v for k, v in wanted) and feature.geometry.intersects(area):
                keys.add(key)
    order = sorted(keys, key=lambda k: (k[0] != "way", k[1]))
    return [state.elements[k] for k in order]


def status_text(state: _State, client_ip: str) -> str:
    """The status page in the real line order."""
    a, b, c, d = (int(part) for part in client_ip.split("."))
    lines = [
        f"Connected as: {(a << 24) + (b << 16) + (c << 8) + d}",
        f"Current time: {state.timestamp}",
        "Announced endpoint: none",
        f"Rate limit: {max(state.slots_available, len(state.slot_waits_s), 1)}",
    ]
    if state.slots_available > 0:
        lines.append(f"{state.slots_available} slots available now.")
    for wait in state.slot_waits_s:
        lines.append(f"Slot available after: {state.timestamp}, in {wait} seconds.")
    lines.append("Currently running queries (pid, space limit, time limit, start time):")
    return "\n".join(lines) + "\n"


class _Handler(StandInHandler):
    server_version = "overpass-stand-in/1"
    # Headers and body go out in separate writes; without this, Nagle's algorithm meets the
    # client's delayed ACK and every response stalls for ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self._dispatch(url.path, parse_qs(url.query).get("data", [""])[0])

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            body = parse_qs(body).get("data", [""])[0]
        self._dispatch(urlsplit(self.path).path, body)

    def _dispatch(self, path: str, query: str) -> None:
        if path.rstrip("/") == "/api/status":
            with self._state.lock:
                text = status_text(self._state, self.client_address[0])
            response = (200, "text/plain; charset=utf-8", text)
        elif path.rstrip("/") == "/api/interpreter":
            response = self._interpreter(query)
        else:
            response = (404, _HTML, error_page(f"no such path {path}"))
        # Record before answering, so a client that has its answer sees the request listed.
        with self._state.lock:
            self._state.requests.append(RecordedRequest(self.command, path, query, response[0]))
        self._send(*response)

    def _interpreter(self, query: str) -> tuple[int, str, str]:
        with self._state.lock:
            fault = self._state.faults.popleft() if self._state.faults else None
        envelope: dict[str, Any] = {
            "version": 0.6,
            "generator": "Overpass API (geoprep stand-in)",
            "osm3s": {"timestamp_osm_base": self._state.timestamp, "copyright": COPYRIGHT},
        }
        if fault is OverpassFault.RUNTIME_ERROR:
            envelope.update(elements=[], remark=RUNTIME_ERROR_REMARK)
            return 200, _JSON, json.dumps(envelope, indent=2)
        if fault is not None:
            status, message = _FAULT_PAGES[fault]
            return status, _HTML, error_page(message)
        elements = select(self._state, query)
        if elements is None:
            message = "line 1: parse error: expected [out:json] and way/relation statements"
            return 400, _HTML, error_page(message)
        envelope["elements"] = elements
        return 200, _JSON, json.dumps(envelope, indent=2)

    def _send(self, status: int, content_type: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

"""An offline stand-in for archive.org: scrape search, item metadata and downloads on loopback.

The server answers the three Internet Archive endpoints geoprep uses, in their real response
shapes, from a directory of items:

* ``/services/search/v1/scrape`` (GET or POST; ``q``, ``fields``, ``count``, ``cursor``,
  ``total_only``): cursor paging, ``{"items", "count", "cursor", "total"}``, ``cursor`` absent
  on the last page. ``q`` may be empty, ``*:*`` or ``collection:NAME`` / ``collection:(NAME)``.
* ``/metadata/{identifier}``: the item JSON; ``{}`` for an unknown item, as archive.org does.
* ``/download/{identifier}/{name}``: file bytes with ``Content-Length`` and single-range
  ``Range`` support (206/416). archive.org redirects to a data node; the stand-in serves directly.

It runs as the target of an HTTP proxy: clients configured with ``proxies={"http": url}`` send
absolute-URI request lines (``GET http://archive.org/metadata/x HTTP/1.1``), which the server
accepts for hosts ending in ``archive.org``; plain-path requests are accepted too.

Directory layout (one folder per item, items listed in identifier order)::

    <root>/<identifier>/_metadata.json   # body of /metadata/<identifier>
    <root>/<identifier>/<file name>      # bytes of /download/<identifier>/<file name>

:func:`write_item` creates such a folder with correct ``size``/``md5``/``crc32``/``sha1``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import mimetypes
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from geoprep.demo.http_standin import StandInHandler, ThreadedStandIn

log = logging.getLogger(__name__)

METADATA_FILE = "_metadata.json"
SCRAPE_PATH = "/services/search/v1/scrape"
#: The real scrape API returns at most this many items per page.
MAX_SCRAPE_COUNT = 10_000

_COLLECTION_QUERY = re.compile(r'^\s*collection\s*:\s*\(?\s*"?([\w.-]+)"?\s*\)?\s*$')
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_][\w.-]*$")


@dataclass(frozen=True)
class ItemFile:
    """One file of an item written by :func:`write_item`, with its archive.org file fields."""

    name: str
    data: bytes
    source: str = "original"
    format: str | None = None
    length_s: float | None = None
    original: str | None = None


_FORMAT_BY_SUFFIX = {
    ".mp3": "VBR MP3",
    ".ogg": "Ogg Vorbis",
    ".flac": "Flac",
    ".wav": "WAVE",
    ".png": "PNG",
    ".jpg": "JPEG",
}


def write_item(
    root: Path, identifier: str, metadata: Mapping[str, Any], files: list[ItemFile]
) -> Path:
    """Write one item folder in the stand-in layout and return the path of its metadata JSON."""
    item_dir = Path(root) / identifier
    item_dir.mkdir(parents=True, exist_ok=True)
    mtime = str(int(time.time()))
    entries = []
    for item_file in files:
        (item_dir / item_file.name).write_bytes(item_file.data)
        entry: dict[str, Any] = {
            "name": item_file.name,
            "source": item_file.source,
            "format": item_file.format
            or _FORMAT_BY_SUFFIX.get(Path(item_file.name).suffix.lower(), "Unknown"),
            "size": str(len(item_file.data)),
            "mtime": mtime,
            "md5": hashlib.md5(item_file.data).hexdigest(),
            "crc32": f"{zlib.crc32(item_file.data):08x}",
            "sha1": hashlib.sha1(item_file.data).hexdigest(),
        }
        if item_file.length_s is not None:
            entry.update(length=f"{item_file.length_s:.2f}", height="0", width="0")
        if item_file.original is not None:
            entry["original"] = item_file.original
        entries.append(entry)
    body = {
        "created": int(mtime),
        "d1": "ia800000.us.archive.org",
        "dir": f"/0/items/{identifier}",
        "files": entries,
        "files_count": len(entries),
        "item_size": sum(len(f.data) for f in files),
        "metadata": {"identifier": identifier, **metadata},
        "server": "ia800000.us.archive.org",
        "uniq": 0,
        "updated": int(mtime),
        "workable_servers": ["ia800000.us.archive.org"],
    }
    path = item_dir / METADATA_FILE
    path.write_text(json.dumps(body, indent=2))
    return path


@dataclass
class _Fault:
    path_prefix: str
    status: int
    remaining: int


@dataclass(frozen=True)
class RecordedRequest:
    """A request the stand-in received (for tests that check paging or retries)."""

    method: str
    host: str
    path: str
    query: dict[str, list[str]]
    status: int


@dataclass
class _State:
    root: Path
    page_size: int
    faults: list[_Fault] = field(default_factory=list)
    dark: set[str] = field(default_factory=set)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ArchiveStandIn(ThreadedStandIn[RecordedRequest]):
    """A threaded HTTP server on 127.0.0.1 answering archive.org requests from ``root``.

    ``page_size`` caps the items per scrape page below the client's ``count`` so that small
    collections still page. Use as a context manager; :attr:`proxy_url` is what a client puts
    into its ``proxies``.
    """

    thread_name = "archive-stand-in"
    poll_interval_s = 0.02  # keeps stop() quick

    def __init__(self, root: Path | str, page_size: int = MAX_SCRAPE_COUNT, port: int = 0):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        super().__init__(_State(root=Path(root), page_size=page_size), _Handler, port)

    @property
    def proxy_url(self) -> str:
        return self.root_url

    def fail_next(self, path_prefix: str, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with HTTP ``status``."""
        with self._state.lock:
            self._state.faults.append(_Fault(path_prefix, status, times))

    def darken(self, identifier: str) -> None:
        """Answer ``{}`` for the item's metadata while search still lists it (a darked item)."""
        with self._state.lock:
            self._state.dark.add(identifier)

    def start(self) -> Self:
        super().start()
        log.info("archive.org stand-in serving %s at %s", self._state.root, self.proxy_url)
        return self


@contextmanager
def serve_archive(root: Path | str, page_size: int = MAX_SCRAPE_COUNT) -> Iterator[str]:
    """Serve ``root`` as archive.org on loopback and yield the proxy URL to configure."""
    with ArchiveStandIn(root, page_size=page_size) as stand_in:
        yield stand_in.proxy_url


def encode_cursor(identifier: str) -> str:
    """The scrape cursor: base64 of ``[{"identifier": last}]``, as archive.org's cursors look."""
    payload = json.dumps([{"identifier": identifier}], separators=(",", ":"))
    return base64.b64encode(payload.encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The last identifier of the previous page; ValueError for a malformed cursor."""
    try:
        return str(json.loads(base64.b64decode(cursor, validate=True))[0]["identifier"])
    except (binascii.Error, ValueError, LookupError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def _load_items(root: Path) -> list[tuple[str, dict[str, Any]]]:
    items = []
    for meta_path in sorted(root.glob(f"*/{METADATA_FILE}")):
        items.append((meta_path.parent.name, json.loads(meta_path.read_text())))
    return items


def _collection_matches(metadata: Mapping[str, Any], query: str) -> bool:
    if query.strip() in ("", "*:*"):
        return True
    match = _COLLECTION_QUERY.match(query)
    if match is None:
        raise ValueError(f"the stand-in only understands collection:NAME queries, not {query!r}")
    collections = metadata.get("collection", [])
    if isinstance(collections, str):
        collections = [collections]
    return match.group(1) in collections


class _Handler(StandInHandler):
    server_version = "archive-stand-in/1"

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Type", "").startswith("application/x-www-form"):
                for key, values in parse_qs(body.decode(), keep_blank_values=True).items():
                    query.setdefault(key, []).extend(values)
        path = unquote(url.path)
        status = self._respond(url.netloc, path, query, head)
        with self._state.lock:
            self._state.requests.append(
                RecordedRequest(self.command, url.netloc, path, query, status)
            )

    def _respond(self, host: str, path: str, query: dict[str, list[str]], head: bool) -> int:
        hostname = host.rsplit("@", 1)[-1].split(":", 1)[0].lower()
        if hostname and hostname != "archive.org" and not hostname.endswith(".archive.org"):
            # Acting as a proxy for anything else would leak requests off loopback.
            return self._send_json({"error": f"unknown host {hostname}"}, 502, head)
        fault = self._take_fault(path)
        if fault is not None:
            return self._send_json({"error": "injected fault"}, fault, head)
        if path.rstrip("/") == SCRAPE_PATH:
            return self._scrape(query, head)
        if path.startswith("/metadata/"):
            return self._metadata(path.removeprefix("/metadata/").strip("/"), head)
        if path.startswith("/download/"):
            return self._download(path.removeprefix("/download/"), head)
        return self._send_json({"error": f"no such endpoint {path}"}, 404, head)

    def _take_fault(self, path: str) -> int | None:
        with self._state.lock:
            for fault in self._state.faults:
                if fault.remaining > 0 and path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    return fault.status
        return None

    def _scrape(self, query: dict[str, list[str]], head: bool) -> int:
        def param(name: str, default: str = "") -> str:
            return query.get(name, [default])[-1]

        try:
            count = int(param("count", str(MAX_SCRAPE_COUNT)))
            items = [
                (identifier, meta)
                for identifier, meta in _load_items(self._state.root)
                if _collection_matches(meta.get("metadata", {}), param("q"))
            ]
            after = decode_cursor(param("cursor")) if param("cursor") else None
        except ValueError as exc:
            return self._send_json({"error": str(exc)}, 400, head)
        if param("total_only").lower() == "true":
            return self._send_json({"total": len(items)}, 200, head)
        remaining = [it for it in items if after is None or it[0] > after]
        page = remaining[: max(1, min(count, self._state.page_size, MAX_SCRAPE_COUNT))]
        fields = [f for f in param("fields", "identifier").split(",") if f] or ["identifier"]
        rows = []
        for identifier, meta in page:
            metadata = meta.get("metadata", {})
            row = {"identifier": identifier}
            row.update({f: metadata[f] for f in fields if f != "identifier" and f in metadata})
            rows.append(row)
        body: dict[str, Any] = {"items": rows, "count": len(rows)}
        if len(remaining) > len(page):
            body["cursor"] = encode_cursor(page[-1][0])
        body["total"] = len(items)
        return self._send_json(body, 200, head)

    def _metadata(self, identifier: str, head: bool) -> int:
        if not _IDENTIFIER.match(identifier) or identifier in self._state.dark:
            return self._send_json({}, 200, head)
        meta_path = self._state.root / identifier / METADATA_FILE
        if not meta_path.is_file():
            return self._send_json({}, 200, head)
        return self._send_bytes(meta_path.read_bytes(), "application/json", 200, head)

    def _download(self, rest: str, head: bool) -> int:
        identifier, _, name = rest.partition("/")
        item_dir = (self._state.root / identifier).resolve()
        target = (item_dir / name).resolve()
        valid = _IDENTIFIER.match(identifier) and name and item_dir in target.parents
        if not valid or not target.is_file():
            return self._send_bytes(b"Not Found", "text/plain", 404, head)
        data = target.read_bytes()
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        range_header = self.headers.get("Range")
        match = _RANGE.match(range_header.strip()) if range_header else None
        if match is None or match.groups() == ("", ""):
            return self._send_bytes(data, content_type, 200, head)
        start_text, end_text = match.groups()
        size = len(data)
        if start_text:
            start = int(start_text)
            end = min(int(end_text), size - 1) if end_text else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(end_text)), size - 1
        if start >= size or end < start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 416
        extra = {"Content-Range": f"bytes {start}-{end}/{size}"}
        return self._send_bytes(data[start : end + 1], content_type, 206, head, extra)

    def _send_json(self, body: Any, status: int, head: bool) -> int:
        return self._send_bytes(json.dumps(body).encode(), "application/json", status, head)

    def _send_bytes(
        self,
        data: bytes,
        content_type: str,
        status: int,
        head: bool,
        extra_headers: Mapping[str, str] | None = None,
    ) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)
        return status

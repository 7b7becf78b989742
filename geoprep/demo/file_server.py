"""A Range-capable blob store on loopback that also answers as the HTTP proxy for blob hosts."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import mimetypes
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import requests
import uvicorn
from starlette.responses import FileResponse, Response

from geoprep.core.errors import SourceError, UserError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BLOB_HOST_SUFFIX = ".blob.core.windows.net"
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NOT_FOUND = "The specified resource does not exist."
_SINGLE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def wait_until_answers(
    url: str, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.02
) -> requests.Response:
    """Poll `url` until it gives any HTTP answer; fail early when `alive()` turns false."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise SourceError(f"server for {url} exited before it answered")
        try:
            # The environment may name proxies; loopback servers are always reached directly.
            return requests.get(url, timeout=2, proxies={"http": "", "https": ""})
        except requests.RequestException as error:
            last_error = error
            time.sleep(interval)
    raise SourceError(f"{url} did not answer within {timeout:.0f} s (last error: {last_error})")


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def sas_signature(key: bytes, account: str, container: str, fields: dict[str, str]) -> str:
    """The demo blob store's signature over a container SAS (HMAC-SHA256, base64, like Azure's)."""
    to_sign = "\n".join(
        [account, container, *(fields.get(name, "") for name in ("sp", "st", "se", "sv", "skoid"))]
    )
    return base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()


class UvicornThreadServer:
    """Runs an ASGI app with uvicorn in a daemon thread on a loopback socket it binds itself."""

    ready_path = "/"

    def __init__(self, port: int = 0, start_timeout: float = 10.0) -> None:
        self.requested_port = port
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def app(self) -> Callable[..., Any]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            return self
        # Binding here (port 0 → the OS picks) means the port is known before uvicorn runs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, self.requested_port))
        except OSError as error:
            sock.close()
            raise UserError(f"cannot bind {LOOPBACK}:{self.requested_port}: {error}") from error
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            # h11 hands absolute-form proxy targets through untouched; the app parses both forms.
            http="h11",
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            # Leave logging configuration to the application embedding the server.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        thread = self._thread
        try:
            wait_until_answers(self.url + self.ready_path, self.start_timeout, thread.is_alive)
        except SourceError:
            self.stop()
            raise
        log.debug("%s listening on %s", type(self).__name__, self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                name = type(self).__name__
                log.warning("%s on port %s did not stop within 10 s", name, self.port)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RequestRecord:
    """One request the file server answered (for tests and debugging)."""

    method: str
    host: str
    path: str
    query: str
    range: str | None
    status: int


class _Unsatisfiable(Exception):
    pass


def _single_range(header: str, size: int) -> tuple[int, int] | None:
    """Normalise a Range header to (first, last) byte, or None to ignore it (RFC 9110 allows)."""
    match = _SINGLE_RANGE.match(header)
    if match is None:
        return None  # multiple ranges or garbage: answer with the whole blob, as Azure does
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if start >= size:
        raise _Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if end >= start else None


def _azure_error(status: int, code: str, message: str, detail: str | None = None) -> Response:
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error>'
        f"<Code>{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{now}</Message>"
    )
    if detail:
        body += f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>"
    body += "</Error>"
    headers = {
        "x-ms-error-code": code,
        "x-ms-request-id": request_id,
        "Server": "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0",
    }
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


class FileServer(UvicornThreadServer):
    """Serves `root` (laid out `<account>/<container>/<path>`) with Range, HEAD, ETag and 416.

    Requests naming a blob host (absolute-form through `GDAL_HTTP_PROXY`, or a `Host:` header
    `<account>.blob.core.windows.net`) are checked like Azure checks a container SAS: no `sig` →
    404 ResourceNotFound, outside `st`..`se` or missing `r` permission → 403 AuthenticationFailed,
    and with `signing_key` set also a wrong signature → 403. Plain `/<account>/<container>/<path>`
    requests to the loopback address are served without a signature.
    """

    def __init__(
        self,
        root: str | Path,
        port: int = 0,
        signing_key: bytes | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"blob directory {self.root} does not exist (expected OUT/blobs)")
        self.signing_key = signing_key
        # Bounded so a long `serve` session does not grow without limit.
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)

    def app(self) -> Callable[..., Any]:
        return self._asgi

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status_seen: list[int] = []

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        host, path, query = _request_target(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        range_header = headers.get("x-ms-range") or headers.get("range")
        response = self._respond(scope, host, path, query, range_header)
        await response(scope, receive, recording_send)
        self.requests.append(
            RequestRecord(
                method=scope["method"],
                host=host,
                path=path,
                query=query,
                range=range_header,
                status=status_seen[0] if status_seen else 0,
            )
        )

    def _respond(
        self, scope: dict[str, Any], host: str, path: str, query: str, range_header: str | None
    ) -> Response:
        hostname = (urlsplit(f"//{host}").hostname or "") if host else ""
        if scope["method"] not in ("GET", "HEAD"):
            return Response("method not allowed", status_code=405, headers={"Allow": "GET, HEAD"})
        segments = [unquote(part) for part in path.split("/") if part]
        if hostname.endswith(BLOB_HOST_SUFFIX):
            account = hostname.removesuffix(BLOB_HOST_SUFFIX)
            if len(segments) < 2:
                return _azure_error(404, "ResourceNotFound", _NOT_FOUND)
            refusal = self._check_sas(account, segments[0], query)
            if refusal is not None:
                return refusal
            return self._serve_file(scope, [account, *segments], range_header, azure=True)
        if hostname in _LOOPBACK_HOSTS or not hostname:
            return self._serve_file(scope, segments, range_header, azure=False)
        return Response(
            f"this demo proxy only stands in for *{BLOB_HOST_SUFFIX}, not {hostname}",
            status_code=502,
            media_type="text/plain",
        )

    def _check_sas(self, account: str, container: str, query: str) -> Response | None:
        fields = {key: values[0] for key, values in parse_qs(query).items()}
        if "sig" not in fields:
            # Private containers hide their blobs from anonymous readers behind a plain 404.
            return _azure_error(404, "ResourceNotFound", _NOT_FOUND)
        auth_failed = (
            "Server failed to authenticate the request. Make sure the value of Authorization "
            "header is formed correctly including the signature."
        )
        try:
            start = _parse_sas_time(fields["st"]) if "st" in fields else None
            expiry = _parse_sas_time(fields["se"])
        except (KeyError, ValueError):
            return _azure_error(403, "AuthenticationFailed", auth_failed, "se is mandatory.")
        now = datetime.now(UTC)
        if (start is not None and now < start) or now > expiry:
            detail = (
                "Signature not valid in the specified time frame: "
                f"Start [{_http_date(start) if start else ''}] - Expiry [{_http_date(expiry)}] - "
                f"Current [{_http_date(now)}]"
            )
            return _azure_error(403, "AuthenticationFailed", auth_failed, detail)
        if "r" not in fields.get("sp", ""):
            detail = (
                "This request is not authorized to perform this operation using this permission."
            )
            return _azure_error(403, "AuthorizationPermissionMismatch", detail)
        if self.signing_key is not None:
            expected = sas_signature(self.signing_key, account, container, fields)
            if not hmac.compare_digest(expected.encode(), fields["sig"].encode()):
                detail = f"Signature did not match. Signed resource: /blob/{account}/{container}"
                return _azure_error(403, "AuthenticationFailed", auth_failed, detail)
        return None

    def _serve_file(
        self, scope: dict[str, Any], segments: list[str], range_header: str | None, azure: bool
    ) -> Response:
        target = self._resolve(tuple(segments))
        if target is None or not target.is_file():
            if azure:
                container_dir = self._resolve(tuple(segments[:2]))
                if container_dir is not None and not container_dir.is_dir():
                    return _azure_error(
                        404, "ContainerNotFound", "The specified container does not exist."
                    )
                return _azure_error(404, "BlobNotFound", "The specified blob does not exist.")
            return Response("not found", status_code=404, media_type="text/plain")
        stat_result = target.stat()
        headers = _stat_headers(target, stat_result)
        if_none_match = _header(scope, b"if-none-match")
        if if_none_match and headers["etag"] in [
            tag.strip().removeprefix("W/") for tag in if_none_match.split(",")
        ]:
            return Response(status_code=304, headers={"etag": headers["etag"]})
        size = stat_result.st_size
        bounds = None
        if range_header is not None:
            try:
                bounds = _single_range(range_header, size)
            except _Unsatisfiable:
                return _unsatisfiable(size, azure)
        if scope["method"] == "HEAD" and bounds is None:
            return _Head(headers)
        if bounds is not None and bounds[1] - bounds[0] < _IN_MEMORY_RANGE:
            # Small ranges (COG headers and tiles, nearly every request) are read here: streaming
            # them through FileResponse costs several thread hops each, which made this stand-in
            # spend more CPU per request than the GDAL client it serves.
            first, last = bounds
            headers["content-range"] = f"bytes {first}-{last}/{size}"
            headers["content-length"] = str(last - first + 1)
            if scope["method"] == "HEAD":
                return _Head(headers, status=206)
            with target.open("rb") as blob:
                body = os.pread(blob.fileno(), last - first + 1, first)
            return Response(body, status_code=206, headers=headers)
        normalised = None if bounds is None else f"bytes={bounds[0]}-{bounds[1]}"
        _set_header(scope, b"range", normalised)
        return FileResponse(target, stat_result=stat_result)

    def _resolve(self, segments: tuple[str, ...]) -> Path | None:
        """The file or directory a path names inside the root, or None if it points outside."""
        # The world's blobs do not move while served; resolving symlinks and `..` is the costly
        # part of a request, so it is done once per path.
        return _resolve_inside(self.root, segments)


_IN_MEMORY_RANGE = 8 * 1024 * 1024


@functools.lru_cache(maxsize=4096)
def _resolve_inside(root: Path, segments: tuple[str, ...]) -> Path | None:
    target = root.joinpath(*segments).resolve() if segments else root
    return target if target.is_relative_to(root) else None


def _stat_headers(path: Path, stat_result: os.stat_result) -> dict[str, str]:
    """Type, length, Last-Modified, ETag and Accept-Ranges of a blob, as a blob store sends them
    (and as starlette's FileResponse does for whole blobs)."""
    tag = hashlib.md5(
        f"{stat_result.st_mtime}-{stat_result.st_size}".encode(), usedforsecurity=False
    )
    return {
        "content-type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "content-length": str(stat_result.st_size),
        "last-modified": formatdate(stat_result.st_mtime, usegmt=True),
        "etag": f'"{tag.hexdigest()}"',
        "accept-ranges": "bytes",
    }


class _Head(Response):
    """A header-only answer that keeps the Content-Length of the body it stands for."""

    def __init__(self, headers: dict[str, str], status: int = 200) -> None:
        super().__init__(status_code=status, headers=headers)

    def init_headers(self, headers: Any = None) -> None:
        # Response would replace Content-Length with the length of its (empty) body.
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _unsatisfiable(size: int, azure: bool) -> Response:
    content_range = {"Content-Range": f"bytes */{size}"}
    if azure:
        error = _azure_error(
            416,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
        )
        error.headers.update(content_range)
        return error
    return Response("range not satisfiable", 416, content_range, media_type="text/plain")


def _request_target(scope: dict[str, Any]) -> tuple[str, str, str]:
    """(host, path, query) of a request in origin-form or absolute-form (proxy) target."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"").decode("latin-1")
    target = raw_path.decode("latin-1")
    if target.lower().startswith(("http://", "https://")):
        parts = urlsplit(target)
        return parts.netloc, parts.path or "/", query
    return _header(scope, b"host") or "", target, query


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _set_header(scope: dict[str, Any], name: bytes, value: str | None) -> None:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (name, b"x-ms-range")]
    if value is not None:
        headers.append((name, value.encode("latin-1")))
    scope["headers"] = headers


def _parse_sas_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""An HTTP relay on loopback that injects faults (and latency) in front of one upstream server.

Put a `FaultRelay` between a client and a demo server (the STAC API, the token service, or the
blob store, which clients reach as their HTTP proxy) and tell it what to break:

    with FaultRelay(services.stac_url) as relay:
        relay.inject("truncate", rate=0.2, seed=3)   # a fifth of the answers cut short
        relay.delay = 0.05                            # and every request 50 ms slower
        ... point the client at relay.url ...
        relay.injected                                # Counter of faults actually injected

Requests pass through unchanged (absolute-form proxy targets too, and the Host header, so
servers that build links from it keep pointing at the relay). Faults:

- `429`, `500`, `502`, `503`, `403`, `404`: that status instead of the upstream's answer;
- `reset`: the connection is reset (TCP RST) before any answer;
- `truncate`: the upstream's headers, then half the body, then the connection closes;
- `slow`: the answer comes `slow_s` seconds late (intact);
- `refuse`: the listening socket closes, so connections are refused (`resume()` reopens it).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
STATUS_FAULTS = {"403": 403, "404": 404, "429": 429, "500": 500, "502": 502, "503": 503}
FAULTS = frozenset({*STATUS_FAULTS, "reset", "truncate", "slow"})
# Headers that describe one hop, not the message: the relay sets its own.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer"}
_MAX_HEAD = 64 * 1024


@dataclass
class _Plan:
    kind: str
    rate: float
    limit: int | None
    match: Callable[[str, str], bool] | None
    rng: random.Random
    done: int = 0


class _Closed(Exception):
    """The client closed its connection (or sent something the relay does not relay)."""


class FaultRelay:
    """Relays HTTP/1.1 requests to `upstream` (an http URL), injecting the faults asked for.

    `inject(kind, rate=1.0, limit=None, seed=0, match=None)` starts a fault: each request (in
    arrival order) is hit with probability `rate`, drawn from `seed`, until `limit` faults were
    injected; `match(method, target)` restricts it to some requests. `clear()` stops all faults.
    `delay` adds that many seconds to every request (a latency benchmark's knob). Counters:
    `requests` (relayed or not) and `injected` (by kind).
    """

    def __init__(self, upstream: str, slow_s: float = 1.5, timeout: float = 120.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the relay forwards to http:// URLs, got {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.slow_s, self.timeout = slow_s, timeout
        self.delay = 0.0
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self._plans: list[_Plan] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        """The relay's URL, with the upstream's path (e.g. a STAC API's root)."""
        if self.port is None:
            raise RuntimeError("the relay is not running")
        return f"http://{LOOPBACK}:{self.port}{self.base_path}"

    def inject(
        self,
        kind: str,
        rate: float = 1.0,
        limit: int | None = None,
        seed: int = 0,
        match: Callable[[str, str], bool] | None = None,
    ) -> None:
        if kind == "refuse":
            self._close_listener()
            return
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULTS)}, refuse")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        with self._lock:
            self._plans.append(_Plan(kind, rate, limit, match, random.Random(seed)))

    def clear(self) -> None:
        """No more faults, counters back to 0 (a refused listener opens on the same port)."""
        with self._lock:
            self._plans.clear()
            self.injected.clear()
            self.requests = 0
        if self._server is None and self.port is not None:
            self._listen(self.port)

    def _fault_for(self, method: str, target: str) -> str | None:
        with self._lock:
            self.requests += 1
            for plan in self._plans:
                if plan.limit is not None and plan.done >= plan.limit:
                    continue
                if plan.match is not None and not plan.match(method, target):
                    continue
                if plan.rng.random() < plan.rate:
                    self.injected[plan.kind] += 1
                    plan.done += 1
                    return plan.kind
        return None

    @property
    def faults(self) -> int:
        """How many faults were injected so far."""
        return sum(self.injected.values())

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Self:
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((LOOPBACK, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"FaultRelay:{self.port}", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        """Stop listening and cut the open connections (clients keep them alive)."""
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def stop(self) -> None:
        self._close_listener()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ one connection
    def _serve_connection(self, client: socket.socket) -> None:
        with self._lock:
            self._connections.add(client)
        reader = client.makefile("rb")
        upstream: http.client.HTTPConnection | None = None
        try:
            while True:
                method, target, headers, body = _read_request(reader)
                fault = self._fault_for(method, target)
                if self.delay:
                    time.sleep(self.delay)
                if fault == "reset":
                    _reset(client)
                    return
                if fault in STATUS_FAULTS:
                    _send(client, STATUS_FAULTS[fault], "Injected", [], _fault_body(fault))
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(
                        self.upstream_host, self.upstream_port, timeout=self.timeout
                    )
                status, reason, answer_headers, answer = _forward(
                    upstream, method, target, headers, body
                )
                if fault == "slow":
                    time.sleep(self.slow_s)
                if fault == "truncate":
                    length = None if method == "HEAD" else len(answer)
                    _send(
                        client, status, reason, answer_headers, answer[: len(answer) // 2], length
                    )
                    client.shutdown(socket.SHUT_RDWR)
                    return
                length = _head_length(answer_headers) if method == "HEAD" else None
                _send(client, status, reason, answer_headers, answer, length)
        except (_Closed, OSError, http.client.HTTPException):
            return
        finally:
            with self._lock:
                self._connections.discard(client)
            if upstream is not None:
                upstream.close()
            reader.close()


def _read_request(reader) -> tuple[str, str, list[tuple[str, str]], bytes]:
    line = reader.readline(_MAX_HEAD)
    if not line:
        raise _Closed
    try:
        method, target, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        raise _Closed from None
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(_MAX_HEAD)
        if not raw:
            raise _Closed
        if raw in (b"\r\n", b"\n"):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    if any(name.lower() == "transfer-encoding" for name, _ in headers):
        raise _Closed  # chunked request bodies: no client of the demo world sends them
    body = reader.read(int(lengths[0])) if lengths else b""
    return method, target, headers, body


def _forward(
    upstream: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    for attempt in range(2):  # a kept-alive upstream connection may have been closed meanwhile
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_HEADERS:
                    upstream.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            answer = response.read()
            kept = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP_HEADERS]
            if method == "HEAD" and (length := response.getheader("Content-Length")) is not None:
                kept.append(("Content-Length", length))
            return response.status, response.reason, kept, answer
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            upstream.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _head_length(headers: list[tuple[str, str]]) -> int | None:
    found = [value for name, value in headers if name.lower() == "content-length"]
    return int(found[0]) if found else 0


def _send(
    client: socket.socket,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    length: int | None = None,
) -> None:
    """One answer; `length` is the Content-Length announced (default: the body's)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{n}: {v}" for n, v in headers if n.lower() not in _HOP_HEADERS]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    client.sendall(head + body)


def _fault_body(kind: str) -> bytes:
    return f'{{"detail": "fault injected by the relay: {kind}"}}'.encode()


def _reset(client: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()

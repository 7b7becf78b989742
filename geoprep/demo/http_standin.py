"""A small base for offline stand-ins of web services: a stdlib threaded HTTP server on loopback."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, Self, TypeVar

RecordT = TypeVar("RecordT")


class StandInState(Protocol[RecordT]):
    """What every stand-in's shared state offers: the requests it answered, under a lock."""

    requests: list[RecordT]
    lock: threading.Lock


class StandInHandler(BaseHTTPRequestHandler):
    """Request handler base: HTTP/1.1 keep-alive, the server's state, access log at debug."""

    protocol_version = "HTTP/1.1"

    @property
    def _state(self) -> Any:
        return self.server.stand_in_state  # type: ignore[attr-defined]

    def end_headers(self) -> None:
        # A client that sent `Connection: close` (internetarchive does on every request) gets it
        # back, as from a real server; without it the client pools the connection this server
        # is about to close, and its next request fails and is retried with a warning.
        if self.close_connection and not any(
            line.lower().startswith(b"connection:") for line in getattr(self, "_headers_buffer", [])
        ):
            self.send_header("Connection", "close")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        # Logged under the module of the concrete handler, as each stand-in's own records.
        logging.getLogger(type(self).__module__).debug(
            "%s " + format, self.client_address[0], *args
        )


class ThreadedStandIn(Generic[RecordT]):
    """A threaded HTTP server on 127.0.0.1 sharing `state` with its handlers; a context manager.

    Subclasses set `thread_name` and `poll_interval_s` (how long `stop` may wait for the serving
    loop to notice; serving itself is not affected by it).
    """

    thread_name = "stand-in"
    poll_interval_s = 0.05

    def __init__(
        self, state: StandInState[RecordT], handler: type[StandInHandler], port: int = 0
    ) -> None:
        self._state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._server.stand_in_state = state  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordT]:
        with self._state.lock:
            return list(self._state.requests)

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.poll_interval_s},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

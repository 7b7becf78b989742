"""Runs stac-fastapi-static over a static catalog as a real STAC API on loopback."""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from geoprep.core.errors import SourceError, UserError
from geoprep.demo.file_server import LOOPBACK, wait_until_answers

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the thread that started it goes away."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class StacApiServer:
    """`python -m stac_fastapi.static.app` over `catalog_json`, stopped with its process tree.

    The port is chosen before launch (the app cannot report an OS-picked port), so a lost race
    for it is retried with a fresh one. Extra stac-fastapi-static settings (e.g.
    `assume_best_practice_layout`) go in `settings`.
    """

    def __init__(
        self,
        catalog_json: str | Path,
        port: int = 0,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.catalog_json = Path(catalog_json).resolve()
        if not self.catalog_json.is_file():
            raise UserError(f"STAC catalog {self.catalog_json} does not exist")
        self.requested_port = port
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("StacApiServer is not running")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> StacApiServer:
        if self._process is not None:
            return self
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            self.port = self.requested_port or _free_port()
            self._launch()
            try:
                response = wait_until_answers(self.url + "/", self.start_timeout, self._running)
            except SourceError as error:
                output = self._output_tail()
                self.stop()
                if attempt + 1 < attempts and "address already in use" in output.lower():
                    continue
                raise SourceError(
                    f"STAC API over {self.catalog_json} failed: {error}\n{output}"
                ) from error
            if response.status_code != 200:
                output = self._output_tail()
                self.stop()
                raise SourceError(
                    f"STAC API over {self.catalog_json} answered {response.status_code} on its "
                    f"landing page: {response.text[:500]}\n{output}"
                )
            log.debug("STAC API on %s (pid %s)", self.url, self.pid)
            return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        # A private working directory: pydantic-settings would read a stray `.env` in the cwd.
        self._workdir = tempfile.TemporaryDirectory(prefix="geoprep-stac-api-")
        env = dict(os.environ)
        env.update(
            {
                "catalog_href": self.catalog_json.as_uri(),
                "app_host": LOOPBACK,
                "app_port": str(self.port),
                "reload": "false",
                "log_level": "warning",
                "root_path": "",
                **self.settings,
            }
        )
        log_file = open(Path(self._workdir.name) / "server.log", "wb")  # noqa: SIM115
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stac_fastapi.static.app"],
            cwd=self._workdir.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # The parent-death signal follows the starting thread, so only tie it to the main one.
            preexec_fn=_die_with_parent if in_main_thread and sys.platform == "linux" else None,
        )
        log_file.close()
        atexit.register(self.stop)

    def _running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _output_tail(self, limit: int = 4000) -> str:
        if self._workdir is None:
            return ""
        log_path = Path(self._workdir.name) / "server.log"
        try:
            return log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.warning("STAC API (pid %s) ignored SIGTERM; killing it", process.pid)
                    process.kill()
                    process.wait(timeout=10)
            atexit.unregister(self.stop)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> StacApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""Shared fixtures: one tiny demo world per test session, and the world served per module."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest
from planetary_computer import sas as pc_sas
from planetary_computer.settings import Settings as PcSettings

from geoprep.demo.servers import WorldServices, serve_world
from geoprep.demo.world import build_world


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """A tiny demo world (seed 0) built once per session; tests must not modify it."""
    out = tmp_path_factory.mktemp("demo") / "world"
    build_world(out, seed=0, scale="tiny")
    return out


def fresh_tokens(services: WorldServices) -> None:
    """Empty the SAS SDK's caches, so a build has to ask the stand-in for tokens."""
    PcSettings.get.cache_clear()
    pc_sas.TOKEN_CACHE.clear()
    services.sas_server.token_requests.clear()


@pytest.fixture(scope="module")
def services(demo_world):
    """The tiny world served on loopback, with its environment (SAS URL, GDAL proxy) set."""
    with serve_world(demo_world) as served, pytest.MonkeyPatch.context() as patch:
        for name, value in served.env().items():
            patch.setenv(name, value)
        fresh_tokens(served)
        yield served
        fresh_tokens(served)


@pytest.fixture
def pc_sdk(services: WorldServices, monkeypatch: pytest.MonkeyPatch):
    """planetary_computer signing through the served world's token service, caches emptied;
    yields the token service (the module's own `services` where it defines one)."""
    monkeypatch.setenv("PC_SDK_SAS_URL", services.sas_token_url)
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    fresh_tokens(services)
    yield services.sas_server
    fresh_tokens(services)


class ServeRun:
    """Starts `... serve` commands in subprocesses and stops them as a user would."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str]) -> tuple[subprocess.Popen, list[str]]:
        """The running server and the lines it printed up to its `serving;` line."""
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.started.append(server)
        lines = []
        for line in server.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("serving;"):
                break
        return server, lines

    @staticmethod
    def stop(server: subprocess.Popen, signal_number: int = signal.SIGINT) -> None:
        """Send `signal_number`; the server must exit 0 after printing `stopped`."""
        server.send_signal(signal_number)
        assert server.wait(timeout=30) == 0
        assert server.stdout.read().strip().endswith("stopped")

    def kill_left_over(self) -> None:
        for server in self.started:
            if server.poll() is None:
                server.kill()
                server.wait()


@pytest.fixture
def serve_run() -> Iterator[ServeRun]:
    """A `ServeRun` whose servers are killed at teardown if a test left them running."""
    runner = ServeRun()
    yield runner
    runner.kill_left_over()

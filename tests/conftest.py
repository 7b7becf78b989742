"""Shared fixtures: one tiny demo world per test session, and the world served per module."""

from __future__ import annotations

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

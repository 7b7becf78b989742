"""Shared fixtures: one tiny demo world per test session."""

from __future__ import annotations

import pytest

from geoprep.demo.world import build_world


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """A tiny demo world (seed 0) built once per session; tests must not modify it."""
    out = tmp_path_factory.mktemp("demo") / "world"
    build_world(out, seed=0, scale="tiny")
    return out

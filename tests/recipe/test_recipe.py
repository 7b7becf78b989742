"""Recipe validation, overrides and the one-line errors users see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from geoprep.core.errors import UserError
from geoprep.recipe.load import apply_override, load_recipe

REPO = Path(__file__).resolve().parents[2]
# recipes/train holds geossl training configs, not geoprep recipes
REAL_RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "train" not in p.parts)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


GOOD = """
name: t
seed: 3
sampler: {kind: urban, n: 10, sigma_km: 5}
"""


@pytest.mark.parametrize("path", REAL_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.sampler.kind in {"urban", "osm", "aporee", "fmow", "points"}


def test_defaults_and_overrides(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD), ["sampler.n=500", "clusters.k=7"])
    assert recipe.sampler.n == 500
    assert recipe.sampler.min_distance_m == 1980.0
    assert recipe.clusters.k == 7
    assert recipe.splits.train == pytest.approx(0.8)


def test_digest_tracks_content(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_recipe(path).digest() == load_recipe(path).digest()
    assert load_recipe(path).digest() != load_recipe(path, ["seed=4"]).digest()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sampler.sigma_km=-1"], "sampler.sigma_km: got -1; expected greater than 0"),
        (["sampler.n=many"], "sampler.n: got 'many'; expected a valid integer"),
        (["sampler.sigmakm=3"], "sampler.sigmakm: unknown key; expected one of: kind, n,"),
        (["sampler.kind=nope"], "sampler.kind: got 'nope'; expected one of: urban"),
        (["splits.train=0.5"], "splits: train + val + test must be 1, got 0.7"),
        (["bogus=1"], "bogus: unknown key; expected one of: name, description, seed"),
        (["seed=-1"], "seed: got -1; expected greater than or equal to 0"),
        (["name=has space"], "name: got 'has space'"),
    ],
)
def test_bad_values_name_file_key_value(tmp_path: Path, overrides, expected) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed", "not valid YAML at line 1"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: t\n", "sampler: required key is missing"),
    ],
)
def test_unreadable_recipes(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        load_recipe(write(tmp_path, text))


IMAGERY = """
name: t
sampler: {kind: urban, n: 10}
imagery:
  catalogs: {pc: {url: "http://127.0.0.1:1/api/stac/v1", provider: planetary-computer}}
  sensors: {s2: {catalog: pc, collection: sentinel-2-l2a, assets: [B02, B03]}}
  time: {mode: seasonal, reference: 2021-09-22}
"""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["imagery.sensors.s2.bandz=1"],
            "imagery.sensors.s2.bandz: unknown key; expected one of: catalog, collection, assets",
        ),
        (["imagery.time.mode=weekly"], "imagery.time.mode: got 'weekly'; expected one of: single"),
        (["imagery.time.n_datez=3"], "imagery.time.n_datez: unknown key; expected one of: mode,"),
        (["imagery.sensors.s2.catalog=nope"], "sensors.s2.catalog is 'nope'; expected one of"),
        (["imagery.grid.size=0"], "imagery.grid.size: got 0; expected greater than 0"),
        (["imagery.sensors.s2.fallback_for=s2"], "fallback_for is 's2'; expected one of []"),
        (["imagery.sensors.s2.assets=[]"], "imagery.sensors.s2.assets: got []"),
    ],
)
def test_nested_sections_report_clean_paths(tmp_path: Path, overrides, expected) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(write(tmp_path, IMAGERY), overrides)
    assert expected in str(info.value)


def test_digest_ignores_how_sources_are_reached(tmp_path: Path) -> None:
    path = write(tmp_path, IMAGERY)
    base = load_recipe(path)
    moved = load_recipe(path, ["imagery.catalogs.pc.url=http://127.0.0.1:2/api/stac/v1"])
    assert moved.digest() == base.digest()
    assert load_recipe(path, ["imagery.grid.size=64"]).digest() != base.digest()
    assert load_recipe(path, ["imagery.sensors.s2.assets=[B02]"]).digest() != base.digest()


def test_imagery_section_validates(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, IMAGERY))
    assert recipe.imagery.time.mode == "seasonal" and recipe.imagery.grid.size == 128
    assert (
        recipe.plan_digest()
        == load_recipe(write(tmp_path, IMAGERY), ["imagery.grid.size=64"]).plan_digest()
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")


@pytest.mark.parametrize("item", ["noequals", "=3", "sampler.n.deeper=3"])
def test_malformed_set(item: str) -> None:
    data = {"sampler": {"n": 3}}
    with pytest.raises(UserError, match="--set"):
        apply_override(data, item)


def test_set_creates_sections_and_parses_yaml() -> None:
    data: dict = {}
    apply_override(data, "a.b=[1, 2]")
    apply_override(data, "a.c=true")
    apply_override(data, "d=text")
    assert data == {"a": {"b": [1, 2], "c": True}, "d": "text"}


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoprep.cli",
            "plan",
            str(path),
            "-o",
            str(tmp_path / "o"),
            "--set",
            "sampler.sigma_km=0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sampler.sigma_km: got 0" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()

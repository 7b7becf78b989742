"""Bad recipes as a new user or an attacker writes them: one clear line and exit 2, never a
traceback or a hang; and property-based: any YAML, any types, any values."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoprep.cli import main
from geoprep.core.errors import UserError
from geoprep.recipe.load import load_recipe

GOOD = """\
name: ok
seed: 3
sampler: {kind: urban, n: 5, sigma_km: 5, top_cities: 3, land_only: false}
clusters: {k: 2}
"""

IMAGERY = """\
imagery:
  catalogs: {pc: {url: %s}}
  sensors: {s2: {catalog: pc, collection: sentinel-2-l2a, assets: [B04]}}
  time: {mode: single, start: %s, end: %s}
"""


def cities_csv(tmp_path: Path) -> Path:
    path = tmp_path / "cities.csv"
    path.write_text("name,lat,lon,population\na,10,10,100\nb,20,20,50\nc,-5,30,10\n")
    return path


BAD: dict[str, tuple[bytes | str, str]] = {
    "latin-1": (GOOD.replace("ok", "caf\xe9").encode("latin-1"), "not UTF-8 text"),
    "utf-16": (GOOD.encode("utf-16"), "UTF-16"),
    "deep-nesting": ("a: " + "[" * 20_000 + "]" * 20_000, "nesting deeper than"),
    "deep-mapping": ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 200)), "nesting"),
    "seed-huge": (GOOD.replace("seed: 3", f"seed: {10**30}"), "seed: got"),
    "seed-bool": (GOOD.replace("seed: 3", "seed: true"), "seed: got True; expected a number"),
    "sigma-inf": (GOOD.replace("sigma_km: 5", "sigma_km: .inf"), "sampler.sigma_km: got inf"),
    "sigma-nan": (GOOD.replace("sigma_km: 5", "sigma_km: .nan"), "sampler.sigma_km: got nan"),
    "min-distance-inf": (
        GOOD.replace("sigma_km: 5", "sigma_km: 5, min_distance_m: .inf"),
        "sampler.min_distance_m: got inf",
    ),
    "n-huge": (GOOD.replace("n: 5", f"n: {10**20}"), "sampler.n: got"),
    "duplicate-key": (GOOD + "seed: 4\n", "duplicate key 'seed'"),
    "duplicate-nested-key": (
        GOOD.replace("{k: 2}", "{k: 2, k: 3}"),
        "duplicate key 'k'",
    ),
    "time-reversed": (
        GOOD + IMAGERY % ("https://example.org/stac", "2021-06-01", "2021-01-01"),
        "start 2021-06-01 is after end 2021-01-01",
    ),
    "catalog-not-a-url": (
        GOOD + IMAGERY % ("'not a url'", "2021-01-01", "2021-06-01"),
        "a STAC API is an http(s):// URL",
    ),
    "top-level-list": ("- a\n- b\n", "expected a mapping"),
    "unhashable-key": ("? [a, b]\n: 1\n", "unhashable key"),
    "huge-file": ("# " + "x" * (2 << 20), "larger than 1 MB"),
    "splits-section-short": (GOOD + "splits: {train: 0.5, val: 0.1, test: 0.1}\n", "must be 1"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_recipe_is_one_line_and_exit_2(tmp_path: Path, capsys, name: str) -> None:
    content, expected = BAD[name]
    path = tmp_path / "recipe.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err
    assert all(len(line) < 240 for line in err.splitlines()), err


PLAN_TIME: dict[str, tuple[str, str]] = {
    "cities-directory": ("cities: {dir}", "is a directory"),
    "cities-garbage": ("cities: {garbage}", "cannot read"),
    "within-garbage": ("cities: {cities}, within: {garbage}", "cannot read"),
    "within-directory": ("cities: {cities}, within: {dir}", "is a directory"),
}


@pytest.mark.parametrize("name", sorted(PLAN_TIME))
def test_bad_files_named_by_a_recipe_fail_plan_with_one_line(
    tmp_path: Path, capsys, name: str
) -> None:
    extra, expected = PLAN_TIME[name]
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(bytes(range(256)) * 8)
    (tmp_path / "somedir").mkdir()
    files = {"dir": tmp_path / "somedir", "garbage": garbage, "cities": cities_csv(tmp_path)}
    sampler = "{kind: urban, n: 3, sigma_km: 5, top_cities: 3, land_only: false, %s}"
    recipe = GOOD.replace(GOOD.splitlines()[2], "sampler: " + sampler % extra.format(**files))
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    assert main(["plan", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_an_impossible_count_is_refused_before_sampling(tmp_path: Path, capsys) -> None:
    """More points min_distance_m apart than fit on the Earth's land: refused, not a hang."""
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD.replace("sigma_km: 5", "sigma_km: 5, min_distance_m: 100000"))
    with pytest.raises(UserError, match="at most"):
        load_recipe(path, ["sampler.n=1000000"])


# ---------------------------------------------------------------- property-based

KEYS = st.sampled_from(
    ["name", "seed", "sampler", "kind", "n", "sigma_km", "clusters", "k", "splits", "train",
     "imagery", "catalogs", "url", "time", "mode", "start", "end", "output", "format", "x"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.dates().map(str),
    st.sampled_from(["urban", "points", "single", "https://x.org/", ".inf", "~", "1e400"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


def check_one_line_or_valid(path: Path, overrides: list[str]) -> None:
    try:
        load_recipe(path, overrides)
    except UserError as error:
        assert str(error).strip(), "an empty message"
        assert all(0 < len(line) < 400 for line in str(error).splitlines()), str(error)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(document=st.dictionaries(KEYS, VALUES, max_size=8))
def test_any_yaml_document_gives_a_recipe_or_user_errors(tmp_path_factory, document) -> None:
    path = tmp_path_factory.mktemp("h") / "recipe.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    check_one_line_or_valid(path, [])


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(text=st.text(alphabet=string.printable + "é\u2028\x00\ufeff", max_size=200))
def test_any_text_gives_a_recipe_or_user_errors(tmp_path_factory, text) -> None:
    path = tmp_path_factory.mktemp("h") / "recipe.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_one_line_or_valid(path, [])


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(
    key=st.lists(KEYS | st.text(max_size=8), min_size=1, max_size=4).map(".".join),
    value=st.one_of(SCALARS.map(str), st.text(max_size=40), VALUES.map(yaml.safe_dump)),
)
def test_any_set_override_gives_a_recipe_or_user_errors(tmp_path_factory, key, value) -> None:
    path = tmp_path_factory.mktemp("h") / "recipe.yaml"
    path.write_text(GOOD)
    check_one_line_or_valid(path, [f"{key}={value}"])


@pytest.mark.parametrize("key", ["0\x1e\r0", "a\nb", "sampler.x\u2028y"])
def test_a_key_with_line_breaks_is_escaped_in_its_error_line(tmp_path, key) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD)
    with pytest.raises(UserError) as error:
        load_recipe(path, [f"{key}=None"])
    assert len(str(error.value).splitlines()) == 1 and repr(key.split(".")[-1]) in str(error.value)


def test_a_long_set_item_is_shortened_in_its_error_line(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD)
    with pytest.raises(UserError, match="is a value, not a section") as error:
        load_recipe(path, ["name.name=" + "x" * 2000])
    assert len(str(error.value).splitlines()) == 1 and len(str(error.value)) < 400

"""The planning stage: clusters, splits, the files it writes, and the points sampler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from geoprep.planning.clusters import assign_splits, geo_clusters
from geoprep.planning.plan import plan, read_locations
from geoprep.recipe.load import validate_recipe
from geoprep.recipe.sections import ClusterConfig, SplitConfig

REQUIRED = ["id", "lat", "lon", "geometry", "source", "label", "cluster", "split"]


def urban_recipe(**sampler) -> dict:
    return {
        "name": "t",
        "seed": 5,
        "sampler": {"kind": "urban", "n": 400, "sigma_km": 20, **sampler},
        "clusters": {"k": 12},
    }


def test_plan_writes_geoparquet_with_required_columns(tmp_path: Path) -> None:
    summary = plan(validate_recipe(urban_recipe()), str(tmp_path))
    table = read_locations(str(tmp_path))
    assert list(table.columns[: len(REQUIRED)]) == REQUIRED
    assert table.crs.to_epsg() == 4326
    assert (table.geometry.x == table["lon"]).all() and (table.geometry.y == table["lat"]).all()
    assert not table["id"].str.contains(".", regex=False).any()
    assert table["id"].is_unique
    clusters = gpd.read_parquet(tmp_path / "clusters.parquet")
    assert len(clusters) == 12 == summary.n_clusters
    assert clusters["size"].sum() == len(table)
    manifest = json.loads((tmp_path / "plan.json").read_text())
    assert manifest["n_locations"] == 400
    assert manifest["by_split"] == summary.by_split


def test_same_recipe_same_bytes(tmp_path: Path) -> None:
    recipe = validate_recipe(urban_recipe())
    plan(recipe, str(tmp_path / "a"))
    plan(recipe, str(tmp_path / "b"))
    for name in ("locations.parquet", "clusters.parquet", "plan.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_clusters_do_not_break_at_antimeridian() -> None:
    lat = np.array([0.0, 0.5, -0.5, 0.0, 30.0, 30.5])
    lon = np.array([179.8, -179.9, 179.9, -179.7, 20.0, 20.3])
    labels, centres = geo_clusters(lat, lon, ClusterConfig(k=2), seed=0)
    assert len(set(labels[:4])) == 1 and labels[4] == labels[5] != labels[0]
    dateline = centres.loc[centres["cluster"] == labels[0]].iloc[0]
    assert abs(dateline["lon"]) > 179.0


def test_fewer_points_than_clusters() -> None:
    labels, centres = geo_clusters(np.array([1.0, 2.0]), np.array([3.0, 4.0]), ClusterConfig(), 0)
    assert len(centres) == 2 and sorted(labels) == [0, 1]


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (1.0, 0.0, 0.0)])
def test_splits_follow_clusters_and_fractions(fractions) -> None:
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 100, 20_000)
    config = SplitConfig(train=fractions[0], val=fractions[1], test=fractions[2])
    splits = assign_splits(clusters, config, seed=1)
    frame = pd.DataFrame({"cluster": clusters, "split": splits})
    assert (frame.groupby("cluster")["split"].nunique() == 1).all()
    shares = frame["split"].value_counts(normalize=True)
    for name, want in zip(("train", "val", "test"), fractions, strict=True):
        assert shares.get(name, 0.0) == pytest.approx(want, abs=0.03)


def test_points_sampler_csv(tmp_path: Path) -> None:
    csv = tmp_path / "pts.csv"
    pd.DataFrame(
        {
            "name": ["a.1", "b", "c", "d", "bad"],
            "Latitude": [10.0, 11.0, 12.0, 13.0, 95.0],
            "Longitude": [1.0, 2.0, 3.0, 4.0, 5.0],
            "kind": ["x", "y", "x", "y", "x"],
        }
    ).to_csv(csv, index=False)
    recipe = validate_recipe(
        {
            "name": "p",
            "sampler": {
                "kind": "points",
                "path": str(csv),
                "id_column": "name",
                "label_column": "kind",
                "n": 3,
            },
            "clusters": {"k": 2},
        }
    )
    summary = plan(recipe, str(tmp_path / "out"))
    table = read_locations(str(tmp_path / "out"))
    assert len(table) == 3
    assert set(table["id"]) <= {"a-1", "b", "c", "d"}
    assert summary.dropped == {"impossible_coordinates": 1, "over_cap": 1}
    assert "name" in table.columns and set(table["label"]) <= {"x", "y"}


def test_points_sampler_geoparquet(tmp_path: Path) -> None:
    path = tmp_path / "pts.parquet"
    gpd.GeoDataFrame(
        {"v": [1, 2]}, geometry=gpd.points_from_xy([5.0, 6.0], [50.0, 51.0]), crs=4326
    ).to_parquet(path)
    recipe = validate_recipe({"name": "p", "sampler": {"kind": "points", "path": str(path)}})
    plan(recipe, str(tmp_path / "out"))
    table = read_locations(str(tmp_path / "out"))
    assert table["lat"].tolist() == [50.0, 51.0] and table["v"].tolist() == [1, 2]


def test_cli_plan_json(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsampler: {kind: urban, n: 50}\nclusters: {k: 3}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoprep.cli",
            "plan",
            str(recipe),
            "-o",
            str(tmp_path / "o"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(proc.stdout)
    assert summary["n_locations"] == 50 and summary["n_clusters"] == 3


def test_large_plans_fit_on_a_seeded_sample_and_join_the_nearest_centre(monkeypatch) -> None:
    import geoprep.planning.clusters as clusters
    from geoprep.planning.samplers.geometry import unit_xyz

    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-60, 70, 3000), rng.uniform(-180, 180, 3000)
    config = ClusterConfig(k=12, n_init=1)
    full, _ = geo_clusters(lat, lon, config, seed=4)
    monkeypatch.setattr(clusters, "FIT_MAX", 800)
    labels, centres = geo_clusters(lat, lon, config, seed=4)
    again, _ = geo_clusters(lat, lon, config, seed=4)
    np.testing.assert_array_equal(labels, again)
    assert centres["size"].sum() == 3000 and len(centres) == 12
    xyz, middle = unit_xyz(lat, lon), unit_xyz(centres["lat"], centres["lon"])
    nearest = ((xyz[:, None, :] - middle[None, :, :]) ** 2).sum(-1).argmin(1)
    # (centres are projected onto the sphere; the means they come from decide a few borders)
    assert (nearest == labels).mean() > 0.99 and (centres["size"] > 0).all()
    assert not np.array_equal(labels, full)  # the sample, not all 3,000 points, placed them

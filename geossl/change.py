"""Change detection check: rank locations by the embedding distance between their year groups.

For every location of a multi-year dataset (geoprep time mode `multi-year`), each encoder embeds
every season image of its first and last year group (the 20/60 m bands upsampled to the 10 m
grid, as in training); a year group's embedding is the mean of its L2-normalised features and
the location's score is the Euclidean distance between the two means. `change_auc` is the
ROC-AUC of that score against the truth "changed": land cover differing between the two years
(class by class) over at least `min_fraction` of the patch, read from a land-cover table with
the columns `cls`, `valid_from_year`, `valid_to_year` (inclusive) and polygon `geometry`
(GeoParquet or any file geopandas reads), such as the demo world's `truth/landcover.parquet`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import torch
from pyproj import CRS
from shapely.geometry import box
from sklearn.metrics import roc_auc_score

from geoprep import Sample, SampleError, UserError
from geossl.data import SampleStream, dataset_urls
from geossl.evaluate import Row
from geossl.methods import Method
from geossl.methods.caco import CACoFields

TRUTH_COLUMNS = ("cls", "valid_from_year", "valid_to_year", "geometry")


class YearGroupImages:
    """A location → every season of its first and last year group, and its footprint."""

    def __init__(self, method: Method, sensor: str) -> None:
        self.stacker = CACoFields(method.normalization, sensor)
        self.sensor = sensor

    def __call__(self, sample: Sample) -> dict[str, Any]:
        series, years, size = self.stacker.year_series(sample)
        stacks = []
        for year in (years[0], years[-1]):
            seasons = min(len(s[year]) for s in series.values())
            stacks.append([self.stacker.stack(series, year, i, size) for i in range(seasons)])
        image = max((s[years[0]][0] for s in series.values()), key=lambda a: a.shape[-1])
        return {
            "id": str(sample.meta.get("id", sample.key)),
            "first": torch.stack(stacks[0]),
            "last": torch.stack(stacks[1]),
            "years": _years(sample, self.sensor, years),
            "crs": image.crs,
            "bounds": image.bounds,
        }


def _years(sample: Sample, sensor: str, groups: list[int]) -> tuple[int, int]:
    """Calendar years of the first and last year group (from the images' datetimes)."""
    found: dict[int, list[dt.datetime]] = {}
    for info in sample.infos.values():
        if info.sensor == sensor and info.slot.startswith("y") and info.datetime is not None:
            group = int(info.slot[1:].split("s", 1)[0])
            found.setdefault(group, []).append(info.datetime)
    if groups[0] not in found or groups[-1] not in found:
        raise SampleError(f"sample {sample.key}: year-group images have no datetime")
    return min(found[groups[0]]).year, min(found[groups[-1]]).year


def load_truth(path: str | Path) -> gpd.GeoDataFrame:
    try:
        frame = gpd.read_parquet(path) if str(path).endswith(".parquet") else gpd.read_file(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read the land-cover truth ({error})") from None
    missing = [c for c in TRUTH_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: land-cover truth lacks columns {missing}; needs {TRUTH_COLUMNS}")
    return frame.to_crs(4326) if frame.crs is not None else frame.set_crs(4326)


def changed_fraction(
    truth: gpd.GeoDataFrame, crs: str, bounds: tuple[float, ...], years: tuple[int, int]
) -> float:
    """Share of the footprint whose land cover differs between the two years: per class, the
    symmetric difference of its cover in either year. A feature that ends where its successor
    of the same class begins (a forest cut back by a new quarry) counts only where the cover
    changed (the pit), not over all of it."""
    footprint = gpd.GeoSeries([box(*bounds)], crs=CRS.from_user_input(crs)).to_crs(4326)
    area = footprint.iloc[0]
    near = truth[truth.intersects(area)]
    first, last = years
    covers = []
    for year in (first, last):
        valid = near[(near.valid_from_year <= year) & (near.valid_to_year >= year)]
        covers.append({cls: part.union_all() for cls, part in valid.geometry.groupby(valid.cls)})
    differences = []
    for cls in set(covers[0]) | set(covers[1]):
        before, after = covers[0].get(cls), covers[1].get(cls)
        if before is None or after is None:
            differences.append(before if after is None else after)
        else:
            differences.append(before.symmetric_difference(after))
    if not differences:
        return 0.0
    changed = gpd.GeoSeries(differences, crs=4326).union_all()
    return float(changed.intersection(area).area / area.area)


def change_auc(
    encoders: dict[str, Method],
    source: str,
    truth_path: str | Path,
    sensor: str = "s2",
    min_fraction: float = 0.05,
    batch_size: int = 16,
) -> tuple[list[Row], dict[str, Any]]:
    """ROC-AUC of the year-group embedding distance against the truth, per encoder."""
    first = next(iter(encoders.values()))
    truth = load_truth(truth_path)
    fields = YearGroupImages(first, sensor)
    stream = SampleStream(
        dataset_urls(source), fields, max_member_bytes=first.config.data.max_member_bytes
    )
    distances: dict[str, list[float]] = {name: [] for name in encoders}
    changed: list[bool] = []
    for model in encoders.values():
        model.eval()
    with torch.no_grad():
        for item in stream:
            fraction = changed_fraction(truth, item["crs"], item["bounds"], item["years"])
            changed.append(fraction >= min_fraction)
            for name, model in encoders.items():
                means = []
                for key in ("first", "last"):
                    x = model.prepare_input(item[key])
                    features = torch.nn.functional.normalize(model.features(x).float(), dim=1)
                    means.append(features.mean(0))
                distances[name].append(float((means[0] - means[1]).norm()))
    labels = np.array(changed)
    if labels.all() or not labels.any():
        raise UserError(
            f"{source}: {int(labels.sum())} of {len(labels)} locations changed per {truth_path}; "
            "change_auc needs both changed and unchanged locations"
        )
    rows = [
        Row(name, "change_auc", float(roc_auc_score(labels, np.array(d))), len(labels))
        for name, d in distances.items()
    ]
    return rows, {"changed": int(labels.sum()), "locations": len(labels)}

"""Geo-clusters (k-means on the unit sphere) and cluster-wise train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoprep.planning.samplers.geometry import unit_xyz, xyz_to_latlon
from geoprep.recipe.sections import ClusterConfig, SplitConfig

#: K-means is fitted on at most this many locations (a seeded sample of larger plans).
FIT_MAX = 100_000


def geo_clusters(
    lat: np.ndarray, lon: np.ndarray, config: ClusterConfig, seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cluster index per point and a table of centres (cluster, lat, lon, size).

    K-means runs on unit-sphere xyz, so a cluster may straddle the antimeridian; centres are
    projected back onto the sphere. Above `FIT_MAX` locations it is fitted on a seeded sample
    of `FIT_MAX` of them and every location joins its nearest centre: a hundred clusters are
    placed as well from 100,000 points, and 10 million are clustered in seconds, not hours.
    """
    from sklearn.cluster import KMeans  # imported here: build workers never cluster

    xyz = unit_xyz(lat, lon)
    k = min(config.k, len(xyz))
    if k == 0:
        return np.zeros(0, dtype=np.int32), pd.DataFrame(columns=["cluster", "lat", "lon", "size"])
    model = KMeans(n_clusters=k, n_init=config.n_init, random_state=seed)
    if len(xyz) > FIT_MAX:
        sample = np.sort(np.random.default_rng(seed).choice(len(xyz), FIT_MAX, replace=False))
        labels = model.fit(xyz[sample]).predict(xyz).astype(np.int32)
    else:
        labels = model.fit(xyz).labels_.astype(np.int32)
    # Number clusters by centre position (north to south, then west to east) so ids do not depend
    # on k-means' internal order.
    c_lat, c_lon = xyz_to_latlon(model.cluster_centers_)
    order = np.lexsort((np.round(c_lon, 6), -np.round(c_lat, 6)))
    renumber = np.empty(k, dtype=np.int32)
    renumber[order] = np.arange(k, dtype=np.int32)
    labels = renumber[labels]
    sizes = np.bincount(labels, minlength=k)
    centres = pd.DataFrame(
        {
            "cluster": np.arange(k, dtype=np.int32),
            "lat": c_lat[order],
            "lon": c_lon[order],
            "size": sizes,
        }
    )
    return labels, centres


def assign_splits(clusters: np.ndarray, config: SplitConfig, seed: int) -> np.ndarray:
    """Split name per point: clusters are shuffled, then filled into splits by location count.

    Each cluster goes to the split whose target share is least filled, which keeps the realised
    fractions close to the asked ones even with uneven cluster sizes.
    """
    fractions = config.fractions()
    names = [name for name, f in fractions.items() if f > 0]
    sizes = np.bincount(clusters) if len(clusters) else np.zeros(0, int)
    order = np.random.default_rng(seed).permutation(len(sizes))
    total = max(len(clusters), 1)
    filled = dict.fromkeys(names, 0)
    split_of_cluster = np.empty(len(sizes), dtype=object)
    for c in order:
        # deficit relative to target; ties resolve in the fixed order train, val, test
        name = max(names, key=lambda s: fractions[s] * total - filled[s])
        split_of_cluster[c] = name
        filled[name] += int(sizes[c])
    return split_of_cluster[np.asarray(clusters, dtype=np.intp)]

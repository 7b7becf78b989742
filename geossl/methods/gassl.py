"""Geography-Aware SSL: MoCo-v2 with temporal positives and a geo-cluster classification head.

Faithful to the paper (methods.md §2) unless the config picks the official code's value:
- a sample is one fMoW location (`fmow.t0`, `fmow.t1`, … in time order); the query is one of its
  images drawn uniformly and the key another one of them (+TP; the same image when the location
  has only one, as the code does), or the query image again (plain MoCo-v2); both views get the
  MoCo-v2 augmentations independently, crops scaled to the patch (methods.md §2.2);
- loss α·InfoNCE(q, k⁺, queue)/τ + β·CE(geo head(q), cluster), α = β = 1, τ = 0.2 (code 0.02);
  the geo head is a linear classifier over the dataset's K geo-clusters applied to the query's
  un-normalised 128-d head output (code: ReLU before it); K is read from the dataset (the
  build's `clusters.k`, else the largest `cluster` + 1 of its samples), never typed;
- not symmetrised, negatives from one queue of 65,536 keys, m = 0.999.
Evaluation uses the dataset's `label` (the fMoW category).
"""

from __future__ import annotations

import json
import re
from typing import Any

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoprep import Sample, SampleError, UserError
from geossl.config import GASSLConfig, TrainConfig
from geossl.data import Normalization, dataset_urls, raw_samples, valid_mask
from geossl.methods.augment import MoCoAugment
from geossl.methods.base import StepOutput
from geossl.methods.moco import MoCo, info_nce

_TIME_SLOT = re.compile(r"^t(\d+)$")


def dataset_clusters(source: str | list[str], max_bytes: int = 512 * 2**20) -> int:
    """K geo-clusters of a dataset: the build's recipe `clusters.k`, else max `cluster` + 1."""
    if isinstance(source, str) and not source.endswith((".tar", ".json")) and "{" not in source:
        try:
            with fsspec.open(source.rstrip("/") + "/manifest.json") as handle:
                k = (json.load(handle).get("recipe") or {}).get("clusters", {}).get("k")
            if isinstance(k, int) and k > 0:
                return k
        except (OSError, ValueError, AttributeError):
            pass
    largest = -1
    for url in dataset_urls(source):
        for raw in raw_samples(url, max_bytes):
            try:
                cluster = json.loads(raw["json"]).get("cluster")
            except (KeyError, ValueError, AttributeError):
                continue
            if isinstance(cluster, int) and not isinstance(cluster, bool):
                largest = max(largest, cluster)
    if largest < 0:
        raise UserError(f"{source}: no sample has an integer 'cluster' (GASSL's geo labels)")
    return largest + 1


def normalised_stack(sample: Sample, suffix: str, norm: Normalization) -> np.ndarray:
    """One image of the sample as (C, H, W) float32 in the encoder's band order, normalised."""
    info, image = sample.infos[suffix], sample.images[suffix]
    index = {f"{info.sensor}.{b}": i for i, b in enumerate(info.bands)}
    out = np.zeros((len(norm.bands), *image.array.shape[-2:]), np.float32)
    for i, name in enumerate(norm.bands):
        if name in index:
            array = image.array[index[name]]
            scaled = (array.astype(np.float32) - norm.mean[i]) / norm.std[i]
            out[i] = np.where(valid_mask(array, image.nodata), scaled, 0.0)
    return out


class GASSLFields:
    """A location → its query and key images (drawn from the batch's generator) and cluster."""

    draws = True

    def __init__(self, normalization: Normalization, sensor: str, temporal: bool) -> None:
        self.norm, self.sensor, self.temporal = normalization, sensor, temporal

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> dict[str, Any]:
        slots = sorted(
            (int(m[1]), suffix)
            for suffix, info in sample.infos.items()
            if info.sensor == self.sensor and (m := _TIME_SLOT.match(info.slot))
        )
        if not slots:
            raise SampleError(f"sample {sample.key} has no {self.sensor}.tN images")
        n = len(slots)
        g = generator or torch.Generator().manual_seed(0)
        first = int(torch.randint(0, n, (1,), generator=g))
        second = first
        if self.temporal and n > 1:
            second = int(torch.randint(0, n - 1, (1,), generator=g))
            second += second >= first  # uniform over the other images
        query = normalised_stack(sample, slots[first][1], self.norm)
        key = normalised_stack(sample, slots[second][1], self.norm)
        if query.shape != key.shape:
            raise SampleError(f"sample {sample.key}: images of different sizes")
        cluster = sample.meta.get("cluster")
        return {
            "query": torch.from_numpy(query),
            "key": torch.from_numpy(key),
            "cluster": torch.tensor(-1 if cluster is None else int(cluster)),
        }


class GASSLViews:
    """Both images of each pair through the MoCo-v2 pipeline, independently."""

    def __init__(self, config: GASSLConfig) -> None:
        self.augment = MoCoAugment(config)

    def __call__(
        self, batch: dict[str, Any], step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return {
            "query": self.augment(batch["query"], generator),
            "key": self.augment(batch["key"], generator),
            "cluster": batch["cluster"],
        }


def geo_loss(logits: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the geo head over samples with a cluster (−1: none)."""
    return F.cross_entropy(logits, clusters, ignore_index=-1)


class GASSL(MoCo):
    name = "gassl"

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        super().__init__(config, normalization)
        self.gassl: GASSLConfig = config.method
        self.clusters = 0
        if self.gassl.geo:
            self.clusters = dataset_clusters(config.data.source, config.data.max_member_bytes)
            linear = nn.Linear(self.gassl.dim, self.clusters)
            relu = self.gassl.geo_head == "relu-linear"
            self.geo_head = nn.Sequential(nn.ReLU(), linear) if relu else nn.Sequential(linear)

    def fields(self) -> GASSLFields:
        return GASSLFields(self.normalization, self.gassl.sensor, self.gassl.temporal)

    def views(self) -> GASSLViews:
        return GASSLViews(self.gassl)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        self.momentum_update()
        _, (projection,) = self.query(batch["query"])
        q = F.normalize(projection, dim=1)
        (k,) = self.keys(batch["key"], step)
        contrastive = info_nce(q, k, self.negatives(0), self.gassl.temperature)
        loss = self.gassl.alpha * contrastive
        metrics: dict[str, Any] = {"loss_infonce": contrastive.detach()}
        if self.gassl.geo:
            logits = self.geo_head(projection)
            geo = geo_loss(logits, batch["cluster"])
            loss = loss + self.gassl.beta * geo
            metrics["loss_geo"] = geo.detach()
            metrics["geo_accuracy"] = (logits.argmax(1) == batch["cluster"]).float().mean()
        with torch.no_grad():
            positive = (q * k).sum(1, keepdim=True)
            metrics["accuracy"] = (positive > q @ self.queue[0].T).all(1).float().mean()
        self.enqueue([k])
        return StepOutput(loss, metrics)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "geo_clusters": self.clusters}

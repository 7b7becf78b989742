"""Change-Aware Contrastive: SeCo's three subspaces with long-term negatives for changed places.

Faithful to methods.md §3 (the poster and the code agree on what is implemented here):
- a sample is one location of a multi-year Sentinel-2 build (`yXsY` slots; native 10/20/60 m
  groups are upsampled to the 10 m grid here); every batch row pair (2i, 2i + 1) is the same
  location in its first and last year group, so rows 0::2 and 1::2 are aligned (§3.2);
- per row, three distinct seasons t0, t1, t2 of its year group: q = t0, k0 = aug(t1),
  k1 = t2, k2 = aug(t0) (q and k1 are only cropped);
- three heads and three queues; positives and negatives per subspace exactly as §3.4, the
  negative "same location, other year group" masked (−1e8) unless that row's location is
  judged changed; τ = 0.07; the loss is the sum of the three cross-entropies;
- change ratio R = ‖l_q − l_q(partner)‖ / (‖l_q − l_k1‖ + 1e-4) with the key encoder and key
  head 1, EMA per (location, year group) r ← β·r + (1 − β)·R (β = 0.8, first visit r = R);
  a two-component GaussianMixture refit on all ratios at each epoch end decides "changed"
  (the component with the larger mean); before the first refit nothing is changed.
The change state lives in the training process (not the DataLoader workers): each step the
rows of every rank are gathered and applied in rank order, so all ranks hold the same state;
it is part of the module's state_dict (extra state), hence of every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from geoprep import Sample, SampleError, UserError
from geossl.config import CACoConfig, TrainConfig
from geossl.data import Normalization, dataset_urls, raw_samples, split_of, valid_mask
from geossl.methods.augment import MoCoAugment
from geossl.methods.base import StepOutput
from geossl.methods.moco import MoCo, gather

MASKED = -1e8  # added to a long-term negative's logit when the location is not judged changed


def location_id(key: str) -> int:
    """A stable 61-bit integer for a location id (tensors cannot carry strings)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 3


# ---------------------------------------------------------------- the loss


def parity_columns(scores: torch.Tensor) -> torch.Tensor:
    """Rows of year group A (even) keep columns 0::2, rows of group B (odd) columns 1::2."""
    even, odd = scores[:, 0::2], scores[:, 1::2]
    rows = torch.arange(len(scores), device=scores.device).view(-1, 1)
    return torch.where(rows % 2 == 0, even, odd)


def other_group_block(q: torch.Tensor, z: torch.Tensor, long_term: torch.Tensor) -> torch.Tensor:
    """q · z of the other year group's rows; the same location (column r // 2 of row r) masked
    unless long_term[r]."""
    n = len(q)
    even_rows = q @ z[1::2].T  # group-A rows against group-B keys
    odd_rows = q @ z[0::2].T
    rows = torch.arange(n, device=q.device)
    block = torch.where((rows % 2 == 0).view(-1, 1), even_rows, odd_rows)
    mask = torch.zeros_like(block)
    same = ~long_term.to(torch.bool)
    mask[rows[same], rows[same] // 2] = MASKED
    return block + mask


def subspace_logits(
    q: torch.Tensor,
    positive: torch.Tensor,
    queue: torch.Tensor,
    everyone: list[torch.Tensor],
    other: torch.Tensor,
    long_term: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """[q·k⁺ | same-group queue | q·z for every z in `everyone` | other group's `other`] / τ."""
    parts = [
        (q * positive).sum(1, keepdim=True),
        parity_columns(q @ queue.T),
        *[q @ z.T for z in everyone],
        other_group_block(q, other, long_term),
    ]
    return torch.cat(parts, dim=1) / temperature


def caco_loss(
    q: list[torch.Tensor],
    k: list[list[torch.Tensor]],
    queues: torch.Tensor,
    long_term: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Σ_i CE over subspaces i = 0, 1, 2 (§3.4); k[i][j] = key head i of key image j."""
    plan = {0: ([], 0), 1: ([0, 2], 1), 2: ([0, 1], 2)}  # (all-row negatives, other-group one)
    total, losses = 0.0, []
    for i, (everyone, other) in plan.items():
        logits = subspace_logits(
            q[i], k[i][i], queues[i], [k[i][j] for j in everyone], k[i][other], long_term,
            temperature,
        )  # fmt: skip
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
        losses.append(loss)
        total = total + loss
    return total, losses


# ---------------------------------------------------------------- change state


class ChangeState:
    """EMA of (long, short, ratio) per (location, year group) entry, and the GMM's verdicts."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.values: dict[int, np.ndarray] = {}
        self.changed: set[int] = set()
        self.refits = 0

    def update(self, entries: list[int], long: np.ndarray, short: np.ndarray) -> None:
        ratio = long / (short + 1e-4)
        for entry, new in zip(entries, np.stack([long, short, ratio], 1), strict=True):
            old = self.values.get(entry)
            self.values[entry] = new if old is None else self.beta * old + (1 - self.beta) * new

    def ratios(self) -> np.ndarray:
        return np.array([v[2] for v in self.values.values()], np.float64)

    def refit(self, seed: int) -> float | None:
        """Fit a two-component GMM to the ratios; entries in the larger-mean one are changed.
        Returns the threshold (smallest changed ratio) or None when too few entries."""
        from sklearn.mixture import GaussianMixture

        self.refits += 1
        entries = [e for e, v in self.values.items() if np.isfinite(v[2])]
        if len(entries) < 2:
            self.changed = set()
            return None
        ratios = np.array([self.values[e][2] for e in entries]).reshape(-1, 1)
        gmm = GaussianMixture(n_components=2, random_state=seed).fit(ratios)
        labels = gmm.predict(ratios)
        high = int(np.argmax(gmm.means_.ravel()))
        self.changed = {e for e, label in zip(entries, labels, strict=True) if label == high}
        chosen = ratios[labels == high]
        return float(chosen.min()) if len(chosen) else None

    def is_changed(self, entries: list[int]) -> list[bool]:
        return [e in self.changed for e in entries]

    def to_state(self) -> dict[str, Any]:
        ids = sorted(self.values)
        return {
            "ids": torch.tensor(ids, dtype=torch.int64),
            "values": torch.tensor(np.array([self.values[i] for i in ids]).reshape(-1, 3)),
            "changed": torch.tensor(sorted(self.changed), dtype=torch.int64),
            "refits": self.refits,
        }

    def load(self, state: dict[str, Any]) -> None:
        values = state["values"].double().numpy()
        self.values = {int(i): values[n] for n, i in enumerate(state["ids"].tolist())}
        self.changed = {int(i) for i in state["changed"].tolist()}
        self.refits = int(state["refits"])


# ---------------------------------------------------------------- data


class CACoFields:
    """A location → its first and last year group, three distinct seasons each, on the 10 m grid."""

    draws = True

    def __init__(self, normalization: Normalization, sensor: str) -> None:
        self.norm, self.sensor = normalization, sensor

    def year_series(self, sample: Sample) -> tuple[dict, list[int], int]:
        """({resolution group: {year group: [season images]}}, year groups, 10 m side)."""
        groups = sorted(sample.meta["grids"]) if "grids" in sample.meta else [None]
        series = {group: sample.year_groups(self.sensor, group) for group in groups}
        years = sorted(set.intersection(*(set(s) for s in series.values())))
        if len(years) < 2:
            raise SampleError(f"sample {sample.key}: needs two year groups, has {years}")
        size = max(s[years[0]][0].array.shape[-1] for s in series.values())
        return series, years, size

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> dict[str, Any]:
        g = generator or torch.Generator().manual_seed(0)
        series, years, size = self.year_series(sample)
        out: dict[str, list[torch.Tensor]] = {"t0": [], "t1": [], "t2": []}
        for year in (years[0], years[-1]):
            seasons = min(len(s[year]) for s in series.values())
            if seasons >= 3:
                picks = torch.randperm(seasons, generator=g)[:3].tolist()
            else:
                picks = torch.randint(0, seasons, (3,), generator=g).tolist()
            for name, season in zip(out, picks, strict=True):
                out[name].append(self.stack(series, year, season, size))
        fields: dict[str, Any] = {name: torch.stack(v) for name, v in out.items()}
        fields["location"] = torch.tensor(location_id(str(sample.meta.get("id", sample.key))))
        return fields

    def stack(self, series: dict, year: int, season: int, size: int) -> torch.Tensor:
        bands = []
        for i, name in enumerate(self.norm.bands):
            sensor, _, band = name.partition(".")
            found = [s[year][season] for s in series.values() if band in s[year][season].bands]
            if sensor != self.sensor or not found:
                raise SampleError(f"no band {name} in the {self.sensor} images")
            image = found[0]
            array = image.array[image.bands.index(band)]
            scaled = (array.astype(np.float32) - self.norm.mean[i]) / self.norm.std[i]
            layer = torch.from_numpy(np.where(valid_mask(array, image.nodata), scaled, 0.0))
            if layer.shape[-1] != size:  # 20 m and 60 m bands onto the 10 m grid
                layer = F.interpolate(layer[None, None].float(), size=(size, size), mode="bilinear")
                layer = layer[0, 0]
            bands.append(layer.float())
        return torch.stack(bands)


class CACoViews:
    """(B, 2, C, H, W) per season pick → 2B aligned rows; q, k1 cropped, k0, k2 augmented."""

    def __init__(self, config: CACoConfig) -> None:
        self.augment = MoCoAugment(config)

    def __call__(
        self, batch: dict[str, Any], step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        rows = {name: batch[name].flatten(0, 1) for name in ("t0", "t1", "t2")}
        location = batch["location"].repeat_interleave(2)
        group = torch.arange(len(location)) % 2
        return {
            "q": self.augment(rows["t0"], generator, jitter=False),
            "k0": self.augment(rows["t1"], generator),
            "k1": self.augment(rows["t2"], generator, jitter=False),
            "k2": self.augment(rows["t0"], generator),
            "entry": location * 2 + group,
        }


def train_locations(source: str | list[str], split: str, max_bytes: int) -> int:
    """Locations of the split (the build's manifest when it has the counts, else counted)."""
    count = 0
    for url in dataset_urls(source):
        for raw in raw_samples(url, max_bytes):
            count += split_of(raw) == split
    return count


# ---------------------------------------------------------------- the method


class CACo(MoCo):
    name = "caco"
    heads_count = 3

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        super().__init__(config, normalization)
        self.caco: CACoConfig = config.method
        rows = 2 * config.trainer.batch_size
        if self.caco.queue_size % rows:
            raise UserError(
                f"method.queue_size={self.caco.queue_size} must be a multiple of the "
                f"{rows} rows of a global batch (2 × trainer.batch_size): a queue column's "
                "parity is its year group"
            )
        self.change = ChangeState(self.caco.ema_beta)
        self._epoch_steps = self.caco.epoch_steps

    def fields(self) -> CACoFields:
        return CACoFields(self.normalization, self.caco.sensor)

    def views(self) -> CACoViews:
        return CACoViews(self.caco)

    @property
    def epoch_steps(self) -> int:
        if self._epoch_steps is None:
            data = self.config.data
            n = _manifest_train(data.source, data.split)
            if n is None:
                n = train_locations(data.source, data.split, data.max_member_bytes)
            self._epoch_steps = max(1, math.ceil(n / self.config.trainer.batch_size))
        return self._epoch_steps

    def long_term(self, entries: list[int]) -> torch.Tensor:
        if self.caco.long_term == "always":
            return torch.ones(len(entries), dtype=torch.bool)
        if self.caco.long_term == "never":
            return torch.zeros(len(entries), dtype=torch.bool)
        return torch.tensor(self.change.is_changed(entries), dtype=torch.bool)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        self.momentum_update()
        _, projections = self.query(batch["q"])
        q = [F.normalize(p, dim=1) for p in projections]
        keys = [self.keys(batch[f"k{j}"], step) for j in range(3)]  # keys[j][i]: image j, head i
        k = [[keys[j][i] for j in range(3)] for i in range(3)]
        entries = batch["entry"].tolist()
        long_term = self.long_term(entries).to(q[0].device)
        queues = self.queue.clone().detach()
        loss, losses = caco_loss(q, k, queues, long_term, self.caco.temperature)
        metrics: dict[str, Any] = {f"loss_subspace{i}": v.detach() for i, v in enumerate(losses)}
        metrics["long_term_used"] = long_term.float().mean()
        histograms: dict[str, Any] = {}
        with torch.no_grad():
            (lq,) = self.keys(batch["q"], step, heads=[1])
            short = (lq - k[1][1]).norm(dim=1)
            partner = torch.arange(len(lq), device=lq.device) ^ 1
            long = (lq - lq[partner]).norm(dim=1)
            every_entry = gather(batch["entry"].to(lq.device)).tolist()
            self.change.update(
                every_entry,
                gather(long).double().cpu().numpy(),
                gather(short).double().cpu().numpy(),
            )
            if (step + 1) % self.epoch_steps == 0:
                threshold = self.change.refit(self.config.seed)
                ratios = self.change.ratios()
                histograms["change_ratio"] = ratios
                metrics["changed_fraction"] = len(self.change.changed) / max(len(ratios), 1)
                if threshold is not None:
                    metrics["change_threshold"] = threshold
        self.enqueue([keys[i][i] for i in range(3)])
        return StepOutput(loss, metrics, histograms)

    def get_extra_state(self) -> dict[str, Any]:
        return self.change.to_state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.change.load(state)


def _manifest_train(source: Any, split: str) -> int | None:
    if not isinstance(source, str) or source.endswith((".tar", ".json")) or "{" in source:
        return None
    try:
        with fsspec.open(source.rstrip("/") + "/manifest.json") as handle:
            doc = json.load(handle)
        fraction = (doc.get("recipe") or {}).get("splits", {}).get(split)
        return round(doc["totals"]["successes"] * float(fraction)) if fraction else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None

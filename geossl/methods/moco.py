"""The MoCo-v2 core of GASSL and CACo: momentum key encoder, MLP heads, queues, shuffled BN.

- query encoder = a torchvision ResNet (n bands) and `heads` 2-layer MLP heads d → d → 128;
  the key encoder and key heads are copies updated as k ← m·k + (1 − m)·q (m = 0.999) at the
  start of every training step, before the keys are computed (MoCo's order), so everything a
  step changes is changed inside `training_step` and a checkpoint taken after it is complete;
- one L2-normalised queue per head, registered buffers (checkpointed with the model): every
  step, the keys of all ranks are gathered (rank order) and enqueued, wrapping around;
- under DDP the key encoder sees the global batch shuffled across ranks and unshuffled after
  (MoCo's shuffled BN). SyncBatchNorm is not used: its batch statistics would be those of the
  whole global batch, which holds each query's positive, and that is the leak MoCo's shuffle
  exists to prevent. On one process the shuffle is a no-op (BN sees the whole batch either way).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from geossl.config import MoCoFields, TrainConfig
from geossl.data import Normalization
from geossl.methods.base import Method, world_size
from geossl.models import Encoder


def mlp_head(width: int, hidden: int, dim: int) -> nn.Sequential:
    """MoCo-v2's projection: Linear(d, hidden) – ReLU – Linear(hidden, dim)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def moco_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """[q·k⁺, q·queue] / τ per row (column 0 is the positive); q, k, queue L2-normalised."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.T
    return torch.cat([positive, negative], dim=1) / temperature


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo's InfoNCE: cross-entropy of the logits with the positive (column 0) as target."""
    logits = moco_logits(q, k, queue, tau)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows in rank order (no gradient); the tensor itself on one process."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class MoCo(Method):
    """A query encoder with `heads` MLP heads, their momentum twins and one queue per head."""

    heads_count = 1

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        super().__init__(config, normalization)
        self.moco: MoCoFields = config.method
        self._encoder = Encoder(config.model.arch, len(self.bands), taps=())
        width = self._encoder.dim
        hidden = self.moco.hidden or width
        self.heads = nn.ModuleList(
            [mlp_head(width, hidden, self.moco.dim) for _ in range(self.heads_count)]
        )
        self.key_encoder = copy.deepcopy(self._encoder)
        self.key_heads = copy.deepcopy(self.heads)
        for p in [*self.key_encoder.parameters(), *self.key_heads.parameters()]:
            p.requires_grad = False
        queue = F.normalize(
            torch.randn(self.heads_count, self.moco.queue_size, self.moco.dim), dim=2
        )
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    # -- the momentum encoder ----------------------------------------------------------------

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key ← m·key + (1 − m)·query for the parameters (the key BN keeps its own statistics)."""
        m = self.moco.momentum
        pairs = [(self._encoder, self.key_encoder), (self.heads, self.key_heads)]
        for query, key in pairs:
            for pq, pk in zip(query.parameters(), key.parameters(), strict=True):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    def query(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(pooled features, un-normalised head outputs) of the query encoder."""
        features = self._encoder(x)["pool"]
        return features, [head(features) for head in self.heads]

    @torch.no_grad()
    def keys(
        self, x: torch.Tensor, step: int, heads: list[int] | None = None
    ) -> list[torch.Tensor]:
        """L2-normalised key-head outputs for `x` (shuffled BN across ranks under DDP)."""
        heads = list(range(self.heads_count)) if heads is None else heads
        world = world_size()
        shuffle = world > 1 and self.moco.shuffle_bn
        if shuffle:
            everything = gather(x)
            # the same permutation on every rank: drawn from (seed, step) only
            order = torch.randperm(
                len(everything), generator=torch.Generator().manual_seed(self.config.seed + step)
            ).to(x.device)
            rank, rows = dist.get_rank(), len(x)
            x = everything[order][rank * rows : (rank + 1) * rows]
        features = self.key_encoder(x)["pool"]
        out = [F.normalize(self.key_heads[i](features), dim=1) for i in heads]
        if shuffle:
            restore = torch.argsort(order)
            out = [gather(k)[restore][rank * rows : (rank + 1) * rows] for k in out]
        return out

    # -- the queues --------------------------------------------------------------------------

    @torch.no_grad()
    def enqueue(self, keys: list[torch.Tensor]) -> None:
        """Gather every rank's keys (rank order) and write them at the pointer, wrapping around."""
        gathered = [gather(k.detach()) for k in keys]
        n = len(gathered[0])
        size = self.queue.shape[1]
        slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        for i, k in enumerate(gathered):
            if n > size:  # a batch larger than the queue: its last `size` keys stay
                slots_i, k = slots[-size:], k[-size:]
            else:
                slots_i = slots
            self.queue[i, slots_i] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def negatives(self, head: int = 0) -> torch.Tensor:
        """A snapshot of a queue (the step's logits must not see this step's enqueue)."""
        return self.queue[head].clone().detach()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "queue_ptr": int(self.queue_ptr)}

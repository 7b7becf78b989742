"""What every pretraining method gives the shared loop: fields, views, a step, an encoder.

A method is an `nn.Module` (its parameters and buffers — encoders, heads, queues, per-location
state — are checkpointed with it) plus two small picklable callables that run in the DataLoader
workers:

- `fields()`: a geoprep `Sample` → a dict of tensors (one sample; default-collatable);
- `views()`: a collated batch, its batch index and a generator seeded from (seed, rank, index)
  → the tensors the training step needs (augmented views, schedules' values).

The training process calls `training_step(batch, step)` → `StepOutput`, then `after_step(step)`
(momentum encoders, queues). Randomness inside a step must come from `step_generator(step)` so a
resumed run draws exactly what the interrupted one would have. Evaluation uses `encoder`,
`prepare_input` (e.g. CSF's any-subset scaling) and `features`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from geossl.config import TrainConfig
from geossl.data import Fields, ImageStack, Normalization, Views
from geossl.models import Encoder


@dataclass
class StepOutput:
    """The loss to minimise and scalars to log (tensors are detached by the loop)."""

    loss: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    # arrays logged as TensorBoard histograms at this step (e.g. CACo's change ratios)
    histograms: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module, ABC):
    """Base of CSF, GASSL, CACo and SoundingEarth."""

    name: str = "?"

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        super().__init__()
        self.config = config
        self.normalization = normalization
        self.bands = list(normalization.bands)

    # -- data side (DataLoader workers) ----------------------------------------------------

    @abstractmethod
    def fields(self) -> Fields:
        """Sample → per-sample tensors; must be picklable (runs in workers)."""

    @abstractmethod
    def views(self) -> Views:
        """Collated batch → training inputs; must be picklable (runs in workers)."""

    # -- training side ---------------------------------------------------------------------

    @property
    @abstractmethod
    def encoder(self) -> Encoder:
        """The backbone that is exported and evaluated."""

    @abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput: ...

    def after_step(self, step: int) -> None:
        """After the optimiser step (momentum updates, queues); nothing by default."""

    def step_generator(self, step: int, device: torch.device | str = "cpu") -> torch.Generator:
        """Randomness for the step: a function of (seed, rank, step) only."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        key = f"{self.config.seed}:{rank}:{step}:step".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1
        return torch.Generator(device=device).manual_seed(seed)

    # -- evaluation ------------------------------------------------------------------------

    def prepare_input(self, image: torch.Tensor, present: list[bool] | None = None) -> torch.Tensor:
        """Encoder input from normalised bands; `present` marks bands given (others are zero)."""
        if present is not None:
            mask = torch.tensor(present, dtype=image.dtype, device=image.device)
            image = image * mask.view(1, -1, 1, 1)
        return image * self.input_scale(present)

    def input_scale(self, present: list[bool] | None = None) -> float:
        """Factor on every input when the bands marked in `present` are given (None: all)."""
        return 1.0

    @property
    def input_scaling(self) -> float | str:
        """The scaling rule as backbone.json records it: a constant, or the rule's name."""
        return 1.0

    def image_fields(self, slot: str | None = None) -> Fields:
        """Sample → normalised image stack for evaluation (`slot`: default the training slot)."""
        return ImageStack(self.normalization, slot or self.config.data.slot)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen features for k-NN and linear probes: the pooled last stage by default."""
        return self.encoder(image)["pool"]

    def describe(self) -> dict[str, Any]:
        """Method facts for backbone.json."""
        return {"name": self.name, "config": self.config.method.model_dump(mode="json")}


# ---------------------------------------------------------------- distributed helpers


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of this rank's slice.

    Written out rather than torch.distributed.nn.functional.all_gather, which torch 2.14
    deprecates; the backward is an all_reduce (gloo has no reduce_scatter) then a slice.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank (rank order, equal shapes); gradients flow back."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def rank_offset(local_batch: int) -> int:
    """Index of this rank's first row in a gathered batch."""
    rank = dist.get_rank() if world_size() > 1 else 0
    return rank * local_batch

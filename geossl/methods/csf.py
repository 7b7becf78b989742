"""Contrastive Sensor Fusion: two views with independent channel dropout, multi-layer InfoNCE.

Faithful to the paper (methods.md §1) unless the config picks the official code's value:
- views (built in the DataLoader workers): random crop, per-sample/per-band brightness and
  contrast jitter, channel dropout per sample and band with 1/(1-p) scaling, flips and quarter
  turns; the two views are drawn independently;
- p rises linearly from 0 to 0.66 over 8,000 batches (updated every batch; the code every 10);
- loss: symmetric InfoNCE on the flattened maps of the last two residual stages (torchvision
  `layer3` and `layer4`, each stage's last residual sum before its ReLU: signed, like the
  Keras ResNet50V2 block outputs the code taps; it taps conv4_block5, one block before the end),
  weighted 1:2, dot product / τ with τ = 0.1, negatives from the global batch gathered across
  ranks with gradients (the original used each replica's batch only);
- inference with any subset of bands: missing bands zero, all inputs × 1/(1-p_final) (or, by
  config, × n_bands / bands given).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from geossl.config import CSFConfig, TrainConfig
from geossl.data import Fields, ImageStack, Normalization, Views
from geossl.methods.base import Method, StepOutput, gather_with_grad
from geossl.models import STAGES, Encoder


def dropout_rate(step: int, final: float, warmup_batches: int) -> float:
    """Channel dropout probability at batch `step`: linear 0 → final, then constant."""
    if warmup_batches <= 0:
        return final
    return final * min(1.0, step / warmup_batches)


def channel_dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each (sample, band) with probability p; kept bands × 1/(1-p) (inverted dropout)."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape[0], x.shape[1], 1, 1, generator=generator) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def info_nce(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, cosine: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE of flattened maps: mean −log softmax diagonal, rows plus columns."""
    z1, z2 = z1.flatten(1).float(), z2.flatten(1).float()
    if cosine:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    s = (z1 @ z2.T) / temperature
    target = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(s, target) + F.cross_entropy(s.T, target)


class CSFViews:
    """Two independent views of a batch of (B, C, H, W) normalised stacks."""

    def __init__(self, config: CSFConfig) -> None:
        self.config = config

    def __call__(
        self, batch: dict[str, Any], step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        image = batch["image"]
        p = dropout_rate(step, self.config.dropout.rate, self.config.dropout.warmup_batches)
        size = self.config.crop_size(min(image.shape[-2:]))
        return {
            "view1": self.view(image, size, p, generator),
            "view2": self.view(image, size, p, generator),
            "dropout_rate": torch.tensor(p),
        }

    def view(
        self, image: torch.Tensor, size: int, p: float, generator: torch.Generator
    ) -> torch.Tensor:
        b, c, h, w = image.shape
        top = torch.randint(0, h - size + 1, (b,), generator=generator)
        left = torch.randint(0, w - size + 1, (b,), generator=generator)
        x = torch.stack(
            [
                image[i, :, t : t + size, u : u + size]
                for i, (t, u) in enumerate(zip(top, left, strict=True))
            ]
        )
        jitter = self.config.jitter
        if jitter:
            # brightness: add δ ∈ [−j, j]; contrast: scale about the band mean by [1−j, 1+j]
            delta = (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * jitter
            factor = 1 + (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * jitter
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = (x + delta - mean) * factor + mean
        x = channel_dropout(x, p, generator)
        if self.config.flips:
            vertical = torch.rand(b, generator=generator) < 0.5
            horizontal = torch.rand(b, generator=generator) < 0.5
            x = torch.where(vertical.view(b, 1, 1, 1), x.flip(2), x)
            x = torch.where(horizontal.view(b, 1, 1, 1), x.flip(3), x)
        turns = self.config.rotations
        if turns != [0]:
            pick = torch.randint(0, len(turns), (b,), generator=generator)
            x = torch.stack(
                [torch.rot90(x[i], turns[int(k)], dims=(1, 2)) for i, k in enumerate(pick)]
            )
        return x.contiguous()


class CSF(Method):
    name = "csf"

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        super().__init__(config, normalization)
        self.csf: CSFConfig = config.method
        weighted = {k for k, v in self.csf.layer_weights.items() if v}
        taps = tuple(s for s in STAGES if s in weighted | {"layer4"})
        signed = self.csf.tap == "residual_sum"
        self._encoder = Encoder(config.model.arch, len(self.bands), taps=taps, signed_taps=signed)

    def fields(self) -> Fields:
        return ImageStack(self.normalization, self.config.data.slot)

    def views(self) -> Views:
        return CSFViews(self.csf)

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def loss(
        self, maps1: dict[str, torch.Tensor], maps2: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Σ_L λ_L · InfoNCE_L over the global batch; accuracy of the last weighted layer."""
        total = torch.zeros((), device=next(iter(maps1.values())).device)
        metrics: dict[str, Any] = {}
        for layer, weight in self.csf.layer_weights.items():
            if not weight:
                continue
            z1, z2 = maps1[layer].flatten(1), maps2[layer].flatten(1)
            if self.csf.global_negatives:
                z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
            cosine = self.csf.similarity == "cosine"
            layer_loss = info_nce(z1, z2, self.csf.temperature, cosine)
            total = total + weight * layer_loss
            metrics[f"loss_{layer}"] = layer_loss.detach()
            with torch.no_grad():  # the loss's own similarity: under cosine, norms must not vote
                a, b = z1.float(), z2.float()
                if cosine:
                    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
                s = a @ b.T
                target = torch.arange(s.shape[0], device=s.device)
                metrics["accuracy"] = (s.argmax(dim=0) == target).float().mean()
        return total, metrics

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        maps1 = self._encoder(batch["view1"])
        maps2 = self._encoder(batch["view2"])
        loss, metrics = self.loss(maps1, maps2)
        metrics["dropout_rate"] = batch["dropout_rate"].float().mean()
        return StepOutput(loss, metrics)

    def input_scale(self, present: list[bool] | None = None) -> float:
        rule = self.csf.inference_scaling
        if rule == "bands":
            given = len(self.bands) if present is None else sum(present)
            return len(self.bands) / max(1, given)
        if rule is not None:
            return float(rule)
        return 1.0 / (1.0 - self.csf.dropout.rate)

    @property
    def input_scaling(self) -> float | str:
        if self.csf.inference_scaling == "bands":
            return "bands: n_bands / bands given (1 with every band)"
        return self.input_scale()

    def features(self, image: torch.Tensor) -> torch.Tensor:
        maps = self._encoder(image)
        return maps["layer4"].flatten(1) if self.csf.eval_features == "flat" else maps["pool"]

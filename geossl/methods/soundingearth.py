"""SoundingEarth: an overhead image and the sound recorded there, batch triplet loss.

Faithful to the paper (methods.md §4) unless the config picks the official code's value:
- two encoders, each a ResNet with global pooling and a linear map to 128-d, embeddings not
  normalised: the image ResNet-18/50 over the configured sensor's bands, the audio ResNet-18
  over one channel (the log-mel spectrogram, (S - mel_mean) / mel_std);
- loss (Eq. 3): D_ij = ||v_i - a_j||, L = Σ_i Σ_{j≠i} [D_ii - D_ij + m]_+ + Σ_j Σ_{i≠j}
  [D_jj - D_ij + m]_+, m = 1, over the global batch (gathered across ranks with gradients);
  the code's 0.5·(mean + mean) over all N² entries, a naive one-negative triplet and a
  symmetric contrastive loss are options;
- audio views (in the DataLoader workers, per sample before collation): one uniformly drawn
  `window`-frame crop per recording per step; recordings shorter than the window are padded at
  the end with silence (the spectrogram's −100 dB floor), which the paper leaves unsaid;
- image views (in the workers, per batch): centre crop, random square crop resized, rotation by
  any angle, 3×3 box blur, hue/saturation/value adapted to normalised bands (see the config).
  The code's GridDistortion (not in the paper) is left out.
- a sample imaged by another sensor than the configured one (the build's fallback) is
  normalised with its own sensor's statistics or skipped (config `fallback`), and counted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from geoprep import Sample, SampleError, UserError
from geossl.config import SoundingEarthConfig, TrainConfig
from geossl.data import Fields, Normalization, Views, band_layers, valid_mask
from geossl.methods.base import Method, StepOutput, gather_with_grad
from geossl.models import Encoder

SILENCE_DB = -100.0  # geoprep's spectrogram floor


# ---------------------------------------------------------------- losses


def pairwise_distances(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """D_ij = ||v_i - a_j||₂ (a small floor keeps the gradient finite at zero distance)."""
    squared = (v.float()[:, None, :] - a.float()[None, :, :]).pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt()


def batch_triplet_loss(
    v: torch.Tensor, a: torch.Tensor, margin: float = 1.0, reduction: str = "sum"
) -> torch.Tensor:
    """Eq. 3: every other audio is a negative for each image and every other image for each
    audio. "sum": the paper's double sum without the diagonal; "mean": the code's
    0.5·(mean_ij [D_jj - D_ij + m]_+ + mean_ij [D_ii - D_ij + m]_+), diagonal included."""
    d = pairwise_distances(v, a)
    positive = d.diagonal()
    rows = F.relu(positive[:, None] - d + margin)  # image i against audio j
    cols = F.relu(positive[None, :] - d + margin)  # audio j against image i
    if reduction == "mean":
        return 0.5 * (rows.mean() + cols.mean())
    off = ~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return rows[off].sum() + cols[off].sum()


def naive_triplet_loss(v: torch.Tensor, a: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """One negative per anchor, the next sample of the batch, both directions, mean."""
    positive = (v.float() - a.float()).norm(dim=1)
    to_audio = (v.float() - a.float().roll(1, 0)).norm(dim=1)
    to_image = (v.float().roll(1, 0) - a.float()).norm(dim=1)
    rows = F.relu(positive - to_audio + margin)
    cols = F.relu(positive - to_image + margin)
    return 0.5 * (rows.mean() + cols.mean())


def contrastive_loss(v: torch.Tensor, a: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE of cosine similarities / τ, mean of both directions."""
    s = F.normalize(v.float(), dim=1) @ F.normalize(a.float(), dim=1).T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))


def retrieval_ranks(d: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's own column (index i) among its distances (ties count ahead)."""
    own = d.diagonal()[:, None]
    return (d < own).sum(dim=1) + 1


# ---------------------------------------------------------------- spectrogram windows


def spectrogram_window(
    mel: np.ndarray, window: int, generator: torch.Generator | None
) -> tuple[np.ndarray, int]:
    """(n_mels, window) float32 and the recording's frame count: a uniformly drawn window
    (the centre one without a generator), or the whole recording padded with silence."""
    mel = np.asarray(mel, np.float32)
    if mel.ndim != 2:
        raise SampleError(f"spectrogram has shape {mel.shape}; expected (n_mels, frames)")
    frames = mel.shape[1]
    if frames < window:
        pad = np.full((mel.shape[0], window - frames), SILENCE_DB, np.float32)
        return np.concatenate([mel, pad], axis=1), frames
    room = frames - window
    if generator is None:
        start = room // 2
    else:
        start = int(torch.randint(0, room + 1, (1,), generator=generator))
    return mel[:, start : start + window], frames


# ---------------------------------------------------------------- fields and views


class SoundingEarthFields:
    """A sample → "image" (C, H, W) normalised, "audio" (1, n_mels, window), "fallback"."""

    draws = True  # called with the batch's generator (a spectrogram window per step)

    def __init__(
        self,
        config: SoundingEarthConfig,
        normalization: Normalization,
        sensor: str,
        slot: str,
        audio: bool = True,
    ) -> None:
        self.config, self.slot, self.sensor, self.audio = config, slot, sensor, audio
        self.stats: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        for owner in dict.fromkeys(b.split(".", 1)[0] for b in normalization.bands):
            part = normalization.subset(
                [b for b in normalization.bands if b.split(".", 1)[0] == owner]
            )
            mean, std = np.asarray(part.mean, np.float32), np.asarray(part.std, np.float32)
            self.stats[owner] = (part.bands, mean, std)
        self.channels = len(self.stats[sensor][0])

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> dict[str, Any]:
        layers = band_layers(sample, self.slot)
        sensors = sorted({name.split(".", 1)[0] for name in layers})
        if self.sensor in sensors:
            used = self.sensor
        elif self.config.fallback == "skip":
            raise SampleError(
                f"sample {sample.key}: imaged by {sensors}, not {self.sensor!r} "
                "(method.fallback=skip)"
            )
        else:
            used = next((s for s in sensors if s in self.stats), None)
            if used is None:
                raise SampleError(
                    f"sample {sample.key}: imaged by {sensors}; no statistics for them "
                    "(list their bands in data.bands to normalise fallback images)"
                )
        names, mean, std = self.stats[used]
        if len(names) != self.channels:
            raise SampleError(
                f"sample {sample.key}: {used} has {len(names)} bands, the encoder "
                f"{self.channels} ({self.sensor})"
            )
        missing = [n for n in names if n not in layers]
        if missing:
            raise SampleError(f"sample {sample.key}: no bands {missing}")
        shape = layers[names[0]][0].shape
        image = np.zeros((self.channels, *shape), np.float32)
        for i, name in enumerate(names):
            array, nodata = layers[name]
            if array.shape != shape:
                raise SampleError(f"sample {sample.key}: {name} is {array.shape}, not {shape}")
            scaled = (array.astype(np.float32) - mean[i]) / std[i]
            image[i] = np.where(valid_mask(array, nodata), scaled, 0.0)
        out: dict[str, Any] = {"image": torch.from_numpy(image), "fallback": used != self.sensor}
        if self.audio:
            mel, frames = spectrogram_window(sample.spectrogram(), self.config.window, generator)
            audio = (mel - self.config.mel_mean) / self.config.mel_std
            out["audio"] = torch.from_numpy(np.ascontiguousarray(audio))[None]
            out["frames"] = frames
        for key in ("label", "split"):
            value = sample.meta.get(key)
            out[key] = "" if value is None else str(value)
        out["key"] = sample.key
        attribution = (sample.meta.get("audio") or {}).get("attribution") or {}
        out["identifier"] = str(attribution.get("identifier") or "")  # for label tables
        return out


class SoundingEarthViews:
    """Augmented image views of a batch; the audio windows pass through."""

    def __init__(self, config: SoundingEarthConfig) -> None:
        self.config = config

    def __call__(
        self, batch: dict[str, Any], step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return {
            "image": self.augment(batch["image"], generator),
            "audio": batch["audio"],
            "frames": batch["frames"],
            "fallback": batch["fallback"],
        }

    def augment(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        b, c, h, w = image.shape
        centre, low, high, out = cfg.view_sizes(min(h, w))
        top0, left0 = (h - centre) // 2, (w - centre) // 2
        views = []
        for i in range(b):
            side = int(torch.randint(low, high + 1, (1,), generator=generator))
            top = top0 + int(torch.randint(0, centre - side + 1, (1,), generator=generator))
            left = left0 + int(torch.randint(0, centre - side + 1, (1,), generator=generator))
            x = image[i : i + 1, :, top : top + side, left : left + side]
            x = F.interpolate(x, size=(out, out), mode="bilinear", align_corners=False)[0]
            angle = (float(torch.rand((), generator=generator)) * 2 - 1) * cfg.rotation_deg
            x = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
            if float(torch.rand((), generator=generator)) < cfg.blur_p:
                x = F.avg_pool2d(x[None], 3, stride=1, padding=1, count_include_pad=False)[0]
            if float(torch.rand((), generator=generator)) < cfg.hsv_p:
                x = self.hsv(x, generator)
            views.append(x)
        return torch.stack(views).contiguous()

    def hsv(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Hue (rotation about the grey axis of the first 3 bands), saturation, value."""
        cfg = self.config

        def uniform(limit: float) -> float:
            return (float(torch.rand((), generator=generator)) * 2 - 1) * limit

        theta = math.radians(uniform(cfg.hue_deg))
        saturation = 1.0 + uniform(cfg.saturation)
        shift = uniform(cfg.value)
        if x.shape[0] >= 3:
            rgb = x[:3]
            grey = rgb.mean(dim=0, keepdim=True)
            chroma = rgb - grey
            # Rodrigues' rotation about the unit grey axis k = (1,1,1)/√3; chroma ⟂ k
            k = torch.full((3, 1, 1), 1 / math.sqrt(3), dtype=x.dtype)
            cross = torch.stack(
                [
                    k[1] * chroma[2] - k[2] * chroma[1],
                    k[2] * chroma[0] - k[0] * chroma[2],
                    k[0] * chroma[1] - k[1] * chroma[0],
                ]
            )
            chroma = chroma * math.cos(theta) + cross * math.sin(theta)
            x = torch.cat([grey + saturation * chroma, x[3:]])
        return x + shift


# ---------------------------------------------------------------- the method


class Tower(nn.Module):
    """A ResNet, global pooling, a linear map to the embedding."""

    def __init__(self, arch: str, channels: int, dim: int) -> None:
        super().__init__()
        self.encoder = Encoder(arch, channels, taps=())
        self.head = nn.Linear(self.encoder.dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)["pool"])


class SoundingEarth(Method):
    name = "soundingearth"

    def __init__(self, config: TrainConfig, normalization: Normalization) -> None:
        self.se: SoundingEarthConfig = config.method
        sensor = self.se.sensor or normalization.bands[0].split(".", 1)[0]
        own = [b for b in normalization.bands if b.split(".", 1)[0] == sensor]
        if not own:
            raise UserError(f"method.sensor={sensor!r}: no such bands among {normalization.bands}")
        # the encoder's bands: the configured sensor's; the others serve fallback images
        super().__init__(config, normalization.subset(own))
        self.sensor, self.all_normalization = sensor, normalization
        dim = self.se.embedding_dim
        self.image_tower = Tower(config.model.arch, len(own), dim)
        self.audio_tower = Tower("resnet18", 1, dim)

    def fields(self) -> Fields:
        return SoundingEarthFields(
            self.se, self.all_normalization, self.sensor, self.config.data.slot
        )

    def image_fields(self, slot: str | None = None) -> Fields:
        """Evaluation of the image encoder: images only, fallback handled as in training."""
        slot = slot or self.config.data.slot
        return SoundingEarthFields(self.se, self.all_normalization, self.sensor, slot, audio=False)

    def views(self) -> Views:
        return SoundingEarthViews(self.se)

    @property
    def encoder(self) -> Encoder:
        return self.image_tower.encoder

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_tower(image)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_tower(audio)

    def loss(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.se.loss == "naive_triplet":
            return naive_triplet_loss(v, a, self.se.margin)
        if self.se.loss == "contrastive":
            return contrastive_loss(v, a, self.se.temperature)
        return batch_triplet_loss(v, a, self.se.margin, self.se.reduction)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        v = self.embed_image(batch["image"])
        a = self.embed_audio(batch["audio"])
        if self.se.global_negatives:
            v, a = gather_with_grad(v), gather_with_grad(a)
        loss = self.loss(v, a)
        metrics: dict[str, Any] = {}
        with torch.no_grad():
            d = pairwise_distances(v, a)
            i2a, a2i = retrieval_ranks(d), retrieval_ranks(d.T)
            metrics["i2a_r1"] = (i2a == 1).float().mean()
            metrics["a2i_r1"] = (a2i == 1).float().mean()
            metrics["i2a_median_rank"] = i2a.float().median()
            metrics["a2i_median_rank"] = a2i.float().median()
            metrics["accuracy"] = 0.5 * (metrics["i2a_r1"] + metrics["a2i_r1"])
            off = ~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
            metrics["mean_margin"] = d[off].mean() - d.diagonal().mean()
            metrics["fallback_fraction"] = batch["fallback"].float().mean()
        return StepOutput(loss, metrics)

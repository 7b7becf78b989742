"""Training configs: typed YAML, `--set KEY.PATH=VALUE` overrides, one-line errors.

A config names the method (its own section, told apart by `method.name`), the dataset, the
backbone, the optimiser and the loop. Every method default is the paper's value; where the
official code differs, its value is an option documented on the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from geoprep import UserError, load_settings, validate_settings


class Strict(BaseModel):
    """Unknown keys are errors; models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelDropout(Strict):
    """Per-sample, per-band dropout with 1/(1-p) scaling; p rises linearly to `rate`."""

    rate: float = Field(0.66, ge=0.0, lt=1.0)
    warmup_batches: int = Field(8000, ge=0)


class CSFConfig(Strict):
    """Contrastive Sensor Fusion (methods.md §1)."""

    name: Literal["csf"] = "csf"
    # Paper: the last two residual stages, the last weighted twice. Code: 1:1.
    layer_weights: dict[Literal["layer3", "layer4"], float] = {"layer3": 1.0, "layer4": 2.0}
    temperature: float = Field(0.1, gt=0.0)
    # Paper and code: φ = plain dot product of the flattened maps. "cosine" L2-normalises them
    # first (not in the paper; bounded logits for small batches and short runs).
    similarity: Literal["dot", "cosine"] = "dot"
    dropout: ChannelDropout = ChannelDropout()
    # Paper: "randomly crop away 32 pixels" of 160 px tiles. `crop_fraction` (0-1) instead sizes
    # the crop relative to the patch (32/160 = 0.2) for smaller patches; 0 disables cropping.
    crop_px: int | None = Field(32, ge=0)
    crop_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    # Paper: brightness and contrast of each retained band jittered by at most 25 %.
    # (Code: one scalar per batch tensor, a TF semantics artefact.)
    jitter: float = Field(0.25, ge=0.0, lt=1.0)
    # Paper: "random rotations" (all four quarter turns). Code: k in {0, 1, 2}.
    rotations: list[Literal[0, 1, 2, 3]] = [0, 1, 2, 3]
    flips: bool = True
    # Negatives from the global batch, gathered across ranks with gradients (the original
    # used only the replica's own batch: set false for that).
    global_negatives: bool = True
    # Inference scales every input by this (null: 1/(1-dropout.rate), as the paper says; the
    # code's experiments use 3.0). "bands": n_bands / bands given, the factor that keeps the
    # expected input of training's inverted dropout (1 when every band is given; ≈ the paper's
    # 1/(1-p) for a one-third subset). With every band given, the paper's rule feeds inputs at
    # 2.9× their training expectation, far from the BatchNorm statistics of a short run.
    inference_scaling: float | str | None = None

    @field_validator("inference_scaling")
    @classmethod
    def _scaling(cls, value: float | str | None) -> float | str | None:
        # one check for the whole union, so a mistake is one line, not one per member
        if value is None or value == "bands" or (isinstance(value, float) and value > 0):
            return value
        raise ValueError("expected a number > 0, 'bands' or null")

    # The taps: "residual_sum" (each tapped stage's last block before its final ReLU: signed,
    # as the Keras ResNet50V2 block outputs the code taps) or "relu" (torchvision's stage
    # output: non-negative, so every pair of flattened maps has a large positive dot product).
    tap: Literal["residual_sum", "relu"] = "residual_sum"
    # Features for evaluation: the flattened last stage (CSF protocol) or its spatial mean.
    eval_features: Literal["flat", "pool"] = "flat"

    @model_validator(mode="after")
    def _one_crop(self) -> CSFConfig:
        if self.crop_fraction is not None and self.crop_px not in (None, 32):
            raise ValueError("set crop_px or crop_fraction, not both")
        if not self.layer_weights or not any(self.layer_weights.values()):
            raise ValueError("layer_weights needs at least one non-zero weight")
        return self

    def crop_size(self, patch: int) -> int:
        """Side of the random crop for a square patch of `patch` pixels."""
        if self.crop_fraction is not None:
            removed = round(patch * self.crop_fraction)
        else:
            removed = self.crop_px or 0
        if removed >= patch:
            raise UserError(f"method.crop_px={removed} removes the whole {patch} px patch")
        return patch - removed


class SoundingEarthConfig(Strict):
    """SoundingEarth: overhead image ↔ field recording, batch triplet loss (methods.md §4)."""

    name: Literal["soundingearth"] = "soundingearth"
    embedding_dim: int = Field(128, ge=1)
    # Paper (Eq. 3): "batch" triplet loss, margin 1, summed over every off-diagonal pair in both
    # directions. `reduction: mean` is the official code's 0.5·(mean + mean) over all N² entries.
    # "naive": one negative per anchor (the next in the batch); "contrastive": symmetric InfoNCE
    # of cosine similarities / τ (the paper's two ablations).
    loss: Literal["batch_triplet", "naive_triplet", "contrastive"] = "batch_triplet"
    reduction: Literal["sum", "mean"] = "sum"
    margin: float = Field(1.0, gt=0.0)
    temperature: float = Field(0.2, gt=0.0)
    # Negatives from the global batch, gathered across ranks with gradients.
    global_negatives: bool = True
    # The image sensor the encoder is built for (null: the sensor of the first band). Samples
    # imaged by another sensor (the build's fallback) are normalised with that sensor's own
    # statistics (its bands must be in data.bands) or skipped; either way they are counted.
    sensor: str | None = None
    fallback: Literal["normalise", "skip"] = "normalise"
    # Spectrogram windows: `window` frames (128 in paper and code) drawn uniformly per recording
    # per step; shorter recordings are padded at the end with silence (the −100 dB floor).
    window: int = Field(128, ge=8)
    # Log-mel dB values enter the audio encoder as (S - mel_mean) / mel_std.
    mel_mean: float = -40.0
    mel_std: float = Field(20.0, gt=0.0)
    # Image views, as fractions of the built patch (paper: 1024 px tiles, a central 512 px,
    # random squares of 192-384 px scaled to 192 px). center_fraction: the central part kept;
    # crop_fraction: the random square's side relative to it; view_px: the output side (null:
    # the smallest crop side, as in the paper).
    center_fraction: float = Field(0.5, gt=0.0, le=1.0)
    crop_fraction: tuple[float, float] = (0.375, 0.75)
    view_px: int | None = Field(None, ge=8)
    rotation_deg: float = Field(180.0, ge=0.0, le=180.0)  # any angle up to ±limit
    blur_p: float = Field(0.5, ge=0.0, le=1.0)  # 3×3 box blur
    # Hue/saturation/value with p = 0.5 (albumentations defaults 20/30/20 on 8-bit HSV), adapted
    # to normalised bands: hue rotates the first three bands about the grey axis by up to
    # ±hue_deg, saturation scales their distance from grey by 1 ± saturation, value shifts all
    # bands by ± value (normalised units).
    hsv_p: float = Field(0.5, ge=0.0, le=1.0)
    hue_deg: float = Field(40.0, ge=0.0, le=180.0)
    saturation: float = Field(0.12, ge=0.0, lt=1.0)
    value: float = Field(0.3, ge=0.0)

    @field_validator("crop_fraction")
    @classmethod
    def _crop_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError("expected [low, high] with 0 < low <= high <= 1")
        return value

    def view_sizes(self, patch: int) -> tuple[int, int, int, int]:
        """(centre side, smallest crop side, largest crop side, output side) in pixels."""
        centre = max(1, round(patch * self.center_fraction))
        low = max(1, round(centre * self.crop_fraction[0]))
        high = max(low, round(centre * self.crop_fraction[1]))
        return centre, low, high, self.view_px or low


class MoCoFields(Strict):
    """The MoCo-v2 core shared by GASSL and CACo: momentum key encoder, MLP head(s), queue(s)."""

    temperature: float = Field(0.2, gt=0.0)
    # Negatives kept per queue; every global batch is enqueued whole (wrapping around).
    queue_size: int = Field(65536, ge=1)
    # Key encoder (and key heads) = momentum · key + (1 − momentum) · query, every step.
    momentum: float = Field(0.999, ge=0.0, le=1.0)
    # MLP head: Linear(d, hidden) – ReLU – Linear(hidden, dim); hidden null = backbone width d.
    dim: int = Field(128, ge=1)
    hidden: int | None = Field(None, ge=1)
    # Under DDP the key encoder's batch is shuffled across ranks (MoCo's shuffled BN).
    shuffle_bn: bool = True


class GASSLConfig(MoCoFields):
    """Geography-Aware SSL (methods.md §2): MoCo-v2, temporal positives, a geo-cluster head."""

    name: Literal["gassl"] = "gassl"
    # Variants: MoCo-v2 (both false), +TP (temporal), +Geo (geo), +Geo+TP (both: the default).
    temporal: bool = True
    geo: bool = True
    alpha: float = Field(1.0, ge=0.0)  # weight of InfoNCE
    beta: float = Field(1.0, ge=0.0)  # weight of the geo-cluster cross-entropy
    # Paper: τ = 0.2. Code (README command): 0.02.
    temperature: float = Field(0.2, gt=0.0)
    # Paper: "a linear classifier" on the query's head output. Code: ReLU then Linear(128, K).
    geo_head: Literal["linear", "relu-linear"] = "linear"
    # Resize(448) → RandomResizedCrop(224): views are `crop_fraction` of the patch side, areas
    # drawn from `crop_scale` of it (temporal branch: torchvision's default 0.08-1; the
    # non-temporal baseline of the code: 0.2-1), aspect ratios 3/4-4/3.
    crop_fraction: float = Field(0.5, gt=0.0, le=1.0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (hue only for three-band RGB), grayscale p 0.2,
    # Gaussian blur σ ∈ [0.1, 2] × patch/224 with p 0.5, horizontal flip p 0.5.
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    # fMoW imagery: the sensor name of the sample's images (geoprep's fMoW builder: "fmow").
    sensor: str = "fmow"


class CACoConfig(MoCoFields):
    """Change-Aware Contrastive (methods.md §3): SeCo's three subspaces, long-term negatives."""

    name: Literal["caco"] = "caco"
    temperature: float = Field(0.07, gt=0.0)
    # One queue per subspace, [3, 128, 16384] in the code; its size must be a multiple of the
    # global batch so that a queue column's parity is its year group.
    queue_size: int = Field(16384, ge=2)
    # Long-term negatives (the same location in the other year group): "changed" = only for
    # locations the GMM judges changed (CACo); "never" = SeCo/MoCo-v2 without change
    # awareness; "always" = the code's `teco` mode.
    long_term: Literal["changed", "never", "always"] = "changed"
    # EMA of the change ratio per (location, year group): r = β·r_prev + (1 − β)·R (code: β 0.8).
    ema_beta: float = Field(0.8, ge=0.0, lt=1.0)
    # Steps per epoch: the GMM threshold is refit after each (null: from the dataset's manifest,
    # 2 × train locations / global batch).
    epoch_steps: int | None = Field(None, ge=1)
    sensor: str = "s2"
    # SeCo's crop: RandomResizedCrop(224, scale 0.2-1) of 264 px patches.
    crop_fraction: float = Field(224 / 264, gt=0.0, le=1.0)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)


# One entry per method.
MethodConfig = Annotated[
    CSFConfig | GASSLConfig | CACoConfig | SoundingEarthConfig, Field(discriminator="name")
]
METHOD_CONFIGS: dict[str, type[BaseModel]] = {
    "csf": CSFConfig,
    "gassl": GASSLConfig,
    "caco": CACoConfig,
    "soundingearth": SoundingEarthConfig,
}


class DataConfig(Strict):
    """Where the shards are and what of each sample feeds the encoder."""

    # A geoprep output directory, a wids index.json, a tar, a brace pattern or fsspec URLs.
    source: str | list[str]
    split: str = "train"
    slot: str = "t0"
    # Sensors of the common-grid stack to use (null: every sensor of the first sample).
    sensors: list[str] | None = None
    # Bands as "sensor.band" in the order the encoder sees them (null: the sample's order).
    bands: list[str] | None = None
    shuffle_buffer: int = Field(1000, ge=0)
    num_workers: int = Field(2, ge=0)
    # Train-split samples read to compute normalisation when stats.json has no per-split view.
    stats_samples: int = Field(2000, ge=1)
    # Largest tar member read (bytes): shards are untrusted input.
    max_member_bytes: int = Field(512 * 2**20, ge=1)


class ModelConfig(Strict):
    arch: Literal["resnet18", "resnet50"] = "resnet50"


class OptimConfig(Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0)
    warmup_steps: int = Field(3000, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    # Global gradient-norm clipping (the CSF code clips each tensor's norm: Keras clipnorm).
    grad_clip: float | None = Field(1.0, gt=0.0)


class TrainerConfig(Strict):
    steps: int = Field(100_000, ge=1)
    # Global batch (all ranks together); each rank takes batch_size / world size.
    batch_size: int = Field(128, ge=2)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    # auto: bf16 mixed precision on GPUs, fp32 on CPU.
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"


class TrainConfig(Strict):
    """A whole training run."""

    method: MethodConfig
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    seed: int = 0

    def digest(self, ignore: tuple[str, ...] = ()) -> str:
        """Short hash of the config; `ignore` lists dotted keys left out (e.g. trainer.steps)."""
        doc = self.model_dump(mode="json")
        for key in ignore:
            *parents, last = key.split(".")
            node = doc
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read, override and validate a training config; a problem raises one UserError line.

    geoprep's recipe loader does the work: UTF-8 only, unique keys, bounded nesting, `--set`
    values parsed as YAML, no booleans as numbers, one line per fault naming file, key and value."""
    return load_settings(path, TrainConfig, overrides, "config")


def validate_config(data: dict[str, Any], source: str = "<config>") -> TrainConfig:
    return validate_settings(TrainConfig, data, source)

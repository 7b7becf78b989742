"""Pretraining methods on the shared base: one module per method, registered by config name."""

from __future__ import annotations

from geossl.config import TrainConfig
from geossl.data import Normalization
from geossl.methods.base import Method, StepOutput
from geossl.methods.caco import CACo
from geossl.methods.csf import CSF
from geossl.methods.gassl import GASSL
from geossl.methods.soundingearth import SoundingEarth

METHODS: dict[str, type[Method]] = {
    "csf": CSF,
    "gassl": GASSL,
    "caco": CACo,
    "soundingearth": SoundingEarth,
}

__all__ = ["METHODS", "Method", "StepOutput", "build_method"]


def build_method(config: TrainConfig, normalization: Normalization) -> Method:
    return METHODS[config.method.name](config, normalization)

"""Pretraining methods on the shared base: one module per method, registered by config name."""

from __future__ import annotations

from geossl.config import TrainConfig
from geossl.data import Normalization
from geossl.methods.base import Method, StepOutput
from geossl.methods.csf import CSF
from geossl.methods.soundingearth import SoundingEarth

METHODS: dict[str, type[Method]] = {"csf": CSF, "soundingearth": SoundingEarth}

__all__ = ["METHODS", "Method", "StepOutput", "build_method"]


def build_method(config: TrainConfig, normalization: Normalization) -> Method:
    return METHODS[config.method.name](config, normalization)

"""Location samplers: each turns its recipe section into a table of points."""

from __future__ import annotations

from typing import Union

from geoprep.samplers.base import SamplerConfig, SampleResult
from geoprep.samplers.points import PointsSampler
from geoprep.samplers.urban import UrbanSampler

#: kind → config model; the recipe's `sampler.kind` picks one.
SAMPLERS: dict[str, type[SamplerConfig]] = {
    "urban": UrbanSampler,
    "points": PointsSampler,
}

AnySampler = Union[UrbanSampler, PointsSampler]  # noqa: UP007 (a discriminated union needs Union)

__all__ = ["SAMPLERS", "AnySampler", "SampleResult", "SamplerConfig"]

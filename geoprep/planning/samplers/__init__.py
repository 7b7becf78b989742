"""Location samplers: each turns its recipe section into a table of points."""

from __future__ import annotations

from typing import Union

from geoprep.planning.samplers.aporee import AporeeSampler
from geoprep.planning.samplers.base import SamplerConfig, SampleResult
from geoprep.planning.samplers.fmow import FmowSampler
from geoprep.planning.samplers.osm import OsmSamplerConfig
from geoprep.planning.samplers.points import PointsSampler
from geoprep.planning.samplers.urban import UrbanSampler

#: kind → config model; the recipe's `sampler.kind` picks one.
SAMPLERS: dict[str, type[SamplerConfig]] = {
    "urban": UrbanSampler,
    "osm": OsmSamplerConfig,
    "aporee": AporeeSampler,
    "fmow": FmowSampler,
    "points": PointsSampler,
}

# A discriminated union needs typing.Union, not the | operator, on pydantic models.
AnySampler = Union[UrbanSampler, OsmSamplerConfig, AporeeSampler, FmowSampler, PointsSampler]  # noqa: UP007

__all__ = ["SAMPLERS", "AnySampler", "SampleResult", "SamplerConfig"]

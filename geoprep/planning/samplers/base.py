"""The contract every location sampler fulfils."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

#: The most locations a plan may hold: a plan is one table in memory (about 1 kB a location
#: with its k-means and split bookkeeping), and a build of more would run for years.
MAX_LOCATIONS = 10_000_000

#: Columns every sampler returns; samplers add their own columns after these.
BASE_COLUMNS = ("id", "lat", "lon", "source", "label")


@dataclass
class SampleResult:
    """Locations drawn by a sampler and the count of candidates it dropped, by reason."""

    locations: pd.DataFrame
    dropped: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        missing = [c for c in BASE_COLUMNS if c not in self.locations.columns]
        if missing:
            raise ValueError(f"sampler result lacks columns {missing}")
        ids = self.locations["id"].astype(str)
        if ids.str.contains(".", regex=False).any():
            raise ValueError("location ids must not contain dots (WebDataset keys)")
        if ids.duplicated().any():
            dup = ids[ids.duplicated()].iloc[0]
            raise ValueError(f"duplicate location id {dup!r}")


class Progress(Protocol):
    """What a sampler may report progress through (see geoprep.core.progress)."""

    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...


class Sampler(Protocol):
    """A sampler is built from its validated config and draws locations with the recipe's RNG."""

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult: ...


class SamplerConfig(BaseModel):
    """Base of every sampler's recipe section: validated, frozen, unknown keys rejected.

    Each sampler module defines a subclass with ``kind: Literal["<name>"]`` and ``n`` (the
    location count, or the cap for samplers whose source decides the count), and implements
    :meth:`sample`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        raise NotImplementedError

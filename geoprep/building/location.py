"""What every part of a location's sample shares: its failure, its random stream, its slots."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from geoprep.building.scenes import Slot, slots_for
from geoprep.recipe.model import Recipe


class LocationFailed(Exception):
    """A location that cannot be completed; `reason` is a short count key for the stats."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def location_rng(seed: int, location_id: str) -> np.random.Generator:
    """A generator that depends only on the recipe seed and the location, not on worker order."""
    digest = hashlib.sha256(location_id.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def location_slots(recipe: Recipe, row: Mapping[str, Any]) -> list[Slot]:
    return slots_for(recipe.imagery.time, location_rng(recipe.seed, str(row["id"])), row)

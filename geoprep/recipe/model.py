"""The recipe model: its sections, and the digests that say when two recipes build the same data."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, Field

from geoprep.planning.samplers import AnySampler
from geoprep.recipe.sections import (
    RECIPE_MODEL_CONFIG,
    AudioSpec,
    ClusterConfig,
    FmowImagesSpec,
    ImagerySpec,
    OutputSpec,
    SplitConfig,
)

#: The sections that decide the plan; a build reuses a plan whose digest of these matches.
PLAN_SECTIONS = ("seed", "sampler", "clusters", "splits")


class Recipe(BaseModel):
    """What to build and how; every random choice flows from `seed`."""

    model_config = RECIPE_MODEL_CONFIG

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description="dataset name")
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**63, description="seed of every random choice")
    sampler: Annotated[AnySampler, Field(discriminator="kind")]
    clusters: ClusterConfig = ClusterConfig()
    splits: SplitConfig = SplitConfig()
    imagery: ImagerySpec | None = None
    audio: AudioSpec | None = None
    fmow_images: FmowImagesSpec | None = None
    output: OutputSpec = OutputSpec()

    def digest(self) -> str:
        """A short hash of what decides the data: two recipes with equal digests build equal data.

        How sources are reached (endpoints, proxies, retries, timeouts) is left out, so a build
        can resume after a server moved to another port or a mirror was chosen.
        """
        return _digest(_without_transport(self.model_dump(mode="json")))

    def plan_digest(self) -> str:
        """A short hash of the sections that decide the planned locations."""
        return _digest(_without_transport(self.model_dump(mode="json", include=set(PLAN_SECTIONS))))


#: Keys that say how a source is reached, not what it holds ("*" matches any mapping key).
TRANSPORT_KEYS = (
    ("sampler", "endpoint"),
    ("sampler", "proxy"),
    ("sampler", "secure"),
    ("sampler", "workers"),
    ("sampler", "timeout_s"),
    ("sampler", "retries"),
    ("sampler", "backoff_s"),
    ("sampler", "max_retries"),
    ("sampler", "retry_delay_s"),
    ("sampler", "max_retry_delay_s"),
    ("sampler", "max_slot_wait_s"),
    ("sampler", "storage_options"),
    ("imagery", "catalogs", "*", "url"),
    ("imagery", "catalogs", "*", "page_size"),
    ("audio", "proxy"),
    ("audio", "retries"),
    ("audio", "timeout_s"),
    ("fmow_images", "storage_options"),
)


def _without_transport(data: dict) -> dict:
    def drop(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict) or not path:
            return
        head, rest = path[0], path[1:]
        keys = list(node) if head == "*" else [head]
        for key in keys:
            if key not in node:
                continue
            if rest:
                drop(node[key], rest)
            else:
                del node[key]

    for path in TRANSPORT_KEYS:
        drop(data, path)
    return data


def _digest(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

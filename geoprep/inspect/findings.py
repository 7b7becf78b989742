"""What inspecting finds: problems, sample previews and the tally of one shard."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoprep.inspect.bandstats import StatsCollector

COUNTED = ("shard", "split", "cluster", "label", "source", "sensor", "slot", "member")
_EXAMPLES_PER_VARIANT = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset: where (shard URL, sample key) and what (code, reason)."""

    shard: str
    key: str | None
    code: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "key": self.key, "code": self.code, "reason": self.reason}


@dataclass
class PreviewImage:
    """A small display copy of one image: (1 or 3, h, w) float32, NaN where nodata."""

    sensor: str
    slot: str
    group: str | None
    datetime: str | None
    bands: list[str]
    array: np.ndarray


@dataclass
class Preview:
    """What the report shows of one sample: its images per sensor/slot and its spectrogram."""

    shard: str
    key: str
    cluster: Any
    split: Any
    label: Any
    images: list[PreviewImage] = field(default_factory=list)
    mel: np.ndarray | None = None


@dataclass
class Variants:
    """How often each signature (dtype, shape, bands …) of one member suffix occurs."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[tuple, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, signature: tuple, shard: str, key: str) -> None:
        self.counts[signature] += 1
        examples = self.examples.setdefault(signature, [])
        if len(examples) < _EXAMPLES_PER_VARIANT:
            examples.append((shard, key))

    def merge(self, other: Variants) -> None:
        self.counts.update(other.counts)
        for signature, examples in other.examples.items():
            mine = self.examples.setdefault(signature, [])
            mine.extend(examples[: _EXAMPLES_PER_VARIANT - len(mine)])


@dataclass
class ShardScan:
    """Everything learned from one tar; scans of different tars merge into the result."""

    url: str
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in COUNTED})
    points: list[tuple[float, float, str, str]] = field(default_factory=list)
    variants: dict[str, Variants] = field(default_factory=dict)
    stats: StatsCollector = field(default_factory=StatsCollector)
    previews: list[Preview] = field(default_factory=list)

    def count_member(self, member: str, signature: tuple, key: str) -> None:
        """A member that decoded and checked out: count it and note its variant."""
        self.variants.setdefault(member, Variants()).add(signature, self.url, key)
        self.counts["member"][member] += 1


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__

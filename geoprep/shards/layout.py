"""The shard layout on disk: file names, the commit markers, and resuming a killed build.

Under the output URL `OUT`:

- `shards/{index:05d}.tar` — the samples of plan slice `index`, in plan order; a shard that would
  pass `max_bytes` is split, in order and by cumulative size, into `{index:05d}-0.tar`,
  `{index:05d}-1.tar`, … (all parts are renamed so a brace pattern over the plain names fails
  loudly instead of silently missing data; `manifest.json` / `index.json` list every part).
- `shards/{index:05d}_stats.json` — written LAST, after every part is in place: the commit marker.
  A shard without it is not done, whatever tars exist; the next run rewrites it.
- `manifest.json` and `index.json` (a wids shard index) once the build is over
  (`geoprep.shards.manifest`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import fsspec

from geoprep.core.storage import join
from geoprep.shards.records import jsonable

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
#: A shard's tar (`00012.tar`) or one part of a split shard (`00012-1.tar`): group 1 is the index.
TAR_NAME = re.compile(r"^(\d+)(?:-(\d+))?\.tar$")
STATS_NAME = re.compile(r"^(\d+)_stats\.json$")
TEMP_NAME = re.compile(r"^\..*\.tmp$")


@dataclass(frozen=True)
class TarPart:
    name: str  # file name inside shards/
    nsamples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardStats:
    """The content of `{index:05d}_stats.json`; `duration_s` is the only non-reproducible field."""

    shard: int
    format: str
    count: int
    successes: int
    failures: dict[str, int]
    failed: list[dict[str, str]]
    duration_s: float
    bytes: int
    sha256: str  # of the tar parts concatenated in order: the tar's own hash when unsplit
    tars: list[TarPart]

    def to_json(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tars"}
        return doc | {"tars": [vars(part) for part in self.tars]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ShardStats:
        return cls(**(doc | {"tars": [TarPart(**part) for part in doc["tars"]]}))


def shard_tar_name(index: int, part: int | None = None) -> str:
    return f"{index:05d}.tar" if part is None else f"{index:05d}-{part}.tar"


def stats_url(out_url: str, index: int) -> str:
    return join(out_url, SHARDS_DIR, f"{index:05d}_stats.json")


def pretty_json(doc: Any) -> bytes:
    return json.dumps(jsonable(doc), indent=2, ensure_ascii=False, allow_nan=False).encode()


def _list_shards_dir(shards_url: str) -> tuple[Any, str, list[str]]:
    fs, path = fsspec.core.url_to_fs(shards_url)
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]
    except FileNotFoundError:
        names = []
    return fs, path, sorted(names)


def done_shards(out_url: str) -> set[int]:
    """Indexes of committed shards: those with a stats file."""
    _, _, names = _list_shards_dir(join(out_url, SHARDS_DIR))
    return {int(m.group(1)) for m in map(STATS_NAME.match, names) if m}


def read_stats(out_url: str, index: int) -> ShardStats:
    with fsspec.open(stats_url(out_url, index), "rb") as handle:
        return ShardStats.from_json(json.load(handle))


def clean_partial(out_url: str) -> list[str]:
    """Remove temporaries and uncommitted tars left by a killed run; returns the removed names.

    Call it once before starting writers: it would also remove the files of writers running now.
    """
    fs, path, names = _list_shards_dir(join(out_url, SHARDS_DIR))
    done = done_shards(out_url)
    removed = []
    for name in names:
        tar = TAR_NAME.match(name)
        if TEMP_NAME.match(name) or (tar and int(tar.group(1)) not in done):
            fs.rm(f"{path}/{name}")
            removed.append(name)
    if removed:
        log.info("removed %d partial file(s) from %s: %s", len(removed), out_url, removed[:5])
    return removed

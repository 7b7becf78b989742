"""Writing reproducible WebDataset shards, their stats and the manifest; resuming a killed build.

Layout under the output URL `OUT`:

- `shards/{index:05d}.tar` — the samples of plan slice `index`, in plan order; a shard that would
  pass `max_bytes` is split, in order and by cumulative size, into `{index:05d}-0.tar`,
  `{index:05d}-1.tar`, … (all parts are renamed so a brace pattern over the plain names fails
  loudly instead of silently missing data; `manifest.json` / `index.json` list every part).
- `shards/{index:05d}_stats.json` — written LAST, after every part is in place: the commit marker.
  A shard without it is not done, whatever tars exist; the next run rewrites it.
- `manifest.json` and `index.json` (a wids shard index) once the build is over.

Tars are byte-for-byte reproducible: fixed mtime/uid/gid/owner names/mode, members of a sample
contiguous and sorted, deterministic GeoTIFF bytes. Local tars are written to a hidden temporary
sibling (`.NNNNN-*.tar.tmp`) and `os.replace`d; for remote (fsspec) outputs a tar is spooled to a
local temporary file and uploaded with one put, which object stores publish whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import fsspec

from geoprep import __version__
from geoprep.core.signing import redact
from geoprep.core.storage import is_local, join, local_path, write_bytes_atomic
from geoprep.recipe.sections import OutputSpec
from geoprep.shards.records import ImageFormat, SampleRecord, jsonable, sample_members

log = logging.getLogger(__name__)

#: 2000-01-01T00:00:00Z: any constant works; a real date keeps tar tools from warning.
TAR_MTIME = 946684800
TAR_OWNER = "geoprep"
TAR_BLOCK, TAR_RECORD = 512, 10240
_TAR_NAME = re.compile(r"^(\d+)(?:-(\d+))?\.tar$")
_STATS_NAME = re.compile(r"^(\d+)_stats\.json$")
_TEMP_NAME = re.compile(r"^\..*\.tmp$")


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


# ---------------------------------------------------------------- writing


def _member_size(name: str, size: int) -> int:
    """Upper bound of a member's bytes in the tar; long names add a PAX extended header."""
    length = len(name.encode())
    header = TAR_BLOCK if length <= 100 else TAR_BLOCK * (2 + math.ceil((length + 20) / TAR_BLOCK))
    return header + TAR_BLOCK * math.ceil(size / TAR_BLOCK)


def _tar_file_size(content: int) -> int:
    """Size on disk: content, two zero end blocks, then padding to a whole tar record."""
    return TAR_RECORD * math.ceil((content + 2 * TAR_BLOCK) / TAR_RECORD)


class _HashingFile:
    """Write-only file that feeds a part hash and the whole-shard hash as bytes pass."""

    def __init__(self, handle: io.BufferedWriter, shard_hash: Any) -> None:
        self.handle, self.shard_hash, self.hash, self.size = handle, shard_hash, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.shard_hash.update(data)
        self.size += len(data)
        return self.handle.write(data)


class _Part:
    def __init__(self, index: int, tmp_dir: str | None, shard_hash: Any) -> None:
        fd, self.tmp = tempfile.mkstemp(prefix=f".{index:05d}-", suffix=".tar.tmp", dir=tmp_dir)
        os.chmod(self.tmp, 0o644)  # mkstemp creates 0600; shards are meant to be shared
        self.handle = os.fdopen(fd, "wb")
        self.file = _HashingFile(self.handle, shard_hash)
        # A plain tar stream in WebDataset's layout (stdlib tarfile: webdataset's own writer
        # would import torch into every build worker for nothing).
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)
        self.nsamples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """One sample's members, contiguous and in a fixed order, with fixed owner and time."""
        for suffix in sorted(members):
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(members[suffix])
            info.mtime = TAR_MTIME
            info.mode = 0o644
            info.uname = info.gname = TAR_OWNER
            self.tar.addfile(info, io.BytesIO(members[suffix]))

    @property
    def offset(self) -> int:
        return self.tar.offset

    def finish(self) -> None:
        if self.handle.closed:
            return
        self.tar.close()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def discard(self) -> None:
        if not self.handle.closed:
            # close tarfile's stream now rather than at garbage collection, onto a closed file
            with contextlib.suppress(Exception):
                self.tar.close()
            self.handle.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


class ShardWriter:
    """Writes one shard index (one writer per shard; parallelism lives at the job level).

    Call `add` / `fail` in plan order, then `close(duration_s)`; on any error call `abort()` (the
    context manager does, and also aborts a writer left unclosed) so no temporary file remains.
    """

    def __init__(
        self, out_url: str, index: int, fmt: ImageFormat = "tif", max_bytes: int | None = None
    ) -> None:
        if fmt not in ("tif", "npy"):
            raise ValueError(f"image format {fmt!r}; expected 'tif' or 'npy'")
        self.out_url, self.index, self.fmt, self.max_bytes = out_url, index, fmt, max_bytes
        self.shards_url = join(out_url, "shards")
        self._local = is_local(out_url)
        if self._local:
            local_path(self.shards_url).mkdir(parents=True, exist_ok=True)
        self._tmp_dir = str(local_path(self.shards_url)) if self._local else None
        self._shard_hash = hashlib.sha256()
        self._parts: list[_Part] = []
        self._keys: set[str] = set()
        self._failed: list[dict[str, str]] = []
        self._state = "open"

    @classmethod
    def from_spec(cls, out_url: str, index: int, output: OutputSpec) -> ShardWriter:
        """A writer configured by the recipe's output section (max_shard_mb in 10^6 bytes)."""
        return cls(out_url, index, output.format, int(output.max_shard_mb * 1_000_000))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state == "open":
            if exc_type is None:
                log.warning("shard %05d left without close(): discarded", self.index)
            self.abort()

    def _claim(self, key: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"shard {self.index:05d} is already {self._state}")
        if key in self._keys:
            raise ValueError(f"shard {self.index:05d}: key {key!r} given twice")
        self._keys.add(key)

    def add(self, sample: SampleRecord) -> int:
        """Encode and append one sample; returns its size in the tar (bytes, upper bound).

        An error while encoding leaves the writer usable (the caller may `fail` that key); an
        error while writing the tar aborts the shard.
        """
        if self._state != "open":
            raise RuntimeError(f"shard {self.index:05d} is already {self._state}")
        members = sample_members(sample, self.fmt)
        self._claim(sample.key)
        size = sum(_member_size(f"{sample.key}.{s}", len(d)) for s, d in members.items())
        if self.max_bytes and _tar_file_size(size) > self.max_bytes:
            log.warning("sample %s alone passes the shard size cap: own part", sample.key)
        try:
            if not self._parts or self._over_cap(self._parts[-1], size):
                if self._parts:  # flush it whole first: the shard hash covers parts in order
                    self._parts[-1].finish()
                self._parts.append(_Part(self.index, self._tmp_dir, self._shard_hash))
            part = self._parts[-1]
            part.write(sample.key, members)
            part.nsamples += 1
        except BaseException:
            self.abort()
            raise
        return size

    def _over_cap(self, part: _Part, size: int) -> bool:
        """Start a new part when a non-empty one would pass the cap (a fixed rule: reproducible)."""
        if not self.max_bytes or not part.nsamples:
            return False
        return _tar_file_size(part.offset + size) > self.max_bytes

    def fail(self, key: str, reason: str, detail: str = "") -> None:
        """Record a location that could not be completed (signed URLs are redacted)."""
        self._claim(key)
        self._failed.append({"id": key, "reason": reason, "detail": redact(detail)[:2000]})

    def close(self, duration_s: float) -> ShardStats:
        """Publish the tar part(s), then the stats file (the commit marker). Returns the stats."""
        if self._state != "open":
            raise RuntimeError(f"shard {self.index:05d} is already {self._state}")
        try:
            if not self._parts:  # every location failed: still publish an (empty) tar
                self._parts.append(_Part(self.index, self._tmp_dir, self._shard_hash))
            for part in self._parts:
                part.finish()
            names = [
                shard_tar_name(self.index, i if len(self._parts) > 1 else None)
                for i in range(len(self._parts))
            ]
            fs, shards_path = fsspec.core.url_to_fs(self.shards_url)
            stats_path = f"{shards_path}/{self.index:05d}_stats.json"
            earlier: set[str] = set()
            if fs.exists(stats_path):  # rewriting a done shard: it must look undone meanwhile
                earlier = {part.name for part in read_stats(self.out_url, self.index).tars}
                fs.rm(stats_path)
            for part, name in zip(self._parts, names, strict=True):
                if self._local:
                    os.replace(part.tmp, local_path(join(self.shards_url, name)))
                else:
                    fs.put_file(part.tmp, f"{shards_path}/{name}")
                    os.unlink(part.tmp)
            for stale in earlier - set(names):  # e.g. parts of a split the new cap no longer needs
                fs.rm(f"{shards_path}/{stale}")
            stats = self._stats(names, duration_s)
            write_bytes_atomic(stats_url(self.out_url, self.index), _pretty_json(stats.to_json()))
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return stats

    def _stats(self, names: list[str], duration_s: float) -> ShardStats:
        tars = [
            TarPart(name, part.nsamples, part.file.size, part.file.hash.hexdigest())
            for name, part in zip(names, self._parts, strict=True)
        ]
        successes = sum(part.nsamples for part in self._parts)
        failures = Counter(f["reason"] for f in self._failed)
        return ShardStats(
            shard=self.index,
            format=self.fmt,
            count=successes + len(self._failed),
            successes=successes,
            failures=dict(sorted(failures.items())),
            failed=self._failed,
            duration_s=round(float(duration_s), 3),
            bytes=sum(t.bytes for t in tars),
            sha256=self._shard_hash.hexdigest(),
            tars=tars,
        )

    def abort(self) -> None:
        """Discard everything not yet published; safe to call more than once."""
        for part in self._parts:
            try:
                part.discard()
            except OSError as error:
                log.warning("could not remove %s: %s", part.tmp, error)
        self._state = "aborted" if self._state == "open" else self._state


def shard_tar_name(index: int, part: int | None = None) -> str:
    return f"{index:05d}.tar" if part is None else f"{index:05d}-{part}.tar"


def stats_url(out_url: str, index: int) -> str:
    return join(out_url, "shards", f"{index:05d}_stats.json")


def _pretty_json(doc: Any) -> bytes:
    return json.dumps(jsonable(doc), indent=2, ensure_ascii=False, allow_nan=False).encode()


def _without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def _list_shards_dir(shards_url: str) -> tuple[Any, str, list[str]]:
    fs, path = fsspec.core.url_to_fs(shards_url)
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]
    except FileNotFoundError:
        names = []
    return fs, path, sorted(names)


# ---------------------------------------------------------------- resuming and the manifest


def done_shards(out_url: str) -> set[int]:
    """Indexes of committed shards: those with a stats file."""
    _, _, names = _list_shards_dir(join(out_url, "shards"))
    return {int(m.group(1)) for m in map(_STATS_NAME.match, names) if m}


def read_stats(out_url: str, index: int) -> ShardStats:
    with fsspec.open(stats_url(out_url, index), "rb") as handle:
        return ShardStats.from_json(json.load(handle))


def clean_partial(out_url: str) -> list[str]:
    """Remove temporaries and uncommitted tars left by a killed run; returns the removed names.

    Call it once before starting writers: it would also remove the files of writers running now.
    """
    fs, path, names = _list_shards_dir(join(out_url, "shards"))
    done = done_shards(out_url)
    removed = []
    for name in names:
        tar = _TAR_NAME.match(name)
        if _TEMP_NAME.match(name) or (tar and int(tar.group(1)) not in done):
            fs.rm(f"{path}/{name}")
            removed.append(name)
    if removed:
        log.info("removed %d partial file(s) from %s: %s", len(removed), out_url, removed[:5])
    return removed


def write_manifest(
    out_url: str, recipe: dict[str, Any], recipe_digest: str, n_shards: int
) -> dict[str, Any]:
    """Gather every shard's stats into `OUT/manifest.json` and a wids index `OUT/index.json`."""
    done = done_shards(out_url)
    missing = [i for i in range(n_shards) if i not in done]
    if missing:
        log.warning("%d of %d shards are not done: %s", len(missing), n_shards, missing[:10])
    shards, failures, shardlist = [], Counter(), []
    for index in sorted(i for i in done if i < n_shards):
        stats = read_stats(out_url, index)
        failures.update(stats.failures)
        tars = [{"path": f"shards/{t.name}"} | _without(vars(t), "name") for t in stats.tars]
        shardlist += [
            {"url": t["path"], "nsamples": t["nsamples"], "filesize": t["bytes"]}
            for t in tars
            if t["nsamples"]
        ]
        summary = _without(stats.to_json(), "shard", "failed", "duration_s", "tars")
        shards.append({"index": index, **summary, "tars": tars})
    manifest = {
        "geoprep_version": __version__,
        "recipe_digest": recipe_digest,
        "recipe": recipe,
        "n_shards": n_shards,
        "complete": not missing,
        "missing": missing,
        "totals": {
            "locations": sum(s["count"] for s in shards),
            "successes": sum(s["successes"] for s in shards),
            "failures": sum(failures.values()),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "failures": dict(sorted(failures.items())),
        "shards": shards,
    }
    index_doc = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": str(recipe.get("name", "geoprep")),
        "shardlist": shardlist,
    }
    write_bytes_atomic(join(out_url, "index.json"), _pretty_json(index_doc))
    write_bytes_atomic(join(out_url, "manifest.json"), _pretty_json(manifest))
    return manifest

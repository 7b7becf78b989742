"""Writing reproducible WebDataset shards: one `ShardWriter` per shard index, committed last.

Tars are byte-for-byte reproducible: fixed mtime/uid/gid/owner names/mode, members of a sample
contiguous and sorted, deterministic GeoTIFF bytes. Local tars are written to a hidden temporary
sibling (`.NNNNN-*.tar.tmp`) and `os.replace`d; for remote (fsspec) outputs a tar is spooled to a
local temporary file and uploaded with one put, which object stores publish whole or not at all.
The file names, the commit marker and what a shard split by size looks like are in
`geoprep.shards.layout`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import tarfile
import tempfile
from collections import Counter
from typing import Any

import fsspec

from geoprep.core.signing import redact
from geoprep.core.storage import (
    is_local,
    join,
    local_path,
    reporting_full_disk,
    write_bytes_atomic,
)
from geoprep.recipe.sections import OutputSpec
from geoprep.shards.layout import (
    ShardStats,
    TarPart,
    pretty_json,
    read_stats,
    shard_tar_name,
    stats_url,
)
from geoprep.shards.records import SampleRecord, sample_members
from geoprep.shards.schema import IMAGE_FORMATS, ImageFormat

log = logging.getLogger(__name__)

#: 2000-01-01T00:00:00Z: any constant works; a real date keeps tar tools from warning.
TAR_MTIME = 946684800
TAR_OWNER = "geoprep"
TAR_BLOCK, TAR_RECORD = 512, 10240


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
            with contextlib.suppress(OSError):  # a full disk fails the flush: remove it anyway
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
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"image format {fmt!r}; expected one of {IMAGE_FORMATS}")
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
        with reporting_full_disk(self._tar_url()):
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

    def _tar_url(self) -> str:
        return join(self.shards_url, shard_tar_name(self.index))

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
        with reporting_full_disk(self._tar_url()):
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
                for stale in earlier - set(
                    names
                ):  # e.g. parts of a split the new cap no longer needs
                    fs.rm(f"{shards_path}/{stale}")
                stats = self._stats(names, duration_s)
                write_bytes_atomic(
                    stats_url(self.out_url, self.index), pretty_json(stats.to_json())
                )
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

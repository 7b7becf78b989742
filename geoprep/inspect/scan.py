"""Reading one tar: streams its members, groups them into samples and checks each one."""

from __future__ import annotations

import hashlib
import logging
import re
import tarfile
import time
import zlib
from typing import Any

import fsspec
import rasterio

from geoprep.inspect.check import SampleChecker
from geoprep.inspect.findings import Problem, ShardScan, one_line

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 1 << 30
# A member name as WebDataset splits it: key up to the first dot of the basename, then suffix.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_TAR_BLOCK, _TAR_RECORD = 512, 10240


class _HashingReader:
    """Read-only file wrapper: hashes and counts bytes, keeps the latest for the end check."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.hash, self.size = handle, hashlib.sha256(), 0
        self.tail_start, self.tail = 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hash.update(data)
        if len(self.tail) > 2 * _TAR_RECORD:  # keep at least one whole read before the latest
            self.tail_start += len(self.tail) - _TAR_RECORD
            self.tail = self.tail[-_TAR_RECORD:]
        self.tail += data
        self.size += len(data)
        return data

    def nonzero_after(self, offset: int) -> int | None:
        """Read to the end; the first byte position >= offset that is not zero, if any."""
        if offset < self.tail_start:
            return offset
        start = offset - self.tail_start
        found = _first_nonzero(self.tail[start:])
        if found is not None:
            return offset + found
        while chunk := self.read(1 << 20):
            found = _first_nonzero(chunk)
            if found is not None:
                return self.size - len(chunk) + found
        return None

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _first_nonzero(data: bytes) -> int | None:
    stripped = data.lstrip(b"\0")
    return len(data) - len(stripped) if stripped else None


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, suffix) as WebDataset groups members; None for a name without an extension."""
    match = _MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


def unsafe_member(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be read as part of a sample (path outside it, not a file), if so."""
    name = info.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"member {name!r} has an absolute path"
    if ".." in parts:
        return f"member {name!r} has a path outside the sample ('..')"
    if not info.isfile():
        kind = "symlink" if info.issym() else "hard link" if info.islnk() else "not a regular file"
        return f"member {name!r} is a {kind}"
    return None


class _ShardScanner:
    """Streams one tar and checks its samples; see `scan_shard`."""

    def __init__(self, url: str, checker: SampleChecker, previews: int, progress: Any) -> None:
        self.scan = ShardScan(url)
        self.checker, self.previews_left, self.progress = checker, previews, progress
        self.seen: set[str] = set()

    def problem(self, key: str | None, code: str, reason: str) -> None:
        self.scan.problems.append(Problem(self.scan.url, key, code, reason))

    def run(self) -> ShardScan:
        started = time.perf_counter()
        try:
            # one GDAL environment per shard, not one per GeoTIFF member
            with rasterio.Env(), fsspec.open(self.scan.url, "rb") as handle:
                reader = _HashingReader(handle)
                self._read_tar(reader)
                reader.drain()
                self.scan.bytes, self.scan.sha256 = reader.size, reader.hash.hexdigest()
        except (OSError, ValueError) as error:
            self.problem(None, "unreadable-shard", f"cannot read the shard: {error}")
        self.scan.seconds = time.perf_counter() - started
        return self.scan

    def _read_tar(self, reader: _HashingReader) -> None:
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                for info in tar:
                    why = unsafe_member(info)
                    parsed = split_member_name(info.name)
                    if why or parsed is None:
                        name_key = parsed[0] if parsed else info.name
                        code = "unsafe-member" if why else "unlisted-member"
                        self.problem(name_key, code, why or f"member {info.name!r} has no suffix")
                        continue  # its data is skipped unread
                    name_key, suffix = parsed
                    if name_key != key:
                        self._finish(key, members)
                        key, members = name_key, {}
                    if suffix in members:
                        self.problem(key, "duplicate-member", f"{info.name} appears twice")
                    if info.size > MAX_MEMBER_BYTES:  # never hold a crafted giant in memory
                        self.problem(key, "too-large", f"{info.name}: {info.size} bytes")
                        continue
                    members[suffix] = tar.extractfile(info).read()
                self._finish(key, members)
                key = None
                plain = getattr(tar.fileobj, "comptype", "tar") == "tar"
                self._check_end(reader, tar.offset, plain)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            where = f"while reading sample {key}" if key else "at a member header"
            self.problem(key, "damaged-tar", f"the tar is damaged or truncated {where}: {error}")

    def _check_end(self, reader: _HashingReader, offset: int, plain: bool) -> None:
        """tarfile stops silently at a damaged or missing header: look past where it stopped."""
        if not plain:
            return
        bad = reader.nonzero_after(offset)
        if bad is not None:
            self.problem(
                None,
                "damaged-tar",
                f"unreadable member header at byte {offset}; data up to byte {reader.size} "
                "after it was not read",
            )
        elif reader.size < offset + 2 * _TAR_BLOCK:
            self.problem(
                None, "damaged-tar", f"the tar ends at byte {reader.size} without its end marker"
            )

    def _finish(self, key: str | None, members: dict[str, bytes]) -> None:
        if key is None:
            return
        scan = self.scan
        scan.samples += 1
        if key in self.seen:
            self.problem(key, "duplicate-key", "the key appears twice in this shard")
        self.seen.add(key)
        scan.keys.append(key)
        want_preview = self.previews_left > 0
        try:
            preview = self.checker.check(scan, key, members, want_preview)
        except Exception as error:  # a checker bug must not hide the rest of the dataset
            log.exception("checking %s in %s failed", key, scan.url)
            self.problem(key, "check-failed", f"the check itself failed: {one_line(error)}")
            preview = None
        if preview is not None:
            scan.previews.append(preview)
            self.previews_left -= 1
        if self.progress is not None:
            self.progress.advance(1)


def scan_shard(url: str, previews: int = 0, progress: Any = None) -> ShardScan:
    """Stream one tar: validate, count and measure its samples; keep up to `previews` of them."""
    return _ShardScanner(url, SampleChecker(), previews, progress).run()

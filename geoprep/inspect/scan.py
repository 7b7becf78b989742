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
from geoprep.shards.untrusted import TailReader, end_problem, unsafe_member

log = logging.getLogger(__name__)

#: inspect's default cap on one member, lower than the reader's: inspect holds a whole sample in
#: memory and may run on a laptop next to other work (`geoprep inspect --max-member-mb`).
MAX_MEMBER_BYTES = 256 << 20
# A member name as WebDataset splits it: key up to the first dot of the basename, then suffix.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class _HashingReader(TailReader):
    """Read-only file wrapper: hashes and counts bytes, keeps the latest for the end check."""

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.hash.update(data)
        return data


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, suffix) as WebDataset groups members; None for a name without an extension."""
    match = _MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


class _ShardScanner:
    """Streams one tar and checks its samples; see `scan_shard`."""

    def __init__(
        self, url: str, checker: SampleChecker, previews: int, progress: Any, max_member_bytes: int
    ) -> None:
        self.scan = ShardScan(url)
        self.max_member_bytes = max_member_bytes
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
                    if info.size > self.max_member_bytes:  # refused from its header, unread
                        self.problem(
                            key,
                            "too-large",
                            f"{info.name}: {info.size} bytes, over the cap of "
                            f"{self.max_member_bytes} (--max-member-mb)",
                        )
                        continue
                    members[suffix] = tar.extractfile(info).read()
                self._finish(key, members)
                key = None
                if (problem := end_problem(reader, tar)) is not None:
                    self.problem(None, "damaged-tar", problem)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            where = f"while reading sample {key}" if key else "at a member header"
            self.problem(key, "damaged-tar", f"the tar is damaged or truncated {where}: {error}")

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


def scan_shard(
    url: str, previews: int = 0, progress: Any = None, max_member_bytes: int | None = None
) -> ShardScan:
    """Stream one tar: validate, count and measure its samples; keep up to `previews` of them.

    Members over `max_member_bytes` (default MAX_MEMBER_BYTES) are reported and never read."""
    cap = MAX_MEMBER_BYTES if max_member_bytes is None else max_member_bytes
    return _ShardScanner(url, SampleChecker(), previews, progress, cap).run()

"""Shards and indexes are untrusted input: which URLs are opened, which members are read, how big.

Shards travel between people, so a tar or an index.json may have been written to attack the
reader. These rules hold for every geoprep reader (`open_dataset`, `geoprep inspect`, geossl):

- a shard URL is a file path or an fsspec URL of a known scheme; shell commands (`pipe:…`, `-`)
  and unknown schemes are refused, wherever the URL came from;
- only regular members with a relative path inside the sample are read (no `..`, no absolute
  path, no links or devices);
- a member larger than a cap is refused from its header, before any of its bytes are read;
- a tar must end where its headers say it ends (a lying header is reported, not skipped).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec

from geoprep.core.errors import UserError

#: The reader's cap on one member: far above any member a recipe of the README writes (a 2048 px,
#: 13-band uint16 patch is 109 MB), far below what would exhaust a training machine's memory.
MAX_MEMBER_BYTES = 1 << 30
#: fsspec schemes a shard or index may name; anything else (pipe:, reference::, …) is refused.
URL_SCHEMES = frozenset(
    {"file", "memory", "http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf"}
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_TAR_BLOCK, _TAR_RECORD = 512, 10240


class UnsafeShardError(ValueError):
    """A shard or index holds something geoprep refuses to read (see the module docstring)."""


def check_shard_url(url: str, origin: str = "") -> str:
    """`url` if it is a path or an fsspec URL of a known scheme; else UserError naming `origin`."""
    where = f"{origin}: " if origin else ""
    if not isinstance(url, str) or not url or url == "-":
        raise UserError(f"{where}shard URL {url!r} is not read: not a path or URL")
    if "::" in url:
        raise UserError(f"{where}shard URL {url!r}: chained fsspec URLs are not read")
    match = _SCHEME.match(url)
    if match and not (len(match[1]) == 1 and url[2:3] in ("\\", "/")):  # C:\ is a path
        scheme = match[1].lower()
        if scheme not in URL_SCHEMES or not url[match.end() :].startswith("//"):
            raise UserError(
                f"{where}shard URL {url!r}: scheme {scheme!r} is not read (shards are untrusted; "
                f"allowed: file paths and {', '.join(sorted(URL_SCHEMES))})"
            )
    return url


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


class TailReader:
    """Read-only file wrapper: counts bytes and keeps the latest ones for the end-of-tar check."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.size = handle, 0
        self.tail_start, self.tail = 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
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


def end_problem(reader: TailReader, tar: tarfile.TarFile) -> str | None:
    """tarfile stops silently at a damaged or lying header: what lies past where it stopped."""
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return None  # compressed: the decompressor checks the stream's end itself
    offset = tar.offset
    bad = reader.nonzero_after(offset)
    if bad is not None:
        return (
            f"unreadable member header at byte {offset}; data up to byte {reader.size} "
            "after it was not read"
        )
    if reader.size < offset + 2 * _TAR_BLOCK:
        return f"the tar ends at byte {reader.size} without its end marker"
    return None


def tar_members(url: str, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """The members of one shard as WebDataset's {"fname", "data", "__url__"}, read safely.

    Raises UnsafeShardError at the first member that breaks a rule of the module docstring, and
    at a tar that is damaged or ends early (nothing is silently skipped).
    """
    check_shard_url(url)
    with fsspec.open(url, "rb") as handle:
        reader = TailReader(handle)
        try:
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                for info in tar:
                    if info.isdir():
                        continue
                    why = unsafe_member(info)
                    if why:
                        raise UnsafeShardError(f"shard {url}: {why}; refusing to read it")
                    if info.size > max_bytes:
                        raise UnsafeShardError(
                            f"shard {url}: member {info.name!r} is {info.size} bytes, over the "
                            f"cap of {max_bytes} (open_dataset(max_member_bytes=…))"
                        )
                    data = tar.extractfile(info).read()
                    yield {"fname": info.name, "data": data, "__url__": url}
                    tar.members = []  # streaming: keep no index of past members
                problem = end_problem(reader, tar)
        except (tarfile.TarError, EOFError) as error:
            raise UnsafeShardError(f"shard {url}: damaged or truncated tar ({error})") from None
    if problem:
        raise UnsafeShardError(f"shard {url}: {problem}")

"""Paths and URLs (local or fsspec) and writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

from geoprep.core.errors import DiskFullError


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return str(local_path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *parts])


def makedirs(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)


def device_of(path: str | Path) -> str:
    """The device (and mount point) holding `path`, as /proc/mounts names it."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    mount = here
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                device = fields[0]  # the last mount on a point is the visible one
    return f"{device} ({mount})" if device else str(mount)


@contextlib.contextmanager
def reporting_full_disk(url: str) -> Iterator[None]:
    """Turn ENOSPC (and EDQUOT) while writing `url` into one DiskFullError line."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = device_of(local_path(url)) if is_local(url) else url.split("/")[2]
        raise DiskFullError(
            f"no space left on {where} while writing {url}; free space and rerun"
        ) from None


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a whole file: locally through a temporary sibling and a rename, remotely in one put."""
    if is_local(url):
        with reporting_full_disk(url):
            _write_local(url, data)
        return
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data)  # object stores publish a put whole or not at all


def _write_local(url: str, data: bytes) -> None:
    path = local_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp creates 0600; give the file the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, before any I/O thread runs
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as handle:
        return handle.read()

"""Which tars make up a dataset: one listing for the reader, `geoprep inspect` and the build.

A dataset directory is read through its `index.json` (the wids shard index the build writes
last); while a build is still running or was interrupted, through its commit markers: the tars
of committed shards, in shard order. `geoprep inspect` also asks for the tars that are not part
of the dataset yet (`unfinished=True`), to report them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import fsspec

from geoprep.core.errors import UserError
from geoprep.core.storage import is_local, join, local_path, read_bytes
from geoprep.shards.layout import INDEX_FILE, SHARDS_DIR, done_shards, read_stats
from geoprep.shards.untrusted import check_shard_url

log = logging.getLogger(__name__)


def shard_urls(source: str | Sequence[str]) -> list[str]:
    """Tar URLs of a geoprep output directory (its index.json), a wids index, a pattern or list.

    Every URL is a file path or an fsspec URL of a known scheme (`check_shard_url`): a `pipe:`
    command is refused wherever it comes from."""
    return [check_shard_url(url) for url in _shard_urls(source)]


def _shard_urls(source: str | Sequence[str]) -> list[str]:
    if not isinstance(source, str):
        return list(source)
    check_shard_url(source)
    if source.endswith(".json"):
        return index_tars(source)
    if "{" in source or source.endswith((".tar", ".tgz", ".tar.gz")):
        import webdataset  # deferred: it imports torch

        return webdataset.shardlists.expand_urls(source)
    if is_local(source) and not local_path(source).is_dir():
        raise UserError(f"{source}: not a directory, shard, brace pattern or index.json")
    return dataset_tars(source)


def dataset_tars(root: str, *, unfinished: bool = False) -> list[str]:
    """The tars of the dataset under `root`: those its index.json lists; without one, those of
    committed shards that hold samples. `unfinished`: instead every tar in `root/shards`,
    committed or not (what a check must look at)."""
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(f"{path.rstrip('/')}/{INDEX_FILE}"):
        return index_tars(join(root, INDEX_FILE))
    if unfinished:
        return _every_tar(root)
    urls = [
        join(root, SHARDS_DIR, part.name)
        for index in sorted(done_shards(root))
        for part in read_stats(root, index).tars
        if part.nsamples
    ]
    if not urls:
        raise UserError(f"{root}: no index.json and no finished shards; run geoprep build")
    log.warning("%s has no index.json yet: reading the %d committed tar(s)", root, len(urls))
    return urls


def _every_tar(root: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(join(root, SHARDS_DIR))
    try:
        names = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    except FileNotFoundError:
        names = []
    tars = [name for name in names if name.endswith(".tar") and not name.startswith(".")]
    if not tars:
        raise UserError(f"{root}: no index.json and no shards/*.tar; is it a geoprep build output?")
    return [join(root, SHARDS_DIR, name) for name in tars]


def index_tars(url: str) -> list[str]:
    """The tar URLs a wids shard index lists; relative ones are taken from the index's folder."""
    try:
        doc = json.loads(read_bytes(url))
        urls = [entry["url"] for entry in doc["shardlist"]]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{url}: not a shard index with a 'shardlist' of urls ({error})") from None
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    for tar in urls:
        check_shard_url(tar, origin=url)
    return [u if "://" in u or u.startswith("/") else join(base, u) for u in urls]

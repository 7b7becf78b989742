"""Finding the shards: expands the command-line sources and reads the build's records.

A dataset directory or index.json is listed by `geoprep.shards.listing`, as the reader lists it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from geoprep.core.errors import UserError
from geoprep.core.storage import is_local, join
from geoprep.inspect.findings import Problem, one_line
from geoprep.shards.layout import TAR_NAME
from geoprep.shards.listing import dataset_tars, index_tars


@dataclass
class Sources:
    """The tars to read, in order, and what the build recorded about them."""

    tars: list[str]
    root: str | None  # the dataset directory, when one was given
    stats_out: str | None  # where stats.json goes
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # tar URL → its stats part
    stats_files: list[dict[str, Any]] = field(default_factory=list)  # every _stats.json found
    manifest: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)


def _url(fs: Any, path: str, like: str) -> str:
    return path if is_local(like) else fs.unstrip_protocol(path)


def _normal(url: str) -> str:
    """Local paths absolute (globs return them so; names must compare equal), URLs as given."""
    return os.path.abspath(url.removeprefix("file://")) if is_local(url) else url


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _read_json(url: str) -> Any:
    with fsspec.open(url, "rb") as handle:
        return json.load(handle)


def _expand(source: str) -> tuple[list[str], str | None]:
    """(tar URLs, dataset directory or None) of one command-line source."""
    fs, path = fsspec.core.url_to_fs(source)
    if "{" in source:
        import braceexpand  # a dependency of webdataset: the same pattern syntax

        urls = list(braceexpand.braceexpand(source))
        missing = [u for u in urls if not _exists(u)]
        if missing:
            raise UserError(f"{source}: {len(missing)} shard(s) do not exist, e.g. {missing[0]}")
        return urls, None
    if any(c in path for c in "*?["):
        found = sorted(fs.glob(path))
        if not found:
            raise UserError(f"{source}: no file matches")
        return [_url(fs, p, source) for p in found], None
    if not fs.exists(path):
        raise UserError(f"{source}: no such shard, index or dataset directory")
    if fs.isdir(path):
        return dataset_tars(source, unfinished=True), source
    if source.endswith(".json"):
        return index_tars(source), _parent(source)
    return [source], None


def resolve_sources(sources: list[str]) -> Sources:
    """Tars of shard paths/URLs, brace patterns, globs, an index.json or a dataset directory."""
    if not sources:
        raise UserError("no shards given: pass a dataset directory, shard paths or a brace pattern")
    tars, roots = [], []
    for source in sources:
        urls, root = _expand(source)
        tars += [u for u in map(_normal, urls) if u not in tars]
        roots.append(_normal(root) if root is not None else None)
    root = roots[0] if len(sources) == 1 and roots[0] is not None else None
    directories = {_parent(t) for t in tars}
    stats_out = join(root, "stats.json") if root else None
    if root is None and len(directories) == 1:
        stats_out = join(directories.pop(), "stats.json")
    found = Sources(tars, root, stats_out)
    _read_build_records(found)
    return found


def _read_build_records(found: Sources) -> None:
    """Load the `NNNNN_stats.json` commit markers (and the manifest) beside the tars."""
    directories = sorted({_parent(t) for t in found.tars})
    if found.root:
        directories = sorted(set(directories) | {join(found.root, "shards")})
        manifest_url = join(found.root, "manifest.json")
        try:
            found.manifest = _read_json(manifest_url)
        except FileNotFoundError:
            pass
        except ValueError as error:
            found.problems.append(Problem(manifest_url, None, "bad-build-record", str(error)))
    parts: dict[str, dict[str, Any]] = {}
    for directory in directories:
        fs, path = fsspec.core.url_to_fs(directory)
        for stats_path in sorted(fs.glob(f"{path.rstrip('/')}/*_stats.json")):
            url = _url(fs, stats_path, directory)
            try:
                doc = _read_json(url)
                tars = {join(directory, t["name"]): t for t in doc.get("tars", [])}
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                found.problems.append(Problem(url, None, "bad-build-record", one_line(error)))
                continue
            if found.root or any(t in found.tars for t in tars):
                found.stats_files.append(doc)
                parts.update(tars)
    found.records = {t: parts[t] for t in found.tars if t in parts}
    if found.root:
        _check_complete(found, parts)


def _planned_shards(root: str) -> int | None:
    """Shards a build of the plan in `root` makes (plan.json's locations over the recipe's
    samples per shard); None when the directory holds no plan of its own."""
    try:
        locations = int(_read_json(join(root, "plan.json"))["n_locations"])
        with fsspec.open(join(root, "recipe.yaml"), "rb") as handle:
            per_shard = int(yaml.safe_load(handle)["output"]["samples_per_shard"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    return -(-locations // per_shard) if per_shard > 0 else None


def _check_complete(found: Sources, parts: dict[str, dict[str, Any]]) -> None:
    """A dataset directory: a manifest (the build finished), every shard built, every built tar
    listed, no uncommitted tar."""
    if found.manifest is None:
        committed = len(found.stats_files)
        planned = _planned_shards(found.root)
        of = f" of {planned} planned" if planned is not None else ""
        found.problems.append(
            Problem(
                join(found.root, "manifest.json"),
                None,
                "incomplete-build",
                f"no manifest.json: the build did not finish ({committed}{of} shards committed); "
                "rerun the same geoprep build command to finish it",
            )
        )
    for tar in found.tars:
        if tar not in parts and TAR_NAME.match(tar.rsplit("/", 1)[-1]):
            found.problems.append(
                Problem(tar, None, "uncommitted-shard", "no NNNNN_stats.json: an unfinished build")
            )
    for tar, part in parts.items():
        if part.get("nsamples") and tar not in found.tars:
            found.problems.append(
                Problem(
                    tar, None, "missing-shard", f"built with {part['nsamples']} samples, not listed"
                )
            )
    for index in (found.manifest or {}).get("missing", []):
        url = join(found.root, "shards", f"{int(index):05d}.tar")
        found.problems.append(
            Problem(url, None, "missing-shard", "the manifest lists it as not built")
        )

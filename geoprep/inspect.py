"""Checking a built dataset: streams its shards, validates every sample, counts and measures it.

`inspect_dataset` reads each tar once, member by member (`tarfile` stream mode over an fsspec
file; nothing is extracted to disk), groups members into samples by key as WebDataset does, and
checks every sample against the schema `geoprep build` writes. A problem is recorded with its
shard, key and reason and never stops the run. Alongside, it counts samples (per shard, split,
cluster, label, source, sensor and time slot), gathers the build's own failure records, and
measures per-band statistics (`geoprep.bandstats`), written to `stats.json` beside the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import tarfile
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import fsspec
import numpy as np
import rasterio
import soundfile
from rasterio.crs import CRS

from geoprep import __version__
from geoprep.bandstats import StatsCollector
from geoprep.errors import UserError
from geoprep.reader import decode_tif
from geoprep.storage import join, write_bytes_atomic

log = logging.getLogger(__name__)

STATS_FORMAT = "geoprep-stats/1"
IMAGE_FORMATS = ("tif", "npy")
AUDIO_MEMBERS = ("audio.flac", "mel.npy")
MAX_MEMBER_BYTES = 1 << 30
COUNTED = ("shard", "split", "cluster", "label", "source", "sensor", "slot", "member")
# A member name as WebDataset splits it: key up to the first dot of the basename, then suffix.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_SHARD_NAME = re.compile(r"^(\d+)(?:-\d+)?\.tar$")
_EXAMPLES_PER_VARIANT = 20
_TAR_BLOCK, _TAR_RECORD = 512, 10240


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
class _Variants:
    """How often each signature (dtype, shape, bands …) of one member suffix occurs."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[tuple, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, signature: tuple, shard: str, key: str) -> None:
        self.counts[signature] += 1
        examples = self.examples.setdefault(signature, [])
        if len(examples) < _EXAMPLES_PER_VARIANT:
            examples.append((shard, key))

    def merge(self, other: _Variants) -> None:
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
    variants: dict[str, _Variants] = field(default_factory=dict)
    stats: StatsCollector = field(default_factory=StatsCollector)
    previews: list[Preview] = field(default_factory=list)

    def count_member(self, member: str, signature: tuple, key: str) -> None:
        """A member that decoded and checked out: count it and note its variant."""
        self.variants.setdefault(member, _Variants()).add(signature, self.url, key)
        self.counts["member"][member] += 1


# ---------------------------------------------------------------- reading one tar


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
            self.problem(key, "check-failed", f"the check itself failed: {_one_line(error)}")
            preview = None
        if preview is not None:
            scan.previews.append(preview)
            self.previews_left -= 1
        if self.progress is not None:
            self.progress.advance(1)


def scan_shard(url: str, previews: int = 0, progress: Any = None) -> ShardScan:
    """Stream one tar: validate, count and measure its samples; keep up to `previews` of them."""
    return _ShardScanner(url, SampleChecker(), previews, progress).run()


# ---------------------------------------------------------------- checking one sample


@lru_cache(maxsize=256)
def _crs(text: str) -> CRS | None:
    try:
        return CRS.from_user_input(text)
    except Exception:  # rasterio raises its own CRSError and others for junk: report, not crash
        return None


def _same_nodata(a: Any, b: Any) -> bool:
    a = math.nan if isinstance(a, str) and a.lower() == "nan" else a
    b = math.nan if isinstance(b, str) and b.lower() == "nan" else b
    if a is None or b is None:
        return a is None and b is None
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)


@dataclass
class _Sample:
    """One sample under check: its tar's scan, key, JSON, members and the problems found."""

    scan: ShardScan
    key: str
    meta: dict[str, Any]
    members: dict[str, bytes]
    problems: list[tuple[str, str]]
    preview: Preview | None


class SampleChecker:
    """Checks one sample's members against its JSON and records counts, stats and variants."""

    def check(
        self, scan: ShardScan, key: str, members: dict[str, bytes], want_preview: bool
    ) -> Preview | None:
        problems: list[tuple[str, str]] = []
        meta = self._meta(key, members, problems)
        preview = None
        if meta is not None:
            self._count(scan, meta)
            if want_preview:
                preview = Preview(
                    scan.url, key, meta.get("cluster"), meta.get("split"), meta.get("label")
                )
            sample = _Sample(scan, key, meta, members, problems, preview)
            listed = self._images(sample)
            # per sample, not per image: native layouts have one image per resolution group
            good = [e for e in meta["images"] if isinstance(e, dict) and e.get("member") in listed]
            scan.counts["sensor"].update({str(e.get("sensor")) for e in good})
            scan.counts["slot"].update({f"{e.get('sensor')}.{e.get('slot')}" for e in good})
            listed |= self._audio(sample)
            if preview is not None:
                from geoprep.report import best_per_slot

                preview.images = best_per_slot(preview.images)
            for suffix in sorted(set(members) - listed - {"json"}):
                problems.append(("unlisted-member", f"{key}.{suffix} is not listed in the JSON"))
        for code, reason in problems:
            scan.problems.append(Problem(scan.url, key, code, reason))
        return preview if preview is not None and not problems else None

    # -- the JSON ---------------------------------------------------------------------

    def _meta(
        self, key: str, members: dict[str, bytes], problems: list[tuple[str, str]]
    ) -> dict[str, Any] | None:
        if "json" not in members:
            problems.append(("missing-json", f"no {key}.json member"))
            return None
        try:
            meta = json.loads(members["json"])
        except ValueError as error:
            problems.append(("bad-json", f"{key}.json does not parse: {error}"))
            return None
        if not isinstance(meta, dict):
            problems.append(("bad-json", f"{key}.json is not an object"))
            return None
        if meta.get("id") != key:
            problems.append(("id-mismatch", f"JSON id {meta.get('id')!r} differs from the key"))
        for name, bound in (("lat", 90), ("lon", 180)):
            value = meta.get(name)
            if not (_is_number(value) and -bound <= value <= bound):
                problems.append(("missing-field", f"{name} is {value!r}; expected degrees"))
        for name in ("split", "source"):
            if not isinstance(meta.get(name), str):
                problems.append(("missing-field", f"{name} is {meta.get(name)!r}; expected text"))
        if not isinstance(meta.get("cluster"), int | str) or isinstance(meta["cluster"], bool):
            problems.append(("missing-field", f"cluster is {meta.get('cluster')!r}"))
        if "label" not in meta:
            problems.append(("missing-field", "no label (null when the plan has none)"))
        if not isinstance(meta.get("images"), list):
            problems.append(("missing-field", f"images is {meta.get('images')!r}; expected a list"))
            meta["images"] = []
        return meta

    def _count(self, scan: ShardScan, meta: dict[str, Any]) -> None:
        counts = scan.counts
        counts["shard"][scan.url] += 1
        for name in ("split", "cluster", "label", "source"):
            counts[name][_label(meta.get(name))] += 1
        lat, lon = meta.get("lat"), meta.get("lon")
        if _is_number(lat) and _is_number(lon):
            scan.points.append(
                (float(lat), float(lon), _label(meta.get("cluster")), _label(meta.get("split")))
            )

    # -- images -------------------------------------------------------------------------

    def _images(self, sample: _Sample) -> set[str]:
        scan, key, meta, members = sample.scan, sample.key, sample.meta, sample.members
        problems, preview = sample.problems, sample.preview
        listed: set[str] = set()
        for entry in meta["images"]:
            why = _entry_problem(entry)
            if why:
                problems.append(("bad-image-entry", f"image entry {_short(entry)}: {why}"))
                continue
            member = entry["member"]
            if member in listed:
                problems.append(("bad-image-entry", f"{member} is listed twice"))
                continue
            listed.add(member)
            grid, why = _grid_of(meta, entry)
            if grid is None:
                code = "georef-mismatch" if "differs" in why else "missing-field"
                problems.append((code, f"{member}: {why}"))
                continue
            slots = meta.get("slots")
            if isinstance(slots, dict) and slots and entry["slot"] not in slots:
                problems.append(("bad-image-entry", f"{member}: slot not in the JSON's slots"))
            if member not in members:
                problems.append(("missing-member", f"{key}.{member} is listed but missing"))
                continue
            array = self._image(key, member, entry, grid, members[member], problems)
            if array is None:
                continue
            signature = (entry["dtype"], tuple(entry["shape"]), tuple(entry["bands"]))
            scan.count_member(member, signature, key)
            nodata = _nodata(entry.get("nodata"))
            scan.stats.add_image(
                entry["sensor"],
                entry.get("group"),
                array,
                list(entry["bands"]),
                nodata,
                entry.get("scale"),
                entry.get("offset"),
            )
            if preview is not None:
                from geoprep.report import preview_image  # matplotlib stays out of plain runs

                display, bands = preview_image(entry["sensor"], entry["bands"], array, nodata)
                preview.images.append(
                    PreviewImage(
                        entry["sensor"],
                        entry["slot"],
                        entry.get("group"),
                        entry.get("datetime"),
                        bands,
                        display,
                    )
                )
        return listed

    def _image(
        self,
        key: str,
        member: str,
        entry: dict[str, Any],
        grid: dict[str, Any],
        data: bytes,
        problems: list[tuple[str, str]],
    ) -> np.ndarray | None:
        name = f"{key}.{member}"
        try:
            if member.endswith(".tif"):
                image = decode_tif(data)
                array = image.array
            else:
                array = np.load(io.BytesIO(data), allow_pickle=False)
                image = None
        except Exception as error:  # GDAL/numpy raise many types for garbage: report them all
            problems.append(("undecodable", f"{name} does not decode: {_one_line(error)}"))
            return None
        found = len(problems)
        shape = [int(n) for n in entry["shape"]]
        if list(array.shape) != shape:
            problems.append(("shape-mismatch", f"{name} is {list(array.shape)}, JSON {shape}"))
        elif shape[1:] != [grid["height"], grid["width"]] or shape[0] != len(entry["bands"]):
            problems.append(
                ("shape-mismatch", f"{name} {shape} disagrees with its grid or band list")
            )
        if array.dtype.name != entry["dtype"]:
            problems.append(
                ("dtype-mismatch", f"{name} is {array.dtype.name}, JSON {entry['dtype']}")
            )
        if image is not None:
            expected = _crs(str(grid["crs"]))
            actual = _crs(image.crs) if image.crs else None
            if expected is None or actual is None or expected != actual:
                problems.append(("georef-mismatch", f"{name} CRS {image.crs}, JSON {grid['crs']}"))
            transform = np.array(tuple(image.transform)[:6], dtype=float)
            wanted = np.array(grid["transform"][:6], dtype=float)
            tolerance = 1e-6 * max(abs(wanted[0]), abs(wanted[4]), 1e-12)
            if not np.allclose(transform, wanted, rtol=0, atol=tolerance):
                problems.append(
                    (
                        "georef-mismatch",
                        f"{name} transform {transform.tolist()}, JSON {wanted.tolist()}",
                    )
                )
            if not _same_nodata(image.nodata, entry.get("nodata")):
                problems.append(
                    ("nodata-mismatch", f"{name} nodata {image.nodata}, JSON {entry.get('nodata')}")
                )
            if list(image.bands) != list(entry["bands"]):
                problems.append(
                    ("band-mismatch", f"{name} bands {list(image.bands)}, JSON {entry['bands']}")
                )
        return array if len(problems) == found else None

    # -- audio ---------------------------------------------------------------------------

    def _audio(self, sample: _Sample) -> set[str]:
        key, meta, members, problems = sample.key, sample.meta, sample.members, sample.problems
        declared = isinstance(meta.get("audio"), dict)
        info = meta.get("audio") if declared else {}
        present = {m for m in AUDIO_MEMBERS if m in members}
        if declared:
            for member in sorted(set(AUDIO_MEMBERS) - present):
                problems.append(("missing-member", f"{key}.{member} is missing (JSON has audio)"))
        if "audio.flac" in present:
            self._flac(sample, info, members["audio.flac"])
        if "mel.npy" in present:
            self._mel(sample, info, members["mel.npy"])
        return present

    def _flac(self, sample: _Sample, info: dict[str, Any], data: bytes) -> None:
        scan, key, problems = sample.scan, sample.key, sample.problems
        try:
            wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile raises its own errors for garbage
            problems.append(("undecodable", f"{key}.audio.flac: {_one_line(error)}"))
            return
        seconds = wave.shape[0] / rate
        wanted_rate, wanted_seconds = info.get("sample_rate"), info.get("duration_s")
        if _is_number(wanted_rate) and int(wanted_rate) != rate:
            problems.append(("audio-mismatch", f"{key}.audio.flac: {rate} Hz, JSON {wanted_rate}"))
        elif _is_number(wanted_seconds) and abs(seconds - wanted_seconds) > 1e-3 + 1 / rate:
            problems.append(
                ("audio-mismatch", f"{key}.audio.flac: {seconds:.3f} s, JSON {wanted_seconds} s")
            )
        scan.count_member("audio.flac", ("flac", rate, wave.shape[1]), key)

    def _mel(self, sample: _Sample, info: dict[str, Any], data: bytes) -> None:
        scan, key, problems, preview = sample.scan, sample.key, sample.problems, sample.preview
        try:
            mel = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:  # numpy raises several types for garbage
            problems.append(("undecodable", f"{key}.mel.npy: {_one_line(error)}"))
            return
        expected = [info.get("n_mels"), info.get("frames")]  # (n_mels, frames)
        if mel.ndim != 2 or not np.issubdtype(mel.dtype, np.number):
            problems.append(("shape-mismatch", f"{key}.mel.npy is {mel.dtype} {list(mel.shape)}"))
            return
        if any(_is_number(n) and n != size for n, size in zip(expected, mel.shape, strict=True)):
            problems.append(
                (
                    "audio-mismatch",
                    f"{key}.mel.npy is {list(mel.shape)}, JSON (n_mels, frames) {expected}",
                )
            )
            return
        # frames vary with the recording's length: only the mel axis must agree across samples
        scan.count_member("mel.npy", (mel.dtype.name, mel.shape[0]), key)
        scan.stats.add_mel(mel)
        if preview is not None:
            preview.mel = mel.astype(np.float32)


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    for name in ("member", "sensor", "slot", "dtype"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            return f"no {name}"
    group = entry.get("group")
    if group is not None and not isinstance(group, str):
        return "group is not text"
    bands, shape = entry.get("bands"), entry.get("shape")
    if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands):
        return "bands is not a list of names"
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)):
        return "shape is not [bands, height, width]"
    stem = ".".join(p for p in (entry["sensor"], entry["slot"], group) if p is not None)
    extension = entry["member"].rsplit(".", 1)[-1]
    if entry["member"] != f"{stem}.{extension}" or extension not in IMAGE_FORMATS:
        return f"member {entry['member']!r} is not {stem}.tif or {stem}.npy"
    return None


def _grid_of(meta: dict[str, Any], entry: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the image's grid, what is wrong with it): its entry's own grid (every image states one;
    fMoW series differ per image), which must equal the sample's shared `grid` or
    `grids[group]` where those exist; older samples have only the shared one."""
    group = entry.get("group")
    grids = meta.get("grids") if isinstance(meta.get("grids"), dict) else {}
    shared = meta.get("grid") if group is None else grids.get(group)
    where = "grid" if group is None else f"grids.{group}"
    own = entry.get("grid")
    if own is not None and shared is not None and own != shared:
        return None, f"its grid differs from the sample's {where}"
    grid = own if own is not None else shared
    if not isinstance(grid, dict):
        return None, f"no grid (neither the image's nor {where})"
    transform = grid.get("transform")
    if not (isinstance(transform, list) and len(transform) >= 6):
        return None, "its grid has no transform [a, b, c, d, e, f]"
    if not all(map(_is_number, transform[:6])):
        return None, "its grid's transform is not numbers"
    if not all(isinstance(grid.get(k), int) for k in ("width", "height")) or "crs" not in grid:
        return None, "its grid lacks crs, width or height"
    return grid, ""


def _nodata(value: Any) -> float | int | None:
    if isinstance(value, str):
        return math.nan if value.lower() == "nan" else None
    return value if _is_number(value) else None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


# ---------------------------------------------------------------- finding the shards


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


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _url(fs: Any, path: str, like: str) -> str:
    return path if _is_local(like) else fs.unstrip_protocol(path)


def _normal(url: str) -> str:
    """Local paths absolute (globs return them so; names must compare equal), URLs as given."""
    return os.path.abspath(url.removeprefix("file://")) if _is_local(url) else url


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
        return _dataset_tars(source), source
    if source.endswith(".json"):
        return _index_tars(source), _parent(source)
    return [source], None


def _index_tars(url: str) -> list[str]:
    try:
        doc = _read_json(url)
        entries = doc["shardlist"]
        urls = [entry["url"] for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{url}: not a shard index with a 'shardlist' of urls ({error})") from None
    base = _parent(url)
    return [u if "://" in u or u.startswith("/") else join(base, u) for u in urls]


def _dataset_tars(root: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(f"{path.rstrip('/')}/index.json"):
        return _index_tars(join(root, "index.json"))
    found = sorted(fs.glob(f"{path.rstrip('/')}/shards/*.tar"))
    if not found:
        raise UserError(f"{root}: no index.json and no shards/*.tar; is it a geoprep build output?")
    return [_url(fs, p, root) for p in found]


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
                found.problems.append(Problem(url, None, "bad-build-record", _one_line(error)))
                continue
            if found.root or any(t in found.tars for t in tars):
                found.stats_files.append(doc)
                parts.update(tars)
    found.records = {t: parts[t] for t in found.tars if t in parts}
    if found.root:
        _check_complete(found, parts)


def _check_complete(found: Sources, parts: dict[str, dict[str, Any]]) -> None:
    """A dataset directory: every shard built, every built tar listed, no uncommitted tar."""
    for tar in found.tars:
        if tar not in parts and _SHARD_NAME.match(tar.rsplit("/", 1)[-1]):
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


# ---------------------------------------------------------------- the result


@dataclass
class ShardSummary:
    url: str
    samples: int
    bytes: int
    sha256: str
    seconds: float
    expected: int | None  # samples the build recorded for this tar

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class InspectResult:
    """What `inspect_dataset` found. `clean` is True when no problem was found."""

    sources: list[str]
    root: str | None
    shards: list[ShardSummary]
    samples: int
    counts: dict[str, Counter]
    build: dict[str, Any]
    problems: list[Problem]
    stats: dict[str, Any]
    seconds: float
    stats_path: str | None = None
    report_path: str | None = None
    report_seconds: float = 0.0
    points: list[tuple[float, float, str, str]] = field(default_factory=list, repr=False)
    previews: list[Preview] = field(default_factory=list, repr=False)
    collector: StatsCollector = field(default_factory=StatsCollector, repr=False)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def problem_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.code for p in self.problems).items()))

    def to_json(self) -> dict[str, Any]:
        """Every number of the inspection, JSON-ready (what `--json` prints)."""
        return {
            "clean": self.clean,
            "sources": self.sources,
            "root": self.root,
            "samples": self.samples,
            "shards": [s.to_json() for s in self.shards],
            "counts": {name: _sorted_counts(c) for name, c in self.counts.items()},
            "build": self.build,
            "problem_counts": self.problem_counts(),
            "problems": [p.to_json() for p in self.problems],
            "timing": {
                "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples_per_s, 1),
                "report_seconds": round(self.report_seconds, 3),
            },
            "stats_path": self.stats_path,
            "report_path": self.report_path,
            "stats": self.stats,
        }

    def summary_tables(self, max_rows: int = 20) -> list[Any]:
        """rich Tables: summary, counts, build failures, problems, band statistics."""
        from rich.markup import escape
        from rich.table import Table

        summary = Table(title="dataset", show_header=False)
        summary.add_column("what", style="bold")
        summary.add_column("value")
        status = "[green]clean[/]" if self.clean else f"[red]{len(self.problems)} problem(s)[/]"
        for name, value in (
            ("status", status),
            ("samples", str(self.samples)),
            ("shards", str(len(self.shards))),
            ("build failures", str(sum(self.build["failures"].values()))),
            ("speed", f"{self.samples_per_s:.1f} samples/s ({self.seconds:.1f} s)"),
            ("stats.json", escape(self.stats_path or "not written")),
            ("report", escape(self.report_path or "-")),
        ):
            summary.add_row(name, value)
        tables = [summary]
        for name in ("split", "cluster", "label", "source", "sensor", "slot"):
            counts = _sorted_counts(self.counts.get(name, Counter()))
            if counts:
                tables.append(_count_table(f"samples per {name}", counts, max_rows))
        if self.build["failures"]:
            tables.append(_count_table("build failures", self.build["failures"], max_rows))
        if self.problems:
            table = Table(title=f"problems ({len(self.problems)})")
            for column in ("shard", "key", "code", "reason"):
                table.add_column(column, overflow="fold")
            for problem in self.problems[:max_rows]:
                cells = (_tail(problem.shard), problem.key or "", problem.code, problem.reason)
                table.add_row(*map(escape, cells))
            tables.append(table)
        for key, group in self.stats.get("sensors", {}).items():
            table = Table(
                title=f"band statistics: {key} ({group['dtype']}, {group['images']} images)"
            )
            for column in ("band", "mean", "std", "min", "p2", "p98", "max", "nodata %"):
                table.add_column(column, justify="right" if column != "band" else "left")
            for i, band in enumerate(group["bands"]):
                row = [group[c][i] for c in ("mean", "std", "min", "p2", "p98", "max")]
                fraction = group["nodata_fraction"][i]
                table.add_row(
                    escape(band),
                    *(_fmt(v) for v in row),
                    "-" if fraction is None else f"{100 * fraction:.2f}",
                )
            tables.append(table)
        return tables


def _count_table(title: str, counts: dict[str, int], max_rows: int) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("value")
    table.add_column("n", justify="right")
    items = list(counts.items())
    for value, n in items[:max_rows]:
        table.add_row(escape(value), str(n))
    if len(items) > max_rows:
        table.add_row(f"… {len(items) - max_rows} more", str(sum(n for _, n in items[max_rows:])))
    return table


def _tail(url: str, parts: int = 2) -> str:
    return "/".join(url.rstrip("/").split("/")[-parts:])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _sorted_counts(counts: Counter) -> dict[str, int]:
    return {str(k): counts[k] for k in sorted(counts, key=lambda k: _sort_key(str(k)))}


# ---------------------------------------------------------------- the whole dataset


def inspect_dataset(
    sources: list[str],
    report_dir: str | None = None,
    progress: Any = None,
    *,
    workers: int = 1,
    previews: int = 8,
    write_stats: bool = True,
) -> InspectResult:
    """Validate, count and measure a built dataset; write stats.json and (optionally) a report.

    `sources`: shard paths or fsspec URLs, brace patterns (`shards/{00000..00009}.tar`), globs, an
    index.json, or a dataset directory (its index.json, else shards/*.tar, plus the build's
    records). `progress` (optional) gets `set_total(n)` and `advance()` per sample (per shard
    with `workers` > 1 processes, each reading whole shards). `previews`: samples kept for the
    report's thumbnails. Raises UserError only for sources that do not exist; damaged data becomes
    `result.problems`.
    """
    started = time.perf_counter()
    found = resolve_sources(list(sources))
    expected = [found.records.get(t, {}).get("nsamples") for t in found.tars]
    if progress is not None:
        progress.set_total(sum(expected) if None not in expected else None)
    quotas = _preview_quotas(len(found.tars), previews)

    scans = _scan_all(found.tars, quotas, progress, workers)
    result = _merge(found, scans, previews)
    result.seconds = time.perf_counter() - started
    log.info("inspected %d samples in %.1f s", result.samples, result.seconds)
    if write_stats and found.stats_out:
        try:
            write_bytes_atomic(found.stats_out, _pretty(result.stats))
            result.stats_path = found.stats_out
        except (OSError, NotImplementedError, ValueError) as error:
            log.warning("could not write %s: %s", found.stats_out, error)
    if report_dir is not None:
        from geoprep.report import write_report

        report_started = time.perf_counter()
        result.report_path = write_report(result, report_dir)
        result.report_seconds = time.perf_counter() - report_started
    return result


def _preview_quotas(shards: int, previews: int) -> list[int]:
    """Samples to keep for the report per shard: `previews` in all, spread evenly over shards."""
    if not shards:
        return []
    quotas = [previews // shards] * shards
    for k in range(previews % shards):
        quotas[k * shards // (previews % shards)] += 1
    return quotas


def _scan_all(tars: list[str], quotas: list[int], progress: Any, workers: int) -> list[ShardScan]:
    """Shards in order: in this process (progress per sample), or in `workers` processes
    (progress per shard). Processes, not threads: decoding and checks hold the GIL often
    enough that threads are slower than one process."""
    if workers <= 1 or len(tars) <= 1:
        return [scan_shard(url, n, progress) for url, n in zip(tars, quotas, strict=True)]
    # forkserver: no fork of a process whose threads (progress bars) hold locks
    context = multiprocessing.get_context("forkserver")
    scans: dict[str, ShardScan] = {}
    with ProcessPoolExecutor(min(workers, len(tars)), mp_context=context) as pool:
        futures = {
            pool.submit(scan_shard, url, n): url for url, n in zip(tars, quotas, strict=True)
        }
        for future in as_completed(futures):
            scan = scans[futures[future]] = future.result()
            if progress is not None:
                progress.advance(scan.samples)
    return [scans[url] for url in tars]


def _merge(found: Sources, scans: list[ShardScan], previews: int) -> InspectResult:
    problems = list(found.problems)
    counts = {name: Counter() for name in COUNTED}
    variants: dict[str, _Variants] = {}
    collector = StatsCollector()
    owners: dict[str, str] = {}
    points, kept, shards = [], [], []
    for scan in scans:
        problems += scan.problems
        for name, counter in scan.counts.items():
            counts[name].update(counter)
        for suffix, tally in scan.variants.items():
            variants.setdefault(suffix, _Variants()).merge(tally)
        collector.merge(scan.stats)
        points += scan.points
        kept += scan.previews
        for key in scan.keys:
            first = owners.setdefault(key, scan.url)
            if first != scan.url:
                problems.append(
                    Problem(scan.url, key, "duplicate-key", f"the key is also in {first}")
                )
        record = found.records.get(scan.url)
        shards.append(
            ShardSummary(
                scan.url,
                scan.samples,
                scan.bytes,
                scan.sha256,
                round(scan.seconds, 3),
                record.get("nsamples") if record else None,
            )
        )
        problems += _against_record(scan, record)
    problems += _inconsistencies(variants)
    samples = sum(s.samples for s in scans)
    build = _build_summary(found)
    result = InspectResult(
        sources=list(found.tars),
        root=found.root,
        shards=shards,
        samples=samples,
        counts=counts,
        build=build,
        problems=problems,
        stats={},
        seconds=0.0,
        points=points,
        previews=kept[:previews],
        collector=collector,
    )
    result.stats = _stats_doc(result, collector)
    return result


def _against_record(scan: ShardScan, record: dict[str, Any] | None) -> list[Problem]:
    """Compare a tar with what the build wrote in its stats file (only when the tar was read)."""
    if not record or any(p.code in ("unreadable-shard",) for p in scan.problems):
        return []
    reasons = []
    if record.get("nsamples") is not None and record["nsamples"] != scan.samples:
        reasons.append(f"{scan.samples} samples read; the build recorded {record['nsamples']}")
    if record.get("sha256") and record["sha256"] != scan.sha256:
        reasons.append(
            f"sha256 {scan.sha256[:12]}… ({scan.bytes} bytes) differs from the build's "
            f"{record['sha256'][:12]}… ({record.get('bytes')} bytes): changed since the build"
        )
    return [Problem(scan.url, None, "stats-mismatch", reason) for reason in reasons]


def _inconsistencies(variants: dict[str, _Variants]) -> list[Problem]:
    """Per member suffix, samples whose dtype/shape/bands differ from the most common ones."""
    found = []
    for suffix in sorted(variants):
        tally = variants[suffix]
        if len(tally.counts) < 2:
            continue
        (usual, n_usual), *others = tally.counts.most_common()
        for signature, n in others:
            examples = tally.examples[signature]
            for shard, key in examples:
                found.append(
                    Problem(
                        shard,
                        key,
                        "inconsistent",
                        f"{suffix} is {_describe(signature)}; {n_usual} samples have "
                        f"{_describe(usual)}",
                    )
                )
            if n > len(examples):
                found.append(
                    Problem(
                        examples[-1][0],
                        None,
                        "inconsistent",
                        f"{n - len(examples)} more samples with {suffix} {_describe(signature)}",
                    )
                )
    return found


def _describe(signature: tuple) -> str:
    if signature and signature[0] == "flac":
        return f"{signature[1]} Hz × {signature[2]} channel(s)"
    if len(signature) == 2:
        return f"{signature[0]} with {signature[1]} mel bands"
    dtype, shape, bands = signature
    return f"{dtype} {list(shape)} bands {list(bands)}"


def _build_summary(found: Sources) -> dict[str, Any]:
    failures: Counter = Counter()
    failed: list[dict[str, Any]] = []
    successes = 0
    for doc in found.stats_files:
        failures.update(doc.get("failures") or {})
        failed += doc.get("failed") or []
        successes += int(doc.get("successes") or 0)
    manifest = found.manifest or {}
    return {
        "stats_files": len(found.stats_files),
        "successes": successes,
        "failures": dict(sorted(failures.items())),
        "failed": failed,
        "complete": manifest.get("complete"),
        "missing": manifest.get("missing", []),
        "recipe_digest": manifest.get("recipe_digest"),
        "name": (manifest.get("recipe") or {}).get("name"),
    }


def _stats_doc(result: InspectResult, collector: StatsCollector) -> dict[str, Any]:
    """The stats.json document (schema in README: "geoprep inspect")."""
    return {
        "format": STATS_FORMAT,
        "geoprep_version": __version__,
        "dataset": {
            "root": result.root,
            "shards": result.sources,
            "samples": result.samples,
            "clean": result.clean,
            "problems": len(result.problems),
            "recipe_digest": result.build.get("recipe_digest"),
        },
        "method": {
            "mean_std": "exact (float64 per image band, merged with Chan et al.'s update); "
            "population std (ddof=0)",
            "percentiles": "numpy 'linear' percentiles from 65536-bin power-of-two histograms; "
            "exact for 8/16-bit integers, else within percentile_error",
            "nodata": "pixels equal to nodata, NaN and ±inf are left out; see nodata_fraction",
        },
        **collector.to_json(),
    }


def _pretty(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False).encode()

"""Checking one sample: its JSON, images and audio against each other and the schema."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile
from rasterio.crs import CRS

from geoprep.inspect.findings import Preview, PreviewImage, Problem, ShardScan, one_line
from geoprep.reader import decode_tif
from geoprep.shards.schema import (
    AUDIO_MEMBER,
    AUDIO_MEMBERS,
    IMAGE_FORMATS,
    JSON_MEMBER,
    MEL_MEMBER,
    image_suffix,
    nodata_from_json,
    shared_grid,
)


@lru_cache(maxsize=256)
def _crs(text: str) -> CRS | None:
    try:
        return CRS.from_user_input(text)
    except Exception:  # rasterio raises its own CRSError and others for junk: report, not crash
        return None


def _same_nodata(a: Any, b: Any) -> bool:
    a, b = nodata_from_json(a), nodata_from_json(b)
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
                from geoprep.inspect.previews import best_per_slot

                preview.images = best_per_slot(preview.images)
            for suffix in sorted(set(members) - listed - {JSON_MEMBER}):
                problems.append(("unlisted-member", f"{key}.{suffix} is not listed in the JSON"))
        for code, reason in problems:
            scan.problems.append(Problem(scan.url, key, code, reason))
        return preview if preview is not None and not problems else None

    # -- the JSON ---------------------------------------------------------------------

    def _meta(
        self, key: str, members: dict[str, bytes], problems: list[tuple[str, str]]
    ) -> dict[str, Any] | None:
        if JSON_MEMBER not in members:
            problems.append(("missing-json", f"no {key}.{JSON_MEMBER} member"))
            return None
        try:
            meta = json.loads(members[JSON_MEMBER])
        except (ValueError, RecursionError) as error:
            why = "is nested too deeply" if isinstance(error, RecursionError) else "does not parse"
            problems.append(("bad-json", f"{key}.json {why}: {one_line(error)}"))
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
                from geoprep.inspect.previews import preview_image

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
            problems.append(("undecodable", f"{name} does not decode: {one_line(error)}"))
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
        if AUDIO_MEMBER in present:
            self._flac(sample, info, members[AUDIO_MEMBER])
        if MEL_MEMBER in present:
            self._mel(sample, info, members[MEL_MEMBER])
        return present

    def _flac(self, sample: _Sample, info: dict[str, Any], data: bytes) -> None:
        scan, key, problems = sample.scan, sample.key, sample.problems
        try:
            wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile raises its own errors for garbage
            problems.append(("undecodable", f"{key}.audio.flac: {one_line(error)}"))
            return
        seconds = wave.shape[0] / rate
        wanted_rate, wanted_seconds = info.get("sample_rate"), info.get("duration_s")
        if _is_number(wanted_rate) and int(wanted_rate) != rate:
            problems.append(("audio-mismatch", f"{key}.audio.flac: {rate} Hz, JSON {wanted_rate}"))
        elif _is_number(wanted_seconds) and abs(seconds - wanted_seconds) > 1e-3 + 1 / rate:
            problems.append(
                ("audio-mismatch", f"{key}.audio.flac: {seconds:.3f} s, JSON {wanted_seconds} s")
            )
        scan.count_member(AUDIO_MEMBER, ("flac", rate, wave.shape[1]), key)

    def _mel(self, sample: _Sample, info: dict[str, Any], data: bytes) -> None:
        scan, key, problems, preview = sample.scan, sample.key, sample.problems, sample.preview
        try:
            mel = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:  # numpy raises several types for garbage
            problems.append(("undecodable", f"{key}.mel.npy: {one_line(error)}"))
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
        scan.count_member(MEL_MEMBER, (mel.dtype.name, mel.shape[0]), key)
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
    stem = image_suffix(entry["sensor"], entry["slot"], group)
    extension = entry["member"].rsplit(".", 1)[-1]
    if entry["member"] != f"{stem}.{extension}" or extension not in IMAGE_FORMATS:
        return f"member {entry['member']!r} is not {stem}.tif or {stem}.npy"
    return None


def _grid_of(meta: dict[str, Any], entry: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the image's grid, what is wrong with it): its entry's own grid (every image states one;
    fMoW series differ per image), which must equal the sample's shared `grid` or
    `grids[group]` where those exist; older samples have only the shared one."""
    group = entry.get("group")
    shared = shared_grid(meta, group)
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
    """The entry's nodata as a number ("nan" is NaN), None when absent or not a number."""
    if isinstance(value, str):
        value = nodata_from_json(value)
        return value if isinstance(value, float) else None
    return value if _is_number(value) else None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"

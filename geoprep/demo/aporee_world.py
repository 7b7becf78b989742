"""The demo world's Radio Aporee stand-in: geotagged field recordings as archive.org items.

The items :mod:`geoprep.demo.aporee_plan` draws (what a recording sounds like follows the
truth at its spot in its year) are rendered, encoded and written in the archive.org stand-in
layout (``OUT/aporee/<identifier>/_metadata.json`` plus files) in the real item shape:
``aporee_<loc>_<snd>`` identifiers, latitude/longitude strings, place-like titles, descriptions
of what is heard, CC licences, an original upload (MP3 or Ogg) with its derivatives.

Like the real collection it holds items a crawler must clean out (test uploads, missing,
swapped or (0, 0) coordinates, a re-upload of the same file, an item without audio) and items
only the audio stage can reject (a recording shorter than one spectrogram window, an
undecodable file). ``OUT/aporee/recordings.csv`` lists every item with its ground truth and
the reason, if any, a crawler should drop it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import xml.etree.ElementTree as ET
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import soundfile
from PIL import Image
from scipy import signal

from geoprep.demo import sounds
from geoprep.demo.aporee_plan import PlannedItem, plan_items
from geoprep.demo.archive_server import ItemFile, write_item
from geoprep.demo.truth import Truth

if TYPE_CHECKING:
    from geoprep.demo.world import PartContext

log = logging.getLogger(__name__)

COLLECTION = "radio-aporee-maps"
PART_DIR = "aporee"
MANIFEST = "recordings.csv"
#: Mains frequency (Hz) of each AOI's grid, which transformer hum follows.
MAINS_HZ = {"iowa": 60.0, "bavaria": 50.0, "victoria": 50.0}


def _metadata(item: PlannedItem, uploaded: int) -> dict[str, Any]:
    stamp = dt.datetime.fromtimestamp(uploaded, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    metadata: dict[str, Any] = {
        "identifier": item.identifier,
        "mediatype": "audio",
        "collection": [COLLECTION],
        "creator": item.creator,
        "title": item.title,
        "description": item.description,
        "date": item.date.isoformat(),
        "licenseurl": item.license_url,
        "subject": ["field recording", "soundscape", "radio aporee"],
        "uploader": "aporee@example.org",
        "publicdate": stamp,
        "addeddate": stamp,
        "latitude": f"{item.lat:.5f}",
        "longitude": f"{item.lon:.5f}",
        "coverage": item.title,
    }
    metadata.update(item.metadata_overrides)
    return {key: value for key, value in metadata.items() if value is not None}


def _meta_xml(metadata: dict[str, Any]) -> bytes:
    """The ``<identifier>_meta.xml`` every archive.org item carries."""
    root = ET.Element("metadata")
    for key, value in metadata.items():
        for one in value if isinstance(value, list) else [value]:
            ET.SubElement(root, key).text = str(one)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root) + b"\n"


def _image_bytes(pixels: np.ndarray, fmt: str, size: tuple[int, int] | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if size is not None:
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _spectrogram_png(recording: sounds.Recording) -> bytes:
    """A small grey-scale spectrogram image, like archive.org's audio derivative PNGs."""
    mono = recording.samples.mean(axis=1)
    hop = max(64, len(mono) // 300)
    _, _, power = signal.spectrogram(mono, recording.sample_rate, nperseg=512, noverlap=512 - hop)
    level = 10 * np.log10(power + 1e-12)
    level = np.clip((level - level.max() + 80) / 80, 0, 1)[::-1]
    return _image_bytes((level * 255).astype(np.uint8), "PNG", (300, 100))


def _audio(item: PlannedItem, rng: np.random.Generator, pool: Executor) -> dict[str, bytes]:
    """The item's recording in both formats, and its spectrogram."""
    recording = sounds.render(
        item.layers, item.duration_s, item.sample_rate, item.channels, rng,
        mains_hz=MAINS_HZ.get(item.aoi, 50.0), peak=float(rng.uniform(0.35, 0.85)),
    )  # fmt: skip
    # libsndfile releases the GIL while it encodes, so both formats are made at once
    serial = int(item.identifier.rsplit("_", 1)[1])
    jobs = {fmt: pool.submit(sounds.encode, recording, fmt, serial) for fmt in sounds.FORMATS}
    audio = {"png": _spectrogram_png(recording)}
    audio.update((fmt, job.result()) for fmt, job in jobs.items())
    return audio


def _item_files(item: PlannedItem, audio: dict[str, bytes], rng) -> list[ItemFile]:
    """The item's files: original upload first, then derivatives and the metadata XML."""
    original = f"{item.file_stem}.{item.original_format}"
    if item.problem == "no_audio":  # a photo of the spot, and nothing to listen to
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        return [ItemFile(f"{item.file_stem}.jpg", _image_bytes(pixels, "JPEG"))]
    if item.problem == "corrupt_audio":
        # an upload that broke on the way: a tag header, then bytes that are no audio at all
        return [ItemFile(original, b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.bytes(24_000))]
    uploaded, derived = item.original_format, "ogg" if item.original_format == "mp3" else "mp3"
    return [
        ItemFile(original, audio[uploaded], length_s=_length(audio[uploaded])),
        ItemFile(
            f"{item.file_stem}.{derived}", audio[derived], "derivative",
            length_s=_length(audio[derived]), original=original,
        ),
        ItemFile(f"{item.file_stem}.png", audio["png"], "derivative", "PNG", original=original),
    ]  # fmt: skip


def _length(data: bytes) -> float:
    """Seconds of audio in an encoded file, as its decoder reports them."""
    return float(soundfile.info(io.BytesIO(data)).duration)


def _write(root: Path, item: PlannedItem, audio: dict[str, bytes], rng) -> tuple[dict, int]:
    """Write the item folder; return its manifest row and its size in bytes."""
    day = item.date
    uploaded = int(
        dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        + rng.integers(1, 20) * 86_400
        + rng.integers(0, 86_400)
    )
    metadata = _metadata(item, uploaded)
    files = _item_files(item, audio, rng)
    xml = _meta_xml(metadata)
    files.append(ItemFile(f"{item.identifier}_meta.xml", xml, "metadata", format="Metadata"))
    meta_path = write_item(root, item.identifier, metadata, files)
    # the item JSON carries the build's clock; the upload time makes it reproducible
    body = json.loads(meta_path.read_text())
    uniq = int(rng.integers(10**6, 10**8))
    body.update(created=uploaded, updated=uploaded, item_last_updated=uploaded, uniq=uniq)
    for entry in body["files"]:
        entry["mtime"] = str(uploaded)
    meta_path.write_text(json.dumps(body, indent=2))
    row = {k: v for k, v in asdict(item).items() if k not in ("layers", "metadata_overrides")}
    row.update(
        creator=item.creator if isinstance(item.creator, str) else "; ".join(item.creator),
        date=day.isoformat(),
        sounds=";".join(name for name, _ in item.layers),
        original=files[0].name,
        description=item.description,
    )
    return row, sum(len(f.data) for f in files) + meta_path.stat().st_size


def build_aporee(truth: Truth, out_dir: Path, rng: np.random.Generator, progress=None) -> dict:
    """Write the collection under ``out_dir/aporee`` and return counts for world.json."""
    root = Path(out_dir) / PART_DIR
    root.mkdir(parents=True, exist_ok=True)
    items = plan_items(truth, rng)
    if progress is not None:
        progress.set_total(len(items))
    encoded: dict[str, dict[str, bytes]] = {}
    rows, total_bytes = [], 0
    with ThreadPoolExecutor(max_workers=len(sounds.FORMATS)) as pool:
        for item in items:
            item_rng = np.random.default_rng(rng.integers(1 << 62))
            if item.duplicate_of:
                audio = encoded[item.duplicate_of]
            elif item.problem in ("no_audio", "corrupt_audio"):
                audio = {}
            else:
                audio = _audio(item, item_rng, pool)
            encoded[item.identifier] = audio
            row, size = _write(root, item, audio, item_rng)
            rows.append(row)
            total_bytes += size
            if progress is not None:
                progress.advance()
    manifest = pd.DataFrame(rows).sort_values("identifier", kind="stable")
    manifest.to_csv(root / MANIFEST, index=False)
    problems = manifest.loc[manifest["problem"] != "", "problem"].value_counts()
    log.info("aporee: %d items, %.0f s of audio", len(items), manifest["duration_s"].sum())
    return {
        "items": len(items),
        "clean": int((manifest["problem"] == "").sum()),
        "problems": {str(k): int(v) for k, v in sorted(problems.items())},
        "audio_seconds": round(float(manifest["duration_s"].sum()), 1),
        "bytes": int(total_bytes),
    }


def aporee_part(ctx: PartContext) -> dict:
    """World part ``aporee``: the Radio Aporee collection for the archive.org stand-in."""
    return build_aporee(ctx.truth, ctx.out_dir, ctx.rng, ctx.progress)


def read_manifest(world_dir: Path) -> pd.DataFrame:
    """The recordings' ground truth written by :func:`build_aporee` ("" where nothing applies)."""
    frame = pd.read_csv(Path(world_dir) / PART_DIR / MANIFEST, keep_default_na=False)
    return frame.astype({"lat": float, "lon": float, "duration_s": float, "sample_rate": int})

"""The sample schema: every tar member name and every key of a sample's JSON, defined once.

A sample keyed `KEY` is the tar members

- `KEY.json`: the metadata document (`sample_meta` + "grid"/"grids" + "images", see below);
- `KEY.{sensor}.{slot}[.{group}].{tif|npy}`: one per image (`image_member`);
- `KEY.audio.flac` and `KEY.mel.npy`: a SoundingEarth recording and its log-mel spectrogram.

The JSON document holds, in this order: `LOCATION_KEYS` (from the planned row), "slots"
({name: `slot_entry`}), "recipe_digest", "location" (the row's other columns), "skipped_slots"
(timestamps mode with `min_found` only), "audio" (`audio_entry`, audio samples only), then the
writer's "grid" (common layout) or "grids" ({group: grid}, native layout), "images" (one
entry per image member: `IMAGE_KEYS` then the image's `PROVENANCE_KEYS`) and "schema_version".
A grid is `GRID_KEYS`: {"crs", "transform": [a, b, c, d, e, f], "width", "height", "gsd"}.

Schema versions (`schema_version`; absent means 1):

- 1: every image entry holds its own "grid" (repeating the shared one) and "hrefs" lists every
  asset of the image's STAC item as an absolute, unsigned href.
- 2: an entry holds "grid" only where the sample has no shared grid for it (fMoW sequences);
  "hrefs" lists only the assets the image's bands come from, each written after the entry's
  "href_base" (absolute href = href_base + hrefs[asset]). The member bytes are unchanged.
  Readers: `geoprep.reader.ImageInfo.hrefs` and `entry_hrefs` give absolute hrefs for both.
- 3: the JSON as in 2; GeoTIFF members are laid out by geoprep
  (`geoprep.shards.geotiff_encode`) instead of GDAL: other bytes (no GDAL citation GeoKeys,
  numbers written shortest), the same tiling, deflate and predictor, and the same pixels, grid,
  CRS, nodata, band names, scales, offsets and tags when GDAL, rasterio or the reader opens
  them. Members GDAL must write (a rotated grid, a CRS without an EPSG code) are as in 2.

The writer (`geoprep.shards.records`), the builders (`geoprep.building`), the reader
(`geoprep.reader`) and the checker (`geoprep.inspect.check`) all take names from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

#: The sample JSON's layout version, written as its "schema_version" (see above).
SCHEMA_VERSION = 3
SCHEMA_VERSIONS = (1, 2, 3)
JSON_MEMBER = "json"
AUDIO_MEMBER = "audio.flac"
MEL_MEMBER = "mel.npy"
AUDIO_MEMBERS = (AUDIO_MEMBER, MEL_MEMBER)
ImageFormat = Literal["tif", "npy"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("tif", "npy")

#: The sample keys taken from the planned location, first in every sample's JSON.
LOCATION_KEYS = ("id", "lat", "lon", "label", "cluster", "split", "source")
#: Keys the writer derives from the images; `sample_meta` must not set them.
DERIVED_KEYS = ("images", "grid", "grids")
GRID_KEYS = ("crs", "transform", "width", "height", "gsd")
#: Keys of an "images" entry that describe the member itself (the writer sets them).
IMAGE_KEYS = ("member", "sensor", "slot", "group", "bands", "dtype", "shape", "nodata", "grid")
#: Keys of an "images" entry that say where an imagery (STAC) image came from.
IMAGERY_PROVENANCE_KEYS = (
    "collection",
    "item_id",
    "datetime",
    "href_base",
    "hrefs",
    "eo:cloud_cover",
    "cloud_fraction",
    "nodata_fraction",
    "harmonized",
    "processing_baseline",
    "scale",
    "offset",
)
#: Keys of an "images" entry that say where an fMoW image came from.
FMOW_PROVENANCE_KEYS = (
    "datetime",
    "gsd",
    "cloud_cover",
    "path",
    "box",
    "img_width",
    "img_height",
    "crop",
    "nodata_fraction",
)
SLOT_KEYS = ("start", "end", "target", "year_group", "season")
AUDIO_KEYS = (
    "duration_s",
    "original_duration_s",
    "sample_rate",
    "sample_rate_in",
    "channels_in",
    "segment",
    "offset_s",
    "n_mels",
    "n_fft",
    "hop_length",
    "fmin",
    "fmax",
    "frames",
    "db_reference",
    "amin",
    "attribution",
)
ATTRIBUTION_KEYS = ("identifier", "file", "creator", "title", "license_url", "source_url")


# ---------------------------------------------------------------- member names


def image_suffix(sensor: str, slot: str, group: str | None) -> str:
    """An image member's name after the key, without its format: `s2.t0`, `s2.t0.10m`."""
    return ".".join(part for part in (sensor, slot, group) if part is not None)


def image_member(sensor: str, slot: str, group: str | None, fmt: str) -> str:
    """An image member's name after the key: `s2.t0.tif`, `s2.t0.10m.npy`."""
    return f"{image_suffix(sensor, slot, group)}.{fmt}"


# ---------------------------------------------------------------- JSON parts


def sample_meta(
    row: Mapping[str, Any],
    slots: dict[str, dict[str, Any]],
    recipe_digest: str,
    *,
    skipped_slots: dict[str, dict[str, str]] | None = None,
    audio: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sample's JSON before the writer adds its grid(s) and images, from the planned row."""
    meta = {
        "id": str(row["id"]),
        "lat": float(row["lat"]),
        "lon": float(row["lon"]),
        "label": row.get("label"),
        "cluster": int(row["cluster"]),
        "split": row["split"],
        "source": row.get("source"),
        "slots": slots,
        "recipe_digest": recipe_digest,
        "location": {k: v for k, v in row.items() if k not in _NOT_LOCATION},
    }
    if skipped_slots is not None:
        meta["skipped_slots"] = skipped_slots
    if audio is not None:
        meta["audio"] = audio
    return meta


# planned columns that are not repeated under "location" (geometry is lon/lat again)
_NOT_LOCATION = {*LOCATION_KEYS, "geometry"}


def slot_entry(
    start: str | None,
    end: str | None,
    target: str | None,
    year_group: int | None = None,
    season: int | None = None,
) -> dict[str, Any]:
    """A time slot's entry in the sample's "slots": its window (ISO dates) and place in it."""
    return dict(zip(SLOT_KEYS, (start, end, target, year_group, season), strict=True))


def audio_entry(values: Mapping[str, Any], attribution: Mapping[str, Any]) -> dict[str, Any]:
    """The sample's "audio": `AUDIO_KEYS` from `values`, with "attribution" (`ATTRIBUTION_KEYS`)."""
    missing = [k for k in (*AUDIO_KEYS[:-1], *ATTRIBUTION_KEYS) if k not in values | attribution]
    if missing:
        raise ValueError(f"audio entry lacks {missing}")
    entry = {key: values[key] for key in AUDIO_KEYS[:-1]}
    entry["attribution"] = {key: attribution[key] for key in ATTRIBUTION_KEYS}
    return entry


def nodata_to_json(nodata: Any) -> Any:
    """JSON has no NaN: a NaN nodata is written as the string "nan"."""
    is_nan = isinstance(nodata, float | np.floating) and math.isnan(nodata)
    return "nan" if is_nan else nodata


def nodata_from_json(value: Any) -> Any:
    """The nodata value of an "images" entry ("nan" → NaN; other values as written)."""
    return math.nan if isinstance(value, str) and value.lower() == "nan" else value


def shared_grid(meta: Mapping[str, Any], group: str | None) -> Any:
    """The grid the sample's images of `group` share: "grid", or "grids"[group] (native layout);
    None where the sample has none (fMoW sequences: each image states its own)."""
    if group is None:
        return meta.get("grid")
    grids = meta.get("grids")
    return grids.get(group) if isinstance(grids, Mapping) else None


def entry_hrefs(entry: Mapping[str, Any]) -> dict[str, str]:
    """An image entry's asset hrefs, absolute, in either schema version ({} when it has none)."""
    hrefs = entry.get("hrefs")
    if not isinstance(hrefs, Mapping):
        return {}
    base = entry.get("href_base") or ""
    return {str(asset): f"{base}{href}" for asset, href in hrefs.items()}

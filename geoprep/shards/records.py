"""Sample records and how a sample becomes tar members: JSON metadata, GeoTIFF/npy images, extras.

Member names and JSON keys follow `geoprep.shards.schema`; every encoding here is deterministic,
so the same records always give the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from geoprep.core.signing import unsigned_href
from geoprep.shards.geotiff_encode import Unencodable, encode_geotiff
from geoprep.shards.schema import (
    DERIVED_KEYS,
    GRID_KEYS,
    IMAGE_FORMATS,
    IMAGE_KEYS,
    JSON_MEMBER,
    SCHEMA_VERSION,
    ImageFormat,
    image_member,
    image_suffix,
    nodata_to_json,
)


@dataclass(frozen=True)
class ImageRecord:
    """One image member: an array (bands, h, w) on a grid, plus where it came from.

    `grid` is the JSON grid {"crs", "transform": [a, b, c, d, e, f], "width", "height", "gsd"};
    `provenance` holds the per-image keys of the sample schema (collection, item_id, datetime,
    hrefs, eo:cloud_cover, cloud_fraction, nodata_fraction, harmonized, scale, offset).
    """

    sensor: str
    slot: str
    array: np.ndarray
    grid: dict[str, Any]
    bands: list[str]
    nodata: float | int | None = None
    group: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in (self.sensor, self.slot, self.group):
            if part is not None and (not part or "." in part or "/" in part):
                raise ValueError(f"sensor/slot/group {part!r} must be non-empty, without . or /")
        missing = [k for k in GRID_KEYS if k not in self.grid]
        if missing:
            raise ValueError(f"image {self.suffix}: grid lacks {missing}")
        if self.array.ndim != 3:
            raise ValueError(f"image {self.suffix}: array must be (bands, h, w), got {self.shape}")
        if len(self.bands) != self.array.shape[0]:
            raise ValueError(f"image {self.suffix}: {len(self.bands)} band names, {self.shape}")
        if self.array.shape[1:] != (self.grid["height"], self.grid["width"]):
            raise ValueError(f"image {self.suffix}: array {self.shape} does not match its grid")

    @property
    def suffix(self) -> str:
        """The member name after the key, without the format extension: `s2.t0`, `s2.t0.10m`."""
        return image_suffix(self.sensor, self.slot, self.group)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass(frozen=True)
class SampleRecord:
    """One location's sample: JSON metadata, its images (in schema order) and raw extra members.

    `meta` holds everything but "images" and "grid"/"grids", which the writer derives from
    `images`. `extras` maps a member suffix ("audio.flac", "mel.npy") to already-encoded bytes.
    """

    key: str
    meta: dict[str, Any]
    images: list[ImageRecord] = field(default_factory=list)
    extras: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "/" in self.key:
            raise ValueError(f"sample key {self.key!r} must be non-empty, without . or /")
        if set(DERIVED_KEYS) & set(self.meta):
            raise ValueError(f"sample {self.key}: meta must not hold images/grid/grids")
        if self.meta.get("id", self.key) != self.key:
            raise ValueError(f"sample {self.key}: meta id {self.meta['id']!r} differs from key")


# ---------------------------------------------------------------- encoding


def encode_image(record: ImageRecord, fmt: ImageFormat) -> bytes:
    """GeoTIFF (deflate, tiled, georeferenced, band descriptions) or .npy bytes; deterministic.

    GeoTIFFs are laid out by `encode_geotiff` (no GDAL: a tenth of the CPU), through GDAL where
    it cannot (a rotated grid, a CRS without an EPSG code)."""
    array = np.ascontiguousarray(record.array)
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}; expected one of {IMAGE_FORMATS}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    crs, transform = record.grid["crs"], record.grid["transform"]
    try:
        return encode_geotiff(
            array, crs, transform, record.nodata, record.bands, _tags(record), *_scales(record)
        )
    except Unencodable:  # a rotated grid or a CRS without an EPSG code: GDAL writes it
        return encode_with_gdal(record)


def encode_with_gdal(record: ImageRecord) -> bytes:
    """The GeoTIFF member written through GDAL: the same grid, tags and tiling (and the only
    writer before schema version 3)."""
    array = np.ascontiguousarray(record.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    count, height, width = array.shape
    # One tile for small patches (a multiple of 16 as GeoTIFF requires), 256 px tiles otherwise.
    tile = min(256, 16 * math.ceil(max(height, width) / 16))
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else 2
    with MemoryFile() as memory:
        with memory.open(
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=array.dtype.name,
            crs=record.grid["crs"],
            transform=Affine(*record.grid["transform"][:6]),
            nodata=record.nodata,
            compress="deflate",
            predictor=predictor,
            tiled=True,
            blockxsize=tile,
            blockysize=tile,
            interleave="band",
        ) as dst:
            dst.write(array)
            dst.descriptions = tuple(record.bands)
            dst.update_tags(**_tags(record))
            scales, offsets = _scales(record)
            if scales is not None:
                dst.scales = scales
            if offsets is not None:
                dst.offsets = offsets
        return memory.read()


def _tags(record: ImageRecord) -> dict[str, str]:
    """The member's dataset tags: sensor, slot, group and the scene's collection, id and date."""
    tags = {"sensor": record.sensor, "slot": record.slot, "group": record.group}
    for key in ("collection", "item_id", "datetime"):
        tags[key] = record.provenance.get(key)
    return {key: str(value) for key, value in tags.items() if value is not None}


def _scales(
    record: ImageRecord,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Per-band raster:bands scale and offset for the GeoTIFF, so GIS tools show physical
    values (None where the provenance lacks one for every band)."""
    found = []
    for key in ("scale", "offset"):
        values = record.provenance.get(key)
        usable = isinstance(values, list) and len(values) == len(record.bands)
        found.append(tuple(float(v) for v in values) if usable and None not in values else None)
    return found[0], found[1]


def sample_json(sample: SampleRecord, fmt: ImageFormat) -> dict[str, Any]:
    """The `{key}.json` document: the sample's meta plus its grid(s) and one entry per image."""
    grids: dict[str | None, dict[str, Any]] = {}
    shared = True  # do all images of each group share one grid? (fMoW sequences do not)
    entries = []
    for image in sample.images:
        if grids.setdefault(image.group, image.grid) != image.grid:
            shared = False
        clash = set(IMAGE_KEYS) & set(image.provenance)
        if clash:
            raise ValueError(f"sample {sample.key}: provenance must not set {sorted(clash)}")
        provenance = dict(image.provenance)
        if isinstance(provenance.get("hrefs"), dict):  # href_base and hrefs where hrefs were
            sources = own_hrefs(provenance["hrefs"], image.bands)
            ordered: dict[str, Any] = {}
            for key, value in provenance.items():
                ordered.update(sources if key == "hrefs" else {key: value})
            provenance = ordered
        described = (
            image_member(image.sensor, image.slot, image.group, fmt),
            image.sensor,
            image.slot,
            image.group,
            list(image.bands),
            image.array.dtype.name,
            list(image.shape),
            # JSON has no NaN; the reader turns "nan" back into a float
            nodata_to_json(image.nodata),
            image.grid,
        )
        entries.append({**dict(zip(IMAGE_KEYS, described, strict=True)), **provenance})
    doc: dict[str, Any] = {"id": sample.key, **sample.meta}
    if None in grids and len(grids) > 1:
        raise ValueError(f"sample {sample.key}: mixes common (group None) and native images")
    if shared and None in grids:
        doc["grid"] = grids[None]
    elif shared and grids:
        doc["grids"] = grids
    if shared:  # an image states its own grid only where the sample has none for it (fMoW)
        for entry in entries:
            del entry["grid"]
    doc["images"] = entries
    doc["schema_version"] = SCHEMA_VERSION
    return doc


def own_hrefs(hrefs: dict[str, str], bands: list[str]) -> dict[str, Any]:
    """The "href_base" and "hrefs" of an image entry: only the assets its bands come from, each
    href unsigned and written after their common base (the href is `href_base + hrefs[asset]`).

    A band is named after its asset ("B04"), or "{asset}_{i}" for band i of a multi-band asset.
    """
    mine = [a for a in hrefs if a in bands or any(_band_of(band, a) for band in bands)]
    # bands named otherwise than their assets: keep every href rather than lose the source
    own = {asset: unsigned_href(hrefs[asset]) for asset in mine or hrefs}
    base = os.path.commonprefix(list(own.values()))
    base = base[: base.rfind("/") + 1]  # whole path segments: the rest reads as file names
    return {"href_base": base, "hrefs": {asset: href[len(base) :] for asset, href in own.items()}}


def _band_of(band: str, asset: str) -> bool:
    prefix, _, number = band.rpartition("_")
    return prefix == asset and number.isdigit()


def json_bytes(doc: Any) -> bytes:
    """Strict JSON (non-finite floats become null) with numpy scalars and dates converted."""
    return json.dumps(jsonable(doc), ensure_ascii=False, allow_nan=False).encode("utf-8")


def jsonable(value: Any) -> Any:
    """`value` in plain JSON types: numpy unwrapped, dates as ISO strings, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def sample_members(sample: SampleRecord, fmt: ImageFormat) -> dict[str, bytes]:
    """Every member of a sample, suffix → bytes (the tar names are `{key}.{suffix}`)."""
    members = {JSON_MEMBER: json_bytes(sample_json(sample, fmt))}
    for image in sample.images:
        members[image_member(image.sensor, image.slot, image.group, fmt)] = encode_image(image, fmt)
    for suffix, data in sample.extras.items():
        if suffix in members or not isinstance(data, bytes):
            raise ValueError(f"sample {sample.key}: extra {suffix!r} clashes or is not bytes")
        members[suffix] = data
    return members

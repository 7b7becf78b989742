"""Decoding image members' GeoTIFFs without GDAL: the baseline subset geoprep writes, in numpy.

Opening a GeoTIFF through GDAL costs about half a millisecond whatever its size, more than the
pixels of a 64 × 64 patch take to inflate. Shards hold thousands of small members, so the reader
parses the few tags it needs itself: little- or big-endian classic TIFF, the first IFD, tiles or
strips, no compression or deflate, predictor 1, 2 or 3, band-interleaved or pixel-interleaved,
integer or float samples, georeferencing from ModelPixelScale + ModelTiepoint and an EPSG code in
the GeoKey directory, nodata from GDAL_NODATA and band names from GDAL_METADATA.

Anything else (BigTIFF, JPEG or LZW tiles, a rotated or point-registered grid, a user-defined
CRS, several tie points) is `Unsupported`, and the caller falls back to GDAL, so a member is read
either way and read the same way (`tests/shards/test_geotiff.py` compares both on every kind of
member the builders write).
"""

from __future__ import annotations

import functools
import math
import re
import struct
import zlib
from dataclasses import dataclass
from html import unescape

import numpy as np

from geoprep.shards.untrusted import UnsafeShardError

try:  # libdeflate and C loops for the predictors: about twice as fast as zlib + numpy
    import imagecodecs
except ImportError:  # pragma: no cover - a dependency; the numpy path below stays correct
    imagecodecs = None


class Unsupported(Exception):
    """The TIFF uses a feature this decoder leaves to GDAL."""


@dataclass(frozen=True)
class Decoded:
    """Pixels (bands, h, w) and the georeferencing GDAL would report for them."""

    array: np.ndarray
    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    bands: tuple[str, ...]


# TIFF field types → struct codes (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT,
# SLONG, SRATIONAL, FLOAT, DOUBLE)
_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 10: "ii"}
_TYPES |= {11: "f", 12: "d"}
_SIZES = {code: struct.calcsize("<" + fmt) for code, fmt in _TYPES.items()}
_SAMPLE_KINDS = {1: "u", 2: "i", 3: "f"}

_WIDTH, _HEIGHT, _BITS, _COMPRESSION = 256, 257, 258, 259
_STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS = 273, 277, 278, 279
_PLANAR, _PREDICTOR, _TILE_WIDTH, _TILE_LENGTH = 284, 317, 322, 323
_TILE_OFFSETS, _TILE_COUNTS, _SAMPLE_FORMAT = 324, 325, 339
_PIXEL_SCALE, _TIEPOINT, _MODEL_TRANSFORM, _GEOKEYS = 33550, 33922, 34264, 34735
_GDAL_METADATA, _GDAL_NODATA = 42112, 42113
_NEEDED = {
    _WIDTH, _HEIGHT, _BITS, _COMPRESSION, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP,
    _STRIP_COUNTS, _PLANAR, _PREDICTOR, _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS,
    _SAMPLE_FORMAT, _PIXEL_SCALE, _TIEPOINT, _MODEL_TRANSFORM, _GEOKEYS, _GDAL_METADATA,
    _GDAL_NODATA,
}  # fmt: skip
# GeoKeys: model type, raster type (1 = PixelIsArea), geographic and projected CRS codes
_MODEL_TYPE, _RASTER_TYPE, _GEOGRAPHIC, _PROJECTED = 1024, 1025, 2048, 3072
_USER_DEFINED = 32767
_DESCRIPTION = re.compile(
    r'<Item name="DESCRIPTION" sample="(\d+)" role="description">([^<]*)</Item>'
)


def decode_geotiff(data: bytes, max_bytes: int) -> Decoded:
    """GeoTIFF bytes → `Decoded`; raises `Unsupported` for what GDAL must read instead and
    UnsafeShardError when the pixels would exceed `max_bytes`."""
    try:
        tags, order = _first_ifd(data)
        return _decode(data, tags, order, max_bytes)
    except (struct.error, IndexError, KeyError, ValueError, TypeError, zlib.error) as error:
        if isinstance(error, UnsafeShardError):
            raise
        raise Unsupported(f"{type(error).__name__}: {error}") from None


def _first_ifd(data: bytes) -> tuple[dict[int, tuple], str]:
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        raise Unsupported("not a classic TIFF (BigTIFF or another format)")
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    entries = _format(order, "HHI4s" * count).unpack_from(data, offset + 2)
    tags: dict[int, tuple] = {}
    for at in range(0, 4 * count, 4):
        code, kind, n, inline = entries[at : at + 4]
        if code not in _NEEDED:
            continue
        if kind not in _TYPES:
            raise Unsupported(f"tag {code} has field type {kind}")
        size = _SIZES[kind] * n
        if size > 4:
            start = _format(order, "I").unpack(inline)[0]
            inline = data[start : start + size]
            if len(inline) != size:
                raise Unsupported(f"tag {code} runs past the end of the file")
        if kind == 2:
            tags[code] = (inline[:size].rstrip(b"\x00").decode("utf-8", "replace"),)
        else:
            tags[code] = _format(order, f"{n * len(_TYPES[kind])}{_TYPES[kind][0]}").unpack(
                inline[:size]
            )
    return tags, order


@functools.lru_cache(maxsize=256)
def _format(order: str, layout: str) -> struct.Struct:
    return struct.Struct(order + layout)


def _decode(data: bytes, tags: dict[int, tuple], order: str, max_bytes: int) -> Decoded:
    width, height = tags[_WIDTH][0], tags[_HEIGHT][0]
    samples = tags.get(_SAMPLES, (1,))[0]
    bits = set(tags.get(_BITS, (1,)))
    kinds = set(tags.get(_SAMPLE_FORMAT, (1,)))
    if len(bits) != 1 or len(kinds) != 1 or next(iter(kinds)) not in _SAMPLE_KINDS:
        raise Unsupported("mixed or unknown sample types")
    nbits = next(iter(bits))
    if nbits not in (8, 16, 32, 64):
        raise Unsupported(f"{nbits}-bit samples")
    dtype = np.dtype(f"{order}{_SAMPLE_KINDS[next(iter(kinds))]}{nbits // 8}")
    compression = tags.get(_COMPRESSION, (1,))[0]
    if compression not in (1, 8, 32946):
        raise Unsupported(f"compression {compression}")
    predictor = tags.get(_PREDICTOR, (1,))[0]
    if predictor not in (1, 2, 3) or (predictor == 3) != (dtype.kind == "f"):
        raise Unsupported(f"predictor {predictor} for {dtype.name}")
    planar = tags.get(_PLANAR, (1,))[0] == 2 or samples == 1
    size = samples * height * width * dtype.itemsize
    if size > max_bytes:
        raise UnsafeShardError(f"tif member decodes to {size} bytes, over the cap of {max_bytes}")
    crs, transform = _georeferencing(tags)

    if _TILE_OFFSETS in tags:
        block_w, block_h = tags[_TILE_WIDTH][0], tags[_TILE_LENGTH][0]
        offsets, counts = tags[_TILE_OFFSETS], tags[_TILE_COUNTS]
    else:
        block_w, block_h = width, min(tags.get(_ROWS_PER_STRIP, (height,))[0], height)
        offsets, counts = tags[_STRIP_OFFSETS], tags[_STRIP_COUNTS]
    across, down = -(-width // block_w), -(-height // block_h)
    planes = samples if planar else 1
    per_block = samples // planes
    if len(offsets) != across * down * planes or len(counts) != len(offsets):
        raise Unsupported("block count does not match the image")
    if block_w * block_h * per_block * dtype.itemsize * len(offsets) > 4 * max_bytes + 2**20:
        raise UnsafeShardError("tif member's blocks exceed the member cap")

    out = np.empty((samples, down * block_h, across * block_w), dtype.newbyteorder("="))
    direct = imagecodecs is not None and planar and across == 1 and predictor == 2
    direct = direct and dtype.isnative
    for index, (start, length) in enumerate(zip(offsets, counts, strict=True)):
        plane, rest = divmod(index, across * down)
        row, col = divmod(rest, across)
        # a strip at the bottom may hold fewer rows than RowsPerStrip
        rows = block_h if _TILE_OFFSETS in tags else min(block_h, height - row * block_h)
        expected = block_w * rows * per_block * dtype.itemsize
        raw = _inflate(data[start : start + length], compression, expected)
        y, x = row * block_h, col * block_w
        if direct:  # the common case: a band's rows are whole rows of the output
            target = out[plane, y : y + rows]
            imagecodecs.delta_decode(
                np.frombuffer(raw, dtype).reshape(target.shape), axis=-1, out=target
            )
            continue
        block = _unpredict(raw, predictor, dtype, rows, block_w, per_block)
        if planar:
            out[plane, y : y + rows, x : x + block_w] = block[..., 0]
        else:
            out[:, y : y + rows, x : x + block_w] = block.transpose(2, 0, 1)
    array = out[:, :height, :width]
    nodata_text = tags.get(_GDAL_NODATA, (None,))[0]
    nodata = float(nodata_text.strip()) if nodata_text and nodata_text.strip() else None
    names = dict.fromkeys(range(samples), "")
    for match in _DESCRIPTION.finditer(tags.get(_GDAL_METADATA, ("",))[0]):
        if int(match[1]) in names:
            names[int(match[1])] = unescape(unescape(match[2]))  # GDAL escapes values twice
    bands = tuple(name or f"band{i + 1}" for i, name in names.items())
    return Decoded(np.ascontiguousarray(array), crs, transform, nodata, bands)


def _inflate(raw: bytes, compression: int, expected: int) -> bytes:
    if compression == 1:
        out = raw
    elif imagecodecs is not None:
        try:  # `out`: the block's own size; a longer stream is an error, not a bigger buffer
            out = imagecodecs.deflate_decode(raw, out=expected)
        except imagecodecs.DeflateError as error:
            raise Unsupported(f"deflate: {error}") from None
    else:
        inflater = zlib.decompressobj()
        out = inflater.decompress(raw, expected)  # never more than the block's own size
    if len(out) != expected:
        raise Unsupported(f"a block holds {len(out)} bytes, not {expected}")
    return out


def _unpredict(
    raw: bytes, predictor: int, dtype: np.dtype, rows: int, cols: int, per_block: int
) -> np.ndarray:
    """A block's bytes → (rows, cols, samples) in native byte order, prediction undone."""
    if imagecodecs is not None and predictor > 1:
        block = np.frombuffer(raw, dtype).reshape(rows, cols, per_block)
        undo = imagecodecs.floatpred_decode if predictor == 3 else imagecodecs.delta_decode
        return undo(block, axis=-2).astype(dtype.newbyteorder("="), copy=False)
    if predictor == 3:
        # TIFF Technote 3: each row is the samples' bytes split into planes (most significant
        # first), differenced across the row with a stride of one pixel's samples
        size = dtype.itemsize
        planes = np.frombuffer(raw, np.uint8).reshape(rows, size * cols, per_block)
        planes = np.cumsum(planes, axis=1, dtype=np.uint8)
        ordered = planes.reshape(rows, size, cols * per_block).transpose(0, 2, 1)
        values = np.ascontiguousarray(ordered).view(f">{dtype.kind}{size}")
        return values.reshape(rows, cols, per_block).astype(dtype.newbyteorder("="))
    block = np.frombuffer(raw, dtype).reshape(rows, cols, per_block)
    if predictor == 2:
        block = np.cumsum(block, axis=1, dtype=dtype)  # wraps around as the encoder's sums did
    return block.astype(dtype.newbyteorder("="), copy=False)


def _georeferencing(
    tags: dict[int, tuple],
) -> tuple[str | None, tuple[float, float, float, float, float, float]]:
    """(CRS as "EPSG:n", affine transform a, b, c, d, e, f) as GDAL derives them."""
    if _MODEL_TRANSFORM in tags or _GEOKEYS not in tags:
        raise Unsupported("no georeferencing, or a model transformation")
    tiepoint, scale = tags.get(_TIEPOINT, ()), tags.get(_PIXEL_SCALE, ())
    if len(tiepoint) != 6 or len(scale) < 2:
        raise Unsupported("not a single tie point with a pixel scale")
    i, j, _, x, y, _ = tiepoint
    sx, sy = scale[0], scale[1]
    if not all(math.isfinite(v) for v in (x, y, sx, sy)) or sx <= 0 or sy <= 0:
        raise Unsupported("unusual tie point or pixel scale")
    keys = tags[_GEOKEYS]
    found = {}
    for at in range(4, 4 + 4 * keys[3], 4):
        key, location, _, value = keys[at : at + 4]
        if location == 0:
            found[key] = value
    if found.get(_RASTER_TYPE, 1) != 1:
        raise Unsupported("point-registered raster")
    code = found.get(_PROJECTED) if found.get(_MODEL_TYPE) == 1 else found.get(_GEOGRAPHIC)
    if found.get(_MODEL_TYPE) not in (1, 2) or not code or code == _USER_DEFINED:
        raise Unsupported("CRS is not an EPSG code")
    transform = (float(sx), 0.0, float(x - i * sx), 0.0, float(-sy), float(y + j * sy))
    return f"EPSG:{code}", transform

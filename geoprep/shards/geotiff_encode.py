"""Encoding image members as GeoTIFFs without GDAL: the subset `geotiff.py` decodes.

Writing a small member through GDAL costs about a millisecond whatever its size (a quarter of a
multi-date build's CPU), most of it opening and closing the in-memory dataset. The members are
always the same kind of file, so they are laid out here: little-endian classic TIFF, one IFD
after the header, square tiles, deflate with the horizontal (integers) or floating-point
predictor, one plane per band, georeferencing as ModelPixelScale + ModelTiepoint and an EPSG code
in the GeoKey directory (PixelIsArea), nodata in GDAL_NODATA, and band names, scales, offsets and
the dataset tags in GDAL_METADATA, as GDAL writes them. GDAL and rasterio read them back with the
same grid, CRS, nodata, band descriptions, scales, offsets and tags
(`tests/shards/test_geotiff_encode.py`).

Anything else (a rotated grid, a CRS without an EPSG code, half floats) is `Unencodable`, and
the caller writes the member through GDAL. The bytes are the same for the same record wherever
it is written; across installations they depend on imagecodecs' libdeflate, as GDAL's did on
its own deflate.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

import imagecodecs
import numpy as np
from pyproj import CRS
from pyproj.exceptions import CRSError

#: deflate level of the tiles (GDAL's default ZLEVEL), zlib-wrapped as TIFF's deflate is
DEFLATE_LEVEL = 6

_SHORT, _LONG, _DOUBLE, _ASCII = 3, 4, 12, 2
_FORMATS = {_SHORT: "H", _LONG: "I", _DOUBLE: "d", _ASCII: "s"}
_SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3}
# GeoKeys: model type (1 projected, 2 geographic), raster type (1 = PixelIsArea), CRS codes
_MODEL_TYPE, _RASTER_TYPE, _GEOGRAPHIC, _PROJECTED = 1024, 1025, 2048, 3072


class Unencodable(Exception):
    """The member needs a GeoTIFF feature this encoder leaves to GDAL."""


@functools.lru_cache(maxsize=64)
def _crs_keys(crs: str) -> tuple[int, int, int]:
    """(model type, CRS GeoKey, EPSG code) of a CRS given as text (checked through PROJ once)."""
    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as error:
        raise Unencodable(f"CRS {crs!r}: {error}") from None
    code = parsed.to_epsg(min_confidence=100)
    if code is None or CRS.from_epsg(code) != parsed:
        raise Unencodable(f"CRS {crs!r} is not an EPSG code")
    if parsed.is_projected:
        return 1, _PROJECTED, code
    if parsed.is_geographic and len(parsed.axis_info) == 2:
        return 2, _GEOGRAPHIC, code
    raise Unencodable(f"CRS {crs!r} is neither projected nor geographic 2D")


def _number(value: float) -> str:
    """A number as GDAL reads it back exactly: integers bare, NaN as 'nan', else repr."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _escaped(text: str) -> str:
    """Text escaped twice, as GDAL stores metadata (and unescapes it twice when reading)."""
    return escape(escape(text, {'"': "&quot;"}), {'"': "&quot;"})


def gdal_metadata(
    tags: Mapping[str, str],
    bands: Sequence[str],
    scales: Sequence[float] | None,
    offsets: Sequence[float] | None,
) -> str:
    """The GDAL_METADATA document: dataset tags, then each band's description, scale, offset."""
    lines = ["<GDALMetadata>"]
    for name, value in tags.items():
        lines.append(f'  <Item name="{_escaped(name)}">{_escaped(value)}</Item>')
    for index, band in enumerate(bands):
        items = [("DESCRIPTION", "description", band)]
        if scales is not None:
            items.append(("SCALE", "scale", _number(scales[index])))
        if offsets is not None:
            items.append(("OFFSET", "offset", _number(offsets[index])))
        for name, role, value in items:
            if value:
                lines.append(
                    f'  <Item name="{name}" sample="{index}" role="{role}">{_escaped(value)}</Item>'
                )
    lines.append("</GDALMetadata>")
    return "\n".join(lines) + "\n"


def _tiles(array: np.ndarray, tile: int) -> list[bytes]:
    """Every band's tiles, row by row, zero-padded, predicted and deflated."""
    count, height, width = array.shape
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    padded = np.zeros((count, rows * tile, cols * tile), array.dtype.newbyteorder("<"))
    padded[:, :height, :width] = array
    # (band, tile row, tile col, y, x): each tile contiguous, in the order TIFF stores them
    blocks = padded.reshape(count, rows, tile, cols, tile).transpose(0, 1, 3, 2, 4)
    blocks = np.ascontiguousarray(blocks).reshape(-1, tile, tile)
    if array.dtype.kind == "f":
        predicted = imagecodecs.floatpred_encode(blocks[..., None], axis=-2)
    else:
        predicted = imagecodecs.delta_encode(blocks, axis=-1)
    return [imagecodecs.deflate_encode(block, level=DEFLATE_LEVEL) for block in predicted]


def encode_geotiff(
    array: np.ndarray,
    crs: str,
    transform: Sequence[float],
    nodata: float | None,
    bands: Sequence[str],
    tags: Mapping[str, str],
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
) -> bytes:
    """GeoTIFF bytes of `array` (bands, h, w) on the north-up grid `transform` (a, b, c, d, e,
    f) in `crs`; raises `Unencodable` for what GDAL must write instead."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    if b or d or a <= 0 or e >= 0 or not all(map(math.isfinite, (a, c, e, f))):
        raise Unencodable("not a north-up grid")
    kind, size = array.dtype.kind, array.dtype.itemsize
    if array.ndim != 3 or kind not in _SAMPLE_FORMATS or (kind == "f" and size < 4):
        raise Unencodable(f"array {array.dtype} {array.shape}")
    model, crs_key, code = _crs_keys(crs)
    count, height, width = array.shape
    # One tile for small patches (a multiple of 16 as TIFF requires), 256 px tiles otherwise.
    tile = min(256, 16 * math.ceil(max(height, width) / 16))
    blocks = _tiles(array, tile)
    bits = array.dtype.itemsize * 8
    entries: list[tuple[int, int, Sequence]] = [
        (256, _LONG, [width]),
        (257, _LONG, [height]),
        (258, _SHORT, [bits] * count),
        (259, _SHORT, [8]),  # deflate
        (262, _SHORT, [1]),  # min-is-black
        (277, _SHORT, [count]),
        (284, _SHORT, [2 if count > 1 else 1]),  # one plane per band
        (317, _SHORT, [3 if array.dtype.kind == "f" else 2]),
        (322, _SHORT, [tile]),
        (323, _SHORT, [tile]),
        (324, _LONG, [0] * len(blocks)),  # tile offsets, set below
        (325, _LONG, [len(block) for block in blocks]),
    ]
    if count > 1:
        entries.append((338, _SHORT, [0] * (count - 1)))  # extra samples, unspecified
    entries += [
        (339, _SHORT, [_SAMPLE_FORMATS[array.dtype.kind]] * count),
        (33550, _DOUBLE, [a, -e, 0.0]),
        (33922, _DOUBLE, [0.0, 0.0, 0.0, c, f, 0.0]),
        # GeoKey directory: version 1.1.0, three keys (id, in-place, count 1, value), by id
        (
            34735,
            _SHORT,
            [1, 1, 0, 3, _MODEL_TYPE, 0, 1, model, _RASTER_TYPE, 0, 1, 1] + [crs_key, 0, 1, code],
        ),
        (42112, _ASCII, [gdal_metadata(tags, bands, scales, offsets)]),
    ]
    if nodata is not None:
        entries.append((42113, _ASCII, [_number(nodata)]))
    return _layout(entries, blocks)


def _packed(kind: int, values: Sequence) -> bytes:
    if kind == _ASCII:
        return values[0].encode("utf-8") + b"\0"
    return struct.pack(f"<{len(values)}{_FORMATS[kind]}", *values)


def _layout(entries: list[tuple[int, int, Sequence]], blocks: list[bytes]) -> bytes:
    """Header, the IFD, the values that do not fit in it, then the tiles (offsets filled in)."""
    ifd_size = 2 + 12 * len(entries) + 4
    values_at = 8 + ifd_size
    values = [_packed(kind, items) for _, kind, items in entries]
    outside = sum(len(v) + len(v) % 2 for v in values if len(v) > 4)  # word-aligned
    offset = values_at + outside
    tile_offsets = []
    for block in blocks:
        tile_offsets.append(offset)
        offset += len(block)
    if offset >= 2**32:
        raise Unencodable("over 4 GB: BigTIFF")
    at = [tag for tag, _, _ in entries].index(324)
    values[at] = _packed(_LONG, tile_offsets)
    ifd = [struct.pack("<H", len(entries))]
    extra = []
    for (tag, kind, items), value in zip(entries, values, strict=True):
        count = len(value) if kind == _ASCII else len(items)
        if len(value) <= 4:
            ifd.append(struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0"))
        else:
            ifd.append(struct.pack("<HHII", tag, kind, count, values_at))
            padded = value + b"\0" * (len(value) % 2)
            extra.append(padded)
            values_at += len(padded)
    ifd.append(struct.pack("<I", 0))  # no next IFD
    return b"".join([b"II*\0", struct.pack("<I", 8), *ifd, *extra, *blocks])

"""The GDAL-free GeoTIFF decoder returns what GDAL returns, and leaves the rest to GDAL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from geoprep.reader import _decode_tif_gdal, decode_tif
from geoprep.shards import geotiff
from geoprep.shards.geotiff import Unsupported, decode_geotiff
from geoprep.shards.records import ImageRecord, encode_image
from geoprep.shards.untrusted import UnsafeShardError

CAP = 2**30


@pytest.fixture(params=["imagecodecs", "numpy"], autouse=True)
def codecs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with imagecodecs' inflate and predictors and with zlib + numpy alone."""
    if request.param == "numpy":
        monkeypatch.setattr(geotiff, "imagecodecs", None)
    elif geotiff.imagecodecs is None:
        pytest.skip("imagecodecs is not installed")
    return request.param


def record(dtype: str, size: int, bands: int = 3, nodata=0, height: int | None = None):
    rng = np.random.default_rng(size + bands)
    shape = (bands, height or size, size)
    if dtype == "bool":
        array = rng.random(shape) > 0.5
    elif np.issubdtype(np.dtype(dtype), np.floating):
        array = (rng.normal(0, 1e3, shape)).astype(dtype)
        array[:, 0, :3] = np.nan
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    transform = [10.0, 0.0, 500020.0, 0.0, -10.0, 5000040.0]
    grid = {"crs": "EPSG:32632", "transform": transform, "width": size}
    grid |= {"height": height or size, "gsd": 10.0}
    names = [f"B{i:02d}" for i in range(bands)]
    return ImageRecord("s2", "t0", array, grid, names, nodata, None, {})


def same_as_gdal(data: bytes) -> None:
    fast, slow = decode_geotiff(data, CAP), _decode_tif_gdal(data, CAP)
    assert fast.array.dtype == slow.array.dtype and fast.array.shape == slow.array.shape
    np.testing.assert_array_equal(fast.array, slow.array)
    assert fast.array.dtype.isnative and fast.array.flags.c_contiguous
    assert fast.crs == slow.crs and fast.transform == tuple(slow.transform)[:6]
    assert fast.bands == slow.bands
    assert (fast.nodata == slow.nodata) or (math.isnan(fast.nodata) and math.isnan(slow.nodata))


@pytest.mark.parametrize(
    ("dtype", "size", "nodata"),
    [
        ("uint8", 16, None),
        ("uint16", 64, 0),
        ("uint16", 11, 0),  # one 16 px tile, mostly padding
        ("int16", 300, -9999),  # 256 px tiles, partial at the edges
        ("uint32", 40, None),
        ("int32", 40, -1),
        ("float32", 64, float("nan")),
        ("float32", 300, -9999.0),
        ("float64", 33, float("nan")),
        ("bool", 20, None),
    ],
)
def test_members_geoprep_writes_decode_as_with_gdal(dtype: str, size: int, nodata) -> None:
    same_as_gdal(encode_image(record(dtype, size, nodata=nodata), "tif"))


def gdal_tif(array: np.ndarray, **options) -> bytes:
    profile = {"driver": "GTiff", "count": array.shape[0], "height": array.shape[1]}
    profile |= {"width": array.shape[2], "dtype": array.dtype.name, "crs": "EPSG:4326"}
    profile |= {"transform": Affine(0.001, 0, 9.5, 0, -0.001, 45.2)} | options
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(array)
            dst.descriptions = tuple(f"b{i}" for i in range(array.shape[0]))
        return memory.read()


@pytest.mark.parametrize(
    "options",
    [
        {},  # strips, uncompressed, pixel-interleaved
        {"compress": "deflate", "predictor": 2},
        {"compress": "deflate", "predictor": 2, "interleave": "pixel", "tiled": True},
        {"compress": "deflate", "blockysize": 7},  # strips of 7 rows, a short last one
        {"compress": "deflate", "predictor": 3, "interleave": "pixel", "dtype": "float32"},
        {"compress": "zstd"},  # not ours: GDAL reads it
        {"compress": "lzw", "predictor": 2},
        {"compress": "deflate", "crs": CRS.from_proj4("+proj=sinu +R=6371007.181 +units=m")},
    ],
)
def test_other_geotiffs_decode_as_with_gdal_or_fall_back(options: dict) -> None:
    options = dict(options)  # the parameter is shared by both codec runs
    dtype = options.pop("dtype", "uint16")
    array = (np.arange(3 * 37 * 41) % 4000).reshape(3, 37, 41).astype(dtype)
    data = gdal_tif(array, **options)
    try:
        same_as_gdal(data)
    except Unsupported:  # reached only for what the decoder leaves to GDAL
        assert options.get("compress") in ("zstd", "lzw") or "crs" in options
        image = decode_tif(data)
        np.testing.assert_array_equal(image.array, array)
    else:
        assert options.get("compress") not in ("zstd", "lzw") and "crs" not in options


def test_big_endian_and_bigtiff_fall_back_or_match() -> None:
    array = np.arange(2 * 20 * 20, dtype="uint16").reshape(2, 20, 20)
    bigtiff = gdal_tif(array, compress="deflate", BIGTIFF="YES")
    with pytest.raises(Unsupported):
        decode_geotiff(bigtiff, CAP)
    np.testing.assert_array_equal(decode_tif(bigtiff).array, array)
    same_as_gdal(gdal_tif(array, compress="deflate", predictor=2, ENDIANNESS="BIG"))


def test_pixels_over_the_cap_are_refused_before_decoding() -> None:
    data = encode_image(record("uint16", 64, bands=4), "tif")
    with pytest.raises(UnsafeShardError, match="over the cap"):
        decode_geotiff(data, 4 * 64 * 64 * 2 - 1)
    assert decode_geotiff(data, 4 * 64 * 64 * 2).array.shape == (4, 64, 64)


@pytest.mark.parametrize("cut", [8, 200, -100])
def test_damaged_bytes_are_left_to_gdal(cut: int) -> None:
    """A cut member never yields pixels from the fast path: GDAL reads it (or fails) as before."""
    data = encode_image(record("uint16", 64), "tif")
    with pytest.raises(Unsupported):
        decode_geotiff(data[:cut], CAP)

"""Members written without GDAL read back through GDAL as the members GDAL writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rasterio.io import MemoryFile

from geoprep.shards.geotiff import decode_geotiff
from geoprep.shards.geotiff_encode import Unencodable, encode_geotiff
from geoprep.shards.records import ImageRecord, encode_image, encode_with_gdal

UTM = [10.0, 0.0, 500020.0, 0.0, -10.0, 5000040.0]
DEGREES = [0.0001, 0.0, 9.5, 0.0, -0.0001, 45.2]


def record(dtype, size, bands=3, nodata=0, crs="EPSG:32632", transform=UTM, height=None, **prov):
    rng = np.random.default_rng(size + bands)
    shape = (bands, height or size, size)
    if dtype == "bool":
        array = rng.random(shape) > 0.5
    elif np.dtype(dtype).kind == "f":
        array = rng.normal(0, 1e3, shape).astype(dtype)
        array[:, 0, :3] = np.nan
    else:
        info = np.iinfo(dtype)
        low, high = max(info.min, -(2**62)), min(info.max, 2**62)
        array = rng.integers(low, high, shape, endpoint=True).astype(dtype)
    grid = {"crs": crs, "transform": transform, "width": size, "height": height or size}
    provenance = {"collection": "sentinel-2-l2a", "item_id": 'S2A_<&>"x', **prov}
    names = [f"B{i:02d}" if i else 'a "<b>" & c' for i in range(bands)]
    return ImageRecord("s2", "t0", array, grid | {"gsd": 10.0}, names, nodata, "10m", provenance)


def opened(data: bytes) -> dict:
    """What GDAL reports of a member: everything a GIS or the reader takes from it."""
    with MemoryFile(data) as memory, memory.open() as src:
        nodata = src.nodata
        return {
            "pixels": src.read(),
            "dtype": src.dtypes,
            "crs": src.crs,
            "transform": src.transform,
            "nodata": "nan" if nodata is not None and math.isnan(nodata) else nodata,
            "descriptions": src.descriptions,
            "scales": src.scales,
            "offsets": src.offsets,
            "tags": src.tags(),
            "blocks": src.block_shapes,
            "compression": src.compression,
            "interleaving": src.interleaving,
            "res": src.res,
        }


CASES = [
    ("uint16", 64, 3, 0, "EPSG:32632", UTM, {"scale": [1e-4] * 3, "offset": [-0.1] * 3}),
    ("uint16", 11, 1, 0, "EPSG:32615", UTM, {}),  # one 16 px tile, mostly padding
    ("int16", 300, 2, -9999, "EPSG:32755", UTM, {"datetime": "2019-07-18T00:50:00Z"}),
    ("uint8", 36, 4, None, "EPSG:4326", DEGREES, {"scale": [0.5, 2.0, 3.25, 1e-7]}),
    ("float32", 64, 2, float("nan"), "EPSG:3857", UTM, {}),
    ("float32", 270, 1, -9999.5, "EPSG:32632", UTM, {"offset": [0.1]}),
    ("float64", 33, 2, float("nan"), "EPSG:32632", UTM, {}),
    ("int32", 40, 2, -1, "EPSG:32632", UTM, {}),
    ("uint32", 17, 1, None, "EPSG:32632", UTM, {}),
    ("bool", 20, 1, None, "EPSG:32632", UTM, {}),
    ("int8", 24, 2, -128, "EPSG:32632", UTM, {}),
    ("uint64", 20, 1, None, "EPSG:32632", UTM, {}),
]


@pytest.mark.parametrize(("dtype", "size", "bands", "nodata", "crs", "transform", "prov"), CASES)
def test_members_read_through_gdal_as_gdal_written_ones(
    dtype, size, bands, nodata, crs, transform, prov
):
    image = record(dtype, size, bands, nodata, crs, transform, **prov)
    ours, gdals = encode_image(image, "tif"), encode_with_gdal(image)
    assert ours != gdals  # not GDAL's bytes: laid out here
    mine, theirs = opened(ours), opened(gdals)
    np.testing.assert_array_equal(mine.pop("pixels"), theirs.pop("pixels"))
    assert mine == theirs
    assert mine["crs"].to_epsg() == int(crs.split(":")[1])
    assert mine["tags"]["item_id"] == 'S2A_<&>"x' and mine["descriptions"][0] == 'a "<b>" & c'
    fast = decode_geotiff(ours, 2**30)  # the reader's own decoder takes them too
    np.testing.assert_array_equal(fast.array, encode_with_gdal_pixels(image))
    assert fast.crs == crs and fast.transform == tuple(transform)
    assert fast.bands == mine["descriptions"]


def encode_with_gdal_pixels(image: ImageRecord) -> np.ndarray:
    return image.array.astype(np.uint8) if image.array.dtype == bool else image.array


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32632", [10.0, 0.5, 500020.0, 0.5, -10.0, 5000040.0]),  # rotated
        ("+proj=sinu +R=6371007.181 +units=m", UTM),  # no EPSG code
    ],
)
def test_what_the_encoder_leaves_to_gdal_is_written_by_gdal(crs, transform):
    image = record("uint16", 32, crs=crs, transform=transform)
    with pytest.raises(Unencodable):
        encode_geotiff(image.array, crs, transform, 0, image.bands, {})
    assert encode_image(image, "tif") == encode_with_gdal(image)


def test_the_same_record_gives_the_same_bytes():
    assert encode_image(record("uint16", 64), "tif") == encode_image(record("uint16", 64), "tif")

"""Pixel conventions: cloud and nodata masks, Sentinel-2 harmonisation, scale/offset and gsd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoprep.building.pixels import (
    apply_scale_offset,
    asset_gsd,
    band_scale_offset,
    cloud_fraction,
    harmonize_s2,
    mask_has_data,
    mask_kind,
    nodata_fraction,
)
from geoprep.core.errors import UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "raster"


# ---------------------------------------------------------------------------------------------
# Masks


def test_scl_cloud_fraction_leaves_nodata_out() -> None:
    scl = np.array([0] * 20 + [3] * 5 + [8] * 5 + [9] * 5 + [10] * 5 + [1, 2, 7, 11] * 5 + [4] * 40)
    assert cloud_fraction(scl.reshape(1, 10, 10), "scl") == pytest.approx(20 / 80)
    assert cloud_fraction(np.zeros((4, 4), np.uint8), "scl") == 1.0
    assert cloud_fraction(np.full((4, 4), 4, np.uint8), "scl") == 0.0


def test_an_all_nodata_mask_has_no_data_rather_than_clouds() -> None:
    assert not mask_has_data(np.zeros((1, 8, 8), np.uint8), "scl")
    assert mask_has_data(np.array([[0, 0], [0, 9]], np.uint8), "scl")
    assert not mask_has_data(np.ones((4, 4), np.uint16), "qa_pixel")  # fill bit everywhere
    assert mask_has_data(np.array([1, 21824], np.uint16), "qa_pixel")


def test_qa_pixel_cloud_fraction_reads_bits() -> None:
    # fill, dilated cloud, cirrus, cloud, shadow, snow, clear, water, Landsat's clear land 21824,
    # its high-confidence cloud 22280, and fill combined with a cloud bit (still fill).
    values = [1, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 21824, 22280, 1 | 1 << 3]
    qa = np.array(values, dtype=np.uint16)
    assert cloud_fraction(qa, "qa_pixel") == pytest.approx(5 / 9)


@pytest.mark.parametrize(("key", "kind"), [("SCL", "scl"), ("qa_pixel", "qa_pixel"), ("B02", None)])
def test_mask_kind(key: str, kind: str | None) -> None:
    assert mask_kind(key) == kind


def test_nodata_fraction() -> None:
    a = np.ones((2, 4, 4), np.uint16)
    a[0, 0, :] = 0  # 4 pixels missing in band 0
    a[1, 1, :2] = 0  # 2 more in band 1
    assert nodata_fraction(a, 0) == pytest.approx(6 / 16)
    b = np.ones((1, 4, 4), np.uint16)
    b[0, 3, 3] = 9
    assert nodata_fraction([a, b], [0, 9]) == pytest.approx(7 / 16)  # union over same-size arrays
    coarse = np.ones((1, 2, 2), np.float32)
    coarse[0, 0, 0] = np.nan
    assert nodata_fraction([a, coarse], [0, None]) == pytest.approx(6 / 16)  # worst size wins
    coarse[0, 1, :] = np.nan
    assert nodata_fraction([a, coarse], [0, None]) == pytest.approx(3 / 4)
    assert nodata_fraction(np.ones((3, 3)), None) == 0.0
    with pytest.raises(UserError):
        nodata_fraction([a, b], [0])


# ---------------------------------------------------------------------------------------------
# Value conventions and item metadata


@pytest.mark.parametrize(
    ("baseline", "applied"), [("02.12", False), ("03.01", False), ("04.00", True), ("05.11", True)]
)
def test_harmonize_s2_on_both_sides_of_04_00(baseline: str, applied: bool) -> None:
    dn = np.array([[[0, 500, 1000, 1001, 1234, 11000, 65535]]], dtype=np.uint16)
    result, done = harmonize_s2(dn, baseline)
    assert done is applied and result.dtype == np.uint16
    if applied:
        np.testing.assert_array_equal(result, [[[0, 1, 1, 1, 234, 10000, 64535]]])
    else:
        np.testing.assert_array_equal(result, dn)


@pytest.mark.parametrize("baseline", [None, "", "baseline-4"])
def test_harmonize_s2_without_a_baseline_changes_nothing(baseline: str | None) -> None:
    dn = np.array([5000], dtype=np.uint16)
    assert harmonize_s2(dn, baseline) == (dn, False)


def load_item(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_band_scale_offset_from_asset_raster_bands() -> None:
    landsat = load_item("item_landsat-c2-l2.json")
    assert band_scale_offset(landsat, "red") == ([2.75e-05], [-0.2])
    assert band_scale_offset(landsat, "qa_pixel") == ([1.0], [0.0])
    s2 = load_item("item_sentinel-2-l2a.json")
    assert band_scale_offset(s2, "B02") == ([1.0], [0.0])
    with pytest.raises(UserError, match="no asset 'B10'"):
        band_scale_offset(s2, "B10")


def test_band_scale_offset_accepts_pystac_items() -> None:
    import pystac

    item = pystac.Item.from_dict(load_item("item_landsat-c2-l2.json"))
    assert band_scale_offset(item, "red") == ([2.75e-05], [-0.2])
    assert asset_gsd(item, "red") == 30.0


def test_apply_scale_offset() -> None:
    dn = np.array([[[0, 7273, 43636]]], dtype=np.uint16)
    result = apply_scale_offset(dn, [2.75e-05], [-0.2], nodata=0)
    assert result.dtype == np.float32 and np.isnan(result[0, 0, 0])
    np.testing.assert_allclose(result[0, 0, 1:], [0.0000075, 1.0000], atol=1e-4)


@pytest.mark.parametrize(
    ("name", "asset", "gsd"),
    [
        ("item_sentinel-2-l2a.json", "B01", 60.0),  # asset proj:transform
        ("item_sentinel-2-l2a.json", "B05", 20.0),
        ("item_sentinel-2-l2a.json", "visual", 10.0),
        ("item_landsat-c2-l2.json", "red", 30.0),  # raster:bands spatial_resolution
    ],
)
def test_asset_gsd_from_item_metadata(name: str, asset: str, gsd: float) -> None:
    assert asset_gsd(load_item(name), asset) == gsd


def test_asset_gsd_falls_back_to_the_item_then_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.tif"
    grid = {"width": 8, "height": 8, "count": 1, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(path, "w", **grid, transform=Affine(100, 0, 0, 0, -100, 800)) as dst:
        dst.write(np.ones((1, 8, 8), np.uint8))
    item = {"id": "x", "properties": {"proj:transform": [15, 0, 0, 0, -15, 0]}, "assets": {}}
    item["assets"]["b"] = {"href": str(path)}
    assert asset_gsd(item, "b") == 15.0
    item["properties"] = {}
    assert asset_gsd(item, "b") == 100.0

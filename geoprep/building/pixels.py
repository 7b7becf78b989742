"""What pixel values mean: cloud and nodata masks, Sentinel-2 harmonisation, scale and offset."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from geoprep.building.raster import DatasetCache
from geoprep.core.errors import UserError

log = logging.getLogger(__name__)

MaskKind = Literal["scl", "qa_pixel"]

# ---------------------------------------------------------------------------------------------
# Scene masks


SCL_NODATA = 0
SCL_CLOUD_CLASSES = (3, 8, 9, 10)  # cloud shadow, cloud medium/high probability, thin cirrus
QA_PIXEL_FILL = 1 << 0
QA_PIXEL_CLOUD = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)  # dilated, cirrus, cloud, shadow
DEFAULT_MASK_ASSETS = {"sentinel-2-l2a": "SCL", "landsat-c2-l2": "qa_pixel"}
_MASK_KINDS: dict[str, MaskKind] = {"scl": "scl", "qa_pixel": "qa_pixel"}


def mask_kind(asset_key: str) -> MaskKind | None:
    """How to read a mask asset: 'scl' (Sentinel-2 SCL), 'qa_pixel' (Landsat), None (unknown)."""
    return _MASK_KINDS.get(asset_key.lower())


def _mask_valid(values: np.ndarray, kind: MaskKind) -> np.ndarray:
    if kind == "scl":
        return values != SCL_NODATA
    if kind == "qa_pixel":
        return (values.astype(np.uint16, copy=False) & QA_PIXEL_FILL) == 0
    raise UserError(f"mask kind {kind!r} is not one of {sorted(_MASK_KINDS.values())}")


def mask_has_data(mask: np.ndarray, kind: MaskKind) -> bool:
    """Whether any pixel of a mask patch is valid (an all-SCL-0 patch is nodata, not cloud)."""
    return bool(_mask_valid(np.asarray(mask), kind).any())


def cloud_fraction(mask: np.ndarray, kind: MaskKind) -> float:
    """Share of the valid pixels of a mask patch that are cloud or cloud shadow.

    Nodata pixels (SCL 0; qa_pixel fill bit 0, which is also what `read_patch` fills outside the
    footprint) are left out of the denominator: missing data is judged by `nodata_fraction`.
    A patch without any valid pixel counts as fully cloudy (1.0), so it is never accepted.
    """
    values = np.asarray(mask)
    valid = _mask_valid(values, kind)
    if kind == "scl":
        cloudy = np.isin(values, SCL_CLOUD_CLASSES)
    else:
        cloudy = valid & ((values.astype(np.uint16, copy=False) & QA_PIXEL_CLOUD) != 0)
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return 1.0
    return int(np.count_nonzero(cloudy)) / n_valid


def _missing(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where any band is nodata (or NaN)."""
    data = array if array.ndim == 3 else array[np.newaxis]
    missing = np.zeros(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        missing |= np.isnan(data).any(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        missing |= (data == nodata).any(axis=0)
    return missing


def nodata_fraction(
    arrays: np.ndarray | Sequence[np.ndarray], nodata: float | None | Sequence[float | None]
) -> float:
    """Share of pixels where any band of any array is nodata (NaN counts for floats).

    `arrays` is one (bands, h, w) or (h, w) array or a list of them, with one nodata value for
    all or one per array. Arrays of different (h, w) (native layout groups) are judged per size
    and the worst size is returned.
    """
    items = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
    if not items:
        raise UserError("nodata_fraction needs at least one array")
    if isinstance(nodata, Sequence) and not isinstance(nodata, str):
        values = list(nodata)
        if len(values) != len(items):
            raise UserError(f"{len(values)} nodata values for {len(items)} arrays")
    else:
        values = [nodata] * len(items)
    by_size: dict[tuple[int, int], np.ndarray] = {}
    for array, value in zip(items, values, strict=True):
        missing = _missing(np.asarray(array), value)
        previous = by_size.get(missing.shape)
        by_size[missing.shape] = missing if previous is None else previous | missing
    return max(float(missing.mean()) for missing in by_size.values())


# ---------------------------------------------------------------------------------------------
# Value conventions


S2_REFLECTANCE_ASSETS = frozenset(
    ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
)
S2_OFFSET_BASELINE = (4, 0)
S2_BOA_OFFSET = 1000


def _baseline(value: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", value)
    return (int(match.group(1)), int(match.group(2))) if match else None


def harmonize_s2(
    array: np.ndarray, processing_baseline: str | None, nodata: float = 0
) -> tuple[np.ndarray, bool]:
    """Sentinel-2 L2A reflectance in the pre-04.00 convention; returns (array, applied).

    From processing baseline 04.00 (January 2022) the DN carry a +1000 offset
    (BOA_ADD_OFFSET). For such scenes 1000 is subtracted, results below 1 are clipped to 1 so
    that they stay apart from nodata, and nodata pixels stay nodata; the dtype is kept. Pass
    reflectance bands only (`S2_REFLECTANCE_ASSETS`), never SCL, AOT, WVP or visual. Without a
    readable baseline nothing is changed.
    """
    parsed = _baseline(processing_baseline) if processing_baseline else None
    if parsed is None:
        if processing_baseline:
            log.warning("unreadable s2:processing_baseline %r: not harmonised", processing_baseline)
        return array, False
    if parsed < S2_OFFSET_BASELINE:
        return array, False
    shifted = np.clip(array.astype(np.int64) - S2_BOA_OFFSET, 1, None)
    result = np.where(array == nodata, array, shifted).astype(array.dtype)
    return result, True


def _asset_fields(item: Any, asset_key: str) -> dict[str, Any]:
    assets = item["assets"] if isinstance(item, Mapping) else item.assets
    if asset_key not in assets:
        item_id = item.get("id") if isinstance(item, Mapping) else item.id
        raise UserError(f"item {item_id!r} has no asset {asset_key!r}; it has {sorted(assets)}")
    asset = assets[asset_key]
    return dict(asset) if isinstance(asset, Mapping) else asset.to_dict()


def _item_properties(item: Any) -> Mapping[str, Any]:
    return item.get("properties", {}) if isinstance(item, Mapping) else item.properties


def band_scale_offset(item: Any, asset_key: str) -> tuple[list[float], list[float]]:
    """Per-band (scale, offset) from the asset's `raster:bands` (1 and 0 where absent).

    `item` is a pystac Item or its dict. Planetary Computer puts `raster:bands` on assets.
    """
    bands = _asset_fields(item, asset_key).get("raster:bands") or [{}]
    scales = [float(band.get("scale", 1.0)) for band in bands]
    offsets = [float(band.get("offset", 0.0)) for band in bands]
    return scales, offsets


def apply_scale_offset(
    array: np.ndarray, scale: Sequence[float], offset: Sequence[float], nodata: float | None
) -> np.ndarray:
    """float32 `array * scale + offset` per band, with NaN where the input is nodata."""
    data = array if array.ndim == 3 else array[np.newaxis]
    if len(scale) not in (1, data.shape[0]) or len(offset) not in (1, data.shape[0]):
        raise UserError(
            f"{len(scale)} scales / {len(offset)} offsets for an array of {data.shape[0]} bands"
        )
    scales = np.asarray(scale, dtype=np.float32).reshape(-1, 1, 1)
    offsets = np.asarray(offset, dtype=np.float32).reshape(-1, 1, 1)
    result = data.astype(np.float32) * scales + offsets
    if nodata is not None:
        result[data == nodata] = np.nan
    return result.reshape(array.shape)


def asset_gsd(item: Any, asset_key: str, *, cache: DatasetCache | None = None) -> float:
    """Native pixel size of an asset, in CRS units (metres for UTM).

    Looks, in order, at the asset's `proj:transform`, its `raster:bands[0].spatial_resolution`,
    the item's `proj:transform`, the asset's then the item's `gsd` (the sensor's resolution,
    which can differ from the file's pixel size, as for Landsat thermal), and last opens the
    file (a header read).
    """
    asset = _asset_fields(item, asset_key)
    properties = _item_properties(item)
    bands = asset.get("raster:bands") or [{}]
    candidates = [
        _transform_res(asset.get("proj:transform")),
        bands[0].get("spatial_resolution"),
        _transform_res(properties.get("proj:transform")),
        asset.get("gsd"),
        properties.get("gsd"),
    ]
    for value in candidates:
        if value is not None and float(value) > 0:
            return float(value)
    href = asset["href"]
    if cache is None:
        with DatasetCache(max_open=1) as one_off, one_off.dataset(href) as dataset:
            return float(math.hypot(dataset.transform.a, dataset.transform.d))
    with cache.dataset(href) as dataset:
        return float(math.hypot(dataset.transform.a, dataset.transform.d))


def _transform_res(transform: Sequence[float] | None) -> float | None:
    if not transform or len(transform) < 6:
        return None
    return math.hypot(float(transform[0]), float(transform[3]))

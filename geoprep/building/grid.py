"""Target grids: the local UTM patch around a location, and its per-resolution native groups."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from affine import Affine
from pyproj import Transformer

from geoprep.core.errors import UserError
from geoprep.recipe.sections import GridSpec

# Coordinates are rounded to this many decimals (of a metre) so that snapped origins computed
# as k * gsd print and compare the same on every machine (0.6 * 3 is 1.7999999999999998).
_COORD_DECIMALS = 6


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the standard UTM zone holding (lat, lon): 326xx north, 327xx south.

    The zone is a pure function of longitude (6° bands from -180°); the equator belongs to the
    north. The Norway (32V) and Svalbard (31X–37X) exceptions are deliberately not applied: a
    patch only needs a conformal local grid, and a function of longitude alone keeps grids
    predictable. Beyond 84°N / 80°S the zone is still computed (UPS is not used); distortion there
    is larger but the patch stays square in metres.
    """
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise UserError(f"latitude {lat!r} is outside [-90, 90]")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise UserError(f"longitude {lon!r} is outside [-180, 180]")
    zone = int((lon + 180.0) // 6.0) % 60 + 1  # lon = 180 wraps to zone 1, like -180
    return (32600 if lat >= 0 else 32700) + zone


@lru_cache(maxsize=128)
def _from_lonlat(epsg: int) -> Transformer:
    # pyproj transformers are thread-safe (pyproj >= 3.1) and slow to build, so keep them.
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _snap(value: float, step: float) -> float:
    return round(round(value / step) * step, _COORD_DECIMALS)


@dataclass(frozen=True)
class TargetGrid:
    """A north-up pixel grid: EPSG code, affine transform (pixel corner → CRS), width, height."""

    crs: int
    transform: Affine
    width: int
    height: int

    def __post_init__(self) -> None:
        t = self.transform
        if self.width <= 0 or self.height <= 0:
            raise UserError(f"grid size must be positive, got {self.width}×{self.height}")
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or not math.isclose(t.a, -t.e):
            raise UserError(f"grid transform must be north-up with square pixels, got {tuple(t)}")

    @classmethod
    def around(
        cls, lat: float, lon: float, gsd: float, size: int, snap: float | None = None
    ) -> TargetGrid:
        """`size`×`size` pixels of `gsd` metres in the local UTM zone, centred on (lat, lon).

        The top-left corner is snapped to a multiple of `snap` metres (default: `gsd`), so
        patches share pixel boundaries with source grids whose origins are multiples of the
        gsd (Sentinel-2 tiles are), and those reads need no resampling. The price: the patch
        centre lies within `snap / 2` metres of the point in x and in y.
        """
        if gsd <= 0 or size <= 0:
            raise UserError(f"grid gsd and size must be positive, got gsd={gsd}, size={size}")
        epsg = utm_epsg(lat, lon)
        x, y = _from_lonlat(epsg).transform(lon, lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"location ({lat}, {lon}) cannot be projected to EPSG:{epsg}")
        half = size * gsd / 2.0
        step = gsd if snap is None else snap
        left = _snap(x - half, step)
        top = _snap(y + half, step)
        return cls(epsg, Affine(gsd, 0.0, left, 0.0, -gsd, top), size, size)

    @property
    def gsd(self) -> float:
        """Metres (CRS units) per pixel."""
        return self.transform.a

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.height * self.transform.e, left + self.width * self.gsd, top)

    def to_json(self) -> dict[str, Any]:
        t = self.transform
        return {
            "crs": f"EPSG:{self.crs}",
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "width": self.width,
            "height": self.height,
            "gsd": self.gsd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetGrid:
        """The inverse of `to_json` (the redundant `gsd` key is checked, not needed)."""
        try:
            crs = data["crs"]
            epsg = int(crs.upper().removeprefix("EPSG:")) if isinstance(crs, str) else int(crs)
            transform = Affine(*(float(v) for v in data["transform"][:6]))
            grid = cls(epsg, transform, int(data["width"]), int(data["height"]))
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(
                f"grid {data!r} is not {{'crs': 'EPSG:n', 'transform': [6 numbers], 'width', "
                f"'height'}}: {error}"
            ) from error
        if "gsd" in data and not math.isclose(float(data["gsd"]), grid.gsd):
            raise UserError(f"grid gsd {data['gsd']} disagrees with its transform ({grid.gsd})")
        return grid


def group_name(gsd: float) -> str:
    """'10m', '20m', '0p6m': a resolution group's name, without dots (they split member names)."""
    return f"{gsd:g}m".replace(".", "p")


def native_groups(
    grid_spec: GridSpec, asset_gsds: dict[str, float], lat: float, lon: float
) -> dict[str, tuple[TargetGrid, list[str]]]:
    """The native layout: one grid per distinct native gsd, all over the same extent.

    The extent is `grid_spec.size × grid_spec.gsd` metres around (lat, lon). Each group's grid
    has the group's own gsd and `ceil(extent / gsd)` pixels per side from the same top-left
    corner (so a 60 m group of a 1280 m patch is 22 px and reaches 40 m further right and down).
    The corner is snapped to the coarsest gsd when every finer gsd divides it (Sentinel-2's
    10/20/60 m: every group then aligns with its source tile grid), else to the finest.
    Groups are keyed by `group_name`, ordered finest first; assets keep their given order.
    """
    if not asset_gsds:
        raise UserError("native grid layout needs at least one asset")
    by_gsd: dict[float, list[str]] = {}
    for asset, gsd in asset_gsds.items():
        if not (gsd > 0 and math.isfinite(gsd)):
            raise UserError(f"asset {asset!r} has native gsd {gsd!r}; expected metres > 0")
        by_gsd.setdefault(round(gsd, _COORD_DECIMALS), []).append(asset)
    gsds = sorted(by_gsd)
    coarsest = gsds[-1]
    divides = all(math.isclose(coarsest / g, round(coarsest / g), abs_tol=1e-9) for g in gsds)
    snap = coarsest if divides else gsds[0]
    extent = grid_spec.size * grid_spec.gsd
    # Any gsd gives the same snapped corner; `around` just needs a size that spans the extent.
    base = TargetGrid.around(lat, lon, grid_spec.gsd, grid_spec.size, snap=snap)
    groups: dict[str, tuple[TargetGrid, list[str]]] = {}
    for gsd in gsds:
        pixels = math.ceil(extent / gsd - 1e-9)
        transform = Affine(gsd, 0.0, base.transform.c, 0.0, -gsd, base.transform.f)
        groups[group_name(gsd)] = (TargetGrid(base.crs, transform, pixels, pixels), by_gsd[gsd])
    return groups

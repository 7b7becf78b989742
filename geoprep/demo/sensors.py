"""What the demo world's sensors see: the sun's position and the surface on each sensor's grid.

:func:`ground_views` area-averages a rendered surface onto every sensor's grid; the product
writers turn it into the files a real product of each collection has, in that product's data
type, scaling, nodata and quality-band conventions, under a blob path shaped like Planetary
Computer's: :func:`geoprep.demo.s2_products.write_s2`,
:func:`geoprep.demo.landsat_products.write_landsat`, :func:`geoprep.demo.s1_products.write_s1`
and :func:`geoprep.demo.naip_products.write_naip`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from geoprep.demo.landsat_products import LANDSAT_BANDS
from geoprep.demo.products import Ground
from geoprep.demo.render import BANDS, Grid, Surface, area_average
from geoprep.demo.truth import CLASS_CODES


def solar_angles(when: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """Approximate solar zenith and azimuth (degrees, azimuth clockwise from north)."""
    doy = when.timetuple().tm_yday
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365.0)
    solar_hour = when.hour + when.minute / 60 + lon / 15.0
    hour_angle = np.radians(15.0 * (solar_hour - 12.0))
    phi = np.radians(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    zenith = np.arccos(np.clip(cos_z, -1, 1))
    azimuth = np.arctan2(
        -np.sin(hour_angle), np.tan(decl) * np.cos(phi) - np.sin(phi) * np.cos(hour_angle)
    )
    return float(np.degrees(zenith)), float(np.degrees(azimuth) % 360)


def majority_class(classes: np.ndarray, src: Grid, dst: Grid, code: int) -> np.ndarray:
    """``code`` where at least half of a coarse pixel has that class, else 0."""
    share = area_average((classes == code).astype(np.float32), src, dst)
    return np.where(share >= 0.5, code, 0).astype(np.uint8)


def ground_views(surface: Surface, when: dt.date, bounds, radar: bool) -> Ground:
    """Render the surface at ``when`` and area-average it to the S2, Landsat and S1 grids."""
    canvas = surface.grid
    reflect = surface.reflectance(when)
    grids = {res: canvas.covering(bounds, res) for res in (10, 20, 60)}
    s2 = {10: area_average(reflect, canvas, grids[10])}
    s2[20] = area_average(s2[10], grids[10], grids[20])
    s2[60] = area_average(s2[20], grids[20], grids[60])
    landsat_grid = canvas.covering(bounds, 30, anchor=15)
    order = list(BANDS)
    landsat = area_average(
        reflect[[order.index(LANDSAT_BANDS[k][1]) for k in LANDSAT_BANDS]], canvas, landsat_grid
    )
    water = CLASS_CODES["water"]
    backscatter = None
    if radar:
        vv, vh = surface.backscatter(when)
        backscatter = (area_average(vv, canvas, grids[10]), area_average(vh, canvas, grids[10]))
    return Ground(
        grids,
        s2,
        majority_class(surface.classes, canvas, grids[20], water),
        landsat_grid,
        landsat,
        majority_class(surface.classes, canvas, landsat_grid, water),
        _heat(surface.classes, canvas, landsat_grid),
        backscatter,
    )


def _heat(classes: np.ndarray, canvas: Grid, grid: Grid) -> np.ndarray:
    """Surface temperature offsets (K) by land cover: warm towns and rock, cool water and trees."""
    offsets = np.zeros(len(CLASS_CODES), np.float32)
    warmth = {"water": -5, "forest": -3, "built_up": 5, "bare_rock": 4, "quarry": 4}
    warmth |= {"substation": 5, "stadium": 3, "farmland": 1}
    for name, kelvin in warmth.items():
        offsets[CLASS_CODES[name]] = kelvin
    return area_average(offsets[classes], canvas, grid)

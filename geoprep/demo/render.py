"""Renders the demo world's surface and sky: reflectance, radar backscatter, clouds and haze.

Textures are procedural functions of map coordinates (value noise hashed from a lattice), so a
1 m aerial grid and a 5 m satellite grid of the same place show the same fields, crowns and
streets; detail finer than about two pixels is left out (band-limited) rather than aliased.
A :class:`Surface` holds everything that does not change within a year (classes, feature ids,
texture bank); its :meth:`Surface.reflectance` mixes spectral endmembers for one date, so the
vegetation cycle, crop calendars and land-cover change show between dates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine
from scipy import ndimage

from geoprep.demo.materials import mix_quarry, mix_rock, mix_structures, mix_water
from geoprep.demo.truth import ALWAYS_FROM, CLASS_CODES, Truth

#: Sentinel-2 bands (no B10) and their centre wavelengths in micrometres; every optical sensor
#: of the demo world samples these (Landsat and NAIP bands map onto their nearest S2 band).
BANDS: dict[str, float] = {
    "B01": 0.443, "B02": 0.490, "B03": 0.560, "B04": 0.665, "B05": 0.705, "B06": 0.740,
    "B07": 0.783, "B08": 0.842, "B8A": 0.865, "B09": 0.945, "B11": 1.610, "B12": 2.190,
}  # fmt: skip
#: Surface reflectance of the endmembers every pixel is mixed from, at :data:`BANDS`.
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    "leaf": (0.03, 0.04, 0.09, 0.04, 0.11, 0.28, 0.36, 0.40, 0.41, 0.40, 0.21, 0.09),
    "straw": (0.07, 0.09, 0.13, 0.16, 0.19, 0.21, 0.23, 0.25, 0.26, 0.26, 0.34, 0.26),
    "soil": (0.05, 0.07, 0.11, 0.16, 0.19, 0.21, 0.23, 0.24, 0.25, 0.26, 0.32, 0.28),
    "water": (0.06, 0.055, 0.045, 0.02, 0.015, 0.01, 0.008, 0.006, 0.005, 0.004, 0.002, 0.001),
    "concrete": (0.19, 0.23, 0.26, 0.28, 0.29, 0.30, 0.30, 0.31, 0.31, 0.31, 0.33, 0.29),
    "asphalt": (0.05, 0.06, 0.07, 0.08, 0.08, 0.09, 0.09, 0.10, 0.10, 0.10, 0.12, 0.11),
    "tile": (0.05, 0.06, 0.08, 0.21, 0.24, 0.26, 0.27, 0.28, 0.28, 0.28, 0.34, 0.30),
    "metal": (0.33, 0.35, 0.36, 0.37, 0.37, 0.38, 0.38, 0.38, 0.38, 0.38, 0.36, 0.32),
    "rock": (0.14, 0.17, 0.21, 0.25, 0.27, 0.28, 0.29, 0.30, 0.30, 0.30, 0.36, 0.31),
}
_E = {name: i for i, name in enumerate(ENDMEMBERS)}
C = CLASS_CODES


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and (rows, cols)."""

    crs: int
    transform: Affine
    shape: tuple[int, int]

    @property
    def res(self) -> float:
        return self.transform.a

    @property
    def xs(self) -> np.ndarray:
        return self.transform.c + (np.arange(self.shape[1]) + 0.5) * self.res

    @property
    def ys(self) -> np.ndarray:
        return self.transform.f - (np.arange(self.shape[0]) + 0.5) * self.res

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, north = self.transform.c, self.transform.f
        return west, north - self.shape[0] * self.res, west + self.shape[1] * self.res, north

    def covering(self, bounds, res: float, anchor: float = 0.0) -> Grid:
        """The grid of pixel size ``res`` whose lines fall on ``anchor`` (mod ``res``) and that
        covers ``bounds``."""
        west = np.floor((bounds[0] - anchor) / res) * res + anchor
        north = np.ceil((bounds[3] - anchor) / res) * res + anchor
        cols = int(np.ceil((bounds[2] - west) / res - 1e-9))
        rows = int(np.ceil((north - bounds[1]) / res - 1e-9))
        return Grid(self.crs, Affine(res, 0.0, west, 0.0, -res, north), (rows, cols))


def area_average(array: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Block means of ``array`` (on ``src``) on the coarser ``dst``, whose lines lie on src's."""
    factor = round(dst.res / src.res)
    col0 = round((dst.transform.c - src.transform.c) / src.res)
    row0 = round((src.transform.f - dst.transform.f) / src.res)
    rows, cols = dst.shape
    if col0 < 0 or row0 < 0 or row0 + rows * factor > src.shape[0]:
        raise ValueError(f"grid {dst} is not inside the rendered grid {src}")
    if col0 + cols * factor > src.shape[1]:
        raise ValueError(f"grid {dst} is not inside the rendered grid {src}")
    win = array[..., row0 : row0 + rows * factor, col0 : col0 + cols * factor]
    # strided adds beat a reduction over small reshaped axes by a wide margin
    total = np.zeros(win.shape[:-2] + (rows, cols), np.float32)
    for i in range(factor):
        for j in range(factor):
            total += win[..., i::factor, j::factor]
    return total / np.float32(factor * factor)


def _hash(salt: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values hashed from integer coordinates (splitmix-style, wraps in uint64)."""
    h = np.full(np.broadcast_shapes(*(c.shape for c in coords)), salt, dtype=np.uint64)
    h = h * np.uint64(0x9E3779B97F4A7C15)
    for c in coords:
        h = (h ^ c.astype(np.int64).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
        h = h * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(40)).astype(np.float32) / np.float32(2**24)


def noise(grid: Grid, cell: float, salt: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] with features ``cell`` metres wide, 0 where unresolvable."""
    if cell < 2 * grid.res:
        return np.zeros(grid.shape, np.float32)
    gx, gy = grid.xs / cell, grid.ys / cell
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    ux, uy = fx * fx * (3 - 2 * fx), (fy * fy * (3 - 2 * fy))[:, None]
    lx = np.arange(ix.min(), ix.max() + 2)
    ly = np.arange(iy.min(), iy.max() + 2)
    lattice = _hash(salt, lx[None, :], ly[:, None])
    jx, jy = ix - lx[0], iy - ly[0]
    # bilinear is separable: along x on the few lattice rows, then whole rows along y
    across = lattice[:, jx] + (lattice[:, jx + 1] - lattice[:, jx]) * ux
    top, bottom = across[jy], across[jy + 1]
    return (top + (bottom - top) * uy) * 2 - 1


def fbm(grid: Grid, cells: tuple[float, ...], salt: int) -> np.ndarray:
    """Fractal noise: octaves of :func:`noise` with amplitude proportional to their size."""
    total = np.zeros(grid.shape, np.float32)
    weights = np.asarray(cells, np.float32) / max(cells)
    for i, (cell, w) in enumerate(zip(cells, weights, strict=True)):
        total += w * noise(grid, cell, salt * 31 + i)
    return total / weights.sum()


def _stripes(phase: np.ndarray, period: float, res: float) -> np.ndarray:
    """A 0/1 stripe pattern of ``period`` metres along ``phase``; mean 0.5 if unresolvable."""
    if period < 2.5 * res:
        return np.full(phase.shape, 0.5, np.float32)
    return ((phase / period) % 1.0 < 0.5).astype(np.float32)


def greenness(when: dt.date, lat: float, peak_doy: int = 190) -> float:
    """Seasonal vegetation vigour 0..1 peaking ``peak_doy`` (northern calendar; flipped south)."""
    doy = when.timetuple().tm_yday + (182 if lat < 0 else 0)
    return float(0.5 + 0.5 * np.cos(2 * np.pi * (doy - peak_doy) / 365.25))


class Surface:
    """Everything about one AOI in one year on one grid that does not change with the date.

    Class recipes are evaluated only on the pixels of their class (flat index arrays), and the
    parts of the mix that do not follow the seasons are mixed once, so rendering a date costs
    little more than the seasonal classes and one matrix product.
    """

    def __init__(self, truth: Truth, aoi_name: str, year: int, grid: Grid, lat: float):
        self.grid, self.lat, self.year = grid, lat, year
        args = (aoi_name, year, grid.crs, grid.transform, grid.shape)
        self.classes = truth.rasterize(*args)
        self.fids = truth.rasterize_fids(*args)
        flat = self.classes.ravel()
        self.where = {name: np.flatnonzero(flat == code) for name, code in C.items()}
        # metres to the nearest edge of the pixel's polygon: quarry terraces, stadium stands
        edges = np.zeros(grid.shape, bool)
        edges[1:, :] |= self.fids[1:, :] != self.fids[:-1, :]
        edges[:, 1:] |= self.fids[:, 1:] != self.fids[:, :-1]
        self.depth = ndimage.distance_transform_edt(~edges).astype(np.float32) * grid.res
        self._tables: dict[int, np.ndarray] = {}
        # features that came with the land-cover change (a quarry being dug, new houses)
        recent = truth.features.loc[truth.features["valid_from_year"] > ALWAYS_FROM, "fid"]
        self._recent = np.zeros(int(self.fids.max()) + 2, bool)
        self._recent[recent[recent <= self.fids.max()].to_numpy() + 1] = True
        g = grid
        self.fine = noise(g, 3.0, 1) + 0.5 * noise(g, 1.5, 2)  # crowns, rocks, glint
        self.mid = fbm(g, (12.0, 6.0), 3)
        self.coarse = fbm(g, (120.0, 60.0, 30.0), 4)
        self.broad = noise(g, 600.0, 5)
        self.static = np.zeros((len(_E), self.classes.size), np.float32)
        self._mix_static()

    def at(self, name: str, layer: np.ndarray) -> np.ndarray:
        """``layer`` at the pixels of class ``name`` (flat)."""
        return layer.ravel()[self.where[name]]

    def param(self, name: str, salt: int) -> np.ndarray:
        """A uniform [0, 1) value per feature (same for all its pixels), at class ``name``."""
        if salt not in self._tables:
            size = int(self.fids.max()) + 2
            self._tables[salt] = _hash(salt, np.arange(-1, size - 1))
        return self._tables[salt][self.at(name, self.fids) + 1]

    def recent(self, name: str) -> np.ndarray:
        """True at the pixels of class ``name`` whose feature came with the land-cover change."""
        return self._recent[self.at(name, self.fids) + 1]

    def oriented(self, name: str, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates along and across a per-feature direction, at class ``name``."""
        rows, cols = np.divmod(self.where[name], self.grid.shape[1])
        x, y = self.grid.xs[cols], self.grid.ys[rows]
        angle = self.param(name, salt) * np.pi
        return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)

    def put(self, a: np.ndarray, name: str, subset=None, **parts) -> None:
        index = self.where[name] if subset is None else self.where[name][subset]
        for endmember, value in parts.items():
            if isinstance(value, np.ndarray) and subset is not None:
                value = value[subset]
            a[_E[endmember], index] = value

    def _mix_static(self) -> None:
        """Classes whose look does not follow the seasons."""
        a, res = self.static, self.grid.res
        mix_water(self, a)
        mix_rock(self, a)
        mix_quarry(self, a)
        # golf: irrigated turf with mowing stripes; sand bunkers and tree clumps in the rough
        along, _ = self.oriented("golf_course", 11)
        self.put(a, "golf_course", leaf=0.75 + 0.1 * _stripes(along, 14.0, res), straw=0.1)
        self.put(a, "golf_course", self.at("golf_course", self.mid) > 0.55, concrete=0.9, leaf=0.05)
        self.put(
            a, "golf_course", self.at("golf_course", self.coarse) < -0.45, leaf=0.5, straw=0.05
        )
        # built-up (all but the gardens): streets in an oriented grid, roofs of three kinds
        along, across = self.oriented("built_up", 11)
        block = 70.0 + 30.0 * self.param("built_up", 12)
        street = (((along % block) < 12.0) | ((across % block) < 12.0)).astype(np.float32)
        lots = np.floor(along / 18.0).astype(np.int64) * 7919 + np.floor(across / 18.0).astype(
            np.int64
        )
        roof = _hash(13, lots)
        built, self.garden = (1 - street) * (roof > 0.3), (1 - street) * (roof <= 0.3)
        self.put(a, "built_up", asphalt=street * 0.9 + built * (roof < 0.5) * 0.7)
        self.put(a, "built_up", soil=self.garden * 0.3, tile=built * (roof >= 0.5) * 0.45)
        self.put(a, "built_up", concrete=built * (roof >= 0.5) * (0.45 + 0.5 * (roof > 0.88)))
        self.street = np.zeros(self.classes.size, np.float32)
        self.street[self.where["built_up"]] = street
        # stadium: a bright roof ring of stands around a grass pitch and a running track
        depth = self.at("stadium", self.depth)
        along, _ = self.oriented("stadium", 11)
        pitch = (depth >= 38) * (0.8 + 0.1 * _stripes(along, 10.0, res))
        self.put(
            a,
            "stadium",
            metal=(depth < 28) * 0.9,
            tile=((depth >= 28) & (depth < 38)) * 0.8,
            leaf=pitch,
        )
        # substation: gravel yard with steel pylons and busbars in a regular lattice
        along, across = self.oriented("substation", 11)
        pylons = _stripes(along, 8.0, res) * _stripes(across, 8.0, res)
        mix_structures(self, a, pylons)
        self.put(a, "bridge", concrete=0.55, asphalt=0.45)
        self.put(a, "breakwater", rock=0.75 + 0.3 * self.at("breakwater", self.fine), concrete=0.15)
        # inputs of the seasonal recipes that do not depend on the date
        along, _ = self.oriented("farmland", 11)
        self.crop = self.param("farmland", 21)
        self.rows = _stripes(along, 3.0, res)  # drill rows (aerial only)
        self.tramlines = _stripes(along, 24.0, res)  # wheel tracks and strips (satellite scale)
        self.stubble = np.where(self.param("farmland", 22) < 0.5, 0.6, 0.1)
        self.evergreen = self.param("forest", 31) < 0.4
        crowns = 0.55 + 0.35 * self.at("forest", self.fine) + 0.2 * self.at("forest", self.mid)
        # stands range from closed canopy to open woodland with grass between the trees
        openness = 0.45 * (1 - self.param("forest", 32))
        self.crowns = np.clip(crowns, 0.1, 1.0) * (crowns > openness)

    def reflectance(self, when: dt.date, bands: tuple[str, ...] = tuple(BANDS)) -> np.ndarray:
        """Surface reflectance (bands, rows, cols) float32 on the surface's grid at ``when``."""
        a = self.static.copy()
        green = greenness(when, self.lat)
        spring = greenness(when, self.lat, peak_doy=130)
        # meadow and verges: vigour follows the season, patchy at tens of metres
        patches = 0.15 * self.at("other", self.coarse) + 0.05 * self.at("other", self.mid)
        veg = np.clip(0.35 + 0.45 * green + patches, 0.05, 0.95)
        self.put(a, "other", leaf=veg, straw=(1 - veg) * 0.7, soil=(1 - veg) * 0.3)
        # fields: summer crop, winter crop, hay or fallow per field, rows and tramlines inside
        crop = self.crop
        vigour = np.where(
            crop < 0.4, green**2.2, np.where(crop < 0.7, spring**1.5, 0.25 + 0.5 * green)
        )
        vigour = np.where(crop > 0.9, 0.08, vigour) * (0.75 + 0.25 * self.rows)
        patchy = 0.05 * self.at("farmland", self.coarse)
        vigour = np.clip(vigour * (0.9 + 0.1 * self.tramlines) + patchy, 0, 0.97)
        stubble = self.stubble * (1 - vigour)
        self.put(a, "farmland", leaf=vigour, straw=stubble, soil=1 - vigour - stubble)
        # forest: bright crowns and dark gaps; deciduous stands lose their leaves in winter
        canopy = np.where(self.evergreen, 0.8, 0.25 + 0.6 * green) * self.crowns
        self.put(a, "forest", leaf=canopy * 0.75, straw=(1 - canopy) * 0.35, soil=0.1)
        self.put(a, "built_up", leaf=self.garden * (0.3 + 0.5 * green) + 0.05)
        order = list(BANDS)
        spectra = np.asarray(
            [[ENDMEMBERS[e][order.index(b)] for b in bands] for e in _E], np.float32
        )
        out = (spectra.T @ a).reshape((len(bands),) + self.grid.shape)
        # terrain shading and soil-moisture patches: a broad brightness swell
        out *= 1.0 + 0.06 * self.broad
        return np.clip(out, 0.0005, 1.0, out=out)

    def backscatter(self, when: dt.date) -> tuple[np.ndarray, np.ndarray]:
        """Speckle-free gamma-naught (linear) in VV and VH for the date."""
        cls = self.classes
        green = greenness(when, self.lat)
        #            class: (VV dB, VH - VV dB)
        table = {
            "other": (-12.5, -7.0),
            "farmland": (-12.0, -7.5),
            "forest": (-7.5, -5.5),
            "water": (-21.0, -7.0),
            "bare_rock": (-9.0, -8.0),
            "quarry": (-10.0, -8.0),
            "golf_course": (-13.5, -7.5),
            "built_up": (-4.0, -9.0),
            "stadium": (-5.0, -9.0),
            "substation": (0.0, -8.0),
            "farm_building": (-1.5, -9.0),
            "bridge": (1.0, -9.0),
            "dam": (-5.0, -9.0),
            "breakwater": (-4.0, -8.0),
        }
        vv_db = np.zeros(cls.shape, np.float32)
        ratio = np.zeros(cls.shape, np.float32)
        for name, (vv, vh_minus_vv) in table.items():
            mask = cls == C[name]
            vv_db[mask], ratio[mask] = vv, vh_minus_vv
        # crops get rougher and wetter as they grow; wind roughens water; streets add corners
        fields = cls == C["farmland"]
        vv_db[fields] += 4.0 * green * (self.crop < 0.7) - 1.5 + 2 * self.coarse[fields]
        vv_db[cls == C["water"]] += (3.0 * self.coarse)[cls == C["water"]]
        vv_db -= 6.0 * self.street.reshape(cls.shape)
        vv_db += 1.5 * self.mid
        vv = 10 ** (vv_db / 10)
        return vv, vv * 10 ** (ratio / 10)


@dataclass(frozen=True)
class Sky:
    """The atmosphere of one acquisition: clouds, cirrus, haze, gain and a swath edge.

    ``swath`` is None (the scene covers the AOI) or (a, b, c): pixels with ``a*x + b*y > c``
    (map coordinates) lie outside the scene footprint and get nodata.
    """

    salt: int
    cloud_cover: float = 0.0
    cirrus: float = 0.0
    haze: float = 0.0
    gain: float = 1.0
    shadow_shift: tuple[float, float] = (300.0, -200.0)
    swath: tuple[float, float, float] | None = None


@dataclass
class SkyLayers:
    """Per-pixel sky of an acquisition on a grid: cloud opacity, cirrus, shadow, valid data."""

    opacity: np.ndarray
    cirrus: np.ndarray
    shadow: np.ndarray
    valid: np.ndarray


def sky_layers(sky: Sky, grid: Grid) -> SkyLayers:
    """Render cloud opacity (0..1), thin cirrus, cloud shadow and the footprint on ``grid``.

    Clouds are drawn on a grid of about 40 m and interpolated: they have no detail finer than
    ~100 m, and the sky is drawn once per acquisition, so this keeps the world build fast.
    """
    factor = max(1, round(40.0 / grid.res))
    coarse = grid.covering(grid.bounds, grid.res * factor, anchor=grid.transform.c)
    zeros = np.zeros(coarse.shape, np.float32)
    opacity, shadow, cirrus = zeros, zeros, zeros
    if sky.cloud_cover > 0:
        field = fbm(coarse, (1600.0, 800.0, 400.0, 200.0, 100.0), sky.salt)
        threshold = np.quantile(field, 1.0 - sky.cloud_cover)
        opacity = np.clip((field - threshold) / 0.12 + 0.35, 0, 1) * (field > threshold - 0.04)
        dx, dy = (round(s / coarse.res) for s in sky.shadow_shift)
        shadow = np.roll(opacity, (-dy, dx), axis=(0, 1)) * (1 - opacity)
    if sky.cirrus > 0:
        cirrus = sky.cirrus * np.clip(noise(coarse, 2000.0, sky.salt + 7) + 0.5, 0, 1)

    def fine(layer: np.ndarray) -> np.ndarray:
        if not layer.any():
            return np.zeros(grid.shape, np.float32)
        if factor == 1:
            return layer.astype(np.float32)
        up = ndimage.zoom(layer, factor, order=1, mode="nearest", grid_mode=True)
        return np.clip(up[: grid.shape[0], : grid.shape[1]], 0, 1).astype(np.float32)

    valid = np.ones(grid.shape, bool)
    if sky.swath is not None:
        a, b, c = sky.swath
        valid = (a * grid.xs[None, :] + b * grid.ys[:, None]) <= c
    return SkyLayers(fine(opacity), fine(cirrus), fine(shadow), valid)


def apply_sky(surface: np.ndarray, bands: tuple[str, ...], sky: Sky, layers: SkyLayers):
    """What the sensor sees: ground through haze and cirrus, shadowed, under clouds."""
    wavelengths = np.asarray([BANDS[b] for b in bands], np.float32)[:, None, None]
    haze = sky.haze * (0.49 / wavelengths) ** 1.3
    cloud = 0.7 * np.clip(1.1 - 0.25 * wavelengths, 0.35, 1.0)
    seen = surface * sky.gain * (1 - 0.65 * layers.shadow)
    seen = seen * (1 - layers.opacity) + cloud * layers.opacity
    return (seen + haze + 0.5 * layers.cirrus * (wavelengths < 1.5)).astype(np.float32)

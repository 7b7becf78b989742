"""NAIP products of the demo world: 4-band uint8 quarter quads with the full affine in STAC.

A NAIP mosaic is stitched from north-south flight lines flown at different hours, so its
brightness and colour balance step between lines and brighten towards each line's hot spot;
the camera adds noise, and the orthorectified mosaic sits a few metres off the satellites'
grids (NAIP's accuracy standard allows 6 m). :func:`render_naip` draws all of that from the
flight's generator, rendering the surface in strips so memory stays flat for large quads.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pyproj import Transformer
from rasterio.transform import Affine

from geoprep.demo.products import AssetFile, Scene, Shot, blob_path, footprint, write_cog
from geoprep.demo.render import Grid, Surface
from geoprep.demo.truth import Truth

#: NAIP bands (R, G, B, NIR) and the Sentinel-2 bands they are rendered from.
NAIP_BANDS = ("B04", "B03", "B02", "B08")


#: Rows rendered at once, and the margin rendered around them so distances to polygon edges
#: (quarry benches, stadium stands) are right at the strip seams.
STRIP_ROWS, STRIP_HALO = 1440, 256
#: Width range (m) of the flight lines, and the largest misregistration (m) of a mosaic.
LINE_WIDTH, MAX_SHIFT = (900.0, 1600.0), 3.0
#: Standard deviation of the camera's noise, in reflectance (2 DN of the uint8 product).
NAIP_NOISE = 0.004


def render_naip(
    truth: Truth, aoi: str, grid: Grid, when: dt.date, lat: float, rng: np.random.Generator
) -> np.ndarray:
    """Reflectance (R, G, B, NIR) the NAIP camera records on ``grid`` at ``when``."""
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
    gain = _flight_lines(grid, rng)
    t = grid.transform
    rows, cols = grid.shape
    out = np.empty((len(NAIP_BANDS), rows, cols), np.float32)
    for top in range(0, rows, STRIP_ROWS):
        first, last = max(top - STRIP_HALO, 0), min(top + STRIP_ROWS + STRIP_HALO, rows)
        # the ground as rendered lies ``shift`` metres from where the file's transform puts it
        strip = Grid(
            grid.crs,
            Affine(t.a, 0, t.c + shift[0], 0, t.e, t.f + t.e * first + shift[1]),
            (last - first, cols),
        )
        reflect = Surface(truth, aoi, when.year, strip, lat).reflectance(when, NAIP_BANDS)
        core = out[:, top : top + STRIP_ROWS]
        core[:] = reflect[:, top - first : top - first + core.shape[1]] * gain
        core += NAIP_NOISE * rng.standard_normal(core.shape, np.float32)
    return out


def _flight_lines(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Per-column (band, 1, col) gain: a level and colour balance per line, and a hot spot."""
    xs = grid.xs - grid.transform.c
    gain = np.ones((len(NAIP_BANDS), 1, xs.size), np.float32)
    start = -rng.uniform(0, LINE_WIDTH[1])
    while start < xs[-1]:
        width = rng.uniform(*LINE_WIDTH)
        inside = (xs >= start) & (xs < start + width)
        level = rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, len(NAIP_BANDS))
        across = (xs[inside] - start) / width - rng.uniform(0.3, 0.7)
        gain[:, 0, inside] = level[:, None] * (1.0 + 0.08 * np.exp(-((across / 0.3) ** 2)))
        start += width
    return gain


def transform9(transform: Affine) -> list[float]:
    """NAIP items carry the full 3x3 affine matrix."""
    return [float(v) for v in list(transform)[:9]]


def write_naip(shot: Shot, grid: Grid, reflect: np.ndarray, blobs: Path) -> Scene:
    """Write one NAIP quarter quad: a single 4-band (R, G, B, NIR) uint8 COG, no nodata."""
    m = shot.meta
    dn = np.clip(np.rint(reflect * 500.0 + 10.0), 0, 255).astype(np.uint8)
    name = m["name"]
    path = blob_path(
        "naip",
        f"v002/{m['state']}/{shot.when.year}/{m['state']}_{m['cm']}cm_{shot.when.year}"
        f"/{m['block']}/{name}.tif",
    )
    write_cog(blobs / path, dn, grid, None)
    scene = Scene("naip", f"{m['state']}_{name}", shot.aoi, shot.when, footprint(grid, None), {})
    scene.assets["image"] = AssetFile(path, grid)
    west, south, east, north = grid.bounds
    centre = Transformer.from_crs(grid.crs, 4326, always_xy=True).transform(
        (west + east) / 2, (south + north) / 2
    )
    scene.properties = {
        "gsd": grid.res,
        "datetime": shot.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "naip:year": str(shot.when.year),
        "proj:bbox": [west, south, east, north],
        "proj:epsg": grid.crs,
        "providers": [
            {
                "url": "https://www.fsa.usda.gov/programs-and-services/aerial-photography/"
                "imagery-programs/naip-imagery/",
                "name": "USDA Farm Service Agency",
                "roles": ["producer", "licensor"],
            }
        ],
        "naip:state": m["state"],
        "proj:shape": list(grid.shape),
        "proj:centroid": {"lat": round(centre[1], 5), "lon": round(centre[0], 5)},
        "proj:transform": transform9(grid.transform),
    }
    return scene

"""NAIP products of the demo world: 4-band uint8 quarter quads with the full affine in STAC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyproj import Transformer
from rasterio.transform import Affine

from geoprep.demo.products import AssetFile, Scene, Shot, blob_path, footprint, write_cog
from geoprep.demo.render import Grid

#: NAIP bands (R, G, B, NIR) and the Sentinel-2 bands they are rendered from.
NAIP_BANDS = ("B04", "B03", "B02", "B08")


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

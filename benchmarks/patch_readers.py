"""The patch readers the throughput benchmark compares: geoprep, a naive rasterio loop, odc-stac."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling as RioResampling
from rasterio.vrt import WarpedVRT

from geoprep.building.grid import TargetGrid
from geoprep.building.raster import DatasetCache, read_patch

Href = Callable[[str], str]


@dataclass(frozen=True)
class SensorBands:
    collection: str
    bands: tuple[str, ...]
    nodata: int = 0


SENSORS = {
    "s2": SensorBands("sentinel-2-l2a", ("B02", "B03", "B04", "B08")),
    "landsat": SensorBands("landsat-c2-l2", ("blue", "green", "red", "nir08")),
}


@dataclass(frozen=True)
class PatchJob:
    """One patch: the bands of one scene read onto one location's grid."""

    location_id: str
    grid: TargetGrid
    item: pystac.Item


@dataclass(frozen=True)
class Setup:
    """What every method is given: the same bands, resampling, threads and GDAL options."""

    sensor: SensorBands
    resampling: str
    threads: int
    gdal: dict[str, Any]


def read_geoprep(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """As `geoprep.building.build.build_shard` reads: locations on an I/O thread pool, in order
    of their scene, one `DatasetCache` for the run, `read_patch` per asset."""
    results: dict[int, np.ndarray] = {}

    def one(index: int) -> None:
        job = jobs[index]
        arrays = [
            read_patch(href(job.item.assets[band].href), job.grid, setup.resampling, cache=cache)
            for band in setup.sensor.bands
        ]
        results[index] = np.concatenate([patch.array for patch in arrays])

    with DatasetCache(env=setup.gdal) as cache:
        list(_pool("geoprep", setup.threads).map(one, _scene_order(jobs)))
    return [results[i] for i in range(len(jobs))]


def read_geoprep_one_thread(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """The same on one thread: what geoprep's reader saves apart from concurrency."""
    return read_geoprep(jobs, href, replace(setup, threads=1))


def read_naive(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """Per location, per band: open the file, warp it onto the grid with a WarpedVRT, close."""
    resampling = RioResampling[setup.resampling]
    patches = []
    with rasterio.Env(**setup.gdal):
        for job in jobs:
            bands = []
            for band in setup.sensor.bands:
                with (
                    rasterio.open(href(job.item.assets[band].href)) as src,
                    WarpedVRT(
                        src,
                        crs=f"EPSG:{job.grid.crs}",
                        transform=job.grid.transform,
                        width=job.grid.width,
                        height=job.grid.height,
                        resampling=resampling,
                    ) as vrt,
                ):
                    bands.append(vrt.read(1))
            patches.append(np.stack(bands))
    return patches


def _odc_patch(job: PatchJob, href: Href, setup: Setup, pool: Any = None) -> np.ndarray:
    import odc.stac
    from odc.geo.geobox import GeoBox

    geobox = GeoBox(job.grid.shape, job.grid.transform, f"EPSG:{job.grid.crs}")
    # Without raster:bands (Planetary Computer's S2 items have none) odc-stac would load
    # float32; the configuration keeps the native dtype and nodata, as the other methods do.
    config = {
        setup.sensor.collection: {
            "assets": {"*": {"data_type": "uint16", "nodata": setup.sensor.nodata}}
        }
    }
    data = odc.stac.load(
        [job.item],
        bands=list(setup.sensor.bands),
        geobox=geobox,
        resampling=setup.resampling,
        stac_cfg=config,
        patch_url=href,
        pool=pool,
    )
    return np.stack([data[band].values[0] for band in setup.sensor.bands])


def read_odc(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """`odc.stac.load` per location, one after the other."""
    return [_odc_patch(job, href, setup) for job in jobs]


def read_odc_band_pool(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """`odc.stac.load(..., pool=n_bands)` per location: its own threads read the bands."""
    # odc-stac shuts a pool it is given down after the load, so it gets a thread count.
    return [_odc_patch(job, href, setup, len(setup.sensor.bands)) for job in jobs]


def read_odc_threads(jobs: list[PatchJob], href: Href, setup: Setup) -> list[np.ndarray]:
    """`odc.stac.load` per location, locations on a thread pool like geoprep's, in scene order."""
    results: dict[int, np.ndarray] = {}

    def one(index: int) -> None:
        results[index] = _odc_patch(jobs[index], href, setup)

    list(_pool("odc-stac", setup.threads).map(one, _scene_order(jobs)))
    return [results[i] for i in range(len(jobs))]


_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}


def _pool(method: str, threads: int) -> ThreadPoolExecutor:
    """The thread pool of a method, kept for the whole benchmark (warm-up included), as a build
    keeps one I/O pool per worker process: every new thread sets up GDAL and PROJ anew."""
    key = (method, threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix=f"{method}-io")
    return _POOLS[key]


def close_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].shutdown(wait=True)


def _scene_order(jobs: list[PatchJob]) -> list[int]:
    # The builder works in order of scene so that neighbouring locations share open datasets.
    return sorted(range(len(jobs)), key=lambda i: (jobs[i].item.id, i))


Reader = Callable[[list[PatchJob], Href, Setup], list[np.ndarray]]


def methods(threads: int, bands: int) -> dict[str, Reader]:
    return {
        f"geoprep ({threads} threads)": read_geoprep,
        "geoprep (1 thread)": read_geoprep_one_thread,
        "naive rasterio loop": read_naive,
        "odc-stac": read_odc,
        f"odc-stac pool={bands}": read_odc_band_pool,
        f"odc-stac ({threads} threads)": read_odc_threads,
    }

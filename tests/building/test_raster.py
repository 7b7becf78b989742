"""Reading COGs onto target grids, locally and over HTTP, and the dataset cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import uvicorn
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from starlette.staticfiles import StaticFiles

from geoprep.building.datasets import OPEN_DATASET_BYTES
from geoprep.building.grid import TargetGrid
from geoprep.building.raster import (
    DatasetCache,
    gdal_env,
    read_patch,
    redact,
    unsigned_href,
)
from geoprep.core.errors import SourceError, UserError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "raster"
SIZE = 1024  # source rasters: 1024 px, 256 px blocks, so COG overviews at factors 2 and 4


def utm_corner(
    epsg: int, lon: float, lat: float, gsd: float, size: int = SIZE
) -> tuple[float, float]:
    """Top-left corner (multiple of 60 m) of a `size`-pixel square centred near (lon, lat)."""
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    half = size * gsd / 2
    return round((x - half) / 60) * 60, round((y + half) / 60) * 60


def write_raster(
    path: Path,
    array: np.ndarray,
    epsg: int,
    corner: tuple[float, float],
    gsd: float,
    nodata: float | None,
    **options: object,
) -> Path:
    profile = {
        "driver": "COG",
        "blocksize": 256,
        "overview_resampling": "average",
        **options,
    }
    with rasterio.open(
        path,
        "w",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs=f"EPSG:{epsg}",
        transform=Affine(gsd, 0, corner[0], 0, -gsd, corner[1]),
        nodata=nodata,
        **profile,
    ) as dataset:
        dataset.write(array)
    return path


def smooth_bands(count: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """uint16 reflectance-like bands: smooth patterns plus noise, always >= 1."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    base = 2000 + 800 * np.sin(cols / 37.0) + 600 * np.cos(rows / 23.0)
    bands = [base * (1 + 0.3 * band) + rng.normal(0, 60, (size, size)) for band in range(count)]
    return np.clip(np.stack(bands), 1, 60000).astype(np.uint16)


def reference(
    path: Path, grid: TargetGrid, resampling: str, overview_level: int | None = None
) -> np.ndarray:
    """The whole file (or one overview of it) reprojected onto `grid` in one call."""
    options = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **options) as src:
        out = np.full((src.count, grid.height, grid.width), src.nodata or 0, dtype=src.dtypes[0])
        rasterio.warp.reproject(
            rasterio.band(src, list(range(1, src.count + 1))),
            out,
            src_nodata=src.nodata,
            dst_transform=grid.transform,
            dst_crs=f"EPSG:{grid.crs}",
            dst_nodata=src.nodata,
            resampling=Resampling[resampling],
        )
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-band uint16 COGs with nodata 0 (a nodata strip on the west, a nodata hole inside)."""
    root = tmp_path_factory.mktemp("sources")
    bands = smooth_bands()
    bands[:, :, :80] = 0
    bands[:, 500:560, 500:560] = 0
    return {
        # Zone 32 near its eastern edge: targets east of 12°E are in zone 33.
        "32632": write_raster(
            root / "z32.tif", bands, 32632, utm_corner(32632, 11.96, 48.0, 10), 10, 0
        ),
        "32633": write_raster(
            root / "z33.tif", bands, 32633, utm_corner(32633, 14.0, 48.0, 10), 10, 0
        ),
        # NAD83 / UTM 15N, as USGS products come; the target is WGS84 / UTM 15N.
        "26915": write_raster(
            root / "nad83.tif", bands, 26915, utm_corner(26915, -93.2, 45.0, 10), 10, 0
        ),
    }


def source_grid(path: Path) -> tuple[int, Affine]:
    with rasterio.open(path) as src:
        return src.crs.to_epsg(), src.transform


# ---------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize(("row", "col"), [(100, 200), (960, 990), (-20, -30)])
def test_aligned_read_is_the_numpy_slice(sources: dict[str, Path], row: int, col: int) -> None:
    path = sources["32633"]
    epsg, transform = source_grid(path)
    grid = TargetGrid(epsg, transform @ Affine.translation(col, row), 128, 128)
    with rasterio.open(path) as src:
        full = src.read()
    expected = np.zeros((2, 128, 128), dtype=np.uint16)  # outside the file: nodata 0
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + 128, SIZE), min(col + 128, SIZE)
    expected[:, r0 - row : r1 - row, c0 - col : c1 - col] = full[:, r0:r1, c0:c1]
    patch = read_patch(str(path), grid)
    assert patch.aligned and patch.overview_level is None
    assert patch.array.dtype == np.uint16 and patch.nodata == 0
    np.testing.assert_array_equal(patch.array, expected)


def test_patch_around_a_point_aligns_with_a_source_on_the_same_grid(
    sources: dict[str, Path],
) -> None:
    grid = TargetGrid.around(48.0, 14.0, 10.0, 64)
    assert grid.crs == 32633
    assert read_patch(str(sources["32633"]), grid).aligned


@pytest.mark.parametrize(
    ("source", "lat", "lon", "resampling"),
    [
        ("32632", 48.0, 12.02, "bilinear"),  # zone 32 source, zone 33 target, at the edge
        ("32632", 48.0, 12.01, "cubic"),
        ("32633", 48.0, 14.0003, "bilinear"),  # same zone, shifted by a fraction of a pixel
        ("26915", 45.0, -93.2, "bilinear"),  # NAD83 source, WGS84 target
        ("26915", 45.02, -93.25, "nearest"),
    ],
)
def test_resampled_read_matches_reprojecting_the_whole_file(
    sources: dict[str, Path], source: str, lat: float, lon: float, resampling: str
) -> None:
    path = sources[source]
    grid = TargetGrid.around(lat, lon, 10.0, 128)
    if source == "32633":  # shift the corner off the source grid
        grid = TargetGrid(grid.crs, grid.transform @ Affine.translation(0.37, 0.61), 128, 128)
    patch = read_patch(str(path), grid, resampling)
    assert not patch.aligned and patch.overview_level is None
    np.testing.assert_array_equal(patch.array, reference(path, grid, resampling))


@pytest.mark.parametrize(
    ("gsd", "level"), [(15.0, None), (20.0, 0), (30.0, 0), (40.0, 1), (60.0, 1), (200.0, 1)]
)
def test_coarse_targets_read_the_coarsest_overview_still_fine_enough(
    sources: dict[str, Path], gsd: float, level: int | None
) -> None:
    path = sources["32632"]
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]
    grid = TargetGrid.around(48.0, 12.01, gsd, 32)
    with DatasetCache() as cache:
        patch = read_patch(str(path), grid, "bilinear", cache=cache)
        opened = cache.keys()
    assert patch.overview_level == level
    assert (str(path), level) in opened
    np.testing.assert_array_equal(patch.array, reference(path, grid, "bilinear", level))
    if level is not None:  # and it is not what the full resolution would give
        assert not np.array_equal(patch.array, reference(path, grid, "bilinear"))


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20 m SCL-like class raster whose overviews were averaged (inventing class codes)."""
    rng = np.random.default_rng(1)
    # 5 px patches straddle the 2×2 cells the overviews average, so averaging mixes classes.
    blocks = rng.choice(np.array([4, 5, 6, 8, 9], dtype=np.uint8), size=(1, 128, 128))
    array = np.kron(blocks, np.ones((1, 5, 5), dtype=np.uint8))
    array[:, :, :40] = 0
    corner = utm_corner(32632, 11.96, 48.0, 20, size=640)
    path = tmp_path_factory.mktemp("classes") / "scl.tif"
    return write_raster(path, array, 32632, corner, 20, 0)


@pytest.mark.parametrize(("lat", "lon", "gsd"), [(48.0, 12.02, 10.0), (48.0, 11.9, 60.0)])
def test_nearest_keeps_only_the_source_class_values(
    classes: Path, lat: float, lon: float, gsd: float
) -> None:
    with rasterio.open(classes, overview_level=0) as overview:  # the test's premise
        assert set(np.unique(overview.read())) - {0, 4, 5, 6, 8, 9}
    grid = TargetGrid.around(lat, lon, gsd, 64)
    patch = read_patch(str(classes), grid, "nearest")
    assert patch.overview_level is None
    assert set(np.unique(patch.array)) <= {0, 4, 5, 6, 8, 9}
    assert len(np.unique(patch.array)) >= 4


def test_nodata_propagates_from_holes_and_from_outside_the_footprint(
    sources: dict[str, Path],
) -> None:
    path = sources["32633"]
    epsg, transform = source_grid(path)
    # Half-pixel offset: bilinear everywhere. The grid starts 40 px west of the file (outside),
    # covers the 80 px nodata strip, and the 60 px hole at rows/cols 500-560.
    grid = TargetGrid(epsg, transform @ Affine.translation(-40.5, 449.5), 640, 160)
    patch = read_patch(str(path), grid, "bilinear")
    band = patch.array[0]
    assert patch.nodata == 0
    assert (band[:, :118] == 0).all()  # outside the file, then the nodata strip
    assert (band[55:105, 545:595] == 0).all()  # inside the hole
    assert (band[:, 125:535] > 0).all() and (band[:, 610:] > 0).all()
    np.testing.assert_array_equal(patch.array, reference(path, grid, "bilinear"))


def test_grid_outside_the_source_is_all_nodata(sources: dict[str, Path]) -> None:
    grid = TargetGrid.around(48.0, 15.5, 10.0, 32)  # 100 km east of the source
    patch = read_patch(str(sources["32633"]), grid)
    assert patch.nodata == 0 and not patch.array.any()
    assert patch.array.shape == (2, 32, 32)


@pytest.mark.parametrize("shift", [0.0, 0.5])  # aligned copy, warp
@pytest.mark.parametrize(
    ("dtype", "given", "expected"),
    [("uint16", None, 0), ("uint16", 65535, 65535), ("float32", None, np.nan)],
)
def test_sources_without_nodata_get_a_fill_value(
    tmp_path: Path, dtype: str, given: float | None, expected: float, shift: float
) -> None:
    array = np.full((1, 64, 64), 7, dtype=dtype)
    path = write_raster(tmp_path / "plain.tif", array, 32633, (500000, 5300000), 10, None)
    grid = TargetGrid(32633, Affine(10, 0, 500000 - 100 + shift * 10, 0, -10, 5300000), 32, 32)
    patch = read_patch(str(path), grid, nodata=given)
    assert patch.aligned == (shift == 0)
    np.testing.assert_equal(patch.nodata, expected)
    np.testing.assert_equal(patch.array[0, :, :9], expected)
    assert (patch.array[0, :-1, 11:] == 7).all()
    assert patch.nodata_chosen == (given is None)  # the grid reaches past the footprint


@pytest.mark.parametrize("shift", [0.0, 0.5])  # aligned copy, warp
def test_a_source_without_nodata_inside_its_footprint_has_none(tmp_path: Path, shift) -> None:
    """NAIP declares no nodata: its black pixels are data, never turned into nodata."""
    array = np.random.default_rng(0).integers(0, 3, (4, 64, 64)).astype("uint8")
    array[:, :16, :16] = 0  # a black corner
    path = write_raster(tmp_path / "naip.tif", array, 32633, (500000, 5300000), 10, None)
    grid = TargetGrid(32633, Affine(10, 0, 500100 + shift * 10, 0, -10, 5299900), 32, 32)
    patch = read_patch(str(path), grid, "bilinear")
    assert patch.nodata is None and not patch.nodata_chosen
    np.testing.assert_array_equal(patch.array, reference(path, grid, "bilinear"))


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    grid = TargetGrid(32633, Affine(10, 0, 0, 0, -10, 0), 4, 4)
    with pytest.raises(SourceError, match="missing.tif"):
        read_patch(str(tmp_path / "missing.tif"), grid)


def test_unknown_resampling_is_a_user_error(sources: dict[str, Path]) -> None:
    grid = TargetGrid(32633, Affine(10, 0, 0, 0, -10, 0), 4, 4)
    with pytest.raises(UserError, match="resampling"):
        read_patch(str(sources["32633"]), grid, "gauss")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The dataset cache


def test_cache_evicts_and_closes_the_least_recently_used(sources: dict[str, Path]) -> None:
    paths = [str(sources[name]) for name in ("32632", "32633", "26915")]
    with DatasetCache(max_open=2) as cache:
        with cache.dataset(paths[0]) as first:
            pass
        with cache.dataset(paths[1]):
            pass
        with cache.dataset(paths[0]) as again:  # refreshes paths[0]
            assert again is first
        with cache.dataset(paths[2]):
            pass
        assert cache.keys() == [(paths[0], None), (paths[2], None)]
        assert not first.closed
    assert first.closed and len(cache) == 0


def test_cache_keeps_within_its_memory_budget(sources: dict[str, Path]) -> None:
    paths = [str(sources[name]) for name in ("32632", "32633", "26915")]
    with DatasetCache() as unbounded:
        for path in paths:
            with unbounded.opened(path) as entry:
                # 256-px blocks of two bands: the dataset, its own raw and decoded blocks
                assert entry.info.block_bytes == 256 * 256 * 2 * 2
                assert entry.bytes == OPEN_DATASET_BYTES + 2 * entry.info.block_bytes
        assert len(unbounded) == 3 and unbounded.opens == 3
        two = sum(entry_bytes(unbounded, path) for path in paths[1:])
    with DatasetCache(max_bytes=two) as cache:
        for path in [*paths, paths[2]]:
            with cache.dataset(path):
                pass
        assert cache.keys() == [(paths[1], None), (paths[2], None)]
        assert cache.bytes == two and cache.opens == 3  # the repeated read reused its dataset
    with DatasetCache(max_bytes=0) as tiny:  # always one, however small the budget
        for path in paths:
            with tiny.dataset(path):
                pass
        assert len(tiny) == 1


def entry_bytes(cache: DatasetCache, path: str) -> int:
    with cache.opened(path) as entry:
        return entry.bytes


@pytest.mark.parametrize("window", [(0, 0, 48, 48), (-10, 1000, 48, 48), (1000, -5, 48, 48)])
def test_window_reads_equal_rasterio_read(sources: dict[str, Path], window) -> None:
    """read_patch reads through rasterio's lower-level `_read` (no mask-flag query per read):
    the same pixels as `read()`, inside the file and across its edges."""
    path = sources["32633"]
    with rasterio.open(path) as src:
        col, row, width, height = window
        t = src.transform
        grid = TargetGrid(32633, Affine(t.a, 0, t.c + col * t.a, 0, t.e, t.f + row * t.e), 48, 48)
        expected = src.read(
            window=rasterio.windows.Window(col, row, width, height), boundless=True, fill_value=0
        )
    patch = read_patch(str(path), grid)
    assert patch.aligned
    np.testing.assert_array_equal(patch.array, expected)


# rasterio hides this warning of its scratch in-memory datasets with warnings.catch_warnings(),
# which is not thread-safe, so concurrent reprojections now and then let it through.
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_cache_is_safe_across_threads(sources: dict[str, Path], classes: Path) -> None:
    jobs = [
        (str(path), TargetGrid.around(lat, lon, gsd, 48))
        for path in [*sources.values(), classes]
        for lat, lon, gsd in [(48.0, 12.02, 10.0), (45.0, -93.2, 10.0), (48.0, 14.0, 20.0)]
    ]
    expected = [read_patch(href, grid).array for href, grid in jobs]
    with DatasetCache(max_open=2) as cache, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: read_patch(*job, cache=cache).array, jobs * 4))
    for index, array in enumerate(results):
        np.testing.assert_array_equal(array, expected[index % len(jobs)])


def test_gdal_env_defaults_and_overrides() -> None:
    env = gdal_env(GDAL_HTTP_MAX_RETRY="0", GDAL_HTTP_PROXY="http://127.0.0.1:9")
    assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert ".tif" in env["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"].split(",")
    assert env["GDAL_HTTP_MULTIRANGE"] == env["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert env["VSI_CACHE"] == "TRUE"
    assert env["GDAL_HTTP_MAX_RETRY"] == "0" and env["GDAL_HTTP_PROXY"] == "http://127.0.0.1:9"
    with rasterio.Env(**env):
        assert rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"] == "0"


SIGNED = "https://acct.blob.core.windows.net/c/a/b.tif?st=2025-01-01&se=2025-01-02&sig=SECRET%3D"


def test_signed_hrefs_are_stripped_for_keys_and_messages() -> None:
    assert unsigned_href(SIGNED) == "https://acct.blob.core.windows.net/c/a/b.tif"
    assert unsigned_href("/data/scene.tif") == "/data/scene.tif"
    message = f"HTTP error 403 on '/vsicurl/{SIGNED}' and on {SIGNED} (retried)"
    assert redact(message) == (
        "HTTP error 403 on '/vsicurl/https://acct.blob.core.windows.net/c/a/b.tif' "
        "and on https://acct.blob.core.windows.net/c/a/b.tif (retried)"
    )


# ---------------------------------------------------------------------------------------------
# Over HTTP, with range requests


@dataclass
class ByteCounter:
    """ASGI wrapper counting requests, Range headers and body bytes sent."""

    app: StaticFiles
    bytes_sent: int = 0
    gets: list[str | None] = field(default_factory=list)  # the Range header of each GET

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["method"] == "GET":
            self.gets.append(dict(scope["headers"]).get(b"range", b"").decode() or None)

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.body":
                self.bytes_sent += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)

    def reset(self) -> None:
        self.bytes_sent = 0
        self.gets.clear()


@dataclass
class Served:
    url: str
    root: Path
    counter: ByteCounter


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    counter = ByteCounter(StaticFiles(directory=root))
    config = uvicorn.Config(counter, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "file server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(f"http://127.0.0.1:{port}", root, counter)
    server.should_exit = True
    thread.join(10)


def http_cache() -> DatasetCache:
    return DatasetCache(env=gdal_env(GDAL_HTTP_MAX_RETRY="0", GDAL_HTTP_TIMEOUT="10"))


def test_http_read_uses_ranges_and_matches_the_local_read(
    served: Served, sources: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    (served.root / "z32.tif").write_bytes(sources["32632"].read_bytes())
    size = (served.root / "z32.tif").stat().st_size
    grid = TargetGrid.around(48.0, 12.02, 10.0, 64)
    served.counter.reset()
    caplog.set_level(logging.DEBUG)
    with http_cache() as cache:
        patch = read_patch(f"{served.url}/z32.tif?se=2030&sig=SECRET", grid, cache=cache)
        assert cache.keys() == [(f"{served.url}/z32.tif", None)]
    np.testing.assert_array_equal(patch.array, read_patch(str(sources["32632"]), grid).array)
    assert served.counter.gets and all(served.counter.gets)  # every GET asked for a range
    assert served.counter.bytes_sent < size / 4
    assert "SECRET" not in caplog.text


def test_http_coarse_read_fetches_overview_bytes_only(
    served: Served, sources: dict[str, Path]
) -> None:
    (served.root / "coarse.tif").write_bytes(sources["32632"].read_bytes())
    grid = TargetGrid.around(48.0, 11.96, 60.0, 128)  # 7.7 km: most of the 10 km file
    fetched = {}
    # Different tokens make different URLs for GDAL's cache, so each read starts cold.
    for resampling, token in [("bilinear", "a"), ("nearest", "b")]:
        served.counter.reset()
        with http_cache() as cache:
            patch = read_patch(
                f"{served.url}/coarse.tif?sig={token}", grid, resampling, cache=cache
            )
        fetched[resampling] = served.counter.bytes_sent
        assert patch.overview_level == (1 if resampling == "bilinear" else None)
    assert fetched["bilinear"] * 4 < fetched["nearest"]


def test_new_token_reopens_and_failures_hide_the_token(
    served: Served, sources: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    (served.root / "token.tif").write_bytes(sources["32633"].read_bytes())
    caplog.set_level(logging.DEBUG)
    with http_cache() as cache:
        with cache.dataset(f"{served.url}/token.tif?sig=one") as first:
            pass
        with cache.dataset(f"{served.url}/token.tif?sig=two") as second:
            assert second is not first
        assert first.closed and len(cache) == 1
        grid = TargetGrid(32633, Affine(10, 0, 0, 0, -10, 0), 4, 4)
        with pytest.raises(SourceError) as raised:
            read_patch(f"{served.url}/absent.tif?sig=SECRET", grid, cache=cache)
    assert "absent.tif" in str(raised.value) and "SECRET" not in str(raised.value)
    assert "SECRET" not in caplog.text

"""fMoW image sequences are cropped around their box, resized and georeferenced per image."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from geoprep.building.fmow import (
    BANDS,
    FmowImageReader,
    category_table,
    evenly_spread,
    image_footprint,
    slot_entries,
)
from geoprep.building.location import LocationFailed
from geoprep.core.errors import UserError
from geoprep.planning.samplers.fmow import FMOW_CATEGORIES, FmowSampler
from geoprep.recipe.sections import FmowImagesSpec

SIZE = 48
GREY, RED = (128, 128, 128), (220, 30, 30)
# A synthetic image: 200 × 150 px spanning these lon/lat bounds, the box region in red.
WIDTH, HEIGHT = 200, 150
WEST, SOUTH, EAST, NORTH = 10.0, 48.0, 10.004, 48.002
BOX = [50, 40, 60, 30]  # x, y, w, h


class Progress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


def sample_rows(root: str, splits=("train", "val")) -> list[dict]:
    sampler = FmowSampler(kind="fmow", root=root, splits=splits)
    result = sampler.sample(np.random.default_rng(0), Progress())
    return result.locations.to_dict("records")


def spec(**changes) -> FmowImagesSpec:
    return FmowImagesSpec(**({"size": SIZE} | changes))


def metres_between(lat: float, lon: float, lat2: float, lon2: float) -> float:
    east = (lon2 - lon) * 111_320 * math.cos(math.radians(lat))
    return math.hypot(east, (lat2 - lat) * 111_320)


def pixel_centre_lonlat(grid: dict, col: float, row: float) -> tuple[float, float]:
    lon, lat = Affine(*grid["transform"]) @ (col, row)
    return lat, lon


@pytest.fixture(scope="module")
def fmow_root(demo_world) -> Path:
    return demo_world / "fmow" / "fMoW-rgb"


@pytest.fixture(scope="module")
def rows(fmow_root) -> dict[str, dict]:
    return {row["fmow_location"]: row for row in sample_rows(str(fmow_root))}


@pytest.fixture(scope="module")
def reader(fmow_root) -> FmowImageReader:
    return FmowImageReader(spec(), str(fmow_root))


def synthetic(root: Path, name: str = "fountain_1", box=BOX, record_changes=None) -> dict:
    """A one-image location whose box region is red, and its sampler-shaped row."""
    folder = root / "train" / "fountain" / name
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((HEIGHT, WIDTH, 3), GREY, np.uint8)
    x, y, w, h = box
    pixels[y : y + h, x : x + w] = RED
    Image.fromarray(pixels).save(folder / f"{name}_0_rgb.jpg", quality=95)
    ring = [(WEST, NORTH), (EAST, NORTH), (EAST, SOUTH), (WEST, SOUTH), (WEST, NORTH)]
    record = {
        "gsd": 1.5,
        "img_width": WIDTH,
        "img_height": HEIGHT,
        "timestamp": "2016-05-01T10:00:00Z",
        "raw_location": "POLYGON ((" + ", ".join(f"{a} {b}" for a, b in ring) + "))",
    } | (record_changes or {})
    (folder / f"{name}_0_rgb.json").write_text(json.dumps(record))
    entry = {"path": str(folder / f"{name}_0_rgb.jpg"), "timestamp": record["timestamp"],
             "gsd": 1.5, "cloud_cover": 0, "box": box, "img_width": WIDTH,
             "img_height": HEIGHT}  # fmt: skip
    return {"id": f"fmow-train-{name}", "label": "fountain", "images": json.dumps([entry])}


# ---------------------------------------------------------------- the demo world's tree


def test_one_record_per_image_in_time_order_with_the_row_label(rows, reader):
    assert len(rows) >= 5
    for row in rows.values():
        images = reader.images(row)
        assert len(images) == row["n_images"]
        assert [im.slot for im in images] == [f"t{i}" for i in range(len(images))]
        times = [im.provenance["datetime"] for im in images]
        assert times == sorted(times)
        assert times == [e["timestamp"] for e in json.loads(row["images"])]
        assert (times[0], times[-1]) == (row["first_timestamp"], row["last_timestamp"])
        for image in images:
            assert image.sensor == "fmow" and image.bands == BANDS
            assert image.array.dtype == np.uint8 and image.shape == (3, SIZE, SIZE)
            assert (image.grid["width"], image.grid["height"]) == (SIZE, SIZE)
            split, category, location, filename = image.provenance["path"].split("/")
            assert (split, location) == (row["fmow_split"], row["fmow_location"])
            assert filename.startswith(location + "_") and filename.endswith("_rgb.jpg")
            assert category == row["label"]
        assert row["label_index"] == FMOW_CATEGORIES.index(row["label"])


def test_location_with_one_image_gives_one_record(rows, reader):
    singles = [row for row in rows.values() if row["n_images"] == 1]
    assert singles, "the tiny world has single-image locations"
    for row in singles:
        (image,) = reader.images(row)
        assert image.slot == "t0"
        assert slot_entries([image])["t0"]["start"] == image.provenance["datetime"][:10]


def test_grid_maps_the_crop_centre_to_the_location(rows, reader):
    for row in rows.values():
        for image in reader.images(row):
            lat, lon = pixel_centre_lonlat(image.grid, SIZE / 2, SIZE / 2)
            # the row's point is the box centroid; the north-up approximation costs a few metres
            assert metres_between(row["lat"], row["lon"], lat, lon) < 10, row["id"]
            side = image.provenance["crop"][2]
            assert image.grid["gsd"] == pytest.approx(image.provenance["gsd"] * side / SIZE)
            assert image.grid["crs"] == "EPSG:4326"


def test_max_images_keeps_first_last_and_evenly_between(rows, fmow_root):
    row = max(rows.values(), key=lambda r: r["n_images"])
    assert row["n_images"] >= 4
    images = FmowImageReader(spec(max_images=3), str(fmow_root)).images(row)
    listed = [e["timestamp"] for e in json.loads(row["images"])]
    chosen = evenly_spread(len(listed), 3)
    assert [im.provenance["datetime"] for im in images] == [listed[i] for i in chosen]
    assert [im.slot for im in images] == ["t0", "t1", "t2"]


@pytest.mark.parametrize(
    ("count", "keep", "expected"),
    [(6, 3, [0, 2, 5]), (6, 2, [0, 5]), (4, 1, [0]), (3, 5, [0, 1, 2]), (5, None, [0, 1, 2, 3, 4])],
)
def test_evenly_spread(count, keep, expected):
    assert evenly_spread(count, keep) == expected


def test_footprint_from_the_box_when_the_image_has_none(fmow_root):
    path = next(fmow_root.glob("train/stadium/*/*_0_rgb.json"))
    record = json.loads(path.read_text())
    width, height = record["img_width"], record["img_height"]
    exact = image_footprint(record, width, height)
    record.pop("raw_location")
    estimate = image_footprint(record, width, height)
    dx, dy = exact.pixel_size(width, height)
    # the pixel box is rounded to whole pixels: the extrapolation is good to a few pixels
    assert abs(estimate.west - exact.west) < 3 * dx and abs(estimate.north - exact.north) < 3 * dy
    record["bounding_boxes"] = []
    assert image_footprint(record, width, height) is None


# ---------------------------------------------------------------- crop geometry


@pytest.mark.parametrize("context", [0.0, 0.5, 1.0])
def test_crop_is_a_square_centred_on_the_box(tmp_path, context):
    row = synthetic(tmp_path)
    (image,) = FmowImageReader(spec(context=context), str(tmp_path)).images(row)
    red = np.all(np.abs(image.array.astype(int) - np.array(RED)[:, None, None]) < 40, axis=0)
    rows_hit, cols_hit = np.nonzero(red)
    # the box's longer side (60 px) spans 1 / (1 + 2 context) of the crop, centred
    span = SIZE / (1 + 2 * context)
    assert cols_hit.max() - cols_hit.min() + 1 == pytest.approx(span, abs=2)
    assert rows_hit.max() - rows_hit.min() + 1 == pytest.approx(span / 2, abs=2)
    assert (cols_hit.min() + cols_hit.max() + 1) / 2 == pytest.approx(SIZE / 2, abs=1)
    assert (rows_hit.min() + rows_hit.max() + 1) / 2 == pytest.approx(SIZE / 2, abs=1)
    # the box's corners are where the image footprint puts them
    dx, dy = (EAST - WEST) / WIDTH, (NORTH - SOUTH) / HEIGHT
    lat, lon = pixel_centre_lonlat(image.grid, cols_hit.min(), rows_hit.min())
    assert lon == pytest.approx(WEST + BOX[0] * dx, abs=1.5 * dx * (1 + 2 * context))
    assert lat == pytest.approx(NORTH - BOX[1] * dy, abs=1.5 * dy * (1 + 2 * context))


def test_crop_past_the_image_edge_is_zero_filled(tmp_path):
    # a 60 px box with 0.5 context needs a 120 px square; centred at y = 55 it starts at y = -5
    row = synthetic(tmp_path)
    (image,) = FmowImageReader(spec(size=120, context=0.5), str(tmp_path)).images(row)
    assert image.provenance["crop"] == [20.0, -5.0, 120.0, 120.0]
    assert image.provenance["nodata_fraction"] == pytest.approx(5 / 120)
    assert image.array[:, :4].max() == 0
    assert image.array[:, 6:].max(axis=0).min() > 60  # every pixel below the fill is lit
    assert image.grid["transform"][5] == pytest.approx(NORTH + 5 * (NORTH - SOUTH) / HEIGHT)


def test_image_without_box_is_taken_whole(tmp_path):
    row = synthetic(tmp_path, box=BOX)
    entries = json.loads(row["images"])
    entries[0]["box"] = None
    (image,) = FmowImageReader(spec(), str(tmp_path)).images(row | {"images": json.dumps(entries)})
    assert image.provenance["crop"] == [0.0, -25.0, 200.0, 200.0]


# ---------------------------------------------------------------- fMoW-full TIFFs


def tiff_row(root: Path, dtype: str, values: tuple[int, ...]) -> dict:
    """The synthetic location as an fMoW-full TIFF: the box has ``values``, the rest 0."""
    row = synthetic(root)
    jpeg = Path(json.loads(row["images"])[0]["path"])
    tiff = jpeg.with_suffix(".tif")
    data = np.zeros((len(values), HEIGHT, WIDTH), dtype)
    x, y, w, h = BOX
    data[:, y : y + h, x : x + w] = np.array(values, dtype)[:, None, None]
    with rasterio.open(tiff, "w", driver="GTiff", width=WIDTH, height=HEIGHT,
                       count=len(values), dtype=dtype, crs="EPSG:4326",
                       transform=Affine(1e-5, 0, WEST, 0, -1e-5, NORTH)) as dst:  # fmt: skip
        dst.write(data)
    jpeg.unlink()
    entries = [json.loads(row["images"])[0] | {"path": str(tiff)}]
    return row | {"images": json.dumps(entries)}


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        ("uint8", (200, 120, 40), (200, 120, 40)),  # rgb: red, green, blue
        ("uint16", (2047, 1023, 511, 100), (64, 127, 255)),  # ms: blue, green, red, nir
        ("uint16", (9, 2047, 1023, 7, 511, 6, 5, 4), (64, 127, 255)),  # 8-band WorldView
    ],
)
@pytest.mark.parametrize("size", [SIZE, 12])  # 12: the window is read decimated
def test_tiff_bands_become_rgb_around_the_box(tmp_path, dtype, values, expected, size):
    row = tiff_row(tmp_path, dtype, values)
    (image,) = FmowImageReader(spec(size=size, context=0.5), str(tmp_path)).images(row)
    assert image.array.dtype == np.uint8 and image.shape == (3, size, size)
    assert tuple(image.array[:, size // 2, size // 2]) == expected
    # the box is half the crop wide (edge pixels blend with the background: count the bright)
    lit_columns = np.nonzero(image.array.max(axis=(0, 1)) >= max(expected) / 2)[0]
    assert len(lit_columns) == pytest.approx(size / 2, abs=1.5)
    assert image.provenance["path"] == "train/fountain/fountain_1/fountain_1_0_rgb.tif"


def test_tiff_from_memory_and_corrupt_tiff(tmp_path):
    row = tiff_row(tmp_path, "uint8", (200, 120, 40))
    base = f"/fmow-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        for path in tmp_path.rglob("*.*"):
            fs.pipe_file(f"{base}/{path.relative_to(tmp_path).as_posix()}", path.read_bytes())
        (image,) = FmowImageReader(spec(), f"memory://{base}").images(row)
        assert tuple(image.array[:, SIZE // 2, SIZE // 2]) == (200, 120, 40)
    finally:
        fs.rm(base, recursive=True)
    Path(json.loads(row["images"])[0]["path"]).write_bytes(b"II*\x00 broken")
    with pytest.raises(LocationFailed, match="1 undecodable"):
        FmowImageReader(spec(), str(tmp_path)).images(row)


# ---------------------------------------------------------------- fsspec roots


def test_file_url_root_reads_the_same(rows, reader, fmow_root):
    row = rows["stadium_0"]
    by_url = FmowImageReader(spec(), fmow_root.as_uri()).images(row)
    for local, remote in zip(reader.images(row), by_url, strict=True):
        np.testing.assert_array_equal(local.array, remote.array)
        assert local.provenance == remote.provenance and local.grid == remote.grid


@pytest.fixture
def memory_root(fmow_root):
    """The demo tree copied into fsspec's memory filesystem."""
    fs = fsspec.filesystem("memory")
    base = f"/fmow-{uuid.uuid4().hex[:8]}/fMoW-rgb"
    for path in fmow_root.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{base}/{path.relative_to(fmow_root).as_posix()}", path.read_bytes())
    yield f"memory://{base}"
    fs.rm(base.rsplit("/", 1)[0], recursive=True)


def test_memory_root_with_its_own_rows_and_with_rows_of_another_copy(memory_root, rows, reader):
    memory_rows = {row["fmow_location"]: row for row in sample_rows(memory_root)}
    assert json.loads(memory_rows["stadium_0"]["images"])[0]["path"].startswith("memory://")
    in_memory = FmowImageReader(spec(), memory_root)
    for row in (memory_rows["stadium_0"], rows["stadium_0"]):  # rows of the local copy too
        for local, remote in zip(reader.images(rows["stadium_0"]), in_memory.images(row),
                                 strict=True):  # fmt: skip
            np.testing.assert_array_equal(local.array, remote.array)
            assert local.provenance["path"] == remote.provenance["path"]


# ---------------------------------------------------------------- bad images


@pytest.fixture
def three_image_copy(tmp_path, fmow_root, rows) -> tuple[Path, dict]:
    """A copy of the first training location (by category, name) with three images."""
    three = sorted(
        (row["label"], name)
        for name, row in rows.items()
        if row["n_images"] == 3 and (fmow_root / "train" / row["label"] / name).is_dir()
    )
    assert three, "the tiny world has a training location with three images"
    category, name = three[0]
    shutil.copytree(fmow_root / "train" / category / name, tmp_path / "train" / category / name)
    (row,) = sample_rows(str(tmp_path), splits=("train",))
    assert row["n_images"] == 3
    return tmp_path, row


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"), "undecodable"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]), "undecodable"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.with_suffix(".json").write_text("{}"), "no_footprint"),
    ],
    ids=["garbage", "truncated", "missing", "json_without_footprint"],
)
def test_bad_image_is_skipped_and_counted(three_image_copy, damage, reason):
    root, row = three_image_copy
    listed = json.loads(row["images"])
    damage(Path(listed[1]["path"]))
    sequence = FmowImageReader(spec(), str(root)).read(row)
    assert sequence.skipped == {reason: 1}
    assert [im.slot for im in sequence.images] == ["t0", "t1"]
    kept = [listed[0]["timestamp"], listed[2]["timestamp"]]
    assert [im.provenance["datetime"] for im in sequence.images] == kept


def test_location_without_readable_images_fails(three_image_copy):
    root, row = three_image_copy
    for entry in json.loads(row["images"]):
        Path(entry["path"]).write_bytes(b"corrupt")
    with pytest.raises(LocationFailed) as failure:
        FmowImageReader(spec(), str(root)).images(row)
    assert failure.value.reason == "no_images" and "3 undecodable" in failure.value.detail


def test_root_that_is_not_a_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        FmowImageReader(spec(), str(tmp_path / "absent"))


def test_category_table_lists_the_62_categories_in_index_order():
    table = category_table()
    assert len(table) == 62
    assert [entry["index"] for entry in table] == list(range(62))
    assert table[FMOW_CATEGORIES.index("stadium")] == {"index": 51, "name": "stadium"}

"""The fmow sampler reads location sequences from an fMoW-shaped tree, locally or via fsspec."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import fsspec
import numpy as np
import pydantic
import pytest

from geoprep.core.errors import UserError
from geoprep.planning.samplers.fmow import FMOW_CATEGORIES, FmowSampler, fmow_class_index

RECORD = json.loads(
    (
        Path(__file__).parents[1] / "fixtures/fmow/fountain_514_1_rgb.thirdparty_record.json"
    ).read_text()
)
# Keys the third party added to the record; the dataset's own JSONs lack them.
THIRD_PARTY_KEYS = ("image_url", "geometry", "coordinates", "category")
BOX_CENTRE = (47.449046370946153, 8.5831461624051996)  # midpoint of the box raw_location
FOOTPRINT_CENTRE = (47.4490394778, 8.5830818)  # midpoint of the image raw_location


class Progress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


def record(category: str, **changes) -> dict:
    """A per-image JSON in the dataset's schema, derived from the recorded one."""
    result = {k: v for k, v in copy.deepcopy(RECORD).items() if k not in THIRD_PARTY_KEYS}
    for box in result["bounding_boxes"]:
        box["category"] = category
    result.update(changes)
    return result


def write_image(
    root: Path, split: str, location: str, k: int, body: dict | str, variant: str = "rgb",
    image: bool = True,
) -> None:  # fmt: skip
    category = location.rsplit("_", 1)[0]
    folder = root / split / category / location
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{location}_{k}_{variant}"
    text = body if isinstance(body, str) else json.dumps(body)
    (folder / f"{stem}.json").write_text(text)
    if image:
        (folder / f"{stem}.jpg").write_bytes(b"\xff\xd8\xff")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "fMoW-rgb"
    # Three images stored out of time order, plus a msrgb sibling of one of them.
    for k, timestamp in [(0, "2015-07-01T10:00:00Z"), (1, "2012-04-02T10:32:22Z"),
                         (2, "2014-01-15T09:00:00Z")]:  # fmt: skip
        write_image(root, "train", "fountain_514", k, record("fountain", timestamp=timestamp))
    write_image(root, "train", "fountain_514", 0, record("fountain", gsd=1.9), variant="msrgb")
    # One image whose bounding_boxes is a single object; its image file is not in the listing.
    single = record("airport", country_code="USA")
    single["bounding_boxes"] = single["bounding_boxes"][0]
    write_image(root, "train", "airport_7", 0, single, image=False)
    # Boxes without raw_location: the image footprint locates it; its second JSON is corrupt.
    no_box_location = record("zoo")
    for box in no_box_location["bounding_boxes"]:
        box.pop("raw_location", None)
    write_image(root, "val", "zoo_3", 0, no_box_location)
    write_image(root, "val", "zoo_3", 1, '{"gsd": 0.5, "timestamp": ')
    write_image(root, "val", "zoo_4", 0, "not json at all")
    unlocated = record("park", raw_location=None)
    unlocated["bounding_boxes"] = [{"ID": 1, "box": [1, 2, 3, 4], "category": "park"}]
    write_image(root, "val", "park_9", 0, unlocated)
    write_image(root, "train", "false_detection_1", 0, record("false_detection"))
    return root


def sample(root: str | Path, seed: int = 0, **overrides):
    config = FmowSampler(**({"kind": "fmow", "root": str(root)} | overrides))
    return config.sample(np.random.default_rng(seed), Progress())


def test_locations_with_time_ordered_sequences(tree: Path) -> None:
    result = sample(tree)
    rows = result.locations.set_index("id")

    assert list(rows.index) == ["fmow-train-airport_7", "fmow-train-fountain_514", "fmow-val-zoo_3"]
    assert result.dropped == {
        "invalid_json": 2, "no_valid_images": 1, "no_location": 1, "unknown_category": 1,
    }  # fmt: skip
    fountain = rows.loc["fmow-train-fountain_514"]
    images = json.loads(fountain.images)
    assert [Path(im["path"]).name for im in images] == [
        "fountain_514_1_rgb.jpg", "fountain_514_2_rgb.jpg", "fountain_514_0_rgb.jpg",
    ]  # fmt: skip
    assert (fountain.first_timestamp, fountain.last_timestamp) == (
        "2012-04-02T10:32:22Z", "2015-07-01T10:00:00Z",
    )  # fmt: skip
    assert images[0] == {
        "path": str(tree / "train/fountain/fountain_514/fountain_514_1_rgb.jpg"),
        "timestamp": "2012-04-02T10:32:22Z", "gsd": 0.468074887991, "cloud_cover": 0,
        "box": [466, 299, 72, 60], "img_width": 977, "img_height": 663,
    }  # fmt: skip
    assert fountain.n_images == 3 and fountain.country_code == "CHE"
    assert (fountain.label, fountain.label_index, fountain.fmow_split) == ("fountain", 19, "train")
    assert (fountain.lat, fountain.lon) == pytest.approx(BOX_CENTRE, abs=1e-9)
    assert set(rows.source) == {"fmow"}


def test_single_box_object_and_missing_image_file(tree: Path) -> None:
    airport = sample(tree).locations.set_index("id").loc["fmow-train-airport_7"]
    (image,) = json.loads(airport.images)
    assert image["box"] == [466, 299, 72, 60]
    assert image["path"].endswith("airport_7/airport_7_0_rgb.jpg")
    assert (airport.lat, airport.lon) == pytest.approx(BOX_CENTRE, abs=1e-9)
    assert (airport.country_code, airport.label_index) == ("USA", 0)


def test_footprint_centroid_when_boxes_have_no_location(tree: Path) -> None:
    zoo = sample(tree).locations.set_index("id").loc["fmow-val-zoo_3"]
    assert zoo.n_images == 1
    assert (zoo.lat, zoo.lon) == pytest.approx(FOOTPRINT_CENTRE, abs=1e-9)
    assert zoo.lat != pytest.approx(BOX_CENTRE[0], abs=1e-9)


def test_variant_selects_the_image_jsons(tree: Path) -> None:
    result = sample(tree, variant="msrgb")
    assert list(result.locations.id) == ["fmow-train-fountain_514"]
    (image,) = json.loads(result.locations.images[0])
    assert image["path"].endswith("fountain_514_0_msrgb.jpg") and image["gsd"] == 1.9


@pytest.mark.parametrize(
    ("overrides", "ids"),
    [
        ({"splits": ["val"]}, ["fmow-val-zoo_3"]),
        ({"categories": ["zoo", "airport"]}, ["fmow-train-airport_7", "fmow-val-zoo_3"]),
        ({"categories": ["zoo"], "splits": ["train"]}, []),
    ],
)
def test_split_and_category_filters(tree: Path, overrides: dict, ids: list[str]) -> None:
    assert list(sample(tree, **overrides).locations.id) == ids


def test_cap_is_a_seeded_deterministic_choice(tree: Path) -> None:
    first, again = sample(tree, seed=3, n=2), sample(tree, seed=3, n=2)
    assert len(first.locations) == 2
    assert first.locations.equals(again.locations) and first.dropped == again.dropped
    assert first.locations.id.is_monotonic_increasing
    chosen = {tuple(sample(tree, seed=s, n=1).locations.id) for s in range(16)}
    assert len(chosen) > 1
    assert sum(first.dropped.values()) - first.dropped["invalid_json"] + 2 == 6


def test_fsspec_urls_read_the_same_tree(tree: Path) -> None:
    local = sample(tree)
    assert sample(f"file://{tree}").locations.equals(local.locations)

    memory = fsspec.filesystem("memory")
    for path in tree.rglob("*"):
        if path.is_file():
            memory.pipe(f"/fmow-copy/{path.relative_to(tree).as_posix()}", path.read_bytes())
    try:
        remote = sample("memory://fmow-copy")
    finally:
        memory.rm("/fmow-copy", recursive=True)
    assert remote.dropped == local.dropped
    columns = [c for c in local.locations.columns if c != "images"]
    assert remote.locations[columns].equals(local.locations[columns])
    paths = [im["path"] for cell in remote.locations.images for im in json.loads(cell)]
    assert paths[0] == "memory:///fmow-copy/train/airport/airport_7/airport_7_0_rgb.jpg"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"splits": ["train"]}, "no split folder 'train'"), ({"root": "/no/such/dir"}, "not a dir")],
)
def test_missing_folders_are_user_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    write_image(tmp_path, "val", "zoo_3", 0, record("zoo"))
    with pytest.raises(UserError, match=message):
        sample(overrides.pop("root", tmp_path), **overrides)


@pytest.mark.parametrize(
    "overrides", [{"categories": ["fountains"]}, {"variant": "pan"}, {"splits": ["test"]}]
)
def test_bad_config_is_rejected(overrides: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        FmowSampler(**({"kind": "fmow", "root": "x"} | overrides))


def test_category_list_and_class_index() -> None:
    assert len(FMOW_CATEGORIES) == len(set(FMOW_CATEGORIES)) == 62
    assert (FMOW_CATEGORIES[0], FMOW_CATEGORIES[-1]) == ("airport", "zoo")
    assert fmow_class_index("fountain") == 19
    assert fmow_class_index("multi-unit_residential") == 30
    assert [fmow_class_index(c) for c in FMOW_CATEGORIES] == list(range(62))
    with pytest.raises(ValueError, match="false_detection"):
        fmow_class_index("false_detection")


@pytest.mark.parametrize(
    ("release", "variant", "suffix"),
    [("fMoW-rgb", "rgb", ".jpg"), ("fMoW-rgb", "msrgb", ".jpg"),
     ("fMoW-full", "ms", ".tif"), ("fMoW-full", "rgb", ".tif")],
)  # fmt: skip
def test_recorded_release_layouts_are_read(
    tmp_path: Path, release: str, variant: str, suffix: str
) -> None:
    listing = (Path(__file__).parents[1] / "fixtures/fmow/directory_layout_sample.tsv").read_text()
    for line in listing.splitlines():
        if line.startswith("#"):
            continue
        path = tmp_path / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        category = path.parent.parent.name
        path.write_text(json.dumps(record(category)) if path.suffix == ".json" else "")
    result = sample(tmp_path / release, splits=["val"], variant=variant)

    assert list(result.locations.id) == ["fmow-val-airport_hangar_195", "fmow-val-fountain_112"]
    paths = [im["path"] for cell in result.locations.images for im in json.loads(cell)]
    assert len(paths) == 3  # airport_hangar_195 has image 1 only, fountain_112 images 0 and 1
    assert all(p.endswith(f"_{variant}{suffix}") and Path(p).is_file() for p in paths)

"""The demo world's OSM, Radio Aporee and fMoW parts, read back by the samplers that use them."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import osmium
import pytest
import soundfile
from PIL import Image
from shapely.geometry import Point, box

from geoprep.demo import sounds
from geoprep.demo.aporee_world import build_aporee, read_manifest
from geoprep.demo.archive_server import ArchiveStandIn
from geoprep.demo.fmow_world import CATEGORY_OF_CLASS, CHANGED_BUILT_UP, build_fmow
from geoprep.demo.landscape import build_truth
from geoprep.demo.osm_world import (
    EXTRACT_NAME,
    build_osm,
    class_tags,
    mapping_noise,
    osm_part,
    truth_features,
    truth_fid,
)
from geoprep.demo.overpass_server import OverpassStandIn
from geoprep.demo.servers import OPTIONAL_SERVICES
from geoprep.demo.truth import CHANGE_YEAR, CSF_CLASSES, YEARS, Truth
from geoprep.planning.overpass import features_from_elements
from geoprep.planning.samplers.aporee import AporeeSampler
from geoprep.planning.samplers.fmow import FMOW_CATEGORIES, FmowSampler
from geoprep.planning.samplers.osm import OsmSamplerConfig

SEED = 3
Builder = Callable[[Truth, Path, np.random.Generator], dict]


class Progress:
    def __init__(self) -> None:
        self.advanced, self.total = 0, None

    def advance(self, n: int = 1) -> None:
        self.advanced += n

    def set_total(self, total: int | None) -> None:
        self.total = total


@pytest.fixture(scope="module")
def truth() -> Truth:
    return build_truth(SEED, "tiny")


def build(builder: Builder, truth: Truth, out: Path) -> tuple[Path, dict, Progress]:
    progress = Progress()
    summary = builder(truth, out, np.random.default_rng([SEED, 1]), progress)
    return out, summary, progress


@pytest.fixture(scope="module")
def osm_world(truth, tmp_path_factory) -> Path:
    return build(build_osm, truth, tmp_path_factory.mktemp("osm"))[0]


@pytest.fixture(scope="module")
def aporee_world(truth, tmp_path_factory) -> Path:
    return build(build_aporee, truth, tmp_path_factory.mktemp("aporee"))[0]


@pytest.fixture(scope="module")
def fmow_world(truth, tmp_path_factory) -> Path:
    return build(build_fmow, truth, tmp_path_factory.mktemp("fmow"))[0]


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("builder", "fixture"),
    [(build_osm, "osm_world"), (build_aporee, "aporee_world"), (build_fmow, "fmow_world")],
)
def test_a_part_rebuilt_with_the_same_seed_has_the_same_bytes(
    builder: Builder, fixture: str, truth, tmp_path, request
) -> None:
    first = request.getfixturevalue(fixture)
    again, summary, progress = build(builder, truth, tmp_path)
    assert digests(again) == digests(first)
    assert progress.advanced == progress.total > 0
    json.dumps(summary)  # lands in world.json


# --- OpenStreetMap --------------------------------------------------------------------------


def osm_sampler(**source) -> OsmSamplerConfig:
    return OsmSamplerConfig(kind="osm", n=10_000, **source)


def test_extract_tags_every_class_and_maps_holes_as_multipolygons(osm_world, truth) -> None:
    found, roles = set(), Counter()
    extract = str(osm_world / "osm" / EXTRACT_NAME)
    for obj in osmium.FileProcessor(extract, osmium.osm.WAY | osmium.osm.RELATION):
        found.update((tag.k, tag.v) for tag in obj.tags)
        if obj.type_str() == "r":
            assert obj.tags["type"] == "multipolygon"
            roles.update(member.role for member in obj.members)
    assert set(class_tags().values()) <= found
    holes = sum(len(g.interiors) for g in truth.features_at(YEARS[-1]).geometry.explode())
    assert holes and roles["inner"] >= holes and roles["outer"] > 0


def test_pbf_sampler_places_every_class_inside_its_polygon(osm_world, truth) -> None:
    result = osm_sampler(source="pbf", path=osm_world / "osm" / EXTRACT_NAME).sample(
        np.random.default_rng(0), Progress()
    )
    rows = result.locations
    assert set(rows["label"]) == set(CSF_CLASSES)
    geometry = truth.features.set_index("fid").geometry
    with_holes = 0
    for row in rows.itertuples():
        polygon = geometry[truth_fid(row.osm_type, row.osm_id)]
        assert polygon.contains(Point(row.lon, row.lat)), row.id
        with_holes += any(getattr(p, "interiors", ()) for p in getattr(polygon, "geoms", [polygon]))
    assert with_holes > 0  # some points were placed in polygons with holes, outside the holes
    # the built-up land (landuse=residential) is not a class; each AOI's shed is too small
    assert "built_up" not in set(rows["label"])
    assert result.dropped == Counter(too_small=len(truth.aois))


def test_overpass_sampler_on_the_served_extract_agrees_with_the_pbf(osm_world, truth) -> None:
    (service,) = [s for s in OPTIONAL_SERVICES if s.part == "osm"]
    module = importlib.import_module(service.module)
    bboxes = [aoi.bounds_lonlat for aoi in truth.aois]
    with service.launch(module, osm_world / "osm") as url:
        served = osm_sampler(
            endpoint=url, bboxes=bboxes, retry_delay_s=0.01, max_retry_delay_s=0.01
        ).sample(np.random.default_rng(0), Progress())
    local = osm_sampler(source="pbf", path=osm_world / "osm" / EXTRACT_NAME).sample(
        np.random.default_rng(0), Progress()
    )
    merged = served.locations.merge(local.locations, on="id", validate="1:1")
    assert len(merged) == len(local.locations) == len(served.locations)
    assert np.allclose(merged["lat_x"], merged["lat_y"], atol=1e-7)
    assert np.allclose(merged["lon_x"], merged["lon_y"], atol=1e-7)


def test_overpass_answers_carry_the_mapping_mistakes(truth) -> None:
    rng = np.random.default_rng(0)
    features = truth_features(truth, rng) + mapping_noise(truth, rng)
    bboxes = [aoi.bounds_lonlat for aoi in truth.aois]
    with OverpassStandIn(features) as stand_in:
        result = osm_sampler(
            endpoint=stand_in.interpreter_url,
            bboxes=bboxes,
            retry_delay_s=0.01,
            max_retry_delay_s=0.01,
        ).sample(np.random.default_rng(0), Progress())
    n = len(truth.aois)
    assert result.dropped == Counter(open_way=n, too_small=n)
    assert set(result.locations["label"]) == set(CSF_CLASSES)


def test_sample_responses_have_the_overpass_envelope(osm_world, truth) -> None:
    for aoi in truth.aois:
        payload = json.loads((osm_world / "osm" / "overpass" / f"{aoi.name}.json").read_text())
        assert payload["version"] == 0.6 and payload["generator"].startswith("Overpass API")
        assert set(payload["osm3s"]) == {"timestamp_osm_base", "copyright"}
        kinds = Counter(e["type"] for e in payload["elements"])
        assert kinds["way"] > 0
        for element in payload["elements"]:
            assert {"id", "bounds", "tags"} <= set(element)
            if element["type"] == "relation":
                assert {m["role"] for m in element["members"]} <= {"outer", "inner"}
        dropped = Counter()
        areas = list(features_from_elements(payload["elements"], dropped))
        assert dropped == Counter(open_way=1) and areas
        inside = box(*aoi.bounds_lonlat)
        assert all(a.geometry.intersects(inside) for a in areas)


def test_osm_part_fits_the_world_builder(truth, tmp_path) -> None:
    from geoprep.demo.world import PartContext

    progress = Progress()
    context = PartContext(truth, tmp_path, np.random.default_rng(0), progress, "tiny", SEED)
    summary = osm_part(context)
    assert summary["ways"] + summary["relations"] == summary["features"] > 0
    assert summary["relations"] > 0 and progress.advanced == progress.total
    assert (tmp_path / "osm" / EXTRACT_NAME).is_file()


# --- Radio Aporee -----------------------------------------------------------------------------


def item(world: Path, identifier: str) -> dict:
    return json.loads((world / "aporee" / identifier / "_metadata.json").read_text())


def test_crawler_keeps_clean_items_and_drops_flawed_ones_by_reason(aporee_world) -> None:
    manifest = read_manifest(aporee_world)
    with ArchiveStandIn(aporee_world / "aporee", page_size=7) as stand_in:
        config = AporeeSampler(
            kind="aporee", proxy=stand_in.proxy_url, secure=False, backoff_s=0, order="identifier"
        )
        result = config.sample(np.random.default_rng(0), Progress())
    kept = manifest[manifest["expected_drop"] == ""]
    assert sorted(result.locations["identifier"]) == sorted(kept["identifier"])
    assert result.dropped == Counter(manifest.loc[manifest["expected_drop"] != "", "expected_drop"])
    # coordinates come from latitude/longitude, or from coverage where only it has them
    rows = result.locations.set_index("identifier")
    truth_rows = kept.set_index("identifier")
    assert np.allclose(rows["lat"], truth_rows.loc[rows.index, "lat"])
    assert np.allclose(rows["lon"], truth_rows.loc[rows.index, "lon"])
    assert "coverage_only" in set(kept["problem"]) and "too_short" in set(kept["problem"])


def test_plans_hold_as_many_recordings_as_asked_every_soundscape_in_turn(truth, monkeypatch):
    from geoprep.demo import aporee_plan

    # more than two rounds of the 15 soundscapes per AOI (the old plan stopped at two)
    monkeypatch.setitem(aporee_plan.RECORDINGS_PER_AOI, "tiny", 40)
    items = aporee_plan.plan_items(truth, np.random.default_rng(SEED))
    clean = [i for i in items if not i.problem and not i.duplicate_of]
    for aoi in truth.aois:
        here = Counter(i.soundscape for i in clean if i.aoi == aoi.name)
        assert sum(here.values()) >= 37, aoi.name  # 40 asked, a revisit, some absent classes
        for name in aporee_plan.FIRST_SOUNDSCAPES:
            assert here[name] >= 3, (aoi.name, name)
    assert len({i.identifier for i in items}) == len(items)


def test_items_have_the_archive_org_shape(aporee_world) -> None:
    manifest = read_manifest(aporee_world)
    licences = set()
    for identifier in manifest["identifier"]:
        assert re.fullmatch(r"aporee_\d+_\d+", identifier)
        body = item(aporee_world, identifier)
        metadata, files = body["metadata"], body["files"]
        assert metadata["collection"] == ["radio-aporee-maps"] and metadata["mediatype"] == "audio"
        licences.add(metadata["licenseurl"])
        for entry in files:
            data = (aporee_world / "aporee" / identifier / entry["name"]).read_bytes()
            assert entry["md5"] == hashlib.md5(data).hexdigest() and entry["size"] == str(len(data))
        derived = {e["format"]: e for e in files if e["source"] == "derivative"}
        if "VBR MP3" in derived or "Ogg Vorbis" in derived:
            (original,) = [e["name"] for e in files if e["source"] == "original"]
            assert all(e["original"] == original for e in derived.values())
    assert len(licences) >= 3


def test_audio_decodes_at_the_stated_rate_channels_and_duration(aporee_world) -> None:
    manifest = read_manifest(aporee_world)
    audible = manifest[~manifest["problem"].isin(["no_audio", "corrupt_audio"])]
    for row in audible.itertuples():
        path = aporee_world / "aporee" / row.identifier / row.original
        info = soundfile.info(path)
        assert (info.samplerate, info.channels) == (row.sample_rate, row.channels)
        assert info.duration == pytest.approx(row.duration_s, abs=0.08)
        length = next(
            e["length"]
            for e in item(aporee_world, row.identifier)["files"]
            if e["name"] == row.original
        )
        assert float(length) == pytest.approx(row.duration_s, abs=0.08)
    assert set(audible["sample_rate"]) == set(sounds.SAMPLE_RATES)
    assert set(audible["channels"]) == {1, 2}
    assert {"mp3", "ogg"} == {name.rsplit(".", 1)[1] for name in audible["original"]}


def test_the_audio_stage_has_a_too_short_and_an_undecodable_recording(aporee_world) -> None:
    manifest = read_manifest(aporee_world).set_index("problem")
    short = aporee_world / "aporee" / manifest.at["too_short", "identifier"]
    samples, rate = soundfile.read(short / manifest.at["too_short", "original"])
    # fewer samples than one 128-frame spectrogram window at hop 512 and 22,050 Hz
    assert 0 < len(samples) * 22_050 / rate < 128 * 512
    corrupt = aporee_world / "aporee" / manifest.at["corrupt_audio", "identifier"]
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.read(corrupt / manifest.at["corrupt_audio", "original"])


def spectral_shape(path: Path) -> tuple[float, float]:
    """(spectral centroid Hz, share of energy below 250 Hz) of a recording."""
    samples, rate = soundfile.read(path, always_2d=True)
    power = np.abs(np.fft.rfft(samples.mean(axis=1))) ** 2
    frequencies = np.fft.rfftfreq(len(samples), 1 / rate)
    return (frequencies * power).sum() / power.sum(), power[frequencies < 250].sum() / power.sum()


def test_recordings_sound_like_the_land_cover_they_were_made_in(aporee_world) -> None:
    manifest = read_manifest(aporee_world)
    manifest = manifest[manifest["problem"] == ""]
    shapes = {}
    for soundscape in ("water", "built_up", "forest"):
        rows = manifest[manifest["soundscape"] == soundscape]
        assert len(rows) >= 2, soundscape
        shapes[soundscape] = [
            spectral_shape(aporee_world / "aporee" / r.identifier / r.original)
            for r in rows.itertuples()
        ]
    low = {name: [share for _, share in values] for name, values in shapes.items()}
    centroid = {name: [c for c, _ in values] for name, values in shapes.items()}
    assert max(low["water"]) < 0.3 < min(low["built_up"])  # traffic rumbles, water laps
    assert min(centroid["forest"]) > 2 * max(centroid["built_up"])  # birdsong is high
    described = manifest.loc[manifest["soundscape"] == "built_up", "description"]
    assert described.str.lower().str.contains("traffic rumble").all()


def test_encoding_is_reproducible_and_ogg_checksums_are_right() -> None:
    recording = sounds.render(
        sounds.SOUNDSCAPES["forest"], 1.5, 16_000, 2, np.random.default_rng(0)
    )
    again = sounds.render(sounds.SOUNDSCAPES["forest"], 1.5, 16_000, 2, np.random.default_rng(0))
    assert np.array_equal(recording.samples, again.samples)
    for fmt in sounds.FORMATS:
        data = sounds.encode(recording, fmt, serial=42)
        assert data == sounds.encode(again, fmt, serial=42)
        decoded, rate = soundfile.read(io.BytesIO(data), always_2d=True)
        assert rate == 16_000 and decoded.shape[1] == 2
    ogg = sounds.encode(recording, "ogg", serial=42)
    # re-stamping the serial a file already has must reproduce libogg's own checksums
    assert sounds.set_ogg_serial(ogg, 42) == ogg
    assert sounds.set_ogg_serial(ogg, 7) != ogg


# --- fMoW -----------------------------------------------------------------------------------


def fmow_images(world: Path) -> list[Path]:
    return sorted((world / "fmow" / "fMoW-rgb").glob("*/*/*/*_rgb.json"))


def test_fmow_tree_has_the_dataset_layout_and_schema(fmow_world) -> None:
    pattern = re.compile(r"(train|val)/([a-z_-]+)/\2_(\d+)/\2_\3_(\d+)_rgb\.json")
    images = fmow_images(fmow_world)
    assert images
    for path in images:
        relative = path.relative_to(fmow_world / "fmow" / "fMoW-rgb").as_posix()
        match = pattern.fullmatch(relative)
        assert match and match.group(2) in FMOW_CATEGORIES, relative
        record = json.loads(path.read_text())
        with Image.open(path.with_suffix(".jpg")) as jpeg:
            assert jpeg.size == (record["img_width"], record["img_height"])
            assert max(jpeg.size) <= 400
        boxes = record["bounding_boxes"]
        boxes = [boxes] if isinstance(boxes, dict) else boxes
        x, y, w, h = boxes[0]["box"]
        assert 0 <= x and x + w <= record["img_width"] and 0 <= y and y + h <= record["img_height"]
        assert boxes[0]["category"] == match.group(2)
        assert record["utm"][-1] in "TUH" and record["timestamp"].endswith("Z")
        assert record["gsd"] > 0.3 and isinstance(record["cloud_cover"], int)


def test_fmow_sampler_reads_ordered_sequences_inside_the_aois(fmow_world, truth) -> None:
    locations = read_fmow_manifest(fmow_world)
    result = FmowSampler(kind="fmow", root=str(fmow_world / "fmow" / "fMoW-rgb")).sample(
        np.random.default_rng(0), Progress()
    )
    rows = result.locations
    assert not result.dropped and len(rows) == len(locations)
    assert set(rows["fmow_split"]) == {"train", "val"}
    assert set(rows["label"]) == set(CATEGORY_OF_CLASS.values()) | {CHANGED_BUILT_UP}
    assert rows["n_images"].between(1, 6).all() and (rows["n_images"] > 1).any()
    for row in rows.itertuples():
        times = [image["timestamp"] for image in json.loads(row.images)]
        assert times == sorted(times)
        aoi = truth.aoi(locations[(row.fmow_split, row.fmow_location)]["aoi"])
        assert box(*aoi.bounds_lonlat).contains(Point(row.lon, row.lat)), row.id


def read_fmow_manifest(world: Path) -> dict[tuple[str, str], dict]:
    import pandas as pd

    frame = pd.read_csv(world / "fmow" / "locations.csv")
    return {(r["split"], r["location"]): r for r in frame.to_dict("records")}


def test_fmow_plans_many_houses_per_town_and_most_locations_have_several_images(
    truth, monkeypatch
) -> None:
    from geoprep.demo import fmow_world as world

    monkeypatch.setitem(world.LOCATIONS_PER_CATEGORY, "tiny", 12)
    rng = np.random.default_rng(SEED)
    locations = world._choose_locations(truth, rng)
    houses = [loc for loc in locations if loc.category == "single-unit_residential"]
    towns = truth.features[
        (truth.features["cls"] == "built_up") & (truth.features["valid_from_year"] < CHANGE_YEAR)
    ]
    assert len(houses) == 12 > len(towns)  # several houses in a town, each its own location
    assert len({loc.target.wkt for loc in houses}) == 12
    counts = [len(world._acquisitions(loc, rng, "small")) for loc in locations for _ in range(20)]
    assert np.mean(np.array(counts) >= 2) > 0.75  # temporal positives for most locations


def test_changing_objects_are_seen_before_and_after_the_change(fmow_world) -> None:
    changing = [
        r for r in read_fmow_manifest(fmow_world).values() if r["category"] == CHANGED_BUILT_UP
    ]
    assert changing
    for row in changing:
        assert int(row["first"][:4]) < CHANGE_YEAR <= int(row["last"][:4])


@pytest.mark.parametrize("name", ["aporee", "fmow"])
def test_a_part_built_beside_the_others_reads_the_written_truth_to_the_same_bytes(
    name: str, truth, tmp_path
) -> None:
    import zlib

    from geoprep.demo import world

    assert name in world.BESIDE_PARTS
    truth.write(tmp_path / "truth")
    beside = world._part_beside(
        name, str(tmp_path / "truth"), str(tmp_path / "beside"), SEED, "tiny"
    )
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    progress = world._Tally(None)
    ctx = world.PartContext(truth, tmp_path / "here", rng, progress, "tiny", SEED)
    assert dict(world.WORLD_PARTS)[name](ctx) == beside
    assert digests(tmp_path / "beside") == digests(tmp_path / "here")

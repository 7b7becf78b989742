"""geoprep inspect: counts against the plan, band statistics against numpy, damaged shards."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from inspect_datasets import (
    ROWS,
    S2_BANDS,
    audio_fmow_record,
    edit_json,
    members_of,
    meta_of,
    rewrite,
    utm_grid,
    write_dataset,
)
from rasterio.io import MemoryFile

from geoprep.core.errors import UserError
from geoprep.inspect.bandstats import BandAccumulator, valid_pixels
from geoprep.inspect.dataset import inspect_dataset
from geoprep.inspect.sources import resolve_sources
from geoprep.shards.records import ImageRecord, SampleRecord

FAILED = frozenset({"loc005", "loc012"})


@pytest.fixture(scope="module")
def csf_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("csf") / "out"
    write_dataset(out, ROWS, failed=FAILED)
    return out


@pytest.fixture
def dataset(csf_dataset: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    copy = tmp_path / "data" / "out"
    shutil.copytree(csf_dataset, copy)
    return copy


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class CountingProgress:
    def __init__(self) -> None:
        self.total, self.done = None, 0

    def set_total(self, total: int | None) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.done += n


# ---------------------------------------------------------------- counts and stats


def test_counts_equal_the_plan(dataset: Path) -> None:
    progress = CountingProgress()
    result = inspect_dataset([str(dataset)], None, progress)
    built = [row for row in ROWS if row["id"] not in FAILED]
    assert result.clean, result.problems
    assert result.samples == len(built) == progress.done == progress.total
    for name in ("split", "cluster", "label", "source"):
        expected = Counter("(none)" if r[name] is None else str(r[name]) for r in built)
        assert result.counts[name] == expected, name
    assert result.counts["sensor"] == {"s2": 12, "s1": 12, "naip": 12}
    assert result.counts["slot"] == {"s2.t0": 12, "s1.t0": 12, "naip.t0": 12}
    assert [s.samples for s in result.shards] == [s.expected for s in result.shards] == [4, 3, 4, 1]
    assert result.build["failures"] == {"no_clear_scene": 2}
    assert {f["id"] for f in result.build["failed"]} == FAILED
    assert result.build["successes"] == 12 and result.build["complete"] is True
    assert result.samples_per_s > 0
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert doc["clean"] is True and doc["counts"]["split"] == {"test": 3, "train": 6, "val": 3}
    assert sorted(result.points) == sorted(
        (r["lat"], r["lon"], str(r["cluster"]), r["split"]) for r in built
    )


def decoded_pixels(dataset: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """Every band's valid pixels, decoded straight from the tars: {sensor: {band: [arrays]}}."""
    found: dict[str, dict[str, list[np.ndarray]]] = {}
    total: dict[str, dict[str, int]] = {}
    for tar_path in sorted((dataset / "shards").glob("*.tar")):
        for info, data in members_of(tar_path):
            if not info.name.endswith(".tif"):
                continue
            sensor = info.name.split(".")[1]
            with MemoryFile(data) as memory, memory.open() as src:
                array, nodata, bands = src.read(), src.nodata, src.descriptions
            for band, layer in zip(bands, array, strict=True):
                valid = np.isfinite(layer) if layer.dtype.kind == "f" else layer != nodata
                found.setdefault(sensor, {}).setdefault(band, []).append(layer[valid])
                counts = total.setdefault(sensor, {})
                counts[band] = counts.get(band, 0) + layer.size
    found["_total"] = total  # type: ignore[assignment]
    return found


def test_stats_json_matches_numpy_over_the_same_pixels(dataset: Path) -> None:
    result = inspect_dataset([str(dataset)], None)
    assert result.stats_path == str(dataset / "stats.json")
    written = json.loads((dataset / "stats.json").read_text())
    assert written == json.loads(json.dumps(result.stats))
    assert written["format"] == "geoprep-stats/1" and written["dataset"]["samples"] == 12
    pixels = decoded_pixels(dataset)
    totals = pixels.pop("_total")
    assert set(written["sensors"]) == set(pixels) == {"s2", "s1", "naip"}
    for sensor, bands in pixels.items():
        entry = written["sensors"][sensor]
        assert entry["bands"] == list(bands)
        for i, band in enumerate(entry["bands"]):
            values = np.concatenate(bands[band]).astype(np.float64)
            assert entry["mean"][i] == pytest.approx(values.mean(), rel=1e-12)
            assert entry["std"][i] == pytest.approx(values.std(), rel=1e-12)
            assert (entry["min"][i], entry["max"][i]) == (values.min(), values.max())
            assert entry["valid_pixels"][i] == values.size
            nodata = 1 - values.size / totals[sensor][band]
            assert entry["nodata_fraction"][i] == pytest.approx(nodata)
            error = entry["percentile_error"][i]
            assert error == (0.0 if sensor != "s1" else error) and error < 1e-3
            for q, column in entry["percentiles"].items():
                assert column[i] == pytest.approx(np.percentile(values, float(q)), abs=error + 1e-9)
            assert entry["p2"][i] == entry["percentiles"]["2"][i]


@pytest.mark.parametrize(
    "dtype, make",
    [
        ("uint8", lambda rng, n: rng.integers(0, 256, n)),
        ("uint16", lambda rng, n: rng.integers(0, 65536, n)),
        ("int16", lambda rng, n: rng.integers(-32768, 32768, n)),
        ("int32", lambda rng, n: rng.integers(-(10**6), 10**8, n)),
        ("float32", lambda rng, n: rng.lognormal(0, 2, n)),
        ("float64", lambda rng, n: rng.normal(0, 1e-6, n)),
    ],
)
def test_band_accumulator_merges_exactly_in_any_order(dtype: str, make: Callable) -> None:
    rng = np.random.default_rng(3)
    chunks = [make(rng, 997).astype(dtype) for _ in range(9)]
    chunks.insert(0, np.zeros(50, dtype))  # a constant first image must not fix a coarse bin width
    integer = np.dtype(dtype).kind in "iu"
    whole, left, right = (BandAccumulator(integer) for _ in range(3))
    for i, chunk in enumerate(chunks):
        whole.add(chunk)
        (left if i % 2 else right).add(chunk)
    left.merge(right)
    values = np.concatenate(chunks).astype(np.float64)
    span = values.max() - values.min()
    for stats in (whole, left):
        assert stats.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-300)
        assert stats.std == pytest.approx(values.std(), rel=1e-12)
        assert stats.histogram.error <= 4 * span / 65536
        if np.dtype(dtype).itemsize <= 2 and integer:
            assert stats.histogram.error == 0
        for q in (0, 1, 2, 50, 98, 99, 100):
            expected = np.percentile(values, q)
            assert stats.percentile(q) == pytest.approx(expected, abs=stats.histogram.error + 1e-9)


def test_nodata_and_non_finite_pixels_are_left_out() -> None:
    band = np.array([[0, 5, 7], [0, 9, 65535]], np.uint16)
    values, invalid = valid_pixels(band, 0)
    assert values.tolist() == [5, 7, 9, 65535] and invalid == 2
    floats = np.array([np.nan, np.inf, -3.0, 1.5, -9999.0], np.float32)
    values, invalid = valid_pixels(floats, -9999.0)
    assert values.tolist() == [-3.0, 1.5] and invalid == 3


# ---------------------------------------------------------------- sources


@pytest.mark.parametrize(
    "sources, stats_at",
    [
        (lambda d: [str(d)], lambda d: d / "stats.json"),
        (lambda d: [str(d / "index.json")], lambda d: d / "stats.json"),
        (
            lambda d: [str(d / "shards" / "{00000..00003}.tar")],
            lambda d: d / "shards" / "stats.json",
        ),
        (lambda d: [str(d / "shards" / "*.tar")], lambda d: d / "shards" / "stats.json"),
        (
            lambda d: [str(p) for p in sorted((d / "shards").glob("*.tar"))],
            lambda d: d / "shards" / "stats.json",
        ),
        (lambda d: ["file://" + str(d / "shards" / "00000.tar")], lambda d: None),
    ],
    ids=["directory", "index", "braces", "glob", "list", "url"],
)
def test_every_source_form_reads_the_same_samples(
    dataset: Path, sources: Callable, stats_at: Callable
) -> None:
    result = inspect_dataset(sources(dataset), None)
    assert result.clean, result.problems
    assert result.samples == (4 if len(result.shards) == 1 else 12)
    expected = stats_at(dataset)
    if expected is not None:
        assert result.stats_path == str(expected) and expected.exists()


def test_a_directory_without_index_reads_committed_and_uncommitted_tars(dataset: Path) -> None:
    (dataset / "index.json").unlink()
    (dataset / "shards" / "00002.tar").rename(dataset / "shards" / "00004.tar")
    result = inspect_dataset([str(dataset)], None, previews=0)
    assert result.samples == 12
    assert result.build["failures"] == {"no_clear_scene": 2}  # each stats file counted once
    assert sorted((p.code, p.shard.rsplit("/", 1)[-1]) for p in result.problems) == [
        ("missing-shard", "00002.tar"),
        ("uncommitted-shard", "00004.tar"),
    ]


def test_a_missing_source_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such shard"):
        resolve_sources([str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="do not exist"):
        resolve_sources([str(tmp_path / "{00000..00002}.tar")])
    with pytest.raises(UserError, match="no shards given"):
        resolve_sources([])


# ---------------------------------------------------------------- damaged datasets


def truncate(dataset: Path) -> None:
    tar = dataset / "shards" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3 + 100])


def cut_at_member(dataset: Path) -> None:
    """Cut exactly after a sample: tarfile then stops silently, as if the tar had ended."""
    tar = dataset / "shards" / "00001.tar"
    with tarfile.open(tar) as archive:
        infos = archive.getmembers()
    end = next(i for i in infos if i.name == "loc006.naip.t0.tif")
    stop = end.offset_data + 512 * math.ceil(end.size / 512)
    tar.write_bytes(tar.read_bytes()[:stop])


def smash_header(dataset: Path) -> None:
    """Overwrite a member header in the middle of the tar with junk."""
    tar = dataset / "shards" / "00001.tar"
    with tarfile.open(tar) as archive:
        offset = next(i.offset for i in archive.getmembers() if i.name == "loc007.json")
    data = bytearray(tar.read_bytes())
    data[offset : offset + 512] = b"\x41" * 512
    tar.write_bytes(bytes(data))


def edit_shard(index: int, edit: Callable[[list], list]) -> Callable[[Path], None]:
    def damage(dataset: Path) -> None:
        tar = dataset / "shards" / f"{index:05d}.tar"
        rewrite(tar, edit(members_of(tar)))

    return damage


def replace(name: str, data: bytes) -> Callable[[list], list]:
    return lambda members: [(i, data if i.name == name else d) for i, d in members]


def add_member(info: tarfile.TarInfo, data: bytes | None) -> Callable[[list], list]:
    return lambda members: members[:4] + [(info, data)] + members[4:]


def symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("loc001.link.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def every_grid(doc: dict) -> list[dict]:
    return [doc["grid"], *(entry["grid"] for entry in doc["images"] if "grid" in entry)]


def shift_grid(doc: dict) -> None:
    """The JSON agrees with itself, not with the GeoTIFFs."""
    for grid in every_grid(doc):
        grid["transform"][2] += 30.0


def other_crs(doc: dict) -> None:
    for grid in every_grid(doc):
        grid["crs"] = "EPSG:32634"


def shift_shared_grid(doc: dict) -> None:
    """A schema-1 sample (each image repeats the grid) whose shared grid moved."""
    doc["schema_version"] = 1
    for entry in doc["images"]:
        entry["grid"] = json.loads(json.dumps(doc["grid"]))
    doc["grid"]["transform"][5] -= 10.0


def wrong_shape(doc: dict) -> None:
    doc["images"][0]["shape"] = [4, 8, 8]


def copy_sample(source: int, key: str, target: int) -> Callable[[Path], None]:
    def damage(dataset: Path) -> None:
        taken = [
            (i, d)
            for i, d in members_of(dataset / "shards" / f"{source:05d}.tar")
            if i.name.startswith(key + ".")
        ]
        tar = dataset / "shards" / f"{target:05d}.tar"
        rewrite(tar, members_of(tar) + taken)

    return damage


def drop(name: str) -> Callable[[list], list]:
    return lambda members: [(i, d) for i, d in members if i.name != name]


def remove_stats(dataset: Path) -> None:
    (dataset / "shards" / "00002_stats.json").unlink()


@pytest.mark.parametrize(
    "damage, shard, key, code, reason",
    [
        (truncate, "00001.tar", "loc006", "damaged-tar", "truncated while reading sample"),
        (cut_at_member, "00001.tar", None, "damaged-tar", "without its end marker"),
        (smash_header, "00001.tar", None, "damaged-tar", "unreadable member header"),
        (
            edit_shard(1, replace("loc006.s2.t0.tif", b"II*\x00 not really a tiff")),
            "00001.tar",
            "loc006",
            "undecodable",
            "loc006.s2.t0.tif does not decode",
        ),
        (
            edit_shard(0, add_member(tarfile.TarInfo("../evil.json"), b'{"id": "x"}')),
            "00000.tar",
            "../evil",
            "unsafe-member",
            "outside the sample",
        ),
        (
            edit_shard(0, add_member(tarfile.TarInfo("/tmp/evil.json"), b"{}")),
            "00000.tar",
            "/tmp/evil",
            "unsafe-member",
            "absolute path",
        ),
        (
            edit_shard(0, add_member(symlink(), None)),
            "00000.tar",
            "loc001",
            "unsafe-member",
            "link",
        ),
        (copy_sample(0, "loc000", 2), "00002.tar", "loc000", "duplicate-key", "00000.tar"),
        (
            edit_shard(1, edit_json("loc007.json", shift_grid)),
            "00001.tar",
            "loc007",
            "georef-mismatch",
            "transform",
        ),
        (
            edit_shard(1, edit_json("loc007.json", other_crs)),
            "00001.tar",
            "loc007",
            "georef-mismatch",
            "CRS",
        ),
        (
            edit_shard(1, edit_json("loc004.json", shift_shared_grid)),
            "00001.tar",
            "loc004",
            "georef-mismatch",
            "grid differs from the sample's grid",
        ),
        (
            edit_shard(2, edit_json("loc008.json", wrong_shape)),
            "00002.tar",
            "loc008",
            "shape-mismatch",
            "[4, 8, 8]",
        ),
        (
            edit_shard(2, replace("loc009.json", b"{not json")),
            "00002.tar",
            "loc009",
            "bad-json",
            "does not parse",
        ),
        (
            edit_shard(2, drop("loc009.s1.t0.tif")),
            "00002.tar",
            "loc009",
            "missing-member",
            "s1.t0.tif is listed but missing",
        ),
        (
            edit_shard(2, add_member(tarfile.TarInfo("loc008.extra.bin"), b"x")),
            "00002.tar",
            "loc008",
            "unlisted-member",
            "loc008.extra.bin",
        ),
        (remove_stats, "00002.tar", None, "uncommitted-shard", "NNNNN_stats.json"),
    ],
    ids=[
        "truncated",
        "cut-at-member",
        "smashed-header",
        "garbage-tif",
        "dotdot-member",
        "absolute-member",
        "symlink-member",
        "duplicate-key",
        "grid-disagrees",
        "crs-disagrees",
        "grids-disagree",
        "shape-disagrees",
        "bad-json",
        "missing-member",
        "unlisted-member",
        "no-stats-file",
    ],
)
def test_damage_is_reported_with_shard_key_and_reason(
    dataset: Path,
    tmp_path: Path,
    damage: Callable[[Path], None],
    shard: str,
    key: str | None,
    code: str,
    reason: str,
) -> None:
    damage(dataset)
    before = files_under(tmp_path)
    report_dir = tmp_path / "report"
    result = inspect_dataset([str(dataset)], None, previews=0)
    assert not result.clean
    matching = [
        p
        for p in result.problems
        if p.shard.endswith(shard) and p.key == key and p.code == code and reason in p.reason
    ]
    assert matching, [p.to_json() for p in result.problems]
    # the run went on: the untouched shards were read whole
    assert result.samples >= 8
    after = files_under(tmp_path)
    written = {name for name in after if after[name] != before.get(name)}
    assert written <= {"data/out/stats.json"}, written
    assert not report_dir.exists()
    assert not any("evil" in p.name for p in tmp_path.parent.rglob("*evil*"))


def test_a_changed_shard_disagrees_with_its_build_record(dataset: Path) -> None:
    """Padding a tar keeps it readable with the same samples, but its sha256 no longer matches."""
    tar = dataset / "shards" / "00003.tar"
    tar.write_bytes(tar.read_bytes() + bytes(10240))
    result = inspect_dataset([str(dataset)], None, previews=0)
    [problem] = result.problems
    assert problem.code == "stats-mismatch" and "sha256" in problem.reason


def test_a_shard_the_manifest_lists_as_missing(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["missing"], manifest["complete"] = [4], False
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    result = inspect_dataset([str(dataset)], None, previews=0)
    [problem] = result.problems
    assert (problem.code, problem.shard.rsplit("/", 1)[-1]) == ("missing-shard", "00004.tar")


# ---------------------------------------------------------------- audio, fMoW, native layout


@pytest.fixture(scope="module")
def audio_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio") / "out"
    write_dataset(out, ROWS[:6], audio_fmow_record)
    return out


def test_audio_and_fmow_series_validate_and_are_measured(audio_dataset: Path) -> None:
    result = inspect_dataset([str(audio_dataset)], None)
    assert result.clean, result.problems
    assert result.counts["member"]["audio.flac"] == result.counts["member"]["mel.npy"] == 6
    assert result.counts["slot"] == {"fmow.t0": 6, "fmow.t1": 6, "fmow.t2": 4, "fmow.t3": 2}
    assert set(result.stats["sensors"]) == {"fmow"}
    mel = result.stats["audio"]["mel"]
    mels = []
    for tar_path in sorted((audio_dataset / "shards").glob("*.tar")):
        mels += [
            np.load(io.BytesIO(d)) for i, d in members_of(tar_path) if i.name.endswith("mel.npy")
        ]
    values = np.concatenate([m.ravel() for m in mels]).astype(np.float64)
    assert mel["mean"][0] == pytest.approx(values.mean(), rel=1e-12)
    assert mel["std"][0] == pytest.approx(values.std(), rel=1e-12)
    assert len(result.previews) == 6 and all(p.mel is not None for p in result.previews)


def test_audio_damage(audio_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(audio_dataset, copy)
    tar = copy / "shards" / "00000.tar"
    members = replace("loc001.audio.flac", b"fLaC but not really")(members_of(tar))
    members = edit_json("loc002.json", lambda d: d["audio"].update(sample_rate=16000))(members)
    members = drop("loc003.mel.npy")(members)
    rewrite(tar, members)
    result = inspect_dataset([str(copy)], None, previews=0)
    found = {(p.key, p.code) for p in result.problems}
    assert {
        ("loc001", "undecodable"),
        ("loc002", "audio-mismatch"),
        ("loc003", "missing-member"),
    } <= found


def test_images_with_their_own_grid(audio_dataset: Path, tmp_path: Path) -> None:
    """A series whose images each carry a grid (fMoW footprints differ) is checked against it."""
    copy = tmp_path / "out"
    shutil.copytree(audio_dataset, copy)
    tar = copy / "shards" / "00000.tar"

    def own_grids(doc: dict) -> None:
        grid = doc.pop("grid")
        for entry in doc["images"]:
            entry["grid"] = grid

    def one_wrong(doc: dict) -> None:
        own_grids(doc)
        doc["images"][1]["grid"] = dict(doc["images"][1]["grid"], crs="EPSG:3857")

    members = edit_json("loc000.json", own_grids)(members_of(tar))
    rewrite(tar, edit_json("loc001.json", one_wrong)(members))
    result = inspect_dataset([str(copy)], None, previews=0)
    codes = [(p.key, p.code) for p in result.problems if p.code != "stats-mismatch"]
    assert codes == [("loc001", "georef-mismatch")]


def native_record(row: dict, index: int) -> SampleRecord:
    rng = np.random.default_rng(index)
    images = []
    for slot in ("y0s0", "y0s1", "y1s0", "y1s1"):
        for group, gsd, bands in (("10m", 10.0, S2_BANDS), ("20m", 20.0, ["B05", "B11"])):
            size = int(160 / gsd)
            array = rng.integers(1, 4000, (len(bands), size, size)).astype(np.uint16)
            images.append(
                ImageRecord("s2", slot, array, utm_grid(index, size, gsd), bands, 0, group)
            )
    if index == 2:  # one sample with a different band list: the dataset is not consistent
        array = rng.integers(1, 4000, (1, 16, 16)).astype(np.uint16)
        images[0] = ImageRecord("s2", "y0s0", array, utm_grid(index, 16), ["B04"], 0, "10m")
    meta = meta_of(row) | {"slots": {s: {} for s in ("y0s0", "y0s1", "y1s0", "y1s1")}}
    return SampleRecord(row["id"], meta, images)


def test_native_layout_groups_and_consistency(tmp_path: Path) -> None:
    write_dataset(tmp_path / "out", ROWS[:5], native_record)
    result = inspect_dataset([str(tmp_path / "out")], None)
    assert set(result.stats["sensors"]) == {"s2.10m", "s2.20m"}
    ten = result.stats["sensors"]["s2.10m"]
    assert (ten["group"], ten["bands"], ten["images"]) == ("10m", S2_BANDS, 20)
    assert result.counts["slot"]["s2.y1s1"] == 5
    [problem] = result.problems
    assert (problem.key, problem.code) == ("loc002", "inconsistent")
    assert "s2.y0s0.10m.tif" in problem.reason and "4 samples have" in problem.reason


def test_worker_processes_give_the_same_numbers(csf_dataset: Path) -> None:
    one = inspect_dataset([str(csf_dataset)], None, write_stats=False)
    progress = CountingProgress()
    two = inspect_dataset([str(csf_dataset)], None, progress, workers=2, write_stats=False)
    assert two.stats == one.stats and two.counts == one.counts and two.clean
    assert progress.done == two.samples == 12


def test_a_damaged_dataset_with_a_report_writes_only_there(dataset: Path, tmp_path: Path) -> None:
    """Hostile members are reported, never extracted; the run writes stats.json and DIR only."""
    escape = add_member(tarfile.TarInfo("../../escape.json"), b"{}")
    absolute = add_member(tarfile.TarInfo(str(tmp_path / "absolute.json")), b"{}")
    edit_shard(0, lambda members: escape(absolute(add_member(symlink(), None)(members))))(dataset)
    edit_shard(1, replace("loc006.s2.t0.tif", b"\0" * 300))(dataset)
    before = files_under(tmp_path)
    report_dir = tmp_path / "report"
    result = inspect_dataset([str(dataset)], str(report_dir))
    after = files_under(tmp_path)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"data/out/stats.json"} | {f"report/{p.name}" for p in report_dir.iterdir()}
    assert (
        not list(tmp_path.parent.rglob("escape.json")) and not (tmp_path / "absolute.json").exists()
    )
    codes = Counter(p.code for p in result.problems)
    assert codes["unsafe-member"] == 3 and codes["undecodable"] == 1
    page = (report_dir / "report.html").read_text()
    assert "../../escape.json" in page and "loc006.s2.t0.tif does not decode" in page


def test_oversized_members_are_skipped_unread(dataset: Path, monkeypatch) -> None:
    import geoprep.inspect.scan

    # the JSON and NAIP members stay under it (under 2,000 bytes), the Sentinel ones do not
    monkeypatch.setattr(geoprep.inspect.scan, "MAX_MEMBER_BYTES", 2400)
    result = inspect_dataset([str(dataset)], None, previews=0)
    big = [p for p in result.problems if p.code == "too-large"]
    assert big and all("bytes" in p.reason for p in big)
    assert {p.code for p in result.problems} >= {"too-large", "missing-member"}


@pytest.mark.parametrize(
    "shards, previews, expected",
    [(3, 8, [3, 3, 2]), (4, 0, [0, 0, 0, 0]), (8, 2, [1, 0, 0, 0, 1, 0, 0, 0]), (0, 8, [])],
)
def test_previews_are_spread_over_the_shards(shards: int, previews: int, expected: list) -> None:
    from geoprep.inspect.dataset import _preview_quotas

    assert _preview_quotas(shards, previews) == expected
    assert sum(_preview_quotas(1000, 8)) == 8


def test_an_interrupted_build_is_a_problem_with_exit_3(dataset: Path) -> None:
    """4 of 12 planned shards committed, no manifest: not "clean"."""
    from geoprep.cli import main

    (dataset / "index.json").unlink()
    (dataset / "manifest.json").unlink()
    (dataset / "plan.json").write_text(json.dumps({"n_locations": 36}))
    (dataset / "recipe.yaml").write_text("output:\n  samples_per_shard: 3\n")
    result = inspect_dataset([str(dataset)], None, previews=0, write_stats=False)
    (problem,) = [p for p in result.problems if p.code == "incomplete-build"]
    assert "4 of 12 planned shards committed" in problem.reason
    assert main(["inspect", str(dataset), "--no-stats"]) == 3


def test_an_empty_build_is_a_problem(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_dataset(out, [])
    result = inspect_dataset([str(out)], None, previews=0, write_stats=False)
    assert [p.code for p in result.problems] == ["empty"] and not result.clean

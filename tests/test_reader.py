"""The public reader: the WebDataset decoder, Sample accessors per method, dataset sources."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import webdataset as wds

from geoprep import reader
from geoprep.core.errors import UserError
from geoprep.reader import GeoArray, Sample, SampleError, open_dataset, shard_urls
from geoprep.shards import records
from geoprep.shards.manifest import write_manifest
from geoprep.shards.records import ImageRecord, SampleRecord, encode_image
from geoprep.shards.writer import ShardWriter

S2_BANDS = ["B02", "B03", "B04", "B08"]
S1_BANDS = ["vv", "vh"]


def grid(size: int, gsd: float) -> dict:
    transform = [gsd, 0.0, 600000.0, 0.0, -gsd, 4000000.0]
    return {"crs": "EPSG:32633", "transform": transform, "width": size, "height": size, "gsd": gsd}


def image(
    sensor: str,
    slot: str,
    bands: list[str],
    *,
    seed: int,
    dtype: str = "uint16",
    group: str | None = None,
    gsd: float = 10.0,
    when: str = "2021-06-01T10:00:00Z",
    nodata: float | None = 0,
) -> ImageRecord:
    size = round(160 / gsd)  # one 160 m extent, every group on its own pixel grid
    array = (np.random.default_rng(seed).random((len(bands), size, size)) * 1000).astype(dtype)
    provenance = {"datetime": when, "item_id": f"{sensor}-{slot}-{seed}"}
    return ImageRecord(sensor, slot, array, grid(size, gsd), bands, nodata, group, provenance)


def csf_sample(key: str, seed: int = 0) -> SampleRecord:
    """Common layout, one slot, two sensors of different dtypes."""
    images = [
        image("s2", "t0", S2_BANDS, seed=seed),
        image("s1", "t0", S1_BANDS, seed=seed + 1, dtype="float32", nodata=float("nan")),
    ]
    return SampleRecord(key, {"lat": 36.1, "lon": 15.2, "split": "train"}, images)


def seasonal_sample(key: str) -> SampleRecord:
    """GASSL/SeCo: four dates, written out of time order on purpose."""
    dates = {"t2": "2021-09-01T10:00:00Z", "t0": "2021-03-01T10:00:00Z"}
    dates |= {"t3": "2021-12-01T10:00:00+00:00", "t1": "2021-06-01T10:00:00Z"}
    images = [
        image("s2", slot, S2_BANDS, seed=i, when=when)
        for i, (slot, when) in enumerate(dates.items())
    ]
    return SampleRecord(key, {"slots": {slot: {} for slot in dates}}, images)


def caco_sample(key: str) -> SampleRecord:
    """CACo: two year groups of four seasons, slots y{g}s{s}."""
    images = [
        image(
            "s2",
            f"y{g}s{s}",
            S2_BANDS,
            seed=10 * g + s,
            when=f"{2018 + 3 * g}-{1 + 3 * s:02d}-01",
        )
        for g in (1, 0)
        for s in (3, 1, 0, 2)
    ]
    return SampleRecord(key, {}, images)


def native_sample(key: str) -> SampleRecord:
    """SeCo layout: each resolution group of S2 on its own grid over the same extent."""
    groups = {"10m": (["B02", "B03"], 10.0), "20m": (["B05", "B11"], 20.0), "60m": (["B01"], 40.0)}
    images = [
        image("s2", slot, bands, seed=n, group=group, gsd=gsd, when=when)
        for n, (slot, when) in enumerate([("t0", "2020-01-01"), ("t1", "2020-07-01T00:00:00Z")])
        for group, (bands, gsd) in groups.items()
    ]
    return SampleRecord(key, {}, images)


def flac_bytes(waveform: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


WAVE = (np.sin(np.linspace(0, 200, 8000)) * 16000).round() / 32768


def write(out: Path, samples: list[SampleRecord], fmt: str = "tif", index: int = 0) -> str:
    with ShardWriter(str(out), index, fmt) as writer:
        for record in samples:
            writer.add(record)
        writer.close(0)
    return str(out / "shards" / f"{index:05d}.tar")


def read_all(source, **kw) -> list[Sample]:
    return list(open_dataset(source, **kw))


def test_decoder_per_member_type() -> None:
    record = image("s2", "t0", S2_BANDS, seed=3)
    geo = reader.decoder(".s2.t0.tif", encode_image(record, "tif"))
    assert isinstance(geo, GeoArray) and geo.bands == tuple(S2_BANDS)
    np.testing.assert_array_equal(geo.array, record.array)
    assert (geo.crs, tuple(geo.transform)[:6], geo.nodata) == (
        "EPSG:32633",
        (10, 0, 6e5, 0, -10, 4e6),
        0,
    )
    assert geo.bounds == (6e5, 4e6 - 160, 6e5 + 160, 4e6)
    np.testing.assert_array_equal(
        reader.decoder(".s2.t0.npy", encode_image(record, "npy")), record.array
    )
    assert reader.decoder(".json", b'{"a": 1}') == {"a": 1}
    waveform, rate = reader.decoder(".audio.flac", flac_bytes(WAVE, 16000))
    assert rate == 16000 and waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, WAVE, atol=1e-6)
    assert reader.decoder(".txt", b"plain text") == "plain text"


def test_stock_webdataset_with_the_decoder(tmp_path: Path) -> None:
    tar = write(tmp_path, [csf_sample("a"), csf_sample("b", seed=5)])
    decoded = list(wds.WebDataset(tar, shardshuffle=False).decode(reader.decoder))
    assert [s["__key__"] for s in decoded] == ["a", "b"]
    geo = decoded[1]["s1.t0.tif"]
    assert isinstance(geo, GeoArray) and geo.crs == "EPSG:32633" and math.isnan(geo.nodata)
    np.testing.assert_array_equal(geo.array, csf_sample("b", seed=5).images[1].array)
    assert decoded[0]["json"]["grid"] == grid(16, 10.0)


@pytest.mark.parametrize("fmt", ["tif", "npy"])
def test_common_stack_for_csf(tmp_path: Path, fmt: str) -> None:
    write(tmp_path, [csf_sample("loc")], fmt)
    (sample,) = read_all(str(tmp_path / "shards" / "00000.tar"))
    stack, bands = sample.common_stack("t0")
    record = csf_sample("loc")
    assert stack.shape == (6, 16, 16) and stack.dtype == np.float32
    assert bands == ["s2.B02", "s2.B03", "s2.B04", "s2.B08", "s1.vv", "s1.vh"]
    np.testing.assert_array_equal(stack[:4], record.images[0].array)
    np.testing.assert_array_equal(stack[4:], record.images[1].array)
    s1 = sample.image("s1", "t0")
    assert (s1.crs, s1.transform.a, s1.bands) == ("EPSG:32633", 10.0, ("vv", "vh"))
    assert math.isnan(s1.nodata) and sample.image("s2").nodata == 0
    with pytest.raises(UserError, match="no slot 't3'"):
        sample.common_stack("t3")


def test_time_series_is_in_time_order(tmp_path: Path) -> None:
    write(tmp_path, [seasonal_sample("loc")])
    (sample,) = read_all(str(tmp_path / "shards" / "00000.tar"))
    series = sample.time_series("s2")
    assert [when.month for when, _ in series] == [3, 6, 9, 12]
    by_slot = {r.slot: r.array for r in seasonal_sample("loc").images}
    for (_, geo), slot in zip(series, ["t0", "t1", "t2", "t3"], strict=True):
        np.testing.assert_array_equal(geo.array, by_slot[slot])


def test_year_groups_for_caco(tmp_path: Path) -> None:
    write(tmp_path, [caco_sample("loc")], "npy")
    (sample,) = read_all(str(tmp_path / "shards" / "00000.tar"))
    groups = sample.year_groups("s2")
    assert list(groups) == [0, 1] and [len(v) for v in groups.values()] == [4, 4]
    by_slot = {r.slot: r.array for r in caco_sample("loc").images}
    np.testing.assert_array_equal(groups[1][2].array, by_slot["y1s2"])
    np.testing.assert_array_equal(groups[0][0].array, by_slot["y0s0"])
    with pytest.raises(UserError, match="multi-year"):
        read_all(write(tmp_path / "b", [seasonal_sample("x")]))[0].year_groups("s2")


def test_groups_for_the_native_layout(tmp_path: Path) -> None:
    write(tmp_path, [native_sample("loc")])
    (sample,) = read_all(str(tmp_path / "shards" / "00000.tar"))
    groups = sample.groups("s2", "t1")
    assert {g: v.shape for g, v in groups.items()} == {
        "10m": (2, 16, 16),
        "20m": (2, 8, 8),
        "60m": (1, 4, 4),
    }
    assert {g: v.transform.a for g, v in groups.items()} == {"10m": 10.0, "20m": 20.0, "60m": 40.0}
    assert all(v.bounds == groups["10m"].bounds for v in groups.values())
    assert [w.month for w, _ in sample.time_series("s2", group="20m")] == [1, 7]
    assert sample.image("s2", "t0", "60m").bands == ("B01",)
    with pytest.raises(UserError, match="needs the common grid layout"):
        sample.common_stack()
    for call in (lambda: sample.time_series("s2"), lambda: sample.image("s2")):
        with pytest.raises(UserError, match=r"native layout: pass group= one of \['10m'"):
            call()


def test_audio_and_spectrogram(tmp_path: Path) -> None:
    mel = np.arange(64 * 10, dtype=np.float32).reshape(64, 10)
    mel_buffer = io.BytesIO()
    np.save(mel_buffer, mel)
    extras = {"audio.flac": flac_bytes(WAVE, 22050), "mel.npy": mel_buffer.getvalue()}
    record = SampleRecord(
        "snd", {"source": "aporee"}, [image("s2", "t0", S2_BANDS, seed=1)], extras
    )
    write(tmp_path, [record, csf_sample("silent")])
    loud, silent = read_all(str(tmp_path / "shards" / "00000.tar"))
    waveform, rate = loud.audio()
    assert rate == 22050 and np.allclose(waveform, WAVE, atol=1e-6)
    np.testing.assert_array_equal(loud.spectrogram(), mel)
    with pytest.raises(SampleError, match="silent: no audio.flac"):
        silent.audio()


def test_a_listed_member_that_is_missing_names_shard_key_and_member(tmp_path: Path) -> None:
    tar = tmp_path / "broken.tar"
    meta = {
        "id": "k1",
        "grid": grid(16, 10.0),
        "images": [
            {
                "member": "s2.t0.tif",
                "sensor": "s2",
                "slot": "t0",
                "group": None,
                "bands": S2_BANDS,
                "shape": [4, 16, 16],
            }
        ],
    }
    with wds.TarWriter(str(tar), encoder=False) as out:
        out.write({"__key__": "k1", "json": json.dumps(meta).encode()})
    with pytest.raises(SampleError, match=r"broken\.tar, sample k1: member 's2\.t0\.tif' listed"):
        read_all(str(tar))


@pytest.mark.parametrize("kind", ["dir", "dir-without-index", "wids", "pattern", "list"])
def test_dataset_sources(tmp_path: Path, kind: str) -> None:
    for index, keys in enumerate([["a", "b"], ["c"]]):
        write(tmp_path, [csf_sample(k) for k in keys], index=index)
    if kind != "dir-without-index":
        write_manifest(str(tmp_path), {"name": "t"}, "digest", n_shards=2)
    shards = tmp_path / "shards"
    source = {
        "dir": str(tmp_path),
        "dir-without-index": str(tmp_path),
        "wids": str(tmp_path / "index.json"),
        "pattern": str(shards / "{00000..00001}.tar"),
        "list": [str(shards / "00000.tar"), str(shards / "00001.tar")],
    }[kind]
    assert shard_urls(source) == [str(shards / "00000.tar"), str(shards / "00001.tar")]
    assert [s.key for s in read_all(source)] == ["a", "b", "c"]


def test_a_directory_without_shards_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no index.json"):
        shard_urls(str(tmp_path))
    with pytest.raises(UserError, match="not a directory"):
        shard_urls(str(tmp_path / "nowhere"))


PC = "https://acct.blob.core.windows.net/sentinel2-l2/T33/GRANULE/IMG_DATA"
ITEM_HREFS = {b: f"{PC}/R{10 if b in S2_BANDS else 20}m/T33_{b}.tif?sig=X" for b in S2_BANDS}
ITEM_HREFS |= {"B05": f"{PC}/R20m/T33_B05.tif", "B11": f"{PC}/R20m/T33_B11.tif"}


def with_hrefs(record: SampleRecord) -> SampleRecord:
    """Each image's provenance lists every asset of its item, as the imagery builder gives it."""
    images = [
        ImageRecord(
            i.sensor,
            i.slot,
            i.array,
            i.grid,
            i.bands,
            i.nodata,
            i.group,
            i.provenance | {"hrefs": ITEM_HREFS},
        )  # fmt: skip
        for i in record.images
    ]
    return SampleRecord(record.key, record.meta, images)


def as_schema_1(doc: dict) -> dict:
    """What the writer made before schema 2: every entry repeats its grid and the item's hrefs."""
    doc = json.loads(json.dumps(doc))
    del doc["schema_version"]
    for entry in doc["images"]:
        entry["grid"] = doc["grids"][entry["group"]]
        del entry["href_base"]
        entry["hrefs"] = {a: h.split("?")[0] for a, h in ITEM_HREFS.items()}
    return doc


def test_schema_2_and_later_list_each_images_own_sources_once(tmp_path: Path) -> None:
    tar = write(tmp_path, [with_hrefs(native_sample("loc"))])
    (raw,) = list(wds.WebDataset(tar, shardshuffle=False))
    doc = json.loads(raw["json"])
    assert doc["schema_version"] == 3
    first = doc["images"][0]  # the 10 m group: B02 B03
    assert "grid" not in first and first["href_base"] == f"{PC}/R10m/"
    assert first["hrefs"] == {"B02": "T33_B02.tif", "B03": "T33_B03.tif"}
    sample = Sample.from_wds(raw)
    hrefs = {s: info.hrefs for s, info in sample.infos.items()}
    assert hrefs["s2.t0.20m"] == {b: f"{PC}/R20m/T33_{b}.tif" for b in ("B05", "B11")}
    # no band named after an asset of the item: every href is kept rather than none
    assert hrefs["s2.t1.60m"] == {a: h.split("?")[0] for a, h in ITEM_HREFS.items()}

    old = dict(raw, json=json.dumps(as_schema_1(doc)).encode())
    before = Sample.from_wds(old)
    assert before.infos["s2.t0.10m"].hrefs == {a: h.split("?")[0] for a, h in ITEM_HREFS.items()}
    for suffix, image in sample.images.items():
        other = before.images[suffix]
        np.testing.assert_array_equal(image.array, other.array)
        assert (image.crs, image.transform, image.bands) == (
            other.crs,
            other.transform,
            other.bands,
        )


def test_multi_band_assets_keep_their_href() -> None:
    own = records.own_hrefs(
        {"image": "/data/naip/a.tif", "rendered": "/data/naip/b.png"}, ["image_0", "image_1"]
    )
    assert own == {"href_base": "/data/naip/", "hrefs": {"image": "a.tif"}}
    unknown = records.own_hrefs({"visual": "s3://b/x/v.tif"}, ["red", "green"])
    assert unknown == {"href_base": "s3://b/x/", "hrefs": {"visual": "v.tif"}}


@pytest.mark.parametrize("make", [csf_sample, native_sample])
def test_schema_3_members_read_as_the_gdal_written_ones_of_schema_2(tmp_path, make) -> None:
    """Schema 3 lays its GeoTIFF members out without GDAL; a schema 2 sample, whose members
    GDAL wrote, reads the same: pixels, grid, CRS, nodata and band names."""
    record = make("loc")
    tar = write(tmp_path, [record])
    (raw,) = list(wds.WebDataset(tar, shardshuffle=False))
    old = dict(raw, json=json.dumps(json.loads(raw["json"]) | {"schema_version": 2}).encode())
    for image in record.images:
        member = f"{image.suffix}.tif"
        assert raw[member] != records.encode_with_gdal(image)
        old[member] = records.encode_with_gdal(image)
    now, before = Sample.from_wds(raw), Sample.from_wds(old)
    assert now.images.keys() == before.images.keys() and now.images
    for suffix, image in now.images.items():
        other = before.images[suffix]
        np.testing.assert_array_equal(image.array, other.array)
        assert (image.crs, image.transform, image.bands) == (
            other.crs,
            other.transform,
            other.bands,
        )
        assert str(image.nodata) == str(other.nodata)  # NaN too


def test_a_newer_schema_is_refused_with_a_hint(tmp_path: Path) -> None:
    tar = write(tmp_path, [csf_sample("loc")])
    (raw,) = list(wds.WebDataset(tar, shardshuffle=False))
    doc = json.loads(raw["json"]) | {"schema_version": 4}
    with pytest.raises(SampleError, match="schema_version 4.*upgrade"):
        Sample.from_wds(dict(raw, json=json.dumps(doc).encode()))

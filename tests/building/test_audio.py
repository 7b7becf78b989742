"""Audio members from the demo world's aporee items, fetched through the archive.org stand-in."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import soxr

import geoprep.building.audio
from geoprep.building.audio import (
    AudioMaker,
    flac_bytes,
    from_pcm16,
    log_mel,
    mel_power,
    to_pcm16,
)
from geoprep.building.location import LocationFailed
from geoprep.core.errors import UserError
from geoprep.demo.aporee_world import build_aporee, read_manifest
from geoprep.demo.archive_server import ArchiveStandIn
from geoprep.demo.landscape import build_truth
from geoprep.planning.samplers.aporee import AporeeSampler
from geoprep.recipe.sections import AudioSpec


class NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Only the aporee part of a tiny demo world (the whole world is not needed here)."""
    out = tmp_path_factory.mktemp("audio") / "world"
    build_aporee(build_truth(0, "tiny"), out, np.random.default_rng(0))
    return out


@pytest.fixture(scope="module")
def manifest(world: Path) -> pd.DataFrame:
    return read_manifest(world).set_index("identifier", drop=False)


@pytest.fixture(scope="module")
def rows(world: Path) -> dict[str, dict]:
    """The aporee sampler's rows for the world, by id (plain values, as the build passes them)."""
    with ArchiveStandIn(world / "aporee") as stand_in:
        config = AporeeSampler(
            kind="aporee", order="identifier", proxy=stand_in.proxy_url, secure=False, backoff_s=0
        )
        frame = config.sample(np.random.default_rng(0), NoProgress()).locations
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return {record["id"]: record for record in records}


@pytest.fixture
def archive(world: Path) -> Iterator[ArchiveStandIn]:
    # one per test: injected faults must not leak into other tests
    with ArchiveStandIn(world / "aporee") as stand_in:
        yield stand_in


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[Path]:
    """The makers' temporary directory; every test must leave it empty."""
    path = tmp_path / "staging"
    path.mkdir()
    yield path
    assert sorted(path.iterdir()) == []


@pytest.fixture
def maker(archive: ArchiveStandIn, staging: Path):
    made: list[AudioMaker] = []

    def make(seed: int = 0, **spec) -> AudioMaker:
        audio_spec = AudioSpec(proxy=archive.proxy_url, **spec)
        made.append(AudioMaker(audio_spec, seed, backoff_s=0.001, temp_dir=staging))
        return made[-1]

    yield make
    for audio_maker in made:
        audio_maker.close()


def clean_ids(manifest: pd.DataFrame, rows: dict[str, dict]) -> list[str]:
    return [i for i in rows if manifest.loc[i, "problem"] in ("", "coverage_only")]


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert samples.shape[1] == 1
    return samples[:, 0], rate


def decode_mel(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def reference_segment(world: Path, row: dict, offset: int, keep: int, rate: int) -> np.ndarray:
    """The original file decoded whole, cut, mixed to mono and resampled, as int16."""
    path = world / "aporee" / row["identifier"] / row["audio_file"]
    full, rate_in = soundfile.read(path, dtype="float32", always_2d=True)
    mono = full[offset : offset + keep].mean(axis=1, dtype=np.float32)
    if rate_in != rate:
        mono = soxr.resample(mono, rate_in, rate, quality="HQ")
    return to_pcm16(mono)


def download_statuses(stand_in: ArchiveStandIn, row: dict) -> list[int]:
    path = f"/download/{row['identifier']}/{row['audio_file']}"
    return [r.status for r in stand_in.requests if r.path == path]


def test_clean_recordings_give_flac_and_mel(rows, manifest, maker):
    audio_maker = maker()
    ids = clean_ids(manifest, rows)
    assert len(ids) >= 8
    for location_id in ids:
        members, meta = audio_maker.make(rows[location_id])
        assert set(members) == {"audio.flac", "mel.npy"}
        samples, rate = decode_flac(members["audio.flac"])
        assert rate == meta["sample_rate"] == 22050
        assert meta["duration_s"] == pytest.approx(len(samples) / rate, abs=1e-6)
        # recordings are shorter than max_duration_s: all of each is kept
        truth = manifest.loc[location_id]
        assert meta["original_duration_s"] == pytest.approx(truth["duration_s"], abs=0.01)
        assert meta["duration_s"] == pytest.approx(truth["duration_s"], abs=0.01)
        assert (meta["sample_rate_in"], meta["channels_in"]) == (
            truth["sample_rate"],
            truth["channels"],
        )
        assert (meta["segment"], meta["offset_s"]) == ("first", 0.0)
        mel = decode_mel(members["mel.npy"])
        assert mel.dtype == np.float16
        assert mel.shape == (meta["n_mels"], meta["frames"]) == (128, 1 + len(samples) // 512)
        assert np.isfinite(mel).all() and mel.min() >= -100
        assert meta["fmax"] == 11025.0
        assert meta["attribution"] == {
            "identifier": location_id,
            "file": rows[location_id]["audio_file"],
            "creator": rows[location_id]["creator"],
            "title": rows[location_id]["title"],
            "license_url": truth["license_url"],
            "source_url": f"https://archive.org/details/{location_id}",
        }


def test_stereo_recordings_mix_to_mono(world, rows, manifest, maker):
    stereo = [i for i in clean_ids(manifest, rows) if manifest.loc[i, "channels"] == 2]
    assert stereo
    audio_maker = maker()
    for location_id in stereo:
        members, meta = audio_maker.make(rows[location_id])
        samples, rate = decode_flac(members["audio.flac"])
        assert meta["channels_in"] == 2
        expected = reference_segment(world, rows[location_id], 0, 10**9, rate)
        assert len(samples) == len(expected)
        assert np.abs(samples.astype(int) - expected).max() <= 1


def longest(manifest: pd.DataFrame, rows: dict[str, dict], fmt: str) -> dict:
    """The longest clean recording uploaded as ``fmt``."""
    ids = [i for i in clean_ids(manifest, rows) if rows[i]["audio_format"] == fmt]
    return rows[max(ids, key=lambda i: manifest.loc[i, "duration_s"])]


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
@pytest.mark.parametrize("mode", ["first", "centre", "random"])
def test_segment_modes_cut_the_stated_part(world, rows, manifest, maker, mode, fmt):
    # MP3 decoders need a pre-roll after a seek; a missing one shows as a glitch at the start
    row = longest(manifest, rows, fmt)
    members, meta = maker(segment=mode, max_duration_s=3.0).make(row)
    rate_in = meta["sample_rate_in"]
    total, keep = round(meta["original_duration_s"] * rate_in), 3 * rate_in
    offset = round(meta["offset_s"] * rate_in)
    if mode == "first":
        assert offset == 0
    elif mode == "centre":
        assert offset == (total - keep) // 2
    else:
        assert 0 <= offset <= total - keep
    samples, rate = decode_flac(members["audio.flac"])
    assert meta["duration_s"] == pytest.approx(3.0, abs=1 / rate)
    expected = reference_segment(world, row, offset, keep, rate)
    assert len(samples) == len(expected)
    assert np.abs(samples.astype(int) - expected).max() <= 1


def test_random_segments_follow_the_seed(rows, manifest, maker):
    row = longest(manifest, rows, "mp3")
    offsets, flacs = [], []
    for seed in (1, 1, 2, 3):
        members, meta = maker(seed, segment="random", max_duration_s=2.5, min_frames=64).make(row)
        offsets.append(meta["offset_s"])
        flacs.append(members["audio.flac"])
    assert offsets[0] == offsets[1] and flacs[0] == flacs[1]
    assert len(set(offsets)) == 3


def test_output_bytes_are_deterministic(archive, staging, rows, manifest):
    row = rows[clean_ids(manifest, rows)[0]]
    spec = AudioSpec(proxy=archive.proxy_url, segment="random", max_duration_s=3.0)
    outputs = []
    for _ in range(2):
        with AudioMaker(spec, 7, backoff_s=0, temp_dir=staging) as audio_maker:
            outputs.append(audio_maker.make(row))
    assert outputs[0] == outputs[1]
    samples = to_pcm16(np.sin(np.linspace(0, 300, 40_000)) * 0.5)
    assert flac_bytes(samples, 22050) == flac_bytes(samples.copy(), 22050)


def test_threads_share_a_maker(rows, manifest, maker):
    ids = clean_ids(manifest, rows)[:6]
    audio_maker = maker(segment="random", max_duration_s=3.0)
    alone = [audio_maker.make(rows[i]) for i in ids]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda i: audio_maker.make(rows[i]), ids))
    assert together == alone


@pytest.mark.parametrize(
    "problem, reason", [("too_short", "too_short"), ("corrupt_audio", "undecodable")]
)
def test_bad_recordings_fail_with_their_reason(rows, manifest, maker, problem, reason):
    (identifier,) = manifest.index[manifest["problem"] == problem]
    with pytest.raises(LocationFailed) as failure:
        maker().make(rows[identifier])
    assert failure.value.reason == reason
    expected = "spectrogram frames" if reason == "too_short" else rows[identifier]["audio_file"]
    assert expected in failure.value.detail


@pytest.mark.parametrize("wrong", ["audio_md5", "audio_size"])
def test_a_copy_that_does_not_match_is_retried_then_fails(archive, rows, manifest, maker, wrong):
    row = dict(rows[clean_ids(manifest, rows)[0]])
    row[wrong] = "0" * 32 if wrong == "audio_md5" else row["audio_size"] + 7
    with pytest.raises(LocationFailed) as failure:
        maker(retries=2).make(row)
    assert failure.value.reason == "checksum_mismatch"
    assert download_statuses(archive, row) == [200, 200, 200]


@pytest.mark.parametrize("status", [503, 429])
def test_a_transient_error_is_retried(archive, rows, manifest, maker, status):
    row = rows[clean_ids(manifest, rows)[0]]
    archive.fail_next(f"/download/{row['identifier']}/", status)
    members, _ = maker(retries=1).make(row)
    assert decode_flac(members["audio.flac"])[0].size > 0
    assert download_statuses(archive, row) == [status, 200]


def test_persistent_errors_fail_after_the_retries(archive, rows, manifest, maker):
    row = rows[clean_ids(manifest, rows)[0]]
    archive.fail_next(f"/download/{row['identifier']}/", 503, times=3)
    with pytest.raises(LocationFailed) as failure:
        maker(retries=2).make(row)
    assert failure.value.reason == "download_failed"
    assert "HTTP 503" in failure.value.detail
    assert download_statuses(archive, row) == [503, 503, 503]


def test_a_missing_file_is_not_retried(archive, rows, manifest, maker):
    row = dict(rows[clean_ids(manifest, rows)[0]])
    row["audio_file"] = "gone.mp3"
    row["download_url"] = f"http://archive.org/download/{row['identifier']}/gone.mp3"
    with pytest.raises(LocationFailed) as failure:
        maker(retries=3).make(row)
    assert (failure.value.reason, download_statuses(archive, row)) == ("download_failed", [404])


def test_an_unreachable_server_fails_the_location(staging, rows, manifest):
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"
    spec = AudioSpec(proxy=dead_proxy, retries=1, timeout_s=2)
    with AudioMaker(spec, 0, backoff_s=0, temp_dir=staging) as audio_maker:
        with pytest.raises(LocationFailed) as failure:
            audio_maker.make(rows[clean_ids(manifest, rows)[0]])
    assert failure.value.reason == "download_failed"
    assert "2 attempts" in failure.value.detail


def test_an_interrupt_leaves_no_temporary_file(rows, manifest, maker, staging, monkeypatch):
    def interrupted(path, *args, **kwargs):
        assert Path(path).parent.parent == staging and Path(path).stat().st_size > 0
        raise KeyboardInterrupt

    monkeypatch.setattr(geoprep.building.audio, "read_segment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        maker().make(rows[clean_ids(manifest, rows)[0]])
    assert sorted(staging.iterdir()) == []


@pytest.mark.parametrize(
    "spec",
    [
        AudioSpec(),
        AudioSpec(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, fmin=50, fmax=7000),
    ],
    ids=["defaults", "custom"],
)
def test_spectrogram_matches_librosa(spec):
    import librosa

    rng = np.random.default_rng(3)
    t = np.arange(int(2.3 * spec.sample_rate)) / spec.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t) + 0.05 * rng.standard_normal(t.size)
    y = from_pcm16(to_pcm16(tone))
    expected = librosa.feature.melspectrogram(
        y=y,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
    )
    power = mel_power(y, spec)
    assert power.shape == expected.shape == (spec.n_mels, 1 + y.size // spec.hop_length)
    np.testing.assert_allclose(power, expected, rtol=1e-3, atol=1e-6 * expected.max())
    decibels = librosa.power_to_db(expected, ref=1.0, amin=1e-10, top_db=None)
    np.testing.assert_allclose(log_mel(y, spec).astype(np.float32), decibels, atol=0.05)


def test_stored_mel_is_the_mel_of_the_stored_audio(rows, manifest, maker):
    members, _ = maker().make(rows[clean_ids(manifest, rows)[1]])
    samples, _ = decode_flac(members["audio.flac"])
    stored = decode_mel(members["mel.npy"])
    np.testing.assert_array_equal(stored, log_mel(from_pcm16(samples), AudioSpec()))


def test_user_mistakes_are_reported(rows, manifest, maker, staging):
    with pytest.raises(UserError, match="max_duration_s"):
        AudioMaker(AudioSpec(max_duration_s=1.0), 0)
    row = dict(rows[clean_ids(manifest, rows)[0]])
    del row["download_url"]
    with pytest.raises(UserError, match="download_url"):
        maker().make(row)
    row["download_url"] = None
    with pytest.raises(LocationFailed, match="no_audio"):
        maker().make(row)

"""SoundingEarth audio: download a location's recording, cut it, encode FLAC and a log-mel image.

One aporee location row (see :mod:`geoprep.planning.samplers.aporee`) becomes two sample members:

* ``audio.flac`` — the kept part of the recording, mono, at ``AudioSpec.sample_rate``, 16-bit;
* ``mel.npy`` — its log-mel spectrogram, float16, shape ``(n_mels, frames)``, in dB relative to a
  power of 1.0 (``10 * log10(max(power, 1e-10))``, so the floor is -100 dB).

The dB reference is fixed rather than each recording's maximum: SoundingEarth takes the plain
log of the mel power, and an absolute scale keeps loudness comparable between recordings (a
per-recording normalisation can still be applied when reading; it could not be undone).

The spectrogram is librosa's ``melspectrogram`` (centred frames, zero padding, periodic Hann
window, Slaney mel filters) computed with scipy's FFT and ``librosa.filters.mel``: librosa's own
STFT path compiles several numba kernels on first use in an environment (tens of seconds), the
filterbank only the one that importing ``librosa.core`` compiles. Both are cached on disk by
numba afterwards (set ``NUMBA_CACHE_DIR`` where librosa's install is read-only). The spectrogram
is computed from exactly the 16-bit samples stored in the FLAC, so decoding the FLAC and
recomputing gives the same image.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile
import soxr
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft

from geoprep import __version__
from geoprep.building.location import LocationFailed, location_rng
from geoprep.core.errors import UserError
from geoprep.recipe.sections import AudioSpec
from geoprep.shards.schema import AUDIO_MEMBER, MEL_MEMBER, audio_entry

log = logging.getLogger(__name__)

#: Columns of the aporee sampler's rows this module reads.
REQUIRED_COLUMNS = ("id", "identifier", "download_url")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Power floor of the log (librosa's default ``amin``): -100 dB.
AMIN = 1e-10
DB_REFERENCE = 1.0
DETAILS_URL = "https://archive.org/details/{identifier}"
#: Upper bound of one retry delay, whatever the backoff or the server's Retry-After say.
MAX_DELAY_S = 60.0
#: Frames decoded and dropped before a segment that does not start at 0. After a seek, an MP3
#: decoder lacks the previous frames' bit reservoir and overlap: its first ~4 frames (4,608
#: samples) come out wrong (and libmpg123 logs errors to stderr). Other formats seek exactly.
SEEK_PREROLL_FRAMES = 8192
_DECODABLE_SUFFIXES = ("mp3", "ogg", "wav", "flac")
# STFT frames transformed at once: bounds memory for long recordings (~4 MB at n_fft 1024).
_FRAMES_PER_BLOCK = 1024
_PCM16_SCALE = 32768.0


@dataclass(frozen=True)
class Segment:
    """The kept part of a recording: 16-bit mono samples at the output rate, and where from."""

    samples: np.ndarray
    sample_rate: int
    sample_rate_in: int
    channels_in: int
    original_frames: int
    offset_frames: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def original_duration_s(self) -> float:
        return self.original_frames / self.sample_rate_in

    @property
    def offset_s(self) -> float:
        return self.offset_frames / self.sample_rate_in


def resolved_fmax(spec: AudioSpec) -> float:
    return float(spec.fmax) if spec.fmax is not None else spec.sample_rate / 2


def spectrogram_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT (librosa's default) of ``n_samples`` samples."""
    return 1 + n_samples // hop_length


def segment_offset(mode: str, total: int, keep: int, rng: np.random.Generator) -> int:
    """First frame of the ``keep`` frames kept out of ``total``: first, centre or random."""
    spare = max(0, total - keep)
    if spare == 0 or mode == "first":
        return 0
    if mode == "centre":
        return spare // 2
    if mode == "random":
        return int(rng.integers(0, spare + 1))
    raise ValueError(f"unknown segment mode {mode!r}")


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (nominally -1..1) as int16; resampling may overshoot, so clip first."""
    scaled = np.round(np.asarray(samples, dtype=np.float64) * _PCM16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def from_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32, scaled as libsndfile reads 16-bit files."""
    return np.asarray(samples, dtype=np.float32) / np.float32(_PCM16_SCALE)


def read_segment(
    path: Path | str, spec: AudioSpec, rng: np.random.Generator, name: str | None = None
) -> Segment:
    """Decode the part of ``path`` that ``spec`` keeps, mix it to mono and resample it.

    Only the kept frames are read, so a long recording costs no more memory than
    ``max_duration_s`` of audio. Raises LocationFailed("undecodable") for files libsndfile
    cannot read and ("too_short") for recordings shorter than ``spec.min_frames`` frames;
    ``name`` (default: the file name) is what their details call the file.
    """
    try:
        with soundfile.SoundFile(str(path)) as source:
            rate_in, channels, total = source.samplerate, source.channels, max(0, source.frames)
            keep = min(total, max(1, math.floor(spec.max_duration_s * rate_in)))
            offset = segment_offset(spec.segment, total, keep, rng)
            preroll = min(offset, SEEK_PREROLL_FRAMES)
            if offset:
                source.seek(offset - preroll)
            data = source.read(preroll + keep, dtype="float32", always_2d=True)[preroll:]
    except (soundfile.SoundFileError, RuntimeError) as exc:
        # libsndfile's message names the local staging path, which means nothing to a reader,
        # and for a damaged file it may read "File does not exist ...": say what was tried.
        reason = getattr(exc, "error_string", None) or str(exc)
        raise LocationFailed(
            "undecodable", f"{name or Path(path).name}: cannot be decoded (libsndfile: {reason})"
        ) from exc
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if len(mono) and rate_in != spec.sample_rate:
        mono = soxr.resample(np.ascontiguousarray(mono), rate_in, spec.sample_rate, quality="HQ")
    samples = to_pcm16(mono)
    frames = spectrogram_frames(len(samples), spec.hop_length) if len(samples) else 0
    if frames < spec.min_frames:
        raise LocationFailed(
            "too_short",
            f"{total / rate_in:.2f} s gives {frames} spectrogram frames, "
            f"fewer than min_frames={spec.min_frames}",
        )
    return Segment(samples, spec.sample_rate, rate_in, channels, total, offset)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    # librosa is imported here: it loads scipy.signal, numba and more (seconds), which a build
    # without audio should not pay for.
    import librosa

    return librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float32
    )


@functools.lru_cache(maxsize=8)
def _hann_window(n_fft: int) -> np.ndarray:
    # scipy.signal is imported here, not with the module: it pulls in scipy.stats and
    # scipy.interpolate (a second or more), and every build worker imports this module,
    # whether its recipe has audio or not.
    from scipy import signal

    window = signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    window.flags.writeable = False  # shared by the threads of a worker
    return window


def mel_power(samples: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Mel power spectrogram (n_mels, frames) of float mono samples at ``spec.sample_rate``.

    Equals ``librosa.feature.melspectrogram(y=samples, sr=..., n_fft=..., hop_length=...,
    n_mels=..., fmin=..., fmax=...)`` with librosa's defaults (centred, zero-padded, periodic
    Hann window, power 2, Slaney filters).
    """
    y = np.asarray(samples, dtype=np.float32)
    n_fft, hop = spec.n_fft, spec.hop_length
    padded = np.pad(y, n_fft // 2)
    if len(padded) < n_fft:
        padded = np.pad(padded, (0, n_fft - len(padded)))
    frames = sliding_window_view(padded, n_fft)[::hop]
    window = _hann_window(n_fft)
    basis = _mel_basis(spec.sample_rate, n_fft, spec.n_mels, float(spec.fmin), resolved_fmax(spec))
    filters = _mel_filters(basis)
    out = np.zeros((spec.n_mels, len(frames)), dtype=np.float32)
    for start in range(0, len(frames), _FRAMES_PER_BLOCK):
        block = fft.rfft(frames[start : start + _FRAMES_PER_BLOCK] * window, axis=-1)
        power = np.ascontiguousarray((block.real**2 + block.imag**2).T)  # (bins, frames)
        stop = start + len(power[0])
        for band, (bins, weights) in enumerate(filters):
            for k, weight in zip(bins, weights, strict=True):
                out[band, start:stop] += weight * power[k]
    return out


@functools.lru_cache(maxsize=8)
def _cached_filters(key: bytes, shape: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray]]:
    basis = np.frombuffer(key, dtype=np.float32).reshape(shape)
    return tuple((np.flatnonzero(row), row[row != 0]) for row in basis)


def _mel_filters(basis: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Per mel band, its FFT bins and weights (a Slaney filter spans few bins).

    The product with the power spectrum is summed bin by bin in this fixed order rather than by
    BLAS: a BLAS matrix product splits its sums differently with the thread count (OpenBLAS,
    OMP_NUM_THREADS, threadpoolctl limits set by other libraries), which changed the bytes of
    `mel.npy` between processes.
    """
    return _cached_filters(basis.tobytes(), basis.shape)


def log_mel(samples: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """The stored spectrogram: mel power in dB re 1.0, floored at -100 dB, as float16."""
    import librosa

    power = mel_power(samples, spec)
    return librosa.power_to_db(power, ref=DB_REFERENCE, amin=AMIN, top_db=None).astype(np.float16)


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """int16 mono samples as a 16-bit FLAC file; the same samples always give the same bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class _Retryable(Exception):
    """One download attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry_after_s = reason, detail, retry_after_s


def _text(value: Any) -> str | None:
    """A row value as text; None for missing values (None, NaN, pandas NA, empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        if value != value:  # pandas NA and NaN-likes
            return None
    except (TypeError, ValueError):
        return None
    text = str(value).strip()
    return text or None


def _retry_after_s(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None  # absent, or an HTTP date, which archive.org does not send


class AudioMaker:
    """Turns aporee location rows into ``audio.flac`` and ``mel.npy`` members.

    Safe to share between I/O threads (each thread gets its own HTTP session). ``backoff_s`` is
    the first retry delay (doubled per retry); ``temp_dir`` is where downloads are staged
    (default: the system's temporary directory); nothing is left there after :meth:`make`.
    """

    def __init__(
        self,
        spec: AudioSpec,
        seed: int,
        *,
        backoff_s: float = 1.0,
        temp_dir: str | Path | None = None,
        chunk_bytes: int = 1 << 20,
    ) -> None:
        most_frames = spectrogram_frames(
            math.floor(spec.max_duration_s * spec.sample_rate), spec.hop_length
        )
        if most_frames < spec.min_frames:
            raise UserError(
                f"audio.max_duration_s = {spec.max_duration_s} keeps at most {most_frames} "
                f"spectrogram frames, fewer than audio.min_frames = {spec.min_frames}; "
                "raise max_duration_s or lower min_frames"
            )
        self.spec, self.seed = spec, seed
        self.backoff_s, self.chunk_bytes = backoff_s, chunk_bytes
        self.temp_dir = str(temp_dir) if temp_dir is not None else None
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one location
    def make(self, row: Mapping[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
        """The members ``{"audio.flac", "mel.npy"}`` and the json for the sample's ``"audio"``.

        Raises LocationFailed with reason "no_audio", "download_failed", "checksum_mismatch",
        "undecodable" or "too_short"; UserError when the row is not an aporee row.
        """
        missing = [column for column in REQUIRED_COLUMNS if column not in row]
        if missing:
            raise UserError(
                f"location {row.get('id')!r} lacks the column(s) {', '.join(missing)}: the "
                "audio section needs locations from the aporee sampler"
            )
        location_id = str(row["id"])
        url = _text(row["download_url"])
        if url is None:
            raise LocationFailed("no_audio", "the row has no download_url")
        size = _text(row.get("audio_size"))
        expected_size = int(float(size)) if size is not None else None
        expected_md5 = _text(row.get("audio_md5"))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="geoprep-audio-", dir=self.temp_dir) as staging:
            path = Path(staging) / _staging_name(row)
            self._download(url, path, expected_size, expected_md5)
            downloaded = time.perf_counter()
            rng = self._segment_rng(location_id)
            segment = read_segment(path, self.spec, rng, name=_text(row.get("audio_file")))
        mel = log_mel(from_pcm16(segment.samples), self.spec)
        members = {
            AUDIO_MEMBER: flac_bytes(segment.samples, segment.sample_rate),
            MEL_MEMBER: npy_bytes(mel),
        }
        log.debug(
            "%s: %.1f s kept of %.1f s; download %.2f s, decode+encode %.2f s",
            location_id,
            segment.duration_s,
            segment.original_duration_s,
            downloaded - started,
            time.perf_counter() - downloaded,
        )
        return members, self._metadata(row, segment, mel.shape[1])

    def _segment_rng(self, location_id: str) -> np.random.Generator:
        # A child stream of the location's generator: the segment draw then does not repeat
        # (and correlate with) the draws the imagery makes from the location generator itself.
        return location_rng(self.seed, location_id).spawn(1)[0]

    def _metadata(self, row: Mapping[str, Any], segment: Segment, frames: int) -> dict[str, Any]:
        spec = self.spec
        identifier = _text(row["identifier"])
        values = {
            "duration_s": round(segment.duration_s, 6),
            "original_duration_s": round(segment.original_duration_s, 6),
            "sample_rate": segment.sample_rate,
            "sample_rate_in": segment.sample_rate_in,
            "channels_in": segment.channels_in,
            "segment": spec.segment,
            "offset_s": round(segment.offset_s, 6),
            "n_mels": spec.n_mels,
            "n_fft": spec.n_fft,
            "hop_length": spec.hop_length,
            "fmin": float(spec.fmin),
            "fmax": resolved_fmax(spec),
            "frames": frames,
            "db_reference": DB_REFERENCE,
            "amin": AMIN,
        }
        attribution = {
            "identifier": identifier,
            "file": _text(row.get("audio_file")),
            "creator": _text(row.get("creator")),
            "title": _text(row.get("title")),
            "license_url": _text(row.get("license_url")),
            "source_url": DETAILS_URL.format(identifier=identifier) if identifier else None,
        }
        return audio_entry(values, attribution)

    # ------------------------------------------------------------------ download
    def _download(self, url: str, dest: Path, size: int | None, md5: str | None) -> None:
        """Fetch ``url`` into ``dest``, retrying throttling, server errors and bad copies."""
        attempts = self.spec.retries + 1
        for attempt in range(attempts):
            try:
                self._fetch_once(url, dest, size, md5)
                return
            except _Retryable as failure:
                if attempt + 1 == attempts:
                    raise LocationFailed(
                        failure.reason, f"{url}: {failure.detail} ({attempts} attempts)"
                    ) from failure
                delay = min(
                    MAX_DELAY_S,
                    max(self.backoff_s * 2**attempt, failure.retry_after_s or 0.0),
                )
                log.info("%s: %s; retrying in %.1f s", url, failure.detail, delay)
                time.sleep(delay)

    def _fetch_once(self, url: str, dest: Path, size: int | None, md5: str | None) -> None:
        digest, received = hashlib.md5(), 0
        timeout = (self.spec.timeout_s, self.spec.timeout_s)
        try:
            # identity encoding: the checksum is of the file's bytes, not of a compressed stream
            headers = {"Accept-Encoding": "identity"}
            with self._session().get(url, stream=True, timeout=timeout, headers=headers) as reply:
                if reply.status_code in RETRY_STATUSES:
                    raise _Retryable(
                        "download_failed", f"HTTP {reply.status_code}", _retry_after_s(reply)
                    )
                if reply.status_code != 200:
                    raise LocationFailed("download_failed", f"{url}: HTTP {reply.status_code}")
                with open(dest, "wb") as sink:
                    for chunk in reply.iter_content(self.chunk_bytes):
                        sink.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
        except requests.RequestException as exc:
            raise _Retryable("download_failed", f"{type(exc).__name__}: {exc}") from exc
        if size is not None and received != size:
            raise _Retryable("checksum_mismatch", f"{received} bytes, the metadata says {size}")
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise _Retryable("checksum_mismatch", f"md5 {digest.hexdigest()}, expected {md5}")

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"geoprep/{__version__}"
            if self.spec.proxy is not None:
                session.proxies = {"http": self.spec.proxy, "https": self.spec.proxy}
                # requests lets environment proxies override the session's own; ours must win
                session.trust_env = False
            with self._lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def close(self) -> None:
        """Close the HTTP sessions; the maker opens new ones if used again."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()
        for session in sessions:
            session.close()

    def __enter__(self) -> AudioMaker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _staging_name(row: Mapping[str, Any]) -> str:
    """A safe local name keeping the format's suffix (the remote name is not trusted)."""
    suffix = (_text(row.get("audio_format")) or "").lower()
    if suffix not in _DECODABLE_SUFFIXES:
        suffix = Path(_text(row.get("audio_file")) or "").suffix.lower().lstrip(".")
    return f"recording.{suffix}" if suffix in _DECODABLE_SUFFIXES else "recording"

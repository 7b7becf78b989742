"""Synthetic field recordings for the demo world: soundscapes by land cover, encoded as MP3/Ogg.

Every sound is made with numpy from the caller's random generator, so a seed gives the same
samples. Sources are simple physical caricatures: wind is gusty low-passed noise, birds are
trains of FM chirps, cars pass with a Doppler-shifted engine tone and tyre noise, voices are
pitched pulse trains through a vowel-like band, machinery is a diesel harmonic stack with
clanks. A land-cover class picks a :data:`SOUNDSCAPES` mix of them, so recordings of water,
towns and forests differ in their spectra as real ones do.

Encoding uses libsndfile (through soundfile), which writes MPEG layer III and Ogg Vorbis. MP3
output is byte-for-byte deterministic; Ogg output is not, because libsndfile gives each stream
a random serial number, so :func:`encode` rewrites the serial (and the page checksums) to a
fixed value.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile
from scipy import signal

#: Sample rates recordings are made at (Hz).
SAMPLE_RATES = (16_000, 22_050, 44_100, 48_000)
#: Container formats :func:`encode` writes, with their libsndfile format and subtype.
FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS")}
#: libsndfile's compression level (0 best quality .. 1 smallest); keeps the world small.
COMPRESSION_LEVEL = 0.9
_WRITE_FRAMES = 1 << 16

#: What a listener hears from each sound source, for item descriptions.
DESCRIPTIONS: dict[str, str] = {
    "wind": "wind",
    "leaves": "leaves rustling in the wind",
    "lapping": "water lapping at the shore",
    "waves": "waves rolling in",
    "river": "the river rushing past",
    "waterfall": "water pouring over the weir",
    "traffic": "traffic rumble",
    "cars": "cars passing",
    "voices": "voices",
    "crowd": "a crowd cheering",
    "birds": "birdsong",
    "gulls": "gulls calling",
    "woodpecker": "a woodpecker drumming",
    "insects": "crickets",
    "machinery": "heavy machinery working",
    "beeper": "a reversing alarm",
    "hum": "transformer hum",
    "cows": "cows lowing",
    "tractor": "a tractor",
    "golf": "golf balls being struck",
}

#: Land-cover class (plus ``river``, flowing water) -> sound sources and their loudness (RMS).
SOUNDSCAPES: dict[str, tuple[tuple[str, float], ...]] = {
    "water": (("lapping", 1.0), ("waves", 0.6), ("wind", 0.25), ("birds", 0.15)),
    "river": (("river", 1.0), ("birds", 0.25)),
    "breakwater": (("waves", 1.0), ("gulls", 0.45), ("wind", 0.35)),
    "dam": (("waterfall", 1.0), ("river", 0.4)),
    "bridge": (("cars", 1.0), ("traffic", 0.7), ("river", 0.35)),
    "built_up": (("traffic", 1.0), ("cars", 0.7), ("voices", 0.45)),
    "stadium": (("crowd", 1.0), ("voices", 0.4), ("traffic", 0.35)),
    "substation": (("hum", 1.0), ("wind", 0.25), ("traffic", 0.2)),
    "quarry": (("machinery", 1.0), ("beeper", 0.3), ("wind", 0.3)),
    "bare_rock": (("wind", 1.0), ("birds", 0.2)),
    "forest": (("birds", 1.0), ("leaves", 0.45), ("woodpecker", 0.35), ("wind", 0.2)),
    "farmland": (("wind", 0.7), ("birds", 0.7), ("insects", 0.45), ("tractor", 0.3)),
    "farm_building": (("cows", 1.0), ("tractor", 0.5), ("birds", 0.3)),
    "golf_course": (("birds", 0.8), ("golf", 0.6), ("voices", 0.2), ("wind", 0.3)),
    "other": (("wind", 0.6), ("birds", 0.6), ("insects", 0.5)),
}

Layers = Sequence[tuple[str, float]]


class _Synth:
    """Shared state of one rendering: length, rate, channels, generator and helpers."""

    def __init__(self, n: int, sr: int, channels: int, rng: np.random.Generator, mains_hz: float):
        self.n, self.sr, self.channels, self.rng, self.mains_hz = n, sr, channels, rng, mains_hz
        self.t = np.arange(n, dtype=np.float64) / sr

    def noise(self) -> np.ndarray:
        return self.rng.standard_normal(self.n, dtype=np.float32)

    def filtered(self, x: np.ndarray, low: float | None, high: float | None, order=2):
        """Band-, low- or high-pass ``x`` (Butterworth); edges above Nyquist are dropped."""
        nyquist = 0.45 * self.sr
        high = None if high is None or high >= nyquist else high
        if low is not None and high is not None:
            sos = signal.butter(order, (low, high), "bandpass", fs=self.sr, output="sos")
        elif low is not None:
            sos = signal.butter(order, low, "highpass", fs=self.sr, output="sos")
        elif high is not None:
            sos = signal.butter(order, high, "lowpass", fs=self.sr, output="sos")
        else:
            return x
        return signal.sosfilt(sos, x, axis=0).astype(np.float32)

    def _ramps(self, values: np.ndarray) -> np.ndarray:
        """Linear segments through ``values`` spread evenly over the recording."""
        step = -(-self.n // (len(values) - 1))
        ramp = np.arange(step, dtype=np.float32) / step
        # built at once by broadcasting: np.interp over millions of samples is far slower
        return (values[:-1, None] + np.diff(values)[:, None] * ramp).ravel()[: self.n]

    def _control_points(self, rate_hz: float) -> int:
        return max(2, int(self.n / self.sr * rate_hz) + 2)

    def envelope(self, rate_hz: float, spread: float) -> np.ndarray:
        """A slowly varying gain of mean 1: log-normal control points ``rate_hz`` per second."""
        values = np.exp(spread * self.rng.standard_normal(self._control_points(rate_hz)))
        env = self._ramps(values.astype(np.float32))
        return env / env.mean()

    def gate(self, rate_hz: float, duty: float) -> np.ndarray:
        """On/off switching about ``rate_hz`` times a second, ramped between states."""
        states = self.rng.random(self._control_points(rate_hz)) < duty
        return self._ramps(states.astype(np.float32))

    def ambient(self, make: Callable[[], np.ndarray], width: float = 0.5) -> np.ndarray:
        """A diffuse source: one mono signal, or two partly decorrelated channels."""
        common = make()
        if self.channels == 1:
            return common[:, None]
        left, right = make(), make()
        a, b = np.sqrt(1 - width), np.sqrt(width)
        return np.stack([a * common + b * left, a * common + b * right], axis=1)

    def events(self, rate_hz: float) -> np.ndarray:
        """Start times (samples) of a Poisson process of ``rate_hz`` events per second."""
        count = self.rng.poisson(rate_hz * self.n / self.sr)
        return np.sort(self.rng.integers(0, self.n, count))

    def place(self, out: np.ndarray, sound: np.ndarray, start: int, pan: float) -> None:
        """Add a point source at ``start`` with constant-power ``pan`` (-1 left .. 1 right)."""
        end = min(self.n, start + len(sound))
        if end <= start:
            return
        sound = sound[: end - start]
        if self.channels == 1:
            out[start:end, 0] += sound
            return
        angle = (np.clip(pan, -1, 1) + 1) * np.pi / 4
        out[start:end, 0] += np.cos(angle) * sound
        out[start:end, 1] += np.sin(angle) * sound

    def blank(self) -> np.ndarray:
        return np.zeros((self.n, self.channels), np.float32)


def _saw(frequency: np.ndarray | float, n: int, sr: int) -> np.ndarray:
    """A sawtooth wave (-1..1) following ``frequency`` (Hz, scalar or per sample)."""
    cycles = np.cumsum(np.broadcast_to(np.asarray(frequency, np.float64), (n,))) / sr
    return (2.0 * (cycles % 1.0) - 1.0).astype(np.float32)


def _chirp(sr: int, seconds: float, f_start: float, f_end: float, rng) -> np.ndarray:
    """One FM sweep with a smooth (Hann) envelope; a little vibrato makes it less synthetic."""
    n = max(8, int(seconds * sr))
    t = np.arange(n) / sr
    sweep = np.linspace(f_start, f_end, n) * (
        1 + 0.03 * np.sin(2 * np.pi * rng.uniform(20, 60) * t)
    )
    phase = 2 * np.pi * np.cumsum(sweep) / sr
    return (np.sin(phase) * np.hanning(n)).astype(np.float32)


def _decays(s: _Synth, starts: np.ndarray, amplitudes: np.ndarray, tau_s: float) -> np.ndarray:
    """A sum of exponential decays (time constant ``tau_s``) starting at ``starts``."""
    kernel = np.exp(-np.arange(int(6 * tau_s * s.sr) + 1, dtype=np.float32) / (tau_s * s.sr))
    out = np.zeros(s.n, np.float32)
    for start, amplitude in zip(starts.tolist(), np.asarray(amplitudes).tolist(), strict=True):
        end = min(s.n, start + kernel.size)
        out[start:end] += amplitude * kernel[: end - start]
    return out


def wind(s: _Synth) -> np.ndarray:
    gusts = s.envelope(0.4, 0.6)
    return s.ambient(lambda: s.filtered(s.noise(), 40, 500) * gusts, width=0.8)


def leaves(s: _Synth) -> np.ndarray:
    gusts = s.envelope(0.8, 0.7)
    return s.ambient(lambda: s.filtered(s.noise(), 1500, 6500) * gusts, width=0.9)


def lapping(s: _Synth) -> np.ndarray:
    def make() -> np.ndarray:
        starts = s.events(1.8)
        slaps = _decays(s, starts, s.rng.uniform(0.3, 1.0, starts.size), 0.12)
        return s.filtered(s.noise(), 350, 1800) * slaps

    return s.ambient(make, width=0.6)


def waves(s: _Synth) -> np.ndarray:
    period = s.rng.uniform(5.0, 9.0)
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * s.t / period + s.rng.uniform(0, 6.3))
    swell = (swell**3).astype(np.float32) * s.envelope(0.1, 0.3)
    return s.ambient(lambda: s.filtered(s.noise(), 200, 2500) * swell, width=0.5)


def river(s: _Synth) -> np.ndarray:
    flow = s.envelope(0.3, 0.1)
    return s.ambient(lambda: s.filtered(s.noise(), 150, 4000) * flow, width=0.7)


def waterfall(s: _Synth) -> np.ndarray:
    return s.ambient(lambda: s.filtered(s.noise(), 80, 6000, order=1), width=0.7)


def traffic(s: _Synth) -> np.ndarray:
    swell = s.envelope(0.2, 0.4)
    return s.ambient(lambda: s.filtered(s.noise(), 25, 180, order=3) * swell, width=0.3)


def cars(s: _Synth) -> np.ndarray:
    out = s.blank()
    for start in s.events(0.2):
        seconds = s.rng.uniform(3.0, 6.0)
        n = int(seconds * s.sr)
        t = np.arange(n) / s.sr
        middle = seconds / 2
        bump = np.exp(-(((t - middle) / (seconds / 5)) ** 2)).astype(np.float32)
        # approaching, the engine sounds higher; receding, lower (Doppler at ~50 km/h)
        doppler = 1 + 0.04 * np.tanh((middle - t) * 3)
        f0 = s.rng.uniform(28, 45) * doppler
        phase = 2 * np.pi * np.cumsum(f0) / s.sr
        engine = sum(np.sin(k * phase) / k for k in range(1, 7)).astype(np.float32)
        tyres = s.rng.standard_normal(n).astype(np.float32)
        tyres = signal.sosfilt(
            signal.butter(2, (300, 1500), "bandpass", fs=s.sr, output="sos"), tyres
        )
        sound = (0.8 * engine + 0.5 * tyres.astype(np.float32)) * bump
        direction = 1 if s.rng.random() < 0.5 else -1
        for offset, pan in ((0, -direction), (n // 2, direction)):  # drives across the stereo field
            s.place(out, sound[offset : offset + n // 2], int(start) + offset, 0.7 * pan)
    return out


def _speaker(s: _Synth, level: float) -> np.ndarray:
    """One talker: a pitched pulse train through a vowel-ish band, gated into syllables."""
    contour = s.rng.uniform(100, 240) * s.envelope(0.8, 0.08)
    voiced = s.filtered(
        _saw(contour, s.n, s.sr), s.rng.uniform(300, 600), s.rng.uniform(1800, 3200)
    )
    return level * voiced * s.gate(4.5, 0.55) * s.gate(0.3, 0.6)


def voices(s: _Synth) -> np.ndarray:
    out = s.blank()
    for _ in range(int(s.rng.integers(2, 5))):
        s.place(out, _speaker(s, s.rng.uniform(0.5, 1.0)), 0, s.rng.uniform(-0.8, 0.8))
    return out


def crowd(s: _Synth) -> np.ndarray:
    out = s.blank()
    for _ in range(10):
        s.place(out, _speaker(s, s.rng.uniform(0.3, 0.6)), 0, s.rng.uniform(-1, 1))
    starts = s.events(0.05)
    cheers = _decays(s, starts, s.rng.uniform(2, 4, starts.size), 2.5)
    out += s.ambient(lambda: s.filtered(s.noise(), 500, 3000) * cheers, width=0.8)
    return out


def birds(s: _Synth) -> np.ndarray:
    out = s.blank()
    top = min(6500.0, 0.42 * s.sr)
    for start in s.events(0.6):
        base = s.rng.uniform(2200, top - 500)
        pan = s.rng.uniform(-1, 1)
        position = int(start)
        for _ in range(int(s.rng.integers(3, 10))):
            seconds = s.rng.uniform(0.04, 0.15)
            f_start = np.clip(base * s.rng.uniform(0.8, 1.2), 1500, top)
            f_end = np.clip(f_start * s.rng.uniform(0.6, 1.5), 1500, top)
            s.place(
                out,
                s.rng.uniform(0.4, 1.0) * _chirp(s.sr, seconds, f_start, f_end, s.rng),
                position,
                pan,
            )
            position += int((seconds + s.rng.uniform(0.03, 0.12)) * s.sr)
    return out


def gulls(s: _Synth) -> np.ndarray:
    out = s.blank()
    for start in s.events(0.25):
        pan, position = s.rng.uniform(-1, 1), int(start)
        for _ in range(int(s.rng.integers(1, 5))):
            seconds = s.rng.uniform(0.25, 0.5)
            f0 = s.rng.uniform(650, 900)
            call = sum(
                _chirp(s.sr, seconds, k * f0 * 1.15, k * f0 * 0.8, s.rng) / k for k in (1, 2, 3)
            )
            s.place(out, call, position, pan)
            position += int((seconds + s.rng.uniform(0.1, 0.3)) * s.sr)
    return out


def woodpecker(s: _Synth) -> np.ndarray:
    starts = []
    for start in s.events(0.08):
        rate = s.rng.uniform(14, 20)
        starts += [int(start + k * s.sr / rate) for k in range(int(s.rng.integers(12, 25)))]
    starts = np.asarray([p for p in starts if p < s.n], dtype=np.int64)
    knocks = _decays(s, starts, np.ones(starts.size, np.float32), 0.006)
    tone = s.filtered(s.noise(), 700, 1600) * knocks
    out = s.blank()
    s.place(out, tone, 0, s.rng.uniform(-1, 1))
    return out


def insects(s: _Synth) -> np.ndarray:
    carrier = np.sin(2 * np.pi * min(4300.0, 0.4 * s.sr) * s.t)
    pulses = np.maximum(np.sin(2 * np.pi * 30 * s.t), 0) ** 2  # wing strokes
    chirps = np.clip(4 * np.sin(2 * np.pi * 2.2 * s.t) - 1.6, 0, 1)
    out = s.blank()
    s.place(out, (carrier * pulses * chirps).astype(np.float32), 0, s.rng.uniform(-0.6, 0.6))
    return out


def _engine(s: _Synth, f0_low: float, f0_high: float, cutoff: float) -> np.ndarray:
    load = s.envelope(0.3, 0.15)
    return s.filtered(_saw(s.rng.uniform(f0_low, f0_high) * load, s.n, s.sr), 20, cutoff)


def machinery(s: _Synth) -> np.ndarray:
    out = s.blank()
    s.place(out, _engine(s, 25, 40, 800), 0, s.rng.uniform(-0.5, 0.5))
    starts = s.events(0.4)
    clanks = _decays(s, starts, s.rng.uniform(1, 3, starts.size), 0.08)
    out += s.ambient(lambda: s.filtered(s.noise(), 500, 2500) * clanks, width=0.3)
    return out


def beeper(s: _Synth) -> np.ndarray:
    on = (np.sin(2 * np.pi * s.t) > 0) & (s.envelope(0.1, 1.0) > 1.2)
    tone = np.sin(2 * np.pi * s.rng.uniform(1000, 1200) * s.t) * on
    out = s.blank()
    s.place(out, tone.astype(np.float32), 0, s.rng.uniform(-1, 1))
    return out


def hum(s: _Synth) -> np.ndarray:
    base = 2 * s.mains_hz  # transformer cores hum at twice the mains frequency
    tone = sum(w * np.sin(2 * np.pi * k * base * s.t) for k, w in ((1, 1.0), (2, 0.5), (3, 0.3)))
    buzz = s.filtered(s.noise(), 2000, 5000) * 0.05
    return s.ambient(lambda: (tone.astype(np.float32) + buzz) * s.envelope(0.5, 0.03), width=0.1)


def cows(s: _Synth) -> np.ndarray:
    out = s.blank()
    for start in s.events(0.08):
        seconds = s.rng.uniform(1.0, 2.2)
        n = int(seconds * s.sr)
        contour = np.interp(np.linspace(0, 1, n), [0, 0.3, 1], s.rng.uniform(90, 160, 3))
        moo = _saw(contour, n, s.sr) * np.hanning(n).astype(np.float32)
        moo = signal.sosfilt(signal.butter(2, 900, fs=s.sr, output="sos"), moo).astype(np.float32)
        s.place(out, moo, int(start), s.rng.uniform(-1, 1))
    return out


def tractor(s: _Synth) -> np.ndarray:
    passing = 0.2 + np.sin(np.pi * s.t / max(s.t[-1], 1e-6)) ** 2
    out = s.blank()
    s.place(out, _engine(s, 18, 28, 600) * passing.astype(np.float32), 0, s.rng.uniform(-1, 1))
    return out


def golf(s: _Synth) -> np.ndarray:
    starts = s.events(0.07)
    hits = _decays(s, starts, s.rng.uniform(2, 4, starts.size), 0.004)
    out = s.blank()
    s.place(out, s.filtered(s.noise(), 1200, None) * hits, 0, s.rng.uniform(-1, 1))
    return out


#: Source name -> its synthesiser, which returns (frames, channels) float32 of any loudness.
SOURCES: dict[str, Callable[[_Synth], np.ndarray]] = {
    "wind": wind, "leaves": leaves, "lapping": lapping, "waves": waves, "river": river,
    "waterfall": waterfall, "traffic": traffic, "cars": cars, "voices": voices, "crowd": crowd,
    "birds": birds, "gulls": gulls, "woodpecker": woodpecker, "insects": insects,
    "machinery": machinery, "beeper": beeper, "hum": hum, "cows": cows, "tractor": tractor,
    "golf": golf,
}  # fmt: skip
assert set(SOURCES) == set(DESCRIPTIONS)


@dataclass(frozen=True)
class Recording:
    """Samples (frames, channels) float32 in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def render(
    layers: Layers,
    duration_s: float,
    sample_rate: int,
    channels: int,
    rng: np.random.Generator,
    *,
    mains_hz: float = 50.0,
    peak: float = 0.7,
) -> Recording:
    """Mix ``layers`` (source name, RMS loudness) into a recording, with microphone hiss.

    Each source is scaled to its loudness before mixing; the mix is then brought to ``peak``
    through a soft limiter, as a recordist's levels would.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    n = max(1, round(duration_s * sample_rate))
    synth = _Synth(n, sample_rate, channels, rng, mains_hz)
    mix = np.zeros((n, channels), np.float32)
    for name, loudness in layers:
        part = SOURCES[name](synth)
        rms = float(np.sqrt(np.mean(part**2)))
        if rms > 0:
            mix += (loudness / rms) * part
    mix += 0.003 * rng.standard_normal(mix.shape).astype(np.float32)  # microphone self-noise
    # fades keep the first and last samples quiet, as a trimmed recording's are
    fade = min(n // 4, int(0.05 * sample_rate))
    if fade:
        ramp = np.linspace(0, 1, fade, dtype=np.float32)[:, None]
        mix[:fade] *= ramp
        mix[n - fade :] *= ramp[::-1]
    top = float(np.max(np.abs(mix))) or 1.0
    samples = np.tanh(1.5 * mix / top) / np.tanh(1.5) * peak
    return Recording(samples.astype(np.float32), sample_rate)


def describe(layers: Layers) -> str:
    """What is heard, loudest first: ``"birdsong, leaves rustling in the wind and wind"``."""
    heard = [DESCRIPTIONS[name] for name, _ in sorted(layers, key=lambda layer: -layer[1])]
    return heard[0] if len(heard) == 1 else ", ".join(heard[:-1]) + " and " + heard[-1]


def encode(recording: Recording, fmt: str, serial: int = 1) -> bytes:
    """The recording as an ``"mp3"`` (VBR) or ``"ogg"`` (Vorbis) file; same input, same bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {sorted(FORMATS)}")
    container, subtype = FORMATS[fmt]
    options = {"bitrate_mode": "VARIABLE"} if fmt == "mp3" else {}
    buffer = io.BytesIO()
    with soundfile.SoundFile(
        buffer,
        "w",
        recording.sample_rate,
        recording.channels,
        format=container,
        subtype=subtype,
        compression_level=COMPRESSION_LEVEL,
        **options,
    ) as sink:
        # libsndfile 1.2's Vorbis writer crashes on a single write of ~2 million frames or more
        for start in range(0, len(recording.samples), _WRITE_FRAMES):
            sink.write(recording.samples[start : start + _WRITE_FRAMES])
    data = buffer.getvalue()
    return set_ogg_serial(data, serial) if fmt == "ogg" else data


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_page_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, init 0, no xor-out).

    zlib computes the reflected form of the same polynomial; feeding it bit-reversed bytes and
    bit-reversing the result gives the unreflected checksum at C speed.
    """
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """``data`` (a single-stream Ogg file) with every page's serial number set to ``serial``."""
    out = bytearray(data)
    position = 0
    while position < len(out):
        if out[position : position + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {position}")
        n_segments = out[position + 26]
        body = sum(out[position + 27 : position + 27 + n_segments])
        end = position + 27 + n_segments + body
        out[position + 14 : position + 18] = struct.pack("<I", serial & 0xFFFFFFFF)
        out[position + 22 : position + 26] = b"\0\0\0\0"
        crc = ogg_page_crc(bytes(out[position:end]))
        out[position + 22 : position + 26] = struct.pack("<I", crc)
        position = end
    return bytes(out)

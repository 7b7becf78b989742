"""Synthesisers of the demo world's sound sources, from wind and waves to traffic and birds.

Sources are simple physical caricatures: wind is gusty low-passed noise, birds are trains of
FM chirps, cars pass with a Doppler-shifted engine tone and tyre noise, voices are pitched pulse
trains through a vowel-like band, machinery is a diesel harmonic stack with clanks. Every one
draws from the :class:`Synth`'s random generator, so a seed gives the same samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import signal


class Synth:
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


def _decays(s: Synth, starts: np.ndarray, amplitudes: np.ndarray, tau_s: float) -> np.ndarray:
    """A sum of exponential decays (time constant ``tau_s``) starting at ``starts``."""
    kernel = np.exp(-np.arange(int(6 * tau_s * s.sr) + 1, dtype=np.float32) / (tau_s * s.sr))
    out = np.zeros(s.n, np.float32)
    for start, amplitude in zip(starts.tolist(), np.asarray(amplitudes).tolist(), strict=True):
        end = min(s.n, start + kernel.size)
        out[start:end] += amplitude * kernel[: end - start]
    return out


def wind(s: Synth) -> np.ndarray:
    gusts = s.envelope(0.4, 0.6)
    return s.ambient(lambda: s.filtered(s.noise(), 40, 500) * gusts, width=0.8)


def leaves(s: Synth) -> np.ndarray:
    gusts = s.envelope(0.8, 0.7)
    return s.ambient(lambda: s.filtered(s.noise(), 1500, 6500) * gusts, width=0.9)


def lapping(s: Synth) -> np.ndarray:
    def make() -> np.ndarray:
        starts = s.events(1.8)
        slaps = _decays(s, starts, s.rng.uniform(0.3, 1.0, starts.size), 0.12)
        return s.filtered(s.noise(), 350, 1800) * slaps

    return s.ambient(make, width=0.6)


def waves(s: Synth) -> np.ndarray:
    period = s.rng.uniform(5.0, 9.0)
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * s.t / period + s.rng.uniform(0, 6.3))
    swell = (swell**3).astype(np.float32) * s.envelope(0.1, 0.3)
    return s.ambient(lambda: s.filtered(s.noise(), 200, 2500) * swell, width=0.5)


def river(s: Synth) -> np.ndarray:
    flow = s.envelope(0.3, 0.1)
    return s.ambient(lambda: s.filtered(s.noise(), 150, 4000) * flow, width=0.7)


def waterfall(s: Synth) -> np.ndarray:
    return s.ambient(lambda: s.filtered(s.noise(), 80, 6000, order=1), width=0.7)


def traffic(s: Synth) -> np.ndarray:
    swell = s.envelope(0.2, 0.4)
    return s.ambient(lambda: s.filtered(s.noise(), 25, 180, order=3) * swell, width=0.3)


def cars(s: Synth) -> np.ndarray:
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


def _speaker(s: Synth, level: float) -> np.ndarray:
    """One talker: a pitched pulse train through a vowel-ish band, gated into syllables."""
    contour = s.rng.uniform(100, 240) * s.envelope(0.8, 0.08)
    voiced = s.filtered(
        _saw(contour, s.n, s.sr), s.rng.uniform(300, 600), s.rng.uniform(1800, 3200)
    )
    return level * voiced * s.gate(4.5, 0.55) * s.gate(0.3, 0.6)


def voices(s: Synth) -> np.ndarray:
    out = s.blank()
    for _ in range(int(s.rng.integers(2, 5))):
        s.place(out, _speaker(s, s.rng.uniform(0.5, 1.0)), 0, s.rng.uniform(-0.8, 0.8))
    return out


def crowd(s: Synth) -> np.ndarray:
    out = s.blank()
    for _ in range(10):
        s.place(out, _speaker(s, s.rng.uniform(0.3, 0.6)), 0, s.rng.uniform(-1, 1))
    starts = s.events(0.05)
    cheers = _decays(s, starts, s.rng.uniform(2, 4, starts.size), 2.5)
    out += s.ambient(lambda: s.filtered(s.noise(), 500, 3000) * cheers, width=0.8)
    return out


def birds(s: Synth) -> np.ndarray:
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


def gulls(s: Synth) -> np.ndarray:
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


def woodpecker(s: Synth) -> np.ndarray:
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


def insects(s: Synth) -> np.ndarray:
    carrier = np.sin(2 * np.pi * min(4300.0, 0.4 * s.sr) * s.t)
    pulses = np.maximum(np.sin(2 * np.pi * 30 * s.t), 0) ** 2  # wing strokes
    chirps = np.clip(4 * np.sin(2 * np.pi * 2.2 * s.t) - 1.6, 0, 1)
    out = s.blank()
    s.place(out, (carrier * pulses * chirps).astype(np.float32), 0, s.rng.uniform(-0.6, 0.6))
    return out


def _engine(s: Synth, f0_low: float, f0_high: float, cutoff: float) -> np.ndarray:
    load = s.envelope(0.3, 0.15)
    return s.filtered(_saw(s.rng.uniform(f0_low, f0_high) * load, s.n, s.sr), 20, cutoff)


def machinery(s: Synth) -> np.ndarray:
    out = s.blank()
    s.place(out, _engine(s, 25, 40, 800), 0, s.rng.uniform(-0.5, 0.5))
    starts = s.events(0.4)
    clanks = _decays(s, starts, s.rng.uniform(1, 3, starts.size), 0.08)
    out += s.ambient(lambda: s.filtered(s.noise(), 500, 2500) * clanks, width=0.3)
    return out


def beeper(s: Synth) -> np.ndarray:
    on = (np.sin(2 * np.pi * s.t) > 0) & (s.envelope(0.1, 1.0) > 1.2)
    tone = np.sin(2 * np.pi * s.rng.uniform(1000, 1200) * s.t) * on
    out = s.blank()
    s.place(out, tone.astype(np.float32), 0, s.rng.uniform(-1, 1))
    return out


def hum(s: Synth) -> np.ndarray:
    base = 2 * s.mains_hz  # transformer cores hum at twice the mains frequency
    tone = sum(w * np.sin(2 * np.pi * k * base * s.t) for k, w in ((1, 1.0), (2, 0.5), (3, 0.3)))
    buzz = s.filtered(s.noise(), 2000, 5000) * 0.05
    return s.ambient(lambda: (tone.astype(np.float32) + buzz) * s.envelope(0.5, 0.03), width=0.1)


def cows(s: Synth) -> np.ndarray:
    out = s.blank()
    for start in s.events(0.08):
        seconds = s.rng.uniform(1.0, 2.2)
        n = int(seconds * s.sr)
        contour = np.interp(np.linspace(0, 1, n), [0, 0.3, 1], s.rng.uniform(90, 160, 3))
        moo = _saw(contour, n, s.sr) * np.hanning(n).astype(np.float32)
        moo = signal.sosfilt(signal.butter(2, 900, fs=s.sr, output="sos"), moo).astype(np.float32)
        s.place(out, moo, int(start), s.rng.uniform(-1, 1))
    return out


def tractor(s: Synth) -> np.ndarray:
    passing = 0.2 + np.sin(np.pi * s.t / max(s.t[-1], 1e-6)) ** 2
    out = s.blank()
    s.place(out, _engine(s, 18, 28, 600) * passing.astype(np.float32), 0, s.rng.uniform(-1, 1))
    return out


def golf(s: Synth) -> np.ndarray:
    starts = s.events(0.07)
    hits = _decays(s, starts, s.rng.uniform(2, 4, starts.size), 0.004)
    out = s.blank()
    s.place(out, s.filtered(s.noise(), 1200, None) * hits, 0, s.rng.uniform(-1, 1))
    return out


#: Source name -> its synthesiser, which returns (frames, channels) float32 of any loudness.
SOURCES: dict[str, Callable[[Synth], np.ndarray]] = {
    "wind": wind, "leaves": leaves, "lapping": lapping, "waves": waves, "river": river,
    "waterfall": waterfall, "traffic": traffic, "cars": cars, "voices": voices, "crowd": crowd,
    "birds": birds, "gulls": gulls, "woodpecker": woodpecker, "insects": insects,
    "machinery": machinery, "beeper": beeper, "hum": hum, "cows": cows, "tractor": tractor,
    "golf": golf,
}  # fmt: skip

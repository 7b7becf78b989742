"""Synthetic field recordings for the demo world: soundscapes by land cover, encoded as MP3/Ogg.

Every sound is made with numpy from the caller's random generator, so a seed gives the same
samples. The sources (:mod:`geoprep.demo.sound_sources`) are simple physical caricatures of
wind, water, traffic, voices, birds and machinery. A land-cover class picks a
:data:`SOUNDSCAPES` mix of them, so recordings of water, towns and forests differ in their
spectra as real ones do. :func:`render` mixes a recording; :func:`encode` (from
:mod:`geoprep.demo.sound_encoding`) writes it as reproducible MP3 or Ogg bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoprep.demo.sound_encoding import FORMATS, encode, set_ogg_serial
from geoprep.demo.sound_sources import SOURCES, Synth

__all__ = [
    "DESCRIPTIONS",
    "FORMATS",
    "SAMPLE_RATES",
    "SOUNDSCAPES",
    "Layers",
    "Recording",
    "describe",
    "encode",
    "render",
    "set_ogg_serial",
]

#: Sample rates recordings are made at (Hz).
SAMPLE_RATES = (16_000, 22_050, 44_100, 48_000)

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
assert set(SOURCES) == set(DESCRIPTIONS)

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
    synth = Synth(n, sample_rate, channels, rng, mains_hz)
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

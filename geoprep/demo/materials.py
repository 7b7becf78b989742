"""What each feature of the demo world is made of: one class, many looks.

Real features of one class differ far more than a single recipe can show: ponds run from clear
and dark to silty brown or green with algae, pits are dug in sand, gravel or limestone and
flood or grow over once worked out, outcrops are dark or pale and half grassed, substation
yards are gravel, concrete or mown grass, farm roofs are bright steel, rusty, dark shingle or
grey, and farm dams are grassed earth banks where river dams are concrete. Each feature draws
its materials from :meth:`~geoprep.demo.render.Surface.param` (a value per feature), so every
sensor sees the same choice; a class is then told by its form and setting, not by its colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from geoprep.demo.render import Surface


def _pick(value: np.ndarray, *edges: float) -> list[np.ndarray]:
    """Masks of the bins of ``value`` (0..1) between ``edges``, as float32."""
    bounds = [0.0, *edges, 1.0001]
    return [((value >= lo) & (value < hi)).astype(np.float32) for lo, hi in pairwise(bounds)]


def pairwise(values):
    return list(zip(values[:-1], values[1:], strict=True))


def mix_water(s: Surface, a: np.ndarray) -> None:
    """Calm and dark with a little wind texture and glint; silt and algae per water body."""
    glint = np.clip(s.at("water", s.fine) - 0.85, 0, 1) * 2.0
    # both stay dark in the near infrared, where water is told from land
    silt = 0.25 * s.param("water", 41) ** 2
    patchy = np.clip(0.75 + 0.35 * s.at("water", s.mid), 0, 1)
    bloom = 0.12 * np.clip(2 * s.param("water", 42) - 1, 0, 1) * patchy
    clear = (0.97 + 0.03 * s.at("water", s.coarse)) * (1 - silt - bloom)
    s.put(a, "water", water=clear, soil=silt, leaf=bloom, metal=glint)


def mix_rock(s: Surface, a: np.ndarray) -> None:
    """Outcrops rough at every scale, dark to pale, with grass and lichen in their hollows."""
    f, m, c = (s.at("bare_rock", layer) for layer in (s.fine, s.mid, s.coarse))
    tone = 0.55 + 0.8 * s.param("bare_rock", 46)
    rough = np.clip(0.8 + 0.35 * f + 0.3 * m + 0.2 * c, 0.2, 1.5) * tone
    grown = (m + 0.5 * c > 1.3 - 2.2 * s.param("bare_rock", 47)).astype(np.float32)
    s.put(a, "bare_rock", rock=rough * (1 - 0.75 * grown), leaf=0.45 * grown, straw=0.25 * grown)


def mix_quarry(s: Surface, a: np.ndarray) -> None:
    """Benches every 14 m down from the rim in sand, gravel or limestone; worked-out pits
    flood from the bottom and grow over in patches."""
    depth = s.at("quarry", s.depth)
    face = 0.55 + 0.4 * ((depth % 14.0) < 9.0) + 0.1 * s.at("quarry", s.fine)
    sand, gravel, lime = _pick(s.param("quarry", 43), 0.35, 0.7)
    s.put(
        a,
        "quarry",
        rock=face * (gravel + 0.3 * lime),
        soil=0.2 * gravel + sand * (0.2 + 0.5 * face),
        straw=0.3 * face * sand,
        concrete=0.7 * face * lime,
    )
    # a pit opened with the land-cover change is still being dug: bare, dry benches
    worked_out = ~s.recent("quarry")
    grown = worked_out & (s.at("quarry", s.mid) > 1.2 - 1.6 * s.param("quarry", 44) ** 2)
    s.put(a, "quarry", grown, leaf=0.45, straw=0.2, rock=0.1, soil=0.15, concrete=0.0)
    flooded = worked_out & (depth > 15 + 70 * s.param("quarry", 45))
    s.put(a, "quarry", flooded, water=0.9, rock=0.05, soil=0.0, straw=0.0, concrete=0.0, leaf=0.0)


def mix_structures(s: Surface, a: np.ndarray, pylons: np.ndarray) -> None:
    """Substation yards, farm roofs and dams, each of a material drawn per feature."""
    gravel, slab, grass = _pick(s.param("substation", 48), 0.5, 0.8)
    s.put(
        a,
        "substation",
        rock=0.6 * gravel + 0.15 * grass,
        concrete=0.55 * slab,
        leaf=0.5 * grass,
        metal=0.35 * pylons,
        asphalt=0.15,
    )
    steel, rust, shingle, grey = _pick(s.param("farm_building", 49), 0.4, 0.6, 0.85)
    s.put(
        a,
        "farm_building",
        metal=0.75 * steel + 0.15 * rust,
        tile=0.2 * steel + 0.55 * rust,
        soil=0.1 * rust,
        asphalt=0.85 * shingle + 0.3 * grey,
        concrete=0.6 * grey,
    )
    concrete, earth = _pick(s.param("dam", 50), 0.3)
    crest = (s.at("dam", s.depth) > 4.0) * earth  # a gravel track along an earth dam's crest
    s.put(
        a,
        "dam",
        concrete=0.95 * concrete,
        water=0.05 * concrete,
        leaf=0.45 * earth * (1 - crest),
        straw=0.3 * earth * (1 - crest),
        soil=0.2 * earth,
        rock=0.5 * crest,
    )

"""Shape makers of the demo landscape: wobbly blobs and rotated rectangles, in metres."""

from __future__ import annotations

import numpy as np
from shapely import affinity
from shapely.geometry import Polygon, box


def blob(cx: float, cy: float, r: float, rng, roughness=0.25, aspect=1.0, angle=0.0) -> Polygon:
    """A star-shaped polygon with a wobbly outline (always valid)."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += roughness / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 6.3))
    radius = r * np.clip(radius, 0.45, None)
    shape = Polygon(np.column_stack([radius * np.cos(theta) * aspect, radius * np.sin(theta)]))
    return affinity.translate(affinity.rotate(shape, angle), cx, cy)


def rect(cx: float, cy: float, along: float, across: float, angle: float) -> Polygon:
    """A rectangle ``along`` long in direction ``angle`` (degrees) and ``across`` wide."""
    shape = box(-along / 2, -across / 2, along / 2, across / 2)
    return affinity.translate(affinity.rotate(shape, angle), cx, cy)

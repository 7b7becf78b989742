"""Spherical helpers shared by samplers and geo-clustering."""

from __future__ import annotations

import numpy as np

#: Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
#: Kilometres per degree of latitude on the mean sphere.
KM_PER_DEGREE = 2 * np.pi * EARTH_RADIUS_M / 1000 / 360


def unit_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Points on the unit sphere, shape (n, 3), from degrees."""
    lat_r, lon_r = np.radians(np.asarray(lat, float)), np.radians(np.asarray(lon, float))
    cos_lat = np.cos(lat_r)
    return np.stack([cos_lat * np.cos(lon_r), cos_lat * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def xyz_to_latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Degrees (lat, lon) of the directions of (n, 3) vectors (any length)."""
    xyz = np.asarray(xyz, float)
    norm = np.linalg.norm(xyz, axis=-1)
    lat = np.degrees(np.arcsin(np.clip(xyz[..., 2] / norm, -1, 1)))
    lon = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))
    return lat, lon


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Haversine distance in kilometres."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M / 1000 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))

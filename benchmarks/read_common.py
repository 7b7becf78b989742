"""What the read_* and plan_* benchmarks share: the machine they ran on and timed rounds."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any


def machine(*packages: str) -> dict[str, Any]:
    """Cores, load and versions; the load tells whether other work shared the cores."""
    import numpy
    import rasterio

    return {
        "cpus": os.cpu_count(),
        "processor": _processor(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "gdal": rasterio.__gdal_version__,
        **{package: _installed(package) for package in packages},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except Exception:  # noqa: BLE001 - a missing package is reported as such
        return None


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(info: dict[str, Any]) -> str:
    load = info["load_average_1min"]
    shared = " (other work shared the cores)" if load > 0.5 * info["cpus"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("cpus", "processor"))
    return f"{info['cpus']} CPUs ({info['processor']}), load {load}{shared}; {versions}"


def timed_rounds(
    variants: dict[str, Callable[[], int]], repeat: int
) -> dict[str, dict[str, float]]:
    """Each round runs every variant once, in a rotating order; per variant the median of the
    rounds' items per wall second and per CPU second of this process."""
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeat):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            items = variants[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            walls[name].append(items / wall)
            cpus[name].append(items / max(cpu, 1e-9))
    return {
        name: {
            "per_s": statistics.median(walls[name]),
            "per_cpu_s": statistics.median(cpus[name]),
            "rounds": walls[name],
        }
        for name in names
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""What the build benchmarks share: the demo world served (through counting, delaying relays) from
another process, and demo recipes planned and built with the `geoprep` command in subprocesses,
measured by wall time, CPU time of the build and of the servers, requests and peak memory."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import rasterio
from rich.console import Console

from geoprep.core.errors import SourceError

console = Console(stderr=True, width=150)
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
#: the `geoprep` command of this checkout, whichever console script is installed
GEOPREP = [sys.executable, "-c", "import sys; from geoprep.cli import main; sys.exit(main())"]


# ------------------------------------------------------------------------------ the world
def ensure_world(world: Path, scale: str = "small") -> None:
    if (world / "world.json").exists():
        return
    from geoprep.demo.world import build_world

    console.print(f"building the demo world at {world} (scale {scale}) ...")
    build_world(world, seed=0, scale=scale)


def _kind(target: str) -> str:
    """A STAC API request's kind: 'search' or 'other' (root, collection, queryables)."""
    return "search" if "/search" in target.split("?")[0] else "other"


def _serve(world: str, delay: float, connection: Any) -> None:
    from geoprep.demo.relay import FaultRelay
    from geoprep.demo.servers import gdal_http_env, serve_world

    counts: Counter[str] = Counter()

    def counter(prefix: str, classify):
        def match(method: str, target: str) -> bool:
            counts[f"{prefix} {classify(method, target)}"] += 1
            return False  # count, never inject

        return match

    with (
        serve_world(world) as services,
        FaultRelay(services.stac_url) as stac,
        FaultRelay(services.blob_url) as blobs,
    ):
        for relay in (stac, blobs):
            relay.delay = delay
        # a fault plan that never fires sees every request: the relays count by kind
        stac.inject("500", rate=0.0, match=counter("stac", lambda m, t: _kind(t)))
        blobs.inject("500", rate=0.0, match=counter("blob", lambda m, t: m))
        env = {"PC_SDK_SAS_URL": services.sas_token_url, **gdal_http_env(blobs.url)}
        connection.send(
            {
                "env": env,
                "stac_url": stac.url,
                "overpass_url": services.overpass_url,
                "archive_proxy_url": services.archive_proxy_url,
            }
        )
        while True:
            try:
                command = connection.recv()
            except EOFError:
                return
            if command == "counts":
                connection.send(dict(counts))
            elif command == "reset":
                counts.clear()
                connection.send(None)
            else:
                return


@dataclass
class Served:
    """The served world: what clients need, and the servers' counters."""

    info: dict[str, Any]
    process: psutil.Process
    connection: Any

    @property
    def env(self) -> dict[str, str]:
        return self.info["env"]

    def counts(self) -> dict[str, int]:
        """Requests by kind since the last reset: 'stac search', 'stac other', 'blob GET'..."""
        self.connection.send("counts")
        return self.connection.recv()

    def reset(self) -> None:
        self.connection.send("reset")
        self.connection.recv()

    def cpu_s(self) -> float:
        """CPU seconds of the servers and relays (all their threads)."""
        return sum(self.process.cpu_times()[:2])


@contextmanager
def server_process(
    world: Path, target: Any, args: tuple[Any, ...], timeout: float = 180
) -> Iterator[tuple[dict[str, Any], psutil.Process, Any]]:
    """Run `target(*args, connection)` in a spawned process until it sends what clients need;
    yield (that, the process, the connection), then tell it to stop (terminated if it won't)."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=target, args=(*args, there))
    process.start()
    there.close()
    try:
        if not here.poll(timeout):
            raise SourceError(
                f"the demo world servers for {world} did not start within {timeout:.0f} s"
            )
        try:
            info = here.recv()
        except EOFError:
            raise SourceError(f"the demo world servers for {world} failed to start") from None
        yield info, psutil.Process(process.pid), here
    finally:
        try:
            here.send("stop")
        except OSError:
            pass
        process.join(30)
        if process.is_alive():
            process.terminate()
            process.join(5)


@contextmanager
def served(world: Path, delay: float = 0.0) -> Iterator[Served]:
    """Serve the world from another process, behind relays that count the STAC API's and the
    blob store's requests and add `delay` seconds to each."""
    with server_process(world, _serve, (str(world), delay)) as (info, process, connection):
        yield Served(info, process, connection)


# ------------------------------------------------------------------------------ builds
def recipe_sets(name: str, world: Path, served: Served, n: int | None = None) -> list[str]:
    """`--set` arguments pointing demo recipe `name` at the world and its servers."""
    from geoprep.demo.run import demo_overrides

    services = SimpleNamespace(**{k: v for k, v in served.info.items() if k != "env"})
    overrides = demo_overrides(name, world, services)
    if n is not None:
        overrides.append(f"sampler.n={n}")
    return [part for value in overrides for part in ("--set", value)]


def _geoprep(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `geoprep ARGS` and wait for it (and so for its workers: their CPU time then counts in
    this process's children's, which the callers read around it)."""
    result = subprocess.run(
        [*GEOPREP, *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SourceError(f"geoprep {' '.join(args[:2])} failed:\n{result.stderr[-2000:]}")
    return result


def plan(name: str, world: Path, served: Served, out: Path, n: int | None = None) -> Path:
    """Plan demo recipe `name` into OUT (once; an existing plan of the same recipe is kept)."""
    if not (out / "plan.json").exists():
        args = ["plan", str(RECIPES / f"{name}.yaml"), "-o", str(out)]
        _geoprep([*args, *recipe_sets(name, world, served, n)], served.env)
    return out


@dataclass
class BuildRun:
    """One build, measured."""

    samples: int
    wall_s: float  # the build's own time (summary `seconds`: from planning checks to manifest)
    cpu_s: float  # CPU of the geoprep process and its workers, imports included
    server_cpu_s: float  # the servers' and relays' (another process)
    requests: dict[str, int]
    peak_rss_mb: float  # the geoprep process and its workers together

    def per_sample(self, value: float) -> float:
        return value / self.samples if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build(
    name: str,
    world: Path,
    served: Served,
    plan_dir: Path,
    *,
    n: int | None = None,
    workers: int = 1,
    io_threads: int = 8,
) -> BuildRun:
    """Build demo recipe `name` from `plan_dir` into a new temporary directory, measured."""
    with tempfile.TemporaryDirectory(prefix="geoprep-bench-") as out:
        args = ["build", str(RECIPES / f"{name}.yaml"), "-o", out, "--plan", str(plan_dir)]
        args += ["--workers", str(workers), "--io-threads", str(io_threads), "--json"]
        return _watched(args + recipe_sets(name, world, served, n), served)


def _watched(args: list[str], served: Served) -> BuildRun:
    """Run `geoprep ARGS`, sampling every 50 ms the CPU time and resident memory of the process
    and its descendants (workers fork from a fork server, so the process's own resource usage
    of its children would miss them)."""
    served.reset()
    server_before = served.cpu_s()
    process = subprocess.Popen(
        [*GEOPREP, *args],
        env={**os.environ, **served.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    root = psutil.Process(process.pid)
    cpu: dict[int, float] = {}
    peak = 0
    while process.poll() is None:
        rss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for member in tree:
            try:
                times = member.cpu_times()
                cpu[member.pid] = times.user + times.system
                rss += member.memory_info().rss
            except psutil.Error:  # ended between the listing and the reading
                continue
        peak = max(peak, rss)
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SourceError(f"geoprep {' '.join(args[:2])} failed:\n{stderr[-2000:]}")
    summary = json.loads(stdout)
    return BuildRun(
        samples=summary["samples"],
        wall_s=summary["seconds"],
        cpu_s=sum(cpu.values()),
        server_cpu_s=served.cpu_s() - server_before,
        requests=served.counts(),
        peak_rss_mb=peak / 2**20,
    )


# ------------------------------------------------------------------------------ the machine
def machine() -> dict[str, Any]:
    """Cores, load and versions: the build benchmarks share the machine with whatever runs."""
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{value:.2f}" for value in info["load_average"])
    return (
        f"{info['cpus']} CPUs ({info['processor']}), Python {info['python']}, GDAL "
        f"{info['gdal']}, load average {load} (1, 5, 15 min)"
    )

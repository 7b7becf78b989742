"""Patch extraction throughput: geoprep's reader, a naive rasterio loop and odc-stac, side by side.

All methods read the same bands of the same scenes onto the same UTM grids (checked before any
timing), in one process, in rotating order, against the demo world served on loopback (signed
blob reads over HTTP) and from its local files. Run `python -m benchmarks.patch_throughput -h`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import planetary_computer
import rasterio
import rasterio.env
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning
from rich.console import Console
from rich.table import Table

from benchmarks.build_common import server_process
from benchmarks.patch_readers import (
    SENSORS,
    Href,
    PatchJob,
    Reader,
    Setup,
    close_pools,
    methods,
)
from geoprep.building.catalogs import Catalog, open_catalog
from geoprep.building.grid import TargetGrid
from geoprep.building.raster import gdal_env
from geoprep.core.errors import UserError
from geoprep.recipe.sections import CatalogSpec

console = Console(stderr=True)


# ------------------------------------------------------------------------------ the world
def ensure_world(world: Path, scale: str) -> None:
    if (world / "world.json").exists():
        return
    from geoprep.demo.world import build_world

    console.print(f"building the demo world at {world} (scale {scale}) ...")
    build_world(world, seed=0, scale=scale)


def _serve(world: str, connection: Any) -> None:
    from geoprep.demo.servers import serve_world

    with serve_world(world) as services:
        connection.send({"env": services.env(), "stac_url": services.stac_url})
        try:
            connection.recv()  # until the benchmark says stop, or goes away
        except EOFError:
            pass


@contextmanager
def served(world: Path) -> Iterator[dict[str, Any]]:
    """Serve the world from another process, so the servers do not compete for this one's GIL."""
    with server_process(world, _serve, (str(world),), timeout=120) as (info, server, _):
        # The servers' CPU seconds (all their threads), to report what each method costs them.
        yield {**info, "server_cpu_s": lambda: sum(server.cpu_times()[:2])}


def pick_locations(world: Path, n: int, extent_m: float, seed: int) -> pd.DataFrame:
    """`n` points, AOIs in turn, uniform inside each AOI with room for the whole patch."""
    aois = json.loads((world / "truth" / "aois.geojson").read_text())["features"]
    rng = np.random.default_rng(seed)
    to_lonlat = {
        aoi["properties"]["epsg"]: Transformer.from_crs(
            aoi["properties"]["epsg"], 4326, always_xy=True
        )
        for aoi in aois
    }
    rows = []
    for index in range(n):
        properties = aois[index % len(aois)]["properties"]
        west, south, east, north = properties["bounds_utm"]
        inset = extent_m / 2 + 60  # the grid snaps by up to a pixel; keep clear of the edges
        if east - west <= 2 * inset or north - south <= 2 * inset:
            raise UserError(
                f"a {extent_m:g} m patch does not fit in AOI {properties['name']} "
                f"({east - west:g} m); use a smaller --size or --gsd, or a larger world --scale"
            )
        x = rng.uniform(west + inset, east - inset)
        y = rng.uniform(south + inset, north - inset)
        lon, lat = to_lonlat[properties["epsg"]].transform(x, y)
        rows.append({"id": f"{properties['name']}-{index:04d}", "lat": lat, "lon": lon})
    return pd.DataFrame(rows)


def patch_jobs(
    catalog: Catalog,
    locations: pd.DataFrame,
    collection: str,
    gsd_size: tuple[float, int],
    seed: int,
    scenes: str,
) -> tuple[list[PatchJob], float]:
    """One scene per location (seeded, or the clearest, shared by neighbours); search seconds."""
    started = time.perf_counter()
    found = catalog.candidates(locations, collection, "1970-01-01", "2100-12-31")
    search_s = time.perf_counter() - started
    gsd, size = gsd_size
    jobs = []
    for index, row in enumerate(locations.itertuples()):
        items = sorted(found[row.id], key=lambda item: item.id)
        if not items:
            raise UserError(f"no {collection} item covers location {row.id}")
        if scenes == "shared":
            item = min(items, key=lambda i: (i.properties.get("eo:cloud_cover", 100.0), i.id))
        else:
            item = items[int(np.random.default_rng([seed, index]).integers(len(items)))]
        jobs.append(PatchJob(row.id, TargetGrid.around(row.lat, row.lon, gsd, size), item))
    return jobs, search_s


def _signer(signed: bool, run_key: str) -> Href:
    """Hrefs of one run; over HTTP signed, with a run-specific query so that GDAL's per-URL
    caches (headers, byte ranges) start cold for every run of every method."""
    if not signed:
        return lambda href: href

    def signed_href(href: str) -> str:
        url = planetary_computer.sign(href)
        return f"{url}{'&' if '?' in url else '?'}bench_run={run_key}"

    return signed_href


# ------------------------------------------------------------------------------ measuring
def compare(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    """Largest absolute difference and the share of pixels differing by more than 1."""
    worst, off, total = 0.0, 0, 0
    for expected, got in zip(reference, other, strict=True):
        if expected.shape != got.shape:
            return {"max_abs_diff": float("inf"), "mismatch_share": 1.0}
        diff = np.abs(expected.astype(np.float64) - got.astype(np.float64))
        worst = max(worst, float(diff.max(initial=0)))
        off += int(np.count_nonzero(diff > 1))
        total += diff.size
    return {"max_abs_diff": worst, "mismatch_share": off / max(total, 1)}


def run_source(
    name: str,
    jobs: list[PatchJob],
    signed: bool,
    setup: Setup,
    readers: dict[str, Reader],
    repeat: int,
    max_mismatch: float,
    server_cpu_s: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Warm up and check every method once, then time `repeat` rounds in rotating order.

    `server_cpu_s` (over HTTP) reads the servers' CPU seconds, reported per patch and method."""
    outputs = {
        method: reader(jobs, _signer(signed, f"warmup-{index}"), setup)
        for index, (method, reader) in enumerate(readers.items())
    }
    reference_name = next(iter(readers))
    checks = {m: compare(outputs[reference_name], out) for m, out in outputs.items()}
    wrong = {m: c for m, c in checks.items() if c["mismatch_share"] > max_mismatch}
    if wrong:
        raise SystemExit(f"{name}: methods read different patches than {reference_name}: {wrong}")
    seconds: dict[str, list[float]] = {method: [] for method in readers}
    cpu: dict[str, list[float]] = {method: [] for method in readers}
    server_cpu: dict[str, list[float]] = {method: [] for method in readers}
    names = list(readers)
    for round_ in range(repeat):
        shift = round_ % len(names)
        for index, method in enumerate(names[shift:] + names[:shift]):
            href = _signer(signed, f"{round_}-{index}")
            server_started = server_cpu_s() if server_cpu_s else 0.0
            started, cpu_started = time.perf_counter(), time.process_time()
            readers[method](jobs, href, setup)
            seconds[method].append(time.perf_counter() - started)
            cpu[method].append(time.process_time() - cpu_started)
            if server_cpu_s:
                server_cpu[method].append(server_cpu_s() - server_started)
    rates = {m: len(jobs) / statistics.median(s) for m, s in seconds.items()}
    methods_ = {
        m: {
            "patches_per_s": rates[m],
            # this process only (all its threads); the servers run in another process
            "cpu_ms_per_patch": 1000 * statistics.median(cpu[m]) / len(jobs),
            "server_cpu_ms_per_patch": (
                1000 * statistics.median(server_cpu[m]) / len(jobs) if server_cpu_s else None
            ),
            "seconds": seconds[m],
            **checks[m],
        }
        for m in readers
    }
    return {
        "patches": len(jobs),
        "scenes": len({job.item.id for job in jobs}),
        "methods": methods_,
        "ratios": ratios(rates, reference_name),
    }


def ratios(rates: dict[str, float], geoprep: str) -> dict[str, Any]:
    """geoprep as the build runs it against the naive loop and the best odc-stac variant."""
    found: dict[str, Any] = {}
    naive = [m for m in rates if m.startswith("naive")]
    odc = [m for m in rates if m.startswith("odc-stac")]
    if naive:
        found["geoprep/naive"] = rates[geoprep] / rates[naive[0]]
    if odc:
        best = max(odc, key=rates.__getitem__)
        found["geoprep/odc-stac"] = rates[geoprep] / rates[best]
        found["best odc-stac"] = best
    return found


def machine() -> dict[str, Any]:
    packages = ("rasterio", "odc-stac", "odc-geo", "numpy")
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            found[package] = None
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "gdal": rasterio.__gdal_version__,
        **found,
        # the machine may be shared: a load above its CPU count at the start means noisy times
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


# ------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.patch_throughput",
        description="Patch extraction throughput of geoprep, a naive rasterio loop and odc-stac "
        "on the demo world (same patches, checked equal, timed side by side).",
    )
    parser.add_argument("--world", required=True, type=Path, help="demo world (built if missing)")
    parser.add_argument("--scale", default="small", choices=("tiny", "small", "full"))
    parser.add_argument("--n", type=int, default=48, help="patches (locations) per run")
    parser.add_argument("--sensor", default="s2", choices=sorted(SENSORS))
    parser.add_argument("--gsd", type=float, default=10.0, help="metres per pixel of the grid")
    parser.add_argument("--size", type=int, default=128, help="pixels per side")
    parser.add_argument("--resampling", default="bilinear", choices=("nearest", "bilinear"))
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=8, help="I/O threads (the build's 8)")
    parser.add_argument(
        "--scenes",
        default="random",
        choices=("random", "shared"),
        help="random: a seeded scene per location; shared: the clearest, so neighbours share it",
    )
    parser.add_argument("--sources", default="http,local", help="http, local or both")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-mismatch",
        type=float,
        default=0.0,
        help="share of pixels allowed to differ by more than 1 from geoprep's (default 0)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("n", "repeat", "threads", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    unknown = set(args.sources.split(",")) - {"http", "local"}
    if unknown:
        parser.error(f"--sources: {sorted(unknown)} are not http or local")
    return args


def _readers(args: argparse.Namespace, bands: int) -> dict[str, Reader]:
    available = methods(args.threads, bands)
    if args.methods is None:
        return available
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    chosen = {m: r for m, r in available.items() if any(m.startswith(w) for w in wanted)}
    if not chosen or not next(iter(chosen)).startswith("geoprep"):
        raise UserError(f"--methods {args.methods!r}: choose geoprep and any of {list(available)}")
    return chosen


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    sensor = SENSORS[args.sensor]
    world = args.world.resolve()
    ensure_world(world, args.scale)
    readers = _readers(args, len(sensor.bands))
    options = gdal_env()
    # The block cache is process-wide; sized once, for every method alike.
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", options.pop("GDAL_CACHEMAX"))
    locations = pick_locations(world, args.n, args.gsd * args.size, args.seed)
    report: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bands": list(sensor.bands),
        "sources": {},
    }
    sources = args.sources.split(",")

    def measure(
        name: str,
        catalog: Catalog,
        signed: bool,
        gdal: dict[str, Any],
        server_cpu_s: Callable[[], float] | None = None,
    ) -> None:
        import odc.stac

        odc.stac.configure_rio(**gdal)
        grid = (args.gsd, args.size)
        jobs, search_s = patch_jobs(
            catalog, locations, sensor.collection, grid, args.seed, args.scenes
        )
        setup = Setup(sensor, args.resampling, args.threads, gdal)
        console.print(f"{name}: {len(jobs)} patches; warm-up and check, then {args.repeat} rounds")
        result = run_source(
            name, jobs, signed, setup, readers, args.repeat, args.max_mismatch, server_cpu_s
        )
        report["sources"][name] = {"search_s": search_s, **result}

    if "local" in sources:
        spec = CatalogSpec(kind="static", url=str(world / "stac" / "local" / "catalog.json"))
        measure("local", open_catalog(spec), False, options)
    if "http" in sources:
        with served(world) as info:
            os.environ["PC_SDK_SAS_URL"] = info["env"]["PC_SDK_SAS_URL"]
            spec = CatalogSpec(kind="stac-api", url=info["stac_url"], provider="planetary-computer")
            proxy = {"GDAL_HTTP_PROXY": info["env"]["GDAL_HTTP_PROXY"]}
            measure("http", open_catalog(spec), True, {**options, **proxy}, info["server_cpu_s"])
    return report


def print_report(report: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 120)  # tables unwrapped in files
    for name, result in report["sources"].items():
        table = Table(
            title=f"{name}: {result['patches']} patches of {len(report['bands'])} bands "
            f"({result['scenes']} scenes), median of {report['config']['repeat']} rounds; "
            f"item search {result['search_s']:.2f} s (not timed)"
        )
        methods_ = result["methods"]
        served = next(iter(methods_.values()))["server_cpu_ms_per_patch"] is not None
        columns = ["method", "patches/s", "median s", "CPU ms/patch", "max |diff|", "geoprep ×"]
        if served:
            columns.insert(4, "server CPU ms/patch")
        for column in columns:
            table.add_column(column, justify="left" if column == "method" else "right")
        best = max(m["patches_per_s"] for m in methods_.values())
        geoprep = next(iter(methods_.values()))["patches_per_s"]
        for method, numbers in methods_.items():
            rate = numbers["patches_per_s"]
            cells = [
                method,
                f"{rate:.1f}",
                f"{statistics.median(numbers['seconds']):.3f}",
                f"{numbers['cpu_ms_per_patch']:.1f}",
                f"{numbers['max_abs_diff']:g}",
                f"{geoprep / rate:.2f}×" + (" (fastest)" if rate == best else ""),
            ]
            if served:
                cells.insert(4, f"{numbers['server_cpu_ms_per_patch']:.1f}")
            table.add_row(*cells)
        out.print(table)
        ratios_ = result["ratios"]
        summary = ", ".join(
            f"{k} = {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in ratios_.items()
        )
        out.print(f"{name}: {summary}\n")
    machine_ = report["machine"]
    out.print(
        f"machine: {machine_['cpus']} CPUs ({machine_['processor']}), "
        f"Python {machine_['python']}, GDAL {machine_['gdal']}, "
        f"rasterio {machine_['rasterio']}, odc-stac {machine_['odc-stac']}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # odc-stac's loads on threads trigger this warning inside rasterio.warp; their patches are
    # checked against geoprep's all the same.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    try:
        report = run(args, " ".join(["python -m benchmarks.patch_throughput", *argv]))
    except UserError as error:
        console.print(f"error: {error}")
        return 2
    finally:
        close_pools()
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

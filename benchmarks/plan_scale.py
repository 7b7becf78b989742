"""Planning at scale: `geoprep plan recipes/urban.yaml` for 1 and 10 million locations.

    python -m benchmarks.plan_scale                 # 1 M and 10 M
    python -m benchmarks.plan_scale --n 100000 1000000

Each size runs in a fresh process (the land mask and the city list load once per run, as they
would for a user), which reports its wall time, CPU time and peak resident memory, and how long
the sampler, the geo-clusters and the writing took. The plan goes to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.read_common import describe, machine

ROOT = Path(__file__).resolve().parents[1]
#: the goals of issue 15: seconds and GB of peak memory per size
GOALS = {1_000_000: (20.0, None), 10_000_000: (300.0, 8.0)}

_CHILD = """
import json, resource, sys, time
import geoprep.planning.plan as plan_module
from geoprep.cli import main

stages = {}
def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    return wrapper

plan_module.geo_clusters = timed("clusters", plan_module.geo_clusters)
plan_module._parquet_bytes = timed("write", plan_module._parquet_bytes)
recipe, out, n, report = sys.argv[1:5]
from geoprep.planning.samplers.urban import UrbanSampler
UrbanSampler.sample = timed("sampler", UrbanSampler.sample)
start, cpu = time.perf_counter(), time.process_time()
code = main(["plan", recipe, "-o", out, "--set", f"sampler.n={n}"])
usage = resource.getrusage(resource.RUSAGE_SELF)
doc = {"exit": code, "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
       "peak_rss_gb": usage.ru_maxrss / 2**20, "stages": stages}
open(report, "w").write(json.dumps(doc))
"""


def run_size(recipe: Path, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="geoprep-plan-bench-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-c", _CHILD, str(recipe), f"{tmp}/plan", str(n), str(report)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0 or not report.exists():
            raise SystemExit(f"plan of {n} locations failed:\n{done.stderr[-2000:]}")
        result = json.loads(report.read_text())
        plan = json.loads((Path(tmp) / "plan" / "plan.json").read_text())
    return {"n": n, "planned": plan["n_locations"], **result}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plan_scale",
        description="Wall time and peak memory of `geoprep plan` (urban sampler) by size.",
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "urban.yaml")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine("scikit-learn", "scipy")
    print(f"machine: {describe(info)}")
    results = []
    print("| locations | wall s | CPU s | peak GB | sampler s | clusters s | write s | goal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in args.n:
        r = run_size(args.recipe, n)
        results.append(r)
        stages = r["stages"]
        seconds, memory = GOALS.get(n, (None, None))
        goal = []
        if seconds:
            goal.append(f"≤ {seconds:g} s: {'met' if r['seconds'] <= seconds else 'missed'}")
        if memory:
            goal.append(f"≤ {memory:g} GB: {'met' if r['peak_rss_gb'] <= memory else 'missed'}")
        print(
            f"| {r['planned']:,} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {stages.get('sampler', 0):.1f} | "
            f"{stages.get('clusters', 0):.1f} | {stages.get('write', 0):.1f} | "
            f"{'; '.join(goal) or '-'} |"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        ratio = (last["seconds"] / last["planned"]) / (first["seconds"] / first["planned"])
        print(f"time per location, {last['planned']:,} vs {first['planned']:,}: {ratio:.2f}×")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

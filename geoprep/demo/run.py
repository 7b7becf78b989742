"""The main job on the demo world: build it if missing, serve it, and run every stage on it."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyproj import Transformer
from rich.table import Table

from geoprep.core.errors import UserError
from geoprep.core.progress import console, progress_bar
from geoprep.demo.servers import WorldServices, serve_world

log = logging.getLogger(__name__)

#: The demo recipes the demo plans, then those it builds, in order.
PLAN_RECIPES = ("urban", "osm-csf12")
BUILD_RECIPES = ("csf", "caco", "csf-osm-eval", "aporee", "fmow", "fmow-sentinel")
RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "demo"
TRAIN_DIR = RECIPE_DIR.parent / "train" / "demo"
#: Steps of the closing CSF run (``--train-steps``); the other methods' runs are briefer.
DEMO_TRAIN_STEPS = 100


@dataclass(frozen=True)
class DemoTraining:
    """A short run that ends the demo: a method's demo config trained on one demo set and
    evaluated on another beside random init (``recipes/train/demo/<method>.yaml``)."""

    method: str
    pretrain: str
    evaluate: str
    #: steps at most (the demo's ``--train-steps`` caps them); None: ``--train-steps`` itself
    steps: int | None = None
    #: `geossl eval` options; ``{out}`` is the demo directory
    eval_options: tuple[str, ...] = ()


#: CSF as long as ``--train-steps`` asks (its own tuning), then GASSL, CACo and SoundingEarth for
#: a few steps each: enough to show each trains and evaluates on the demo world, not to show it
#: learns (that takes `python -m benchmarks.learning`, README "Does it learn?").
DEMO_TRAININGS = (
    DemoTraining("csf", "csf", "csf-osm-eval"),
    # linear probe and k-NN on the fMoW category of held-out locations
    DemoTraining("gassl", "fmow", "fmow", steps=20),
    # the OSM classes imaged by Sentinel-2 (single date: slot t0)
    DemoTraining("caco", "caco", "csf-osm-eval", steps=20, eval_options=("--slot", "t0")),
    # retrieval on held-out recordings; k-NN and probe on each recording's land cover
    DemoTraining(
        "soundingearth",
        "aporee",
        "aporee",
        steps=8,
        eval_options=(
            "--labels",
            "{out}/world/aporee/recordings.csv",
            "--label-column",
            "land_cover",
        ),
    ),
)
#: Metres kept between the CSF sets' locations and the edge of the NAIP imagery: more than
#: half their 96 m patches.
NAIP_INSET_M = 60.0


@dataclass
class StageResult:
    dataset: str
    stage: str
    out: Path
    detail: str
    seconds: float


def ensure_world(world: Path, seed: int = 0, scale: str = "small") -> None:
    """Build the demo world unless a complete one (its world.json) is already there."""
    from geoprep.demo.world import build_world

    if (world / "world.json").exists():
        console.print(f"demo world: using {world}")
        return
    console.print(f"demo world: building {world} (seed {seed}, scale {scale})")
    started = time.perf_counter()
    with progress_bar("demo world") as bar:
        build_world(world, seed=seed, scale=scale, progress=bar)
    console.print(f"demo world: built in {time.perf_counter() - started:.0f} s")


def naip_box(world: Path, inset_m: float = NAIP_INSET_M) -> list[float]:
    """[west, south, east, north] in lon/lat inside the world's NAIP coverage, ``inset_m``
    metres in from its edges so a patch centred anywhere in the box lies on the imagery."""
    parts = json.loads((world / "world.json").read_text())["parts"]
    coverage = parts["imagery"].get("naip_coverage")
    if not coverage:
        raise UserError(f"{world} has no NAIP coverage; rebuild it with `geoprep demo-world`")
    (cover,) = coverage.values()  # NAIP flies over the one US AOI
    west, south, east, north = cover["bounds"]
    west, south, east, north = west + inset_m, south + inset_m, east - inset_m, north - inset_m
    to_lonlat = Transformer.from_crs(cover["epsg"], 4326, always_xy=True)
    lons, lats = to_lonlat.transform([west, west, east, east], [south, north, south, north])
    # the largest lon/lat box inside the (slightly rotated) UTM square
    west, south = max(lons[:2]), max(lats[0], lats[2])
    east, north = min(lons[2:]), min(lats[1], lats[3])
    # rounded inwards, so the box stays inside
    return [math.ceil(west * 1e6) / 1e6, math.ceil(south * 1e6) / 1e6,
            math.floor(east * 1e6) / 1e6, math.floor(north * 1e6) / 1e6]  # fmt: skip


def demo_overrides(name: str, world: Path, services: WorldServices) -> list[str]:
    """`--set` overrides that point a demo recipe at this world and its served stand-ins."""
    truth = world / "truth"
    overrides = []
    if name in ("urban", "caco"):
        overrides += [f"sampler.within={truth / 'aois.geojson'}"]
    if name in ("urban", "caco", "csf"):
        overrides += [f"sampler.cities={truth / 'cities.csv'}"]
    if name == "csf":
        overrides += [f"sampler.bounds={json.dumps(naip_box(world))}"]
    if name == "csf-osm-eval":  # the classes of the NAIP coverage, imaged like the CSF set
        overrides += [
            f"sampler.endpoint={services.overpass_url}",
            f"sampler.bboxes={json.dumps([naip_box(world)])}",
        ]
    if name == "osm-csf12":
        aois = json.loads((truth / "aois.geojson").read_text())["features"]
        bboxes = [f["properties"]["bounds_lonlat"] for f in aois]
        overrides += [
            f"sampler.endpoint={services.overpass_url}",
            f"sampler.bboxes={json.dumps(bboxes)}",
        ]
    if name == "aporee":
        overrides += [
            f"sampler.proxy={services.archive_proxy_url}",
            "sampler.secure=false",
            f"audio.proxy={services.archive_proxy_url}",
        ]
    if name in ("fmow", "fmow-sentinel"):
        overrides += [f"sampler.root={world / 'fmow' / 'fMoW-rgb'}"]
    if name in ("csf", "caco", "csf-osm-eval", "aporee", "fmow-sentinel"):  # with imagery
        overrides += [f"imagery.catalogs.pc.url={services.stac_url}"]
    return overrides


def run_demo(
    out: Path, seed: int = 0, scale: str = "small", workers: int = 2, train_steps: int = 0
) -> list[StageResult]:
    """Run every stage that exists on the demo world under `out`; return what each produced."""
    from geoprep.building.console import run_build
    from geoprep.planning.plan import plan
    from geoprep.recipe.load import load_recipe

    out = Path(out)
    world = out / "world"
    ensure_world(world, seed, scale)
    results: list[StageResult] = []
    with serve_world(world) as services, _environment(services.env()):
        for name in PLAN_RECIPES:
            recipe = load_recipe(RECIPE_DIR / f"{name}.yaml", demo_overrides(name, world, services))
            target = out / name / "plan"
            started = time.perf_counter()
            with progress_bar(f"plan {name}") as bar:
                summary = plan(recipe, str(target), bar)
            dropped = sum(summary.dropped.values())
            splits = ", ".join(f"{k} {v}" for k, v in summary.by_split.items())
            detail = f"{summary.n_locations} locations ({splits}); {dropped} dropped"
            results.append(StageResult(name, "plan", target, detail, time.perf_counter() - started))
        for name in BUILD_RECIPES:
            recipe = load_recipe(RECIPE_DIR / f"{name}.yaml", demo_overrides(name, world, services))
            target = out / name
            built = run_build(recipe, str(target), workers=workers)
            failed = sum(built.failures.values())
            detail = f"{built.samples} samples in {built.shards} shards; {failed} failed"
            results.append(StageResult(name, "build", target, detail, built.seconds))
    for name in BUILD_RECIPES:
        results.append(inspect_stage(name, out / name))
    if train_steps:
        results += train_stage(out, train_steps)
    print_summary(results)
    reports = [r.out for r in results if r.stage == "inspect"]
    console.print("reports: " + ", ".join(str(path / "report.html") for path in reports))
    return results


def inspect_stage(name: str, dataset: Path) -> StageResult:
    """Check a built demo dataset and draw its report into DATASET/report."""
    from geoprep.inspect.dataset import inspect_dataset

    started = time.perf_counter()
    report = dataset / "report"
    with progress_bar(f"inspect {name}") as bar:
        result = inspect_dataset([str(dataset)], str(report), bar)
    verdict = "clean" if result.clean else f"{len(result.problems)} problems"
    detail = f"{verdict}; stats.json and report.html"
    return StageResult(name, "inspect", report, detail, time.perf_counter() - started)


def train_stage(out: Path, steps: int) -> list[StageResult]:
    """Short runs of every method on the demo's sets (:data:`DEMO_TRAININGS`), each followed by
    its evaluation beside a random-init encoder (the tables are printed). geossl runs in
    subprocesses: geoprep never imports the training side, and each run is the one `geossl
    train` would make (rerun: it resumes)."""
    return [train_one(out, training, steps) for training in DEMO_TRAININGS]


def train_one(out: Path, training: DemoTraining, steps: int) -> StageResult:
    """Train one method briefly (at most ``steps``) and evaluate it."""
    steps = steps if training.steps is None else min(steps, training.steps)
    run = out / "runs" / training.method
    config = TRAIN_DIR / f"{training.method}.yaml"
    train = [sys.executable, "-m", "geossl", "train", str(config), "-o", str(run)]
    train += ["--set", f"data.source={out / training.pretrain}", "--set", f"trainer.steps={steps}"]
    evaluate = [sys.executable, "-m", "geossl", "eval", str(run), str(out / training.evaluate)]
    evaluate += [option.format(out=out) for option in training.eval_options]
    started = time.perf_counter()
    for command in (train, evaluate):
        console.print(f"demo: {' '.join(command[1:])}")
        if subprocess.run(command).returncode != 0:
            raise UserError(
                f"demo: '{' '.join(command[2:4])}' of {training.method} failed "
                "(its message is above)"
            )
    detail = (
        f"{training.method}, {steps} steps on {training.pretrain}; evaluated on "
        f"{training.evaluate} beside random init (table above)"
    )
    return StageResult(training.method, "train", run, detail, time.perf_counter() - started)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by worker processes) for the duration."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def print_summary(results: list[StageResult]) -> None:
    table = Table(title="demo: what was built")
    for column in ("dataset", "stage", "result", "where", "s"):
        table.add_column(column, justify="right" if column == "s" else "left")
    for r in results:
        table.add_row(r.dataset, r.stage, r.detail, str(r.out), f"{r.seconds:.1f}")
    console.print(table)

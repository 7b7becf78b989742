"""The build stage: planned locations → shard tasks → WebDataset shards; resumable, distributed."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import yaml

from geoprep.building.audio import AudioMaker
from geoprep.building.catalogs import open_catalog
from geoprep.building.faults import (
    CircuitBreaker,
    ReadFailure,
    SystemicFailure,
    forget_all_in_gdal,
)
from geoprep.building.fmow import FmowImageReader, category_table
from geoprep.building.location import LocationFailed, location_slots
from geoprep.building.raster import DatasetCache
from geoprep.building.samples import Draft, SampleBuilder
from geoprep.building.scenes import slots_envelope
from geoprep.core.errors import UserError
from geoprep.core.signing import redact
from geoprep.core.storage import join, makedirs, read_bytes, write_bytes_atomic
from geoprep.planning.plan import PLAN_FILE, plan, read_locations
from geoprep.recipe.model import PLAN_SECTIONS, Recipe
from geoprep.shards.layout import (
    MANIFEST_FILE,
    ShardStats,
    clean_partial,
    done_shards,
    pretty_json,
)
from geoprep.shards.manifest import write_manifest
from geoprep.shards.writer import ShardWriter

log = logging.getLogger(__name__)

BUILD_RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard; picklable, so it travels to processes and Dask."""

    recipe: dict[str, Any]
    out: str
    index: int
    rows: list[dict[str, Any]]
    io_threads: int = 8
    build_id: str = ""  # one circuit breaker per build and worker process


@dataclass(frozen=True)
class IncompleteShard:
    """A shard left uncommitted: `transient` of its locations outlasted the retries (`causes`
    counts why; `example` is one message). A rerun builds it again."""

    index: int
    transient: int
    causes: dict[str, int]
    example: str


@dataclass
class BuildSummary:
    """What a build did. `failures` counts the locations' own failures by reason (committed,
    part of the dataset); `incomplete` lists shards left uncommitted because `transient`
    locations outlasted their retries (`causes`): the dataset is `complete` only without them."""

    out: str
    shards: int
    built: int
    skipped: int
    samples: int
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    incomplete: list[int] = field(default_factory=list)
    transient: int = 0
    causes: dict[str, int] = field(default_factory=dict)
    example: str = ""

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def failure_kinds(self) -> dict[str, int]:
        """Failed locations by kind (a systemic failure stops the build instead: 0 here)."""
        return {"location": sum(self.failures.values()), "transient": self.transient, "systemic": 0}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "complete": self.complete,
            "failure_kinds": self.failure_kinds,
            "samples_per_s": self.samples_per_s,
        }


# ---------------------------------------------------------------------- one shard (worker side)
_WORKER_STATE: dict[str, Any] = {}
_INTERRUPTED = threading.Event()


def _worker_builder(recipe: Recipe) -> SampleBuilder:
    """Catalogs, the dataset cache, HTTP sessions and readers live once per worker process and
    are reused across its shards."""
    key = recipe.model_dump_json()
    if _WORKER_STATE.get("key") != key:
        if _WORKER_STATE.get("audio") is not None:
            _WORKER_STATE["audio"].close()
        if (previous := _WORKER_STATE.get("builder")) is not None and previous.imagery:
            previous.imagery.close()
        imagery = recipe.imagery
        catalogs = {n: open_catalog(s) for n, s in imagery.catalogs.items()} if imagery else {}
        audio = AudioMaker(recipe.audio, recipe.seed) if recipe.audio is not None else None
        fmow = None
        if recipe.fmow_images is not None:
            fmow = FmowImageReader(recipe.fmow_images, fmow_root(recipe))
        builder = SampleBuilder(recipe, catalogs, DatasetCache(), audio, fmow)
        _WORKER_STATE.update(key=key, builder=builder, audio=audio)
    return _WORKER_STATE["builder"]


def forget_open_files() -> None:
    """Close this process's open datasets and empty GDAL's HTTP cache: the next build reads
    every file from its source again, as a new process would."""
    builder = _WORKER_STATE.get("builder")
    if builder is not None and builder.imagery is not None:
        builder.imagery.cache.close()
        for catalog in builder.catalogs.values():
            catalog.forget()
    forget_all_in_gdal()


def _worker_breaker(build_id: str) -> CircuitBreaker:
    """The breaker of this build in this process: a new build (or a reused worker, as in Dask)
    starts with a fresh one."""
    if _WORKER_STATE.get("build_id") != build_id or "breaker" not in _WORKER_STATE:
        _WORKER_STATE.update(build_id=build_id, breaker=CircuitBreaker())
    return _WORKER_STATE["breaker"]


def _stop_on_sigint() -> None:
    """In worker processes: Ctrl-C (sent to the whole process group) sets a flag instead of
    raising in the middle of a shard; the shard then stops and commits nothing, and the driver
    ends the workers."""

    def stop(*_: object) -> None:
        _INTERRUPTED.set()
        if (breaker := _WORKER_STATE.get("breaker")) is not None:
            breaker.interrupt()

    signal.signal(signal.SIGINT, stop)


#: What a worker imports before it forks: the build and everything it reads with.
WORKER_PRELOAD = ["geoprep.building.build"]


def _worker_context() -> Any:
    """Worker processes start warm and clean: forked from a fork server that imported the build
    once (about 1.2 CPU-s a worker would spend on imports), not from this process, whose GDAL
    state, threads and HTTP sessions would not survive a fork. Where there is no fork server
    (Windows, macOS' default), spawn."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def _start_worker(recipe: dict[str, Any], environ: dict[str, str], cwd: str) -> None:
    """Each worker process, once: this build's environment and working directory (the fork
    server has those of the moment it started; a token service or proxy set since then must
    reach the workers), Ctrl-C handling, and its catalogs, readers and dataset cache set up
    before the first shard arrives."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    _stop_on_sigint()
    _worker_builder(Recipe.model_validate(recipe))


def _io_pool(threads: int) -> ThreadPoolExecutor:
    """One I/O pool per worker process: a new thread costs GDAL and PROJ set-up each time."""
    threads = max(1, threads)
    if _WORKER_STATE.get("pool_threads") != threads:
        if _WORKER_STATE.get("pool") is not None:
            _WORKER_STATE["pool"].shutdown(wait=True)
        _WORKER_STATE.update(pool=ThreadPoolExecutor(threads), pool_threads=threads)
    return _WORKER_STATE["pool"]


def fmow_root(recipe: Recipe) -> str:
    root = recipe.fmow_images.root or getattr(recipe.sampler, "root", None)
    if root is None:
        raise UserError("fmow_images.root is required unless the sampler is fmow (its root)")
    return str(root)


def build_shard(task: ShardTask) -> ShardStats | IncompleteShard:
    """Build, write and commit one shard; a location's own failures are recorded in it.

    A location whose reads outlasted their retries leaves the shard uncommitted (returned as
    `IncompleteShard`); a `SystemicFailure` (the breaker tripped) or an interruption is raised.
    """
    started = time.perf_counter()
    _check_interrupted()
    recipe = Recipe.model_validate(task.recipe)
    builder = _worker_builder(recipe)
    if _WORKER_STATE.get("build_id") != task.build_id:  # a new build asks the catalogs again
        for catalog in builder.catalogs.values():
            catalog.forget()
    breaker = _worker_breaker(task.build_id)
    if builder.imagery is not None:
        builder.imagery.breaker = breaker
        builder.imagery.asset_threads = task.io_threads
    rows = task.rows
    slots: dict[str, list] = {row["id"]: [] for row in rows}
    candidates: dict[str, dict[str, list]] = {}
    if recipe.imagery is not None:
        slots = {row["id"]: location_slots(recipe, row) for row in rows}
        candidates = _find_candidates(recipe, builder.catalogs, rows, slots)

    # Three steps over the I/O pool: start each location (its recording, its grids), read the
    # slots of all locations in the order of the scene each reads first (the locations and
    # dates of one scene then read it together: its files open once, its blocks decode once),
    # finish each location. The shard is still written in plan order, the same whatever the
    # order of the reads.
    pool = _io_pool(task.io_threads)

    def guarded(step: Callable[[], Any]) -> Any:
        try:
            return step()
        except (LocationFailed, ReadFailure) as failure:  # the last: the shard waits for a rerun
            return failure
        except SystemicFailure:
            raise
        except Exception as error:  # one broken location must not stop the shard
            return error

    def start(i: int) -> Any:
        row = rows[i]
        per_location = {sensor: found.get(row["id"], []) for sensor, found in candidates.items()}
        return guarded(lambda: builder.start(row, slots[row["id"]], per_location))

    drafts = _run_on(pool, {i: partial(start, i) for i in range(len(rows))}, breaker)
    reads = []
    if builder.imagery is not None:
        for i, draft in drafts.items():
            if isinstance(draft, Draft):
                for number, slot in enumerate(draft.imagery.slots):
                    scene = builder.imagery.first_scene(draft.imagery, slot)
                    reads.append(((scene, number, i), slot))
    reads = _striped(sorted(reads, key=lambda read: read[0]), task.io_threads)
    slot_jobs = {
        key: partial(guarded, partial(builder.slot_images, drafts[key[2]], slot))
        for key, slot in reads
    }
    slot_of = dict(reads)
    outcomes: dict[int, dict[str, Any]] = {i: {} for i in drafts}
    for key, outcome in _run_on(pool, slot_jobs, breaker).items():
        outcomes[key[2]][slot_of[key].name] = outcome

    def finish(i: int) -> Any:
        draft = drafts[i]
        if not isinstance(draft, Draft):
            return draft
        return guarded(lambda: builder.finish(draft, outcomes[i]))

    results = _run_on(pool, {i: partial(finish, i) for i in range(len(rows))}, breaker)
    for i, result in results.items():
        if isinstance(result, Exception) and not isinstance(result, LocationFailed | ReadFailure):
            # redacted: messages of lower layers may quote signed URLs
            trace = "".join(traceback.format_exception(result))
            log.debug("location %s failed:\n%s", rows[i]["id"], redact(trace))
            results[i] = LocationFailed("error", f"{type(result).__name__}: {result}")

    for i, result in results.items():
        # A file the archive lacks is the location's own failure, if the blob store serves
        # other files; while no read has worked it may as well be a wrong setting: wait.
        if isinstance(result, ReadFailure) and not result.retry and breaker.has_succeeded("blobs"):
            results[i] = LocationFailed("read_error", str(result))
    transient = [r for r in results.values() if isinstance(r, ReadFailure)]
    if transient:
        causes = Counter(failure.cause for failure in transient)
        return IncompleteShard(task.index, len(transient), dict(causes), str(transient[0]))
    with ShardWriter.from_spec(task.out, task.index, recipe.output) as writer:
        for i, row in enumerate(rows):
            result = results[i]
            if isinstance(result, LocationFailed):
                writer.fail(str(row["id"]), result.reason, result.detail)
            else:
                writer.add(result)
        _check_interrupted()  # nothing is committed after Ctrl-C
        return writer.close(time.perf_counter() - started)


def _striped(ordered: list, threads: int) -> list:
    """`ordered` cut into `threads` runs, dealt out in turn: each I/O thread works through its
    own run of scenes (their files open once, one thread at a time), instead of all threads
    queueing for the same file while its requests are under way (which over a slow network
    left most of them waiting)."""
    runs = max(1, min(threads, len(ordered)))
    size = -(-len(ordered) // runs) if ordered else 0
    chunks = [ordered[start : start + size] for start in range(0, len(ordered), size or 1)]
    return [item for turn in itertools.zip_longest(*chunks) for item in turn if item is not None]


def _run_on(pool: ThreadPoolExecutor, jobs: dict[Any, Callable[[], Any]], breaker) -> dict:
    """Run `jobs` on the pool in their order; their results by key. On a failure (a systemic
    one, or Ctrl-C) the queued jobs are dropped and the running ones see the breaker open."""
    futures = {pool.submit(job): key for key, job in jobs.items()}
    results = {}
    try:
        for future in as_completed(futures):
            results[futures[future]] = future.result()
    except BaseException as error:
        for future in futures:
            future.cancel()
        if isinstance(error, KeyboardInterrupt):
            breaker.interrupt()
        raise
    return results


def _check_interrupted() -> None:
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _find_candidates(recipe, catalogs, rows, slots) -> dict[str, dict[str, list]]:
    """Per sensor, the items over each location in any of its slots: one catalog call per sensor."""
    frame = pd.DataFrame([{"id": r["id"], "lat": r["lat"], "lon": r["lon"]} for r in rows])
    windows = {row["id"]: [slot.window for slot in slots[row["id"]]] for row in rows}
    # the same for every shard: a STAC API searches each tile once per window of it
    envelope = slots_envelope(recipe.imagery.time)
    found = {}
    for sensor, spec in recipe.imagery.sensors.items():
        found[sensor] = catalogs[spec.catalog].candidates_in_windows(
            frame, spec.collection, windows, spec.max_cloud_cover, spec.filter, envelope
        )
    return found


# ---------------------------------------------------------------------- the whole build (driver)
def ensure_plan(recipe: Recipe, out: str, plan_dir: str | None = None) -> pd.DataFrame:
    """The planned locations: from `plan_dir` when given (a plan of the same plan sections, or
    a UserError); else from OUT/plan or OUT itself (`geoprep plan -o OUT`) when either holds a
    plan of the same plan sections; else planned now into OUT/plan."""
    if plan_dir is not None:
        found = _plan_digest(plan_dir)
        if found is None:
            raise UserError(
                f"--plan {plan_dir}: no {PLAN_FILE} there; make it with "
                f"'geoprep plan RECIPE -o {plan_dir}'"
            )
        if found != recipe.plan_digest():
            raise UserError(
                f"--plan {plan_dir}: planned from other {', '.join(PLAN_SECTIONS)} than "
                f"{recipe.name} (plan digest {found}, recipe {recipe.plan_digest()}); plan again "
                "or build without --plan"
            )
        return read_locations(plan_dir)
    for candidate in (join(out, "plan"), out):
        if _plan_digest(candidate) == recipe.plan_digest():
            log.info("using the plan in %s", candidate)
            return read_locations(candidate)
    plan(recipe, join(out, "plan"))
    return read_locations(join(out, "plan"))


def _plan_digest(plan_dir: str) -> str | None:
    """The plan digest recorded in `plan_dir`'s plan.json; None when there is no plan."""
    try:
        return json.loads(read_bytes(join(plan_dir, PLAN_FILE))).get("plan_digest")
    except FileNotFoundError:
        return None


def shard_tasks(
    recipe: Recipe, out: str, locations: pd.DataFrame, io_threads: int, build_id: str = ""
) -> list[ShardTask]:
    per_shard = recipe.output.samples_per_shard
    records = _records(locations)
    n_shards = math.ceil(len(records) / per_shard)
    dump = recipe.model_dump(mode="json")
    return [
        ShardTask(dump, out, i, records[i * per_shard : (i + 1) * per_shard], io_threads, build_id)
        for i in range(n_shards)
    ]


def _records(locations: pd.DataFrame) -> list[dict[str, Any]]:
    frame = pd.DataFrame(locations.drop(columns=["geometry"], errors="ignore"))
    rows = []
    for row in frame.to_dict(orient="records"):
        rows.append({k: _plain(v) for k, v in row.items()})
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def check_output(recipe: Recipe, out: str) -> None:
    """Refuse to resume into a directory built from another recipe: shards would mix.

    Until a shard is committed there is nothing to mix, so a recipe fixed after a failed first
    attempt (a typo in a catalog URL, say) may take over the directory.
    """
    path = join(out, BUILD_RECIPE_FILE)
    try:
        previous = yaml.safe_load(read_bytes(path))
    except FileNotFoundError:
        previous = None
    current = recipe.model_dump(mode="json")
    if previous == current:
        return
    # the same data reached another way (a moved server, a mirror) resumes; the file records
    # how this run reached the sources
    same_data = previous is not None and _digest_of(previous) == recipe.digest()
    if previous is not None and not same_data and done_shards(out):
        raise UserError(
            f"{out} holds a build of another recipe ({path} differs); choose a new output "
            "directory or delete it"
        )
    makedirs(out)
    write_bytes_atomic(path, yaml.safe_dump(current, sort_keys=False).encode())


def _digest_of(document: Any) -> str | None:
    """The digest of a recipe written by an earlier build; None if it no longer validates."""
    try:
        return Recipe.model_validate(document).digest()
    except ValueError:  # pydantic's ValidationError, e.g. a recipe of an older version
        return None


def build(
    recipe: Recipe,
    out: str,
    workers: int = 1,
    io_threads: int = 8,
    dask_address: str | None = None,
    on_shard: Callable[[ShardStats], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    plan_dir: str | None = None,
) -> BuildSummary:
    """Build every shard that is not done yet; the same recipe always gives the same shards."""
    if recipe.imagery is None and recipe.audio is None and recipe.fmow_images is None:
        raise UserError(
            "the recipe has no imagery, audio or fmow_images section: nothing to build (see README)"
        )
    started = time.perf_counter()
    check_output(recipe, out)
    locations = ensure_plan(recipe, out, plan_dir)
    tasks = shard_tasks(recipe, out, locations, io_threads, uuid.uuid4().hex)
    clean_partial(out)
    done = done_shards(out)
    todo = [t for t in tasks if t.index not in done]
    if todo and recipe.imagery is not None:
        check_assets(recipe)
    if on_start:
        on_start(len(tasks), len(tasks) - len(todo))

    failures: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    incomplete: list[IncompleteShard] = []
    samples = 0
    try:
        for stats in _run(todo, workers, dask_address):
            if isinstance(stats, IncompleteShard):
                incomplete.append(stats)
                causes.update(stats.causes)
            else:
                samples += stats.successes
                failures.update(stats.failures)
            if on_shard:
                on_shard(stats)
    except SystemicFailure:
        # what was committed stays; the manifest says the build is not complete
        _write_manifest(recipe, out, len(tasks), systemic=1)
        raise
    if recipe.fmow_images is not None or recipe.sampler.kind == "fmow":
        # labels are indices into the 62 fMoW categories (imagery-only fMoW-Sentinel builds
        # too): the table travels with the data
        table = json.dumps(category_table(), indent=1).encode()
        write_bytes_atomic(join(out, "categories.json"), table)
    transient = sum(shard.transient for shard in incomplete)
    _write_manifest(recipe, out, len(tasks), transient=transient)
    return BuildSummary(
        out=out,
        shards=len(tasks),
        built=len(todo) - len(incomplete),
        skipped=len(tasks) - len(todo),
        samples=samples,
        failures=dict(sorted(failures.items())),
        seconds=time.perf_counter() - started,
        incomplete=sorted(shard.index for shard in incomplete),
        transient=transient,
        causes=dict(causes.most_common()),
        example=incomplete[0].example if incomplete else "",
    )


def _write_manifest(
    recipe: Recipe, out: str, n_shards: int, transient: int = 0, systemic: int = 0
) -> None:
    """The manifest, with the failed locations counted by kind (`failure_kinds`): the
    locations' own (in the committed shards), transient (this run's uncommitted shards) and
    systemic (1: the build was stopped)."""
    manifest = write_manifest(out, recipe.model_dump(mode="json"), recipe.digest(), n_shards)
    kinds = {"location": manifest["totals"]["failures"], "transient": transient}
    manifest["failure_kinds"] = kinds | {"systemic": systemic}
    write_bytes_atomic(join(out, MANIFEST_FILE), pretty_json(manifest))


def check_assets(recipe: Recipe) -> None:
    """Every sensor's assets must exist in its collection (its item_assets, else its first
    item): a misspelled band would otherwise fail every location as if no scene were clear."""
    catalogs: dict[str, Any] = {}
    for name, spec in recipe.imagery.sensors.items():
        if spec.catalog not in catalogs:
            catalogs[spec.catalog] = open_catalog(recipe.imagery.catalogs[spec.catalog])
        available = catalogs[spec.catalog].asset_names(spec.collection)
        if available is None:
            continue
        missing = [asset for asset in spec.assets if asset not in available]
        if missing:
            raise UserError(
                f"imagery.sensors.{name}.assets: {', '.join(missing)} not in collection "
                f"{spec.collection} (it has {', '.join(sorted(available))})"
            )


def _run(
    tasks: list[ShardTask], workers: int, dask_address: str | None
) -> Iterator[ShardStats | IncompleteShard]:
    if not tasks:
        return
    if dask_address:
        yield from _run_dask(tasks, dask_address)
    elif workers <= 1:
        _INTERRUPTED.clear()
        for task in tasks:
            yield build_shard(task)
    else:
        pool = ProcessPoolExecutor(
            min(workers, len(tasks)),
            mp_context=_worker_context(),
            initializer=_start_worker,
            initargs=(tasks[0].recipe, dict(os.environ), os.getcwd()),
        )
        futures = [pool.submit(build_shard, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # report a failed shard (or Ctrl-C) now, not after every queued shard has run: the
            # workers are ended (a shard they were writing is left uncommitted, to be redone)
            for process in list((pool._processes or {}).values()):  # no public handle
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


def _run_dask(tasks: list[ShardTask], address: str) -> Iterator[ShardStats]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise UserError("--dask needs the 'distributed' package") from None
    try:
        client = Client(address, timeout=30)
    except OSError as error:
        raise UserError(f"--dask {address}: cannot reach the scheduler ({error})") from None
    # Keys name the build, not only the shard: a scheduler shared by several builds would
    # otherwise hand one build the results of another's tasks of the same key.
    build_id = hashlib.sha256(
        f"{tasks[0].out}\0{Recipe.model_validate(tasks[0].recipe).digest()}".encode()
    )
    keys = [f"geoprep-shard-{build_id.hexdigest()[:16]}-{t.index}" for t in tasks]
    with client:
        futures = client.map(build_shard, tasks, key=keys)
        try:
            for future in dask_completed(futures):
                yield future.result()
        except BaseException:
            client.cancel(futures)
            raise

"""Checking a built dataset: streams its shards, validates every sample, counts and measures it.

`inspect_dataset` reads each tar once, member by member (`tarfile` stream mode over an fsspec
file; nothing is extracted to disk), groups members into samples by key as WebDataset does, and
checks every sample against the schema `geoprep build` writes. A problem is recorded with its
shard, key and reason and never stops the run. Alongside, it counts samples (per shard, split,
cluster, label, source, sensor and time slot), gathers the build's own failure records, and
measures per-band statistics (`geoprep.inspect.bandstats`), written to `stats.json` beside the
shards.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from geoprep import __version__
from geoprep.core.storage import write_bytes_atomic
from geoprep.inspect.bandstats import StatsCollector
from geoprep.inspect.findings import COUNTED, Problem, ShardScan, Variants
from geoprep.inspect.result import InspectResult, ShardSummary
from geoprep.inspect.scan import scan_shard
from geoprep.inspect.sources import Sources, resolve_sources

log = logging.getLogger(__name__)

STATS_FORMAT = "geoprep-stats/1"


def inspect_dataset(
    sources: list[str],
    report_dir: str | None = None,
    progress: Any = None,
    *,
    workers: int = 1,
    previews: int = 8,
    write_stats: bool = True,
    max_member_bytes: int | None = None,
) -> InspectResult:
    """Validate, count and measure a built dataset; write stats.json and (optionally) a report.

    `sources`: shard paths or fsspec URLs, brace patterns (`shards/{00000..00009}.tar`), globs, an
    index.json, or a dataset directory (its index.json, else shards/*.tar, plus the build's
    records). `progress` (optional) gets `set_total(n)` and `advance()` per sample (per shard
    with `workers` > 1 processes, each reading whole shards). `previews`: samples kept for the
    report's thumbnails. `max_member_bytes`: members larger than this are reported as
    `too-large` from their header, never read (default `geoprep.inspect.scan.MAX_MEMBER_BYTES`).
    Raises UserError only for sources that do not exist; damaged data becomes
    `result.problems`.
    """
    started = time.perf_counter()
    found = resolve_sources(list(sources))
    expected = [found.records.get(t, {}).get("nsamples") for t in found.tars]
    if progress is not None:
        progress.set_total(sum(expected) if None not in expected else None)
    quotas = _preview_quotas(len(found.tars), previews)

    scans = _scan_all(found.tars, quotas, progress, workers, max_member_bytes)
    result = _merge(found, scans, previews)
    result.seconds = time.perf_counter() - started
    log.info("inspected %d samples in %.1f s", result.samples, result.seconds)
    if write_stats and found.stats_out:
        try:
            write_bytes_atomic(found.stats_out, _pretty(result.stats))
            result.stats_path = found.stats_out
        except (OSError, NotImplementedError, ValueError) as error:
            log.warning("could not write %s: %s", found.stats_out, error)
    if report_dir is not None:
        from geoprep.report.html import write_report

        report_started = time.perf_counter()
        result.report_path = write_report(result, report_dir)
        result.report_seconds = time.perf_counter() - report_started
    return result


def _preview_quotas(shards: int, previews: int) -> list[int]:
    """Samples to keep for the report per shard: `previews` in all, spread evenly over shards."""
    if not shards:
        return []
    quotas = [previews // shards] * shards
    for k in range(previews % shards):
        quotas[k * shards // (previews % shards)] += 1
    return quotas


def _scan_all(
    tars: list[str], quotas: list[int], progress: Any, workers: int, cap: int | None
) -> list[ShardScan]:
    """Shards in order: in this process (progress per sample), or in `workers` processes
    (progress per shard). Processes, not threads: decoding and checks hold the GIL often
    enough that threads are slower than one process."""
    if workers <= 1 or len(tars) <= 1:
        return [scan_shard(url, n, progress, cap) for url, n in zip(tars, quotas, strict=True)]
    # forkserver: no fork of a process whose threads (progress bars) hold locks
    context = multiprocessing.get_context("forkserver")
    scans: dict[str, ShardScan] = {}
    with ProcessPoolExecutor(min(workers, len(tars)), mp_context=context) as pool:
        futures = {
            pool.submit(scan_shard, url, n, None, cap): url
            for url, n in zip(tars, quotas, strict=True)
        }
        for future in as_completed(futures):
            scan = scans[futures[future]] = future.result()
            if progress is not None:
                progress.advance(scan.samples)
    return [scans[url] for url in tars]


def _merge(found: Sources, scans: list[ShardScan], previews: int) -> InspectResult:
    problems = list(found.problems)
    counts = {name: Counter() for name in COUNTED}
    variants: dict[str, Variants] = {}
    collector = StatsCollector()
    owners: dict[str, str] = {}
    points, kept, shards = [], [], []
    for scan in scans:
        problems += scan.problems
        for name, counter in scan.counts.items():
            counts[name].update(counter)
        for suffix, tally in scan.variants.items():
            variants.setdefault(suffix, Variants()).merge(tally)
        collector.merge(scan.stats)
        points += scan.points
        kept += scan.previews
        for key in scan.keys:
            first = owners.setdefault(key, scan.url)
            if first != scan.url:
                problems.append(
                    Problem(scan.url, key, "duplicate-key", f"the key is also in {first}")
                )
        record = found.records.get(scan.url)
        shards.append(
            ShardSummary(
                scan.url,
                scan.samples,
                scan.bytes,
                scan.sha256,
                round(scan.seconds, 3),
                record.get("nsamples") if record else None,
            )
        )
        problems += _against_record(scan, record)
    problems += _inconsistencies(variants)
    samples = sum(s.samples for s in scans)
    if not samples:
        where = found.root or (found.tars[0] if found.tars else "(no shards)")
        problems.append(Problem(where, None, "empty", "the dataset holds no samples"))
    build = _build_summary(found)
    result = InspectResult(
        sources=list(found.tars),
        root=found.root,
        shards=shards,
        samples=samples,
        counts=counts,
        build=build,
        problems=problems,
        stats={},
        seconds=0.0,
        points=points,
        previews=kept[:previews],
        collector=collector,
    )
    result.stats = _stats_doc(result, collector)
    return result


def _against_record(scan: ShardScan, record: dict[str, Any] | None) -> list[Problem]:
    """Compare a tar with what the build wrote in its stats file (only when the tar was read)."""
    if not record or any(p.code in ("unreadable-shard",) for p in scan.problems):
        return []
    reasons = []
    if record.get("nsamples") is not None and record["nsamples"] != scan.samples:
        reasons.append(f"{scan.samples} samples read; the build recorded {record['nsamples']}")
    if record.get("sha256") and record["sha256"] != scan.sha256:
        reasons.append(
            f"sha256 {scan.sha256[:12]}… ({scan.bytes} bytes) differs from the build's "
            f"{record['sha256'][:12]}… ({record.get('bytes')} bytes): changed since the build"
        )
    return [Problem(scan.url, None, "stats-mismatch", reason) for reason in reasons]


def _inconsistencies(variants: dict[str, Variants]) -> list[Problem]:
    """Per member suffix, samples whose dtype/shape/bands differ from the most common ones."""
    found = []
    for suffix in sorted(variants):
        tally = variants[suffix]
        if len(tally.counts) < 2:
            continue
        (usual, n_usual), *others = tally.counts.most_common()
        for signature, n in others:
            examples = tally.examples[signature]
            for shard, key in examples:
                found.append(
                    Problem(
                        shard,
                        key,
                        "inconsistent",
                        f"{suffix} is {_describe(signature)}; {n_usual} samples have "
                        f"{_describe(usual)}",
                    )
                )
            if n > len(examples):
                found.append(
                    Problem(
                        examples[-1][0],
                        None,
                        "inconsistent",
                        f"{n - len(examples)} more samples with {suffix} {_describe(signature)}",
                    )
                )
    return found


def _describe(signature: tuple) -> str:
    if signature and signature[0] == "flac":
        return f"{signature[1]} Hz × {signature[2]} channel(s)"
    if len(signature) == 2:
        return f"{signature[0]} with {signature[1]} mel bands"
    dtype, shape, bands = signature
    return f"{dtype} {list(shape)} bands {list(bands)}"


def _build_summary(found: Sources) -> dict[str, Any]:
    failures: Counter = Counter()
    failed: list[dict[str, Any]] = []
    successes = 0
    for doc in found.stats_files:
        failures.update(doc.get("failures") or {})
        failed += doc.get("failed") or []
        successes += int(doc.get("successes") or 0)
    manifest = found.manifest or {}
    return {
        "stats_files": len(found.stats_files),
        "successes": successes,
        "failures": dict(sorted(failures.items())),
        "failed": failed,
        "complete": manifest.get("complete"),
        "missing": manifest.get("missing", []),
        "recipe_digest": manifest.get("recipe_digest"),
        "name": (manifest.get("recipe") or {}).get("name"),
    }


def _stats_doc(result: InspectResult, collector: StatsCollector) -> dict[str, Any]:
    """The stats.json document (schema in README: "geoprep inspect")."""
    return {
        "format": STATS_FORMAT,
        "geoprep_version": __version__,
        "dataset": {
            "root": result.root,
            "shards": result.sources,
            "samples": result.samples,
            "clean": result.clean,
            "problems": len(result.problems),
            "recipe_digest": result.build.get("recipe_digest"),
        },
        "method": {
            "mean_std": "exact (float64 per image band, merged with Chan et al.'s update); "
            "population std (ddof=0)",
            "percentiles": "numpy 'linear' percentiles from 65536-bin power-of-two histograms; "
            "exact for 8/16-bit integers, else within percentile_error",
            "nodata": "pixels equal to nodata, NaN and ±inf are left out; see nodata_fraction",
        },
        **collector.to_json(),
    }


def _pretty(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False).encode()

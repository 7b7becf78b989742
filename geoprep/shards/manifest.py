"""The build's closing records: `OUT/manifest.json` and the wids shard index `OUT/index.json`."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from geoprep import __version__
from geoprep.core.storage import join, write_bytes_atomic
from geoprep.shards.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    SHARDS_DIR,
    done_shards,
    pretty_json,
    read_stats,
)

log = logging.getLogger(__name__)


def _without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def write_manifest(
    out_url: str, recipe: dict[str, Any], recipe_digest: str, n_shards: int
) -> dict[str, Any]:
    """Gather every shard's stats into `OUT/manifest.json` and a wids index `OUT/index.json`."""
    done = done_shards(out_url)
    missing = [i for i in range(n_shards) if i not in done]
    if missing:
        log.warning("%d of %d shards are not done: %s", len(missing), n_shards, missing[:10])
    shards, failures, shardlist = [], Counter(), []
    for index in sorted(i for i in done if i < n_shards):
        stats = read_stats(out_url, index)
        failures.update(stats.failures)
        tars = [{"path": f"{SHARDS_DIR}/{t.name}"} | _without(vars(t), "name") for t in stats.tars]
        shardlist += [
            {"url": t["path"], "nsamples": t["nsamples"], "filesize": t["bytes"]}
            for t in tars
            if t["nsamples"]
        ]
        summary = _without(stats.to_json(), "shard", "failed", "duration_s", "tars")
        shards.append({"index": index, **summary, "tars": tars})
    manifest = {
        "geoprep_version": __version__,
        "recipe_digest": recipe_digest,
        "recipe": recipe,
        "n_shards": n_shards,
        "complete": not missing,
        "missing": missing,
        "totals": {
            "locations": sum(s["count"] for s in shards),
            "successes": sum(s["successes"] for s in shards),
            "failures": sum(failures.values()),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "failures": dict(sorted(failures.items())),
        "shards": shards,
    }
    index_doc = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": str(recipe.get("name", "geoprep")),
        "shardlist": shardlist,
    }
    write_bytes_atomic(join(out_url, INDEX_FILE), pretty_json(index_doc))
    write_bytes_atomic(join(out_url, MANIFEST_FILE), pretty_json(manifest))
    return manifest

"""GASSL and CACo end to end on tiny shards: exact resume of queues and change state, and two
gloo ranks under torchrun killed and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from moco_shards import footprint_east, write_fmow, write_multiyear
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ssl_train import crash_after_a_checkpoint, resume

from geossl.config import validate_config
from geossl.train import checkpoints, train


def config_for(method: str, source: Path, steps: int = 4, **trainer) -> dict:
    """A tiny GASSL or CACo run: ResNet-18, 32/16 px patches, batch 4."""
    if method == "gassl":
        section = {"name": "gassl", "queue_size": 24, "crop_fraction": 0.75}
        data = {"source": str(source), "num_workers": 0, "shuffle_buffer": 4}
    else:
        section = {"name": "caco", "queue_size": 32, "epoch_steps": 2, "crop_fraction": 0.75}
        data = {
            "source": str(source), "num_workers": 0, "shuffle_buffer": 4, "slot": "y0s0",
            "bands": ["s2.B04", "s2.B03", "s2.B02", "s2.B05"],
        }  # fmt: skip
    return {
        "method": section,
        "data": data,
        "model": {"arch": "resnet18"},
        "optim": {"name": "sgd", "lr": 0.03, "warmup_steps": 0, "weight_decay": 1e-4},
        "trainer": {"steps": steps, "batch_size": 4, "checkpoint_every": 2, "log_every": 1}
        | trainer,
        "seed": 5,
    }


def dataset(method: str, root: Path) -> Path:
    return write_fmow(root / "fmow", n=16) if method == "gassl" else write_multiyear(root / "s2")


def method_state(run: Path) -> dict:
    state = torch.load(checkpoints(run)[-1], map_location="cpu", weights_only=True)
    return state["state_dict"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:  # CACo's change state (extra state): a dict of tensors
            for name in a[key]:
                left, right = a[key][name], b[key][name]
                assert torch.equal(left, right) if torch.is_tensor(left) else left == right, name


@pytest.mark.parametrize("method", ["gassl", "caco"])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path: Path, method: str) -> None:
    source = dataset(method, tmp_path)
    config = validate_config(config_for(method, source))
    train(config, tmp_path / "straight")
    shorter = config.model_copy(update={"trainer": config.trainer.model_copy(update={"steps": 3})})
    train(shorter, tmp_path / "resumed")
    train(config, tmp_path / "resumed")
    a, b = method_state(tmp_path / "straight"), method_state(tmp_path / "resumed")
    assert_same_state(a, b)
    rows = 4 if method == "gassl" else 8  # CACo: both year groups of each location
    assert int(a["method.queue_ptr"]) == 4 * rows % config.method.queue_size
    if method == "caco":
        change = a["method._extra_state"]
        assert change["refits"] == 2  # epoch_steps 2: refit after steps 2 and 4
        assert len(change["ids"]) > 0 and torch.isfinite(change["values"]).all()
        events = EventAccumulator(str(tmp_path / "straight" / "tb")).Reload()
        assert "change_ratio" in events.Tags()["histograms"]
        assert {"changed_fraction", "long_term_used"} <= set(events.Tags()["scalars"])
    doc = json.loads((tmp_path / "straight" / "backbone.json").read_text())
    assert doc["method"]["name"] == method and doc["steps"] == 4


@pytest.mark.parametrize("method", ["gassl", "caco"])
def test_torchrun_two_ranks_killed_and_resumed(tmp_path: Path, method: str) -> None:
    steps = 16
    source = dataset(method, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_for(method, source, steps=steps, log_every=4)))
    run = tmp_path / "run"
    crash_after_a_checkpoint(path, run, steps)
    killed = checkpoints(run)
    before = torch.load(killed[-1], map_location="cpu", weights_only=True)["state_dict"]
    killed_step = int(killed[-1].name[4:12])
    # both ranks enqueued every step's keys of the global batch (4 rows or 4 × 2 rows)
    rows = 4 if method == "gassl" else 8
    size = before["method.queue"].shape[1]
    assert int(before["method.queue_ptr"]) == killed_step * rows % size

    second = resume(path, run)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr
    state = torch.load(checkpoints(run)[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == steps
    after = state["state_dict"]
    assert int(after["method.queue_ptr"]) == steps * rows % size
    # the queue restored: keys written before the kill that later steps did not overwrite stay
    written = (steps - killed_step) * rows
    if written < size:
        start = int(after["method.queue_ptr"])
        kept = [(start + i) % size for i in range(size - written)]
        assert torch.equal(after["method.queue"][:, kept], before["method.queue"][:, kept])
    if method == "caco":
        restored, final = before["method._extra_state"], after["method._extra_state"]
        assert final["refits"] == steps // 2 and restored["refits"] == killed_step // 2
        assert set(restored["ids"].tolist()) <= set(final["ids"].tolist())


def write_truth(path: Path, n: int) -> Path:
    """Land cover over time: a meadow everywhere; odd locations' left half is a field until 2020
    and built-up from 2021 (the demo world's change)."""
    import geopandas as gpd
    from shapely.geometry import box

    rows = [("meadow", 0, 9999, box(499000, 4599000, 500000 + 1000 * n, 4601000))]
    for i in range(1, n, 2):
        west = footprint_east(i)
        half = box(west, 4600000 - 160, west + 80, 4600000)
        rows += [("farmland", 0, 2020, half), ("built_up", 2021, 9999, half)]
    frame = gpd.GeoDataFrame(
        rows, columns=["cls", "valid_from_year", "valid_to_year", "geometry"], crs="EPSG:32615"
    )
    frame.to_crs(4326).to_parquet(path)
    return path


def test_change_auc_against_the_worlds_truth(
    tmp_path: Path, labelled_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    from geossl.change import changed_fraction, load_truth
    from geossl.cli import main

    source = write_multiyear(tmp_path / "s2", n=8)
    truth_file = write_truth(tmp_path / "landcover.parquet", 8)
    truth = load_truth(truth_file)
    bounds = (footprint_east(1), 4600000 - 160, footprint_east(1) + 160, 4600000)
    assert changed_fraction(truth, "EPSG:32615", bounds, (2019, 2022)) == pytest.approx(0.5, 0.01)
    assert changed_fraction(truth, "EPSG:32615", bounds, (2021, 2022)) == 0.0  # after the change
    even = (footprint_east(2), 4600000 - 160, footprint_east(2) + 160, 4600000)
    assert changed_fraction(truth, "EPSG:32615", even, (2019, 2022)) == 0.0

    train(validate_config(config_for("caco", source, steps=2)), tmp_path / "run")
    args = ["eval", str(tmp_path / "run"), str(source), "--change-truth", str(truth_file)]
    assert main([*args, "--compare", f"moco={tmp_path / 'run'}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["encoder"] for r in rows} == {"trained", "random", "moco"}
    for row in rows:
        assert row["metric"] == "change_auc" and row["n"] == 8 and 0.0 <= row["value"] <= 1.0
    by_name = {r["encoder"]: r["value"] for r in rows}
    assert by_name["moco"] == by_name["trained"]  # the same run twice: the same ranking
    assert main([*args, "--min-changed", "0.9"]) == 2  # no location changes that much
    assert "needs both changed and unchanged" in capsys.readouterr().err

    # k-NN and the probe on a labelled single-date Sentinel-2 set (its slot t0, B05 absent: 0)
    run = str(tmp_path / "run")
    assert main(["eval", run, str(labelled_dataset), "--slot", "t0", "--json"]) == 0
    metrics = {(r["encoder"], r["metric"]) for r in json.loads(capsys.readouterr().out)}
    assert {("trained", "knn_top1"), ("random", "linear_top1")} <= metrics

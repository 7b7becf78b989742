"""Training end to end on tiny shards: exact resume, DDP under torchrun killed and resumed,
the exported backbone, TensorBoard logs, evaluation and export."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from conftest import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geossl.cli import main
from geossl.config import validate_config
from geossl.train import checkpoints, train, warmup_factor


def run_config(tmp_path: Path, source: Path, **sections) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(source, **sections)))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def torchrun_train(config: Path, run: Path) -> list[str]:
    """`torchrun` with two ranks running `geossl train config -o run` (a fresh port each time)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "geossl", "train", str(config), "-o", str(run),
    ]  # fmt: skip


def crash_after_a_checkpoint(config: Path, run: Path, steps: int) -> None:
    """Start a two-rank run and kill it as a crash would once it has a checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        torchrun_train(config, run), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 240
    while not checkpoints(run) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # the ranks (torchrun starts each in its own session) and the launcher die at once
    for pid in [*children(first.pid), first.pid]:
        os.kill(pid, signal.SIGKILL)
    output = first.communicate()[0].decode()
    killed_at = [int(p.name[4:12]) for p in checkpoints(run)]
    assert killed_at and max(killed_at) < steps, output[-2000:]


def resume(config: Path, run: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        torchrun_train(config, run), env=env, capture_output=True, text=True, timeout=300
    )


def fresh_torchvision(arch: str, channels: int, state: dict) -> torch.nn.Module:
    model = getattr(torchvision.models, arch)()
    model.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    model.fc = torch.nn.Identity()
    model.load_state_dict(state)
    return model


def test_a_run_stopped_and_resumed_equals_an_uninterrupted_one(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    config = validate_config(tiny_config(tiny_dataset))
    train(config, tmp_path / "straight")
    shorter = config.model_copy(update={"trainer": config.trainer.model_copy(update={"steps": 3})})
    train(shorter, tmp_path / "resumed")
    assert [p.name for p in checkpoints(tmp_path / "resumed")][-1] == "step00000003.ckpt"
    train(config, tmp_path / "resumed")  # the same run, now to 4 steps: resumes at 3
    a = torch.load(tmp_path / "straight" / "backbone.pt")
    b = torch.load(tmp_path / "resumed" / "backbone.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    doc = json.loads((tmp_path / "resumed" / "backbone.json").read_text())
    assert doc["steps"] == 4 and doc["method"]["name"] == "csf"
    assert doc["bands"] == doc["normalization"]["bands"] and len(doc["bands"]) == 8
    assert doc["input_scaling"] == pytest.approx(1 / 0.34)
    # the event files open in TensorBoard and hold every logged scalar
    events = EventAccumulator(str(tmp_path / "straight" / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "accuracy", "dropout_rate", "samples_per_s"} <= tags
    rates = [e.value for e in events.Scalars("dropout_rate")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.66 * 3 / 4)


def test_rerun_with_another_config_is_refused(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    config = run_config(tmp_path, tiny_dataset, trainer={"steps": 1})
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 0
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--set", "seed=9"]) == 2
    assert "differs in seed" in capsys.readouterr().err


def test_rerun_of_a_finished_run_only_rewrites_the_backbone(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    config = run_config(tmp_path, tiny_dataset, trainer={"steps": 2, "checkpoint_every": 2})
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run)]) == 0
    first = torch.load(run / "backbone.pt", weights_only=True)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(config), "-o", str(run)]) == 0
    assert "already trained to the end" in capsys.readouterr().err
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]
    assert [p.name for p in checkpoints(run)] == ["step00000002.ckpt"]
    again = torch.load(run / "backbone.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_torchrun_two_ranks_killed_and_resumed(
    tmp_path: Path, tiny_dataset: Path, labelled_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    steps = 30
    config = run_config(
        tmp_path, tiny_dataset, trainer={"steps": steps, "checkpoint_every": 2, "log_every": 5}
    )
    run = tmp_path / "run"
    crash_after_a_checkpoint(config, run, steps)

    second = resume(config, run)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr
    assert checkpoints(run)[-1].name == f"step{steps:08d}.ckpt"
    state = torch.load(checkpoints(run)[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == steps
    doc = json.loads((run / "backbone.json").read_text())
    assert doc["steps"] == steps
    model = fresh_torchvision(doc["arch"], doc["in_channels"], torch.load(run / "backbone.pt"))
    assert model.eval()(torch.zeros(1, doc["in_channels"], 32, 32)).shape == (1, 512)

    # evaluation beside random init, as JSON rows; any-subset inference; export
    capsys.readouterr()
    assert main(["eval", str(run), str(labelled_dataset), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    metrics = {(r["encoder"], r["metric"]) for r in rows}
    for encoder in ("trained", "random"):
        assert {(encoder, "knn_top1"), (encoder, "linear_top1")} <= metrics
    for row in rows:
        assert set(row) == {"encoder", "metric", "value", "n"} and 0 <= row["value"] <= 1
    knn = next(r for r in rows if r["metric"] == "knn_top1")
    assert knn["n"] == 36
    assert main(["eval", str(run), str(labelled_dataset), "--bands", "naip.R,naip.G,naip.B"]) == 0
    assert "knn_top1" in capsys.readouterr().out
    assert main(["eval", str(run), str(labelled_dataset), "--bands", "s2", "--json"]) == 0
    assert {r["n"] for r in json.loads(capsys.readouterr().out)} >= {36}
    assert main(["eval", str(run), str(labelled_dataset), "--bands", "naip.X"]) == 2
    assert main(["export", str(run), str(tmp_path / "out.pt")]) == 0
    exported = torch.load(tmp_path / "out.pt")
    fresh_torchvision("resnet18", 8, exported)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_factors_are_python_floats_so_checkpoints_load_weights_only(schedule: str) -> None:
    # a numpy scalar here ends up in the optimiser state of every checkpoint
    factors = [warmup_factor(step, 2, 10, schedule) for step in range(12)]
    assert all(type(f) is float for f in factors)
    assert factors[0] == 0.5 and factors[1] == 1.0

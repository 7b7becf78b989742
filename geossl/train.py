"""The training loop (Lightning): DDP, precision, clipping, checkpoints, resume, logs, export.

`train(config, run_dir)` runs one process of a run; under `torchrun` every process calls it and
Lightning forms the DDP group from torchrun's environment. A run directory holds:

    config.yaml          the validated config (a rerun must match it, except trainer.steps)
    normalization.json   the encoder's bands in order and their train-split mean/std
    checkpoints/         step########.ckpt every trainer.checkpoint_every steps and at the end
    tb/                  TensorBoard events: loss, lr, accuracy, dropout rate, samples/s
    backbone.pt/.json    the exported encoder and what it needs (written at the end)

Rerunning the same command resumes from the newest checkpoint: model, optimiser, LR schedule,
step (and so every step-driven schedule, such as CSF's dropout rate), the RNG states, and the
data position (each stream replays its records up to where it was; exact while the number of
ranks and DataLoader workers is unchanged, else the stream restarts with the same seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from geoprep import UserError
from geossl import __version__
from geossl.config import TrainConfig, validate_config
from geossl.data import (
    Normalization,
    TrainStream,
    choose_bands,
    dataset_digest,
    dataset_urls,
    sample_bands,
)
from geossl.methods import Method, build_method
from geossl.stats import train_normalization

log = logging.getLogger(__name__)

BACKBONE_FORMAT = "geossl-backbone/1"
_CKPT = re.compile(r"^step(\d{8})\.ckpt$")


# ---------------------------------------------------------------- run directory


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = run / "checkpoints"
    found = [p for p in folder.glob("step*.ckpt") if _CKPT.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was taken at, from its name (stepNNNNNNNN.ckpt)."""
    return int(_CKPT.match(path.name)[1])


def trained_steps(run: Path) -> int:
    """Steps the run's last checkpoint holds (0 without one)."""
    found = checkpoints(run)
    return checkpoint_step(found[-1]) if found else 0


def prepare_run(config: TrainConfig, run: Path) -> Normalization:
    """Create or check the run directory; rank 0 resolves bands and normalisation."""
    saved = run / "config.yaml"
    if saved.exists():
        previous = validate_config(yaml.safe_load(saved.read_text()), str(saved))
        if previous.digest(("trainer.steps",)) != config.digest(("trainer.steps",)):
            changed = _differences(previous.model_dump(), config.model_dump())
            raise UserError(
                f"{run}: holds a run with another config (differs in {', '.join(changed)}); "
                "rerun with the same config to resume, or choose a new -o"
            )
    norm_file = run / "normalization.json"
    if env_rank() == 0:
        # the dataset is checked (and statistics computed) before anything is written, so a
        # mistake leaves no half-made run directory behind
        norm = None if norm_file.exists() else resolve_normalization(config)
        run.mkdir(parents=True, exist_ok=True)
        _write_atomic(saved, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        if norm is not None:
            _write_atomic(norm_file, json.dumps(norm.to_json(), indent=2))
    else:
        _wait_for(norm_file)
    return Normalization.from_json(json.loads(norm_file.read_text()))


def resolve_normalization(config: TrainConfig) -> Normalization:
    data = config.data
    urls = dataset_urls(data.source)
    available = data.bands or sample_bands(urls, data.split, data.slot, data.max_member_bytes)
    bands = choose_bands(available, data.sensors, data.bands)
    return train_normalization(
        data.source,
        urls,
        bands,
        data.split,
        data.slot,
        data.stats_samples,
        data.max_member_bytes,
    )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b or prefix == "trainer.steps." else [prefix.rstrip(".")]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for(path: Path, timeout: float = 3600.0) -> None:
    started = time.monotonic()
    while not path.exists():
        if time.monotonic() - started > timeout:
            raise UserError(f"{path}: rank 0 did not write it within {timeout:.0f} s")
        time.sleep(0.5)


# ---------------------------------------------------------------- Lightning module


def warmup_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then constant or half-cosine."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        # a Python float: a numpy scalar would reach the checkpoint's optimiser state, which
        # then no longer loads without unpickling
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


class PretrainModule(L.LightningModule):
    """Any `Method` in Lightning's loop."""

    def __init__(self, method: Method, config: TrainConfig) -> None:
        super().__init__()
        self.method, self.config = method, config
        self._times: deque[float] = deque(maxlen=config.trainer.log_every + 1)

    def train_dataloader(self) -> DataLoader:
        cfg = self.config
        world = self.trainer.world_size
        stream = TrainStream(
            dataset_urls(cfg.data.source),
            self.method.fields(),
            self.method.views(),
            batch_size=cfg.trainer.batch_size // world,
            split=cfg.data.split,
            seed=cfg.seed,
            start=self.trainer.global_step,
            end=cfg.trainer.steps,
            workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            max_member_bytes=cfg.data.max_member_bytes,
            rank=self.global_rank,
            world=world,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=cfg.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=2 if cfg.data.num_workers else None,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.method.training_step(batch, self.global_step)
        self.log("loss", out.loss.detach(), prog_bar=True)
        for name, value in out.metrics.items():
            value = value.detach() if torch.is_tensor(value) else value
            self.log(name, value, prog_bar=name == "accuracy")
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        if out.histograms and self.global_rank == 0 and self.logger is not None:
            for name, values in out.histograms.items():
                self.logger.experiment.add_histogram(name, values, self.global_step)
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.after_step(self.global_step)
        # throughput over the last log_every steps: single steps swing with data loading
        self._times.append(time.perf_counter())
        if len(self._times) > 1:
            seconds = max(self._times[-1] - self._times[0], 1e-9)
            rate = self.config.trainer.batch_size * (len(self._times) - 1) / seconds
            self.log("samples_per_s", rate, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.config.optim
        params = [p for p in self.method.parameters() if p.requires_grad]
        if opt.name == "adam":
            optimizer = torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
            )
        total = self.config.trainer.steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, opt.warmup_steps, total, opt.schedule)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = np.random.get_state()
        checkpoint["geossl"] = {
            "format": 1,
            "workers": self.config.data.num_workers,
            "world_size": self.trainer.world_size,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [state[0], state[1].tolist(), state[2], state[3], state[4]],
                "python": random.getstate(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("geossl", {})
        if saved.get("workers") != self.config.data.num_workers or saved.get("world_size") != int(
            os.environ.get("WORLD_SIZE", "1")
        ):
            log.warning(
                "resuming with a different number of ranks or workers: the data streams restart"
            )
        rng = saved.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))


class FinalCheckpoint(Callback):
    """A checkpoint at the last step (unless the periodic one just wrote it)."""

    def __init__(self, run: Path) -> None:
        self.run = run

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        path = self.run / "checkpoints" / f"step{trainer.global_step:08d}.ckpt"
        if not path.exists():
            trainer.save_checkpoint(path)


class TextProgress(Callback):
    """Without a terminal (logs, CI), a line every `every` steps instead of a progress bar."""

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total = every, total

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and (step % self.every == 0 or step == self.total):
            metrics = trainer.callback_metrics
            keys = ("loss", "accuracy", "samples_per_s")
            parts = [f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics]
            print(f"step {step}/{self.total}  " + "  ".join(parts), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- entry points


def quiet_lightning() -> None:
    """Lightning's start-up banners and two warnings that do not apply here."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(name).propagate = False
    # TrainStream defines __len__ per rank and assigns its own streams to workers
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    # a resumed run writes into its own checkpoint directory on purpose
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def trainer_for(config: TrainConfig, run: Path) -> L.Trainer:
    cfg = config.trainer
    quiet_lightning()
    cuda = torch.cuda.is_available() and cfg.accelerator != "cpu"
    accelerator = "gpu" if cuda else "cpu"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    nodes = max(env_world() // local, 1)
    strategy: Any = "auto"
    if env_world() > 1:
        strategy = DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
    tty = sys.stderr.isatty()
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=run / "checkpoints",
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint_every,
            save_top_k=cfg.keep_checkpoints,
            monitor="step",
            mode="max",
        ),
        FinalCheckpoint(run),
    ]
    if not tty:
        callbacks.append(TextProgress(max(cfg.log_every * 10, 1), cfg.steps))
    return L.Trainer(
        accelerator=accelerator,
        devices=local,
        num_nodes=nodes,
        strategy=strategy,
        precision=precision,
        max_steps=cfg.steps,
        gradient_clip_val=config.optim.grad_clip,
        gradient_clip_algorithm="norm",
        logger=TensorBoardLogger(save_dir=str(run), name="tb", version=""),
        log_every_n_steps=cfg.log_every,
        callbacks=callbacks,
        enable_progress_bar=tty,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def train(config: TrainConfig, run: Path) -> Path | None:
    """Train (or resume) a run; returns backbone.pt's path on rank 0."""
    if config.trainer.batch_size % env_world():
        raise UserError(
            f"trainer.batch_size={config.trainer.batch_size} is not divisible by the "
            f"{env_world()} ranks"
        )
    normalization = prepare_run(config, run)
    L.seed_everything(config.seed, workers=False, verbose=False)
    method = build_method(config, normalization)
    module = PretrainModule(method, config)
    found = checkpoints(run)
    resume = str(found[-1]) if found else None
    complete = bool(found) and checkpoint_step(found[-1]) >= config.trainer.steps
    if resume:
        log.info("resuming from %s", resume)
        if env_rank() == 0:
            done = "already trained to the end; writing the backbone" if complete else ""
            print(f"resuming from {resume} {done}".rstrip(), file=sys.stderr, flush=True)
    trainer = trainer_for(config, run)
    with warnings.catch_warnings():
        if complete:  # no batch is left to draw, which Lightning warns about as if a mistake
            warnings.filterwarnings("ignore", message="Total length of .* across ranks is zero")
        trainer.fit(module, ckpt_path=resume, weights_only=True)  # never unpickle
    if trainer.is_global_zero:
        return write_backbone(run, method, config, trainer.global_step)
    return None


def backbone_doc(method: Method, config: TrainConfig, steps: int) -> dict[str, Any]:
    encoder = method.encoder
    return {
        "format": BACKBONE_FORMAT,
        "geossl_version": __version__,
        "arch": encoder.arch,
        "in_channels": encoder.in_channels,
        "bands": method.bands,
        "normalization": method.normalization.to_json(),
        "input_scaling": method.input_scaling,
        "method": method.describe(),
        "dataset": {
            "source": config.data.source,
            "split": config.data.split,
            "slot": config.data.slot,
            "digest": dataset_digest(config.data.source),
        },
        "steps": steps,
        "seed": config.seed,
        "config_digest": config.digest(),
        "load": (
            f"m = torchvision.models.{encoder.arch}(); "
            f"m.conv1 = torch.nn.Conv2d({encoder.in_channels}, 64, 7, 2, 3, bias=False); "
            "m.fc = torch.nn.Identity(); m.load_state_dict(torch.load('backbone.pt')); "
            "inputs: bands in this order, (x - mean) / std, missing bands 0, × input_scaling"
        ),
    }


def write_backbone(run: Path, method: Method, config: TrainConfig, steps: int) -> Path:
    out = run / "backbone.pt"
    export_to(out, method, config, steps)
    return out


def export_to(out: Path, method: Method, config: TrainConfig, steps: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(method.encoder.export_state(), tmp)
    os.replace(tmp, out)
    _write_atomic(
        out.with_suffix(".json"), json.dumps(backbone_doc(method, config, steps), indent=2)
    )


def load_run(run: Path) -> tuple[TrainConfig, Method, int]:
    """A run's method with the weights of its newest checkpoint (or backbone.pt)."""
    saved = run / "config.yaml"
    if not saved.exists():
        raise UserError(f"{run}: not a geossl run directory (no config.yaml)")
    config = validate_config(yaml.safe_load(saved.read_text()), str(saved))
    norm = Normalization.from_json(json.loads((run / "normalization.json").read_text()))
    method = build_method(config, norm)
    found = checkpoints(run)
    if found:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)  # never unpickle
        weights = {
            k.removeprefix("method."): v
            for k, v in state["state_dict"].items()
            if k.startswith("method.")
        }
        method.load_state_dict(weights)
        return config, method, int(state.get("global_step", 0))
    if (run / "backbone.pt").exists():
        backbone = torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)
        method.encoder.backbone.load_state_dict(backbone)
        doc = json.loads((run / "backbone.json").read_text())
        return config, method, int(doc.get("steps", 0))
    raise UserError(f"{run}: no checkpoint and no backbone.pt; train it first")

"""SoundingEarth: the batch triplet loss against Eq. 3, spectrogram windows, mixed-length
batches, the sensor fallback, the image views, and a short run with its train metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import AUDIO_BANDS, sound_config, write_audio_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ssl_train import crash_after_a_checkpoint, fresh_torchvision, resume
from torch.utils.data import DataLoader

from geoprep import Sample, UserError
from geossl.cli import main
from geossl.config import TrainConfig, validate_config
from geossl.data import Normalization, TrainStream, dataset_urls, raw_samples
from geossl.methods.soundingearth import (
    SILENCE_DB,
    SoundingEarth,
    batch_triplet_loss,
    contrastive_loss,
    naive_triplet_loss,
    retrieval_ranks,
    spectrogram_window,
)
from geossl.train import checkpoints, train


def paper_eq3(v: np.ndarray, a: np.ndarray, margin: float) -> float:
    """Eq. 3 written out: D_ij = ||v_i − a_j||, L = Σ_i Σ_{j≠i} max(0, D_ii − D_ij + m)
    + Σ_j Σ_{i≠j} max(0, D_jj − D_ij + m)."""
    n = len(v)
    dist = [[float(np.sqrt(np.sum((v[i] - a[j]) ** 2))) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += max(0.0, dist[i][i] - dist[i][j] + margin)
                total += max(0.0, dist[j][j] - dist[i][j] + margin)
    return total


def code_mean(v: np.ndarray, a: np.ndarray, margin: float) -> float:
    """The official code's reduction written out: 0.5 · (mean over all N² (i, j) of
    max(0, D_jj − D_ij + m) + mean over all N² of max(0, D_ii − D_ij + m)), diagonal included."""
    n = len(v)
    dist = [[float(np.sqrt(np.sum((v[i] - a[j]) ** 2))) for j in range(n)] for i in range(n)]
    d1 = sum(max(0.0, dist[j][j] - dist[i][j] + margin) for i in range(n) for j in range(n))
    d2 = sum(max(0.0, dist[i][i] - dist[i][j] + margin) for i in range(n) for j in range(n))
    return 0.5 * (d1 / n**2 + d2 / n**2)


@pytest.mark.parametrize(
    "n, dim, margin, scale", [(5, 8, 1.0, 0.3), (9, 16, 1.0, 1.0), (6, 4, 0.5, 2.0)]
)
def test_batch_triplet_loss_is_eq3_and_the_codes_mean(n, dim, margin, scale) -> None:
    rng = np.random.default_rng(n)
    v = rng.normal(0, scale, (n, dim))
    a = v + rng.normal(0, scale, (n, dim))  # some pairs inside the margin, some not
    tv, ta = torch.tensor(v), torch.tensor(a)
    got = float(batch_triplet_loss(tv, ta, margin, "sum"))
    assert got == pytest.approx(paper_eq3(v, a, margin), rel=1e-5)
    assert float(batch_triplet_loss(tv, ta, margin, "mean")) == pytest.approx(
        code_mean(v, a, margin), rel=1e-5
    )
    # the two differ: the sum is not a rescaled mean once the diagonal's constant is in it
    assert got != pytest.approx(float(batch_triplet_loss(tv, ta, margin, "mean")) * 2 * n * n)


def test_loss_gradients_flow_and_the_ablations_rank_pairs() -> None:
    torch.manual_seed(0)
    v = torch.randn(6, 8, requires_grad=True)
    a = torch.randn(6, 8, requires_grad=True)
    for loss in (batch_triplet_loss(v, a), naive_triplet_loss(v, a), contrastive_loss(v, a)):
        (gv,) = torch.autograd.grad(loss, v)
        assert torch.isfinite(gv).all() and gv.abs().sum() > 0
    # matched pairs far apart from the others: no triplet violates the margin
    matched = torch.eye(6, 8) * 10
    assert float(batch_triplet_loss(matched, matched)) == 0.0
    assert float(naive_triplet_loss(matched, matched)) == 0.0
    d = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.4, 3.0], [0.1, 0.2, 0.3]])
    assert retrieval_ranks(d).tolist() == [1, 1, 3]


def test_spectrogram_windows_and_padding() -> None:
    mel = np.arange(128 * 300, dtype=np.float16).reshape(128, 300) % 1000
    starts = set()
    for seed in range(20):
        window, frames = spectrogram_window(mel, 128, torch.Generator().manual_seed(seed))
        assert window.shape == (128, 128) and window.dtype == np.float32 and frames == 300
        matches = [s for s in range(300 - 128 + 1) if np.array_equal(mel[:, s : s + 128], window)]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 10  # uniformly drawn, not fixed
    centre, _ = spectrogram_window(mel, 128, None)
    assert np.array_equal(centre, mel[:, 86:214])
    exact, _ = spectrogram_window(mel[:, :128], 128, torch.Generator().manual_seed(1))
    assert np.array_equal(exact, mel[:, :128])
    short, frames = spectrogram_window(mel[:, :50], 128, torch.Generator().manual_seed(1))
    assert frames == 50 and short.shape == (128, 128)
    assert np.array_equal(short[:, :50], mel[:, :50])
    assert np.all(short[:, 50:] == SILENCE_DB)
    with pytest.raises(ValueError):
        spectrogram_window(mel[0], 128, None)


def build(source, **method) -> SoundingEarth:
    config = validate_config(sound_config(source, method=method))
    norm = Normalization(AUDIO_BANDS, [100, 110, 90, 150, 800, 900, 700, 2500], [10] * 8, "t")
    torch.manual_seed(0)
    return SoundingEarth(config, norm)


def batches(method: SoundingEarth, source, n: int, batch_size: int = 6) -> list[dict]:
    stream = TrainStream(
        dataset_urls(str(source)), method.fields(), method.views(), batch_size=batch_size,
        split="train", seed=1, start=0, end=n, workers=1, shuffle_buffer=4, rank=0, world=1,
    )  # fmt: skip
    return list(DataLoader(stream, batch_size=None, num_workers=1))


@pytest.mark.parametrize("fallback", ["normalise", "skip"])
def test_mixed_length_recordings_batch_in_the_workers(tmp_path, fallback) -> None:
    source = write_audio_dataset(tmp_path / "a", n=16, frames=(40, 250), fallback_every=3)
    method = build(source, fallback=fallback)
    got = batches(method, source, 3)
    for batch in got:
        assert batch["audio"].shape == (6, 1, 128, 128) and batch["audio"].dtype == torch.float32
        assert batch["image"].shape == (6, 4, 24, 24)  # 0.75 of 32 px
    seen = torch.cat([b["fallback"] for b in got])
    if fallback == "skip":
        assert not seen.any()
    else:
        assert seen.any() and not seen.all()
        # a fallback image is normalised with its own sensor's statistics
        fields, checked = method.fields(), 0
        for url in dataset_urls(str(source)):
            for raw in raw_samples(url, 2**24):
                sample = Sample.from_wds(raw)
                out = fields(sample, None)
                if out["fallback"]:
                    raw_s2 = sample.image("s2").array.astype(np.float32)
                    mean = np.array([800, 900, 700, 2500], np.float32)[:, None, None]
                    assert np.allclose(out["image"].numpy(), (raw_s2 - mean) / 10, atol=1e-4)
                    checked += 1
        assert checked == 5  # keys 2, 5, 8, 11, 14
    # short recordings are padded with silence after their last frame, long ones cropped
    floor = (SILENCE_DB - method.se.mel_mean) / method.se.mel_std
    frames = torch.cat([b["frames"] for b in got])
    audio = torch.cat([b["audio"] for b in got])
    assert (frames < 128).any() and (frames > 128).any()
    for length, window in zip(frames.tolist(), audio, strict=True):
        assert bool((window[..., length:] == floor).all())
        assert not bool((window[..., : min(length, 128)] == floor).all(dim=1).any())


def test_image_views_follow_the_patch_size() -> None:
    paper = {"center_fraction": 0.5, "crop_fraction": [0.375, 0.75]}
    config = validate_config(sound_config("x", method=paper))
    assert config.method.view_sizes(1024) == (512, 192, 384, 192)  # the paper's numbers
    method = SoundingEarth(config, Normalization(AUDIO_BANDS[:4], [0] * 4, [1] * 4, "t"))
    image = torch.randn(3, 4, 96, 96)
    batch = {"image": image, "fallback": torch.zeros(3, dtype=torch.bool)}
    batch["audio"], batch["frames"] = torch.zeros(3, 1, 128, 128), torch.zeros(3)
    views = method.views()(batch, 0, torch.Generator().manual_seed(0))
    assert views["image"].shape == (3, 4, 18, 18)
    again = method.views()(batch, 0, torch.Generator().manual_seed(0))
    assert torch.equal(views["image"], again["image"])
    other = method.views()(batch, 0, torch.Generator().manual_seed(1))
    assert not torch.equal(views["image"], other["image"])


def test_sensor_without_bands_is_a_user_error() -> None:
    config = TrainConfig.model_validate(sound_config("x", method={"sensor": "s1"}))
    with pytest.raises(UserError, match="method.sensor='s1'"):
        SoundingEarth(config, Normalization(AUDIO_BANDS, [0] * 8, [1] * 8, "t"))


def test_a_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path) -> None:
    source = write_audio_dataset(tmp_path / "a", n=16)
    config = validate_config(sound_config(source, trainer={"steps": 3}))
    out = train(config, tmp_path / "straight")
    shorter = config.model_copy(update={"trainer": config.trainer.model_copy(update={"steps": 2})})
    train(shorter, tmp_path / "resumed")
    train(config, tmp_path / "resumed")  # resumes at step 2: windows and views drawn alike
    a = torch.load(checkpoints(tmp_path / "straight")[-1], weights_only=True)["state_dict"]
    b = torch.load(checkpoints(tmp_path / "resumed")[-1], weights_only=True)["state_dict"]
    assert any(k.startswith("method.audio_tower.") for k in a) and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["method"]["name"] == "soundingearth" and doc["bands"] == AUDIO_BANDS[:4]
    assert doc["in_channels"] == 4
    tags = set(EventAccumulator(str(tmp_path / "straight" / "tb")).Reload().Tags()["scalars"])
    wanted = {"i2a_r1", "a2i_r1", "i2a_median_rank", "a2i_median_rank", "fallback_fraction"}
    assert wanted | {"loss"} <= tags


def test_torchrun_two_ranks_killed_resumed_and_evaluated(
    tmp_path: Path, audio_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    steps = 12
    config = tmp_path / "config.yaml"
    sections = {"trainer": {"steps": steps, "checkpoint_every": 2, "log_every": 2}}
    config.write_text(yaml.safe_dump(sound_config(audio_dataset, **sections)))
    run = tmp_path / "run"
    crash_after_a_checkpoint(config, run, steps)

    second = resume(config, run)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr
    state = torch.load(checkpoints(run)[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == steps
    assert any(k.startswith("method.audio_tower.") for k in state["state_dict"])
    doc = json.loads((run / "backbone.json").read_text())
    model = fresh_torchvision(doc["arch"], doc["in_channels"], torch.load(run / "backbone.pt"))
    assert model.eval()(torch.zeros(1, 4, 32, 32)).shape == (1, 512)

    # retrieval on the held-out split beside random init and chance, then the land-cover k-NN
    capsys.readouterr()
    assert main(["eval", str(run), str(audio_dataset), "--json"]) == 0
    rows = {(r["encoder"], r["metric"]): r for r in json.loads(capsys.readouterr().out)}
    for encoder in ("trained", "random"):
        for name in ("i2a_recall@10", "a2i_recall@10", "i2a_median_rank", "knn_top1"):
            assert (encoder, name) in rows
    held_out = rows[("trained", "i2a_recall@1")]["n"]
    assert held_out == 4  # the test split: keys 3, 7, 11, 15
    assert rows[("chance", "chance_recall@1")]["value"] == pytest.approx(1 / 4)
    assert rows[("chance", "chance_median_rank")]["value"] == pytest.approx(2.5)
    assert rows[("trained", "knn_top1")]["n"] == 16

    # labels from a table by recording identifier (the demo world's recordings.csv)
    table = tmp_path / "recordings.csv"
    lines = ["identifier,land_cover,duration_s"]
    lines += [f"aporee_{i}_{1000 + i},{'forest' if i % 2 else 'water'},4.0" for i in range(12)]
    table.write_text("\n".join(lines) + "\n")
    labelled = ["--labels", str(table), "--label-column", "land_cover", "--json"]
    assert main(["eval", str(run), str(audio_dataset), *labelled]) == 0
    rows = {(r["encoder"], r["metric"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("random", "knn_top1")]["n"] == 12  # samples 12-15 are not in the table
    assert main(["eval", str(run), str(audio_dataset), "--labels", str(table)]) == 2
    assert "expected a 'key' or 'identifier' column and 'label'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("loss", "reduction", "expected"),
    [
        ("batch_triplet", "sum", lambda v, a: batch_triplet_loss(v, a, 1.0, "sum")),
        ("batch_triplet", "mean", lambda v, a: batch_triplet_loss(v, a, 1.0, "mean")),
        ("naive_triplet", "sum", lambda v, a: naive_triplet_loss(v, a, 1.0)),
        ("contrastive", "sum", lambda v, a: contrastive_loss(v, a, 0.2)),
    ],
)
def test_the_config_picks_the_loss(loss, reduction, expected) -> None:
    method = build("x", loss=loss, reduction=reduction)
    v, a = torch.randn(5, 128), torch.randn(5, 128)
    assert float(method.loss(v, a)) == pytest.approx(float(expected(v, a)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.crop_fraction=[0.8, 0.5]"],
            r"method.crop_fraction: got \[0.8, 0.5\]; expected \[low",
        ),
        (["method.reduction=median"], "method.reduction: got 'median'"),
        (["method.windw=64"], "method.windw: unknown key"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, overrides, message) -> None:
    from geossl.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(sound_config(tmp_path)))
    with pytest.raises(UserError, match=message):
        load_config(path, overrides)

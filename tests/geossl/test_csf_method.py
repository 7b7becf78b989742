"""CSF: the loss against the paper's formula, channel dropout, views, any-subset inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from geossl.config import TrainConfig
from geossl.data import Normalization
from geossl.methods.csf import CSF, CSFViews, channel_dropout, dropout_rate, info_nce
from geossl.models import Encoder

BANDS = [f"s.b{i}" for i in range(6)]


def paper_layer_loss(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """Paper §3.2 / App. A.2 written out: S_ij = φ(z1_i, z2_j) = z1_i·z2_j / τ;
    L = −(1/B) Σ_i [log(e^{S_ii} / Σ_j e^{S_ij}) + log(e^{S_ii} / Σ_j e^{S_ji})]."""
    b = z1.shape[0]
    s = np.array([[float(np.dot(z1[i], z2[j])) / tau for j in range(b)] for i in range(b)])
    total = 0.0
    for i in range(b):
        row = math.log(sum(math.exp(s[i, j] - s[i].max()) for j in range(b))) + s[i].max()
        col = math.log(sum(math.exp(s[j, i] - s[:, i].max()) for j in range(b))) + s[:, i].max()
        total += (s[i, i] - row) + (s[i, i] - col)
    return -total / b


def method(**csf) -> CSF:
    config = TrainConfig.model_validate(
        {"method": {"name": "csf", **csf}, "data": {"source": "x"}, "model": {"arch": "resnet18"}}
    )
    norm = Normalization(BANDS, [0.0] * 6, [1.0] * 6, "test")
    torch.manual_seed(0)
    return CSF(config, norm)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_is_the_papers_symmetric_loss(tau: float) -> None:
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(7, 3, 2, 2)), rng.normal(size=(7, 3, 2, 2))  # flattened inside
    got = info_nce(torch.tensor(z1), torch.tensor(z2), tau).item()
    assert got == pytest.approx(
        paper_layer_loss(z1.reshape(7, -1), z2.reshape(7, -1), tau), rel=1e-5
    )


@pytest.mark.parametrize(
    ("weights", "expected"),
    [({"layer3": 1.0, "layer4": 2.0}, (1, 2)), ({"layer3": 1.0, "layer4": 1.0}, (1, 1))],
)
def test_layer_weights_paper_and_code(weights: dict, expected: tuple) -> None:
    csf = method(layer_weights=weights)
    rng = np.random.default_rng(2)
    maps1 = {"layer3": rng.normal(size=(5, 4, 2, 2)), "layer4": rng.normal(size=(5, 8, 1, 1))}
    maps2 = {k: rng.normal(size=v.shape) for k, v in maps1.items()}
    loss, metrics = csf.loss(
        {k: torch.tensor(v) for k, v in maps1.items()},
        {k: torch.tensor(v) for k, v in maps2.items()},
    )
    want = sum(
        w * paper_layer_loss(maps1[k].reshape(5, -1), maps2[k].reshape(5, -1), 0.1)
        for k, w in zip(("layer3", "layer4"), expected, strict=True)
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert 0.0 <= metrics["accuracy"].item() <= 1.0


def test_cosine_option_normalises_before_the_papers_formula() -> None:
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(6, 10)) * 5, rng.normal(size=(6, 10))
    unit1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    unit2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    got = info_nce(torch.tensor(z1), torch.tensor(z2), 0.1, cosine=True).item()
    assert got == pytest.approx(paper_layer_loss(unit1, unit2, 0.1), rel=1e-5)


def test_perfectly_matched_views_give_full_accuracy_and_low_loss() -> None:
    csf = method()
    z = torch.eye(6).view(6, 6, 1, 1) * 3
    loss, metrics = csf.loss({"layer3": z, "layer4": z}, {"layer3": z, "layer4": z})
    assert metrics["accuracy"].item() == 1.0
    assert loss.item() < 1e-6


def test_cosine_accuracy_ignores_feature_norms() -> None:
    # matched directions, one sample 100× longer: under the dot product it would win every row
    csf = method(similarity="cosine")
    z = torch.eye(6) + 0.1
    z[0] *= 100
    maps = {"layer3": z.view(6, 6, 1, 1), "layer4": z.view(6, 6, 1, 1)}
    _, metrics = csf.loss(maps, maps)
    assert metrics["accuracy"].item() == 1.0


@pytest.mark.parametrize(
    ("step", "rate"), [(0, 0.0), (2000, 0.165), (4000, 0.33), (8000, 0.66), (50000, 0.66)]
)
def test_dropout_rate_rises_linearly_to_066_over_8000_batches(step: int, rate: float) -> None:
    assert dropout_rate(step, 0.66, 8000) == pytest.approx(rate)


def test_channel_dropout_drops_whole_bands_and_scales_the_rest() -> None:
    x = torch.ones(4000, 12, 3, 3)
    out = channel_dropout(x, 0.66, torch.Generator().manual_seed(0))
    per_band = out.flatten(2)
    assert torch.all(per_band.amax(2) == per_band.amin(2))  # one decision per sample and band
    values = torch.unique(out).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.34)
    kept = (out[:, :, 0, 0] > 0).float().mean().item()
    assert kept == pytest.approx(0.34, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)  # expectation preserved


def test_views_are_independent_crops_with_the_scheduled_rate() -> None:
    csf = method(crop_fraction=0.25, dropout={"rate": 0.5, "warmup_batches": 10})
    views = csf.views()
    assert isinstance(views, CSFViews)
    batch = {"image": torch.randn(8, 6, 32, 32)}
    out = views(batch, 5, torch.Generator().manual_seed(1))
    assert out["view1"].shape == out["view2"].shape == (8, 6, 24, 24)
    assert out["dropout_rate"].item() == pytest.approx(0.25)
    assert not torch.equal(out["view1"], out["view2"])
    again = views(batch, 5, torch.Generator().manual_seed(1))
    assert torch.equal(out["view1"], again["view1"])  # a function of the generator only


def test_any_subset_inference_zeros_missing_bands_and_scales_by_the_final_rate() -> None:
    csf = method()
    csf.eval()
    image = torch.randn(2, 6, 32, 32)
    present = [True, True, False, True, False, False]
    x = csf.prepare_input(image, present)
    scale = 1 / (1 - 0.66)
    expected = image.clone()
    expected[:, [2, 4, 5]] = 0
    assert torch.allclose(x, expected * scale)
    with torch.no_grad():
        features = csf.features(x)
    assert features.shape == (2, 512)  # flattened layer4 of a 32 px input: 512 × 1 × 1
    assert method(inference_scaling=3.0).input_scaling == 3.0  # the code's value, as an option


@pytest.mark.parametrize(
    ("present", "scale"),
    [(None, 1.0), ([True] * 6, 1.0), ([True, True, False, True, False, False], 2.0)],
)
def test_band_count_scaling_keeps_the_expected_input_of_inverted_dropout(present, scale) -> None:
    csf = method(inference_scaling="bands")
    image = torch.randn(2, 6, 8, 8)
    expected = image * torch.tensor(present or [True] * 6, dtype=image.dtype).view(1, -1, 1, 1)
    assert torch.allclose(csf.prepare_input(image, present), expected * scale)
    assert csf.input_scaling.startswith("bands")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_signed_taps_are_the_residual_sums_of_an_unchanged_network(arch: str) -> None:
    signed = Encoder(arch, 5, taps=("layer3", "layer4"), signed_taps=True).eval()
    plain = torchvision.models.__dict__[arch](weights=None)
    plain.conv1 = torch.nn.Conv2d(5, 64, 7, 2, 3, bias=False)
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(signed.export_state())
    plain.eval()
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        maps = signed(x)
        # torchvision's own stages, run one by one: each block's output is relu(residual sum)
        h = plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))
        h3 = plain.layer3(plain.layer2(plain.layer1(h)))
        last = plain.layer3[-1]
        before = plain.layer3[:-1](plain.layer2(plain.layer1(h)))
        shortcut = before if last.downsample is None else last.downsample(before)
        branch = last.bn2(last.conv2(last.relu(last.bn1(last.conv1(before)))))
        if arch == "resnet50":
            branch = last.bn3(last.conv3(last.relu(branch)))
        pooled = plain(x)
    assert torch.allclose(maps["layer3"], branch + shortcut, atol=1e-5)
    assert torch.allclose(torch.relu(maps["layer3"]), h3, atol=1e-5)
    assert torch.allclose(maps["pool"], pooled, atol=1e-5)  # the network itself is unchanged
    assert (maps["layer4"] < 0).any() and (maps["layer3"] < 0).any()

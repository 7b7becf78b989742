"""MoCo-v2 core, GASSL and CACo: losses against the formulas written out here, the EMA key
update, the queue, CACo's long-term masking and change state, the variants and views."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from moco_shards import write_fmow

from geossl.config import TrainConfig
from geossl.data import Normalization
from geossl.methods.caco import MASKED, CACo, ChangeState, caco_loss, other_group_block
from geossl.methods.gassl import GASSL, GASSLFields, dataset_clusters, geo_loss
from geossl.methods.moco import info_nce

RGB = ["fmow.red", "fmow.green", "fmow.blue"]


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build(method: dict, source: str = "x", batch: int = 8, **sections) -> GASSL | CACo:
    config = TrainConfig.model_validate(
        {
            "method": method,
            "data": {"source": source},
            "model": {"arch": "resnet18"},
            "trainer": {"batch_size": batch},
            **sections,
        }
    )
    bands = RGB if method["name"] == "gassl" else ["s2.B04", "s2.B03", "s2.B02"]
    torch.manual_seed(0)
    norm = Normalization(bands, [0.0] * 3, [1.0] * 3, "test")
    return (GASSL if method["name"] == "gassl" else CACo)(config, norm)


# ---------------------------------------------------------------- MoCo core


@pytest.mark.parametrize("tau", [0.2, 0.02])
def test_info_nce_with_a_queue_is_mocos_formula(tau: float) -> None:
    """L = −(1/N) Σ_i log exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_j exp(q_i·queue_j/τ))."""
    rng = np.random.default_rng(0)
    q, k, queue = unit(rng, 6, 5), unit(rng, 6, 5), unit(rng, 11, 5)
    want = 0.0
    for i in range(6):
        positive = float(q[i] @ k[i]) / tau
        terms = [positive] + [float(q[i] @ queue[j]) / tau for j in range(11)]
        want -= positive - logsumexp(terms)
    want /= 6
    got = info_nce(torch.tensor(q), torch.tensor(k), torch.tensor(queue), tau).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_key_encoder_is_an_ema_of_the_query_encoder() -> None:
    model = build({"name": "gassl", "geo": False, "queue_size": 16})
    keys = [p.detach().clone() for p in model.key_encoder.parameters()]
    for p in model.encoder.parameters():  # the optimiser moved the query encoder
        p.data.add_(torch.randn_like(p))
    query = [p.detach().clone() for p in model.encoder.parameters()]
    model.momentum_update()
    for k_old, q, k_new in zip(keys, query, model.key_encoder.parameters(), strict=True):
        assert torch.allclose(k_new, 0.999 * k_old + 0.001 * q, atol=1e-7)
    assert all(not p.requires_grad for p in model.key_heads.parameters())
    model.heads[0][0].weight.data.add_(1.0)  # the key heads follow the query heads too
    before = model.key_heads[0][0].weight.detach().clone()
    model.momentum_update()
    after = model.key_heads[0][0].weight.detach()
    assert torch.allclose(after, 0.999 * before + 0.001 * model.heads[0][0].weight.detach())


def test_enqueue_writes_in_order_and_wraps_around() -> None:
    model = build({"name": "gassl", "geo": False, "queue_size": 5, "dim": 2})
    keys = [torch.tensor([[float(i), 0.0]]) for i in range(8)]
    model.enqueue([torch.cat(keys[:3])])
    assert int(model.queue_ptr) == 3
    assert model.queue[0, :3, 0].tolist() == [0.0, 1.0, 2.0]
    model.enqueue([torch.cat(keys[3:7])])  # 3, 4 at the end, then 5, 6 from the start
    assert int(model.queue_ptr) == 2
    assert model.queue[0, :, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    state = model.state_dict()
    assert {"queue", "queue_ptr"} <= set(state)  # checkpointed with the model


# ---------------------------------------------------------------- GASSL


def test_geo_loss_is_the_cross_entropy_over_clusters() -> None:
    """CE = −(1/N) Σ_i log softmax(f_c(q_i))[y_i], samples without a cluster left out."""
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(7, 4)), np.array([0, 3, 1, -1, 2, 2, 0])
    kept = [i for i in range(7) if labels[i] >= 0]
    want = -sum(logits[i, labels[i]] - logsumexp(list(logits[i])) for i in kept) / len(kept)
    assert geo_loss(torch.tensor(logits), torch.tensor(labels)).item() == pytest.approx(want)


@pytest.mark.parametrize(
    ("temporal", "geo", "head"), [(False, False, "linear"), (True, True, "relu-linear")]
)
def test_gassl_variants(tmp_path: Path, temporal: bool, geo: bool, head: str) -> None:
    source = write_fmow(tmp_path / "fmow", n=8, clusters=4)
    assert dataset_clusters(str(source)) == 4  # K read from the data, never typed
    model = build(
        {"name": "gassl", "temporal": temporal, "geo": geo, "geo_head": head, "queue_size": 16},
        str(source),
    )
    if geo:
        assert model.geo_head[-1].out_features == 4
        assert isinstance(model.geo_head[0], torch.nn.ReLU)
    batch = {
        "query": torch.randn(4, 3, 16, 16),
        "key": torch.randn(4, 3, 16, 16),
        "cluster": torch.tensor([0, 1, 3, 2]),
    }
    out = model.training_step(batch, 0)
    assert ("loss_geo" in out.metrics) == geo
    total = out.metrics["loss_infonce"] + (out.metrics["loss_geo"] if geo else 0.0)
    assert out.loss.item() == pytest.approx(float(total), rel=1e-5)  # α = β = 1
    assert int(model.queue_ptr) == 4


def test_temporal_positive_is_another_image_of_the_location(tmp_path: Path) -> None:
    from geoprep import Sample
    from geossl.data import dataset_urls, raw_samples

    source = write_fmow(tmp_path / "fmow", n=3)
    samples = [Sample.from_wds(r) for r in raw_samples(dataset_urls(str(source))[0], 2**30)]
    norm = Normalization(RGB, [0.0] * 3, [1.0] * 3, "test")
    temporal = GASSLFields(norm, "fmow", True)
    plain = GASSLFields(norm, "fmow", False)
    g = torch.Generator().manual_seed(0)
    for sample in samples:
        for _ in range(5):
            out = temporal(sample, g)
            same = torch.equal(out["query"], out["key"])
            assert same == (len(sample.images) == 1)  # one image: the image itself
            pair = plain(sample, g)
            assert torch.equal(pair["query"], pair["key"])


# ---------------------------------------------------------------- CACo


def test_long_term_negatives_are_masked_unless_the_location_changed() -> None:
    q = torch.eye(4)
    z = torch.eye(4)[[1, 0, 3, 2]] * 2  # q_r · z_s = 2 only for s = r ^ 1, r's partner row
    changed = torch.tensor([True, False, False, True])
    block = other_group_block(q, z, changed)
    # group-A rows (0, 2) see z rows 1, 3; group-B rows (1, 3) see z rows 0, 2
    want = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    want[1, 0] += MASKED  # row 1 (unchanged): its own location in the other year group
    want[2, 1] += MASKED  # row 2 (unchanged)
    assert torch.equal(block, want)


@pytest.mark.parametrize("changed", [[False] * 6, [True, False, False, True, True, True]])
def test_caco_loss_is_section_3_4_written_out(changed: list[bool]) -> None:
    rng = np.random.default_rng(3)
    n, d, tau = 6, 4, 0.07
    q = [unit(rng, n, d) for _ in range(3)]
    k = [[unit(rng, n, d) for _ in range(3)] for _ in range(3)]  # k[i][j]: head i, image j
    queues = unit(rng, 3, 12, d)
    everyone = {0: [], 1: [0, 2], 2: [0, 1]}
    want = 0.0
    for i in range(3):
        total = 0.0
        for r in range(n):
            positive = float(q[i][r] @ k[i][i][r]) / tau
            negatives = [float(q[i][r] @ queues[i][c]) / tau for c in range(12) if c % 2 == r % 2]
            for j in everyone[i]:
                negatives += [float(q[i][r] @ k[i][j][s]) / tau for s in range(n)]
            for s in range(n):
                other_year = s % 2 != r % 2
                if other_year and (s // 2 != r // 2 or changed[r]):
                    negatives.append(float(q[i][r] @ k[i][i][s]) / tau)
            total -= positive - logsumexp([positive, *negatives])
        want += total / n
    got, parts = caco_loss(
        [torch.tensor(x) for x in q],
        [[torch.tensor(x) for x in row] for row in k],
        torch.tensor(queues),
        torch.tensor(changed),
        tau,
    )
    assert len(parts) == 3
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_change_ratio_ema() -> None:
    state = ChangeState(beta=0.8)
    state.update([7, 8], np.array([2.0, 1.0]), np.array([1.0, 1.0]))
    first = 2.0 / (1.0 + 1e-4)
    assert state.values[7][2] == pytest.approx(first)  # first visit: r = R
    state.update([7], np.array([1.0]), np.array([2.0]))
    assert state.values[7][2] == pytest.approx(0.8 * first + 0.2 * 1.0 / (2.0 + 1e-4))
    assert state.values[7][0] == pytest.approx(0.8 * 2.0 + 0.2 * 1.0)  # long distance EMA'd too
    assert state.values[8][2] == pytest.approx(1.0 / (1.0 + 1e-4))


def test_gmm_threshold_separates_two_modes() -> None:
    rng = np.random.default_rng(4)
    low, high = rng.normal(1.0, 0.05, 120), rng.normal(3.0, 0.2, 30)
    state = ChangeState(beta=0.8)
    entries = list(range(150))
    ratios = np.concatenate([low, high])
    state.update(entries, ratios * (1 + 1e-4), np.ones(150))
    assert state.changed == set()  # before the first refit nothing is changed
    threshold = state.refit(seed=0)
    assert state.changed == set(range(120, 150))
    assert low.max() < threshold <= high.min() + 1e-9
    restored = ChangeState(beta=0.8)
    restored.load(state.to_state())
    assert restored.changed == state.changed and restored.refits == 1
    assert restored.values[149][2] == pytest.approx(state.values[149][2])


def test_caco_modes_and_queue_validation() -> None:
    model = build({"name": "caco", "queue_size": 32, "epoch_steps": 2}, batch=4)
    model.change.changed = {5}
    assert model.long_term([5, 6]).tolist() == [True, False]
    always = build({"name": "caco", "queue_size": 32, "long_term": "always"}, batch=4)
    assert always.long_term([5, 6]).tolist() == [True, True]
    never = build({"name": "caco", "queue_size": 32, "long_term": "never"}, batch=4)
    assert never.long_term([5, 6]).tolist() == [False, False]
    from geoprep import UserError

    with pytest.raises(UserError, match="multiple of the 8 rows"):
        build({"name": "caco", "queue_size": 20}, batch=4)


def test_paper_values_are_the_defaults_and_the_recipes() -> None:
    from geossl.config import CACoConfig, GASSLConfig, load_config

    recipes = Path(__file__).resolve().parents[2] / "recipes" / "train"
    gassl = load_config(recipes / "gassl.yaml")
    assert gassl.method == GASSLConfig()  # the recipe spells out the defaults
    assert (gassl.method.temperature, gassl.method.queue_size, gassl.method.momentum) == (
        0.2, 65536, 0.999,
    )  # fmt: skip
    assert (gassl.optim.name, gassl.optim.lr, gassl.trainer.batch_size) == ("sgd", 1e-3, 256)
    caco = load_config(recipes / "caco.yaml")
    assert caco.method.temperature == 0.07 and caco.method.ema_beta == 0.8
    assert caco.method.long_term == "changed" and caco.method.queue_size == 16384
    assert CACoConfig().temperature == 0.07 and caco.data.bands == ["s2.B04", "s2.B03", "s2.B02"]
    assert caco.method.queue_size % (2 * caco.trainer.batch_size) == 0


def _shuffled_keys_rank(rank: int, init: str, outs: list[str]) -> None:
    """One gloo rank: keys through the cross-rank shuffle vs the same keys computed locally."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = build({"name": "gassl", "geo": False, "queue_size": 16})
        model.eval()  # BN from running statistics: a key no longer depends on its batch mates
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(rank))
        (shuffled,) = model.keys(x, step=7)
        with torch.no_grad():
            local = torch.nn.functional.normalize(
                model.key_heads[0](model.key_encoder(x)["pool"]), dim=1
            )
        model.enqueue([local])
        torch.save({"shuffled": shuffled, "local": local, "queue": model.queue[0, :6]}, outs[rank])
    finally:
        dist.destroy_process_group()


def test_shuffled_bn_returns_each_rank_its_own_keys_and_the_queue_gets_all(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    mp.spawn(_shuffled_keys_rank, args=(init, outs), nprocs=2, join=True)
    results = [torch.load(o) for o in outs]
    for result in results:
        assert torch.allclose(result["shuffled"], result["local"], atol=1e-5)
    everyone = torch.cat([r["local"] for r in results])  # rank 0's rows, then rank 1's
    for result in results:
        assert torch.allclose(result["queue"], everyone, atol=1e-6)

"""Shards → tensors: shapes, dtypes, band order, normalisation, splits, shard assignment, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENSORS, write_dataset
from torch.utils.data import DataLoader

from geoprep import UnsafeShardError, UserError, open_dataset
from geossl.data import (
    ImageStack,
    Normalization,
    SampleStream,
    TrainStream,
    dataset_urls,
    sample_bands,
)
from geossl.stats import compute, train_normalization

ALL = [f"{s}.{b}" for s in SENSORS for b in SENSORS[s][0]]


def identity_views(batch, index, generator):
    info = torch.utils.data.get_worker_info()
    return {**batch, "index": torch.tensor(index), "worker": torch.tensor(info.id if info else 0)}


def test_band_names_and_normalisation_are_those_of_the_train_split(tiny_dataset: Path) -> None:
    urls = dataset_urls(str(tiny_dataset))
    assert sample_bands(urls, "train", "t0", 2**20) == ALL
    norm = compute(urls, ALL, "train", "t0", 1000, 2**20)
    # the same numbers straight from the train samples, via geoprep's own reader
    stacks = [
        s.common_stack("t0", dtype=np.float64)[0]
        for s in open_dataset(str(tiny_dataset))
        if s.meta["split"] == "train"
    ]
    pixels = np.concatenate([x.reshape(len(ALL), -1) for x in stacks], axis=1)
    assert norm.mean == pytest.approx(pixels.mean(axis=1).tolist(), rel=1e-9)
    assert norm.std == pytest.approx(pixels.std(axis=1).tolist(), rel=1e-9)
    # stats.json without a per-split view: computed; with one: taken from it
    (tiny_dataset / "stats.json").write_text(json.dumps({"sensors": {}}))
    again = train_normalization(str(tiny_dataset), urls, ALL, "train", "t0", 1000, 2**20)
    assert again.mean == pytest.approx(norm.mean)
    view = {
        s: {"bands": SENSORS[s][0], "mean": [1.0] * 4, "std": [2.0] * 4} for s in ("naip", "s2")
    }
    (tiny_dataset / "stats.json").write_text(json.dumps({"splits": {"train": {"sensors": view}}}))
    taken = train_normalization(str(tiny_dataset), urls, ALL, "train", "t0", 1000, 2**20)
    assert taken.mean == [1.0] * 8 and taken.std == [2.0] * 8


def test_image_stack_in_the_chosen_band_order_normalised(tiny_dataset: Path) -> None:
    urls = dataset_urls(str(tiny_dataset))
    order = ["s2.B08", "naip.R", "s2.B04", "landsat.red"]  # reordered; one band absent
    norm = Normalization(order, [2500.0, 100.0, 800.0, 7.0], [300.0, 10.0, 100.0, 1.0], "t")
    fields = ImageStack(norm)
    item = next(iter(SampleStream(urls, fields, rank=0, world=1)))
    assert item["image"].dtype == torch.float32 and item["image"].shape == (4, 32, 32)
    sample = next(iter(open_dataset(str(tiny_dataset))))
    stack, names = sample.common_stack("t0", dtype=np.float64)
    for i, band in enumerate(order[:3]):
        raw = stack[names.index(band)]
        expected = (raw - norm.mean[i]) / norm.std[i]  # values are ≥ 1: no nodata pixel
        assert np.allclose(item["image"][i].numpy(), expected, atol=1e-5)
    assert torch.all(item["image"][3] == 0)  # a band the sample lacks is zero


def test_nodata_pixels_become_zero(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n=1, per_shard=1, sensors=("s2",))
    sample = next(iter(open_dataset(str(root))))
    array = sample.images["s2.t0"].array
    assert sample.images["s2.t0"].nodata == 0 and array.min() > 0
    norm = Normalization(["s2.B04"], [800.0], [100.0], "t")
    array[0, 0, 0] = 0  # the decoded array is writable: simulate a nodata pixel
    out = ImageStack(norm)(sample)["image"]
    assert out[0, 0, 0] == 0 and out[0, 0, 1] != 0


def train_stream(root: Path, *, workers: int, rank=0, world=1, start=0, end=6, split="train"):
    return TrainStream(
        dataset_urls(str(root)),
        ImageStack(Normalization(ALL, [0.0] * 8, [1.0] * 8, "t")),
        identity_views,
        batch_size=4,
        split=split,
        seed=7,
        start=start,
        end=end,
        workers=workers,
        shuffle_buffer=5,
        rank=rank,
        world=world,
    )


def train_batches(root: Path, *, workers: int, **kwargs) -> list[dict]:
    stream = train_stream(root, workers=workers, **kwargs)
    return list(DataLoader(stream, batch_size=None, num_workers=workers))


def test_training_batches_hold_only_the_train_split(tiny_dataset: Path) -> None:
    batches = train_batches(tiny_dataset, workers=2)
    assert len(batches) == 6
    assert [int(b["index"]) for b in batches] == list(range(6))
    for batch in batches:
        assert batch["image"].shape == (4, 8, 32, 32)
        assert batch["split"] == ["train"] * 4


def test_two_workers_by_two_ranks_see_disjoint_shards(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n=32, per_shard=4, splits=("train",))

    def shard(key: str) -> str:
        return key.split("x")[0]

    seen_eval: dict[tuple[int, int], set[str]] = {}
    seen_train: dict[tuple[int, int], set[str]] = {}
    for rank in (0, 1):
        stream = SampleStream(
            dataset_urls(str(root)),
            lambda s: {"key": s.key, "worker": torch.utils.data.get_worker_info().id},
            rank=rank,
            world=2,
        )
        for item in DataLoader(stream, batch_size=None, num_workers=2):
            seen_eval.setdefault((rank, item["worker"]), set()).add(shard(item["key"]))
        for batch in train_batches(root, workers=2, rank=rank, world=2, end=8):
            seen_train.setdefault((rank, int(batch["worker"])), set()).update(
                shard(k) for k in batch["key"]
            )
    for seen in (seen_eval, seen_train):
        assert len(seen) == 4
        streams = list(seen.values())
        for i in range(4):
            for j in range(i + 1, 4):
                assert not streams[i] & streams[j]
    assert set().union(*seen_eval.values()) == {f"s{i}" for i in range(8)}


def test_a_resumed_stream_continues_exactly(tiny_dataset: Path) -> None:
    whole = train_batches(tiny_dataset, workers=2, start=0, end=7)
    resumed = train_batches(tiny_dataset, workers=2, start=3, end=7)
    assert [b["key"] for b in whole[3:]] == [b["key"] for b in resumed]
    for a, b in zip(whole[3:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"])


def test_no_sample_of_the_split_is_a_clear_error(tiny_dataset: Path) -> None:
    from geoprep import UserError

    stream = train_stream(tiny_dataset, workers=1, split="nosuch")
    with pytest.raises(UserError, match="no sample of split 'nosuch'"):
        next(iter(stream))


@pytest.mark.parametrize("url", ["pipe:touch /tmp/geossl-pwned", "-", "reference::x.tar"])
def test_command_and_unknown_urls_are_refused(url: str) -> None:
    with pytest.raises(UserError, match="not read"):
        dataset_urls([url])


@pytest.mark.parametrize(
    ("member", "size", "why"),
    [("../k0.json", 16, r"\.\."), ("k0.big.npy", 4096, "cap")],
)
def test_hostile_members_stop_the_stream(tmp_path: Path, member: str, size: int, why: str) -> None:
    import io
    import tarfile

    shard = tmp_path / "hostile.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo(member)
        info.size = size
        tar.addfile(info, io.BytesIO(b"\0" * size))
    stream = SampleStream(
        [str(shard)], lambda s: {"x": torch.zeros(1)}, splits=None, max_member_bytes=1024
    )
    with pytest.raises(UnsafeShardError, match=why):
        list(stream)


class _Marker:
    """Unpickling this creates a file: the proof that a reader ran code from a shard."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_pickle_member_is_never_unpickled(tmp_path: Path) -> None:
    import io
    import pickle
    import tarfile

    marker = tmp_path / "ran"
    shard = tmp_path / "hostile.tar"
    members = {
        "k0.json": json.dumps({"split": "train"}).encode(),
        "k0.state.pickle": pickle.dumps(_Marker(marker)),
    }
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = SampleStream([str(shard)], lambda s: {"x": torch.zeros(1)}, splits=None)
    assert list(stream) == []  # the sample is refused (counted as damaged), not decoded
    assert not marker.exists()

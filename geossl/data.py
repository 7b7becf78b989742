"""From geoprep shards to tensors: capped tar streaming, split filtering, shard assignment, batches.

Two streams share one reader:

- `TrainStream`: resampled shards (drawn with replacement, forever) with a fixed number of
  batches per rank, so no DDP rank starves or waits. Batches and the method's views are built in
  the DataLoader workers. Batch `b` of a rank always comes from stream `b mod workers` of that
  rank and its views are drawn from a generator seeded by (seed, rank, b): a run resumed at step
  `s` replays each stream's raw records up to its position (reading, not decoding them) and
  continues exactly where the interrupted run was, as long as the worker count is unchanged
  (and no sample was skipped as damaged: a skipped record shifts the replay by one).
- `SampleStream`: every sample once (evaluation, statistics), shards split disjointly over
  ranks and workers.

Shards are untrusted: members are capped in size, and only fsspec URLs are opened (never
`pipe:` commands). Samples are decoded with geoprep's `Sample`; other splits are skipped by the
`split` of their JSON before any image is decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from webdataset.tariterators import group_by_keys

from geoprep import Sample, SampleError, UserError, shard_urls, tar_members

log = logging.getLogger(__name__)

Fields = Callable[[Sample], dict[str, Any]]
Views = Callable[[dict[str, torch.Tensor], int, torch.Generator], dict[str, torch.Tensor]]


# ---------------------------------------------------------------- shards


def dataset_urls(source: str | Sequence[str]) -> list[str]:
    """The tar URLs of a dataset (see geoprep.shard_urls); command URLs are refused."""
    urls = shard_urls(source if isinstance(source, str) else list(source))  # refuses pipe: URLs
    if not urls:
        raise UserError(f"{source}: no shards found")
    return urls


def dataset_digest(source: str | Sequence[str]) -> str:
    """A short hash naming the dataset: the build's recipe digest and its shard list."""
    urls = dataset_urls(source)
    recipe = None
    if isinstance(source, str) and not source.endswith((".tar", ".json")) and "{" not in source:
        try:
            with fsspec.open(source.rstrip("/") + "/manifest.json") as handle:
                recipe = json.load(handle).get("recipe_digest")
        except (OSError, ValueError):
            recipe = None
    doc = {"recipe_digest": recipe, "shards": [u.rsplit("/", 1)[-1] for u in urls]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def raw_samples(url: str, max_bytes: int) -> Iterator[dict[str, Any]]:
    """Undecoded samples of one tar (members grouped by key, webdataset's convention)."""
    yield from group_by_keys(tar_members(url, max_bytes))


def split_of(raw: dict[str, Any]) -> str | None:
    try:
        return json.loads(raw["json"]).get("split")
    except (KeyError, ValueError, AttributeError):
        return None


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    if info is None:
        return 0, 1
    torch.set_num_threads(1)  # workers build views; many threads each would oversubscribe
    return info.id, info.num_workers


def stream_shards(urls: list[str], stream: int, streams: int) -> list[str]:
    """The shards of one (rank, worker) stream: disjoint when there are enough shards."""
    return urls[stream::streams] if len(urls) >= streams else list(urls)


# ---------------------------------------------------------------- streams


class SampleStream(IterableDataset):
    """Every sample of the wanted splits once; shards split over ranks × workers."""

    def __init__(
        self,
        urls: list[str],
        fields: Fields,
        *,
        splits: set[str] | None = None,
        rank: int | None = None,
        world: int | None = None,
        max_member_bytes: int = 512 * 2**20,
        limit: int | None = None,
    ) -> None:
        self.urls, self.fields, self.splits = urls, fields, splits
        found_rank, found_world = rank_and_world()
        self.rank = found_rank if rank is None else rank
        self.world = found_world if world is None else world
        self.max_member_bytes, self.limit = max_member_bytes, limit

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        streams = self.world * workers
        mine = self.urls[self.rank * workers + worker :: streams]
        produced = 0
        for url in mine:
            for raw in raw_samples(url, self.max_member_bytes):
                if self.splits is not None and split_of(raw) not in self.splits:
                    continue
                fields = _decode(raw, self.fields)
                if fields is None:
                    continue
                yield fields
                produced += 1
                if self.limit is not None and produced >= self.limit:
                    return


class TrainStream(IterableDataset):
    """Batches of one rank, `end - start` of them, views built here (in the workers)."""

    def __init__(
        self,
        urls: list[str],
        fields: Fields,
        views: Views,
        *,
        batch_size: int,
        split: str,
        seed: int,
        start: int,
        end: int,
        workers: int,
        shuffle_buffer: int = 1000,
        max_member_bytes: int = 512 * 2**20,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.urls, self.fields, self.views = urls, fields, views
        self.batch_size, self.split, self.seed = batch_size, split, seed
        self.start, self.end, self.workers = start, end, max(workers, 1)
        self.shuffle_buffer, self.max_member_bytes = shuffle_buffer, max_member_bytes
        found_rank, found_world = rank_and_world()
        self.rank = found_rank if rank is None else rank
        self.world = found_world if world is None else world

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers = _worker()
        if workers != self.workers:
            raise RuntimeError(f"TrainStream built for {self.workers} workers runs in {workers}")
        # the DataLoader takes batches round-robin from its workers, starting at worker 0
        residue = (self.start + worker) % workers
        done = max(0, -(-(self.start - residue) // workers))  # batches of this residue before
        records = self._records(residue)
        for _ in range(done * self.batch_size):
            next(records)
        for index in range(self.start + worker, self.end, workers):
            # one generator per batch: fields that draw (e.g. GASSL's pair of images) and views
            generator = torch.Generator().manual_seed(_mix(self.seed, self.rank, index))
            items = []
            while len(items) < self.batch_size:
                fields = _decode(next(records), self.fields, generator)
                if fields is not None:
                    items.append(fields)
            batch = default_collate(items)
            yield self.views(batch, index, generator)

    def _records(self, residue: int) -> Iterator[dict[str, Any]]:
        """Raw records of the stream for batches ≡ residue (mod workers): resampled, shuffled."""
        stream = self.rank * self.workers + residue
        shards = stream_shards(self.urls, stream, self.world * self.workers)
        rng = random.Random(_mix(self.seed, self.rank, residue, self.workers))
        buffer: list[dict[str, Any]] = []
        empty: set[str] = set()  # shards drawn that hold no sample of the split
        while True:
            url = rng.choice(shards)
            found = False
            for raw in raw_samples(url, self.max_member_bytes):
                if split_of(raw) != self.split:
                    continue
                found = True
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(raw)
                    continue
                if buffer:
                    slot = rng.randrange(len(buffer))
                    buffer[slot], raw = raw, buffer[slot]
                yield raw
            if found:
                continue
            empty.add(url)
            if len(empty) == len(shards):
                if len(shards) == len(self.urls):
                    raise UserError(
                        f"no sample of split {self.split!r} in the {len(shards)} shard(s) of "
                        f"{shards[0].rsplit('/', 1)[0]}: check data.split"
                    )
                shards, empty = list(self.urls), set()  # this stream's share has none: use all


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across processes and Python runs)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


_skipped = {"count": 0}


def _decode(
    raw: dict[str, Any], fields: Fields, generator: torch.Generator | None = None
) -> dict[str, Any] | None:
    """A raw record → the method's fields; damaged samples are skipped and counted.

    Fields with `draws = True` take the batch's generator as a second argument."""
    try:
        sample = Sample.from_wds(raw)
        if generator is not None and getattr(fields, "draws", False):
            return fields(sample, generator)
        return fields(sample)
    except (SampleError, ValueError, KeyError, OSError) as error:
        _skipped["count"] += 1
        if _skipped["count"] <= 5 or _skipped["count"] % 1000 == 0:
            log.warning(
                "skipped sample %s (%d so far): %s", raw.get("__key__"), _skipped["count"], error
            )
        return None


# ---------------------------------------------------------------- images → tensors


class Normalization:
    """Per-band (x - mean) / std by band name; invalid pixels (nodata, NaN) become 0."""

    def __init__(self, bands: list[str], mean: list[float], std: list[float], origin: str) -> None:
        if not (len(bands) == len(mean) == len(std)):
            raise ValueError("bands, mean and std differ in length")
        self.bands, self.mean, self.std, self.origin = list(bands), list(mean), list(std), origin

    def to_json(self) -> dict[str, Any]:
        return {"bands": self.bands, "mean": self.mean, "std": self.std, "origin": self.origin}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Normalization:
        return cls(doc["bands"], doc["mean"], doc["std"], doc.get("origin", "?"))

    def subset(self, bands: list[str]) -> Normalization:
        index = {b: i for i, b in enumerate(self.bands)}
        missing = [b for b in bands if b not in index]
        if missing:
            raise UserError(f"no normalisation statistics for bands {missing}")
        pick = [index[b] for b in bands]
        return Normalization(
            bands, [self.mean[i] for i in pick], [self.std[i] for i in pick], self.origin
        )


def band_layers(sample: Sample, slot: str) -> dict[str, tuple[np.ndarray, Any]]:
    """{"sensor.band": (2-D array, nodata)} of one slot (native layout: of every group)."""
    layers = {}
    for suffix, info in sample.infos.items():
        if info.slot != slot:
            continue
        image = sample.images[suffix]
        for i, band in enumerate(info.bands):
            layers[f"{info.sensor}.{band}"] = (image.array[i], image.nodata)
    return layers


def valid_mask(array: np.ndarray, nodata: Any) -> np.ndarray:
    valid = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    if nodata is not None and np.isfinite(float(nodata)):
        valid &= array != nodata
    return valid


class ImageStack:
    """Fields of a common-grid sample: "image" (C, H, W) float32 normalised, in band order.

    Bands a sample lacks are zero (the normalised mean), as CSF's any-subset inference does.
    """

    def __init__(self, normalization: Normalization, slot: str = "t0") -> None:
        self.norm, self.slot = normalization, slot
        self.mean = np.asarray(normalization.mean, np.float32)
        self.std = np.asarray(normalization.std, np.float32)

    def __call__(self, sample: Sample) -> dict[str, Any]:
        layers = band_layers(sample, self.slot)
        if not layers:
            raise SampleError(f"sample {sample.key} has no images in slot {self.slot!r}")
        shape = next(iter(layers.values()))[0].shape
        image = np.zeros((len(self.norm.bands), *shape), np.float32)
        for i, name in enumerate(self.norm.bands):
            if name not in layers:
                continue
            array, nodata = layers[name]
            if array.shape != shape:
                raise SampleError(f"sample {sample.key}: {name} is {array.shape}, not {shape}")
            scaled = (array.astype(np.float32) - self.mean[i]) / self.std[i]
            image[i] = np.where(valid_mask(array, nodata), scaled, 0.0)
        out: dict[str, Any] = {"image": torch.from_numpy(image)}
        for key in ("label", "split"):
            value = sample.meta.get(key)
            out[key] = "" if value is None else str(value)
        out["key"] = sample.key
        return out


def sample_bands(urls: list[str], split: str | None, slot: str, max_bytes: int) -> list[str]:
    """The "sensor.band" names of the first sample (of `split`) in stream order."""
    stream = SampleStream(
        urls,
        lambda s: {"bands": list(band_layers(s, slot))},
        splits=None if split is None else {split},
        rank=0,
        world=1,
        max_member_bytes=max_bytes,
        limit=1,
    )
    for fields in stream:
        if fields["bands"]:
            return fields["bands"]
    raise UserError(f"{urls[0]}: no sample of split {split!r} with images in slot {slot!r}")


def choose_bands(
    available: list[str], sensors: list[str] | None, bands: list[str] | None
) -> list[str]:
    """The encoder's bands: an explicit list, else the available ones of the chosen sensors."""
    if bands is not None:
        return list(bands)
    chosen = [b for b in available if sensors is None or b.split(".", 1)[0] in sensors]
    if not chosen:
        raise UserError(f"data.sensors={sensors}: none of the dataset's bands {available}")
    return chosen

"""Frozen-feature evaluation: k-NN (leave-one-out) and a linear probe, beside random init.

The encoder of a run and a randomly initialised encoder of the same architecture (same
normalisation, same input scaling) embed every labelled sample of a geoprep dataset once; then
- k-NN (k = 10, CSF's protocol): each sample's k nearest others (Euclidean, after optional PCA
  fitted on all points) vote; ties go to the smallest label (scipy.stats.mode's rule).
  `knn_top1` is the accuracy of the vote, `knn_same_class` the fraction of same-class neighbours;
- linear probe: standardised features, multinomial logistic regression fitted on the `train`
  split, accuracy on `test` (or `val` when the dataset has no test split);
- for SoundingEarth runs also cross-modal retrieval on the held-out split (`retrieval`):
  image → audio and audio → image recall@1/5/10 and median rank, with chance beside them.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from geoprep import UserError
from geossl.data import SampleStream, dataset_urls
from geossl.methods import Method, build_method
from geossl.train import load_run

log = logging.getLogger(__name__)


@dataclass
class Row:
    encoder: str
    metric: str
    value: float
    n: int


@dataclass
class Embedded:
    """Features per encoder, with the samples' labels and splits."""

    features: dict[str, np.ndarray]
    labels: np.ndarray  # integer class ids
    classes: list[str]
    splits: np.ndarray
    missing_bands: list[str]


def random_twin(method: Method, seed: int) -> Method:
    """The same method, freshly initialised from `seed` (same normalisation and scaling)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        # a method may keep statistics beyond its encoder's bands (SoundingEarth's fallback)
        return build_method(
            method.config, getattr(method, "all_normalization", method.normalization)
        )
    finally:
        torch.random.set_rng_state(state)


def embed(
    encoders: dict[str, Method],
    source: str,
    bands: list[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    table: dict[str, str] | None = None,
    slot: str | None = None,
) -> Embedded:
    """Features of every labelled sample of `source` under each encoder; `table` (see
    `read_labels`) replaces the JSON's labels, looked up by key or recording identifier."""
    first = next(iter(encoders.values()))
    known = first.bands
    if bands:  # a sensor name stands for all of its bands
        bands = [k for b in bands for k in known if k == b or k.startswith(f"{b}.")] + [
            b for b in bands if not any(k == b or k.startswith(f"{b}.") for k in known)
        ]
        unknown = [b for b in bands if b not in known]
        if unknown:
            raise UserError(f"--bands {unknown}: not bands of this encoder; it has {known}")
    present = [b in bands for b in known] if bands else None
    fields = first.image_fields(slot)  # the method's own image decoding (e.g. sensor fallback)
    limit = first.config.data.max_member_bytes
    stream = SampleStream(dataset_urls(source), fields, max_member_bytes=limit)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    feats: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    labels: list[str] = []
    splits: list[str] = []
    seen_bands: set[str] | None = None
    for model in encoders.values():
        model.eval()
    with torch.no_grad():
        for batch in loader:
            if table is not None:
                ids = zip(batch["key"], batch.get("identifier", batch["key"]), strict=True)
                batch["label"] = [table.get(key) or table.get(ident) or "" for key, ident in ids]
            keep = [i for i, label in enumerate(batch["label"]) if label]
            if not keep:
                continue
            image = batch["image"][keep]
            if seen_bands is None:
                nonzero = image.abs().flatten(2).amax(dim=(0, 2)) > 0
                seen_bands = {b for b, ok in zip(known, nonzero.tolist(), strict=True) if ok}
            for name, model in encoders.items():
                x = model.prepare_input(image, present)
                feats[name].append(model.features(x).float().cpu().numpy())
            labels += [batch["label"][i] for i in keep]
            splits += [batch["split"][i] for i in keep]
    if not labels:
        where = "the label table" if table is not None else "the sample JSON's 'label'"
        raise UserError(f"{source}: no labelled samples ({where})")
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    missing = [b for b in known if seen_bands is not None and b not in seen_bands]
    return Embedded(
        {name: np.concatenate(parts) for name, parts in feats.items()},
        np.array([index[c] for c in labels]),
        classes,
        np.array(splits),
        missing,
    )


def reduce(features: np.ndarray, pca: int | None, seed: int = 0) -> np.ndarray:
    if not pca:
        return features
    components = min(pca, *features.shape)
    return PCA(n_components=components, random_state=seed).fit_transform(features)


def knn_loo(features: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(k-NN accuracy, same-class neighbour fraction), each sample left out of its own vote."""
    n = len(labels)
    k = min(k, n - 1)
    if k < 1:
        raise UserError("k-NN needs at least two labelled samples")
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    correct, same = 0, 0.0
    n_classes = int(labels.max()) + 1
    for i in range(n):
        others = [j for j in neighbours[i] if j != i][:k]
        votes = np.bincount(labels[others], minlength=n_classes)
        correct += int(np.argmax(votes) == labels[i])  # argmax: ties → smallest label
        same += float(np.mean(labels[others] == labels[i]))
    return correct / n, same / n


def linear_probe(
    features: np.ndarray, labels: np.ndarray, splits: np.ndarray, seed: int = 0
) -> tuple[float, int] | None:
    """Accuracy on test (else val) of a logistic regression fitted on train; None if no split."""
    train = splits == "train"
    held = splits == "test" if np.any(splits == "test") else splits == "val"
    if not np.any(train) or not np.any(held) or len(np.unique(labels[train])) < 2:
        return None
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    )
    probe.fit(features[train], labels[train])
    return float(probe.score(features[held], labels[held])), int(held.sum())


def score(embedded: Embedded, k: int = 10, pca: int | None = None, seed: int = 0) -> list[Row]:
    rows = []
    n = len(embedded.labels)
    for name, features in embedded.features.items():
        reduced = reduce(features, pca, seed)
        accuracy, same = knn_loo(reduced, embedded.labels, k)
        rows.append(Row(name, "knn_top1", accuracy, n))
        rows.append(Row(name, "knn_same_class", same, n))
        probe = linear_probe(reduced, embedded.labels, embedded.splits, seed)
        if probe is not None:
            rows.append(Row(name, "linear_top1", probe[0], probe[1]))
    return rows


def evaluate(
    run: Path,
    source: str,
    bands: list[str] | None = None,
    k: int = 10,
    pca: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    labels: dict[str, str] | None = None,
    slot: str | None = None,
) -> tuple[list[Row], Embedded | None]:
    config, trained, _ = load_run(run)
    encoders = {"trained": trained, "random": random_twin(trained, config.seed)}
    rows: list[Row] = []
    if hasattr(trained, "embed_audio"):
        rows += retrieval(encoders, source, batch_size=batch_size, workers=workers)
    try:
        embedded = embed(encoders, source, bands, batch_size, workers, labels, slot)
    except UserError as error:
        if not rows or "no labelled samples" not in str(error):
            raise
        log.warning("%s: no land-cover k-NN or probe, retrieval only", error)
        return rows, None
    if embedded.missing_bands:
        log.warning("the dataset has no values for bands %s: they are zero", embedded.missing_bands)
    return rows + score(embedded, k, pca, config.seed), embedded


def read_labels(path: str | Path, column: str = "label") -> dict[str, str]:
    """{sample key or recording identifier: label} from a CSV with a `key` or `identifier`
    column and `column` (e.g. the demo world's aporee/recordings.csv and its land_cover)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            ids = [name for name in ("key", "identifier") if name in fields]
            if not ids or column not in fields:
                raise UserError(
                    f"{path}: expected a 'key' or 'identifier' column and {column!r}; "
                    f"found {', '.join(fields) or 'no header'}"
                )
            return {row[name]: row[column] for row in reader for name in ids if row[name]}
    except OSError as error:
        raise UserError(f"{path}: cannot read the label table ({error.strerror})") from None


def held_out_split(source: str, max_bytes: int) -> str:
    """`test` if the dataset has it, else `val`."""
    probe = SampleStream(
        dataset_urls(source),
        lambda s: {"split": str(s.meta.get("split"))},
        splits={"test"},
        rank=0,
        world=1,
        max_member_bytes=max_bytes,
        limit=1,
    )
    return "test" if any(True for _ in probe) else "val"


def retrieval(
    encoders: dict[str, Method],
    source: str,
    split: str | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
    batch_size: int = 64,
    workers: int = 0,
) -> list[Row]:
    """Cross-modal retrieval on the held-out split (SoundingEarth): for every image the rank of
    its own recording among all recordings by embedding distance (i2a), and the converse (a2i);
    recall@k and median rank per encoder, and chance (k / n, median (n + 1) / 2).

    Each recording is its centre spectrogram window; distances are plain Euclidean (the official
    code divides each column by its mean first)."""
    from geossl.methods.soundingearth import retrieval_ranks

    first = next(iter(encoders.values()))
    limit = first.config.data.max_member_bytes
    split = split or held_out_split(source, limit)
    stream = SampleStream(
        dataset_urls(source), first.fields(), splits={split}, max_member_bytes=limit
    )
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    images: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    audios: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    for model in encoders.values():
        model.eval()
    with torch.no_grad():
        for batch in loader:
            for name, model in encoders.items():
                images[name].append(model.embed_image(batch["image"]).float().cpu())
                audios[name].append(model.embed_audio(batch["audio"]).float().cpu())
    n = sum(len(part) for part in images[next(iter(encoders))])
    if n < 2:
        raise UserError(f"{source}: retrieval needs at least two {split!r} samples, found {n}")
    rows = []
    for name in encoders:
        d = torch.cdist(torch.cat(images[name]), torch.cat(audios[name]))
        for direction, distances in (("i2a", d), ("a2i", d.T)):
            ranks = retrieval_ranks(distances)
            for k in ks:
                rows.append(
                    Row(name, f"{direction}_recall@{k}", float((ranks <= k).float().mean()), n)
                )
            rows.append(Row(name, f"{direction}_median_rank", float(ranks.float().median()), n))
    for k in ks:
        rows.append(Row("chance", f"chance_recall@{k}", min(k, n) / n, n))
    rows.append(Row("chance", "chance_median_rank", (n + 1) / 2, n))
    return rows


def table(rows: list[Row], embedded: Embedded | None = None) -> str:
    """Metrics as rows, encoders as columns."""
    encoders = list(dict.fromkeys(r.encoder for r in rows))
    metrics = list(dict.fromkeys(r.metric for r in rows))
    value = {(r.encoder, r.metric): r for r in rows}
    lines = [f"{'metric':<20}" + "".join(f"{e:>10}" for e in encoders) + f"{'n':>8}"]
    for metric in metrics:
        cells = [value.get((e, metric)) for e in encoders]
        n = next((c.n for c in cells if c is not None), 0)
        text = "".join(f"{c.value:>10.3f}" if c else f"{'-':>10}" for c in cells)
        lines.append(f"{metric:<20}{text}{n:>8}")
    if embedded is not None:
        counts = np.bincount(embedded.labels)
        lines.append(
            f"{len(embedded.classes)} classes; majority class {counts.max() / counts.sum():.3f}"
        )
    return "\n".join(lines)


def rows_json(rows: list[Row], **extra: Any) -> list[dict[str, Any]]:
    return [{**asdict(r), **extra} for r in rows]

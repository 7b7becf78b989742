"""Reading geoprep shards: a WebDataset decoder that keeps georeferencing, and typed samples.

Stock WebDataset with the decoder (arrays keep their CRS, transform, nodata and band names):

    wds.WebDataset(urls, shardshuffle=False).decode(geoprep.reader.decoder)

or the convenience pipeline yielding `Sample` objects with per-method accessors:

    for sample in geoprep.reader.open_dataset("out/"):
        stack, bands = sample.common_stack("t0")
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from geoprep.core.errors import UserError
from geoprep.shards.listing import shard_urls
from geoprep.shards.schema import (
    AUDIO_MEMBER,
    JSON_MEMBER,
    MEL_MEMBER,
    nodata_from_json,
    shared_grid,
)

_YEAR_SEASON = re.compile(r"^y(\d+)s(\d+)$")


class SampleError(ValueError):
    """A sample does not match its own JSON (a listed member is missing or has the wrong shape)."""


@dataclass(frozen=True, eq=False)
class GeoArray:
    """An image (bands, h, w) with its georeferencing."""

    array: np.ndarray
    crs: str | None
    transform: Affine
    nodata: float | int | None
    bands: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the CRS (north-up grids)."""
        height, width = self.array.shape[-2:]
        t = self.transform
        left, top = t.c, t.f
        right, bottom = t.c + t.a * width + t.b * height, t.f + t.d * width + t.e * height
        return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


# ---------------------------------------------------------------- member decoding


def decode_tif(data: bytes) -> GeoArray:
    """GeoTIFF bytes → GeoArray, read from memory (no temporary file)."""
    with MemoryFile(data) as memory, memory.open() as src:
        bands = tuple(d or f"band{i + 1}" for i, d in enumerate(src.descriptions))
        crs = src.crs.to_string() if src.crs else None
        return GeoArray(src.read(), crs, src.transform, src.nodata, bands)


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes → (float32 waveform, sample rate); mono is 1-D, else (frames, channels)."""
    waveform, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return waveform, int(sample_rate)


def decoder(key: str, data: bytes) -> Any:
    """WebDataset handler: `.tif` → GeoArray, `.npy` → ndarray, `.json` → dict, `.flac` → audio.

    Returns None for other members so WebDataset's own handlers still apply to them.
    """
    extension = key.rsplit(".", 1)[-1].lower()
    if extension in ("tif", "tiff"):
        return decode_tif(data)
    if extension == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if extension == "json":
        return json.loads(data)
    if extension == "flac":
        return decode_flac(data)
    return None


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class ImageInfo:
    """One entry of the sample JSON's "images" list, typed (`entry` keeps all of it)."""

    member: str
    sensor: str
    slot: str
    group: str | None
    bands: tuple[str, ...]
    datetime: dt.datetime | None
    entry: dict[str, Any] = field(repr=False)

    @property
    def suffix(self) -> str:
        """Member name without its format extension: `s2.t0`, `s2.t0.10m`."""
        return self.member.rsplit(".", 1)[0]

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ImageInfo:
        when = entry.get("datetime")
        return cls(
            member=entry["member"],
            sensor=entry["sensor"],
            slot=entry["slot"],
            group=entry.get("group"),
            bands=tuple(entry["bands"]),
            datetime=_utc(when) if when else None,
            entry=entry,
        )


def _utc(text: str) -> dt.datetime:
    """ISO date or datetime; naive values are UTC (as STAC datetimes are), so all compare."""
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, eq=False)
class Sample:
    """A decoded sample: `images` maps member suffix ("s2.t0", "s2.t0.10m") → GeoArray."""

    key: str
    url: str | None
    meta: dict[str, Any] = field(repr=False)
    images: dict[str, GeoArray] = field(repr=False)
    infos: dict[str, ImageInfo] = field(repr=False)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_wds(cls, raw: dict[str, Any]) -> Sample:
        """Build from a WebDataset sample dict, decoded with `decoder` or still raw bytes."""
        key, url = raw.get("__key__", "?"), raw.get("__url__")
        where = f"shard {url}, sample {key}"
        if JSON_MEMBER not in raw:
            raise SampleError(f"{where}: no {key}.{JSON_MEMBER} member")
        document = raw[JSON_MEMBER]
        meta = document if isinstance(document, dict) else json.loads(document)
        images, infos = {}, {}
        for entry in meta.get("images", []):
            try:
                info = ImageInfo.from_json(entry)
            except (KeyError, TypeError, ValueError) as error:
                raise SampleError(f"{where}: bad image entry {entry!r}: {error}") from error
            member = info.member.lower()  # WebDataset lower-cases member suffixes
            if member not in raw:
                raise SampleError(f"{where}: member {info.member!r} listed in the JSON is missing")
            value = raw[member]
            if isinstance(value, bytes):
                value = decoder(member, value)
            image = value if isinstance(value, GeoArray) else _npy_image(meta, info, value)
            if list(image.shape) != list(entry.get("shape", image.shape)):
                raise SampleError(f"{where}: {info.member} is {image.shape}, not {entry['shape']}")
            images[info.suffix], infos[info.suffix] = image, info
        listed = {info.member.lower() for info in infos.values()} | {JSON_MEMBER}
        extras = _extras(raw, listed)
        return cls(key, url, meta, images, infos, extras)

    # -- accessors, one per pretraining method ------------------------------------------

    def _select(self, sensor: str, slot: str | None = None, group: str | None = None) -> list[str]:
        return [
            suffix
            for suffix, info in self.infos.items()
            if info.sensor == sensor
            and (slot is None or info.slot == slot)
            and (group is None or info.group == group)
        ]

    def _need_group(self, group: str | None) -> None:
        if group is None and "grids" in self.meta:
            raise UserError(
                f"sample {self.key} has the native layout: pass group= one of "
                f"{sorted(self.meta['grids'])}"
            )

    def image(self, sensor: str, slot: str = "t0", group: str | None = None) -> GeoArray:
        """One image by sensor, slot and (native layout) resolution group."""
        self._need_group(group)
        found = self._select(sensor, slot, group)
        if not found:
            raise UserError(
                f"sample {self.key} has no image sensor={sensor!r} slot={slot!r} group={group!r}; "
                f"images: {sorted(self.images)}"
            )
        return self.images[found[0]]

    def common_stack(self, slot: str = "t0", dtype: Any = None) -> tuple[np.ndarray, list[str]]:
        """CSF: every sensor's bands of `slot` on the one grid, (C, H, W), in the JSON's order.

        Band names are "sensor.band" (e.g. "s2.B04", "s1.vv"). Mixed dtypes are promoted with
        numpy's rules unless `dtype` is given.
        """
        if "grid" not in self.meta:
            raise UserError(f"sample {self.key}: common_stack needs the common grid layout")
        chosen = [s for s, info in self.infos.items() if info.slot == slot]
        if not chosen:
            slots = sorted({info.slot for info in self.infos.values()})
            raise UserError(f"sample {self.key} has no slot {slot!r}; slots: {slots}")
        stack = np.concatenate([self.images[s].array for s in chosen], axis=0)
        names = [f"{self.infos[s].sensor}.{band}" for s in chosen for band in self.infos[s].bands]
        return (stack if dtype is None else stack.astype(dtype)), names

    def time_series(
        self, sensor: str, group: str | None = None
    ) -> list[tuple[dt.datetime, GeoArray]]:
        """GASSL / SeCo: every image of a sensor as (acquisition datetime, image), oldest first."""
        self._need_group(group)
        series = []
        for order, suffix in enumerate(self._select(sensor, group=group)):
            when = self.infos[suffix].datetime
            if when is None:
                raise SampleError(f"sample {self.key}: image {suffix} has no datetime")
            series.append((when, order, self.images[suffix]))
        return [(when, image) for when, _, image in sorted(series, key=lambda s: s[:2])]

    def year_groups(self, sensor: str, group: str | None = None) -> dict[int, list[GeoArray]]:
        """CACo: {year group: [season images in season order]} from the `yXsY` slots."""
        self._need_group(group)
        found: dict[int, dict[int, GeoArray]] = {}
        for suffix in self._select(sensor, group=group):
            match = _YEAR_SEASON.match(self.infos[suffix].slot)
            if match:
                found.setdefault(int(match[1]), {})[int(match[2])] = self.images[suffix]
        if not found:
            raise UserError(
                f"sample {self.key} has no multi-year slots (yXsY) for sensor {sensor!r}; "
                "build with time mode 'multi-year'"
            )
        return {year: [found[year][s] for s in sorted(found[year])] for year in sorted(found)}

    def groups(self, sensor: str, slot: str = "t0") -> dict[str, GeoArray]:
        """Native layout: {resolution group ("10m", "20m", "60m"): image} of one sensor and slot."""
        if "grids" not in self.meta:
            raise UserError(f"sample {self.key} has the common layout: use image() instead")
        return {self.infos[s].group: self.images[s] for s in self._select(sensor, slot)}

    def audio(self) -> tuple[np.ndarray, int]:
        """SoundingEarth: (float32 waveform, sample rate) of `{key}.audio.flac`."""
        return self._extra(AUDIO_MEMBER)

    def spectrogram(self) -> np.ndarray:
        """SoundingEarth: the log-mel spectrogram of `{key}.mel.npy`."""
        return self._extra(MEL_MEMBER)

    def _extra(self, suffix: str) -> Any:
        if suffix not in self.extras:
            raise SampleError(f"shard {self.url}, sample {self.key}: no {suffix} member")
        return self.extras[suffix]


def _npy_image(meta: dict[str, Any], info: ImageInfo, array: np.ndarray) -> GeoArray:
    """An .npy member's georeferencing lives in the JSON: the common grid or its group's grid."""
    grid = info.entry.get("grid") or shared_grid(meta, info.group)
    if not grid:
        raise SampleError(f"sample {meta.get('id')}: {info.member} has no grid in the JSON")
    transform = Affine(*grid["transform"][:6])
    nodata = nodata_from_json(info.entry.get("nodata"))
    return GeoArray(array, grid["crs"], transform, nodata, info.bands)


def _extras(raw: dict[str, Any], listed: set[str]) -> dict[str, Any]:
    extras = {}
    for suffix, value in raw.items():
        if suffix.startswith("__") or suffix in listed:
            continue
        decoded = decoder(suffix, value) if isinstance(value, bytes) else None
        extras[suffix] = value if decoded is None else decoded
    return extras


def to_sample(raw: dict[str, Any]) -> Sample:
    """Map function for WebDataset pipelines: a raw or decoded sample dict → Sample."""
    return Sample.from_wds(raw)


# ---------------------------------------------------------------- datasets


def open_dataset(
    source: str | Sequence[str],
    *,
    shardshuffle: bool | int = False,
    shuffle: int = 0,
    **kwargs: Any,
) -> Any:
    """A WebDataset pipeline yielding `Sample`s.

    `source`: an output directory, a wids index.json, a tar, a brace pattern or a list of URLs.
    `kwargs` go to `webdataset.WebDataset` (e.g. `nodesplitter=wds.split_by_node`,
    `resampled=True`); `shuffle` is the size of a sample shuffle buffer (0: plan order).
    """
    import webdataset  # imports torch (seconds): deferred so the decoder alone stays light

    dataset = webdataset.WebDataset(shard_urls(source), shardshuffle=shardshuffle, **kwargs)
    dataset = dataset.decode(decoder).map(to_sample)
    return dataset.shuffle(shuffle) if shuffle else dataset

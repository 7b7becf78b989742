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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from geoprep.core.errors import UserError
from geoprep.shards.geotiff import Unsupported, decode_geotiff
from geoprep.shards.listing import shard_urls
from geoprep.shards.schema import (
    AUDIO_MEMBER,
    JSON_MEMBER,
    MEL_MEMBER,
    SCHEMA_VERSIONS,
    entry_hrefs,
    nodata_from_json,
    shared_grid,
)
from geoprep.shards.untrusted import MAX_MEMBER_BYTES, UnsafeShardError, tar_members

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


def decode_tif(data: bytes, max_bytes: int = MAX_MEMBER_BYTES) -> GeoArray:
    """GeoTIFF bytes → GeoArray, read from memory (no temporary file).

    The GeoTIFFs geoprep writes are decoded in numpy (`geoprep.shards.geotiff`, several times
    faster than opening them with GDAL); any other GeoTIFF is read with GDAL. A header
    announcing more than `max_bytes` of pixels is refused before they are decoded."""
    try:
        found = decode_geotiff(data, max_bytes)
    except Unsupported:
        return _decode_tif_gdal(data, max_bytes)
    return GeoArray(found.array, found.crs, Affine(*found.transform), found.nodata, found.bands)


def _decode_tif_gdal(data: bytes, max_bytes: int = MAX_MEMBER_BYTES) -> GeoArray:
    with MemoryFile(data) as memory, memory.open() as src:
        itemsize = max(np.dtype(dtype).itemsize for dtype in src.dtypes)
        _within_cap("tif", src.count * src.height * src.width * itemsize, max_bytes)
        bands = tuple(d or f"band{i + 1}" for i, d in enumerate(src.descriptions))
        crs = src.crs.to_string() if src.crs else None
        return GeoArray(src.read(), crs, src.transform, src.nodata, bands)


def decode_flac(data: bytes, max_bytes: int = MAX_MEMBER_BYTES) -> tuple[np.ndarray, int]:
    """FLAC bytes → (float32 waveform, sample rate); mono is 1-D, else (frames, channels)."""
    with soundfile.SoundFile(io.BytesIO(data)) as sound:
        _within_cap("flac", sound.frames * sound.channels * 4, max_bytes)
        waveform = sound.read(dtype="float32", always_2d=False)
        return waveform, int(sound.samplerate)


def decode_npy(data: bytes) -> np.ndarray:
    """`.npy` bytes → ndarray; object arrays (pickles) are refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UnsafeShardError("npy member holds Python objects (a pickle): refused") from None
        raise


def decode_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise UnsafeShardError("json member is nested too deeply: refused") from None


def _within_cap(kind: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UnsafeShardError(
            f"{kind} member decodes to {size} bytes, over the cap of {max_bytes}"
        )


#: What `decoder` decodes, by the member's last extension; every other member is refused.
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "tif": decode_tif,
    "tiff": decode_tif,
    "npy": decode_npy,
    "json": decode_json,
    "flac": decode_flac,
    "txt": lambda data: data.decode("utf-8"),
}


def decoder(key: str, data: bytes) -> Any:
    """WebDataset handler: `.tif` → GeoArray, `.npy` → ndarray, `.json` → dict, `.flac` → audio,
    `.txt` → str; raises UnsafeShardError for every other member.

    Shards are untrusted: refusing (instead of returning None) keeps a member from reaching
    WebDataset's own handlers, which unpickle `.pyd`/`.pickle` and torch-load `.pth`. To read
    other members of shards you trust, put your own handler before this one:
    `.decode(my_handler, decoder)`.
    """
    extension = key.rsplit(".", 1)[-1].lower()
    decode = DECODERS.get(extension)
    if decode is None:
        raise UnsafeShardError(
            f"member {key!r}: geoprep's decoder refuses .{extension} members (shards are "
            f"untrusted; it decodes only {', '.join(sorted(DECODERS))})"
        )
    _within_cap(extension, len(data), MAX_MEMBER_BYTES)
    return decode(data)


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

    @property
    def hrefs(self) -> dict[str, str]:
        """{asset: absolute unsigned href} of the sources (schema 2: the image's own assets;
        schema 1: every asset of its item)."""
        return entry_hrefs(self.entry)

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
        meta = _decoded(where, JSON_MEMBER, raw[JSON_MEMBER])
        if not isinstance(meta, dict):
            raise SampleError(f"{where}: {key}.{JSON_MEMBER} is not an object")
        version = meta.get("schema_version", 1)
        if version not in SCHEMA_VERSIONS:
            raise SampleError(
                f"{where}: schema_version {version!r}; this geoprep reads {SCHEMA_VERSIONS} "
                "(a newer geoprep wrote it: upgrade)"
            )
        images, infos = {}, {}
        for entry in meta.get("images", []):
            try:
                info = ImageInfo.from_json(entry)
            except (KeyError, TypeError, ValueError) as error:
                raise SampleError(f"{where}: bad image entry {entry!r}: {error}") from error
            member = info.member.lower()  # WebDataset lower-cases member suffixes
            if member not in raw:
                raise SampleError(f"{where}: member {info.member!r} listed in the JSON is missing")
            value = _decoded(where, member, raw[member])
            image = value if isinstance(value, GeoArray) else _npy_image(meta, info, value)
            if list(image.shape) != list(entry.get("shape", image.shape)):
                raise SampleError(f"{where}: {info.member} is {image.shape}, not {entry['shape']}")
            images[info.suffix], infos[info.suffix] = image, info
        listed = {info.member.lower() for info in infos.values()} | {JSON_MEMBER}
        extras = {
            suffix: _decoded(where, suffix, value)
            for suffix, value in raw.items()
            if not suffix.startswith("__") and suffix not in listed
        }
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


def _decoded(where: str, suffix: str, value: Any) -> Any:
    """A member decoded with `decoder` (unless a pipeline decoded it already), errors located."""
    if not isinstance(value, bytes):
        return value
    try:
        return decoder(suffix, value)
    except UnsafeShardError as error:
        raise UnsafeShardError(f"{where}: {error}") from None


def to_sample(raw: dict[str, Any]) -> Sample:
    """Map function for WebDataset pipelines: a raw or decoded sample dict → Sample."""
    return Sample.from_wds(raw)


# ---------------------------------------------------------------- datasets


def open_dataset(
    source: str | Sequence[str],
    *,
    shardshuffle: int = 0,
    shuffle: int = 0,
    resampled: bool = False,
    nodesplitter: Callable | None = None,
    seed: int = 0,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Any:
    """A WebDataset pipeline yielding `Sample`s, safe for untrusted shards.

    `source`: an output directory, a wids index.json, a tar, a brace pattern or a list of URLs
    (file paths or fsspec URLs; `pipe:` commands are refused). `shardshuffle`: a shard shuffle
    buffer (0: plan order); `resampled`: draw shards with replacement, endlessly; `nodesplitter`:
    e.g. `wds.split_by_node` for DDP (default: every shard on every node); `shuffle`: a sample
    shuffle buffer (0: plan order). Members are read by geoprep (`tar_members`): links, paths
    outside the sample, members over `max_member_bytes` and damaged tars raise UnsafeShardError
    before anything is decoded, and only geoprep's member types are decoded (`decoder`).
    """
    import webdataset as wds  # imports torch (seconds): deferred so the decoder alone stays light

    urls = shard_urls(source)
    stages: list[Any] = [
        wds.ResampledShards(urls, seed=seed) if resampled else wds.SimpleShardList(urls)
    ]
    if shardshuffle and not resampled:
        stages.append(wds.shuffle(shardshuffle, seed=seed))
    if nodesplitter is not None:
        stages.append(nodesplitter)
    stages += [
        wds.split_by_worker,
        _safe_samples(max_member_bytes),
        wds.map(to_sample),  # decodes with `decoder` alone: no .gz expansion, no pickle handlers
    ]
    if shuffle:
        stages.append(wds.shuffle(shuffle, seed=seed))
    return wds.DataPipeline(*stages)


def _safe_samples(max_member_bytes: int) -> Callable[[Any], Any]:
    """Pipeline stage: shard dicts {"url"} → raw samples, members read by `tar_members`."""
    from webdataset.tariterators import group_by_keys

    def samples(shards: Any) -> Any:
        for shard in shards:
            yield from group_by_keys(tar_members(shard["url"], max_member_bytes))

    return samples

"""fMoW locations with their temporal image sequences, read from the dataset's JSONs (GASSL)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely.wkt
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field, field_validator
from shapely.errors import ShapelyError

from geoprep.core.errors import UserError
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult

log = logging.getLogger(__name__)

SOURCE = "fmow"
#: The 62 fMoW categories in their official order; a category's class index is its position.
FMOW_CATEGORIES: tuple[str, ...] = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility",
    "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison",
    "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility",
    "stadium", "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower",
    "tunnel_opening", "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip
assert len(FMOW_CATEGORIES) == 62, "fMoW has 62 categories"
_CLASS_INDEX = {name: index for index, name in enumerate(FMOW_CATEGORIES)}
#: Image file suffix assumed when the listing holds no sibling image for a JSON.
DEFAULT_IMAGE_SUFFIX = {"rgb": ".jpg", "msrgb": ".jpg", "ms": ".tif"}
_COLUMNS = (
    "id",
    "lat",
    "lon",
    "source",
    "label",
    "fmow_split",
    "fmow_location",
    "label_index",
    "images",
    "n_images",
    "first_timestamp",
    "last_timestamp",
    "country_code",
)
#: Locations whose JSONs are fetched together (remote filesystems read a batch concurrently).
_BATCH = 64


def fmow_class_index(category: str) -> int:
    """The 0-based fMoW class index of ``category`` (ValueError for an unknown name)."""
    try:
        return _CLASS_INDEX[category]
    except KeyError:
        raise ValueError(f"{category!r} is not one of the 62 fMoW categories") from None


@dataclass
class _Location:
    split: str
    category: str
    name: str  # "<category>_<n>"
    number: int
    images: dict[int, dict[str, str]] = field(default_factory=dict)  # k -> {"json", "image"}


@dataclass(frozen=True)
class _Image:
    k: int
    record: dict[str, Any]
    time: datetime | None
    box: list[float] | None
    box_point: tuple[float, float] | None
    footprint_point: tuple[float, float] | None


class FmowSampler(SamplerConfig):
    """One location per fMoW ``<category>_<n>`` folder, with its time-ordered images.

    Location coordinates: the centroid of the ``raw_location`` WKT of a bounding-box entry (the
    object itself) when any image has one, else the centroid of the image footprint
    (``raw_location`` of the image); with several images, the median over them.
    """

    kind: Literal["fmow"]
    n: int = Field(1_000_000, gt=0, le=MAX_LOCATIONS, description="cap on the number of locations")
    root: str = Field(description="dataset root: a local path or an fsspec URL (s3://...)")
    splits: tuple[Literal["train", "val"], ...] = Field(
        ("train", "val"), min_length=1, description="fMoW splits to read"
    )
    variant: Literal["rgb", "msrgb", "ms"] = Field("rgb", description="which image JSONs to use")
    categories: tuple[str, ...] | None = Field(None, description="only these categories")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options, e.g. {anon: true} for public S3"
    )

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for category in categories or ():
            fmow_class_index(category)
        return categories

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        fs, base = self._filesystem()
        dropped: Counter[str] = Counter()
        locations = self._list_locations(fs, base, dropped)
        if len(locations) > self.n:
            order = [int(i) for i in rng.permutation(len(locations))]
        else:
            order = list(range(len(locations)))
        progress.set_total(min(self.n, len(locations)))

        kept: list[tuple[int, dict[str, Any]]] = []
        examined = 0
        while examined < len(order) and len(kept) < self.n:
            # Read no more JSONs than the cap can still use (plus drops, in later rounds).
            batch = order[examined : examined + min(_BATCH, self.n - len(kept))]
            paths = [p["json"] for i in batch for p in locations[i].images.values()]
            contents = fs.cat(paths, on_error="return")
            for index in batch:
                examined += 1
                row, reason = self._location_row(fs, locations[index], contents, dropped)
                if reason is not None:
                    dropped[reason] += 1
                    continue
                kept.append((index, row))
                progress.advance()
        dropped["over_cap"] += len(order) - examined
        progress.set_total(len(kept))
        rows = [row for _, row in sorted(kept, key=lambda pair: pair[0])]
        frame = pd.DataFrame(rows, columns=list(_COLUMNS))
        frame[["lat", "lon"]] = frame[["lat", "lon"]].astype(float)
        frame[["label_index", "n_images"]] = frame[["label_index", "n_images"]].astype(int)
        return SampleResult(locations=frame, dropped=+dropped)

    def _filesystem(self) -> tuple[AbstractFileSystem, str]:
        try:
            fs, base = url_to_fs(self.root, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"fmow root {self.root!r} cannot be opened: {exc}") from exc
        if not fs.isdir(base):
            raise UserError(f"fmow root {self.root!r} is not a directory")
        return fs, base.rstrip("/")

    def _list_locations(
        self, fs: AbstractFileSystem, base: str, dropped: Counter[str]
    ) -> list[_Location]:
        wanted = set(self.categories) if self.categories is not None else None
        locations: dict[tuple[str, str], _Location] = {}
        for split in self.splits:
            if not fs.isdir(f"{base}/{split}"):
                raise UserError(
                    f"fmow root {self.root!r} has no split folder {split!r} (expected "
                    f"{split}/<category>/<category>_<n>/...); set 'splits' to the ones present"
                )
            for path in fs.glob(f"{base}/{split}/*/*/*_{self.variant}.*"):
                parsed = _parse_image_path(path, self.variant)
                if parsed is None:
                    continue
                category, name, number, k, is_json = parsed
                if wanted is not None and category not in wanted:
                    continue
                key = (split, name)
                location = locations.setdefault(key, _Location(split, category, name, number))
                location.images.setdefault(k, {})["json" if is_json else "image"] = path
        result = []
        for location in locations.values():
            location.images = {k: v for k, v in location.images.items() if "json" in v}
            if not location.images:
                continue
            if location.category not in _CLASS_INDEX:
                dropped["unknown_category"] += 1
                continue
            result.append(location)
        split_rank = {split: i for i, split in enumerate(self.splits)}
        result.sort(key=lambda loc: (split_rank[loc.split], loc.category, loc.number))
        log.info("%d fMoW locations listed under %s", len(result), self.root)
        return result

    def _location_row(
        self,
        fs: AbstractFileSystem,
        location: _Location,
        contents: Mapping[str, bytes | Exception],
        dropped: Counter[str],
    ) -> tuple[dict[str, Any], None] | tuple[None, str]:
        images = []
        for k, paths in location.images.items():
            record = _load_record(contents.get(paths["json"]))
            if record is None:
                log.warning("invalid fMoW JSON %s", paths["json"])
                dropped["invalid_json"] += 1
                continue
            images.append(_describe(k, record, location.category))
        if not images:
            return None, "no_valid_images"
        images.sort(key=_time_order)
        points = [im.box_point for im in images if im.box_point] or [
            im.footprint_point for im in images if im.footprint_point
        ]
        if not points:
            return None, "no_location"
        sequence = [_image_entry(self._url(fs, location, im.k), im.record, im.box) for im in images]
        timestamps = [e["timestamp"] for e in sequence if e["timestamp"]]
        countries = [
            str(im.record["country_code"]) for im in images if im.record.get("country_code")
        ]
        return {
            "id": f"fmow-{location.split}-{location.name}",
            "lat": statistics.median(p[0] for p in points),
            "lon": statistics.median(p[1] for p in points),
            "source": SOURCE,
            "label": location.category,
            "fmow_split": location.split,
            "fmow_location": location.name,
            "label_index": fmow_class_index(location.category),
            "images": json.dumps(sequence, separators=(",", ":")),
            "n_images": len(sequence),
            "first_timestamp": timestamps[0] if timestamps else None,
            "last_timestamp": timestamps[-1] if timestamps else None,
            "country_code": countries[0] if countries else None,
        }, None

    def _url(self, fs: AbstractFileSystem, location: _Location, k: int) -> str:
        paths = location.images[k]
        image = paths.get("image")
        if image is None:
            stem = paths["json"].rsplit(".", 1)[0]
            image = stem + DEFAULT_IMAGE_SUFFIX[self.variant]
        return image if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(image)


def _parse_image_path(path: str, variant: str) -> tuple[str, str, int, int, bool] | None:
    """(category, name, n, k, is_json) of ``.../<cat>/<cat>_<n>/<cat>_<n>_<k>_<variant>.<ext>``."""
    parts = path.rsplit("/", 3)
    if len(parts) != 4:
        return None
    _, category, name, filename = parts
    prefix, _, number = name.rpartition("_")
    stem, _, extension = filename.rpartition(".")
    if prefix != category or not number.isdigit() or not stem.startswith(name + "_"):
        return None
    k, _, file_variant = stem[len(name) + 1 :].partition("_")
    if not k.isdigit() or file_variant != variant:
        return None
    return category, name, int(number), int(k), extension.lower() == "json"


def _load_record(content: bytes | Exception | None) -> dict[str, Any] | None:
    if content is None or isinstance(content, Exception):
        return None
    try:
        record = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(k: int, record: dict[str, Any], category: str) -> _Image:
    boxes = _bounding_boxes(record.get("bounding_boxes"), category)
    box_point = next(
        (p for b in boxes if (p := _wkt_centroid(b.get("raw_location"), b.get("epsg")))), None
    )
    return _Image(
        k=k,
        record=record,
        time=_parse_time(record.get("timestamp")),
        box=next((b["box"] for b in boxes if _valid_box(b.get("box"))), None),
        box_point=box_point,
        footprint_point=_wkt_centroid(record.get("raw_location"), record.get("epsg")),
    )


def _bounding_boxes(value: Any, category: str) -> list[dict[str, Any]]:
    """Box entries as a list (fMoW stores a single object sometimes), own category first."""
    entries = [value] if isinstance(value, dict) else list(value or [])
    entries = [e for e in entries if isinstance(e, dict)]
    return sorted(entries, key=lambda e: e.get("category") != category)


def _valid_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
    )


def _wkt_centroid(wkt: Any, epsg: Any = None) -> tuple[float, float] | None:
    """(lat, lon) of a WGS84 WKT geometry's centroid (WKT order is lon lat)."""
    if not isinstance(wkt, str) or (epsg is not None and str(epsg) != "4326"):
        return None
    try:
        centroid = shapely.wkt.loads(wkt).centroid
    except (ShapelyError, ValueError, AttributeError):
        return None
    if centroid.is_empty:
        return None
    lon, lat = centroid.x, centroid.y
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def _time_order(image: _Image) -> tuple[bool, datetime, int]:
    """Sort key: by acquisition time, images without a readable timestamp last, then by k."""
    return image.time is None, image.time or datetime.min.replace(tzinfo=UTC), image.k


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _image_entry(url: str, record: Mapping[str, Any], box: Iterable[float] | None) -> dict:
    """One element of the ``images`` JSON column."""
    return {
        "path": url,
        "timestamp": record.get("timestamp") if isinstance(record.get("timestamp"), str) else None,
        "gsd": _number(record.get("gsd")),
        "cloud_cover": _number(record.get("cloud_cover")),
        "box": [int(v) if float(v).is_integer() else float(v) for v in box] if box else None,
        "img_width": _number(record.get("img_width")),
        "img_height": _number(record.get("img_height")),
    }

"""GASSL samples: every image of an fMoW location's sequence, cropped around its box and resized.

A location row of the ``fmow`` sampler lists its images in time order (``images`` column). For
each one, :class:`FmowImageReader` reads the image (JPEG via Pillow, TIFF via rasterio) and its
per-image JSON from the fMoW root, crops a square around the object's box and resizes it to
``spec.size`` pixels, giving one :class:`~geoprep.shards.records.ImageRecord` per image (sensor
``fmow``, slots ``t0`` … in time order, bands red/green/blue, uint8).

Crop: a square centred on the box whose side is the box's longer side plus ``context`` times that
side on each side (``side = longer * (1 + 2 * context)``). Where the square reaches past the
image it is filled with 0 (not shifted or shrunk, so the box stays centred and the scale is the
same in x and y); the filled share is recorded as ``nodata_fraction``. An image without a valid
box is taken whole, as the square of its longer side centred on it.

Georeferencing (north-up approximation): fMoW images are satellite scenes resampled to an
unknown projection, and the JSON only gives the footprint as a lon/lat polygon
(``raw_location``, or ``raw_polygon`` in some releases). The image is taken to span the
polygon's lon/lat bounds evenly, rows going south and columns east, which ignores rotation and
off-nadir distortion; over the few hundred metres of an fMoW image this is off by a few pixels
at most. Without a footprint, a box's own ``raw_location`` is extrapolated over the image. The
resulting grid is EPSG:4326; its ``gsd`` is the JSON's (metres) times the resize factor.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import shapely.wkt
from fsspec.core import url_to_fs
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from shapely.errors import ShapelyError

from geoprep.building.location import LocationFailed
from geoprep.core.errors import UserError
from geoprep.planning.samplers.fmow import FMOW_CATEGORIES
from geoprep.recipe.sections import FmowImagesSpec
from geoprep.shards.records import ImageRecord
from geoprep.shards.schema import slot_entry

log = logging.getLogger(__name__)

SENSOR = "fmow"
BANDS = ["red", "green", "blue"]
#: Band positions of red, green, blue by band count: RGB, 4-band (B, G, R, NIR) and 8-band
#: (coastal, B, G, yellow, R, red edge, NIR1, NIR2) fMoW-full images.
RGB_BANDS_BY_COUNT = {3: (1, 2, 3), 4: (3, 2, 1), 8: (5, 3, 2)}
#: fMoW-full multispectral DNs are 11-bit; they are scaled linearly from this range to 0–255.
MULTISPECTRAL_BITS = 11
#: An fMoW image path ends in <split>/<category>/<category>_<n>/<file>.
LAYOUT_DEPTH = 4
_TIFF_SUFFIXES = (".tif", ".tiff")
_METRES_PER_DEGREE = 111_320.0


def category_table() -> list[dict[str, Any]]:
    """The 62 fMoW categories as [{"index": i, "name": ...}], for the dataset's categories.json."""
    return [{"index": index, "name": name} for index, name in enumerate(FMOW_CATEGORIES)]


def slot_entries(images: list[ImageRecord]) -> dict[str, dict[str, Any]]:
    """The sample json's "slots" for fMoW records: each slot is the day its image was taken."""
    slots = {}
    for image in images:
        when = _parse_time(image.provenance.get("datetime"))
        day = when.date().isoformat() if when else None
        slots[image.slot] = slot_entry(day, day, day)
    return slots


@dataclass(frozen=True)
class Footprint:
    """An image's lon/lat bounds, taken as spanned evenly by its pixels (north-up)."""

    west: float
    south: float
    east: float
    north: float

    def pixel_size(self, width: int, height: int) -> tuple[float, float]:
        """(degrees of longitude per column, degrees of latitude per row)."""
        return (self.east - self.west) / width, (self.north - self.south) / height

    def gsd_metres(self, width: int, height: int) -> float:
        dx, dy = self.pixel_size(width, height)
        cos_lat = math.cos(math.radians((self.north + self.south) / 2))
        return _METRES_PER_DEGREE * (dx * cos_lat + dy) / 2


@dataclass(frozen=True)
class CropWindow:
    """A square window of source pixels (may reach past the image)."""

    x0: float
    y0: float
    side: float

    @classmethod
    def around(cls, box: Any, context: float, width: int, height: int) -> CropWindow:
        """The square centred on ``box`` = [x, y, w, h], grown by ``context`` per side."""
        if _valid_box(box):
            x, y, w, h = (float(v) for v in box)
            side = max(w, h) * (1 + 2 * context)
        else:
            x, y, w, h = 0.0, 0.0, float(width), float(height)
            side = max(w, h)
        return cls(x + w / 2 - side / 2, y + h / 2 - side / 2, side)

    def scaled(self, fx: float, fy: float) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in an image scaled by (fx, fy) from the source."""
        return self.x0 * fx, self.y0 * fy, (self.x0 + self.side) * fx, (self.y0 + self.side) * fy

    def outside_share(self, width: int, height: int) -> float:
        """The share of the window that lies outside a ``width`` × ``height`` image."""
        inside_x = max(0.0, min(self.x0 + self.side, width) - max(self.x0, 0.0))
        inside_y = max(0.0, min(self.y0 + self.side, height) - max(self.y0, 0.0))
        return 1.0 - inside_x * inside_y / self.side**2


@dataclass
class FmowSequence:
    """The images read for one location, and how many listed images were skipped, by reason."""

    images: list[ImageRecord]
    skipped: Counter[str] = field(default_factory=Counter)


class _Skip(Exception):
    """One image that cannot be used; ``reason`` is its tally key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class FmowImageReader:
    """Reads the image sequences of fmow location rows from a local or fsspec fMoW root.

    ``root`` is the dataset root (``spec.root`` or the sampler's root); paths in the rows may be
    absolute paths or URLs (as the sampler writes them) or relative to the root. A path outside
    ``root`` is read from the same ``<split>/<category>/<location>/<file>`` under ``root``, so a
    plan made on one copy of fMoW can be built from another.
    """

    def __init__(self, spec: FmowImagesSpec, root: str) -> None:
        self.spec = spec
        self.root = root
        try:
            self.fs, base = url_to_fs(root, **spec.storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise UserError(f"fmow_images root {root!r} cannot be opened: {exc}") from exc
        self.base = base.rstrip("/")
        if not self.fs.isdir(self.base):
            raise UserError(f"fmow_images root {root!r} is not a directory")

    def images(self, row: Mapping[str, Any]) -> list[ImageRecord]:
        """One record per readable image of the location, slots ``t0`` … in time order."""
        return self.read(row).images

    def read(self, row: Mapping[str, Any]) -> FmowSequence:
        """Like :meth:`images`, with the tally of skipped images; LocationFailed if none remain."""
        location = str(row.get("id"))
        entries = _image_entries(row)
        chosen = [entries[i] for i in evenly_spread(len(entries), self.spec.max_images)]
        relative = [self.relative_path(str(entry["path"])) for entry in chosen]
        jsons = [self._full(_json_sibling(path)) for path in relative]
        encoded = [self._full(p) for p in relative if not p.lower().endswith(_TIFF_SUFFIXES)]
        # One request for all small files: remote filesystems fetch a list concurrently.
        contents = self.fs.cat(jsons + encoded, on_error="return") if chosen else {}

        images: list[ImageRecord] = []
        skipped: Counter[str] = Counter()
        for entry, path, json_path in zip(chosen, relative, jsons, strict=True):
            try:
                record = _json_record(contents.get(json_path))
                array, grid, provenance = self._crop(path, entry, record, contents)
            except _Skip as skip:
                log.warning("fmow %s: skipping %s (%s)", location, path, skip)
                skipped[skip.reason] += 1
                continue
            images.append(
                ImageRecord(
                    sensor=SENSOR,
                    slot=f"t{len(images)}",
                    array=array,
                    grid=grid,
                    bands=list(BANDS),
                    provenance=provenance,
                )
            )
        if not images:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            raise LocationFailed("no_images", f"{len(entries)} listed; {detail or 'none read'}")
        return FmowSequence(images, skipped)

    def relative_path(self, path: str) -> str:
        """``path`` relative to the root (see the class docstring for paths outside it)."""
        if "://" not in path and not path.startswith("/"):
            return path.strip("/")
        stripped = self.fs._strip_protocol(path).rstrip("/")
        if stripped.startswith(self.base + "/"):
            return stripped[len(self.base) + 1 :]
        parts = path.replace("\\", "/").rstrip("/").split("/")
        if len(parts) < LAYOUT_DEPTH:
            return path
        return "/".join(parts[-LAYOUT_DEPTH:])

    def _full(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    # ------------------------------------------------------------------ one image
    def _crop(
        self, path: str, entry: Mapping[str, Any], record: dict[str, Any], contents: Mapping
    ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
        """The resized crop, its grid and provenance; raises _Skip."""
        size = self.spec.size
        if path.lower().endswith(_TIFF_SUFFIXES):
            patch, width, height, window = self._crop_tiff(path, entry.get("box"))
        else:
            data = contents.get(self._full(path))
            patch, width, height, window = _crop_encoded(data, entry.get("box"), self.spec)
        footprint = image_footprint(record, width, height)
        if footprint is None:
            raise _Skip("no_footprint", "its JSON has no usable raw_location")
        dx, dy = footprint.pixel_size(width, height)
        factor = window.side / size  # source pixels per output pixel
        source_gsd = _number(entry.get("gsd")) or _number(record.get("gsd"))
        grid = {
            "crs": "EPSG:4326",
            "transform": [
                dx * factor,
                0.0,
                footprint.west + window.x0 * dx,
                0.0,
                -dy * factor,
                footprint.north - window.y0 * dy,
            ],
            "width": size,
            "height": size,
            "gsd": (source_gsd or footprint.gsd_metres(width, height)) * factor,
        }
        provenance = {
            "datetime": entry.get("timestamp") or record.get("timestamp"),
            "gsd": source_gsd,
            "cloud_cover": _number(entry.get("cloud_cover")),
            "path": path,
            "box": entry.get("box"),
            "img_width": width,
            "img_height": height,
            "crop": [window.x0, window.y0, window.side, window.side],
            "nodata_fraction": window.outside_share(width, height),
        }
        return patch, grid, provenance

    def _crop_tiff(self, path: str, box: Any) -> tuple[np.ndarray, int, int, CropWindow]:
        full = self._full(path)
        try:
            with warnings.catch_warnings():
                # The JSON footprint georeferences the crop; the TIFF's own tags are not needed.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(full, opener=self.fs.open) as src:
                    return self._tiff_patch(src, box)
        except FileNotFoundError as exc:
            raise _Skip("missing", str(exc)) from exc
        except RasterioError as exc:
            reason = "undecodable" if self.fs.exists(full) else "missing"
            raise _Skip(reason, str(exc)) from exc

    def _tiff_patch(
        self, src: rasterio.DatasetReader, box: Any
    ) -> tuple[np.ndarray, int, int, CropWindow]:
        """Read only the window's pixels, decimated when it is much larger than the output."""
        width, height = src.width, src.height
        indexes = RGB_BANDS_BY_COUNT.get(src.count)
        if indexes is None:
            raise _Skip("undecodable", f"{src.count} bands; expected 3, 4 or 8")
        window = CropWindow.around(box, self.spec.context, width, height)
        x0, y0 = max(0, math.floor(window.x0)), max(0, math.floor(window.y0))
        x1 = min(width, math.ceil(window.x0 + window.side))
        y1 = min(height, math.ceil(window.y0 + window.side))
        if x1 <= x0 or y1 <= y0:
            raise _Skip("undecodable", "the box lies outside the image")
        step = max(1, int(window.side / self.spec.size))
        shape = (3, math.ceil((y1 - y0) / step), math.ceil((x1 - x0) / step))
        array = src.read(
            indexes,
            window=Window(x0, y0, x1 - x0, y1 - y0),
            out_shape=shape,
            resampling=Resampling.average,
        )
        rgb = Image.fromarray(np.moveaxis(_to_uint8(array), 0, -1), "RGB")
        # The array holds source pixels x0…x1, y0…y1 reduced to its own shape.
        fx, fy = shape[2] / (x1 - x0), shape[1] / (y1 - y0)
        left, top, right, bottom = window.scaled(fx, fy)
        region = (left - x0 * fx, top - y0 * fy, right - x0 * fx, bottom - y0 * fy)
        return _resize_region(rgb, region, self.spec.size), width, height, window


def evenly_spread(count: int, keep: int | None) -> list[int]:
    """Indexes of ``keep`` of ``count`` items spread evenly, first and last included."""
    if keep is None or keep >= count:
        return list(range(count))
    if keep == 1:
        return [0]
    return sorted({int(round(i * (count - 1) / (keep - 1))) for i in range(keep)})


def image_footprint(record: Mapping[str, Any], width: int, height: int) -> Footprint | None:
    """The image's lon/lat bounds from its JSON, or from a box's footprint extrapolated."""
    if str(record.get("epsg", "4326")) == "4326":
        for key in ("raw_location", "raw_polygon"):
            bounds = _wkt_bounds(record.get(key))
            if bounds is not None:
                return Footprint(*bounds)
    boxes = record.get("bounding_boxes")
    for entry in [boxes] if isinstance(boxes, dict) else boxes or []:
        if not isinstance(entry, dict) or str(entry.get("epsg", "4326")) != "4326":
            continue
        bounds = _wkt_bounds(entry.get("raw_location"))
        box = entry.get("box")
        if bounds is None or not _valid_box(box):
            continue
        west, south, east, north = bounds
        dx, dy = (east - west) / box[2], (north - south) / box[3]
        left, top = west - box[0] * dx, north + box[1] * dy
        return Footprint(left, top - height * dy, left + width * dx, top)
    return None


def _crop_encoded(
    data: bytes | Exception | None, box: Any, spec: FmowImagesSpec
) -> tuple[np.ndarray, int, int, CropWindow]:
    if data is None or isinstance(data, FileNotFoundError):
        raise _Skip("missing", str(data or "not read"))
    if isinstance(data, Exception):
        raise _Skip("unreadable", str(data))
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            window = CropWindow.around(box, spec.context, width, height)
            reduction = window.side / spec.size
            if image.format == "JPEG" and reduction >= 2:
                # Decode at 1/2, 1/4 or 1/8 scale, never below the output's resolution.
                wanted = (math.ceil(width / reduction), math.ceil(height / reduction))
                image.draft("RGB", wanted)
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _Skip("undecodable", str(exc)) from exc
    region = window.scaled(rgb.width / width, rgb.height / height)
    return _resize_region(rgb, region, spec.size), width, height, window


def _resize_region(image: Image.Image, region: tuple[float, ...], size: int) -> np.ndarray:
    """Pixels of a fractional ``region`` (may reach past the image: zeros) at size × size."""
    left, top, right, bottom = region
    box = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
    padded = image.crop(box)  # Pillow fills the parts outside the image with 0
    inner = (left - box[0], top - box[1], right - box[0], bottom - box[1])
    resized = padded.resize((size, size), Image.Resampling.BILINEAR, box=inner)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    top = 2**MULTISPECTRAL_BITS - 1
    return np.clip(np.rint(array.astype(np.float64) * (255 / top)), 0, 255).astype(np.uint8)


def _image_entries(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = row.get("images")
    try:
        entries = json.loads(value) if isinstance(value, str | bytes) else value
    except ValueError as exc:
        raise LocationFailed("no_images", f"images column is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        entries = []
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]
    if not entries:
        raise LocationFailed("no_images", "the row lists no images")
    return entries


def _json_sibling(path: str) -> str:
    stem, dot, _ = path.rpartition(".")
    return f"{stem}.json" if dot else f"{path}.json"


def _json_record(content: bytes | Exception | None) -> dict[str, Any]:
    if content is None or isinstance(content, Exception):
        raise _Skip("no_footprint", f"its JSON cannot be read ({content})")
    try:
        record = json.loads(content)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Skip("no_footprint", f"its JSON is invalid ({exc})") from exc
    if not isinstance(record, dict):
        raise _Skip("no_footprint", "its JSON is not an object")
    return record


def _wkt_bounds(wkt: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(wkt, str):
        return None
    try:
        geometry = shapely.wkt.loads(wkt)
    except (ShapelyError, ValueError, AttributeError):
        return None
    if geometry.is_empty:
        return None
    west, south, east, north = geometry.bounds
    finite = all(math.isfinite(v) for v in (west, south, east, north))
    if not finite or west >= east or south >= north or abs(south) > 90 or abs(north) > 90:
        return None
    return west, south, east, north


def _valid_box(box: Any) -> bool:
    return (
        isinstance(box, list | tuple)
        and len(box) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        and box[2] > 0
        and box[3] > 0
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)

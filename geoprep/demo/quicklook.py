"""One picture of a demo world: where its AOIs lie, what each sensor sees, its truth and sounds.

``world_figure(world_dir, out_png)`` draws it from the files of a built world (the local STAC
catalog, the truth and the recordings) without any network; ``python -m
geoprep.demo.quicklook WORLD OUT.png`` does the same from the shell. Imagery is shown with
2-98 % percentile stretches, Sentinel-1 in dB.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from rasterio.enums import Resampling
from shapely.geometry import box

from geoprep.core.errors import UserError
from geoprep.core.landmask import ocean_mask_rows
from geoprep.demo.aporee_world import read_manifest
from geoprep.demo.truth import CHANGE_YEAR, CLASS_CODES, SEASON_DATES, Truth
from geoprep.demo.world import WorldManifest

log = logging.getLogger(__name__)

#: The AOI the sensor panels show: the one NAIP covers, when the world has it.
FOCUS_AOI = "iowa"
#: Longest side, in pixels, that a quicklook is read at (overviews make this cheap).
MAX_SIDE = 400
#: Colours of the land-cover classes in the truth panel (the background "other" is pale).
CLASS_COLOURS = {
    "other": "#e8e4d8", "bridge": "#000000", "breakwater": "#5b5b5b", "farm_building": "#d4572a",
    "substation": "#ffd400", "stadium": "#e11d74", "golf_course": "#9be36b", "dam": "#2f2f8f",
    "quarry": "#b08a5c", "farmland": "#f2d57e", "forest": "#1f7a3a", "water": "#3d8fd1",
    "bare_rock": "#a39e98", "built_up": "#b2182b",
}  # fmt: skip
#: Sentinel-2 scene classification codes: name and the usual display colour.
SCL_CLASSES = {
    0: ("no data", "#000000"), 1: ("saturated", "#ff0000"), 2: ("dark area", "#2f2f2f"),
    3: ("cloud shadow", "#643200"), 4: ("vegetation", "#00a000"),
    5: ("not vegetated", "#ffe65a"), 6: ("water", "#0000ff"), 7: ("unclassified", "#808080"),
    8: ("cloud (medium)", "#c0c0c0"), 9: ("cloud (high)", "#ffffff"),
    10: ("thin cirrus", "#64c8ff"), 11: ("snow", "#ff96ff"),
}  # fmt: skip
#: Outline of the land cover that changes (fields to built-up land, forest to quarry).
CHANGE_COLOUR = "#ff00ff"
#: Soundscapes compared in the spectrogram panels: open water against a town's traffic.
SOUND_PAIR = (("water", "open water"), ("built_up", "town traffic"))


@dataclass(frozen=True)
class LocalItem:
    """A STAC item of the world's local catalog, whose asset hrefs are relative file paths."""

    path: Path
    doc: dict

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.doc["properties"]["datetime"].replace("Z", "+00:00"))

    @property
    def cloud(self) -> float:
        return float(self.doc["properties"].get("eo:cloud_cover", 0.0))

    @property
    def nodata_share(self) -> float:
        return float(self.doc["properties"].get("s2:nodata_pixel_percentage", 0.0))

    def asset(self, key: str) -> Path:
        return (self.path.parent / self.doc["assets"][key]["href"]).resolve()


def season_of(day: date) -> str:
    """The world's season name (see ``SEASON_DATES``) whose date is nearest to ``day``."""
    doy = day.timetuple().tm_yday

    def distance(season: str) -> int:
        month, dom = SEASON_DATES[season]
        gap = abs(date(day.year, month, dom).timetuple().tm_yday - doy)
        return min(gap, 365 - gap)

    return min(SEASON_DATES, key=distance)


class WorldView:
    """Read-only access to the parts of a built world that the figure shows."""

    def __init__(self, world_dir: Path) -> None:
        self.dir = Path(world_dir)
        self.manifest = WorldManifest.read(self.dir / "world.json")
        self.truth = Truth.read(self.dir / "truth")
        names = [aoi.name for aoi in self.truth.aois]
        self.aoi = self.truth.aoi(FOCUS_AOI if FOCUS_AOI in names else names[0])

    @cached_property
    def _items(self) -> list[LocalItem]:
        paths = sorted((self.dir / "stac" / "local").glob("*/*/*.json"))
        if not paths:
            raise UserError(f"{self.dir / 'stac' / 'local'} holds no STAC items")
        return [LocalItem(path, json.loads(path.read_text())) for path in paths]

    def items(self, collection: str) -> list[LocalItem]:
        """The collection's items over the focus AOI, oldest first."""
        footprint = box(*self.aoi.bounds_lonlat)
        found = [
            item
            for item in self._items
            if item.doc["collection"] == collection and box(*item.doc["bbox"]).intersects(footprint)
        ]
        return sorted(found, key=lambda item: item.when)

    def clearest(self, collection: str, year: int | None, season: str | None) -> LocalItem | None:
        """The least cloudy, most complete item of a year and season (None for any)."""
        candidates = [
            item
            for item in self.items(collection)
            if (year is None or item.when.year == year)
            and (season is None or season_of(item.when.date()) == season)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda item: (item.cloud + item.nodata_share, item.when))

    def partly_cloudy(self) -> LocalItem | None:
        """The Sentinel-2 scene whose cloud cover is nearest a third (partly cloudy passes
        often see the AOI at their swath edge too, which the panel shows as no data)."""
        candidates = [item for item in self.items("sentinel-2-l2a") if item.cloud > 5]
        return min(candidates, key=lambda item: abs(item.cloud - 33)) if candidates else None


def percentile_stretch(bands: np.ndarray, valid: np.ndarray, low=2.0, high=98.0) -> np.ndarray:
    """(bands, rows, cols) -> (rows, cols, bands) in [0, 1], stretched between the ``low`` and
    ``high`` percentiles of the valid pixels of all bands together (one pair for all bands
    keeps the colour balance); invalid pixels become black."""
    out = np.zeros(bands.shape[1:] + (bands.shape[0],), dtype=np.float32)
    if not valid.any():
        return out
    values = bands.astype(np.float32)
    lo, hi = np.percentile(values[:, valid], [low, high])
    scaled = np.clip((np.moveaxis(values, 0, -1) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.where(valid[..., None], scaled, out)


def _read(path: Path, bands: list[int] | None = None, resampling=Resampling.average):
    """Bands of a raster read at most :data:`MAX_SIDE` pixels on a side, and its nodata mask."""
    with rasterio.open(path) as src:
        factor = max(1, int(np.ceil(max(src.width, src.height) / MAX_SIDE)))
        shape = (src.height // factor, src.width // factor)
        indexes = bands or list(range(1, src.count + 1))
        data = src.read(indexes, out_shape=(len(indexes), *shape), resampling=resampling)
        nodata = src.nodata
        bounds = src.bounds
    valid = np.ones(shape, dtype=bool) if nodata is None else (data != nodata).all(axis=0)
    return data, valid & np.isfinite(data).all(axis=0), bounds


def true_colour(item: LocalItem, keys: tuple[str, str, str]) -> tuple[np.ndarray, tuple]:
    layers, valid = [], None
    for key in keys:
        data, ok, bounds = _read(item.asset(key))
        layers.append(data[0])
        valid = ok if valid is None else valid & ok
    return percentile_stretch(np.stack(layers), valid), bounds


def _extent(bounds) -> tuple[float, float, float, float]:
    return (bounds.left, bounds.right, bounds.bottom, bounds.top)


@cache
def land_fraction_grid(step: int = 30) -> np.ndarray:
    """Share of land in ``step`` x ``step`` blocks of global_land_mask's 30" grid, north up.

    The package loads its 0.9 GB mask on import, so the compressed array is streamed from its
    ``.npz`` instead, a band of rows at a time. The result is cached and read-only.
    """
    try:
        with ocean_mask_rows() as (rows, cols, stream):
            ocean_share = np.empty((rows // step, cols // step), dtype=np.float32)
            for band in range(rows // step):
                block = np.frombuffer(stream.read(cols * step), dtype=np.uint8)
                block = block.reshape(step, cols // step, step)
                ocean_share[band] = block.sum(axis=(0, 2), dtype=np.uint32) / (step * step)
    except ImportError:
        raise UserError("the world map needs the global-land-mask package") from None
    # The mask says True for ocean; its first row is the northernmost.
    land = 1.0 - ocean_share
    land.setflags(write=False)
    return land


def _panel_off(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def _image(ax, picture: np.ndarray, extent, title: str, **style) -> None:
    """``picture`` on its map extent (left, right, bottom, top), titled, without ticks."""
    ax.imshow(picture, extent=extent, interpolation="nearest", **style)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline_changes(ax, view: WorldView, crs) -> None:
    """Dashed outlines of the land cover that changes in :data:`CHANGE_YEAR`."""
    features = view.truth.features
    changed = features[
        (features["aoi"] == view.aoi.name) & (features["valid_from_year"] == CHANGE_YEAR)
    ]
    for geometry in changed.to_crs(crs).geometry:
        for polygon in getattr(geometry, "geoms", [geometry]):
            x, y = polygon.exterior.xy
            ax.plot(x, y, color=CHANGE_COLOUR, linewidth=1.6, linestyle=(0, (3, 2)))


def draw_world_map(ax, view: WorldView) -> None:
    land = land_fraction_grid()
    colours = ListedColormap(["#cfe3f0", "#efe9dc"])
    ax.imshow(land > 0.5, extent=(-180, 180, -90, 90), cmap=colours, interpolation="nearest")
    for aoi in view.truth.aois:
        west, south, east, north = aoi.bounds_lonlat
        lon, lat = (west + east) / 2, (south + north) / 2
        ax.plot(lon, lat, marker="*", markersize=14, color="#c0392b", markeredgecolor="white")
        ax.annotate(
            aoi.name,
            (lon, lat),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=10,
            weight="bold",
        )
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 80)
    ax.set_xticks([])
    ax.set_yticks([])
    side_km = view.truth.aois[0].side / 1000
    sensors = ", ".join(f"{n} {c}" for c, n in view.manifest.sensors.items())
    ax.set_title(
        f"demo world (seed {view.manifest.seed}, scale {view.manifest.scale}): "
        f"{len(view.truth.aois)} AOIs of {side_km:g} km\n{sensors} items",
        fontsize=10,
    )


def draw_truth(ax, legend_ax, view: WorldView, year: int) -> None:
    aoi = view.aoi
    transform, shape = aoi.grid(10.0)
    codes = view.truth.rasterize(aoi.name, year, aoi.epsg, transform, shape)
    names = sorted(CLASS_CODES, key=CLASS_CODES.get)
    colours = ListedColormap([CLASS_COLOURS[name] for name in names])
    west, south, east, north = aoi.bounds_utm
    title = f"truth land cover, {aoi.name} {year}"
    style = {"cmap": colours, "vmin": -0.5, "vmax": len(names) - 0.5}
    _image(ax, codes, (west, east, south, north), title, **style)
    _outline_changes(ax, view, aoi.epsg)
    present = sorted(set(np.unique(codes).tolist()))
    handles = [
        Patch(facecolor=CLASS_COLOURS[names[code]], edgecolor="#555555", label=names[code])
        for code in present
    ]
    changes = f"changes {CHANGE_YEAR}"
    handles.append(Patch(facecolor="none", edgecolor=CHANGE_COLOUR, linestyle="--", label=changes))
    legend_ax.set_axis_off()
    legend_ax.legend(handles=handles, loc="center left", fontsize=9, frameon=False, ncols=1)


def draw_s2(ax, view: WorldView, item: LocalItem | None, label: str, outline=False) -> None:
    if item is None:
        _panel_off(ax, f"no Sentinel-2 scene\n{label}")
        return
    rgb, bounds = true_colour(item, ("B04", "B03", "B02"))
    _image(ax, rgb, _extent(bounds), f"Sentinel-2 {item.when:%Y-%m-%d} {label}")
    if outline:
        _outline_changes(ax, view, view.aoi.epsg)
        ax.set_xlim(bounds.left, bounds.right)
        ax.set_ylim(bounds.bottom, bounds.top)


def draw_scl(ax, item: LocalItem | None) -> None:
    if item is None:
        _panel_off(ax, "no partly cloudy\nSentinel-2 scene")
        return
    data, _, bounds = _read(item.asset("SCL"), resampling=Resampling.nearest)
    colours = ListedColormap([SCL_CLASSES[code][1] for code in sorted(SCL_CLASSES)])
    title = f"its SCL: {item.cloud:.0f} % cloud, {item.nodata_share:.0f} % no data"
    style = {"cmap": colours, "vmin": -0.5, "vmax": len(SCL_CLASSES) - 0.5}
    _image(ax, data[0], _extent(bounds), title, **style)
    present = sorted(set(np.unique(data).tolist()) & set(SCL_CLASSES))
    handles = [
        Patch(facecolor=SCL_CLASSES[c][1], edgecolor="#555555", label=SCL_CLASSES[c][0])
        for c in present
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.85)


def draw_naip(ax, view: WorldView) -> None:
    items = view.items("naip")
    if not items:
        _panel_off(ax, f"no NAIP over {view.aoi.name}")
        return
    item = items[-1]
    data, valid, bounds = _read(item.asset("image"), bands=[1, 2, 3])
    title = f"NAIP {item.when:%Y-%m-%d} (1 m)"
    _image(ax, percentile_stretch(data, valid), _extent(bounds), title)


def draw_landsat(ax, view: WorldView) -> None:
    landsat = "landsat-c2-l2"
    item = view.clearest(landsat, None, "summer") or view.clearest(landsat, None, None)
    if item is None:
        _panel_off(ax, "no Landsat scene")
        return
    rgb, bounds = true_colour(item, ("red", "green", "blue"))
    platform = item.doc["properties"].get("platform", "landsat").replace("-", " ").capitalize()
    _image(ax, rgb, _extent(bounds), f"{platform} {item.when:%Y-%m-%d} (30 m)")


def draw_s1(ax, view: WorldView) -> None:
    items = view.items("sentinel-1-rtc")
    if not items:
        _panel_off(ax, "no Sentinel-1 scene")
        return
    item = items[0]
    data, valid, bounds = _read(item.asset("vv"))
    valid &= data[0] > 0
    decibels = 10 * np.log10(np.where(valid, data[0], 1.0))
    grey = percentile_stretch(decibels[None], valid)[..., 0]
    lo, hi = np.percentile(decibels[valid], [2, 98]) if valid.any() else (0, 0)
    title = f"Sentinel-1 VV {item.when:%Y-%m-%d} ({lo:.0f} to {hi:.0f} dB)"
    _image(ax, grey, _extent(bounds), title, cmap="gray")


def draw_spectrogram(ax, view: WorldView, soundscape: str, label: str, y_labels=True) -> None:
    import librosa
    import librosa.display

    recordings = read_manifest(view.dir)
    usable = recordings[(recordings["soundscape"] == soundscape) & (recordings["problem"] == "")]
    usable = usable.sort_values(["duration_s"], ascending=False)
    if usable.empty:
        _panel_off(ax, f"no {label} recording")
        return
    row = usable.iloc[0]
    path = view.dir / "aporee" / row["identifier"] / row["original"]
    audio, rate = librosa.load(path, sr=22_050, mono=True, duration=20.0)
    mel = librosa.feature.melspectrogram(y=audio, sr=rate, n_mels=96, fmax=rate / 2)
    librosa.display.specshow(
        librosa.power_to_db(mel, ref=np.max), sr=rate, x_axis="time", y_axis="mel", ax=ax,
        cmap="magma", fmax=rate / 2,
    )  # fmt: skip
    ax.set_title(f"{label}: {row['title']} ({row['sounds'].replace(';', ', ')})", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.xaxis.label.set_size(8)
    ax.yaxis.label.set_size(8)
    if not y_labels:  # panels side by side share the same mel axis
        ax.set_ylabel("")
        ax.tick_params(labelleft=False)


def world_figure(world_dir: str | Path, out_png: str | Path, dpi: int = 72) -> Path:
    """Draw the picture of the world in ``world_dir`` into ``out_png`` and return its path."""
    view = WorldView(Path(world_dir))
    years = sorted({item.when.year for item in view.items("sentinel-2-l2a")}) or [CHANGE_YEAR]
    before, after = years[0], years[-1]
    # Square image cells: the figure's height follows from its width and the row ratios.
    figure = Figure(figsize=(15, 14.8))
    grid = figure.add_gridspec(
        4, 4, height_ratios=[1.0, 1.0, 1.0, 0.55], left=0.04, right=0.99, top=0.975,
        bottom=0.035, wspace=0.06, hspace=0.18,
    )  # fmt: skip
    draw_world_map(figure.add_subplot(grid[0, :2]), view)
    draw_truth(figure.add_subplot(grid[0, 2]), figure.add_subplot(grid[0, 3]), view, before)
    s2, cloudy = "sentinel-2-l2a", view.partly_cloudy()
    s2_panels = [
        (view.clearest(s2, before, "spring"), "spring", False),
        (view.clearest(s2, before, "summer"), "summer", True),
        (view.clearest(s2, after, "summer"), "after the change", True),
        (cloudy, "partly cloudy", False),
    ]
    for column, (item, label, outline) in enumerate(s2_panels):
        draw_s2(figure.add_subplot(grid[1, column]), view, item, label, outline)
    draw_scl(figure.add_subplot(grid[2, 0]), cloudy)
    draw_naip(figure.add_subplot(grid[2, 1]), view)
    draw_landsat(figure.add_subplot(grid[2, 2]), view)
    draw_s1(figure.add_subplot(grid[2, 3]), view)
    for column, (soundscape, label) in enumerate(SOUND_PAIR):
        ax = figure.add_subplot(grid[3, 2 * column : 2 * column + 2])
        draw_spectrogram(ax, view, soundscape, label, y_labels=column == 0)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    # A 256-colour palette keeps the picture small enough to live in the repository.
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)
    log.info("wrote %s (%d KB)", out, out.stat().st_size // 1024)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoprep.demo.quicklook", description="Draw a picture of a demo world."
    )
    parser.add_argument("world", type=Path, help="world directory (geoprep demo-world OUT)")
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--dpi", type=int, default=72)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        world_figure(args.world, args.out, dpi=args.dpi)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

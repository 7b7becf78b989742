"""A location's imagery: pick a scene per sensor and time slot, read its patches, check them."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import pystac

from geoprep.building.catalogs import Catalog, unsigned_href
from geoprep.building.faults import (
    DEFAULT_RETRY,
    CircuitBreaker,
    RetryPolicy,
    with_retries,
)
from geoprep.building.grid import TargetGrid, native_groups
from geoprep.building.location import LocationFailed
from geoprep.building.pixels import (
    DEFAULT_MASK_ASSETS,
    S2_REFLECTANCE_ASSETS,
    apply_scale_offset,
    asset_gsd,
    band_scale_offset,
    cloud_fraction,
    harmonize_s2,
    mask_has_data,
    mask_kind,
    nodata_fraction,
)
from geoprep.building.raster import DatasetCache, Patch, read_patch
from geoprep.building.scenes import Slot, coterminous, item_datetime, rank
from geoprep.recipe.model import Recipe
from geoprep.recipe.sections import SensorSpec, SingleTime
from geoprep.shards.records import ImageRecord

log = logging.getLogger(__name__)


RejectKind = Literal["cloudy", "nodata", "missing_assets"]
T = TypeVar("T")
#: A sensor's assets → (target grid, resolution group or None in the common layout).
AssetGrids = dict[str, tuple[TargetGrid, str | None]]


@dataclass
class SceneRead:
    """The images one scene gave for one sensor and slot, or why it was rejected."""

    images: list[ImageRecord]
    rejected: str | None = None
    kind: RejectKind | None = None


@dataclass(frozen=True)
class LocationPlan:
    """A location's slots, candidate scenes per sensor, active sensors and asset grids."""

    slots: list[Slot]
    candidates: Mapping[str, list[pystac.Item]]
    sensors: list[str]
    grids: dict[str, AssetGrids]


class ImageryReader:
    """Reads the images of locations for one recipe's imagery section; safe to share between I/O
    threads.

    Only a scene's pixels (clouds, nodata) or its metadata (assets it lacks) make it pass to
    the next candidate. A read that fails is retried (`retry`, reporting to `breaker`); if it
    still fails, the `ReadFailure` leaves the location: another scene would change the data.
    A file the archive lacks (HTTP 404) is not retried; the shard decides what it means.
    """

    def __init__(
        self,
        recipe: Recipe,
        catalogs: Mapping[str, Catalog],
        cache: DatasetCache,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        self.imagery = recipe.imagery
        self.catalogs, self.cache = catalogs, cache
        self.breaker = breaker or CircuitBreaker()
        self.retry = retry
        #: threads reading the assets of one scene at once (1: one after the other)
        self.asset_threads = 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _retried(self, attempt: Callable[[bool], T], href: str | None) -> T:
        """`attempt(resign)` with retries; `href`'s cached state is dropped before each retry
        (no `href`: a token request)."""
        forget = None if href is None else (lambda _: self.cache.forget(href))
        source = "tokens" if href is None else "blobs"
        return with_retries(attempt, self.breaker, self.retry, forget, source)

    def _sign(self, catalog: str, item: pystac.Item) -> pystac.Item:
        return self._retried(lambda resign: self.catalogs[catalog].sign(item, resign), None)

    def images(
        self,
        row: Mapping[str, Any],
        slots: list[Slot],
        candidates: Mapping[str, list[pystac.Item]],
        skipped: dict[str, LocationFailed],
    ) -> list[ImageRecord]:
        """The images of every slot. With `min_found` (timestamps mode) a slot that cannot be
        completed is left out and recorded in `skipped`, as long as enough slots remain."""
        plan = self.prepare(row, slots, candidates)
        return self.collect(plan, self.read_slots(plan), skipped)

    def prepare(
        self,
        row: Mapping[str, Any],
        slots: list[Slot],
        candidates: Mapping[str, list[pystac.Item]],
    ) -> LocationPlan:
        """What the location's slots are read with: its sensors and its grids."""
        if not slots:  # e.g. a timestamps column without a readable date
            raise LocationFailed("no_dates", "the location has no time slot")
        sensors = self.active_sensors(candidates)
        grids = self.location_grids(row, candidates)
        if isinstance(self.imagery.time, SingleTime):
            slots = slots[:1]
        return LocationPlan(slots, candidates, sensors, grids)

    def read_slots(self, plan: LocationPlan) -> dict[str, list[ImageRecord] | Exception]:
        """Each slot's images or why it failed, one slot after the other; without `min_found`
        the first failure ends the location, so the slots after it are not read."""
        outcomes: dict[str, list[ImageRecord] | Exception] = {}
        for slot in plan.slots:
            try:
                outcomes[slot.name] = self.slot_images(plan, slot)
            except LocationFailed as failure:
                outcomes[slot.name] = failure
                if self.min_found() is None:
                    break
        return outcomes

    def first_scene(self, plan: LocationPlan, slot: Slot) -> str:
        """The id of the scene a slot reads first: builds read slots in this order, so that
        the locations and dates reading one scene read it together (its files open once)."""
        for sensor in plan.sensors:
            ranked = rank(slot, plan.candidates.get(sensor, []))
            if ranked:
                return ranked[0].id
        return ""

    def slot_images(self, plan: LocationPlan, slot: Slot) -> list[ImageRecord]:
        """The images of one slot: every active sensor's first clear scene (or, for a single
        time, the first clear combination of coterminous scenes)."""
        with self.cache.environment():
            if isinstance(self.imagery.time, SingleTime):
                return self._coterminous(slot, plan.candidates, plan.grids, plan.sensors)
            return [
                image
                for sensor in plan.sensors
                for image in self._first_clear(
                    sensor, slot, plan.candidates.get(sensor, []), plan.grids[sensor]
                )
            ]

    def collect(
        self,
        plan: LocationPlan,
        outcomes: Mapping[str, list[ImageRecord] | Exception],
        skipped: dict[str, LocationFailed],
    ) -> list[ImageRecord]:
        """The location's images from its slots' outcomes, in slot order: a failed slot fails
        the location (with `min_found`, it is skipped while enough slots remain)."""
        min_found = self.min_found()
        images: list[ImageRecord] = []
        for slot in plan.slots:
            if slot.name not in outcomes:  # not read: an earlier slot failed
                continue
            outcome = outcomes[slot.name]
            if isinstance(outcome, LocationFailed) and min_found is not None:
                skipped[slot.name] = outcome
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                images += outcome
        if min_found is not None and len(plan.slots) - len(skipped) < min_found:
            reasons = Counter(failure.reason for failure in skipped.values())
            details = "; ".join(failure.detail for failure in skipped.values())
            raise LocationFailed(
                reasons.most_common(1)[0][0] if reasons else "too_few_dates",
                f"{len(plan.slots) - len(skipped)} of {len(plan.slots)} dates matched, "
                f"{min_found} needed ({details})",
            )
        return images

    def min_found(self) -> int | None:
        """How many dates a timestamps location needs (None: all of them, or another mode)."""
        return getattr(self.imagery.time, "min_found", None)

    def active_sensors(self, candidates: Mapping[str, list[pystac.Item]]) -> list[str]:
        """The sensors this location uses: a `fallback_for` sensor replaces the sensor it backs
        up where that one has no scene over the location (NAIP outside the US, say)."""
        sensors = self.imagery.sensors
        covered = {name for name in sensors if candidates.get(name)}
        chosen = []
        for name, spec in sensors.items():
            backed = [other for other, s in sensors.items() if s.fallback_for == name]
            if spec.fallback_for is not None:
                if spec.fallback_for not in covered:
                    chosen.append(name)
            elif name in covered or not backed:
                chosen.append(name)
        return chosen

    def _first_clear(
        self, sensor: str, slot: Slot, items: list[pystac.Item], grids: AssetGrids
    ) -> list[ImageRecord]:
        spec = self.imagery.sensors[sensor]
        ranked = rank(slot, items)[: spec.max_candidates]
        if not ranked:
            raise LocationFailed("no_scene", f"{sensor} {slot.name}: no scene in the window")
        reads = []
        for item in ranked:
            read = self.read_scene(sensor, slot, item, grids)
            if read.rejected is None:
                return read.images
            reads.append(read)
        raise LocationFailed(
            "no_clear_scene",
            f"{sensor} {slot.name}: {len(ranked)} scenes tried "
            f"({', '.join(read.rejected for read in reads)})",
        )

    def _coterminous(
        self,
        slot: Slot,
        candidates: Mapping[str, list[pystac.Item]],
        grids: dict[str, AssetGrids],
        sensors: list[str],
    ) -> list[ImageRecord]:
        ranked = {
            sensor: rank(slot, candidates.get(sensor, []))[
                : self.imagery.sensors[sensor].max_candidates
            ]
            for sensor in sensors
        }
        empty = [s for s, items in ranked.items() if not items]
        if empty:
            raise LocationFailed("no_scene", f"{', '.join(empty)}: no scene in the window")
        rejected: set[tuple[str, str]] = set()
        reads: dict[tuple[str, str], SceneRead] = {}
        tried = 0
        for combination in coterminous(ranked, self.imagery.time.window_days, rejected):
            tried += 1
            images: list[ImageRecord] = []
            for sensor, item in combination.items():
                key = (sensor, item.id)
                if key not in reads:
                    reads[key] = self.read_scene(sensor, slot, item, grids[sensor])
                if reads[key].rejected is not None:
                    rejected.add(key)
                    break
                images += reads[key].images
            else:
                return images
            if tried > sum(len(v) for v in ranked.values()) * 4:
                break
        window = self.imagery.time.window_days
        if not tried:  # the sensors' scenes are too far apart: nothing was worth reading
            raise LocationFailed("no_scene", f"no combination of scenes within {window} days")
        raise LocationFailed(
            "no_clear_scene",
            f"no combination of clear scenes within {window} days ({len(reads)} scenes read: "
            f"{', '.join(read.rejected for read in reads.values() if read.rejected)})",
        )

    # ------------------------------------------------------------------ one scene
    def read_scene(
        self, sensor: str, slot: Slot, item: pystac.Item, grids: AssetGrids
    ) -> SceneRead:
        """Read every asset of `sensor` from `item` onto the location's grid(s) and check them.

        `grids` holds the grid of each asset (`location_grids`); an asset without one (e.g. a
        mask that the location's other candidates lack) is not read.
        """
        spec = self.imagery.sensors[sensor]
        missing = [a for a in spec.assets if a not in item.assets or a not in grids]
        if missing:
            return SceneRead([], f"{item.id} lacks assets {missing}", "missing_assets")
        signed = self._sign(spec.catalog, item)
        mask_asset = self.mask_asset(spec)
        if mask_asset is not None and (mask_asset not in item.assets or mask_asset not in grids):
            mask_asset = None
        # The mask first: a cloudy patch is rejected before any band of the scene is read.
        wanted = list(dict.fromkeys([*([mask_asset] if mask_asset else []), *spec.assets]))

        def read(asset: str) -> Patch:
            categorical = asset in spec.categorical or asset == mask_asset
            resampling = "nearest" if categorical else spec.resampling

            def attempt(resign: bool) -> Patch:
                nonlocal signed
                if resign:
                    signed = self.catalogs[spec.catalog].sign(item, fresh=True)
                return read_patch(
                    signed.assets[asset].href, grids[asset][0], resampling, cache=self.cache
                )

            return self._retried(attempt, item.assets[asset].href)

        arrays: dict[str, np.ndarray] = {}
        nodatas: dict[str, float | None] = {}
        clouds, chosen = 0.0, False
        rest = wanted
        if mask_asset is not None:
            patch = read(mask_asset)
            arrays[mask_asset], nodatas[mask_asset] = patch.array, patch.nodata
            chosen |= patch.nodata_chosen and mask_asset in spec.assets
            rest = wanted[1:]
            if (kind := mask_kind(mask_asset)) is not None:
                if not mask_has_data(arrays[mask_asset], kind):  # e.g. SCL 0 everywhere
                    return SceneRead([], f"{item.id} nodata (100%)", "nodata")
                clouds = cloud_fraction(arrays[mask_asset], kind)
                if clouds > spec.max_patch_cloud:
                    return SceneRead([], f"{item.id} cloudy ({clouds:.0%})", "cloudy")
        # The scene's other assets at once: each is a file of its own, and over a slow network
        # reading them one after the other would make a location wait for every request in turn.
        for asset, patch in zip(rest, self._map(read, rest), strict=True):
            arrays[asset], nodatas[asset] = patch.array, patch.nodata
            chosen |= patch.nodata_chosen and asset in spec.assets

        missing_share = nodata_fraction(
            [arrays[a] for a in spec.assets], [nodatas[a] for a in spec.assets]
        )
        if missing_share > spec.max_patch_nodata:
            return SceneRead([], f"{item.id} nodata ({missing_share:.0%})", "nodata")

        harmonized = False
        baseline = item.properties.get("s2:processing_baseline")
        if spec.harmonize and baseline is not None:
            for asset in spec.assets:
                if asset in S2_REFLECTANCE_ASSETS:
                    arrays[asset], applied = harmonize_s2(
                        arrays[asset], baseline, nodatas[asset] or 0
                    )
                    harmonized |= applied
        scales = {a: band_scale_offset(item, a) for a in spec.assets}
        if spec.apply_scale:
            for asset in spec.assets:
                arrays[asset] = apply_scale_offset(arrays[asset], *scales[asset], nodatas[asset])

        provenance = {
            "collection": item.collection_id,
            "item_id": item.id,
            "datetime": _iso(item_datetime(item)),
            "hrefs": {a: unsigned_href(item.assets[a].href) for a in spec.assets},
            "eo:cloud_cover": item.properties.get("eo:cloud_cover"),
            "cloud_fraction": round(float(clouds), 6),
            "nodata_fraction": round(float(missing_share), 6),
            "harmonized": harmonized,
            "processing_baseline": baseline,
        }
        if chosen:  # the source declares none: geoprep filled pixels past its footprint
            provenance["nodata_chosen"] = True
        return SceneRead(
            self._records(sensor, slot, spec, grids, arrays, nodatas, scales, provenance)
        )

    def _map(self, read: Callable[[str], Patch], assets: list[str]) -> list[Patch]:
        """`read` of every asset, on the asset threads if there are any (in order; the first
        failure in that order is raised, as a loop would)."""
        if self.asset_threads <= 1 or len(assets) <= 1:
            return [read(asset) for asset in assets]
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.asset_threads, initializer=self.cache.enter_for_thread
                    )
        return list(self._pool.map(read, assets))

    def close(self) -> None:
        """Stop the asset threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def mask_asset(self, spec: SensorSpec) -> str | None:
        return spec.mask_asset or DEFAULT_MASK_ASSETS.get(spec.collection)

    def location_grids(
        self, row: Mapping[str, Any], candidates: Mapping[str, list[pystac.Item]]
    ) -> dict[str, AssetGrids]:
        """Per sensor, each asset's target grid and resolution group (None: common layout).

        In the native layout the groups are laid out once for all sensors together, from the
        native gsds of their assets (taken from the first candidate that has each asset): a
        group such as "10m" then has one grid whichever sensor fills it (Sentinel-1's 10 m
        must share Sentinel-2's corner, which snaps to 60 m), as the sample's `grids` require.
        """
        grid_spec = self.imagery.grid
        lat, lon = float(row["lat"]), float(row["lon"])
        wanted = {
            sensor: list(dict.fromkeys([*spec.assets, *filter(None, [self.mask_asset(spec)])]))
            for sensor, spec in self.imagery.sensors.items()
        }
        if grid_spec.layout == "common":
            grid = TargetGrid.around(lat, lon, grid_spec.gsd, grid_spec.size)
            return {
                sensor: dict.fromkeys(assets, (grid, None)) for sensor, assets in wanted.items()
            }
        gsds: dict[tuple[str, str], float] = {}
        signed: dict[tuple[str, str], pystac.Item] = {}
        for sensor, assets in wanted.items():
            spec = self.imagery.sensors[sensor]
            for asset in assets:
                item = next((i for i in candidates.get(sensor, []) if asset in i.assets), None)
                if item is None:
                    continue
                # signed: without a resolution in the metadata the file header is read
                key = (sensor, item.id)
                if key not in signed:
                    signed[key] = self._sign(spec.catalog, item)

                def attempt(resign, key=key, item=item, asset=asset, catalog=spec.catalog) -> float:
                    if resign:
                        signed[key] = self.catalogs[catalog].sign(item, fresh=True)
                    return asset_gsd(signed[key], asset, cache=self.cache)

                gsds[sensor, asset] = self._retried(attempt, item.assets[asset].href)
        grids: dict[str, AssetGrids] = {sensor: {} for sensor in wanted}
        if not gsds:
            return grids
        keyed = {f"{sensor}/{asset}": gsd for (sensor, asset), gsd in gsds.items()}
        for name, (grid, members) in native_groups(grid_spec, keyed, lat, lon).items():
            for member in members:
                sensor, _, asset = member.partition("/")
                grids[sensor][asset] = (grid, name)
        return grids

    def _records(self, sensor, slot, spec, grids, arrays, nodatas, scales, provenance):
        """One image per sensor (common layout) or per resolution group (native layout)."""
        groups: dict[tuple[TargetGrid, str | None], list[str]] = {}
        for asset in spec.assets:
            groups.setdefault(grids[asset], []).append(asset)
        records = []
        for (grid, group), assets in groups.items():
            stack = np.concatenate([arrays[a] for a in assets], axis=0)
            bands = [
                a if arrays[a].shape[0] == 1 else f"{a}_{i}"
                for a in assets
                for i in range(arrays[a].shape[0])
            ]
            scale = [s for a in assets for s in _per_band(scales[a][0], arrays[a].shape[0])]
            offset = [o for a in assets for o in _per_band(scales[a][1], arrays[a].shape[0])]
            records.append(
                ImageRecord(
                    sensor=sensor,
                    slot=slot.name,
                    array=stack,
                    grid=grid.to_json(),
                    bands=bands,
                    nodata=nodatas[assets[0]],
                    group=group,
                    provenance=provenance | {"scale": scale, "offset": offset},
                )
            )
        return records


def _per_band(values: list[float], bands: int) -> list[float]:
    return list(values) if len(values) == bands else [values[0] if values else 1.0] * bands


def _iso(when) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when is not None else None

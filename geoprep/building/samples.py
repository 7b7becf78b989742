"""One location → one sample: its recording, its imagery, its fMoW sequence and its JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pystac

from geoprep.building.audio import AudioMaker
from geoprep.building.catalogs import Catalog
from geoprep.building.fmow import FmowImageReader, slot_entries
from geoprep.building.imagery import ImageryReader, LocationPlan
from geoprep.building.location import LocationFailed
from geoprep.building.raster import DatasetCache
from geoprep.building.scenes import Slot
from geoprep.recipe.model import Recipe
from geoprep.shards.records import ImageRecord, SampleRecord
from geoprep.shards.schema import sample_meta


class SampleBuilder:
    """Builds samples for locations of one recipe; safe to share between I/O threads."""

    def __init__(
        self,
        recipe: Recipe,
        catalogs: Mapping[str, Catalog],
        cache: DatasetCache,
        audio: AudioMaker | None = None,
        fmow: FmowImageReader | None = None,
    ):
        self.digest = recipe.digest()  # once: every sample's json carries it
        self.catalogs = catalogs
        self.imagery = ImageryReader(recipe, catalogs, cache) if recipe.imagery else None
        self.audio, self.fmow = audio, fmow

    def build(
        self,
        row: Mapping[str, Any],
        slots: list[Slot],
        candidates: Mapping[str, list[pystac.Item]],
    ) -> SampleRecord:
        """The sample of one location; raises LocationFailed when it cannot be completed."""
        draft = self.start(row, slots, candidates)
        outcomes = self.imagery.read_slots(draft.imagery) if draft.imagery is not None else {}
        return self.finish(draft, outcomes)

    # A build reads a shard in three steps, so that the slots of all its locations can be read
    # in the order of their scenes: `start` each location, `slot_images` of each slot, `finish`.
    def start(
        self,
        row: Mapping[str, Any],
        slots: list[Slot],
        candidates: Mapping[str, list[pystac.Item]],
    ) -> Draft:
        """A location's recording and its imagery plan (no pixels read yet)."""
        extras: dict[str, bytes] = {}
        audio_meta = None
        if self.audio is not None:  # first: a bad recording fails before any image is read
            extras, audio_meta = self.audio.make(row)
        plan = None
        if self.imagery is not None:
            plan = self.imagery.prepare(row, slots, candidates)
        return Draft(row, slots, extras, audio_meta, plan)

    def slot_images(self, draft: Draft, slot: Slot) -> list[ImageRecord]:
        return self.imagery.slot_images(draft.imagery, slot)

    def finish(
        self, draft: Draft, outcomes: Mapping[str, list[ImageRecord] | Exception]
    ) -> SampleRecord:
        """The sample from its slots' outcomes (raises the failure that ends it)."""
        row, slots = draft.row, draft.slots
        skipped: dict[str, LocationFailed] = {}
        images = []
        if self.imagery is not None:
            images = self.imagery.collect(draft.imagery, outcomes, skipped)
        slot_meta = {slot.name: slot.to_json() for slot in slots if slot.name not in skipped}
        if self.fmow is not None:
            sequence = self.fmow.images(row)
            images += sequence
            for name, entry in slot_entries(sequence).items():
                slot_meta.setdefault(name, entry)
        skipped_slots = None
        if self.imagery is not None and self.imagery.min_found() is not None:
            skipped_slots = {
                name: {"reason": failure.reason, "detail": failure.detail}
                for name, failure in skipped.items()
            }
        meta = sample_meta(
            row, slot_meta, self.digest, skipped_slots=skipped_slots, audio=draft.audio_meta
        )
        return SampleRecord(key=str(row["id"]), meta=meta, images=images, extras=draft.extras)


@dataclass(frozen=True)
class Draft:
    """A location between `SampleBuilder.start` and `finish`."""

    row: Mapping[str, Any]
    slots: list[Slot]
    extras: dict[str, bytes]
    audio_meta: dict[str, Any] | None
    imagery: LocationPlan | None

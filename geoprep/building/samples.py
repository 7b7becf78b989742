"""One location → one sample: its recording, its imagery, its fMoW sequence and its JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pystac

from geoprep.building.audio import AudioMaker
from geoprep.building.catalogs import Catalog
from geoprep.building.fmow import FmowImageReader, slot_entries
from geoprep.building.imagery import ImageryReader
from geoprep.building.location import LocationFailed
from geoprep.building.raster import DatasetCache
from geoprep.building.scenes import Slot
from geoprep.recipe.model import Recipe
from geoprep.shards.records import SampleRecord
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
        extras: dict[str, bytes] = {}
        audio_meta = None
        if self.audio is not None:  # first: a bad recording fails before any image is read
            extras, audio_meta = self.audio.make(row)
        skipped: dict[str, LocationFailed] = {}
        images = []
        if self.imagery is not None:
            images = self.imagery.images(row, slots, candidates, skipped)
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
            row, slot_meta, self.digest, skipped_slots=skipped_slots, audio=audio_meta
        )
        return SampleRecord(key=str(row["id"]), meta=meta, images=images, extras=extras)

"""The build stage: planned locations → scenes → co-registered patches, audio, fMoW → shards.

(Named `building`, not `build`, so that the public function `geoprep.build` is never hidden by
the subpackage of the same name.)
"""

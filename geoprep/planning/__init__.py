"""The plan stage: samplers, geo-clusters and splits → locations.parquet and clusters.parquet.

(Named `planning`, not `plan`: a subpackage becomes an attribute of `geoprep` when imported and
would hide the public function `geoprep.plan`.)
"""

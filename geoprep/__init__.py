"""geoprep: plan, fetch and shard Earth-observation data for self-supervised pretraining.

The public API (what users and geossl import; every other module is internal):

    load_recipe, plan, build            recipe → locations → shards
    load_settings, validate_settings    any YAML of typed settings (geossl's configs), --set, errors
    inspect_dataset                     check a built dataset and compute its band statistics
    open_dataset, shard_urls            a dataset's tars, streamed as `Sample`s
    tar_members, UnsafeShardError       one shard's members, read as untrusted input
    decoder, Sample, GeoArray           decode WebDataset members, keeping georeferencing

Inside, one folder per stage in data-flow order: core/, recipe/, planning/, building/, shards/
(the on-disk contract), inspect/, report/, and demo/ (README: "Development").
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("geoprep")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

# name → module. Resolved on first use: the build side imports rasterio, GDAL and dask, which a
# training process that only reads shards should not pay for.
_PUBLIC = {
    "load_recipe": "geoprep.recipe.load",
    "load_settings": "geoprep.recipe.load",
    "validate_settings": "geoprep.recipe.load",
    "plan": "geoprep.planning.plan",
    "build": "geoprep.building.build",
    "inspect_dataset": "geoprep.inspect.dataset",
    "open_dataset": "geoprep.reader",
    "shard_urls": "geoprep.shards.listing",
    "tar_members": "geoprep.shards.untrusted",
    "UnsafeShardError": "geoprep.shards.untrusted",
    "decoder": "geoprep.reader",
    "Sample": "geoprep.reader",
    "GeoArray": "geoprep.reader",
    "SampleError": "geoprep.reader",
    "UserError": "geoprep.core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'geoprep' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

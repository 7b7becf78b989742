"""geoprep: plan, fetch and shard Earth-observation data for self-supervised pretraining."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoprep")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]

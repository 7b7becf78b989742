"""Benchmarks of geoprep against the usual ways of doing the same work (see README.md)."""

"""The demo world: an offline stand-in for every real source."""

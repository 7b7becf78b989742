"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (recipe, paths, arguments), reported without a traceback."""

    exit_code = 2


class SourceError(Exception):
    """A remote or local data source answered in a way we cannot use (after retries)."""

    exit_code = 1

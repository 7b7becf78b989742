"""Errors the CLI reports as one line, and the exit codes it uses (README: "Exit codes")."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (recipe, paths, arguments), reported without a traceback."""

    exit_code = 2


class SourceError(Exception):
    """A remote or local data source answered in a way we cannot use (after retries)."""

    exit_code = 1


class DiskFullError(Exception):
    """The output's file system is full: one line naming the device and the file, exit 1."""

    exit_code = 1


#: `geoprep inspect` read the dataset but found problems in it (not a source failure, not a
#: mistake in the command).
DATA_PROBLEMS_EXIT_CODE = 3

#: `geoprep build` ended but some shards are not written: their locations failed for transient
#: reasons (after retries); running the same command again builds them.
INCOMPLETE_EXIT_CODE = 1

#: Interrupted (Ctrl-C); nothing is committed after the signal.
INTERRUPTED_EXIT_CODE = 130

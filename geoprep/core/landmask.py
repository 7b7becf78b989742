"""The global_land_mask package's 1 km ocean mask, streamed row band by row band."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format


@contextmanager
def ocean_mask_rows() -> Iterator[tuple[int, int, IO[bytes]]]:
    """(rows, cols, stream) of the mask: `cols` bytes per row, True = ocean, the first row the
    northernmost (90° N), the first column 180° W.

    Importing the package unpacks the whole 0.9 GB array; reading the `.npz` member as a stream
    lets callers downsample a band of rows at a time. ImportError without the package,
    ValueError for a layout other than a C-ordered boolean array.
    """
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("global_land_mask is not installed")
    npz = Path(list(spec.submodule_search_locations)[0]) / "globe_combined_mask_compressed.npz"
    with zipfile.ZipFile(npz) as archive, archive.open("mask.npy") as stream:
        version = npy_format.read_magic(stream)
        read_header = (
            npy_format.read_array_header_1_0
            if version == (1, 0)
            else npy_format.read_array_header_2_0
        )
        (rows, cols), fortran, dtype = read_header(stream)
        if fortran or dtype != np.dtype(bool):
            raise ValueError("unexpected land mask layout")
        yield rows, cols, stream

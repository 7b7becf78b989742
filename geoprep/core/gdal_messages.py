"""GDAL's own messages (CPL_DEBUG, warnings, errors) routed through Python logging, redacted.

rasterio relays GDAL's messages to logging only inside its own environments and threads; the
rest (e.g. `GDALClose(/vsicurl/https://…?sig=…)` when a cached dataset closes, or anything with
CPL_DEBUG=ON in an I/O thread) goes through GDAL's default handler straight to stderr, SAS token
included. `route_gdal_messages` installs a process-wide GDAL error handler that sends every
message to the `gdal` logger with the query string of every URL removed.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from geoprep.core.signing import redact

log = logging.getLogger("gdal")

# CPLErr: CE_None, CE_Debug, CE_Warning, CE_Failure, CE_Fatal
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR}
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)
_installed: list = []  # keeps the ctypes callback alive as long as GDAL may call it


def _handle(level: int, number: int, message: bytes | None) -> None:
    text = redact((message or b"").decode("utf-8", "replace"))
    log.log(_LEVELS.get(level, logging.CRITICAL), "%s", text)


def gdal_library() -> ctypes.CDLL | None:
    """The libgdal rasterio loaded in this process (found in /proc/self/maps), if any."""
    import rasterio  # noqa: F401  (loads libgdal)

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps if "/libgdal" in line}
    return ctypes.CDLL(sorted(paths)[0]) if paths else None


def route_gdal_messages() -> bool:
    """Install the redacting handler once per process; False where libgdal cannot be found."""
    if _installed:
        return True
    library = gdal_library()
    if library is None:
        return False
    callback = _HANDLER_TYPE(_handle)
    library.CPLSetErrorHandler.argtypes = [_HANDLER_TYPE]
    library.CPLSetErrorHandler.restype = ctypes.c_void_p
    library.CPLSetErrorHandler(callback)
    _installed.append(callback)
    return True

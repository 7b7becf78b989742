"""GDAL's debug messages (CPL_DEBUG=ON) reach logging, never stderr, and carry no SAS token."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from geoprep.building.grid import TargetGrid
from geoprep.building.raster import DatasetCache, read_patch
from geoprep.core.gdal_messages import route_gdal_messages

TOKEN = "sv=2021-06-08&se=2030-01-01T00%3A00%3A00Z&sp=r&sig=SeCrEtSiGnAtUrE%3D"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the server's own access log is not under test
        pass


@pytest.fixture
def served_cog(tmp_path: Path) -> Iterator[str]:
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32633", "transform": from_origin(500000, 5300000, 10, 10)}
    with rasterio.open(tmp_path / "scene.tif", "w", tiled=True, **profile) as dataset:
        dataset.write(np.full((1, 64, 64), 9, np.uint8))
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/scene.tif?{TOKEN}"
    server.shutdown()
    server.server_close()


def test_gdal_debug_lines_are_logged_without_the_token(
    served_cog: str, monkeypatch, caplog, capfd
) -> None:
    assert route_gdal_messages()
    monkeypatch.setenv("CPL_DEBUG", "ON")
    caplog.set_level(logging.DEBUG)
    grid = TargetGrid(32633, Affine(10, 0, 500100, 0, -10, 5299900), 16, 16)
    with DatasetCache(max_open=1) as cache:  # in an I/O thread, as builds read
        patch = threading.Thread(
            target=read_patch, args=(served_cog, grid), kwargs={"cache": cache}
        )
        patch.start()
        patch.join()
    assert (read_patch(served_cog, grid).array == 9).all()
    gdal_lines = [r.getMessage() for r in caplog.records if r.name == "gdal"]
    assert any("scene.tif" in line for line in gdal_lines), gdal_lines  # the lines are there
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, *gdal_lines):
        assert "SeCrEt" not in text and "sig=" not in text

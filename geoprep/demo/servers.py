"""Serves a demo world on loopback: blob store, SAS tokens, STAC API and optional stand-ins."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType

from geoprep.core.errors import UserError
from geoprep.demo.file_server import FileServer
from geoprep.demo.sas_server import SasTokenServer
from geoprep.demo.stac_server import StacApiServer

log = logging.getLogger(__name__)

__all__ = [
    "FileServer",
    "OPTIONAL_SERVICES",
    "OptionalService",
    "SasTokenServer",
    "StacApiServer",
    "WorldServices",
    "gdal_http_env",
    "serve_forever",
    "serve_world",
]


def gdal_http_env(proxy_url: str) -> dict[str, str]:
    """GDAL settings for reading COGs over HTTP, with the blob hosts routed to `proxy_url`."""
    return {
        "GDAL_HTTP_PROXY": proxy_url,
        # Opening a COG must not list directories or probe sidecar files: each is a request.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "VSI_CACHE": "TRUE",
    }


@dataclass(frozen=True)
class OptionalService:
    """A stand-in served only when its module exists and the world has its part directory.

    `launch(module, part_dir)` returns a context manager that runs the stand-in and yields the
    URL a client configures; `usage` tells how (formatted with `url`).
    """

    part: str
    module: str
    title: str
    usage: str
    launch: Callable[[ModuleType, Path], AbstractContextManager[str]]


@contextmanager
def _launch_overpass(module: ModuleType, part_dir: Path) -> Iterator[str]:
    from geoprep.planning.osm_pbf import read_pbf_features

    extracts = sorted(part_dir.glob("*.osm.pbf"))
    if not extracts:
        raise UserError(f"{part_dir} holds no .osm.pbf extract for the Overpass stand-in")
    features = []
    for extract in extracts:
        found, _ = read_pbf_features(extract, _tags_in(extract))
        features.extend(found)
    with module.OverpassStandIn(features) as stand_in:
        yield stand_in.interpreter_url


def _tags_in(extract: Path) -> set[tuple[str, str]]:
    """Every tag on the extract's ways and relations, so that every area is served."""
    import osmium

    tags: set[tuple[str, str]] = set()
    for obj in osmium.FileProcessor(str(extract), osmium.osm.WAY | osmium.osm.RELATION):
        tags.update((tag.k, tag.v) for tag in obj.tags)
    return tags


@contextmanager
def _launch_archive(module: ModuleType, part_dir: Path) -> Iterator[str]:
    # The items may sit directly in the part directory or in one folder below it.
    candidates = [part_dir, *sorted(p for p in part_dir.iterdir() if p.is_dir())]
    for root in candidates:
        if any(root.glob(f"*/{module.METADATA_FILE}")):
            break
    else:
        raise UserError(f"{part_dir} holds no archive.org items (*/{module.METADATA_FILE})")
    with module.ArchiveStandIn(root) as stand_in:
        yield stand_in.proxy_url


OPTIONAL_SERVICES: tuple[OptionalService, ...] = (
    OptionalService(
        part="osm",
        module="geoprep.demo.overpass_server",
        title="Overpass API",
        usage="osm sampler: endpoint: {url}",
        launch=_launch_overpass,
    ),
    OptionalService(
        part="aporee",
        module="geoprep.demo.archive_server",
        title="archive.org",
        usage="aporee sampler: proxy: {url}, secure: false (an HTTP proxy)",
        launch=_launch_archive,
    ),
)


@dataclass
class WorldServices:
    """Where a served world answers, and the environment a client needs to use it."""

    world_dir: Path
    blob_url: str
    sas_token_url: str
    stac_url: str
    optional: dict[str, str] = field(default_factory=dict)
    file_server: FileServer | None = field(default=None, repr=False)
    sas_server: SasTokenServer | None = field(default=None, repr=False)
    stac_server: StacApiServer | None = field(default=None, repr=False)

    @property
    def overpass_url(self) -> str | None:
        return self.optional.get("osm")

    @property
    def archive_proxy_url(self) -> str | None:
        return self.optional.get("aporee")

    def env(self) -> dict[str, str]:
        """`PC_SDK_SAS_URL` for the signing SDK and GDAL's routing and COG settings."""
        return {"PC_SDK_SAS_URL": self.sas_token_url, **gdal_http_env(self.blob_url)}

    def describe(self) -> list[str]:
        lines = [
            f"world          {self.world_dir}",
            f"STAC API       {self.stac_url}",
            f"SAS tokens     {self.sas_token_url}",
            f"blob store     {self.blob_url}  (proxy for *.blob.core.windows.net)",
        ]
        for service in OPTIONAL_SERVICES:
            if service.part in self.optional:
                url = self.optional[service.part]
                lines.append(f"{service.title:<14} {url}")
                lines.append(f"{'':<14} recipe: {service.usage.format(url=url)}")
        lines.append("")
        lines.append("environment for clients (pystac-client, planetary_computer, rasterio):")
        lines.extend(f"export {name}={shlex.quote(value)}" for name, value in self.env().items())
        return lines


def _optional_services(world_dir: Path) -> list[tuple[OptionalService, ModuleType]]:
    available = []
    for service in OPTIONAL_SERVICES:
        if not (world_dir / service.part).is_dir():
            continue
        if importlib.util.find_spec(service.module) is None:
            log.info("world part %s has no stand-in module %s", service.part, service.module)
            continue
        available.append((service, importlib.import_module(service.module)))
    return available


@contextmanager
def serve_world(
    world_dir: str | Path,
    stac_settings: dict[str, str] | None = None,
    sas_lifetime_s: float = 45 * 60,
) -> Iterator[WorldServices]:
    """Serve `world_dir` (made by `geoprep demo-world`) until the block ends, then stop it all."""
    world = Path(world_dir).resolve()
    blobs = world / "blobs"
    catalog = world / "stac" / "pc" / "catalog.json"
    for needed in (blobs, catalog):
        if not needed.exists():
            raise UserError(
                f"{needed} is missing: {world} is not a demo world (make one with "
                "`geoprep demo-world OUT`)"
            )
    # One key shared by token minting and the blob store, so only minted tokens open blobs.
    signing_key = os.urandom(32)
    with ExitStack() as stack:
        file_server = stack.enter_context(FileServer(blobs, signing_key=signing_key))
        sas_server = stack.enter_context(
            SasTokenServer(signing_key=signing_key, lifetime=timedelta(seconds=sas_lifetime_s))
        )
        stac_server = stack.enter_context(StacApiServer(catalog, settings=stac_settings))
        optional = {
            service.part: stack.enter_context(service.launch(module, world / service.part))
            for service, module in _optional_services(world)
        }
        services = WorldServices(
            world_dir=world,
            blob_url=file_server.url,
            sas_token_url=sas_server.token_url,
            stac_url=stac_server.url,
            optional=optional,
            file_server=file_server,
            sas_server=sas_server,
            stac_server=stac_server,
        )
        log.info("serving world %s: STAC API %s", world, services.stac_url)
        yield services


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve_forever(
    world_dir: str | Path,
    echo: Callable[[str], None] = _write_line,
    stop: threading.Event | None = None,
) -> None:
    """Serve the world, announce URLs and exports through `echo`, and block until stopped.

    Stops on Ctrl-C, on SIGTERM (when called from the main thread) or when `stop` is set.
    """
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with serve_world(world_dir) as services:
            for line in services.describe():
                echo(line)
            echo("")
            echo("serving; press Ctrl-C to stop")
            try:
                # A timed wait keeps the main thread responsive to Ctrl-C.
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        echo("stopped")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

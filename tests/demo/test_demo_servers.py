"""The demo world's loopback servers: blob store with SAS checks, token service, STAC API."""

from __future__ import annotations

import http.client
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import planetary_computer
import pystac
import pytest
import rasterio
import requests
from affine import Affine
from pystac_client import Client
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from shapely.geometry import Polygon

from geoprep.core.errors import UserError
from geoprep.demo import file_server
from geoprep.demo.archive_server import ItemFile, write_item
from geoprep.demo.file_server import FileServer, port_is_open
from geoprep.demo.osm_pbf_writer import write_pbf
from geoprep.demo.sas_server import SasTokenServer, mint_token
from geoprep.demo.servers import serve_forever, serve_world
from geoprep.planning.overpass import OsmFeature

S2 = ("sentinel-2-l2a", "sentinel2l2a01", "sentinel2-l2")
LANDSAT = ("landsat-c2-l2", "landsateuwest", "landsat-c2")
NO_PROXY = {"http": "", "https": ""}

# id, (collection, account, container), west, south, datetime, eo:cloud_cover
ITEMS = [
    ("S2A_T32TMR_20240601", S2, 9.0, 45.0, "2024-06-01T10:30:00Z", 5.0),
    ("S2B_T32TMR_20240715", S2, 9.0, 45.0, "2024-07-15T10:30:00Z", 60.0),
    ("LC09_196029_20240620", LANDSAT, 12.0, 48.0, "2024-06-20T09:50:00Z", 15.0),
]
FOREST = OsmFeature(
    "way", 7, {"landuse": "forest"}, Polygon([(9.01, 45.01), (9.02, 45.01), (9.02, 45.02)])
)
RECORDING = "aporee_1234_5678"
SOUND = ItemFile("rec.mp3", b"ID3 not really audio")
PIXEL_DEG = 0.0005
SIZE = 512


def _write_cog(path: Path, west: float, north: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 10_000, (SIZE, SIZE), dtype=np.uint16)
    profile = {
        "driver": "COG",
        "width": SIZE,
        "height": SIZE,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:4326",
        "transform": Affine(PIXEL_DEG, 0.0, west, 0.0, -PIXEL_DEG, north),
        "blocksize": 128,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _blob_href(account: str, container: str, blob: str) -> str:
    return f"http://{account}.blob.core.windows.net/{container}/{blob}"


def build_world(out: Path) -> Path:
    """A tiny world in the demo layout: COGs under blobs/ and a PC-shaped static catalog."""
    catalog = pystac.Catalog(id="demo-pc", description="tiny demo catalog")
    collections: dict[str, pystac.Collection] = {}
    for seed, (item_id, (collection_id, account, container), west, south, when, cloud) in enumerate(
        ITEMS
    ):
        blob = f"{item_id[:3]}/{when[:10].replace('-', '/')}/{item_id}_B04.tif"
        north = south + SIZE * PIXEL_DEG
        east = west + SIZE * PIXEL_DEG
        _write_cog(out / "blobs" / account / container / blob, west, north, seed)
        if collection_id not in collections:
            collections[collection_id] = pystac.Collection(
                id=collection_id,
                description=collection_id,
                extent=pystac.Extent(
                    pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                    pystac.TemporalExtent([[datetime(2024, 1, 1, tzinfo=UTC), None]]),
                ),
                license="proprietary",
            )
            catalog.add_child(collections[collection_id])
        bbox = [west, south, east, north]
        item = pystac.Item(
            id=item_id,
            geometry={
                "type": "Polygon",
                "coordinates": [
                    [[west, south], [east, south], [east, north], [west, north], [west, south]]
                ],
            },
            bbox=bbox,
            datetime=datetime.fromisoformat(when),
            properties={"eo:cloud_cover": cloud, "platform": item_id[:3]},
            collection=collection_id,
            stac_extensions=["https://stac-extensions.github.io/eo/v1.0.0/schema.json"],
        )
        item.add_asset(
            "B04",
            pystac.Asset(
                href=_blob_href(account, container, blob),
                media_type="image/tiff; application=geotiff; profile=cloud-optimized",
                roles=["data"],
            ),
        )
        collections[collection_id].add_item(item)
    for collection in collections.values():
        collection.update_extent_from_items()
    catalog.normalize_hrefs(str(out / "stac" / "pc"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    # The optional parts, served by their own stand-ins.
    (out / "osm").mkdir()
    write_pbf(out / "osm" / "demo.osm.pbf", [FOREST])
    write_item(out / "aporee", RECORDING, {"collection": ["radio-aporee-maps"]}, [SOUND])
    return out


def _local_blob(world: Path, href: str) -> Path:
    host, _, path = href.removeprefix("http://").partition("/")
    return world / "blobs" / host.split(".")[0] / path.split("?")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def services(world: Path):
    with serve_world(world) as served:
        yield served


def _ids(search) -> set[str]:
    return {item.id for item in search.items()}


@pytest.mark.parametrize(
    ("search_args", "expected"),
    [
        ({"bbox": [8.9, 44.9, 9.1, 45.1]}, {"S2A_T32TMR_20240601", "S2B_T32TMR_20240715"}),
        ({"datetime": "2024-06-01/2024-06-30"}, {"S2A_T32TMR_20240601", "LC09_196029_20240620"}),
        ({"collections": ["landsat-c2-l2"]}, {"LC09_196029_20240620"}),
        (
            {
                "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
                "filter_lang": "cql2-json",
            },
            {"S2A_T32TMR_20240601", "LC09_196029_20240620"},
        ),
        (
            {"filter": "eo:cloud_cover >= 10", "filter_lang": "cql2-text"},
            {"S2B_T32TMR_20240715", "LC09_196029_20240620"},
        ),
        (
            {
                "bbox": [8.9, 44.9, 9.1, 45.1],
                "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
                "filter_lang": "cql2-json",
            },
            {"S2A_T32TMR_20240601"},
        ),
    ],
    ids=["bbox", "datetime", "collection", "cql2-json", "cql2-text", "bbox+filter"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_stac_search_returns_exactly_the_matching_items(services, search_args, expected, method):
    client = Client.open(services.stac_url)
    assert _ids(client.search(method=method, **search_args)) == expected


def test_stac_search_pages_through_every_item(services):
    client = Client.open(services.stac_url)
    search = client.search(limit=1, max_items=None)
    pages = list(search.pages())
    assert len(pages) == len(ITEMS)
    assert {item.id for page in pages for item in page.items} == {row[0] for row in ITEMS}


def test_signed_cog_window_reads_like_the_local_file(services, world, pc_sdk):
    client = Client.open(services.stac_url)
    items = list(client.search(collections=["sentinel-2-l2a", "landsat-c2-l2"]).items())
    signed = [planetary_computer.sign(item) for item in items]
    window = Window(100, 200, 150, 120)
    before = len(services.file_server.requests)
    for item in signed:
        href = item.assets["B04"].href
        assert "&sig=" in href and "?st=" in href
        with rasterio.Env(**services.env()), rasterio.open(href) as remote:
            got = remote.read(1, window=window)
        with rasterio.open(_local_blob(world, href)) as local:
            assert np.array_equal(got, local.read(1, window=window))
    # One token per container however many items were signed: the SDK caches them.
    assert pc_sdk.token_requests == {
        "sentinel2l2a01/sentinel2-l2": 1,
        "landsateuwest/landsat-c2": 1,
    }
    served = list(services.file_server.requests)[before:]
    assert served and all(record.status == 206 for record in served if record.method == "GET")
    assert all(record.host.endswith(".blob.core.windows.net") for record in served)


def test_unsigned_cog_read_fails_with_404(services, world):
    blob = "S2A/2024/06/01/S2A_T32TMR_20240601_B04.tif"
    href = _blob_href("sentinel2l2a01", "sentinel2-l2", blob)
    assert _local_blob(world, href).is_file()
    with rasterio.Env(**services.env()), pytest.raises(RasterioIOError, match="404"):
        rasterio.open(href)


def test_short_lived_tokens_are_renewed_on_every_signing(pc_sdk):
    pc_sdk.lifetime = timedelta(seconds=30)  # under the SDK's 60 s renewal margin
    try:
        href = _blob_href("naipeuwest", "naip", "a/b.tif")
        first = planetary_computer.sign_url(href)
        second = planetary_computer.sign_url(href)
    finally:
        pc_sdk.lifetime = timedelta(minutes=45)
    assert pc_sdk.token_requests["naipeuwest/naip"] == 2
    assert first.startswith(href + "?st=") and second.startswith(href + "?st=")


def test_throttled_token_request_is_retried_by_the_sdk(pc_sdk):
    pc_sdk.throttle_next(1)
    signed = planetary_computer.sign_url(_blob_href("naipeuwest", "naip", "x.tif"))
    assert "sig=" in signed
    assert pc_sdk.throttled == 1
    assert pc_sdk.token_requests["naipeuwest/naip"] == 1


def test_token_has_the_real_shape(services):
    response = requests.get(
        f"{services.sas_token_url}/sentinel2l2a01/sentinel2-l2", proxies=NO_PROXY, timeout=5
    )
    body = response.json()
    assert list(body) == ["msft:expiry", "token"]
    token = body["token"]
    assert not token.startswith("?")
    names = [pair.split("=", 1)[0] for pair in token.split("&")]
    assert names == [
        "st",
        "se",
        "sp",
        "sv",
        "sr",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "sig",
    ]
    fields = dict(pair.split("=", 1) for pair in token.split("&"))
    assert fields["se"] == body["msft:expiry"].replace(":", "%3A")
    assert (fields["sp"], fields["sr"], fields["sv"]) == ("rl", "c", "2021-06-08")
    expiry = datetime.fromisoformat(body["msft:expiry"])
    assert timedelta(minutes=44) < expiry - datetime.now(UTC) <= timedelta(minutes=45)
    by_collection = requests.get(
        f"{services.sas_token_url}/sentinel-2-l2a", proxies=NO_PROXY, timeout=5
    )
    assert by_collection.status_code == 200
    assert "sig=" in by_collection.json()["token"]


def test_optional_parts_are_served_by_their_stand_ins(services):
    query = '[out:json];way["landuse"="forest"](45,9,45.1,9.1);out geom;'
    overpass = requests.post(
        services.overpass_url, data={"data": query}, proxies=NO_PROXY, timeout=5
    )
    assert [element["id"] for element in overpass.json()["elements"]] == [FOREST.osm_id]
    metadata = requests.get(
        f"http://archive.org/metadata/{RECORDING}",
        proxies={"http": services.archive_proxy_url},
        timeout=5,
    )
    assert [entry["name"] for entry in metadata.json()["files"]] == [SOUND.name]
    described = "\n".join(services.describe())
    assert f"endpoint: {services.overpass_url}" in described
    assert f"proxy: {services.archive_proxy_url}" in described


# --- the blob store on its own -------------------------------------------------------------

BLOB = "sentinel2l2a01/sentinel2-l2/data/blob.bin"
CONTENT = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("store") / "blobs"
    (root / BLOB).parent.mkdir(parents=True)
    (root / BLOB).write_bytes(CONTENT)
    (root.parent / "secret.txt").write_text("outside the store")
    key = b"k" * 32
    with FileServer(root, signing_key=key) as server:
        yield server, key


def _sas(key: bytes, lifetime: timedelta = timedelta(minutes=45)) -> str:
    token, _ = mint_token(key, "sentinel2l2a01", "sentinel2-l2", lifetime, datetime.now(UTC))
    return token


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=0-99", 206, "bytes 0-99/10240", CONTENT[:100]),
        ("bytes=10200-", 206, "bytes 10200-10239/10240", CONTENT[10200:]),
        ("bytes=-16", 206, "bytes 10224-10239/10240", CONTENT[-16:]),
        ("bytes=10000-99999", 206, "bytes 10000-10239/10240", CONTENT[10000:]),
        ("bytes=10240-", 416, "bytes */10240", None),
        ("bytes=0-9,20-29", 200, None, CONTENT),  # one range only, like Azure
        (None, 200, None, CONTENT),
    ],
)
@pytest.mark.parametrize("in_memory_limit", [None, 1], ids=["read-in-place", "streamed"])
def test_range_requests(
    blob_store, monkeypatch, in_memory_limit, range_header, status, content_range, body
):
    server, _ = blob_store
    if in_memory_limit is not None:  # ranges above the limit go through starlette's FileResponse
        monkeypatch.setattr(file_server, "_IN_MEMORY_RANGE", in_memory_limit)
    headers = {"Range": range_header} if range_header else {}
    url = f"{server.url}/{BLOB}"
    response = requests.get(url, headers=headers, proxies=NO_PROXY, timeout=5)
    assert response.status_code == status
    assert response.headers.get("Content-Range") == content_range
    if body is not None:
        assert response.content == body
        assert int(response.headers["Content-Length"]) == len(body)
        head = requests.head(url, headers=headers, proxies=NO_PROXY, timeout=5)
        assert head.status_code == status and head.content == b""
        assert head.headers["Content-Length"] == str(len(body))
        assert head.headers.get("Content-Range") == content_range


def test_head_etag_and_conditional_get(blob_store):
    server, _ = blob_store
    head = requests.head(f"{server.url}/{BLOB}", proxies=NO_PROXY, timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(CONTENT))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Last-Modified"].endswith("GMT")
    etag = head.headers["ETag"]
    cached = requests.get(
        f"{server.url}/{BLOB}", headers={"If-None-Match": etag}, proxies=NO_PROXY, timeout=5
    )
    assert cached.status_code == 304


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/etc/passwd", "/missing.tif"])
def test_paths_outside_or_missing_are_404(blob_store, path):
    server, _ = blob_store
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path)
    assert connection.getresponse().status == 404
    connection.close()


def _via_proxy(server: FileServer, url: str, **headers: str) -> requests.Response:
    # requests sends absolute-form targets to an http proxy, as GDAL does with GDAL_HTTP_PROXY.
    proxies = {"http": server.url}
    return requests.get(url, headers=headers, proxies=proxies, timeout=5)


def test_blob_host_through_the_proxy_checks_the_sas(blob_store):
    server, key = blob_store
    url = "http://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/data/blob.bin"
    unsigned = _via_proxy(server, url)
    assert unsigned.status_code == 404
    assert "<Error><Code>ResourceNotFound</Code>" in unsigned.text
    assert unsigned.headers["Content-Type"].startswith("application/xml")
    signed = _via_proxy(server, f"{url}?{_sas(key)}", Range="bytes=5-9")
    assert signed.status_code == 206 and signed.content == CONTENT[5:10]
    expired = _via_proxy(server, f"{url}?{_sas(key, timedelta(minutes=-5))}")
    assert expired.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in expired.text
    assert "Signature not valid in the specified time frame" in expired.text
    forged = _via_proxy(server, f"{url}?{_sas(b'other key')}")
    assert forged.status_code == 403 and "Signature did not match" in forged.text
    missing = _via_proxy(server, url.replace("blob.bin", "nope.bin") + "?" + _sas(key))
    assert missing.status_code == 404 and "<Code>BlobNotFound</Code>" in missing.text
    too_far = _via_proxy(server, f"{url}?{_sas(key)}", Range="bytes=99999-")
    assert too_far.status_code == 416 and "<Code>InvalidRange</Code>" in too_far.text


def test_host_header_routes_like_a_proxy_request(blob_store):
    server, key = blob_store
    response = requests.get(
        f"{server.url}/sentinel2-l2/data/blob.bin?{_sas(key)}",
        headers={"Host": "sentinel2l2a01.blob.core.windows.net", "x-ms-range": "bytes=0-3"},
        proxies=NO_PROXY,
        timeout=5,
    )
    assert response.status_code == 206 and response.content == CONTENT[:4]


def test_other_hosts_are_refused_by_the_proxy(blob_store):
    server, _ = blob_store
    assert _via_proxy(server, "http://example.com/data/blob.bin").status_code == 502


# --- lifecycle ------------------------------------------------------------------------------


def test_servers_stop_cleanly(world):
    with serve_world(world) as served:
        ports = [served.file_server.port, served.sas_server.port, served.stac_server.port]
        process = served.stac_server._process
        assert all(port_is_open(port) for port in ports)
    assert not any(port_is_open(port) for port in ports)
    assert process is not None and process.poll() is not None


def test_sas_server_binds_a_given_port():
    with SasTokenServer() as first:
        port = first.port
    with SasTokenServer(port=port) as second:
        assert second.url == f"http://127.0.0.1:{port}"
    assert not port_is_open(port)


def test_serve_forever_announces_and_stops(world):
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve_forever, args=(world, lines.append, stop))
    thread.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("serving;") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    exports = [line for line in lines if line.startswith("export ")]
    stac_line = next(line for line in lines if line.startswith("STAC API"))
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and lines[-1] == "stopped"
    assert any(line.startswith("export PC_SDK_SAS_URL=http://127.0.0.1:") for line in exports)
    assert any(line.startswith("export GDAL_HTTP_PROXY=http://127.0.0.1:") for line in exports)
    stac_port = int(stac_line.rsplit(":", 1)[1])
    assert not port_is_open(stac_port)


def test_serve_forever_stops_on_sigterm_without_leaving_processes(world, serve_run):
    script = (
        "import sys; from geoprep.demo.servers import serve_forever; serve_forever(sys.argv[1])"
    )
    server, lines = serve_run.start([sys.executable, "-c", script, str(world)])
    stac_port = int(next(line for line in lines if line.startswith("STAC API")).split(":")[-1])
    assert requests.get(f"http://127.0.0.1:{stac_port}/", proxies=NO_PROXY, timeout=5).ok
    children = _children(server.pid)
    assert children, "the STAC API runs in a child process"
    serve_run.stop(server, signal.SIGTERM)
    assert not port_is_open(stac_port)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_serving_a_directory_that_is_not_a_world_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a demo world"):
        with serve_world(tmp_path):
            pass

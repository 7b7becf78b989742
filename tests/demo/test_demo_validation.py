"""The generated demo world checked as clients see it: pystac schema validation of both static
catalogs, and the served STAC API and blob store answering like the files on disk."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import planetary_computer
import pystac
import pytest
import rasterio
from pystac.errors import STACValidationError
from pystac.validation import validate_dict
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from pystac_client import Client
from rasterio.windows import Window
from shapely.geometry import box, shape

FLAVOURS = ("pc", "local")
#: The data asset each collection is read through in the range-request check.
READ_ASSETS = {
    "sentinel-2-l2a": "B04",
    "landsat-c2-l2": "red",
    "sentinel-1-rtc": "vv",
    "naip": "image",
}


# --- schema validation -----------------------------------------------------------------------


class OfflineCoreValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator restricted to the schemas pystac ships.

    pystac bundles the core STAC schemas (catalog, collection, item and their GeoJSON and
    common-metadata parts) for one STAC version only, :func:`pystac.get_stac_version` (1.1.0),
    and fetches everything else from the web. Here nothing is fetched:

    * core: a document written as STAC 1.0.0 (as Planetary Computer and the demo world write
      them) is checked against the bundled 1.1.0 core schema with its ``stac_version``
      relabelled. 1.1.0 is a minor, backward-compatible release whose core schemas add
      optional fields; the version constant is the one thing they pin.
    * extensions: their schemas live on stac-extensions.github.io and cannot be fetched here,
      so each extension URL is recorded in :attr:`unchecked` instead of being validated.

    A ``$ref`` to any schema outside the bundle raises ``LookupError`` rather than going out to
    the network, so a passing run really was offline.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checked: Counter[str] = Counter()
        self.unchecked: Counter[str] = Counter()

    def _get_schema(self, schema_uri: str) -> dict:
        if schema_uri not in self.schema_cache:
            raise LookupError(f"schema {schema_uri} is not bundled with pystac")
        return self.schema_cache[schema_uri]

    def validate_core(self, stac_dict, stac_object_type, stac_version, href=None):
        bundled = pystac.get_stac_version()
        relabelled = {**stac_dict, "stac_version": bundled}
        schema = super().validate_core(relabelled, stac_object_type, bundled, href)
        self.checked[str(stac_object_type)] += 1
        return schema

    def validate_extension(
        self, stac_dict, stac_object_type, stac_version, extension_id, href=None
    ):
        self.unchecked[extension_id] += 1
        return None


def _documents(world: Path, flavour: str) -> list[tuple[Path, dict]]:
    paths = sorted((world / "stac" / flavour).rglob("*.json"))
    return [(path, json.loads(path.read_text())) for path in paths]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_written_document_validates_against_the_core_schemas(demo_world, flavour):
    manifest = json.loads((demo_world / "world.json").read_text())
    validator = OfflineCoreValidator()
    documents = _documents(demo_world, flavour)
    for path, document in documents:
        assert document["stac_version"] == "1.0.0", path
        validate_dict(document, href=str(path), validator=validator)
    assert validator.checked == {
        "Catalog": 1,
        "Collection": len(manifest["sensors"]),
        "Feature": manifest["counts"]["items"],
    }
    # What was left unchecked is exactly the extensions the documents declare.
    declared = Counter(url for _, doc in documents for url in doc.get("stac_extensions", []))
    assert validator.unchecked == declared
    assert all(url.startswith("https://") for url in declared)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pystac_objects_read_from_the_catalog_validate(demo_world, flavour):
    """What pystac's own ``validate()`` checks: the objects as pystac reads (and migrates) them."""
    catalog = pystac.Catalog.from_file(str(demo_world / "stac" / flavour / "catalog.json"))
    validator = OfflineCoreValidator()
    objects = [catalog, *catalog.get_children(), *catalog.get_items(recursive=True)]
    for stac_object in objects:
        assert stac_object.validate(validator=validator)
    assert sum(validator.checked.values()) == len(objects)


def _first(world: Path, kind: str) -> tuple[Path, dict]:
    pattern = {"item": "*/*/*.json", "collection": "*/collection.json"}[kind]
    path = sorted((world / "stac" / "pc").glob(pattern))[0]
    return path, json.loads(path.read_text())


def _drop(key: str):
    def mutate(document: dict) -> None:
        del document[key]

    return mutate


def _set(key: str, value, inside: str | None = None):
    def mutate(document: dict) -> None:
        (document[inside] if inside else document)[key] = value

    return mutate


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("item", _drop("geometry")),
        ("item", _drop("assets")),
        ("item", _set("bbox", "all of it")),
        ("item", _set("datetime", None, inside="properties")),
        ("item", _set("links", [{"rel": "self"}])),
        ("item", _set("geometry", {"type": "Polygon", "coordinates": [[0.0, 0.0]]})),
        ("item", _set("assets", {"B04": {"title": "an asset without href"}})),
        ("collection", _drop("extent")),
        ("collection", _set("license", "not a licence id")),
    ],
    ids=[
        "no-geometry",
        "no-assets",
        "bbox-not-array",
        "null-datetime-without-range",
        "link-without-href",
        "geometry-not-geojson",
        "asset-without-href",
        "collection-without-extent",
        "bad-license",
    ],
)
def test_the_validator_rejects_broken_documents(demo_world, kind, mutate):
    path, document = _first(demo_world, kind)
    validate_dict(document, href=str(path), validator=OfflineCoreValidator())
    broken = copy.deepcopy(document)
    mutate(broken)
    with pytest.raises(STACValidationError):
        validate_dict(broken, href=str(path), validator=OfflineCoreValidator())


# --- the served world ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_items(demo_world) -> list[dict]:
    return [doc for _, doc in _documents(demo_world, "pc") if doc["type"] == "Feature"]


def _aoi_box(world: Path, name: str, fractions=(0.0, 0.0, 1.0, 1.0)) -> list[float]:
    """A lon/lat box spanning the given fractions (west, south, east, north) of an AOI."""
    aois = {aoi["name"]: aoi for aoi in json.loads((world / "world.json").read_text())["aois"]}
    west, south, east, north = aois[name]["bounds_lonlat"]
    fw, fs, fe, fn = fractions
    width, height = east - west, north - south
    return [west + fw * width, south + fs * height, west + fe * width, south + fn * height]


def _instant(text: str) -> datetime:
    # Sentinel-1 RTC items carry space-separated start/end times, as Planetary Computer's do.
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _in_interval(item: dict, interval: str) -> bool:
    start_text, end_text = interval.split("/")
    start = _instant(start_text) if start_text != ".." else None
    end = _instant(end_text) if end_text != ".." else None
    properties = item["properties"]
    first = _instant(properties.get("start_datetime") or properties["datetime"])
    last = _instant(properties.get("end_datetime") or properties["datetime"])
    return (start is None or last >= start) and (end is None or first <= end)


def _expected(items, bbox=None, interval=None, cloud_below=None, cloud_at_least=None, coll=None):
    """Ids of the static items a STAC API search with these parameters must return."""
    found = set()
    for item in items:
        cloud = item["properties"].get("eo:cloud_cover")
        if bbox is not None and not shape(item["geometry"]).intersects(box(*bbox)):
            continue
        if interval is not None and not _in_interval(item, interval):
            continue
        # A CQL2 comparison with a property an item lacks is not true, so it is left out.
        if cloud_below is not None and (cloud is None or not cloud < cloud_below):
            continue
        if cloud_at_least is not None and (cloud is None or not cloud >= cloud_at_least):
            continue
        if coll is not None and item["collection"] not in coll:
            continue
        found.add(item["id"])
    return found


def _cloud_filter(op: str, value: float) -> dict:
    return {"filter": {"op": op, "args": [{"property": "eo:cloud_cover"}, value]}}


SEARCHES = {
    "whole-aoi": (lambda w: {"bbox": _aoi_box(w, "bavaria")}, {}),
    # A corner of the AOI: NAIP covers only its centre, swath-edge scenes miss some corners.
    "aoi-corner": (
        lambda w: {"bbox": _aoi_box(w, "iowa", (0.0, 0.9, 0.1, 1.0))},
        {},
    ),
    "datetime": (lambda w: {"datetime": "2019-07-01T00:00:00Z/2019-07-10T00:00:00Z"}, {}),
    "open-datetime": (lambda w: {"datetime": "../2019-06-01T00:00:00Z"}, {}),
    "cql2-json": (
        lambda w: {**_cloud_filter("<", 20), "filter_lang": "cql2-json"},
        {"cloud_below": 20},
    ),
    "cql2-text": (
        lambda w: {"filter": "eo:cloud_cover >= 20", "filter_lang": "cql2-text"},
        {"cloud_at_least": 20},
    ),
    "all-together": (
        lambda w: {
            "bbox": _aoi_box(w, "victoria"),
            "datetime": "2022-01-01T00:00:00Z/2022-12-31T23:59:59Z",
            "collections": ["sentinel-2-l2a", "landsat-c2-l2"],
            **_cloud_filter("<", 50),
            "filter_lang": "cql2-json",
        },
        {"cloud_below": 50},
    ),
}


def _search_expectation(world: Path, items: list[dict], name: str) -> tuple[dict, set[str]]:
    make_args, cloud = SEARCHES[name]
    args = make_args(world)
    expected = _expected(
        items,
        bbox=args.get("bbox"),
        interval=args.get("datetime"),
        coll=args.get("collections"),
        **cloud,
    )
    return args, expected


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_served_search_returns_exactly_the_static_items(
    demo_world, services, static_items, name, method
):
    args, expected = _search_expectation(demo_world, static_items, name)
    # Each case must select something and leave something out, or it tests nothing.
    assert expected and len(expected) < len(static_items), name
    client = Client.open(services.stac_url)
    found = [item.id for item in client.search(method=method, max_items=None, **args).items()]
    assert len(found) == len(set(found))
    assert set(found) == expected


def test_served_search_pages_through_every_item(services, static_items):
    client = Client.open(services.stac_url)
    # Raw pages: pystac objects would be migrated to pystac's own STAC version.
    pages = list(client.search(limit=5, max_items=None).pages_as_dicts())
    assert len(pages) == -(-len(static_items) // 5)
    served = [item for page in pages for item in page["features"]]
    by_id = {item["id"]: item for item in static_items}
    assert sorted(item["id"] for item in served) == sorted(by_id)
    for item in served:
        original = by_id[item["id"]]
        assert item["assets"] == original["assets"]
        # stac-fastapi-static rewrites the common-metadata times as "+00:00" ISO strings (and
        # Sentinel-1's space-separated ones); the instants stay the same.
        times = {"datetime", "start_datetime", "end_datetime", "created", "updated"}
        got, want = item["properties"], original["properties"]
        assert {k: v for k, v in got.items() if k not in times} == {
            k: v for k, v in want.items() if k not in times
        }
        assert {k: _instant(got[k]) for k in times & set(got)} == {
            k: _instant(want[k]) for k in times & set(want)
        }


def _local_asset(world: Path, item: pystac.Item, key: str) -> Path:
    """The same asset through the local catalog, whose hrefs are relative file paths."""
    collection = item.collection_id
    local = world / "stac" / "local" / collection / item.id / f"{item.id}.json"
    href = json.loads(local.read_text())["assets"][key]["href"]
    return (local.parent / href).resolve()


@pytest.mark.parametrize("collection", list(READ_ASSETS))
def test_signed_cog_window_over_http_equals_the_local_file(
    demo_world, services, pc_sdk, collection
):
    key = READ_ASSETS[collection]
    client = Client.open(services.stac_url)
    item = next(client.search(collections=[collection], max_items=1).items())
    signed = planetary_computer.sign(item)
    href = signed.assets[key].href
    assert href.startswith("http://") and ".blob.core.windows.net/" in href and "&sig=" in href
    before = len(services.file_server.requests)
    with rasterio.Env(**services.env()), rasterio.open(href) as remote:
        width, height = remote.width, remote.height
        window = Window(width // 3, height // 4, width // 3, height // 2)
        got = remote.read(window=window)
        profile = (remote.crs, remote.transform, remote.dtypes, remote.nodata)
    with rasterio.open(_local_asset(demo_world, item, key)) as local:
        assert (local.crs, local.transform, local.dtypes, local.nodata) == profile
        assert np.array_equal(got, local.read(window=window))
    assert got.size and np.ptp(got) > 0
    served = list(services.file_server.requests)[before:]
    gets = [record for record in served if record.method == "GET"]
    assert gets and all(record.status == 206 for record in gets)
    assert all(record.host.endswith(".blob.core.windows.net") for record in served)

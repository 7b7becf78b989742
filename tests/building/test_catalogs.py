"""Candidate items from a real STAC API on loopback, from stac-geoparquet and static catalogs."""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import shapely
from planetary_computer import sas as pc_sas
from planetary_computer.settings import Settings as PcSettings
from pystac.utils import str_to_datetime
from shapely.geometry import box, mapping, shape

from geoprep.building.catalogs import (
    KNOWN_CLOUD_COVER,
    GeoParquetCatalog,
    StacApiCatalog,
    StaticCatalog,
    cloud_filter,
    item_from_row,
    open_catalog,
    unsigned_href,
)
from geoprep.building.scenes import Slot, rank, slots_span
from geoprep.core.errors import SourceError, UserError
from geoprep.demo.stac_server import StacApiServer
from geoprep.recipe.sections import CatalogSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stac"
PC_ROOT = "https://planetarycomputer.microsoft.com/api/stac/v1"
S2_BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/32/T/NR"
NAIP_BLOB = "https://naipeuwest.blob.core.windows.net/naip/v002/it/2023"

# id, collection, footprint (w, s, e, n), datetime, eo:cloud_cover (None: the property is absent)
WORLD = [
    ("S2A_A_20240105", "sentinel-2-l2a", (10.0, 45.0, 11.0, 46.0), "2024-01-05T10:20:00Z", 5.0),
    ("S2B_A_20240210", "sentinel-2-l2a", (10.0, 45.0, 11.0, 46.0), "2024-02-10T10:20:00Z", 50.0),
    ("S2A_A_20240315", "sentinel-2-l2a", (10.0, 45.0, 11.0, 46.0), "2024-03-15T10:20:00Z", 20.0),
    ("S2B_A_20240601", "sentinel-2-l2a", (10.0, 45.0, 11.0, 46.0), "2024-06-01T10:20:00Z", 80.0),
    ("S2A_B_20240212", "sentinel-2-l2a", (10.8, 45.0, 11.8, 46.0), "2024-02-12T10:30:00Z", 10.0),
    ("S2B_B_20240320", "sentinel-2-l2a", (10.8, 45.0, 11.8, 46.0), "2024-03-20T10:30:00Z", 30.0),
    ("S2A_C_20240120", "sentinel-2-l2a", (-5.0, 40.0, -4.0, 41.0), "2024-01-20T11:00:00Z", 1.0),
    ("naip_1_20230601", "naip", (10.0, 45.0, 10.5, 45.5), "2023-06-01T16:00:00Z", None),
    ("naip_2_20230701", "naip", (10.4, 45.0, 10.9, 45.5), "2023-07-01T16:00:00Z", None),
    ("naip_1_20210601", "naip", (10.0, 45.0, 10.5, 45.5), "2021-06-01T16:00:00Z", None),
    # A collection with cloud cover that is not in KNOWN_CLOUD_COVER
    ("X1", "optical-x", (10.0, 45.0, 11.0, 46.0), "2024-01-01T00:00:00Z", 5.0),
    ("X2", "optical-x", (10.0, 45.0, 11.0, 46.0), "2024-02-01T00:00:00Z", 40.0),
    ("X3", "optical-x", (10.0, 45.0, 11.0, 46.0), "2024-03-01T00:00:00Z", None),
]
# id, lon, lat
POINTS = [
    ("p1", 10.2, 45.2),  # S2 tile A, both naip footprints of square 1
    ("p2", 10.9, 45.3),  # S2 tiles A and B (overlap)
    ("p3", 11.5, 45.7),  # S2 tile B only
    ("p4", 12.5, 45.5),  # nothing
    ("p5", 10.45, 45.25),  # naip squares 1 and 2 (overlap)
    ("p6", -4.5, 40.5),  # far away: S2 tile C
]
QUERIES = [  # collection, start, end, max_cloud_cover
    ("sentinel-2-l2a", "2024-01-01", "2024-12-31", None),
    ("sentinel-2-l2a", "2024-02-01", "2024-03-31", None),
    ("sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0),
    ("sentinel-2-l2a", "2024-03-15", "2024-03-15", None),  # a single day, both ends inclusive
    ("naip", "2023-01-01", "2023-12-31", 10.0),  # no eo:cloud_cover: the limit does not apply
    ("naip", "2020-01-01", "2024-12-31", None),
]


def pc_item(item_id: str, collection: str, footprint, when: str, cloud: float | None):
    """An item in the Planetary Computer shape (from a real item), moved and re-dated."""
    template = "item_sentinel-2-l2a.json" if collection == "sentinel-2-l2a" else "item_naip.json"
    document = json.loads((FIXTURES / template).read_text())
    document["id"] = item_id
    document["collection"] = collection
    document["geometry"] = mapping(box(*footprint))
    document["bbox"] = list(footprint)
    document["properties"]["datetime"] = when
    document["properties"]["platform"] = item_id[:3] if collection != "naip" else None
    document["properties"] = {k: v for k, v in document["properties"].items() if v is not None}
    document["properties"].pop("eo:cloud_cover", None)
    if cloud is not None:
        document["properties"]["eo:cloud_cover"] = cloud
    blob = S2_BLOB if collection == "sentinel-2-l2a" else NAIP_BLOB
    for key, asset in document["assets"].items():
        if ".blob.core.windows.net" in asset["href"]:
            asset["href"] = f"{blob}/{item_id}/{key}.tif"
    structural = {"self", "root", "parent", "collection"}  # these point at the real API
    document["links"] = [link for link in document["links"] if link["rel"] not in structural]
    return pystac.Item.from_dict(document)


def world_items(world=WORLD) -> list[pystac.Item]:
    return [pc_item(*row) for row in world]


def locations(points=POINTS) -> gpd.GeoDataFrame:
    ids, lons, lats = zip(*points, strict=True)
    return gpd.GeoDataFrame(
        {"id": ids, "lat": lats, "lon": lons}, geometry=gpd.points_from_xy(lons, lats), crs=4326
    )


def expected(collection, start, end, max_cloud, world=WORLD, points=POINTS, platform=None):
    """The answer worked out row by row: footprint contains the point, date and cloud in range."""
    first = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC)
    last = dt.datetime.fromisoformat(end).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    answer = {}
    for point_id, lon, lat in points:
        hits = [
            (str_to_datetime(when), item_id)
            for item_id, coll, footprint, when, cloud in world
            if coll == collection
            and box(*footprint).intersects(shapely.Point(lon, lat))
            and first <= str_to_datetime(when) < last
            and (max_cloud is None or cloud is None or cloud <= max_cloud)
            and (platform is None or item_id.startswith(platform))
        ]
        answer[point_id] = [item_id for _, item_id in sorted(hits)]
    return answer


def ids_of(found: dict[str, list[pystac.Item]]) -> dict[str, list[str]]:
    return {loc: [item.id for item in items] for loc, items in found.items()}


def write_static_catalog(directory: Path, items: list[pystac.Item]) -> Path:
    catalog = pystac.Catalog(id="pc-like", description="PC-shaped items for tests")
    for collection_id in sorted({item.collection_id for item in items}):
        collection = pystac.Collection(
            id=collection_id,
            description=collection_id,
            extent=pystac.Extent(
                pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                pystac.TemporalExtent([[dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None]]),
            ),
            license="proprietary",
        )
        for item in items:
            if item.collection_id == collection_id:
                collection.add_item(item.clone())
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(directory))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return directory / "catalog.json"


def write_geoparquet(
    path: Path, items: list[pystac.Item], layout: str, parts: int = 1, row_group_size: int = 2
) -> None:
    """stac-geoparquet rows: properties flattened to columns; bbox a struct ("current") or a
    list ("legacy"); "json-assets" stores assets and links as JSON strings."""
    rows = []
    for item in items:
        document = item.to_dict(include_self_link=False)
        west, south, east, north = document["bbox"]
        row = {key: document.get(key) for key in ("type", "stac_version", "stac_extensions", "id")}
        row["geometry"] = shapely.to_wkb(shape(document["geometry"]))
        row["bbox"] = (
            {"xmin": west, "ymin": south, "xmax": east, "ymax": north}
            if layout == "current"
            else [west, south, east, north]
        )
        row["links"], row["assets"] = document["links"], document["assets"]
        if layout == "json-assets":
            row["links"], row["assets"] = json.dumps(row["links"]), json.dumps(row["assets"])
        row["collection"] = document["collection"]
        for key, value in document["properties"].items():
            row[key] = str_to_datetime(value) if key == "datetime" else value
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{key: row.get(key) for key in columns} for row in rows]
    path.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // parts)
    for part in range(parts):
        chunk = rows[part * size : (part + 1) * size]
        if chunk:
            table = pa.Table.from_pylist(chunk)
            pq.write_table(table, path / f"part-{part:04d}.parquet", row_group_size=row_group_size)


@pytest.fixture(scope="module")
def static_catalog_json(tmp_path_factory) -> Path:
    return write_static_catalog(tmp_path_factory.mktemp("static"), world_items())


@pytest.fixture(scope="module")
def stac_api(static_catalog_json) -> Iterator[str]:
    with StacApiServer(static_catalog_json) as server:
        yield server.url


def search_bodies(catalog: StacApiCatalog) -> list[dict]:
    """The JSON bodies of the searches the catalog sends from now on."""
    bodies = []

    def record(response, *args, **kwargs):
        if response.request.method == "POST":
            bodies.append(json.loads(response.request.body))

    catalog.client._stac_io.session.hooks["response"].append(record)
    return bodies


# --- STAC API (stac-fastapi-static on loopback) --------------------------------------------


@pytest.mark.parametrize(("collection", "start", "end", "max_cloud"), QUERIES)
def test_stac_api_gives_exactly_the_expected_items(stac_api, collection, start, end, max_cloud):
    catalog = open_catalog(CatalogSpec(kind="stac-api", url=stac_api))
    found = catalog.candidates(locations(), collection, start, end, max_cloud_cover=max_cloud)
    assert ids_of(found) == expected(collection, start, end, max_cloud)


def test_stac_api_pages_and_groups_nearby_locations(stac_api):
    requests_seen = Counter()

    def count(response, *args, **kwargs):
        requests_seen[response.request.method] += 1

    answers = {}
    for page_size, tile_degrees in [(100, 0.5), (1, 0.5), (100, 5.0)]:
        catalog = StacApiCatalog(
            CatalogSpec(kind="stac-api", url=stac_api, page_size=page_size),
            tile_degrees=tile_degrees,
        )
        catalog.client._stac_io.session.hooks["response"].append(count)
        requests_seen.clear()
        found = catalog.candidates(locations(), "sentinel-2-l2a", "2024-01-01", "2024-12-31")
        answers[(page_size, tile_degrees)] = (ids_of(found), requests_seen["POST"])
    want = expected("sentinel-2-l2a", "2024-01-01", "2024-12-31", None)
    assert all(ids == want for ids, _ in answers.values())
    # 0.5 deg tiles: p1 | p2, p5 | p3 | p4 | p6 -> 5 searches; 5 deg tiles: p1-p5 | p6 -> 2.
    assert answers[(100, 0.5)][1] == 5
    assert answers[(100, 5.0)][1] == 2
    # One item a page: every search needs one more page than it has items.
    assert answers[(1, 0.5)][1] > answers[(100, 0.5)][1] + 6


def test_stac_api_keeps_answers_for_later_batches_in_the_same_tiles(stac_api):
    """A build's next shard of locations in the same tiles and time window sends no search, and
    finds the same items as a catalog that searches afresh."""
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    bodies = search_bodies(catalog)
    points = locations()
    first, second = points.iloc[[0, 1, 2]], points.iloc[[1, 2]]
    catalog.candidates(first, "sentinel-2-l2a", "2024-01-01", "2024-12-31")
    sent = len(bodies)
    assert sent == 3  # p1, p2 and p3 lie in three 0.5 deg tiles
    again = catalog.candidates(second, "sentinel-2-l2a", "2024-01-01", "2024-12-31")
    assert len(bodies) == sent  # nothing sent
    fresh = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    assert ids_of(again) == ids_of(
        fresh.candidates(second, "sentinel-2-l2a", "2024-01-01", "2024-12-31")
    )
    catalog.candidates(second, "sentinel-2-l2a", "2023-01-01", "2023-12-31")
    assert len(bodies) == sent + 2  # another window: searched, in both tiles


def test_cloud_filter_is_sent_only_where_items_have_the_property(stac_api):
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    assert catalog.has_cloud_cover("sentinel-2-l2a") and not catalog.has_cloud_cover("naip")
    # Why: a filter on a property the items lack matches nothing.
    search = catalog.client.search(
        collections=["naip"], filter=cloud_filter(50), filter_lang="cql2-json"
    )
    assert list(search.items()) == []
    bodies = search_bodies(catalog)
    found = catalog.candidates(locations(), "naip", "2023-01-01", "2023-12-31", max_cloud_cover=50)
    assert found["p1"] and found["p5"]
    assert bodies and not any("filter" in body for body in bodies)
    bodies.clear()
    catalog.candidates(locations(), "sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0)
    assert bodies and all(body["filter"] == cloud_filter(25.0) for body in bodies)
    assert all(body["filter-lang"] == "cql2-json" for body in bodies)


def test_unknown_collection_filters_cloud_cover_on_the_client(stac_api):
    assert "optical-x" not in KNOWN_CLOUD_COVER
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    found = catalog.candidates(locations(), "optical-x", "2024-01-01", "2024-12-31", 10)
    assert not catalog.has_cloud_cover("optical-x")  # the static API lists no queryables
    assert ids_of(found)["p1"] == ["X1", "X3"]
    assert ids_of(found) == expected("optical-x", "2024-01-01", "2024-12-31", 10)


PLATFORM_A = {"op": "=", "args": [{"property": "platform"}, "S2A"]}


@pytest.mark.parametrize("kind", ["stac-api", "static", "geoparquet"])
def test_extra_filter_is_combined_with_the_cloud_limit(
    kind, stac_api, static_catalog_json, tmp_path
):
    if kind == "geoparquet":
        write_geoparquet(tmp_path / "items.parquet", world_items(), "current")
    url = {"stac-api": stac_api, "static": str(static_catalog_json)}.get(
        kind, str(tmp_path / "items.parquet")
    )
    catalog = open_catalog(CatalogSpec(kind=kind, url=url))
    found = catalog.candidates(
        locations(), "sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0, PLATFORM_A
    )
    assert ids_of(found) == expected(
        "sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0, platform="S2A"
    )
    assert ids_of(found)["p1"] == ["S2A_A_20240105", "S2A_A_20240315"]


def test_collection_missing_from_the_api_is_a_user_error(stac_api):
    catalog = open_catalog(CatalogSpec(kind="stac-api", url=stac_api))
    with pytest.raises(UserError, match="'landsat-c2-l2' is not in the STAC API"):
        catalog.candidates(locations(), "landsat-c2-l2", "2024-01-01", "2024-12-31")


@pytest.mark.parametrize("kind", ["static", "stac-api"])
def test_per_slot_windows_and_the_union_range_give_the_same_ranked_scenes(
    kind, stac_api, static_catalog_json
):
    url = stac_api if kind == "stac-api" else str(static_catalog_json)
    catalog = open_catalog(CatalogSpec(kind=kind, url=url))
    slots = [
        Slot(
            "t0", dt.date(2024, 1, 1), dt.date(2024, 1, 31), dt.date(2024, 1, 16), mode="seasonal"
        ),
        Slot(
            "t1", dt.date(2024, 3, 1), dt.date(2024, 3, 31), dt.date(2024, 3, 16), mode="seasonal"
        ),
    ]
    points = locations()
    by_windows = catalog.candidates_in_windows(
        points, "sentinel-2-l2a", {loc: [s.window for s in slots] for loc in points["id"]}
    )
    by_union = catalog.candidates(points, "sentinel-2-l2a", *slots_span(slots))
    for loc in points["id"]:
        for slot in slots:
            ranked = [i.id for i in rank(slot, by_windows[loc])]
            assert ranked == [i.id for i in rank(slot, by_union[loc])]
    assert [i.id for i in rank(slots[1], by_union["p2"])] == ["S2A_A_20240315", "S2B_B_20240320"]
    assert ids_of(by_windows)["p2"] == ["S2A_A_20240105", "S2A_A_20240315", "S2B_B_20240320"]


@pytest.mark.parametrize("kind", ["static", "stac-api", "geoparquet"])
def test_locations_without_windows_get_no_items(kind, stac_api, static_catalog_json, tmp_path):
    write_geoparquet(tmp_path / "items.parquet", world_items(), "legacy")
    url = {"stac-api": stac_api, "static": str(static_catalog_json)}.get(
        kind, str(tmp_path / "items.parquet")
    )
    catalog = open_catalog(CatalogSpec(kind=kind, url=url))
    year = (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 12, 31, tzinfo=dt.UTC))
    for windows in ({"p1": [], "p2": []}, {"p1": [], "p2": [year]}):
        found = catalog.candidates_in_windows(locations(POINTS[:2]), "sentinel-2-l2a", windows)
        assert found["p1"] == [] and len(found["p2"]) == len(windows["p2"]) * 6


def test_invalid_extra_filter_is_a_user_error(static_catalog_json):
    catalog = open_catalog(CatalogSpec(kind="static", url=str(static_catalog_json)))
    with pytest.raises(UserError, match="not valid CQL2-JSON"):
        catalog.candidates(locations(), "naip", "2023-01-01", "2023-12-31", None, {"op": "<="})


def test_windows_per_location_search_only_those_windows(stac_api):
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    bodies = search_bodies(catalog)
    windows = {
        "p1": [
            (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 10, tzinfo=dt.UTC)),
            (dt.datetime(2024, 5, 25, tzinfo=dt.UTC), dt.datetime(2024, 6, 5, tzinfo=dt.UTC)),
        ],
        "p3": [(dt.datetime(2024, 3, 1, tzinfo=dt.UTC), dt.datetime(2024, 3, 31, tzinfo=dt.UTC))],
    }
    found = catalog.candidates_in_windows(
        locations([p for p in POINTS if p[0] in windows]), "sentinel-2-l2a", windows
    )
    assert ids_of(found) == {"p1": ["S2A_A_20240105", "S2B_A_20240601"], "p3": ["S2B_B_20240320"]}
    assert sorted(body["datetime"] for body in bodies) == [
        "2024-01-01T00:00:00Z/2024-01-10T00:00:00Z",
        "2024-03-01T00:00:00Z/2024-03-31T00:00:00Z",
        "2024-05-25T00:00:00Z/2024-06-05T00:00:00Z",
    ]


def utc(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


def jittered_windows(points, shift_days: int) -> dict[str, list[tuple]]:
    """Two windows per location, moved by a per-batch jitter, as a multi-date recipe's slots."""
    shift = dt.timedelta(days=shift_days)
    return {
        loc: [
            (utc("2024-01-01") + shift, utc("2024-02-11") + shift),
            (utc("2024-03-10") + shift, utc("2024-05-30") + shift),
        ]
        for loc in points["id"]
    }


def test_an_envelope_searches_each_tile_once_for_every_batch(stac_api):
    """Given the build's envelope, batches with other windows in the same tiles send no search,
    and each location gets exactly the items of its own windows (as from searches of its
    windows); an envelope window no batch touches is not searched."""
    envelope = [(utc("2023-12-01"), utc("2024-07-31")), (utc("2025-01-01"), utc("2025-06-30"))]
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    bodies = search_bodies(catalog)
    points = locations()
    batches = [(points.iloc[[0, 1, 2]], 0), (points.iloc[[1, 2, 4]], 6), (points.iloc[[0]], -9)]
    for batch, shift in batches:
        windows = jittered_windows(batch, shift)
        found = catalog.candidates_in_windows(
            batch, "sentinel-2-l2a", windows, 25.0, envelope=envelope
        )
        fresh = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
        alone = fresh.candidates_in_windows(batch, "sentinel-2-l2a", windows, 25.0)
        assert ids_of(found) == ids_of(alone)
    assert ids_of(found) == {"p1": ["S2A_A_20240105", "S2A_A_20240315"]}  # not Feb's, June's
    assert len(bodies) == 3  # p1 | p2, p5 | p3: one search per tile for all three batches
    assert {body["datetime"] for body in bodies} == {"2023-12-01T00:00:00Z/2024-07-31T00:00:00Z"}
    # a window reaching out of the envelope is searched too
    late = {"p1": [(utc("2024-05-20"), utc("2024-08-10"))]}
    found = catalog.candidates_in_windows(
        points.iloc[[0]], "sentinel-2-l2a", late, envelope=envelope
    )
    assert ids_of(found) == {"p1": ["S2B_A_20240601"]}
    assert len(bodies) == 4 and bodies[-1]["datetime"].startswith("2023-12-01T00:00:00Z/2024-08")


def test_a_sparse_tile_searches_its_own_windows_and_reuses_longer_kept_answers(stac_api):
    """Windows filling under a quarter of the envelope are searched as they are (a tile with a
    few locations would otherwise page through years of scenes it does not need); a window
    that a kept answer holds sends nothing."""
    envelope = [(utc("2023-01-01"), utc("2024-12-31"))]
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    bodies = search_bodies(catalog)
    p1 = locations(POINTS[:1])
    few = {"p1": [(utc("2024-03-01"), utc("2024-03-31")), (utc("2024-05-20"), utc("2024-06-10"))]}
    found = catalog.candidates_in_windows(p1, "sentinel-2-l2a", few, envelope=envelope)
    assert ids_of(found) == {"p1": ["S2A_A_20240315", "S2B_A_20240601"]}
    assert sorted(body["datetime"][:10] for body in bodies) == ["2024-03-01", "2024-05-20"]
    dense = {"p1": [(utc("2023-01-01"), utc("2023-09-30"))]}  # over a quarter: the envelope
    catalog.candidates_in_windows(p1, "sentinel-2-l2a", dense, envelope=envelope)
    assert bodies[-1]["datetime"] == "2023-01-01T00:00:00Z/2024-12-31T00:00:00Z"
    sent = len(bodies)
    inside = {"p1": [(utc("2024-01-02"), utc("2024-01-20"))]}  # held by the envelope's answer
    found = catalog.candidates_in_windows(p1, "sentinel-2-l2a", inside, envelope=envelope)
    assert ids_of(found) == {"p1": ["S2A_A_20240105"]} and len(bodies) == sent


def test_a_batch_over_several_tiles_is_matched_once(stac_api, monkeypatch):
    """The footprints of all tiles' answers are matched in one call (pandas costs milliseconds
    a call), with the same items as tile by tile."""
    import geoprep.building.catalogs.stac_api as stac_api_module

    calls = []
    real = stac_api_module.match_footprints

    def counting(points, *args):
        calls.append(len(points))
        return real(points, *args)

    monkeypatch.setattr(stac_api_module, "match_footprints", counting)
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api))
    found = catalog.candidates(locations(), "sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0)
    assert calls == [len(POINTS)]  # six points in five tiles
    assert ids_of(found) == expected("sentinel-2-l2a", "2024-01-01", "2024-12-31", 25.0)


def test_kept_answers_are_bounded_by_their_items(stac_api):
    """The oldest answers go once the kept ones hold more than `kept_items` items."""
    catalog = StacApiCatalog(CatalogSpec(kind="stac-api", url=stac_api), kept_items=6)
    bodies = search_bodies(catalog)
    year = ("2024-01-01", "2024-12-31")
    first, second = locations(POINTS[:1]), locations(POINTS[2:3])  # 4 and 2 items
    for batch in (first, second, first, second):
        catalog.candidates(batch, "sentinel-2-l2a", *year)
    assert len(bodies) == 2  # both answers kept: 6 items
    catalog.candidates(locations(POINTS[5:6]), "sentinel-2-l2a", *year)  # 1 more: p1's goes
    catalog.candidates(second, "sentinel-2-l2a", *year)
    assert len(bodies) == 3
    catalog.candidates(first, "sentinel-2-l2a", *year)
    assert len(bodies) == 4


# --- A Planetary-Computer-shaped stand-in: paging by POST body, 429/503, SAS tokens ---------


class PcStandIn:
    """Real recorded PC answers on loopback: landing page, naip collection, two search pages
    and SAS tokens.

    `failures` answers the next searches with these statuses first; `token_lifetime` sets
    `msft:expiry` (and the token's `se`) relative to now.
    """

    def __init__(self) -> None:
        self.failures: list[int] = []
        self.token_lifetime = dt.timedelta(hours=1)
        self.requests: Counter[str] = Counter()
        self.search_bodies: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> PcStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def token_url(self) -> str:
        return self.url + "/api/sas/v1/token"

    def _loopback(self, text: str) -> str:
        return text.replace(PC_ROOT, self.url + "/api/stac/v1")

    def landing(self) -> dict:
        return json.loads(self._loopback((FIXTURES / "landing.json").read_text()))

    def collection(self) -> dict:
        return json.loads(self._loopback((FIXTURES / "collection_naip.json").read_text()))

    def search_page(self, body: dict) -> dict:
        first = "token" not in body
        page = json.loads(
            self._loopback((FIXTURES / f"search_naip_page{2 - first}.json").read_text())
        )
        if not first:  # the recorded page 2 had a next page; end the search here
            page["links"] = [link for link in page["links"] if link["rel"] != "next"]
        return page

    def token(self) -> dict:
        answer = json.loads((FIXTURES / "sas_token_response.json").read_text())
        expiry = (dt.datetime.now(dt.UTC) + self.token_lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        recorded = answer["msft:expiry"]
        answer["token"] = answer["token"].replace(quote(recorded, safe=""), quote(expiry, safe=""))
        answer["msft:expiry"] = expiry
        return answer

    def _handler(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, document: dict | None = None) -> None:
                body = json.dumps(document or {"code": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                stand_in.requests[path] += 1
                if path.rstrip("/") == "/api/stac/v1":
                    self._answer(200, stand_in.landing())
                elif path == "/api/stac/v1/collections/naip":
                    self._answer(200, stand_in.collection())
                elif path.startswith("/api/sas/v1/token/"):
                    self._answer(200, stand_in.token())
                else:
                    self._answer(404)

            def do_POST(self) -> None:
                stand_in.requests[self.path] += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.search_bodies.append(body)
                if stand_in.failures:
                    self._answer(stand_in.failures.pop(0))
                else:
                    self._answer(200, stand_in.search_page(body))

        return Handler


@pytest.fixture
def pc(monkeypatch) -> Iterator[PcStandIn]:
    with PcStandIn() as stand_in:
        monkeypatch.setenv("PC_SDK_SAS_URL", stand_in.token_url)
        # The SDK reads its settings once and caches tokens per token URL: start clean.
        PcSettings.get.cache_clear()
        pc_sas.TOKEN_CACHE.clear()
        yield stand_in
    PcSettings.get.cache_clear()
    pc_sas.TOKEN_CACHE.clear()


def recorded_naip_items() -> list[pystac.Item]:
    features = []
    for page in (1, 2):
        features += json.loads((FIXTURES / f"search_naip_page{page}.json").read_text())["features"]
    return [pystac.Item.from_dict(feature) for feature in features]


def naip_points() -> list[tuple[str, float, float]]:
    """A point inside each recorded NAIP footprint, and one far from all of them."""
    points = [("out", -72.0, 43.0)]
    for index, item in enumerate(recorded_naip_items()):
        inside = shape(item.geometry).representative_point()
        points.append((f"v{index}", inside.x, inside.y))
    return points


def test_pc_paging_follows_post_body_links_and_retries(pc):
    pc.failures = [503, 429]
    catalog = StacApiCatalog(
        CatalogSpec(kind="stac-api", url=pc.url + "/api/stac/v1", provider="planetary-computer"),
        tile_degrees=5.0,  # all points in one search
        backoff_factor=0.001,
    )
    found = catalog.candidates(locations(naip_points()), "naip", "2010-01-01", "2023-12-31")
    by_footprint = {
        loc: sorted(
            (item.datetime, item.id)
            for item in recorded_naip_items()
            if shape(item.geometry).intersects(shapely.Point(lon, lat))
        )
        for loc, lon, lat in naip_points()
    }
    assert ids_of(found) == {loc: [i for _, i in hits] for loc, hits in by_footprint.items()}
    assert found["out"] == []
    # Items of both pages reached their points.
    assert {i.id for items in found.values() for i in items} == {
        i.id for i in recorded_naip_items()
    }
    assert pc.requests["/api/stac/v1/search"] == 4  # 503, 429, page 1, page 2
    assert pc.search_bodies[-1]["token"] == "next:naip:vt_m_4307307_nw_18_060_20211029"
    assert "filter" not in pc.search_bodies[0]  # naip has no eo:cloud_cover


def test_persistent_server_errors_become_a_source_error(pc):
    pc.failures = [503] * 10
    catalog = StacApiCatalog(
        CatalogSpec(kind="stac-api", url=pc.url + "/api/stac/v1"),
        tile_degrees=5.0,
        retries=2,
        backoff_factor=0.001,
    )
    with pytest.raises(SourceError, match="HTTP 503"):
        catalog.candidates(locations(naip_points()), "naip", "2010-01-01", "2023-12-31")
    assert pc.requests["/api/stac/v1/search"] == 3


def test_pc_signing_fetches_one_token_per_container_and_keeps_items_unsigned(pc):
    catalog = open_catalog(
        CatalogSpec(kind="stac-api", url="https://unused.invalid", provider="planetary-computer")
    )
    items = world_items()
    signed = [catalog.sign(item) for item in items + items]
    token_requests = {path: n for path, n in pc.requests.items() if "/token/" in path}
    assert token_requests == {
        "/api/sas/v1/token/sentinel2l2a01/sentinel2-l2": 1,
        "/api/sas/v1/token/naipeuwest/naip": 1,
    }
    for original, copy_ in zip(items + items, signed, strict=True):
        for key, asset in copy_.assets.items():
            unsigned = original.assets[key].href
            if ".blob.core.windows.net" in unsigned:
                assert asset.href.startswith(unsigned + "?st=") and "sig=" in asset.href
                assert unsigned_href(asset.href) == unsigned
            else:  # tilejson / rendered_preview are API URLs, never signed
                assert asset.href == unsigned


def test_tokens_close_to_expiry_are_renewed(pc):
    pc.token_lifetime = dt.timedelta(seconds=30)  # the SDK renews below 60 s left
    catalog = open_catalog(CatalogSpec(kind="static", url="unused", provider="planetary-computer"))
    item = world_items()[0]
    catalog.sign(item)
    catalog.sign(item)
    # A token with less than a minute left is not kept between items: each signing asks for a
    # fresh one (one per container: the item's hrefs are signed together).
    assert pc.requests["/api/sas/v1/token/sentinel2l2a01/sentinel2-l2"] == 2


def test_without_provider_sign_is_identity():
    catalog = open_catalog(CatalogSpec(kind="static", url="unused"))
    item = world_items()[0]
    assert catalog.sign(item) is item


@pytest.mark.parametrize(
    ("href", "unsigned"),
    [
        ("https://example.com/x.tif", "https://example.com/x.tif"),
        ("https://a.blob.core.windows.net/c/x.tif", "https://a.blob.core.windows.net/c/x.tif"),
        (
            "https://a.blob.core.windows.net/c/x.tif?st=2023-11-21T12%3A03%3A50Z&se=x&sp=rl"
            "&sv=2021-06-08&sr=c&skoid=R&sktid=R&skt=x&ske=x&sks=b&skv=2021-06-08&sig=R",
            "https://a.blob.core.windows.net/c/x.tif",
        ),
        (
            "https://api.example/item/preview.png?collection=naip&sig=abc&assets=image",
            "https://api.example/item/preview.png?collection=naip&assets=image",
        ),
    ],
)
def test_unsigned_href_strips_sas_tokens(href, unsigned):
    assert unsigned_href(href) == unsigned


def test_unsigned_href_of_the_recorded_signed_url():
    signed = (FIXTURES / "signed_href_example.txt").read_text().strip()
    assert unsigned_href(signed) == signed.split("?")[0]
    assert unsigned_href(signed).endswith("_QA.tif")


# --- stac-geoparquet and static catalogs ----------------------------------------------------


@pytest.mark.parametrize("layout", ["current", "legacy", "json-assets"])
@pytest.mark.parametrize(("collection", "start", "end", "max_cloud"), QUERIES)
def test_geoparquet_equals_static_catalog(
    tmp_path, static_catalog_json, layout, collection, start, end, max_cloud
):
    by_collection = {}
    for item in world_items():
        by_collection.setdefault(item.collection_id, []).append(item)
    for collection_id, items in by_collection.items():
        write_geoparquet(tmp_path / f"{collection_id}.parquet", items, layout, parts=2)
    parquet = open_catalog(
        CatalogSpec(kind="geoparquet", url=str(tmp_path / "{collection}.parquet"))
    )
    static = open_catalog(CatalogSpec(kind="static", url=str(static_catalog_json)))
    from_parquet = parquet.candidates(locations(), collection, start, end, max_cloud)
    from_static = static.candidates(locations(), collection, start, end, max_cloud)
    assert (
        ids_of(from_parquet) == ids_of(from_static) == expected(collection, start, end, max_cloud)
    )
    for loc, items in from_parquet.items():
        for got, want in zip(items, from_static[loc], strict=True):
            assert got.datetime == want.datetime
            assert got.properties == want.properties
            assert {k: a.to_dict() for k, a in got.assets.items()} == {
                k: a.to_dict() for k, a in want.assets.items()
            }
            assert shape(got.geometry).equals(shape(want.geometry)) and got.bbox == want.bbox


def test_geoparquet_cache_reads_the_table_once_and_grows_with_the_time_range(tmp_path, monkeypatch):
    write_geoparquet(tmp_path / "all.parquet", world_items(), "current", parts=3)
    catalog = GeoParquetCatalog(CatalogSpec(kind="geoparquet", url=str(tmp_path / "all.parquet")))
    opened = []
    original_open = catalog._open
    monkeypatch.setattr(catalog, "_open", lambda url: opened.append(url) or original_open(url))
    first = catalog.candidates(locations(), "sentinel-2-l2a", "2024-02-01", "2024-03-31")
    again = catalog.candidates(locations()[:2], "sentinel-2-l2a", "2024-02-05", "2024-03-01")
    wider = catalog.candidates(locations(), "sentinel-2-l2a", "2024-01-01", "2024-12-31")
    assert len(opened) == 1
    assert ids_of(first) == expected("sentinel-2-l2a", "2024-02-01", "2024-03-31", None)
    assert ids_of(again) == expected(
        "sentinel-2-l2a", "2024-02-05", "2024-03-01", None, points=POINTS[:2]
    )
    assert ids_of(wider) == expected("sentinel-2-l2a", "2024-01-01", "2024-12-31", None)
    # A file holding several collections: rows of other collections are not candidates.
    naip = catalog.candidates(locations(), "naip", "2020-01-01", "2024-12-31")
    assert ids_of(naip) == expected("naip", "2020-01-01", "2024-12-31", None)


def test_legacy_naip_file_from_stac_geoparquet_2023():
    table = pq.read_table(FIXTURES / "naip_legacy_stac-geoparquet.parquet")
    footprints = {
        row["id"]: shapely.from_wkb(row["geometry"])
        for row in table.select(["id", "geometry"]).to_pylist()
    }
    centres = {item_id: geom.representative_point() for item_id, geom in footprints.items()}
    points = [(item_id.replace("_", "-"), p.x, p.y) for item_id, p in centres.items()]
    catalog = open_catalog(
        CatalogSpec(kind="geoparquet", url=str(FIXTURES / "naip_legacy_stac-geoparquet.parquet"))
    )
    found = catalog.candidates(locations(points), "naip", "2000-01-01", "2030-12-31")
    for (loc, lon, lat), item_id in zip(points, footprints, strict=True):
        inside = sorted(i for i, g in footprints.items() if g.intersects(shapely.Point(lon, lat)))
        assert item_id in inside
        assert sorted(item.id for item in found[loc]) == inside
    item = found[points[0][0]][0]
    assert item.id == "ok_m_3409901_nw_14_1_20100425"
    assert item.datetime == dt.datetime(2010, 4, 25, tzinfo=dt.UTC)
    assert item.bbox == [-100.004084, 34.934259, -99.933454, 35.00323]
    # pystac migrates the projection extension on reading, as pystac-client does for API items.
    assert item.properties["proj:code"] == "EPSG:26914" and item.properties["naip:year"] == "2010"
    assert item.assets["image"].href.startswith("https://naipeuwest.blob.core.windows.net/naip/")
    assert item.assets["image"].extra_fields["eo:bands"][0] == {"common_name": "red", "name": "Red"}
    # Round trip: the rebuilt item serialises as valid STAC JSON and reads back the same.
    assert pystac.Item.from_dict(item.to_dict()).to_dict() == item.to_dict()


def test_item_from_row_reads_a_3d_bbox_struct():
    row = {
        "id": "x",
        "geometry": shapely.to_wkb(box(0, 0, 1, 1)),
        "bbox": {"xmin": 0.0, "ymin": 0.0, "zmin": -5.0, "xmax": 1.0, "ymax": 1.0, "zmax": 9.0},
        "datetime": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        "links": None,
        "assets": {"data": {"href": "s3://b/x.tif", "title": None}},
        "eo:cloud_cover": None,
    }
    item = item_from_row(row)
    assert item.bbox == [0.0, 0.0, -5.0, 1.0, 1.0, 9.0]
    assert item.assets["data"].to_dict() == {"href": "s3://b/x.tif"}
    assert "eo:cloud_cover" not in item.properties


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "static", "url": "{root}/catalog.json"}, "collection 'landsat-c2-l2' is not in"),
        ({"kind": "static", "url": "{root}/nothing.json"}, "not a STAC catalog"),
        ({"kind": "geoparquet", "url": "{root}/missing/{collection}.parquet"}, "cannot read"),
    ],
)
def test_catalog_mistakes_are_user_errors(static_catalog_json, spec, message):
    url = spec["url"].replace("{root}", str(static_catalog_json.parent))
    catalog = open_catalog(CatalogSpec(**{**spec, "url": url}))
    with pytest.raises(UserError, match=message):
        catalog.candidates(locations(), "landsat-c2-l2", "2024-01-01", "2024-12-31")


def test_static_catalog_resolves_relative_asset_hrefs(tmp_path):
    item = world_items()[0]
    item.assets["B04"].href = "./B04.tif"
    catalog_json = write_static_catalog(tmp_path, [item])
    catalog = StaticCatalog(CatalogSpec(kind="static", url=str(catalog_json)))
    found = catalog.candidates(locations(POINTS[:1]), "sentinel-2-l2a", "2024-01-01", "2024-01-31")
    href = found["p1"][0].assets["B04"].href
    assert Path(href).is_absolute() and href.endswith("S2A_A_20240105/B04.tif")


def test_copy_of_items_is_untouched_by_signing(pc):
    catalog = open_catalog(CatalogSpec(kind="static", url="unused", provider="planetary-computer"))
    item = world_items()[0]
    before = copy.deepcopy(item.to_dict())
    catalog.sign(item)
    assert item.to_dict() == before


@pytest.mark.parametrize("layout", ["current", "legacy", "json-assets"])
def test_geoparquet_tells_a_collections_assets(tmp_path, layout):
    """What the build's asset check compares a sensor's `assets` with (no item_assets here)."""
    items = world_items()
    write_geoparquet(tmp_path / "all.parquet", items, layout, parts=2)
    catalog = GeoParquetCatalog(CatalogSpec(kind="geoparquet", url=str(tmp_path / "all.parquet")))
    for collection in sorted({item.collection_id for item in items}):
        first = next(item for item in items if item.collection_id == collection)
        assert catalog.asset_names(collection) == set(first.assets)


def test_legacy_naip_file_tells_its_assets():
    catalog = GeoParquetCatalog(
        CatalogSpec(kind="geoparquet", url=str(FIXTURES / "naip_legacy_stac-geoparquet.parquet"))
    )
    assert "image" in catalog.asset_names("naip")


def test_a_stalled_token_service_fails_the_request_instead_of_hanging(monkeypatch):
    """A token service that accepts the connection and never answers: the SDK's own request has
    no time-out; ours fails within it, as a transient failure the breaker counts."""
    import socket
    import threading
    import time

    from planetary_computer import sas as pc_sas
    from planetary_computer.settings import Settings as PcSettings

    from geoprep.building.catalogs import base as catalog_base
    from geoprep.building.faults import ReadFailure

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/token")
    monkeypatch.setattr(catalog_base, "TOKEN_TIMEOUT_S", (1.0, 1.0))
    PcSettings.get.cache_clear()
    pc_sas.TOKEN_CACHE.clear()
    started = time.monotonic()
    try:
        with pytest.raises(ReadFailure, match="timed out") as failure:
            catalog_base._token("account", "container", fresh=False)
    finally:
        listener.close()
        PcSettings.get.cache_clear()
    assert time.monotonic() - started < 10 and accepted
    assert failure.value.retry and failure.value.cause == "token timed out"

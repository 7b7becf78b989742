"""Tests of the demo world's STAC metadata: PC-shaped items and collections, both static
catalogs, and the stac-geoparquet snapshots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import stac_pydantic
from shapely.geometry import box, shape

from geoprep.demo.products import STORAGE

FIXTURES = Path(__file__).parents[1] / "fixtures" / "demo_pc"
COLLECTIONS = ("landsat-c2-l2", "naip", "sentinel-1-rtc", "sentinel-2-l2a")
#: Real item ids (Planetary Computer) and the patterns the demo items must follow.
ID_PATTERNS = {
    "sentinel-2-l2a": r"S2[AB]_MSIL2A_\d{8}T\d{6}_R\d{3}_T\d{2}[A-Z]{3}_\d{8}T\d{6}",
    "landsat-c2-l2": r"LC0[89]_L2S[PR]_\d{6}_\d{8}_02_T[12]",
    "sentinel-1-rtc": r"S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_rtc",
    "naip": r"[a-z]{2}_m_\d{7}_[ns][ew]_\d{2}_\d{3}_\d{8}_\d{8}",
}
REAL_IDS = {
    "sentinel-2-l2a": "S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213",
    "landsat-c2-l2": "LC09_L2SR_084082_20250722_02_T1",
    "sentinel-1-rtc": "S1A_IW_GRDH_1SDV_20191215T004339_20191215T004404_030352_0378DC_rtc",
    "naip": "vt_m_4307308_nw_18_030_20230622_20231113",
}
#: Keys of the real items the demo may leave out: metadata side-files it does not write.
OMITTED_ASSETS = {
    "safe-manifest", "granule-metadata", "inspire-metadata", "datastrip-metadata", "preview",
    "ang", "mtl.txt", "mtl.xml", "mtl.json", "qa_radsat", "qa_aerosol", "thumbnail",
}  # fmt: skip


def load_items(world: Path, flavour: str, collection: str) -> list[tuple[Path, dict]]:
    paths = sorted((world / "stac" / flavour / collection).glob("*/*.json"))
    return [(p, json.loads(p.read_text())) for p in paths]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("flavour", ["pc", "local"])
def test_static_catalogs_link_catalog_collections_and_items(demo_world, flavour):
    manifest = json.loads((demo_world / "world.json").read_text())
    catalog = pystac.Catalog.from_file(str(demo_world / "stac" / flavour / "catalog.json"))
    collections = {c.id: c for c in catalog.get_children()}
    assert sorted(collections) == list(COLLECTIONS)
    for cid, collection in collections.items():
        found = list(collection.get_items())
        assert len(found) == manifest["sensors"][cid] > 0
        assert all(item.collection_id == cid for item in found)


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_items_validate_and_round_trip(demo_world, collection):
    for path, item in load_items(demo_world, "pc", collection):
        stac_pydantic.Item.model_validate(item)
        assert item["stac_version"] == "1.0.0"
        back = pystac.Item.from_dict(item, migrate=False)
        back = back.to_dict(include_self_link=False, transform_hrefs=False)
        for key in ("id", "bbox", "geometry", "properties", "assets", "collection"):
            assert back[key] == item[key], (path.name, key)
        assert set(back["stac_extensions"]) == set(item["stac_extensions"])
        assert re.fullmatch(ID_PATTERNS[collection], item["id"]), item["id"]
        assert item["properties"]["proj:epsg"] // 100 in (326, 327, 269)
        footprint = shape(item["geometry"])
        assert footprint.is_valid and box(*item["bbox"]).buffer(1e-9).contains(footprint)


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_real_ids_follow_the_same_patterns(collection):
    assert re.fullmatch(ID_PATTERNS[collection], REAL_IDS[collection])


@pytest.mark.parametrize(
    ("collection", "real"),
    [
        ("sentinel-2-l2a", "item_sentinel-2-l2a.json"),
        ("landsat-c2-l2", "item_landsat-c2-l2.json"),
        ("naip", "item_naip.json"),
    ],
)
def test_items_have_the_keys_of_real_planetary_computer_items(demo_world, collection, real):
    truth = fixture(real)
    _, item = load_items(demo_world, "pc", collection)[0]
    assert set(truth["properties"]) <= set(item["properties"])
    assert set(truth["assets"]) - OMITTED_ASSETS <= set(item["assets"])
    assert item["stac_extensions"] == truth["stac_extensions"]
    for key, real_asset in truth["assets"].items():
        if key in item["assets"]:
            ours = item["assets"][key]
            assert set(real_asset) <= set(ours) | {"href"}, key
            assert ours["type"] == real_asset["type"] and ours["roles"] == real_asset["roles"]


def test_sentinel1_items_carry_the_real_datetime_quirk_and_raster_bands(demo_world):
    real = fixture("collection_sentinel-1-rtc_trimmed.json")["item_assets"]
    for _, item in load_items(demo_world, "pc", "sentinel-1-rtc"):
        props = item["properties"]
        for key in ("start_datetime", "end_datetime"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00:00", props[key])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", props["datetime"])
        assert "eo:cloud_cover" not in props
        for pol in ("vv", "vh"):
            assert item["assets"][pol]["raster:bands"] == real[pol]["raster:bands"]


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_asset_metadata_matches_the_files(demo_world, collection):
    for path, item in load_items(demo_world, "local", collection):
        props = item["properties"]
        for key, asset in item["assets"].items():
            if "data" not in asset["roles"] and "cloud" not in asset["roles"]:
                continue
            with rasterio.open(path.parent / asset["href"]) as ds:
                shape_ = asset.get("proj:shape", props.get("proj:shape"))
                transform = asset.get("proj:transform", props.get("proj:transform"))
                assert list(ds.shape) == shape_, (item["id"], key)
                assert list(ds.transform)[:6] == transform[:6], (item["id"], key)
                assert ds.crs.to_epsg() == props["proj:epsg"]
                for band in asset.get("raster:bands", []):
                    assert ds.dtypes[0] == band["data_type"]
                    if "nodata" in band:
                        assert ds.nodata == band["nodata"]
                assert ds.count == max(1, len(asset.get("eo:bands", []))), (item["id"], key)


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_pc_hrefs_are_blob_urls_of_the_right_account(demo_world, collection):
    account, container = STORAGE[collection]
    for _, item in load_items(demo_world, "pc", collection):
        for key, asset in item["assets"].items():
            url = urlsplit(asset["href"])
            if key in ("tilejson", "rendered_preview"):
                assert url.netloc == "planetarycomputer.microsoft.com"
                continue
            assert url.scheme == "http" and url.netloc == f"{account}.blob.core.windows.net"
            assert url.path.startswith(f"/{container}/")
            blob = demo_world / "blobs" / account / unquote(url.path.lstrip("/"))
            assert blob.is_file(), blob


def test_collections_are_pc_shaped_with_extents_from_their_items(demo_world):
    for cid in COLLECTIONS:
        data = json.loads((demo_world / "stac" / "pc" / cid / "collection.json").read_text())
        stac_pydantic.Collection.model_validate(data)
        assert (data["msft:storage_account"], data["msft:container"]) == STORAGE[cid]
        parquet = data["assets"]["geoparquet-items"]
        assert parquet["href"] == f"abfs://items/{cid}.parquet"
        assert parquet["table:storage_options"] == {"account_name": "pcstacitems"}
        items = [i for _, i in load_items(demo_world, "pc", cid)]
        assert {k for i in items for k in i["assets"]} - {"tilejson", "rendered_preview"} <= set(
            data["item_assets"]
        )
        (west, south, east, north) = data["extent"]["spatial"]["bbox"][0]
        for item in items:
            assert box(west, south, east, north).contains(box(*item["bbox"]))
        start, end = data["extent"]["temporal"]["interval"][0]
        assert start == min(i["properties"]["datetime"] for i in items)
        assert end == max(i["properties"]["datetime"] for i in items)
    s1 = json.loads((demo_world / "stac/pc/sentinel-1-rtc/collection.json").read_text())
    assert s1["msft:requires_account"] is True


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_geoparquet_follows_the_stac_geoparquet_layout(demo_world, collection):
    path = demo_world / "stac" / "geoparquet" / f"{collection}.parquet"
    table = pq.read_table(path)
    items = {i["id"]: i for _, i in load_items(demo_world, "pc", collection)}
    assert table.num_rows == len(items)
    schema = table.schema
    for name in (
        "type",
        "stac_version",
        "stac_extensions",
        "id",
        "geometry",
        "bbox",
        "links",
        "assets",
        "collection",
    ):
        assert name in schema.names, name
    assert schema.field("bbox").type == pa.struct(
        [(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]
    )
    assert schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert "proj:epsg" in schema.names  # properties are top-level columns
    metadata = schema.metadata
    geo = json.loads(metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    stac = json.loads(metadata[b"stac-geoparquet"])
    assert stac["version"] == "1.0.0" and list(stac["collections"]) == [collection]
    frame = gpd.read_parquet(path)
    assert frame.crs.to_string() == "OGC:CRS84"  # the GeoParquet default: lon/lat WGS 84
    bboxes = dict(
        zip(table.column("id").to_pylist(), table.column("bbox").to_pylist(), strict=True)
    )
    for row in frame.itertuples():
        item = items[row.id]
        assert row.geometry.equals_exact(shape(item["geometry"]), 1e-9)
        assert list(bboxes[row.id].values()) == item["bbox"]
        hrefs = {k: v["href"] for k, v in item["assets"].items()}
        assert {k: v["href"] for k, v in row.assets.items() if v} == hrefs

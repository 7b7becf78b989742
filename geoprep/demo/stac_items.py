"""STAC items, collections and static catalogs of the demo world in Planetary Computer's shape.

Items carry what PC's items carry (properties, per-asset ``proj:*`` for Sentinel-2, ``eo:bands``,
``raster:bands``, the ``tilejson``/``rendered_preview`` assets, ``msft:*`` collection keys and the
``geoparquet-items`` collection asset; the static fields come from
:mod:`geoprep.demo.stac_templates`). Two static catalogs hold the same items: ``stac/pc`` with
asset hrefs on the blob hosts (``http://<account>.blob.core.windows.net/<container>/<path>``)
and ``stac/local`` with hrefs relative to the item file. ``stac/geoparquet/<collection>.parquet``
holds the snapshots written by :mod:`geoprep.demo.stac_geoparquet`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
import pystac
import shapely

from geoprep.demo.products import STORAGE, Scene
from geoprep.demo.stac_geoparquet import geoparquet_table
from geoprep.demo.stac_templates import ASSET_TEMPLATES, COLLECTIONS, EXT, PC_DATA


def _extension_url(short: str) -> str:
    return (
        short
        if short.startswith("http")
        else f"{EXT}/{short.split('/')[0]}/{short.split('/')[1]}/schema.json"
    )


def blob_href(path: str) -> str:
    """The PC-style href of a file under ``blobs/``: the account becomes the host name."""
    account, rest = path.split("/", 1)
    return f"http://{account}.blob.core.windows.net/{quote(rest)}"


def _plain(value):
    """JSON-native copy of ``value`` (numpy scalars become Python numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def item_dict(scene: Scene, href: Callable[[str], str]) -> dict:
    """The STAC item of a scene, asset hrefs made by ``href(blob path)``."""
    templates = ASSET_TEMPLATES[scene.collection]
    info = COLLECTIONS[scene.collection]
    assets = {}
    for key, asset in sorted(scene.assets.items()):
        entry = {"href": href(asset.path)}
        if scene.collection == "sentinel-2-l2a" and asset.grid is not None:
            g = asset.grid
            entry |= {
                "proj:bbox": list(g.bounds),
                "proj:shape": list(g.shape),
                "proj:transform": list(g.transform)[:6],
            }
        assets[key] = entry | templates.get(key, {})
    query = f"collection={scene.collection}&item={scene.id}"
    assets["tilejson"] = {
        "title": "TileJSON with default rendering",
        "type": "application/json",
        "roles": ["tiles"],
        "href": f"{PC_DATA}/item/tilejson.json?{query}&{info['preview']}&format=png",
    }
    assets["rendered_preview"] = {
        "title": "Rendered preview",
        "rel": "preview",
        "roles": ["overview"],
        "type": "image/png",
        "href": f"{PC_DATA}/item/preview.png?{query}&{info['preview']}&format=png",
    }
    links = [{"rel": "license", "href": info["license_link"]}] if scene.collection != "naip" else []
    links.append(
        {
            "rel": "preview",
            "href": f"{PC_DATA}/item/map?{query}",
            "title": "Map of item",
            "type": "text/html",
        }
    )
    west, south, east, north = scene.footprint.bounds
    return _plain(
        {
            "id": scene.id,
            "bbox": [west, south, east, north],
            "type": "Feature",
            "links": links,
            "assets": assets,
            "geometry": shapely.geometry.mapping(scene.footprint),
            "collection": scene.collection,
            "properties": scene.properties,
            "stac_extensions": [_extension_url(e) for e in info["item_extensions"]],
            "stac_version": "1.0.0",
        }
    )


def collection_dict(collection_id: str, items: list[dict]) -> dict:
    """The collection of ``items`` in PC's shape; extents and summaries come from the items."""
    info = COLLECTIONS[collection_id]
    account, container = STORAGE[collection_id]
    west = min(i["bbox"][0] for i in items)
    south = min(i["bbox"][1] for i in items)
    east = max(i["bbox"][2] for i in items)
    north = max(i["bbox"][3] for i in items)
    times = sorted(i["properties"]["datetime"] for i in items)
    summaries: dict = {}
    for key in (
        "platform",
        "instruments",
        "constellation",
        "gsd",
        "sar:polarizations",
        "sat:orbit_state",
        "sar:instrument_mode",
        "sar:product_type",
    ):
        values = [i["properties"][key] for i in items if key in i["properties"]]
        unique = []
        for v in values:
            for x in v if key == "instruments" else [v]:
                if x not in unique:
                    unique.append(x)
        if unique:
            summaries[key] = sorted(unique, key=json.dumps)
    bands = [b for a in ASSET_TEMPLATES[collection_id].values() for b in a.get("eo:bands", [])]
    if bands:
        summaries["eo:bands"] = list({b["name"]: b for b in bands}.values())
    item_assets = {k: dict(v) for k, v in ASSET_TEMPLATES[collection_id].items()}
    collection = {
        "id": collection_id,
        "type": "Collection",
        "links": [
            {"rel": "license", "href": info["license_link"]},
            {
                "rel": "describedby",
                "href": f"https://planetarycomputer.microsoft.com/dataset/{collection_id}",
                "title": "Human readable dataset overview and reference",
                "type": "text/html",
            },
        ],
        "title": info["title"],
        "assets": {
            "thumbnail": {
                "href": f"https://ai4edatasetspublicassets.blob.core.windows.net/assets/pc_thumbnails/{collection_id}.png",
                "type": "image/png",
                "roles": ["thumbnail"],
                "title": info["title"],
            },
            "geoparquet-items": {
                "href": f"abfs://items/{collection_id}.parquet",
                "type": "application/x-parquet",
                "roles": ["stac-items"],
                "title": "GeoParquet STAC items",
                "description": "Snapshot of the collection's STAC items exported to GeoParquet"
                " format.",
                "msft:partition_info": {
                    "is_partitioned": True,
                    "partition_frequency": info["partition"],
                },
                "table:storage_options": {"account_name": "pcstacitems"},
            },
        },
        "extent": {
            "spatial": {"bbox": [[west, south, east, north]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "license": info["license"],
        "keywords": info["keywords"],
        "providers": [
            {"url": url, "name": name, "roles": roles} for name, roles, url in info["providers"]
        ]
        + [
            {
                "url": "https://planetarycomputer.microsoft.com",
                "name": "Microsoft",
                "roles": ["host"],
            }
        ],
        "summaries": summaries,
        "description": info["description"],
        "item_assets": item_assets,
        "stac_version": "1.0.0",
        "msft:container": container,
        "stac_extensions": [
            f"{EXT}/item-assets/v1.0.0/schema.json",
            f"{EXT}/table/v1.2.0/schema.json",
        ],
        "msft:storage_account": account,
        "msft:short_description": info["description"],
        "msft:region": "westeurope",
    }
    for key in ("msft:requires_account", "msft:group_id"):
        if key in info:
            collection[key] = info[key]
    return collection


def _catalog(collections: dict[str, dict], items: dict[str, list[dict]], root: Path) -> None:
    """Save a self-contained static catalog: catalog.json -> <id>/collection.json -> items.

    Objects are written as STAC 1.0.0 without migration, as PC serves them (pystac would
    otherwise upgrade them to its newest version and rename ``proj:epsg`` to ``proj:code``).
    """
    previous = pystac.version.STACVersion._override_version
    pystac.set_stac_version("1.0.0")
    try:
        catalog = pystac.Catalog(
            id="geoprep-demo-world",
            description="The geoprep demo world: an offline stand-in for Planetary Computer.",
            title="geoprep demo world",
        )
        for cid in sorted(collections):
            collection = pystac.Collection.from_dict(collections[cid], migrate=False)
            catalog.add_child(collection)
            for item in items[cid]:
                collection.add_item(pystac.Item.from_dict(item, migrate=False))
        catalog.normalize_hrefs(str(root))
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    finally:
        pystac.set_stac_version(previous)


def write_stac(scenes: list[Scene], out_dir: Path) -> dict:
    """Write ``stac/pc``, ``stac/local`` and ``stac/geoparquet`` under ``out_dir``."""
    by_collection: dict[str, list[Scene]] = {}
    for scene in scenes:
        by_collection.setdefault(scene.collection, []).append(scene)
    pc_items, local_items, collections = {}, {}, {}
    for cid, group in sorted(by_collection.items()):
        group = sorted(group, key=lambda s: (s.datetime, s.id))
        pc_items[cid] = [item_dict(s, blob_href) for s in group]
        # local item files sit at stac/local/<collection>/<id>/<id>.json, four levels below OUT
        local_items[cid] = [item_dict(s, lambda p: f"../../../../blobs/{p}") for s in group]
        collections[cid] = collection_dict(cid, pc_items[cid])
    _catalog(collections, pc_items, out_dir / "stac" / "pc")
    _catalog(collections, local_items, out_dir / "stac" / "local")
    parquet_dir = out_dir / "stac" / "geoparquet"
    parquet_dir.mkdir(parents=True, exist_ok=True)
    for cid, items in pc_items.items():
        pq.write_table(geoparquet_table(items, collections[cid]), parquet_dir / f"{cid}.parquet")
    return {"collections": {cid: len(items) for cid, items in pc_items.items()}}

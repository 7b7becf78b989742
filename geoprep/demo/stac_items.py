"""STAC metadata of the demo world in Planetary Computer's shape: items, collections, catalogs and
stac-geoparquet snapshots.

Items carry what PC's items carry (properties, per-asset ``proj:*`` for Sentinel-2, ``eo:bands``,
``raster:bands``, the ``tilejson``/``rendered_preview`` assets, ``msft:*`` collection keys and the
``geoparquet-items`` collection asset). Two static catalogs hold the same items: ``stac/pc`` with
asset hrefs on the blob hosts (``http://<account>.blob.core.windows.net/<container>/<path>``)
and ``stac/local`` with hrefs relative to the item file. ``stac/geoparquet/<collection>.parquet``
follows the current stac-geoparquet layout (bbox struct, properties as top-level columns,
timestamps in microseconds UTC, GeoParquet ``geo`` and ``stac-geoparquet`` footer metadata).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import shapely

from geoprep.demo.render import BANDS
from geoprep.demo.sensors import LANDSAT_BANDS, S2_GSD, STORAGE, Scene

PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
PC_DATA = "https://planetarycomputer.microsoft.com/api/data/v1"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = "https://stac-extensions.github.io"

S2_BAND_INFO = {  # name: (common name, description, full width at half maximum in µm)
    "B01": ("coastal", "Coastal aerosol", 0.027), "B02": ("blue", "Blue", 0.098),
    "B03": ("green", "Green", 0.045), "B04": ("red", "Red", 0.038),
    "B05": ("rededge", "Vegetation red edge 1", 0.019),
    "B06": ("rededge", "Vegetation red edge 2", 0.018),
    "B07": ("rededge", "Vegetation red edge 3", 0.028), "B08": ("nir", "NIR", 0.145),
    "B8A": ("rededge", "Vegetation red edge 4", 0.033), "B09": (None, "Water vapor", 0.026),
    "B11": ("swir16", "SWIR (1.6)", 0.143), "B12": ("swir22", "SWIR (2.2)", 0.242),
}  # fmt: skip
LANDSAT_INFO = {  # key: (OLI band, title, description, centre µm, FWHM µm)
    "coastal": ("OLI_B1", "Coastal/Aerosol Band", "Coastal/Aerosol", 0.44, 0.02),
    "blue": ("OLI_B2", "Blue Band", "Visible blue", 0.48, 0.06),
    "green": ("OLI_B3", "Green Band", "Visible green", 0.56, 0.06),
    "red": ("OLI_B4", "Red Band", "Visible red", 0.65, 0.04),
    "nir08": ("OLI_B5", "Near Infrared Band 0.8", "Near infrared", 0.87, 0.03),
    "swir16": ("OLI_B6", "Short-wave Infrared Band 1.6", "Short-wave infrared", 1.61, 0.09),
    "swir22": ("OLI_B7", "Short-wave Infrared Band 2.2", "Short-wave infrared", 2.2, 0.19),
}


def _s2_eo(band: str) -> dict:
    common, text, fwhm = S2_BAND_INFO[band]
    entry = {
        "name": band,
        "common_name": common,
        "description": f"Band {band[1:].lstrip('0')} - {text}",
        "center_wavelength": BANDS[band],
        "full_width_half_max": fwhm,
    }
    if band == "B8A":
        entry["description"] = f"Band 8A - {text}"
    return {k: v for k, v in entry.items() if v is not None}


def _asset_templates() -> dict[str, dict[str, dict]]:
    """Per collection and asset key: the static asset fields (as in PC's ``item_assets``)."""
    s2 = {}
    for band in BANDS:
        eo = _s2_eo(band)
        s2[band] = {
            "gsd": float(S2_GSD[band]),
            "type": COG,
            "roles": ["data"],
            "title": f"{eo['description']} - {S2_GSD[band]}m",
            "eo:bands": [eo],
        }
    s2["SCL"] = {
        "gsd": 20.0,
        "type": COG,
        "roles": ["data"],
        "title": "Scene classfication map (SCL)",
    }
    s2["AOT"] = {
        "gsd": 10.0,
        "type": COG,
        "roles": ["data"],
        "title": "Aerosol optical thickness (AOT)",
    }
    s2["WVP"] = {"gsd": 10.0, "type": COG, "roles": ["data"], "title": "Water vapour (WVP)"}
    s2["visual"] = {
        "gsd": 10.0,
        "type": COG,
        "roles": ["data"],
        "title": "True color image",
        "eo:bands": [_s2_eo("B04"), _s2_eo("B03"), _s2_eo("B02")],
    }
    s2["product-metadata"] = {
        "type": "application/xml",
        "roles": ["metadata"],
        "title": "Product metadata",
    }
    reflectance = {
        "scale": 2.75e-05,
        "nodata": 0,
        "offset": -0.2,
        "data_type": "uint16",
        "spatial_resolution": 30,
    }
    landsat = {}
    for key, (oli, title, text, centre, fwhm) in LANDSAT_INFO.items():
        suffix = LANDSAT_BANDS[key][0]
        landsat[key] = {
            "type": COG,
            "roles": ["data", "reflectance"],
            "title": title,
            "eo:bands": [
                {
                    "name": oli,
                    "common_name": key,
                    "description": text,
                    "center_wavelength": centre,
                    "full_width_half_max": fwhm,
                }
            ],
            "description": f"Collection 2 Level-2 {title.replace(' Band', '')} Band ({suffix})"
            " Surface Reflectance",
            "raster:bands": [reflectance],
        }
    landsat["lwir11"] = {
        "gsd": 100,
        "type": COG,
        "roles": ["data", "temperature"],
        "title": "Surface Temperature Band",
        "eo:bands": [
            {
                "name": "TIRS_B10",
                "common_name": "lwir11",
                "description": "Long-wave infrared",
                "center_wavelength": 10.9,
                "full_width_half_max": 0.59,
            }
        ],
        "description": "Collection 2 Level-2 Thermal Infrared Band (ST_B10) Surface Temperature",
        "raster:bands": [
            {
                "unit": "kelvin",
                "scale": 0.00341802,
                "nodata": 0,
                "offset": 149.0,
                "data_type": "uint16",
                "spatial_resolution": 30,
            }
        ],
    }
    landsat["qa_pixel"] = {
        "type": COG,
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
        "title": "Pixel Quality Assessment Band",
        "description": "Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
        "classification:bitfields": _qa_bitfields(),
        "raster:bands": [
            {"unit": "bit index", "nodata": 1, "data_type": "uint16", "spatial_resolution": 30}
        ],
    }
    s1 = {}
    for pol in ("vv", "vh"):
        tx, rx = (
            ("vertical" if pol[0] == "v" else "horizontal"),
            "vertical" if pol[1] == "v" else "horizontal",
        )
        s1[pol] = {
            "type": COG,
            "roles": ["data"],
            "title": f"{pol.upper()}: {tx} transmit, {rx} receive",
            "description": f"Terrain-corrected gamma naught values of signal transmitted with {tx}"
            f" polarization and received with {rx} polarization with radiometric terrain"
            " correction applied.",
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}],
        }
    naip = {
        "image": {
            "type": COG,
            "roles": ["data"],
            "title": "RGBIR COG tile",
            "eo:bands": [
                {"name": "Red", "common_name": "red"},
                {"name": "Green", "common_name": "green"},
                {"name": "Blue", "common_name": "blue"},
                {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
            ],
        }
    }
    return {"sentinel-2-l2a": s2, "landsat-c2-l2": landsat, "sentinel-1-rtc": s1, "naip": naip}


def _qa_bitfields() -> list[dict]:
    def flag(name: str, offset: int, description: str) -> dict:
        return {
            "name": name,
            "length": 1,
            "offset": offset,
            "description": description,
            "classes": [{"name": f"not_{name}", "value": 0}, {"name": name, "value": 1}],
        }

    def confidence(name: str, offset: int) -> dict:
        levels = ("not_set", "low", "medium", "high")
        return {
            "name": f"{name}_confidence",
            "length": 2,
            "offset": offset,
            "description": f"{name.replace('_', ' ').capitalize()} confidence",
            "classes": [{"name": lvl, "value": i} for i, lvl in enumerate(levels)],
        }

    return [
        flag("fill", 0, "Image or fill data"),
        flag("dilated_cloud", 1, "Dilated cloud"),
        flag("cirrus", 2, "Cirrus mask"),
        flag("cloud", 3, "Cloud mask"),
        flag("cloud_shadow", 4, "Cloud shadow mask"),
        flag("snow", 5, "Snow/Ice mask"),
        flag("clear", 6, "Cloud or dilated cloud bits set"),
        flag("water", 7, "Water mask"),
        confidence("cloud", 8),
        confidence("cloud_shadow", 10),
        confidence("snow", 12),
        confidence("cirrus", 14),
    ]


ASSET_TEMPLATES = _asset_templates()

#: Collection-level facts: title, licence, providers, extensions, snapshot partitioning.
COLLECTIONS = {
    "sentinel-2-l2a": {
        "title": "Sentinel-2 Level-2A", "license": "proprietary",
        "keywords": ["Sentinel", "Copernicus", "ESA", "Satellite", "Global", "Imagery",
                     "Reflectance"],
        "providers": [("ESA", ["producer", "licensor"], "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"),
                      ("Esri", ["processor"], "https://www.esri.com/")],
        "license_link": "https://scihub.copernicus.eu/twiki/pub/SciHubWebPortal/TermsConditions/Sentinel_Data_Terms_and_Conditions.pdf",
        "item_extensions": ["eo/v1.0.0", "sat/v1.0.0", "projection/v1.0.0"],
        "partition": "W-MON", "preview": "assets=visual&asset_bidx=visual%7C1%2C2%2C3&nodata=0",
        "description": "Demo-world stand-in for Sentinel-2 L2A: bottom-of-atmosphere reflectance"
        " in 12 bands at 10, 20 and 60 m, with scene classification.",
    },
    "landsat-c2-l2": {
        "title": "Landsat Collection 2 Level-2", "license": "proprietary",
        "keywords": ["Landsat", "USGS", "NASA", "Satellite", "Global", "Imagery", "Reflectance",
                     "Temperature"],
        "providers": [("NASA", ["producer", "licensor"], "https://landsat.gsfc.nasa.gov/"),
                      ("USGS", ["producer", "processor", "licensor"],
                       "https://www.usgs.gov/landsat-missions/landsat-collection-2-level-2-science-products")],
        "license_link": "https://www.usgs.gov/core-science-systems/hdds/data-policy",
        "item_extensions": ["raster/v1.1.0", "eo/v1.0.0", "view/v1.0.0", "projection/v1.1.0",
                            "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json",
                            "classification/v1.0.0", "scientific/v1.0.0"],
        "partition": "MS", "preview": "assets=red&assets=green&assets=blue&color_formula="
        "gamma+RGB+2.7%2C+saturation+1.5%2C+sigmoidal+RGB+15+0.55",
        "description": "Demo-world stand-in for Landsat 8-9 Collection 2 Level-2: surface"
        " reflectance and surface temperature at 30 m with pixel quality flags.",
    },
    "sentinel-1-rtc": {
        "title": "Sentinel 1 Radiometrically Terrain Corrected (RTC)", "license": "CC-BY-4.0",
        "keywords": ["ESA", "Copernicus", "Sentinel", "C-Band", "SAR", "RTC"],
        "providers": [("ESA", ["licensor", "producer"],
                       "https://sentinel.esa.int/web/sentinel/missions/sentinel-1"),
                      ("Catalyst", ["processor"], "https://catalyst.earth")],
        "license_link": "https://creativecommons.org/licenses/by/4.0/",
        "item_extensions": ["sar/v1.0.0", "sat/v1.0.0", "projection/v1.0.0", "raster/v1.1.0"],
        "partition": "MS",
        "preview": "assets=vv&assets=vh&expression=vv%3Bvh%3Bvv%2Fvh&rescale=0%2C.6",
        "msft:requires_account": True, "msft:group_id": "sentinel-1",
        "description": "Demo-world stand-in for Sentinel-1 RTC: terrain-corrected gamma naught"
        " backscatter (VV, VH) at 10 m.",
    },
    "naip": {
        "title": "NAIP: National Agriculture Imagery Program", "license": "proprietary",
        "keywords": ["NAIP", "Aerial", "Imagery", "USDA", "AFPO", "Agriculture",
                     "United States"],
        "providers": [("USDA Farm Service Agency", ["producer", "licensor"],
                       "https://www.fsa.usda.gov/programs-and-services/aerial-photography/imagery-programs/naip-imagery/")],
        "license_link": "https://www.fsa.usda.gov/help/policies-and-links/",
        "item_extensions": ["eo/v1.0.0", "projection/v1.0.0"],
        "partition": "AS", "preview": "assets=image&asset_bidx=image%7C1%2C2%2C3",
        "description": "Demo-world stand-in for NAIP: four-band (red, green, blue, near"
        " infrared) aerial imagery of the US area.",
    },
}  # fmt: skip


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


#: Properties stored as timestamps in stac-geoparquet (others stay as they are in the JSON).
TIMESTAMP_COLUMNS = ("datetime", "start_datetime", "end_datetime", "created", "updated")
STAC_GEOPARQUET_VERSION = "1.0.0"


def _timestamp(text: str):
    """Parse PC's datetime strings, including sentinel-1-rtc's ``YYYY-MM-DD hh:mm:ss+00:00``."""
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))


def geoparquet_table(items: list[dict], collection: dict) -> pa.Table:
    """Items as a stac-geoparquet table (one row per item, properties as columns)."""
    rows = []
    for item in items:
        west, south, east, north = item["bbox"]
        row = {
            "type": item["type"],
            "stac_version": item["stac_version"],
            "stac_extensions": item["stac_extensions"],
            "id": item["id"],
            "geometry": shapely.to_wkb(shapely.geometry.shape(item["geometry"])),
            "bbox": {"xmin": west, "ymin": south, "xmax": east, "ymax": north},
            "links": item["links"],
            "assets": item["assets"],
            "collection": item["collection"],
        }
        for key, value in item["properties"].items():
            row[key] = _timestamp(value) if key in TIMESTAMP_COLUMNS else value
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    for name in TIMESTAMP_COLUMNS:
        if name in table.column_names:
            index = table.column_names.index(name)
            column = table.column(name).cast(pa.timestamp("us", tz="UTC"))
            table = table.set_column(index, name, column)
    bounds = [
        min(r["bbox"]["xmin"] for r in rows),
        min(r["bbox"]["ymin"] for r in rows),
        max(r["bbox"]["xmax"] for r in rows),
        max(r["bbox"]["ymax"] for r in rows),
    ]
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "bbox": bounds,
                "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
            }
        },
    }
    stac = {"version": STAC_GEOPARQUET_VERSION, "collections": {collection["id"]: collection}}
    metadata = {b"geo": json.dumps(geo).encode(), b"stac-geoparquet": json.dumps(stac).encode()}
    return table.replace_schema_metadata(metadata)


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

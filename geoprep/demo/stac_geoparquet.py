"""stac-geoparquet snapshots of the demo collections, in the current stac-geoparquet layout.

One row per item: a bbox struct, properties as top-level columns, timestamps in microseconds
UTC, and GeoParquet ``geo`` and ``stac-geoparquet`` footer metadata.
"""

from __future__ import annotations

import json

import pyarrow as pa
import shapely

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

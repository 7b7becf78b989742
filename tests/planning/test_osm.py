"""The osm sampler, its Overpass client, the .osm.pbf reader and the Overpass stand-in."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from pydantic import ValidationError
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.ops import polylabel

from geoprep.core.errors import SourceError, UserError
from geoprep.demo.osm_pbf_writer import write_pbf
from geoprep.demo.overpass_server import OverpassFault, OverpassStandIn
from geoprep.planning.osm_pbf import read_pbf_features
from geoprep.planning.overpass import (
    OsmFeature,
    OverpassClient,
    RetryPolicy,
    build_query,
    features_from_elements,
    html_error_message,
    parse_status,
    runtime_error,
    tile_bbox,
)
from geoprep.planning.samplers.osm import DEFAULT_CLASSES, OsmSamplerConfig, place_in_area

FIXTURES = Path(__file__).parents[1] / "fixtures" / "overpass"
LON0, LAT0 = 7.0, 50.0
M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))


def _lonlat(x_m: float, y_m: float) -> tuple[float, float]:
    """A point x metres east and y metres north of the test origin, on OSM's 1e-7 grid."""
    return round(LON0 + x_m / M_PER_DEG_LON, 7), round(LAT0 + y_m / M_PER_DEG_LAT, 7)


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [_lonlat(x0, y0), _lonlat(x1, y0), _lonlat(x1, y1), _lonlat(x0, y1), _lonlat(x0, y0)]


def _rect(x0: float, y0: float, x1: float, y1: float, *holes: tuple) -> Polygon:
    return Polygon(_ring(x0, y0, x1, y1), [_ring(*hole) for hole in holes])


CORNER_RADIUS_M = 100 * math.sqrt(2) / (1 + math.sqrt(2))
ISLAND = _rect(2100, 100, 2500, 500)
FEATURES = [
    # Five farmland fields for a cap of three; the one at x=1200 straddles a tile edge.
    *(
        OsmFeature("way", 101 + i, {"landuse": "farmland"}, _rect(300 * i, 0, 300 * i + 200, 200))
        for i in range(5)
    ),
    # A lake whose island is so large that a pole ignoring holes would land on the island.
    OsmFeature(
        "relation",
        201,
        {"type": "multipolygon", "natural": "water"},
        _rect(2000, 0, 2600, 600, (2100, 100, 2500, 500)),
    ),
    # Lake, island and a pond on the island: the pond is water again (even-odd nesting).
    OsmFeature(
        "relation",
        202,
        {"type": "multipolygon", "natural": "water"},
        MultiPolygon(
            [_rect(2000, 800, 2600, 1400, (2100, 900, 2500, 1300)), _rect(2200, 1000, 2400, 1200)]
        ),
    ),
    # A forest of two parts, one of them with a clearing.
    OsmFeature(
        "relation",
        203,
        {"type": "multipolygon", "landuse": "forest"},
        MultiPolygon(
            [_rect(3000, 0, 3400, 400, (3100, 100, 3300, 300)), _rect(3500, 0, 3650, 150)]
        ),
    ),
    OsmFeature("way", 106, {"building": "farm"}, _rect(1500, 500, 1504, 504)),  # too small
    OsmFeature("way", 107, {"building": "farm"}, _rect(1600, 500, 1640, 530)),
    OsmFeature("way", 108, {"man_made": "breakwater"}, LineString(_ring(0, 600, 300, 700)[:3])),
    OsmFeature("way", 109, {"man_made": "bridge", "highway": "primary"}, _rect(0, 900, 60, 912)),
    OsmFeature("way", 110, {"highway": "pedestrian", "area": "yes"}, _rect(500, 900, 600, 950)),
    # A boundary relation carrying a class tag: not a multipolygon, never a candidate.
    OsmFeature(
        "relation", 204, {"type": "boundary", "landuse": "quarry"}, _rect(0, 1200, 300, 1500)
    ),
]
BY_KEY = {(f.osm_type, f.osm_id): f for f in FEATURES}
BBOX = (LON0 - 0.001, LAT0 - 0.001, _lonlat(3700, 0)[0] + 0.001, _lonlat(0, 1500)[1] + 0.001)


class RecordingProgress:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n

    def set_total(self, total: int | None) -> None:
        self.total = total


@pytest.fixture(scope="module")
def pbf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("osm") / "features.osm.pbf"
    write_pbf(path, FEATURES)
    return path


@pytest.fixture(scope="module")
def stand_in():
    with OverpassStandIn(FEATURES) as server:
        yield server


@pytest.fixture()
def fresh_stand_in():
    with OverpassStandIn(FEATURES) as server:
        yield server


def _config(source: str, pbf_path: Path, stand_in: OverpassStandIn, **extra) -> OsmSamplerConfig:
    if source == "pbf":
        keys = {"source": "pbf", "path": pbf_path}
    else:
        keys = {"endpoint": stand_in.interpreter_url, "bboxes": [BBOX], "tile_deg": 0.02}
        keys |= {"retry_delay_s": 0.001, "max_retry_delay_s": 0.002}
    return OsmSamplerConfig(**({"kind": "osm", "n": 3} | keys | extra))


def _sample(config: OsmSamplerConfig, seed: int = 0):
    progress = RecordingProgress()
    result = config.sample(np.random.default_rng(seed), progress)
    assert progress.total is not None and progress.done == progress.total
    return result


@pytest.mark.parametrize("source", ["overpass", "pbf"])
def test_locations_lie_inside_their_polygons_and_outside_holes(source, pbf_path, stand_in):
    result = _sample(_config(source, pbf_path, stand_in))
    frame = result.locations
    assert list(frame.columns[:5]) == ["id", "lat", "lon", "source", "label"]
    assert set(frame.columns[5:]) == {"osm_type", "osm_id", "tag", "area_m2", "inscribed_radius_m"}
    for row in frame.itertuples():
        feature = BY_KEY[(row.osm_type, row.osm_id)]
        point = Point(row.lon, row.lat)
        assert feature.geometry.contains(point), row.id
        assert row.id == f"osm-{row.osm_type[0]}{row.osm_id}"
        assert DEFAULT_CLASSES[row.label] == row.tag
        assert feature.tags[row.tag.split("=")[0]] == row.tag.split("=")[1]
    lake = frame.set_index("id").loc["osm-r201"]
    assert not ISLAND.contains(Point(lake.lon, lake.lat))
    # The widest circle sits in a corner of the 100 m wide water ring, touching two shores and
    # the island's corner: r = 100 * sqrt(2) / (1 + sqrt(2)).
    assert lake.inscribed_radius_m == pytest.approx(CORNER_RADIUS_M, abs=1.5)
    assert lake.area_m2 == pytest.approx(600 * 600 - 400 * 400, rel=0.01)


@pytest.mark.parametrize("source", ["overpass", "pbf"])
def test_classes_are_capped_and_small_or_open_shapes_dropped(source, pbf_path, stand_in):
    result = _sample(_config(source, pbf_path, stand_in))
    counts = Counter(result.locations["label"])
    assert counts == {"farmland": 3, "water": 2, "forest": 1, "farm_building": 1, "bridge": 1}
    expected = {"over_class_cap": 2, "too_small": 1}
    # Overpass returns the open breakwater line; osmium never makes an area of it. Overpass
    # is only asked for multipolygon relations; osmium also assembles the boundary.
    expected |= {"open_way": 1} if source == "overpass" else {"not_multipolygon": 1}
    assert result.dropped == expected


@pytest.mark.parametrize("source", ["overpass", "pbf"])
def test_same_seed_gives_identical_rows(source, pbf_path, stand_in):
    config = _config(source, pbf_path, stand_in)
    first, second = _sample(config, seed=7), _sample(config, seed=7)
    pd.testing.assert_frame_equal(first.locations, second.locations)
    farmland_choices = {
        tuple(_sample(config, seed).locations.query("label == 'farmland'")["osm_id"])
        for seed in range(6)
    }
    assert len(farmland_choices) > 1


def test_both_sources_place_identical_locations(pbf_path, stand_in):
    config = _config("overpass", pbf_path, stand_in, n=10)
    from_overpass = _sample(config).locations
    from_pbf = _sample(_config("pbf", pbf_path, stand_in, n=10)).locations
    pd.testing.assert_frame_equal(from_overpass, from_pbf)


def test_patch_rule_drops_polygons_narrower_than_required(pbf_path, stand_in):
    # Radius 6 m (bridge) and 15 m (farm building) fall below 0.25 * 64 m = 16 m.
    result = _sample(_config("pbf", pbf_path, stand_in, min_inscribed_fraction=0.25))
    assert set(result.locations["label"]) == {"farmland", "water", "forest"}
    assert result.dropped["too_small"] == 3


@pytest.mark.parametrize("source", ["overpass", "pbf"])
def test_multipolygons_keep_holes_and_nested_rings(source, pbf_path, stand_in):
    if source == "pbf":
        features, _ = read_pbf_features(pbf_path, [("natural", "water"), ("landuse", "forest")])
    else:
        payload = _client(stand_in).run(build_query([("natural", "water")], BBOX, 25))
        features = list(features_from_elements(payload["elements"], Counter()))
    assert {f.osm_id for f in features} >= {201, 202}
    for feature in features:
        original = BY_KEY[(feature.osm_type, feature.osm_id)].geometry
        assert feature.geometry.symmetric_difference(original).area < 1e-14
        assert feature.tags["type"] == "multipolygon"


def test_pole_respects_holes_where_a_naive_pole_would_not():
    lake = BY_KEY[("relation", 201)].geometry
    naive = polylabel(Polygon(lake.exterior), tolerance=1e-6)
    assert ISLAND.contains(naive)
    placement = place_in_area(lake, tolerance_m=0.5)
    assert lake.contains(Point(placement.lon, placement.lat))
    assert placement.inscribed_radius_m == pytest.approx(CORNER_RADIUS_M, abs=1)


def test_tiles_cover_the_box_and_duplicates_are_merged(fresh_stand_in):
    tiles = tile_bbox(BBOX, 0.02)
    assert len(tiles) == 3
    assert tiles[0][0] == BBOX[0] and tiles[-1][2] == BBOX[2]
    assert all(a[2] == pytest.approx(b[0]) for a, b in zip(tiles, tiles[1:], strict=False))
    straddling = BY_KEY[("way", 105)].geometry
    assert sum(box(*tile).intersects(straddling) for tile in tiles) == 2
    features, dropped = _client(fresh_stand_in).fetch_features(
        [("landuse", "farmland")], [BBOX], 0.02
    )
    assert sorted(f.osm_id for f in features) == [101, 102, 103, 104, 105]
    queries = [r.query for r in fresh_stand_in.requests if r.path == "/api/interpreter"]
    assert len(queries) == 3
    assert all('way["landuse"="farmland"]' in query for query in queries)


def test_query_text_has_the_overpass_shape():
    query = build_query([("man_made", "bridge")], (7.0, 50.0, 7.5, 50.25), 180)
    assert query.startswith("[out:json][timeout:180];")
    assert 'way["man_made"="bridge"](50,7,50.25,7.5);' in query
    assert 'relation["man_made"="bridge"]["type"="multipolygon"](50,7,50.25,7.5);' in query
    assert query.endswith(");\nout geom;")


def _client(server: OverpassStandIn, sleeps: list[float] | None = None, **kwargs):
    retry = kwargs.pop("retry", RetryPolicy(max_retries=2, base_delay_s=1.0, max_delay_s=3.0))
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return OverpassClient(server.interpreter_url, retry=retry, sleep=sleep, **kwargs)


QUERY = build_query([("landuse", "farmland")], BBOX, 25)


@pytest.mark.parametrize("fault", [OverpassFault.TOO_MANY_REQUESTS, OverpassFault.GATEWAY_TIMEOUT])
def test_busy_answers_are_retried_with_backoff(fresh_stand_in, fault):
    fresh_stand_in.inject(fault, fault)
    sleeps: list[float] = []
    payload = _client(fresh_stand_in, sleeps).run(QUERY)
    assert len(payload["elements"]) == 5
    assert sleeps == [1.0, 2.0]
    statuses = [r.status for r in fresh_stand_in.requests if r.path == "/api/interpreter"]
    assert statuses == [int(fault.value), int(fault.value), 200]


def test_runtime_error_remark_is_retried_then_fails(fresh_stand_in):
    fresh_stand_in.inject(OverpassFault.RUNTIME_ERROR)
    assert len(_client(fresh_stand_in).run(QUERY)["elements"]) == 5
    fresh_stand_in.inject(*[OverpassFault.RUNTIME_ERROR] * 3)
    sleeps: list[float] = []
    with pytest.raises(SourceError, match="3 attempts.*runtime error: Query timed out"):
        _client(fresh_stand_in, sleeps).run(QUERY)
    assert sleeps == [1.0, 2.0]


def test_bad_request_is_not_retried_and_quotes_the_error_line(fresh_stand_in):
    fresh_stand_in.inject(OverpassFault.BAD_REQUEST)
    with pytest.raises(SourceError, match=r"HTTP 400\): line 2: parse error: ';' expected - 'out'"):
        _client(fresh_stand_in).run(QUERY)
    assert [r.status for r in fresh_stand_in.requests if r.path == "/api/interpreter"] == [400]


def test_sampler_survives_a_rate_limit_and_reports_exhaustion(fresh_stand_in, pbf_path):
    config = _config("overpass", pbf_path, fresh_stand_in, max_retries=1)
    fresh_stand_in.inject(OverpassFault.TOO_MANY_REQUESTS)
    assert len(_sample(config).locations) == 8
    fresh_stand_in.inject(*[OverpassFault.GATEWAY_TIMEOUT] * 2)
    with pytest.raises(SourceError, match="HTTP 504"):
        config.sample(np.random.default_rng(0), RecordingProgress())


@pytest.mark.parametrize(("cap", "expected"), [(300.0, [27.0]), (5.0, [5.0])])
def test_client_waits_for_a_free_slot(fresh_stand_in, cap, expected):
    fresh_stand_in.set_slots(0, [27, 50])
    sleeps: list[float] = []
    _client(fresh_stand_in, sleeps, max_slot_wait_s=cap).run(QUERY)
    assert sleeps == expected
    fresh_stand_in.set_slots(2)
    sleeps.clear()
    _client(fresh_stand_in, sleeps).run(QUERY)
    assert sleeps == []


@pytest.mark.parametrize(
    ("name", "slots", "waits", "wait_s"),
    [("status_free.txt", 2, (), 0.0), ("status_busy.txt", 0, (27, 50), 27.0)],
)
def test_status_page_parsing(name, slots, waits, wait_s):
    status = parse_status((FIXTURES / name).read_text())
    assert (status.rate_limit, status.slots_available, status.slot_waits_s) == (2, slots, waits)
    assert status.wait_s == wait_s


def test_stand_in_status_page_parses_like_the_real_one(fresh_stand_in):
    fresh_stand_in.set_slots(0, [12])
    text = requests.get(f"{fresh_stand_in.base_url}/status", timeout=5).text
    assert text.splitlines()[0] == "Connected as: 2130706433"
    assert parse_status(text).wait_s == 12.0


def test_real_error_page_and_remarks():
    page = (FIXTURES / "overpy_bad-request.html").read_text()
    assert html_error_message(page) == "line 2: parse error: ';' expected - 'out' found."
    failed = json.loads((FIXTURES / "overpy_remark-runtime-error-01.json").read_text())
    assert runtime_error(failed).startswith('runtime error: Query timed out in "query"')
    informational = json.loads((FIXTURES / "overpy_remark-runtime-remark-01.json").read_text())
    assert runtime_error(informational) is None


def test_real_elements_that_are_not_areas_are_counted():
    dropped: Counter[str] = Counter()
    elements = []
    for name in ["overpy_relation-04_out_geom_trimmed.json", "overpy_way-02.json"]:
        elements += json.loads((FIXTURES / name).read_text())["elements"]
    elements += json.loads((FIXTURES / "overpy_area-01.json").read_text())["elements"]
    route = next(e for e in elements if e["type"] == "relation")
    as_multipolygon = {**route, "id": 1, "tags": {**route["tags"], "type": "multipolygon"}}
    assert list(features_from_elements([*elements, as_multipolygon], dropped)) == []
    # route relation; way without `out geom`; three chained open members that close no ring
    assert dropped == {"not_multipolygon": 1, "incomplete_geometry": 1, "unclosed_ring": 1}


def test_missing_pbf_is_a_user_error(tmp_path):
    config = OsmSamplerConfig(kind="osm", source="pbf", path=tmp_path / "nope.osm.pbf")
    with pytest.raises(UserError, match="nope.osm.pbf"):
        config.sample(np.random.default_rng(0), RecordingProgress())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"bboxes": [[8, 50, 7, 51]]}, "west < east"),
        ({"bboxes": [[7, 95, 8, 96]]}, "latitudes must lie in"),
        ({"bboxes": [[7, 50, 190, 51]]}, "longitudes must lie in"),
        ({"bboxes": []}, "needs bboxes"),
        ({"source": "pbf", "bboxes": []}, "needs path"),
        ({"source": "pbf", "path": "x.osm.pbf", "tile_deg": 0.5}, "tile_deg belong"),
        ({"path": "x.osm.pbf"}, "path belongs to source 'pbf'"),
        ({"classes": {"x": "landuse"}}, "classes.x: tag 'landuse' is not of the form"),
        ({"classes": {"a": "natural=water", "b": "natural=water"}}, "already used by 'a'"),
        ({"classes": {}}, "at least one class"),
        ({"endpoint": "ftp://example.org"}, "http:// or https://"),
        ({"tile_deg": 0}, "greater than 0"),
        ({"n": 0}, "greater than 0"),
        ({"polygon": 1}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_key(keys, message):
    base = {"kind": "osm", "bboxes": [[7, 50, 8, 51]]}
    with pytest.raises(ValidationError, match=message):
        OsmSamplerConfig(**(base | keys))


def test_custom_class_map_and_defaults():
    config = OsmSamplerConfig(kind="osm", bboxes=[[7, 50, 8, 51]], classes={"pond": "water=pond"})
    assert config.tags == {("water", "pond"): "pond"}
    default = OsmSamplerConfig(kind="osm", bboxes=[[7, 50, 8, 51]])
    assert (default.n, default.patch_size_m, default.endpoint) == (
        700,
        128.0,
        "https://overpass-api.de/api/interpreter",
    )
    assert len(default.classes) == 12


def test_stand_in_answers_get_and_post_in_the_overpass_shape(stand_in):
    query = build_query([("natural", "water"), ("landuse", "farmland")], BBOX, 25)
    by_get = requests.get(stand_in.interpreter_url, params={"data": query}, timeout=5).json()
    by_post = requests.post(stand_in.interpreter_url, data={"data": query}, timeout=5).json()
    assert by_get == by_post
    assert list(by_get) == ["version", "generator", "osm3s", "elements"]
    way, relation = by_get["elements"][0], by_get["elements"][-1]
    assert list(way) == ["type", "id", "bounds", "nodes", "geometry", "tags"]
    assert list(relation) == ["type", "id", "bounds", "members", "tags"]
    assert {m["role"] for m in relation["members"]} == {"outer", "inner"}
    assert [(e["type"], e["id"]) for e in by_get["elements"]] == [
        *(("way", i) for i in range(101, 106)),
        ("relation", 201),
        ("relation", 202),
    ]


def test_an_empty_area_gives_an_empty_typed_frame(stand_in, pbf_path):
    far_away = [[-20.0, -10.0, -19.9, -9.9]]
    result = _sample(_config("overpass", pbf_path, stand_in, bboxes=far_away))
    assert result.locations.empty and not result.dropped
    assert result.locations["lat"].dtype == float and result.locations["osm_id"].dtype == "int64"

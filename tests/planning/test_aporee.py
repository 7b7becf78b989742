"""The aporee sampler crawls the archive.org stand-in through the real internetarchive client."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic
import pytest
import requests

from geoprep.core.errors import SourceError
from geoprep.demo.archive_server import (
    METADATA_FILE,
    ArchiveStandIn,
    ItemFile,
    decode_cursor,
    serve_archive,
    write_item,
)
from geoprep.planning.samplers.aporee import (
    AporeeSampler,
    choose_audio_file,
    item_coordinates,
    parse_coverage,
    parse_duration,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "internet_archive"
MUNICH, SYDNEY = "aporee_46891_53254", "aporee_20938_24294"
TESTSOUND, NO_COORDINATES = "aporee_1001_1002", "aporee_5550_7777"
ARCHIVE = "http://archive.org"


class CountingProgress:
    def __init__(self) -> None:
        self.advanced = 0
        self.totals: list[int | None] = []

    def advance(self, n: int = 1) -> None:
        self.advanced += n

    def set_total(self, total: int | None) -> None:
        self.totals.append(total)


def fixture_item(identifier: str) -> dict:
    return json.loads((FIXTURES / f"metadata_{identifier}.json").read_text())


def lay_out(root: Path, items: dict[str, dict]) -> Path:
    """Write items in the stand-in layout: <root>/<identifier>/_metadata.json."""
    for identifier, item in items.items():
        item_dir = root / identifier
        item_dir.mkdir(parents=True)
        (item_dir / METADATA_FILE).write_text(json.dumps(item))
    return root


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[ArchiveStandIn]:
    """The four recorded-shape items, served two per scrape page."""
    items = {i: fixture_item(i) for i in (MUNICH, SYDNEY, TESTSOUND, NO_COORDINATES)}
    with ArchiveStandIn(lay_out(tmp_path / "items", items), page_size=2) as stand_in:
        yield stand_in


def sampler(stand_in: ArchiveStandIn, **overrides) -> AporeeSampler:
    config = dict(kind="aporee", n=100, proxy=stand_in.proxy_url, secure=False, backoff_s=0)
    return AporeeSampler(**(config | overrides))


def run(config: AporeeSampler, seed: int = 0):
    return config.sample(np.random.default_rng(seed), CountingProgress())


def test_crawl_keeps_located_recordings_and_counts_drops(archive: ArchiveStandIn) -> None:
    progress = CountingProgress()
    result = sampler(archive).sample(np.random.default_rng(0), progress)
    rows = result.locations.set_index("id")

    assert list(rows.index) == [SYDNEY, MUNICH]
    assert result.dropped == {"nondescript": 1, "no_coordinates": 1}
    munich, sydney = rows.loc[MUNICH], rows.loc[SYDNEY]
    assert (munich.lat, munich.lon) == (48.13729, 11.57549)
    assert (sydney.lat, sydney.lon) == (-33.85681, 151.21514)
    assert (munich.audio_file, munich.audio_format) == ("soundmap201905198.mp3", "mp3")
    assert (sydney.audio_file, sydney.audio_format) == ("nov19sydneyquay.ogg", "ogg")
    assert (sydney.audio_size, sydney.duration_s) == (7_400_000, 612.05)
    assert munich.title == "Viktualienmarkt, Munich, Germany"
    assert munich.license_url == "http://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert munich.download_url == (
        "http://archive.org/download/aporee_46891_53254/soundmap201905198.mp3"
    )
    assert set(rows.source) == {"aporee"} and rows.label.isna().all()
    assert progress.advanced == 2 and progress.totals[-1] == 2


def test_crawl_pages_through_the_scrape_api_via_the_proxy(archive: ArchiveStandIn) -> None:
    run(sampler(archive))
    scrapes = [r for r in archive.requests if r.path.endswith("/scrape")]
    assert len(scrapes) == 2
    assert "cursor" not in scrapes[0].query
    assert decode_cursor(scrapes[1].query["cursor"][0]) == SYDNEY
    metadata_paths = sorted(r.path for r in archive.requests if r.path.startswith("/metadata/"))
    assert metadata_paths == sorted(
        f"/metadata/{i}" for i in (MUNICH, SYDNEY, TESTSOUND, NO_COORDINATES)
    )
    # Absolute-URI requests for archive.org prove the client went through the proxy.
    assert {r.host for r in archive.requests} == {"archive.org"}


def test_crawl_reuses_no_connection_the_stand_in_closed(archive, caplog) -> None:
    # internetarchive asks for `Connection: close`; a server that closes without saying so in
    # its answer leaves the client a dead pooled connection, and urllib3 warns and retries.
    with caplog.at_level("WARNING", logger="urllib3"):
        run(sampler(archive, workers=4))
    assert not [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()]
    response = requests.get(
        f"http://archive.org/metadata/{MUNICH}",
        headers={"Connection": "close"},
        proxies={"http": archive.proxy_url},
        timeout=5,
    )
    assert response.status_code == 200 and response.headers["Connection"] == "close"


def test_stand_in_scrape_pages_have_the_recorded_shape(archive: ArchiveStandIn) -> None:
    recorded = [json.loads((FIXTURES / f"scrape_page{i}.json").read_text()) for i in (1, 2)]
    proxies = {"http": archive.proxy_url}
    url = "http://archive.org/services/search/v1/scrape"
    params = {"q": "collection:(radio-aporee-maps)", "fields": "identifier", "count": 100}
    first = requests.post(url, params=params, proxies=proxies, timeout=5).json()
    second = requests.post(
        url, params=params | {"cursor": first["cursor"]}, proxies=proxies, timeout=5
    ).json()

    assert first.keys() == recorded[0].keys() and second.keys() == recorded[1].keys()
    assert decode_cursor(recorded[0]["cursor"]) == recorded[0]["items"][-1]["identifier"]
    served = {i["identifier"] for page in (first, second) for i in page["items"]}
    assert served == {i["identifier"] for page in recorded for i in page["items"]}
    assert first["total"] == second["total"] == recorded[0]["total"]


def test_same_seed_same_rows_and_cap_takes_the_seeded_order(archive: ArchiveStandIn) -> None:
    first = run(sampler(archive, n=1), seed=7)
    again = run(sampler(archive, n=1), seed=7)
    assert first.locations.equals(again.locations) and first.dropped == again.dropped
    assert len(first.locations) == 1
    assert sum(first.dropped.values()) + 1 == 4
    assert first.dropped["over_cap"] >= 1

    picked = {run(sampler(archive, n=1), seed=s).locations.id.iloc[0] for s in range(12)}
    assert picked == {MUNICH, SYDNEY}


def test_identifier_order_fills_the_cap_with_the_first_identifiers(
    archive: ArchiveStandIn,
) -> None:
    result = run(sampler(archive, n=1, order="identifier"))
    assert list(result.locations.id) == [SYDNEY]
    assert result.dropped == {"nondescript": 1, "over_cap": 2}


def test_without_nondescript_patterns_the_testsound_fails_on_null_island(
    archive: ArchiveStandIn,
) -> None:
    result = run(sampler(archive, nondescript_patterns=()))
    assert result.dropped == {"null_island": 1, "no_coordinates": 1}


def test_min_duration_drops_short_recordings(archive: ArchiveStandIn) -> None:
    result = run(sampler(archive, min_duration_s=400))
    assert list(result.locations.id) == [SYDNEY]
    assert result.dropped["too_short"] == 1


def _munich_variant(identifier: str, change) -> dict:
    item = copy.deepcopy(fixture_item(MUNICH))
    item["metadata"]["identifier"] = identifier
    change(item)
    return item


def _set_metadata(**values):
    def change(item: dict) -> None:
        for key, value in values.items():
            if value is None:
                item["metadata"].pop(key, None)
            else:
                item["metadata"][key] = value

    return change


def _keep_only_files(*names: str):
    def change(item: dict) -> None:
        item["files"] = [f for f in item["files"] if f["name"] in names]

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_set_metadata(latitude="95.0"), "invalid_coordinates"),
        (_set_metadata(longitude="-181"), "invalid_coordinates"),
        (_set_metadata(latitude=None, longitude=None, coverage="Munich"), "no_coordinates"),
        (_set_metadata(title="Untitled"), "nondescript"),
        (_set_metadata(description=["fine", "just a TEST"]), "nondescript"),
        (_keep_only_files("soundmap201905198.png", "aporee_46891_53254_meta.xml"), "no_audio"),
        (lambda item: None, "duplicate_audio"),
    ],
)
def test_each_kind_of_bad_item_is_dropped_with_its_reason(
    tmp_path: Path, change, reason: str
) -> None:
    items = {
        MUNICH: fixture_item(MUNICH),
        "aporee_99999_1": _munich_variant("aporee_99999_1", change),
    }
    with ArchiveStandIn(lay_out(tmp_path, items)) as stand_in:
        result = run(sampler(stand_in, order="identifier"))
    assert list(result.locations.id) == [MUNICH]
    assert result.dropped == {reason: 1}


def test_a_darked_item_without_metadata_is_dropped(archive: ArchiveStandIn) -> None:
    archive.darken(MUNICH)
    result = run(sampler(archive))
    assert list(result.locations.id) == [SYDNEY]
    assert result.dropped["no_metadata"] == 1


def test_coverage_numbers_locate_an_item_without_latitude(tmp_path: Path) -> None:
    item = _munich_variant(
        "aporee_99999_2", _set_metadata(latitude=None, longitude=None, coverage="46.36, 14.09")
    )
    with ArchiveStandIn(lay_out(tmp_path, {"aporee_99999_2": item})) as stand_in:
        result = run(sampler(stand_in))
    assert (result.locations.lat[0], result.locations.lon[0]) == (46.36, 14.09)


def test_a_transient_503_is_retried(archive: ArchiveStandIn) -> None:
    archive.fail_next(f"/metadata/{MUNICH}", status=503, times=1)
    archive.fail_next("/services/search", status=503, times=1)
    result = run(sampler(archive))
    assert len(result.locations) == 2
    statuses = [r.status for r in archive.requests if r.path == f"/metadata/{MUNICH}"]
    assert statuses == [503, 200]


def test_persistent_failure_raises_source_error(archive: ArchiveStandIn) -> None:
    archive.fail_next(f"/metadata/{MUNICH}", status=503, times=10)
    with pytest.raises(SourceError, match=MUNICH):
        run(sampler(archive, retries=2))


def test_unknown_collection_yields_nothing(archive: ArchiveStandIn) -> None:
    result = run(sampler(archive, collection="someone-else"))
    assert result.locations.empty and list(result.locations.columns)[:5] == [
        "id", "lat", "lon", "source", "label",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [{"proxy": "127.0.0.1:8080"}, {"nondescript_patterns": ["(unclosed"]}, {"n": 0}],
)
def test_bad_config_is_rejected(overrides: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        AporeeSampler(kind="aporee", **({"n": 5} | overrides))


def test_download_endpoint_serves_bytes_and_ranges(tmp_path: Path) -> None:
    audio = bytes(range(256)) * 40
    write_item(
        tmp_path,
        "aporee_1_2",
        {"title": "x", "collection": ["radio-aporee-maps"]},
        [ItemFile("rec.ogg", audio, length_s=3.0)],
    )
    with serve_archive(tmp_path) as proxy_url:
        proxies = {"http": proxy_url}
        url = "http://archive.org/download/aporee_1_2/rec.ogg"
        whole = requests.get(url, proxies=proxies, timeout=5)
        part = requests.get(url, proxies=proxies, headers={"Range": "bytes=10-19"}, timeout=5)
        tail = requests.get(url, proxies=proxies, headers={"Range": "bytes=-5"}, timeout=5)
        beyond = requests.get(url, proxies=proxies, headers={"Range": "bytes=99999-"}, timeout=5)
        escape = requests.get(
            "http://archive.org/download/aporee_1_2/..%2F..%2Fetc%2Fpasswd",
            proxies=proxies,
            timeout=5,
        )
        elsewhere = requests.get("http://example.com/", proxies=proxies, timeout=5)
        item = requests.get(f"{ARCHIVE}/metadata/aporee_1_2", proxies=proxies, timeout=5).json()
        missing = requests.get(f"{ARCHIVE}/metadata/aporee_0_0", proxies=proxies, timeout=5)

    assert whole.content == audio and whole.headers["Content-Length"] == str(len(audio))
    assert part.status_code == 206 and part.content == audio[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(audio)}"
    assert tail.content == audio[-5:]
    assert beyond.status_code == 416
    assert escape.status_code == 404 and elsewhere.status_code == 502
    (entry,) = item["files"]
    chosen = choose_audio_file(item["files"])
    assert entry["size"] == str(len(audio)) and chosen.md5 == entry["md5"]
    assert chosen.duration_s == 3.0 and missing.json() == {}


def _original(name: str, format: str) -> dict:
    return {"name": name, "source": "original", "format": format, "size": "1000", "md5": "ab"}


def _derived(name: str, format: str) -> dict:
    return {"name": name, "source": "derivative", "format": format, "size": "900", "md5": "cd"}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([_original("a.wav", "WAVE"), _derived("a.mp3", "VBR MP3")], "a.wav"),
        ([_original("a.flac", "Flac"), _derived("a.ogg", "Ogg Vorbis")], "a.flac"),
        ([_original("a.mp3", "VBR MP3"), _original("b.ogg", "Ogg Vorbis")], "b.ogg"),
        ([_original("a.m4a", "MPEG4"), _derived("a.mp3", "VBR MP3")], "a.mp3"),
        ([_derived("a.ogg", "Ogg Vorbis"), _derived("a.mp3", "VBR MP3")], "a.mp3"),
        ([_original("a.aiff", "AIFF"), _derived("a.ogg", "Ogg Vorbis")], "a.ogg"),
        ([_original("rec", "WAVE")], "rec"),
        ([_derived("a.png", "PNG"), {"name": "a_meta.xml", "source": "metadata"}], None),
        ([_derived("a.mp3", "64Kbps MP3")], None),
        ([], None),
    ],
)
def test_audio_file_choice(files: list[dict], expected: str | None) -> None:
    chosen = choose_audio_file(files)
    assert (chosen.name if chosen else None) == expected


def test_audio_file_fields_are_parsed() -> None:
    chosen = choose_audio_file(fixture_item(SYDNEY)["files"])
    assert chosen is not None
    assert (chosen.size, chosen.duration_s, chosen.audio_format) == (7_400_000, 612.05, "ogg")


@pytest.mark.parametrize(
    ("coverage", "expected"),
    [
        ("48.13729, 11.57549", (48.13729, 11.57549)),
        ("Circular Quay, -33.85681 151.21514", (-33.85681, 151.21514)),
        ("33.85681 S, 151.21514 E", (-33.85681, 151.21514)),
        ("151.21514E 33.85681S", (-33.85681, 151.21514)),
        ("48°N 11°E", (48.0, 11.0)),
        (["Viktualienmarkt", "48.1 11.5"], (48.1, 11.5)),
        ("Forest near Lake Bled, Slovenia", None),
        ("Route 66, 1999 recording", None),
        ("only one 48.1", None),
        ("testsound", None),
        ("", None),
        (None, None),
    ],
)
def test_coverage_parsing(coverage, expected) -> None:
    assert parse_coverage(coverage) == expected


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"latitude": "48.1", "longitude": "11.5", "coverage": "1.5, 2.5"}, (48.1, 11.5)),
        ({"latitude": ["-33.8"], "longitude": ["151.2"]}, (-33.8, 151.2)),
        ({"latitude": "", "longitude": "11.5", "coverage": "1.5, 2.5"}, (1.5, 2.5)),
        ({"latitude": "nan", "longitude": "11.5"}, None),
        ({"latitude": "north", "longitude": "east"}, None),
    ],
)
def test_item_coordinates_prefer_latitude_longitude(metadata: dict, expected) -> None:
    assert item_coordinates(metadata) == expected


@pytest.mark.parametrize(
    ("length", "expected"),
    [("351.4", 351.4), ("5:51", 351.0), ("1:00:05", 3605.0), (["12"], 12.0), ("n/a", None)],
)
def test_duration_parsing(length, expected) -> None:
    result = parse_duration(length)
    assert result == expected or (expected is None and result is None)
    assert result is None or math.isfinite(result)

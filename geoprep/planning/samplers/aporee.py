"""Geotagged field recordings of Radio Aporee on the Internet Archive (SoundingEarth)."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import pandas as pd
import requests
from internetarchive import ArchiveSession
from pydantic import Field, field_validator
from urllib3.util.retry import Retry

from geoprep.core.errors import SourceError
from geoprep.planning.samplers.base import MAX_LOCATIONS, Progress, SamplerConfig, SampleResult

log = logging.getLogger(__name__)

SOURCE = "aporee"
#: Audio file extensions we decode, in order of preference among an item's originals.
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
#: archive.org derivatives to fall back on when no original is usable, in order of preference.
DERIVATIVE_FORMATS = ("VBR MP3", "Ogg Vorbis")
#: archive.org ``format`` values of audio files, for names that lack a telling extension.
_EXTENSION_BY_FORMAT = {
    "VBR MP3": "mp3",
    "MP3": "mp3",
    "64Kbps MP3": "mp3",
    "128Kbps MP3": "mp3",
    "Ogg Vorbis": "ogg",
    "Flac": "flac",
    "24bit Flac": "flac",
    "WAVE": "wav",
}
#: Placeholders and test uploads (SoundingEarth removed such "nondescript" recordings).
DEFAULT_NONDESCRIPT_PATTERNS = (
    r"\btest(ing)?\d*\b",
    r"testsound",
    r"\buntitled\b",
    r"\bplease ignore\b",
)
COLUMNS = (
    "id",
    "lat",
    "lon",
    "source",
    "label",
    "identifier",
    "audio_file",
    "audio_format",
    "audio_size",
    "audio_md5",
    "duration_s",
    "title",
    "description",
    "creator",
    "license_url",
    "download_url",
)
_RETRY_STATUSES = (429, 500, 502, 503, 504)
# A coordinate inside free text: a decimal number, or a number with a hemisphere letter.
_COORDINATE = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?(?P<number>\d{1,3}(?:\.\d+)?)"
    r"\s*°?\s*(?P<hemisphere>[NSEW])?(?![\w.])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AudioFile:
    """The recording file chosen for an item."""

    name: str
    audio_format: str
    size: int | None
    md5: str | None
    duration_s: float | None


def as_strings(value: Any) -> list[str]:
    """Metadata values are strings or lists of strings; return a list of non-empty strings."""
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def first_string(value: Any) -> str | None:
    strings = as_strings(value)
    return strings[0] if strings else None


def joined_strings(value: Any, separator: str) -> str | None:
    strings = as_strings(value)
    return separator.join(strings) if strings else None


def parse_float(value: Any) -> float | None:
    text = first_string(value)
    try:
        number = float(text.replace("\u2212", "-")) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_duration(value: Any) -> float | None:
    """Seconds from archive.org's ``length``: ``"351.4"`` or ``"5:51"`` / ``"1:05:51"``."""
    text = first_string(value)
    if text is None:
        return None
    if ":" in text:
        try:
            seconds = 0.0
            for part in text.split(":"):
                seconds = seconds * 60 + float(part)
        except ValueError:
            return None
        return seconds
    return parse_float(text)


def parse_coverage(value: Any) -> tuple[float, float] | None:
    """(lat, lon) from free text such as ``"48.137, 11.575"`` or ``"33.86 S 151.21 E"``.

    The syntax of ``coverage`` is not documented, so only numbers that look like coordinates
    count: decimals, or numbers followed by a hemisphere letter. The first two are taken as
    lat, lon, swapped when their hemisphere letters say lon comes first.
    """
    text = joined_strings(value, " ")
    if text is None:
        return None
    found = []
    for match in _COORDINATE.finditer(text):
        hemisphere = (match["hemisphere"] or "").upper()
        if "." not in match["number"] and not hemisphere:
            continue
        number = float(match["number"])
        if match["sign"] in ("-", "\u2212") or hemisphere in ("S", "W"):
            number = -number
        found.append((number, hemisphere))
    if len(found) < 2:
        return None
    (first, first_hemisphere), (second, second_hemisphere) = found[:2]
    if first_hemisphere in ("E", "W") and second_hemisphere in ("N", "S", ""):
        return second, first
    return first, second


def item_coordinates(metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """(lat, lon) from ``latitude``/``longitude``, else from numbers in ``coverage``."""
    lat, lon = parse_float(metadata.get("latitude")), parse_float(metadata.get("longitude"))
    if lat is not None and lon is not None:
        return lat, lon
    return parse_coverage(metadata.get("coverage"))


def _audio_format(entry: Mapping[str, Any]) -> str | None:
    extension = PurePosixPath(str(entry.get("name", ""))).suffix.lower().lstrip(".")
    if extension in AUDIO_EXTENSIONS:
        return extension
    return _EXTENSION_BY_FORMAT.get(str(entry.get("format", "")))


def choose_audio_file(files: Iterable[Mapping[str, Any]]) -> AudioFile | None:
    """The original upload if it is mp3/ogg/wav/flac, else a VBR MP3 or Ogg Vorbis derivative."""
    originals, derivatives = [], []
    for entry in files:
        audio_format = _audio_format(entry)
        if not entry.get("name") or audio_format is None:
            continue
        if entry.get("source") == "original":
            originals.append((AUDIO_EXTENSIONS.index(audio_format), str(entry["name"]), entry))
        elif entry.get("format") in DERIVATIVE_FORMATS:
            rank = DERIVATIVE_FORMATS.index(entry["format"])
            derivatives.append((rank, str(entry["name"]), entry))
    candidates = sorted(originals, key=lambda c: c[:2]) or sorted(derivatives, key=lambda c: c[:2])
    if not candidates:
        return None
    entry = candidates[0][2]
    size = parse_float(entry.get("size"))
    return AudioFile(
        name=str(entry["name"]),
        audio_format=str(_audio_format(entry)),
        size=int(size) if size is not None else None,
        md5=first_string(entry.get("md5")),
        duration_s=parse_duration(entry.get("length")),
    )


class AporeeSampler(SamplerConfig):
    """Recording locations crawled from an Internet Archive collection (scrape API + metadata).

    Duplicates: an identifier listed twice is kept once; two items whose chosen audio files
    share md5 *and* size are the same upload, and only the first one examined is kept. Items
    are examined in ``order`` until ``n`` are kept; the rest count as ``over_cap``.

    ``proxy`` with ``secure: false`` sends plain-HTTP requests for archive.org through an HTTP
    proxy, which is how the offline stand-in (:mod:`geoprep.demo.archive_server`) is reached:
    ``internetarchive`` only talks to hosts under archive.org.
    """

    kind: Literal["aporee"]
    n: int = Field(
        100_000, gt=0, le=MAX_LOCATIONS, description="cap on the number of recordings kept"
    )
    collection: str = Field("radio-aporee-maps", min_length=1, description="IA collection")
    order: Literal["random", "identifier"] = Field(
        "random",
        description="which recordings fill the cap: a seeded random order or identifier order",
    )
    nondescript_patterns: tuple[str, ...] = Field(
        DEFAULT_NONDESCRIPT_PATTERNS,
        description="case-insensitive regexes; a match in title, description or audio file "
        "name drops the recording",
    )
    min_duration_s: float | None = Field(None, ge=0, description="drop shorter recordings")
    workers: int = Field(4, ge=1, le=32, description="parallel metadata requests")
    timeout_s: float = Field(30.0, gt=0, description="per-request timeout, seconds")
    retries: int = Field(5, ge=0, description="retries of failed or throttled requests")
    backoff_s: float = Field(1.0, ge=0, description="exponential backoff factor, seconds")
    proxy: str | None = Field(None, description="HTTP proxy URL, e.g. http://127.0.0.1:8080")
    secure: bool = Field(True, description="talk HTTPS to archive.org (false: plain HTTP)")

    @field_validator("nondescript_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns

    @field_validator("proxy")
    @classmethod
    def _proxy_is_url(cls, proxy: str | None) -> str | None:
        if proxy is None:
            return None
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"proxy must look like http://HOST:PORT, got {proxy!r}")
        return proxy

    def sample(self, rng: np.random.Generator, progress: Progress) -> SampleResult:
        dropped: Counter[str] = Counter()
        with self.open_session() as session:
            progress.set_total(None)
            listed = list(self._list_identifiers(session))
            identifiers = sorted(set(listed))
            dropped["duplicate_identifier"] += len(listed) - len(identifiers)
            if self.order == "random":
                identifiers = [identifiers[i] for i in rng.permutation(len(identifiers))]
            log.info("%d items listed in %s", len(identifiers), self.collection)
            progress.set_total(min(self.n, len(identifiers)))
            rows, examined = self._examine_items(session, identifiers, dropped, progress)
        dropped["over_cap"] += len(identifiers) - examined
        progress.set_total(len(rows))
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
        frame["audio_size"] = frame["audio_size"].astype("Int64")
        frame[["lat", "lon", "duration_s"]] = frame[["lat", "lon", "duration_s"]].astype(float)
        return SampleResult(locations=frame, dropped=+dropped)

    def _examine_items(
        self,
        session: ArchiveSession,
        identifiers: list[str],
        dropped: Counter[str],
        progress: Progress,
    ) -> tuple[list[dict[str, Any]], int]:
        """Fetch metadata in order until ``n`` items are kept; return the rows and items seen."""
        cleaner = _Cleaner(self, session.protocol)
        rows: list[dict[str, Any]] = []
        examined = 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while examined < len(identifiers) and len(rows) < self.n:
                # Fetch a little more than the cap still needs; decisions are made in order, so
                # the result does not depend on which request finishes first.
                batch_size = min(self.workers * 4, max(self.workers, self.n - len(rows)))
                batch = identifiers[examined : examined + batch_size]
                items = pool.map(lambda identifier: self._fetch(session, identifier), batch)
                for identifier, item in zip(batch, items, strict=True):
                    examined += 1
                    if len(rows) >= self.n:
                        dropped["over_cap"] += 1
                        continue
                    row, reason = cleaner.examine(identifier, item)
                    if reason is not None:
                        dropped[reason] += 1
                        continue
                    rows.append(row)
                    progress.advance()
        return rows, examined

    def open_session(self) -> ArchiveSession:
        """An ``internetarchive`` session with our retries, optionally through ``proxy``."""
        session = ArchiveSession(
            config={"general": {"secure": self.secure}},
            http_adapter_kwargs={"max_retries": self._retry()},
        )
        if self.proxy is not None:
            session.proxies = {"http": self.proxy, "https": self.proxy}
            # requests lets environment proxies override the session's own; ours must win.
            session.trust_env = False
        return session

    def _retry(self) -> Retry:
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            redirect=False,
            allowed_methods=["GET", "HEAD", "POST"],
            status_forcelist=_RETRY_STATUSES,
            backoff_factor=self.backoff_s,
            respect_retry_after_header=True,
        )

    def _list_identifiers(self, session: ArchiveSession) -> Iterator[str]:
        search = session.search_items(
            f"collection:({self.collection})",
            fields=["identifier"],
            request_kwargs={"timeout": self.timeout_s},
            max_retries=self._retry(),
        )
        try:
            for result in search:
                if "error" in result:
                    raise SourceError(f"archive.org scrape of {self.collection}: {result['error']}")
                yield str(result["identifier"])
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise SourceError(f"archive.org scrape of {self.collection} failed: {exc}") from exc

    def _fetch(self, session: ArchiveSession, identifier: str) -> dict[str, Any]:
        try:
            item = session.get_metadata(identifier, request_kwargs={"timeout": self.timeout_s})
        except (requests.RequestException, ValueError) as exc:
            raise SourceError(f"archive.org metadata of {identifier} failed: {exc}") from exc
        return item if isinstance(item, dict) else {}


class _Cleaner:
    """Turns item metadata into a row, or the reason the item is dropped."""

    def __init__(self, config: AporeeSampler, protocol: str):
        self._config = config
        self._protocol = protocol
        self._nondescript = [re.compile(p, re.IGNORECASE) for p in config.nondescript_patterns]
        self._ids: set[str] = set()
        self._audio: set[tuple[str, int | None]] = set()

    def examine(
        self, identifier: str, item: Mapping[str, Any]
    ) -> tuple[dict[str, Any], None] | tuple[None, str]:
        metadata = item.get("metadata")
        if not isinstance(metadata, Mapping) or not metadata:
            return None, "no_metadata"
        files = item.get("files") if isinstance(item.get("files"), list) else []
        audio = choose_audio_file(f for f in files if isinstance(f, Mapping))
        title = joined_strings(metadata.get("title"), " ")
        description = joined_strings(metadata.get("description"), "\n")
        texts = [t for t in (title, description, audio.name if audio else None) if t]
        if any(p.search(text) for p in self._nondescript for text in texts):
            return None, "nondescript"
        coordinates = item_coordinates(metadata)
        if coordinates is None:
            return None, "no_coordinates"
        lat, lon = coordinates
        if abs(lat) > 90 or abs(lon) > 180:
            return None, "invalid_coordinates"
        if lat == 0 and lon == 0:
            return None, "null_island"
        if audio is None:
            return None, "no_audio"
        minimum = self._config.min_duration_s
        if minimum is not None and (audio.duration_s is None or audio.duration_s < minimum):
            return None, "too_short"
        location_id = identifier.replace(".", "_")
        if location_id in self._ids:
            return None, "duplicate_identifier"
        if audio.md5 is not None:
            if (audio.md5, audio.size) in self._audio:
                return None, "duplicate_audio"
            self._audio.add((audio.md5, audio.size))
        self._ids.add(location_id)
        return {
            "id": location_id,
            "lat": lat,
            "lon": lon,
            "source": SOURCE,
            "label": None,
            "identifier": identifier,
            "audio_file": audio.name,
            "audio_format": audio.audio_format,
            "audio_size": audio.size,
            "audio_md5": audio.md5,
            "duration_s": audio.duration_s if audio.duration_s is not None else math.nan,
            "title": title,
            "description": description,
            "creator": joined_strings(metadata.get("creator"), "; "),
            "license_url": first_string(metadata.get("licenseurl")),
            "download_url": download_url(identifier, audio.name, self._protocol),
        }, None


def download_url(identifier: str, name: str, protocol: str = "https:") -> str:
    """``{protocol}//archive.org/download/{identifier}/{name}`` with the name URL-quoted."""
    return f"{protocol}//archive.org/download/{quote(identifier)}/{quote(name)}"

"""Read failures by kind (location, transient, systemic), retries with backoff, a circuit breaker.

A location's own failure (no scene, clouds, nodata, a file the archive lacks) is part of the
dataset: it is recorded and its shard committed. A transient one (HTTP 429/5xx, a reset or
truncated answer, a time-out) is retried with backoff and jitter under a bounded budget; if it
outlasts the budget the location's shard is not committed, so a rerun tries it again. A systemic
one (the token service or blob store unreachable, every read refused) stops the build early with
one line that names the cause and the fix: the `CircuitBreaker` watches the reads for it.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeVar

from geoprep.core.errors import SourceError

log = logging.getLogger(__name__)

FailureKind = Literal["location", "transient", "systemic"]
FAILURE_KINDS: tuple[FailureKind, ...] = ("location", "transient", "systemic")
T = TypeVar("T")


class ReadFailure(SourceError):
    """A read that failed. `cause` is short and shared by reads failing alike ("HTTP 503"), for
    the breaker; `retry` says whether another attempt may help, `resign` whether it needs fresh
    tokens first; `fix` is what a user can do if every read fails this way."""

    def __init__(
        self, message: str, cause: str, retry: bool = True, resign: bool = False, fix: str = ""
    ) -> None:
        super().__init__(message)
        self.cause, self.retry, self.resign, self.fix = cause, retry, resign, fix

    def __reduce__(self):  # travels between processes with its fields
        return type(self), (str(self), self.cause, self.retry, self.resign, self.fix)


class SystemicFailure(SourceError):
    """The build cannot go on: the reads fail for one reason that is not the data's."""


# ---------------------------------------------------------------------------- classification
_HTTP_STATUS = re.compile(r"HTTP response code: (\d{3})")
_CURL_CONNECT = re.compile(
    r"Could not connect|Couldn't connect|Failed to connect|Connection refused", re.IGNORECASE
)
_CURL_RESOLVE = re.compile(r"Could not resolve (host|proxy)", re.IGNORECASE)
_RESET = re.compile(r"reset by peer|Recv failure|Send failure|Empty reply", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed out|Timeout", re.IGNORECASE)


def gdal_failure(message: str, what: str) -> ReadFailure:
    """Classify GDAL's message for a failed open or read of `what` (an href without token)."""
    text = f"{what}: {message}"
    proxy = os.environ.get("GDAL_HTTP_PROXY")
    if match := _HTTP_STATUS.search(message):
        status = int(match.group(1))
        if status == 403:
            return ReadFailure(
                text,
                "HTTP 403",
                resign=True,
                fix="the blob store refuses the signed URLs even after re-signing; check "
                "the token service (PC_SDK_SAS_URL, PC_SDK_SUBSCRIPTION_KEY)",
            )
        if status in (404, 410):
            # the archive lacks the file: the location's failure, unless every file is missing
            return ReadFailure(
                text,
                f"HTTP {status}",
                retry=False,
                fix="the catalog's hrefs do not exist in the blob store; is the catalog's "
                "provider (signing) right?",
            )
        if status == 429 or status >= 500:
            return ReadFailure(
                text,
                f"HTTP {status}",
                fix="the blob store is down or throttling; try again later (the build resumes)",
            )
        return ReadFailure(text, f"HTTP {status}", retry=False)
    if _CURL_RESOLVE.search(message):
        return ReadFailure(
            text,
            "name not resolved",
            fix="check DNS and the proxy setting (GDAL_HTTP_PROXY, HTTP_PROXY)",
        )
    if _CURL_CONNECT.search(message):
        where = f"the proxy {proxy}" if proxy else "the blob store"
        return ReadFailure(
            text,
            "connection refused",
            fix=f"cannot connect to {where}; is "
            f"{'GDAL_HTTP_PROXY' if proxy else 'the network'} right?",
        )
    if _RESET.search(message):
        return ReadFailure(text, "connection reset", fix="the network or blob store drops reads")
    if _TIMEOUT.search(message):
        return ReadFailure(text, "timed out", fix="the blob store does not answer in time")
    # A cut-short answer leaves GDAL with bytes it cannot parse (a header that is "not
    # recognized", a tile that does not decode): retried as transient.
    return ReadFailure(text, "unreadable answer", fix="the blob store's answers are cut short")


# ---------------------------------------------------------------------------- GDAL's memory
@lru_cache(maxsize=1)
def _gdal_library() -> ctypes.CDLL | None:
    """The libgdal rasterio runs on (its wheel bundles one); None if it cannot be found."""
    import rasterio

    here = os.path.dirname(rasterio.__file__)
    found = sorted(glob.glob(here + ".libs/libgdal*.so*")) or sorted(
        glob.glob(os.path.join(here, ".dylibs", "libgdal*"))
    )
    names = [*found, "libgdal.so"]
    for name in names:
        try:
            library = ctypes.CDLL(name)
            library.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            return library
        except (OSError, AttributeError):
            continue
    log.warning("libgdal not found: failed reads cannot be cleared from GDAL's cache")
    return None


def forget_in_gdal(href: str) -> None:
    """Drop what GDAL's /vsicurl/ cache holds for `href` (file size, "does not exist", blocks):
    after a failure GDAL would otherwise answer from memory without asking again. rasterio has
    no binding for VSICurlPartialClearCache, hence ctypes on the same libgdal."""
    library = _gdal_library()
    if library is not None:
        unsigned = href.split("?", 1)[0]  # a prefix: every signed variant of the file goes
        library.VSICurlPartialClearCache(f"/vsicurl/{unsigned}".encode())


def forget_all_in_gdal() -> None:
    """Empty GDAL's /vsicurl/ cache of every file (what a new process starts with)."""
    library = _gdal_library()
    if library is not None:
        library.VSICurlClearCache()


# ---------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries at most; before try n+1 a pause drawn uniformly from [0, min(cap_s,
    base_s * 2**n)] ("full jitter": many threads and workers do not retry in step). The
    pause is timing only, never data, so it need not come from the recipe's seed."""

    attempts: int = 5
    base_s: float = 0.25
    cap_s: float = 4.0

    def pause(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


DEFAULT_RETRY = RetryPolicy()


def with_retries(
    attempt: Callable[[bool], T],
    breaker: CircuitBreaker,
    policy: RetryPolicy = DEFAULT_RETRY,
    after_failure: Callable[[ReadFailure], None] | None = None,
    source: str = "blobs",
) -> T:
    """`attempt(resign)` until it succeeds, fails for good, or the budget is spent.

    Every outcome goes to `breaker` under `source` (which may stop the build); `after_failure`
    undoes what a failure left behind (cached bytes, an open dataset).
    """
    resign = False
    for number in range(policy.attempts):
        breaker.check()
        try:
            result = attempt(resign)
        except ReadFailure as failure:
            if after_failure is not None:  # also when giving up: a later read asks afresh
                after_failure(failure)
            breaker.failure(failure, source)
            if not failure.retry or number == policy.attempts - 1:
                raise
            log.debug("retrying after %s", failure)
            resign = failure.resign
            time.sleep(policy.pause(number))
        else:
            breaker.success(source)
            return result
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- the breaker
class CircuitBreaker:
    """Stops a build whose reads from one source (blobs, tokens) fail for one reason: the first
    `first` outcomes all failures of one cause, or `share` of the last `window` outcomes.
    Thread-safe; once tripped, every `check` raises the same `SystemicFailure`."""

    def __init__(self, first: int = 5, window: int = 40, share: float = 0.9) -> None:
        self.first, self.window, self.share = first, window, share
        self._recent: dict[str, deque[str | None]] = {}
        self._successes: Counter[str] = Counter()
        self._tripped: SystemicFailure | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self._tripped is not None:
            raise self._tripped

    def interrupt(self) -> None:
        """Open the breaker for good (Ctrl-C): reads still retrying give up at once."""
        with self._lock:
            self._tripped = self._tripped or SystemicFailure("interrupted")

    def has_succeeded(self, source: str) -> bool:
        """Whether any read of `source` succeeded in this build (in this process)."""
        return self._successes[source] > 0

    def _outcomes(self, source: str) -> deque[str | None]:
        return self._recent.setdefault(source, deque(maxlen=self.window))

    def success(self, source: str) -> None:
        with self._lock:
            self._successes[source] += 1
            self._outcomes(source).append(None)

    def failure(self, failure: ReadFailure, source: str) -> None:
        with self._lock:
            recent = self._outcomes(source)
            recent.append(failure.cause)
            cause, count = Counter(c for c in recent if c is not None).most_common(1)[0]
            early = not self._successes[source] and count >= self.first
            late = len(recent) == self.window and count >= self.share * self.window
            if (early or late) and self._tripped is None:
                fix = f"; {failure.fix}" if failure.fix else ""
                seen = f"{count} of the {'first' if early else 'last'} {len(recent)}"
                self._tripped = SystemicFailure(
                    f"stopped: {seen} reads of {source} failed with {cause} ({failure}){fix}"
                )
        self.check()

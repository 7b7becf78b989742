"""A stand-in for Planetary Computer's SAS token service, minting tokens in the real shape."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from geoprep.demo.file_server import BLOB_HOST_SUFFIX, UvicornThreadServer, sas_signature

log = logging.getLogger(__name__)

TOKEN_PATH = "/api/sas/v1/token"
SIGN_PATH = "/api/sas/v1/sign"
SAS_VERSION = "2021-06-08"

# Storage account and container behind each collection, as on the Planetary Computer.
PC_STORAGE: dict[str, tuple[str, str]] = {
    "sentinel-2-l2a": ("sentinel2l2a01", "sentinel2-l2"),
    "naip": ("naipeuwest", "naip"),
    "landsat-c2-l2": ("landsateuwest", "landsat-c2"),
    "sentinel-1-rtc": ("sentinel1euwestrtc", "sentinel1-grd-rtc"),
}

# Fixed identities so tokens differ only by time and container, never by run.
_SIGNING_OBJECT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "geoprep-demo/sas/object"))
_SIGNING_TENANT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "geoprep-demo/sas/tenant"))


def _sas_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mint_token(
    key: bytes, account: str, container: str, lifetime: timedelta, now: datetime
) -> tuple[str, str]:
    """(token, msft:expiry) for a read/list container SAS valid until now + lifetime.

    Like the real service, `st` lies a day in the past and the user-delegation key (`skt`/`ske`)
    is valid for a week; values are URL-encoded and the token has no leading `?`.
    """
    now = now.replace(microsecond=0)
    key_start = now - timedelta(hours=12)
    fields = {
        "st": _sas_time(now - timedelta(days=1)),
        "se": _sas_time(now + lifetime),
        "sp": "rl",
        "sv": SAS_VERSION,
        "sr": "c",
        "skoid": _SIGNING_OBJECT_ID,
        "sktid": _SIGNING_TENANT_ID,
        "skt": _sas_time(key_start),
        "ske": _sas_time(key_start + timedelta(days=7)),
        "sks": "b",
        "skv": SAS_VERSION,
    }
    fields["sig"] = sas_signature(key, account, container, fields)
    token = "&".join(f"{name}={quote(value, safe='')}" for name, value in fields.items())
    return token, fields["se"]


class SasTokenServer(UvicornThreadServer):
    """Serves `GET /api/sas/v1/token/{account}/{container}`, `/token/{collection}` and `/sign`.

    `token_requests` counts issued tokens by `account/container` (collection ids count under
    their container), so tests can see the SDK's caching and renewal. `throttle_next(n)` makes
    the next n requests answer 429 as the real service does under load.
    """

    def __init__(
        self,
        port: int = 0,
        signing_key: bytes | None = None,
        lifetime: timedelta = timedelta(minutes=45),
        collections: Mapping[str, tuple[str, str]] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout)
        self.signing_key = signing_key if signing_key is not None else os.urandom(32)
        self.lifetime = lifetime
        self.collections = dict(PC_STORAGE if collections is None else collections)
        self.clock = clock
        self.token_requests: Counter[str] = Counter()
        self.throttled = 0
        self._throttle_left = 0
        self._retry_after: int | None = None
        self._lock = threading.Lock()

    @property
    def token_url(self) -> str:
        """The value for `PC_SDK_SAS_URL`."""
        return self.url + TOKEN_PATH

    def throttle_next(self, count: int, retry_after: int | None = None) -> None:
        """Answer the next `count` requests with 429 (optionally with a Retry-After header)."""
        with self._lock:
            self._throttle_left = count
            self._retry_after = retry_after

    def app(self) -> Callable[..., Any]:
        return Starlette(
            routes=[
                Route(TOKEN_PATH + "/{account}/{container}", self._container_token),
                Route(TOKEN_PATH + "/{collection_id}", self._collection_token),
                Route(SIGN_PATH, self._sign),
            ]
        )

    def _throttle(self) -> JSONResponse | None:
        with self._lock:
            if self._throttle_left <= 0:
                return None
            self._throttle_left -= 1
            self.throttled += 1
            retry_after = self._retry_after
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        body = {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."}
        return JSONResponse(body, status_code=429, headers=headers)

    def _issue(self, account: str, container: str) -> tuple[str, str]:
        with self._lock:
            self.token_requests[f"{account}/{container}"] += 1
        return mint_token(self.signing_key, account, container, self.lifetime, self.clock())

    async def _container_token(self, request: Request) -> JSONResponse:
        if (throttled := self._throttle()) is not None:
            return throttled
        params = request.path_params
        token, expiry = self._issue(params["account"], params["container"])
        return JSONResponse({"msft:expiry": expiry, "token": token})

    async def _collection_token(self, request: Request) -> JSONResponse:
        if (throttled := self._throttle()) is not None:
            return throttled
        collection_id = request.path_params["collection_id"]
        if collection_id not in self.collections:
            return JSONResponse({"detail": f"Collection {collection_id} not found"}, 404)
        token, expiry = self._issue(*self.collections[collection_id])
        return JSONResponse({"msft:expiry": expiry, "token": token})

    async def _sign(self, request: Request) -> JSONResponse:
        if (throttled := self._throttle()) is not None:
            return throttled
        href = request.query_params.get("href", "")
        parts = urlsplit(href)
        segments = [part for part in parts.path.split("/") if part]
        if not (parts.hostname or "").endswith(BLOB_HOST_SUFFIX) or not segments:
            return JSONResponse({"detail": f"Invalid href: {href}"}, 400)
        account = parts.hostname.removesuffix(BLOB_HOST_SUFFIX)
        token, expiry = self._issue(account, segments[0])
        return JSONResponse({"msft:expiry": expiry, "href": f"{href}?{token}"})

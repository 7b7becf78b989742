"""Stripping signatures and tokens from hrefs, and signed query strings from free text."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

#: Query keys of an Azure shared access signature (service and account SAS, response overrides).
SAS_QUERY_KEYS = frozenset(
    "st se sp sv sr sig spr sip si sdd ss srt skoid sktid skt ske sks skv saoid suoid scid ses "
    "rscc rscd rsce rscl rsct".split()
)
#: Other query keys that carry a signature or a bearer token.
TOKEN_QUERY_KEYS = frozenset({"signature", "token"})
#: Prefixes of the query keys of S3 and GCS presigned URLs (credential, date, signature, token).
SIGNED_QUERY_PREFIXES = ("x-amz-", "x-goog-")

# A URL in free text and its query string, up to white space, a quote or a fragment.
_URL_QUERY = re.compile(r"(?P<url>[a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"#]*", re.IGNORECASE)


def is_signing_key(key: str) -> bool:
    """Whether a (percent-decoded) query key belongs to a SAS token or a presigned URL."""
    key = key.lower()
    return key in SAS_QUERY_KEYS or key in TOKEN_QUERY_KEYS or key.startswith(SIGNED_QUERY_PREFIXES)


def unsigned_href(href: str) -> str:
    """`href` without its SAS token or presigned-URL keys; other query parameters are kept."""
    parts = urlsplit(href)
    if not parts.query:
        return href
    pairs = parts.query.split("&")
    kept = [pair for pair in pairs if not is_signing_key(unquote(pair.partition("=")[0]))]
    return urlunsplit(parts._replace(query="&".join(kept)))


def redact(text: str) -> str:
    """`text` with the query string of every URL in it removed (signed URLs carry tokens)."""
    return _URL_QUERY.sub(lambda match: match.group("url"), text)

"""Signatures and tokens leave hrefs and messages; other query parameters stay."""

import pytest

from geoprep.core.signing import redact, unsigned_href


@pytest.mark.parametrize(
    ("href", "unsigned"),
    [
        ("/data/scene.tif", "/data/scene.tif"),
        ("https://x.example/a.tif?version=3", "https://x.example/a.tif?version=3"),
        ("https://x.example/a.tif?SIG=abc&sp=rl#part", "https://x.example/a.tif#part"),
        ("https://x.example/a.tif?token=abc&page=2", "https://x.example/a.tif?page=2"),
        (
            "https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK"
            "&X-Amz-Security-Token=T&versionId=7&X-Amz-Signature=S",
            "https://b.s3.amazonaws.com/k.tif?versionId=7",
        ),
        (
            "https://storage.googleapis.com/b/k.tif?X-Goog-Algorithm=A&X-Goog-Signature=S",
            "https://storage.googleapis.com/b/k.tif",
        ),
    ],
)
def test_unsigned_href_drops_only_signing_keys(href: str, unsigned: str) -> None:
    assert unsigned_href(href) == unsigned


def test_redact_removes_every_query_string_and_keeps_the_rest() -> None:
    text = "failed: 's3://b/k.tif?X-Amz-Signature=S' then https://h/a?sig=1#frag (gave up)"
    assert redact(text) == "failed: 's3://b/k.tif' then https://h/a#frag (gave up)"

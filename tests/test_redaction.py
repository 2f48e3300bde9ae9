"""Credentials in base URLs are redacted wherever a URL or a message quoting it is printed or stored."""

from __future__ import annotations

import pytest

from personagen_core.redaction import is_redacted_url, redact_text, redact_url, scrub, url_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:sk-abc123456@host:8000/v1", "http://***@host:8000/v1"),
        ("https://sk-only-token-1234@host/v1", "https://***@host/v1"),
        ("http://host/v1?api_key=sk-abc123456&x=1", "http://host/v1?api_key=***&x=1"),
        ("http://host/v1?x=1&Api-Key=k3y-value&token=t0k3n&key=abcd", "http://host/v1?x=1&Api-Key=***&token=***&key=***"),
        ("http://host/v1?access_token=a&signature=b&model=m", "http://host/v1?access_token=***&signature=***&model=m"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        (None, None),
    ],
)
def test_redact_url(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent
    assert is_redacted_url(shown) == (shown is not None and "***" in shown)
    assert not is_redacted_url(url) or url == shown


def test_secrets_and_messages() -> None:
    url = "http://alice:pa55-w0rd-long@host/v1?api_key=sk-query-123456&x=12345"
    assert url_secrets(url) == ["pa55-w0rd-long", "alice", "sk-query-123456"]
    msg = f"cannot reach {url} (model m): timed out; key sk-another-key-999 rejected"
    clean = redact_text(msg)
    assert "pa55" not in clean and "sk-query" not in clean and "sk-another" not in clean
    assert "http://***@host/v1?api_key=***&x=12345" in clean
    # literal secrets are scrubbed wherever they appear, also outside a URL
    assert scrub("the password pa55-w0rd-long leaked", url_secrets(url)) == "the password *** leaked"
    assert scrub(None, ["x"]) is None

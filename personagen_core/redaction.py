"""Keep credentials out of everything printed or stored: base URLs with user-info or key-like query
parameters, and messages that quote them.

A base URL such as ``http://user:sk-abc@host/v1?api_key=sk-abc`` carries secrets in two places: the
user-info (``user:sk-abc@``) and query parameters whose name says key, token, secret or password. The
pipeline stores and prints only :func:`redact_url`'s form, and scrubs messages with :func:`redact_text`
and the literal values from :func:`url_secrets`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["REDACTED", "is_redacted_url", "redact_text", "redact_url", "scrub", "url_secrets"]

REDACTED = "***"
#: Query parameter names that hold credentials (compared case-insensitively, ``-`` read as ``_``).
_SECRET_PARAM = re.compile(
    r"^(?:api_?key|key|token|access_?token|auth(?:_?token)?|secret|client_?secret|password|passwd|pwd|sig"
    r"|signature|x_?api_?key|bearer)$",
    re.IGNORECASE,
)
_USERINFO_RE = re.compile(r"(?<=//)[^/@\s?#]+@")
_PARAM_RE = re.compile(r"(?<=[?&;])([A-Za-z0-9_\-.]+)=([^&#\s;]*)")
_KEY_LIKE_RE = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")


def _secret_param(name: str) -> bool:
    return bool(_SECRET_PARAM.match(name.replace("-", "_")))


def redact_url(url: str | None) -> str | None:
    """``url`` with its user-info and credential query values replaced by ``***`` (None stays None).

    ``http://user:sk-1@host/v1?api_key=k&x=1`` -> ``http://***@host/v1?api_key=***&x=1``.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@" + netloc.rsplit("@", 1)[1]
    query = _PARAM_RE.sub(
        lambda m: f"{m.group(1)}={REDACTED}" if _secret_param(m.group(1)) else m.group(0), "&" + parts.query
    )[1:]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_redacted_url(url: str | None) -> bool:
    """True when ``url`` went through :func:`redact_url` and lost a secret (it cannot be used as is)."""
    return bool(url) and redact_url(url) == url and REDACTED in str(url)


def url_secrets(url: str | None) -> list[str]:
    """The literal secret values inside ``url`` (password, user name, credential query values)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out = [v for v in (parts.password, parts.username) if v]
    out += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _secret_param(k) and v]
    return [s for s in dict.fromkeys(out) if len(s) > 3]


def redact_text(text: str) -> str:
    """Scrub URL user-info, credential query values and ``sk-`` keys from a free-form message."""
    text = _USERINFO_RE.sub(f"{REDACTED}@", text)
    text = _PARAM_RE.sub(lambda m: f"{m.group(1)}={REDACTED}" if _secret_param(m.group(1)) else m.group(0), text)
    return _KEY_LIKE_RE.sub(f"sk-{REDACTED}", text)


def scrub(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """:func:`redact_text` plus every literal in ``secrets`` (longer than three characters) replaced."""
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) > 3:
            text = text.replace(secret, REDACTED)
    return redact_text(text)

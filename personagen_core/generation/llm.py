"""One async client layer over the ``openai`` SDK for any OpenAI-compatible endpoint.

OpenAI itself, vLLM, Ollama, a llama.cpp server, the loopback :mod:`personagen_core.testing.fake_openai` server or
the embedded :mod:`personagen_core.local` transport. The layer adds what the pipeline needs on top of the
SDK: a concurrency limit, retries with exponential back-off and jitter (429, 5xx, timeouts, dropped
connections, malformed JSON) honouring ``Retry-After``, a requests/tokens-per-minute limiter, and structured
outputs with a fallback chain ``json_schema`` -> ``json_object`` -> ``prompt`` remembered per endpoint and model.

The SDK's own retries are disabled (``max_retries=0``) so every HTTP attempt goes through this module and is
reported to ``on_call``. The API key lives only in a :class:`pydantic.SecretStr` and the SDK client; it is
excluded from ``model_dump``, hidden in ``repr`` and scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import jsonschema
import openai
from openai.types.chat import ChatCompletion
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from personagen_core.errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMEndpointError,
    LLMError,
    LLMResponseError,
)
from personagen_core.generation.vocabulary import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MODEL,
    ROLES,
    SERVER_KINDS,
    Role,
    ServerKind,
    StructuredChoice,
)
from personagen_core.local.models import DEFAULT_MODEL as DEFAULT_LOCAL_MODEL
from personagen_core.local.schema_grammar import grammar_schema
from personagen_core.local.transport import LOCAL_BASE_URL
from personagen_core.redaction import redact_text, redact_url, url_secrets

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_MODEL",
    "LOCAL_BASE_URL",
    "ROLES",
    "SERVER_KINDS",
    "CallGate",
    "CallRecord",
    "Completion",
    "EndpointSettings",
    "LLMClient",
    "LLMSettings",
    "StructuredMode",
    "detect_server_kind",
    "estimate_tokens",
    "parse_json_text",
    "split_query",
]

_log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
StructuredMode = Literal["json_schema", "json_object", "prompt"]
_MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object", "prompt")
# Per-call timeouts by where the endpoint is: a local server on a busy CPU may take minutes for one call.
TIMEOUT_REMOTE = 60.0
TIMEOUT_LOCAL_SERVER = 300.0
TIMEOUT_EMBEDDED = 600.0
#: Server kinds built on llama.cpp: they take a GBNF ``grammar`` field and turn schemas into grammars.
_LLAMA_KINDS = ("llama-cpp-python", "llama.cpp")
# Words in an error body that show the endpoint rejected the response_format itself, not the request.
_FORMAT_ERROR_RE = re.compile(r"response_format|json_schema|json_object|schema|grammar", re.IGNORECASE)
_KEY_LIKE_RE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,})")


def _is_local_host(url: str | None) -> bool:
    """Is ``url``'s host this machine or a private network (where people run their own servers)?"""
    host = urlsplit(url or "").hostname or ""
    if host == "localhost" or host.endswith((".local", ".localhost", ".lan", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its query string, and the query's parameters (``?api-version=...`` of Azure OpenAI).

    The openai SDK joins request paths onto ``base_url`` and drops a query there, so the parameters travel
    as its ``default_query`` instead and reach every request. Blank values are kept; the fragment is dropped.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), params


class _RedactingFilter(logging.Filter):
    """Scrubs credential query values and URL user-info from a log record (httpx logs every request URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _redact_http_logs() -> None:
    """Keep a key in a base URL's query out of httpx's INFO log line ``HTTP Request: POST <url>``.

    Installed (once, idempotently) on the HTTP libraries' loggers when a client's URL carries a secret: the
    only process-wide change this module makes, and one that only ever removes secrets from log lines.
    """
    for name in ("httpx", "httpx2"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text`` (about four characters per token for English)."""
    return max(1, math.ceil(len(text) / 4))


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EndpointSettings(BaseModel):
    """One endpoint of a pool (:mod:`personagen_core.generation.endpoints`): where to send calls and how many.

    ``url`` is the OpenAI-compatible base URL; ``model`` replaces the run's model (for every role) on this
    endpoint when given; ``key_env`` is the *name* of the environment variable holding this endpoint's API
    key (the key itself never appears in a settings file or the run store; without it the run's key is used);
    ``weight`` is its share of the calls when every endpoint has room; ``max_concurrency`` caps its calls in
    flight (default: the run's ``concurrency``; the endpoint's adaptive limit stays below it); ``server``
    as :attr:`LLMSettings.server`. ``name`` labels it in the usage tables (default: the redacted URL).
    """

    model_config = ConfigDict(extra="forbid")

    url: str
    model: str | None = None
    key_env: str | None = None
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    max_concurrency: int | None = Field(default=None, ge=1, le=1024)
    server: ServerKind = "auto"
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL such as http://localhost:8000/v1")
        return value.rstrip("/")

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_RE.match(value):
            # Never echo the value: it may be a pasted key.
            raise ValueError("must be the NAME of an environment variable holding the key (letters, digits, "
                             "underscores, e.g. OPENAI_API_KEY), not the key itself")
        return value

    @property
    def label(self) -> str:
        """How usage tables and messages name this endpoint: ``name``, else the URL with credentials redacted."""
        return self.name or str(redact_url(self.url))


class LLMSettings(BaseModel):
    """Where and how to call the LLM. The API key is a secret: excluded from ``model_dump``, hidden in repr.

    ``backend`` is ``"openai"`` (any OpenAI-compatible HTTP endpoint) or ``"local"`` (the embedded GGUF model
    of :mod:`personagen_core.local`); when not given it is ``"openai"`` if a base URL or key is given,
    else ``"local"``. ``models`` overrides ``model`` per role (``validator``, ``generator``, ``judge``).
    ``rpm``/``tpm`` cap requests and tokens per minute with token buckets
    holding 10 seconds' worth (a call reserves ~chars/4 prompt tokens + ``max_tokens``, corrected to the
    reported usage when it returns). ``backoff_base`` is the first retry delay
    in seconds (doubling each retry, capped at ``backoff_max``, with jitter); ``retry_after_max`` caps a
    server's ``Retry-After``. (Which verdicts carry a reason is a setting of the run,
    ``GenerationConfig.verdict_reasons``.)

    ``timeout`` is the per-call timeout in seconds; ``None`` picks one that fits the backend
    (:attr:`effective_timeout`: 60 s for remote APIs, 300 s for a server on this machine or the local network,
    600 s for the embedded model). ``concurrency`` is the most calls in flight; the client adapts below it
    to what the endpoint sustains. ``server`` says which kind of server the endpoint is, so that schemas
    and grammars are sent in the form it understands (``auto``: detected once per endpoint);
    ``structured`` forces the structured-output mode to start from (``auto``: by server kind).
    ``give_up_after`` failed calls in a row with no success (four times as many for rate limits and
    timeouts), or nine failures in ten over the last 50 calls, make the client give up on the endpoint
    with :class:`~personagen_core.errors.LLMEndpointError`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["openai", "local"] = "local"
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    model: str = DEFAULT_MODEL
    models: dict[Role, str] = Field(default_factory=dict)
    local_model: str = DEFAULT_LOCAL_MODEL
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=1024)
    max_retries: int = Field(default=6, ge=0, le=100)
    timeout: float | None = Field(default=None, gt=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    retry_after_max: float = Field(default=60.0, ge=0)
    server: ServerKind = "auto"
    structured: StructuredChoice = "auto"
    give_up_after: int = Field(default=12, ge=1, le=10_000)
    #: Several endpoints at once (an endpoint pool; ``base_url`` is then unused): see
    #: :mod:`personagen_core.generation.endpoints`.
    endpoints: list[EndpointSettings] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "verdict_reasons" in data:
            raise ValueError("verdict_reasons is a setting of the run (GenerationConfig.verdict_reasons), "
                             "not of the LLM")
        if isinstance(data, Mapping) and data.get("backend") is None:
            data = dict(data)
            data["backend"] = (
                "openai" if data.get("base_url") or data.get("api_key") or data.get("endpoints") else "local"
            )
        return data

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, value: list[EndpointSettings]) -> list[EndpointSettings]:
        labels = [e.label for e in value]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"endpoint {twice[0]} is listed twice; give each entry its own URL or a distinct name")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL such as http://localhost:8000/v1")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _local_model_name(self) -> LLMSettings:
        # For the embedded backend the model name is the local model unless one was set explicitly.
        if self.backend == "local" and "model" not in self.model_fields_set:
            object.__setattr__(self, "model", self.local_model)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LLMSettings:
        """Settings from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` (``env`` defaults to ``os.environ``).

        ``overrides`` win over the environment; ``None`` values are ignored, so CLI flags that were not given
        can be passed straight through. The backend is ``"local"`` when neither a key nor a base URL is set.
        Invalid values raise :class:`LLMError` naming the field (never echoing the key).
        """
        source = os.environ if env is None else env
        data: dict[str, Any] = {}
        if source.get("OPENAI_API_KEY"):
            data["api_key"] = source["OPENAI_API_KEY"]
        if source.get("OPENAI_BASE_URL"):
            data["base_url"] = source["OPENAI_BASE_URL"]
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            # Pydantic's own message echoes input values; list only the fields and reasons.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
            )
            raise LLMError(f"invalid LLM settings: {problems}") from None

    def model_for(self, role: str) -> str:
        """The model name used for ``role`` (a per-role override, else ``model``)."""
        if role not in ROLES:
            raise LLMError(f"unknown LLM role {role!r}; expected one of {', '.join(ROLES)}")
        return self.models.get(role, self.model)  # type: ignore[call-overload]

    @property
    def effective_timeout(self) -> float:
        """The per-call timeout: ``timeout``, or a default that fits the backend and where the server is."""
        if self.timeout is not None:
            return self.timeout
        if self.backend == "local":
            return TIMEOUT_EMBEDDED
        return TIMEOUT_LOCAL_SERVER if _is_local_host(self.base_url) else TIMEOUT_REMOTE

    @property
    def effective_base_url(self) -> str:
        """The base URL requests go to (the OpenAI API when none is set; a placeholder for ``local``)."""
        if self.backend == "local":
            return LOCAL_BASE_URL
        return (self.base_url or OPENAI_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class Completion:
    """A successful completion. ``data`` is the parsed, schema-checked JSON when a schema was given.

    ``mode`` is the structured-output mode that produced it, or ``"text"`` without a schema. Token counts are
    the endpoint's ``usage`` (estimated from characters if the endpoint sent none: ``usage_estimated``).
    ``attempts`` counts HTTP attempts including retries and format fallbacks.
    """

    text: str
    data: Any
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    mode: str
    attempts: int
    finish_reason: str | None = None
    usage_estimated: bool = False


@dataclass(frozen=True)
class CallRecord:
    """One HTTP attempt, passed to ``on_call``. ``status`` is ``"ok"``, ``"retry"`` (a fault that will be
    retried, or a format fallback) or ``"error"`` (final). ``error`` never contains the API key."""

    role: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    status: Literal["ok", "retry", "error"]
    error: str | None
    attempt: int
    mode: str
    http_status: int | None = None
    endpoint: str | None = None  # the pool endpoint's label (None for a single endpoint)


class _Fault(Exception):
    """A failed attempt. ``kind``: ``auth``, ``fatal`` (not retried), ``http`` (429/408/5xx), ``timeout``,
    ``connection`` or ``malformed``. ``delay`` is a server-requested wait (Retry-After); ``usage`` the tokens
    billed for the attempt (a malformed answer was still generated). ``cause`` refines the kind for the
    give-up message: ``html``, ``broken_body``, ``no_choices``, ``schema`` (JSON not matching the schema),
    ``not_json`` (no JSON in the answer), ``length`` (answer cut by the token limit) or ``None``."""

    def __init__(self, message: str, *, kind: str, http_status: int | None = None, delay: float | None = None,
                 usage: tuple[int, int] = (0, 0), cause: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
        self.delay = delay
        self.usage = usage
        self.cause = cause

    @property
    def soft(self) -> bool:
        """Overload rather than breakage: rate limits and timeouts (the endpoint works, but not now)."""
        return self.kind == "timeout" or self.http_status == 429


@dataclass
class _Call:
    """State shared by the attempts of one ``complete()`` call."""

    role: str
    model: str
    schema: Mapping[str, Any] | None
    validator: jsonschema.Draft202012Validator | None
    name: str
    prompt_estimate: int
    timeout: float
    max_tokens: int | None = None
    max_retries: int | None = None  # overrides settings.max_retries (an endpoint pool's probe: 0)
    vary: bool = False  # retry with some randomness (after an unusable answer to a greedy request)
    attempt: int = 0
    failures: int = 0
    consecutive_5xx: int = 0


class _AdaptiveLimit:
    """How many calls may be in flight to one endpoint, adapted to what it sustains (AIMD, as in TCP and
    NVIDIA DataDesigner's adaptive throttling).

    It starts at ``start`` and (with ``slow_start``) doubles per round of successes up to ``maximum``, growing only
    while the calls use it all (a limit nobody reaches says nothing about the endpoint). A 429,
    a timeout or latency growth (calls taking well over the fastest seen for their size, which is what
    queueing on a server that serves fewer calls at once looks like) halves it, at most once per round; it
    then grows by one per round (``1/limit`` per success). After a decrease caused by latency the level that
    was too high is probed again only after many successes, so a server that answers one request at a time is
    sent one request at a time. A timed-out call keeps its slot for ``hold`` seconds more (the server is
    likely still computing it), so a retry does not pile a second copy onto the same queue.
    Lives in one event loop.
    """

    LATENCY_RATIO = 1.6  # a call this much slower than the baseline for its size counts as queueing
    LATENCY_MARGIN = 0.25  # ... and at least this many seconds slower (sub-second jitter is not a signal)
    PROBE_AFTER = 32  # successes at a level below a latency ceiling before probing the ceiling again

    def __init__(self, maximum: int, start: int = 4, *, slow_start: bool = True) -> None:
        self.maximum = maximum
        self.limit = float(max(1, min(start, maximum)))
        self.in_use = 0
        self.slow_start = slow_start
        self.ceiling: float | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._baseline: dict[tuple[str, int], float] = {}  # seconds per unit of work, per role and size class
        self._slow_hits = 0  # calls in a row that looked queued
        self._since_decrease = 0
        self._at_level = 0
        self.decreases = 0

    @property
    def current(self) -> int:
        """Calls allowed in flight now."""
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        """Wait for a free slot."""
        loop = asyncio.get_running_loop()
        while self.in_use >= self.current:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake()  # pass on a wake-up this cancelled waiter may have received
                raise
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        self.in_use += 1

    def release(self, hold: float = 0.0) -> None:
        """Free a slot, now or after ``hold`` seconds."""
        if hold > 0:
            asyncio.get_running_loop().call_later(hold, self.release)
            return
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.current - self.in_use
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def on_success(self, role: str, latency: float, prompt_tokens: int, completion_tokens: int,
                   busy: bool = True) -> None:
        """Grow the limit, unless the latency says calls are queueing at the server; ``busy``: every slot
        was in use when the call ended (else the limit is not what holds the calls back, and stays)."""
        # Latency grows with the tokens written (prompt tokens are read much faster) on top of a fixed cost:
        # the square root is between the two, so calls of similar sizes compare without fitting a model.
        # Each size class (a factor of 2 of work) keeps its own baseline: where latency hardly grows with
        # size, a big call's low time per unit made every small call look queued (and a queued big call
        # set a baseline that hid queueing of small ones).
        work = math.sqrt(completion_tokens + prompt_tokens / 8 + 1)
        per_unit = latency / work
        size = (role, int(math.log2(work)))
        base = self._baseline.get(size)
        if base is None or per_unit < base:
            self._baseline[size] = base = per_unit
        else:
            self._baseline[size] = base + 0.01 * (per_unit - base)  # let a baseline outlive a lucky call
        self._since_decrease += 1
        if per_unit / base > self.LATENCY_RATIO and latency - base * work > self.LATENCY_MARGIN:
            # Queueing: more calls in flight do not help. Never grow now; shrink on the first sign during
            # slow start, else on two in a row, at most once per round.
            self._slow_hits += 1
            if self.limit > 1 and (self.slow_start or (self._slow_hits >= 2
                                                       and self._since_decrease >= self.current)):
                self.ceiling = self.limit
                self._decrease()
            return
        self._slow_hits = 0
        if not busy:
            return
        self._at_level += 1
        step = 1.0 if self.slow_start else 1.0 / self.limit
        new = min(float(self.maximum), self.limit + step)
        if self.ceiling is not None and int(new) >= int(self.ceiling):
            if self._at_level < self.PROBE_AFTER:
                return
            self.ceiling = None  # probe the level that was too high once more
        if int(new) > int(self.limit):
            self._at_level = 0
        self.limit = new
        self._wake()

    def on_overload(self) -> None:
        """A 429 or a timeout: halve the limit (once per round of calls)."""
        if self._since_decrease >= self.current or self.slow_start:
            self._decrease()

    def _decrease(self) -> None:
        self.slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self._since_decrease = 0
        self._at_level = 0
        self._slow_hits = 0
        self.decreases += 1


@dataclass
class _Health:
    """Recent outcomes of calls to one endpoint and model, for the give-up rule."""

    hard: int = 0  # failures since the last success (not counting rate limits and timeouts)
    soft: int = 0  # rate limits and timeouts since the last success
    window: deque[bool] = field(default_factory=lambda: deque(maxlen=50))
    error: LLMEndpointError | None = None


class _TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` per second holding at most 10 seconds' worth.

    A request costing more than the bucket holds waits for a full bucket and then leaves it in debt, so
    large requests are throttled rather than starved.
    """

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()
        self._refunded = asyncio.Event()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float) -> None:
        need = min(amount, self.capacity)
        async with self._lock:  # FIFO: one waiter at a time keeps the order fair
            self._refill()
            while self.level < need:
                # Wake early when a finished call refunds its unused reservation.
                self._refunded.clear()
                try:
                    await asyncio.wait_for(self._refunded.wait(), timeout=(need - self.level) / self.rate)
                except TimeoutError:
                    pass
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back (or, if negative, charge) tokens once the true usage is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)
        if amount > 0:
            self._refunded.set()


class CallGate(Protocol):
    """Admission of HTTP attempts (the run scheduler's budget): ``await acquire(role, body)`` runs before
    an attempt queues for a connection slot, with its request body; it may wait, or raise to refuse it (the
    exception leaves :meth:`LLMClient.complete` unchanged, no retry follows). ``release(ticket)`` runs once
    the attempt ended, after ``on_call`` recorded its usage."""

    async def acquire(self, role: str, body: Mapping[str, Any]) -> Any: ...

    def release(self, ticket: Any) -> None: ...


def parse_json_text(text: str) -> Any:
    """Parse JSON from a model's answer: the whole text, a fenced block, or the first object/array in it.

    Raises ``ValueError`` when no JSON value can be found.
    """
    stripped = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1).strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", stripped):
        try:
            value, _ = decoder.raw_decode(stripped, match.start())
        except ValueError:
            continue
        return value
    raise ValueError("no JSON object found in the answer")


def _schema_instruction(schema: Mapping[str, Any]) -> str:
    return (
        "\n\nRespond with only a JSON object (no prose, no code fences) that conforms to this JSON schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def _with_instruction(messages: Sequence[Mapping[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """Append ``instruction`` to the last user message (or add one)."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            message["content"] = message["content"] + instruction
            return out
    out.append({"role": "user", "content": instruction.strip()})
    return out


def _parse_retry_after(headers: Mapping[str, str] | httpx.Headers | Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_body_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner.get("message"))
        return json.dumps(body)[:500]
    return str(body or exc.message)[:500]


def _looks_like_html(response: httpx.Response | Any) -> bool:
    """Is this response an HTML page (a web server or proxy, not the OpenAI API)?"""
    try:
        if "html" in str(response.headers.get("content-type", "")).lower():
            return True
        return response.text.lstrip()[:15].lower().startswith(("<!doctype", "<html"))
    except (httpx.HTTPError, RuntimeError, AttributeError, UnicodeDecodeError):  # an unread body: no evidence
        return False


async def detect_server_kind(base_url: str, *, http_client: httpx.AsyncClient | None = None,
                             timeout: float = 2.0) -> str:
    """Which kind of OpenAI-compatible server answers at ``base_url``: ``llama-cpp-python``, ``llama.cpp``,
    ``ollama``, ``vllm``, or ``openai`` (anything else). Four GETs at once, each with a short timeout.

    llama-cpp-python names itself in ``/openapi.json``; llama.cpp's server answers ``/props``; Ollama
    ``/api/version``; vLLM ``/version``. ``http_client`` is used when given (it stays open).
    """
    base, query = split_query(base_url)  # a query (a key a proxy asks for) goes with every probe
    root = re.sub(r"/v1/?$", "", base.rstrip("/"))

    async def get(client: httpx.AsyncClient, path: str) -> Any:
        try:
            response = await client.get(root + path, params=query or None, timeout=timeout)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):  # probes only: any failure just means "not this kind"
            return None

    client = http_client or httpx.AsyncClient()
    try:
        openapi, props, ollama, vllm = await asyncio.gather(
            get(client, "/openapi.json"), get(client, "/props"), get(client, "/api/version"), get(client, "/version")
        )
    finally:
        if http_client is None:
            await client.aclose()
    title = str(((openapi or {}).get("info") or {}).get("title", "")) if isinstance(openapi, dict) else ""
    if "llama.cpp python" in title.lower():
        return "llama-cpp-python"
    if isinstance(props, dict) and ("default_generation_settings" in props or "build_info" in props):
        return "llama.cpp"
    if isinstance(ollama, dict) and "version" in ollama:
        return "ollama"
    if isinstance(vllm, dict) and "version" in vllm:
        return "vllm"
    return "openai"


class LLMClient:
    """Async client for chat completions with limits, retries and structured outputs.

    ``http_client`` (an ``httpx.AsyncClient``, e.g. over ``httpx.MockTransport``) replaces the network; the
    caller keeps ownership of it. ``on_call`` receives a :class:`CallRecord` after every HTTP attempt.
    ``random_state`` seeds the back-off jitter (an int or a ``random.Random``); it is stored unchanged.
    ``gate`` (a :class:`CallGate`) admits every HTTP attempt, retries included, before it queues to be sent.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        random_state: int | random.Random | None = None,
        gate: CallGate | None = None,
    ) -> None:
        if settings.endpoints:  # never fall back to base_url (or api.openai.com) for a pool's settings
            raise LLMError("these settings list several endpoints: open them with "
                           "personagen_core.generation.endpoints.open_client (an endpoint pool)")
        self.settings = settings
        self.on_call = on_call
        self.gate = gate
        self.random_state = random_state
        self._rng = random_state if isinstance(random_state, random.Random) else random.Random(random_state)
        # The SDK joins paths onto base_url and would drop a query there: it becomes its default_query.
        self._base_url, self._query = split_query(settings.effective_base_url)
        if url_secrets(settings.effective_base_url):
            _redact_http_logs()
        self._owned_http: httpx.AsyncClient | None = None
        self._caller_http = http_client is not None
        if http_client is None and settings.backend == "local":
            from personagen_core import local as local_llm  # lazy: pulls in llama-cpp only when used

            self._owned_http = httpx.AsyncClient(transport=local_llm.local_transport(settings.local_model))
            http_client = self._owned_http
        key = settings.api_key.get_secret_value() if settings.api_key is not None else "not-needed"
        self._secret = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=self._base_url,
            max_retries=0,  # retries happen here, so every attempt is seen and reported
            timeout=settings.effective_timeout,
            default_query=self._query or None,
            # The SDK is typed for httpx2 but accepts an ``httpx.AsyncClient`` too (MockTransport, local model).
            http_client=cast(Any, http_client),
        )
        # A server on this machine or network (llama.cpp, Ollama, ...) often serves one call at a time: start
        # there at 1 and grow by one per round while latency allows; remote APIs start at 4 and grow fast.
        local = _is_local_host(self._base_url)
        self._limit = _AdaptiveLimit(settings.concurrency, start=1 if local else 4, slow_start=not local)
        self._health: dict[tuple[str, str], _Health] = {}
        self._probe_http = http_client
        self._kind: str | None = None if settings.server == "auto" else settings.server
        self._kind_lock: asyncio.Lock | None = None
        self.timeouts: Counter[str] = Counter()  # timed-out attempts per role (validation shrinks its batches)
        self._rpm = _TokenBucket(settings.rpm) if settings.rpm else None
        self._tpm = _TokenBucket(settings.tpm) if settings.tpm else None
        self._modes: dict[tuple[str, str], StructuredMode] = {}
        self._confirmed: set[tuple[str, str]] = set()
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._pause_until = 0.0  # monotonic time before which no attempt starts (set by Retry-After)

    def __repr__(self) -> str:
        return f"LLMClient(base_url={redact_url(self._base_url)!r}, model={self.settings.model!r})"

    @property
    def base_url(self) -> str:
        """The endpoint's base URL."""
        return self._base_url

    @property
    def concurrency_limit(self) -> int:
        """Calls the client lets into flight now (adapted to the endpoint, at most ``settings.concurrency``)."""
        return self._limit.current

    @property
    def server_kind(self) -> str | None:
        """The detected or configured kind of server (``openai`` for any other), None before the first call."""
        return self._kind

    @property
    def structured_modes(self) -> dict[tuple[str, str], str]:
        """Structured-output mode accepted per ``(base_url, model)`` so far (a copy)."""
        return {k: v for k, v in self._modes.items() if k in self._confirmed}

    async def aclose(self) -> None:
        """Close the connections this client opened; a caller's ``http_client`` stays open."""
        if not self._caller_http:
            await self._client.close()  # also closes the embedded transport's client
        if self._owned_http is not None:
            await self._owned_http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- helpers -----------------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """Remove the API key (and anything key-shaped) from a message."""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = re.sub(r"//[^/@\s]*@", "//***@", text)  # credentials inside URLs
        text = redact_text(text)  # and key/token query parameters of the base URL
        return _KEY_LIKE_RE.sub("sk-***", text)

    def _where(self, model: str) -> str:
        return self._scrub(f"{self._base_url} (model {model})")

    def _report(self, record: CallRecord) -> None:
        if record.status != "ok":
            _log.info("LLM call %s attempt %d: %s", record.status, record.attempt, record.error)
        if self.on_call is not None:
            self.on_call(record)

    async def _wait_for_pause(self) -> None:
        while (remaining := self._pause_until - time.monotonic()) > 0:
            await asyncio.sleep(remaining)

    def _release(self, ticket: Any) -> None:
        if ticket is not None and self.gate is not None:
            self.gate.release(ticket)

    def _backoff(self, failures: int) -> float:
        """Exponential back-off with equal jitter: half the delay fixed, half random."""
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * (2 ** max(0, failures - 1)))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    # -- the call ----------------------------------------------------------------------------------------------
    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        role: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        schema: Mapping[str, Any] | None = None,
        schema_name: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        grammar: str | None = None,
        max_retries: int | None = None,
    ) -> Completion:
        """One chat completion for ``role`` with retries; with ``schema``, parsed and checked JSON in ``data``.

        The schema's top level must be an object (what OpenAI's structured outputs and JSON mode accept); for
        ``json_schema`` mode on OpenAI it must also be strict-compatible (every object lists all its properties
        in ``required`` and sets ``additionalProperties: false``), else OpenAI's 400 makes the client fall back
        to ``json_object``. ``timeout`` overrides ``settings.timeout`` for this call (per attempt). A
        ``Retry-After`` pauses the new attempts of every call of this client, not only the one that got it.

        Raises :class:`LLMAuthError` (401/403), :class:`LLMConnectionError` (unreachable, or too slow, after
        retries), :class:`LLMResponseError` (other HTTP errors, or malformed / non-conforming JSON after
        retries) or :class:`LLMEndpointError` (the give-up rule: this call, or earlier ones, kept failing).
        ``grammar`` (GBNF, only grammars known to parse: an invalid one crashes llama.cpp's servers) constrains
        plain-text output on the embedded backend and llama.cpp-based servers, and is ignored elsewhere.
        ``max_retries`` overrides ``settings.max_retries`` for this call.
        """
        if not messages:
            raise LLMError("complete() needs at least one message")
        call = _Call(
            role=role,
            model=self.settings.model_for(role),
            schema=schema,
            validator=self._validator(schema) if schema is not None else None,
            name=re.sub(r"[^A-Za-z0-9_-]", "_", schema_name or "answer")[:64],
            prompt_estimate=estimate_tokens(" ".join(str(m.get("content", "")) for m in messages)),
            timeout=timeout if timeout is not None else self.settings.effective_timeout,
            max_tokens=max_tokens,
            max_retries=max_retries,
        )
        endpoint = (self._base_url, call.model)
        health = self._health.setdefault(endpoint, _Health())
        kind = await self._server_kind()
        options: dict[str, Any] = {"temperature": temperature, "seed": seed}
        if grammar is not None and (self.settings.backend == "local" or kind in _LLAMA_KINDS):
            # A GBNF grammar (llama.cpp's extension of the API) reaches llama.cpp-based servers and the embedded
            # model; other endpoints get the plain request and the pipeline's output checks instead.
            options["grammar"] = grammar
        while True:
            if health.error is not None:
                raise health.error  # given up: no more calls to an endpoint that cannot work
            call.attempt += 1
            mode = self._mode(endpoint, kind) if schema is not None else "text"
            attempt_options = {**options, "max_tokens": call.max_tokens}
            if call.vary:
                attempt_options["temperature"] = max(float(temperature or 0.0), 0.5)
                attempt_options["seed"] = None if seed is None else seed + call.attempt
            request = self._request(messages, call, mode, attempt_options, kind)
            reserved = call.prompt_estimate + (call.max_tokens or 0)
            if self._rpm is not None:
                await self._rpm.acquire(1)
            if self._tpm is not None:
                await self._tpm.acquire(reserved)
            started = time.monotonic()
            hold = 0.0
            # Admission (a budget) first, so that an attempt waiting for room holds no connection slot.
            ticket = await self.gate.acquire(call.role, request) if self.gate is not None else None
            try:
                await self._limit.acquire()
            except BaseException:
                self._release(ticket)
                raise
            try:
                await self._wait_for_pause()  # after queueing, right before sending
                if health.error is not None:
                    raise health.error
                started = time.monotonic()
                response = await self._send(request, call)
                result = self._accept(response, call, mode, time.monotonic() - started)
            except _Fault as fault:
                if fault.kind == "timeout":
                    # The server is probably still computing the abandoned request: keep its slot a while.
                    hold = call.timeout
                    self.timeouts[call.role] += 1
                if fault.soft:
                    self._limit.on_overload()
                if self._tpm is not None:
                    self._tpm.refund(reserved - sum(fault.usage))
                self._limit.release(hold)
                try:
                    await self._handle_fault(fault, call, endpoint, mode, time.monotonic() - started, health)
                finally:
                    self._release(ticket)  # after the attempt was reported (and its back-off slept)
                continue
            except BaseException:
                self._limit.release()
                self._release(ticket)
                raise
            self._release(ticket)  # after _accept recorded the attempt's usage
            busy = self._limit.in_use >= self._limit.current
            self._limit.release()
            self._limit.on_success(call.role, result.latency_s, result.prompt_tokens, result.completion_tokens,
                                   busy)
            health.hard = health.soft = 0
            health.window.append(True)
            if schema is not None and endpoint not in self._confirmed:
                self._modes[endpoint] = mode  # type: ignore[assignment]
                self._confirmed.add(endpoint)
            if self._tpm is not None:
                self._tpm.refund(reserved - result.prompt_tokens - result.completion_tokens)
            return result

    def _mode(self, endpoint: tuple[str, str], kind: str) -> StructuredMode:
        """The structured-output mode to try: what worked (or failed last) here, else the kind's first."""
        if endpoint in self._modes:
            return self._modes[endpoint]
        if self.settings.structured != "auto":
            return self.settings.structured
        # llama-cpp-python answers json_schema with a 500; its json_object takes the schema as a grammar.
        return "json_object" if kind == "llama-cpp-python" else "json_schema"

    def reset_health(self) -> None:
        """Forget the give-up state of every model here (an endpoint pool probes an endpoint it took out)."""
        self._health.clear()

    async def serves_one_at_a_time(self) -> bool:
        """True when the endpoint is known to answer one call at a time (llama-cpp-python's server queues
        every request behind one lock); detects the server kind if that was not done yet."""
        return await self._server_kind() == "llama-cpp-python"

    async def _server_kind(self) -> str:
        """The endpoint's server kind: configured, or detected once (cheap GETs with short timeouts)."""
        if self._kind is not None:
            return self._kind
        if self.settings.backend == "local" or not _is_local_host(self._base_url):
            self._kind = "openai"  # the embedded model is handled by its transport; remote: the OpenAI API
            return self._kind
        if self._kind_lock is None:
            self._kind_lock = asyncio.Lock()
        async with self._kind_lock:
            if self._kind is None:
                self._kind = await detect_server_kind(self.settings.effective_base_url,
                                                      http_client=self._probe_http)
                _log.info("LLM endpoint %s looks like a %s server", self._scrub(self._base_url), self._kind)
        return self._kind

    def _request(
        self, messages: Sequence[Mapping[str, Any]], call: _Call, mode: str, options: Mapping[str, Any],
        kind: str = "openai",
    ) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions`` for one attempt in ``mode`` to a server of ``kind``."""
        body: dict[str, Any] = {"model": call.model, "messages": [dict(m) for m in messages]}
        body.update({k: v for k, v in options.items() if v is not None})
        schema = dict(call.schema or {})
        if mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                # llama.cpp's server turns it into a grammar: the tightened copy (enums, capped free text).
                "json_schema": {"name": call.name, "strict": True,
                                "schema": grammar_schema(schema) if kind in _LLAMA_KINDS else schema},
            }
        elif mode in ("json_object", "prompt"):
            if mode == "json_object" and kind in _LLAMA_KINDS:
                # The server enforces the schema as a grammar: spelling it out in the prompt only adds ~150
                # prompt tokens to every call, which a CPU server reads at tens of tokens a second.
                body["messages"] = _with_instruction(messages, "\n\nRespond with only a JSON object.")
            else:
                body["messages"] = _with_instruction(messages, _schema_instruction(schema))
            if mode == "json_object":
                body["response_format"] = {"type": "json_object"}
                # Each local server's own way to enforce the schema while decoding. llama.cpp's get the copy
                # the embedded backend uses (local/schema_grammar.py): integer ranges as enums, and free-text
                # fields capped at 80 characters, so that a verdict's reason cannot run on to max_tokens.
                if kind in _LLAMA_KINDS:
                    body["response_format"]["schema"] = grammar_schema(schema)
                elif kind == "vllm":
                    body["guided_json"] = schema
                elif kind == "ollama":
                    body["format"] = schema
        if call.schema is not None:
            body.pop("grammar", None)  # the schema is the constraint; a grammar would compete with it
        return body

    async def _send(self, body: dict[str, Any], call: _Call) -> ChatCompletion:
        """Send one request; every SDK failure becomes a :class:`_Fault` with a key-free message."""
        try:
            # The SDK's documented low-level ``post`` (its "undocumented endpoints" API) with the typed
            # response: it skips the per-call TypedDict transform of ``chat.completions.create``, which costs
            # about a third of the client's CPU per call and caps throughput at high concurrency.
            return await self._client.post(
                "/chat/completions", cast_to=ChatCompletion, body=body, options={"timeout": call.timeout}
            )
        except openai.APIStatusError as exc:
            status = exc.status_code
            detail = self._scrub(_error_body_text(exc))
            if status in (401, 403):
                raise _Fault(f"HTTP {status}", kind="auth", http_status=status) from None
            retryable = status in (408, 429) or status >= 500
            html = _looks_like_html(exc.response)
            raise _Fault(f"HTTP {status}: {'an HTML page' if html else detail}",
                         kind="http" if retryable else "fatal", http_status=status,
                         delay=_parse_retry_after(exc.response.headers), cause="html" if html else None) from None
        except openai.APITimeoutError:
            raise _Fault(f"no answer within {call.timeout:g} s (timed out)", kind="timeout") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise _Fault(f"connection failed: {self._scrub(f'{type(cause).__name__}: {cause}')}",
                         kind="connection") from None
        except openai.APIResponseValidationError as exc:  # status 200, but not JSON (e.g. an HTML page)
            html = _looks_like_html(exc.response)
            what = "an HTML page" if html else "a body that is not JSON"
            raise _Fault(f"status 200 with {what} instead of a chat completion", kind="malformed",
                         http_status=200, cause="html" if html else "broken_body") from None
        except openai.APIError as exc:  # e.g. a body that is not a chat completion at all
            raise _Fault(f"unusable answer: {self._scrub(str(exc))}", kind="malformed", http_status=200,
                         cause="broken_body") from None
        except ValueError as exc:  # the SDK parses a 200 body as JSON and lets the decoder's error through
            raise _Fault(f"status 200 with a broken JSON body ({self._scrub(str(exc))[:120]})", kind="malformed",
                         http_status=200, cause="broken_body") from None

    async def _handle_fault(
        self, fault: _Fault, call: _Call, endpoint: tuple[str, str], mode: str, latency: float, health: _Health
    ) -> None:
        """Report a failed attempt, then return to retry (after back-off or a format fallback) or raise."""
        def record(status: Literal["retry", "error"], error: str) -> CallRecord:
            return CallRecord(call.role, call.model, fault.usage[0], fault.usage[1], latency, status, error,
                              call.attempt, mode, fault.http_status)

        if fault.kind == "auth":
            self._report(record("error", str(fault)))
            problem = "rejected the API key" if self._secret else "needs an API key and none was given"
            raise LLMAuthError(
                f"the endpoint {self._where(call.model)} {problem} (HTTP {fault.http_status}); set "
                "OPENAI_API_KEY or give the key in the settings"
            ) from None
        status = fault.http_status
        if (status is not None and status != 200 and call.schema is not None
                and mode in ("json_schema", "json_object")
                and self._is_format_rejection(endpoint, status, str(fault), call.consecutive_5xx)):
            next_mode = _MODES[_MODES.index(mode) + 1]  # type: ignore[arg-type]
            self._modes[endpoint] = next_mode
            self._confirmed.discard(endpoint)
            call.consecutive_5xx = 0
            self._report(record("retry", f"{mode} not accepted, falling back to {next_mode}: {fault}"))
            return
        self._count_failure(fault, call, health)
        if fault.kind == "fatal":
            self._report(record("error", str(fault)))
            if health.error is not None:
                raise health.error
            raise LLMResponseError(f"the endpoint {self._where(call.model)} failed: {fault}") from None
        call.consecutive_5xx = call.consecutive_5xx + 1 if (status or 0) >= 500 else 0
        call.failures += 1
        retries = self.settings.max_retries if call.max_retries is None else call.max_retries
        if health.error is not None or call.failures > retries:
            self._report(record("error", str(fault)))
            if health.error is not None:
                raise health.error
            after = f"after {call.attempt} attempt{'s' if call.attempt != 1 else ''}"
            if fault.kind == "timeout":
                raise LLMConnectionError(
                    f"{self._where(call.model)} is too slow: {fault}, {after}; raise the timeout setting "
                    "(or lower the concurrency)") from None
            if fault.kind == "connection":
                raise LLMConnectionError(f"cannot reach {self._where(call.model)} (unreachable) {after}: "
                                         f"{fault}") from None
            raise LLMResponseError(f"no usable answer from {self._where(call.model)} {after}: {fault}") from None
        if fault.cause == "length" and call.max_tokens:
            # The JSON was cut by the token limit: the same limit would cut it again.
            call.max_tokens *= 2
        if fault.kind == "malformed" and call.schema is not None:
            call.vary = True  # the same greedy request would give the same unusable answer
        self._report(record("retry", str(fault)))
        # Exponential back-off spares an overloaded server; a 200 with an unusable body came from one that
        # is not overloaded, so its retries wait the first step only.
        delay = self._backoff(1 if fault.kind == "malformed" else call.failures)
        if fault.delay is not None:
            delay = max(delay, min(fault.delay, self.settings.retry_after_max))
            # The server asked everyone to wait: hold back new attempts of other calls too.
            self._pause_until = max(self._pause_until, time.monotonic() + delay)
        await asyncio.sleep(delay)

    def _count_failure(self, fault: _Fault, call: _Call, health: _Health) -> None:
        """Apply the give-up rule to one more failed attempt of this endpoint and model."""
        if health.error is not None:
            return
        if fault.soft:
            health.soft += 1
        else:
            health.hard += 1
        health.window.append(False)
        limit = self.settings.give_up_after
        failures = health.window.count(False)
        rate_rule = len(health.window) == health.window.maxlen and failures >= 0.9 * len(health.window)
        if health.hard >= limit or health.soft >= 4 * limit or rate_rule:
            in_a_row = health.hard + health.soft
            how = (f"{in_a_row} calls in a row failed" if in_a_row >= limit
                   else f"{failures} of the last {len(health.window)} calls failed")
            health.error = LLMEndpointError(f"{self._endpoint_advice(fault, call)} (gave up on the endpoint: "
                                            f"{how}; last error: {fault})")
            _log.warning("%s", health.error)

    def _endpoint_advice(self, fault: _Fault, call: _Call) -> str:
        """What is wrong with the endpoint, in the user's terms, and which setting to change."""
        url, model = self._scrub(self._base_url), call.model
        status = fault.http_status
        if fault.cause == "html":
            return f"the endpoint {url} answers HTML, not the OpenAI API — check the base URL (it usually ends in /v1)"
        if status == 404 and re.search(r"model", str(fault), re.IGNORECASE):
            return f"model '{model}' not found at {url} — check the model setting"
        if status == 404:
            return f"{url}/chat/completions does not exist — check the base URL (it usually ends in /v1)"
        if fault.cause in ("schema", "not_json", "length") and call.schema is not None:
            return (f"answers of model '{model}' at {url} do not match the {call.name} schema — the model cannot "
                    "follow structured output; try structured mode 'prompt' (the structured setting) or "
                    "another model")
        if fault.cause in ("broken_body", "no_choices"):
            return (f"the endpoint {url} does not answer like the OpenAI API (broken or incomplete response "
                    "bodies) — check the base URL and the server's log")
        if fault.kind == "timeout":
            return (f"{url} (model {model}) is too slow: calls keep timing out after {call.timeout:g} s — raise "
                    "the timeout setting or lower the concurrency")
        if fault.kind == "connection":
            return f"cannot reach {url} (unreachable) — check the base URL and that the server is running"
        if status == 429:
            return (f"{url} keeps refusing calls with HTTP 429 (rate limit or exhausted quota) — check the "
                    "account's quota, or lower the concurrency or the rpm/tpm settings")
        if status is not None and status >= 500:
            return f"{url} keeps failing with HTTP {status} — check the server's log"
        return f"{url} (model {model}) rejects the requests — check the base URL and model settings"

    def _validator(self, schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
        """A checked validator for ``schema``, cached: checking a schema costs more than the HTTP call."""
        key = json.dumps(schema, sort_keys=True, default=str)
        validator = self._validators.get(key)
        if validator is None:
            try:
                jsonschema.Draft202012Validator.check_schema(dict(schema))
            except jsonschema.SchemaError as exc:
                raise LLMError(f"invalid JSON schema passed to complete(): {exc.message}") from None
            if len(self._validators) >= 256:
                self._validators.pop(next(iter(self._validators)))
            validator = self._validators[key] = jsonschema.Draft202012Validator(dict(schema))
        return validator

    def _is_format_rejection(self, endpoint: tuple[str, str], status: int, detail: str, consecutive_5xx: int) -> bool:
        """Did the endpoint reject the response_format (rather than fail transiently)?

        An error that names the format is a rejection. On an endpoint whose mode is not yet confirmed, a
        400/404/415/422 is too, and so is a second 5xx in a row (one 5xx may be transient, and is retried).
        """
        if status in (400, 404, 415, 422, 500, 501) and _FORMAT_ERROR_RE.search(detail):
            return True
        if endpoint in self._confirmed:
            return False
        if status in (400, 404, 415, 422):
            return True
        return status >= 500 and consecutive_5xx >= 1

    def _accept(self, response: Any, call: _Call, mode: str, latency: float) -> Completion:
        """Turn an SDK response into a Completion, or raise a ``malformed`` _Fault for unusable JSON."""
        if isinstance(response, str):  # the SDK hands over a non-JSON 200 body as text
            html = response.lstrip()[:15].lower().startswith(("<!doctype", "<html"))
            what = "an HTML page" if html else "a body that is not JSON"
            raise _Fault(f"status 200 with {what} instead of a chat completion", kind="malformed",
                         http_status=200, cause="html" if html else "broken_body")
        choice = response.choices[0] if getattr(response, "choices", None) else None
        if choice is None:
            raise _Fault("status 200 but the answer has no choices", kind="malformed", http_status=200,
                         cause="no_choices")
        message = choice.message
        refusal = getattr(message, "refusal", None)
        text = message.content if message.content is not None else (refusal or "")
        usage = getattr(response, "usage", None)
        prompt_tokens = int(usage.prompt_tokens) if usage is not None else call.prompt_estimate
        completion_tokens = int(usage.completion_tokens) if usage is not None else estimate_tokens(text)
        data = None
        finish_reason = getattr(choice, "finish_reason", None)
        if call.validator is not None:
            cause = "length" if finish_reason == "length" else "not_json"
            try:
                if refusal and message.content is None:
                    raise ValueError(f"the model refused: {refusal}")
                data = parse_json_text(text)
                errors = sorted(call.validator.iter_errors(data), key=lambda e: list(e.absolute_path))
                if errors and cause != "length":
                    cause = "schema"
                if errors:
                    where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
                    raise ValueError(f"JSON does not match the schema at {where}: {errors[0].message}")
            except ValueError as exc:
                # The answer was generated, so its tokens were billed: keep them on the record.
                cut = " (cut by the token limit)" if cause == "length" else ""
                raise _Fault(f"malformed JSON answer{cut}: {self._scrub(str(exc))}", kind="malformed",
                             http_status=200, usage=(prompt_tokens, completion_tokens), cause=cause) from None
        self._report(CallRecord(call.role, call.model, prompt_tokens, completion_tokens, latency, "ok", None,
                                call.attempt, mode, 200))
        return Completion(
            text=text,
            data=data,
            model=str(getattr(response, "model", None) or call.model),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            mode=mode,
            attempts=call.attempt,
            finish_reason=finish_reason,
            usage_estimated=usage is None,
        )

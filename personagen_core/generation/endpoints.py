"""Several OpenAI-compatible endpoints at once: an endpoints file, a router and an endpoint pool.

A run may spread its calls over a list of endpoints (vLLM or llama.cpp replicas, several API accounts, a
plain list of URLs): ``--base-url`` given several times, or ``--endpoints FILE`` (YAML or JSON) with one
entry per endpoint (:class:`~personagen_core.generation.llm.EndpointSettings`: url, model, key_env, weight,
max_concurrency, server, name). :class:`EndpointPool` holds one :class:`~personagen_core.generation.llm.LLMClient`
per endpoint, so each keeps its own adaptive (AIMD) concurrency, its own detected server kind and
structured-output form, and its own give-up rule. Each call goes to a healthy endpoint with free capacity,
chosen by smooth weighted round robin (:class:`EndpointRouter`). An endpoint whose client gives up (or
that cannot be reached, or rejects its key) is taken out of rotation, and the call moves on to another
endpoint; after a cool-down (doubling each time, up to ``probe_max``) one real call probes it again, with no
retries, and a success puts it back. The run fails only when every endpoint is out at once; the error names
each endpoint's last error, URLs redacted.

API keys: an entry names the environment variable holding its key (``key_env``); the key itself is read
when the pool starts, lives only in that endpoint's client, and is never written to the file or the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import SecretStr, ValidationError

from personagen_core.errors import LLMAuthError, LLMConnectionError, LLMEndpointError, LLMError
from personagen_core.generation.llm import CallRecord, Completion, EndpointSettings, LLMClient, LLMSettings
from personagen_core.redaction import redact_text, redact_url, url_secrets

__all__ = [
    "PROBE_AFTER_S",
    "PROBE_MAX_S",
    "EndpointPool",
    "EndpointRouter",
    "EndpointState",
    "describe_endpoints",
    "endpoint_secrets",
    "endpoints_from_urls",
    "load_endpoints_file",
    "open_client",
    "parse_endpoints",
    "total_concurrency",
]

#: First cool-down of an endpoint taken out of rotation before it is probed again (seconds); it doubles each
#: time a probe fails, up to :data:`PROBE_MAX_S`.
PROBE_AFTER_S = 10.0
PROBE_MAX_S = 300.0
_FIELDS = tuple(EndpointSettings.model_fields)
_log = logging.getLogger(__name__)


# -- the endpoints file -----------------------------------------------------------------------------------
def parse_endpoints(data: Any, *, source: str = "endpoints") -> list[EndpointSettings]:
    """Validate endpoint entries: a list of mappings, or a mapping with an ``endpoints`` list.

    Raises :class:`~personagen_core.errors.LLMError` naming ``source``, the entry (1-based, with its URL
    redacted when it has one) and the field at fault; values are never echoed (an entry may hold a pasted key).
    """
    entries = data.get("endpoints") if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and set(data) - {"endpoints"}:
        extra = ", ".join(sorted(map(str, set(data) - {"endpoints"})))
        raise LLMError(f"{source}: unknown top-level key(s) {extra}; expected a list under 'endpoints'")
    if not isinstance(entries, list) or not entries:
        raise LLMError(f"{source}: expected a non-empty list of endpoints (each with at least a url), "
                       "either at the top level or under 'endpoints'")
    out: list[EndpointSettings] = []
    for n, entry in enumerate(entries, start=1):
        where = f"{source}: entry {n}"
        if not isinstance(entry, Mapping):
            raise LLMError(f"{where}: expected a mapping with url, model, key_env, weight, max_concurrency, "
                           f"got {type(entry).__name__}")
        url = entry.get("url")
        if isinstance(url, str) and url:
            where += f" ({redact_url(url)})"
        try:
            out.append(EndpointSettings.model_validate(dict(entry)))
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "entry"
                if err["type"] == "extra_forbidden":
                    hint = (" (keys never go into the file: give key_env, the name of the environment variable "
                            "holding the key)" if "key" in field.lower() else "")
                    problems.append(f"field '{field}' is not allowed; known fields: {', '.join(_FIELDS)}{hint}")
                else:
                    problems.append(f"field '{field}': {err['msg']}")
            raise LLMError(f"{where}: {'; '.join(problems)}") from None
    try:
        LLMSettings(endpoints=out)  # the pool-wide checks (distinct endpoints)
    except ValidationError as exc:
        raise LLMError(f"{source}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return out


def load_endpoints_file(path: str | os.PathLike[str]) -> list[EndpointSettings]:
    """Read and validate an endpoints file (YAML or JSON; see :func:`parse_endpoints`)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMError(f"endpoints file {p}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw) if p.suffix.lower() == ".json" else yaml.safe_load(raw)
    except json.JSONDecodeError as exc:
        raise LLMError(f"endpoints file {p}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                       f"{exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise LLMError(f"endpoints file {p}: not valid YAML ({at}{getattr(exc, 'problem', None) or exc})") from None
    return parse_endpoints(data, source=f"endpoints file {p}")


def endpoints_from_urls(urls: Sequence[str]) -> list[EndpointSettings]:
    """One endpoint (weight 1, the run's model, key and concurrency) per URL: ``--base-url`` given twice or more."""
    return parse_endpoints([{"url": u} for u in urls], source="--base-url")


def total_concurrency(settings: LLMSettings) -> int:
    """Calls the settings allow in flight at once: the sum over a pool's endpoints, else ``concurrency``."""
    if not settings.endpoints:
        return settings.concurrency
    return sum(e.max_concurrency or settings.concurrency for e in settings.endpoints)


def describe_endpoints(settings: LLMSettings) -> str:
    """A one-line, key-free description of where calls go (for ``estimate:`` lines and logs)."""
    if not settings.endpoints:
        return str(redact_url(settings.effective_base_url))
    parts = [f"{e.label} (weight {e.weight:g}{', model ' + e.model if e.model else ''})" for e in settings.endpoints]
    return f"{len(parts)} endpoints: " + ", ".join(parts)


def endpoint_secrets(settings: LLMSettings, env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret a pool of ``settings`` may send or print: the keys its ``key_env`` variables hold and
    credentials inside its URLs (so run messages can be scrubbed of them)."""
    source = os.environ if env is None else env
    out: list[str] = []
    for e in settings.endpoints:
        if e.key_env and source.get(e.key_env):
            out.append(source[e.key_env])
        out.extend(url_secrets(e.url))
    return out


def _endpoint_llm(base: LLMSettings, ep: EndpointSettings, env: Mapping[str, str]) -> LLMSettings:
    """The settings of one endpoint's client: the run's, with this endpoint's URL, model, key and limits."""
    update: dict[str, Any] = {
        "backend": "openai",
        "base_url": ep.url,
        "endpoints": [],
        "concurrency": ep.max_concurrency or base.concurrency,
    }
    if ep.server != "auto":
        update["server"] = ep.server
    if ep.model:
        update["model"], update["models"] = ep.model, {}
    if ep.key_env:
        key = env.get(ep.key_env)
        if not key:
            raise LLMError(f"endpoint {ep.label}: the environment variable {ep.key_env} (key_env) is not set; "
                           "export the endpoint's API key in it")
        update["api_key"] = SecretStr(key)
    return base.model_copy(update=update)


# -- routing ------------------------------------------------------------------------------------------------
@dataclass
class EndpointState:
    """Where one endpoint stands in the rotation (a snapshot is a copy).

    ``state``: ``healthy`` (in rotation), ``out`` (taken out until ``retry_at``, a monotonic time) or
    ``probing`` (one call is testing it again). ``current`` is its smooth-weighted-round-robin score.
    """

    label: str
    weight: float
    state: Literal["healthy", "out", "probing"] = "healthy"
    in_flight: int = 0
    picks: int = 0
    times_out: int = 0
    failed_probes: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    current: float = 0.0


class EndpointRouter:
    """Which endpoint the next call goes to. Thread-safe (one lock), with an injectable ``clock``.

    :meth:`pick` chooses among healthy endpoints with free capacity by smooth weighted round robin (nginx's:
    every candidate gains its weight, the highest is chosen and pays the candidates' total), so with room
    everywhere calls follow the weights exactly, and an endpoint at its limit leaves its share to the others.
    An endpoint :meth:`taken out <take_out>` is offered again, to one call only, once its cool-down ends
    (``probe_after`` seconds, doubling per failed probe up to ``probe_max``).
    """

    def __init__(
        self,
        labels: Sequence[str],
        weights: Sequence[float],
        *,
        probe_after: float = PROBE_AFTER_S,
        probe_max: float = PROBE_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(labels) != len(weights) or not labels:
            raise ValueError("an endpoint router needs one weight per endpoint, and at least one endpoint")
        self._states = [EndpointState(str(label), float(w)) for label, w in zip(labels, weights, strict=True)]
        self.probe_after, self.probe_max, self.clock = probe_after, probe_max, clock
        self._lock = threading.Lock()

    def pick(self, capacity: Sequence[int]) -> int | None:
        """Reserve a call on an endpoint (``capacity[i]``: calls endpoint ``i`` takes at once now) and return
        its index, or None when none has room. A probe that is due goes first."""
        with self._lock:
            now = self.clock()
            for i, s in enumerate(self._states):
                if s.state == "out" and s.in_flight == 0 and s.retry_at is not None and now >= s.retry_at:
                    s.state = "probing"
                    return self._reserve(i)
            room = [i for i, s in enumerate(self._states) if s.state == "healthy" and s.in_flight < capacity[i]]
            if not room:
                return None
            total = 0.0
            for i in room:
                self._states[i].current += self._states[i].weight
                total += self._states[i].weight
            best = max(room, key=lambda i: self._states[i].current)
            self._states[best].current -= total
            return self._reserve(best)

    def _reserve(self, i: int) -> int:
        self._states[i].in_flight += 1
        self._states[i].picks += 1
        return i

    def probing(self, i: int) -> bool:
        """Is endpoint ``i`` being probed (its call should not retry, and decides whether it comes back)?"""
        with self._lock:
            return self._states[i].state == "probing"

    def release(self, i: int) -> None:
        """A call reserved by :meth:`pick` ended (however it ended)."""
        with self._lock:
            self._states[i].in_flight -= 1

    def succeeded(self, i: int) -> None:
        """A call on ``i`` succeeded: a probed endpoint is back in rotation."""
        with self._lock:
            s = self._states[i]
            if s.state == "probing":
                s.state, s.retry_at, s.failed_probes, s.current = "healthy", None, 0, 0.0

    def take_out(self, i: int, error: str) -> bool:
        """Take ``i`` out of rotation after ``error`` (a failed probe doubles the cool-down). Returns False if
        it was out already (several calls in flight report the same outage: it counts once)."""
        with self._lock:
            s = self._states[i]
            if s.state == "out":
                s.last_error = error
                return False
            if s.state == "probing":
                s.failed_probes += 1
            s.state, s.last_error, s.current = "out", error, 0.0
            s.times_out += 1
            s.retry_at = self.clock() + min(self.probe_max, self.probe_after * 2 ** s.failed_probes)
            return True

    def all_out(self) -> bool:
        """True when no endpoint is in rotation, being probed or due for a probe: the pool cannot go on."""
        with self._lock:
            now = self.clock()
            return all(s.state == "out" and (s.retry_at is None or now < s.retry_at or s.in_flight > 0)
                       for s in self._states)

    def next_probe_in(self) -> float | None:
        """Seconds until the next endpoint out of rotation may be probed (None if none is out)."""
        with self._lock:
            now = self.clock()
            times = [s.retry_at - now for s in self._states if s.state == "out" and s.retry_at is not None]
            return max(0.0, min(times)) if times else None

    def snapshot(self) -> list[EndpointState]:
        """A copy of every endpoint's state (safe to read from another thread)."""
        with self._lock:
            return [replace(s) for s in self._states]


# -- the pool -----------------------------------------------------------------------------------------------
class EndpointPool:
    """An :class:`~personagen_core.generation.llm.LLMClient` look-alike that spreads calls over
    ``settings.endpoints`` (see the module docstring). Lives in one event loop, like the client.

    ``env`` is where ``key_env`` names are looked up (default ``os.environ``). ``clock``, ``probe_after`` and
    ``probe_max`` drive the cool-down before a probe. Every :class:`CallRecord` passed to ``on_call`` carries
    the endpoint's label in ``endpoint``.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        http_client: Any = None,
        on_call: Callable[[CallRecord], None] | None = None,
        random_state: int | random.Random | None = None,
        gate: Any = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe_after: float = PROBE_AFTER_S,
        probe_max: float = PROBE_MAX_S,
    ) -> None:
        if not settings.endpoints:
            raise LLMError("an endpoint pool needs at least one endpoint (settings.endpoints)")
        self.settings = settings
        self.endpoints = list(settings.endpoints)
        self.on_call = on_call
        source = os.environ if env is None else env
        rng = random_state if isinstance(random_state, random.Random) else random.Random(random_state)
        each = [_endpoint_llm(settings, ep, source) for ep in self.endpoints]  # every key found, or an error
        self.clients = [
            LLMClient(s, http_client=http_client, on_call=self._labelled(ep.label),
                      random_state=rng.randrange(2**32),  # each endpoint's own, reproducible jitter stream
                      gate=gate)
            for s, ep in zip(each, self.endpoints, strict=True)
        ]
        self.router = EndpointRouter([e.label for e in self.endpoints], [e.weight for e in self.endpoints],
                                     probe_after=probe_after, probe_max=probe_max, clock=clock)
        self._waiters: deque[asyncio.Future[None]] = deque()  # calls waiting for room, first come first served

    def __repr__(self) -> str:
        return f"EndpointPool({describe_endpoints(self.settings)})"

    def _labelled(self, label: str) -> Callable[[CallRecord], None]:
        def report(record: CallRecord) -> None:
            if self.on_call is not None:
                self.on_call(replace(record, endpoint=label))
        return report

    # -- what the pipeline reads from a client ------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """A key-free description of the endpoints (the pool has no single base URL)."""
        return describe_endpoints(self.settings)

    @property
    def concurrency_limit(self) -> int:
        """Calls the endpoints in rotation let into flight now (the sum of their adapted limits)."""
        states = self.router.snapshot()
        return sum(c.concurrency_limit for c, s in zip(self.clients, states) if s.state != "out")

    @property
    def timeouts(self) -> Counter[str]:
        """Timed-out attempts per role over every endpoint (validation shrinks its batches on them)."""
        total: Counter[str] = Counter()
        for client in self.clients:
            total.update(client.timeouts)
        return total

    @property
    def server_kind(self) -> str | None:
        """The endpoints' server kind when they agree, ``mixed`` when not, None before any was known."""
        kinds = {c.server_kind for c in self.clients if c.server_kind is not None}
        return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"

    async def serves_one_at_a_time(self) -> bool:
        """True only for a pool of one endpoint that serves one call at a time (several such endpoints
        still serve several calls at once)."""
        return len(self.clients) == 1 and await self.clients[0].serves_one_at_a_time()

    def status(self) -> list[dict[str, Any]]:
        """Per endpoint: label, weight, state, calls in flight, picks, times taken out, failed probes, seconds
        until its next probe (``probe_in_s``, when out), last error, adapted limit and server kind. Safe to call
        from another thread."""
        out = []
        now = self.router.clock()
        for client, s in zip(self.clients, self.router.snapshot(), strict=True):
            row = asdict(s)
            row.pop("current")
            retry = row.pop("retry_at")
            row["probe_in_s"] = max(0.0, retry - now) if s.state == "out" and retry is not None else None
            row.update(concurrency_limit=client.concurrency_limit, server_kind=client.server_kind)
            out.append(row)
        return out

    async def aclose(self) -> None:
        """Close every endpoint's connections (a caller's ``http_client`` stays open)."""
        for client in self.clients:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- routing -----------------------------------------------------------------------------------------------
    def _notify(self, *, everyone: bool = False) -> None:
        """Wake the longest-waiting call (a call ended: one slot is free), or every waiting call (an endpoint
        left the rotation: each must see whether any is left). Waking one at a time keeps a long queue of
        calls from all re-checking the router on every release."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    def _all_out_error(self) -> LLMEndpointError:
        errors = "; ".join(f"{s.label}: {s.last_error or 'taken out'}" for s in self.router.snapshot())
        return LLMEndpointError(redact_text(
            f"every endpoint is out of rotation (each kept failing; the run stops resumable): {errors}"))

    async def _pick(self) -> int:
        while True:
            i = self.router.pick([c.concurrency_limit for c in self.clients])
            if i is not None:
                return i
            if self.router.all_out():
                raise self._all_out_error()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            wait = self.router.next_probe_in()
            try:  # a call ending frees room; a cool-down ending offers a probe (hence the timeout)
                await asyncio.wait_for(waiter, timeout=min(1.0, wait if wait is not None else 1.0) + 0.001)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # pass on the wake-up this cancelled call received
                raise

    def _take_out(self, i: int, exc: BaseException) -> None:
        error = redact_text(str(exc))
        if self.router.take_out(i, error):
            retry = self.router.snapshot()[i].retry_at
            delay = max(0.0, (retry or 0.0) - self.router.clock())
            _log.warning(
                "endpoint %s taken out of rotation for %.0f s: %s", self.endpoints[i].label, delay, error)

    async def complete(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Completion:
        """One chat completion (the arguments of :meth:`LLMClient.complete`) on a healthy endpoint.

        A call whose endpoint is taken out meanwhile moves to another one. Raises what the endpoint's client
        raises for the call itself (e.g. :class:`~personagen_core.errors.LLMResponseError` for an answer that
        stayed malformed), and :class:`~personagen_core.errors.LLMEndpointError` once every endpoint is out.
        """
        while True:
            i = await self._pick()
            client = self.clients[i]
            probe = self.router.probing(i)
            if probe:
                client.reset_health()  # a fresh window for the endpoint's give-up rule
            try:
                result = await client.complete(messages, **kwargs, **({"max_retries": 0} if probe else {}))
            except (LLMEndpointError, LLMConnectionError, LLMAuthError) as exc:
                self._take_out(i, exc)
                self._notify(everyone=True)
                continue
            except LLMError as exc:
                if not probe:
                    raise
                self._take_out(i, exc)  # the probe's one attempt failed: out again, the call goes elsewhere
                self._notify(everyone=True)
                continue
            finally:
                self.router.release(i)
                self._notify()
            self.router.succeeded(i)
            return result


def open_client(settings: LLMSettings, **kwargs: Any) -> LLMClient | EndpointPool:
    """An :class:`EndpointPool` when ``settings`` lists endpoints, else a plain :class:`LLMClient`
    (``kwargs``: the client's keyword arguments)."""
    if settings.endpoints:
        return EndpointPool(settings, **kwargs)
    return LLMClient(settings, **kwargs)


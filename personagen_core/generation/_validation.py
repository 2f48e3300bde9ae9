"""Stages 1-3: LLM plausibility verdicts with a cross-run cache, and the supply of validated candidates.

:class:`Validator` answers "natural" / "rare but plausible" / "implausible" for attribute tuples. A verdict
is looked up, in order, in memory, in the run store's cross-run cache (key: stage, model and the exact
attribute tuple), and among the requests already in flight (an identical tuple waits for that answer instead
of being asked twice); only the rest go to the LLM, several candidates sharing one call.

:class:`CandidateSource` samples candidates in batches, runs them through the enabled stages and hands the
survivors to the stage-4 workers. It produces on demand (what the waiting workers and the remaining quota
need, plus one batch ahead), so a small run does not pay for validations it will not use.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from personagen_core.errors import LLMAuthError, LLMConnectionError, LLMEndpointError, LLMError
from personagen_core.generation.prompts import (
    batch_verdict_schema,
    validation_columns,
    validation_messages,
    verdict_schema,
)
from personagen_core.generation.vocabulary import ERROR_VERDICT, KEPT_VERDICTS, VERDICTS, VerdictReasons
from personagen_core.personas.spec import Spec
from personagen_core.store import RunStore, verdict_key

__all__ = [
    "CURRENT_STAGE",
    "Candidate",
    "CandidateSource",
    "Validator",
    "Verdict",
    "parse_batch_verdicts",
    "verdict_max_tokens",
]

_MEMORY_MAX = 20_000  # verdicts a Validator keeps in memory (the store's cache keeps every one)

#: The pipeline stage an LLM call belongs to, read by the usage recorder (calls happen inside a task whose
#: context carries it; contextvars keep concurrent tasks apart).
CURRENT_STAGE: contextvars.ContextVar[int | None] = contextvars.ContextVar("personagen_stage", default=None)


@dataclass(frozen=True)
class Verdict:
    """One stage verdict. ``verdict`` is ``"error"`` when the endpoint gave no usable answer."""

    verdict: str
    reason: str
    cached: bool = False

    @property
    def kept(self) -> bool:
        """True for "natural" and "rare but plausible"."""
        return self.verdict in KEPT_VERDICTS


@dataclass
class Candidate:
    """A sampled persona with its scene: id in the run, attributes used, rendered descriptions."""

    persona_id: int
    attrs: dict[str, str]
    persona_text: str
    scenario_text: str | None
    uses_left: int = 1


class Validator:
    """LLM verdicts for stage 1-3 attribute tuples, cached across runs and deduplicated in flight.

    ``client`` is an open :class:`~personagen_core.generation.llm.LLMClient` (role ``validator``); ``batch_size`` is
    how many candidates may share one call (1 disables batching). ``store`` holds the cross-run cache;
    with ``None`` verdicts are only remembered by this validator. ``reasons`` says which verdicts carry a
    reason (the run config's ``verdict_reasons``).
    """

    def __init__(self, spec: Spec, store: RunStore | None, client: Any, *, batch_size: int = 8,
                 reasons: VerdictReasons = "all") -> None:
        self.spec = spec
        self.store = store
        self.client = client
        self.batch_size = max(1, int(batch_size))
        self.model: str = client.settings.model_for("validator")
        self.reasons: VerdictReasons = reasons
        # Recent verdicts, oldest dropped past _MEMORY_MAX: the store's cross-run cache holds them all, so a
        # 100k-text run does not keep every attribute tuple it ever validated in memory.
        self._memory: dict[tuple[int, str], Verdict] = {}
        self._inflight: dict[tuple[int, str], asyncio.Future[Verdict]] = {}
        self.llm_verdicts = 0  # verdicts that needed the LLM (not cached, not deduplicated)

    def _remember(self, key: tuple[int, str], verdict: Verdict) -> None:
        self._memory[key] = verdict
        if len(self._memory) > _MEMORY_MAX:
            del self._memory[next(iter(self._memory))]  # dicts keep insertion order: the oldest

    async def verdicts(self, stage: int, attrs: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        """Verdicts for ``attrs`` (one per row, same order) at ``stage``."""
        cols = validation_columns(self.spec, stage)
        keys = [verdict_key(a, cols) for a in attrs]
        out: dict[str, Verdict] = {}
        waits: dict[str, asyncio.Future[Verdict]] = {}
        unknown = []
        for k in dict.fromkeys(keys):
            if (stage, k) in self._memory:
                out[k] = self._memory[(stage, k)]
            elif (stage, k) in self._inflight:
                waits[k] = self._inflight[(stage, k)]
            else:
                unknown.append(k)
        if unknown and self.store is not None:
            for k, (v, r) in self.store.cached_verdicts(stage, self.model, unknown).items():
                out[k] = Verdict(v, r or "", cached=True)
                self._remember((stage, k), out[k])
        ask = [k for k in unknown if k not in out]
        if ask:
            loop = asyncio.get_running_loop()
            mine = {k: loop.create_future() for k in ask}
            self._inflight.update({(stage, k): f for k, f in mine.items()})
            first = {k: attrs[keys.index(k)] for k in ask}
            try:
                fresh = await self._ask(stage, [first[k] for k in ask], ask)
            except BaseException as exc:
                for k, f in mine.items():
                    self._inflight.pop((stage, k), None)
                    if not f.done():
                        f.set_exception(exc)
                        f.exception()  # mark retrieved: waiters re-raise it, nobody else must
                raise
            good = {k: (v.verdict, v.reason) for k, v in fresh.items() if v.verdict != ERROR_VERDICT}
            if good and self.store is not None:
                self.store.cache_verdicts(stage, self.model, good)
            for k, v in fresh.items():
                if v.verdict != ERROR_VERDICT:
                    self._remember((stage, k), v)
                self._inflight.pop((stage, k), None)
                mine[k].set_result(v)
                out[k] = v
        for k, f in waits.items():
            v = await f
            out[k] = Verdict(v.verdict, v.reason, cached=True)
        # A tuple repeated within the request was asked once: its later copies count as cache hits.
        seen: set[str] = set()
        result = []
        for k in keys:
            v = out[k]
            result.append(Verdict(v.verdict, v.reason, cached=True) if k in seen and not v.cached else v)
            seen.add(k)
        return result

    async def _ask(self, stage: int, rows: list[Mapping[str, Any]], keys: list[str]) -> dict[str, Verdict]:
        """Ask the LLM for ``rows`` in batches; missing or unusable batch answers are asked one by one."""
        result: dict[str, Verdict] = {}
        token = CURRENT_STAGE.set(stage)
        try:
            i = 0
            while i < len(rows):
                chunk, ckeys = rows[i : i + self.batch_size], keys[i : i + self.batch_size]
                i += len(chunk)
                got: dict[int, Verdict] = {}
                if len(chunk) > 1:
                    timeouts = self._timeouts()
                    got = await self._batch(stage, chunk)
                    if self._timeouts() > timeouts:
                        # A batch this large took longer than the timeout: ask smaller ones from now on.
                        self.batch_size = max(1, self.batch_size // 2)
                for j, (row, k) in enumerate(zip(chunk, ckeys)):
                    result[k] = got[j] if j in got else await self._single(stage, row)
        finally:
            CURRENT_STAGE.reset(token)
        self.llm_verdicts += len(result)
        return result

    def _timeouts(self) -> int:
        """Timed-out validator calls of the client so far (0 for clients that do not count them)."""
        counts = getattr(self.client, "timeouts", None)
        return int(counts.get("validator", 0)) if counts is not None else 0

    async def _batch(self, stage: int, rows: list[Mapping[str, Any]]) -> dict[int, Verdict]:
        try:
            comp = await self.client.complete(
                validation_messages(stage, rows, self.spec, reasons=self.reasons),
                role="validator",
                temperature=0.0,
                schema=batch_verdict_schema(len(rows), self.reasons),
                schema_name=f"stage{stage}_verdicts",
                max_tokens=verdict_max_tokens(len(rows), self.reasons),
            )
        except (LLMAuthError, LLMConnectionError, LLMEndpointError):
            raise  # the endpoint cannot work (now): stop the run rather than record errors as verdicts
        except LLMError:
            return {}  # fall back to one call per candidate
        return parse_batch_verdicts(comp.data, len(rows))

    async def _single(self, stage: int, row: Mapping[str, Any]) -> Verdict:
        if self.reasons == "rejected":  # its two-shape verdict needs an object around it: the batch form
            got = await self._batch(stage, [row])
            return got.get(0) or Verdict(ERROR_VERDICT, "no usable verdict in the answer")
        try:
            comp = await self.client.complete(
                validation_messages(stage, [row], self.spec),
                role="validator",
                temperature=0.0,
                schema=verdict_schema(),
                schema_name=f"stage{stage}_verdict",
                max_tokens=120,
            )
        except (LLMAuthError, LLMConnectionError, LLMEndpointError):
            raise  # the endpoint cannot work (now): stop the run rather than record errors as verdicts
        except LLMError as exc:
            return Verdict(ERROR_VERDICT, str(exc))
        data = comp.data if isinstance(comp.data, Mapping) else {}
        if data.get("verdict") not in _VERDICT_SET:
            return Verdict(ERROR_VERDICT, f"no verdict in the answer: {comp.text[:200]!r}")
        return Verdict(str(data["verdict"]), str(data.get("reason", "")))


_VERDICT_SET = frozenset(VERDICTS)


def verdict_max_tokens(n: int, reasons: VerdictReasons) -> int:
    """``max_tokens`` of a call asking ``n`` verdicts: room for a one-sentence reason per verdict (a cut
    answer is invalid JSON and retried)."""
    return (100 if reasons == "all" else 50) * n + 40


def parse_batch_verdicts(data: Any, n: int) -> dict[int, Verdict]:
    """The usable verdicts of a batch answer ``{"verdicts": [{"id", "verdict", "reason"}]}`` by id (ids out of
    range, repeated ids and unknown verdicts are left out: those candidates get no verdict)."""
    got: dict[int, Verdict] = {}
    items = data.get("verdicts") if isinstance(data, Mapping) else None
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        i = item.get("id")
        if isinstance(i, int) and 0 <= i < n and i not in got and item.get("verdict") in _VERDICT_SET:
            got[i] = Verdict(str(item["verdict"]), str(item.get("reason", "")))
    return got


@dataclass
class _SourceState:
    stock: deque[Candidate] = field(default_factory=deque)
    pending: int = 0  # candidates being sampled/validated
    batches: int = 0  # batches being sampled/validated
    validated: int = 0
    passed: int = 0
    waiting: int = 0


class CandidateSource:
    """Validated candidates on demand for the stage-4 workers.

    ``sample(n)`` returns ``n`` candidates (a callable so the pipeline controls sampling and storage);
    ``stages`` lists the stages validated by ``validator`` (empty: no LLM validation); ``need()`` gives
    how many more candidates the run can use; ``may_launch()`` is False once a budget stops the run;
    ``record_verdicts(stage, candidates, verdicts)`` records verdicts; ``lookahead`` is the number of
    generations the source should keep fed (the concurrency): ``lookahead`` x stages candidates are kept in
    production; ``max_batches`` caps the batches in production at once (None: no cap). Past the number of
    calls the endpoint can serve at once, more batches do not validate faster: they queue speculative
    stage-1 calls ahead of the later-stage calls of the candidates already under way. ``prefetch=False``
    starts a batch only once the stock is empty: for a backend that serves one call at a time, refilling
    ahead gains no overlap and interleaves validation with generation calls, so neither kind reuses the
    previous call's prompt prefix from the KV cache. ``first_batch`` ramps the batch size: the first batch
    holds that many candidates and each next one twice as many, up to ``batch_size`` (None: full batches
    from the start). A first text then waits for a few one- or two-candidate calls, not for whole batches
    through every stage (on the embedded model: minutes), and later batches are full for throughput. The
smaller batches run one at a time.
    """

    def __init__(
        self,
        *,
        sample: Callable[[int], list[Candidate]],
        validator: Validator | None,
        stages: Sequence[int],
        batch_size: int,
        need: Callable[[], int],
        may_launch: Callable[[], bool],
        record_verdicts: Callable[[int, list[Candidate], list[Verdict]], None],
        texts_per_candidate: int = 1,
        lookahead: int = 0,
        max_batches: int | None = None,
        prefetch: bool = True,
        first_batch: int | None = None,
    ) -> None:
        self._sample = sample
        self._validator = validator
        self._stages = list(stages) if validator is not None else []
        self._batch = max(1, batch_size)
        self._next = self._batch if first_batch is None else min(self._batch, max(1, first_batch))
        self._need = need
        self._may_launch = may_launch
        self._record = record_verdicts
        self._per = max(1, texts_per_candidate)
        self._lookahead = lookahead * len(self._stages)
        self._max_batches = None if max_batches is None else max(1, max_batches)
        self._prefetch = prefetch
        self._state = _SourceState()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self.error: BaseException | None = None

    @property
    def survival(self) -> float:
        """Share of validated candidates that passed every stage so far (Laplace-smoothed)."""
        s = self._state
        return (s.passed + 1) / (s.validated + 1)

    def _available(self) -> float:
        s = self._state
        return sum(c.uses_left for c in s.stock) + s.pending * self.survival * self._per

    def _top_up(self) -> None:
        s = self._state
        # Waiting workers plus the pipeline depth: a candidate spends one call latency per validated stage,
        # so keeping every worker busy needs about (stages x concurrent generations) candidates in
        # production. Never more than the run can still use (need() shrinks as texts are accepted).
        want = min(self._need(), s.waiting + max(self._batch, self._lookahead))
        while (
            not self._closed
            and self.error is None
            and self._available() < want
            # batches drops before waiters wake (unlike _tasks)
            and (self._max_batches is None or s.batches < self._max_batches)
            # The small first batches go alone: beside other batches their later stages would queue behind
            # those batches' calls (one model serves one call at a time) or crowd an endpoint whose
            # capacity the client is still probing.
            and (self._next >= self._batch or s.batches == 0)
            and self._may_launch()
        ):
            size, self._next = self._next, min(self._batch, 2 * self._next)
            s.pending += size
            s.batches += 1
            task = asyncio.create_task(self._produce(size))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def get(self) -> Candidate | None:
        """The next candidate, or None when the source is closed (run finished or stopped)."""
        s = self._state
        s.waiting += 1
        try:
            while True:
                if self.error is not None:
                    raise self.error
                if self._closed or not self._may_launch():
                    return None  # finished, or a budget/cancel stop: no new generation may start
                if s.stock:
                    cand = s.stock[0]
                    cand.uses_left -= 1
                    if cand.uses_left <= 0:
                        s.stock.popleft()
                    if self._prefetch:
                        self._top_up()  # refill ahead of demand, not once the stock is empty
                    return cand
                self._top_up()
                if not self._tasks and not s.stock:
                    return None  # nothing in production and nothing may be launched (budget reached)
                self._changed.clear()
                await self._changed.wait()
        finally:
            s.waiting -= 1

    def poke(self) -> None:
        """Wake waiting workers (e.g. after a stop decision) so they re-check."""
        self._changed.set()

    async def _produce(self, n: int) -> None:
        s = self._state
        try:
            cands = self._sample(n)
            for stage in self._stages:
                if not cands or self._closed:
                    break
                verdicts = await self._validator.verdicts(stage, [c.attrs for c in cands])  # type: ignore[union-attr]
                self._record(stage, cands, verdicts)
                cands = [c for c, v in zip(cands, verdicts) if v.kept]
            if not self._closed:
                s.validated += n
                s.passed += len(cands)
                for c in cands:
                    c.uses_left = self._per
                s.stock.extend(cands)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # fatal (auth, connection): surfaced to the workers
            self.error = exc
        finally:
            s.pending -= n
            s.batches -= 1
            self._changed.set()

    async def aclose(self, *, wait: bool = True) -> None:
        """Stop producing; wait for (or cancel) batches in flight so their verdicts are recorded."""
        self._closed = True
        self._changed.set()
        tasks = list(self._tasks)
        if not wait:
            for t in tasks:
                t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

"""The scheduler of a generation run: workers, exact quotas, budgets, recording and progress events.

A :class:`RunSession` is one start or resume of a run. Each worker *claims* a slot of an emotion
(accepted + claimed <= target), takes a validated candidate from the
:class:`~personagen_core.generation._validation.CandidateSource`, asks the LLM for a text and checks it; a rejection frees
the slot for a fresh candidate. So at most the missing number of texts are ever in flight, and the store's
guarded insert refuses anything beyond the quota. Every call, verdict, rejection and text is recorded in the
:class:`~personagen_core.store.RunStore` as it happens. The public entry points are in :mod:`pipeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from personagen_core.errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMEndpointError,
    LLMError,
    PersonaGenError,
    StoreError,
)
from personagen_core.generation import pricing
from personagen_core.generation._validation import (
    CURRENT_STAGE,
    Candidate,
    CandidateSource,
    Validator,
    Verdict,
)
from personagen_core.generation.checks import (
    CheckLevel,
    LanguageIdentifier,
    NearDuplicateIndex,
    check_output,
    normalise,
)
from personagen_core.generation.endpoints import (
    EndpointPool,
    endpoint_secrets,
    open_client,
    total_concurrency,
)
from personagen_core.generation.llm import CallRecord, LLMClient, estimate_tokens
from personagen_core.generation.prompts import generation_messages, sentence_grammar, validation_messages
from personagen_core.generation.run_config import METHODS, GenerationConfig, render_candidate, stages_of
from personagen_core.generation.vocabulary import ERROR_VERDICT
from personagen_core.personas.sampling import build_model
from personagen_core.personas.spec import Spec
from personagen_core.redaction import scrub, url_secrets
from personagen_core.store import HEARTBEAT_S, CallRow, RunStore

__all__ = ["ProgressEvent", "RunSession", "RunSummary"]

_log = logging.getLogger(__name__)


_SAMPLE_CHUNK = 256  # candidates drawn per sampler call
# Prompt tokens are estimated from characters (about four per token); the margin covers tokenizers that
# split finer, so a reservation stays a worst case. A call without max_tokens reserves _DEFAULT_COMPLETION.
_PROMPT_MARGIN = 1.1
_DEFAULT_COMPLETION = 1024
_POLL_S = 0.5  # an attempt waiting for budget re-checks at least this often


def worst_case_tokens(body: Mapping[str, Any]) -> tuple[int, int]:
    """Worst case of one chat request, as budgets reserve it: prompt tokens (estimated from the messages'
    characters, with :data:`_PROMPT_MARGIN`) and the request's ``max_tokens``."""
    text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, Mapping))
    prompt = math.ceil(estimate_tokens(text) * _PROMPT_MARGIN)
    return prompt, int(body.get("max_tokens") or body.get("max_completion_tokens") or _DEFAULT_COMPLETION)


class _Refused(Exception):
    """The budget gate refused an HTTP attempt because the run is stopping (never retried, never an error)."""


@dataclass
class ProgressEvent:
    """A snapshot of a run for progress bars and dashboards."""

    run_id: str
    state: Literal["running", "done", "stopped", "failed", "cancelled"]
    accepted: dict[str, int]
    target: dict[str, int]
    rejections: dict[str, int]
    tokens: int
    cost: float
    calls: int
    elapsed_s: float
    eta_s: float | None
    message: str | None = None
    stop_reason: str | None = None
    #: A run over an endpoint pool: each endpoint's state (label, state, in_flight, picks, times_out,
    #: last_error, concurrency_limit, server_kind, ...; :meth:`EndpointPool.status`), else None.
    endpoints: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


@dataclass
class RunSummary:
    """How a run (or a resumed session of it) ended."""

    run_id: str
    state: str
    stop_reason: str | None
    message: str | None
    accepted: dict[str, int]
    target: dict[str, int]
    rejections: dict[str, int]
    tokens: int
    cost: float
    calls: int
    elapsed_s: float
    unpriced_models: list[str] = field(default_factory=list)
    #: Set when a cost or token budget stopped the run: the limit, what was spent, the overshoot (spent
    #: minus limit, at least 0) and the calls in flight when the budget was first reached, with their
    #: reserved worst case (the bound on the overshoot).
    budget: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """True when every emotion reached its quota."""
        return all(self.accepted.get(e, 0) >= n for e, n in self.target.items())


class RunSession:
    """One session of a run (a start or a resume): state, workers, recording. Lives in one event loop.

    Create it after the run exists in ``store``; :meth:`execute` runs it to the end.
    """

    def __init__(
        self,
        spec: Spec,
        config: GenerationConfig,
        store: RunStore,
        run_id: str,
        on_event: Callable[[ProgressEvent], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.spec, self.config, self.store, self.run_id = spec, config, store, run_id
        self.on_event, self.cancel = on_event, cancel
        # One process per run: a second session of a live run fails here, before it touches anything.
        self.lease = store.acquire_lease(run_id)
        try:
            self._setup(spec, config, store, run_id)
        except BaseException:
            store.release_lease(run_id, self.lease)
            raise

    def _setup(self, spec: Spec, config: GenerationConfig, store: RunStore, run_id: str) -> None:
        info = METHODS[config.method]
        self.checks: CheckLevel = info.checks
        self.validate = info.validate and config.validate_
        self.stages = stages_of(spec, config)
        self.columns = [c for s in self.stages for c in spec.stage_columns(s)]
        self.emotion_objs = {e.name: e for e in spec.emotions}
        # The quota recorded when the run was created (run_config.targets_of) is the one worked to.
        self.target = {e: int(n) for e, n in store.run(run_id)["target"].items()}
        names = list(self.target)
        counts = store.accepted_counts(run_id)
        self.accepted = {e: counts.get(e, 0) for e in names}
        self.claimed = dict.fromkeys(names, 0)
        self.generating = 0
        self.rejections: Counter[str] = Counter(store.rejection_counts(run_id))
        totals = store.totals(run_id)
        self.tokens, self.cost, self.calls = (
            int(totals["tokens"]),
            float(totals["cost"]),
            int(totals["calls"]),
        )
        self.max_attempts = config.max_attempts or 10 * sum(self.target.values()) + 50
        self.index = NearDuplicateIndex(config.near_duplicate_threshold)
        self.index.extend(store.accepted_texts(run_id))
        self.session = store.start_session(run_id)
        # A fresh, reproducible stream per session so a resumed run does not redraw the same candidates.
        self.rng = np.random.default_rng([config.seed, self.session])
        self.sampler = build_model(spec, mode=info.mode)
        self._rows: deque[dict[str, Any]] = deque()
        self.next_pid = store.next_persona_id(run_id)
        key = config.llm.api_key.get_secret_value() if config.llm.api_key else None
        self.secrets = [s for s in (key, *url_secrets(config.llm.base_url), *endpoint_secrets(config.llm)) if s]
        self.language_id = LanguageIdentifier(spec.language)
        # Budget gate: worst-case cost and tokens reserved by the attempts in flight (see acquire()).
        self.reserved_cost = 0.0
        self.reserved_tokens = 0
        self.in_flight = 0
        self._released = asyncio.Event()
        self.budget_hit: dict[str, Any] | None = None
        self._carry: dict[str, Any] | None = None  # see _carry_worst()
        self._last_heartbeat = time.monotonic()
        self.unpriced: set[str] = set()
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.started = time.monotonic()
        self.accepted_at_start = sum(self.accepted.values())
        self._slots = asyncio.Event()
        self._last_event = 0.0
        self._last_stored_event = 0.0
        self.client: LLMClient | EndpointPool | None = None
        self.source: CandidateSource | None = None

    # -- accounting -----------------------------------------------------------------------------------------
    def _scrub(self, text: str | None) -> str | None:
        return scrub(text, self.secrets)

    # -- budget gate (llm.CallGate) ---------------------------------------------------------------------
    def _over_budget(self, need: tuple[float, int] | None = None) -> str | None:
        """The budget already spent or reserved in full (no room for another attempt), if any; with
        ``need`` (cost, tokens): the budget that cannot cover that much more."""
        c = self.config
        cost, tokens = self.cost + self.reserved_cost, self.tokens + self.reserved_tokens
        if need is None:
            if c.max_cost is not None and cost >= c.max_cost:
                return "max_cost"
            if c.token_budget is not None and tokens >= c.token_budget:
                return "token_budget"
            return None
        if c.max_cost is not None and cost + need[0] > c.max_cost:
            return "max_cost"
        if c.token_budget is not None and tokens + need[1] > c.token_budget:
            return "token_budget"
        return None

    def _carry_worst(self, completion: int) -> tuple[float, int]:
        """Worst case of carrying one batch of new candidates from its first validated stage to texts: the
        later stages' calls (their prompts built for sampled candidates, ``completion`` tokens each) and one
        generation per candidate and text. Computed once from the spec (its own random stream)."""
        if self._carry is None:
            batch = self.config.validation_batch
            df = self.sampler.sample(batch, random_state=np.random.default_rng([self.config.seed, 99]))
            rows = [{k: str(v) for k, v in r.items()} for r in df.to_dict("records")]
            reasons = self.config.verdict_reasons
            later = [
                math.ceil(estimate_tokens(" ".join(m["content"] for m in validation_messages(
                    s, rows, self.spec, reasons=reasons))) * _PROMPT_MARGIN)
                for s in self.stages[1:]
            ]
            persona, scenario = render_candidate(rows[0], self.spec, self.stages)
            msgs = generation_messages(self.spec.emotions[0], persona, scenario, spec=self.spec)
            per = self.config.texts_per_persona or self.spec.generation.texts_per_persona
            n_gen = batch * per
            self._carry = {
                "later_prompt": sum(later),
                "later_calls": len(later),
                "gen_prompt": n_gen * math.ceil(estimate_tokens(" ".join(m["content"] for m in msgs)) * _PROMPT_MARGIN),
                "gen_completion": n_gen * self.spec.generation.max_tokens,
            }
        c = self._carry
        later_completion = c["later_calls"] * completion
        cost = (pricing.cost(self.config.llm.model_for("validator"), c["later_prompt"], later_completion) or 0.0) + (
            pricing.cost(self.config.llm.model_for("generator"), c["gen_prompt"], c["gen_completion"]) or 0.0
        )
        return cost, c["later_prompt"] + later_completion + c["gen_prompt"] + c["gen_completion"]

    async def acquire(self, role: str, body: Mapping[str, Any]) -> tuple[float, int]:
        """Admit one HTTP attempt: reserve its worst-case cost and tokens (prompt + ``max_tokens``) against
        the budgets before it is sent.

        An attempt is admitted while spent + reserved is below the limit, so at most one admitted attempt
        reaches past it: the run spends at most its limit plus one attempt's worst case (and the estimation
        error of prompt tokens). Once the budget is fully reserved, attempts wait for those in flight to
        settle (actual usage is usually far below the reservation); with nothing in flight and nothing left,
        the run stops. After any stop (budget, cancel, attempts, fatal error) every new attempt, retries
        included, is refused with :class:`_Refused`.

        A call that starts new candidates (the first validated stage) must also leave room to carry its
        batch to texts (:meth:`_carry_worst`): late in a budget, the money goes to candidates already under
        way rather than to fresh batches that could never become texts.
        """
        prompt, completion = worst_case_tokens(body)
        cost = pricing.cost(str(body.get("model")), prompt, completion) or 0.0
        tokens = prompt + completion
        need: tuple[float, int] | None = None
        budgeted = self.config.max_cost is not None or self.config.token_budget is not None
        if budgeted and self.validate and role == "validator" and CURRENT_STAGE.get() == self.stages[0]:
            carry = self._carry_worst(completion)
            need = (cost + carry[0], tokens + carry[1])
        quiet = 0  # consecutive checks, one poll apart, that found nothing under way
        while True:
            if self._check_stop() is not None:
                raise _Refused(self.stop_reason)
            over = self._over_budget(need)
            if over is None:
                # A new batch holds the reservation of its whole way to texts while its first call is out,
                # so that concurrent new batches cannot promise the same money twice.
                held = need or (cost, tokens)
                self.reserved_cost += held[0]
                self.reserved_tokens += held[1]
                self.in_flight += 1
                return held
            if self.budget_hit is None:
                self.budget_hit = {
                    "reason": over,
                    "in_flight": self.in_flight,
                    "in_flight_worst_usd": self.reserved_cost,
                    "in_flight_worst_tokens": self.reserved_tokens,
                }
            if need is not None:
                self.budget_hit["new_batch"] = need  # what the refused new batch needed to become texts
            busy = self.in_flight > 0 or (need is not None and self.generating > 0)
            quiet = 0 if busy else quiet + 1
            # Nothing under way can free room: the budget is spent. A new batch looks twice, one poll
            # apart, so that candidates validated a moment ago reach the workers and go first.
            if quiet > (1 if need is not None else 0):
                self.stop_reason = self.stop_reason or over
                self._wake()
                raise _Refused(over)
            self._released.clear()
            with contextlib.suppress(TimeoutError):  # a poll: no wake-up can be missed for good
                await asyncio.wait_for(self._released.wait(), _POLL_S)

    def release(self, ticket: tuple[float, int]) -> None:
        """Free an attempt's reservation (its actual usage was recorded by :meth:`on_call` just before)."""
        cost, tokens = ticket
        self.reserved_cost = max(0.0, self.reserved_cost - cost)
        self.reserved_tokens = max(0, self.reserved_tokens - tokens)
        self.in_flight -= 1
        self._released.set()

    def on_call(self, rec: CallRecord) -> None:
        """Record one HTTP attempt with its stage, tokens and cost."""
        stage = CURRENT_STAGE.get()
        price = pricing.cost(rec.model, rec.prompt_tokens, rec.completion_tokens)
        if price is None:
            self.unpriced.add(rec.model)
            price = 0.0
        self.store.add_calls(
            self.run_id,
            [
                CallRow(
                    stage=stage,
                    role=rec.role,
                    model=rec.model,
                    prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens,
                    latency_s=rec.latency_s,
                    status=rec.status,
                    error=self._scrub(rec.error),
                    mode=rec.mode,
                    cost=price,
                    endpoint=rec.endpoint,
                )
            ],
        )
        self.calls += 1
        self.tokens += rec.prompt_tokens + rec.completion_tokens
        self.cost += price

    def _reject(
        self,
        stage: int,
        reason: str,
        detail: str | None,
        *,
        emotion: str | None = None,
        persona_id: int | None = None,
        text: str | None = None,
    ) -> None:
        self.store.add_rejection(
            self.run_id,
            stage=stage,
            reason=reason,
            detail=self._scrub(detail),
            emotion=emotion,
            persona_id=persona_id,
            text=text,
        )
        self.rejections[reason] += 1

    def record_verdicts(self, stage: int, cands: list[Candidate], verdicts: list[Verdict]) -> None:
        """Store every verdict of a validated batch and a rejection for each candidate not kept."""
        model = self.client.settings.model_for("validator") if self.client else None
        self.store.add_verdicts(
            self.run_id,
            [
                (c.persona_id, stage, model, v.verdict, self._scrub(v.reason), v.cached)
                for c, v in zip(cands, verdicts)
            ],
        )
        dropped = [c.persona_id for c, v in zip(cands, verdicts) if not v.kept]
        for c, v in zip(cands, verdicts):
            if not v.kept:
                self._reject(
                    stage,
                    f"stage{stage}_{ERROR_VERDICT if v.verdict == ERROR_VERDICT else 'implausible'}",
                    v.reason,
                    persona_id=c.persona_id,
                )
        if dropped:
            self.store.set_persona_status(self.run_id, dropped, f"rejected_stage{stage}")
        if stage == self.stages[-1]:
            kept = [c.persona_id for c, v in zip(cands, verdicts) if v.kept]
            if kept:
                self.store.set_persona_status(self.run_id, kept, "validated")

    def sample(self, n: int) -> list[Candidate]:
        """Draw ``n`` candidates, render them and record them in the store."""
        while len(self._rows) < n:
            # Sampling has a fixed cost per call, so draw a chunk and hand it out in batches; the stream of
            # candidates is the same whatever the batch sizes.
            df = self.sampler.sample(_SAMPLE_CHUNK, random_state=self.rng)
            cols = list(df.columns)
            self._rows.extend(dict(zip(cols, vals)) for vals in zip(*(df[c].tolist() for c in cols)))
        cands = []
        for _ in range(n):
            full = {k: str(v) for k, v in self._rows.popleft().items()}
            attrs = {c: full[c] for c in self.columns}
            persona, scenario = render_candidate(full, self.spec, self.stages)
            cands.append(Candidate(self.next_pid, attrs, persona, scenario))
            self.next_pid += 1
        self.store.add_personas(
            self.run_id,
            self.session,
            [(c.persona_id, c.attrs, c.persona_text, c.scenario_text or "") for c in cands],
        )
        return cands

    # -- scheduling -----------------------------------------------------------------------------------------
    def _rejected(self) -> int:
        return sum(v for k, v in self.rejections.items() if k != "quota_full")

    def _attempts(self) -> int:
        return sum(self.accepted.values()) + self._rejected() + sum(self.claimed.values())

    def _check_stop(self) -> str | None:
        if self.stop_reason is None:
            if self.fatal is not None:
                self.stop_reason = "error"
            elif self.cancel is not None and self.cancel.is_set():
                self.stop_reason = "cancelled"
            elif self.config.max_cost is not None and self.cost >= self.config.max_cost:
                self.stop_reason = "max_cost"
            elif self.config.token_budget is not None and self.tokens >= self.config.token_budget:
                self.stop_reason = "token_budget"
            elif sum(self.accepted.values()) + self._rejected() >= self.max_attempts:
                # Validation rejections count too, so no new batch starts once the limit is used up.
                self.stop_reason = "max_attempts"
        return self.stop_reason

    def _done(self) -> bool:
        return all(self.accepted[e] >= n for e, n in self.target.items())

    def need(self) -> int:
        """Candidates the run can still use (missing texts not already being generated)."""
        return max(0, sum(max(0, self.target[e] - self.accepted[e]) for e in self.target) - self.generating)

    def may_launch(self) -> bool:
        """False once a stop reason is set (budgets, cancel, fatal error) or every quota is met."""
        return self._check_stop() is None and not self._done()

    async def _claim(self) -> str | None:
        while True:
            if self._check_stop() or self._done():
                return None
            free = {e: self.target[e] - self.accepted[e] - self.claimed[e] for e in self.target}
            best = max(free, key=lambda e: free[e])
            if free[best] > 0:
                if self._attempts() >= self.max_attempts:
                    self.stop_reason = self.stop_reason or "max_attempts"
                    return None
                self.claimed[best] += 1
                return best
            self._slots.clear()
            await self._slots.wait()

    def _wake(self) -> None:
        self._slots.set()
        self._released.set()  # attempts waiting for budget re-check (and see a stop)
        if self.source is not None:
            self.source.poke()

    async def worker(self) -> None:
        """Claim a slot, get a validated candidate, generate and check, until the quotas are met or a stop."""
        assert self.source is not None
        while True:
            emotion = await self._claim()
            if emotion is None:
                return
            try:
                cand = await self.source.get()
                if cand is None:
                    return
                self.generating += 1
                try:
                    await self._generate(cand, emotion)
                finally:
                    self.generating -= 1
            except _Refused:
                return  # the run is stopping: the budget gate admits no new attempt
            except (LLMAuthError, LLMConnectionError, PersonaGenError) as exc:
                self.fatal = self.fatal or exc
                return
            finally:
                self.claimed[emotion] -= 1
                self._wake()
                self._emit()

    async def _generate(self, cand: Candidate, emotion: str) -> bool:
        assert self.client is not None
        gen = self.spec.generation
        messages = generation_messages(
            self.emotion_objs[emotion], cand.persona_text, cand.scenario_text, spec=self.spec
        )
        token = CURRENT_STAGE.set(4)
        try:
            comp = await self.client.complete(
                messages,
                role="generator",
                temperature=self.config.temperature_for(self.spec),
                max_tokens=gen.max_tokens,
                grammar=sentence_grammar(gen.max_sentences),
            )
        except (LLMAuthError, LLMConnectionError, LLMEndpointError):
            raise
        except LLMError as exc:
            self._reject(4, "llm_error", str(exc), emotion=emotion, persona_id=cand.persona_id)
            return False
        finally:
            CURRENT_STAGE.reset(token)
        res = check_output(
            comp.text,
            language=self.spec.language,
            max_sentences=gen.max_sentences,
            persona_description=cand.persona_text,
            index=self.index,
            level=self.checks,
            max_chars=gen.max_chars,
            max_words=gen.max_words,
            finish_reason=comp.finish_reason,
            identifier=self.language_id,
        )
        if not res.ok:
            self._reject(
                4,
                res.reason or "rejected",
                res.detail,
                emotion=emotion,
                persona_id=cand.persona_id,
                text=res.text,
            )
            return False
        # This session holds the run's lease (its only writer), so the duplicate and quota checks are made
        # here and the text is written with the next flush (ticker, progress event), not one commit each.
        if self.index.contains(res.text):
            outcome = "duplicate"
        elif self.accepted[emotion] >= self.target[emotion]:
            outcome = "quota_full"
        else:
            outcome = self.store.add_text(
                self.run_id,
                emotion=emotion,
                text=res.text,
                text_norm=normalise(res.text),
                persona_id=cand.persona_id,
                model=comp.model,
                quota=self.target[emotion],
                defer=True,
            )
        if outcome != "accepted":
            self._reject(
                4,
                outcome,
                "already in the run" if outcome == "duplicate" else "quota reached",
                emotion=emotion,
                persona_id=cand.persona_id,
                text=res.text,
            )
            return False
        self.accepted[emotion] += 1
        self.index.add(res.text)
        return True

    # -- events --------------------------------------------------------------------------------
    def event(self, state: str, message: str | None = None) -> ProgressEvent:
        """The current progress snapshot."""
        elapsed = time.monotonic() - self.started
        done_now = sum(self.accepted.values()) - self.accepted_at_start
        remaining = sum(max(0, self.target[e] - self.accepted[e]) for e in self.target)
        eta = None
        if remaining == 0:
            eta = 0.0
        elif done_now > 0 and elapsed > 0:
            eta = remaining * elapsed / done_now
        return ProgressEvent(
            run_id=self.run_id,
            state=state,
            accepted=dict(self.accepted),  # type: ignore[arg-type]
            target=dict(self.target),
            rejections=dict(self.rejections),
            tokens=self.tokens,
            cost=self.cost,
            calls=self.calls,
            elapsed_s=elapsed,
            eta_s=eta,
            message=message,
            stop_reason=self.stop_reason,
            endpoints=self._endpoint_status(),
        )

    def _endpoint_status(self) -> list[dict[str, Any]] | None:
        """The pool's endpoints for progress displays (key-free: labels are redacted URLs, errors scrubbed)."""
        if not isinstance(self.client, EndpointPool):
            return None
        rows = self.client.status()
        for row in rows:
            row["last_error"] = self._scrub(row["last_error"])
        return rows

    def _emit(self, *, force: bool = False, state: str = "running", message: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_event < 0.2:
            return
        self._last_event = now
        # Commit the deferred texts first: what a progress event reports accepted is on disk (kill -9 after
        # it loses nothing it reported).
        self._flush()
        ev = self.event(state, message)
        if force or now - self._last_stored_event >= 1.0:
            self._last_stored_event = now
            self.store.add_event(self.run_id, state, ev.to_dict())
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken progress display must not stop a paid-for run
                _log.exception("on_event callback failed")

    def _flush(self) -> None:
        """Commit the deferred writes; a refused text (another writer) stops the run as a store error."""
        try:
            self.store.flush()
        except StoreError as exc:
            self.fatal = self.fatal or exc
            self._wake()

    async def ticker(self, workers: list[asyncio.Task[None]]) -> None:
        """Poll the cancel flag and emit periodic events while the workers run."""
        cancelled = False
        while True:
            await asyncio.sleep(0.1)
            if self.cancel is not None and self.cancel.is_set() and not cancelled:
                # Stop at once: calls in flight are abandoned rather than awaited.
                cancelled = True
                self.stop_reason = "cancelled"
                for t in workers:
                    t.cancel()
            if self._check_stop():
                self._wake()
            self._emit()
            self._flush()
            now = time.monotonic()
            if now - self._last_heartbeat >= HEARTBEAT_S:
                self._last_heartbeat = now
                if not self.store.heartbeat(self.run_id, self.lease) and self.fatal is None:
                    self.fatal = StoreError(
                        f"run {self.run_id}: this session lost its lease (no heartbeat for too long) and "
                        "another process took the run over; this session stopped"
                    )
                    self._wake()

    # -- main --------------------------------------------------------------------------------
    async def execute(self, http_client: Any = None) -> RunSummary:
        """Run the session to the end and record its final state."""
        self._emit(force=True)
        message: str | None = None
        try:
            # Rows are committed in groups (by the ticker and before each progress event) rather than one
            # transaction each: accepted texts too (see _generate and _flush).
            async with (
                open_client(
                    self.config.llm,
                    http_client=http_client,
                    on_call=self.on_call,
                    random_state=self.config.seed,
                    gate=self,
                ) as client,
                _write_behind(self.store),
            ):
                self.client = client
                # Calls the backend serves at once. The embedded model decodes one request at a time, so
                # there more calls in flight only lengthen the queue in front of the critical path (a
                # weak validator's survivors waited behind dozens of speculative stage-1 batches). Two
                # batches let same-stage calls run back to back, each reusing the previous one's
                # instructions from the KV cache; the next batches start once the stock is used up.
                # The same holds for a local server that answers one call at a time (llama-cpp-python's).
                local = self.config.llm.backend == "local" or await client.serves_one_at_a_time()
                parallel = 1 if local else total_concurrency(self.config.llm)
                validator = (
                    Validator(self.spec, self.store, client, batch_size=self.config.validation_batch,
                              reasons=self.config.verdict_reasons)
                    if self.validate
                    else None
                )
                self.source = CandidateSource(
                    sample=self.sample,
                    validator=validator,
                    stages=self.stages,
                    batch_size=self.config.validation_batch,
                    need=self.need,
                    may_launch=self.may_launch,
                    record_verdicts=self.record_verdicts,
                    texts_per_candidate=self.config.texts_per_persona
                    or self.spec.generation.texts_per_persona,
                    lookahead=parallel,
                    max_batches=2 if local else parallel,
                    prefetch=not local,
                    first_batch=1,  # a first text within seconds, then full batches (issue 15)
                )
                # One worker per connection: more would queue generation calls at the client's limit ahead
                # of the validation calls that feed them (the critical path).
                n_workers = self.config.workers or parallel
                workers = [asyncio.create_task(self.worker()) for _ in range(n_workers)]
                ticker = asyncio.create_task(self.ticker(workers))
                try:
                    results = await asyncio.gather(*workers, return_exceptions=True)
                finally:
                    ticker.cancel()
                    await self.source.aclose(wait=self.stop_reason != "cancelled")
                    if (
                        self.source.error is not None
                        and self.fatal is None
                        and not isinstance(self.source.error, _Refused)
                    ):
                        self.fatal = self.source.error
                bugs = [r for r in results if isinstance(r, Exception)]
                if bugs:
                    raise bugs[0]  # not a PersonaGenError (workers keep those): surface it
        except PersonaGenError as exc:
            self.fatal = self.fatal or exc
        except BaseException as exc:  # a bug or an interrupt: the run stays resumable, then re-raise
            self.store.set_status(
                self.run_id,
                "failed",
                stop_reason="error",
                message=self._scrub(f"{type(exc).__name__}: {exc}"),
            )
            self.store.release_lease(self.run_id, self.lease)
            raise
        if self._done():
            state, reason = "done", None
        elif self.fatal is not None:
            state, reason = "failed", "error"
            message = self._scrub(str(self.fatal))
        elif self.stop_reason == "cancelled":
            state, reason = "cancelled", "cancelled"
        else:
            state, reason = "stopped", self.stop_reason or "exhausted"
        self.stop_reason = reason
        budget = self._budget_report(reason)
        if state == "stopped":
            message = _STOP_MESSAGES.get(reason or "", "stopped")
            if budget is not None:
                message = f"{message} ({budget['text']})"
        self.store.set_status(self.run_id, state, stop_reason=reason, message=message)
        self._emit(force=True, state=state, message=message)
        self.store.release_lease(self.run_id, self.lease)
        return RunSummary(
            run_id=self.run_id,
            state=state,
            stop_reason=reason,
            message=message,
            accepted=dict(self.accepted),
            target=dict(self.target),
            rejections=dict(self.rejections),
            tokens=self.tokens,
            cost=self.cost,
            calls=self.calls,
            elapsed_s=time.monotonic() - self.started,
            unpriced_models=sorted(self.unpriced),
            budget=budget,
        )

    def _budget_report(self, reason: str | None) -> dict[str, Any] | None:
        """What a budget stop spent against its limit, and the bound on the overshoot (calls in flight)."""
        if reason not in ("max_cost", "token_budget"):
            return None
        hit = self.budget_hit or {"in_flight": 0, "in_flight_worst_usd": 0.0, "in_flight_worst_tokens": 0}
        if reason == "max_cost":
            limit, spent = float(self.config.max_cost or 0), self.cost
            worst = float(hit["in_flight_worst_usd"])
            text = (
                f"spent ${spent:.4f} of ${limit:.4f}, over by ${max(0.0, spent - limit):.4f}; "
                f"{hit['in_flight']} calls were in flight when it was reached, ${worst:.4f} reserved for them"
            )
            if "new_batch" in hit:
                text += (
                    f"; a new batch of {self.config.validation_batch} candidates needs up to "
                    f"${hit['new_batch'][0]:.4f} to become texts"
                )
        else:
            limit, spent = float(self.config.token_budget or 0), float(self.tokens)
            worst = float(hit["in_flight_worst_tokens"])
            text = (
                f"used {int(spent):,} of {int(limit):,} tokens, over by {int(max(0.0, spent - limit)):,}; "
                f"{hit['in_flight']} calls were in flight when it was reached, {int(worst):,} tokens reserved "
                "for them"
            )
            if "new_batch" in hit:
                text += (
                    f"; a new batch of {self.config.validation_batch} candidates needs up to "
                    f"{hit['new_batch'][1]:,} tokens to become texts"
                )
        return {
            "limit": limit,
            "spent": spent,
            "overshoot": max(0.0, spent - limit),
            "in_flight": int(hit["in_flight"]),
            "in_flight_worst": worst,
            "text": text,
        }


# Core messages name settings, not flags or fields: each shell adds its own hint (the CLI names the flag).
_STOP_MESSAGES = {
    "max_cost": "the cost limit was reached; resume with a larger cost limit to continue",
    "token_budget": "the token budget was reached; resume with a larger token budget to continue",
    "max_attempts": "the attempt limit was reached: too many rejected candidates or outputs; "
    "see the rejections, then resume with a larger limit",
    "exhausted": "no more candidates could be produced",
}


@asynccontextmanager
async def _write_behind(store: RunStore) -> AsyncIterator[None]:
    with store.write_behind():
        yield

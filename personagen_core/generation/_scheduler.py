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
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from personagen_core.errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMEndpointError,
    LLMError,
    PersonaGenError,
    SpecError,
)
from personagen_core.generation import pricing
from personagen_core.generation._validation import (
    CURRENT_STAGE,
    Candidate,
    CandidateSource,
    Validator,
    Verdict,
)
from personagen_core.generation.checks import CheckLevel, NearDuplicateIndex, check_output, normalise
from personagen_core.generation.llm import CallRecord, LLMClient
from personagen_core.generation.prompts import generation_messages, sentence_grammar
from personagen_core.personas.render import describe_persona, describe_scenario
from personagen_core.personas.sampling import build_model
from personagen_core.personas.spec import Spec
from personagen_core.store import CallRow, RunStore

if TYPE_CHECKING:
    from personagen_core.generation.pipeline import GenerationConfig

__all__ = ["METHODS", "MethodInfo", "ProgressEvent", "RunSession", "RunSummary", "emotions_of", "stages_of"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodInfo:
    """How a method samples (``spec`` tables or ``uniform``), whether it validates, which checks it uses."""

    mode: Literal["spec", "uniform"]
    validate: bool
    checks: CheckLevel


METHODS: dict[str, MethodInfo] = {
    "personagen": MethodInfo("spec", True, "full"),
    "attrprompt": MethodInfo("uniform", False, "minimal"),
    "priorwork": MethodInfo("spec", False, "basic"),
}
_SAMPLE_CHUNK = 256  # candidates drawn per sampler call


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

    @property
    def complete(self) -> bool:
        """True when every emotion reached its quota."""
        return all(self.accepted.get(e, 0) >= n for e, n in self.target.items())


def emotions_of(spec: Spec, config: GenerationConfig) -> list[str]:
    """The run's emotions: ``config.emotions`` (checked against the spec) or all of the spec's."""
    names = spec.emotion_names
    if not config.emotions:
        return names
    unknown = [e for e in config.emotions if e not in names]
    if unknown:
        raise SpecError(
            f"unknown emotion(s) {', '.join(map(repr, unknown))}; the spec defines {', '.join(names)}",
            path="emotions",
        )
    return list(dict.fromkeys(config.emotions))


def stages_of(spec: Spec, config: GenerationConfig) -> list[int]:
    """Stages whose attributes condition the text (those with columns in the spec)."""
    return [s for s in (1, 2, 3) if str(s) in config.stages and spec.stage_columns(s)]


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
        info = METHODS[config.method]
        self.checks: CheckLevel = info.checks
        self.validate = info.validate and config.validate_
        self.stages = stages_of(spec, config)
        self.columns = [c for s in self.stages for c in spec.stage_columns(s)]
        self.persona_stages = tuple(s for s in self.stages if s in (1, 2)) or (1,)
        self.emotion_objs = {e.name: e for e in spec.emotions}
        names = emotions_of(spec, config)
        self.target = {e: config.per_emotion for e in names}
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
        self.secret = config.llm.api_key.get_secret_value() if config.llm.api_key else None
        self.unpriced: set[str] = set()
        self.stop_reason: str | None = None
        self.fatal: BaseException | None = None
        self.started = time.monotonic()
        self.accepted_at_start = sum(self.accepted.values())
        self._slots = asyncio.Event()
        self._last_event = 0.0
        self._last_stored_event = 0.0
        self.client: LLMClient | None = None
        self.source: CandidateSource | None = None

    # -- accounting -----------------------------------------------------------------------------------------
    def _scrub(self, text: str | None) -> str | None:
        if text and self.secret:
            return text.replace(self.secret, "***")
        return text

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
                    f"stage{stage}_{'error' if v.verdict == 'error' else 'implausible'}",
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
        use_scenario = 3 in self.stages
        for _ in range(n):
            full = {k: str(v) for k, v in self._rows.popleft().items()}
            attrs = {c: full[c] for c in self.columns}
            persona = describe_persona(full, self.spec, stages=self.persona_stages)
            scenario = describe_scenario(full, self.spec) if use_scenario else None
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
            elif self.config.max_tokens is not None and self.tokens >= self.config.max_tokens:
                self.stop_reason = "max_tokens"
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
                temperature=gen.temperature,
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
        outcome = self.store.add_text(
            self.run_id,
            emotion=emotion,
            text=res.text,
            text_norm=normalise(res.text),
            persona_id=cand.persona_id,
            model=comp.model,
            quota=self.target[emotion],
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
        )

    def _emit(self, *, force: bool = False, state: str = "running", message: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_event < 0.2:
            return
        self._last_event = now
        ev = self.event(state, message)
        if force or now - self._last_stored_event >= 1.0:
            self._last_stored_event = now
            self.store.add_event(self.run_id, state, ev.to_dict())
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken progress display must not stop a paid-for run
                _log.exception("on_event callback failed")

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
            self.store.flush()

    # -- main --------------------------------------------------------------------------------
    async def execute(self, http_client: Any = None) -> RunSummary:
        """Run the session to the end and record its final state."""
        self._emit(force=True)
        message: str | None = None
        try:
            # Bookkeeping rows are committed in groups (with each accepted text and by the ticker) rather
            # than one transaction each; accepted texts are still committed the moment they arrive.
            async with (
                LLMClient(
                    self.config.llm,
                    http_client=http_client,
                    on_call=self.on_call,
                    random_state=self.config.seed,
                ) as client,
                _write_behind(self.store),
            ):
                self.client = client
                # Calls the backend serves at once. The embedded model decodes one request at a time, so
                # there more calls in flight only lengthen the queue in front of the critical path (a
                # weak validator's survivors waited behind dozens of speculative stage-1 batches). Two
                # batches let same-stage calls run back to back, each reusing the previous one's
                # instructions from the KV cache; the next batches start once the stock is used up.
                local = self.config.llm.backend == "local"
                parallel = 1 if local else self.config.llm.concurrency
                validator = (
                    Validator(self.spec, self.store, client, batch_size=self.config.validation_batch)
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
                    if self.source.error is not None and self.fatal is None:
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
        if state == "stopped":
            message = _STOP_MESSAGES.get(reason or "", "stopped")
        self.store.set_status(self.run_id, state, stop_reason=reason, message=message)
        self._emit(force=True, state=state, message=message)
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
        )


_STOP_MESSAGES = {
    "max_cost": "the cost budget (--max-cost) was reached; resume with a larger budget to continue",
    "max_tokens": "the token budget (--max-tokens) was reached; resume with a larger budget to continue",
    "max_attempts": "the attempt limit (--max-attempts) was reached: too many rejected candidates or "
    "outputs; "
    "see the rejections, then resume with a larger limit",
    "exhausted": "no more candidates could be produced",
}


@asynccontextmanager
async def _write_behind(store: RunStore) -> AsyncIterator[None]:
    with store.write_behind():
        yield

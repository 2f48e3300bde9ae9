"""Batch API runs: the same method as the async path, carried out in waves of provider batches.

A wave samples candidates (over-provisioned from the acceptance rates measured in the run, recency-weighted
(:data:`RECENCY`), starting from :data:`PRIOR_RATE`, with a :data:`WAVE_Z` margin), then sends one batch per step: validation stage 1 -> 2 -> 3 (stages that are off
are skipped; verdicts already in the cross-run cache are not asked again) and generation, whose texts go
through the same output checks. Top-up waves follow until every per-emotion quota is met exactly; texts that
pass every check after their emotion's quota was met are kept as *surplus* (``batch_surplus`` table), never
delivered (not in exports, not in the accepted counts).

Every batch is recorded in the run store before it is sent (``batch_jobs``, ``batch_requests``): its file
and batch ids, status and counts. A killed process resumes (``generate --resume``) by polling the same remote
batch; nothing is submitted twice. A batch that ends ``failed``, ``expired`` or ``cancelled`` is resubmitted
(what it did not answer) at most ``max_batch_retries`` times, then the run stops with the reason. Requests
that fail inside a batch leave their candidates where they were: the next wave sends them again.

The wire format is OpenAI's Batch API JSONL, which vLLM's ``run_batch`` reads and writes too:
:func:`export_requests` writes the next step's requests and :func:`import_results` reads the output lines
of an offline ``run_batch`` job and continues the run (one step per round trip). Costs use
:func:`pricing.batch_cost` (the Batch API discount).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personagen_core.errors import (
    DataError,
    LLMAuthError,
    LLMConnectionError,
    LLMError,
    LLMResponseError,
    PersonaGenError,
    StoreError,
)
from personagen_core.generation import pricing
from personagen_core.generation._scheduler import ProgressEvent, RunSummary, worst_case_tokens
from personagen_core.generation._validation import Verdict, parse_batch_verdicts, verdict_max_tokens
from personagen_core.generation.checks import LanguageIdentifier, NearDuplicateIndex, check_output, normalise
from personagen_core.generation.llm import LLMSettings, parse_json_text
from personagen_core.generation.prompts import (
    KEPT_VERDICTS,
    batch_verdict_schema,
    generation_messages,
    validation_columns,
    validation_messages,
)
from personagen_core.generation.run_config import (
    METHODS,
    RESUME_OVERRIDES,
    render_candidate,
    stages_of,
    targets_of,
)
from personagen_core.generation.vocabulary import ERROR_VERDICT
from personagen_core.personas.sampling import build_model
from personagen_core.personas.spec import Spec, dump_spec, parse_spec, spec_hash
from personagen_core.redaction import scrub, url_secrets
from personagen_core.store import HEARTBEAT_S, CallRow, RunStore, verdict_key

if TYPE_CHECKING:
    from personagen_core.generation.pipeline import GenerationConfig

__all__ = [
    "PRIOR_RATE",
    "BatchOptions",
    "OpenAIBatches",
    "export_requests",
    "import_results",
    "resume_batch_generation",
    "run_batch_generation",
]

_log = logging.getLogger(__name__)

#: Acceptance rate assumed for a validation stage and for stage-4 outputs before the run measured any
#: (weighted like :data:`PRIOR_WEIGHT` observations, so the first waves' measurements take over quickly).
PRIOR_RATE = 0.9
PRIOR_WEIGHT = 10
#: Weight of a wave's measured rates relative to the next wave's (see :meth:`BatchRun._rates`).
RECENCY = 0.25
#: Standard deviations of margin when a wave asks for the outputs its missing texts need (see ``_needed``).
WAVE_Z = 2.5
GENERATE = "generate"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_BAD_END = frozenset({"failed", "expired", "cancelled"})
_ENDPOINT = "/v1/chat/completions"


class BatchOptions(BaseModel):
    """How a Batch API run drives its batches (stored with the run; a resume may change ``poll_interval``).

    ``max_requests`` bounds the requests of one batch (OpenAI accepts at most 50,000) and so the candidates
    of one wave; ``overprovision`` multiplies the candidates a wave samples beyond what the measured rates
    say it needs; ``max_batch_retries`` is how often a failed, expired or cancelled batch is resubmitted;
    ``max_waves`` stops a run that keeps missing its quotas.
    """

    model_config = ConfigDict(extra="forbid")

    poll_interval: float = Field(default=30.0, gt=0)
    completion_window: str = "24h"
    max_batch_retries: int = Field(default=2, ge=0)
    max_requests: int = Field(default=50_000, ge=1)
    overprovision: float = Field(default=1.1, ge=1.0, le=5.0)
    max_waves: int = Field(default=50, ge=1)


class OpenAIBatches:
    """The Files and Batch API of an OpenAI-compatible endpoint through the openai SDK (synchronous).

    SDK errors become :class:`LLMError` subclasses whose messages never contain the API key.
    """

    def __init__(self, settings: LLMSettings, *, http_client: Any = None) -> None:
        import openai

        key = settings.api_key.get_secret_value() if settings.api_key else None
        self._secrets = [s for s in (key, *url_secrets(settings.base_url)) if s]
        from personagen_core.generation.llm import split_query

        base_url, query = split_query(settings.effective_base_url)  # the SDK drops a query in base_url
        self._client = openai.OpenAI(
            base_url=base_url,
            default_query=query or None,
            api_key=key or "not-needed",
            max_retries=settings.max_retries,
            timeout=120.0,
            http_client=http_client,
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        import openai

        try:
            return fn()
        except openai.AuthenticationError as exc:
            raise LLMAuthError(f"{what}: the endpoint refused the API key (HTTP {exc.status_code})") from None
        except openai.PermissionDeniedError as exc:
            raise LLMAuthError(f"{what}: permission denied (HTTP {exc.status_code})") from None
        except openai.APIConnectionError as exc:
            raise LLMConnectionError(f"{what}: {scrub(str(exc), self._secrets)}") from None
        except openai.APIStatusError as exc:
            detail = scrub(str(exc.message), self._secrets)
            raise LLMResponseError(f"{what}: HTTP {exc.status_code}: {detail}") from None

    def upload(self, name: str, data: bytes | IO[bytes]) -> str:
        """Upload a JSONL request file (``purpose=batch``): its file id."""
        return str(self._call("uploading the batch file", lambda: self._client.files.create(
            file=(name, data), purpose="batch")).id)

    def create(self, file_id: str, *, window: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """Create a batch of chat completions from an uploaded file."""
        b = self._call("creating the batch", lambda: self._client.batches.create(
            input_file_id=file_id, endpoint=_ENDPOINT, completion_window=window,  # type: ignore[arg-type]
            metadata=dict(metadata)))
        return b.model_dump()

    def find(self, metadata: Mapping[str, str]) -> dict[str, Any] | None:
        """The most recent batch carrying ``metadata`` (a create whose answer a crash lost), if any."""
        page = self._call("listing batches", lambda: self._client.batches.list(limit=100))
        for b in page.data:
            if b.metadata and all(b.metadata.get(k) == v for k, v in metadata.items()):
                return b.model_dump()
        return None

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch's current state."""
        return self._call(f"polling batch {batch_id}", lambda: self._client.batches.retrieve(batch_id)).model_dump()

    def content(self, file_id: str) -> bytes:
        """A result file's bytes."""
        return bytes(self._call(f"downloading {file_id}", lambda: self._client.files.content(file_id)).content)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the endpoint to cancel a batch."""
        return self._call(f"cancelling {batch_id}", lambda: self._client.batches.cancel(batch_id)).model_dump()


@dataclass
class _Cand:
    persona_id: int
    attrs: dict[str, str]
    persona_text: str
    scenario_text: str | None
    status: str
    uses: int = 0  # generation requests sent or answered (not failed)


def _needed(missing: int, rate: float) -> int:
    """Outputs to ask for so that ``missing`` texts pass at acceptance ``rate`` with high probability: the
    mean ``missing / rate`` would fall short about every second wave by chance alone (each shortfall costs
    another wave, up to 24 h at a provider), so :data:`WAVE_Z` binomial standard deviations are added."""
    if missing <= 0:
        return 0
    return math.ceil((missing + WAVE_Z * math.sqrt(missing * (1.0 - rate)) + 1.0) / rate)


def _rate(kept: float, seen: float) -> float:
    """A measured rate pulled towards :data:`PRIOR_RATE` while few were seen (never below 0.05)."""
    return max(0.05, (kept + PRIOR_RATE * PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT))


class BatchRun:
    """One session of a Batch API run (a start, a resume, an export or an import). Create it after the run
    exists in ``store``; it holds the run's lease until :meth:`close`."""

    def __init__(
        self,
        spec: Spec,
        config: GenerationConfig,
        store: RunStore,
        run_id: str,
        options: BatchOptions,
        *,
        on_event: Callable[[ProgressEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.spec, self.config, self.store, self.run_id, self.options = spec, config, store, run_id, options
        self.on_event, self.cancel = on_event, cancel
        self.lease = store.acquire_lease(run_id)
        try:
            self._setup()
        except BaseException:
            store.release_lease(run_id, self.lease)
            raise

    def _setup(self) -> None:
        spec, config, store, run_id = self.spec, self.config, self.store, self.run_id
        info = METHODS[config.method]
        self.checks = info.checks
        self.validate = bool(info.validate and config.validate_)
        self.stages = stages_of(spec, config) if self.validate else []
        all_stages = stages_of(spec, config)
        self.columns = [c for s in all_stages for c in spec.stage_columns(s)]
        self.all_stages = all_stages
        self.steps = [f"stage{s}" for s in self.stages if validation_columns(spec, s)] + [GENERATE]
        self.per = config.texts_per_persona or spec.generation.texts_per_persona
        self.emotion_objs = {e.name: e for e in spec.emotions}
        # The quota recorded when the run was created (run_config.targets_of) is the one worked to.
        self.target = {e: int(n) for e, n in store.run(run_id)["target"].items()}
        names = list(self.target)
        counts = store.accepted_counts(run_id)
        self.accepted = {e: counts.get(e, 0) for e in names}
        self.rejections: dict[str, int] = dict(store.rejection_counts(run_id))
        totals = store.totals(run_id)
        self.tokens, self.cost, self.calls = int(totals["tokens"]), float(totals["cost"]), int(totals["calls"])
        self.max_attempts = config.max_attempts or 10 * sum(self.target.values()) + 50
        self.index = NearDuplicateIndex(config.near_duplicate_threshold)
        self.index.extend(store.accepted_texts(run_id))
        self.language_id = LanguageIdentifier(spec.language)
        self.session = store.start_session(run_id)
        self.rng = np.random.default_rng([config.seed, self.session])
        self.sampler = build_model(spec, mode=info.mode)
        self.next_pid = store.next_persona_id(run_id)
        key = config.llm.api_key.get_secret_value() if config.llm.api_key else None
        self.secrets = [s for s in (key, *url_secrets(config.llm.base_url)) if s]
        self.validator_model = config.llm.model_for("validator")
        self.generator_model = config.llm.model_for("generator")
        self.reasons = config.verdict_reasons
        self.cands: dict[int, _Cand] = {}
        self._setup_candidates()
        self.surplus = sum(store.surplus_counts(run_id).values())
        # A resume gets the full number of retries again for a batch that kept failing before it.
        jobs = store.batch_jobs(run_id)
        last_bad = not jobs.empty and str(jobs["status"].iloc[-1]) in _BAD_END
        self._attempt_base = int(jobs["attempt"].iloc[-1]) if last_bad else 0
        self.started = time.monotonic()
        self.accepted_at_start = sum(self.accepted.values())
        self.stop_reason: str | None = None
        self.fatal: str | None = None
        self.unpriced: set[str] = set()
        self.note: str | None = None  # what the run is doing now (progress message)
        self.cancel_note: str | None = None  # what a cancel did to the batch in flight
        # Hard budgets: the worst case reserved for the last batch this session created and, once a budget
        # shrank a wave or a batch or refused one, how (the run's budget report).
        self.reserved: tuple[float, int] = (0.0, 0)
        self.budget_hit: dict[str, Any] | None = None
        self._carry: tuple[float, int] | None = None
        self._last_event = 0.0
        self._last_heartbeat = time.monotonic()
        self._kept = self._judged = 0

    # -- state ---------------------------------------------------------------------------------------------
    def _done(self) -> bool:
        return all(self.accepted[e] >= n for e, n in self.target.items())

    def _missing(self) -> dict[str, int]:
        return {e: max(0, n - self.accepted[e]) for e, n in self.target.items()}

    def _attempts(self) -> int:
        return sum(self.accepted.values()) + sum(v for k, v in self.rejections.items() if k != "quota_full")

    def _check_stop(self) -> str | None:
        if self.stop_reason is None:
            c = self.config
            token_budget = c.token_budget
            if self.cancel is not None and self.cancel.is_set():
                self.stop_reason = "cancelled"
            elif c.max_cost is not None and self.cost >= c.max_cost:
                self.stop_reason = "max_cost"
            elif token_budget is not None and self.tokens >= token_budget:
                self.stop_reason = "token_budget"
            elif self._attempts() >= self.max_attempts:
                self.stop_reason = "max_attempts"
        return self.stop_reason

    def _scrub(self, text: str | None) -> str | None:
        return scrub(text, self.secrets)

    def _reject(self, stage: int, reason: str, detail: str | None, **kw: Any) -> None:
        self.store.add_rejection(self.run_id, stage=stage, reason=reason, detail=self._scrub(detail), **kw)
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def _stage_status(self, k: int) -> str:
        """The funnel status of candidates waiting for step ``k`` (an index into the validated stages)."""
        return "sampled" if k == 0 else f"passed_stage{self.stages[k - 1]}"

    def _ready_status(self) -> str:
        return "validated" if self.stages else "sampled"

    # -- planning ------------------------------------------------------------------------------------------
    def _rates(self) -> tuple[dict[int, float], float]:
        """Per-stage survival and output acceptance, recency-weighted over the run's batches (pulled towards
        the prior while few were seen).

        Each ingested batch recorded what its answers kept of what they judged; a wave's batches weigh
        :data:`RECENCY` times the next wave's, so the estimate follows the latest wave when acceptance drifts
        (near-duplicates pile up as a run grows: the cumulative rate over-estimates the next wave's and the
        last waves come out as small top-ups) while a tiny top-up wave does not outweigh a large one. Runs
        recorded before batches kept these counts use the run's cumulative counts."""
        jobs = self.store.batch_jobs(self.run_id)
        done = jobs[(jobs["ingested"] == 1) & (jobs["judged"] > 0)] if not jobs.empty else jobs

        def recent(step: str) -> tuple[float, float] | None:
            d = done[done["step"] == step] if not done.empty else done
            if d.empty:
                return None
            w = RECENCY ** (int(d["wave"].max()) - d["wave"].astype(int))
            return float((w * d["kept"]).sum()), float((w * d["judged"]).sum())

        surv = self.store.stage_survival(self.run_id)
        stage = {s: _rate(*(recent(f"stage{s}") or surv.get(s, (0, 0)))) for s in self.stages}
        out = recent(GENERATE)
        if out is None:
            rejected = sum(v for k, v in self.rejections.items() if not k.startswith("stage"))
            kept = sum(self.accepted.values()) + self.surplus
            out = (kept, kept + rejected)
        return stage, _rate(*out)

    def _sample(self, n: int) -> None:
        """Draw ``n`` new candidates (rendered and recorded; commits with the next job)."""
        if n <= 0:
            return
        df = self.sampler.sample(max(n, 1), random_state=self.rng)
        cols = list(df.columns)
        rows = []
        for vals in zip(*(df[c].tolist() for c in cols)):
            full = {k: str(v) for k, v in zip(cols, vals)}
            attrs = {c: full[c] for c in self.columns}
            persona, scenario = render_candidate(full, self.spec, self.all_stages)
            cand = _Cand(self.next_pid, attrs, persona, scenario, "sampled")
            self.cands[cand.persona_id] = cand
            rows.append((cand.persona_id, attrs, persona, scenario or ""))
            self.next_pid += 1
        self.store.add_personas(self.run_id, self.session, rows)

    def _wave_size(self) -> int:
        """New candidates for a wave: what the missing texts need, at the measured rates, minus what the
        candidates already on their way are expected to give; at most one batch's worth."""
        stage_rate, out_rate = self._rates()
        want = sum(_needed(m, out_rate) for m in self._missing().values())
        supply = 0.0
        for c in self.cands.values():
            if c.status == self._ready_status():
                supply += self.per - c.uses
            elif c.status in ("sampled",) or c.status.startswith("passed_stage"):
                k = 0 if c.status == "sampled" else self.stages.index(int(c.status.removeprefix("passed_stage"))) + 1
                supply += self.per * math.prod(stage_rate[s] for s in self.stages[k:])
        through = self.per * math.prod(stage_rate[s] for s in self.stages)
        new = math.ceil(max(0.0, want - supply) * self.options.overprovision / through)
        room = math.ceil(self.options.max_requests / self.per) - len(self.cands)
        return max(0, min(new, room))

    def _next_step(self) -> tuple[int, int, int]:
        """``(wave, step index, attempt)`` of the step after the last finished batch."""
        jobs = self.store.batch_jobs(self.run_id)
        if jobs.empty:
            return 1, 0, 1
        last = jobs.iloc[-1]
        k = self.steps.index(str(last["step"]))
        if str(last["status"]) in _BAD_END:
            if int(last["attempt"]) - self._attempt_base > self.options.max_batch_retries:
                self.fatal = (
                    f"batch {last['batch_id']} (wave {last['wave']}, {last['step']}) ended {last['status']} "
                    f"{int(last['attempt'])} time(s) in a row ({last['message'] or 'no reason given'}); "
                    "resume to try again"
                )
            return int(last["wave"]), k, int(last["attempt"]) + 1
        if k + 1 < len(self.steps):
            return int(last["wave"]), k + 1, 1
        return int(last["wave"]) + 1, 0, 1

    def plan(self) -> dict[str, Any] | None:
        """Record the next batch to send (its requests) and return it; None when there is nothing left to
        ask (quotas met, a stop, or no candidate could be produced)."""
        wave, k, attempt = self._next_step()
        if self.fatal is not None:
            return None
        fresh_wave = False
        for _ in range(2 * len(self.steps) + 1):
            if self._done() or self._check_stop():
                return None
            if wave > self.options.max_waves:
                self.stop_reason = "max_waves"
                return None
            if k == 0 and attempt == 1:
                self._sample(self._affordable(self._wave_size()))
                fresh_wave = True
            step = self.steps[k]
            requests = self._gen_requests() if step == GENERATE else self._validation_requests(k)
            requests = self._within_budget(step, requests)
            if self.stop_reason is not None:
                return None
            if requests:
                job_id = self.store.add_batch_job(self.run_id, wave=wave, step=step, attempt=attempt,
                                                  requests=requests)
                return self.store.batch_job(job_id)
            self.store.flush()  # cached verdicts recorded while planning
            if k + 1 < len(self.steps):
                k, attempt = k + 1, 1
            elif fresh_wave and not any(c.status != "rejected" for c in self.cands.values()):
                break
            else:
                wave, k, attempt = wave + 1, 0, 1
        # A wave the budget left empty is a budget stop, not a lack of candidates.
        self.stop_reason = self.stop_reason or (self.budget_hit or {}).get("reason") or "exhausted"
        return None

    # -- hard budgets --------------------------------------------------------------------------------------
    def _budgeted(self) -> bool:
        return self.config.max_cost is not None or self.config.token_budget is not None

    def _worst(self, body: Mapping[str, Any]) -> tuple[float, int]:
        """Worst case of one request, as the async path reserves per call: prompt tokens (estimated from
        characters, with a margin) plus ``max_tokens``, at batch prices."""
        prompt, completion = worst_case_tokens(body)
        return pricing.batch_cost(str(body.get("model")), prompt, completion) or 0.0, prompt + completion

    def _room(self) -> tuple[float, float]:
        """Budget left (cost, tokens); infinite for a limit that is not set."""
        c = self.config
        cost = math.inf if c.max_cost is None else c.max_cost - self.cost
        tokens = math.inf if c.token_budget is None else c.token_budget - self.tokens
        return cost, tokens

    def _over(self, need: tuple[float, float], room: tuple[float, float]) -> str | None:
        if need[0] > room[0]:
            return "max_cost"
        if need[1] > room[1]:
            return "token_budget"
        return None

    def _carry_worst(self) -> tuple[tuple[float, int], tuple[float, int]]:
        """Worst cases ``(carrying one new candidate to texts, one generation request)``: a candidate's share
        of a full request of every validated stage (``validation_batch`` candidates each) plus one generation
        per text. Computed once, from candidates drawn on a side stream of the run's seed."""
        if self._carry is None:
            n = self.config.validation_batch
            df = self.sampler.sample(n, random_state=np.random.default_rng([self.config.seed, 99]))
            rows = [{k: str(v) for k, v in r.items()} for r in df.to_dict("records")]
            persona, scenario = render_candidate(rows[0], self.spec, self.all_stages)
            gen = self._worst(self._gen_body(_Cand(-1, {}, persona, scenario, "sampled"),
                                             next(iter(self.emotion_objs))))
            cost, tokens = self.per * gen[0], self.per * gen[1]
            for step in self.steps[:-1]:
                attrs = [{c: r[c] for c in self.columns} for r in rows]
                w = self._worst(self._validation_body_rows(int(step.removeprefix("stage")), attrs))
                cost, tokens = cost + w[0] / n, tokens + math.ceil(w[1] / n)
            self._carry = ((cost, tokens), gen)
        return self._carry

    def _affordable(self, n: int) -> int:
        """``n`` new candidates, or fewer when the budget left cannot carry them all to texts (worst cases,
        :meth:`_carry_worst`) after the texts still wanted from the validated stock."""
        if n <= 0 or not self._budgeted():
            return n
        carry, gen = self._carry_worst()
        stock = sum(self.per - c.uses for c in self.cands.values() if c.status == self._ready_status())
        slots = min(stock, sum(self._missing().values()))
        room = self._room()
        left = (room[0] - slots * gen[0], room[1] - slots * gen[1])
        fit = min(left[0] / carry[0] if carry[0] > 0 else math.inf,
                  left[1] / carry[1] if carry[1] > 0 else math.inf)
        if fit >= n:
            return n
        fit_n = max(0, int(fit))
        reason = self._over((slots * gen[0] + n * carry[0], slots * gen[1] + n * carry[1]), room) or "max_cost"
        self.budget_hit = {**(self.budget_hit or {}), "reason": reason, "wave_shrunk": (n, fit_n)}
        return fit_n

    def _within_budget(self, step: str, requests: list[tuple[list[list[int]], int | None, str | None]]
                       ) -> list[tuple[list[list[int]], int | None, str | None]]:
        """The leading requests whose worst cases together fit in the budget left; that worst case is
        reserved for the batch (one batch is out at a time, so a batch never pays past a limit beyond the
        error of the prompt estimate). Requests left out stay where they were (candidates at their stage,
        text slots free). Not even one fits: the run stops on that budget."""
        if not requests or not self._budgeted():
            return requests
        room = self._room()
        cost = tokens = 0.0
        keep = 0
        for groups, pid, emotion in requests:
            if step == GENERATE:
                body = self._gen_body(self.cands[int(pid or 0)], str(emotion))
            else:
                body = self._validation_body(int(step.removeprefix("stage")), groups)
            w = self._worst(body)
            over = self._over((cost + w[0], tokens + w[1]), room)
            if over is not None:
                self.budget_hit = {**(self.budget_hit or {}), "reason": over,
                                   "batch_shrunk": (step, len(requests), keep), "next_request": w}
                break
            cost, tokens, keep = cost + w[0], tokens + w[1], keep + 1
        for _, pid, _ in requests[keep:]:
            if step == GENERATE and pid is not None and pid in self.cands:
                self.cands[pid].uses -= 1
        if keep == 0:
            self.stop_reason = self.budget_hit["reason"] if self.budget_hit else "max_cost"
        else:
            self.reserved = (cost, int(tokens))
        return requests[:keep]

    def budget_report(self, reason: str | None) -> dict[str, Any] | None:
        """What a budget stop spent against its limit and what the planner had reserved for the last batch
        (the bound on an overshoot: one batch is out at a time), in the shape of the async path's report."""
        if reason not in ("max_cost", "token_budget"):
            return None
        hit = self.budget_hit or {}
        i = 0 if reason == "max_cost" else 1

        def fmt(x: float) -> str:
            return f"${x:.4f}" if i == 0 else f"{int(x):,} tokens"

        limit = float((self.config.max_cost if i == 0 else self.config.token_budget) or 0)
        spent, worst = (self.cost if i == 0 else float(self.tokens)), float(self.reserved[i])
        over = max(0.0, spent - limit)
        text = f"spent {fmt(spent)} of {fmt(limit)}, over by {fmt(over)}"
        if worst > 0:
            text += f"; the last batch reserved up to {fmt(worst)}"
        if "wave_shrunk" in hit:
            asked, got = hit["wave_shrunk"]
            text += f"; the last wave sampled {got:,} of the {asked:,} candidates it wanted"
            if got == 0 and self._carry is not None:
                text += f" (a new candidate needs up to {fmt(self._carry[0][i])} to become texts)"
        if "next_request" in hit:
            text += f"; the next request needs up to {fmt(hit['next_request'][i])}"
        return {"limit": limit, "spent": spent, "overshoot": over, "in_flight": 0,
                "in_flight_worst": worst, "text": text}

    def _validation_requests(self, k: int) -> list[tuple[list[list[int]], int | None, str | None]]:
        """Requests of validation step ``k``: the candidates waiting for it, verdicts from the cross-run cache
        applied at once, identical attribute tuples asked once, ``validation_batch`` tuples per request."""
        stage = self.stages[k]
        waiting = [c for c in self.cands.values() if c.status == self._stage_status(k)]
        if not waiting:
            return []
        cols = validation_columns(self.spec, stage)
        groups: dict[str, list[int]] = {}
        for c in waiting:
            groups.setdefault(verdict_key(c.attrs, cols), []).append(c.persona_id)
        cached = self.store.cached_verdicts(stage, self.validator_model, list(groups))
        for key, (v, r) in cached.items():
            self._apply(stage, k, groups.pop(key), Verdict(v, r or "", cached=True), fresh=False)
        todo = list(groups.values())
        n = self.config.validation_batch
        cap = self.options.max_requests * n
        todo = todo[:cap]
        return [(todo[i : i + n], None, None) for i in range(0, len(todo), n)]

    def _gen_requests(self) -> list[tuple[list[list[int]], int | None, str | None]]:
        """Requests of the generation step: per missing text, over-provisioned by the measured output
        acceptance, one (candidate, emotion) slot from the validated stock, emotions taking turns."""
        _, out_rate = self._rates()
        want = {e: _needed(m, out_rate) for e, m in self._missing().items() if m > 0}
        stock = [c for c in self.cands.values() if c.status == self._ready_status() and c.uses < self.per]
        out: list[tuple[list[list[int]], int | None, str | None]] = []
        si = 0
        while want and si < len(stock) and len(out) < self.options.max_requests:
            for e in list(want):
                while si < len(stock) and stock[si].uses >= self.per:
                    si += 1
                if si >= len(stock) or len(out) >= self.options.max_requests:
                    break
                c = stock[si]
                c.uses += 1
                out.append(([[c.persona_id]], c.persona_id, e))
                want[e] -= 1
                if want[e] <= 0:
                    del want[e]
        return out

    # -- request bodies ------------------------------------------------------------------------------------
    def request_lines(self, job: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """The JSONL lines of a batch job (``custom_id, method, url, body``), rebuilt from the store one at a
        time (a 50,000-request batch is never held as objects)."""
        step = str(job["step"])
        for req in self.store.batch_requests(int(job["job_id"])):
            if step == GENERATE:
                body = self._gen_body(self.cands[req["persona_id"]], str(req["emotion"]))
            else:
                body = self._validation_body(int(step.removeprefix("stage")), req["groups"])
            yield {"custom_id": req["custom_id"], "method": "POST", "url": _ENDPOINT, "body": body}

    def write_requests(self, job: Mapping[str, Any], out: IO[bytes]) -> int:
        """Write the job's request lines to ``out`` (JSONL); the number of lines."""
        n = 0
        for line in self.request_lines(job):
            out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            n += 1
        return n

    def _validation_body(self, stage: int, groups: list[list[int]]) -> dict[str, Any]:
        return self._validation_body_rows(stage, [self.cands[g[0]].attrs for g in groups])

    def _validation_body_rows(self, stage: int, rows: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "model": self.validator_model,
            "messages": validation_messages(stage, rows, self.spec, reasons=self.reasons),
            "temperature": 0.0,
            "max_tokens": verdict_max_tokens(len(rows), self.reasons),
            "response_format": {"type": "json_schema", "json_schema": {
                "name": f"stage{stage}_verdicts", "schema": batch_verdict_schema(len(rows), self.reasons),
                "strict": True}},
        }

    def _gen_body(self, cand: _Cand, emotion: str) -> dict[str, Any]:
        gen = self.spec.generation
        return {
            "model": self.generator_model,
            "messages": generation_messages(self.emotion_objs[emotion], cand.persona_text, cand.scenario_text,
                                            spec=self.spec),
            "temperature": self.config.temperature_for(self.spec),
            "max_tokens": gen.max_tokens,
        }

    # -- results -------------------------------------------------------------------------------------------
    def _apply(self, stage: int, k: int, pids: list[int], v: Verdict, *, fresh: bool) -> None:
        """Record one verdict for the candidates sharing an attribute tuple and move them on."""
        rows = []
        for i, pid in enumerate(pids):
            rows.append((pid, stage, self.validator_model, v.verdict, self._scrub(v.reason),
                         v.cached or (i > 0 and fresh)))
        self.store.add_verdicts(self.run_id, rows)
        if v.verdict in KEPT_VERDICTS:
            status = "validated" if k == len(self.stages) - 1 else f"passed_stage{stage}"
            for pid in pids:
                self.cands[pid].status = status
        else:
            status = f"rejected_stage{stage}"
            for pid in pids:
                self._reject(stage, f"stage{stage}_{ERROR_VERDICT if v.verdict == ERROR_VERDICT else 'implausible'}",
                             v.reason, persona_id=pid)
                del self.cands[pid]
        self.store.set_persona_status(self.run_id, pids, status)

    def _record_call(self, stage: int, role: str, model: str, body: Mapping[str, Any] | None,
                     error: str | None) -> None:
        usage = (body or {}).get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        price = pricing.batch_cost(model, p, c)
        if price is None:
            self.unpriced.add(model)
            price = 0.0
        self.store.add_calls(self.run_id, [CallRow(
            stage=stage, role=role, model=model, prompt_tokens=p, completion_tokens=c, latency_s=None,
            status="error" if error else "ok", error=self._scrub(error), mode="batch", cost=price)])
        self.calls += 1
        self.tokens += p + c
        self.cost += price

    def ingest(self, job: Mapping[str, Any], lines: Iterable[Mapping[str, Any]], *, status: str,
               message: str | None = None) -> dict[str, int]:
        """Take a batch's result lines (OpenAI / vLLM ``run_batch`` output: ``custom_id``, ``response:
        {status_code, body}``, ``error``): verdicts, texts, surplus, rejections and usage. Requests without a
        usable answer are marked failed (their candidates go to the next wave). Returns ``{"ok", "failed"}``."""
        step = str(job["step"])
        requests = {r["custom_id"]: r for r in self.store.batch_requests(int(job["job_id"]))}
        done: set[str] = set()
        ok = failed = 0
        self._kept = self._judged = 0  # what this job's answers kept of what they judged (_rates)
        with self.store.write_behind():
            for line in lines:
                cid = str(line.get("custom_id"))
                req = requests.get(cid)
                if req is None or cid in done or req["status"] != "pending":
                    continue
                done.add(cid)
                response = line.get("response") or {}
                body = response.get("body") if isinstance(response, Mapping) else None
                error = line.get("error")
                code = response.get("status_code") if isinstance(response, Mapping) else None
                if error or code != 200 or not isinstance(body, Mapping):
                    why = (error or {}).get("message") if isinstance(error, Mapping) else error
                    why = str(why or f"HTTP {code}: {json.dumps(body)[:200] if body else 'no response'}")
                    good = False
                    self._record_call(*self._call_of(step), body if isinstance(body, Mapping) else None, why)
                else:
                    good = self._ingest_one(step, req, body)
                self.store.set_batch_request_status(self.run_id, [(cid, "ok" if good else "failed")])
                ok += good
                failed += not good
                if (ok + failed) % 500 == 0:  # a long ingest keeps its lease and shows progress
                    self.heartbeat()
                    self.note = f"wave {job['wave']}, {step}: recording results ({ok + failed:,} read)"
                    self.emit()
            missing = [cid for cid, r in requests.items() if r["status"] == "pending" and cid not in done]
            self.store.set_batch_request_status(self.run_id, [(cid, "failed") for cid in missing])
            for cid in missing:
                if step == GENERATE and requests[cid]["persona_id"] in self.cands:
                    self.cands[requests[cid]["persona_id"]].uses -= 1
            failed += len(missing)
            self.store.update_batch_job(int(job["job_id"]), status=status, ingested=1, completed=ok, failed=failed,
                                        message=self._scrub(message), kept=self._kept, judged=self._judged)
        if step == GENERATE:  # candidates whose every text is answered leave memory
            for pid in [p for p, c in self.cands.items() if c.status == self._ready_status() and c.uses >= self.per]:
                del self.cands[pid]
        return {"ok": ok, "failed": failed}

    def _call_of(self, step: str) -> tuple[int, str, str]:
        if step == GENERATE:
            return 4, "generator", self.generator_model
        return int(step.removeprefix("stage")), "validator", self.validator_model

    def _ingest_one(self, step: str, req: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
        stage, role, model = self._call_of(step)
        choices = body.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
        content = str((choice.get("message") or {}).get("content") or "")
        finish = choice.get("finish_reason")
        if step != GENERATE:
            k = self.stages.index(stage)
            groups = req["groups"]
            try:
                got = parse_batch_verdicts(parse_json_text(content), len(groups))
            except ValueError:
                got = {}
            if not got:
                self._record_call(stage, role, model, body, "no usable verdict in the answer")
                return False
            self._record_call(stage, role, model, body, None)
            good = {}
            cols = validation_columns(self.spec, stage)
            for i, pids in enumerate(groups):
                pids = [p for p in pids if p in self.cands and self.cands[p].status == self._stage_status(k)]
                if i in got and pids:
                    good[verdict_key(self.cands[pids[0]].attrs, cols)] = (got[i].verdict, got[i].reason)
                    self._apply(stage, k, pids, got[i], fresh=True)
                    self._judged += len(pids)
                    self._kept += len(pids) if got[i].verdict in KEPT_VERDICTS else 0
            if good:
                self.store.cache_verdicts(stage, self.validator_model, good)
            return True
        self._record_call(stage, role, model, body, None)
        pid, emotion = int(req["persona_id"]), str(req["emotion"])
        cand = self.cands.get(pid)
        gen = self.spec.generation
        res = check_output(
            content, language=self.spec.language, max_sentences=gen.max_sentences,
            persona_description=cand.persona_text if cand else None, index=self.index, level=self.checks,
            max_chars=gen.max_chars, max_words=gen.max_words, finish_reason=finish, identifier=self.language_id,
        )
        self._judged += 1
        if not res.ok:
            self._reject(4, res.reason or "rejected", res.detail, emotion=emotion, persona_id=pid, text=res.text)
            return True
        if self.accepted[emotion] >= self.target[emotion]:
            outcome = "quota_full"  # this session is the run's one writer: its counts are the store's
        else:
            # Written with the ingest's next commit, together with the request's status (the store's guards
            # still apply then); the index above has already refused duplicates of accepted texts.
            outcome = self.store.add_text(self.run_id, emotion=emotion, text=res.text,
                                          text_norm=normalise(res.text), persona_id=pid,
                                          model=str(body.get("model") or model), quota=self.target[emotion],
                                          defer=True)
        self._kept += outcome in ("accepted", "quota_full")  # surplus passed every check too
        if outcome == "accepted":
            self.accepted[emotion] += 1
            self.index.add(res.text)
        elif outcome == "quota_full":
            self.store.add_surplus(self.run_id, emotion=emotion, text=res.text, persona_id=pid)
            self.surplus += 1
        else:
            self._reject(4, outcome, "already in the run", emotion=emotion, persona_id=pid, text=res.text)
        return True

    # -- events --------------------------------------------------------------------------------------------
    def event(self, state: str, message: str | None = None) -> ProgressEvent:
        """The current progress snapshot (the event kind the CLI and dashboard already show)."""
        elapsed = time.monotonic() - self.started
        return ProgressEvent(
            run_id=self.run_id, state=state, accepted=dict(self.accepted),  # type: ignore[arg-type]
            target=dict(self.target), rejections=dict(self.rejections), tokens=self.tokens, cost=self.cost,
            calls=self.calls, elapsed_s=elapsed, eta_s=0.0 if self._done() else None,
            message=message if message is not None else self.note, stop_reason=self.stop_reason,
        )

    def emit(self, *, force: bool = False, state: str = "running", message: str | None = None) -> None:
        """Send a progress event (at most about once a second unless ``force``) and store it."""
        now = time.monotonic()
        if not force and now - self._last_event < 1.0:
            return
        self._last_event = now
        ev = self.event(state, message)
        self.store.add_event(self.run_id, state, ev.to_dict())
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # noqa: BLE001 - a broken display must not stop a paid-for run
                _log.exception("on_event callback failed")

    def heartbeat(self) -> None:
        """Renew the lease every :data:`HEARTBEAT_S`; a lost lease stops the session."""
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_S:
            self._last_heartbeat = now
            if not self.store.heartbeat(self.run_id, self.lease):
                raise StoreError(f"run {self.run_id}: this session lost its lease; another process took it over")

    # -- online: drive batches at an endpoint ---------------------------------------------------------------
    def _open_job(self) -> dict[str, Any] | None:
        jobs = self.store.batch_jobs(self.run_id)
        open_ = jobs[jobs["ingested"] == 0] if not jobs.empty else jobs
        if open_.empty:
            return None
        job = {k: (v.item() if hasattr(v, "item") else v) for k, v in open_.iloc[-1].to_dict().items()}
        if job["status"] == "preparing" and not job["input_file_id"]:
            self.store.drop_batch_job(int(job["job_id"]))  # killed before its upload: plan it again
            self._setup_candidates()
            return None
        return job

    def _setup_candidates(self) -> None:
        """Load the candidates still on their way (not rejected, texts left) from the store."""
        live = ["sampled", "validated", *(f"passed_stage{s}" for s in self.stages)]
        uses = self.store.generation_uses(self.run_id)
        # Candidates of a generation batch still out are needed for its results (and a re-export) too.
        jobs = self.store.batch_jobs(self.run_id)
        waiting = set()
        for jid in jobs.loc[jobs["ingested"] == 0, "job_id"] if not jobs.empty else []:
            waiting |= {r["persona_id"] for r in self.store.batch_requests(int(jid)) if r["persona_id"] is not None}
        self.cands = {}
        for c in self.store.candidates_with_status(self.run_id, live):
            cand = _Cand(c["persona_id"], c["attrs"], c["persona_text"], c["scenario_text"], c["status"],
                         uses.get(c["persona_id"], 0))
            if cand.uses < self.per or cand.persona_id in waiting:
                self.cands[cand.persona_id] = cand

    def _meta(self, job: Mapping[str, Any]) -> dict[str, str]:
        return {"personagen_run": self.run_id, "personagen_job": str(job["job_id"])}

    def drive(self, job: dict[str, Any], remote: OpenAIBatches) -> bool:
        """Send (if not sent yet), poll to the end and ingest one batch; False when cancelled meanwhile."""
        jid = int(job["job_id"])
        if not job["input_file_id"]:
            with tempfile.TemporaryFile() as tmp:  # streamed to disk, uploaded from there
                self.write_requests(job, tmp)
                tmp.seek(0)
                job["input_file_id"] = remote.upload(f"personagen-{self.run_id}-{jid}.jsonl", tmp)
            self.store.update_batch_job(jid, input_file_id=job["input_file_id"], status="uploaded")
        if not job["batch_id"] and self.cancel is not None and self.cancel.is_set():
            self.stop_reason = "cancelled"  # cancelled during the upload: nothing to pay for yet, resume sends it
            return False
        if not job["batch_id"]:
            # A create whose answer a crash lost carries our metadata: find it rather than send it twice.
            b = remote.find(self._meta(job)) or remote.create(
                job["input_file_id"], window=self.options.completion_window, metadata=self._meta(job))
            job["batch_id"] = b["id"]
            self.store.update_batch_job(jid, batch_id=b["id"], status=b["status"])
        step = f"wave {job['wave']}, {job['step']}"
        while True:
            b = remote.retrieve(str(job["batch_id"]))
            counts = b.get("request_counts") or {}
            if b["status"] != job["status"] or counts.get("completed", 0) != job.get("completed"):
                job["status"], job["completed"] = b["status"], counts.get("completed", 0)
                self.store.update_batch_job(jid, status=b["status"], completed=int(counts.get("completed") or 0),
                                            failed=int(counts.get("failed") or 0))
            self.note = (f"{step}: batch {b['id']} {b['status']} ({counts.get('completed', 0)}/"
                         f"{counts.get('total', job['requests'])} done)")
            self.emit()
            if b["status"] in TERMINAL:
                break
            self.heartbeat()
            if self.cancel is not None and self.cancel.wait(self.options.poll_interval):
                self.stop_reason = "cancelled"
                self._cancel_remote(job, remote)
                return False
            if self.cancel is None:
                time.sleep(self.options.poll_interval)
        lines = itertools.chain.from_iterable(
            _iter_jsonl(remote.content(str(b[key])), f"{key} {b[key]}")
            for key in ("output_file_id", "error_file_id") if b.get(key)
        )
        errors = ((b.get("errors") or {}).get("data") or []) if isinstance(b.get("errors"), Mapping) else []
        message = "; ".join(str(e.get("message")) for e in errors if isinstance(e, Mapping)) or None
        if b["status"] in _BAD_END and message is None:
            message = job.get("message") or f"the batch ended {b['status']}"  # e.g. our own cancel's note
        self.ingest(job, lines, status=str(b["status"]), message=message)
        self.emit(force=True)
        return True

    def _cancel_remote(self, job: dict[str, Any], remote: OpenAIBatches) -> None:
        """Ask the endpoint to cancel the job's batch (the run was cancelled): no more of it is paid for
        beyond what it already answered; a resume polls it to its end (``cancelled``), ingests those answers
        and plans the rest again. A refused cancel is recorded; the batch then keeps running."""
        bid = str(job["batch_id"])
        try:
            b = remote.cancel(bid)
        except LLMError as exc:
            self.cancel_note = (f"asking the endpoint to cancel batch {bid} failed ({exc}); it keeps running: "
                                "resume to collect it")
            self.store.update_batch_job(int(job["job_id"]), message=self._scrub(self.cancel_note))
            return
        self.cancel_note = (f"batch {bid} was cancelled at the endpoint ({b['status']}): resume to collect what "
                            "it already answered and send the rest")
        self.store.update_batch_job(int(job["job_id"]), status=str(b["status"]),
                                    message="cancelled by the user (the run was cancelled)")

    def execute(self, remote: OpenAIBatches | None) -> RunSummary:
        """Run batches (``remote``) until the quotas are met or a stop; record the final state."""
        self.emit(force=True)
        try:
            while True:
                job = self._open_job()
                if job is None:
                    job = self.plan()
                    if job is None:
                        break
                if job["status"] == "exported":  # an offline run: its results come by import, not from here
                    self.stop_reason = "awaiting_import"
                    break
                if remote is None:
                    raise PersonaGenError("no Batch API endpoint given")
                if not self.drive(job, remote):
                    break
        except PersonaGenError as exc:
            self.fatal = str(exc)
        except BaseException as exc:
            self.store.set_status(self.run_id, "failed", stop_reason="error",
                                  message=self._scrub(f"{type(exc).__name__}: {exc}"))
            self.close()
            raise
        return self.finish()

    def finish(self, *, state: str | None = None, reason: str | None = None,
               message: str | None = None) -> RunSummary:
        """Record how this session ended, release the lease and summarise."""
        if state is None:
            if self._done():
                state, reason = "done", None
            elif self.fatal is not None:
                state, reason, message = "failed", "error", self._scrub(self.fatal)
            elif self.stop_reason == "cancelled":
                state, reason = "cancelled", "cancelled"
                message = f"cancelled; {self.cancel_note or 'resume to continue'}"
            else:
                state, reason = "stopped", self.stop_reason or "exhausted"
                message = _STOP_MESSAGES.get(reason, reason)
        budget = self.budget_report(reason)
        if budget is not None:
            message = f"{message} ({budget['text']})"
        self.store.set_status(self.run_id, state, stop_reason=reason, message=message)
        self.stop_reason = reason
        self.emit(force=True, state=state, message=message)
        self.close()
        return RunSummary(
            run_id=self.run_id, state=state, stop_reason=reason, message=message, accepted=dict(self.accepted),
            target=dict(self.target), rejections=dict(self.rejections), tokens=self.tokens, cost=self.cost,
            calls=self.calls, elapsed_s=time.monotonic() - self.started, unpriced_models=sorted(self.unpriced),
            budget=budget,
        )

    def close(self) -> None:
        """Commit pending writes and release the run's lease."""
        self.store.flush()
        self.store.release_lease(self.run_id, self.lease)


_STOP_MESSAGES = {
    "max_cost": "the cost limit was reached; resume with a larger cost limit to continue",
    "token_budget": "the token budget was reached; resume with a larger token budget to continue",
    "max_attempts": "the attempt limit was reached: too many rejected candidates or outputs",
    "max_waves": "the wave limit was reached without meeting every quota; see the rejections",
    "exhausted": "no more candidates could be produced",
    "awaiting_import": "a step of this run was exported for an offline batch job; import its results with "
    "`personagen batch import RUN_ID FILE` to continue",
}


def _iter_jsonl(data: bytes, where: str) -> Iterator[dict[str, Any]]:
    """Result lines one at a time (a DataError names ``where`` and the line for a line that is not one)."""
    for n, line in enumerate(io.BytesIO(data), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: line {n} is not JSON ({exc})") from None
        if not isinstance(item, dict) or "custom_id" not in item:
            raise DataError(f"{where}: line {n} has no custom_id (expected a Batch API / run_batch output line)")
        yield item


# -- public entry points -----------------------------------------------------------------------------------
def _session(store: RunStore, run_id: str, *, llm: LLMSettings | None = None,
             options: Mapping[str, Any] | None = None, on_event: Any = None, cancel: Any = None,
             overrides: Mapping[str, Any] | None = None) -> BatchRun:
    from personagen_core.generation.pipeline import (
        GenerationConfig,
        _check_budget_prices,
        resolve_validation,
        stored_llm_settings,
    )

    info = store.run(run_id)
    stored = store.batch_run(run_id)
    if stored is None:
        raise StoreError(f"run {run_id} is not a Batch API run (start one with `personagen generate --batch`)")
    spec = parse_spec(info["spec_yaml"] or "", source=f"run {run_id} spec snapshot")
    if info.get("spec_hash") and spec_hash(spec) != info["spec_hash"]:
        raise StoreError(f"run {run_id}: the stored spec snapshot does not match its hash")
    data = dict(info["config"])
    bad = sorted(set(overrides or {}) - set(RESUME_OVERRIDES))
    if bad:
        raise StoreError(f"a resumed run can only change {', '.join(RESUME_OVERRIDES)}, not {', '.join(bad)}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data.pop("llm", None)
    data["llm"] = llm if llm is not None else stored_llm_settings(info)
    config = resolve_validation(GenerationConfig.model_validate(data))
    _check_budget_prices(config)
    opts = BatchOptions.model_validate({**stored, **{k: v for k, v in (options or {}).items() if v is not None}})
    return BatchRun(spec, config, store, run_id, opts, on_event=on_event, cancel=cancel)


def run_batch_generation(
    spec: Spec,
    config: GenerationConfig,
    store: RunStore,
    *,
    options: BatchOptions | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
    http_client: Any = None,
    offline: bool = False,
    remote: OpenAIBatches | None = None,
) -> RunSummary:
    """Start a Batch API run: same quotas, prompts, validation and checks as ``run_generation``, sent as
    batches to ``config.llm``'s endpoint (``/v1/files`` + ``/v1/batches``). ``http_client`` (an
    ``httpx.Client``) replaces the network. ``offline=True`` only creates the run (for
    :func:`export_requests`); ``remote`` replaces the endpoint client (e.g. one that times its calls).
    Synchronous: it polls every ``options.poll_interval`` seconds."""
    from personagen_core.generation.pipeline import _check_budget_prices, estimate_cost, resolve_validation

    options = options or BatchOptions()
    target = targets_of(spec, config)
    _check_budget_prices(config)
    if config.llm.backend == "local" and not offline:
        raise LLMError("batch mode needs an endpoint with the Batch API (--base-url); the embedded model has none "
                       "(use `personagen batch export` for an offline batch job instead)")
    if getattr(config.llm, "endpoints", None) and not offline:
        raise LLMError("batch mode sends its batches to one endpoint: give one --base-url, not an endpoint pool")
    config = resolve_validation(config)
    run_id = store.create_run(
        method=config.method, config=config.stored(), target=target,
        spec_yaml=dump_spec(spec), spec_hash=spec_hash(spec), spec_name=spec.name, run_id=run_id,
    )
    store.set_batch_run(run_id, options.model_dump())
    store.set_estimate(run_id, estimate_cost(spec, config, table=pricing.batch_price_table()).to_dict())
    if offline:
        store.set_status(run_id, "stopped", stop_reason="awaiting_import",
                         message="an offline batch run: export its requests with `personagen batch export`")
        return RunSummary(run_id, "stopped", "awaiting_import", None, {}, dict(target),
                          {}, 0, 0.0, 0, 0.0)
    session = BatchRun(spec, config, store, run_id, options, on_event=on_event, cancel=cancel)
    return session.execute(remote or OpenAIBatches(config.llm, http_client=http_client))


def resume_batch_generation(
    store: RunStore,
    run_id: str,
    *,
    llm: LLMSettings | None = None,
    poll_interval: float | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    http_client: Any = None,
    **overrides: Any,
) -> RunSummary:
    """Continue a Batch API run: a batch in flight is polled (never sent again), then the waves go on.
    ``overrides`` may raise the limits (``max_attempts``, ``max_cost``, ``token_budget``) for this session."""
    session = _session(store, run_id, llm=llm, options={"poll_interval": poll_interval}, on_event=on_event,
                       cancel=cancel, overrides=overrides)
    return session.execute(OpenAIBatches(session.config.llm, http_client=http_client))


def export_requests(store: RunStore, run_id: str, path: str | Path) -> dict[str, Any]:
    """Write the requests of the run's next batch step to ``path`` (OpenAI Batch API / vLLM ``run_batch``
    JSONL: ``{"custom_id", "method", "url", "body"}`` per line) and mark it exported; the same step is written
    again while its results were not imported. Returns ``{"job_id", "wave", "step", "requests", "path"}``,
    or ``{"done": True}`` when every quota is met."""
    session = _session(store, run_id, llm=None)
    try:
        job = session._open_job()
        if job is not None and job["status"] != "exported":
            raise StoreError(f"run {run_id} has batch {job['batch_id'] or job['job_id']} in flight at an endpoint "
                             "(status " + str(job["status"]) + "); resume the run instead of exporting")
        if job is None:
            job = session.plan()
        if job is None:
            summary = session.finish()
            return {"done": summary.state == "done", "state": summary.state, "message": summary.message}
        with open(path, "wb") as out:
            n = session.write_requests(job, out)
        store.update_batch_job(int(job["job_id"]), status="exported")
        session.finish(state="stopped", reason="awaiting_import",
                       message=f"wave {job['wave']} {job['step']}: {n} requests exported to {path}; "
                       f"import the results with `personagen batch import {run_id} FILE`")
        return {"job_id": int(job["job_id"]), "wave": int(job["wave"]), "step": str(job["step"]),
                "requests": n, "path": str(path)}
    except BaseException:
        session.close()
        raise


def import_results(store: RunStore, run_id: str, path: str | Path) -> RunSummary:
    """Read an offline batch job's output (vLLM ``run_batch`` / OpenAI output lines: ``{"id", "custom_id",
    "response": {"status_code", "body"}, "error"}``) for the exported step and continue the run with it.
    Requests without an answer line count as failed (their candidates go to the next step's export)."""
    session = _session(store, run_id, llm=None)
    try:
        job = session._open_job()
        if job is None or job["status"] != "exported":
            raise StoreError(f"run {run_id} has no exported batch waiting for results "
                             f"(export one with `personagen batch export {run_id} --out FILE`)")
        lines = list(_iter_jsonl(Path(path).read_bytes(), str(path)))
        known = {r["custom_id"] for r in store.batch_requests(int(job["job_id"]))}
        strange = [x["custom_id"] for x in lines if str(x["custom_id"]) not in known]
        if strange:
            raise DataError(f"{path}: {len(strange)} line(s) answer requests of another export "
                            f"(custom_id {strange[0]!r} is not in wave {job['wave']} {job['step']})")
        counts = session.ingest(job, lines, status="completed")
        session.note = f"imported wave {job['wave']} {job['step']}: {counts['ok']} answered, {counts['failed']} failed"
        if session._done():
            return session.finish()
        return session.finish(state="stopped", reason="awaiting_import",
                              message=session.note + f"; export the next step with `personagen batch export {run_id}`")
    except BaseException:
        session.close()
        raise

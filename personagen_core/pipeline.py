"""Generation runs: configuration, start, resume, cost estimate (the public face of stages 1-4).

A run samples candidates (stage 1-3 attributes), validates them with the LLM (:mod:`validation`), asks the
LLM for one short text per (candidate, emotion) and checks it (:mod:`checks`). :mod:`scheduler` runs it with
exact quotas: a worker first claims a slot of an emotion, so at most the missing number of texts are ever in
flight, and the store's guarded insert refuses a text beyond the quota. Everything is committed to the
:class:`~personagen_core.store.RunStore` as it happens, so a killed run resumes (:func:`resume_generation`)
to exactly the quota.

Methods (same output schema):

* ``personagen``: stage 1-3 attributes from the spec's real-world distributions and rules, LLM-validated
  (ablations: ``stages="1"`` or ``"12"`` conditions on fewer stages, ``validate=False`` skips the LLM
  checks), full output checks.
* ``attrprompt`` (the paper's baseline): attribute values drawn uniformly at random, no validation, only
  empty and exact-duplicate outputs rejected.
* ``priorwork``: random personas drawn from the spec's distributions without LLM validation, with a basic
  threshold filter on outputs (empty, refusal, length, exact duplicates).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personagen_core import pricing
from personagen_core.errors import BudgetExceeded, StoreError
from personagen_core.llm import LLMSettings, estimate_tokens
from personagen_core.prompts import generation_messages, validation_messages
from personagen_core.render import describe_persona, describe_scenario
from personagen_core.sampling import build_model
from personagen_core.scheduler import METHODS, ProgressEvent, RunSession, RunSummary, emotions_of, stages_of
from personagen_core.spec import Spec, dump_spec, parse_spec, spec_hash
from personagen_core.store import RunStore

__all__ = [
    "GenerationConfig",
    "METHODS",
    "ProgressEvent",
    "RESUME_OVERRIDES",
    "RunSummary",
    "arun_generation",
    "aresume_generation",
    "estimate_cost",
    "resume_generation",
    "run_generation",
]

Method = Literal["personagen", "attrprompt", "priorwork"]
#: Settings a resumed run may change (budgets and limits; never what or how much to generate).
RESUME_OVERRIDES = ("max_attempts", "max_cost", "max_tokens")


class GenerationConfig(BaseModel):
    """What to generate and the limits of a run. ``validate`` (attribute ``validate_``) turns the stage 1-3
    LLM validation on or off; ``stages`` is the ablation switch (``"1"``, ``"12"`` or ``"123"``).

    ``max_attempts`` bounds accepted + rejected outputs + rejected candidates over the whole run (default:
    ten per wanted text plus 50); ``max_cost`` (USD) and ``max_tokens`` bound the run's usage: once reached no
    new call starts, calls in flight finish, and the run stops resumable. ``texts_per_persona`` overrides the
    spec's value; ``validation_batch`` is how many candidates share one validation call.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Method = "personagen"
    emotions: list[str] | None = None
    per_emotion: int = Field(default=10, ge=1, le=10_000_000)
    seed: int = 0
    stages: Literal["1", "12", "123"] = "123"
    validate_: bool = Field(default=True, alias="validate")
    validation_batch: int = Field(default=8, ge=1, le=64)
    texts_per_persona: int | None = Field(default=None, ge=1, le=100)
    max_attempts: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    near_duplicate_threshold: float = Field(default=0.8, gt=0, le=1)
    workers: int | None = Field(default=None, ge=1, le=4096)
    llm: LLMSettings = Field(default_factory=LLMSettings)

    def stored(self) -> dict[str, Any]:
        """JSON-safe dict for the run store; the API key is excluded by :class:`LLMSettings`."""
        return self.model_dump(mode="json", by_alias=True)


def _check_budget_prices(config: GenerationConfig) -> None:
    if config.max_cost is None:
        return
    for role in ("validator", "generator"):
        model = config.llm.model_for(role)
        if pricing.cost(model, 0, 0) is None:
            raise BudgetExceeded(
                f"--max-cost needs a price for model {model!r} ({role}); add it to the price "
                "table or use --max-tokens instead"
            )


async def arun_generation(
    spec: Spec,
    config: GenerationConfig,
    store: RunStore,
    *,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
    http_client: Any = None,
) -> RunSummary:
    """Start a new run (id ``run_id`` or a fresh one) and generate to its quotas (:func:`run_generation`)."""
    names = emotions_of(spec, config)
    _check_budget_prices(config)
    run_id = store.create_run(
        method=config.method,
        config=config.stored(),
        target={e: config.per_emotion for e in names},
        spec_yaml=dump_spec(spec),
        spec_hash=spec_hash(spec),
        spec_name=spec.name,
        run_id=run_id,
    )
    return await RunSession(spec, config, store, run_id, on_event, cancel).execute(http_client)


def run_generation(
    spec: Spec,
    config: GenerationConfig,
    store: RunStore,
    *,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    run_id: str | None = None,
    http_client: Any = None,
) -> RunSummary:
    """Generate ``config.per_emotion`` texts per emotion into ``store``; returns how the run ended.

    Synchronous: runs its own event loop (``asyncio.run``), so it may be called from any thread without a
    running loop (the dashboard runs it in a background thread). ``on_event`` receives a
    :class:`ProgressEvent` about five times a second and at the end; setting ``cancel`` stops the run
    (state ``cancelled``, resumable). ``http_client`` (an ``httpx.AsyncClient``) replaces the network.
    """
    return asyncio.run(
        arun_generation(
            spec, config, store, on_event=on_event, cancel=cancel, run_id=run_id, http_client=http_client
        )
    )


async def aresume_generation(
    store: RunStore,
    run_id: str,
    *,
    llm: LLMSettings | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    http_client: Any = None,
    **overrides: Any,
) -> RunSummary:
    """Continue run ``run_id`` to exactly its quotas; see :func:`resume_generation`."""
    info = store.run(run_id)
    spec = parse_spec(info["spec_yaml"] or "", source=f"run {run_id} spec snapshot")
    if info.get("spec_hash") and spec_hash(spec) != info["spec_hash"]:
        raise StoreError(f"run {run_id}: the stored spec snapshot does not match its hash")
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise StoreError(f"a resumed run can only change {', '.join(RESUME_OVERRIDES)}, not {', '.join(bad)}")
    data = dict(info["config"])
    data.update({k: v for k, v in overrides.items() if v is not None})
    stored_llm = data.pop("llm", {}) or {}
    data["llm"] = llm if llm is not None else LLMSettings.from_env(**stored_llm)
    config = GenerationConfig.model_validate(data)
    _check_budget_prices(config)
    return await RunSession(spec, config, store, run_id, on_event, cancel).execute(http_client)


def resume_generation(
    store: RunStore,
    run_id: str,
    *,
    llm: LLMSettings | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    http_client: Any = None,
    **overrides: Any,
) -> RunSummary:
    """Continue a stopped, cancelled, failed or killed run to exactly its quotas.

    The spec snapshot and config come from the store; the API key is not stored, so it is read again from
    ``OPENAI_API_KEY`` unless ``llm`` (complete settings) is given. ``overrides`` may raise the limits
    (``max_attempts``, ``max_cost``, ``max_tokens``). Accepted texts are never lost or duplicated: counts come
    from the store and the store refuses duplicates and texts beyond the quota.
    """
    return asyncio.run(
        aresume_generation(
            store, run_id, llm=llm, on_event=on_event, cancel=cancel, http_client=http_client, **overrides
        )
    )


def estimate_cost(
    spec: Spec,
    config: GenerationConfig,
    *,
    table: pricing.PriceTable | None = None,
    output_acceptance: float = 0.9,
    stage_survival: float = 0.85,
) -> pricing.CostEstimate:
    """Expected cost of a run before it starts.

    Prompt tokens are measured on prompts built for eight sampled candidates; completions are assumed to be
    ~30 tokens per verdict and the smaller of ``max_tokens`` and 50 per text. Assumptions: a share
    ``output_acceptance`` of outputs passes the checks, ``stage_survival`` of candidates passes each
    validated stage, and no verdict cache hits (so the estimate errs high).
    """
    names = emotions_of(spec, config)
    info = METHODS[config.method]
    stages = stages_of(spec, config)
    validate = info.validate and config.validate_
    per = config.texts_per_persona or spec.generation.texts_per_persona
    batch = config.validation_batch
    sample = build_model(spec, mode=info.mode).sample(batch, random_state=np.random.default_rng(config.seed))
    rows = [{k: str(v) for k, v in r.items()} for r in sample.to_dict("records")]
    gen_calls = len(names) * config.per_emotion / output_acceptance
    persona = describe_persona(rows[0], spec, stages=tuple(s for s in stages if s in (1, 2)) or (1,))
    scenario = describe_scenario(rows[0], spec) if 3 in stages else None
    gen_prompt = generation_messages(spec.emotions[0], persona, scenario, spec=spec)
    est: dict[str, pricing.CallEstimate] = {
        "stage4 generation": pricing.CallEstimate(
            config.llm.model_for("generator"),
            gen_calls,
            estimate_tokens(" ".join(m["content"] for m in gen_prompt)),
            min(spec.generation.max_tokens, 50),
        ),
    }
    if validate:
        candidates = gen_calls / per / (stage_survival ** len(stages))
        for stage in stages:
            msgs = validation_messages(stage, rows, spec)
            est[f"stage{stage} validation"] = pricing.CallEstimate(
                config.llm.model_for("validator"),
                float(np.ceil(candidates / batch)),
                estimate_tokens(" ".join(m["content"] for m in msgs)),
                30.0 * batch,
            )
            candidates *= stage_survival
    return pricing.estimate_run_cost(est, table=table)

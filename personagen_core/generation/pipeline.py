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
  checks; the default follows the validator's measured quality, :mod:`validation_policy`), full output checks.
* ``attrprompt`` (the paper's baseline): attribute values drawn uniformly at random, no validation, only
  empty and exact-duplicate outputs rejected.
* ``priorwork``: random personas drawn from the spec's distributions without LLM validation, with a basic
  threshold filter on outputs (empty, refusal, length, exact duplicates).

:func:`validate_personas` runs stages 1-3 alone on given personas (the dashboard's preview): the same
:class:`~personagen_core.generation._validation.Validator`, prompts and cross-run verdict cache as a run, no stage 4.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from personagen_core.errors import BudgetExceeded, DataError, StoreError
from personagen_core.generation import pricing
from personagen_core.generation._scheduler import ProgressEvent, RunSession, RunSummary
from personagen_core.generation._validation import Validator, Verdict
from personagen_core.generation.endpoints import open_client
from personagen_core.generation.llm import LLMSettings, estimate_tokens
from personagen_core.generation.prompts import (
    VerdictReasons,
    generation_messages,
    validation_columns,
    validation_messages,
)
from personagen_core.generation.run_config import (
    METHODS,
    RESUME_OVERRIDES,
    GenerationConfig,
    emotions_of,
    render_candidate,
    stages_of,
    targets_of,
    upgrade_stored_config,
)
from personagen_core.generation.validation_policy import decide
from personagen_core.generation.vocabulary import FUNNEL_VERDICTS, KEPT_VERDICTS
from personagen_core.personas.sampling import build_model
from personagen_core.personas.spec import Spec, dump_spec, parse_spec, spec_hash
from personagen_core.redaction import is_redacted_url
from personagen_core.store import RunStore

__all__ = [
    "METHODS",
    "RESUME_OVERRIDES",
    "VERDICTS",
    "GenerationConfig",
    "ProgressEvent",
    "RunSummary",
    "aresume_generation",
    "arun_generation",
    "avalidate_personas",
    "emotions_of",
    "estimate_cost",
    "funnel",
    "resolve_validation",
    "resume_generation",
    "run_generation",
    "stages_of",
    "stored_llm_settings",
    "targets_of",
    "validate_personas",
]

def resolve_validation(config: GenerationConfig) -> GenerationConfig:
    """``config`` with ``validate`` decided (the user's choice, else the measured-quality policy) and the
    decision recorded in ``validation_policy``; a config already resolved is returned unchanged."""
    if config.validate_ is not None and config.validation_policy is not None:
        return config
    decision = decide(config.llm, config.validate_)
    return config.model_copy(update={"validate_": decision.validate, "validation_policy": decision.to_dict()})


def _check_budget_prices(config: GenerationConfig) -> None:
    if config.max_cost is None:
        return
    for role in ("validator", "generator"):
        model = config.llm.model_for(role)
        if pricing.cost(model, 0, 0) is None:
            raise BudgetExceeded(
                f"the cost limit needs a price for model {model!r} ({role}); add it to the price "
                "table or set a token budget instead",
                settings=("max_cost", "token_budget"),
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
    target = targets_of(spec, config)
    _check_budget_prices(config)
    config = resolve_validation(config)
    run_id = store.create_run(
        method=config.method,
        config=config.stored(),
        target=target,
        spec_yaml=dump_spec(spec),
        spec_hash=spec_hash(spec),
        spec_name=spec.name,
        run_id=run_id,
    )
    store.set_estimate(run_id, estimate_cost(spec, config).to_dict())  # runs show: estimate vs actual
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


def stored_llm_settings(
    info: dict[str, Any], *, env: Any = None, **overrides: Any
) -> LLMSettings:
    """The LLM settings a run was started with (``store.run(run_id)``), the API key read from the
    environment again, ``overrides`` (None values ignored) on top.

    A base URL stored with its credentials redacted cannot be used: it must be given again (``base_url``
    override or ``OPENAI_BASE_URL``), else :class:`StoreError` says so.
    """
    stored = dict(info["config"].get("llm") or {})
    stored.pop("verdict_reasons", None)  # stored by older versions; now a setting of the run config
    if is_redacted_url(stored.get("base_url")):
        redacted = stored.pop("base_url")
        source = env if env is not None else os.environ
        if not overrides.get("base_url") and not source.get("OPENAI_BASE_URL"):
            raise StoreError(
                f"run {info['run_id']} used the base URL {redacted}, whose credentials are never stored; "
                "give the base URL again (or set OPENAI_BASE_URL) to resume",
                settings=("base_url",),
            )
    redacted = [e["url"] for e in stored.get("endpoints") or [] if is_redacted_url(e.get("url"))]
    if redacted and not overrides.get("endpoints"):
        raise StoreError(
            f"run {info['run_id']} used the endpoint(s) {', '.join(redacted)}, whose credentials are never "
            "stored; give the endpoints again to resume",
            settings=("endpoints",),
        )
    return LLMSettings.from_env(env, **{**stored, **overrides})


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
    if "max_tokens" in overrides:  # the token budget's former name
        overrides["token_budget"] = overrides.pop("max_tokens")
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise StoreError(f"a resumed run can only change {', '.join(RESUME_OVERRIDES)}, not {', '.join(bad)}")
    data = upgrade_stored_config(info["config"])  # configs stored by older versions use former names
    data.update({k: v for k, v in overrides.items() if v is not None})
    data.pop("llm", None)
    data["llm"] = llm if llm is not None else stored_llm_settings(info)
    config = resolve_validation(GenerationConfig.model_validate(data))
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
    (``max_attempts``, ``max_cost``, ``token_budget``). Accepted texts are never lost or duplicated: counts come
    from the store and the store refuses duplicates and texts beyond the quota.
    """
    return asyncio.run(
        aresume_generation(
            store, run_id, llm=llm, on_event=on_event, cancel=cancel, http_client=http_client, **overrides
        )
    )


#: Completion tokens assumed per text (two short sentences, about 140 characters) and per verdict (with its
#: reason; "rejected" mode: verdict only, a reason for the few implausible ones). Measured on the fake
#: server's runs (japan pack, 7 x 30 texts, gpt-4.1-mini prices): 30.6 tokens per text; 24 and 8.5 tokens
#: per verdict. Texts of real models run a little longer, so the figures are rounded up.
_TEXT_COMPLETION_TOKENS = 35
_VERDICT_COMPLETION_TOKENS = {"all": 25.0, "rejected": 10.0}


def estimate_cost(
    spec: Spec,
    config: GenerationConfig,
    *,
    table: pricing.PriceTable | None = None,
    output_acceptance: float = 0.9,
    stage_survival: float = 0.95,
) -> pricing.CostEstimate:
    """Expected cost of a run before it starts.

    Prompt tokens are measured on prompts built for eight sampled candidates; completions are assumed to be
    :data:`_TEXT_COMPLETION_TOKENS` per text (at most ``max_tokens``) and 25 per verdict (10 with
    ``verdict_reasons="rejected"``). Assumptions: a share ``output_acceptance`` of outputs passes the checks,
    ``stage_survival`` of candidates passes each validated stage, and no verdict cache hits (so the estimate
    errs high). Calibration on the fake server (every verdict natural, every text accepted): actual cost
    0.83x the estimate with validation, 0.87x without (``bench/bench_estimate.py`` prints the figures).
    """
    names = emotions_of(spec, config)
    info = METHODS[config.method]
    stages = stages_of(spec, config)
    validate = info.validate and bool(resolve_validation(config).validate_)
    per = config.texts_per_persona or spec.generation.texts_per_persona
    batch = config.validation_batch
    sample = build_model(spec, mode=info.mode).sample(batch, random_state=np.random.default_rng(config.seed))
    rows = [{k: str(v) for k, v in r.items()} for r in sample.to_dict("records")]
    gen_calls = len(names) * config.per_emotion / output_acceptance
    persona, scenario = render_candidate(rows[0], spec, stages)
    gen_prompt = generation_messages(spec.emotions[0], persona, scenario, spec=spec)
    est: dict[str, pricing.CallEstimate] = {
        "stage4 generation": pricing.CallEstimate(
            config.llm.model_for("generator"),
            gen_calls,
            estimate_tokens(" ".join(m["content"] for m in gen_prompt)),
            min(spec.generation.max_tokens, _TEXT_COMPLETION_TOKENS),
        ),
    }
    if validate:
        reasons = config.verdict_reasons
        candidates = gen_calls / per / (stage_survival ** len(stages))
        for stage in stages:
            msgs = validation_messages(stage, rows, spec, reasons=reasons)
            est[f"stage{stage} validation"] = pricing.CallEstimate(
                config.llm.model_for("validator"),
                float(np.ceil(candidates / batch)),
                estimate_tokens(" ".join(m["content"] for m in msgs)),
                _VERDICT_COMPLETION_TOKENS.get(reasons, 25.0) * batch,
            )
            candidates *= stage_survival
    return pricing.estimate_run_cost(est, table=table)


#: Verdict values of stages 1-3 and ``"error"`` (the endpoint gave no usable answer; the persona is
#: dropped): what :func:`funnel` counts. Owned by :mod:`vocabulary` (``FUNNEL_VERDICTS``).
VERDICTS = FUNNEL_VERDICTS


def _wanted_stages(spec: Spec, stages: Any, personas: pd.DataFrame) -> list[int]:
    bad = [s for s in stages if s not in (1, 2, 3)]
    if bad:
        raise DataError(f"stages: validation stages are 1, 2 and 3, got {bad}")
    wanted = [s for s in sorted(set(stages)) if validation_columns(spec, s)]
    for stage in wanted:
        missing = [c for c in validation_columns(spec, stage) if c not in personas.columns]
        if missing:
            raise DataError(
                f"personas: stage {stage} needs column(s) {', '.join(missing)}, "
                f"found {', '.join(map(str, personas.columns))}"
            )
    return wanted


async def avalidate_personas(
    spec: Spec,
    personas: pd.DataFrame,
    llm_settings: LLMSettings,
    *,
    store: RunStore | None = None,
    stages: Any = (1, 2, 3),
    on_event: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    http_client: Any = None,
    batch_size: int = 8,
    verdict_reasons: VerdictReasons = "all",
) -> pd.DataFrame:
    """Stage 1-3 verdicts for ``personas``; see :func:`validate_personas`."""
    wanted = _wanted_stages(spec, stages, personas)
    rows = [{k: str(v) for k, v in r.items()} for r in personas.to_dict("records")]
    got: dict[int, list[Verdict | None]] = {s: [None] * len(rows) for s in wanted}
    alive = list(range(len(rows)))
    dropped: list[int | None] = [None] * len(rows)
    cancelled = False
    batch = max(1, int(batch_size))
    async with open_client(llm_settings, http_client=http_client) as client:
        validator = Validator(spec, store, client, batch_size=batch, reasons=verdict_reasons)
        # Chunks run concurrently (the client bounds the HTTP concurrency); the semaphore only keeps
        # chunks not started yet cancellable.
        gate = asyncio.Semaphore(max(1, llm_settings.concurrency))
        for stage in wanted:
            done = 0

            async def chunk(idx: list[int], stage: int = stage) -> None:
                nonlocal done
                async with gate:
                    if cancel is not None and cancel.is_set():
                        return
                    verdicts = await validator.verdicts(stage, [rows[i] for i in idx])
                for i, v in zip(idx, verdicts, strict=True):
                    got[stage][i] = v
                done += len(idx)
                if on_event is not None:
                    try:
                        on_event(stage, done, len(alive))
                    except Exception:  # noqa: BLE001 - a broken progress display must not lose the verdicts
                        pass

            tasks = [asyncio.create_task(chunk(alive[i : i + batch])) for i in range(0, len(alive), batch)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            if cancel is not None and cancel.is_set():
                cancelled = True
            for i in alive:
                v = got[stage][i]
                if v is not None and not v.kept:
                    dropped[i] = stage
            alive = [i for i in alive if (v := got[stage][i]) is not None and v.kept]
            if cancelled:
                break
        model = validator.model
        asked = validator.llm_verdicts
    out = personas.copy()
    for stage in wanted:
        vs = got[stage]
        out[f"verdict_stage{stage}"] = [v.verdict if v else None for v in vs]
        out[f"reason_stage{stage}"] = [v.reason if v else None for v in vs]
        out[f"cached_stage{stage}"] = pd.array([v.cached if v else None for v in vs], dtype="boolean")
    # kept: passed every stage; False once dropped; <NA> when a cancel stopped its validation early.
    last = wanted[-1] if wanted else None
    kept = [
        False if d is not None else (True if last is None or got[last][i] is not None else None)
        for i, d in enumerate(dropped)
    ]
    out["kept"] = pd.array(kept, dtype="boolean")
    out["dropped_stage"] = pd.array(dropped, dtype="Int64")
    out.attrs["validation"] = {
        "stages": wanted,
        "model": model,
        "llm_verdicts": asked,
        "cancelled": cancelled,
    }
    return out


def validate_personas(
    spec: Spec,
    personas: pd.DataFrame,
    llm_settings: LLMSettings,
    *,
    store: RunStore | None = None,
    stages: Any = (1, 2, 3),
    on_event: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    http_client: Any = None,
    batch_size: int = 8,
    verdict_reasons: VerdictReasons = "all",
) -> pd.DataFrame:
    """Validate ``personas`` (one row per persona, the spec's attribute columns) at ``stages``.

    A persona reaches a stage only if kept ("natural" or "rare but plausible") at the previous one. Returns
    a copy of ``personas`` with, per validated stage ``s``, ``verdict_stage{s}``, ``reason_stage{s}`` and
    ``cached_stage{s}`` (None where the persona did not reach the stage), ``kept`` (passed every stage) and
    ``dropped_stage`` (the stage that dropped it, <NA> if kept); ``df.attrs["validation"]`` holds the
    stages, validator model, how many verdicts needed the LLM, and whether ``cancel`` stopped it early.

    Verdicts come from :class:`~personagen_core.generation._validation.Validator`: with a ``store`` its cross-run
    cache is read and filled (a persona validated before costs no call). ``on_event(stage, done, total)``
    follows the progress; setting ``cancel`` stops before the next chunk (unfinished rows get
    ``kept`` <NA>). Synchronous, with its own event loop: call it from a thread without a running loop.
    Stages without columns in the spec are skipped; a missing column raises :class:`DataError`.
    ``verdict_reasons`` is the run config's setting of the same name (which verdicts carry a reason).
    """
    return asyncio.run(
        avalidate_personas(
            spec,
            personas,
            llm_settings,
            store=store,
            stages=stages,
            on_event=on_event,
            cancel=cancel,
            http_client=http_client,
            batch_size=batch_size,
            verdict_reasons=verdict_reasons,
        )
    )


def funnel(validated: pd.DataFrame) -> dict[str, Any]:
    """Counts of a :func:`validate_personas` result: ``{"sampled": n, "stages": {stage: {"validated",
    "natural", "rare but plausible", "implausible", "error", "kept", "cached"}}, "kept": n_kept}``."""
    prefix = "verdict_stage"
    stages = sorted(int(c.removeprefix(prefix)) for c in validated.columns if c.startswith(prefix))
    out: dict[int, dict[str, int]] = {}
    for stage in stages:
        col = validated[f"verdict_stage{stage}"]
        counts = {v: int((col == v).sum()) for v in VERDICTS}
        out[stage] = {
            "validated": int(col.notna().sum()),
            **counts,
            "kept": sum(counts[v] for v in KEPT_VERDICTS),
            "cached": int(validated[f"cached_stage{stage}"].fillna(False).sum())
            if f"cached_stage{stage}" in validated
            else 0,
        }
    return {
        "sampled": len(validated),
        "stages": out,
        "kept": int(validated["kept"].fillna(False).sum()) if "kept" in validated else len(validated),
    }

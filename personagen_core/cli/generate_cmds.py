"""``personagen generate``, ``runs list|show`` and ``export``: the generation pipeline from the shell."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

import typer

from personagen_core.errors import PersonaGenError
from personagen_core.generation.vocabulary import DEFAULT_CONCURRENCY as _DEFAULT_CONCURRENCY
from personagen_core.generation.vocabulary import (
    FUNNEL_VERDICTS,
    INTERNAL_SETTINGS,
    METHODS,
    SERVER_KINDS,
    STAGE_CHOICES,
    STRUCTURED_MODES,
    VERDICT_REASONS,
)

if TYPE_CHECKING:
    from personagen_core.generation.pipeline import ProgressEvent, RunSummary
    from personagen_core.personas.spec import Spec
    from personagen_core.store import RunStore

__all__ = ["register"]

runs_app = typer.Typer(help="List and inspect generation runs.", no_args_is_help=True)

_DbOpt = Annotated[
    Path | None, typer.Option("--db", help="Run store (default $PERSONAGEN_HOME/runs.sqlite).")
]


# Choices come from the core's vocabulary (a light module: the CLI starts without loading the LLM client).
_Method = StrEnum("_Method", {m: m for m in METHODS})
_Stages = StrEnum("_Stages", {f"s{c}": c for c in STAGE_CHOICES})
_Reasons = StrEnum("_Reasons", {r: r for r in VERDICT_REASONS})
_Server = StrEnum("_Server", {k: k for k in SERVER_KINDS})
_Structured = StrEnum("_Structured", {k: k for k in STRUCTURED_MODES})
_DEFAULT_METHOD, _DEFAULT_STAGES = _Method("personagen"), _Stages("123")


class _Backend(StrEnum):
    openai = "openai"
    local = "local"


class _Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"
    hf = "hf"


def _store(db: Path | None) -> RunStore:
    from personagen_core.store import RunStore

    return RunStore(db)


def _read_store(db: Path | None) -> RunStore | None:
    """The store opened read-only (it may belong to another user or sit on a read-only disk), or None
    when the file does not exist."""
    from personagen_core.store import RunStore, default_db_path

    path = db if db is not None else default_db_path()
    if not Path(path).is_file():
        return None
    return RunStore(path, read_only=True)


def _read_store_for(run_id: str, db: Path | None) -> RunStore:
    from personagen_core.errors import StoreError
    from personagen_core.store import default_db_path

    store = _read_store(db)
    if store is None:
        raise StoreError(f"no run {run_id!r}: there is no run store at {db or default_db_path()}")
    return store


def _load_spec(spec_file: Path | None, pack: str | None) -> Spec:
    from personagen_core.personas.spec import DEFAULT_PACK, load_pack

    if spec_file is not None and pack is not None:
        raise typer.BadParameter("give --spec or --pack, not both")
    if spec_file is not None:
        from personagen_core.spec_library import resolve_spec

        return resolve_spec(spec_file)  # a YAML file, or the name of a saved spec
    return load_pack(pack or DEFAULT_PACK)


def _llm_overrides(
    backend: _Backend | None,
    base_url: str | None,
    model: str | None,
    local_model: str | None,
    validator_model: str | None,
    generator_model: str | None,
    concurrency: int | None,
) -> dict[str, Any]:
    models = {k: v for k, v in (("validator", validator_model), ("generator", generator_model)) if v}
    out: dict[str, Any] = {
        "backend": backend.value if backend else None,
        "base_url": base_url,
        "model": model,
        "local_model": local_model,
        "concurrency": concurrency,
    }
    if models:
        out["models"] = models
    return {k: v for k, v in out.items() if v is not None}


def _endpoint_overrides(urls: list[str], endpoints_file: Path | None) -> dict[str, Any]:
    """``endpoints`` for the LLM settings from ``--base-url`` given several times or ``--endpoints FILE``
    (an empty list when one ``--base-url`` replaces a resumed run's pool; nothing when neither was given)."""
    from personagen_core.generation.endpoints import endpoints_from_urls, load_endpoints_file

    if endpoints_file is not None and urls:
        raise typer.BadParameter("give --endpoints FILE or --base-url, not both", param_hint="--endpoints")
    if endpoints_file is not None:
        return {"endpoints": load_endpoints_file(endpoints_file)}
    if len(urls) > 1:
        return {"endpoints": endpoints_from_urls(urls)}
    return {"endpoints": []} if urls else {}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def _info_line(ev: ProgressEvent) -> str:
    rej = sum(ev.rejections.values())
    return (
        f"rejected {rej} | {ev.tokens:,} tok | ${ev.cost:.4f} | "
        f"{_fmt_s(ev.elapsed_s)} elapsed, ETA {_fmt_s(ev.eta_s)}"
        + (f" | {ev.message}" if ev.message and ev.state == "running" else "")  # e.g. a batch's status
        + _pool_part(ev)
    )


def _pool_part(ev: ProgressEvent) -> str:
    """`` | endpoints 1/2 in rotation`` for a run over an endpoint pool, else nothing."""
    if not ev.endpoints:
        return ""
    live = sum(e["state"] != "out" for e in ev.endpoints)
    return f" | endpoints {live}/{len(ev.endpoints)} in rotation"


class _ProgressView:
    """The live display of a run. In a terminal: one bar per emotion (name, counts, bar) with the totals on
    a line of their own below, so the counts stay readable at 80 columns; elsewhere (a log file, a pipe):
    a plain line every few seconds and at the end."""

    def __init__(self, console: Any, target: dict[str, int], *, live: bool, every_s: float = 5.0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console, self.target, self.live, self.every_s = console, target, live, every_s
        self.info = ""
        self._last_plain = -1e9
        self._last_line = ""
        view = self

        class _Progress(Progress):
            def get_renderables(self) -> Any:
                yield self.make_tasks_table(self.tasks)
                if view.info:
                    yield view.info

        width = max([len(e) for e in target] + [5])
        self.progress = _Progress(
            TextColumn(f"{{task.description:>{width}}}"),
            MofNCompleteColumn(),
            BarColumn(bar_width=None),
            console=console,
            transient=False,
            expand=True,
        )
        self.tasks = {e: self.progress.add_task(e, total=n) for e, n in target.items()}
        self.total = self.progress.add_task("total", total=sum(target.values()))

    def __enter__(self) -> Self:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def plain_line(self, ev: ProgressEvent) -> str:
        """One line for logs: accepted/target per emotion, total, then the usage line."""
        per = " ".join(f"{e} {ev.accepted.get(e, 0)}/{n}" for e, n in self.target.items())
        done, total = sum(ev.accepted.values()), sum(self.target.values())
        return f"{per} | total {done}/{total} | {_info_line(ev)}"

    def update(self, ev: ProgressEvent, *, final: bool = False) -> None:
        """Show ``ev`` (in a log: at most one line per ``every_s`` seconds, and always the final one)."""
        if not self.live:
            now = time.monotonic()
            line = self.plain_line(ev)
            if (final or now - self._last_plain >= self.every_s) and line != self._last_line:
                self._last_plain, self._last_line = now, line
                self.console.print(line, soft_wrap=True, highlight=False, markup=False)
            return
        for e, task in self.tasks.items():
            self.progress.update(task, completed=ev.accepted.get(e, 0))
        self.progress.update(self.total, completed=sum(ev.accepted.values()))
        self.info = _info_line(ev)


def _run_with_progress(start: Any, target: dict[str, int]) -> RunSummary:
    """Run ``start(on_event, cancel)`` in a worker thread with a progress display.

    Ctrl-C (SIGINT) and SIGTERM set the cancel flag: the run stops cleanly (calls in flight are
    abandoned, state ``cancelled``, resumable) and no traceback is printed. A second signal while it winds
    down is ignored with a note.
    """
    import signal
    import sys

    from rich.console import Console

    console = Console(stderr=True)
    live = console.is_terminal and sys.stdout.isatty()
    latest: dict[str, ProgressEvent] = {}
    result: dict[str, Any] = {}
    cancel = threading.Event()

    def worker() -> None:
        try:
            result["summary"] = start(lambda ev: latest.__setitem__("ev", ev), cancel)
        except BaseException as exc:  # surfaced in the main thread
            result["error"] = exc

    def on_signal(signum: int, frame: Any) -> None:
        if cancel.is_set():
            console.print("still stopping: waiting for the run to record its state ...")
            return
        name = signal.Signals(signum).name
        console.print(f"{name}: cancelling; the run stays resumable ...")
        cancel.set()

    thread = threading.Thread(target=worker, name="personagen-generate", daemon=True)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with _ProgressView(console, target, live=live) as view:
            thread.start()
            while thread.is_alive():
                thread.join(timeout=0.2)
                ev = latest.get("ev")
                if ev is not None:
                    view.update(ev)
            ev = latest.get("ev")
            if ev is not None:
                view.update(ev, final=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if "error" in result:
        raise result["error"]
    if "summary" not in result:  # the worker ended without an answer (should not happen): say so plainly
        raise PersonaGenError("the run ended without a summary; see `personagen runs show` for its state")
    return result["summary"]


def _finish(summary: RunSummary) -> None:
    acc = sum(summary.accepted.values())
    tgt = sum(summary.target.values())
    typer.echo(
        f"run {summary.run_id}: {summary.state} - {acc}/{tgt} texts, {summary.calls} calls, "
        f"{summary.tokens:,} tokens, ${summary.cost:.4f}"
    )
    if summary.unpriced_models:
        typer.echo(f"note: no price for {', '.join(summary.unpriced_models)}; their cost counts as 0")
    if summary.rejections:
        typer.echo(
            "rejections: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary.rejections.items(), key=lambda kv: -kv[1]))
        )
    if summary.state == "failed":
        raise PersonaGenError(
            f"run {summary.run_id} failed: {summary.message}; fix the cause and resume with "
            f"--resume {summary.run_id}"
        )
    if summary.state != "done":
        hint = f"personagen generate --resume {summary.run_id}"
        if summary.stop_reason in _LIMITS:
            flag = SETTING_FLAGS[_LIMITS[summary.stop_reason]]
            hint += f" {flag} N   (N: a larger limit; it replaces the stored one)"
        typer.echo(f"{summary.message or summary.state}. Resume with: {hint}", err=True)
        raise typer.Exit(3)


#: The flag of each run setting (``GenerationConfig`` and ``LLMSettings`` field names): the CLI's hint for a
#: core error that names settings (``PersonaGenError.settings``); tests/test_settings_reach.py checks that
#: every field is here or in :data:`NOT_ON_CLI`, and that each flag exists.
SETTING_FLAGS: dict[str, str] = {
    "method": "--method",
    "emotions": "--emotions",
    "per_emotion": "--per-emotion",
    "seed": "--seed",
    "stages": "--stages",
    "validate_": "--llm-validation",
    "validation_batch": "--validation-batch",
    "verdict_reasons": "--verdict-reasons",
    "texts_per_persona": "--texts-per-persona",
    "temperature": "--temperature",
    "max_attempts": "--max-attempts",
    "max_cost": "--max-cost",
    "token_budget": "--token-budget",
    "near_duplicate_threshold": "--near-duplicate-threshold",
    "backend": "--backend",
    "base_url": "--base-url",
    "model": "--model",
    "models": "--validator-model",  # and --generator-model; the judge's: `personagen evaluate --judge-model`
    "local_model": "--local-model",
    "concurrency": "--concurrency",
    "max_retries": "--max-retries",
    "timeout": "--timeout",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "server": "--server",
    "structured": "--structured",
    "give_up_after": "--give-up-after",
    "endpoints": "--endpoints",
}
#: Run settings without a flag, and why.
NOT_ON_CLI: dict[str, str] = {
    **INTERNAL_SETTINGS,
    "api_key": "read from $OPENAI_API_KEY only: a key on the command line lands in the shell history",
}
#: Stop reasons that are limits, and the setting that raises each (``max_tokens``: the token budget's stop
#: reason in runs stored by older versions).
_LIMITS = {"max_cost": "max_cost", "token_budget": "token_budget", "max_tokens": "token_budget",
           "max_attempts": "max_attempts"}


def setting_hint(exc: PersonaGenError) -> str:
    """The CLI's addition to a core error that names settings: the flags that change them ('' if none)."""
    flags = list(dict.fromkeys(SETTING_FLAGS[s] for s in exc.settings if s in SETTING_FLAGS))
    return f" (set with {' / '.join(flags)})" if flags else ""


def generate(
    spec_file: Annotated[Path | None, typer.Option("--spec", help="Spec YAML file or saved spec name.")] = None,
    pack: Annotated[str | None, typer.Option("--pack", help="Shipped pack (default: japan).")] = None,
    emotions: Annotated[
        str | None, typer.Option("--emotions", help="Comma-separated subset of the spec's emotions.")
    ] = None,
    per_emotion: Annotated[
        int | None, typer.Option("--per-emotion", min=1, help="Texts per emotion (exact).")
    ] = None,
    method: Annotated[
        _Method,
        typer.Option("--method", help="Generation method: "
                     + "; ".join(f"{m}: {info.label}" for m, info in METHODS.items()) + "."),
    ] = _DEFAULT_METHOD,
    stages: Annotated[
        _Stages, typer.Option("--stages", help="Ablation: condition on stage 1, 1+2 or 1+2+3.")
    ] = _DEFAULT_STAGES,
    llm_validation: Annotated[
        bool | None,
        typer.Option("--llm-validation/--no-llm-validation",
                     help="Stage 1-3 LLM verdicts on or off. Default: on, unless the validator's measured "
                     "accuracy is at chance (the embedded models): then rules and tables only."),
    ] = None,
    no_validate: Annotated[
        bool, typer.Option("--no-validate", hidden=True, help="Same as --no-llm-validation.")
    ] = False,
    calibrate: Annotated[
        bool | None,
        typer.Option("--calibrate/--no-calibrate",
                     help="Time a 3-text run first when these settings were never timed on this machine "
                     "(default: only for the embedded backend; a remote one costs tokens)."),
    ] = None,
    backend: Annotated[
        _Backend | None,
        typer.Option("--backend", help="openai (any compatible endpoint) or local (embedded model)."),
    ] = None,
    local_model: Annotated[
        str | None, typer.Option("--local-model", help="Embedded model name or GGUF path.")
    ] = None,
    base_url: Annotated[
        list[str] | None,
        typer.Option("--base-url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL). Give it several "
                     "times to spread the calls over several endpoints (same model and key, weight 1 each)."),
    ] = None,
    endpoints_file: Annotated[
        Path | None,
        typer.Option("--endpoints", help="YAML or JSON file listing endpoints (url, model, key_env, weight, "
                     "max_concurrency, server, name); calls are spread over the healthy ones."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model for every role.")] = None,
    validator_model: Annotated[
        str | None, typer.Option("--validator-model", help="Model for stages 1-3.")
    ] = None,
    generator_model: Annotated[
        str | None, typer.Option("--generator-model", help="Model for stage 4.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, help="Most parallel LLM calls; the client adapts below it "
                     f"(default {_DEFAULT_CONCURRENCY})."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.1, help="Seconds per LLM call before it is retried (default: 60 for "
                     "remote APIs, 300 for a server on this machine or network, 600 for the embedded model)."),
    ] = None,
    structured: Annotated[
        _Structured | None,
        typer.Option("--structured", help="Structured-output mode to start from (auto, the default: by server "
                     "kind)."),
    ] = None,
    server: Annotated[
        _Server | None,
        typer.Option("--server", help="Kind of server behind the base URL, so schemas and grammars are sent in "
                     "its form (default auto: detected once)."),
    ] = None,
    rpm: Annotated[float | None, typer.Option("--rpm", min=0.001, help="Requests per minute at most.")] = None,
    tpm: Annotated[float | None, typer.Option("--tpm", min=0.001, help="Tokens per minute at most.")] = None,
    max_retries: Annotated[
        int | None, typer.Option("--max-retries", min=0, help="Retries of one LLM call (default 6).")
    ] = None,
    give_up_after: Annotated[
        int | None,
        typer.Option("--give-up-after", min=1, help="Failed calls in a row, none succeeding, before the run "
                     "gives up on the endpoint (default 12; four times as many for rate limits and timeouts)."),
    ] = None,
    validation_batch: Annotated[
        int | None, typer.Option("--validation-batch", min=1, max=64,
                                 help="Candidates judged in one validation call (default 8).")
    ] = None,
    texts_per_persona: Annotated[
        int | None, typer.Option("--texts-per-persona", min=1, max=100,
                                 help="Texts written per validated persona (default: the spec's).")
    ] = None,
    near_duplicate_threshold: Annotated[
        float | None,
        typer.Option("--near-duplicate-threshold", min=0.01, max=1.0,
                     help="Similarity at which a text counts as a near-duplicate of an accepted one (default 0.8)."),
    ] = None,
    verdict_reasons: Annotated[
        _Reasons | None,
        typer.Option("--verdict-reasons", help="Which stage 1-3 verdicts carry a reason: all (default, "
                     "reason first) or rejected (verdict first, a reason for implausible ones only)."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", min=0.0, max=2.0,
                     help="Sampling temperature of the texts (default: the spec's generation.temperature)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the sampling.")] = 0,
    db: _DbOpt = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue this run id to its quotas.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Stop (resumable) at this cost in USD.")
    ] = None,
    token_budget: Annotated[
        int | None, typer.Option("--token-budget", min=1, help="Stop (resumable) at this many tokens in all.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, hidden=True,
                                 help="Deprecated name of --token-budget.")
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", help="Stop after this many accepted + rejected candidates/outputs."),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option("--batch", help="Send the run as Batch API batches (/v1/files + /v1/batches) in waves, "
                     "at batch prices; --resume picks up a batch in flight."),
    ] = False,
    poll_interval: Annotated[
        float | None, typer.Option("--poll-interval", min=0.01, help="Seconds between batch status polls "
                                   "(batch mode; default 30).")
    ] = None,
) -> None:
    """Generate emotion texts with exact quotas into the run store, with a live progress bar.

    The API key is read from $OPENAI_API_KEY and never stored.

    Exit code: 0 when every quota is met, 3 when it stopped resumable (budget, attempts, Ctrl-C), 2 on errors.
    """
    import httpx

    from personagen_core.generation import throughput
    from personagen_core.generation.endpoints import describe_endpoints
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import (
        GenerationConfig,
        estimate_cost,
        resolve_validation,
        resume_generation,
        run_generation,
        stored_llm_settings,
        targets_of,
    )
    from personagen_core.local import LocalModelPool, prefer_passive_openmp
    from personagen_core.store import new_run_id

    prefer_passive_openmp()

    if max_tokens is not None:
        if token_budget is not None and token_budget != max_tokens:
            raise typer.BadParameter("give --token-budget only (--max-tokens is its deprecated name)",
                                     param_hint="--max-tokens")
        typer.echo("warning: --max-tokens is deprecated (it read like the per-call limit); use --token-budget",
                   err=True)
        token_budget = max_tokens
    store = _store(db)
    urls = list(base_url or [])
    llm_over = _llm_overrides(
        backend, urls[0] if len(urls) == 1 else None, model, local_model, validator_model, generator_model,
        concurrency,
    )
    llm_over.update(_endpoint_overrides(urls, endpoints_file))
    llm_over.update({k: v for k, v in (
        ("timeout", timeout), ("structured", structured.value if structured else None),
        ("server", server.value if server else None), ("rpm", rpm), ("tpm", tpm), ("max_retries", max_retries),
        ("give_up_after", give_up_after),
    ) if v is not None})
    if resume is not None:
        info = store.run(resume)
        if info["status"] == "done":
            typer.echo(f"run {resume} is already complete")
            return
        llm = stored_llm_settings(info, **llm_over)
        typer.echo(f"resuming run {resume} ({info['method']}, spec {info['spec_name']}) at {store.path}")
        if store.batch_run(resume) is not None:  # a Batch API run (generate --batch)
            from personagen_core.cli.batch_cmds import resume_batch

            _finish(resume_batch(store, resume, info, llm, poll_interval, _run_with_progress, max_cost=max_cost,
                                 token_budget=token_budget, max_attempts=max_attempts))
            return
        summary = _run_with_progress(
            lambda on_event, cancel: resume_generation(
                store,
                resume,
                llm=llm,
                on_event=on_event,
                cancel=cancel,
                max_cost=max_cost,
                token_budget=token_budget,
                max_attempts=max_attempts,
            ),
            info["target"],
        )
        _finish(summary)
        return
    if per_emotion is None:
        raise typer.BadParameter("--per-emotion is required for a new run", param_hint="--per-emotion")
    spec = _load_spec(spec_file, pack)
    config = GenerationConfig(
        method=method.value,
        per_emotion=per_emotion,
        seed=seed,
        stages=stages.value,
        validate=False if no_validate else llm_validation,
        emotions=[e.strip() for e in emotions.split(",") if e.strip()] if emotions else None,
        max_cost=max_cost,
        token_budget=token_budget,
        max_attempts=max_attempts,
        temperature=temperature,
        verdict_reasons=verdict_reasons.value if verdict_reasons else "all",
        texts_per_persona=texts_per_persona,
        **{k: v for k, v in (("validation_batch", validation_batch),
                             ("near_duplicate_threshold", near_duplicate_threshold)) if v is not None},
        llm=LLMSettings.from_env(**llm_over),
    )
    if batch:  # the Batch API's prices
        from personagen_core.generation.pricing import batch_price_table

        est = estimate_cost(spec, config, table=batch_price_table())
    else:
        est = estimate_cost(spec, config)
    where = describe_endpoints(config.llm)
    price = (
        f"${est.total_usd:.4f}"
        if est.total_usd is not None
        else f"unknown (no price for {', '.join(est.unknown_models)})"
    )
    typer.echo(
        f"estimate: ~{int(est.prompt_tokens + est.completion_tokens):,} tokens, cost {price} "
        f"({config.method}, {where}, model {config.llm.model_for('generator')})"
    )
    target = targets_of(spec, config)  # the quota the run will record (emotions checked against the spec)
    config = resolve_validation(config)
    if config.validation_policy and config.validation_policy.get("message") and METHODS[config.method].validate:
        typer.echo(config.validation_policy["message"])
    if batch:
        from personagen_core.cli.batch_cmds import start_batch

        run_id = new_run_id()
        typer.echo(f"run {run_id} -> {store.path}")
        _finish(start_batch(spec, config, store, run_id, poll_interval, _run_with_progress))
        return
    # The embedded model is loaded once for the calibration and the run.
    pool = LocalModelPool() if config.llm.backend == "local" else None

    def http() -> Any:
        return httpx.AsyncClient(transport=pool.transport(config.llm.local_model)) if pool else None

    try:
        book = throughput.ThroughputBook()
        timing = throughput.estimate_run_time(config, sum(target.values()), book)
        if timing is None and (calibrate or (calibrate is None and pool is not None)):
            typer.echo(f"time: these settings were never timed on this machine; timing "
                       f"{throughput.CALIBRATION_TEXTS} texts first ...", err=True)
            throughput.calibrate(spec, config, book=book, http_client=http())
            timing = throughput.estimate_run_time(config, sum(target.values()), book)
        typer.echo(f"time: {timing.message}" if timing else
                   "time: not measured on this machine yet (--calibrate times a 3-text run first)")
        run_id = new_run_id()
        typer.echo(f"run {run_id} -> {store.path}")
        timer = throughput.RunTimer()

        def start(on_event: Any, cancel: threading.Event) -> RunSummary:
            def both(ev: Any) -> None:
                timer.observe(ev)
                on_event(ev)

            return run_generation(spec, config, store, on_event=both, cancel=cancel, run_id=run_id,
                                  http_client=http())

        summary = _run_with_progress(start, target)
        book.record(throughput.profile_key(config), timer.measurement("run"))  # the next estimate learns
    finally:
        if pool is not None:
            pool.close()
    _finish(summary)


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M") if t else ""


@runs_app.command("list")
def runs_list(db: _DbOpt = None) -> None:
    """List runs, newest first: status, method, spec, accepted/target, tokens, cost."""
    from rich.console import Console
    from rich.table import Table

    store = _read_store(db)
    runs = store.list_runs() if store is not None else None
    if runs is None or runs.empty:
        typer.echo("no runs yet")
        return
    table = Table("run id", "created (UTC)", "status", "method", "spec", "texts", "tokens", "cost (USD)")
    for _, r in runs.iterrows():
        status = r["status"] + (f" ({r['stop_reason']})" if r["stop_reason"] else "")
        table.add_row(
            r["run_id"],
            _ts(r["created_at"]),
            status,
            r["method"],
            str(r["spec_name"]),
            f"{r['accepted']}/{r['target']}",
            f"{int(r['tokens']):,}",
            f"{float(r['cost']):.4f}",
        )
    Console(width=160).print(table)


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id.")], db: _DbOpt = None) -> None:
    """Show one run: settings, texts per emotion, funnel, rejections by reason, usage and cost per stage."""
    from rich.console import Console
    from rich.table import Table

    store = _read_store_for(run_id, db)
    info = store.run(run_id)
    console = Console(width=160)
    llm = info["config"].get("llm") or {}
    console.print(
        f"[bold]run {run_id}[/bold]: {info['status']}"
        + (f" ({info['stop_reason']}: {info['message']})" if info["stop_reason"] else "")
    )
    console.print(
        f"method {info['method']}, spec {info['spec_name']} (sha256 {str(info['spec_hash'])[:12]}), "
        f"backend {llm.get('backend')}, model {llm.get('model')}"
        + (f", per role {llm.get('models')}" if llm.get("models") else "")
        + f", sessions {info['sessions']}, created {_ts(info['created_at'])} UTC"
    )
    for ep in llm.get("endpoints") or []:  # stored redacted: URLs without credentials, key variable names only
        console.print(
            f"endpoint {ep.get('name') or ep['url']}: {ep['url']}, weight {ep.get('weight', 1):g}"
            + (f", model {ep['model']}" if ep.get("model") else "")
            + (f", key from ${ep['key_env']}" if ep.get("key_env") else "")
            + (f", max concurrency {ep['max_concurrency']}" if ep.get("max_concurrency") else ""),
            markup=False,
        )
    counts = store.accepted_counts(run_id)
    t = Table("emotion", "accepted", "target", title="texts")
    for e, n in info["target"].items():
        t.add_row(e, str(counts.get(e, 0)), str(n))
    console.print(t)
    funnel = store.funnel(run_id)
    counted = (*FUNNEL_VERDICTS, "cached")
    blank = [""] * (len(counted) - 1)
    f = Table("step", *counted, title="funnel")
    f.add_row("sampled (passed rules)", str(funnel["sampled"]), *blank)
    for stage, v in funnel["stages"].items():
        f.add_row(f"stage {stage}", *(str(v.get(k, 0)) for k in counted))
    f.add_row("stage 4 outputs", f"{funnel['accepted']} accepted of {funnel['generated']}", *blank)
    # every output check's rejections, most frequent first (truncated, too_long, off_language, ...)
    for reason, n in sorted(funnel["output_rejections"].items(), key=lambda kv: -kv[1]):
        f.add_row(f"  rejected: {reason}", str(n), *blank)
    console.print(f)
    rej = store.rejection_counts(run_id)
    r = Table("reason", "count", title="rejections")
    for k, v in rej.items():
        r.add_row(k, str(v))
    console.print(r if rej else "rejections: none")
    usage = store.usage(run_id)
    u = Table(
        "stage",
        "role",
        "model",
        "calls",
        "failed",
        "prompt tok",
        "completion tok",
        "mean latency s",
        "cost (USD)",
        title="usage",
    )
    for _, row in usage.iterrows():
        u.add_row(
            str(row["stage"]),
            str(row["role"]),
            str(row["model"]),
            str(row["calls"]),
            str(row["failed"]),
            f"{int(row['prompt_tokens']):,}",
            f"{int(row['completion_tokens']):,}",
            f"{float(row['mean_latency_s'] or 0):.3f}",
            f"{float(row['cost']):.4f}",
        )
    console.print(u)
    per_endpoint = store.endpoint_usage(run_id)
    if not per_endpoint.empty:
        e = Table("endpoint", "calls", "failed", "tokens", "cost (USD)", "last error", title="usage per endpoint")
        for _, row in per_endpoint.iterrows():
            e.add_row(
                str(row["endpoint"]),
                str(row["calls"]),
                str(row["failed"]),
                f"{int(row['prompt_tokens']) + int(row['completion_tokens']):,}",
                f"{float(row['cost']):.4f}",
                str(row["last_error"])[:120] if isinstance(row["last_error"], str) else "",
            )
        console.print(e)
    tot = store.totals(run_id)
    console.print(
        f"total: {tot['calls']} calls ({tot['failed_calls']} failed attempts), {tot['tokens']:,} tokens, "
        f"${tot['cost']:.4f}"
    )
    console.print(_estimate_line(store.estimate(run_id), tot, done=info["status"] == "done"))
    size = store.size()
    if size["bytes_per_1000_texts"] is not None:
        console.print(
            f"store {store.path}: {size['bytes'] / 1e6:,.1f} MB for {size['texts']:,} texts in {size['runs']} "
            f"run(s), {size['bytes_per_1000_texts'] / 1e6:,.2f} MB per 1,000 texts (every run's personas, "
            "verdicts, calls and events included)",
            markup=False,
        )
    from personagen_core.cli.batch_cmds import batch_table

    batch_table(store, run_id, console)


def _estimate_line(est: dict[str, Any] | None, tot: dict[str, Any], *, done: bool) -> str:
    """``estimate: ... actual: ...`` for ``runs show``: the pre-run estimate against what the run used."""
    if est is None:
        return "estimate: none stored (run started by an older version)"
    tokens = int(est["prompt_tokens"] + est["completion_tokens"])
    actual = "actual" if done else "so far (run not complete)"
    parts = [f"estimate: ~{tokens:,} tokens"]
    ratio = ""
    if est.get("total_usd") is not None:
        parts.append(f"${est['total_usd']:.4f}")
        if est["total_usd"] > 0:
            ratio = f", {tot['cost'] / est['total_usd']:.2f}x the estimate"
    else:
        parts.append(f"cost unknown (no price for {', '.join(est.get('unknown_models') or [])})")
    tok_ratio = f"; tokens {tot['tokens'] / tokens:.2f}x" if tokens else ""
    return f"{', '.join(parts)}; {actual}: {tot['tokens']:,} tokens, ${tot['cost']:.4f}{ratio}{tok_ratio}"


def export(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    fmt: Annotated[_Format, typer.Option("--format", help="Output format.")] = _Format.csv,
    output: Annotated[Path, typer.Option("-o", "--output", help="File (or folder for hf) to write.")] = Path(
        "texts.csv"
    ),
    db: _DbOpt = None,
) -> None:
    """Export a run's texts with emotion, persona and scenario columns (hf: a datasets folder + card)."""
    from personagen_core.export import export_run

    store = _read_store_for(run_id, db)
    path = export_run(store, run_id, fmt.value, output)
    typer.echo(f"wrote {sum(store.accepted_counts(run_id).values())} texts to {path}")


def register(app: typer.Typer) -> None:
    """Add ``generate``, ``runs list|show`` and ``export`` to the ``personagen`` app."""
    app.command("generate")(generate)
    app.add_typer(runs_app, name="runs")
    app.command("export")(export)

"""Runs in the run store: pickers, text tables and filters, LLM backend settings, background generation
threads with live progress, and exports.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from personagen_core.generation import vocabulary
from personagen_core.generation.vocabulary import DEFAULT_CONCURRENCY, DEFAULT_MODEL, ROLES
from ui.probabilities import redact
from ui.settings_fields import stop_hint
from ui.state import _store_for, error_boundary, get_store, home_dir, keep, kept, set_kept, store_path

__all__ = [
    "BACKENDS",
    "ENDPOINT_COLUMNS",
    "ROLES",
    "RunHandle",
    "any_run_active",
    "attribute_filters",
    "batch_table",
    "endpoints_editor",
    "endpoints_from_rows",
    "export_cached",
    "filter_frame",
    "http_client_for",
    "llm_settings",
    "llm_settings_form",
    "local_pool",
    "pd_series",
    "resume_limits",
    "resume_run",
    "run_details",
    "run_picker",
    "run_registry",
    "run_status",
    "run_texts",
    "select_run",
    "show_run_progress",
    "start_generation",
    "text_card",
    "texts_with_scores",
    "verdict_filters",
]


@dataclass
class RunHandle:
    """A generation running in a background thread of this server process."""

    run_id: str
    thread: threading.Thread
    cancel: threading.Event
    last_event: Any = None
    error: str | None = None
    summary: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Whether the thread is still running."""
        return self.thread.is_alive()


@st.cache_resource(show_spinner=False)
def run_registry() -> dict[str, RunHandle]:
    """Process-wide registry of background runs keyed by run id (shared by every session and tab)."""
    return {}


def _run_label(row: Any) -> str:
    """``run id · method · status · accepted/target texts``."""
    parts = [str(row.get("run_id", ""))]
    for col in ("method", "status"):
        if row.get(col):
            parts.append(str(row[col]))
    if row.get("target") is not None:
        parts.append(f"{int(row.get('accepted') or 0)}/{int(row['target'])} texts")
    return " · ".join(parts)


def run_picker(label: str = "Run", *, key: str = "run_pick", multiple: bool = False) -> Any:
    """Select one run (or several) from the run store; stops the page with a hint when there is none.

    Every single-run picker shows the same kept choice ("the run I am looking at"), on every page and
    after a reload; launching a run selects it. A run just launched from this session is listed as
    "starting" until its thread has created it in the store, so a launch that fails at once is visible.
    """
    runs = get_store().list_runs()
    labels = {str(r["run_id"]): _run_label(r) for r in runs.to_dict("records")}
    launched = st.session_state.get("last_run_id")
    if launched and launched not in labels and launched in run_registry():
        labels = {launched: f"{launched} · starting", **labels}
    if not labels:
        st.info("No runs in the run store yet: launch a generation on the **Generate** page.")
        st.stop()
    ids = list(labels)
    if multiple:
        default = [launched] if launched in labels else ids[:1]
        return st.multiselect(label, ids, format_func=labels.get, **keep(key, default, options=ids))
    return st.selectbox(
        label, ids, format_func=labels.get, **keep("run", ids[0], options=ids, key=f"keep_run_{key}")
    )


def select_run(run_id: str) -> None:
    """Make ``run_id`` the run shown by every single-run picker (e.g. right after launching it)."""
    st.session_state["last_run_id"] = run_id
    set_kept("run", run_id)


@st.cache_data(show_spinner=False, max_entries=32, ttl=2)
def _texts_cached(path: str, run_id: str) -> Any:
    return _store_for(path).texts(run_id)


def run_texts(run_id: str) -> Any:
    """Accepted texts of a run (cached two seconds, so a running generation shows up as it grows)."""
    get_store()
    return _texts_cached(str(store_path()), run_id)


def filter_frame(
    df: Any,
    *,
    query: str = "",
    emotions: Sequence[str] | None = None,
    values: dict[str, Sequence[str]] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    verdicts: dict[str, Sequence[str]] | None = None,
) -> Any:
    """Rows of ``df`` whose text contains ``query`` (case-insensitive), whose emotion is in ``emotions``,
    whose columns take one of ``values[column]``, whose numeric columns lie within ``ranges[column]`` and
    whose ``verdict_stage{s}`` columns take one of ``verdicts[column]`` (``NOT_VALIDATED`` matches None)."""
    mask = df.index == df.index  # all True, same index
    for col, allowed in (verdicts or {}).items():
        mask &= df[col].astype(object).where(df[col].notna(), _NOT_VALIDATED).isin(list(allowed)).to_numpy()
    if query:
        mask &= df["text"].astype(str).str.contains(query, case=False, regex=False).to_numpy()
    if emotions is not None:
        mask &= df["emotion"].astype(str).isin(list(emotions)).to_numpy()
    for col, allowed in (values or {}).items():
        mask &= df[col].astype(str).isin([str(a) for a in allowed]).to_numpy()
    for col, (lo, hi) in (ranges or {}).items():
        mask &= df[col].between(lo, hi).fillna(False).to_numpy()
    return df[mask]


_ID_COLUMNS = {"text_id", "run_id", "text", "emotion", "persona_id", "attempt"}
_NOT_VALIDATED = "not validated"
#: Per-stage verdict columns of ``RunStore.texts`` (filtered by :func:`verdict_filters`, not as attributes).
_VERDICT_PREFIXES = ("verdict_stage", "reason_stage")


def verdict_filters(df: Any) -> dict[str, list[str]]:
    """One multiselect per stage whose verdicts ``df`` carries (``verdict_stage{s}`` columns); returns the
    chosen verdicts per column for :func:`filter_frame` (``"not validated"`` stands for a missing verdict)."""
    cols = [c for c in df.columns if c.startswith("verdict_stage") and df[c].notna().any()]
    if not cols:
        st.caption("No stage verdicts in this run (its method or ablation did not validate personas).")
        return {}
    chosen: dict[str, list[str]] = {}
    for col, box in zip(cols, st.columns(len(cols)), strict=True):
        stage = col.removeprefix("verdict_stage")
        options = sorted(df[col].dropna().astype(str).unique())
        if df[col].isna().any():
            options.append(_NOT_VALIDATED)
        chosen[col] = box.multiselect(
            f"Stage {stage} verdict", options,
            **keep(f"verdict_filter_{stage}", options, options=options, key=f"verdict_filter_{stage}"),
        )
    return chosen


def attribute_filters(df: Any) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
    """Widgets to filter ``df`` by any categorical column (attribute, scenario, verdict, method) or any
    numeric column (judge scores); returns ``(values, ranges)`` for :func:`filter_frame`."""
    import pandas as pd

    categorical = [
        c
        for c in df.columns
        if c not in _ID_COLUMNS
        and not c.startswith(_VERDICT_PREFIXES)
        and not pd.api.types.is_numeric_dtype(df[c])
        and df[c].nunique() <= 200
    ]
    numeric = [
        c
        for c in df.columns
        if c not in _ID_COLUMNS
        and not c.startswith(_VERDICT_PREFIXES)
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    values: dict[str, list[str]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    with st.expander("Filter by attribute or score"):
        columns = categorical + numeric
        for col in st.multiselect("Columns", columns, **keep("filter_columns", [], options=columns)):
            if col in numeric:
                lo, hi = float(df[col].min()), float(df[col].max())
                if lo < hi:
                    kept_range = kept(f"filter_range_{col}")
                    if not (isinstance(kept_range, (list, tuple)) and lo <= kept_range[0] <= kept_range[1] <= hi):
                        set_kept(f"filter_range_{col}", (lo, hi))
                    ranges[col] = st.slider(col, lo, hi, **keep(f"filter_range_{col}", (lo, hi)))
            else:
                options = sorted(df[col].astype(str).unique())
                values[col] = st.multiselect(col, options, **keep(f"filter_values_{col}", options, options=options))
    return values, ranges


BACKENDS = {"local": "Embedded local model", "openai": "OpenAI", "compatible": "OpenAI-compatible server"}


#: Labels of the core's verdict-reason modes (``vocabulary.VERDICT_REASONS``).
VERDICT_REASONS = {"all": "every verdict (reason first, as in the paper)",
                   "rejected": "rejections only (verdict first)"}
assert set(VERDICT_REASONS) == set(vocabulary.VERDICT_REASONS)


def _default_backend() -> str:
    if os.environ.get("OPENAI_BASE_URL"):
        return "compatible"
    if os.environ.get("OPENAI_API_KEY"):
        return "openai"
    return "local"


def llm_settings() -> Any:
    """``LLMSettings`` from the Generate page's kept values (or the environment when they were never set).

    The API key comes from this session's memory (kept ``session_only``) or ``OPENAI_API_KEY``; it is never
    stored anywhere else.
    """
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.local import DEFAULT_MODEL as DEFAULT_LOCAL

    backend = kept("backend", _default_backend())
    common: dict[str, Any] = {"concurrency": int(kept("concurrency", DEFAULT_CONCURRENCY)),
                              "timeout": float(kept("timeout", 0.0) or 0) or None}  # 0: fits the backend
    models = {r: str(kept(f"model_{r}")).strip() for r in ROLES if str(kept(f"model_{r}") or "").strip()}
    if backend == "local":
        return LLMSettings(backend="local", local_model=kept("local_model", DEFAULT_LOCAL), models=models,
                           **common)
    env = {"OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "")}
    base_url = None
    endpoints = None
    if backend == "compatible":
        base_url = (kept("base_url") or os.environ.get("OPENAI_BASE_URL") or "").strip() or None
        if kept("several_endpoints", False):
            endpoints = endpoints_from_rows(kept("endpoint_rows") or [])
    model = str(kept("model") or "").strip() or None
    # Endpoint limits (0 / "auto": the settings' own defaults); they matter for remote endpoints only.
    limits = {
        "server": kept("server"),
        "structured": kept("structured"),
        "rpm": float(kept("rpm", 0) or 0) or None,
        "tpm": float(kept("tpm", 0) or 0) or None,
        "max_retries": kept("max_retries"),
        "give_up_after": kept("give_up_after"),
    }
    return LLMSettings.from_env(
        env,
        backend="openai",
        base_url=base_url,
        endpoints=endpoints,
        api_key=kept("api_key") or None,
        model=model,
        models=models,
        **common,
        **{k: v for k, v in limits.items() if v is not None},
    )


def _local_model_quality() -> None:
    """The embedded models' measured quality, shown where the user picks one (never hidden)."""
    from personagen_core.local import model_quality, models_overview

    with st.expander("Measured quality of the embedded models", expanded=True):
        st.dataframe(models_overview(), hide_index=True, width="stretch")
        q = model_quality()
        if q:
            st.caption(
                f"Measured {q.get('date', '?')[:10]} with `{q.get('command', '?')}`. Validator accuracy is on "
                f"a {q.get('fixture_size', '?')}-persona fixture, half of them clearly implausible: about 50 % "
                "means the model judges no better than chance. Emotion match is a CARER-trained classifier's "
                "agreement with the requested emotion. '-' = not measured yet."
            )
        else:
            st.caption("No quality figures measured yet: run bench/bench_local_quality.py.")


def llm_settings_form() -> Any:
    """Backend, endpoint, key and models (every value kept across pages and reloads, except the key,
    which stays in this session's memory); returns the resulting ``LLMSettings``."""
    from personagen_core.local import DEFAULT_MODEL as DEFAULT_LOCAL
    from personagen_core.local import MODELS

    backend = st.radio(
        "Backend", list(BACKENDS), format_func=BACKENDS.get, horizontal=True,
        **keep("backend", _default_backend(), options=BACKENDS),
    )
    if backend == "local":
        st.selectbox(
            "Embedded model", list(MODELS), format_func=lambda k: MODELS[k].label,
            **keep("local_model", DEFAULT_LOCAL, options=MODELS),
        )
        st.caption("Runs in this process on the CPU; no network, no key, no cost.")
        _local_model_quality()
    else:
        several = backend == "compatible" and st.toggle(
            "Several endpoints", help="Spread the calls over several OpenAI-compatible endpoints (replicas, "
            "accounts): each gets its own adaptive concurrency, and one that keeps failing is taken out and "
            "probed again later.", **keep("several_endpoints", False))
        if several:
            endpoints_editor()
        elif backend == "compatible":
            st.text_input("Base URL", placeholder="http://localhost:8000/v1",
                          **keep("base_url", os.environ.get("OPENAI_BASE_URL", "")))
        st.text_input("Model", **keep("model", DEFAULT_MODEL))
        env_key = (
            " (leave empty to use OPENAI_API_KEY from the environment)"
            if os.environ.get("OPENAI_API_KEY")
            else ""
        )
        st.text_input(
            f"API key{env_key}",
            type="password",
            help="Kept in this browser session's memory only: never saved, logged or exported.",
            **keep("api_key", "", session_only=True),
        )
    with st.expander("Model per stage (optional)"):
        for role in ROLES:
            st.text_input(f"{role.capitalize()} model", placeholder="same as above", **keep(f"model_{role}", ""))
        st.selectbox(
            "Reasons of validation verdicts", list(VERDICT_REASONS), format_func=VERDICT_REASONS.get,
            help="A one-sentence reason before every verdict (as in the paper), or the verdict first and a "
            "reason after 'implausible' only: fewer tokens, but on the embedded 1.5B model it rejected a "
            "third of the candidates at random (docs/LOCAL_LLM.md).",
            **keep("verdict_reasons", "all", options=VERDICT_REASONS),
        )
        st.number_input(
            "Timeout per call (seconds, 0 = automatic)", 0.0, 7200.0, step=30.0,
            help="Automatic: 60 s for remote APIs, 300 s for a server on this machine or network, 600 s for "
            "the embedded model. Raise it for a slow local server.",
            **keep("timeout", 0.0),
        )
    if backend != "local":
        _endpoint_limits_form()
    return llm_settings()


def _endpoint_limits_form() -> None:
    """Rate limits, retries and the server's kind (defaults: the core's ``LLMSettings`` defaults)."""
    from personagen_core.generation.llm import LLMSettings

    defaults = {k: f.default for k, f in LLMSettings.model_fields.items()}
    with st.expander("Endpoint limits (optional)"):
        a, b = st.columns(2)
        a.number_input("Requests per minute (0 = no cap)", 0.0, 1e7, step=60.0, **keep("rpm", 0.0))
        b.number_input("Tokens per minute (0 = no cap)", 0.0, 1e10, step=10_000.0, **keep("tpm", 0.0))
        a.number_input("Retries per call", 0, 100, **keep("max_retries", defaults["max_retries"]))
        b.number_input("Give up after failed calls", 1, 10_000,
                       help="Failed calls in a row, none succeeding, before the run gives up on the endpoint "
                       "(four times as many for rate limits and timeouts).",
                       **keep("give_up_after", defaults["give_up_after"]))
        a.selectbox("Server kind", list(vocabulary.SERVER_KINDS),
                    help="So that schemas and grammars are sent in the form the server understands (auto: "
                    "detected once).", **keep("server", defaults["server"], options=vocabulary.SERVER_KINDS))
        b.selectbox("Structured output", list(vocabulary.STRUCTURED_MODES),
                    help="The structured-output mode to start from (auto: by server kind).",
                    **keep("structured", defaults["structured"], options=vocabulary.STRUCTURED_MODES))


#: Columns of the Generate page's endpoints table (an endpoint pool's settings, without keys).
ENDPOINT_COLUMNS = ("url", "model", "key_env", "weight", "max_concurrency")


def _clean(value: Any) -> Any:
    """A table cell as a plain value: blank strings and NaN become None."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float) and math.isnan(value):  # an empty number cell
        return None
    return value


def endpoints_from_rows(rows: Sequence[dict[str, Any]]) -> list[Any] | None:
    """Validated endpoints from the endpoints table's rows (rows without a URL are skipped; None when no
    row has one). Errors name the row and the field (:func:`~personagen_core.generation.endpoints.parse_endpoints`)."""
    from personagen_core.generation.endpoints import parse_endpoints

    entries = []
    for row in rows:
        entry = {k: _clean(row.get(k)) for k in ENDPOINT_COLUMNS}
        if entry["url"] is None:
            continue
        if entry["max_concurrency"] is not None:
            entry["max_concurrency"] = int(entry["max_concurrency"])
        entries.append({k: v for k, v in entry.items() if v is not None})
    return parse_endpoints(entries, source="endpoints table") if entries else None


def endpoints_editor() -> None:
    """A small editable table of endpoints (URL, model, key variable, weight, max concurrency), kept across
    pages and reloads. It holds no keys: *Key variable* names the environment variable holding a key."""
    import pandas as pd

    rows = kept("endpoint_rows") or [
        {"url": kept("base_url") or os.environ.get("OPENAI_BASE_URL", ""), "model": None, "key_env": None,
         "weight": 1.0, "max_concurrency": None}
    ]
    rev = int(st.session_state.get("endpoint_rows_rev", 0))
    edited = st.data_editor(
        pd.DataFrame(rows, columns=list(ENDPOINT_COLUMNS)).astype({"url": "object", "model": "object",
                                                                   "key_env": "object"}),
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        key=f"endpoints_editor:{rev}",
        column_config={
            "url": st.column_config.TextColumn("URL", help="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1"),
            "model": st.column_config.TextColumn("Model", help="Empty: the model below."),
            "key_env": st.column_config.TextColumn(
                "Key variable", help="Name of the environment variable holding this endpoint's API key (never "
                "the key itself). Empty: the API key below."),
            "weight": st.column_config.NumberColumn("Weight", min_value=0.001, default=1.0,
                                                    help="Share of the calls when every endpoint has room."),
            "max_concurrency": st.column_config.NumberColumn(
                "Max concurrency", min_value=1, max_value=1024, step=1, help="Empty: the run's concurrency."),
        },
    )
    records = [{k: _clean(v) for k, v in r.items()} for r in edited.to_dict("records")]
    if records != [{k: _clean(r.get(k)) for k in ENDPOINT_COLUMNS} for r in rows]:
        set_kept("endpoint_rows", records)
        st.session_state["endpoint_rows_rev"] = rev + 1  # a fresh editor over the kept rows
        st.rerun()
    st.caption("Each endpoint keeps its own adaptive concurrency and server kind; usage is recorded per endpoint.")


@st.cache_resource(show_spinner=False)
def local_pool() -> Any:
    """The embedded-model pool of this server process (models load once, on first use)."""
    from personagen_core.local import LocalModelPool

    return LocalModelPool(home=home_dir())


def http_client_for(settings: Any) -> Any:
    """For the embedded backend, an ``httpx.AsyncClient`` over the process-wide model pool; else None."""
    if settings.backend != "local":
        return None
    import httpx

    return httpx.AsyncClient(transport=local_pool().transport(settings.local_model))


def _run_in_thread(handle: RunHandle, call: Any, secrets: list[str]) -> None:
    from personagen_core.errors import PersonaGenError

    try:
        handle.summary = call()
    except PersonaGenError as exc:
        handle.error = redact(str(exc), secrets)
    except Exception as exc:  # shown on the page; the run stays in the store and can be resumed
        handle.error = redact(f"unexpected error ({type(exc).__name__}): {exc}", secrets)


def _secrets_of(settings: Any) -> list[str]:
    from personagen_core.generation.endpoints import endpoint_secrets

    key = getattr(settings, "api_key", None)
    return ([key.get_secret_value()] if key is not None else []) + endpoint_secrets(settings)


def _start(run_id: str, call: Any, settings: Any, cancel: threading.Event) -> str:
    handle = RunHandle(run_id=run_id, thread=threading.Thread(target=lambda: None), cancel=cancel)
    handle.thread = threading.Thread(
        target=_run_in_thread,
        args=(handle, call, _secrets_of(settings)),
        name=f"personagen-run-{run_id}",
        daemon=True,
    )
    run_registry()[run_id] = handle
    handle.thread.start()
    select_run(run_id)
    return run_id


def start_generation(spec: Any, config: Any, *, batch_poll_s: float | None = None) -> str:
    """Start ``pipeline.run_generation`` in a background thread; returns the new run's id at once. With
    ``batch_poll_s`` the run goes through the endpoint's Batch API instead (``generation.batch``), its
    batches polled every ``batch_poll_s`` seconds."""
    from personagen_core.generation.pipeline import run_generation
    from personagen_core.store import new_run_id

    store, run_id, cancel = get_store(), new_run_id(), threading.Event()
    if batch_poll_s is not None:
        from personagen_core.generation.batch import BatchOptions, run_batch_generation

        options = BatchOptions(poll_interval=batch_poll_s)
        return _start(run_id, lambda: run_batch_generation(spec, config, store, options=options, cancel=cancel,
                                                           run_id=run_id), config.llm, cancel)

    def call() -> Any:
        from personagen_core.generation import throughput

        timer = throughput.RunTimer()  # the run's own timing feeds the next time estimate
        try:
            return run_generation(spec, config, store, cancel=cancel, run_id=run_id,
                                  http_client=http_client_for(config.llm), on_event=timer.observe)
        finally:  # a failed or stopped run's texts are timed too (a run without texts records nothing)
            throughput.ThroughputBook().record(throughput.profile_key(config), timer.measurement("run"))

    return _start(run_id, call, config.llm, cancel)


def resume_limits() -> dict[str, Any]:
    """The limits set on the Generate page (0 = not set), as resume overrides: a run stopped at its cost
    limit resumes with the page's larger one (the CLI's ``--resume RUN --max-cost N``)."""
    limits = {"max_cost": float(kept("max_cost", 0) or 0), "token_budget": int(kept("token_budget", 0) or 0),
              "max_attempts": int(kept("max_attempts", 0) or 0)}
    return {k: v for k, v in limits.items() if v}


def resume_run(run_id: str, settings: Any) -> str:
    """Resume an interrupted run in a background thread with this session's LLM settings."""
    from personagen_core.generation.pipeline import resume_generation

    store, cancel = get_store(), threading.Event()
    if store.batch_run(run_id) is not None:  # a Batch API run: poll its batch in flight, then go on
        from personagen_core.generation.batch import resume_batch_generation

        return _start(run_id, lambda: resume_batch_generation(store, run_id, llm=settings, cancel=cancel),
                      settings, cancel)

    def call() -> Any:
        return resume_generation(
            store, run_id, llm=settings, cancel=cancel, http_client=http_client_for(settings), **resume_limits()
        )

    return _start(run_id, call, settings, cancel)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_status(run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None, RunHandle | None]:
    """The run's store row, its latest progress event and this process's thread handle (if any)."""
    store = get_store()
    return store.run(run_id), store.latest_event(run_id), run_registry().get(run_id)


_STAGE_WORK = {1: "validating stage 1 personas", 2: "validating stage 2 personas",
               3: "validating stage 3 scenarios", 4: "generating texts"}


def _stage_line(last: dict[str, Any] | None, alive: bool, backend: str | None) -> str:
    """What the run is doing now, from its latest recorded LLM call."""
    if last is None:
        slow = " (the embedded model loads on first use)" if backend == "local" else ""
        return f"Starting: waiting for the first LLM answer{slow}." if alive else "No LLM call recorded."
    work = _STAGE_WORK.get(int(last["stage"]) if last.get("stage") is not None else 0, "calling the LLM")
    return f"{'Now' if alive else 'Last'}: {work} ({last.get('role') or 'llm'} · {last.get('model') or '?'})."


def show_run_progress(run_id: str) -> None:
    """Progress of one run read from the run store: what it is doing (stage), calls done and failing with
    the last error, the newest accepted texts, per-emotion counts, rejections, usage and ETA; cancel while
    it runs here, resume when it was interrupted. A launch that failed before the run was stored shows
    its error."""
    import pandas as pd

    from personagen_core.errors import StoreError

    store = get_store()
    handle = run_registry().get(run_id)
    try:
        info = store.run(run_id)
    except StoreError:
        if handle is not None and handle.error:
            st.error(f"The run could not start: {handle.error}")
        elif handle is not None:
            st.info("Starting the run…")
        else:
            st.warning(f"Run {run_id} is not in the run store.")
        return
    event = store.latest_event(run_id)
    alive = handle is not None and handle.alive
    accepted = store.accepted_counts(run_id)
    target = info["target"]
    done, total = sum(min(accepted.get(e, 0), n) for e, n in target.items()), sum(target.values())
    status = info["status"]
    # The store shows a running run whose lease holder is gone (server restart, crash) as interrupted.
    stale = status == "interrupted"
    shown = status
    st.progress(done / total if total else 0.0, text=f"{done} / {total} texts · {shown}")
    totals = store.totals(run_id)
    backend = ((info.get("config") or {}).get("llm") or {}).get("backend")
    if status == "running" or alive:
        st.caption(_stage_line(store.last_call(run_id), alive, backend))
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Accepted", f"{done}/{total}")
    c2.metric("LLM calls", f"{totals['calls']:,}", help="HTTP attempts, retries included")
    c3.metric("Failing", f"{totals['failed_calls']:,}")
    c4.metric("Tokens", f"{totals['tokens']:,}")
    eta = event.get("eta_s") if event and alive else None
    c5.metric("ETA", _fmt_seconds(eta) if eta is not None else ("estimating…" if alive else "–"),
              help="Estimated once texts are being accepted.")
    st.caption(f"Cost so far: ${totals['cost']:.4f}")
    if totals["failed_calls"]:
        last_err = store.last_call(run_id, failed=True)
        if last_err and last_err.get("error"):
            stage = _STAGE_WORK.get(int(last_err["stage"] or 0), "a call")
            st.warning(
                f"{totals['failed_calls']} call(s) failed (retried where possible). Latest error, "
                f"while {stage}: {redact(str(last_err['error']), _secrets_of(llm_settings()))}"
            )
    newest = store.latest_texts(run_id, 5)
    if newest:
        st.caption("Newest accepted texts")
        st.dataframe(
            pd.DataFrame(newest)[["emotion", "text"]], hide_index=True, width="stretch",
            key=f"tail_{run_id}_{len(newest)}_{newest[0]['text_id']}",
        )
    per = pd.DataFrame(
        {"accepted": [accepted.get(e, 0) for e in target], "target": list(target.values())},
        index=list(target),
    )
    rejections = store.rejection_counts(run_id)
    left, right = st.columns(2)
    left.caption("Per emotion")
    left.dataframe(per, key=f"per_emotion_{run_id}")
    right.caption("Rejections by reason")
    if rejections:
        right.dataframe(pd.Series(rejections, name="count"), key=f"rejections_{run_id}")
    else:
        right.write("none")
    live = (event or {}).get("endpoints") if alive or status == "running" else None
    if live:  # where the calls go now: each endpoint's state and adapted limit
        st.caption("Endpoints now")
        st.dataframe(
            pd.DataFrame(live)[["label", "state", "in_flight", "concurrency_limit", "picks", "times_out",
                                "probe_in_s", "server_kind", "last_error"]],
            hide_index=True, width="stretch", key=f"endpoints_now_{run_id}",
        )
    per_endpoint = store.endpoint_usage(run_id)
    if not per_endpoint.empty:  # a run over several endpoints: calls, tokens, cost and failures of each
        st.caption("Usage per endpoint")
        st.dataframe(per_endpoint, hide_index=True, width="stretch", key=f"per_endpoint_{run_id}")
    batch_table(run_id, event)
    if handle is not None and handle.error:
        st.error(f"The run stopped: {handle.error}")
    elif status == "failed":
        st.error(f"The run failed: {info.get('message') or info.get('stop_reason') or 'no reason recorded'}")
    elif info.get("message") and status not in ("running", "done"):
        st.warning(f"{status}: {info['message']}.{stop_hint(info.get('stop_reason'))}")
    if alive:
        if st.button("Cancel", key=f"cancel_{run_id}", icon=":material/stop_circle:"):
            handle.cancel.set()
            st.toast("Cancelling: calls in flight finish, then the run stops (resumable).")
    elif status in ("stopped", "failed", "cancelled") or stale:
        if st.button("Resume", key=f"resume_{run_id}", icon=":material/play_arrow:"):
            with error_boundary("resuming the run"):
                resume_run(run_id, llm_settings())
                st.rerun()


def _changes_frame(changes: Sequence[Any]) -> Any:
    import pandas as pd

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    return pd.DataFrame(
        [{"field": c.path, "change": c.kind, "before": cell(c.before), "after": cell(c.after)} for c in changes],
        columns=["field", "change", "before", "after"],
    )


@st.cache_data(show_spinner=False, max_entries=64)
def _run_diff(path: str, before: str, after: str) -> dict[str, Any]:
    """``diff_runs`` of two stored runs (a run's spec and settings never change once it is created)."""
    from personagen_core.diff import diff_runs

    store = _store_for(path)
    return diff_runs(store.run(before), store.run(after))


def batch_table(run_id: str, event: dict[str, Any] | None = None) -> None:
    """A Batch API run's batches (wave, step, status, counts), what it is doing now and its surplus."""
    store = get_store()
    jobs = store.batch_jobs(run_id)
    if jobs.empty:
        return
    st.caption("Batches (Batch API)" + (f" · {event['message']}" if event and event.get("message") else ""))
    cols = ["wave", "step", "attempt", "status", "batch_id", "requests", "completed", "failed", "message"]
    st.dataframe(jobs[cols], hide_index=True, width="stretch", key=f"batches_{run_id}_{len(jobs)}")
    surplus = store.surplus_counts(run_id)
    st.caption("Surplus texts (kept, not delivered): "
               + (", ".join(f"{e} {n}" for e, n in surplus.items()) if surplus else "none"))


def run_details(run_id: str) -> None:
    """The exact spec and settings a run was launched with, and what differs from another run."""
    import json

    from personagen_core.errors import StoreError

    store = get_store()
    try:
        info = store.run(run_id)
    except StoreError:
        return
    with st.expander("Spec and settings of this run"):
        st.caption(
            f"Method `{info['method']}` · spec `{info.get('spec_name')}` (sha256 "
            f"{str(info.get('spec_hash') or '')[:12]}) · target {json.dumps(info['target'])}"
        )
        st.json(info.get("config") or {}, expanded=1)
        if info.get("spec_yaml"):
            st.download_button(
                "Download this run's spec (YAML)", info["spec_yaml"], file_name=f"{run_id}_spec.yaml",
                mime="application/x-yaml", key=f"run_spec_dl_{run_id}", icon=":material/download:",
            )
    runs = store.list_runs()
    others = [r for r in runs["run_id"].astype(str) if r != run_id]
    with st.expander("Compare with another run"):
        if not others:
            st.caption("No other run to compare with yet.")
            return
        other = st.selectbox(
            "Compare with", others, **keep("compare_run", others[0], options=others)
        )
        diff = _run_diff(str(store_path()), other, run_id)
        st.caption(f"From run `{other}` (before) to run `{run_id}` (after).")
        for part, title in (("config", "Settings"), ("target", "Target"), ("spec", "Spec")):
            changes = diff[part]
            if changes:
                st.markdown(f"**{title}**: {len(changes)} change(s)")
                st.dataframe(_changes_frame(changes), hide_index=True, width="stretch",
                             key=f"diff_{part}_{other}_{run_id}")
            else:
                st.markdown(f"**{title}**: identical")


@st.cache_data(show_spinner=False, max_entries=16)
def _export_cached(path: str, run_id: str, fmt: str, accepted: int) -> bytes:
    import tempfile

    from personagen_core.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        out = export_run(_store_for(path), run_id, fmt, Path(tmp) / f"{run_id}.{fmt}")
        return out.read_bytes()


def export_cached(run_id: str, fmt: str) -> bytes:
    """The run's dataset in ``fmt`` (``csv``, ``jsonl`` or ``parquet``) as bytes (``export.export_run``)."""
    counts = get_store().list_runs().set_index("run_id")["accepted"]
    return _export_cached(str(store_path()), run_id, fmt, int(counts.get(run_id, 0)))


def any_run_active() -> bool:
    """Whether a generation thread of this server process is running."""
    return any(h.alive for h in run_registry().values())


def texts_with_scores(run_id: str) -> Any:
    """The run's accepted texts with their judge scores (when the run was judged) as extra columns."""
    return get_store().with_judge_scores(run_id, run_texts(run_id))  # texts from this process's cache


def text_card(row: dict[str, Any]) -> None:
    """One generated text with its emotion, persona, scenario and every attribute."""
    with st.container(border=True):
        st.markdown(f"**{row.get('emotion', '')}** · text {row.get('text_id', '')}")
        st.markdown(f"> {row.get('text', '')}")
        if row.get("persona"):
            st.write(row["persona"])
        if row.get("scenario"):
            st.caption(str(row["scenario"]))
        skip = {"text", "persona", "scenario", "emotion", "text_id", "run_id"}
        attrs = {k: v for k, v in row.items() if k not in skip and v is not None and str(v) != "nan"}
        st.dataframe(pd_series(attrs), key=f"card_{row.get('text_id')}")


def pd_series(values: dict[str, Any]) -> Any:
    """A one-column DataFrame of ``values`` (attribute → value), for compact display."""
    import pandas as pd

    return pd.DataFrame({"value": [str(v) for v in values.values()]}, index=list(values))

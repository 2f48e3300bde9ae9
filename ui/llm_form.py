"""The LLM backend form of the Generate page: backend, endpoint(s), key, models per stage, verdict reasons,
timeouts and endpoint limits, every value kept across pages and reloads (the API key in this session's
memory only), and the ``LLMSettings`` they make.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import streamlit as st

from personagen_core.generation import vocabulary
from personagen_core.generation.vocabulary import DEFAULT_CONCURRENCY, DEFAULT_MODEL, ROLES
from ui.state import autosave, keep, kept, set_kept

__all__ = [
    "BACKENDS",
    "ENDPOINT_COLUMNS",
    "ROLES",
    "VERDICT_REASONS",
    "endpoints_editor",
    "endpoints_from_rows",
    "llm_settings",
    "llm_settings_form",
]


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


#: Widget key of the endpoints table; ``_ENDPOINTS_BASE`` holds the rows it was opened with.
ENDPOINTS_EDITOR_KEY, _ENDPOINTS_BASE = "endpoints_editor", "_endpoint_rows_base"


def endpoints_editor() -> None:
    """A small editable table of endpoints (URL, model, key variable, weight, max concurrency), kept across
    pages and reloads. It holds no keys: *Key variable* names the environment variable holding a key.

    The table keeps one key and the rows it was opened with, and its edits are saved as they come. Opening
    a fresh table over the saved rows after every edit (a new key) re-created the grid in the browser and
    dropped what the user was typing: a URL typed right after *Add row*, the next cell after Tab. A table
    Streamlit no longer holds (a new session, back from another page) opens over the kept rows.
    """
    import pandas as pd

    rows = kept("endpoint_rows") or [
        {"url": kept("base_url") or os.environ.get("OPENAI_BASE_URL", ""), "model": None, "key_env": None,
         "weight": 1.0, "max_concurrency": None}
    ]
    if ENDPOINTS_EDITOR_KEY not in st.session_state or _ENDPOINTS_BASE not in st.session_state:
        st.session_state[_ENDPOINTS_BASE] = rows
    edited = st.data_editor(
        pd.DataFrame(st.session_state[_ENDPOINTS_BASE], columns=list(ENDPOINT_COLUMNS)).astype(
            {"url": "object", "model": "object", "key_env": "object"}),
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        key=ENDPOINTS_EDITOR_KEY,
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
        set_kept("endpoint_rows", records)  # read below by llm_settings() in this same run
        autosave()  # and in the draft now (a page saves it when it starts, i.e. only on the next rerun)
    st.caption("Each endpoint keeps its own adaptive concurrency and server kind; usage is recorded per endpoint.")

"""Browsing the run store: the run picker every page shares, a run's texts (cached while it grows), the text
filters of the Explore page, text cards and exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from ui.run_jobs import run_registry
from ui.state import _store_for, get_store, keep, kept, set_kept, store_path

__all__ = [
    "attribute_filters",
    "export_cached",
    "filter_frame",
    "pd_series",
    "run_picker",
    "run_texts",
    "text_card",
    "texts_with_scores",
    "verdict_filters",
]


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

"""Evaluation views (Evaluate, Real data and Report pages): memoised evaluation with a live progress bar,
tables and figures. Gold data inputs, the label map editor and Tables VI-VII live in :mod:`ui.gold_view`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import streamlit as st

from ui.state import error_boundary, get_store, store_path

__all__ = [
    "embedder",
    "evaluate_runs",
    "overall_table",
    "per_emotion_table",
    "report_html",
    "show_evaluation",
]


@st.cache_resource(show_spinner="Loading the embedding model…")
def embedder() -> Any:
    """The sentence-transformers embedder, created once per process (its model loads lazily)."""
    from personagen_core.evaluation.embeddings import Embedder

    return Embedder(None)


def _datasets_key(run_ids: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Run ids with their current text counts: a run that grew invalidates cached evaluations."""
    counts = get_store().list_runs().set_index("run_id")["accepted"]
    return tuple((r, int(counts.get(r, 0))) for r in run_ids)


@st.cache_resource(show_spinner=False)
def _report_memo() -> dict[str, dict[str, Any]]:
    """Evaluation reports of this process keyed by inputs and settings (a plain memo rather than
    ``st.cache_data``, whose element replay does not allow the live progress bar drawn during evaluation)."""
    return {}


_MEMO_SIZE = 16


def evaluate_runs(
    run_ids: Sequence[str],
    settings: Any,
    *,
    gold: tuple[Any, Any] | None = None,
    gold_key: str = "",
    label_map: dict[str, str | None] | None = None,
    llm: Any = None,
) -> dict[str, Any]:
    """Evaluate runs from the store, showing progress; memoised per runs, their sizes, settings, gold data
    and label map (the core also caches embeddings and expensive results on disk)."""
    import json

    from personagen_core.evaluation.suite import evaluate, load_run_dataset

    store = get_store()
    key = json.dumps(
        [str(store_path()), _datasets_key(run_ids), settings.model_dump_json(), gold_key, label_map or {}],
        sort_keys=True,
        default=str,
    )
    if llm is not None and settings.judge:  # the judge's answers depend on the endpoint and model
        key += f"|{llm.backend}|{llm.base_url}|{llm.model_for('judge')}"
    memo = _report_memo()
    if key in memo:
        return memo[key]
    bar = st.progress(0.0, text="Evaluating…")

    def on_event(stage: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"Evaluating: {stage}")

    try:
        datasets = {run_id: load_run_dataset(store, run_id) for run_id in run_ids}
        gold_train, gold_test = gold if gold is not None else (None, None)
        report = evaluate(
            datasets,
            gold_train=gold_train,
            gold_test=gold_test,
            label_map=label_map,
            settings=settings,
            embedder=embedder(),
            llm_settings=llm,
            judge_store=store,
            on_event=on_event,
        )
    finally:
        bar.empty()
    while len(memo) >= _MEMO_SIZE:
        memo.pop(next(iter(memo)))
    memo[key] = report
    return report


def overall_table(section: dict[str, Any], field_name: str = "overall") -> Any:
    """A DataFrame (rows = dataset) of ``section["datasets"][name][field_name]`` metric dicts."""
    import pandas as pd

    return pd.DataFrame({name: d.get(field_name, {}) for name, d in section["datasets"].items()}).T


def per_emotion_table(section: dict[str, Any], dataset: str) -> Any:
    """A DataFrame (rows = emotion, columns = metric) of one dataset's ``per_emotion`` block."""
    import pandas as pd

    return pd.DataFrame(section["datasets"][dataset]["per_emotion"]).T


def _skipped(report: dict[str, Any], section: str) -> None:
    reason = (report.get("skipped") or {}).get(section, "not computed")
    st.info(f"Not computed: {reason}.")


def show_evaluation(report: dict[str, Any], figures: ModuleType) -> None:
    """Draw an evaluation report: projection, confusion matrices, diversity and judge tabs."""
    names = list(report.get("datasets", {}))
    st.caption("Texts per dataset: " + ", ".join(f"{n} ({report['datasets'][n]['n']})" for n in names))
    t_proj, t_sep, t_div, t_judge = st.tabs(["Projection", "Separability", "Diversity", "Judge"])
    with t_proj:
        proj = report.get("projections") or {}
        methods = sorted({m for p in proj.values() for m in p.get("coords", {})})
        if not methods:
            _skipped(report, "projections")
        else:
            attrs = sorted({c for p in proj.values() for c in (p.get("attributes") or {})})
            c1, c2 = st.columns(2)
            method = c1.radio(
                "Method", methods, horizontal=True, format_func={"tsne": "t-SNE", "umap": "UMAP"}.get
            )
            color_by = c2.selectbox(
                "Colour by", ["label", *attrs], format_func=lambda c: "emotion" if c == "label" else c
            )
            st.plotly_chart(
                figures.projection_figure_from_report(report, method=method, color_by=color_by),
                key="eval_projection",
            )
    with t_sep:
        sep = report.get("separability")
        if not sep:
            _skipped(report, "separability")
        else:
            st.dataframe(overall_table(sep, "macro"), key="eval_macro")
            matrices = {n: d["confusion"] for n, d in sep["datasets"].items() if d.get("confusion")}
            if matrices:
                st.plotly_chart(
                    figures.confusion_grid(matrices, title=f"Confusion ({sep.get('method', '')})"),
                    key="eval_confusion",
                )
    with t_div:
        div = report.get("diversity")
        if not div:
            _skipped(report, "diversity")
        else:
            table = overall_table(div).rename(columns=figures.DIVERSITY_METRICS)
            st.dataframe(table, key="eval_diversity_table")
            dataset = st.selectbox("Per emotion for", names, key="eval_div_ds")
            st.dataframe(
                per_emotion_table(div, dataset).rename(columns=figures.DIVERSITY_METRICS),
                key="eval_diversity_emotions",
            )
            with error_boundary("diversity chart"):
                st.plotly_chart(figures.diversity_figure(report), key="eval_diversity_fig")
    with t_judge:
        if not report.get("judge"):
            _skipped(report, "judge")
        else:
            st.plotly_chart(figures.judge_distribution_figure(report), key="eval_judge_dist")
            st.plotly_chart(figures.judge_emotion_figure(report), key="eval_judge_emotion")


@st.cache_data(show_spinner=False, max_entries=8)
def _report_html_cached(generated_at: str, names: tuple[str, ...], _report: dict[str, Any]) -> str:
    from personagen_core.evaluation.report import render_html, to_jsonable

    return render_html(to_jsonable(_report))


def report_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page of a report (cached per report)."""
    return _report_html_cached(str(report.get("generated_at")), tuple(report.get("datasets", {})), report)

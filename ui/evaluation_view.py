"""Evaluation views (Evaluate, Real data and Report pages): memoised evaluation with a live progress bar,
tables and figures, gold data inputs and the label map editor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import streamlit as st

from ui.runs import run_texts
from ui.state import defaults, error_boundary, get_store, store_path

__all__ = [
    "embedder",
    "evaluate_runs",
    "gold_inputs",
    "gold_key",
    "label_map_editor",
    "overall_table",
    "per_emotion_table",
    "report_html",
    "run_labels",
    "show_evaluation",
    "show_real_data",
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


_SHARED_CARER = Path(__file__).resolve().parents[2] / "shared" / "data" / "carer"


@st.cache_data(show_spinner="Reading the gold data…", max_entries=8)
def _load_gold_path(path: str, mtime: float) -> Any:
    from personagen_core.evaluation.gold import load_dataset

    return load_dataset(path)


@st.cache_data(show_spinner="Reading the uploaded file…", max_entries=8)
def _load_gold_bytes(name: str, data: bytes) -> Any:
    import tempfile

    from personagen_core.evaluation.gold import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        frame = load_dataset(path)
    frame.attrs["source"] = name
    return frame


def _gold_from(kind: str, split: str) -> Any:
    if kind == "path":
        default = _SHARED_CARER / f"{split}.txt"
        defaults(**{f"keep_gold_{split}_path": str(default) if default.exists() else ""})
        value = st.text_input(
            f"Gold {split} file",
            key=f"keep_gold_{split}_path",
            placeholder="/path/to/file (csv, tsv, jsonl, parquet, txt)",
        )
        if not value.strip():
            return None
        path = Path(value.strip()).expanduser()
        if not path.is_file():
            st.error(f"Gold {split} file not found: {path}")
            return None
        return _load_gold_path(str(path), path.stat().st_mtime)
    upload = st.file_uploader(
        f"Gold {split} file", key=f"gold_{split}_upload", type=["csv", "tsv", "jsonl", "parquet", "txt"]
    )
    return None if upload is None else _load_gold_bytes(upload.name, upload.getvalue())


def gold_inputs(gold_mod: ModuleType) -> tuple[Any, Any]:
    """Pick the gold train / test splits from a path on the server or an upload; errors are shown."""
    kind = st.radio(
        "Source",
        ["path", "upload"],
        horizontal=True,
        key="keep_gold_kind",
        format_func={"path": "Path on the server", "upload": "Upload"}.get,
    )
    st.caption(
        "Files with `text` and `label` columns (CSV, TSV, JSONL, Parquet) or `text;label` lines. "
        "The test split is the reference of Table VI and the test set of Table VII."
    )
    out: list[Any] = []
    for split, col in zip(("train", "test"), st.columns(2), strict=True):
        with col:
            frame = None
            with error_boundary(f"gold {split} data"):
                frame = _gold_from(kind, split)
                if frame is not None:
                    labels = ", ".join(sorted(frame["label"].astype(str).unique()))
                    st.caption(f"{len(frame):,} texts, labels: {labels}")
            out.append(frame)
    if out[0] is None and out[1] is None:
        st.info("Choose at least a gold test file.")
    return out[0], out[1]


def _content_hash(frame: Any) -> int:
    import pandas as pd

    return int(pd.util.hash_pandas_object(frame[["text", "label"]], index=False).sum())


def gold_key(train: Any, test: Any) -> str:
    """A cache key for the gold splits (source, size, content hash)."""
    parts = []
    for frame in (train, test):
        parts.append(
            "none"
            if frame is None
            else f"{frame.attrs.get('source', '')}:{len(frame)}:{_content_hash(frame)}"
        )
    return "|".join(parts)


def run_labels(run_ids: Sequence[str]) -> list[str]:
    """Distinct emotions of the runs' accepted texts."""
    labels: set[str] = set()
    for run_id in run_ids:
        labels |= set(run_texts(run_id)["emotion"].astype(str))
    return sorted(labels)


_LEAVE_OUT = "(leave out)"


def label_map_editor(
    synthetic: Sequence[str], gold_labels: Sequence[str], defaults: dict[str, str | None]
) -> dict[str, str | None]:
    """Map each synthetic label to a gold label or leave it out; defaults from the core's label map."""
    import pandas as pd

    def default(label: str) -> str:
        if label in defaults:
            return defaults[label] if defaults[label] in gold_labels else _LEAVE_OUT
        return label if label in gold_labels else _LEAVE_OUT

    frame = pd.DataFrame({"synthetic": list(synthetic), "gold": [default(s) for s in synthetic]}).astype(
        "object"
    )
    edited = st.data_editor(
        frame,
        hide_index=True,
        disabled=["synthetic"],
        key="label_map",
        column_config={
            "gold": st.column_config.SelectboxColumn(
                "gold", options=[*gold_labels, _LEAVE_OUT], required=True
            )
        },
    )
    return {
        str(r["synthetic"]): (None if r["gold"] in (None, _LEAVE_OUT) else str(r["gold"]))
        for r in edited.to_dict("records")
    }


def show_real_data(report: dict[str, Any], figures: ModuleType) -> None:
    """Table VI (FID, PRD, KL, histogram cosine, ...) and Table VII (train on synthetic, test on real)."""
    import pandas as pd

    real = report.get("real_data")
    st.subheader("Table VI · comparison with real data")
    if not real:
        _skipped(report, "real_data")
    else:
        table = pd.DataFrame(
            {
                name: {
                    figures.REAL_DATA_METRICS.get(m, m): (v or {}).get("value") for m, v in metrics.items()
                }
                for name, metrics in real["datasets"].items()
            }
        ).T
        st.dataframe(table, key="table6")
        with error_boundary("Table VI chart"):
            st.plotly_chart(figures.real_data_figure(report), key="table6_fig")
    st.subheader("Table VII · train on synthetic, test on real")
    down = report.get("downstream")
    if not down:
        _skipped(report, "downstream")
    else:
        rows = pd.DataFrame(
            {
                name: {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
                for name, row in down["rows"].items()
            }
        ).T
        st.dataframe(rows, key="table7")
        with error_boundary("Table VII chart"):
            st.plotly_chart(figures.downstream_figure(report), key="table7_fig")
    gold = report.get("gold") or {}
    if gold.get("dropped_labels"):
        st.caption(
            f"Left out of Tables VI-VII (no counterpart): {', '.join(map(str, gold['dropped_labels']))}."
        )

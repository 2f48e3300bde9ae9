"""Evaluation views (Evaluate, Real data and Report pages): stored evaluations with a live progress bar,
a picker to reopen them, tables and figures with their warnings, the recent gold files memory. Gold data
inputs, the label map editor and Tables VI-VII live in :mod:`ui.gold_view`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import streamlit as st

from ui.state import error_boundary, get_store, keep, store_path

__all__ = [
    "embedder",
    "embedding_estimate",
    "evaluate_runs",
    "evaluation_store",
    "open_evaluation",
    "overall_table",
    "per_emotion_table",
    "recent_gold_picker",
    "remember_gold_file",
    "report_html",
    "show_evaluation",
    "stored_evaluation_picker",
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
def _evaluations_for(path: str) -> Any:
    from personagen_core.evaluation.stored import EvaluationStore

    return EvaluationStore(path)


def evaluation_store() -> Any:
    """The stored evaluations (``$PERSONAGEN_HOME/evaluations.sqlite``), opened once per process and shared
    by every session (the store guards its connection with a lock)."""
    from personagen_core.evaluation.stored import default_path

    return _evaluations_for(str(default_path()))


def embedding_estimate(
    run_ids: Sequence[str], settings: Any, *, gold: tuple[Any, Any] | None = None, hint: str = ""
) -> Any:
    """Before an evaluation starts: how many texts it embeds and how long that should take at this
    machine's measured rate (:mod:`personagen_core.evaluation.sizing`, as ``personagen evaluate`` prints),
    with a warning above :data:`~personagen_core.evaluation.sizing.WARN_SECONDS` that names the page's own
    size controls (``hint``). Returns the plan (None without runs)."""
    import pandas as pd

    from personagen_core.evaluation import sizing

    if not run_ids:
        return None
    counts = get_store().list_runs().set_index("run_id")["accepted"]
    # The plan counts rows: the runs' sizes from the run list, without loading their texts; which share of a
    # run is already embedded is asked once per run size and state of the embedding cache.
    runs = {r: pd.DataFrame(index=range(int(counts.get(r, 0)))) for r in run_ids}
    train, test = gold if gold is not None else (None, None)
    emb = embedder()
    cached_fraction = getattr(emb, "cached_fraction", None)  # an encoder without a disk cache has none
    plan = sizing.embedding_plan(runs, train, test, settings, model_id=emb.model_id,
                                 cached_fraction=cached_fraction)  # the gold frames carry their texts
    for r in run_ids:
        if cached_fraction is not None and plan.counts.get(r):
            share = _run_cached_share(str(store_path()), r, int(counts.get(r, 0)), emb.model_id, _cache_state(emb))
            plan.cached[r] = round(plan.counts[r] * share)
    st.caption(" · ".join(line.strip() for line in plan.lines() if not line.startswith("warning:")))
    if plan.warn:
        biggest = max(plan.counts, key=plan.counts.__getitem__)
        st.warning(
            f"That is more than {sizing.WARN_SECONDS / 60:.0f} min of embedding; {biggest} is the largest "
            f"input. {hint}".strip(),
            icon=":material/hourglass_top:",
        )
    return plan


def _cache_state(emb: Any) -> tuple[tuple[int, int], ...]:
    """Modification time and size of the embedding cache's files: they change with every write to it, by this
    process or another (the CLI)."""
    db = Path(emb.cache_dir) / "embeddings.sqlite"
    files = (db, db.with_name(db.name + "-wal"))
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else (0, 0) for f in files)


@st.cache_data(show_spinner=False, max_entries=256)
def _run_cached_share(store: str, run_id: str, n_texts: int, model_id: str, cache: tuple[Any, ...]) -> float:
    """The share of a run's texts in the embedding cache, asked again when the run grew or the cache changed
    (the arguments are the cache key)."""
    return embedder().cached_fraction(get_store().accepted_texts(run_id)) if n_texts else 0.0


def _inputs_key(
    run_ids: Sequence[str], settings: Any, gold_key: str, label_map: dict[str, str | None] | None, llm: Any
) -> str:
    """What an evaluation depends on: the runs and their sizes (a run that grew is new input), settings,
    gold data and label map, and for the judge its endpoint and model."""
    import json

    key = json.dumps(
        [str(store_path()), _datasets_key(run_ids), settings.model_dump_json(), gold_key, label_map or {}],
        sort_keys=True,
        default=str,
    )
    if llm is not None and settings.judge:
        key += f"|{llm.backend}|{llm.base_url}|{llm.model_for('judge')}"
    return key


def evaluate_runs(
    run_ids: Sequence[str],
    settings: Any,
    *,
    gold: tuple[Any, Any] | None = None,
    gold_key: str = "",
    label_map: dict[str, str | None] | None = None,
    llm: Any = None,
) -> dict[str, Any]:
    """Evaluate runs from the store, showing progress, and store the evaluation (its id is in
    ``report["stored"]["eval_id"]``). The same inputs (runs and their sizes, settings, gold data, label map)
    reopen the stored evaluation instead of recomputing it; the core also caches embeddings and results."""
    from personagen_core.evaluation.suite import evaluate, load_run_dataset, load_run_rejections

    store = get_store()
    evaluations = evaluation_store()
    key = _inputs_key(run_ids, settings, gold_key, label_map, llm)
    found = evaluations.find(key)
    if found is not None:
        return evaluations.get(found)
    bar = st.progress(0.0, text="Evaluating…")

    def on_event(stage: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"Evaluating: {stage}")

    from personagen_core.evaluation import sizing

    emb = embedder()
    misses = emb.stats.misses
    try:
        datasets = {run_id: load_run_dataset(store, run_id) for run_id in run_ids}
        gold_train, gold_test = gold if gold is not None else (None, None)
        report = evaluate(
            datasets,
            gold_train=gold_train,
            gold_test=gold_test,
            label_map=label_map,
            settings=settings,
            embedder=emb,
            llm_settings=llm,
            judge_store=store,
            on_event=on_event,
            rejections={run_id: load_run_rejections(store, run_id) for run_id in run_ids},
        )
    finally:
        bar.empty()
    timings = report.get("timings", {})
    # This machine's embedding rate for the next estimate (as the CLI records it).
    sizing.record_rate(
        emb.model_id,
        emb.stats.misses - misses,
        timings.get("embeddings", 0.0) + timings.get("gold embeddings", 0.0),
    )
    eval_id = evaluations.save(report, runs=list(run_ids), source="dashboard", key=key)
    return evaluations.get(eval_id)


def open_evaluation(eval_id: str) -> dict[str, Any]:
    """A stored evaluation's report (StoreError if it no longer exists)."""
    return evaluation_store().get(eval_id)


def stored_evaluation_picker(label: str = "Stored evaluation", *, name: str) -> str | None:
    """Pick a stored evaluation (newest first: date, runs, texts, settings, warnings, id); the choice is
    kept as ``name`` across pages and reloads (:func:`ui.state.keep`). None when there is none yet."""
    listed = evaluation_store().list(limit=200)
    if listed.empty:
        return None
    labels = {
        r["eval_id"]: f"{r['created_at'].replace('T', ' ')[:16]} · {r['summary']}"
        + (f" · ⚠ {r['warnings']}" if r["warnings"] else "")
        + f" · {r['eval_id']}"
        for r in listed.to_dict("records")
    }
    ids = list(labels)
    # A kept id that was deleted (or belongs to another home) falls back to the newest.
    return st.selectbox(label, ids, format_func=labels.get, **keep(name, ids[0], options=ids))


def remember_gold_file(path: Any, split: str) -> None:
    """Remember a gold file that was read successfully (offered again by :func:`recent_gold_picker`)."""
    from pathlib import Path

    store = evaluation_store()
    resolved = str(Path(path).expanduser().resolve())
    if store.recent_gold_files(split=split, limit=1) != [resolved]:  # no write on every rerun
        store.remember_gold_file(resolved, split=split)


def _use_recent(split: str, target_key: str) -> None:
    chosen = st.session_state.get(f"gold_{split}_recent")
    if chosen:
        st.session_state[target_key] = chosen  # a callback runs before the page draws the path field


def recent_gold_picker(split: str, target_key: str) -> None:
    """A picker of the gold files used recently (server paths that still exist), filling ``target_key``."""
    recent = evaluation_store().recent_gold_files(split=split)
    if recent:
        st.selectbox(
            f"Recent {split} files",
            ["", *recent],
            format_func=lambda p: p or "(choose a file used before)",
            key=f"gold_{split}_recent",
            on_change=_use_recent,
            args=(split, target_key),
        )


def overall_table(section: dict[str, Any], field_name: str = "overall") -> Any:
    """A DataFrame (rows = dataset) of ``section["datasets"][name][field_name]`` metric dicts."""
    import pandas as pd

    return pd.DataFrame({name: d.get(field_name, {}) for name, d in section["datasets"].items()}).T


def per_emotion_table(section: dict[str, Any], dataset: str) -> Any:
    """A DataFrame (rows = emotion, columns = metric) of one dataset's ``per_emotion`` block."""
    import pandas as pd

    return pd.DataFrame(section["datasets"][dataset]["per_emotion"]).T


def _diversity_intervals(div: dict[str, Any], dataset: str, names: dict[str, str]) -> None:
    """The equal-size values with intervals (all datasets, then ``dataset`` per emotion) and how they were drawn."""
    from personagen_core.evaluation.diversity_ci import (
        interval_emotion_table,
        interval_notes,
        interval_overall_table,
    )

    st.markdown("**At equal size per emotion, with intervals** (median [interval] over seeded subsamples)")
    for note in interval_notes(div):
        st.caption(note)
    overall = interval_overall_table(div).rename(columns=names)
    if not overall.empty:
        st.dataframe(overall, key="eval_diversity_ci")
    if div.get("equal_size"):
        per = interval_emotion_table(div, dataset).rename(columns=names)
        if not per.empty:
            st.dataframe(per, key="eval_diversity_ci_emotions")


def _skipped(report: dict[str, Any], section: str) -> None:
    reason = (report.get("skipped") or {}).get(section, "not computed")
    st.info(f"Not computed: {reason}.")


def _warnings(report: dict[str, Any], section: str) -> None:
    """The report's warnings of ``section`` (figures from too few texts, left-out labels), one per line."""
    for w in report.get("warnings") or []:
        if w.get("section") == section:
            prefix = f"**{w['dataset']}**: " if w.get("dataset") else ""
            st.warning(prefix + str(w["message"]), icon=":material/warning:")


def _section_skips(section: dict[str, Any] | None) -> None:
    for name, reason in ((section or {}).get("skipped") or {}).items():
        st.info(f"**{name}** left out: {reason}")


def _counts(report: dict[str, Any], name: str) -> str:
    labels = report["datasets"][name].get("labels") or {}
    return ", ".join(f"{k} {v}" for k, v in labels.items())


def _separability_table(sep: dict[str, Any]) -> Any:
    import pandas as pd

    rows = {}
    for name, d in sep["datasets"].items():
        low, high = (d.get("accuracy_ci") or [None, None])[:2]
        rows[name] = {
            "accuracy": d.get("accuracy"),
            "accuracy interval": f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "–",
            **{f"macro {m}": v for m, v in (d.get("macro") or {}).items()},
            "n_train": d.get("n_train"),
            "n_test": d.get("n_test"),
            "texts per class": ", ".join(f"{k} {v}" for k, v in (d.get("n_per_class") or {}).items()),
        }
    return pd.DataFrame(rows).T


def show_evaluation(report: dict[str, Any], figures: ModuleType) -> None:
    """Draw an evaluation report: projection, separability, diversity and judge tabs, each with its warnings
    and the number of texts per class behind it."""
    names = list(report.get("datasets", {}))
    st.caption(
        "Texts per dataset: "
        + "; ".join(f"{n}: {report['datasets'][n]['n']} ({_counts(report, n)})" for n in names)
    )
    from personagen_core.evaluation.projection import METHOD_NAMES

    t_proj, t_sep, t_div, t_judge = st.tabs(["Projection", "Separability", "Diversity", "Judge"])
    with t_proj:
        proj = report.get("projections") or {}
        methods = sorted({m for p in proj.values() for m in p.get("coords", {})})
        _warnings(report, "projections")
        if not methods:
            if "projections" in (report.get("skipped") or {}):
                _skipped(report, "projections")
        else:
            attrs = sorted({c for p in proj.values() for c in (p.get("attributes") or {})})
            c1, c2 = st.columns(2)
            method = c1.radio(
                "Method", methods, horizontal=True, format_func=METHOD_NAMES.get,
                key="eval_proj_method",
            )
            color_by = c2.selectbox(
                "Colour by", ["label", *attrs], format_func=lambda c: "emotion" if c == "label" else c,
                key="eval_proj_color",
            )
            st.plotly_chart(
                figures.projection_figure_from_report(report, method=method, color_by=color_by),
                key="eval_projection",
            )
            sampled = {n: figures.projection_sample_note(report, n) for n in proj}
            if any(sampled.values()):
                st.caption(
                    "Projections of large datasets are drawn from a sample: "
                    + "; ".join(f"{n}: {note}" for n, note in sampled.items() if note)
                    + ". Every other figure uses all texts unless it says otherwise."
                )
    with t_sep:
        sep = report.get("separability")
        _warnings(report, "separability")
        if not sep:
            _skipped(report, "separability")
        else:
            _section_skips(sep)
            st.dataframe(_separability_table(sep), key="eval_macro")
            st.caption(sep.get("method", ""))
            matrices = {n: d["confusion"] for n, d in sep["datasets"].items() if d.get("confusion")}
            if matrices:
                st.plotly_chart(
                    figures.confusion_grid(matrices, title="Confusion on the held-out texts"),
                    key="eval_confusion",
                )
    with t_div:
        div = report.get("diversity")
        _warnings(report, "diversity")
        if not div:
            _skipped(report, "diversity")
        else:
            table = overall_table(div).rename(columns=figures.DIVERSITY_METRICS)
            # The overall row averages the emotions; its "n" would be a mean, so show the dataset's total.
            table = table.drop(columns=["unreliable", "min_reliable", "n"], errors="ignore")
            table.insert(0, "texts", [report["datasets"][n]["n"] for n in table.index])
            st.dataframe(table, key="eval_diversity_table")
            dataset = st.selectbox("Per emotion for", names, key="eval_div_ds")
            st.dataframe(
                per_emotion_table(div, dataset).rename(columns=figures.DIVERSITY_METRICS),
                key="eval_diversity_emotions",
            )
            _diversity_intervals(div, dataset, figures.DIVERSITY_METRICS)
            with error_boundary("diversity chart"):
                st.plotly_chart(figures.diversity_figure(report), key="eval_diversity_fig")
    with t_judge:
        if not report.get("judge"):
            _skipped(report, "judge")
        else:
            st.plotly_chart(figures.judge_distribution_figure(report), key="eval_judge_dist")
            st.plotly_chart(figures.judge_emotion_figure(report), key="eval_judge_emotion")


@st.cache_data(show_spinner=False, max_entries=8)
def _report_html_cached(identity: str, _report: dict[str, Any]) -> str:
    from personagen_core.evaluation.report import render_html, to_jsonable

    return render_html(to_jsonable(_report))


def report_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page of a report (cached per stored evaluation)."""
    stored = (report.get("stored") or {}).get("eval_id")
    identity = stored or f"{report.get('generated_at')}|{','.join(report.get('datasets', {}))}"
    return _report_html_cached(str(identity), report)

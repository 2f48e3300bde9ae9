"""Evaluate: projections, separability, diversity and judge scores of one or several runs side by side.

Every evaluation is stored; the picker below reopens any of them, also after a reload or a restart.
"""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.evaluation import figures, projection
from personagen_core.evaluation import suite as evaluation

ui.page_title("Evaluate")

# Without runs (e.g. only data files evaluated with `personagen evaluate`), stored evaluations still open.
has_runs = len(ui.get_store().list_runs()) > 0
run_ids = ui.run_picker("Runs (several = side by side)", key="eval_runs", multiple=True) if has_runs else []
c_proj, c_cap, c_points, c_div, c_judge = st.columns([2, 1, 1, 1, 1])
methods = c_proj.multiselect(
    "Projections",
    list(projection.METHODS),
    format_func=projection.METHOD_NAMES.get,
    **ui.keep("eval_methods", ["tsne"], options=projection.METHODS),
)
cap = c_cap.number_input("Max texts per run (0 = all)", 0, 1_000_000, step=100, **ui.keep("eval_cap", 0))
points = c_points.number_input(
    "Max points per projection (0 = all)",
    0,
    1_000_000,
    step=1000,
    help="Larger runs are projected from a seeded sample stratified by emotion (the figure says so); "
    "t-SNE and UMAP of 100,000 points take long and draw slowly.",
    **ui.keep("eval_points", 10_000),
)
resamples = c_div.number_input(
    "Diversity resamples (0 = none)",
    0,
    1000,
    step=10,
    help="Diversity is also computed on this many seeded subsamples of equal size per emotion (half the "
    "smallest run's texts, at most 500), shown as median [95 % interval]; 1 is not allowed.",
    **ui.keep("eval_div_resamples", 20),
)
judge = c_judge.toggle(
    "LLM judge", help="Scores every text with the LLM set on the Generate page.", **ui.keep("eval_judge", False)
)

if not run_ids:
    st.info(
        "Pick at least one run." if has_runs else "No runs in the run store yet: launch a generation on the "
        "**Generate** page (stored evaluations are listed below)."
    )
else:
    with ui.error_boundary("evaluation"):
        settings = evaluation.EvaluationSettings(
            projections=tuple(methods),
            max_texts=int(cap) or None,
            max_projection_points=int(points) or None,
            diversity_resamples=int(resamples),
            judge=judge,
        )
        ui.embedding_estimate(run_ids, settings, hint="Set **Max texts per run** to evaluate a seeded sample.")
        if st.button("Evaluate", type="primary", icon=":material/insights:"):
            report = ui.evaluate_runs(run_ids, settings, llm=ui.llm_settings() if judge else None)
            # Show what was just evaluated (the picker is drawn below, so its value can still be set).
            ui.set_kept("eval_open", report["stored"]["eval_id"])

st.subheader("Stored evaluations")
with ui.error_boundary("stored evaluation"):
    eval_id = ui.stored_evaluation_picker("Evaluation (newest first)", name="eval_open")
    if eval_id is None:
        st.info("No stored evaluation yet: pick runs and press **Evaluate**.")
    else:
        report = ui.open_evaluation(eval_id)
        st.session_state["last_report"] = report
        ui.show_evaluation(report, figures)

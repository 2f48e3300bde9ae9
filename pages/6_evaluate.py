"""Evaluate: projections, separability, diversity and judge scores of one or several runs side by side."""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.evaluation import figures
from personagen_core.evaluation import suite as evaluation

ui.page_title("Evaluate")

run_ids = ui.run_picker("Runs (several = side by side)", key="eval_runs", multiple=True)
c_proj, c_cap, c_judge = st.columns([2, 1, 1])
methods = c_proj.multiselect("Projections", ["tsne", "umap"], default=["tsne"])
cap = c_cap.number_input("Max texts per run (0 = all)", 0, 100_000, 0, step=100)
judge = c_judge.toggle("LLM judge", help="Scores every text with the LLM set on the Generate page.")

if not run_ids:
    st.info("Pick at least one run.")
    st.stop()
if (
    st.button("Evaluate", type="primary", icon=":material/insights:")
    or st.session_state.get("eval_shown") == run_ids
):
    st.session_state["eval_shown"] = list(run_ids)
    with ui.error_boundary("evaluation"):
        settings = evaluation.EvaluationSettings(
            projections=tuple(methods), max_texts=int(cap) or None, judge=judge
        )
        report = ui.evaluate_runs(run_ids, settings, llm=ui.llm_settings() if judge else None)
        st.session_state["last_report"] = report
        ui.show_evaluation(report, figures)

"""Real data: compare runs with a gold dataset (Table VI), train on synthetic, test on real (Table VII), and
see which personas make good data (slices)."""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.evaluation import figures, gold
from personagen_core.evaluation import suite as evaluation

ui.page_title("Real data")

run_ids = ui.run_picker("Runs", key="real_runs", multiple=True)
st.subheader("Gold dataset")
train, test = ui.gold_inputs(gold)
if test is None and train is None:
    st.stop()

st.subheader("Label mapping")
run_labels = ui.run_labels(run_ids)
gold_labels = sorted(set((test if test is not None else train)["label"].astype(str)))
label_map = ui.label_map_editor(run_labels, gold_labels, gold.DEFAULT_LABEL_MAP)

c1, c2, c3, c4 = st.columns(4)
max_gold = c1.number_input("Max gold test texts (0 = all)", 0, 1_000_000, 2000, step=500)
per_class = c2.number_input(
    "Gold training texts per class",
    10,
    100_000,
    500,
    step=50,
    help="The paper's gold row trains on 500 texts per class.",
)
boot = c3.number_input("Bootstrap resamples", 0, 200, 20)
max_train = c4.number_input(
    "Max training texts per run (0 = all)",
    0,
    1_000_000,
    20_000,
    step=5000,
    help="Table VII trains on a seeded sample of a larger run, stratified by emotion (stated in the table).",
)
if not run_ids:
    st.info("Pick at least one run.")
    st.stop()
settings = None
with ui.error_boundary("settings"):
    settings = evaluation.EvaluationSettings(
        projections=(),
        max_gold=int(max_gold) or None,
        bootstrap=int(boot),
        gold_per_class=int(per_class),
        max_train_texts=int(max_train) or None,
    )
    ui.embedding_estimate(run_ids, settings, gold=(train, test), hint="Lower the gold sizes above or pick fewer runs.")
if settings is None:
    st.stop()
if st.button("Compare with real data", type="primary") or st.session_state.get("real_shown") == run_ids:
    st.session_state["real_shown"] = list(run_ids)
    with ui.error_boundary("comparison"):
        report = ui.evaluate_runs(
            run_ids, settings, gold=(train, test), gold_key=ui.gold_key(train, test), label_map=label_map
        )
        st.session_state["last_report"] = report
        ui.show_real_data(report, figures)
        ui.show_slices(report, figures)

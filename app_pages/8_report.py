"""Report & export: download a run's dataset (CSV, JSONL, Parquet) and the self-contained HTML report of any
stored evaluation (it survives reloads and restarts)."""

from __future__ import annotations

import streamlit as st

import ui

ui.page_title("Report & export")

st.subheader("Dataset")
if len(ui.get_store().list_runs()) == 0:  # stored evaluations (below) need no run
    st.info("No runs in the run store yet: launch a generation on the **Generate** page.")
else:
    run_id = ui.run_picker()
    cols = st.columns(3)
    for col, fmt in zip(cols, ("csv", "jsonl", "parquet"), strict=True):
        with col, ui.error_boundary(f"{fmt} export"):
            col.download_button(
                f"Download {fmt.upper()}",
                ui.export_cached(run_id, fmt),
                file_name=f"{run_id}.{fmt}",
                key=f"dl_{fmt}",
                icon=":material/download:",
            )

st.subheader("HTML report")
with ui.error_boundary("building the report"):
    eval_id = ui.stored_evaluation_picker("Evaluation (newest first)", name="report_eval")
    if eval_id is None:
        st.info(
            "No stored evaluation yet: evaluate runs on the **Evaluate** page (or the **Real data** page); "
            "the report is built from a stored evaluation."
        )
    else:
        report = ui.open_evaluation(eval_id)
        html = ui.report_html(report)
        st.download_button(
            "Download the HTML report",
            html,
            file_name=f"personagen_report_{eval_id}.html",
            mime="text/html",
            icon=":material/description:",
            key="dl_report",
        )
        names = ", ".join(report.get("datasets", {}))
        n_warn = len(report.get("warnings") or [])
        st.caption(
            f"Evaluation {eval_id} of {names}, generated {report.get('generated_at', '')}"
            + (f"; {n_warn} warning(s) about small samples are in the report" if n_warn else "")
            + ". Self-contained: it opens offline and can be sent as one file."
        )

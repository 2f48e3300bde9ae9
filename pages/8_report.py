"""Report & export: download a run's dataset (CSV, JSONL, Parquet) and the self-contained HTML report."""

from __future__ import annotations

import streamlit as st

import ui

ui.page_title("Report & export")

run_id = ui.run_picker()

st.subheader("Dataset")
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
report = st.session_state.get("last_report")
if report is None:
    st.info(
        "Evaluate a run on the **Evaluate** page (or the **Real data** page) first; the report is built "
        "from that evaluation."
    )
else:
    names = ", ".join(report.get("datasets", {}))
    with ui.error_boundary("building the report"):
        html = ui.report_html(report)
        st.download_button(
            "Download the HTML report",
            html,
            file_name="personagen_report.html",
            mime="text/html",
            icon=":material/description:",
            key="dl_report",
        )
        st.caption(
            f"Evaluation of {names}, generated {report.get('generated_at', '')}. Self-contained: "
            "it opens offline and can be sent as one file."
        )

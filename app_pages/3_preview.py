"""Persona preview: sample personas, validate them with the LLM, and see each card and the funnel."""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.generation import pipeline, validation_policy
from personagen_core.personas import render

ui.page_title("Persona preview")

spec = ui.current_spec()
c_n, c_seed, c_val = st.columns([1, 1, 2], vertical_alignment="bottom")
n = c_n.number_input("Personas", 1, 50, **ui.keep("preview_n", 6))
seed = c_seed.number_input("Seed", 0, 2**31 - 1, **ui.keep("preview_seed", 0))
validate = c_val.button(
    "Validate with the LLM",
    icon=":material/fact_check:",
    help="Runs the stage 1-3 plausibility checks with the backend set on the Generate page.",
)

with ui.error_boundary("LLM settings"):
    # The same warning as the Generate page when the chosen validator measured at chance.
    decision = validation_policy.decide(ui.llm_settings(), True)
    if decision.at_chance:
        st.warning(decision.message)

with ui.error_boundary("sampling"):
    df = ui.sampled(spec, int(n), int(seed))
    key = (ui.spec_digest(spec), int(n), int(seed))
    if validate:
        with st.spinner("Asking the LLM…"), ui.error_boundary("validation"):
            st.session_state["preview_verdicts"] = (key, ui.validate_preview(spec, df, ui.llm_settings()))
    stored = st.session_state.get("preview_verdicts")
    validated = stored[1] if stored and stored[0] == key else None
    if validated is not None:
        st.plotly_chart(ui.funnel_figure(pipeline.funnel(validated)), key="preview_funnel")
    else:
        st.caption("Not validated yet: the cards show the sampled personas only.")
    cols = st.columns(3)
    rows = (validated if validated is not None else df).to_dict("records")
    for i, row in enumerate(rows):
        with cols[i % 3]:
            ui.persona_card(
                i,
                row,
                render.describe_persona(row, spec),
                render.describe_scenario(row, spec),
                validated is not None,
            )

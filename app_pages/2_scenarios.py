"""Scenarios & emotions: filter each scenario element and choose the emotion label set."""

from __future__ import annotations

import streamlit as st

import ui
from personagen_core.personas import spec as spec_mod

ui.page_title("Scenarios & emotions")

spec = ui.current_spec()

st.subheader("Scenario filters")
st.caption(
    "Limit a scenario element to some of its values (for example activity = SNS posting only). "
    "Leave a filter empty to allow every value."
)
left, right = st.columns([3, 4], gap="large")
with left:
    for key, cat in spec.scenario.items():
        st.multiselect(
            cat.label or key,
            cat.names,
            default=spec.scenario_filters.get(key, []),
            key=f"filter:{st.session_state.get('spec_rev', 0)}:{key}",
            on_change=ui.on_filter_change,
            args=(key,),
            placeholder="all values",
        )
        ui.field_error(f"scenario_filters.{key}")
    ui.conflict_panel(ui.current_spec())
with right:
    if spec.scenario:
        element = st.selectbox(
            "Element", list(spec.scenario), format_func=lambda k: spec.scenario[k].label or k,
            **ui.keep("scenario_element", next(iter(spec.scenario)), options=spec.scenario),
        )
        with ui.error_boundary("sampling scenarios"):
            summary = ui.marginals(spec, 1000, 0)
            st.plotly_chart(
                ui.marginal_figure(summary, f"scenario.{element}", "Spec vs sampled (1,000, seed 0)"),
                key="scenario_chart",
            )
    else:
        st.info("This spec has no scenario elements.")

st.subheader("Emotions")
ui.emotion_editor(spec, spec_mod.EMOTION_SETS)

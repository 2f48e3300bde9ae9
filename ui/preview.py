"""Persona preview: the funnel and persona cards of ``pipeline.validate_personas`` (stage 1-3 verdicts)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from personagen_core.generation.vocabulary import FUNNEL_VERDICTS
from ui.run_jobs import http_client_for
from ui.state import get_store, kept

__all__ = [
    "funnel_figure",
    "persona_card",
    "validate_preview",
]


def validate_preview(spec: Any, df: Any, settings: Any) -> Any:
    """``pipeline.validate_personas`` on the sampled rows, with the run store's cross-run verdict cache."""
    from personagen_core.generation.pipeline import validate_personas

    bar = st.progress(0.0, text="Validating…")

    def progress(stage: int, done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Stage {stage}: {done} / {total} personas")

    try:
        return validate_personas(
            spec, df, settings, store=get_store(), on_event=progress, http_client=http_client_for(settings),
            verdict_reasons=kept("verdict_reasons", "all"),  # the Generate page's setting
        )
    finally:
        bar.empty()


def funnel_figure(counts: dict[str, Any]) -> Any:
    """Funnel from sampled to accepted, from ``pipeline.funnel``: how many rows each validated stage kept."""
    import plotly.graph_objects as go

    labels, values = ["sampled"], [counts["sampled"]]
    for stage, c in sorted(counts["stages"].items()):
        labels.append(f"kept at stage {stage}")
        values.append(c["kept"])
    fig = go.Figure(go.Funnel(y=labels, x=values, textinfo="value+percent initial", marker_color="#3b5bdb"))
    fig.update_layout(height=100 + 50 * len(labels), margin=dict(l=10, r=10, t=10, b=10))
    return fig


# Colours in the vocabulary's order: natural, rare but plausible, implausible, error.
_VERDICT_ICON = {
    v: f":{c}[{v}]" for v, c in zip(FUNNEL_VERDICTS, ("green", "orange", "red", "gray"), strict=True)
}


def persona_card(index: int, row: dict[str, Any], persona: str, scenario: str, validated: bool) -> None:
    """One persona: its description, scenario and, when ``validated``, the verdict and reason per stage
    (the ``verdict_stage{s}`` / ``reason_stage{s}`` / ``kept`` fields of ``row``)."""
    with st.container(border=True):
        st.markdown(f"**Persona {index + 1}**")
        st.write(persona)
        st.caption(scenario)
        if not validated:
            return
        for stage in (1, 2, 3):
            verdict = row.get(f"verdict_stage{stage}")
            if isinstance(verdict, str):
                reason = row.get(f"reason_stage{stage}") or ""
                st.markdown(f"Stage {stage}: {_VERDICT_ICON.get(verdict, verdict)}: {reason}")
        try:
            kept = bool(row.get("kept"))
        except TypeError:  # <NA>: a cancel stopped its validation early
            st.markdown(":gray-badge[not validated]")
            return
        if kept:
            st.markdown(":green-badge[accepted]")
        else:
            st.markdown(f":red-badge[rejected at stage {row.get('dropped_stage')}]")

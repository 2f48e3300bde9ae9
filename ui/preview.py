"""Persona preview: stage 1-3 verdicts for sampled personas, the funnel, persona cards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from ui.runs import http_client_for
from ui.state import get_store

__all__ = [
    "funnel_figure",
    "persona_card",
    "validate_preview",
]


def validate_preview(spec: Any, df: Any, settings: Any) -> list[dict[int, Any]]:
    """Stage 1-3 verdicts for the rows of ``df``: a row reaches a stage only if kept at the previous one.

    Uses the core's ``validation.Validator`` (which also fills the run store's cross-run verdict cache).
    """
    import asyncio

    from personagen_core.llm import LLMClient
    from personagen_core.validation import Validator

    rows = df.to_dict("records")
    store = get_store()

    async def run() -> list[dict[int, Any]]:
        out: list[dict[int, Any]] = [{} for _ in rows]
        async with LLMClient(settings, http_client=http_client_for(settings)) as client:
            validator = Validator(spec, store, client)
            alive = list(range(len(rows)))
            for stage in (1, 2, 3):
                if not alive or not spec.stage_columns(stage):
                    continue
                verdicts = await validator.verdicts(stage, [rows[i] for i in alive])
                for i, verdict in zip(alive, verdicts, strict=True):
                    out[i][stage] = verdict
                alive = [i for i, v in zip(alive, verdicts, strict=True) if v.kept]
        return out

    return asyncio.run(run())


def funnel_figure(verdicts: Sequence[dict[int, Any]], sampled_n: int) -> Any:
    """Funnel from sampled to accepted: how many rows were kept at each validated stage."""
    import plotly.graph_objects as go

    stages = sorted({s for v in verdicts for s in v})
    labels, values = ["sampled"], [sampled_n]
    for stage in stages:
        labels.append(f"kept at stage {stage}")
        values.append(sum(1 for v in verdicts if stage in v and v[stage].kept))
    fig = go.Figure(go.Funnel(y=labels, x=values, textinfo="value+percent initial", marker_color="#3b5bdb"))
    fig.update_layout(height=100 + 50 * len(labels), margin=dict(l=10, r=10, t=10, b=10))
    return fig


_VERDICT_ICON = {
    "natural": ":green[natural]",
    "rare but plausible": ":orange[rare but plausible]",
    "implausible": ":red[implausible]",
    "error": ":gray[error]",
}


def persona_card(
    index: int, row: dict[str, Any], persona: str, scenario: str, verdicts: dict[int, Any] | None
) -> None:
    """One persona: its description, scenario and, when validated, the verdict and reason per stage."""
    with st.container(border=True):
        st.markdown(f"**Persona {index + 1}**")
        st.write(persona)
        st.caption(scenario)
        if verdicts is not None:
            for stage, v in sorted(verdicts.items()):
                st.markdown(f"Stage {stage}: {_VERDICT_ICON.get(v.verdict, v.verdict)}: {v.reason}")
            if verdicts and all(v.kept for v in verdicts.values()):
                st.markdown(":green-badge[accepted]")
            else:
                st.markdown(":red-badge[rejected]")

"""The working spec's categories and its cached sampling, for the charts of the Distributions and Scenarios
pages (sampling is cached per spec content, size and seed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

__all__ = [
    "category_options",
    "has_table",
    "marginal_figure",
    "marginals",
    "sampled",
    "spec_digest",
]


def category_options(spec: Any) -> dict[str, str]:
    """Map ``section.key`` of every editable category to a display name, stage 1 and 2 then scenario."""
    out: dict[str, str] = {}
    for key, cat in spec.attributes.items():
        out[f"attributes.{key}"] = f"Stage {cat.stage} · {cat.label}"
    for key, cat in spec.scenario.items():
        out[f"scenario.{key}"] = f"Stage 3 · {cat.label}"
    return out


def _category(spec: Any, qualified: str) -> Any:
    section, key = qualified.split(".", 1)
    return getattr(spec, section)[key]


def _spec_hash(spec: Any) -> str:
    # A cache key only (not the core's spec_hash, whose YAML dump takes ~0.1 s on a full pack): the JSON
    # dump of the pydantic model is exact and takes about a millisecond.
    import hashlib

    return hashlib.sha256(spec.model_dump_json().encode("utf-8")).hexdigest()


@st.cache_data(show_spinner=False, max_entries=64)
def _sample_cached(digest: str, n: int, seed: int, _spec: Any) -> Any:
    from personagen_core.personas.sampling import sample_personas

    return sample_personas(_spec, n, random_state=seed)


@st.cache_data(show_spinner=False, max_entries=64)
def _marginals_cached(digest: str, n: int, seed: int, _spec: Any) -> Any:
    from personagen_core.personas.sampling import marginal_summary

    return marginal_summary(_spec, _sample_cached(digest, n, seed, _spec))


def sampled(spec: Any, n: int, seed: int) -> Any:
    """Personas sampled from ``spec`` (cached per spec hash, size and seed)."""
    return _sample_cached(_spec_hash(spec), n, seed, spec)


def marginals(spec: Any, n: int, seed: int) -> Any:
    """``marginal_summary`` of :func:`sampled` (cached the same way)."""
    return _marginals_cached(_spec_hash(spec), n, seed, spec)


def marginal_figure(summary: Any, qualified: str, title: str, *, row: Sequence[float] | None = None,
                    row_label: str = "selected row") -> Any:
    """Horizontal bars, one label per item (long categories stay readable): the spec's probability, the
    exact marginal after tables and rules, and the sampled frequency. For a conditioned category the
    spec's own items only act where no table row matches, so ``row`` (the row being edited) is drawn
    instead of them."""
    import plotly.graph_objects as go

    key = qualified.split(".", 1)[1]
    part = summary[summary["category"] == key]
    items = part["item"].tolist()
    fig = go.Figure()
    if row is not None:
        fig.add_bar(y=items, x=list(row), name=row_label, marker_color="#f08c00", orientation="h")
    else:
        fig.add_bar(y=items, x=part["spec_p"].tolist(), name="spec", marker_color="#9aa9d8", orientation="h")
    if "expected_p" in part and row is not None:
        fig.add_bar(y=items, x=part["expected_p"].tolist(), name="marginal (exact)", marker_color="#74b816",
                    orientation="h")
    fig.add_bar(y=items, x=part["sampled_p"].tolist(), name="sampled", marker_color="#3b5bdb", orientation="h")
    n_traces = len(fig.data)
    fig.update_layout(
        barmode="group",
        title=title,
        height=max(320, 90 + len(items) * (9 + 7 * n_traces)),
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis_title="probability",
        # Every item labelled, first item at the top.
        yaxis=dict(type="category", tickmode="linear", dtick=1, autorange="reversed", automargin=True),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
    )
    return fig


def spec_digest(spec: Any) -> str:
    """A fast sha256 of the spec's content (a cache key; the core's ``spec_hash`` is the stored identity)."""
    return _spec_hash(spec)


def has_table(spec: Any, qualified: str) -> bool:
    """Whether the category is conditioned on others (so it has a conditional table to edit)."""
    return bool(_category(spec, qualified).given)



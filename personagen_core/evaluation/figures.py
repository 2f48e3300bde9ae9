"""Plotly figures drawn from evaluation results.

Every function is pure: it takes the report dict produced by :func:`personagen_core.evaluation.suite.evaluate`
(or plain DataFrames / arrays) and returns a ``plotly.graph_objects.Figure``; nothing is recomputed.
The HTML report and the Streamlit dashboard draw the same figures from these functions.

Report sections used here (see ``evaluation.py`` for the full layout):

- ``report["projections"][dataset]``: ``{"coords": {method: {"x": [...], "y": [...]}}, "label": [...],
  "text": [...], "persona": [...], "attributes": {column: [...]}}``
- ``report["separability"][dataset]["confusion"]``: ``{"labels": [...], "counts": [[...]],
  "normalised": [[...]]}`` (rows = true label, columns = predicted label)
- ``report["diversity"]["datasets"][dataset]["per_emotion"][emotion][metric]``
- ``report["judge"]["datasets"][dataset]`` with ``"distribution"[criterion][score]`` and
  ``"per_emotion"[emotion][criterion]``
- ``report["real_data"]["datasets"][dataset][metric]`` as ``{"value": v, "ci": [lo, hi] | None}``
- ``report["downstream"]["rows"][row]`` with ``accuracy``, ``weighted_precision``, ..., ``ci``, ``scope``,
  ``labels``, ``left_out``, ``n_test`` and ``confusion``
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = [
    "DIVERSITY_METRICS",
    "JUDGE_CRITERIA_LABELS",
    "REAL_DATA_METRICS",
    "color_map",
    "confusion_figure",
    "confusion_grid",
    "diversity_figure",
    "downstream_figure",
    "downstream_frame",
    "slices_figure",
    "judge_distribution_figure",
    "judge_emotion_figure",
    "projection_figure",
    "projection_figure_from_report",
    "projection_sample_note",
    "prd_curve_figure",
    "projection_frame",
    "real_data_figure",
]

#: Display names of the diversity metrics, in table order (Table IV first, then beyond the paper).
DIVERSITY_METRICS: dict[str, str] = {
    "mean_cosine_distance": "Mean Cosine Distance",
    "cluster_entropy": "Cluster Entropy",
    "centroid_distance": "Centroid Distance",
    "vendi_score": "Vendi score",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "distinct_3": "distinct-3",
    "self_bleu_4": "Self-BLEU-4",
    "compression_ratio": "Compression ratio",
}

#: Display names of the real-data metrics (Table VI first, then improved P/R, density, coverage).
REAL_DATA_METRICS: dict[str, str] = {
    "fid": "FID",
    "prd_f8": "PRD F8 (recall)",
    "prd_f1_8": "PRD F1/8 (precision)",
    "kl": "KL divergence",
    "hist_cosine": "Histogram cosine",
    "precision": "Precision (k-NN)",
    "recall": "Recall (k-NN)",
    "density": "Density",
    "coverage": "Coverage",
}

#: Display names of the judge criteria (the keys the judge returns).
JUDGE_CRITERIA_LABELS: dict[str, str] = {
    "emotion_match": "Emotion Match",
    "grammaticality": "Grammaticality",
    "lexical_diversity": "Lexical Diversity and Appropriateness",
    "structure_logic": "Structure and Logic",
}

_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set3
_HOVER_WIDTH = 60


def color_map(values: Sequence[Any]) -> dict[str, str]:
    """A stable colour per distinct value (sorted), so every panel of a figure uses the same colours."""
    keys = sorted({str(v) for v in values})
    return {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(keys)}


@functools.cache
def _wrap_pattern(width: int) -> re.Pattern[str]:
    # Greedy: up to ``width`` characters ending at a space (or the end), else ``width`` characters of one
    # long word. One regex pass instead of textwrap, which took 80 % of drawing a 3,500-point projection.
    return re.compile(rf"(.{{1,{width}}})(?: |$)|(.{{{width}}})")


def _wrap(text: Any, width: int = _HOVER_WIDTH) -> str:
    """Wrap hover text with <br> so long texts stay readable in the tooltip (whitespace runs collapse)."""
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else " ".join(str(text).split())
    if len(s) <= width:
        return s
    return "<br>".join(a or b for a, b in _wrap_pattern(width).findall(s))


def projection_frame(report: Mapping[str, Any], dataset: str, method: str = "tsne") -> pd.DataFrame:
    """The stored 2-D projection of ``dataset``: a DataFrame ``x, y, label, text, persona`` + attributes."""
    proj = report["projections"][dataset]
    if method not in proj["coords"]:
        raise KeyError(
            f"projection {method!r} was not computed for {dataset!r} (have {sorted(proj['coords'])})"
        )
    coords = proj["coords"][method]
    frame = pd.DataFrame({"x": coords["x"], "y": coords["y"], "label": proj["label"], "text": proj["text"]})
    frame["persona"] = proj.get("persona") or [""] * len(frame)
    for col, values in (proj.get("attributes") or {}).items():
        if col not in frame.columns:
            frame[col] = values
    return frame


def projection_figure(
    frames: Mapping[str, pd.DataFrame],
    *,
    color_by: str = "label",
    hover: Sequence[str] = ("label", "text", "persona"),
    title: str | None = None,
    marker_size: int = 5,
    panel_titles: Mapping[str, str] | None = None,
) -> go.Figure:
    """Scatter of 2-D projections, one panel per dataset side by side, coloured by ``color_by``.

    Each frame needs ``x`` and ``y`` columns and the ``color_by`` column; the ``hover`` columns that exist
    are shown (wrapped) in the tooltip. Colours are shared across panels and the legend lists each value once.
    Points are WebGL markers (``Scattergl``), which stay responsive at tens of thousands of points.
    ``panel_titles`` replaces a panel's title (default: the dataset name).
    """
    if not frames:
        raise ValueError("projection_figure needs at least one dataset")
    names = list(frames)
    all_values = [v for f in frames.values() if color_by in f.columns for v in f[color_by].astype(str)]
    colors = color_map(all_values)
    titles = [(panel_titles or {}).get(n, n) for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.04)
    # Layout first, traces last, all at once: plotly deep-copies the traces on every later layout update
    # (3 s of drawing 10,000 points otherwise).
    fig.update_xaxes(showticklabels=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, zeroline=False)
    fig.update_layout(
        title=title,
        legend_title_text=color_by,
        height=480,
        margin={"l": 20, "r": 20, "t": 80 if title and "<br>" in title else 60, "b": 20},
        template="plotly_white",
    )
    traces: list[go.Scattergl] = []
    cols: list[int] = []
    shown: set[str] = set()
    for col, name in enumerate(names, start=1):
        frame = frames[name]
        if color_by not in frame.columns:
            raise KeyError(f"dataset {name!r} has no column {color_by!r} to colour by")
        hover_cols = [h for h in hover if h in frame.columns]
        for value in sorted(frame[color_by].astype(str).unique()):
            part = frame[frame[color_by].astype(str) == value]
            custom = np.array([[_wrap(v) for v in part[h].tolist()] for h in hover_cols], dtype=object).T
            template = "<br>".join(f"<b>{h}</b>: %{{customdata[{i}]}}" for i, h in enumerate(hover_cols))
            traces.append(
                go.Scattergl(
                    # float32 halves the base64 payload in the HTML report; far below what a plot shows
                    x=part["x"].to_numpy(dtype=np.float32),
                    y=part["y"].to_numpy(dtype=np.float32),
                    mode="markers",
                    name=value,
                    legendgroup=value,
                    showlegend=value not in shown,
                    marker={"color": colors[value], "size": marker_size, "opacity": 0.8},
                    customdata=custom if len(hover_cols) else None,
                    hovertemplate=(template or "%{x}, %{y}") + "<extra>" + _wrap(name, 30) + "</extra>",
                )
            )
            cols.append(col)
            shown.add(value)
    fig.add_traces(traces, rows=[1] * len(traces), cols=cols)
    return fig


def projection_figure_from_report(
    report: Mapping[str, Any],
    *,
    method: str = "tsne",
    color_by: str = "label",
    datasets: Sequence[str] | None = None,
) -> go.Figure:
    """Projection scatter of the report's datasets (all, or ``datasets``) with the stored coordinates."""
    from personagen_core.evaluation.projection import METHOD_NAMES

    names = list(datasets) if datasets is not None else list(report["projections"])
    frames = {n: projection_frame(report, n, method) for n in names}
    label = METHOD_NAMES.get(method, method)
    notes = {n: projection_sample_note(report, n) for n in names}
    title = f"{label} projection, coloured by {color_by}"
    sampled = [n for n in names if notes[n]]
    if sampled:
        title += "<br><sup>" + "; ".join(f"{n}: {notes[n]}" for n in sampled) + "</sup>"
    panels = {n: f"{n} ({notes[n]})" if notes[n] else n for n in names}
    return projection_figure(frames, color_by=color_by, title=title, panel_titles=panels)


def projection_sample_note(report: Mapping[str, Any], dataset: str) -> str:
    """``"seeded stratified sample (by label and source) of 10,000 of 100,000 texts, seed 0"`` when the
    dataset's projection was computed on a sample (``report["projections"][dataset]["sample"]``), else ``""``."""
    sample = (report.get("projections") or {}).get(dataset, {}).get("sample")
    if not sample:
        return ""
    by = " and ".join(sample.get("stratified_by") or ["label"])
    seed = f", seed {sample['seed']}" if sample.get("seed") is not None else ""
    return f"seeded stratified sample (by {by}) of {int(sample['n']):,} of {int(sample['of']):,} texts{seed}"


def confusion_figure(
    labels: Sequence[str],
    matrix: Sequence[Sequence[float]],
    *,
    normalised: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of one confusion matrix (rows = true label, columns = predicted), values written in cells."""
    z = np.asarray(matrix, dtype=float)
    text = [[f"{v:.2f}" if normalised else f"{int(v)}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(labels),
            y=list(labels),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalised else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", template="plotly_white")
    fig.update_yaxes(autorange="reversed")
    return fig


def confusion_grid(
    matrices: Mapping[str, Mapping[str, Any]],
    *,
    normalised: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Confusion heatmaps side by side; ``matrices[name]`` is ``{"labels", "counts", "normalised"}``."""
    names = list(matrices)
    if not names:
        raise ValueError("confusion_grid needs at least one matrix")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    for col, name in enumerate(names, start=1):
        m = matrices[name]
        z = np.asarray(m["normalised"] if normalised else m["counts"], dtype=float)
        text = [[f"{v:.2f}" if normalised else f"{int(v)}" for v in row] for row in z]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(m["labels"]),
                y=list(m["labels"]),
                text=text,
                texttemplate="%{text}",
                colorscale="Blues",
                zmin=0,
                zmax=1 if normalised else float(z.max() if z.size else 1),
                showscale=col == len(names),
                hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_layout(
        title=title,
        height=420 + 10 * max(len(m["labels"]) for m in matrices.values()),
        template="plotly_white",
    )
    return fig


def diversity_figure(report: Mapping[str, Any], metrics: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars of the diversity metrics per emotion, one panel per metric, one colour per dataset."""
    per_ds = report["diversity"]["datasets"]
    names = list(per_ds)
    available = {m for d in per_ds.values() for e in d["per_emotion"].values() for m in e}
    metrics = [m for m in (metrics or DIVERSITY_METRICS) if m in available]
    if not metrics:
        raise ValueError("the report has no diversity metrics to draw")
    titles = [DIVERSITY_METRICS.get(m, m) for m in metrics]
    ncols = 3
    nrows = math.ceil(len(metrics) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, vertical_spacing=0.12)
    colors = color_map(names)
    for i, metric in enumerate(metrics):
        row, col = divmod(i, ncols)
        for name in names:
            emotions = list(per_ds[name]["per_emotion"])
            values = [_finite_or_none(per_ds[name]["per_emotion"][e].get(metric)) for e in emotions]
            sizes = [per_ds[name]["per_emotion"][e].get("n") for e in emotions]
            few = set(per_ds[name].get("unreliable") or [])
            fig.add_trace(
                go.Bar(
                    x=emotions,
                    y=values,
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                    marker_color=colors[name],
                    # Emotions with too few texts are drawn faded and hatched: their values are unreliable.
                    marker_opacity=[0.35 if e in few else 1.0 for e in emotions],
                    marker_pattern_shape=["/" if e in few else "" for e in emotions],
                    customdata=[
                        f"n = {int(n) if n is not None else '?'}"
                        + (" (too few: unreliable)" if e in few else "")
                        for e, n in zip(emotions, sizes, strict=True)
                    ],
                    hovertemplate="%{x}: %{y:.4f}, %{customdata}<extra>" + name + "</extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
    title = "Diversity per emotion"
    if any(d.get("unreliable") for d in per_ds.values()):
        title += " (faded, hatched bars: too few texts, unreliable)"
    fig.update_layout(barmode="group", height=300 * nrows, title=title, template="plotly_white")
    return fig


def judge_distribution_figure(report: Mapping[str, Any]) -> go.Figure:
    """Share of texts at each 1–5 score, one panel per criterion, one colour per dataset (Fig. 4)."""
    judge = report["judge"]
    per_ds = judge["datasets"]
    names = list(per_ds)
    criteria = list(judge["criteria"])
    fig = make_subplots(
        rows=1, cols=len(criteria), subplot_titles=[JUDGE_CRITERIA_LABELS.get(c, c) for c in criteria]
    )
    colors = color_map(names)
    for col, crit in enumerate(criteria, start=1):
        for name in names:
            dist = per_ds[name]["distribution"][crit]
            total = sum(dist.values()) or 1
            scores = [str(s) for s in range(1, 6)]
            fig.add_trace(
                go.Bar(
                    x=scores,
                    y=[dist.get(s, 0) / total for s in scores],
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker_color=colors[name],
                    hovertemplate="score %{x}: %{y:.1%}<extra>" + name + "</extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    fig.update_layout(
        barmode="group", height=380, title="LLM judge score distribution", template="plotly_white"
    )
    return fig


def judge_emotion_figure(report: Mapping[str, Any]) -> go.Figure:
    """Mean judge score per emotion (rows) and criterion (columns), one heatmap per dataset."""
    judge = report["judge"]
    per_ds = judge["datasets"]
    names = list(per_ds)
    criteria = list(judge["criteria"])
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.12)
    for col, name in enumerate(names, start=1):
        per_emotion = per_ds[name]["per_emotion"]
        emotions = list(per_emotion)
        z = [[_finite_or_none(per_emotion[e].get(c)) for c in criteria] for e in emotions]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[JUDGE_CRITERIA_LABELS.get(c, c) for c in criteria],
                y=emotions,
                zmin=1,
                zmax=5,
                colorscale="Viridis",
                texttemplate="%{z:.2f}",
                showscale=col == len(names),
                hovertemplate="%{y} / %{x}: %{z:.2f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_layout(height=420, title="Mean judge score per emotion", template="plotly_white")
    return fig


def real_data_figure(report: Mapping[str, Any], metrics: Sequence[str] | None = None) -> go.Figure:
    """One panel per real-data metric, one bar per dataset, bootstrap confidence intervals as error bars."""
    per_ds = report["real_data"]["datasets"]
    names = list(per_ds)
    available = {m for d in per_ds.values() for m in d}
    metrics = [m for m in (metrics or REAL_DATA_METRICS) if m in available]
    if not metrics:
        raise ValueError("the report has no real-data metrics to draw")
    ncols = 3
    nrows = math.ceil(len(metrics) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[REAL_DATA_METRICS.get(m, m) for m in metrics])
    colors = color_map(names)
    for i, metric in enumerate(metrics):
        row, col = divmod(i, ncols)
        values, plus, minus = [], [], []
        for name in names:
            entry = per_ds[name].get(metric) or {}
            v = _finite_or_none(entry.get("value"))
            ci = entry.get("ci")
            values.append(v)
            if ci and v is not None and None not in ci:
                plus.append(max(ci[1] - v, 0.0))
                minus.append(max(v - ci[0], 0.0))
            else:
                plus.append(0.0)
                minus.append(0.0)
        fig.add_trace(
            go.Bar(
                x=names,
                y=values,
                marker_color=[colors[n] for n in names],
                error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True},
                showlegend=False,
                hovertemplate="%{x}: %{y:.4f}<extra></extra>",
            ),
            row=row + 1,
            col=col + 1,
        )
    fig.update_layout(height=300 * nrows, title="Comparison with real data", template="plotly_white")
    return fig


def prd_curve_figure(report: Mapping[str, Any]) -> go.Figure:
    """PRD curves (precision against recall, Sajjadi et al. 2018), one line per dataset, vs the gold data."""
    curves = report["real_data"].get("prd_curves") or {}
    if not curves:
        raise ValueError("the report has no PRD curves")
    colors = color_map(list(curves))
    fig = go.Figure()
    for name, curve in curves.items():
        fig.add_trace(
            go.Scatter(
                x=curve["recall"],
                y=curve["precision"],
                mode="lines",
                name=name,
                line={"color": colors[name]},
                hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra>" + name + "</extra>",
            )
        )
    fig.update_xaxes(title="recall", range=[0, 1.02])
    fig.update_yaxes(title="precision", range=[0, 1.02], scaleanchor="x")
    fig.update_layout(
        height=460, width=560, title="PRD curves against the gold data", template="plotly_white"
    )
    return fig


_DOWNSTREAM_COLUMNS = {
    "accuracy": "Accuracy",
    "weighted_precision": "Precision (weighted)",
    "weighted_recall": "Recall (weighted)",
    "weighted_f1": "F1 (weighted)",
    "macro_f1": "F1 (macro)",
}


def _ci_cell(ci: Any) -> str:
    if not ci or len(ci) != 2 or any(_finite_or_none(v) is None for v in ci):
        return ""
    return f"[{float(ci[0]):.3f}, {float(ci[1]):.3f}]"


def downstream_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """Table VII as a DataFrame (one row per training set): scores with their intervals, the scope
    (shared labels or full test split), ``n_test``, the labels scored and the gold labels left out."""
    rows = report["downstream"]["rows"]
    records = []
    for name, r in rows.items():
        rec: dict[str, Any] = {"training data": name, "scope": r.get("scope", "")}
        for key, title in _DOWNSTREAM_COLUMNS.items():
            rec[title] = _finite_or_none(r.get(key))
            if key in ("accuracy", "weighted_f1", "macro_f1"):
                rec[f"{title} CI"] = _ci_cell((r.get("ci") or {}).get(key))
        rec["n_train"] = r.get("n_train")
        rec["n_test"] = r.get("n_test")
        rec["labels"] = ", ".join(map(str, r.get("labels") or r.get("confusion", {}).get("labels", [])))
        rec["left out"] = ", ".join(map(str, r.get("left_out") or [])) or "none"
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("training data")


def downstream_figure(report: Mapping[str, Any]) -> go.Figure:
    """Table VII as a chart: grouped bars of accuracy and weighted / macro F1 per training set, with their
    bootstrap intervals; each bar group is labelled with the test texts it was scored on (the numbers
    themselves are in the table beside it, so the chart does not repeat them)."""
    rows = report["downstream"]["rows"]
    names = list(rows)
    ticks = [
        f"{n}<br>n_test = {rows[n]['n_test']}" if rows[n].get("n_test") is not None else n for n in names
    ]
    fig = go.Figure()
    colors = color_map(list(_DOWNSTREAM_COLUMNS))
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        y = [_finite_or_none(rows[n].get(key)) for n in names]
        cis = [(rows[n].get("ci") or {}).get(key) for n in names]
        plus = [
            (_finite_or_none(c[1]) - v) if c and v is not None and _finite_or_none(c[1]) is not None else None
            for c, v in zip(cis, y, strict=True)
        ]
        minus = [
            (v - _finite_or_none(c[0])) if c and v is not None and _finite_or_none(c[0]) is not None else None
            for c, v in zip(cis, y, strict=True)
        ]
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=y,
                name=_DOWNSTREAM_COLUMNS[key],
                marker_color=colors[key],
                error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": any(plus)},
                hovertemplate="%{x}: %{y:.4f}<extra>" + _DOWNSTREAM_COLUMNS[key] + "</extra>",
            )
        )
    fig.update_yaxes(range=[0, 1], title="score on the gold test texts")
    fig.update_layout(
        barmode="group",
        height=460,
        title="Train on synthetic, test on real",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def _finite_or_none(value: Any) -> float | None:
    """Plotly draws ``None`` as a gap; NaN / missing values become ``None``."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 4) -> str:
    v = _finite_or_none(value)
    return "–" if v is None else f"{v:.{digits}f}"


def slices_figure(report: Mapping[str, Any], dataset: str, metric: str, *, k: int = 12) -> go.Figure:
    """The slices of ``dataset`` that differ most from the whole dataset on ``metric``: horizontal bars
    with their intervals and a line at the dataset's value (``report["slices"]``)."""
    block = report["slices"]["datasets"][dataset]
    rows = (block.get("differ_most") or {}).get(metric) or []
    rows = rows[:k][::-1]  # largest difference on top
    whole = next((r.get(metric) for r in block["rows"] if r["attribute"] == "(all)"), None)
    names = [f"{r['attribute']} = {r['value']} (n = {r['n']})" for r in rows]
    vals = [_finite_or_none(r.get(metric)) for r in rows]
    lo = [_finite_or_none(r.get(f"{metric}_low")) for r in rows]
    hi = [_finite_or_none(r.get(f"{metric}_high")) for r in rows]
    title = (report["slices"].get("metrics", {}).get(metric) or {}).get("name", metric)
    fig = go.Figure(
        go.Bar(
            y=names,
            x=vals,
            orientation="h",
            marker_color=["#c92a2a" if (v or 0) < (whole or 0) else "#2b8a3e" for v in vals],
            error_x={
                "type": "data",
                "array": [
                    (h - v) if h is not None and v is not None else None
                    for h, v in zip(hi, vals, strict=True)
                ],
                "arrayminus": [
                    (v - lo_) if lo_ is not None and v is not None else None
                    for lo_, v in zip(lo, vals, strict=True)
                ],
            },
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    if whole is not None:
        fig.add_vline(x=whole, line_dash="dash", annotation_text=f"whole dataset {whole:.3f}")
    fig.update_layout(
        title=f"{dataset}: slices that differ most ({title})",
        height=160 + 28 * max(len(rows), 1),
        template="plotly_white",
        margin={"l": 10},
    )
    return fig

"""Figures are pure functions of report dicts / DataFrames: check what they draw, not how it looks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from personagen_core.evaluation import figures


def _projection(labels: list[str], offset: float) -> dict:
    n = len(labels)
    return {
        "coords": {"tsne": {"x": list(np.arange(n) + offset), "y": list(np.arange(n) * 2.0)}},
        "label": labels,
        "text": [f"text {i} " + "word " * 30 for i in range(n)],
        "persona": [f"persona {i}" for i in range(n)],
        "attributes": {"gender": ["female", "male"] * (n // 2) + ["female"] * (n % 2)},
    }


def _confusion(labels: list[str]) -> dict:
    counts = np.eye(len(labels), dtype=int) * 4 + 1
    return {
        "labels": labels,
        "counts": counts.tolist(),
        "normalised": (counts / counts.sum(axis=1, keepdims=True)).tolist(),
    }


LABELS = ["anger", "fear", "joy"]
REPORT = {
    "projections": {
        "A": _projection(["joy", "fear", "anger", "joy"], 0),
        "B": _projection(["joy", "fear", "joy"], 5),
    },
    "diversity": {
        "datasets": {
            name: {
                "per_emotion": {
                    e: {"mean_cosine_distance": 0.5 + i / 10, "cluster_entropy": 1.5, "n": 4}
                    for i, e in enumerate(LABELS)
                },
                "overall": {"mean_cosine_distance": 0.6, "cluster_entropy": 1.5},
            }
            for name in ("A", "B")
        }
    },
    "separability": {
        "datasets": {"A": {"confusion": _confusion(LABELS)}, "B": {"confusion": _confusion(LABELS)}}
    },
    "judge": {
        "model": "judge-model",
        "criteria": ["emotion_match", "grammaticality"],
        "datasets": {
            name: {
                "distribution": {
                    "emotion_match": {"1": 0, "2": 1, "3": 0, "4": 2, "5": 1},
                    "grammaticality": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 4},
                },
                "per_emotion": {
                    "joy": {"emotion_match": 4.5, "grammaticality": 5.0},
                    "fear": {"emotion_match": 3.0, "grammaticality": 5.0},
                },
            }
            for name in ("A", "B")
        },
    },
    "real_data": {
        "datasets": {
            "A": {"fid": {"value": 0.4, "ci": [0.35, 0.45]}, "kl": {"value": 0.1, "ci": [None, None]}},
            "B": {"fid": {"value": 0.6, "ci": [0.5, 0.7]}, "kl": {"value": None, "ci": None}},
        }
    },
    "downstream": {
        "rows": {
            "A": {"accuracy": 0.5, "weighted_f1": 0.45, "macro_f1": 0.4, "confusion": _confusion(LABELS)},
            "majority class": {"accuracy": 0.35, "weighted_f1": 0.18, "macro_f1": 0.1},
        }
    },
}


def test_projection_frame_has_coordinates_and_hover_fields() -> None:
    frame = figures.projection_frame(REPORT, "A", "tsne")
    assert list(frame.columns[:5]) == ["x", "y", "label", "text", "persona"]
    assert "gender" in frame.columns and len(frame) == 4
    with pytest.raises(KeyError, match="umap"):
        figures.projection_frame(REPORT, "A", "umap")


def test_projection_side_by_side_shares_colours_and_legend() -> None:
    fig = figures.projection_figure_from_report(REPORT, method="tsne")
    assert isinstance(fig, go.Figure)
    # one trace per (dataset, label): A has 3 labels, B has 2
    assert len(fig.data) == 5
    by_label: dict[str, set[str]] = {}
    for trace in fig.data:
        by_label.setdefault(trace.name, set()).add(trace.marker.color)
    assert all(len(colours) == 1 for colours in by_label.values())
    assert sum(t.showlegend for t in fig.data) == 3  # each label once in the legend
    # panels: the traces of B sit on the second x axis
    assert {t.xaxis for t in fig.data} == {"x", "x2"}
    # hover carries the text (wrapped) and the persona
    joy_a = next(t for t in fig.data if t.name == "joy" and t.xaxis == "x")
    assert "<br>" in joy_a.customdata[0][1] and joy_a.customdata[0][2] == "persona 0"
    assert "text" in joy_a.hovertemplate and "persona" in joy_a.hovertemplate


def test_projection_coloured_by_attribute() -> None:
    fig = figures.projection_figure_from_report(REPORT, color_by="gender")
    assert {t.name for t in fig.data} == {"female", "male"}
    with pytest.raises(KeyError, match="occupation"):
        figures.projection_figure_from_report(REPORT, color_by="occupation")


def test_projection_figure_from_plain_frames() -> None:
    frame = pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "label": ["a", "b"]})
    fig = figures.projection_figure({"only": frame})
    assert [t.name for t in fig.data] == ["a", "b"]
    with pytest.raises(ValueError):
        figures.projection_figure({})


def test_confusion_heatmaps_counts_and_normalised() -> None:
    m = _confusion(LABELS)
    counts = figures.confusion_figure(m["labels"], m["counts"])
    assert counts.data[0].text[0][0] == "5"
    norm = figures.confusion_figure(m["labels"], m["normalised"], normalised=True)
    assert norm.data[0].zmax == 1 and norm.data[0].text[0][0] == "0.71"
    grid = figures.confusion_grid({k: v["confusion"] for k, v in REPORT["separability"]["datasets"].items()})
    assert len(grid.data) == 2 and list(grid.data[1].x) == LABELS


def test_diversity_bars_one_trace_per_dataset_and_metric() -> None:
    fig = figures.diversity_figure(REPORT)
    assert len(fig.data) == 4  # 2 metrics present x 2 datasets
    mcd_a = fig.data[0]
    assert mcd_a.name == "A" and list(mcd_a.x) == LABELS
    assert mcd_a.y == pytest.approx((0.5, 0.6, 0.7))


def test_judge_figures() -> None:
    dist = figures.judge_distribution_figure(REPORT)
    assert len(dist.data) == 4
    em_a = dist.data[0]
    assert em_a.y == pytest.approx((0, 0.25, 0, 0.5, 0.25))
    heat = figures.judge_emotion_figure(REPORT)
    assert len(heat.data) == 2 and list(heat.data[0].y) == ["joy", "fear"]


def test_real_data_bars_with_confidence_intervals_and_gaps() -> None:
    fig = figures.real_data_figure(REPORT)
    fid, kl = fig.data
    assert list(fid.x) == ["A", "B"] and fid.y == pytest.approx((0.4, 0.6))
    assert fid.error_y.array == pytest.approx((0.05, 0.1))
    assert kl.y[1] is None  # a missing value is a gap, not a zero


def test_prd_curves_one_line_per_dataset() -> None:
    report = {
        "real_data": {
            "prd_curves": {
                "A": {"precision": [1.0, 0.5, 0.0], "recall": [0.0, 0.5, 1.0]},
                "B": {"precision": [0.9, 0.2], "recall": [0.1, 0.8]},
            }
        }
    }
    fig = figures.prd_curve_figure(report)
    assert [t.name for t in fig.data] == ["A", "B"]
    assert list(fig.data[0].x) == [0.0, 0.5, 1.0] and list(fig.data[0].y) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError):
        figures.prd_curve_figure({"real_data": {"prd_curves": {}}})


def test_downstream_is_a_chart_not_a_table() -> None:
    fig = figures.downstream_figure(REPORT)
    assert not any(isinstance(t, go.Table) for t in fig.data)  # the numbers are in the table beside it
    assert [t.name for t in fig.data] == ["Accuracy", "F1 (weighted)", "F1 (macro)"]
    accuracy = fig.data[0]
    assert list(accuracy.y)[0] == 0.5
    assert [x.split("<br>")[0] for x in accuracy.x] == ["A", "majority class"]


def test_diversity_bars_of_too_few_texts_are_faded_and_say_n() -> None:
    import copy

    report = copy.deepcopy(REPORT)
    block = report["diversity"]["datasets"]["A"]
    block["unreliable"] = [next(iter(block["per_emotion"]))]
    fig = figures.diversity_figure(report)
    trace = next(t for t in fig.data if t.name == "A")
    first = list(trace.x).index(block["unreliable"][0])
    assert trace.marker.opacity[first] < 1 and trace.marker.pattern.shape[first] == "/"
    assert "unreliable" in trace.customdata[first] and "n = " in trace.customdata[first]
    assert all(o == 1.0 for i, o in enumerate(trace.marker.opacity) if i != first)
    assert "unreliable" in fig.layout.title.text
    assert "unreliable" not in figures.diversity_figure(REPORT).layout.title.text


def test_hover_wrap_is_textwraps_greedy_wrap() -> None:
    import textwrap

    from hypothesis import given, settings
    from hypothesis import strategies as hst

    @settings(max_examples=300, deadline=None)
    @given(hst.lists(hst.text(alphabet="abcdefghij", min_size=1, max_size=75), max_size=40), hst.integers(5, 60))
    def check(parts: list[str], width: int) -> None:
        text = " ".join(parts)
        lines = figures._wrap(text, width).split("<br>")
        assert all(len(line) <= width for line in lines)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost
        if all(len(p) <= width for p in parts):  # no word to break: the same lines as textwrap
            assert lines == (textwrap.wrap(text, width) or [text])

    check()
    assert figures._wrap("a  b\n c", 60) == "a b c" and figures._wrap(None) == ""

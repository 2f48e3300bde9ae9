"""Diversity metrics on equal-size seeded subsamples with percentile intervals (diversity_ci.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation.diversity_ci import (
    INTERVAL_METRICS,
    diversity_intervals,
    equal_sizes,
    min_texts_for_interval,
)

_WORDS = ["happy", "sad", "rain", "work", "friend", "called", "late", "bus", "exam", "party", "phone", "cat"]


def _data(counts: dict[str, int], seed: int = 0, dim: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.array([e for e, n in counts.items() for _ in range(n)])
    X = rng.normal(size=(len(labels), dim))
    texts = [" ".join(rng.choice(_WORDS, size=8)) for _ in labels]
    return X, labels, texts


def test_equal_sizes_take_half_the_smallest_compared_dataset_capped() -> None:
    counts = {"big": {"joy": 10_000, "fear": 40, "anger": 3}, "small": {"joy": 300, "fear": 51}}
    sizes = equal_sizes(counts, k=5, max_size=100)
    # joy: min(100, 300 // 2); fear: 40 // 2; anger: 3 texts are fewer than 10, no size at all
    assert sizes == {"fear": 20, "joy": 100}
    assert equal_sizes(counts, k=5, max_size=1000)["joy"] == 150
    assert min_texts_for_interval(5) == 10 and min_texts_for_interval(8) == 16


def test_intervals_are_seeded_and_contain_the_point_estimate() -> None:
    X, y, texts = _data({"joy": 40, "fear": 30, "anger": 24})
    sizes = equal_sizes({"d": {"joy": 40, "fear": 30, "anger": 24}})
    a = diversity_intervals(X, y, texts, sizes, n_resamples=6, random_state=3)
    b = diversity_intervals(X, y, texts, sizes, n_resamples=6, random_state=3)
    c = diversity_intervals(X, y, texts, sizes, n_resamples=6, random_state=4)
    assert a == b
    assert a != c
    assert set(a["per_emotion"]) == {"joy", "fear", "anger"} and not a["needs"]
    # one dataset: each emotion at half its own texts
    assert [a["per_emotion"][e]["n"] for e in ("joy", "fear", "anger")] == [20, 15, 12]
    for block in [*a["per_emotion"].values(), a["overall"]]:
        for name in INTERVAL_METRICS:
            s = block[name]
            assert s["low"] <= s["value"] <= s["high"], (name, s)
    # The subsamples differ, so some interval has width (random vectors: the Vendi score varies).
    assert a["overall"]["vendi_score"]["high"] > a["overall"]["vendi_score"]["low"]
    # The overall row summarises the per-replicate mean over emotions.
    means = np.mean([a["per_emotion"][e]["mean_cosine_distance"]["value"] for e in a["per_emotion"]])
    assert math.isclose(a["overall"]["mean_cosine_distance"]["value"], means, rel_tol=0.05)


def test_replicates_do_not_depend_on_their_number() -> None:
    """Replicate b uses its own seed stream: asking for more replicates extends, not redraws, the set."""
    X, y, texts = _data({"joy": 30, "fear": 30})
    sizes = {"joy": 10, "fear": 10}
    few = diversity_intervals(X, y, texts, sizes, n_resamples=2, confidence=0.5)
    many = diversity_intervals(X, y, texts, sizes, n_resamples=4, confidence=0.5)
    assert few["settings"]["n_resamples"] == 2 and many["settings"]["n_resamples"] == 4
    assert few != many  # more draws, other percentiles


def test_small_and_odd_data_say_what_an_interval_needs() -> None:
    # 3 texts per emotion, an unknown label, one class with enough texts
    X, y, texts = _data({"joy": 3, "fear": 3, "unknown": 3, "anger": 20})
    sizes = equal_sizes({"d": {"joy": 3, "fear": 3, "unknown": 3, "anger": 20}})
    out = diversity_intervals(X, y, texts, sizes, n_resamples=3)
    assert set(out["per_emotion"]) == {"anger"}
    for e in ("joy", "fear", "unknown"):
        assert out["needs"][e] == "an interval needs at least 10 texts of this emotion; it has 3"
    assert out["per_emotion"]["anger"]["centroid_distance"]["value"] is None  # one emotion: no centroid pair
    assert out["notes"] == ["centroid distance needs at least two emotions with an interval"]
    # Nothing computable at all: no error, only reasons
    X, y, texts = _data({"joy": 3})
    none = diversity_intervals(X, y, texts, {}, n_resamples=3)
    assert none["per_emotion"] == {} and none["overall"] == {} and "joy" in none["needs"]


def test_a_shared_size_the_dataset_cannot_halve_is_reported_not_raised() -> None:
    X, y, texts = _data({"joy": 12})
    out = diversity_intervals(X, y, texts, {"joy": 8}, n_resamples=2)
    assert out["needs"]["joy"] == "the shared subsample size 8 is more than half of its 12 texts"
    out = diversity_intervals(X, y, texts, {"joy": 3}, n_resamples=2)
    assert "subsamples of at least 5" in out["needs"]["joy"]


def test_bad_arguments_are_clear_errors() -> None:
    X, y, texts = _data({"joy": 20})
    with pytest.raises(DataError, match="at least 2 resamples"):
        diversity_intervals(X, y, texts, {"joy": 10}, n_resamples=1)
    with pytest.raises(DataError, match="must match"):
        diversity_intervals(X, y[:5], texts, {"joy": 10})
    with pytest.raises(DataError, match="confidence"):
        diversity_intervals(X, y, texts, {"joy": 10}, confidence=1.5)


def test_cost_does_not_grow_with_the_dataset() -> None:
    """Only the m texts of a replicate are touched: 20,000 rows cost what 2 x m rows cost (same draws)."""
    X, y, texts = _data({"joy": 20_000}, dim=8)
    out = diversity_intervals(X, y, texts, {"joy": 10}, n_resamples=2)
    assert out["per_emotion"]["joy"]["n"] == 10


def test_evaluate_compares_datasets_at_one_size_per_emotion(tmp_path) -> None:
    from test_evaluation import FAST, HashEmbedder, make_texts

    from personagen_core.evaluation.suite import evaluate

    settings = FAST.model_copy(update={"diversity_resamples": 4})
    datasets = {"big": make_texts(30), "small": make_texts(12, offset=40), "tiny": make_texts(3, offset=80)}
    report = evaluate(datasets, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path)
    div = report["diversity"]
    # tiny (3 per emotion) does not take part; the others share half of small's 12 texts per emotion
    assert div["equal_size"]["sizes"] == {"anger": 6, "joy": 6, "sadness": 6}
    assert div["equal_size"]["min_texts"] == 10
    assert "4 seeded subsamples (seed 0)" in div["equal_size"]["description"]
    for name in ("big", "small"):
        eq = div["datasets"][name]["equal_size"]
        assert {e: r["n"] for e, r in eq["per_emotion"].items()} == {"anger": 6, "joy": 6, "sadness": 6}
        s = eq["overall"]["vendi_score"]
        assert s["low"] <= s["value"] <= s["high"]
    tiny = div["datasets"]["tiny"]["equal_size"]
    assert tiny["per_emotion"] == {} and tiny["needs"]["joy"].startswith("an interval needs at least 10")
    # the full-data table is still there, unchanged in shape
    assert div["datasets"]["tiny"]["per_emotion"]["joy"]["n"] == 3
    off = evaluate(
        datasets,
        settings=settings.model_copy(update={"diversity_resamples": 0}),
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert "equal_size" not in off["diversity"] and "equal_size" not in off["diversity"]["datasets"]["big"]


def test_report_shows_intervals_and_old_reports_still_render(tmp_path) -> None:
    import copy
    import json

    from test_evaluation import FAST, HashEmbedder, make_texts

    from personagen_core.evaluation.diversity_ci import format_interval
    from personagen_core.evaluation.report import write_report
    from personagen_core.evaluation.suite import evaluate

    settings = FAST.model_copy(update={"diversity_resamples": 3})
    datasets = {"big": make_texts(24), "tiny": make_texts(3, offset=80)}
    report = evaluate(datasets, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "c")
    json_path, html_path = write_report(report, tmp_path / "new")
    page = html_path.read_text(encoding="utf-8")
    stored = json.loads(json_path.read_text(encoding="utf-8"))
    overall = stored["diversity"]["datasets"]["big"]["equal_size"]["overall"]["mean_cosine_distance"]
    assert "Table IV (c). Diversity at equal size per emotion" in page
    assert format_interval(overall) in page  # "median [low, high]" of the JSON, in the HTML
    assert "3 seeded subsamples (seed 0)" in page
    assert (
        "tiny: no interval for anger: an interval needs at least 10 texts of this emotion; it has 3" in page
    )
    # A stored evaluation from before the intervals: same page, with a note instead of Table IV (c)
    old = copy.deepcopy(report)
    old["diversity"].pop("equal_size")
    for d in old["diversity"]["datasets"].values():
        d.pop("equal_size")
    _, old_html = write_report(old, tmp_path / "old")
    old_page = old_html.read_text(encoding="utf-8")
    assert "Table IV. Diversity" in old_page and "Table IV (c)" not in old_page
    assert "No intervals in this evaluation" in old_page


def test_cli_prints_the_equal_size_interval_and_what_small_emotions_need(
    tmp_path, capsys, monkeypatch
) -> None:
    import re

    import pandas as pd
    from test_cli_evaluate import _run
    from test_eval_scale import _CliEmbedder

    from personagen_core.evaluation import embeddings

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(embeddings, "Embedder", _CliEmbedder)
    rows = [
        {"text": f"text {i} about {lab}", "label": lab}
        for lab, n in (("joy", 30), ("odd", 3))
        for i in range(n)
    ]
    data = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    argv = ["evaluate", "--data", str(data), "--projection", "pca", "--bootstrap", "0", "--prd-runs", "1"]
    code, out, err = _run([*argv, "--diversity-resamples", "3", "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert re.search(r"MCD at equal size [\d.]+ \[[\d.]+, [\d.]+\]", out)
    assert "diversity intervals: 3 seeded subsamples (seed 0)" in out and "joy 15" in out
    assert "d: no interval for odd: an interval needs at least 10 texts of this emotion; it has 3" in out
    code, out, err = _run([*argv, "--diversity-resamples", "1", "-o", str(tmp_path / "b")], capsys)
    assert code == 2 and "--diversity-resamples must be 0 (no intervals) or at least 2" in err


def test_projection_sample_is_stratified_by_label_and_source_and_says_so(tmp_path) -> None:
    import pandas as pd
    from test_eval_scale import RandomEmbedder

    from personagen_core.evaluation import figures
    from personagen_core.evaluation.report import render_html
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate

    rng = np.random.default_rng(0)
    labels = rng.choice(["joy", "anger", "fear"], 600, p=[0.5, 0.3, 0.2])
    source = np.where(np.arange(600) < 480, "synthetic", "real")  # real texts are 20 %
    frame = pd.DataFrame({"text": [f"text {i} {lab}" for i, lab in enumerate(labels)], "label": labels})
    frame["source"] = source
    settings = EvaluationSettings(
        projections=("pca",), max_projection_points=60, diversity_resamples=0, bootstrap=0, prd_runs=1
    )
    report = evaluate({"mixed": frame}, settings=settings, embedder=RandomEmbedder(), cache_dir=tmp_path)
    proj = report["projections"]["mixed"]
    assert proj["sample"]["stratified_by"] == ["label", "source"] and proj["sample"]["seed"] == 0
    drawn = pd.crosstab(pd.Series(proj["label"]), pd.Series(proj["attributes"]["source"]))
    expected = pd.crosstab(frame["label"], frame["source"]) * 60 / 600
    assert (drawn - expected).abs().to_numpy().max() <= 1  # every label x source cell keeps its share
    note = "seeded stratified sample (by label and source) of 60 of 600 texts, seed 0"
    assert note in figures.projection_sample_note(report, "mixed")
    assert note in figures.projection_figure_from_report(report, method="pca").layout.title.text
    assert note in render_html(report)
    # a source column with one value (or none) leaves the label as the only stratum
    one = evaluate(
        {"one": frame.assign(source="synthetic")},
        settings=settings,
        embedder=RandomEmbedder(),
        cache_dir=tmp_path,
    )
    assert one["projections"]["one"]["sample"]["stratified_by"] == ["label"]

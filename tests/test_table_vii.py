"""Table VII compares like with like: every row on the same gold test texts (issue 16)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personagen_core.evaluation import classify as C
from personagen_core.evaluation import figures
from personagen_core.evaluation.report import render_html, to_jsonable
from personagen_core.evaluation.suite import EvaluationSettings, evaluate

_WORDS = {
    "joy": ["happy", "delighted", "glad", "cheerful"],
    "anger": ["furious", "angry", "livid", "outraged"],
    "sadness": ["sad", "gloomy", "miserable", "lonely"],
    "love": ["adore", "cherish", "treasure", "dear"],
}


def _texts(counts: dict[str, int], offset: int = 0) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        words = _WORDS[label]
        for i in range(n):
            j = i + offset
            rows.append({"text": f"I feel {words[j % 4]} about thing {j} {label[:2]}{j % 7}", "label": label})
    return pd.DataFrame(rows)


class _HashEmbedder:
    model_id = "hash-bow-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for r, text in enumerate(texts):
            for tok in re.findall(r"[a-z']+", text.lower()):
                out[r, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


_GOLD_SHARE = {"joy": 20, "sadness": 12, "anger": 8, "love": 6}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # The synthetic set covers joy/anger/sadness only; gold also has love, and joy is its majority.
    settings = EvaluationSettings(
        projections=(), bootstrap=50, prd_runs=1, prd_clusters=4, gold_per_class=10, self_bleu_sample=10
    )
    return evaluate(
        {"syn": _texts({"joy": 10, "anger": 10, "sadness": 10})},
        gold_train=_texts({k: 3 * v for k, v in _GOLD_SHARE.items()}, offset=100),
        gold_test=_texts(_GOLD_SHARE, offset=500),
        settings=settings,
        embedder=_HashEmbedder(),
        cache_dir=tmp_path_factory.mktemp("results"),
    )


def test_every_shared_row_has_the_same_test_texts(report: dict) -> None:
    down = report["downstream"]
    assert down["comparable"] and down["shared_labels"] == ["anger", "joy", "sadness"]
    n_shared = 20 + 12 + 8
    assert down["n_test"] == n_shared and down["n_test_full"] == n_shared + 6
    shared = {n: r for n, r in down["rows"].items() if r["scope"] == "shared labels"}
    assert set(shared) == {"syn", "gold (balanced 10/class)", "majority class", "chance (uniform over 3 labels)"}
    for name, row in shared.items():
        assert row["n_test"] == n_shared, name
        assert row["labels"] == ["anger", "joy", "sadness"], name
        assert row["left_out"] == ["love"], name
    full = {n: r for n, r in down["rows"].items() if r["scope"] == "full test split"}
    assert set(full) == {"gold (balanced 10/class), full test split", "majority class, full test split"}
    assert all(r["n_test"] == n_shared + 6 and r["left_out"] == [] for r in full.values())
    assert down["left_out"]["syn"] == ["love"] and "majority class, full test split" not in down["left_out"]
    assert down["coverage"]["syn"] == ["anger", "joy", "sadness"]


def test_no_constant_classifier_beats_majority_on_the_same_texts(report: dict) -> None:
    rows = report["downstream"]["rows"]
    majority = rows["majority class"]
    assert majority["accuracy"] == pytest.approx(20 / 40)  # joy on the 40 shared test texts
    # Every constant answer, scored directly on the same 40 texts, is at most the majority row.
    y = np.array(["joy"] * 20 + ["sadness"] * 12 + ["anger"] * 8)
    assert max((y == c).mean() for c in ("joy", "sadness", "anger")) <= majority["accuracy"]
    # The full-split majority row is scored on more texts, so it differs: comparing it would mislead.
    assert rows["majority class, full test split"]["accuracy"] == pytest.approx(20 / 46)
    assert rows["chance (uniform over 3 labels)"]["accuracy"] == pytest.approx(1 / 3)


def test_every_accuracy_and_f1_has_an_interval(report: dict) -> None:
    for name, row in report["downstream"]["rows"].items():
        lo, hi = row["ci"]["accuracy"]
        assert lo <= row["accuracy"] <= hi or row.get("expected"), name
        if not row.get("expected"):
            for key in ("weighted_f1", "macro_f1"):
                lo, hi = row["ci"][key]
                assert 0 <= lo <= hi <= 1, (name, key)


def test_report_and_figure_state_rows_and_left_out_labels(report: dict) -> None:
    frame = figures.downstream_frame(report)
    assert list(frame["n_test"]) == [r["n_test"] for r in report["downstream"]["rows"].values()]
    assert frame.loc["syn", "left out"] == "love"
    page = render_html(to_jsonable(report))
    assert "syn: love" in page and "syn has no love" in page
    assert "full test split" in page and "chance (uniform over 3 labels)" in page
    fig = figures.downstream_figure(report)
    ticks = list(fig.data[0].x)  # each bar group names the test texts it was scored on
    assert ticks == [f"{n}<br>n_test = {r['n_test']}" for n, r in report["downstream"]["rows"].items()]


def test_chance_baseline_matches_simulated_guessing() -> None:
    y = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    exp = C.chance_baseline(y, ["a", "b", "c"])
    rng = np.random.default_rng(0)
    sims = [
        C.scores_from_confusion(C._confusion(y, rng.choice(["a", "b", "c"], len(y)), ["a", "b", "c"])[0])
        for _ in range(2000)
    ]
    assert exp["accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in sims]), abs=0.01)
    assert exp["f1_weighted"] == pytest.approx(np.mean([s["f1_weighted"] for s in sims]), abs=0.01)
    assert exp["ci_accuracy"][0] < 1 / 3 < exp["ci_accuracy"][1]


def test_scores_from_confusion_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(3)
    labels = ["a", "b", "c", "d"]
    y = rng.choice(labels, 300)
    pred = np.where(rng.random(300) < 0.5, y, rng.choice(["a", "b", "c", "x"], 300))
    cm = np.zeros((4, 5))
    for t, p in zip(y, pred, strict=True):
        cm[labels.index(t), labels.index(p) if p in labels else 4] += 1
    got = C.scores_from_confusion(cm)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average="weighted", zero_division=0)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert (got["precision_weighted"], got["recall_weighted"], got["f1_weighted"]) == pytest.approx((p, r, f))
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    ci = C.score_intervals(y, pred, labels, n_boot=100, random_state=0)
    assert ci["accuracy"][0] < got["accuracy"] < ci["accuracy"][1]
    assert ci == C.score_intervals(y, pred, labels, n_boot=100, random_state=0)


def test_transfer_on_given_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = np.vstack([np.eye(4)[i] * 5 + 0.1 * rng.standard_normal((20, 4)) for i in range(4)])
    y = np.repeat(["a", "b", "c", "d"], 20)
    res = C.transfer(X, y, X, y, labels=["a", "b"], params={"min_child_samples": 2})
    assert res.labels == ["a", "b"] and res.n_test == 40 and res.dropped_test == 40
    with pytest.raises(Exception, match="do not occur"):
        C.transfer(X[:40], y[:40], X, y, labels=["a", "c"])
    maj = C.majority_baseline(["a"] * 5 + ["d"] * 9, ["a", "a", "d", "b"], labels=["a", "d"])
    assert maj.params["majority"] == "d" and maj.n_test == 3 and maj.dropped_train == 0

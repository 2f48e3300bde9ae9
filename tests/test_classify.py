"""Tests of personagen_core.evaluation.classify on toy data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation import classify as C


def _separable(n_per: int = 30, labels: tuple[str, ...] = ("a", "b", "c"), seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.vstack([np.eye(6)[i] * 10 + 0.1 * rng.standard_normal((n_per, 6)) for i in range(len(labels))])
    y = np.repeat(np.array(labels), n_per)
    return X, y


def test_separability_on_separable_data_scores_one() -> None:
    X, y = _separable()
    res = C.separability(X, y, random_state=0, params={"min_child_samples": 2})
    assert res.accuracy == 1.0
    assert res.macro_avg["f1"] == 1.0 and res.weighted_avg["f1"] == 1.0
    assert res.labels == ["a", "b", "c"]
    assert res.n_test == 18 and res.n_train == 72  # stratified 20 % of 90
    assert res.confusion.sum() == 18 and np.array_equal(np.diag(res.confusion), [6, 6, 6])
    assert np.allclose(res.confusion_normalised.sum(axis=1), 1.0)
    assert all(v["support"] == 6 for v in res.per_class.values())
    d = json.loads(json.dumps(res.to_dict()))
    assert d["params"]["random_state"] == 0 and d["params"]["min_child_samples"] == 2


def test_separability_on_noise_is_near_chance_and_seeded() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5))
    y = np.repeat(["x", "y", "z"], 100)
    a = C.separability(X, y, random_state=3)
    assert a.accuracy < 0.6
    assert a.to_dict() == C.separability(X, y, random_state=3).to_dict()


def test_separability_errors() -> None:
    X, y = _separable()
    with pytest.raises(DataError, match="at least 2 labels"):
        C.separability(X, np.full(len(y), "a"))
    y2 = y.astype(object)
    y2[0] = "lonely"
    with pytest.raises(DataError, match=r"at least 5 texts per label .* too few: 'lonely' \(1\)"):
        C.separability(X, y2)
    # scikit-learn's own condition, checked first: 7 labels x 3 texts cannot give a 20 % test part of 7
    y3 = np.repeat([f"l{i}" for i in range(7)], 3)
    with pytest.raises(DataError, match="at least 5 texts per label"):
        C.separability(X[:21], y3)
    assert C.min_per_class(0.2) == 5 and C.min_per_class(0.5) == 2 and C.min_per_class(0.9) == 10
    with pytest.raises(DataError, match="rows"):
        C.separability(X[:-1], y)


def test_transfer_keeps_only_shared_labels() -> None:
    Xtr, ytr = _separable(labels=("a", "b", "c", "pleasure"))
    Xte, yte = _separable(n_per=10, labels=("a", "b", "c", "love"), seed=2)
    # the test set's "love" rows sit where the train set's "pleasure" rows are; both must be dropped
    res = C.transfer(Xtr, ytr, Xte, yte, params={"min_child_samples": 2}, name="syn")
    assert res.labels == ["a", "b", "c"]
    assert res.dropped_train == 30 and res.dropped_test == 10
    assert res.n_train == 90 and res.n_test == 30
    assert res.accuracy == 1.0 and res.f1_weighted == 1.0 and res.f1_macro == 1.0
    assert json.loads(json.dumps(res.to_dict()))["name"] == "syn"
    with pytest.raises(DataError, match="share fewer than 2 labels"):
        C.transfer(Xtr, ytr, Xte, np.full(len(yte), "zzz"))


def test_balanced_indices_and_gold_baseline() -> None:
    y = np.array(["a"] * 50 + ["b"] * 20 + ["c"] * 5)
    idx = C.balanced_indices(y, 10, random_state=0)
    counts = dict(zip(*np.unique(y[idx], return_counts=True), strict=True))
    assert counts == {"a": 10, "b": 10, "c": 5}
    assert np.array_equal(idx, C.balanced_indices(y, 10, random_state=0))
    X, yy = _separable(n_per=40)
    res = C.gold_baseline(X, yy, X, yy, per_class=10, params={"min_child_samples": 2, "min_data_in_bin": 1})
    assert res.n_train == 30 and res.accuracy == 1.0 and res.params["per_class"] == 10


def test_majority_baseline_known_accuracy() -> None:
    res = C.majority_baseline(["joy"] * 5 + ["sadness"] * 3, ["joy", "joy", "sadness", "fear", "love"])
    assert res.params["majority"] == "joy"
    assert res.dropped_test == 2  # fear and love never occur in training
    assert res.accuracy == pytest.approx(2 / 3)
    assert res.recall_weighted == pytest.approx(2 / 3)
    assert res.f1_macro == pytest.approx((0.8 + 0.0) / 2)

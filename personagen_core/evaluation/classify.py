"""LightGBM on embeddings: separability (Table V) and train-on-synthetic / test-on-real (Table VII).

Functions take arrays and return dataclasses whose ``to_dict()`` is JSON-serialisable. They never cache;
the orchestration wraps them in :class:`personagen_core.evaluation.embeddings.ResultCache` when it wants to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personagen_core.errors import DataError

__all__ = [
    "LGBM_DEFAULTS",
    "SeparabilityResult",
    "TransferResult",
    "balanced_indices",
    "chance_baseline",
    "gold_baseline",
    "majority_baseline",
    "score_intervals",
    "scores_from_confusion",
    "min_child_samples",
    "min_per_class",
    "separability",
    "transfer",
]

# LightGBM's own defaults (100 trees, 31 leaves, learning rate 0.1, 255 bins), as the paper uses. Column-wise
# histograms are forced because LightGBM otherwise picks a layout by timing both, which is slower and
# makes the choice depend on machine load. Two threads, fixed rather than the machine's core count, so the
# figures are the same everywhere (LightGBM's sums depend on the thread count): on 2 cores a fit of 2,800
# embeddings took 10-11 s instead of 19 s with one. OMP_WAIT_POLICY=PASSIVE makes LightGBM 1.7x slower,
# so only what runs the embedded LLM sets it (docs/METRICS.md, "Threads").
LGBM_DEFAULTS: dict[str, Any] = {"verbose": -1, "force_col_wise": True, "n_jobs": 2}


def min_child_samples(params: Mapping[str, Any] | None = None) -> int:
    """LightGBM's ``min_child_samples`` (default 20) under ``params``: no leaf holds fewer training rows,
    so a class with fewer training texts cannot get a leaf of its own, and a training set under twice this
    size cannot be split at all (the model then predicts one class for everything)."""
    used = {**LGBM_DEFAULTS, **(params or {})}
    return int(used.get("min_child_samples", used.get("min_data_in_leaf", 20)))


def min_per_class(test_size: float) -> int:
    """Fewest texts per class for a stratified split that puts every class in both parts.

    scikit-learn needs at least one text of each class on each side: ``ceil(1 / test_size)`` texts per class
    for the test part, ``ceil(1 / (1 - test_size))`` for the training part, and never fewer than 2.
    """
    return max(2, math.ceil(1 / test_size - 1e-9), math.ceil(1 / (1 - test_size) - 1e-9))


def _fit_predict(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    *,
    random_state: int | None,
    params: Mapping[str, Any] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    from lightgbm import LGBMClassifier

    used = {**LGBM_DEFAULTS, **(params or {})}
    model = LGBMClassifier(random_state=random_state, **used)
    model.fit(X_train, y_train)
    return np.asarray(model.predict(X_test)).astype(str), used


def _check(X: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    Xa = np.asarray(X, dtype=np.float32)
    ya = np.asarray(y).astype(str)
    if Xa.ndim != 2:
        raise DataError(f"{name}: X must be 2-D (rows = texts), got shape {Xa.shape}")
    if len(Xa) != len(ya):
        raise DataError(f"{name}: X has {len(Xa)} rows but there are {len(ya)} labels")
    if len(ya) == 0:
        raise DataError(f"{name}: no rows")
    return Xa, ya


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    return cm, norm


def _params_json(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)) for k, v in params.items()}


@dataclass
class SeparabilityResult:
    """Held-out classification of the labels from the embeddings (stratified split)."""

    labels: list[str]
    accuracy: float
    per_class: dict[str, dict[str, float]]
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    confusion: np.ndarray
    confusion_normalised: np.ndarray
    n_train: int
    n_test: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "labels": list(self.labels),
            "accuracy": self.accuracy,
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
            "macro_avg": dict(self.macro_avg),
            "weighted_avg": dict(self.weighted_avg),
            "confusion": self.confusion.tolist(),
            "confusion_normalised": self.confusion_normalised.tolist(),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "params": _params_json(self.params),
        }


def separability(
    X: Any,
    labels: Sequence[Any],
    *,
    random_state: int | None = 0,
    test_size: float = 0.2,
    params: Mapping[str, Any] | None = None,
) -> SeparabilityResult:
    """Train LightGBM on a stratified ``1 - test_size`` split and score the held-out part."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.model_selection import train_test_split

    Xa, y = _check(X, labels, "separability")
    names, counts = np.unique(y, return_counts=True)
    if len(names) < 2:
        raise DataError(f"separability needs at least 2 labels, got {names.tolist()}")
    need = min_per_class(test_size)
    if counts.min() < need:
        small = ", ".join(f"{str(n)!r} ({c})" for n, c in zip(names, counts, strict=True) if c < need)
        raise DataError(
            f"separability needs at least {need} texts per label for a stratified "
            f"{1 - test_size:.0%}/{test_size:.0%} split (every label on both sides); too few: {small}"
        )
    X_tr, X_te, y_tr, y_te = train_test_split(
        Xa, y, test_size=test_size, stratify=y, random_state=random_state
    )
    pred, used = _fit_predict(X_tr, y_tr, X_te, random_state=random_state, params=params)
    lab = names.tolist()
    p, r, f, s = precision_recall_fscore_support(y_te, pred, labels=lab, zero_division=0)
    per = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(lab)
    }
    avgs = {}
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(y_te, pred, labels=lab, average=avg, zero_division=0)
        avgs[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    cm, norm = _confusion(y_te, pred, lab)
    return SeparabilityResult(
        labels=lab,
        accuracy=float(accuracy_score(y_te, pred)),
        per_class=per,
        macro_avg=avgs["macro"],
        weighted_avg=avgs["weighted"],
        confusion=cm,
        confusion_normalised=norm,
        n_train=len(y_tr),
        n_test=len(y_te),
        params={**used, "random_state": random_state, "test_size": test_size},
    )


@dataclass
class TransferResult:
    """A classifier trained on one set and tested on another (paper convention: weighted P/R/F1)."""

    name: str
    labels: list[str]
    accuracy: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    f1_macro: float
    confusion: np.ndarray
    n_train: int
    n_test: int
    dropped_train: int = 0
    dropped_test: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    #: The scored test labels and predictions (kept for bootstrap intervals; not in ``to_dict``).
    y_true: np.ndarray | None = field(default=None, repr=False)
    y_pred: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "accuracy": self.accuracy,
            "precision_weighted": self.precision_weighted,
            "recall_weighted": self.recall_weighted,
            "f1_weighted": self.f1_weighted,
            "f1_macro": self.f1_macro,
            "confusion": self.confusion.tolist(),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "dropped_train": self.dropped_train,
            "dropped_test": self.dropped_test,
            "params": _params_json(self.params),
        }


def _score(
    name: str,
    y_test: np.ndarray,
    pred: np.ndarray,
    labels: list[str],
    *,
    n_train: int,
    dropped_train: int,
    dropped_test: int,
    params: dict[str, Any],
) -> TransferResult:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(
        y_test, pred, labels=labels, average="weighted", zero_division=0
    )
    cm, _ = _confusion(y_test, pred, labels)
    return TransferResult(
        name=name,
        labels=labels,
        accuracy=float(accuracy_score(y_test, pred)),
        precision_weighted=float(p),
        recall_weighted=float(r),
        f1_weighted=float(f),
        f1_macro=float(f1_score(y_test, pred, labels=labels, average="macro", zero_division=0)),
        confusion=cm,
        n_train=n_train,
        n_test=len(y_test),
        dropped_train=dropped_train,
        dropped_test=dropped_test,
        params=params,
        y_true=np.asarray(y_test).astype(str),
        y_pred=np.asarray(pred).astype(str),
    )


def _restrict(y: np.ndarray, labels: Sequence[Any] | None, shared: list[str], name: str) -> list[str]:
    """The label set to score on: ``labels`` when given (each must occur in ``y``), else ``shared``."""
    if labels is None:
        return shared
    wanted = sorted({str(x) for x in labels})
    missing = [lab for lab in wanted if lab not in shared]
    if missing:
        raise DataError(f"{name}: labels {missing} do not occur in both the training and the test set")
    if len(wanted) < 2:
        raise DataError(f"{name}: at least 2 labels are needed to score, got {wanted}")
    return wanted


def transfer(
    X_train: Any,
    y_train: Sequence[Any],
    X_test: Any,
    y_test: Sequence[Any],
    *,
    random_state: int | None = 0,
    params: Mapping[str, Any] | None = None,
    name: str = "",
    labels: Sequence[Any] | None = None,
) -> TransferResult:
    """Train LightGBM on (X_train, y_train), test on (X_test, y_test), on the labels both sets share.

    Rows whose label is not in both sets are left out and counted in ``dropped_train`` / ``dropped_test``.
    ``labels`` narrows both sets further to these labels (each must occur in both), so that several
    training sets can be scored on exactly the same test texts (Table VII's like-with-like rows).
    """
    Xtr, ytr = _check(X_train, y_train, "transfer (train)")
    Xte, yte = _check(X_test, y_test, "transfer (test)")
    if Xtr.shape[1] != Xte.shape[1]:
        raise DataError(f"transfer: train has {Xtr.shape[1]} dimensions, test {Xte.shape[1]}")
    shared = sorted(set(ytr.tolist()) & set(yte.tolist()))
    if len(shared) < 2:
        raise DataError(
            f"transfer: train labels {sorted(set(ytr.tolist()))} and test labels {sorted(set(yte.tolist()))} "
            "share fewer than 2 labels; a label map may be missing"
        )
    shared = _restrict(yte, labels, shared, name or "transfer")
    mtr, mte = np.isin(ytr, shared), np.isin(yte, shared)
    pred, used = _fit_predict(Xtr[mtr], ytr[mtr], Xte[mte], random_state=random_state, params=params)
    return _score(
        name,
        yte[mte],
        pred,
        shared,
        n_train=int(mtr.sum()),
        dropped_train=int((~mtr).sum()),
        dropped_test=int((~mte).sum()),
        params={**used, "random_state": random_state},
    )


def balanced_indices(y: Sequence[Any], per_class: int = 500, *, random_state: int | None = 0) -> np.ndarray:
    """Indices of a seeded sample of ``per_class`` rows of every label (all rows of a smaller label)."""
    ya = np.asarray(y).astype(str)
    rng = np.random.default_rng(random_state)
    picked = []
    for name in sorted(set(ya.tolist())):
        idx = np.flatnonzero(ya == name)
        picked.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def gold_baseline(
    X_gold_train: Any,
    y_gold_train: Sequence[Any],
    X_test: Any,
    y_test: Sequence[Any],
    *,
    per_class: int = 500,
    random_state: int | None = 0,
    params: Mapping[str, Any] | None = None,
    labels: Sequence[Any] | None = None,
) -> TransferResult:
    """The paper's gold row: LightGBM on a balanced ``per_class`` sample of the gold training split."""
    Xg, yg = _check(X_gold_train, y_gold_train, "gold_baseline (train)")
    idx = balanced_indices(yg, per_class, random_state=random_state)
    res = transfer(Xg[idx], yg[idx], X_test, y_test, random_state=random_state, params=params,
                   name=f"gold (balanced {per_class}/class)", labels=labels)
    res.params["per_class"] = per_class
    return res


def majority_baseline(
    y_train: Sequence[Any], y_test: Sequence[Any], *, labels: Sequence[Any] | None = None
) -> TransferResult:
    """Predict the most frequent training label (ties: alphabetically first) for every test row.

    Test rows whose label never occurs in training are left out (``dropped_test``). With ``labels``, both
    sets are first narrowed to these labels (the majority is then the most frequent of them).
    """
    ytr = np.asarray(y_train).astype(str)
    yte = np.asarray(y_test).astype(str)
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError("majority_baseline: empty training or test labels")
    dropped_train = 0
    if labels is not None:
        shared = _restrict(yte, labels, sorted(set(ytr.tolist()) & set(yte.tolist())), "majority_baseline")
        keep = np.isin(ytr, shared)
        dropped_train = int((~keep).sum())
        ytr = ytr[keep]
    names, counts = np.unique(ytr, return_counts=True)
    majority = str(names[np.argmax(counts)])  # np.unique sorts, argmax takes the first maximum
    mte = np.isin(yte, names)
    shared = sorted(set(yte[mte].tolist()) | {majority})
    pred = np.full(int(mte.sum()), majority)
    return _score(
        "majority class",
        yte[mte],
        pred,
        shared,
        n_train=len(ytr),
        dropped_train=dropped_train,
        dropped_test=int((~mte).sum()),
        params={"majority": majority},
    )


def chance_baseline(y_test: Sequence[Any], labels: Sequence[Any]) -> dict[str, Any]:
    """Expected scores of guessing uniformly at random among ``labels`` on the test rows of those labels.

    Accuracy and every class's recall are ``1/k``; a class with test share ``p`` has expected precision
    ``p``, hence F1 ``2p(1/k) / (p + 1/k)`` (weighted by ``p``, or averaged for macro F1). The interval of
    the accuracy is the central binomial interval of ``n`` guesses at ``1/k`` (``ci_accuracy`` at 95 %).
    """
    from scipy.stats import binom

    lab = sorted({str(x) for x in labels})
    yte = np.asarray(y_test).astype(str)
    yte = yte[np.isin(yte, lab)]
    if len(lab) < 2 or len(yte) == 0:
        raise DataError(f"chance_baseline: needs at least 2 labels and some test rows (labels {lab})")
    k, n = len(lab), len(yte)
    share = np.array([(yte == name).mean() for name in lab])
    f1 = np.divide(2 * share / k, share + 1 / k, out=np.zeros(k), where=share > 0)
    lo, hi = binom.ppf([0.025, 0.975], n, 1 / k) / n
    return {
        "labels": lab,
        "n_test": n,
        "accuracy": 1 / k,
        "precision_weighted": float((share * share).sum()),
        "recall_weighted": 1 / k,
        "f1_weighted": float((share * f1).sum()),
        "f1_macro": float(f1.mean()),
        "ci_accuracy": [float(lo), float(hi)],
    }


_SCORES = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro")


def scores_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, weighted P/R/F1 and macro F1 from a confusion matrix (rows = true, cols = predicted).

    Same definitions as scikit-learn with ``zero_division=0`` over the matrix's labels; an extra last
    column may hold predictions outside the label set (they count as errors).
    """
    cm = np.asarray(cm, dtype=float)
    k = cm.shape[0]
    tp = np.diag(cm[:, :k])
    support = cm.sum(axis=1)
    predicted = cm[:, :k].sum(axis=0)
    prec = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    total = support.sum()
    w = support / total if total > 0 else np.zeros(k)
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "precision_weighted": float((w * prec).sum()),
        "recall_weighted": float((w * rec).sum()),
        "f1_weighted": float((w * f1).sum()),
        "f1_macro": float(f1.mean()),
    }


def score_intervals(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[Any],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy, weighted P/R/F1 and macro F1 over the test rows.

    The same seed draws the same resamples for every row of equal length, so rows scored on the same test
    texts get paired intervals. ``n_boot = 0`` returns no intervals (an empty dict).
    """
    if n_boot <= 0:
        return {}
    lab = [str(x) for x in labels]
    index = {name: i for i, name in enumerate(lab)}
    yt = np.array([index.get(str(v), -1) for v in y_true])
    yp = np.array([index.get(str(v), len(lab)) for v in y_pred])
    if (yt < 0).any():
        raise DataError("score_intervals: a true label is not among the labels")
    k = len(lab)
    cell = yt * (k + 1) + yp  # one extra column for predictions outside the label set
    rng = np.random.default_rng(random_state)
    n = len(yt)
    draws = {m: [] for m in _SCORES}
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, n, n), minlength=n)
        cm = np.bincount(cell, weights=weights, minlength=k * (k + 1)).reshape(k, k + 1)
        for m, v in scores_from_confusion(cm).items():
            draws[m].append(v)
    alpha = (1 - confidence) / 2
    return {
        m: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for m, v in draws.items()
    }

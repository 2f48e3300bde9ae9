"""LightGBM on embeddings: separability (Table V) and train-on-synthetic / test-on-real (Table VII).

Functions take arrays and return dataclasses whose ``to_dict()`` is JSON-serialisable. They never cache;
the orchestration wraps them in :class:`personagen_core.evaluation.embeddings.ResultCache` when it wants to.
"""

from __future__ import annotations

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
    "gold_baseline",
    "majority_baseline",
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
    if counts.min() < 2:
        raise DataError(
            f"separability: label {str(names[counts.argmin()])!r} has {counts.min()} text(s); a stratified "
            "split needs at least 2 per label"
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
    )


def transfer(
    X_train: Any,
    y_train: Sequence[Any],
    X_test: Any,
    y_test: Sequence[Any],
    *,
    random_state: int | None = 0,
    params: Mapping[str, Any] | None = None,
    name: str = "",
) -> TransferResult:
    """Train LightGBM on (X_train, y_train), test on (X_test, y_test), on the labels both sets share.

    Rows whose label is not in both sets are left out and counted in ``dropped_train`` / ``dropped_test``.
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
) -> TransferResult:
    """The paper's gold row: LightGBM on a balanced ``per_class`` sample of the gold training split."""
    Xg, yg = _check(X_gold_train, y_gold_train, "gold_baseline (train)")
    idx = balanced_indices(yg, per_class, random_state=random_state)
    res = transfer(Xg[idx], yg[idx], X_test, y_test, random_state=random_state, params=params,
                   name=f"gold (balanced {per_class}/class)")
    res.params["per_class"] = per_class
    return res


def majority_baseline(y_train: Sequence[Any], y_test: Sequence[Any]) -> TransferResult:
    """Predict the most frequent training label (ties: alphabetically first) for every test row.

    Test rows whose label never occurs in training are left out (``dropped_test``).
    """
    ytr = np.asarray(y_train).astype(str)
    yte = np.asarray(y_test).astype(str)
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError("majority_baseline: empty training or test labels")
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
        dropped_train=0,
        dropped_test=int((~mte).sum()),
        params={"majority": majority},
    )

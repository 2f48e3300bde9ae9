"""Slices: which personas make good data. A run's figures broken down by persona and scenario attribute.

For every attribute column (age band, occupation group, language style, medium, ...) and every value of it,
a slice is the run's texts whose persona has that value. Per slice:

- ``emotion_match``: share of texts a classifier trained on gold data labels with the emotion they were
  written for (only texts whose emotion the gold data has); Wilson interval.
- ``realism``: mean cosine distance from each text to its nearest gold text (lower = closer to real data);
  t interval.
- ``diversity``: mean cosine distance between the slice's texts (as Table IV's MCD); percentile bootstrap
  interval (resampling texts).
- ``rejection_rate``: share of the slice's judged candidates (persona + scene) the validator rejected at
  stages 1-3; ``output_rejection_rate``: share of the slice's generated outputs rejected by the stage-4
  checks; Wilson intervals.

Every function is pure (arrays and frames in, frames out); the orchestration (:mod:`suite`) feeds it the
embeddings, the gold classifier's predictions and the store's rejections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from personagen_core.errors import DataError

__all__ = [
    "METRICS",
    "NON_ATTRIBUTE_COLUMNS",
    "attribute_columns",
    "compare_slices",
    "differ_most",
    "mean_cosine_distance_ci",
    "nearest_distance",
    "rows_to_table",
    "slice_table",
    "slices_to_dict",
    "wilson",
]

#: Slice metrics: column name -> (display name, True if higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "emotion_match": ("Emotion match (gold classifier)", True),
    "realism": ("Distance to nearest gold text", False),
    "diversity": ("Diversity (mean cosine distance)", True),
    "rejection_rate": ("Rejected at stages 1-3", False),
    "output_rejection_rate": ("Outputs rejected at stage 4", False),
}

#: Bookkeeping columns of a run's texts that are not persona / scenario attributes (also used by the suite).
NON_ATTRIBUTE_COLUMNS = frozenset({
    "text",
    "label",
    "emotion",
    "text_id",
    "run_id",
    "method",
    "persona",
    "persona_id",
    "scenario",
    "model",
    "id",
    "row",
    "rejected",
})


def attribute_columns(frame: pd.DataFrame, *, max_levels: int = 40) -> list[str]:
    """Persona / scenario attribute columns of a run's texts (categorical: 2..``max_levels`` values)."""
    out = []
    for col in frame.columns:
        name = str(col)
        if name in NON_ATTRIBUTE_COLUMNS or name.startswith(("verdict_", "reason_")):
            continue
        levels = frame[col].nunique(dropna=True)
        if 2 <= levels <= max_levels:
            out.append(name)
    return out


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``(nan, nan)`` when ``n == 0``)."""
    from scipy.stats import norm

    if n <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def nearest_distance(X: Any, reference: Any, *, chunk: int = 2048) -> np.ndarray:
    """Cosine distance from each row of ``X`` to its nearest row of ``reference``."""
    Xn, Rn = _unit(np.asarray(X)), _unit(np.asarray(reference))
    if Xn.ndim != 2 or Rn.ndim != 2 or Xn.shape[1] != Rn.shape[1] or len(Rn) == 0:
        raise DataError(f"nearest_distance: shapes {Xn.shape} and {Rn.shape} do not match")
    out = np.empty(len(Xn))
    for start in range(0, len(Xn), chunk):
        out[start : start + chunk] = 1.0 - (Xn[start : start + chunk] @ Rn.T).max(axis=1)
    return out


def mean_cosine_distance_ci(
    X: Any, *, n_boot: int = 200, confidence: float = 0.95, random_state: int | None = 0
) -> tuple[float, float, float]:
    """(MCD, low, high): mean cosine distance over pairs of texts and a percentile bootstrap interval.

    Uses ``sum_{i != j} cos = |sum x|^2 - n`` for unit rows, so each resample costs O(n d). A resample's
    pairs are those of two different texts (a text drawn twice is not paired with itself, which would
    bias the interval towards 0): with counts ``c``, ``|sum c_i x_i|^2 - sum c_i^2`` over
    ``m^2 - sum c_i^2`` pairs.
    """
    Xn = _unit(np.asarray(X))
    n = len(Xn)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    s = Xn.sum(axis=0)
    value = 1.0 - (float(s @ s) - n) / (n * (n - 1))
    if n_boot <= 0:
        return value, float("nan"), float("nan")
    rng = np.random.default_rng(random_state)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)
    sums = counts @ Xn
    same = (counts * counts).sum(axis=1)
    pairs = n * n - same
    draws = 1.0 - ((sums * sums).sum(axis=1) - same) / np.where(pairs > 0, pairs, np.nan)
    draws = draws[np.isfinite(draws)]
    alpha = (1 - confidence) / 2
    return value, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def _mean_ci(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    from scipy.stats import t

    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def _rate(flags: pd.Series, confidence: float) -> tuple[float, float, float, int]:
    n = int(flags.notna().sum())
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    k = int(flags.fillna(False).astype(bool).sum())
    lo, hi = wilson(k, n, confidence)
    return k / n, lo, hi, n


def slice_table(
    frame: pd.DataFrame,
    X: Any,
    *,
    columns: Sequence[str] | None = None,
    match: Any = None,
    realism: Any = None,
    candidates: pd.DataFrame | None = None,
    outputs: pd.DataFrame | None = None,
    n_boot: int = 200,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """One row per (attribute, value) plus an ``(all)`` row: ``n`` texts and each metric with ``_low`` /
    ``_high`` interval bounds and its own ``_n``.

    ``frame``: the run's texts (rows aligned with ``X``, the embeddings) with attribute columns.
    ``match``: per text 1.0 (gold classifier agrees with the emotion), 0.0, or NaN (not scored).
    ``realism``: per text distance to the nearest gold text (NaN = none). ``candidates``: judged candidates
    (attribute columns + bool ``rejected``, stages 1-3). ``outputs``: stage-4 outputs (attribute columns
    + bool ``rejected``: accepted texts and rejected outputs). Missing inputs give NaN metrics.
    """
    Xa = np.asarray(X, dtype=np.float64)
    if len(Xa) != len(frame):
        raise DataError(f"slice_table: {len(frame)} texts but {len(Xa)} embeddings")
    cols = list(columns) if columns is not None else attribute_columns(frame)
    match_a = np.full(len(frame), np.nan) if match is None else np.asarray(match, dtype=float)
    real_a = np.full(len(frame), np.nan) if realism is None else np.asarray(realism, dtype=float)
    rows: list[dict[str, Any]] = []

    def one(
        attribute: str, value: str, mask: np.ndarray, cand: pd.Series | None, outs: pd.Series | None
    ) -> None:
        rec: dict[str, Any] = {"attribute": attribute, "value": value, "n": int(mask.sum())}
        m = match_a[mask]
        scored = m[np.isfinite(m)]
        k = int(scored.sum())
        rec["emotion_match"] = k / len(scored) if len(scored) else float("nan")
        rec["emotion_match_low"], rec["emotion_match_high"] = wilson(k, len(scored), confidence)
        rec["emotion_match_n"] = len(scored)
        rec["realism"], rec["realism_low"], rec["realism_high"] = _mean_ci(real_a[mask], confidence)
        rec["realism_n"] = int(np.isfinite(real_a[mask]).sum())
        rec["diversity"], rec["diversity_low"], rec["diversity_high"] = mean_cosine_distance_ci(
            Xa[mask], n_boot=n_boot, confidence=confidence, random_state=random_state
        )
        rec["diversity_n"] = int(mask.sum())
        for key, flags in (("rejection_rate", cand), ("output_rejection_rate", outs)):
            if flags is None:
                rec[key] = rec[f"{key}_low"] = rec[f"{key}_high"] = float("nan")
                rec[f"{key}_n"] = 0
            else:
                rec[key], rec[f"{key}_low"], rec[f"{key}_high"], rec[f"{key}_n"] = _rate(flags, confidence)
        rows.append(rec)

    everything = np.ones(len(frame), dtype=bool)
    one(
        "(all)",
        "(all)",
        everything,
        None if candidates is None else candidates["rejected"],
        None if outputs is None else outputs["rejected"],
    )
    for col in cols:
        values = frame[col].astype("string")
        for value in sorted(values.dropna().unique().tolist()):
            mask = (values == value).fillna(False).to_numpy(dtype=bool)
            cand = _flags_for(candidates, col, value)
            outs = _flags_for(outputs, col, value)
            one(col, str(value), mask, cand, outs)
    return pd.DataFrame(rows)


def _flags_for(table: pd.DataFrame | None, column: str, value: str) -> pd.Series | None:
    if table is None or column not in table.columns:
        return None
    return table.loc[(table[column].astype("string") == value).fillna(False).to_numpy(dtype=bool), "rejected"]


def differ_most(table: pd.DataFrame, metric: str, *, k: int = 10, min_n: int = 5) -> pd.DataFrame:
    """The slices whose ``metric`` is furthest from the whole run's, in units of the slice's interval
    half-width (``score``; above 1 the interval excludes the run's value). ``gap`` = slice - run."""
    if metric not in METRICS:
        raise DataError(f"unknown slice metric {metric!r}; choose one of {', '.join(METRICS)}")
    overall = table.loc[table["attribute"] == "(all)", metric]
    base = float(overall.iloc[0]) if len(overall) else float("nan")
    part = table[(table["attribute"] != "(all)") & (table[f"{metric}_n"] >= min_n)].copy()
    part = part[np.isfinite(part[metric].to_numpy(dtype=float))]
    part["gap"] = part[metric] - base
    half = (part[f"{metric}_high"] - part[f"{metric}_low"]) / 2
    part["score"] = (part["gap"].abs() / half.where(half > 0)).fillna(0.0)
    cols = [
        "attribute",
        "value",
        "n",
        metric,
        f"{metric}_low",
        f"{metric}_high",
        f"{metric}_n",
        "gap",
        "score",
    ]
    return part.sort_values(["score", "n"], ascending=[False, False])[cols].head(k).reset_index(drop=True)


def compare_slices(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    names: tuple[str, str] = ("a", "b"),
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Two runs' slice tables side by side on (attribute, value): each metric of both, ``delta`` (b - a)
    and ``overlap`` (do the two intervals overlap; False = a change larger than the uncertainty)."""
    metrics = list(metrics or METRICS)
    keep = ["attribute", "value", "n", *[c for m in metrics for c in (m, f"{m}_low", f"{m}_high")]]
    merged = a[keep].merge(
        b[keep], on=["attribute", "value"], how="outer", suffixes=(f" {names[0]}", f" {names[1]}")
    )
    for m in metrics:
        lo_a, hi_a = merged[f"{m}_low {names[0]}"], merged[f"{m}_high {names[0]}"]
        lo_b, hi_b = merged[f"{m}_low {names[1]}"], merged[f"{m}_high {names[1]}"]
        merged[f"{m} delta"] = merged[f"{m} {names[1]}"] - merged[f"{m} {names[0]}"]
        merged[f"{m} overlap"] = ~((hi_a < lo_b) | (hi_b < lo_a))
    return merged


def slices_to_dict(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-serialisable dicts (NaN -> None)."""
    out = []
    for rec in table.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in rec.items()})
    return out


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The inverse of :func:`slices_to_dict` (None -> NaN in the metric columns)."""
    return pd.DataFrame(list(rows)).fillna(value=np.nan) if rows else pd.DataFrame()

"""Diversity metrics on equal-size seeded subsamples, with percentile intervals (docs/METRICS.md).

Distinct-n, Vendi score, Self-BLEU and the compression ratio depend on the number of texts, so two datasets
(or a 100k-text run and a 3,500-text run) are only comparable at the same size. For every emotion ``L`` the
datasets that have enough of it are compared at one size ``m_L`` (:func:`equal_sizes`): half the texts of
the smallest of them, capped at ``max_size``. Each dataset is then subsampled ``n_resamples`` times
(seeded, without replacement, ``m_L`` texts of each emotion per replicate) and every metric is computed on
every replicate. The reported value is the median over the replicates, the interval their central
``confidence`` percentile range; the overall row is computed per replicate (the unweighted mean of the
emotions, centroid distance from the replicate's centroids) and summarised the same way.

Because ``m_L`` is at most half of every compared dataset's texts of ``L``, the smallest dataset's
replicates differ from each other too; the interval is the spread of the metric over random ``m_L``-text
draws from the data at hand (a finite-population view: it understates the spread of fresh draws from the
generator by about the factor ``sqrt(1 - m_L / n_L)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from personagen_core.errors import DataError
from personagen_core.evaluation.metrics import (
    DIVERSITY_COLUMNS,
    _as_matrix,
    _one_thread,
    diversity_table,
)

__all__ = [
    "INTERVAL_METRICS",
    "MIN_SUBSAMPLE",
    "diversity_intervals",
    "equal_sizes",
    "format_interval",
    "interval_emotion_table",
    "interval_notes",
    "interval_overall_table",
    "min_texts_for_interval",
]

#: Metrics given with an interval (``n`` is the subsample size itself, not a metric).
INTERVAL_METRICS = [c for c in DIVERSITY_COLUMNS if c != "n"]
#: Smallest subsample an interval is computed from (with k = 5 clusters the floor is k).
MIN_SUBSAMPLE = 5


def min_texts_for_interval(k: int = 5) -> int:
    """Texts of one emotion a dataset needs for an interval: twice the smallest subsample (>= k texts)."""
    return 2 * max(MIN_SUBSAMPLE, k)


def equal_sizes(
    counts: Mapping[str, Mapping[str, int]], *, k: int = 5, max_size: int = 500
) -> dict[str, int]:
    """Subsample size per emotion shared by every dataset: ``min(max_size, floor(n_min / 2))``.

    ``counts[dataset][emotion]`` is the number of texts. Datasets with fewer than
    :func:`min_texts_for_interval` texts of an emotion do not take part for that emotion (they get no
    interval for it, and do not shrink the others' size). Emotions no dataset has enough of are absent.
    """
    need = min_texts_for_interval(k)
    emotions = sorted({e for per in counts.values() for e in per})
    out: dict[str, int] = {}
    for e in emotions:
        sizes = [int(per.get(e, 0)) for per in counts.values() if int(per.get(e, 0)) >= need]
        if sizes:
            out[str(e)] = int(min(max_size, min(sizes) // 2))
    return out


def _summary(values: np.ndarray, confidence: float) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return {"value": None, "low": None, "high": None}
    lo = (1 - confidence) / 2
    return {
        "value": float(np.median(v)),
        "low": float(np.quantile(v, lo)),
        "high": float(np.quantile(v, 1 - lo)),
    }


def _replicate(
    b: int,
    rng: np.random.Generator,
    rows: Mapping[str, np.ndarray],
    sizes: Mapping[str, int],
    X: np.ndarray,
    texts: Sequence[str],
    draws: dict[str, dict[str, np.ndarray]],
    overall: dict[str, np.ndarray],
    k: int,
    self_bleu_sample: int,
) -> None:
    """Fill column ``b`` of ``draws`` / ``overall`` with :func:`diversity_table` of one seeded equal-size
    subsample (``sizes[e]`` texts of every emotion ``e``; its ``average`` row is the overall value)."""
    emotions = list(rows)
    pick = np.concatenate([np.sort(rng.choice(rows[e], size=int(sizes[e]), replace=False)) for e in emotions])
    labels = np.repeat(emotions, [int(sizes[e]) for e in emotions])
    table = diversity_table(
        _as_matrix(X[pick], "the subsampled embeddings"),
        labels,
        [texts[i] for i in pick],
        k=k,
        random_state=int(rng.integers(2**31 - 1)),
        self_bleu_sample=self_bleu_sample,
    )
    for name in INTERVAL_METRICS:
        for e in emotions:
            draws[e][name][b] = table.at[e, name]
        overall[name][b] = table.at["average", name]


def diversity_intervals(
    X: Any,
    labels: Sequence[Any],
    texts: Sequence[str],
    sizes: Mapping[str, int],
    *,
    n_resamples: int = 20,
    confidence: float = 0.95,
    k: int = 5,
    self_bleu_sample: int = 500,
    random_state: int | None = 0,
) -> dict[str, Any]:
    """Per-emotion diversity metrics on ``n_resamples`` seeded subsamples of ``sizes[emotion]`` texts.

    Returns ``{"per_emotion": {e: {"n": m, metric: {value, low, high}}}, "overall": {metric: {...}},
    "needs": {e: reason}, "notes": [...], "settings": {...}}``. An emotion of ``labels`` that has no size in ``sizes``, or
    fewer than ``2 * sizes[e]`` texts, or a size below ``max(MIN_SUBSAMPLE, k)``, is listed in ``needs``
    with the number of texts an interval would need, instead of raising. ``value`` is the median of the
    replicates (always inside the interval), ``low``/``high`` the central ``confidence`` percentiles.
    """
    if n_resamples < 2:
        raise DataError(f"diversity intervals need at least 2 resamples, got {n_resamples}")
    if not 0 < confidence < 1:
        raise DataError(f"confidence must be between 0 and 1, got {confidence}")
    # Only the subsampled rows are converted, checked and normalised (in _replicate): a 100k x 384 float32
    # matrix is not copied to float64 here.
    Xm = np.asarray(X)
    if Xm.ndim != 2:
        raise DataError(f"X must be a 2-D array (rows = texts), got shape {Xm.shape}")
    y = np.asarray(labels).astype(str)
    texts = list(texts)
    if not (len(y) == len(Xm) == len(texts)):
        raise DataError(f"X has {len(Xm)} rows, labels {len(y)} and texts {len(texts)}; they must match")
    floor = max(MIN_SUBSAMPLE, k)
    need = min_texts_for_interval(k)
    rows: dict[str, np.ndarray] = {}
    needs: dict[str, str] = {}
    for e in sorted(set(y.tolist())):
        idx = np.flatnonzero(y == e)
        m = int(sizes.get(e, 0))
        if len(idx) < need:
            needs[e] = f"an interval needs at least {need} texts of this emotion; it has {len(idx)}"
        elif m < floor:
            needs[e] = (
                f"an interval needs at least {need} texts of this emotion in every compared dataset "
                f"(subsamples of at least {floor}); the shared size is {m}"
            )
        elif 2 * m > len(idx):
            needs[e] = f"the shared subsample size {m} is more than half of its {len(idx)} texts"
        else:
            rows[e] = idx
    emotions = list(rows)
    draws = {e: {name: np.full(n_resamples, np.nan) for name in INTERVAL_METRICS} for e in emotions}
    overall = {name: np.full(n_resamples, np.nan) for name in INTERVAL_METRICS}
    # One independent stream per replicate: replicate b is the same whatever n_resamples is.
    streams = np.random.SeedSequence(random_state).spawn(n_resamples) if emotions else []
    with _one_thread():  # many small eigen-decompositions: a second BLAS thread only adds contention
        for b, seq in enumerate(streams):
            _replicate(
                b, np.random.default_rng(seq), rows, sizes, Xm, texts, draws, overall, k, self_bleu_sample
            )
    notes = []
    if len(emotions) == 1:
        notes.append("centroid distance needs at least two emotions with an interval")
    return {
        "per_emotion": {
            e: {"n": int(sizes[e]), **{name: _summary(v, confidence) for name, v in draws[e].items()}}
            for e in emotions
        },
        "overall": {name: _summary(v, confidence) for name, v in overall.items()} if emotions else {},
        "needs": needs,
        "notes": notes,
        "settings": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": random_state,
            "k": k,
            "self_bleu_sample": self_bleu_sample,
            "sampling": "per emotion, the shared size m (half the texts of the smallest compared dataset, "
            "capped) drawn without replacement in every replicate; value = median of the replicates, "
            "interval = central percentile range",
        },
    }


# ------------------------------------------------------------------------------ display (report, page, CLI)


def format_interval(summary: Mapping[str, Any] | None) -> str:
    """``"0.4321 [0.4102, 0.4533]"`` for a ``{value, low, high}`` summary; ``"–"`` when nothing was computed."""
    if not summary or summary.get("value") is None:
        return "–"
    if summary.get("low") is None or summary.get("high") is None:
        return f"{summary['value']:.4g}"
    return f"{summary['value']:.4g} [{summary['low']:.4g}, {summary['high']:.4g}]"


def _block(diversity: Mapping[str, Any], dataset: str) -> Mapping[str, Any] | None:
    return ((diversity.get("datasets") or {}).get(dataset) or {}).get("equal_size")


def interval_overall_table(diversity: Mapping[str, Any], metrics: Sequence[str] | None = None) -> Any:
    """DataFrame (rows = dataset, columns = metric) of the overall equal-size values with intervals.

    A dataset without intervals (too few texts) has "–" in its row; :func:`interval_notes` says why.
    Empty DataFrame when no dataset has any (e.g. a stored evaluation from before the intervals).
    """
    import pandas as pd

    metrics = list(metrics or INTERVAL_METRICS)
    rows = {}
    for name in diversity.get("datasets") or {}:
        overall = (_block(diversity, name) or {}).get("overall") or {}
        rows[name] = {m: format_interval(overall.get(m)) for m in metrics}
    if all(v == "–" for row in rows.values() for v in row.values()):
        rows = {}  # nothing computed anywhere (e.g. stored before the intervals): no table of dashes
    return pd.DataFrame.from_dict(rows, orient="index", columns=metrics)


def interval_emotion_table(
    diversity: Mapping[str, Any], dataset: str, metrics: Sequence[str] | None = None
) -> Any:
    """DataFrame (rows = emotion, then ``overall``; columns = ``n`` and metrics) for one dataset.

    An emotion without an interval shows what it needs in place of the figures.
    """
    import pandas as pd

    metrics = list(metrics or INTERVAL_METRICS)
    block = _block(diversity, dataset) or {}
    rows: dict[str, dict[str, Any]] = {}
    for e, per in (block.get("per_emotion") or {}).items():
        rows[e] = {"n": str(per.get("n")), **{m: format_interval(per.get(m)) for m in metrics}}
    for e, reason in (block.get("needs") or {}).items():
        rows[e] = {"n": "–", **{m: "" for m in metrics}}
        rows[e][metrics[0]] = reason
    rows = dict(sorted(rows.items()))
    if block.get("overall"):
        rows["overall"] = {"n": "", **{m: format_interval(block["overall"].get(m)) for m in metrics}}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["n", *metrics])


def interval_notes(diversity: Mapping[str, Any]) -> list[str]:
    """How the intervals were sampled, and per dataset what could not be given and why."""
    eq = diversity.get("equal_size")
    if not eq:
        return [
            (
                "No intervals in this evaluation: it was computed before equal-size intervals existed or with "
                "diversity_resamples = 0; evaluate again to get them."
            )
        ]
    out = [str(eq.get("description", ""))]
    for name in diversity.get("datasets") or {}:
        block = _block(diversity, name) or {}
        needs = block.get("needs") or {}
        if needs:
            listed = "; ".join(f"{e}: {why}" for e, why in sorted(needs.items()))
            out.append(f"{name}: no interval for {listed}")
        for note in block.get("notes") or []:
            out.append(f"{name}: {note}")
    return out

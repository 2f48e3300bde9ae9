"""Diversity and real-data metrics as plain functions on arrays (formulas: docs/METRICS.md).

Nothing here knows about the embedding model, the run store or the UI: inputs are numpy arrays of
embeddings (one row per text), label arrays and lists of texts. Randomness comes only from the
``random_state`` arguments.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from personagen_core.errors import DataError

__all__ = [
    "DIVERSITY_COLUMNS",
    "CentroidDistances",
    "PRDResult",
    "RealDataMetrics",
    "bootstrap_ci",
    "centroid_distances",
    "cluster_entropy",
    "compression_ratio",
    "distinct_n",
    "diversity_table",
    "equal_size_samples",
    "fid",
    "histogram_cosine",
    "kl_divergence",
    "mean_cosine_distance",
    "prd",
    "prdc",
    "real_data_metrics",
    "self_bleu",
    "tokenize",
    "vendi_score",
]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------------------------- helpers


def _as_matrix(X: Any, name: str = "X", min_rows: int = 1) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (rows = texts), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise DataError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return arr


def _normalise(X: np.ndarray, name: str = "X") -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{name} has a zero row; cosine measures need non-zero vectors")
    return X / norms


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _one_thread() -> Any:
    """Limit BLAS/OpenMP to one thread for the enclosed block (restored on exit).

    The matrices here are small; on a shared 2-core machine OpenMP/BLAS spin-waiting made k-means and
    sqrtm 10-30x slower with 2 threads than with 1 (measured; see docs/METRICS.md).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


# ------------------------------------------------------------------------------------ diversity (Table IV)


def mean_cosine_distance(X: Any) -> float:
    """Mean of ``1 - cos(x_i, x_j)`` over all unordered pairs ``i < j`` (needs at least 2 rows)."""
    Xn = _normalise(_as_matrix(X, min_rows=2))
    n = Xn.shape[0]
    s = Xn.sum(axis=0)
    # sum over i != j of cos = |sum x|^2 - sum |x|^2 = |s|^2 - n for unit rows; O(n d) instead of O(n^2 d).
    mean_cos = (float(s @ s) - n) / (n * (n - 1))
    return 1.0 - mean_cos


def cluster_entropy(X: Any, *, k: int = 5, random_state: int | None = 0) -> float:
    """Natural-log entropy of the cluster sizes after k-means (k clusters) on the L2-normalised rows."""
    from sklearn.cluster import KMeans

    Xn = _normalise(_as_matrix(X, min_rows=k))
    with _one_thread():
        labels = KMeans(n_clusters=k, random_state=random_state, n_init=10).fit_predict(Xn)
    p = np.bincount(labels, minlength=k) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclass
class CentroidDistances:
    """Cosine distances between label centroids."""

    labels: list[str]
    matrix: np.ndarray
    per_label: dict[str, float]
    overall: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "labels": list(self.labels),
            "matrix": self.matrix.tolist(),
            "per_label": dict(self.per_label),
            "overall": self.overall,
        }


def centroid_distances(X: Any, labels: Sequence[Any]) -> CentroidDistances:
    """Cosine distance between the centroids (means of normalised rows) of every pair of labels.

    ``per_label[l]`` is the mean distance from l's centroid to the other centroids; ``overall`` is the
    mean over all unordered pairs (equal to the mean of ``per_label``).
    """
    Xn = _normalise(_as_matrix(X))
    y = np.asarray(labels).astype(str)
    if len(y) != len(Xn):
        raise DataError(f"labels has {len(y)} entries but X has {len(Xn)} rows")
    names = sorted(set(y.tolist()))
    cents = np.stack([Xn[y == name].mean(axis=0) for name in names])
    cents = _normalise(cents, "centroids")
    D = np.clip(1.0 - cents @ cents.T, 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    m = len(names)
    if m < 2:
        per = {names[0]: float("nan")} if names else {}
        return CentroidDistances(names, D, per, float("nan"))
    per = {name: float(D[i].sum() / (m - 1)) for i, name in enumerate(names)}
    overall = float(D[np.triu_indices(m, 1)].mean())
    return CentroidDistances(names, D, per, overall)


def vendi_score(X: Any) -> float:
    """Vendi score with the cosine kernel: ``exp(-sum(l * ln l))`` over the eigenvalues of ``K / n``."""
    Xn = _normalise(_as_matrix(X))
    n = Xn.shape[0]
    # K/n = Xn Xn^T / n has the same non-zero eigenvalues as Xn^T Xn / n (d x d, cheaper when n > d).
    gram = (Xn.T @ Xn) / n if n > Xn.shape[1] else (Xn @ Xn.T) / n
    lam = np.linalg.eigvalsh(gram)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (``\\w+`` or one non-space symbol)."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: number of unique n-grams over the total number of n-grams in all texts (0 if none)."""
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(
    texts: Sequence[str], *, n: int = 4, sample_size: int = 500, random_state: int | None = 0
) -> float:
    """Self-BLEU-n: mean sentence BLEU of each text against all the other texts as references.

    Up to ``sample_size`` texts are drawn (seeded, without replacement); within the sample every text is
    a hypothesis once, the rest of the sample its references. Uniform weights 1/n, clipped n-gram counts
    against the maximum count in any one reference, closest-reference-length brevity penalty, and
    smoothing "method 1" of Chen & Cherry (2014) (a zero precision becomes 0.1 / count), as NLTK's
    ``sentence_bleu``. Returns NaN for fewer than 2 texts.
    """
    texts = list(texts)
    if len(texts) < 2:
        return float("nan")
    if len(texts) > sample_size:
        rng = np.random.default_rng(random_state)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), sample_size, replace=False))]
    toks = [tokenize(t) for t in texts]
    m = len(toks)
    lengths = np.array([len(t) for t in toks])
    log_p = np.zeros(m)
    unigram_hit = np.ones(m, dtype=bool)
    for order in range(1, n + 1):
        counts = [Counter(_ngrams(t, order)) for t in toks]
        # Per n-gram: (largest count, its text, second largest) -> max over "all texts but i" in O(1).
        best: dict[tuple[str, ...], list[int]] = {}
        for i, c in enumerate(counts):
            for g, v in c.items():
                b = best.get(g)
                if b is None:
                    best[g] = [v, i, 0]
                elif v > b[0]:
                    b[2], b[0], b[1] = b[0], v, i
                elif v > b[2]:
                    b[2] = v
        for i, c in enumerate(counts):
            total = max(1, sum(c.values()))
            clipped = 0
            for g, v in c.items():
                b = best[g]
                ref_max = b[2] if b[1] == i else b[0]
                clipped += min(v, ref_max)
            if order == 1 and clipped == 0:
                unigram_hit[i] = False
            p = clipped / total if clipped else 0.1 / total
            log_p[i] += math.log(p) / n
    scores = np.zeros(m)
    for i in range(m):
        c = lengths[i]
        if c == 0 or not unigram_hit[i]:
            continue  # NLTK returns 0 when no unigram matches
        others = np.delete(lengths, i)
        diff = np.abs(others - c)
        r = int(others[np.lexsort((others, diff))[0]])  # closest length, shorter one on ties
        bp = 1.0 if c > r else math.exp(1 - r / c)
        scores[i] = bp * math.exp(log_p[i])
    return float(scores.mean())


def compression_ratio(texts: Sequence[str]) -> float:
    """Size of the newline-joined UTF-8 texts over their gzip size (level 9); higher = more repetitive."""
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return float("nan")
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


DIVERSITY_COLUMNS = [
    "n",
    "mean_cosine_distance",
    "cluster_entropy",
    "centroid_distance",
    "vendi_score",
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "self_bleu_4",
    "compression_ratio",
]


def diversity_table(
    X: Any,
    labels: Sequence[Any],
    texts: Sequence[str],
    *,
    k: int = 5,
    random_state: int | None = 0,
    self_bleu_sample: int = 500,
) -> pd.DataFrame:
    """Per-label diversity metrics (rows: labels sorted, then ``"average"`` = unweighted mean of rows).

    Cluster entropy is NaN for a label with fewer than ``k`` texts; mean cosine distance is NaN below 2.
    """
    Xm = _as_matrix(X)
    y = np.asarray(labels).astype(str)
    texts = list(texts)
    if not (len(y) == len(Xm) == len(texts)):
        raise DataError(f"X has {len(Xm)} rows, labels {len(y)} and texts {len(texts)}; they must match")
    cents = centroid_distances(Xm, y)
    rows: dict[str, dict[str, float]] = {}
    for name in cents.labels:
        idx = np.flatnonzero(y == name)
        Xl = Xm[idx]
        tl = [texts[i] for i in idx]
        rows[name] = {
            "n": float(len(idx)),
            "mean_cosine_distance": mean_cosine_distance(Xl) if len(idx) >= 2 else float("nan"),
            "cluster_entropy": (
                cluster_entropy(Xl, k=k, random_state=random_state) if len(idx) >= k else float("nan")
            ),
            "centroid_distance": cents.per_label[name],
            "vendi_score": vendi_score(Xl),
            "distinct_1": distinct_n(tl, 1),
            "distinct_2": distinct_n(tl, 2),
            "distinct_3": distinct_n(tl, 3),
            "self_bleu_4": self_bleu(tl, n=4, sample_size=self_bleu_sample, random_state=random_state),
            "compression_ratio": compression_ratio(tl),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=DIVERSITY_COLUMNS)
    table.loc["average"] = table.mean(axis=0, skipna=True)
    table.index.name = "label"
    return table


# --------------------------------------------------------------------------- real-data comparison (VI)


def fid(X_real: Any, X_syn: Any, *, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to the two sets (the pytorch-fid formula).

    ``|mu_r - mu_s|^2 + tr(S_r) + tr(S_s) - 2 tr(sqrtm(S_r S_s))``; if the matrix square root is not
    finite (singular product), ``eps`` is added to both covariance diagonals, as pytorch-fid does.
    """
    from scipy import linalg

    A = _as_matrix(X_real, "X_real", 2)
    B = _as_matrix(X_syn, "X_syn", 2)
    if A.shape[1] != B.shape[1]:
        raise DataError(f"X_real has {A.shape[1]} dimensions but X_syn has {B.shape[1]}")
    mu1, mu2 = A.mean(axis=0), B.mean(axis=0)
    s1, s2 = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    diff = mu1 - mu2
    with _one_thread():
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise DataError(
                f"FID: the matrix square root has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}; the covariance estimates are ill-conditioned "
                f"({len(A)} and {len(B)} samples in {A.shape[1]} dimensions)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def equal_size_samples(
    X_real: Any, X_syn: Any, *, random_state: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger set (seeded, without replacement) to the size of the smaller one."""
    A = _as_matrix(X_real, "X_real")
    B = _as_matrix(X_syn, "X_syn")
    n = min(len(A), len(B))
    rng = np.random.default_rng(random_state)
    if len(A) > n:
        A = A[np.sort(rng.choice(len(A), n, replace=False))]
    if len(B) > n:
        B = B[np.sort(rng.choice(len(B), n, replace=False))]
    return A, B


def _pooled_labels(A: np.ndarray, B: np.ndarray, num_clusters: int, random_state: int | None) -> np.ndarray:
    """Cluster labels of ``vstack([B, A])`` (Sajjadi et al.: evaluated set first, then the reference)."""
    from sklearn.cluster import MiniBatchKMeans

    with _one_thread():
        km = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=random_state)
        return km.fit(np.vstack([B, A])).labels_


def kl_divergence(p: Any, q: Any, *, alpha: float = 1.0) -> float:
    """KL(p || q) in nats between two histograms of counts, after adding ``alpha`` to every bin."""
    p = np.asarray(p, dtype=np.float64) + alpha
    q = np.asarray(q, dtype=np.float64) + alpha
    if p.shape != q.shape or (p <= 0).any() or (q <= 0).any():
        raise DataError("kl_divergence needs two histograms of equal length with positive smoothed bins")
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def histogram_cosine(p: Any, q: Any) -> float:
    """Cosine similarity of two histograms (raw counts, no smoothing)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    denom = np.linalg.norm(p) * np.linalg.norm(q)
    return float(p @ q / denom) if denom else float("nan")


def _prd_curve(eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int) -> tuple[np.ndarray, ...]:
    angles = np.linspace(1e-10, np.pi / 2 - 1e-10, num=num_angles)
    slopes = np.tan(angles)
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    recall = precision / slopes
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def _max_f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> float:
    f = (1 + beta**2) * precision * recall / (beta**2 * precision + recall + 1e-10)
    return float(f.max())


@dataclass
class PRDResult:
    """PRD curve (Sajjadi et al. 2018) averaged over runs, plus KL and histogram cosine on the same bins."""

    precision: np.ndarray
    recall: np.ndarray
    f_beta: float  # F_8: recall-like (how much of the real data the synthetic data covers)
    f_beta_inv: float  # F_1/8: precision-like (how much of the synthetic data looks real)
    kl: float  # KL(real || synthetic), Laplace-smoothed, mean over runs
    hist_cosine: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "f_beta": self.f_beta,
            "f_beta_inv": self.f_beta_inv,
            "kl": self.kl,
            "hist_cosine": self.hist_cosine,
            "settings": dict(self.settings),
        }


def _prd_from_labels(
    runs: list[np.ndarray],
    idx_real: np.ndarray,
    idx_syn: np.ndarray,
    n_syn: int,
    num_clusters: int,
    num_angles: int,
    beta: float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, float, float, float, float]:
    """PRD curve, F_beta, F_1/beta, KL and cosine from fixed clusterings, for the selected points."""
    precs, recs, kls, coss = [], [], [], []
    for lab in runs:
        h_syn = np.bincount(lab[idx_syn], minlength=num_clusters)
        h_real = np.bincount(lab[n_syn + idx_real], minlength=num_clusters)
        p, r = _prd_curve(h_syn / h_syn.sum(), h_real / h_real.sum(), num_angles)
        precs.append(p)
        recs.append(r)
        kls.append(kl_divergence(h_real, h_syn, alpha=alpha))
        coss.append(histogram_cosine(h_real, h_syn))
    precision = np.mean(precs, axis=0)
    recall = np.mean(recs, axis=0)
    return (
        precision,
        recall,
        _max_f_beta(precision, recall, beta),
        _max_f_beta(precision, recall, 1 / beta),
        float(np.mean(kls)),
        float(np.mean(coss)),
    )


def _prd_runs(
    A: np.ndarray, B: np.ndarray, num_clusters: int, num_runs: int, random_state: int | None
) -> list[np.ndarray]:
    rng = np.random.default_rng(random_state)
    return [_pooled_labels(A, B, num_clusters, _seed(rng)) for _ in range(num_runs)]


def prd(
    X_real: Any,
    X_syn: Any,
    *,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    beta: float = 8.0,
    alpha: float = 1.0,
    random_state: int | None = 0,
) -> PRDResult:
    """PRD of the synthetic set w.r.t. the real set; both must have the same number of rows."""
    A = _as_matrix(X_real, "X_real")
    B = _as_matrix(X_syn, "X_syn")
    if len(A) != len(B):
        raise DataError(
            f"PRD needs equal sample sizes (real {len(A)}, synthetic {len(B)}); use equal_size_samples"
        )
    if num_angles < 3 or num_runs < 1:
        raise DataError(f"PRD needs num_angles >= 3 and num_runs >= 1, got {num_angles}, {num_runs}")
    if 2 * len(A) < num_clusters:
        raise DataError(f"{2 * len(A)} points cannot form {num_clusters} clusters")
    runs = _prd_runs(A, B, num_clusters, num_runs, random_state)
    ar = np.arange(len(A))
    precision, recall, fb, fbi, kl, cos = _prd_from_labels(
        runs, ar, ar, len(B), num_clusters, num_angles, beta, alpha
    )
    return PRDResult(
        precision=precision,
        recall=recall,
        f_beta=fb,
        f_beta_inv=fbi,
        kl=kl,
        hist_cosine=cos,
        settings={
            "num_clusters": num_clusters,
            "num_angles": num_angles,
            "num_runs": num_runs,
            "beta": beta,
            "kl_alpha": alpha,
            "kl_direction": "KL(real || synthetic)",
            "n": len(A),
            "random_state": random_state,
        },
    )


def _distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    with _one_thread():
        return pairwise_distances(A, B)


def _prdc_from(D_rr: np.ndarray, D_ss: np.ndarray, D_rs: np.ndarray, k: int) -> dict[str, float]:
    # k-th neighbour radius, the point itself excluded: (k+1)-th smallest distance in its row (self = 0).
    r_real = np.partition(D_rr, k, axis=1)[:, k]
    r_syn = np.partition(D_ss, k, axis=1)[:, k]
    inside_real = D_rs < r_real[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((D_rs < r_syn[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((D_rs.min(axis=1) < r_real).mean()),
    }


class _ResampledPRDC:
    """:func:`_prdc_from` of bootstrap resamples, from the full distance matrices without n x n copies.

    A resample is a multiset of the original points; every quantity depends only on each original point's
    multiplicity ``c``. The k-NN radius of point ``i`` in a resample is the (k+1)-th smallest distance of the
    multiset (its own copies, at distance 0, included), found by walking ``i``'s neighbours in distance
    order and summing multiplicities; only the first ``depth`` neighbours are kept, with a full-row
    fallback. The results equal ``_prdc_from(D_rr[ia][:, ia], D_ss[ib][:, ib], D_rs[ia][:, ib], k)``.
    """

    def __init__(self, D_rr: np.ndarray, D_ss: np.ndarray, D_rs: np.ndarray, k: int, depth: int = 64) -> None:
        self.k, self.D_rr, self.D_ss, self.D_rs = k, D_rr, D_ss, D_rs
        self._near = [self._nearest(D, depth) for D in (D_rr, D_ss)]

    @staticmethod
    def _nearest(D: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        depth = min(depth, D.shape[1])
        idx = np.argpartition(D, depth - 1, axis=1)[:, :depth] if depth < D.shape[1] else np.tile(
            np.arange(D.shape[1]), (len(D), 1))
        d = np.take_along_axis(D, idx, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(d, order, axis=1)

    def _radii(self, which: int, counts: np.ndarray) -> np.ndarray:
        idx, d = self._near[which]
        cum = np.cumsum(counts[idx], axis=1)
        reached = cum[:, -1] >= self.k + 1
        radii = d[np.arange(len(d)), np.argmax(cum >= self.k + 1, axis=1)]
        D = self.D_rr if which == 0 else self.D_ss
        for i in np.flatnonzero(~reached & (counts > 0)):  # rare: needs neighbours beyond ``depth``
            row = np.repeat(D[i], counts)
            radii[i] = np.partition(row, self.k)[self.k]
        return radii

    def __call__(self, ia: np.ndarray, ib: np.ndarray) -> dict[str, float]:
        n_r, n_s = self.D_rs.shape
        ca = np.bincount(ia, minlength=n_r)
        cb = np.bincount(ib, minlength=n_s)
        r_real = self._radii(0, ca)
        r_syn = self._radii(1, cb)
        rows, cols = ca > 0, cb > 0
        D = self.D_rs[rows]  # distances from the real points in the resample to every synthetic point
        inside = (D < r_real[rows, None]).astype(np.float32)
        # resampled real balls holding each synthetic point (exact: integer counts far below 2**24)
        balls = np.rint(ca[rows].astype(np.float32) @ inside).astype(np.int64)
        covered = np.zeros(n_r, dtype=bool)
        covered[rows] = (D[:, cols] < r_syn[None, cols]).any(axis=1)
        reached = np.zeros(n_r, dtype=bool)
        reached[rows] = D[:, cols].min(axis=1) < r_real[rows]
        return {
            "precision": float((balls[ib] > 0).mean()),
            "recall": float(covered[ia].mean()),
            "density": float(balls[ib].mean() / self.k),
            "coverage": float(reached[ia].mean()),
        }


def prdc(X_real: Any, X_syn: Any, *, k: int = 5) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    Euclidean k-NN balls: the radius of a point is the distance to its k-th nearest neighbour in its own
    set (itself excluded); membership is strict (``<``), as in the reference ``prdc`` package.
    """
    A = _as_matrix(X_real, "X_real", k + 1)
    B = _as_matrix(X_syn, "X_syn", k + 1)
    return _prdc_from(_distances(A, A), _distances(B, B), _distances(A, B), k)


def _fid_eig(A: np.ndarray, B: np.ndarray) -> float:
    """FID with tr(sqrtm(S1 S2)) as sum(sqrt(eig(S1^1/2 S2 S1^1/2))): the same quantity, symmetric and fast."""
    mu = A.mean(axis=0) - B.mean(axis=0)
    s1, s2 = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    with _one_thread():
        w, V = np.linalg.eigh(s1)
        root = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
        lam = np.linalg.eigvalsh(root @ s2 @ root)
    return float(mu @ mu + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def _interval(point: float, reps: Sequence[float], confidence: float) -> tuple[float, float]:
    """Bias-corrected percentile interval: the percentile interval shifted by (mean(reps) - point)."""
    lo = (1 - confidence) / 2
    bias = float(np.mean(reps)) - point
    return float(np.quantile(reps, lo)) - bias, float(np.quantile(reps, 1 - lo)) - bias


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], float],
    X_real: Any,
    X_syn: Any,
    *,
    n_boot: int = 20,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval of ``stat(real, syn)``.

    Each replicate resamples both sets with replacement (same sizes). Because duplicated points inflate
    FID and shrink k-NN balls, the percentile interval is shifted by the bootstrap bias estimate
    ``mean(replicates) - stat(real, syn)``.
    """
    A = _as_matrix(X_real, "X_real")
    B = _as_matrix(X_syn, "X_syn")
    if n_boot < 2:
        raise DataError(f"bootstrap needs n_boot >= 2, got {n_boot}")
    rng = np.random.default_rng(random_state)
    point = stat(A, B)
    reps = [stat(A[rng.integers(0, len(A), len(A))], B[rng.integers(0, len(B), len(B))]) for _ in range(n_boot)]
    return _interval(point, reps, confidence)


_REAL_METRICS = ["fid", "prd_f8", "prd_f1_8", "kl", "hist_cosine", "precision", "recall", "density", "coverage"]


@dataclass
class RealDataMetrics:
    """Real-vs-synthetic metrics on equal-size samples, each with a bootstrap interval."""

    n: int
    values: dict[str, float]
    ci: dict[str, tuple[float, float]]
    prd_curve: PRDResult
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "n": self.n,
            "metrics": {
                name: {"value": self.values[name], "ci_low": self.ci[name][0], "ci_high": self.ci[name][1]}
                for name in self.values
            },
            "prd_curve": {
                "precision": self.prd_curve.precision.tolist(),
                "recall": self.prd_curve.recall.tolist(),
            },
            "settings": dict(self.settings),
        }


def real_data_metrics(
    X_real: Any,
    X_syn: Any,
    *,
    random_state: int | None = 0,
    n_boot: int = 50,
    confidence: float = 0.95,
    num_clusters: int = 20,
    prd_runs: int = 10,
    k: int = 5,
    max_n: int | None = 5000,
) -> RealDataMetrics:
    """FID, PRD (F8, F1/8), KL(real||syn), histogram cosine and PRDC with seeded bootstrap intervals.

    Both sets are first subsampled to the same size, ``min(len(real), len(syn), max_n)``. Bootstrap
    replicates resample points with replacement; PRD/KL/cosine replicates reuse the ``prd_runs`` fixed
    clusterings (the interval is conditional on them) and PRDC replicates reuse the distance matrices,
    so intervals cost little. ``n_boot=0`` skips them (NaN bounds). See docs/METRICS.md.
    """
    rng = np.random.default_rng(random_state)
    A, B = equal_size_samples(X_real, X_syn, random_state=_seed(rng))
    if max_n is not None and len(A) > max_n:
        A, B = A[:max_n], B[:max_n]  # already a random order-preserving subsample; keep the first max_n
    n = len(A)
    if n <= k or 2 * n < num_clusters:
        raise DataError(f"real-data metrics need more than {max(k, num_clusters // 2)} texts per side, got {n}")
    runs = _prd_runs(A, B, num_clusters, prd_runs, _seed(rng))
    ar = np.arange(n)
    precision, recall, fb, fbi, kl, cos = _prd_from_labels(runs, ar, ar, n, num_clusters, 1001, 8.0, 1.0)
    pr = PRDResult(precision, recall, fb, fbi, kl, cos, {"num_clusters": num_clusters, "num_runs": prd_runs})
    D_rr, D_ss, D_rs = _distances(A, A), _distances(B, B), _distances(A, B)
    values = {"fid": fid(A, B), "prd_f8": fb, "prd_f1_8": fbi, "kl": kl, "hist_cosine": cos,
              **_prdc_from(D_rr, D_ss, D_rs, k)}
    ci: dict[str, tuple[float, float]] = {m: (float("nan"), float("nan")) for m in _REAL_METRICS}
    if n_boot > 0:
        boot: dict[str, list[float]] = {m: [] for m in _REAL_METRICS}
        resampled = _ResampledPRDC(D_rr, D_ss, D_rs, k)
        for _ in range(n_boot):
            ia = rng.integers(0, n, n)
            ib = rng.integers(0, n, n)
            _, _, bfb, bfbi, bkl, bcos = _prd_from_labels(runs, ia, ib, n, num_clusters, 1001, 8.0, 1.0)
            boot["fid"].append(_fid_eig(A[ia], B[ib]))
            boot["prd_f8"].append(bfb)
            boot["prd_f1_8"].append(bfbi)
            boot["kl"].append(bkl)
            boot["hist_cosine"].append(bcos)
            sub = resampled(ia, ib)
            for name, v in sub.items():
                boot[name].append(v)
        ci = {m: _interval(values[m], v, confidence) for m, v in boot.items()}
    return RealDataMetrics(
        n=n,
        values=values,
        ci=ci,
        prd_curve=pr,
        settings={
            "random_state": random_state,
            "n_boot": n_boot,
            "confidence": confidence,
            "bootstrap": "bias-corrected percentile; both sets resampled with replacement; PRD/KL/cosine "
            "on the fixed clusterings, PRDC on the fixed distance matrices",
            "num_clusters": num_clusters,
            "num_angles": 1001,
            "prd_runs": prd_runs,
            "prd_beta": 8.0,
            "kl_direction": "KL(real || synthetic)",
            "kl_alpha": 1.0,
            "prdc_k": k,
            "max_n": max_n,
            "distance": "euclidean on the given embeddings (L2-normalised from Embedder)",
        },
    )

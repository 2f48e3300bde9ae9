"""Known-answer tests for personagen_core.evaluation.metrics (and the seeded projections)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation import metrics as M


def _blobs(n_per: int, centers: np.ndarray, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.vstack([c + scale * rng.standard_normal((n_per, centers.shape[1])) for c in centers])
    y = np.repeat(np.arange(len(centers)).astype(str), n_per)
    return X, y


# ------------------------------------------------------------------------------------------- diversity


def test_mean_cosine_distance_hand_made() -> None:
    assert M.mean_cosine_distance([[1, 0], [0, 1]]) == pytest.approx(1.0)
    # pairs: (a, a') cos 1 -> 0, (a, b) and (a', b) cos 0 -> 1; mean 2/3
    assert M.mean_cosine_distance([[1, 0], [2, 0], [0, 3]]) == pytest.approx(2 / 3)
    assert M.mean_cosine_distance([[1, 0], [-1, 0]]) == pytest.approx(2.0)


def test_mean_cosine_distance_matches_brute_force() -> None:
    X = np.random.default_rng(0).standard_normal((40, 7))
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    iu = np.triu_indices(40, 1)
    assert M.mean_cosine_distance(X) == pytest.approx(float((1 - Xn @ Xn.T)[iu].mean()), abs=1e-12)


def test_mean_cosine_distance_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="at least 2 rows"):
        M.mean_cosine_distance([[1.0, 0.0]])
    with pytest.raises(DataError, match="zero row"):
        M.mean_cosine_distance([[1.0, 0.0], [0.0, 0.0]])


def test_cluster_entropy_of_known_split() -> None:
    centers = np.eye(5) * 10
    sizes = [40, 20, 20, 10, 10]
    rng = np.random.default_rng(1)
    X = np.vstack([c + 0.01 * rng.standard_normal((s, 5)) for c, s in zip(centers, sizes, strict=True)])
    p = np.array(sizes) / sum(sizes)
    expected = float(-(p * np.log(p)).sum())
    assert M.cluster_entropy(X, k=5, random_state=0) == pytest.approx(expected)
    X_even, _ = _blobs(30, np.eye(5) * 10, 0.01, 2)
    assert M.cluster_entropy(X_even, k=5, random_state=0) == pytest.approx(math.log(5))


def test_centroid_distances_orthogonal_classes() -> None:
    X = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1], [0, 0, 1], [0.1, 0, 1]], dtype=float)
    y = ["a", "a", "b", "b", "c", "c"]
    cd = M.centroid_distances(X, y)
    assert cd.labels == ["a", "b", "c"]
    assert cd.matrix.shape == (3, 3)
    assert np.allclose(np.diag(cd.matrix), 0)
    assert all(0.9 < v <= 1.0 for v in cd.per_label.values())
    assert cd.overall == pytest.approx(np.mean(list(cd.per_label.values())))
    json.dumps(cd.to_dict())
    same = M.centroid_distances(np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "b"])
    assert same.overall == pytest.approx(0.0, abs=1e-12)


def test_vendi_score_extremes() -> None:
    assert M.vendi_score(np.tile([1.0, 2.0, 3.0], (10, 1))) == pytest.approx(1.0)
    assert M.vendi_score(np.eye(6)) == pytest.approx(6.0)
    assert M.vendi_score(np.eye(3)[[0, 0, 1, 1, 2, 2]]) == pytest.approx(3.0)


def test_distinct_n_known_counts() -> None:
    texts = ["the cat sat", "the cat ran"]
    assert M.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["a"], 2) == 0.0
    assert M.tokenize("Hello, World!") == ["hello", ",", "world", "!"]


def test_self_bleu_known_answers() -> None:
    assert M.self_bleu(["a b c d e", "a b c d e"], n=4) == pytest.approx(1.0)
    assert M.self_bleu(["a b c", "x y z"], n=4) == 0.0
    # p1 = 2/3, p2 = 1/2, equal lengths -> BP 1 -> sqrt(1/3), both directions.
    assert M.self_bleu(["the cat sat", "the cat ran"], n=2) == pytest.approx(math.sqrt(1 / 3))
    # smoothing method 1: every unigram matches (p1 = 1), no bigram does -> p2 = 0.1 / 2
    assert M.self_bleu(["a b c", "c b a"], n=2) == pytest.approx(math.sqrt(1 / 1 * 0.1 / 2))
    assert math.isnan(M.self_bleu(["only one"]))


def test_self_bleu_brevity_penalty_and_sampling() -> None:
    # hyp "a b" vs ref "a b c d": p1 = p2 = 1, BP = exp(1 - 4/2); hyp "a b c d" vs "a b": clipped 2/4, 1/3
    expected = (math.exp(1 - 2) + math.sqrt(2 / 4 * 1 / 3)) / 2
    assert M.self_bleu(["a b", "a b c d"], n=2) == pytest.approx(expected)
    texts = [f"text number {i} says {i % 7}" for i in range(50)]
    a = M.self_bleu(texts, sample_size=20, random_state=3)
    assert a == M.self_bleu(texts, sample_size=20, random_state=3)
    assert 0 < a < 1


def test_compression_ratio_orders_repetition() -> None:
    rep = ["i am so happy today"] * 50
    varied = [f"{w} {i * 7919 % 1000}" for i, w in enumerate("lorem ipsum dolor sit amet consectetur".split() * 8)]
    assert M.compression_ratio(rep) > M.compression_ratio(varied) > 1.0


def test_diversity_table_layout() -> None:
    X, y = _blobs(12, np.eye(4)[:3] * 5, 1.0, 3)
    texts = [f"text {i} about {lab}" for i, lab in enumerate(y)]
    table = M.diversity_table(X, y, texts, k=5, random_state=0)
    assert list(table.index) == ["0", "1", "2", "average"]
    assert list(table.columns) == M.DIVERSITY_COLUMNS
    assert table.loc["average", "mean_cosine_distance"] == pytest.approx(
        table.loc[["0", "1", "2"], "mean_cosine_distance"].mean()
    )
    assert table.loc["0", "n"] == 12
    assert (table["cluster_entropy"] <= math.log(5) + 1e-9).all()
    with pytest.raises(DataError, match="must match"):
        M.diversity_table(X, y[:-1], texts)


# ------------------------------------------------------------------------------------- real-data metrics


def test_fid_zero_for_same_set_and_mean_shift() -> None:
    A = np.random.default_rng(0).standard_normal((300, 8))
    assert M.fid(A, A) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0, 0, 0, 0, 0, 0])
    assert M.fid(A, A + shift) == pytest.approx(5.0, rel=1e-6)  # |shift|^2, covariances equal
    assert M.fid(A, A + 2 * shift) > M.fid(A, A + shift)


def test_fid_singular_covariances_use_eps_fallback() -> None:
    # 5 samples in 20 dimensions: rank-deficient covariances, finite FID.
    rng = np.random.default_rng(4)
    value = M.fid(rng.standard_normal((5, 20)), rng.standard_normal((5, 20)))
    assert np.isfinite(value) and value > 0


def test_fid_eigen_form_matches_sqrtm_form() -> None:
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((200, 10)), rng.standard_normal((200, 10)) * 1.5 + 0.3
    assert M._fid_eig(A, B) == pytest.approx(M.fid(A, B), rel=1e-8)


def test_fid_dimension_mismatch() -> None:
    with pytest.raises(DataError, match="dimensions"):
        M.fid(np.zeros((4, 3)) + np.arange(3), np.zeros((4, 2)) + np.arange(2))


def test_kl_and_histogram_cosine() -> None:
    assert M.kl_divergence([5, 3, 2], [5, 3, 2]) == pytest.approx(0.0)
    assert M.kl_divergence([1, 0], [0, 1], alpha=1.0) == pytest.approx(math.log(2) / 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert M.kl_divergence(rng.integers(0, 9, 6), rng.integers(0, 9, 6)) >= 0
    assert M.histogram_cosine([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.histogram_cosine([1, 0], [0, 1]) == pytest.approx(0.0)


def test_prd_identical_and_disjoint_sets() -> None:
    X, _ = _blobs(40, np.eye(5) * 4, 1.0, 6)
    same = M.prd(X, X, num_runs=3, random_state=0)
    assert same.f_beta > 0.99 and same.f_beta_inv > 0.99
    assert same.kl == pytest.approx(0.0, abs=1e-12)
    assert same.hist_cosine == pytest.approx(1.0)
    assert len(same.precision) == 1001
    far = M.prd(X, X + 100.0, num_runs=2, random_state=0)
    assert far.f_beta < 0.05 and far.f_beta_inv < 0.05 and far.kl > 1.0
    json.dumps(same.to_dict())
    with pytest.raises(DataError, match="equal sample sizes"):
        M.prd(X, X[:-1])


def test_prdc_identical_and_disjoint() -> None:
    X = np.random.default_rng(7).standard_normal((60, 4))
    same = M.prdc(X, X, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = M.prdc(X, X + 50.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_matches_definition_by_brute_force() -> None:
    rng = np.random.default_rng(8)
    A, B = rng.standard_normal((30, 3)), rng.standard_normal((25, 3)) + 0.5
    k = 3

    def radii(Z: np.ndarray) -> np.ndarray:
        D = np.linalg.norm(Z[:, None] - Z[None], axis=2)
        return np.sort(D, axis=1)[:, k]

    ra, rb = radii(A), radii(B)
    D = np.linalg.norm(A[:, None] - B[None], axis=2)
    got = M.prdc(A, B, k=k)
    assert got["precision"] == pytest.approx(np.mean([(D[:, j] < ra).any() for j in range(25)]))
    assert got["recall"] == pytest.approx(np.mean([(D[i] < rb).any() for i in range(30)]))
    assert got["density"] == pytest.approx(np.mean([(D[:, j] < ra).sum() for j in range(25)]) / k)
    assert got["coverage"] == pytest.approx(np.mean(D.min(axis=1) < ra))


def test_real_data_metrics_equal_sizes_and_intervals() -> None:
    rng = np.random.default_rng(9)
    real = rng.standard_normal((150, 6))
    syn = rng.standard_normal((90, 6)) + 0.3
    res = M.real_data_metrics(real, syn, random_state=1, n_boot=30, prd_runs=2, num_clusters=10)
    assert res.n == 90
    d = res.to_dict()
    json.dumps(d)
    for name, m in d["metrics"].items():
        assert m["ci_low"] <= m["value"] <= m["ci_high"], (name, m)
    again = M.real_data_metrics(real, syn, random_state=1, n_boot=30, prd_runs=2, num_clusters=10)
    assert again.to_dict() == d
    none = M.real_data_metrics(real, syn, random_state=1, n_boot=0, prd_runs=1, num_clusters=10)
    assert math.isnan(none.ci["fid"][0])


def test_bootstrap_ci_brackets_a_mean_difference() -> None:
    rng = np.random.default_rng(10)
    A, B = rng.standard_normal((200, 2)), rng.standard_normal((200, 2)) + 1.0

    def stat(a: np.ndarray, b: np.ndarray) -> float:
        return float(b[:, 0].mean() - a[:, 0].mean())

    lo, hi = M.bootstrap_ci(stat, A, B, n_boot=200, random_state=0)
    assert lo < stat(A, B) < hi
    assert 0.6 < lo and hi < 1.4


def test_equal_size_samples() -> None:
    A, B = M.equal_size_samples(np.arange(20.0).reshape(10, 2), np.arange(8.0).reshape(4, 2), random_state=0)
    assert A.shape == B.shape == (4, 2)
    assert len({tuple(r) for r in A}) == 4


def test_resampled_prdc_equals_prdc_of_the_copied_resample() -> None:
    """The bootstrap's copy-free PRDC equals PRDC of the copied resampled matrices, duplicates included."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((120, 4)).astype(np.float32)
    B = (rng.standard_normal((120, 4)) + 0.4).astype(np.float32)
    A[10:16] = A[0]  # duplicate texts: several points at distance 0
    D_rr, D_ss, D_rs = M._distances(A, A), M._distances(B, B), M._distances(A, B)
    # depth=4 < k+1 forces the full-row fallback for every point; depth=64 the usual path
    for depth in (4, 64):
        resampled = M._ResampledPRDC(D_rr, D_ss, D_rs, 5, depth=depth)
        for _ in range(5):
            ia, ib = rng.integers(0, 120, 120), rng.integers(0, 120, 120)
            copied = M._prdc_from(D_rr[np.ix_(ia, ia)], D_ss[np.ix_(ib, ib)], D_rs[np.ix_(ia, ib)], 5)
            assert resampled(ia, ib) == copied


# ---------------------------------------------------------------------------------------------- projection


@pytest.mark.slow
def test_tsne_projection_is_seeded() -> None:
    from personagen_core.evaluation.projection import project

    X, _ = _blobs(30, np.eye(8)[:3] * 5, 1.0, 11)
    a = project(X, "tsne", random_state=0)
    b = project(X, "tsne", random_state=0)
    assert a.shape == (90, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    with pytest.raises(DataError, match="unknown projection method"):
        project(X, "isomap")  # type: ignore[arg-type]


@pytest.mark.slow
def test_umap_projection_is_seeded() -> None:
    from personagen_core.evaluation.projection import project

    X, _ = _blobs(30, np.eye(8)[:3] * 5, 1.0, 12)
    a = project(X, "umap", random_state=0)
    assert a.shape == (90, 2)
    assert np.array_equal(a, project(X, "umap", random_state=0))
    # the three blobs stay apart: every point's nearest 2-D neighbour is from its own blob
    d = np.linalg.norm(a[:, None] - a[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (d.argmin(axis=1) // 30 == np.arange(90) // 30).all()
    # umap-learn's kernels now go to numba's on-disk cache (compiled once per install, not per process)
    import umap.layouts
    from numba.core.dispatcher import Dispatcher

    kernels = [f for f in vars(umap.layouts).values() if isinstance(f, Dispatcher)]
    assert kernels and all(type(f._cache).__name__ != "NullCache" for f in kernels)

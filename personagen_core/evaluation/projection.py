"""Seeded 2-D projections of embeddings: t-SNE (openTSNE), UMAP and PCA (the first two components).

Both first reduce the (L2-normalised) embeddings to ``pca_dims`` principal components, the usual
preprocessing that speeds up the neighbour search without changing the picture much.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from personagen_core.errors import DataError

__all__ = ["METHODS", "METHOD_NAMES", "project"]

METHODS = ("tsne", "umap", "pca")
#: Display names of the methods (figures, pickers, listings).
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
# umap-learn's threshold below which it builds the exact distance matrix instead of an NN-descent graph.
_UMAP_SMALL = 4096


def _pca(X: np.ndarray, dims: int, random_state: int | None) -> np.ndarray:
    if dims <= 0 or X.shape[1] <= dims or X.shape[0] <= dims:
        return X
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, random_state=random_state).fit_transform(X)


def _cache_umap_kernels(umap: Any) -> None:
    """Let numba keep umap-learn's compiled kernels on disk, as ``@njit(cache=True)`` would.

    umap-learn compiles ~100 numba functions without ``cache=True``, which cost 11 s in every new process
    (0.15 s once cached). Numba keys the cache by source file and CPU, so results are unchanged; a numba
    without ``Dispatcher.enable_caching`` just compiles as before.
    """
    import importlib

    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - umap-learn depends on numba
        return
    for name in ("umap_", "layouts", "utils", "spectral", "distances", "sparse"):
        try:
            module = importlib.import_module(f"{umap.__name__}.{name}")
        except ImportError:
            continue
        for obj in vars(module).values():
            if not isinstance(obj, Dispatcher):
                continue
            try:
                if type(obj._cache).__name__ == "NullCache":
                    obj.enable_caching()
            except Exception:  # noqa: BLE001 - unwritable cache dir, other numba: compile as before
                return


def project(
    X: Any,
    method: Literal["tsne", "umap", "pca"] = "tsne",
    *,
    random_state: int | None = 0,
    n_jobs: int = 2,
    pca_dims: int = 50,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    umap_epochs: int = 200,
) -> np.ndarray:
    """Return an ``(n, 2)`` float32 projection of ``X``; the same inputs and seed give the same output.

    t-SNE: openTSNE with PCA initialisation, ``perplexity`` (lowered to ``(n - 1) / 3`` for tiny inputs),
    exact neighbours and Barnes-Hut gradients below 10,000 points, approximate neighbours and FFT
    interpolation above. ``n_jobs`` is fixed at 2 by default
    rather than the core count: the layout depends on the thread count (it is the same for the same count),
    and two threads halve the time on 2 cores (3,500 points: 6.4 s vs 13.2 s).
    UMAP: umap-learn, cosine metric, ``n_neighbors``, ``min_dist``, ``umap_epochs`` optimisation epochs
    (umap-learn's own default is 500 below 10,000 points; 200 gives the same layout quality at 2-D here).
    PCA: the first two principal components of the normalised rows (scikit-learn, seeded): linear, fast at
    any size, the picture to compare the other two against.
    """
    if method not in METHODS:
        raise DataError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
    A = np.asarray(X, dtype=np.float32)
    if A.ndim != 2 or len(A) < 4:
        raise DataError(f"projection needs a 2-D array with at least 4 rows, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise DataError("projection input contains NaN or infinite values")
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    A = A / np.where(norms == 0, 1, norms)
    if method == "pca":
        from sklearn.decomposition import PCA

        return np.asarray(PCA(n_components=2, random_state=random_state).fit_transform(A), dtype=np.float32)
    P = np.ascontiguousarray(_pca(A, pca_dims, random_state), dtype=np.float32)
    if method == "tsne":
        from openTSNE import TSNE

        perp = min(perplexity, max(1.0, (len(P) - 1) / 3))
        emb = TSNE(
            n_components=2,
            perplexity=perp,
            initialization="pca",
            # Exact neighbours below 10,000 points: 3,500 points in 0.12-0.16 s vs 0.8-0.9 s for openTSNE's
            # default approximate (Annoy) search, and exact affinities rather than approximate ones.
            neighbors="exact" if len(P) < 10_000 else "auto",
            # Barnes-Hut below 10,000 points: measured ~10x faster than FFT interpolation on small inputs.
            negative_gradient_method="bh" if len(P) < 10_000 else "fft",
            random_state=random_state,
            n_jobs=n_jobs,
            verbose=False,
        ).fit(P)
        return np.asarray(emb, dtype=np.float32)
    import umap

    _cache_umap_kernels(umap)
    if len(P) < _UMAP_SMALL:
        # umap-learn computes the exact distance matrix of small inputs itself, but by calling its numba
        # cosine once per pair through scikit-learn (12 million Python calls for 3,500 points: 12 s).
        # One matrix product gives the same cosine distances; UMAP then runs on them unchanged.
        U = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
        data = np.clip(1.0 - U.astype(np.float64) @ U.T.astype(np.float64), 0.0, 2.0)
        np.fill_diagonal(data, 0.0)
        metric = "precomputed"
    else:
        data, metric = P, "cosine"
    with warnings.catch_warnings():
        # umap-learn warns that a fixed random_state forces one thread; that is the point of the seed.
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*precomputed.*", category=UserWarning)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(n_neighbors, len(P) - 1),
            min_dist=min_dist,
            metric=metric,
            # cosine's own bound (umap-learn's DISCONNECTION_DISTANCES), kept for the precomputed matrix
            disconnection_distance=2.0,
            n_epochs=umap_epochs,
            random_state=random_state,
            init="spectral" if len(P) > n_neighbors + 2 else "random",
        )
        return np.asarray(reducer.fit_transform(data), dtype=np.float32)

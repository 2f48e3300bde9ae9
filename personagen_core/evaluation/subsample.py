"""Seeded stratified samples of large evaluations (projections of 100k texts are drawn from a sample).

:func:`stratified_indices` keeps every stratum's share (proportional allocation, largest remainders), so a
10,000-point picture of 100,000 texts shows each emotion (and each source, when synthetic and real texts
are pooled) in its true proportion, and the same inputs and seed give the same sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from personagen_core.errors import DataError

__all__ = ["allocate", "stratified_indices"]


def allocate(counts: Sequence[int], n: int) -> np.ndarray:
    """Split ``n`` draws over strata of sizes ``counts`` in proportion (Hamilton's largest remainders).

    Every non-empty stratum gets at least one draw when ``n`` allows it (a rare emotion stays visible), and
    no stratum gets more than it has. Ties in the remainders go to the earlier stratum.
    """
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    if n >= total:
        return c.copy()
    quota = c * (n / total)
    out = np.minimum(np.floor(quota).astype(np.int64), c)
    if n >= int((c > 0).sum()):
        out = np.where((c > 0) & (out == 0), 1, out)
    # Too many after the minimum of one: take back from the largest allocations.
    while out.sum() > n:
        out[int(np.argmax(out - (c > 0)))] -= 1
    remainder = quota - np.floor(quota)
    for i in sorted(range(len(c)), key=lambda j: (-remainder[j], j)):
        if out.sum() >= n:
            break
        if out[i] < c[i]:
            out[i] += 1
    # Still short (strata exhausted by the minimum rule): fill wherever room is left.
    for i in range(len(c)):
        while out.sum() < n and out[i] < c[i]:
            out[i] += 1
    return out


def stratified_indices(
    strata: Sequence[Sequence[Any]], n: int, *, random_state: int | None = 0
) -> np.ndarray:
    """Sorted row indices of a seeded stratified sample of ``n`` rows (all rows when there are fewer).

    ``strata`` is one or more equal-length columns (e.g. ``[labels]`` or ``[labels, sources]``); a stratum
    is one combination of their values. Within a stratum rows are drawn without replacement with
    ``numpy.random.default_rng(random_state)``, strata visited in sorted order, so the sample depends only on
    the data and the seed.
    """
    if n < 1:
        raise DataError(f"a sample needs at least 1 row, got n = {n}")
    columns = [np.asarray(col).astype(str) for col in strata]
    if not columns:
        raise DataError("stratified_indices needs at least one column to stratify by")
    size = len(columns[0])
    if any(len(col) != size for col in columns):
        raise DataError(f"the columns to stratify by differ in length: {[len(col) for col in columns]}")
    if n >= size:
        return np.arange(size)
    keys = np.stack(columns, axis=1) if len(columns) > 1 else columns[0][:, None]
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(uniq))
    take = allocate(counts, n)
    rng = np.random.default_rng(random_state)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    picked = [
        rng.choice(order[bounds[s] : bounds[s + 1]], size=int(take[s]), replace=False)
        for s in range(len(uniq))
        if take[s]
    ]
    return np.sort(np.concatenate(picked))

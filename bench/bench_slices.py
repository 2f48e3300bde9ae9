"""Benchmark: the time the slice analysis adds to an evaluation of the 3,500-text workload, cold and warm.

Workload (as bench_evaluation.py): 3,500 texts evaluated against CARER's 2,000-text test split, with the
balanced 500-per-class sample of CARER's train split as the gold classifier. The 3,500 texts are
STAND-INS (a seeded sample of CARER's train split; there is no synthetic run in the repository), and
their persona / scenario attributes are drawn with the shipped japan pack's sampler
(``sample_personas(load_pack("japan"), 3500, random_state=0)``), so the slices have the real number of
attributes and values. The rejection rates use 5,000 stand-in candidates (the same sampler, seed 1) with
a seeded 20 % rejection flag. None of the figures says anything about PersonaGen's data: only the times
matter here.

What is timed: ``report["timings"]["slices"]`` of ``evaluate(...)`` (the wall time of the slices stage):
``cold`` with an empty result cache, ``warm`` with the same cache again. Embeddings are computed first
(through the embedding cache at --embedding-cache) and are not part of the slice time; the other
sections run with projections off. Printed: the slice stage times, the whole evaluation's time for
scale, the number of slices, and the machine.

Run: .venv/bin/python bench/bench_slices.py [--embedding-cache DIR] [--carer DIR] [-n 3500]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CARER = REPO.parent / "shared" / "data" / "carer"
if not (CARER / "test.txt").exists():
    CARER = Path("/work/shared/data/carer")
N_SYN = 3500
SEED = 0


def _stage_only(data, train, test, embedder, settings, candidates, outputs, n_syn) -> int:
    """The slices stage alone, as evaluate() runs it (its private helpers), cold then warm."""
    import numpy as np

    from personagen_core.evaluation import suite
    from personagen_core.evaluation.embeddings import ResultCache

    frame = suite._check_dataset("stand-ins", data)
    gold = suite._prepare_gold(train, test, None, {"stand-ins": frame}, settings)
    gold_emb = suite._embed_gold(embedder, gold, settings)
    emb = {"stand-ins": np.asarray(embedder.encode(frame["text"].tolist()), dtype=np.float32)}
    rejections = {"stand-ins": {"candidates": candidates, "outputs": outputs}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResultCache(tmp)
        for phase in ("cold", "warm"):
            t = time.perf_counter()
            block = suite._slices({"stand-ins": frame}, emb, gold, gold_emb, rejections, settings, cache)
            print(f"{phase:5s}: slices stage {time.perf_counter() - t:.2f} s (stage only)", flush=True)
    d = block["datasets"]["stand-ins"]
    print(f"slices: {len(d['columns'])} attributes, {len(d['rows']) - 1} slices over {n_syn} texts")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; embedding precision {embedder.dtype}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedding-cache", type=Path, default=Path.home() / ".personagen" / "embeddings")
    parser.add_argument("--carer", type=Path, default=CARER, help="folder with train.txt and test.txt")
    parser.add_argument("-n", type=int, default=N_SYN, help="stand-in texts (the workload: 3,500)")
    parser.add_argument(
        "--stage-only",
        action="store_true",
        help="time only the slices stage (suite._slices on the same inputs), not the whole evaluation",
    )
    args = parser.parse_args()
    carer, n_syn = args.carer, args.n
    if not (carer / "test.txt").exists():
        print(f"skipped: CARER gold data not found at {carer} (see ../shared/data/carer/README.md)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from personagen_core.evaluation import gold
    from personagen_core.evaluation.embeddings import Embedder
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate
    from personagen_core.personas.sampling import sample_personas
    from personagen_core.personas.spec import load_pack

    train = gold.load_dataset(carer / "train.txt")
    test = gold.load_dataset(carer / "test.txt")
    idx = np.sort(np.random.default_rng(SEED).choice(len(train), n_syn, replace=False))
    spec = load_pack("japan")
    personas = sample_personas(spec, n_syn, random_state=0).reset_index(drop=True)
    data = train.iloc[idx][["text", "label"]].reset_index(drop=True)
    data = data.drop(columns=[c for c in personas.columns if c in data.columns]).join(personas)
    candidates = sample_personas(spec, 5000, random_state=1).reset_index(drop=True)
    candidates["rejected"] = np.random.default_rng(2).random(len(candidates)) < 0.2
    outputs = personas.assign(rejected=False)

    embedder = Embedder(None, cache_dir=args.embedding_cache)
    t = time.perf_counter()
    embedder.encode(data["text"].tolist())
    embedder.encode(test["text"].tolist())
    from personagen_core.evaluation.classify import balanced_indices

    bal = balanced_indices(train["label"].to_numpy(dtype=str), 500, random_state=SEED)
    embedder.encode(train["text"].iloc[np.sort(bal)].tolist())
    print(f"embeddings (not counted): {time.perf_counter() - t:.1f} s, cache {embedder.stats.to_dict()}")

    settings = EvaluationSettings(projections=())
    if args.stage_only:
        return _stage_only(data, train, test, embedder, settings, candidates, outputs, n_syn)
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for phase in ("cold", "warm"):
            t = time.perf_counter()
            report = evaluate(
                {"stand-ins": data},
                gold_train=train,
                gold_test=test,
                settings=settings,
                embedder=embedder,
                cache_dir=cache,
                rejections={"stand-ins": {"candidates": candidates, "outputs": outputs}},
            )
            results[phase] = (report["timings"]["slices"], time.perf_counter() - t)
    block = report["slices"]["datasets"]["stand-ins"]
    n_slices = sum(1 for r in block["rows"] if r["attribute"] != "(all)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; embedding precision {report['embedding']['precision']}"
    )
    print(f"slices: {len(block['columns'])} attributes, {n_slices} slices over {n_syn} texts")
    for phase, (slices_s, total_s) in results.items():
        print(f"{phase:5s}: slices stage {slices_s:.2f} s of a {total_s:.1f} s evaluation (projections off)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

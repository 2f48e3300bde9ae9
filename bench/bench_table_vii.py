"""Table VII on CARER, like with like: the figures docs/METRICS.md quotes, with the machine and precision.

Gold: CARER train.txt (balanced 500 per class for the gold row, all of it for the majority row) and
test.txt. The "dataset" row is a STAND-IN for a synthetic set that lacks a gold label: CARER val.txt
without its `love` rows (no synthetic run ships with the repository). Every row is scored on the test
texts whose labels all training sets can predict (here: all but love); the gold and majority rows on
the full test split follow, and a chance row. Printed: each row's accuracy and weighted / macro F1 with
95 % bootstrap intervals (200 paired resamples), n_test and the labels it covers, then the machine
(CPU model, bfloat16 support, cores, load) and the embedding precision used.

With --compare-precisions it instead embeds CARER's 2,000 test texts without the cache in float32 and
in bfloat16 and prints the time per text of each and the cosine between the two vectors of each text.

Run: .venv/bin/python bench/bench_table_vii.py [--precision auto|float32|bfloat16] [--compare-precisions]
     [--carer DIR]
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


def _use(folder: Path) -> None:
    global CARER
    CARER = folder


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?"
    )
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{model}; native bfloat16: {', '.join(native) or 'no'}"


def _compare_precisions() -> int:

    from personagen_core.evaluation import gold
    from personagen_core.evaluation.embeddings import Embedder

    texts = gold.load_dataset(CARER / "test.txt")["text"].tolist()
    vectors = {}
    for precision in ("float32", "bfloat16"):
        embedder = Embedder(None, use_cache=False, precision=precision)
        embedder.encode(texts[:8])  # load the model outside the timing
        t = time.perf_counter()
        vectors[precision] = embedder.encode(texts)
        ms = (time.perf_counter() - t) / len(texts) * 1000
        print(
            f"{precision}: {ms:.2f} ms/text over {len(texts)} texts (load average {os.getloadavg()[0]:.1f})"
        )
    cos = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    print(f"cosine float32 vs bfloat16 per text: min {cos.min():.5f}, mean {cos.mean():.5f}")
    print(f"machine: {_cpu()}; {os.cpu_count()} cores")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--embedding-cache", type=Path, default=Path.home() / ".personagen" / "embeddings")
    parser.add_argument("--compare-precisions", action="store_true")
    parser.add_argument("--carer", type=Path, default=CARER, help="folder with train.txt, val.txt, test.txt")
    args = parser.parse_args()
    _use(args.carer)
    if not (CARER / "test.txt").exists():
        print(f"skipped: CARER gold data not found at {CARER} (see ../shared/data/carer/README.md)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.compare_precisions:
        return _compare_precisions()
    from personagen_core.evaluation import gold
    from personagen_core.evaluation.embeddings import Embedder
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate

    val = gold.load_dataset(CARER / "val.txt")
    stand_in = val[val["label"] != "love"].reset_index(drop=True)
    embedder = Embedder(None, cache_dir=args.embedding_cache, precision=args.precision)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        report = evaluate(
            {"val without love (stand-in)": stand_in},
            gold_train=gold.load_dataset(CARER / "train.txt"),
            gold_test=gold.load_dataset(CARER / "test.txt"),
            settings=EvaluationSettings(projections=(), bootstrap=200, embedding_precision=args.precision),
            embedder=embedder,
            cache_dir=cache,
        )
    down = report["downstream"]
    print(f"Table VII on CARER: tested on {down['test']}")
    for name, row in down["rows"].items():
        ci = row.get("ci") or {}

        def fmt(key: str, ci: dict = ci, row: dict = row) -> str:
            lo_hi = ci.get(key)
            interval = f" [{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi and None not in lo_hi else ""
            return f"{row[key]:.4f}{interval}"

        print(
            f"  {name:45s} acc {fmt('accuracy'):26s} wF1 {fmt('weighted_f1'):26s} "
            f"mF1 {fmt('macro_f1'):26s} n_test {row['n_test']:5d}  labels {', '.join(row['labels'])}"
        )
    print(
        f"machine: {_cpu()}; {os.cpu_count()} cores; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"embedding: {report['embedding']['model']} precision {report['embedding']['precision']}; "
        f"evaluation {time.perf_counter() - t:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: evaluating 100,000 synthetic texts against CARER's 2,000 gold test texts (issue 14, part 4).

Synthetic texts: the fake OpenAI server's own text generator (``fake_openai.DefaultResponder``, seed 0),
asked for a text of one of CARER's six emotions, in CARER test's label proportions. They are cheap,
distinct template combinations ("My chest filled with joy the moment ...") and say nothing about the
quality of PersonaGen's data; they exercise the evaluation's sizes. Gold: ``../shared/data/carer/test.txt``
(read in place, never copied). A dedicated ``PERSONAGEN_HOME`` (``--home``) keeps the caches separate from
the user's, so "cold" means empty caches.

Phases (``--phase``):
  embed   embed the synthetic and gold texts into the embedding cache (cold when the home is new), with
          the progress events printed; prints texts/s. Resumable: chunks already embedded stay cached.
  eval    the whole evaluation as ``personagen evaluate`` runs it (``cli.evaluate_cmds.run_evaluate``:
          default settings, at most 10,000 projection points, report written), time per stage from the
          report's ``timings``, report size, peak RSS; then the same command again (warm rerun).
  all     embed, then eval.
  diversity  only the equal-size diversity intervals (``diversity_ci``): the synthetic set and the gold
          test split compared at one size per emotion, ``--diversity-resamples`` replicates (default 20),
          time per dataset and peak RSS. With ``--embedder model`` the vectors come from the embedding
          cache (texts not cached yet are embedded first).

``--embedder random`` replaces the model with random unit vectors (384 dimensions, seeded by each text's
hash) for the eval phase: every stage after embedding then runs at the full size without waiting for the
model (on 2 busy cores MiniLM embeds ~17 texts/s, 100k texts ~1.7 h). Projections, metrics and
classifiers then work on structureless vectors, so their timings are indicative, not those of real text.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_eval_scale.py --n 100000 --phase all
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/carer next to the checkout (a worktree under wt/ looks one level further up).
CARER = next(
    (p / "shared" / "data" / "carer" for p in REPO.parents if (p / "shared" / "data" / "carer").is_dir()),
    REPO.parent / "shared" / "data" / "carer",
)
SEED = 0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synthetic_frame(n: int) -> Any:
    """``n`` texts from the fake server's generator, labels in CARER test's proportions (seeded)."""
    import numpy as np
    import pandas as pd

    from personagen_core.testing.fake_openai import DefaultResponder

    emotions = ["joy", "sadness", "anger", "fear", "love", "surprise"]
    shares = np.array([695, 581, 275, 224, 159, 66], dtype=float)  # CARER test.txt's label counts
    labels = np.random.default_rng(SEED).choice(emotions, size=n, p=shares / shares.sum())
    responder = DefaultResponder(seed=SEED)
    texts = [
        responder({"messages": [{"role": "user", "content": f"Write a short text; emotion: {lab}"}]})
        for lab in labels
    ]
    return pd.DataFrame({"text": texts, "label": labels})


def gold_frame() -> Any:
    from personagen_core.evaluation.suite import load_data_file

    return load_data_file(CARER / "test.txt")


def phase_embed(n: int, data_path: Path) -> None:
    from personagen_core.evaluation.embeddings import Embedder

    frame = synthetic_frame(n)
    frame.to_csv(data_path, index=False)
    gold = gold_frame()
    texts = frame["text"].tolist() + gold["text"].tolist()
    _log(f"embed: {len(texts):,} texts ({frame['text'].nunique():,} distinct synthetic), {_load()}")
    emb = Embedder(None)
    state = {"last": 0.0}

    def on_progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - state["last"] > 30 or done == total:
            state["last"] = now
            _log(f"  embedded {done:,}/{total:,} distinct texts ({_load()})")

    t = time.perf_counter()
    emb.encode(texts, on_progress=on_progress)
    secs = time.perf_counter() - t
    rate = emb.stats.misses / secs if emb.stats.misses else float("nan")
    _log(
        f"embed done: {secs:.1f} s, {emb.stats.misses:,} embedded ({rate:.1f} texts/s), "
        f"{emb.stats.hits:,} from the cache, precision {emb.dtype}, peak RSS {_rss_mb():.0f} MB, {_load()}"
    )


class RandomEmbedder:
    """Stand-in for :class:`Embedder` (``--embedder random``): seeded random unit vectors, no model."""

    def __init__(self, *_: Any, **__: Any) -> None:
        from personagen_core.evaluation.embeddings import EmbedStats

        self.model_id = "random-384"
        self.dtype = "float32"
        self.stats = EmbedStats()

    def encode(self, texts: list[str], on_progress: Any = None) -> Any:
        import hashlib

        import numpy as np

        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        out = np.stack([np.random.default_rng(s).standard_normal(384, dtype=np.float32) for s in seeds])
        self.stats.hits += len(texts)
        if on_progress is not None:
            on_progress(len(texts), len(texts))
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _eval_once(data_path: Path, out: Path, max_points: int, max_train: int) -> dict[str, Any]:
    from personagen_core.cli.evaluate_cmds import run_evaluate

    events: list[tuple[str, float]] = []
    t = time.perf_counter()
    _, html_path, report = run_evaluate(
        [],
        [data_path],
        out,
        gold_test=CARER / "test.txt",
        max_projection_points=max_points,
        max_train_texts=max_train,
        on_notice=lambda line: _log("  " + line),
        on_event=lambda stage, frac: events.append((stage, frac)),
    )
    wall = time.perf_counter() - t
    return {"wall": wall, "report": report, "html": html_path, "events": events}


def phase_eval(data_path: Path, out: Path, max_points: int, max_train: int) -> None:
    _log(f"eval (cold results cache unless rerun): {_load()}")
    first = _eval_once(data_path, out / "first", max_points, max_train)
    _print_eval("first", first)
    second = _eval_once(data_path, out / "warm", max_points, max_train)
    _print_eval("warm rerun", second)
    _log(f"peak RSS of the process {_rss_mb():.0f} MB; {_load()}")


def _print_eval(what: str, res: dict[str, Any]) -> None:
    report = res["report"]
    size = res["html"].stat().st_size / 1e6
    json_size = (res["html"].parent / "report.json").stat().st_size / 1e6
    _log(f"{what}: wall {res['wall']:.2f} s (load data + evaluate + write report + store), {_load()}")
    if report.get("reused"):
        _log(f"  reused stored evaluation {report['reused']}")
    for stage, secs in (report.get("timings") or {}).items():
        _log(f"  {stage:<18} {secs:9.2f} s")
    proj = report.get("projections_sample") or {}
    for name, s in proj.items():
        _log(f"  projection sample {name}: {s.get('n')} of {s.get('of')}")
    _log(f"  report.html {size:.2f} MB, report.json {json_size:.2f} MB; progress events {len(res['events'])}")


def phase_diversity(data_path: Path, resamples: int, max_size: int, random_vectors: bool) -> None:
    import pandas as pd

    from personagen_core.evaluation.diversity_ci import INTERVAL_METRICS, diversity_intervals, equal_sizes
    from personagen_core.evaluation.embeddings import Embedder

    frames = {"synthetic": pd.read_csv(data_path), "gold test": gold_frame()}
    enc = RandomEmbedder() if random_vectors else Embedder()
    t0 = time.perf_counter()
    vectors = {name: enc.encode(f["text"].astype(str).tolist()) for name, f in frames.items()}
    _log(f"vectors of {sum(len(f) for f in frames.values()):,} texts in {time.perf_counter() - t0:.1f} s")
    counts = {name: f["label"].astype(str).value_counts().to_dict() for name, f in frames.items()}
    sizes = equal_sizes(counts, max_size=max_size)
    _log(f"equal size per emotion (cap {max_size}): {sizes}; {_load()}")
    for name, f in frames.items():
        t, cpu = time.perf_counter(), time.process_time()
        out = diversity_intervals(
            vectors[name], f["label"].astype(str).to_numpy(), f["text"].astype(str).tolist(), sizes,
            n_resamples=resamples,
        )
        took, cpu = time.perf_counter() - t, time.process_time() - cpu
        _log(f"{name}: {len(f):,} texts, {resamples} replicates: {took:.1f} s wall, {cpu:.1f} s CPU; {_load()}")
        for m in INTERVAL_METRICS:
            s = out["overall"].get(m) or {}
            if s.get("value") is not None:
                _log(f"    {m:22s} {s['value']:.4g} [{s['low']:.4g}, {s['high']:.4g}]")
        for e, why in out["needs"].items():
            _log(f"    {e}: {why}")
    _log(f"peak RSS {_rss_mb():,.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="synthetic texts (default 100,000)")
    ap.add_argument("--phase", choices=("embed", "eval", "all", "diversity"), default="all")
    ap.add_argument("--diversity-resamples", type=int, default=20)
    ap.add_argument("--diversity-sample-max", type=int, default=500)
    ap.add_argument("--home", type=Path, default=Path("/tmp/personagen-bench-evalscale"))
    ap.add_argument("--max-projection-points", type=int, default=10_000)
    ap.add_argument("--embedder", choices=("model", "random"), default="model")
    ap.add_argument(
        "--max-train-texts", type=int, default=20_000, help="LightGBM training sample per dataset"
    )
    args = ap.parse_args()
    if not (CARER / "test.txt").is_file():
        sys.exit(f"skipped: CARER not found at {CARER} (see its README)")
    os.environ["PERSONAGEN_HOME"] = str(args.home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.home.mkdir(parents=True, exist_ok=True)
    data_path = args.home / f"synthetic_{args.n}.csv"
    _log(
        f"bench_eval_scale n={args.n:,} phase={args.phase} embedder={args.embedder} home={args.home}; {_load()}"
    )
    if args.phase in ("embed", "all"):
        phase_embed(args.n, data_path)
    if args.phase in ("eval", "all"):
        if args.embedder == "random":
            from personagen_core.evaluation import embeddings

            embeddings.Embedder = RandomEmbedder  # type: ignore[misc,assignment]  # run_evaluate looks it up
            _log("embedder: random unit vectors (no model); see the docstring")
        if not data_path.exists():
            synthetic_frame(args.n).to_csv(data_path, index=False)
        phase_eval(data_path, args.home / f"out_{args.n}", args.max_projection_points, args.max_train_texts)
    if args.phase == "diversity":
        if not data_path.exists():
            synthetic_frame(args.n).to_csv(data_path, index=False)
        phase_diversity(
            data_path, args.diversity_resamples, args.diversity_sample_max, args.embedder == "random"
        )


if __name__ == "__main__":
    main()

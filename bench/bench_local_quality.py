"""Quality of the embedded models: validator accuracy on the plausibility fixture, and a quality ladder of
real pipeline runs, rules-only and LLM-validated.

For each installed bundled model (or those named with --models):

* validation: the pipeline's own :class:`~personagen_core.generation._validation.Validator` (the real prompts of
  ``personagen_core.generation.prompts``, batched as in a default run) gives stage-1 and stage-2 verdicts on the
  44 personas of ``personagen_core/fixtures/plausibility.jsonl`` (22 plausible, 22 clearly implausible).
  A persona is kept when both stages keep it, as in the pipeline. Reported: accuracy of that decision,
  confusion counts, the share of "natural" verdicts (a model that calls everything natural shows ~100 %).
* ladder (per model and validation mode, ``--modes rules llm``): ``pipeline.run_generation`` on the japan
  pack for the five emotions CARER shares with the paper's set, ``--per-emotion`` accepted texts each
  (at least 20 for figures worth reading), rules-only (the embedded default) or with stage 1-3 LLM
  verdicts (the paper). Reported with their n and 95 % intervals:
  - emotion match: accuracy of a LightGBM classifier trained on CARER (400 per emotion, all-MiniLM-L6-v2
    embeddings, ``personagen_core.evaluation.classify``) at predicting each accepted text's target
    emotion (Wilson interval); the same classifier's accuracy on CARER test texts is its ceiling;
  - train on synthetic / test on real: LightGBM trained on the run's texts, tested on a balanced CARER test
    sample, next to the majority-class row and gold rows (CARER train, as many texts per emotion as the
    synthetic set, and 400 per emotion) scored on the same test texts;
  - the run itself: accepted, calls, rejections, wall time and texts/min (a busy shared machine).

Writes ``personagen_core/local/model_quality.json`` after every model and mode (so a long run that is stopped
keeps what it measured; shown by ``personagen models list`` and the Generate page) and prints it.

    .venv/bin/python bench/bench_local_quality.py [--models smollm2-135m qwen2.5-coder-1.5b] [--per-emotion 20]
        [--modes rules llm] [--reuse-validator]   # keep the stored fixture figures (same prompts)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp / LightGBM load libgomp
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "personagen_core" / "local" / "fixtures" / "plausibility.jsonl"
OUT = ROOT / "personagen_core" / "local" / "model_quality.json"
CARER = Path(os.environ.get("PERSONAGEN_CARER", ROOT.parent / "shared" / "data" / "carer"))  # or --carer
EMOTIONS = ["joy", "anger", "sadness", "surprise", "fear"]  # paper7 ∩ CARER


def _machine() -> dict[str, Any]:
    return {"node": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "loadavg_start": list(os.getloadavg())}


async def _validate(key: str, pool: Any, spec: Any, fixture: list[dict[str, Any]], batch: int,
                    reasons: str = "all") -> dict[str, Any]:
    from personagen_core.generation._validation import Validator
    from personagen_core.generation.llm import LLMClient, LLMSettings
    from personagen_core.store import RunStore

    settings = LLMSettings(backend="local", local_model=key)
    with tempfile.TemporaryDirectory() as tmp:  # a fresh store: no verdict comes from an earlier run's cache
        store = RunStore(Path(tmp) / "runs.sqlite")
        async with httpx.AsyncClient(transport=pool.transport(key)) as http:
            async with LLMClient(settings, http_client=http) as client:
                validator = Validator(spec, store, client, batch_size=batch, reasons=reasons)
                attrs = [{**p["stage1"], **p["stage2"]} for p in fixture]
                v1 = await validator.verdicts(1, attrs)
                v2 = await validator.verdicts(2, attrs)
    confusion = Counter()
    for p, a, b in zip(fixture, v1, v2):
        kept = a.kept and b.kept
        confusion[f"{p['expected']}_{'kept' if kept else 'rejected'}"] += 1
    verdicts = [v.verdict for v in v1 + v2]
    correct = confusion["plausible_kept"] + confusion["implausible_rejected"]
    return {
        "accuracy": correct / len(fixture),
        "plausible_kept_rate": confusion["plausible_kept"] / sum(p["expected"] == "plausible" for p in fixture),
        "implausible_rejected_rate": (confusion["implausible_rejected"]
                                      / sum(p["expected"] == "implausible" for p in fixture)),
        "natural_share": verdicts.count("natural") / len(verdicts),
        "confusion": {k: confusion[k] for k in ("plausible_kept", "plausible_rejected",
                                                 "implausible_kept", "implausible_rejected")},
        "verdicts_stage1": dict(Counter(v.verdict for v in v1)),
        "verdicts_stage2": dict(Counter(v.verdict for v in v2)),
        "batch_size": batch,
        "verdict_reasons": reasons,
    }


def _ladder_run(key: str, pool: Any, spec: Any, per_emotion: int, seed: int, validate: bool,
                workdir: Path, max_minutes: float | None = None) -> dict[str, Any]:
    """One real pipeline run (rules-only or LLM-validated) on the CARER-shared emotions; its texts and stats.
    After ``max_minutes`` the run is cancelled and the texts accepted so far are measured (state says so)."""
    import threading

    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.store import RunStore

    settings = LLMSettings(backend="local", local_model=key)
    config = GenerationConfig(emotions=EMOTIONS, per_emotion=per_emotion, seed=seed, llm=settings,
                              validate=validate)
    store = RunStore(workdir / f"{key}-{validate}.sqlite")
    cancel = threading.Event()
    timer = threading.Timer(max_minutes * 60, cancel.set) if max_minutes else None
    if timer:
        timer.start()
    start = time.perf_counter()
    try:
        summary = run_generation(spec, config, store, cancel=cancel,
                                 http_client=httpx.AsyncClient(transport=pool.transport(key)))
    finally:
        if timer:
            timer.cancel()
    wall = time.perf_counter() - start
    texts = store.texts(summary.run_id)
    accepted = sum(summary.accepted.values())
    return {
        "texts": texts["text"].tolist(), "labels": texts["emotion"].tolist(),
        "run": {"state": summary.state, "accepted": accepted, "target": sum(summary.target.values()),
                "calls": summary.calls, "rejections": summary.rejections, "wall_s": wall,
                "accepted_per_min": accepted / (wall / 60) if wall else 0.0,
                "loadavg_end": list(os.getloadavg())},
    }


def _wilson(k: int, n: int) -> list[float] | None:
    from personagen_core.generation.validation_policy import wilson_interval

    return list(wilson_interval(k, n)) if n else None


class _Carer:
    """CARER-based yardsticks: the emotion classifier, and the test sample train-on-synthetic is scored on."""

    def __init__(self, folder: Path, seed: int, test_per_class: int) -> None:
        from personagen_core.evaluation import classify, gold
        from personagen_core.evaluation.embeddings import Embedder

        self.seed, self.classify = seed, classify
        train = gold.load_dataset(folder / "train.txt")
        test = gold.load_dataset(folder / "test.txt")
        train = train[train["label"].isin(EMOTIONS)].reset_index(drop=True)
        test = test[test["label"].isin(EMOTIONS)].reset_index(drop=True)
        self.embedder = Embedder(num_threads=2)
        # 400 per emotion: the classifier's training set, and the pool the gold rows sample from.
        train = train.iloc[classify.balanced_indices(train["label"].to_numpy(), per_class=400, random_state=seed)]
        self.y_train = train["label"].to_numpy()
        self.x_train = self.embedder.encode(train["text"].tolist())
        self.x_clf, self.y_clf = self.x_train, self.y_train
        te = test.iloc[classify.balanced_indices(test["label"].to_numpy(), per_class=test_per_class,
                                                 random_state=seed)]
        self.x_test, self.y_test = self.embedder.encode(te["text"].tolist()), te["label"].to_numpy()
        ceiling = classify.transfer(self.x_clf, self.y_clf, self.x_test, self.y_test, random_state=seed)
        self.info = {"train": "CARER train, 400 per emotion", "features": "all-MiniLM-L6-v2", "model": "LightGBM",
                     "carer_test_accuracy": ceiling.accuracy, "carer_test_n": ceiling.n_test,
                     "carer_test_ci": _wilson(round(ceiling.accuracy * ceiling.n_test), ceiling.n_test)}

    def emotion_match(self, texts: list[str], labels: list[str]) -> dict[str, Any]:
        """Share of texts the CARER classifier assigns to their target emotion, with a Wilson interval."""
        if not texts:
            return {"emotion_match": None, "emotion_match_n": 0, "emotion_match_ci": None}
        res = self.classify.transfer(self.x_clf, self.y_clf, self.embedder.encode(texts), np.asarray(labels),
                                     random_state=self.seed)
        hits = int((res.y_pred == res.y_true).sum())
        return {"emotion_match": hits / res.n_test, "emotion_match_n": res.n_test,
                "emotion_match_ci": _wilson(hits, res.n_test)}

    def tstr(self, texts: list[str], labels: list[str]) -> dict[str, Any]:
        """Train on synthetic / test on real, beside majority and gold rows on the same test texts."""
        c = self.classify

        def row(res: Any) -> dict[str, Any]:
            k = round(res.accuracy * res.n_test)
            return {"accuracy": res.accuracy, "f1_macro": res.f1_macro, "n_train": res.n_train,
                    "n_test": res.n_test, "ci": _wilson(k, res.n_test)}

        out: dict[str, Any] = {"test": f"CARER test, balanced, {len(self.y_test)} texts"}
        if len(set(labels)) >= 2:
            out["synthetic"] = row(c.transfer(self.embedder.encode(texts), np.asarray(labels), self.x_test,
                                              self.y_test, random_state=self.seed))
        per = max(1, len(texts) // len(EMOTIONS))
        out["gold_same_size"] = row(c.gold_baseline(self.x_train, self.y_train, self.x_test, self.y_test,
                                                    per_class=per, random_state=self.seed))
        out["gold_400"] = row(c.gold_baseline(self.x_train, self.y_train, self.x_test, self.y_test,
                                              per_class=400, random_state=self.seed))
        out["majority"] = row(c.majority_baseline(self.y_clf, self.y_test))
        return out


def main(argv: list[str] | None = None) -> int:
    from personagen_core import local as local_llm
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.personas.spec import load_pack

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="model keys (default: all installed)")
    parser.add_argument("--per-emotion", type=int, default=20)
    parser.add_argument("--modes", nargs="*", choices=["rules", "llm"], default=["rules", "llm"])
    parser.add_argument("--test-per-class", type=int, default=60, help="CARER test texts per emotion (surprise has 66)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="cancel each run after this long and measure the texts accepted so far")
    parser.add_argument("--carer", type=Path, default=CARER, help="CARER folder (train.txt, test.txt)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reuse-validator", action="store_true",
                        help="keep the stored fixture figures of each model instead of re-measuring them")
    parser.add_argument("--verdict-reasons", choices=["all", "rejected"], default="all",
                        help="which verdicts carry a reason (GenerationConfig.verdict_reasons)")
    args = parser.parse_args(argv)

    keys = args.models or [k for k in local_llm.MODELS if local_llm.model_status(k).installed]
    missing = [k for k in keys if k not in local_llm.MODELS or not local_llm.model_status(k).installed]
    if missing:  # say so before hours of measuring, not with a traceback half-way
        parser.error(f"not installed: {', '.join(missing)} (pip install 'personagen[models]'; "
                     f"installed: {', '.join(k for k in local_llm.MODELS if local_llm.model_status(k).installed)})")
    spec = load_pack("japan")
    fixture = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    batch = GenerationConfig().validation_batch
    machine = _machine()
    carer = _Carer(args.carer, args.seed, args.test_per_class) if (args.carer / "train.txt").is_file() else None
    # Figures kept from the last measurement: the output file, else the shipped one.
    source = args.out if args.out.is_file() else OUT
    previous = json.loads(source.read_text()) if source.is_file() else {}
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/bench_local_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "fixture": str(FIXTURE.relative_to(ROOT)),
        "fixture_size": len(fixture),
        "validation_prompt": f"personagen_core.generation.prompts.validation_messages via Validator, batch {batch}",
        "emotions": EMOTIONS,
        "emotion_classifier": carer.info if carer else "pending: CARER data not found at " + str(args.carer),
        # keep figures of models not re-measured this time, each with its own date
        "models": dict(previous.get("models", {})),  # a model is replaced once it has a new row
    }

    def write() -> None:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    pool = local_llm.LocalModelPool()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for key in keys:
                start = time.perf_counter()
                print(f"== {key}", file=sys.stderr, flush=True)
                old = previous.get("models", {}).get(key, {})
                # Modes not re-measured this time keep their rows, each with its own date.
                entry: dict[str, Any] = {"label": local_llm.MODELS[key].label, "measured": report["date"],
                                         "ladder": {m: r for m, r in old.get("ladder", {}).items()
                                                    if m not in args.modes}}
                if args.reuse_validator and old.get("validation"):
                    entry["validation"] = {**old["validation"],
                                           "measured": old["validation"].get("measured", old.get("measured"))}
                else:
                    entry["validation"] = asyncio.run(
                        _validate(key, pool, spec, fixture, batch, args.verdict_reasons))
                    entry["validation"]["measured"] = report["date"]
                print(json.dumps(entry["validation"]), file=sys.stderr, flush=True)
                if not args.modes:
                    report["models"][key] = entry
                for mode in args.modes:
                    r = _ladder_run(key, pool, spec, args.per_emotion, args.seed, mode == "llm", Path(tmp),
                                   args.max_minutes)
                    row: dict[str, Any] = {"per_emotion": args.per_emotion, "measured": report["date"],
                                           "command": report["command"], **r["run"]}
                    if carer:
                        row.update(carer.emotion_match(r["texts"], r["labels"]))
                        row["train_synthetic_test_real"] = carer.tstr(r["texts"], r["labels"])
                    row["examples"] = [{"emotion": e, "text": t} for t, e in
                                       list(zip(r["texts"], r["labels"], strict=True))[:: max(1, len(r["texts"]) // 5)][:5]]
                    entry["ladder"][mode] = row
                    report["models"][key] = entry
                    entry["seconds"] = time.perf_counter() - start
                    print(json.dumps({k: v for k, v in row.items() if k != "examples"}), file=sys.stderr, flush=True)
                    write()
                entry["llama_stats"] = pool.model(key).stats.as_dict()
                entry["loadavg_end"] = list(os.getloadavg())
                write()
                pool.model(key).close()  # free memory before the next model
    finally:
        pool.close()
    write()
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

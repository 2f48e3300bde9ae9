"""Quality of the embedded models: validator accuracy on the plausibility fixture, refusals, emotion match.

For each installed bundled model (or those named with --models):

* validation: the pipeline's own :class:`~personagen_core.generation._validation.Validator` (the real prompts of
  ``personagen_core.generation.prompts``, batched as in a default run) gives stage-1 and stage-2 verdicts on the
  44 personas of ``personagen_core/fixtures/plausibility.jsonl`` (22 plausible, 22 clearly implausible).
  A persona is kept when both stages keep it, as in the pipeline. Reported: accuracy of that decision,
  confusion counts, the share of "natural" verdicts (a model that calls everything natural shows ~100 %).
* generation: stage-4 texts for the five emotions CARER shares with the paper's set, with the real
  generation prompt and the spec's temperature; the pipeline's output checks count refusals and other
  rejections. Emotion match = accuracy of a LightGBM classifier trained on CARER (all-MiniLM-L6-v2
  embeddings, the evaluation's classifier in ``personagen_core.evaluation.classify``) at predicting each accepted
  text's target emotion; the same classifier's accuracy on CARER test texts is reported beside it.

Writes ``personagen_core/model_quality.json`` (shown by ``personagen models list``) and prints it.

    .venv/bin/python bench/bench_local_quality.py [--models smollm2-135m qwen2.5-coder-0.5b] [--per-emotion 4]
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
FIXTURE = ROOT / "personagen_core" / "fixtures" / "plausibility.jsonl"
OUT = ROOT / "personagen_core" / "model_quality.json"
CARER = ROOT.parent / "shared" / "data" / "carer"
EMOTIONS = ["joy", "anger", "sadness", "surprise", "fear"]  # paper7 ∩ CARER


def _machine() -> dict[str, Any]:
    return {"node": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "loadavg_start": list(os.getloadavg())}


async def _validate(key: str, pool: Any, spec: Any, fixture: list[dict[str, Any]], batch: int,
                    reasons: str = "all") -> dict[str, Any]:
    from personagen_core.generation._validation import Validator
    from personagen_core.generation.llm import LLMClient, LLMSettings
    from personagen_core.store import RunStore

    settings = LLMSettings(backend="local", local_model=key, verdict_reasons=reasons)
    with tempfile.TemporaryDirectory() as tmp:  # a fresh store: no verdict comes from an earlier run's cache
        store = RunStore(Path(tmp) / "runs.sqlite")
        async with httpx.AsyncClient(transport=pool.transport(key)) as http:
            async with LLMClient(settings, http_client=http) as client:
                validator = Validator(spec, store, client, batch_size=batch)
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
        "verdict_reasons": settings.verdict_reasons,
    }


async def _generate(key: str, pool: Any, spec: Any, fixture: list[dict[str, Any]], per_emotion: int,
                    seed: int) -> list[dict[str, Any]]:
    from personagen_core.generation import checks, prompts
    from personagen_core.generation.llm import LLMClient, LLMSettings
    from personagen_core.personas import render
    from personagen_core.personas.sampling import sample_personas

    emotions = {e.name: e for e in spec.emotions}
    scenes = sample_personas(spec, len(EMOTIONS) * per_emotion, random_state=seed)
    plausible = [p for p in fixture if p["expected"] == "plausible"]
    out = []
    settings = LLMSettings(backend="local", local_model=key)
    async with httpx.AsyncClient(transport=pool.transport(key)) as http:
        async with LLMClient(settings, http_client=http) as client:
            for i in range(len(EMOTIONS) * per_emotion):
                emotion = EMOTIONS[i % len(EMOTIONS)]
                persona = plausible[i % len(plausible)]
                persona_text = render.describe_persona({**persona["stage1"], **persona["stage2"]}, spec)
                scene = render.describe_scenario(scenes.iloc[i].to_dict(), spec)
                comp = await client.complete(
                    prompts.generation_messages(emotions[emotion], persona_text, scene, spec=spec),
                    role="generator", temperature=spec.generation.temperature,
                    max_tokens=spec.generation.max_tokens, seed=seed + i,
                    grammar=prompts.sentence_grammar(spec.generation.max_sentences))
                check = checks.check_output(comp.text, language=spec.language,
                                            max_sentences=spec.generation.max_sentences,
                                            persona_description=persona_text)
                out.append({"emotion": emotion, "text": check.text, "raw": comp.text, "ok": check.ok,
                            "reason": None if check.ok else check.reason,
                            "refusal": checks.is_refusal(comp.text)})
    return out


def _emotion_classifier(seed: int) -> tuple[Any, dict[str, Any]] | None:
    """(predict(texts) -> labels, info) from LightGBM on CARER train embeddings; None without CARER."""
    if not (CARER / "train.txt").is_file():
        return None
    from personagen_core.evaluation import classify, gold
    from personagen_core.evaluation.embeddings import Embedder

    train = gold.load_dataset(CARER / "train.txt")
    test = gold.load_dataset(CARER / "test.txt")
    train = train[train["label"].isin(EMOTIONS)].reset_index(drop=True)
    test = test[test["label"].isin(EMOTIONS)].reset_index(drop=True)
    tr = train.iloc[classify.balanced_indices(train["label"].to_numpy(), per_class=400, random_state=seed)]
    te = test.iloc[classify.balanced_indices(test["label"].to_numpy(), per_class=60, random_state=seed)]
    embedder = Embedder(num_threads=2)
    x_tr = embedder.encode(tr["text"].to_numpy().tolist())
    x_te = embedder.encode(te["text"].to_numpy().tolist())
    ceiling = classify.transfer(x_tr, tr["label"].to_numpy(), x_te, te["label"].to_numpy(), random_state=seed)
    info = {"train": "CARER train, 400 per emotion", "features": "all-MiniLM-L6-v2", "model": "LightGBM",
            "carer_test_accuracy": ceiling.accuracy, "carer_test_n": ceiling.n_test}

    def match(texts: list[str], targets: list[str]) -> float | None:
        if len(set(targets)) < 2:
            return None
        res = classify.transfer(x_tr, tr["label"].to_numpy(), embedder.encode(texts), np.asarray(targets),
                                random_state=seed)
        return res.accuracy

    return match, info


def main(argv: list[str] | None = None) -> int:
    from personagen_core import local as local_llm
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.personas.spec import load_pack

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="model keys (default: all installed)")
    parser.add_argument("--per-emotion", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--verdict-reasons", choices=["all", "rejected"], default="all",
                        help="which verdicts carry a reason (LLMSettings.verdict_reasons)")
    args = parser.parse_args(argv)

    keys = args.models or [k for k in local_llm.MODELS if local_llm.model_status(k).installed]
    spec = load_pack("japan")
    fixture = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    batch = GenerationConfig().validation_batch
    machine = _machine()
    classifier = _emotion_classifier(args.seed)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/bench_local_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "fixture": str(FIXTURE.relative_to(ROOT)),
        "fixture_size": len(fixture),
        "validation_prompt": f"personagen_core.generation.prompts.validation_messages via validation.Validator, batch {batch}",
        "emotions": EMOTIONS,
        "emotion_classifier": classifier[1] if classifier else "pending: CARER data not found at " + str(CARER),
        # keep figures of models not re-measured this time, each with its own date
        "models": {k: v for k, v in previous.get("models", {}).items() if k not in keys},
    }
    pool = local_llm.LocalModelPool()
    try:
        for key in keys:
            start = time.perf_counter()
            print(f"== {key}", file=sys.stderr, flush=True)
            validation = asyncio.run(_validate(key, pool, spec, fixture, batch, args.verdict_reasons))
            print(json.dumps(validation), file=sys.stderr, flush=True)
            texts = asyncio.run(_generate(key, pool, spec, fixture, args.per_emotion, args.seed))
            accepted = [t for t in texts if t["ok"]]
            match = classifier[0]([t["text"] for t in accepted], [t["emotion"] for t in accepted]) \
                if classifier and accepted else None
            report["models"][key] = {
                "label": local_llm.MODELS[key].label,
                "measured": report["date"],
                "validation": validation,
                "generation": {
                    "n": len(texts),
                    "accepted": len(accepted),
                    "refusal_rate": sum(t["refusal"] for t in texts) / len(texts),
                    "rejections": dict(Counter(t["reason"] for t in texts if not t["ok"])),
                    "emotion_match": match,
                    "emotion_match_n": len(accepted),
                    "examples": [{"emotion": t["emotion"], "text": t["text"]} for t in accepted[:5]],
                },
                "seconds": time.perf_counter() - start,
                "llama_stats": pool.model(key).stats.as_dict(),
                "loadavg_end": list(os.getloadavg()),
            }
            pool.model(key).close()  # free memory before the next model
    finally:
        pool.close()
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of the embedded models end to end: accepted texts per minute through the real pipeline.

For each model and validation mode (``--validation rules``: rules and tables only, the embedded default;
``llm``: stage 1-3 LLM verdicts as in the paper; ``both``), ``personagen_core.generation.pipeline.run_generation``
runs with the local backend (the japan pack, default settings unless given) into a throw-away run store.
Printed per run: accepted texts per minute (wall clock of the run, model load excluded and reported apart),
the time from launch to the first accepted text, llama.cpp's own
prompt-reading and generation time and tokens/s, the prompt tokens served from the KV cache, the time per
call role (validation vs generation, from the client's call records) and the machine's load average, since
the machine is shared and timings are noisy.

    .venv/bin/python bench/bench_local.py [--models smollm2-135m qwen2.5-coder-0.5b] [--per-emotion 2]
        [--validation rules|llm|both] [--verdict-reasons rejected] [--write]

``--write`` stores the rates in ``personagen_core/local/model_speed.json`` (the "about N x slower" of the
validation policy's message and ``personagen models list`` come from there).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp / LightGBM load libgomp

import argparse
import datetime as dt
import itertools
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEED_FILE = ROOT / "personagen_core" / "local" / "model_speed.json"
MODES = {"rules": False, "llm": True}


def bench_model(key: str, *, per_emotion: int, emotions: list[str] | None, seed: int,
                workdir: Path, verdict_reasons: str = "all", validate: bool = True) -> dict[str, Any]:
    """One pipeline run on ``key`` (``validate``: stage 1-3 LLM verdicts or rules only); the measured figures."""
    from personagen_core import local as local_llm
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack("japan")
    pool = local_llm.LocalModelPool()
    model = pool.model(key)
    model.load()
    settings = LLMSettings(backend="local", local_model=key)
    config = GenerationConfig(emotions=emotions, per_emotion=per_emotion, seed=seed, llm=settings,
                              validate=validate, verdict_reasons=verdict_reasons)
    store = RunStore(workdir / f"{key}-{validate}.sqlite")
    load_before = os.getloadavg()
    first: list[float] = []

    def on_event(ev: Any) -> None:
        # Time from launch to the first accepted text (events come about five times a second).
        if not first and sum(ev.accepted.values()) > 0:
            first.append(time.perf_counter() - start)

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    http = httpx.AsyncClient(transport=pool.transport(key))
    try:
        summary = run_generation(spec, config, store, http_client=http, on_event=on_event)
    finally:
        pool.close()
    wall = time.perf_counter() - start
    # Calls wait in the model's queue, so latencies overlap; tokens per stage show where decoding goes.
    by_stage: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "prompt_tokens": 0,
                                                                 "completion_tokens": 0})
    for row in store.usage(summary.run_id).to_dict("records"):
        label = f"stage{row['stage']}" if row["stage"] is not None and row["stage"] == row["stage"] else row["role"]
        for k in ("calls", "prompt_tokens", "completion_tokens"):
            by_stage[label][k] += int(row[k] or 0)
    accepted = sum(summary.accepted.values())
    stats = model.stats.as_dict()
    return {
        "model": key,
        "started": started,
        "validation": "llm" if validate else "rules",
        "state": summary.state,
        "accepted": accepted,
        "target": sum(summary.target.values()),
        "rejections": summary.rejections,
        "calls": summary.calls,
        "wall_s": wall,
        "accepted_per_min": accepted / (wall / 60) if wall else 0.0,
        "first_text_s": first[0] if first else None,
        "load_ms": stats["load_ms"],
        "prompt_s": stats["prompt_ms"] / 1000,
        "generation_s": stats["generation_ms"] / 1000,
        "decode_wall_s": stats["wall_ms"] / 1000,
        "prompt_tokens": stats["prompt_tokens"],
        "cached_prompt_tokens": stats["cached_prompt_tokens"],
        "completion_tokens": stats["completion_tokens"],
        "prompt_tokens_per_s": stats["prompt_tokens_per_s"],
        "generation_tokens_per_s": stats["generation_tokens_per_s"],
        "work_by_stage": {k: dict(v) for k, v in by_stage.items()},
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    from personagen_core import local as local_llm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="model keys (default: all installed)")
    parser.add_argument("--per-emotion", type=int, default=2, help="texts per emotion (paper7: 7 emotions)")
    parser.add_argument("--emotions", default=None, help="comma-separated subset (default: all of the pack)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--verdict-reasons", choices=["all", "rejected"], default="all",
                        help="which verdicts carry a reason (GenerationConfig.verdict_reasons)")
    parser.add_argument("--validation", choices=["rules", "llm", "both"], default="both",
                        help="rules: rules and tables only; llm: stage 1-3 LLM verdicts; both (default)")
    parser.add_argument("--write", action="store_true", help=f"store the rates in {SPEED_FILE.name}")
    args = parser.parse_args(argv)
    modes = ["rules", "llm"] if args.validation == "both" else [args.validation]
    keys = args.models or [k for k in local_llm.MODELS if local_llm.model_status(k).installed]
    emotions = args.emotions.split(",") if args.emotions else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, mode in itertools.product(keys, modes):
            print(f"== {key}, validation {mode}: running the pipeline ...", file=sys.stderr, flush=True)
            r = bench_model(key, per_emotion=args.per_emotion, emotions=emotions, seed=args.seed,
                            workdir=Path(tmp), verdict_reasons=args.verdict_reasons, validate=MODES[mode])
            results.append(r)
            other = r["decode_wall_s"] - r["prompt_s"] - r["generation_s"]
            first = f"{r['first_text_s']:.1f} s" if r["first_text_s"] is not None else "none"
            print(f"{key} [{mode}]: {r['accepted']}/{r['target']} accepted ({r['state']}) in {r['wall_s']:.0f} s "
                  f"= {r['accepted_per_min']:.1f} accepted texts/min; first text after {first}; "
                  f"{r['calls']} calls; rejections {r['rejections']}")
            print(f"  llama.cpp: prompt reading {r['prompt_s']:.1f} s ({r['prompt_tokens_per_s']:.0f} tok/s on "
                  f"{r['prompt_tokens'] - r['cached_prompt_tokens']} tokens; {r['cached_prompt_tokens']} of "
                  f"{r['prompt_tokens']} prompt tokens reused from the KV cache), generation "
                  f"{r['generation_s']:.1f} s ({r['generation_tokens_per_s']:.1f} tok/s on "
                  f"{r['completion_tokens']} tokens), sampling/grammar/other {other:.1f} s; "
                  f"model load {r['load_ms'] / 1000:.1f} s (not in the rate)")
            if r["work_by_stage"]:
                print("  work by stage (calls, prompt+completion tokens): " + ", ".join(
                    f"{k}: {v['calls']} calls {v['prompt_tokens']}+{v['completion_tokens']}"
                    for k, v in r["work_by_stage"].items()))
            print(f"  load average before {r['loadavg_before'][0]:.2f}, after {r['loadavg_after'][0]:.2f} "
                  f"(2 cores, shared machine)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write:
        _write_speed(results, argv)
    return 0


def equal_speed_slowdown(rules: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
    """How much longer LLM validation makes a run, at equal token speeds: each run's llama.cpp work (prompt
    tokens read, tokens generated) priced at the two runs' pooled tokens/s. On a shared machine the load
    changes between runs; the work does not. Also returns the raw wall-clock ratio of the rates."""
    def read(r: dict[str, Any]) -> tuple[int, int]:
        return r["prompt_tokens"] - r["cached_prompt_tokens"], r["completion_tokens"]

    (p1, c1), (p2, c2) = read(rules), read(llm)
    prompt_rate = (p1 + p2) / (rules["prompt_s"] + llm["prompt_s"])
    gen_rate = (c1 + c2) / (rules["generation_s"] + llm["generation_s"])
    t1, t2 = p1 / prompt_rate + c1 / gen_rate, p2 / prompt_rate + c2 / gen_rate
    per_text = (t2 / max(1, llm["accepted"])) / (t1 / max(1, rules["accepted"]))
    return {"value": per_text, "wall_clock_ratio": rules["accepted_per_min"] / llm["accepted_per_min"]
            if llm["accepted_per_min"] else None,
            "method": "llama.cpp work per accepted text (prompt tokens read, tokens generated) at the two runs' "
                      f"pooled speeds ({prompt_rate:.1f} prompt tok/s, {gen_rate:.1f} generated tok/s)"}


def _write_speed(results: list[dict[str, Any]], argv: list[str] | None) -> None:
    """Merge this run's rates into model_speed.json (models and modes not re-measured keep theirs)."""
    data = json.loads(SPEED_FILE.read_text()) if SPEED_FILE.is_file() else {}
    models = data.setdefault("models", {})
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    command = "python bench/bench_local.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for r in results:
        mode = "validated" if r["validation"] == "llm" else "rules_only"
        models.setdefault(r["model"], {})[mode] = {
            "accepted_per_min": r["accepted_per_min"], "accepted": r["accepted"], "wall_s": r["wall_s"],
            "first_text_s": r["first_text_s"], "calls": r["calls"], "measured": r.get("started", now),
            "command": command, "loadavg_before": r["loadavg_before"][0], "loadavg_after": r["loadavg_after"][0],
            "cpus": os.cpu_count(), "node": platform.node(),
        }
    for key in {r["model"] for r in results}:
        both = {r["validation"]: r for r in results if r["model"] == key}
        if set(both) == {"rules", "llm"}:
            models[key]["slowdown"] = equal_speed_slowdown(both["rules"], both["llm"])
    data["note"] = ("End-to-end accepted texts per minute on the japan pack (model load excluded), measured by "
                    "bench/bench_local.py on a shared machine: the ratio between modes matters more than the rates.")
    SPEED_FILE.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

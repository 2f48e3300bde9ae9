"""The cost estimate against the cost of real runs on the loopback fake server.

For each method (and both verdict-reason modes of personagen) it estimates a run with
``pipeline.estimate_cost``, runs it against ``FakeOpenAIServer`` with ``gpt-4.1-mini`` prices, and prints
estimated and actual cost and tokens, their ratio, and the usage per stage (calls, prompt and completion
tokens) that the estimator's assumptions are checked against. The fake server keeps every candidate
("natural") and every text, so the estimate (which assumes 5% of candidates dropped per stage and 10% of
outputs rejected) should err a little high here.

Run: ``.venv/bin/python bench/bench_estimate.py [--per-emotion 30] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig, estimate_cost, run_generation
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

CASES = [
    ("personagen", True, "all"),
    ("personagen", True, "rejected"),
    ("personagen", False, "all"),
    ("attrprompt", True, "all"),
    ("priorwork", True, "all"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-emotion", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    spec = load_pack("japan")
    print(f"japan pack, {len(spec.emotions)} emotions x {args.per_emotion} texts, gpt-4.1-mini prices")
    for method, validate, reasons in CASES:
        with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer() as srv:
            store = RunStore(Path(tmp) / "runs.sqlite")
            llm = LLMSettings(base_url=srv.base_url, api_key="sk-bench", model="gpt-4.1-mini", concurrency=16)
            config = GenerationConfig(method=method, validate=validate, per_emotion=args.per_emotion, llm=llm,
                                      seed=args.seed, verdict_reasons=reasons)
            est = estimate_cost(spec, config)
            summary = run_generation(spec, config, store)
            usage = store.usage(summary.run_id)
            store.close()
        est_tokens = est.prompt_tokens + est.completion_tokens
        assert est.total_usd is not None
        print(f"\n{method} validate={validate} verdict_reasons={reasons}: {summary.state}; "
              f"estimate ${est.total_usd:.4f} / {est_tokens:,.0f} tokens, actual ${summary.cost:.4f} / "
              f"{summary.tokens:,} tokens -> cost {summary.cost / est.total_usd:.2f}x, "
              f"tokens {summary.tokens / est_tokens:.2f}x the estimate")
        for name, usd in est.by_type.items():
            print(f"  estimated {name}: ${usd:.4f}")
        for _, r in usage.iterrows():
            print(f"  actual stage {r['stage']} {r['role']}: {r['calls']} calls, {r['prompt_tokens']:,} prompt + "
                  f"{r['completion_tokens']:,} completion tokens "
                  f"({r['completion_tokens'] / r['calls']:.1f} per call), ${r['cost']:.4f}")


if __name__ == "__main__":
    main()

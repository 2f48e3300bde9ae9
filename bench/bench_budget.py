"""How far a run goes past ``--max-cost`` at concurrency 32, against the cost of the calls in flight.

Every HTTP attempt reserves its worst case (prompt tokens + ``max_tokens`` at the model's price) before it is
sent, and is admitted only while spent + reserved is below the limit; a call that starts new candidates
reserves (and must fit) the worst case of carrying its batch to texts as well. So the overshoot is bounded
by one admitted call's worst case, and in any case by what the calls in flight had reserved when the
budget was reached (what the run reports; for a new batch that includes its way to texts, so ``their_worst``
can exceed the limit's remainder). This bench runs real generations (stages 1-4, validation on)
against the loopback fake server with ``gpt-4.1-mini`` prices, for several budgets and seeds, and prints
per run: the limit, what was spent, the overshoot, the calls in flight when the budget was reached and
their reserved worst case, the largest single-call worst case seen, the calls made and the texts accepted.

Run: ``.venv/bin/python bench/bench_budget.py [--concurrency 32] [--latency 0.05] [--seeds 3]
[--budgets 0.01,0.03,0.1]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from personagen_core.generation import pricing
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig, run_generation
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

MODEL = "gpt-4.1-mini"


def _worst_case(body: dict) -> float:
    """The reservation the scheduler makes for one request body (same estimate and margin)."""
    text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
    prompt = math.ceil(max(1, math.ceil(len(text) / 4)) * 1.1)
    return pricing.cost(MODEL, prompt, int(body.get("max_tokens") or 1024)) or 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05, help="fake server seconds per call")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="0.01,0.03,0.1", help="comma-separated --max-cost values (USD)")
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    spec = load_pack("japan")
    print(f"concurrency {args.concurrency}, fake-server latency {args.latency} s, model {MODEL} prices, "
          f"japan pack, 2 emotions x 1000 texts wanted (the budget always stops first)")
    header = ("max_cost", "seed", "spent", "overshoot", "in_flight@limit", "their_worst", "max_1_call",
              "calls", "texts", "wall_s")
    print(" ".join(f"{h:>15}" for h in header))
    over_share: list[float] = []
    for limit in budgets:
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(latency=args.latency, seed=seed) as srv:
                store = RunStore(Path(tmp) / "runs.sqlite")
                llm = LLMSettings(base_url=srv.base_url, api_key="sk-bench", model=MODEL,
                                  concurrency=args.concurrency)
                config = GenerationConfig(emotions=["joy", "fear"], per_emotion=1000, seed=seed,
                                          max_cost=limit, llm=llm)
                started = time.perf_counter()
                summary = run_generation(spec, config, store)
                wall = time.perf_counter() - started
                bodies = [r.body for r in srv.chat_requests if r.body]
                store.close()
            budget = summary.budget or {}
            one = max((_worst_case(b) for b in bodies), default=0.0)
            over = max(0.0, summary.cost - limit)
            if budget.get("in_flight_worst"):
                over_share.append(over / budget["in_flight_worst"])
            row = (f"{limit:.4f}", str(seed), f"{summary.cost:.6f}", f"{over:.6f}", str(budget.get("in_flight")),
                   f"{budget.get('in_flight_worst', 0.0):.6f}", f"{one:.6f}", str(summary.calls),
                   str(sum(summary.accepted.values())), f"{wall:.1f}")
            print(" ".join(f"{c:>15}" for c in row), f"({summary.stop_reason})")
            if over > budget.get("in_flight_worst", 0.0) + 1e-12:
                print("  !! overshoot larger than the reserved worst case of the calls in flight")
    if over_share:
        print(f"overshoot / worst case of the calls in flight when the limit was reached: "
              f"median {statistics.median(over_share):.3f}, max {max(over_share):.3f} (n={len(over_share)})")


if __name__ == "__main__":
    main()

"""Batch API mode at scale against the fake server: waves, surplus, PersonaGen's own wall time, peak RSS.

Runs ``generation.batch.run_batch_generation`` (japan pack, seven emotions, LLM validation of stages 1-3,
``gpt-4.1-mini`` prices) to ``--texts`` accepted texts against ``FakeOpenAIServer``'s ``/v1/files`` +
``/v1/batches``. The fake runs in a separate process, so its memory (it keeps every file) and its CPU time
(answering each JSONL line) are not charged to PersonaGen. Its simulated turnaround is 0 s, and the time
spent inside endpoint calls (upload, create, poll, download: there the fake answers a whole batch) is
measured and subtracted: "PersonaGen time" is sampling, building requests, writing the store, checking
and recording results. Peak RSS is this process's ``ru_maxrss``.

One verdict in ten is "implausible" (the fake's choice list) so validation drops candidates and the
over-provisioning and top-up waves have work to do.

Run: ``.venv/bin/python bench/bench_batch.py [--texts 100000] [--max-requests 50000]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def _serve(conn: Any) -> None:
    from personagen_core.testing.fake_openai import DefaultResponder, FakeOpenAIServer

    verdicts = ["natural"] * 8 + ["rare but plausible", "implausible"]
    resp = DefaultResponder(seed=0, choices={"verdict": verdicts})
    with FakeOpenAIServer(resp, batch_validating_s=0.0, batch_in_progress_s=0.0) as srv:
        conn.send(srv.base_url)
        conn.recv()  # "quit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=100_000, help="accepted texts wanted (split over 7 emotions)")
    ap.add_argument("--max-requests", type=int, default=50_000, help="requests per batch at most (OpenAI: 50k)")
    args = ap.parse_args()

    from personagen_core.generation.batch import BatchOptions, OpenAIBatches, run_batch_generation
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack("japan")
    per = max(1, args.texts // len(spec.emotion_names))
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    base_url = parent.recv()
    load_before = os.getloadavg()

    class Timed(OpenAIBatches):
        """Counts the seconds spent waiting for the endpoint (the fake answers batches inside these)."""

        spent = 0.0

        def _call(self, what: str, fn: Any) -> Any:
            t = time.perf_counter()
            try:
                return super()._call(what, fn)
            finally:
                Timed.spent += time.perf_counter() - t

    llm = LLMSettings(backend="openai", base_url=base_url, api_key="bench", model="gpt-4.1-mini")
    config = GenerationConfig(per_emotion=per, validate=True, llm=llm)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs.sqlite")
        t0, cpu0 = time.perf_counter(), time.process_time()
        summary = run_batch_generation(
            spec, config, store, options=BatchOptions(poll_interval=0.05, max_requests=args.max_requests),
            remote=Timed(llm),
        )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0  # this process only (the fake runs in its own): robust to load
        jobs = store.batch_jobs(summary.run_id)
        surplus = store.surplus_counts(summary.run_id)
        accepted = store.accepted_counts(summary.run_id)
        size = sum(p.stat().st_size for p in Path(tmp).glob("runs.sqlite*"))
        rejections = store.rejection_counts(summary.run_id)
    parent.send("quit")
    proc.join(timeout=10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    load_after = os.getloadavg()
    total = sum(accepted.values())
    print(f"batch mode, japan pack, {len(accepted)} emotions x {per} = {per * len(accepted)} texts wanted")
    print(f"state: {summary.state} ({summary.message or 'ok'}); accepted {total}, exact per emotion: "
          f"{all(n == per for n in accepted.values())}")
    print(f"waves: {int(jobs['wave'].max())}; batches: {len(jobs)} "
          f"({', '.join(f'{s} {n}' for s, n in jobs.groupby('step').size().items())}); "
          f"requests: {int(jobs['requests'].sum()):,} ({int(jobs['failed'].sum())} failed)")
    gen = jobs[jobs["step"] == "generate"].groupby("wave")["requests"].sum()
    print("generation requests per wave: " + ", ".join(f"{w}: {int(n):,}" for w, n in gen.items()))
    print(f"surplus texts (kept, not delivered): {sum(surplus.values())} "
          f"({100 * sum(surplus.values()) / max(1, total):.2f} % of delivered)")
    print(f"rejections: {dict(sorted(rejections.items(), key=lambda kv: -kv[1]))}")
    print(f"wall time {wall:.1f} s; in endpoint calls (upload/create/poll/download, the fake answering) "
          f"{Timed.spent:.1f} s; PersonaGen time (wall minus endpoint) {wall - Timed.spent:.1f} s "
          f"= {1000 * (wall - Timed.spent) / max(1, total):.2f} ms per text")
    print(f"CPU time of this process {cpu:.1f} s = {1000 * cpu / max(1, total):.2f} ms per delivered text "
          f"(on a loaded machine the wall time above stretches, the CPU time does not)")
    print(f"peak RSS of this process: {peak:.0f} MiB; run store {size / 2**20:.1f} MiB "
          f"({size / 2**10 / max(1, total) * 1000 / 1024:.2f} MiB per 1,000 texts)")
    print(f"cost at batch prices (gpt-4.1-mini list / 2): ${summary.cost:.2f}; calls {summary.calls:,}; "
          f"tokens {summary.tokens:,}")
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")


if __name__ == "__main__":
    main()

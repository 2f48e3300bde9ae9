"""Throughput of the LLM client layer against the loopback stub (FakeOpenAIServer).

The stub answers every chat completion after ``--latency`` seconds (default 0.1). With ``--concurrency``
requests in flight (default 32) the ideal throughput is concurrency / latency completions per second
(320/s at the defaults). The benchmark measures, in one run:

* ``LLMClient`` (limits, retries, structured outputs) issuing ``--n`` text completions at once;
* the same with a JSON schema (parsing and validation included);
* the bare ``openai`` SDK with an ``asyncio.Semaphore`` (what the layer adds on top of the SDK);
* a plain sequential loop through ``LLMClient`` (the paper's one-call-at-a-time baseline).

Run: ``.venv/bin/python bench/bench_client.py [--n 960] [--latency 0.1] [--concurrency 32]``.
The stub runs in a separate process by default so that its threads do not compete with the client for the
GIL; ``--in-process`` runs it in a thread of this process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from pydantic import SecretStr

from personagen_core.generation.llm import LLMClient, LLMSettings
from personagen_core.testing.fake_openai import FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "Write at most two short sentences expressing the emotion: joy."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["natural", "rare but plausible", "implausible"]},
        "reason": {"type": "string"},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}


def _serve(latency: float, queue: Any, stop: Any) -> None:
    with FakeOpenAIServer(latency=latency) as srv:
        queue.put(srv.base_url)
        stop.wait()


async def _timed(n: int, make_call: Callable[[], Awaitable[Any]], cpu: list[float] | None = None) -> float:
    """Wall seconds for ``n`` concurrent calls; appends this process's CPU ms per call to ``cpu``."""
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*[make_call() for _ in range(n)])
    if cpu is not None:
        cpu.append((time.process_time() - cpu_started) / n * 1000)
    return time.perf_counter() - started


async def _measure(
    base_url: str, n: int, concurrency: int, n_sequential: int, repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Completions/s of each variant, ``repeat`` rounds with the variants interleaved (the machine is shared)."""
    settings = LLMSettings(base_url=base_url, api_key=SecretStr("sk-bench"), concurrency=concurrency, max_retries=0)
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def bare() -> Any:
        async with gate:
            return await sdk.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)  # type: ignore[arg-type]

    results: dict[str, list[float]] = {"client_text": [], "client_schema": [], "bare_sdk": [], "sequential": []}
    cpu: dict[str, list[float]] = {"client_text": [], "client_schema": [], "bare_sdk": []}
    async with LLMClient(settings) as client:
        # Warm-up: open the pooled connections so every variant starts from the same state.
        await _timed(concurrency, lambda: client.complete(MESSAGES, role="generator"))
        await _timed(concurrency, bare)
        for _ in range(repeat):
            results["client_text"].append(n / await _timed(
                n, lambda: client.complete(MESSAGES, role="generator"), cpu["client_text"]
            ))
            results["client_schema"].append(n / await _timed(
                n, lambda: client.complete(MESSAGES, role="validator", schema=SCHEMA, schema_name="verdict"),
                cpu["client_schema"],
            ))
            results["bare_sdk"].append(n / await _timed(n, bare, cpu["bare_sdk"]))
            started = time.perf_counter()
            for _ in range(n_sequential):
                await client.complete(MESSAGES, role="generator")
            results["sequential"].append(n_sequential / (time.perf_counter() - started))
    await sdk.close()
    return results, cpu


def main() -> None:
    """Parse arguments, start the stub, run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=640, help="completions per concurrent variant and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median round is reported")
    parser.add_argument("--latency", type=float, default=0.1, help="stub latency per call, seconds")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=20, help="calls in the sequential baseline per round")
    parser.add_argument("--in-process", action="store_true", help="run the stub in a thread of this process")
    args = parser.parse_args()

    if args.in_process:
        with FakeOpenAIServer(latency=args.latency) as srv:
            results, cpu = asyncio.run(_measure(srv.base_url, args.n, args.concurrency, args.sequential, args.repeat))
    else:
        ctx = mp.get_context("spawn")
        queue, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(args.latency, queue, stop), daemon=True)
        proc.start()
        try:
            base_url = queue.get(timeout=60)
            results, cpu = asyncio.run(_measure(base_url, args.n, args.concurrency, args.sequential, args.repeat))
        finally:
            stop.set()
            proc.join(timeout=10)

    ideal = args.concurrency / args.latency
    print(f"bench_client: stub latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, "
          f"{args.n} completions per variant and round, {args.repeat} rounds (median and best shown), "
          f"stub {'in-process' if args.in_process else 'in a subprocess'}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, openai {openai.__version__}")
    print(f"{'ideal (concurrency / latency)':<40} {ideal:8.1f} completions/s")
    rows = [
        ("LLMClient, text", "client_text"),
        ("LLMClient, JSON schema + validation", "client_schema"),
        ("bare openai SDK create() + semaphore", "bare_sdk"),
        (f"sequential loop ({args.sequential} calls)", "sequential"),
    ]
    for label, key in rows:
        median, best = statistics.median(results[key]), max(results[key])
        cpu_note = ""
        if key in cpu:
            cpu_ms = statistics.median(cpu[key])
            cpu_note = f"   client CPU {cpu_ms:.2f} ms/call (one core: <= {1000 / cpu_ms:.0f}/s)"
        print(f"{label:<40} {median:8.1f} completions/s  = {median / ideal:5.3f} of ideal"
              f"   (best {best:.1f} = {best / ideal:.3f}){cpu_note}")
    speedup = statistics.median(results["client_text"]) / statistics.median(results["sequential"])
    print(f"LLMClient speed-up over the sequential loop: {speedup:.1f}x; load average at the end "
          f"{os.getloadavg()[0]:.1f} (other processes share these CPUs: compare rows, not runs)")


if __name__ == "__main__":
    main()

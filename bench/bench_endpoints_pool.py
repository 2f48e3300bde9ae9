"""Several endpoints at once (issue 14): throughput over 1, 2 and 4 endpoints, and time to route around one
that breaks.

Measures, in one run, against loopback fake servers (``personagen_core.testing.fake_openai``):

1. throughput: ``--calls`` chat completions through an :class:`EndpointPool` of 1, 2 and 4 endpoints, each
   limited to ``--cap`` calls in flight (its ``max_concurrency``) and answering after ``--latency`` seconds,
   so one endpoint can serve at most cap/latency calls per second. Each fake server runs in a process of its
   own. Prints calls per second, the share of
   that ideal (endpoints x cap / latency), and the calls each endpoint served. With ``--run`` also a whole
   generation run (2 emotions x ``--per-emotion`` texts, validation on) per pool size: texts per second.
2. routing around a failing endpoint: two endpoints; one breaks after its 40th request (HTTP 500, a
   dropped connection, or a stall past the client's timeout). Prints the seconds from its first failed
   request until the pool took it out of rotation, the failed attempts it cost, and whether every call
   still succeeded (on the other endpoint).

Run: ``.venv/bin/python bench/bench_endpoints_pool.py [--calls 600] [--cap 4] [--latency 0.05] [--run]``.
The machine's load average is printed with the figures: on a shared machine it weighs on every row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GEN = [{"role": "user", "content": "Write one sentence expressing the emotion: joy."}]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _settings(urls: list[str], cap: int, **kw: Any) -> Any:
    from personagen_core.generation.llm import LLMSettings

    return LLMSettings(endpoints=[{"url": u, "max_concurrency": cap} for u in urls], model="fake-model",
                       concurrency=cap, **kw)


async def _calls(urls: list[str], cap: int, n: int) -> tuple[float, list[int], list[int]]:
    from personagen_core.generation.endpoints import EndpointPool

    async with EndpointPool(_settings(urls, cap, timeout=30.0)) as pool:
        started = time.monotonic()
        await asyncio.gather(*(pool.complete(GEN, role="generator") for _ in range(n)))
        seconds = time.monotonic() - started
        status = pool.status()
        return seconds, [s["picks"] for s in status], [s["concurrency_limit"] for s in status]


async def _calls_plain(url: str, cap: int, n: int) -> tuple[float, int]:
    """The same calls through one plain client (no pool): the baseline for the pool's own overhead."""
    from personagen_core.generation.llm import LLMClient, LLMSettings

    async with LLMClient(LLMSettings(base_url=url, model="fake-model", concurrency=cap, timeout=30.0)) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.complete(GEN, role="generator") for _ in range(n)))
        return time.monotonic() - started, client.concurrency_limit


@contextlib.contextmanager
def _servers(k: int, latency: float) -> Iterator[list[str]]:
    """``k`` fake servers, each in a process of its own (as separate machines would be: in this process they
    would share its GIL with the client), with distinct seeds (so their texts are not duplicates)."""
    code = ("import sys; from personagen_core.testing.fake_openai import FakeOpenAIServer as F; "
            "s = F(latency=float(sys.argv[1]), seed=int(sys.argv[2])).start(); print(s.base_url, flush=True); "
            "sys.stdin.read(); s.stop()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(latency), str(i)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(k)]
    try:
        yield [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=10)


def throughput(sizes: list[int], cap: int, latency: float, n: int) -> None:
    print(f"\n1. throughput: {n} calls, each endpoint capped at {cap} in flight, {latency * 1000:.0f} ms per call "
          f"(ideal per endpoint {cap / latency:.0f} calls/s)")
    print(f"{'endpoints':>9} {'seconds':>8} {'calls/s':>8} {'ideal':>7} {'of ideal':>8}  calls per endpoint, "
          "adapted limit at the end   load")
    with _servers(1, latency) as urls:
        seconds, limit = asyncio.run(_calls_plain(urls[0], cap, n))
    rate, ideal = n / seconds, cap / latency
    print(f"{'1, no pool':>9} {seconds:>8.2f} {rate:>8.1f} {ideal:>7.0f} {rate / ideal:>8.0%}  [{n}], [{limit}]  {_load()}")
    for k in sizes:
        with _servers(k, latency) as urls:
            seconds, picks, limits = asyncio.run(_calls(urls, cap, n))
        rate, ideal = n / seconds, k * cap / latency
        print(f"{k:>9} {seconds:>8.2f} {rate:>8.1f} {ideal:>7.0f} {rate / ideal:>8.0%}  {picks}, {limits}  {_load()}")


def run_throughput(sizes: list[int], cap: int, latency: float, per_emotion: int) -> None:
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack("japan")
    print(f"\n1b. generation runs: 2 emotions x {per_emotion} texts, validation on, cap {cap} per endpoint, "
          f"{latency * 1000:.0f} ms per call")
    print(f"{'endpoints':>9} {'seconds':>8} {'texts/s':>8} {'calls':>6}  calls per endpoint   load")
    for k in sizes:
        with _servers(k, latency) as urls, tempfile.TemporaryDirectory() as tmp:
            store = RunStore(Path(tmp) / "runs.sqlite")
            config = GenerationConfig(emotions=["joy", "fear"], per_emotion=per_emotion, validate=True,
                                      llm=_settings(urls, cap, timeout=30.0))
            started = time.monotonic()
            summary = run_generation(spec, config, store)
            seconds = time.monotonic() - started
            per = store.endpoint_usage(summary.run_id)["calls"].tolist()
            store.close()
        texts = sum(summary.accepted.values())
        print(f"{k:>9} {seconds:>8.2f} {texts / seconds:>8.2f} {summary.calls:>6}  {per}  ({summary.state}) "
              f"{_load()}")


async def _route_around(a_url: str, b_url: str, cap: int, n: int, timeout: float) -> dict[str, Any]:
    from personagen_core.generation.endpoints import EndpointPool

    settings = _settings([a_url, b_url], cap, timeout=timeout, backoff_base=0.05, backoff_max=1.0)
    taken_out: list[float] = []
    async with EndpointPool(settings) as pool:
        original = pool.router.take_out

        def recording(i: int, error: str) -> bool:
            if i == 1 and not taken_out:
                taken_out.append(time.monotonic())
            return original(i, error)

        pool.router.take_out = recording  # type: ignore[method-assign]
        started = time.monotonic()
        results = await asyncio.gather(*(pool.complete(GEN, role="generator") for _ in range(n)),
                                       return_exceptions=True)
        seconds = time.monotonic() - started
    return {"taken_out": taken_out[0] if taken_out else None, "seconds": seconds,
            "errors": sum(isinstance(r, BaseException) for r in results)}


def route_around(cap: int, latency: float, n: int) -> None:
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    print(f"\n2. routing around a failing endpoint: 2 endpoints (cap {cap}, {latency * 1000:.0f} ms), {n} calls; "
          "the second breaks after its 40th request")
    print(f"{'fault':>8} {'to out (s)':>10} {'failed attempts':>15} {'calls lost':>10} {'all calls s':>11}   load")
    for fault, timeout in (("500", 30.0), ("drop", 30.0), ("timeout", 0.5)):
        a = FakeOpenAIServer(latency=latency).start()  # here, so the failed requests can be read
        b = FakeOpenAIServer(latency=latency, seed=1, fail_after=40, fail_with=fault, timeout_sleep=2.0).start()
        try:
            out = asyncio.run(_route_around(a.base_url, b.base_url, cap, n, timeout))
            failed = [r for r in b.chat_requests if r.fault == fault]
        finally:
            a.stop()
            b.stop()
        first = min(r.time for r in failed) if failed else None
        to_out = (out["taken_out"] - first) if out["taken_out"] is not None and first is not None else None
        print(f"{fault:>8} {'-' if to_out is None else f'{to_out:.2f}':>10} {len(failed):>15} {out['errors']:>10} "
              f"{out['seconds']:>11.2f}   {_load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--cap", type=int, default=4, help="max_concurrency of each endpoint")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call at each endpoint")
    parser.add_argument("--run", action="store_true", help="also whole generation runs per pool size")
    parser.add_argument("--per-emotion", type=int, default=100)
    args = parser.parse_args()
    print(f"bench_endpoints_pool: {os.cpu_count()} cores, load average at start {_load()}")
    throughput([1, 2, 4], args.cap, args.latency, args.calls)
    if args.run:
        run_throughput([1, 2, 4], args.cap, args.latency, args.per_emotion)
    route_around(8, 0.02, 400)
    print(f"\nload average at end: {_load()}")


if __name__ == "__main__":
    main()

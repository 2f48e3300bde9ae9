"""Large runs: N texts through the normal async path against the fake server, memory, time and store size.

One run of ``run_generation`` (method ``personagen``, validation on as in the paper, or ``--no-validate``)
for ``--texts`` texts (default 100,000; spread over the pack's emotions) on a fresh run store, against
``FakeOpenAIServer`` with ``--latency`` seconds (default 5 ms) on every call at ``--concurrency`` (default
64). The fake server runs in a separate process (``spawn``), so its CPU time and memory are not charged to
PersonaGen; it forgets its request log every second so that it does not slow down as the run grows.

Printed: wall time, accepted texts/s, LLM calls per text, peak RSS of this process (``ru_maxrss``) and RSS
sampled at each quarter of the run (flat memory), store size and size per 1,000 texts, throughput as a
fraction of the ideal (``concurrency / latency`` calls/s divided by the calls per text) and of the measured
ceiling of the bare client against the same server (``--ceiling-calls`` identical calls, no pipeline),
and the machine's load average before and after.

``--profile cprofile`` prints the top functions by cumulative and by own CPU time (the profiler's clock is
this process's CPU time, so the machine's load does not distort it); ``--profile tracemalloc`` prints the
biggest allocation sites at the end (slow: use a small ``--texts``).

Run: ``.venv/bin/python bench/bench_scale.py --texts 5000`` (then 20000, then the default 100000).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _serve(latency: float, conn: Any) -> None:
    """Serve the fake endpoint in this (child) process. Between "start" and "stop" on ``conn`` it samples
    the requests it holds every 10 ms and answers "stop" with their mean and its own CPU seconds; "quit"
    ends it."""
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(latency=latency) as srv:
        conn.send(srv.base_url)
        measuring = threading.Event()
        samples = [0, 0]  # sum of in-flight counts, number of samples

        def watch() -> None:
            last_clear = time.monotonic()
            while True:
                time.sleep(0.01)
                if measuring.is_set():
                    samples[0] += srv.in_flight
                    samples[1] += 1
                if time.monotonic() - last_clear > 1.0:
                    # The server records every request (tests read them); a 100k-text bench must not.
                    srv.requests.clear()
                    last_clear = time.monotonic()

        threading.Thread(target=watch, daemon=True).start()
        while (cmd := conn.recv()) != "quit":
            if cmd == "start":
                samples[:] = [0, 0]
                cpu0 = time.process_time()
                measuring.set()
            elif cmd == "stop":
                measuring.clear()
                conn.send({"in_flight": samples[0] / max(1, samples[1]), "cpu_s": time.process_time() - cpu0})


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _ceiling(base_url: str, concurrency: int, n_calls: int) -> tuple[float, float]:
    """The bare client layer (``LLMClient``, i.e. the openai SDK over httpx): ``n_calls`` identical calls,
    ``concurrency`` at once. Returns calls/s and this process's CPU seconds per call."""
    from personagen_core.generation.llm import LLMClient, LLMSettings

    async def go() -> tuple[float, float]:
        settings = LLMSettings(base_url=base_url, api_key="bench", model="fake-model", concurrency=concurrency)
        async with LLMClient(settings) as client:
            msgs = [{"role": "user", "content": "Target emotion: joy\n\nPersona: a commuter"}]
            await client.complete(msgs, role="generator")  # connect once
            t0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(client.complete(msgs, role="generator") for _ in range(n_calls)))
            return n_calls / (time.perf_counter() - t0), (time.process_time() - cpu0) / n_calls

    return asyncio.run(go())


def _store_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def run(args: argparse.Namespace, base_url: str, db: Path, conn: Any) -> dict[str, Any]:
    """One generation run of ``args.texts`` texts; the measured figures."""
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack(args.pack)
    n_emotions = len(spec.emotion_names)
    per_emotion = math.ceil(args.texts / n_emotions)
    store = RunStore(db)
    cfg = GenerationConfig(
        per_emotion=per_emotion,
        seed=0,
        validate=not args.no_validate,
        llm=LLMSettings(base_url=base_url, api_key="bench", model="fake-model", concurrency=args.concurrency),
    )
    samples: list[tuple[int, float]] = []  # (accepted, RSS MB) at each quarter of the run
    total = per_emotion * n_emotions
    marks = [total * q // 4 for q in (1, 2, 3)]

    def on_event(ev: Any) -> None:
        done = sum(ev.accepted.values())
        while marks and done >= marks[0]:
            marks.pop(0)
            samples.append((done, _rss_mb()))

    rss_before = _rss_mb()
    conn.send("start")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    summary = run_generation(spec, cfg, store, on_event=on_event)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    conn.send("stop")
    server = conn.recv()
    samples.append((sum(summary.accepted.values()), _rss_mb()))
    accepted = sum(summary.accepted.values())
    totals = store.totals(summary.run_id)
    by_stage = store.usage(summary.run_id).groupby("stage", dropna=False)["calls"].sum().to_dict()
    rejections = store.rejection_counts(summary.run_id)
    store.close()
    return {
        "state": summary.state,
        "per_emotion": per_emotion,
        "texts": accepted,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "server": server,
        "calls": totals["calls"],
        "by_stage": by_stage,
        "rejections": rejections,
        "rss_before_mb": rss_before,
        "rss_samples": samples,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "store_bytes": _store_bytes(db),
    }


def main() -> None:
    """Parse the options, start the fake server in a child process, run, print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000, help="texts to generate (spread over emotions)")
    parser.add_argument("--latency", type=float, default=0.005, help="fake server latency per call, seconds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pack", default="japan")
    parser.add_argument("--no-validate", action="store_true", help="skip the stage 1-3 LLM validation")
    parser.add_argument("--ceiling-calls", type=int, default=5000, help="calls for the bare-client ceiling")
    parser.add_argument("--db", type=Path, help="run store to write (default: a temporary file, removed)")
    parser.add_argument("--profile", choices=("cprofile", "tracemalloc"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    parent, child = mp.Pipe()
    server = mp.get_context("spawn").Process(target=_serve, args=(args.latency, child), daemon=True)
    server.start()
    base_url = parent.recv()
    profiler: Any = None
    try:
        ceiling, cpu_per_call = _ceiling(base_url, args.concurrency, args.ceiling_calls)
        with tempfile.TemporaryDirectory() as tmp:
            db = args.db or Path(tmp) / "scale.sqlite"
            if args.profile == "cprofile":
                import cProfile

                # process CPU time, not wall time: on a loaded machine wall time charges whatever ran when
                # the process was descheduled (a socket send, a commit) with other processes' time
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
            elif args.profile == "tracemalloc":
                import tracemalloc

                tracemalloc.start(8)
            r = run(args, base_url, db, parent)
            if args.profile == "cprofile":
                profiler.disable()
            elif args.profile == "tracemalloc":
                import tracemalloc

                snap = tracemalloc.take_snapshot()
                tracemalloc.stop()
    finally:
        parent.send("quit")
        server.join(timeout=10)
    load_after = os.getloadavg()

    ideal_calls = args.concurrency / args.latency
    calls_per_text = r["calls"] / max(1, r["texts"])
    rate = r["texts"] / r["elapsed_s"]
    ideal_texts = ideal_calls / calls_per_text
    ceiling_texts = ceiling / calls_per_text
    print(
        f"bench_scale: pack {args.pack}, method personagen, validation {'off' if args.no_validate else 'on'}, "
        f"{r['per_emotion']} per emotion; fake server in a subprocess (spawn), latency "
        f"{args.latency * 1000:g} ms, concurrency {args.concurrency}"
    )
    print(f"machine: {os.cpu_count()} cores; load average before {', '.join(f'{x:.2f}' for x in load_before)}")
    print(f"run state               {r['state']}: {r['texts']:,} texts in {r['elapsed_s']:.1f} s "
          f"(process CPU {r['cpu_s']:.1f} s)")
    print(f"accepted texts/s        {rate:.1f}")
    print(f"LLM calls per text      {calls_per_text:.3f}  ({r['calls']:,} calls; by stage "
          f"{ {('gen' if k == 4 else k): int(v) for k, v in r['by_stage'].items()} })")
    print(f"rejections              {dict(sorted(r['rejections'].items(), key=lambda kv: -kv[1]))}")
    print(f"ideal texts/s           {ideal_texts:.1f}  (= {args.concurrency} / {args.latency:g} s = "
          f"{ideal_calls:,.0f} calls/s / {calls_per_text:.3f} calls per text)")
    print(f"fraction of ideal       {rate / ideal_texts:.3f}  (target >= 0.8)")
    print(f"bare-client ceiling     {ceiling:,.0f} calls/s = {ceiling_texts:.1f} texts/s measured just before; "
          f"the run reached {rate / ceiling_texts:.3f} of it")
    print(f"CPU per text            {r['cpu_s'] / max(1, r['texts']) * 1000:.2f} ms in PersonaGen's process "
          f"(-> at most {r['texts'] / max(r['cpu_s'], 1e-9):.0f} texts/s per core); the fake server used "
          f"{r['server']['cpu_s']:.1f} s CPU in its own process")
    sdk = cpu_per_call * calls_per_text * 1000
    per_text = r["cpu_s"] / max(1, r["texts"]) * 1000
    print(f"  of which the client   {sdk:.2f} ms = {calls_per_text:.3f} calls x {cpu_per_call * 1000:.2f} ms CPU per "
          f"call of the bare client (openai SDK + httpx, measured with the ceiling); PersonaGen's own work "
          f"(sampling, prompts, checks, store, scheduling) {per_text - sdk:.2f} ms")
    print(f"requests at the server  {r['server']['in_flight']:.1f} on average (of {args.concurrency} allowed)")
    print(f"peak RSS                {r['peak_rss_mb']:.0f} MB (ru_maxrss; {r['rss_before_mb']:.0f} MB before the run)")
    print("RSS during the run      " + ", ".join(f"{n:,} texts: {mb:.0f} MB" for n, mb in r["rss_samples"]))
    size = r["store_bytes"]
    print(f"store size              {size / 1e6:.1f} MB, {size / 1e3 / max(1, r['texts']) * 1000:.0f} kB per "
          "1,000 texts (database + WAL)")
    print(f"load average after      {', '.join(f'{x:.2f}' for x in load_after)}")
    if args.profile == "cprofile":
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    elif args.profile == "tracemalloc":
        for stat in snap.statistics("traceback")[:15]:
            print(f"{stat.size / 1e6:8.1f} MB {stat.count:9,d} blocks")
            for line in stat.traceback.format()[-8:]:
                print("    " + line)


if __name__ == "__main__":
    main()

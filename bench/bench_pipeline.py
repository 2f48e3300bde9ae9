"""Throughput and LLM economy of the generation pipeline against a 100 ms OpenAI-compatible stub.

Measures, in one run:

1. the pipeline (``personagen_core.generation.pipeline.run_generation``) at concurrency 32 with default settings on a
   fresh run store (cold verdict cache): accepted texts/s, the ideal rate (concurrency / latency / LLM calls
   per accepted text) and the fraction of it reached, LLM calls and tokens per accepted text;
2. the same run again on the same store (warm cross-run verdict cache);
3. a plain sequential loop, the paper's baseline: per text one call per stage (no batching, no cache, no
   concurrency), with the same prompts, through the synchronous openai SDK.

The stub (``FakeOpenAIServer``, latency 100 ms on every call) runs in a separate process so its CPU time is
not charged to the pipeline. Run: ``.venv/bin/python bench/bench_pipeline.py [--per-emotion N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

LATENCY = 0.1
CONCURRENCY = 32


def _serve(latency: float, conn: mp.connection.Connection) -> None:  # type: ignore[name-defined]
    """Serve the stub; on "start"/"stop" commands measure the mean number of requests it holds at once."""
    import threading

    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(latency=latency) as srv:
        conn.send(srv.base_url)
        samples: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while True:
                sampling.wait()
                samples.append(srv.in_flight)
                time.sleep(0.005)

        threading.Thread(target=sample, daemon=True).start()
        while (cmd := conn.recv()) != "quit":
            if cmd == "start":
                samples.clear()
                sampling.set()
            elif cmd == "stop":
                sampling.clear()
                conn.send(sum(samples) / max(1, len(samples)))


def _ceiling(base_url: str, n_calls: int = 20 * CONCURRENCY) -> float:
    """Calls/s of the bare client layer: ``n_calls`` identical calls, ``CONCURRENCY`` at a time, no pipeline.

    The best any pipeline on this machine, client and stub can do right now; on a loaded machine it is well
    below the theoretical ``CONCURRENCY / LATENCY``.
    """
    import asyncio

    from personagen_core.generation.llm import LLMClient, LLMSettings

    async def go() -> float:
        settings = LLMSettings(
            base_url=base_url, api_key="bench", model="fake-model", concurrency=CONCURRENCY
        )
        async with LLMClient(settings) as client:
            msgs = [{"role": "user", "content": "Target emotion: joy\n\nPersona: a commuter"}]
            await client.complete(msgs, role="generator")  # connect once
            t0 = time.perf_counter()
            await asyncio.gather(*(client.complete(msgs, role="generator") for _ in range(n_calls)))
            return n_calls / (time.perf_counter() - t0)

    return asyncio.run(go())


def _stub_transport(latency: float) -> Any:
    """An in-process OpenAI-compatible transport: same answers as the stub after ``latency``, no sockets."""
    import asyncio
    import json

    import httpx

    from personagen_core.testing.fake_openai import DefaultResponder

    responder = DefaultResponder(seed=0)

    class _Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            await asyncio.sleep(latency)
            answer = responder(body)
            content = answer if isinstance(answer, str) else json.dumps(answer)
            return httpx.Response(
                200,
                json={
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(str(body["messages"])) // 4,
                        "completion_tokens": len(content) // 4,
                        "total_tokens": 0,
                    },
                },
            )

    return httpx.AsyncClient(transport=_Transport())


def _pipeline(
    base_url: str,
    db: Path,
    per_emotion: int,
    conn: mp.connection.Connection | None,  # type: ignore[name-defined]
    http_client: Any = None,
) -> dict[str, float]:
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack("japan")
    store = RunStore(db)
    cfg = GenerationConfig(
        per_emotion=per_emotion,
        seed=0,
        llm=LLMSettings(base_url=base_url, api_key="bench", model="fake-model", concurrency=CONCURRENCY),
    )
    ceiling = _ceiling(base_url) if conn is not None else float("nan")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if conn is not None:
        conn.send("start")
    summary = run_generation(spec, cfg, store, http_client=http_client)
    elapsed = time.perf_counter() - t0
    in_flight = float("nan")
    if conn is not None:
        conn.send("stop")
        in_flight = conn.recv()
    cpu = time.process_time() - cpu0
    assert summary.state == "done", summary
    accepted = sum(summary.accepted.values())
    totals = store.totals(summary.run_id)
    calls_per_text = totals["calls"] / accepted
    ideal = CONCURRENCY / LATENCY / calls_per_text
    by_stage = store.usage(summary.run_id).groupby("stage")["calls"].sum().to_dict()
    return {
        "texts": accepted,
        "elapsed_s": elapsed,
        "texts_per_s": accepted / elapsed,
        "ideal_per_s": ideal,
        "fraction": accepted / elapsed / ideal,
        "calls": totals["calls"],
        "calls_per_text": calls_per_text,
        "tokens_per_text": totals["tokens"] / accepted,
        "by_stage": by_stage,
        "ceiling_calls_per_s": ceiling,
        "calls_per_s": totals["calls"] / elapsed,
        "cpu_s": cpu,
        "load": os.getloadavg()[0],
        "in_flight": in_flight,
    }


def _sequential(base_url: str, n_texts: int) -> dict[str, float]:
    """The paper's loop: for each text validate stage 1, 2, 3 one candidate at a time, then generate."""
    import numpy as np
    import openai

    from personagen_core.generation.prompts import generation_messages, validation_messages, verdict_schema
    from personagen_core.personas.render import describe_persona, describe_scenario
    from personagen_core.personas.sampling import build_model
    from personagen_core.personas.spec import load_pack

    spec = load_pack("japan")
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    sampler = build_model(spec)
    rng = np.random.default_rng(0)
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": verdict_schema(), "strict": True},
    }
    calls = tokens = 0
    t0 = time.perf_counter()
    for i in range(n_texts):
        row = {k: str(v) for k, v in sampler.sample(1, random_state=rng).iloc[0].items()}
        for stage in (1, 2, 3):
            r = client.chat.completions.create(
                model="fake-model",
                messages=validation_messages(stage, [row], spec),
                response_format=fmt,
                temperature=0,
            )
            calls += 1
            tokens += r.usage.total_tokens
        emotion = spec.emotions[i % len(spec.emotions)]
        r = client.chat.completions.create(
            model="fake-model",
            temperature=1.2,
            messages=generation_messages(
                emotion, describe_persona(row, spec), describe_scenario(row, spec), spec=spec
            ),
        )
        calls += 1
        tokens += r.usage.total_tokens
    elapsed = time.perf_counter() - t0
    return {
        "texts": n_texts,
        "elapsed_s": elapsed,
        "texts_per_s": n_texts / elapsed,
        "calls_per_text": calls / n_texts,
        "tokens_per_text": tokens / n_texts,
    }


def main() -> None:
    """Run the three measurements and print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-emotion", type=int, default=150, help="texts per emotion (7 emotions)")
    parser.add_argument("--sequential-texts", type=int, default=20, help="texts for the sequential baseline")
    args = parser.parse_args()

    parent, child = mp.Pipe()
    server = mp.get_context("spawn").Process(target=_serve, args=(LATENCY, child), daemon=True)
    server.start()
    base_url = parent.recv()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.sqlite"
            cold = _pipeline(base_url, db, args.per_emotion, parent)
            warm = _pipeline(base_url, db, args.per_emotion, parent)
            local = _pipeline(
                base_url,
                Path(tmp) / "local.sqlite",
                args.per_emotion,
                None,
                http_client=_stub_transport(LATENCY),
            )
        seq = _sequential(base_url, args.sequential_texts)
    finally:
        parent.send("quit")
        server.join(timeout=10)

    print(
        f"stub latency {LATENCY * 1000:.0f} ms per call, pipeline concurrency {CONCURRENCY}, pack japan, "
        f"default settings (validation batch 8, texts_per_persona 1)"
    )
    runs = (
        ("pipeline over HTTP, cold verdict cache", cold),
        ("pipeline over HTTP, warm verdict cache", warm),
        (
            "pipeline over an in-process 100 ms transport (no sockets; stub answers built in this process), "
            "cold cache",
            local,
        ),
    )
    for name, r in runs:
        print(f"\n{name}: {r['texts']} texts in {r['elapsed_s']:.2f} s")
        print(f"  accepted texts/s          {r['texts_per_s']:.1f}")
        print(
            f"  ideal texts/s             {r['ideal_per_s']:.1f}  (= {CONCURRENCY} / {LATENCY} s / "
            f"{r['calls_per_text']:.3f} calls per text)"
        )
        print(f"  fraction of ideal         {r['fraction']:.3f}  (target >= 0.8)")
        if r is local:
            print(f"  LLM calls/s               {r['calls_per_s']:.1f}")
        else:
            share = r["calls_per_s"] / r["ceiling_calls_per_s"]
            print(
                f"  LLM calls/s               {r['calls_per_s']:.1f}  vs {r['ceiling_calls_per_s']:.1f} "
                f"calls/s of the bare client at concurrency {CONCURRENCY} just before -> {share:.3f} "
                "of what client + stub "
                "deliver on this machine now"
            )
            print(f"  requests held by the stub {r['in_flight']:.1f} on average (of {CONCURRENCY} allowed)")
        print(
            f"  process CPU time          {r['cpu_s']:.2f} s; 1-min load average {r['load']:.1f} on "
            f"{os.cpu_count()} cores"
        )
        print(
            f"  LLM calls per text        {r['calls_per_text']:.3f}  (target <= 1.5; calls by stage "
            f"{ {int(k): int(v) for k, v in r['by_stage'].items()} })"
        )
        print(f"  tokens per text           {r['tokens_per_text']:.0f}")
    print(f"\nsequential loop (paper baseline): {seq['texts']} texts in {seq['elapsed_s']:.2f} s")
    print(f"  accepted texts/s          {seq['texts_per_s']:.2f}")
    print(f"  LLM calls per text        {seq['calls_per_text']:.2f}")
    print(f"  tokens per text           {seq['tokens_per_text']:.0f}")
    print(
        f"\nspeed-up of the pipeline over the sequential loop (cold cache): "
        f"{cold['texts_per_s'] / seq['texts_per_s']:.1f}x"
    )


if __name__ == "__main__":
    main()

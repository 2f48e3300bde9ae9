"""Endpoints that cannot work, and a real local server against the embedded backend.

Measures, in one run:

1. hopeless endpoints to a clear stop (issue 12's target: under 10 s and under 50 calls): a generation run
   (2 emotions x 5 texts, validation on, concurrency 16) against the loopback fake server answering every
   call with a model 404, an HTML page with status 200, or JSON that never matches the schema; plus the 404
   with validation off. Prints seconds to the stop, chat requests the server saw, and the message;
2. accepted texts per minute with a bundled model (``--model``, default SmolLM2-135M) through
   llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``, started here on a free
   loopback port, one thread, with ``--cache true --logits_all false`` as the README recommends;
   ``server-nocache``: the server's defaults)
   with the ``openai`` backend, and through the embedded in-process backend with the same model and thread
   count, same spec, same settings (2 emotions x N texts, stage-1 validation in batches of 2 unless
   ``--no-validate``). Each run also prints its calls per stage and role (count, failures, mean latency,
   time in all, tokens per call): latency includes time queued at a one-at-a-time server.

Run: ``.venv/bin/python bench/bench_endpoints.py [--model KEY] [--per-emotion N] [--no-validate]
[--skip-llm | --skip-hopeless] [--backends server,embedded,...]``.
The machine's load average is printed with the figures: on a shared machine it dominates part 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _hopeless(fault: str, validate: bool) -> dict[str, Any]:
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(always=fault) as srv:
        store = RunStore(Path(tmp) / "runs.sqlite")
        llm = LLMSettings(base_url=srv.base_url, model="gpt-4.1-mini", concurrency=16)  # default retries/backoff
        config = GenerationConfig(emotions=["joy", "fear"], per_emotion=5, validate=validate, llm=llm)
        started = time.monotonic()
        summary = run_generation(load_pack("japan"), config, store)
        seconds = time.monotonic() - started
        calls = len(srv.chat_requests)
        store.close()
    return {"state": summary.state, "seconds": seconds, "calls": calls, "message": summary.message}


def _server_command(gguf: Path, model: str, port: int, cache: bool) -> list[str]:
    """``python -m llama_cpp.server`` as the README's local-server section recommends, one thread."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
           "--model_alias", model]
    return cmd + (["--cache", "true", "--logits_all", "false"] if cache else [])


def _per_call_type(store: Any, run_id: str) -> list[str]:
    """Lines of the run's calls per role and stage: count, failures, mean latency, busy time and tokens."""
    usage = store.usage(run_id)
    lines = []
    for (stage, role), g in usage.groupby(["stage", "role"], dropna=False):
        calls = int(g["calls"].sum())
        latency = float((g["mean_latency_s"].fillna(0) * g["calls"]).sum())
        lines.append(f"      stage {stage} {role:9s} {calls:3d} calls ({int(g['failed'].sum())} failed), "
                     f"{latency / calls:6.2f} s mean latency, {latency:7.1f} s in all, "
                     f"{g['prompt_tokens'].sum() / calls:5.0f} prompt + {g['completion_tokens'].sum() / calls:5.1f}"
                     " completion tokens per call")
    return lines


def _rate(backend: str, per_emotion: int, validate: bool, model: str = "smollm2-135m",
          cache: bool = True) -> dict[str, Any]:
    """One run with bundled ``model`` through ``backend`` ("server" or "embedded"); accepted texts per minute.

    ``cache``: start the server with ``--cache true --logits_all false`` (the README's options)."""
    import httpx

    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.local import local_transport, resolve_model_path
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore
    from personagen_core.testing.serving import free_port, stop_process, wait_for_http

    proc = None
    http = None
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "server":
            port = free_port()
            log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(_server_command(resolve_model_path(model), model, port, cache),
                                    stdout=log, stderr=subprocess.STDOUT)
            base_url = f"http://127.0.0.1:{port}/v1"
            try:
                wait_for_http(f"{base_url}/models", timeout=120, proc=proc, log=Path(tmp) / "server.log")
            except Exception:
                stop_process(proc)
                raise
            llm = LLMSettings(backend="openai", base_url=base_url, model=model, concurrency=4)
        else:
            http = httpx.AsyncClient(transport=local_transport(model, n_threads=1, n_threads_batch=1))
            llm = LLMSettings(backend="local", local_model=model, concurrency=4)
        try:
            store = RunStore(Path(tmp) / "runs.sqlite")
            config = GenerationConfig(emotions=["joy", "sadness"], per_emotion=per_emotion, seed=3,
                                      validate=validate, stages="1", validation_batch=2, llm=llm)
            started = time.monotonic()
            summary = run_generation(load_pack("japan"), config, store, http_client=http)
            seconds = time.monotonic() - started
            accepted = sum(store.accepted_counts(summary.run_id).values())
            store.flush()
            per_call = _per_call_type(store, summary.run_id)
            store.close()
        finally:
            if proc is not None:
                stop_process(proc)
                log.close()
            if http is not None:
                import asyncio

                asyncio.run(http.aclose())
    return {"state": summary.state, "accepted": accepted, "seconds": seconds, "calls": summary.calls,
            "per_min": 60 * accepted / seconds, "rejections": summary.rejections, "per_call": per_call}


def main() -> None:
    """Run both parts and print what was measured."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-emotion", type=int, default=3, help="texts per emotion in part 2 (default 3)")
    parser.add_argument("--no-validate", action="store_true", help="part 2 without stage-1 validation")
    parser.add_argument("--skip-llm", action="store_true", help="only part 1 (no model runs)")
    parser.add_argument("--skip-hopeless", action="store_true", help="only part 2 (server vs embedded)")
    parser.add_argument("--model", default="smollm2-135m", help="bundled model key for part 2 (default smollm2-135m)")
    parser.add_argument("--backends", default="server,embedded",
                        help="part 2's runs in order, comma-separated: server, server-nocache, embedded "
                             "(repeat them to interleave, e.g. server,embedded,server,embedded)")
    args = parser.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    faults = () if args.skip_hopeless else (("model_404", True), ("model_404", False), ("html", True),
                                            ("schema_mismatch", True))
    if faults:
        print("1. hopeless endpoint -> clear stop (target: < 10 s, < 50 calls)")
    for fault, validate in faults:
        r = _hopeless(fault, validate)
        print(f"   {fault:16s} validate={validate!s:5s} {r['state']:7s} {r['seconds']:6.2f} s  "
              f"{r['calls']:3d} calls")
        print(f"      message: {r['message']}")
    if args.skip_llm:
        return
    validate = not args.no_validate
    print(f"2. {args.model}, 2 emotions x {args.per_emotion} texts, stage-1 validation {'on' if validate else 'off'}"
          ", one thread each")
    for backend in args.backends.split(","):
        if backend not in ("server", "server-nocache", "embedded"):
            parser.error(f"--backends: unknown {backend!r} (server, server-nocache, embedded)")
        load = os.getloadavg()[0]
        r = _rate("embedded" if backend == "embedded" else "server", args.per_emotion, validate, args.model,
                  cache=backend == "server")
        print(f"   {backend:14s} {r['state']:7s} {r['accepted']:2d} accepted in {r['seconds']:7.1f} s = "
              f"{r['per_min']:5.2f} texts/min, {r['calls']} calls, rejections {r['rejections']} "
              f"(load average {load:.1f} -> {os.getloadavg()[0]:.1f})")
        print("\n".join(r["per_call"]))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Per call type: llama-cpp-python's server against the embedded backend, same model, same requests.

Why is a run through ``python -m llama_cpp.server`` slower than the embedded backend with the same GGUF model?
This sends the *same* request bodies, in the order a validated run sends them (a stage-1 verdict batch of 2,
then a generation, repeated), to several *lanes*, each its own llama context with one thread:

* ``server``: ``python -m llama_cpp.server`` on a free loopback port (requests over HTTP, one at a time);
* ``server+cache``: the same with ``--cache true`` (llama-cpp-python's RAM prompt-state cache);
* ``server+nologits``: with ``--logits_all false`` (the server's default ``true`` computes and copies the
  logits of every prompt token, the embedded backend only the last one's); options combine:
  ``server+cache+nologits``;
* ``embedded``: PersonaGen's in-process :class:`~personagen_core.local.runtime.LocalModel` (the grammar is
  checked on the drawn token only, see ``local/_grammar_sampler.py``);
* ``embedded-stock``: the same LocalModel on the stock ``llama_cpp.Llama`` (grammar applied to the whole
  vocabulary at every token, as the stock server does).

and, per lane, a request *form* (``--forms``):

* verdicts: ``schema`` = ``json_object`` + the schema (what PersonaGen sent llama-cpp-python's server before),
  ``schema80`` = the same with free-text fields capped at 80 characters (what the embedded backend's grammar
  enforces), ``none`` = no grammar at all (schema only described in the prompt);
* generations: ``grammar`` = the sentence grammar in the ``grammar`` field; with form ``none`` no grammar.

Rounds are interleaved across lanes (lane order rotates every round) so that a load change on the shared
machine hits every lane alike; each lane has its own context, so interleaving does not disturb its prompt
reuse. Prints per lane and call type: calls, mean wall time, prompt and completion tokens, the share of valid
answers (verdict JSON matching the schema; a generation not cut off by max_tokens), the prompt tokens
the context actually read (``read``: the rest was reused from its KV cache), and the load average.

Run: ``.venv/bin/python bench/bench_llama_server_calls.py [--model KEY] [--rounds N]
[--lanes server:schema,embedded:schema80,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _bodies(model: str, rounds: int, form: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """``(call type, request body, schema to check or None)`` in a validated run's order, for one form."""
    from personagen_core.generation._validation import verdict_max_tokens
    from personagen_core.generation.llm import _schema_instruction, _with_instruction
    from personagen_core.generation.prompts import (
        batch_verdict_schema,
        generation_messages,
        sentence_grammar,
        validation_messages,
    )
    from personagen_core.local.schema_grammar import grammar_schema
    from personagen_core.personas.render import describe_persona, describe_scenario
    from personagen_core.personas.sampling import sample_personas
    from personagen_core.personas.spec import load_pack

    spec = load_pack("japan")
    rows = sample_personas(spec, 2 * rounds, random_state=7).to_dict("records")
    emotions = {e.name: e for e in spec.emotions}
    schema = batch_verdict_schema(2)
    out: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for r in range(rounds):
        pair = rows[2 * r: 2 * r + 2]
        messages = validation_messages(1, pair, spec)
        body: dict[str, Any] = {"model": model, "temperature": 0.0, "seed": r,
                                "max_tokens": verdict_max_tokens(2, "all")}
        if form == "none":
            body["messages"] = _with_instruction(messages, _schema_instruction(schema))
        else:
            sent = grammar_schema(schema, 80 if form == "schema80" else None)
            body["messages"] = _with_instruction(messages, "\n\nRespond with only a JSON object.")
            body["response_format"] = {"type": "json_object", "schema": sent}
        out.append(("verdicts", body, schema))
        emotion = emotions["joy" if r % 2 == 0 else "sadness"]
        gen = {"model": model, "temperature": spec.generation.temperature, "seed": r,
               "max_tokens": spec.generation.max_tokens,
               "messages": generation_messages(emotion, describe_persona(pair[0], spec),
                                               describe_scenario(pair[0], spec), spec=spec)}
        if form != "none":
            gen["grammar"] = sentence_grammar(spec.generation.max_sentences)
        out.append(("generation", gen, None))
    return out


@dataclass
class Lane:
    """One llama context answering one form of the requests."""

    name: str
    form: str
    bodies: list[tuple[str, dict[str, Any], dict[str, Any] | None]]
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    base_url: str = ""
    local: Any = None
    log: Path = Path()


def _start(lane: Lane, gguf: Path, alias: str, tmp: Path, threads: int) -> None:
    from personagen_core.local.runtime import LocalModel
    from personagen_core.testing.serving import free_port, wait_for_http

    params = {"n_threads": threads, "n_threads_batch": threads, "n_ctx": 2048}
    if lane.name.startswith("server"):
        port = free_port()
        lane.log = tmp / f"{lane.name}-{lane.form}.log"
        log = lane.log.open("wb")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--model_alias", alias]
        options = lane.name.split("+")[1:]
        if "cache" in options:
            cmd += ["--cache", "true"]
        if "nologits" in options:
            cmd += ["--logits_all", "false"]  # the server's default (true) computes logits for every prompt token
        lane.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        lane.base_url = f"http://127.0.0.1:{port}/v1"
        wait_for_http(f"{lane.base_url}/models", timeout=600, proc=lane.proc, log=lane.log)
        return
    if lane.name == "embedded-stock":
        import llama_cpp

        from personagen_core.local import _grammar_sampler

        real = _grammar_sampler.llama_class
        _grammar_sampler.llama_class = lambda: llama_cpp.Llama  # type: ignore[assignment]
        try:
            lane.local = LocalModel(gguf, name=alias, params=params)
            lane.local.load()
        finally:
            _grammar_sampler.llama_class = real  # type: ignore[assignment]
    else:
        lane.local = LocalModel(gguf, name=alias, params=params)
        lane.local.load()


def _call(lane: Lane, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    started = time.perf_counter()
    if lane.local is not None:
        result = lane.local.chat(json.loads(json.dumps(body)))
        evaluated = result["timings"]["prompt_n"]
    else:
        response = httpx.post(f"{lane.base_url}/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        result = response.json()
        # The server prints llama.cpp's per-call counters: the last "prompt eval time = ... / N tokens".
        lines = [x for x in lane.log.read_text(errors="replace").splitlines() if "prompt eval time" in x]
        evaluated = int(lines[-1].split("/")[1].split()[0]) if lines else -1
    wall = time.perf_counter() - started
    return {"wall": wall, "evaluated": evaluated, "text": result["choices"][0]["message"]["content"] or "",
            "finish": result["choices"][0]["finish_reason"], "prompt": result["usage"]["prompt_tokens"],
            "completion": result["usage"]["completion_tokens"]}


def _valid(kind: str, r: dict[str, Any], schema: dict[str, Any] | None) -> bool:
    import jsonschema

    from personagen_core.generation.llm import parse_json_text

    if r["finish"] == "length":
        return False
    if kind != "verdicts":
        return bool(r["text"].strip())
    try:
        jsonschema.validate(parse_json_text(r["text"]), schema or {})
    except Exception:  # noqa: BLE001 - any parse or schema failure is an invalid answer here
        return False
    return True


def main() -> None:
    """Start the lanes, send the interleaved rounds, print the table."""
    from personagen_core.local import resolve_model_path
    from personagen_core.testing.serving import stop_process

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model key (default smollm2-135m)")
    parser.add_argument("--rounds", type=int, default=6, help="verdict+generation pairs per lane (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of every lane (default 1)")
    parser.add_argument("--lanes", default="server:schema,server+cache+nologits:schema80,embedded:schema80",
                        help="comma-separated name:form (names: server[+cache][+nologits], embedded, "
                             "embedded-stock; "
                             "forms: schema, schema80, none)")
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()

    gguf = resolve_model_path(args.model)
    lanes = []
    for spec in args.lanes.split(","):
        name, form = spec.split(":")
        # One round more than timed: its generation is the untimed warm-up call, a prompt no timed call repeats
        # (a warm-up with a timed call's own prompt would hand the cached lanes that call's KV state).
        lanes.append(Lane(name, form, _bodies(args.model, args.rounds + 1, form)))
    print(f"model {args.model}, {args.threads} thread(s) per lane, {args.rounds} rounds; "
          f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for lane in lanes:
                _start(lane, gguf, args.model, Path(tmp), args.threads)
            # Warm-up: one untimed call per lane (first-call costs: grammar compile, page-in).
            for lane in lanes:
                _call(lane, lane.bodies[-1][1])
            loads = []
            for r in range(args.rounds):
                order = lanes[r % len(lanes):] + lanes[: r % len(lanes)]
                for lane in order:
                    for kind, body, schema in lane.bodies[2 * r: 2 * r + 2]:
                        res = _call(lane, body)
                        res["valid"] = _valid(kind, res, schema)
                        lane.results.setdefault(kind, []).append(res)
                        if args.show:
                            print(f"   {lane.name}:{lane.form} {kind} {res['wall']:.2f}s {res['text']!r}")
                loads.append(os.getloadavg()[0])
                print(f"   round {r + 1}/{args.rounds} done, load average {loads[-1]:.2f}", flush=True)
        finally:
            for lane in lanes:
                if lane.proc is not None:
                    stop_process(lane.proc)
                if lane.local is not None:
                    lane.local.close()
    print(f"load average during rounds: min {min(loads):.2f}, max {max(loads):.2f}")
    print(f"{'lane':26s} {'call':10s} {'n':>3s} {'wall s':>8s} {'median':>7s} {'prompt':>7s} {'read':>5s} {'compl':>6s} "
          f"{'valid':>6s}")
    for lane in lanes:
        for kind, rs in lane.results.items():
            print(f"{lane.name + ':' + lane.form:26s} {kind:10s} {len(rs):3d} "
                  f"{statistics.fmean(r['wall'] for r in rs):8.2f} {statistics.median(r['wall'] for r in rs):7.2f} "
                  f"{statistics.fmean(r['prompt'] for r in rs):7.0f} {statistics.fmean(r['evaluated'] for r in rs):5.0f} {statistics.fmean(r['completion'] for r in rs):6.1f} "
                  f"{sum(r['valid'] for r in rs):3d}/{len(rs):<2d}")
        total = sum(r["wall"] for rs in lane.results.values() for r in rs)
        print(f"{lane.name + ':' + lane.form:26s} {'all':10s} total {total:7.1f} s")


if __name__ == "__main__":
    main()

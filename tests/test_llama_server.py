"""A real local server: llama-cpp-python's own OpenAI-compatible server with SmolLM2-135M on loopback.

The pipeline talks to it with the ``openai`` backend exactly as to any endpoint. This checks what a fake cannot:
that the client recognises the server, sends schemas in the form it enforces (``json_object`` with ``schema``;
it answers ``json_schema`` with a 500) and the sentence grammar, and that a small validated run reaches its
exact quotas. One server per module, killed at the end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from personagen_core.generation.llm import LLMClient, LLMSettings, detect_server_kind
from personagen_core.generation.pipeline import GenerationConfig, run_generation
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore
from personagen_core.testing.serving import ProcessExited, free_port, stop_process, wait_for_http

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("sse_starlette") is None,
        reason="llama-cpp-python's server extra is not installed (pip install 'llama-cpp-python[server]==0.3.36')",
    ),
]

MODEL = "smollm2-135m"
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["natural", "rare but plausible", "implausible"]},
        "reason": {"type": "string", "maxLength": 80},
    },
    "required": ["reason", "verdict"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from personagen_core.local import resolve_model_path

    gguf = resolve_model_path(MODEL)
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = log_path.open("wb")
    # One thread, also for reading prompts: on a busy 2-core machine more threads than free cores slow
    # llama.cpp down many times over (its default batch threads = all cores).
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
         str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--model_alias", MODEL, "--seed", "1",
         "--cache", "true", "--logits_all", "false"],  # the options the README recommends
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_for_http(f"{base_url}/models", timeout=120, proc=proc, log=log_path)
        except (ProcessExited, TimeoutError) as exc:
            pytest.fail(f"llama_cpp.server did not start: {exc}")
        yield base_url
    finally:
        stop_process(proc)
        log.close()


def _settings(base_url: str) -> LLMSettings:
    return LLMSettings(backend="openai", base_url=base_url, model=MODEL, concurrency=4, timeout=120)


def test_server_is_detected_and_gets_schema_and_grammar_it_enforces(server: str) -> None:
    async def main() -> tuple[str, object, object, str | None]:
        kind = await detect_server_kind(server)
        async with LLMClient(_settings(server), random_state=0) as client:
            verdict = await client.complete(
                [{"role": "user", "content": "Is a 34-year-old nurse in Osaka plausible? Answer in JSON."}],
                role="validator", temperature=0.0, schema=SCHEMA, max_tokens=120, seed=1,
            )
            text = await client.complete(
                [{"role": "user", "content": "Write one sentence about joy."}], role="generator",
                temperature=0.8, max_tokens=80, seed=1,
                grammar='root ::= [A-Z] [a-z ,]{10,80} "."',
            )
            return kind, verdict, text, client.server_kind

    kind, verdict, text, client_kind = asyncio.run(main())
    assert kind == client_kind == "llama-cpp-python"
    assert verdict.mode == "json_object" and verdict.attempts == 1  # schema enforced, no json_schema 500 first
    assert verdict.data["verdict"] in ("natural", "rare but plausible", "implausible")
    # The grammar was enforced by the server: one capitalised clause of lower-case words ending in a period.
    assert text.text[0].isupper() and text.text.endswith(".") and text.text[1:-1].replace(",", "").replace(
        " ", "").islower(), text.text


def test_a_validated_run_reaches_exact_quotas(server: str, tmp_path: Path) -> None:
    spec = load_pack("japan")
    store = RunStore(tmp_path / "runs.sqlite")
    # Stage 1 only, in batches of two, two texts per validated candidate: SmolLM2 judges most candidates
    # implausible and every call reads a 400-token prompt, so this is the smallest validated run that still
    # goes through the batch schema.
    config = GenerationConfig(
        emotions=["joy", "sadness"], per_emotion=1, seed=3, validate=True, stages="1", validation_batch=2,
        texts_per_persona=2, llm=_settings(server),
    )
    summary = run_generation(spec, config, store)
    assert summary.state == "done", (summary.stop_reason, summary.message, summary.rejections)
    assert store.accepted_counts(summary.run_id) == {"joy": 1, "sadness": 1}
    store.flush()
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        modes = dict(db.execute(
            "SELECT role, GROUP_CONCAT(DISTINCT mode) FROM calls WHERE run_id = ? GROUP BY role", (summary.run_id,)
        ).fetchall())
        statuses = {s for (s,) in db.execute("SELECT DISTINCT status FROM calls WHERE run_id = ?",
                                              (summary.run_id,))}
    assert modes["validator"] == "json_object" and modes["generator"] == "text"
    assert "error" not in statuses

"""Endpoints that misbehave the way real ones do (issue 12): bad 200 bodies, a missing model, HTML instead of
the API, answers that never match the schema, and a slow server that answers one request at a time. Each runs
through the real client and pipeline against the loopback fake server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from personagen_core.errors import LLMConnectionError, LLMEndpointError, LLMError
from personagen_core.generation.llm import LLMClient, LLMSettings, _AdaptiveLimit
from personagen_core.generation.pipeline import GenerationConfig, resume_generation, run_generation
from personagen_core.personas.spec import Spec, load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

EMOTIONS = ["joy", "fear"]
GEN = [{"role": "user", "content": "Write one sentence expressing the emotion: joy."}]
SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["natural", "implausible"]}, "reason": {"type": "string"}},
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_pack("japan")


def _settings(srv: FakeOpenAIServer, **kw: Any) -> LLMSettings:
    base = {"base_url": srv.base_url, "model": "fake-model", "concurrency": 8, "backoff_base": 0.01,
            "backoff_max": 0.05, "timeout": 10.0}
    return LLMSettings(**{**base, **kw})


def _config(srv: FakeOpenAIServer, **kw: Any) -> GenerationConfig:
    llm = kw.pop("llm", None) or _settings(srv)
    return GenerationConfig(**{"emotions": EMOTIONS, "per_emotion": 2, "llm": llm, **kw})


def _exact(store: RunStore, run_id: str, n: int) -> None:
    assert store.accepted_counts(run_id) == dict.fromkeys(EMOTIONS, n)


def _calls(path: Path, run_id: str) -> list[tuple[str, str | None]]:
    """(status, error) of every recorded HTTP attempt of the run."""
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT status, error FROM calls WHERE run_id = ?", (run_id,)))


def test_bad_bodies_are_retried_like_a_5xx_and_never_crash(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    faults = ["broken_body", "html", "no_choices", None, "broken_body", None, "html"]
    with FakeOpenAIServer(faults=faults) as srv:
        summary = run_generation(spec, _config(srv), store)
    assert summary.state == "done"
    _exact(store, summary.run_id, 2)
    store.flush()
    calls = _calls(tmp_path / "runs.sqlite", summary.run_id)
    retried = [error or "" for status, error in calls if status == "retry"]
    assert len(retried) == 5 and "error" not in {status for status, _ in calls}
    errors = " ".join(retried)
    assert "HTML page" in errors and "broken JSON body" in errors and "no choices" in errors


@pytest.mark.parametrize(
    ("fault", "validate", "expected"),
    [
        ("model_404", True, "model 'fake-model' not found at http://127.0.0.1"),
        ("model_404", False, "check the model setting"),
        ("html", True, "answers HTML, not the OpenAI API — check the base URL"),
        ("schema_mismatch", True, "do not match the stage1_verdict"),
    ],
)
def test_a_hopeless_endpoint_stops_the_run_quickly_and_resumable(
    tmp_path: Path, spec: Spec, fault: str, validate: bool, expected: str
) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(always=fault) as srv:
        summary = run_generation(spec, _config(srv, validate=validate), store)
        n_calls = len(srv.chat_requests)
    assert summary.state == "failed" and summary.stop_reason == "error"
    assert expected in (summary.message or "")
    assert "gave up on the endpoint" in (summary.message or "")
    if fault == "schema_mismatch":
        assert "structured mode 'prompt'" in (summary.message or "")
    assert n_calls < 50  # the target; before, the run never stopped
    assert store.run(summary.run_id)["status"] == "failed"
    # Nothing is lost and the run resumes against a working endpoint to exact quotas.
    with FakeOpenAIServer() as good:
        resumed = resume_generation(store, summary.run_id, llm=_settings(good))
    assert resumed.state == "done"
    _exact(store, summary.run_id, 2)


def test_the_give_up_error_is_raised_by_every_later_call() -> None:
    async def main(srv: FakeOpenAIServer) -> tuple[list[BaseException | Any], int]:
        async with LLMClient(_settings(srv, give_up_after=3)) as client:
            results = await asyncio.gather(*(client.complete(GEN, role="generator") for _ in range(10)),
                                           return_exceptions=True)
            n_before = len(srv.chat_requests)
            with pytest.raises(LLMEndpointError):
                await client.complete(GEN, role="generator")
            assert len(srv.chat_requests) == n_before  # no call goes out after giving up
            return results, n_before

    with FakeOpenAIServer(always="model_404") as srv:
        results, n_calls = asyncio.run(main(srv))
    assert all(isinstance(r, Exception) for r in results)
    assert any(isinstance(r, LLMEndpointError) for r in results)
    assert n_calls <= 3 + 4  # three failures, plus what was already in flight at the initial limit


def test_max_attempts_counts_validation_candidates(tmp_path: Path, spec: Spec) -> None:
    # Every verdict is "implausible": no text is ever generated, so only validation rejections count.
    from personagen_core.testing.fake_openai import DefaultResponder

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(DefaultResponder(choices={"verdict": "implausible"})) as srv:
        summary = run_generation(spec, _config(srv, max_attempts=20), store)
        n_calls = len(srv.chat_requests)
    assert summary.state == "stopped" and summary.stop_reason == "max_attempts"
    rejected = sum(store.rejection_counts(summary.run_id).values())
    assert 20 <= rejected <= 20 + 8 * 8  # at most the batches already in flight finish
    assert n_calls < 20


@pytest.mark.slow
def test_slow_serial_server_completes_and_is_sent_one_request_at_a_time(tmp_path: Path, spec: Spec) -> None:
    # Each request takes 0.4 s and the server serves one at a time, so four queued requests take 1.6 s,
    # longer than the 1.2 s timeout: a fixed concurrency of 8 would time out and pile up retries.
    # Every call has the same size (one candidate per validation call, one text per generation call): the
    # client recognises queueing by a call's latency against the fastest seen for its size (the square root
    # of its tokens), while this fake answers every call in the same 0.4 s whatever its size. With mixed
    # sizes (validation batches ramped 1, 2, 4, 8), a large call queued behind another looked no slower than
    # a small one and became the new baseline, so detection depended on which call the thread timing happened
    # to queue first: under CPU load the client went on at 2-3 in flight until calls timed out.
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(serial=True, latency=0.4) as srv:
        config = _config(srv, llm=_settings(srv, timeout=1.2), per_emotion=4, validation_batch=1)
        summary = run_generation(spec, config, store)
        arrivals = [r.concurrent for r in srv.chat_requests]
        abandoned = srv.abandoned
    assert summary.state == "done"
    _exact(store, summary.run_id, 4)
    # One probe of two requests at once (until the latency shows queueing), then one at a time: the client
    # probes the level that was too high again only after 32 successes, more than this run has left.
    assert sum(1 for n in arrivals if n and n > 1) <= 4, arrivals
    assert set(arrivals[-5:]) == {1}, arrivals
    store.flush()
    retries = sum(1 for status, _ in _calls(tmp_path / "runs.sqlite", summary.run_id) if status == "retry")
    assert abandoned <= retries  # a request is only abandoned by a timeout (then retried)


def test_timeouts_say_slow_and_refused_connections_say_unreachable() -> None:
    async def call(settings: LLMSettings) -> None:
        async with LLMClient(settings) as client:
            await client.complete(GEN, role="generator")

    with FakeOpenAIServer(always="timeout", timeout_sleep=3) as srv, pytest.raises(
        LLMConnectionError, match="too slow"
    ) as slow:
        asyncio.run(call(_settings(srv, timeout=0.3, max_retries=1)))
    assert "timed out" in str(slow.value) and "timeout setting" in str(slow.value)
    port = srv.port  # stopped now: nothing listens there
    with pytest.raises(LLMConnectionError, match="unreachable") as down:
        asyncio.run(call(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1,
                                     backoff_base=0.01)))
    assert "too slow" not in str(down.value)


def test_adaptive_limit_halves_on_overload_and_grows_back() -> None:
    limit = _AdaptiveLimit(16)
    assert limit.current == 4
    for _ in range(20):
        limit.on_success("generator", 0.1, 100, 20)  # slow start: +1 per success
    assert limit.current == 16
    limit.on_overload()
    assert limit.current == 8
    limit.on_overload()  # a second 429 from the same round does not halve again
    assert limit.current == 8
    for _ in range(7):
        limit.on_success("generator", 0.1, 100, 20)
    assert limit.current == 8
    for _ in range(3):
        limit.on_success("generator", 0.1, 100, 20)
    assert limit.current == 9  # additive increase: about +1 per round of calls


def test_adaptive_limit_backs_off_when_latency_grows_with_load() -> None:
    limit = _AdaptiveLimit(8)
    limit.on_success("validator", 0.5, 100, 50)  # baseline
    for _ in range(6):
        limit.on_success("validator", 2.0, 100, 50)  # four times slower per token: queueing
    assert limit.current < 4 and limit.ceiling is not None


def test_adaptive_limit_is_not_fooled_by_calls_of_mixed_sizes() -> None:
    """Validation batches of 1 and 8 candidates against a server whose latency does not grow with size: no
    queueing is seen (a big call's time per unit is no baseline for a small one); when both sizes slow down
    threefold, it is."""
    limit = _AdaptiveLimit(16, start=8, slow_start=False)
    # (prompt, completion) tokens of 8- and 1-candidate verdict calls: a big batch, then the small rest
    sizes = ([(800, 160)] + [(200, 20)] * 3) * 20
    for prompt, completion in sizes:
        limit.on_success("validator", 1.0, prompt, completion)
    assert limit.decreases == 0 and limit.current > 8  # grew additively, never halved
    grown = limit.current
    for prompt, completion in sizes[:8]:
        limit.on_success("validator", 3.0, prompt, completion)
    assert limit.decreases >= 1 and limit.current < grown and limit.ceiling is not None


def test_llama_cpp_python_server_gets_schema_in_json_object_and_the_grammar() -> None:
    async def main(srv: FakeOpenAIServer) -> tuple[Any, Any, str | None]:
        async with LLMClient(_settings(srv)) as client:
            verdict = await client.complete(GEN, role="validator", schema=SCHEMA)
            text = await client.complete(GEN, role="generator", grammar='root ::= [A-Z] [a-z ]{1,40} "."')
            return verdict, text, client.server_kind

    with FakeOpenAIServer(kind="llama-cpp-python") as srv:
        verdict, text, kind = asyncio.run(main(srv))
        bodies = [r.body or {} for r in srv.chat_requests]
    assert kind == "llama-cpp-python"
    assert verdict.mode == "json_object" and verdict.attempts == 1  # no 500 for json_schema first
    # the schema, its free-text field capped as on the embedded backend (the answer is checked against SCHEMA)
    capped = {**SCHEMA, "properties": {**SCHEMA["properties"], "reason": {"type": "string", "maxLength": 80}}}
    assert bodies[0]["response_format"] == {"type": "json_object", "schema": capped}
    assert "grammar" not in bodies[0] and bodies[1]["grammar"].startswith("root ::=")
    assert verdict.data["verdict"] in ("natural", "implausible") and text.text


def test_generic_endpoint_gets_no_grammar_and_default_timeouts_fit_the_backend() -> None:
    async def main(srv: FakeOpenAIServer) -> str | None:
        async with LLMClient(_settings(srv)) as client:
            await client.complete(GEN, role="generator", grammar='root ::= "x"')
            return client.server_kind

    with FakeOpenAIServer() as srv:
        assert asyncio.run(main(srv)) == "openai"
        assert "grammar" not in (srv.chat_requests[0].body or {})
    assert LLMSettings(base_url="https://api.example.com/v1").effective_timeout == 60
    assert LLMSettings(base_url="http://127.0.0.1:8080/v1").effective_timeout == 300
    assert LLMSettings(base_url="http://192.168.1.20:8000/v1").effective_timeout == 300
    assert LLMSettings(backend="local").effective_timeout == 600
    assert LLMSettings(base_url="http://localhost:1/v1", timeout=7).effective_timeout == 7


def test_cli_timeout_and_structured_reach_the_settings(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from personagen_core.cli import app

    db = tmp_path / "runs.sqlite"
    args = ["generate", "--pack", "japan", "--emotions", "joy", "--per-emotion", "1", "--model", "fake-model",
            "--db", str(db), "--llm-validation"]
    with FakeOpenAIServer() as srv:
        res = CliRunner().invoke(app, [*args, "--base-url", srv.base_url, "--timeout", "45", "--structured",
                                       "prompt"])
        validation = [r.body or {} for r in srv.chat_requests if "verdict" in str((r.body or {}).get("messages"))]
        bad = CliRunner().invoke(app, [*args, "--base-url", srv.base_url, "--structured", "xml"])
    assert res.exit_code == 0, res.output
    info = RunStore(db).run(str(RunStore(db).list_runs().iloc[0]["run_id"]))
    assert info["config"]["llm"]["timeout"] == 45 and info["config"]["llm"]["structured"] == "prompt"
    assert validation and all("response_format" not in b for b in validation)  # prompt mode from the start
    # A PersonaGenError naming the field (the CLI's main() prints it as "error: ..." with exit code 2).
    # the choices come from the core's vocabulary: Typer refuses an unknown mode, naming the option
    assert bad.exit_code == 2 and "--structured" in bad.output and "xml" in bad.output


def test_validation_batches_shrink_when_calls_time_out(spec: Spec) -> None:
    from personagen_core.errors import LLMResponseError
    from personagen_core.generation._validation import Validator
    from personagen_core.personas.sampling import sample_personas

    class SlowClient:
        """Times out (as counted by the real client) on batches of more than two candidates."""

        def __init__(self) -> None:
            self.settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")
            self.timeouts: dict[str, int] = {}
            self.sizes: list[int] = []

        async def complete(self, messages: Any, *, schema: Any, **kw: Any) -> Any:
            n = schema["properties"]["verdicts"]["maxItems"] if "verdicts" in schema["properties"] else 1
            self.sizes.append(n)
            if n > 2:
                self.timeouts["validator"] = self.timeouts.get("validator", 0) + 1
                raise LLMResponseError("no usable answer (timed out)")
            data = {"verdicts": [{"id": i, "reason": "fine", "verdict": "natural"} for i in range(n)]}
            return type("C", (), {"data": data if n > 1 or "verdicts" in schema["properties"] else
                                  {"reason": "fine", "verdict": "natural"}, "text": ""})()

    client = SlowClient()
    validator = Validator(spec, None, client, batch_size=8)
    rows = sample_personas(spec, 24, random_state=1).to_dict("records")
    verdicts = asyncio.run(validator.verdicts(1, rows))
    assert all(v.verdict == "natural" for v in verdicts)
    assert validator.batch_size == 2
    batches = [n for n in client.sizes if n > 1]  # size-1 calls are the per-candidate fallback
    assert batches[:2] == [8, 4] and batches[2:] and set(batches[2:]) == {2}  # halved after each timeout


def test_request_bodies_per_server_kind() -> None:
    from personagen_core.generation.llm import _Call

    client = LLMClient(LLMSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 2},
                                               "reason": {"type": "string"}},
              "required": ["id", "reason"]}
    call = _Call(role="validator", model="m", schema=schema, validator=None, name="v", prompt_estimate=1,
                 timeout=1.0)
    body = {kind: client._request(GEN, call, "json_object", {"grammar": "root ::= x", "max_tokens": 9}, kind)
            for kind in ("openai", "llama-cpp-python", "llama.cpp", "vllm", "ollama")}
    assert body["openai"]["response_format"] == {"type": "json_object"}
    sent = body["llama-cpp-python"]["response_format"]["schema"]["properties"]
    assert sent["id"]["enum"] == [0, 1, 2]  # its grammar converter ignores minimum/maximum
    assert sent["reason"] == {"type": "string", "maxLength": 80}  # as the embedded backend caps free text
    assert body["llama.cpp"]["response_format"]["schema"] == body["llama-cpp-python"]["response_format"]["schema"]
    assert body["vllm"]["guided_json"] == schema and body["ollama"]["format"] == schema
    assert all("grammar" not in b and b["max_tokens"] == 9 for b in body.values())  # the schema constrains
    prompt = {kind: b["messages"][-1]["content"] for kind, b in body.items()}
    assert '"properties"' in prompt["openai"] and '"properties"' in prompt["vllm"]
    assert '"properties"' not in prompt["llama-cpp-python"]  # enforced as a grammar: not repeated in the prompt
    strict = client._request(GEN, call, "json_schema", {}, "vllm")["response_format"]
    assert strict["type"] == "json_schema" and strict["json_schema"]["schema"] == schema
    # llama.cpp's C++ server takes json_schema too, and turns it into a grammar: the tightened copy
    strict = client._request(GEN, call, "json_schema", {}, "llama.cpp")["response_format"]
    assert strict["json_schema"]["schema"] == body["llama.cpp"]["response_format"]["schema"] != schema


def test_adaptive_limit_hands_a_slot_on_when_a_woken_waiter_is_cancelled() -> None:
    async def main() -> int:
        limit = _AdaptiveLimit(1, start=1)
        await limit.acquire()
        first = asyncio.create_task(limit.acquire())
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        limit.release()  # wakes `first` ...
        first.cancel()  # ... which is cancelled before it runs: `second` must get the slot
        await asyncio.wait_for(second, timeout=2)
        return limit.in_use

    assert asyncio.run(main()) == 1

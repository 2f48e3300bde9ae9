"""Several endpoints at once (issue 14): the endpoints file, the router (weights, cool-down, threads), the
pool against two loopback fake servers, per-endpoint usage in the store, and redaction."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from personagen_core.cli import app
from personagen_core.cli.generate_cmds import _pool_part
from personagen_core.errors import LLMError, StoreError
from personagen_core.generation.endpoints import (
    EndpointPool,
    EndpointRouter,
    endpoints_from_urls,
    load_endpoints_file,
    total_concurrency,
)
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import (
    GenerationConfig,
    resume_generation,
    run_generation,
    stored_llm_settings,
)
from personagen_core.personas.spec import Spec, load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

EMOTIONS = ["joy", "fear"]
GEN = [{"role": "user", "content": "Write one sentence expressing the emotion: joy."}]
FAST = {"model": "fake-model", "concurrency": 4, "backoff_base": 0.01, "backoff_max": 0.05, "timeout": 10.0}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_pack("japan")


def _pool_settings(*endpoints: dict[str, Any], **kw: Any) -> LLMSettings:
    return LLMSettings(endpoints=list(endpoints), **{**FAST, **kw})


# -- a run over two endpoints ------------------------------------------------------------------------------
def test_run_finishes_on_the_other_endpoint_when_one_fails_mid_run(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    env = {"REPLICA_B_KEY": "sk-replica-b-secret-123"}
    with FakeOpenAIServer(latency=0.01) as a, FakeOpenAIServer(
            latency=0.01, fail_after=8, fail_with="500", api_key=env["REPLICA_B_KEY"]) as b:
        llm = _pool_settings({"url": a.base_url, "name": "A"},
                             {"url": b.base_url, "name": "B", "key_env": "REPLICA_B_KEY"})
        config = GenerationConfig(emotions=EMOTIONS, per_emotion=12, llm=llm)
        events: list[Any] = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REPLICA_B_KEY", env["REPLICA_B_KEY"])
            summary = run_generation(spec, config, store, on_event=events.append)
        b_failed = sum(1 for r in b.chat_requests if r.fault == "500")
        a_calls, b_calls = len(a.chat_requests), len(b.chat_requests)
    assert summary.state == "done"
    assert store.accepted_counts(summary.run_id) == dict.fromkeys(EMOTIONS, 12)  # exact quotas
    assert b_failed >= 12 and b_calls > 8  # B broke mid-run and was given up on (12 failures in a row) ...
    assert b_calls - b_failed == 8  # ... after serving its first 8 requests
    # B answered (no 401): its key came from its key_env variable
    usage = store.endpoint_usage(summary.run_id).set_index("endpoint")
    assert set(usage.index) == {"A", "B"}
    assert int(usage.loc["A", "calls"]) == a_calls and int(usage.loc["B", "calls"]) == b_calls
    assert int(usage.loc["A", "failed"]) == 0 and int(usage.loc["B", "failed"]) == b_failed
    assert "HTTP 500" in usage.loc["B", "last_error"]
    # Progress events say where calls go: B out of rotation (probe due later), A in it.
    final = store.latest_event(summary.run_id)["endpoints"]
    assert [(e["label"], e["state"]) for e in final] == [("A", "healthy"), ("B", "out")]
    assert final[1]["times_out"] == 1 and final[1]["probe_in_s"] > 0 and "HTTP 500" in final[1]["last_error"]
    assert events[-1].endpoints == final
    assert _pool_part(events[-1]) == " | endpoints 1/2 in rotation"
    totals = store.totals(summary.run_id)
    assert int(usage["calls"].sum()) == totals["calls"]
    assert int(usage["prompt_tokens"].sum() + usage["completion_tokens"].sum()) == totals["tokens"]
    stored = store.run(summary.run_id)["config"]["llm"]["endpoints"]
    assert [e["key_env"] for e in stored] == [None, "REPLICA_B_KEY"]  # the variable's name only
    store.flush()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("runs.sqlite*"))  # the file and its WAL
    assert env["REPLICA_B_KEY"].encode() not in raw and b"REPLICA_B_KEY" in raw


def test_run_fails_resumable_only_when_every_endpoint_is_out(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with (FakeOpenAIServer(always="model_404") as a,
          FakeOpenAIServer(always="html") as b):
        b_url = b.base_url.replace("http://", "http://user:sk-b-url-secret-77@")
        llm = _pool_settings({"url": a.base_url, "name": "A"}, {"url": b_url})
        summary = run_generation(spec, GenerationConfig(emotions=EMOTIONS, per_emotion=2, llm=llm), store)
    assert summary.state == "failed" and summary.stop_reason == "error"
    message = summary.message or ""
    assert "every endpoint is out of rotation" in message
    b_label = b.base_url.replace("http://", "http://***@")
    assert "A: model 'fake-model' not found" in message and f"{b_label}: the endpoint" in message
    assert "HTML" in message and "sk-b-url-secret-77" not in message  # each named, URLs redacted
    assert store.run(summary.run_id)["status"] == "failed"  # resumable with --resume
    assert store.accepted_counts(summary.run_id) == {}


def test_pool_probes_an_endpoint_again_after_its_cool_down() -> None:
    async def main(a: FakeOpenAIServer, b: FakeOpenAIServer) -> tuple[list[str], list[str], int]:
        llm = _pool_settings({"url": a.base_url, "name": "A"}, {"url": b.base_url, "name": "B"}, give_up_after=3)
        async with EndpointPool(llm, probe_after=0.3) as pool:
            states = []
            for _ in range(12):  # B fails its first 3 requests: taken out, A serves the calls meanwhile
                await pool.complete(GEN, role="generator")
            states.append(pool.status()[1]["state"])
            await asyncio.sleep(0.35)  # the cool-down ends: the next call probes B (and B works again)
            for _ in range(8):
                await pool.complete(GEN, role="generator")
            states.append(pool.status()[1]["state"])
            return states, [s["last_error"] or "" for s in pool.status()], pool.status()[1]["times_out"]

    with FakeOpenAIServer() as a, FakeOpenAIServer(fail_after=0, fail_for=3, fail_with="500") as b:
        states, errors, times_out = asyncio.run(main(a, b))
        b_ok = sum(1 for r in b.chat_requests if r.fault is None)
    assert states == ["out", "healthy"] and times_out == 1
    assert b_ok >= 2  # the probe and later calls were served by B again
    assert "HTTP 500" in errors[1]


def test_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    llm = _pool_settings({"url": "http://127.0.0.1:9/v1", "key_env": "NO_SUCH_KEY_VAR", "name": "gpu1"})
    with pytest.raises(LLMError, match="endpoint gpu1: the environment variable NO_SUCH_KEY_VAR"):
        EndpointPool(llm)


# -- the endpoints file ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("e.yaml", "endpoints:\n  - url: http://a/v1\n    weight: 0\n", r"entry 1 \(http://a/v1\): field 'weight'"),
        ("e.yaml", "- url: http://a/v1\n- model: m\n", r"entry 2: field 'url': Field required"),
        ("e.yaml", "- url: ftp://a\n", r"entry 1 \(ftp://a\): field 'url': .*http:// or https://"),
        ("e.yaml", "- url: http://a/v1\n  api_key: sk-abcdefghijk\n", r"field 'api_key' is not allowed.*key_env"),
        ("e.yaml", "- url: http://a/v1\n  key_env: sk-abcdefghijk\n", r"field 'key_env': .*NAME of an environment"),
        ("e.yaml", "- url: http://a/v1\n  max_concurrency: 0\n", r"field 'max_concurrency'"),
        ("e.yaml", "- url: http://a/v1\n  server: nginx\n", r"field 'server'"),
        ("e.yaml", "- url: http://a/v1\n- url: http://a/v1/\n", r"listed twice"),
        ("e.yaml", "endpoints: []\n", r"non-empty list"),
        ("e.yaml", "urls: [http://a/v1]\n", r"unknown top-level key\(s\) urls"),
        ("e.yaml", "- [http://a/v1]\n", r"entry 1: expected a mapping"),
        ("e.yaml", "- url: http://a/v1\n  weight: [\n", r"not valid YAML \(line 3"),
        ("e.json", '[{"url": "http://a/v1",}]', r"not valid JSON \(line 1"),
        ("e.json", '[{"url": "http://u:sk-secret-pass@a/v1", "weight": -1}]', r"entry 1 \(http://\*\*\*@a/v1\)"),
    ],
)
def test_endpoints_file_errors_name_file_entry_and_field(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LLMError, match=expected) as info:
        load_endpoints_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "sk-abcdefghijk" not in message and "sk-secret-pass" not in message  # values are never echoed


def test_endpoints_file_loads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(
        "endpoints:\n  - url: http://gpu1:8000/v1\n    model: qwen\n    key_env: GPU1_KEY\n    weight: 3\n"
        "    max_concurrency: 32\n    server: vllm\n  - url: http://gpu2:8000/v1/\n", encoding="utf-8")
    (tmp_path / "e.json").write_text('[{"url": "http://gpu1:8000/v1", "weight": 2}]', encoding="utf-8")
    first, second = load_endpoints_file(tmp_path / "e.yaml")
    assert (first.model, first.key_env, first.weight, first.max_concurrency, first.server) == (
        "qwen", "GPU1_KEY", 3.0, 32, "vllm")
    assert second.url == "http://gpu2:8000/v1" and second.weight == 1.0
    assert load_endpoints_file(tmp_path / "e.json")[0].weight == 2.0
    with pytest.raises(LLMError, match="cannot be read"):
        load_endpoints_file(tmp_path / "missing.yaml")
    settings = LLMSettings(endpoints=[first, second], concurrency=8)
    assert settings.backend == "openai" and total_concurrency(settings) == 40


# -- routing --------------------------------------------------------------------------------------------------
def test_weights_split_calls_exactly_when_every_endpoint_has_room() -> None:
    router = EndpointRouter(["a", "b", "c"], [3, 1, 2])
    picks = []
    for _ in range(600):
        i = router.pick([100, 100, 100])
        assert i is not None
        picks.append(i)
        router.release(i)
    assert [picks.count(i) for i in range(3)] == [300, 100, 200]
    assert picks[:6].count(0) == 3  # smooth: spread out, not 3 in a row then the others


def test_a_full_endpoint_leaves_its_share_to_the_others() -> None:
    router = EndpointRouter(["a", "b"], [10, 1])
    held = [router.pick([2, 50]) for _ in range(20)]  # nothing released: a holds at most 2
    assert held.count(0) == 2 and held.count(1) == 18
    assert router.pick([2, 18]) is None  # everyone full: the caller waits
    router.release(0)
    assert router.pick([2, 18]) == 0


def test_an_endpoint_taken_out_is_probed_after_its_cool_down_with_backoff() -> None:
    now = [100.0]
    router = EndpointRouter(["a", "b"], [1, 1], probe_after=10, probe_max=25, clock=lambda: now[0])
    assert router.take_out(1, "HTTP 500") and not router.take_out(1, "HTTP 500 again")  # one outage counts once
    assert {router.pick([9, 9]) for _ in range(5)} == {0}
    now[0] = 109.9
    assert router.pick([9, 9]) == 0 and router.next_probe_in() == pytest.approx(0.1)
    now[0] = 110.0
    assert router.pick([9, 9]) == 1 and router.probing(1)  # the probe goes first once due
    assert router.pick([9, 9]) == 0  # ... and only one probe at a time
    router.release(1)
    router.take_out(1, "still HTTP 500")  # the probe failed: the cool-down doubles
    assert router.snapshot()[1].retry_at == pytest.approx(130.0)
    now[0] = 130.0
    assert router.pick([9, 9]) == 1
    router.release(1)
    router.take_out(1, "still failing")  # doubles again, capped at probe_max
    assert router.snapshot()[1].retry_at == pytest.approx(155.0)
    now[0] = 155.0
    assert router.pick([9, 9]) == 1
    router.succeeded(1)
    router.release(1)
    state = router.snapshot()[1]
    assert (state.state, state.failed_probes, state.times_out, state.last_error) == ("healthy", 0, 3, "still failing")
    assert sorted(router.pick([9, 9]) for _ in range(2)) == [0, 1]


def test_all_out_only_when_no_endpoint_can_take_or_probe_a_call() -> None:
    now = [0.0]
    router = EndpointRouter(["a", "b"], [1, 1], probe_after=5, clock=lambda: now[0])
    router.take_out(0, "x")
    assert not router.all_out()
    router.take_out(1, "y")
    assert router.all_out()
    now[0] = 5.0
    assert not router.all_out()  # a probe is due


def test_router_is_thread_safe() -> None:
    router = EndpointRouter(["a", "b", "c"], [1, 2, 3])
    capacity = [3, 4, 5]
    over: list[int] = []

    def work() -> None:
        for _ in range(2000):
            i = router.pick(capacity)
            if i is None:
                continue
            state = router.snapshot()[i]
            if state.in_flight > capacity[i]:
                over.append(i)
            router.release(i)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = router.snapshot()
    assert over == [] and [s.in_flight for s in states] == [0, 0, 0]
    assert sum(s.picks for s in states) > 0


# -- redaction and resume -----------------------------------------------------------------------------------
def test_credentials_in_endpoint_urls_are_never_stored_and_resume_asks_for_them(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        secret_url = b.base_url.replace("http://", "http://user:sk-url-secret-999@") + "?api_key=sk-query-secret-1"
        llm = _pool_settings({"url": a.base_url}, {"url": secret_url})
        summary = run_generation(spec, GenerationConfig(emotions=EMOTIONS, per_emotion=1, llm=llm), store)
    assert summary.state == "done"
    store.flush()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("runs.sqlite*"))  # the file and its WAL
    assert b"127.0.0.1" in raw and b"sk-url-secret-999" not in raw and b"sk-query-secret-1" not in raw
    labels = set(store.endpoint_usage(summary.run_id)["endpoint"])
    assert any("***@127.0.0.1" in label and "api_key=***" in label for label in labels)
    with pytest.raises(StoreError, match="credentials are never stored; give the endpoints again"):
        stored_llm_settings(store.run(summary.run_id))
    again = stored_llm_settings(store.run(summary.run_id), endpoints=endpoints_from_urls([a.base_url, b.base_url]))
    assert len(again.endpoints) == 2


def test_resume_continues_on_a_pool(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        llm = _pool_settings({"url": a.base_url}, {"url": b.base_url})
        summary = run_generation(spec, GenerationConfig(emotions=EMOTIONS, per_emotion=1, llm=llm,
                                                        max_attempts=1), store)
        assert summary.state == "stopped"
        done = resume_generation(store, summary.run_id, llm=stored_llm_settings(store.run(summary.run_id)),
                                 max_attempts=500)
    assert done.state == "done" and store.accepted_counts(summary.run_id) == dict.fromkeys(EMOTIONS, 1)


def test_cli_base_url_twice_runs_on_both_and_shows_usage_per_endpoint(tmp_path: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "runs.sqlite"
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        result = runner.invoke(app, ["generate", "--base-url", a.base_url, "--base-url", b.base_url, "--model",
                                     "fake-model", "--per-emotion", "2", "--emotions", "joy,fear", "--db", str(db)],
                               env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
        assert result.exit_code == 0, result.output
        assert "2 endpoints:" in result.output
        used_a, used_b = len(a.chat_requests), len(b.chat_requests)
    assert used_a > 0 and used_b > 0
    run_id = next(line.split()[1] for line in result.output.splitlines() if line.startswith("run ") and "->" in line)
    shown = runner.invoke(app, ["runs", "show", run_id, "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "usage per endpoint" in shown.output and f"endpoint {a.base_url}" in shown.output
    both = runner.invoke(app, ["generate", "--base-url", a.base_url, "--endpoints", str(tmp_path / "x.yaml"),
                               "--per-emotion", "1", "--db", str(db)])
    assert both.exit_code != 0 and "not both" in both.output


def test_calls_from_an_old_store_gain_the_endpoint_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the calls table as stores had it before endpoint pools
        db.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, stage INTEGER, role TEXT, "
                   "model TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL "
                   "DEFAULT 0, latency_s REAL, status TEXT, error TEXT, mode TEXT, cost REAL NOT NULL DEFAULT 0, "
                   "created_at REAL NOT NULL)")
    store = RunStore(path)
    assert store.endpoint_usage("nope").empty
    with sqlite3.connect(path) as db:
        assert "endpoint" in {r[1] for r in db.execute("PRAGMA table_info(calls)")}


def test_waiting_calls_are_served_in_turn_within_each_endpoints_cap_and_cancellable() -> None:
    async def main(urls: list[str]) -> tuple[int, int, list[int]]:
        llm = _pool_settings(*({"url": u, "max_concurrency": 2} for u in urls))
        async with EndpointPool(llm) as pool:
            tasks = [asyncio.create_task(pool.complete(GEN, role="generator")) for _ in range(40)]
            await asyncio.sleep(0.05)
            for t in tasks[30:]:  # calls still waiting for room are cancelled: the others must not stall
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            done = sum(not isinstance(r, BaseException) for r in results)
            cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
            return done, cancelled, [s["in_flight"] for s in pool.status()]

    with FakeOpenAIServer(latency=0.02) as a, FakeOpenAIServer(latency=0.02, seed=1) as b:
        done, cancelled, in_flight = asyncio.run(main([a.base_url, b.base_url]))
        peaks = [a.max_in_flight, b.max_in_flight]
    assert done + cancelled == 40 and done >= 30 and in_flight == [0, 0]
    assert max(peaks) <= 2  # each endpoint's max_concurrency held


def test_pool_settings_never_reach_a_single_client_and_time_estimates_key_on_the_pool() -> None:
    from personagen_core.generation.llm import LLMClient
    from personagen_core.generation.throughput import profile_key

    llm = _pool_settings({"url": "http://gpu1:8000/v1", "max_concurrency": 8}, {"url": "http://gpu2:8000/v1"})
    with pytest.raises(LLMError, match="open_client"):
        LLMClient(llm)  # would otherwise send everything to base_url / api.openai.com
    key = profile_key(GenerationConfig(llm=llm, validate=False))
    assert key.startswith("pool:http://gpu1:8000/v1,http://gpu2:8000/v1|") and "concurrency=12" in key


def test_each_endpoint_keeps_its_own_server_kind_and_structured_form() -> None:
    schema = {"type": "object", "properties": {"verdict": {"enum": ["natural", "implausible"]}},
              "required": ["verdict"], "additionalProperties": False}

    async def main(urls: list[str]) -> list[dict[str, Any]]:
        async with EndpointPool(_pool_settings({"url": urls[0]}, {"url": urls[1]})) as pool:
            for _ in range(6):
                done = await pool.complete(GEN, role="validator", schema=schema)
                assert done.data["verdict"] == "natural"
            return pool.status()

    with FakeOpenAIServer() as plain, FakeOpenAIServer(kind="llama-cpp-python", seed=1) as llama:
        status = asyncio.run(main([plain.base_url, llama.base_url]))
        plain_formats = {r.body["response_format"]["type"] for r in plain.chat_requests}
        llama_formats = {r.body["response_format"]["type"] for r in llama.chat_requests}
        llama_schema = all("schema" in r.body["response_format"] for r in llama.chat_requests)
    assert [s["server_kind"] for s in status] == ["openai", "llama-cpp-python"]
    assert [s["picks"] for s in status] == [3, 3]
    assert plain_formats == {"json_schema"}  # the OpenAI form here ...
    assert llama_formats == {"json_object"} and llama_schema  # ... llama-cpp-python's grammar form there

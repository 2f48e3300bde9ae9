"""Generation pipeline over real HTTP (FakeOpenAIServer on loopback): quotas, faults, caches, resume."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from personagen_core.errors import LLMError, SpecError
from personagen_core.generation._validation import Validator
from personagen_core.generation.llm import LLMClient, LLMSettings
from personagen_core.generation.pipeline import (
    GenerationConfig,
    ProgressEvent,
    estimate_cost,
    resume_generation,
    run_generation,
)
from personagen_core.personas.spec import Spec, load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import REFUSAL_TEXT, DefaultResponder, FakeOpenAIServer

KEY = "sk-test-DO-NOT-STORE-0123456789abcdef"
EMOTIONS = ["joy", "fear", "anger"]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_pack("japan")


def _settings(srv: FakeOpenAIServer, **kw: Any) -> LLMSettings:
    base = {
        "base_url": srv.base_url,
        "api_key": KEY,
        "model": "fake-model",
        "concurrency": 4,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "retry_after_max": 0.2,
        "timeout": 5.0,
    }
    return LLMSettings(**{**base, **kw})


def _config(srv: FakeOpenAIServer, **kw: Any) -> GenerationConfig:
    llm = kw.pop("llm", None) or _settings(srv)
    return GenerationConfig(**{"emotions": EMOTIONS, "per_emotion": 3, "llm": llm, **kw})


def _is_generation(body: dict[str, Any]) -> bool:
    return "response_format" not in body and "Target emotion" in str(body.get("messages"))


class ScriptedResponder:
    """The default answers, except that chosen generation requests (by their order) get a refusal or a
    copy of the first generated text, and verdicts are drawn from ``verdicts``."""

    def __init__(
        self,
        *,
        refusals: set[int] = frozenset(),
        duplicates: set[int] = frozenset(),  # type: ignore[assignment]
        verdicts: list[str] | None = None,
        always_refuse: bool = False,
    ) -> None:
        self.base = DefaultResponder(seed=3, choices={"verdict": verdicts or ["natural"]})
        self.refusals, self.duplicates, self.always_refuse = refusals, duplicates, always_refuse
        self.lock = threading.Lock()
        self.n_gen = 0
        self.first: str | None = None

    def __call__(self, body: dict[str, Any]) -> Any:
        if not _is_generation(body):
            return self.base(body)
        with self.lock:
            i = self.n_gen
            self.n_gen += 1
            if self.always_refuse or i in self.refusals:
                return REFUSAL_TEXT
            if i in self.duplicates and self.first is not None:
                return self.first
        text = self.base(body)
        with self.lock:
            self.first = self.first or text
        return text


def _assert_exact(store: RunStore, run_id: str, n: int, emotions: list[str] = EMOTIONS) -> None:
    texts = store.texts(run_id)
    assert texts.groupby("emotion").size().to_dict() == dict.fromkeys(emotions, n)
    assert texts["text"].is_unique


def test_run_reaches_exact_quotas_and_records_everything(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    events: list[ProgressEvent] = []
    with FakeOpenAIServer(api_key=KEY, latency=0.01) as srv:
        summary = run_generation(spec, _config(srv), store, on_event=events.append)
        n_requests = len(srv.chat_requests)
    assert summary.state == "done" and summary.complete
    _assert_exact(store, summary.run_id, 3)
    # every HTTP attempt is in the usage table, attributed to a stage
    usage = store.usage(summary.run_id)
    assert int(usage["calls"].sum()) == n_requests == summary.calls
    assert set(usage["stage"]) == {1, 2, 3, 4}
    assert summary.tokens == store.totals(summary.run_id)["tokens"] > 0
    # the funnel: every sampled candidate has a stage-1 verdict
    funnel = store.funnel(summary.run_id)
    assert (
        sum(funnel["stages"]["1"][v] for v in ("natural", "rare but plausible", "implausible", "error"))
        == funnel["sampled"]
    )
    assert funnel["accepted"] == 9
    # events: monotone progress, final state done with the full counts
    assert events[-1].state == "done" and events[-1].accepted == dict.fromkeys(EMOTIONS, 3)
    assert events[-1].eta_s == 0.0
    totals = [sum(e.accepted.values()) for e in events]
    assert totals == sorted(totals)
    assert store.latest_event(summary.run_id)["state"] == "done"
    info = store.run(summary.run_id)
    assert info["status"] == "done" and info["spec_hash"] and "llm" in info["config"]
    # the API key reached the server (it checks it) but never the database
    store.close()
    for f in tmp_path.iterdir():
        assert KEY.encode() not in f.read_bytes(), f


def test_faults_are_retried_or_recorded_and_quotas_stay_exact(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    responder = ScriptedResponder(
        refusals={1, 2},
        duplicates={3, 4},
        verdicts=["natural", "natural", "rare but plausible", "implausible"],
    )
    transport = {1: "429", 3: "500", 5: "drop", 7: "timeout"}
    faults: dict[int, str] = {0: "malformed_json", **transport}  # request 0 is a (JSON) stage-1 validation
    with FakeOpenAIServer(responder, faults=faults, retry_after=0.05, timeout_sleep=1.5, latency=0.01) as srv:
        cfg = _config(srv, llm=_settings(srv, timeout=0.5))
        summary = run_generation(spec, cfg, store)
        n_requests = len(srv.chat_requests)
    assert summary.state == "done"
    _assert_exact(store, summary.run_id, 3)
    totals = store.totals(summary.run_id)
    assert totals["calls"] == n_requests  # every attempt, failed ones included, is recorded
    assert totals["failed_calls"] == len(faults)  # each fault cost exactly one retried attempt
    rej = store.rejection_counts(summary.run_id)
    assert rej["refusal"] == 2 and rej["duplicate"] == 2
    assert (
        rej.get("stage1_implausible", 0) + rej.get("stage2_implausible", 0) + rej.get("stage3_implausible", 0)
        > 0
    )
    details = store.rejections(summary.run_id)
    assert set(details.loc[details["reason"] == "refusal", "text"]) == {REFUSAL_TEXT}


def test_identical_tuples_are_validated_once_within_and_across_runs(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.005) as srv:
        first = run_generation(spec, _config(srv, per_emotion=4), store)
        asked: dict[str, list[str]] = {}
        for r in srv.chat_requests:
            if r.body and "response_format" in r.body:
                _, user = (m["content"] for m in r.body["messages"])
                lines = [re.sub(r"^\[\d+\] ", "", x) for x in user.splitlines()[1:]]
                # by stage (the schema name): the ramped first batches of 1 use the one-verdict prompt
                stage = re.sub(r"_verdicts?$", "", r.body["response_format"]["json_schema"]["name"])
                asked.setdefault(stage, []).extend(lines)
        n_before = len(srv.chat_requests)
        # same seed and spec: the same candidates, every verdict now comes from the cross-run cache
        second = run_generation(spec, _config(srv, per_emotion=4), RunStore(tmp_path / "runs.sqlite"))
        new = srv.chat_requests[n_before:]
    assert len(asked) == 3  # the three validated stages
    for lines in asked.values():
        assert len(lines) == len(set(lines))  # no tuple asked twice
    assert first.state == second.state == "done"
    assert all(r.body and "response_format" not in r.body for r in new)
    funnel = store.funnel(second.run_id)
    assert all(
        st["cached"] == sum(st[v] for v in ("natural", "rare but plausible", "implausible"))
        for st in funnel["stages"].values()
    )


def test_in_flight_identical_tuples_share_one_call(tmp_path: Path, spec: Spec) -> None:
    row = {c: "x" for c in spec.stage_columns(1)}

    async def go(srv: FakeOpenAIServer) -> list[Any]:
        async with LLMClient(_settings(srv)) as client:
            v = Validator(spec, RunStore(tmp_path / "s.sqlite"), client, batch_size=4)
            return await asyncio.gather(v.verdicts(1, [row]), v.verdicts(1, [row, row]))

    with FakeOpenAIServer(latency=0.2) as srv:
        a, b = asyncio.run(go(srv))
        assert len(srv.chat_requests) == 1
    assert a[0].verdict == b[0].verdict == b[1].verdict == "natural"
    assert not a[0].cached and b[0].cached and b[1].cached


@pytest.mark.parametrize(
    ("method", "stages", "validate"),
    [
        ("attrprompt", "123", True),
        ("priorwork", "123", True),
        ("personagen", "1", True),
        ("personagen", "12", True),
        ("personagen", "123", False),
    ],
)
def test_methods_and_ablations(tmp_path: Path, spec: Spec, method: str, stages: str, validate: bool) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.002) as srv:
        summary = run_generation(
            spec, _config(srv, method=method, stages=stages, validate=validate, per_emotion=2), store
        )
        bodies = [r.body for r in srv.chat_requests if r.body]
    assert summary.state == "done"
    _assert_exact(store, summary.run_id, 2)
    validations = [b for b in bodies if "response_format" in b]
    generations = [b for b in bodies if "response_format" not in b]
    texts = store.texts(summary.run_id)
    assert set(texts["method"]) == {method}
    if method != "personagen" or not validate:
        assert validations == []
    else:
        n_stages = len(stages)
        # one schema per stage (stageN_verdict for the ramped one-candidate first calls, stageN_verdicts)
        stage_names = {b["response_format"]["json_schema"]["name"].rstrip("s") for b in validations}
        assert stage_names == {f"stage{k}_verdict" for k in stages}
    with_scene = [b for b in generations if "Scene:" in b["messages"][1]["content"]]
    assert (len(with_scene) == len(generations)) == ("3" in stages)
    attr_cols = set(texts.columns) - {
        "text_id",
        "run_id",
        "method",
        "emotion",
        "text",
        "model",
        "persona_id",
        "persona",
        "scenario",
    }
    verdict_cols = {f"{k}_stage{s}" for s in (1, 2, 3) for k in ("verdict", "reason")}
    expected = {c for s in (1, 2, 3) if str(s) in stages for c in spec.stage_columns(s)}
    assert attr_cols - verdict_cols == expected and verdict_cols <= attr_cols
    # Each text carries the verdicts of the stages its method validated (kept ones), None elsewhere.
    for s in (1, 2, 3):
        validated = method == "personagen" and validate and str(s) in stages
        col = texts[f"verdict_stage{s}"]
        if validated:
            assert set(col) <= {"natural", "rare but plausible"} and col.notna().all()
        else:
            assert col.isna().all()


def test_token_budget_stops_cleanly_and_resume_finishes(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.002) as srv:
        cfg = _config(srv, token_budget=4000, per_emotion=4)
        first = run_generation(spec, cfg, store)
        assert first.state == "stopped" and first.stop_reason == "token_budget"
        assert not first.complete and "resume" in (first.message or "")
        assert "--" not in (first.message or "")  # the core names the setting; the shells add flag or field
        assert store.run(first.run_id)["status"] == "stopped"
        done_before = store.accepted_counts(first.run_id)
        second = resume_generation(store, first.run_id, llm=_settings(srv), token_budget=10**7)
    assert second.state == "done" and second.run_id == first.run_id
    _assert_exact(store, first.run_id, 4)
    assert all(second.accepted[e] >= n for e, n in done_before.items())
    assert store.run(first.run_id)["sessions"] == 2


def test_run_stored_by_an_older_version_resumes(tmp_path: Path, spec: Spec) -> None:
    """A config stored before the renames (run budget ``max_tokens``, ``llm.verdict_reasons``) still loads
    and resumes, and ``max_tokens=`` is still accepted as the resume override of the token budget."""
    import json
    import sqlite3

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.002) as srv:
        first = run_generation(spec, _config(srv, token_budget=4000, per_emotion=4, verdict_reasons="rejected"),
                               store)
        assert first.state == "stopped"
        old = store.run(first.run_id)["config"]
        old["max_tokens"] = old.pop("token_budget")
        old["llm"]["verdict_reasons"] = old.pop("verdict_reasons")
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE runs SET config_json = ?, stop_reason = 'max_tokens' WHERE run_id = ?",
                       (json.dumps(old), first.run_id))
        assert GenerationConfig.model_validate(old).token_budget == 4000
        assert GenerationConfig.model_validate(old).verdict_reasons == "rejected"
        # max_tokens: the token budget's former name as a resume override
        second = resume_generation(store, first.run_id, llm=_settings(srv), max_tokens=10**7)
        systems = [r.body["messages"][0]["content"] for r in srv.chat_requests
                   if r.body and "response_format" in r.body]
    assert second.state == "done"
    _assert_exact(store, first.run_id, 4)
    assert systems and all('for an "implausible" verdict only' in m for m in systems)
    with pytest.raises(Exception, match="token_budget only"):
        GenerationConfig.model_validate({**old, "token_budget": 5})


def test_cancel_from_another_thread_then_resume(tmp_path: Path, spec: Spec) -> None:
    store_path = tmp_path / "runs.sqlite"
    cancel = threading.Event()
    result: dict[str, Any] = {}

    def on_event(ev: ProgressEvent) -> None:
        if sum(ev.accepted.values()) >= 1:
            cancel.set()

    with FakeOpenAIServer(latency=0.05) as srv:
        cfg = _config(srv, per_emotion=6)
        # run_generation owns its event loop, so it runs in a worker thread as the dashboard does
        t = threading.Thread(
            target=lambda: result.update(
                s=run_generation(spec, cfg, RunStore(store_path), on_event=on_event, cancel=cancel)
            )
        )
        t.start()
        t.join(timeout=60)
        summary = result["s"]
        assert summary.state == "cancelled" and not summary.complete
        store = RunStore(store_path)
        assert store.run(summary.run_id)["status"] == "cancelled"
        resumed = resume_generation(store, summary.run_id, llm=_settings(srv))
    assert resumed.state == "done"
    _assert_exact(store, summary.run_id, 6)


def test_max_attempts_stops_with_reason(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(ScriptedResponder(always_refuse=True)) as srv:
        summary = run_generation(spec, _config(srv, max_attempts=12), store)
    assert summary.state == "stopped" and summary.stop_reason == "max_attempts"
    assert store.accepted_counts(summary.run_id) == {}
    assert store.rejection_counts(summary.run_id)["refusal"] <= 12


def test_wrong_key_fails_without_leaking_it(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    wrong = "sk-wrong-key-aaaaaaaaaaaaaaaaaaaa"
    with FakeOpenAIServer(api_key=KEY) as srv:
        summary = run_generation(spec, _config(srv, llm=_settings(srv, api_key=wrong)), store)
    assert summary.state == "failed" and "rejected the API key" in (summary.message or "")
    assert wrong not in (summary.message or "")
    store.close()
    assert wrong.encode() not in (tmp_path / "runs.sqlite").read_bytes()


def test_bad_config_is_a_clear_error(tmp_path: Path, spec: Spec) -> None:
    with FakeOpenAIServer() as srv:
        with pytest.raises(SpecError, match="unknown emotion.*'rage'"):
            run_generation(spec, _config(srv, emotions=["joy", "rage"]), RunStore(tmp_path / "r.sqlite"))


def test_cost_estimate_and_actual_cost(tmp_path: Path, spec: Spec) -> None:
    cfg = GenerationConfig(per_emotion=100, llm=LLMSettings(base_url="http://x/v1", model="gpt-4.1-mini"))
    est = estimate_cost(spec, cfg)
    assert est.total_usd is not None and est.total_usd > 0
    assert set(est.by_type) == {
        "stage1 validation",
        "stage2 validation",
        "stage3 validation",
        "stage4 generation",
    }
    cheaper = estimate_cost(spec, cfg.model_copy(update={"validate_": False}))
    assert cheaper.total_usd is not None and cheaper.total_usd < est.total_usd
    # a priced model name makes the run's actual cost positive and equal to the sum over calls
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as srv:
        summary = run_generation(
            spec, _config(srv, llm=_settings(srv, model="gpt-4.1-mini"), per_emotion=1), store
        )
    assert summary.cost > 0 and summary.cost == pytest.approx(
        float(store.usage(summary.run_id)["cost"].sum())
    )


def test_texts_per_persona_reuses_each_validated_candidate(tmp_path: Path, spec: Spec) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.002) as srv:
        summary = run_generation(spec, _config(srv, texts_per_persona=3, per_emotion=4), store)
    assert summary.state == "done"
    _assert_exact(store, summary.run_id, 4)
    uses = store.texts(summary.run_id)["persona_id"].value_counts()
    assert uses.max() <= 3 and (uses > 1).any()  # several texts per persona, never more than three
    assert store.funnel(summary.run_id)["sampled"] < 12  # fewer candidates than texts


def test_a_failing_progress_callback_does_not_stop_the_run(tmp_path: Path, spec: Spec) -> None:
    calls: list[int] = []

    def broken(ev: ProgressEvent) -> None:
        calls.append(1)
        raise ValueError("display crashed")

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as srv:
        summary = run_generation(spec, _config(srv, per_emotion=1), store, on_event=broken)
    assert summary.state == "done" and len(calls) >= 2
    _assert_exact(store, summary.run_id, 1)


def test_unusable_batch_answers_fall_back_to_one_call_per_candidate(tmp_path: Path, spec: Spec) -> None:
    base = DefaultResponder(seed=1, choices={"verdict": "rare but plausible"})

    def no_batches(body: dict[str, Any]) -> Any:
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        if "verdicts" in schema.get("properties", {}):
            return {"verdicts": []}  # violates minItems: the client retries, then gives up
        return base(body)

    rows = [{c: f"v{i}" for c in spec.stage_columns(1)} for i in range(3)]

    async def go(srv: FakeOpenAIServer) -> list[Any]:
        async with LLMClient(_settings(srv, max_retries=1)) as client:
            return await Validator(spec, RunStore(tmp_path / "s.sqlite"), client, batch_size=8).verdicts(
                1, rows
            )

    with FakeOpenAIServer(no_batches) as srv:
        verdicts = asyncio.run(go(srv))
        schemas = [r.body["response_format"]["json_schema"]["schema"] for r in srv.chat_requests if r.body]
    assert [v.verdict for v in verdicts] == ["rare but plausible"] * 3
    assert sum("verdicts" in s["properties"] for s in schemas) == 2  # one batch call + one retry
    assert sum("verdict" in s["properties"] for s in schemas) == 3  # then one call per candidate


def test_reasons_for_rejected_verdicts_only(tmp_path: Path, spec: Spec) -> None:
    """verdict_reasons="rejected": verdict first, a reason for "implausible" only, one candidate too."""
    assert GenerationConfig().verdict_reasons == "all"  # the paper's order unless asked
    with pytest.raises(LLMError, match="setting of the run"):  # no longer an LLM setting: said plainly
        LLMSettings.from_env({}, verdict_reasons="rejected")

    def answer(body: dict[str, Any]) -> Any:
        n = body["response_format"]["json_schema"]["schema"]["properties"]["verdicts"]["maxItems"]
        items = [{"id": 0, "verdict": "implausible", "reason": "a child cannot be a surgeon"}]
        return {"verdicts": items + [{"id": i, "verdict": "natural"} for i in range(1, n)]}

    rows = [{c: f"v{i}" for c in spec.stage_columns(1)} for i in range(4)]

    async def go(srv: FakeOpenAIServer) -> tuple[list[Any], list[Any]]:
        async with LLMClient(_settings(srv)) as client:
            v = Validator(spec, RunStore(tmp_path / "s.sqlite"), client, batch_size=8, reasons="rejected")
            return await v.verdicts(1, rows[:3]), await v.verdicts(1, rows[3:])

    with FakeOpenAIServer(answer) as srv:
        three, one = asyncio.run(go(srv))
        bodies = [r.body for r in srv.chat_requests if r.body]
    assert [(v.verdict, v.reason) for v in three] == [
        ("implausible", "a child cannot be a surgeon"), ("natural", ""), ("natural", "")]
    assert one[0].verdict == "implausible" and one[0].reason
    assert len(bodies) == 2  # the single candidate took one call, in the batch form
    for body in bodies:
        item = body["response_format"]["json_schema"]["schema"]["properties"]["verdicts"]["items"]
        shapes = [list(v["properties"]) for v in item["anyOf"]]
        assert shapes == [["id", "verdict"], ["id", "verdict", "reason"]]
        assert 'for an "implausible" verdict only' in body["messages"][0]["content"]
    # The client checks answers against the schema: a kept verdict with a reason, or an implausible one
    # without, is not a valid answer.
    import jsonschema

    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    for bad in ({"id": 0, "verdict": "natural", "reason": "x"}, {"id": 0, "verdict": "implausible"}):
        others = [{"id": i, "verdict": "natural"} for i in (1, 2)]
        assert not jsonschema.Draft202012Validator(schema).is_valid({"verdicts": [bad, *others]})


def test_cost_budget_stops_and_needs_a_price(tmp_path: Path, spec: Spec) -> None:
    from personagen_core.errors import BudgetExceeded

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as srv:
        priced = _settings(srv, model="gpt-4.1-mini")
        summary = run_generation(spec, _config(srv, llm=priced, max_cost=0.02, per_emotion=20), store)
        assert summary.state == "stopped" and summary.stop_reason == "max_cost"
        assert 0.01 <= summary.cost <= 0.02 and sum(summary.accepted.values()) > 0
        # a budget that cannot carry one batch of candidates to texts starts nothing, and says why
        fresh = RunStore(tmp_path / "fresh.sqlite")  # no cached verdicts (they would make candidates free)
        tiny = run_generation(spec, _config(srv, llm=priced, max_cost=0.002, per_emotion=20), fresh)
        assert (tiny.state, tiny.stop_reason, tiny.calls, tiny.cost) == ("stopped", "max_cost", 0, 0.0)
        assert "a new batch of 8 candidates needs up to $0.0" in (tiny.message or "")
        unpriced = _settings(srv, model="my-own-model")
        with pytest.raises(BudgetExceeded, match="needs a price for model 'my-own-model'"):
            run_generation(spec, _config(srv, llm=unpriced, max_cost=1.0), store)


def test_server_side_refusal_and_duplicate_faults(tmp_path: Path, spec: Spec) -> None:
    """The server's own refusal/duplicate faults hit whatever request comes: on a validation call they are
    malformed JSON (retried), on a generation call they are a rejected output. Either way nothing slips in."""
    store = RunStore(tmp_path / "runs.sqlite")
    faults = {i: ("refusal" if i % 2 else "duplicate") for i in range(2, 30, 3)}
    with FakeOpenAIServer(faults=faults) as srv:
        summary = run_generation(spec, _config(srv, per_emotion=4), store)
        hit = [r for r in srv.chat_requests if r.fault == "refusal"]
    assert summary.state == "done"
    _assert_exact(store, summary.run_id, 4)
    texts = store.texts(summary.run_id)["text"]
    assert not texts.str.contains("I'm sorry").any() and not texts.str.startswith("{").any()
    refused_generations = sum(1 for r in hit if r.body and "response_format" not in r.body)
    assert store.rejection_counts(summary.run_id).get("refusal", 0) == refused_generations
    usage = store.usage(summary.run_id)
    failed_validations = int(usage.loc[usage["stage"].isin([1, 2, 3]), "failed"].sum())
    assert failed_validations >= len(hit) - refused_generations  # each refused validation was retried


def test_validate_personas_records_verdicts_drops_and_reuses_the_cache(tmp_path: Path, spec: Spec) -> None:
    from personagen_core.generation.pipeline import funnel, validate_personas
    from personagen_core.personas.sampling import sample_personas

    personas = sample_personas(spec, 12, random_state=3)
    store = RunStore(tmp_path / "runs.sqlite")
    events: list[tuple[int, int, int]] = []
    verdicts = ["natural", "rare but plausible", "implausible"]
    responder = DefaultResponder(seed=1, choices={"verdict": verdicts})
    with FakeOpenAIServer(responder=responder) as srv:
        first = validate_personas(
            spec, personas, _settings(srv), store=store, batch_size=4, on_event=lambda *e: events.append(e)
        )
        n_first = len(srv.chat_requests)
        second = validate_personas(spec, personas, _settings(srv), store=RunStore(tmp_path / "runs.sqlite"))
        n_second = len(srv.chat_requests) - n_first
    assert list(first.columns[: len(personas.columns)]) == list(personas.columns)
    verdict_cols = [f"verdict_stage{s}" for s in (1, 2, 3)]
    dropped_somewhere = 0
    for _, row in first.iterrows():
        seen = [row[c] for c in verdict_cols]
        assert seen[0] in ("natural", "rare but plausible", "implausible")
        bad = [s for s, v in zip((1, 2, 3), seen) if isinstance(v, str) and v == "implausible"]
        if bad:  # dropped at its first implausible stage, never asked again afterwards
            dropped_somewhere += 1
            assert row["dropped_stage"] == bad[0] and not row["kept"]
            assert all(_isna(v) for v in seen[bad[0] :])
        else:
            assert _isna(row["dropped_stage"]) and row["kept"]
            assert all(v in ("natural", "rare but plausible") for v in seen)
            assert all(isinstance(row[f"reason_stage{s}"], str) for s in (1, 2, 3))
    assert 0 < dropped_somewhere < len(personas)
    f = funnel(first)
    assert f["sampled"] == 12 and f["stages"][1]["validated"] == 12
    assert f["stages"][2]["validated"] == f["stages"][1]["kept"]
    assert f["stages"][3]["validated"] == f["stages"][2]["kept"] and f["kept"] == f["stages"][3]["kept"]
    assert f["kept"] == int(first["kept"].sum())
    assert f["stages"][1]["implausible"] == int((first["dropped_stage"] == 1).sum())
    assert events and events[-1][0] == 3 and {e[0] for e in events} == {1, 2, 3}
    # Stage batches of 4: 3 calls at stage 1, at least one at each later stage (unless everyone dropped).
    assert n_first >= 3 and first.attrs["validation"]["llm_verdicts"] > 0
    # The second call finds every verdict in the store's cross-run cache: no request, same answers.
    assert n_second == 0 and second.attrs["validation"]["llm_verdicts"] == 0
    assert second["cached_stage1"].all()
    for c in [*verdict_cols, "kept", "dropped_stage"]:
        assert second[c].astype(str).tolist() == first[c].astype(str).tolist()


def test_validate_personas_without_store_and_bad_input(spec: Spec) -> None:
    from personagen_core.errors import DataError
    from personagen_core.generation.pipeline import validate_personas
    from personagen_core.personas.sampling import sample_personas

    personas = sample_personas(spec, 3, random_state=0)
    with FakeOpenAIServer() as srv:
        out = validate_personas(spec, personas, _settings(srv), stages=(1,))
        assert len(srv.chat_requests) == 1  # three personas share one batched call
        with pytest.raises(DataError, match="stages"):
            validate_personas(spec, personas, _settings(srv), stages=(4,))
        with pytest.raises(DataError, match="age"):
            validate_personas(spec, personas.drop(columns=["age"]), _settings(srv))
        cancel = threading.Event()
        cancel.set()
        stopped = validate_personas(spec, personas, _settings(srv), cancel=cancel)
        assert len(srv.chat_requests) == 1 and stopped.attrs["validation"]["cancelled"]
    assert list(out["verdict_stage1"]) == ["natural"] * 3 and out["kept"].all()
    assert "verdict_stage2" not in out and out["dropped_stage"].isna().all()
    assert stopped["kept"].isna().all() and stopped["verdict_stage1"].isna().all()


def _isna(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_budget_overshoot_at_concurrency_32_is_bounded_by_one_call(tmp_path: Path, spec: Spec) -> None:
    """Every attempt reserves its worst case (prompt + max_tokens) before it is sent and is admitted only
    while spent + reserved is below the limit (a new batch of candidates: only while its way to texts fits
    too). At concurrency 32 the run ends past --max-cost by at most one call's worst case, reports the
    overshoot and the calls in flight when the budget was reached, and its money went into texts."""
    from personagen_core.generation import pricing

    for limit in (0.01, 0.04):
        store = RunStore(tmp_path / f"runs-{limit}.sqlite")
        with FakeOpenAIServer(latency=0.05) as srv:
            llm = _settings(srv, model="gpt-4.1-mini", concurrency=32)
            config = _config(srv, llm=llm, max_cost=limit, per_emotion=300, emotions=["joy", "fear"])
            summary = run_generation(spec, config, store)
            bodies = [r.body for r in srv.chat_requests if r.body]
            peak = srv.max_in_flight
        assert summary.state == "stopped" and summary.stop_reason == "max_cost"
        totals = store.totals(summary.run_id)
        assert abs(totals["cost"] - summary.cost) < 1e-12 and totals["calls"] == len(bodies)
        worst_one = max(
            pricing.cost("gpt-4.1-mini", int(len(" ".join(m["content"] for m in b["messages"])) / 4 * 1.1) + 1,
                         int(b.get("max_tokens") or 1024))
            or 0.0
            for b in bodies
        )
        budget = summary.budget
        assert budget is not None and budget["limit"] == limit and budget["spent"] == summary.cost
        assert budget["overshoot"] == max(0.0, summary.cost - limit)
        assert summary.cost <= limit + worst_one  # at most one admitted call reaches past the limit
        assert budget["in_flight"] >= 1 and budget["overshoot"] <= budget["in_flight_worst"]
        # the budget went into texts (the old admission spent $0.01 on validation alone, 0 texts)
        assert summary.cost >= limit / 2 and sum(summary.accepted.values()) >= 8
        assert 1 < peak <= 32
        assert "over by $" in (summary.message or "") and "calls were in flight" in (summary.message or "")


def test_two_concurrent_resumes_one_runs_the_other_is_refused(tmp_path: Path, spec: Spec) -> None:
    from personagen_core.store import RunBusyError

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.05) as srv:
        first = run_generation(spec, _config(srv, token_budget=800, per_emotion=6), store)
        assert first.state == "stopped"
        barrier = threading.Barrier(2)
        results: list[Any] = []

        def resume() -> None:
            barrier.wait()
            try:
                results.append(
                    resume_generation(store, first.run_id, llm=_settings(srv), token_budget=10_000_000)
                )
            except RunBusyError as exc:
                results.append(exc)

        threads = [threading.Thread(target=resume) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    busy = [r for r in results if isinstance(r, RunBusyError)]
    done = [r for r in results if not isinstance(r, RunBusyError)]
    assert len(busy) == 1 and len(done) == 1, results
    assert "is being generated right now by this process" in str(busy[0])
    assert done[0].state == "done"
    info = store.run(first.run_id)
    assert info["status"] == "done" and info["sessions"] == 2 and info["lease"] is None
    _assert_exact(store, first.run_id, 6)


def test_output_checks_reject_the_fake_servers_bad_texts_and_count_them(tmp_path: Path, spec: Spec) -> None:
    """Cut-off texts (finish_reason length), a 5,000-character sentence, German and Spanish texts: each is
    rejected with its own reason, recorded with the text, counted in the funnel and shown by `runs show`."""
    from typer.testing import CliRunner

    from personagen_core.cli import app

    store = RunStore(tmp_path / "runs.sqlite")
    faults = ["length", "long", "german", "spanish", "length", "german"]
    with FakeOpenAIServer(faults=faults) as srv:  # no validation: every chat request is a generation
        summary = run_generation(
            spec, _config(srv, emotions=["joy"], per_emotion=4, validate=False, llm=_settings(srv, concurrency=1)),
            store,
        )
    assert summary.state == "done"
    expected = {"truncated": 2, "too_long": 1, "off_language": 3}
    assert {k: v for k, v in summary.rejections.items() if k in expected} == expected
    funnel = store.funnel(summary.run_id)
    assert {k: funnel["output_rejections"].get(k) for k in expected} == expected
    assert funnel["generated"] == funnel["accepted"] + sum(funnel["output_rejections"].values()) == 4 + 6
    rej = store.rejections(summary.run_id).set_index("reason")
    assert rej.loc["too_long", "detail"].startswith("4991 characters, at most 300")
    assert set(rej.loc["off_language", "detail"]) == {"language 'de', expected 'en'", "language 'es', expected 'en'"}
    assert rej.loc["truncated", "text"].tolist() and not rej.loc["truncated", "text"].iloc[0].endswith(".")
    texts = store.texts(summary.run_id)["text"]
    assert len(texts) == 4 and (texts.str.len() <= 300).all()
    out = CliRunner().invoke(app, ["runs", "show", summary.run_id, "--db", str(store.path)]).output
    for line in ("rejected: off_language", "rejected: truncated", "rejected: too_long", "4 accepted of 10"):
        assert line in out, out


@pytest.mark.parametrize("validate", [True, False])
def test_cost_estimate_within_25_percent_of_a_fake_server_run(tmp_path: Path, spec: Spec, validate: bool) -> None:
    """The estimate stored with the run is what `runs show` compares with the actual cost."""
    from typer.testing import CliRunner

    from personagen_core.cli import app

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer() as srv:
        llm = _settings(srv, model="gpt-4.1-mini", concurrency=16)
        config = _config(srv, llm=llm, per_emotion=25, emotions=None, validate=validate, seed=2)
        summary = run_generation(spec, config, store)
    assert summary.state == "done"
    est = store.estimate(summary.run_id)
    assert est is not None and est["total_usd"] == pytest.approx(estimate_cost(spec, config).total_usd)
    ratio = summary.cost / est["total_usd"]
    assert 0.75 <= ratio <= 1.25, ratio
    out = CliRunner().invoke(app, ["runs", "show", summary.run_id, "--db", str(store.path)]).output
    assert f"${est['total_usd']:.4f}; actual:" in out and f"{ratio:.2f}x the estimate" in out, out


def test_no_retry_starts_after_a_stop(tmp_path: Path, spec: Spec) -> None:
    """Two generations are under way: the first request gets a 500 and waits to retry, the second is
    answered with a refusal whose rejection uses up --max-attempts. The retry is never sent: the run
    stopped. (A loopback endpoint starts at one call at a time, so the requests arrive in this order.)"""
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(responder=ScriptedResponder(always_refuse=True), faults=["500", None, None]) as srv:
        llm = _settings(srv, concurrency=2, backoff_base=0.6, backoff_max=0.6)
        config = _config(srv, llm=llm, emotions=["joy"], per_emotion=5, validate=False, max_attempts=2)
        summary = run_generation(spec, config, store)
        statuses = [r.status for r in srv.chat_requests]
    assert summary.state == "stopped" and summary.stop_reason == "max_attempts"
    assert statuses == [500, 200]  # the 500's retry was refused by the stopped run
    assert summary.rejections == {"refusal": 1}
    assert store.totals(summary.run_id)["calls"] == 2


def test_a_session_that_lost_its_lease_stops(tmp_path: Path, spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    """If another process took the run over (this session's heartbeat stalled past the lease TTL), the
    session notices at its next heartbeat and stops instead of writing beside the new holder."""
    import sqlite3

    from personagen_core.generation import _scheduler

    monkeypatch.setattr(_scheduler, "HEARTBEAT_S", 0.2)
    store = RunStore(tmp_path / "runs.sqlite")
    taken = threading.Event()

    def take_over(ev: ProgressEvent) -> None:
        if sum(ev.accepted.values()) >= 1 and not taken.is_set():
            taken.set()
            with sqlite3.connect(store.path) as conn:
                conn.execute("UPDATE leases SET owner = 'someone-else' WHERE run_id = ?", (ev.run_id,))

    with FakeOpenAIServer(latency=0.1) as srv:
        summary = run_generation(spec, _config(srv, per_emotion=30, llm=_settings(srv, concurrency=1)), store,
                                 on_event=take_over)
    assert taken.is_set()
    assert summary.state == "failed" and "lost its lease" in (summary.message or "")
    assert sum(summary.accepted.values()) < 90
    assert store.lease(summary.run_id).owner == "someone-else"  # type: ignore[union-attr]  # left alone


def test_token_budget_at_concurrency_32_overshoots_by_at_most_one_call(tmp_path: Path, spec: Spec) -> None:
    import math

    store = RunStore(tmp_path / "runs.sqlite")
    limit = 20_000
    with FakeOpenAIServer(latency=0.05) as srv:
        config = _config(srv, llm=_settings(srv, concurrency=32), token_budget=limit, per_emotion=300,
                         emotions=["joy", "fear"])
        summary = run_generation(spec, config, store)
        worst_one = max(
            math.ceil(math.ceil(len(" ".join(m["content"] for m in r.body["messages"])) / 4) * 1.1)
            + int(r.body.get("max_tokens") or 1024)
            for r in srv.chat_requests
            if r.body
        )
    assert summary.state == "stopped" and summary.stop_reason == "token_budget"
    # it stops once no admitted call fits (past the limit by at most one call) or once a new batch of
    # candidates could not be carried to texts (below the limit by less than that batch's worst case)
    assert limit / 2 < summary.tokens <= limit + worst_one and sum(summary.accepted.values()) > 0
    budget = summary.budget
    assert budget is not None and budget["overshoot"] == max(0, summary.tokens - limit) <= budget["in_flight_worst"]
    assert summary.tokens == store.totals(summary.run_id)["tokens"]


_REPORTING_RUN = """
import json, sys
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig, run_generation
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore

url, db, log = sys.argv[1:4]
out = open(log, "a", encoding="utf-8")

def on_event(ev):
    out.write(json.dumps(ev.accepted) + "\\n")  # what the run reported accepted, in order
    out.flush()

cfg = GenerationConfig(emotions=["joy", "fear"], per_emotion=80, seed=3, llm=LLMSettings(
    base_url=url, api_key="sk-x", model="fake-model", concurrency=16, backoff_base=0.01, backoff_max=0.05))
run_generation(load_pack("japan"), cfg, RunStore(db), on_event=on_event)
"""


def test_kill_9_with_batched_text_writes_keeps_what_was_reported_and_resume_is_exact(
    tmp_path: Path, spec: Spec
) -> None:
    """Accepted texts are committed in groups, not one transaction each: a kill -9 may lose the texts of
    the last group, never one the run had reported, and a resume still ends on the exact quotas."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    db, log = tmp_path / "runs.sqlite", tmp_path / "events.jsonl"
    with FakeOpenAIServer(latency=0.01) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", _REPORTING_RUN, srv.base_url, str(db), str(log)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        reported: dict[str, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
            if lines and sum(json.loads(lines[-1]).values()) >= 40:
                break
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        reported = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
        assert sum(reported.values()) >= 40

        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        on_disk = store.accepted_counts(run_id)
        assert all(on_disk.get(e, 0) >= n for e, n in reported.items()), (reported, on_disk)
        assert sum(on_disk.values()) < 160  # killed mid-run
        resumed = resume_generation(store, run_id, llm=_settings(srv, concurrency=16))
    assert resumed.state == "done"
    _assert_exact(store, run_id, 80, emotions=["joy", "fear"])

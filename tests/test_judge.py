"""The LLM judge against the fake OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pandas as pd
import pytest

from personagen_core.errors import DataError, LLMResponseError
from personagen_core.evaluation.judge import (
    JUDGE_CRITERIA,
    ajudge_texts,
    judge_key,
    judge_texts,
    parse_scores,
    summarise_scores,
)
from personagen_core.generation.llm import LLMClient, LLMSettings
from personagen_core.testing.fake_openai import FakeOpenAIServer


def _responder(body: dict[str, Any]) -> dict[str, Any]:
    """Scores that depend on the text, so the test can check each text got its own answer."""
    prompt = json.dumps(body["messages"])
    assert body["response_format"]["type"] == "json_schema"  # constrained output was asked for
    good = "great" in prompt
    return {
        "emotion_match": 5 if good else 2,
        "grammaticality": 4,
        "lexical_diversity": 3 if good else 1,
        "structure_logic": 4,
    }


def _settings(srv: FakeOpenAIServer, **kw: Any) -> LLMSettings:
    return LLMSettings(
        backend="openai",
        base_url=srv.base_url,
        api_key="sk-test-key-123456",
        model="gen-model",
        models={"judge": "judge-model"},
        max_retries=1,
        backoff_base=0.0,
        **kw,
    )


FRAME = pd.DataFrame(
    {
        "text": ["What a great day at the park!", "I lost my keys again.", "What a great day at the park!"],
        "label": ["joy", "anger", "joy"],
    }
)


def test_judge_scores_each_text_with_the_judge_model_and_schema() -> None:
    with FakeOpenAIServer(_responder) as srv:
        scores = judge_texts(FRAME, _settings(srv))
        bodies = [r.body for r in srv.chat_requests]
    # The duplicate (text, emotion) is asked once.
    assert len(bodies) == 2
    assert {b["model"] for b in bodies} == {"judge-model"}
    assert list(scores.columns) == ["text", "label", *JUDGE_CRITERIA, "cached", "error"]
    assert scores["emotion_match"].tolist() == [5.0, 2.0, 5.0]
    assert scores["lexical_diversity"].tolist() == [3.0, 1.0, 3.0]
    assert not scores["cached"].any()


def test_judge_cache_in_memory_avoids_second_calls() -> None:
    cache: dict[tuple[str, str], dict[str, int]] = {}
    with FakeOpenAIServer(_responder) as srv:
        first = judge_texts(FRAME, _settings(srv), cache=cache)
        n_first = len(srv.chat_requests)
        second = judge_texts(FRAME, _settings(srv), cache=cache)
        n_second = len(srv.chat_requests)
    assert n_first == 2 and n_second == 2  # nothing new asked
    assert second["cached"].all()
    assert second[list(JUDGE_CRITERIA)].equals(first[list(JUDGE_CRITERIA)])
    assert ("judge-model", judge_key(FRAME["text"][0], "joy")) in cache


def test_judge_cache_depends_on_model_and_emotion() -> None:
    cache: dict[tuple[str, str], dict[str, int]] = {}
    with FakeOpenAIServer(_responder) as srv:
        judge_texts(FRAME, _settings(srv), cache=cache)
        other = _settings(srv).model_copy(update={"models": {"judge": "another-judge"}})
        judge_texts(FRAME.iloc[:1], other, cache=cache)
        relabelled = FRAME.iloc[:1].assign(label="sadness")
        judge_texts(relabelled, _settings(srv), cache=cache)
        assert len(srv.chat_requests) == 4


def test_judge_cache_in_run_store(tmp_path) -> None:
    from personagen_core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen",
        config={},
        target={"joy": 2, "anger": 1},
        spec_yaml=None,
        spec_hash=None,
        spec_name=None,
    )
    frame = FRAME.assign(run_id=run_id, text_id=[1, 2, 3])
    with FakeOpenAIServer(_responder) as srv:
        judge_texts(frame, _settings(srv), store=store)
        again = judge_texts(frame, _settings(srv), store=store)
        assert len(srv.chat_requests) == 2
    assert again["cached"].all()
    saved = store.judge_scores(run_id)
    assert sorted(saved["text_id"].tolist()) == [1, 2, 3]
    assert set(saved["model"]) == {"judge-model"}
    # A fresh process (new store object, no in-memory cache) still finds the scores.
    with FakeOpenAIServer(_responder) as srv:
        third = judge_texts(FRAME, _settings(srv), store=RunStore(tmp_path / "runs.sqlite"))
        assert srv.chat_requests == []
    assert third["cached"].all()


def test_unusable_answer_is_kept_as_failed_not_fatal() -> None:
    def bad(body: dict[str, Any]) -> dict[str, Any]:
        if "keys" in json.dumps(body["messages"]):
            return {"emotion_match": 9, "grammaticality": 4, "lexical_diversity": 3, "structure_logic": 4}
        return _responder(body)

    with FakeOpenAIServer(bad) as srv:
        scores = judge_texts(FRAME, _settings(srv))
    failed = scores[scores["label"] == "anger"].iloc[0]
    assert math.isnan(failed["emotion_match"]) and failed["error"]
    summary = summarise_scores(scores)
    assert summary["n_failed"] == 1 and summary["n_scored"] == 2


def test_concurrency_is_used() -> None:
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(12)], "label": ["joy"] * 12})

    async def run(srv: FakeOpenAIServer) -> pd.DataFrame:
        async with LLMClient(_settings(srv, concurrency=6)) as client:
            return await ajudge_texts(frame, client)

    with FakeOpenAIServer(_responder, latency=0.15) as srv:
        scores = asyncio.run(run(srv))
        assert srv.max_in_flight > 1
    assert len(scores) == 12


def test_parse_scores_rejects_bad_answers() -> None:
    ok = {c: 3 for c in JUDGE_CRITERIA}
    assert parse_scores(ok) == ok
    with pytest.raises(LLMResponseError, match="grammaticality"):
        parse_scores({**ok, "grammaticality": 0})
    with pytest.raises(LLMResponseError, match="structure_logic"):
        parse_scores({k: v for k, v in ok.items() if k != "structure_logic"})
    with pytest.raises(LLMResponseError):
        parse_scores(["not", "an", "object"])


def test_summary_distributions_and_per_emotion() -> None:
    scores = pd.DataFrame(
        {
            "text": list("abcd"),
            "label": ["joy", "joy", "fear", "fear"],
            "emotion_match": [5, 4, 2, 2],
            "grammaticality": [5, 5, 5, 5],
            "lexical_diversity": [1, 2, 3, 4],
            "structure_logic": [3, 3, 3, 3],
            "cached": [False] * 4,
            "error": [None] * 4,
        }
    )
    s = summarise_scores(scores)
    assert s["distribution"]["emotion_match"] == {"1": 0, "2": 2, "3": 0, "4": 1, "5": 1}
    assert s["per_emotion"]["joy"]["emotion_match"] == 4.5
    assert s["per_emotion"]["fear"]["lexical_diversity"] == 3.5
    assert s["mean"]["grammaticality"] == 5.0


def test_missing_column_is_a_data_error() -> None:
    with FakeOpenAIServer(_responder) as srv, pytest.raises(DataError, match="label"):
        judge_texts(pd.DataFrame({"text": ["x"]}), _settings(srv))

"""The loopback OpenAI-compatible test server: format, default responder, faults, concurrency."""

from __future__ import annotations

import asyncio
import json
import random
import re

import httpx
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personagen_core.testing.fake_openai import (
    REFUSAL_TEXT,
    DefaultResponder,
    FakeOpenAIServer,
    instance_from_schema,
)

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["natural", "rare but plausible", "implausible"]},
        "reason": {"type": "string", "maxLength": 200},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}
BATCH_SCHEMA = {
    "type": "object",
    "properties": {
        "verdicts": {
            "type": "array",
            "minItems": 5,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 5},
                    "verdict": {"enum": ["natural", "rare but plausible", "implausible"]},
                    "reason": {"type": "string"},
                },
                "required": ["id", "verdict", "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["verdicts"],
    "additionalProperties": False,
}


def _chat(base_url: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{base_url}/chat/completions", json=body, headers={"Authorization": "Bearer sk-test-xyz"},
                      timeout=10)


def _content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def test_chat_completion_has_openai_shape_and_usage() -> None:
    with FakeOpenAIServer() as srv:
        assert srv.base_url.endswith("/v1")
        response = _chat(srv.base_url, "Write two sentences expressing the emotion: sadness.")
        models = httpx.get(f"{srv.base_url}/models", timeout=10).json()
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "chat.completion"
    assert payload["choices"][0]["message"]["role"] == "assistant"
    assert payload["choices"][0]["finish_reason"] == "stop"
    usage = payload["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert models["data"][0]["id"] == "fake-model"


def test_default_texts_are_distinct_short_and_name_the_emotion() -> None:
    responder = DefaultResponder(seed=3)
    body = {"messages": [{"role": "user", "content": "Target emotion: anger. Write at most two sentences."}]}
    texts = [responder(body) for _ in range(300)]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert isinstance(text, str)
        assert "anger" in text
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", text)) <= 2


def test_default_texts_are_reproducible_by_seed() -> None:
    body = {"messages": [{"role": "user", "content": "emotion: joy"}]}

    def texts(seed: int) -> list[str]:
        responder = DefaultResponder(seed=seed)
        return [str(responder(body)) for _ in range(5)]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_json_schema_request_gets_a_valid_instance() -> None:
    with FakeOpenAIServer() as srv:
        fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": BATCH_SCHEMA, "strict": True}}
        response = _chat(srv.base_url, "Judge these 5 personas.", response_format=fmt)
    data = json.loads(_content(response))
    jsonschema.validate(data, BATCH_SCHEMA)
    assert [item["id"] for item in data["verdicts"]] == [1, 2, 3, 4, 5]


def test_schema_instances_cover_common_keywords() -> None:
    schema = {
        "type": "object",
        "$defs": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
        "properties": {
            "fluency": {"$ref": "#/$defs/score"},
            "ratio": {"type": "number", "minimum": 0.5, "maximum": 1.0},
            "ok": {"type": "boolean"},
            "label": {"type": ["string", "null"], "minLength": 3},
            "kind": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["a", "b"]}]},
            "texts": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        "required": ["fluency", "ratio", "ok", "label", "kind", "texts"],
    }
    value = instance_from_schema(schema, rng=random.Random(0), text_fn=lambda: "A text.")
    jsonschema.validate(value, schema)
    assert value["texts"] == ["A text.", "A text."]


def test_enum_choices_are_configurable() -> None:
    responder = DefaultResponder(seed=0, choices={"verdict": ["natural", "implausible"]})
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA}}
    verdicts = {responder({"messages": [], "response_format": fmt})["verdict"] for _ in range(50)}
    assert verdicts == {"natural", "implausible"}
    fixed = DefaultResponder(choices={"verdict": "rare but plausible"})
    assert fixed({"messages": [], "response_format": fmt})["verdict"] == "rare but plausible"


def test_json_mode_uses_a_schema_found_in_the_prompt() -> None:
    responder = DefaultResponder()
    prompt = "Is this persona plausible? Answer with JSON matching this schema:\n" + json.dumps(VERDICT_SCHEMA)
    data = responder({"messages": [{"role": "user", "content": prompt}], "response_format": {"type": "json_object"}})
    jsonschema.validate(data, VERDICT_SCHEMA)
    plain = responder({"messages": [{"role": "user", "content": "Give a plausibility verdict as JSON."}]})
    assert plain["verdict"] == "natural" and plain["reason"]


def test_scripted_faults_in_order() -> None:
    faults = ["429", "500", "refusal", "malformed_json", None, "duplicate"]
    with FakeOpenAIServer(faults=faults, retry_after=7) as srv:
        responses = [_chat(srv.base_url, "emotion: fear") for _ in range(7)]
        recorded = srv.chat_requests
    assert [r.status_code for r in responses] == [429, 500, 200, 200, 200, 200, 200]
    assert responses[0].headers["Retry-After"] == "7"
    assert _content(responses[2]) == REFUSAL_TEXT
    with pytest.raises(ValueError):
        json.loads(_content(responses[3]))
    assert _content(responses[5]) == _content(responses[4])
    assert _content(responses[6]) != _content(responses[5])
    assert [r.fault for r in recorded] == faults + [None]
    assert [r.index for r in recorded] == list(range(7))


def test_fault_plan_by_request_index_and_unknown_fault() -> None:
    with FakeOpenAIServer(faults={1: "500"}) as srv:
        codes = [_chat(srv.base_url, "hello").status_code for _ in range(3)]
    assert codes == [200, 500, 200]
    with pytest.raises(ValueError, match="unknown fault"):
        FakeOpenAIServer(faults=["boom"])


def test_drop_closes_without_a_response() -> None:
    with FakeOpenAIServer(faults=["drop"]) as srv:
        with pytest.raises(httpx.RemoteProtocolError):
            _chat(srv.base_url, "hello")
        assert _chat(srv.base_url, "hello").status_code == 200


def test_timeout_fault_stalls_past_the_client_timeout() -> None:
    with FakeOpenAIServer(faults=["timeout"], timeout_sleep=5) as srv, pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.base_url}/chat/completions", json={"messages": []}, timeout=0.3)


def test_reject_json_schema_like_llama_cpp() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA}}
    with FakeOpenAIServer(reject_json_schema=True) as srv:
        rejected = _chat(srv.base_url, "verdict?", response_format=fmt)
        accepted = _chat(srv.base_url, "verdict as JSON?", response_format={"type": "json_object"})
    assert rejected.status_code == 500
    assert "json_schema" in rejected.json()["error"]["message"]
    assert accepted.status_code == 200


def test_api_key_check_and_request_records_hold_no_key() -> None:
    with FakeOpenAIServer(api_key="sk-test-xyz") as srv:
        ok = _chat(srv.base_url, "hello")
        denied = httpx.post(f"{srv.base_url}/chat/completions", json={"messages": []},
                            headers={"Authorization": "Bearer sk-wrong"}, timeout=10)
        records = list(srv.requests)
    assert ok.status_code == 200 and denied.status_code == 401
    assert "sk-test-xyz" not in repr(records) and "sk-wrong" not in repr(records)
    assert records[0].headers["authorization"] == "<redacted>"


def test_custom_responder() -> None:
    with FakeOpenAIServer(responder=lambda body: {"echo": body["messages"][0]["content"]}) as srv:
        assert json.loads(_content(_chat(srv.base_url, "ping"))) == {"echo": "ping"}


def test_concurrent_requests_are_not_serialised() -> None:
    async def burst(base_url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "emotion: joy"}]}
            responses = await asyncio.gather(
                *[client.post(f"{base_url}/chat/completions", json=body) for _ in range(32)]
            )
        return [r.status_code for r in responses]

    with FakeOpenAIServer(latency=1.0) as srv:
        codes = asyncio.run(burst(srv.base_url))
        peak = srv.max_in_flight
    assert codes == [200] * 32
    # With 1 s per answer, serialised handling would keep at most one request in flight.
    assert peak >= 16


_LEAF = st.one_of(
    st.just({"type": "string"}),
    st.builds(lambda n: {"type": "string", "minLength": n}, st.integers(0, 30)),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-50, 50), st.integers(0, 10)),
    st.builds(lambda lo: {"type": "number", "minimum": lo}, st.floats(-5, 5, allow_nan=False)),
    st.just({"type": "boolean"}),
    st.builds(lambda vals: {"enum": vals}, st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4,
                                                    unique=True)),
)
_SCHEMA = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        st.builds(lambda props: {"type": "object", "properties": props, "required": sorted(props),
                                 "additionalProperties": False},
                  st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), children, max_size=4)),
        st.builds(lambda items, n: {"type": "array", "items": items, "minItems": n, "maxItems": n + 2},
                  children, st.integers(0, 3)),
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(schema=_SCHEMA, seed=st.integers(0, 1000))
def test_instances_satisfy_generated_schemas(schema: dict, seed: int) -> None:
    value = instance_from_schema(schema, rng=random.Random(seed), text_fn=lambda: "Some text.")
    jsonschema.validate(value, schema)


# -- faults of real endpoints (issue 12) ---------------------------------------------------------------------------
def test_bad_bodies_with_status_200() -> None:
    with FakeOpenAIServer(faults=["broken_body", "html", "no_choices"]) as srv:
        broken, html, empty = (_chat(srv.base_url, "hello") for _ in range(3))
    assert broken.status_code == html.status_code == empty.status_code == 200
    with pytest.raises(ValueError):
        json.loads(broken.text)
    assert html.headers["content-type"].startswith("text/html") and html.text.lstrip().startswith("<!DOCTYPE")
    assert "choices" not in empty.json()


def test_always_model_404_and_schema_mismatch() -> None:
    with FakeOpenAIServer(always="model_404") as srv:
        answers = [_chat(srv.base_url, "hello") for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert "`m` does not exist" in answers[0].json()["error"]["message"]
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA}}
    with FakeOpenAIServer(always="schema_mismatch") as srv:
        structured = _chat(srv.base_url, "verdict?", response_format=fmt)
        plain = _chat(srv.base_url, "Write one sentence about joy.")
    data = json.loads(structured.json()["choices"][0]["message"]["content"])
    assert not jsonschema.Draft202012Validator(VERDICT_SCHEMA).is_valid(data)
    assert "joy" in plain.json()["choices"][0]["message"]["content"]  # plain texts stay normal


def test_length_long_and_foreign_texts() -> None:
    with FakeOpenAIServer(faults=["length", "long", "german", "spanish", "german"]) as srv:
        cut, long_, de, es, de2 = (_chat(srv.base_url, "Write one sentence about joy.").json() for _ in range(5))
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"][-1] not in ".!?"
    long_text = long_["choices"][0]["message"]["content"]
    assert len(long_text) > 4000 and long_text.count(".") == 1
    de_text, de2_text = de["choices"][0]["message"]["content"], de2["choices"][0]["message"]["content"]
    assert re.search(r"\b(ich|als|weil|denn)\b", de_text) and de_text != de2_text
    assert re.search(r"\b(cuando|porque|me|mi)\b", es["choices"][0]["message"]["content"])


def test_serial_mode_serves_one_at_a_time_and_counts_abandoned() -> None:
    async def main(base_url: str) -> list[int | None]:
        async with httpx.AsyncClient(timeout=5) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            ok = await asyncio.gather(*(http.post(f"{base_url}/chat/completions", json=body) for _ in range(3)))
        async with httpx.AsyncClient(timeout=0.1) as impatient:  # gives up while the request is queued
            with pytest.raises(httpx.TimeoutException):
                await impatient.post(f"{base_url}/chat/completions", json=body)
        return [r.status_code for r in ok]

    with FakeOpenAIServer(serial=True, latency=0.2) as srv:
        statuses = asyncio.run(main(srv.base_url))
        for _ in range(50):  # the abandoned request is still computed, as llama.cpp's servers do
            if srv.abandoned:
                break
            asyncio.run(asyncio.sleep(0.05))
    assert statuses == [200, 200, 200]
    assert srv.max_in_flight >= 3 and srv.max_computing == 1  # connected at once, answered one by one
    assert srv.abandoned == 1


def test_llama_cpp_python_kind() -> None:
    with FakeOpenAIServer(kind="llama-cpp-python") as srv:
        info = httpx.get(f"http://127.0.0.1:{srv.port}/openapi.json", timeout=5).json()["info"]
        rejected = _chat(srv.base_url, "verdict?", response_format={
            "type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT_SCHEMA}})
        obeyed = _chat(srv.base_url, "verdict?", response_format={"type": "json_object", "schema": BATCH_SCHEMA})
    assert info["title"].endswith("llama.cpp Python API")
    assert rejected.status_code == 500 and "json_schema" in rejected.text
    jsonschema.validate(json.loads(obeyed.json()["choices"][0]["message"]["content"]), BATCH_SCHEMA)

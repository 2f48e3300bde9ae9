"""LLM client layer over real HTTP (FakeOpenAIServer on loopback) and httpx.MockTransport."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from personagen_core.errors import LLMAuthError, LLMConnectionError, LLMError, LLMResponseError
from personagen_core.generation.llm import (
    LOCAL_BASE_URL,
    CallRecord,
    Completion,
    LLMClient,
    LLMSettings,
    parse_json_text,
)
from personagen_core.testing.fake_openai import FakeOpenAIServer

KEY = "sk-test-SECRET-0123456789abcdef"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["natural", "rare but plausible", "implausible"]},
        "reason": {"type": "string"},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}
GEN = [{"role": "user", "content": "Write one sentence expressing the emotion: joy."}]
VAL = [{"role": "user", "content": "Is this persona plausible? A 34-year-old nurse in Osaka."}]


def _settings(base_url: str, **kw: Any) -> LLMSettings:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 30.0)  # generous: the machine running the tests may be loaded
    return LLMSettings(base_url=base_url, api_key=KEY, **kw)


def _run(base_url: str, calls: Callable[[LLMClient], Any], *, http_client: httpx.AsyncClient | None = None,
         **kw: Any) -> tuple[Any, list[CallRecord], LLMClient]:
    records: list[CallRecord] = []

    async def main() -> tuple[Any, LLMClient]:
        async with LLMClient(_settings(base_url, **kw), on_call=records.append, http_client=http_client,
                             random_state=0) as client:
            return await calls(client), client

    result, client = asyncio.run(main())
    return result, records, client


# -- settings ----------------------------------------------------------------------------------------------------
def test_from_env_is_local_without_key_or_url() -> None:
    settings = LLMSettings.from_env(env={})
    assert settings.backend == "local"
    assert settings.model == settings.local_model
    assert settings.effective_base_url == LOCAL_BASE_URL


def test_from_env_reads_openai_variables_and_overrides() -> None:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://example.test/v1"}
    settings = LLMSettings.from_env(env=env, model="gpt-4.1", concurrency=None, models={"judge": "gpt-4o"})
    assert settings.backend == "openai"
    assert settings.base_url == "http://example.test/v1"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert settings.concurrency == 16  # None overrides are ignored
    assert settings.model_for("generator") == "gpt-4.1"
    assert settings.model_for("judge") == "gpt-4o"
    with pytest.raises(LLMError, match="unknown LLM role"):
        settings.model_for("writer")


def test_key_absent_from_repr_dump_and_json() -> None:
    settings = LLMSettings(base_url="http://example.test/v1", api_key=KEY)
    for text in (repr(settings), str(settings), json.dumps(settings.model_dump()), settings.model_dump_json(),
                 repr(LLMClient(settings))):
        assert KEY not in text
    assert "api_key" not in settings.model_dump()


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        LLMSettings(base_url="http://x/v1", concurrency=0)
    with pytest.raises(ValueError):
        LLMSettings(base_url="http://x/v1", no_such_field=1)
    with pytest.raises(LLMError, match="base_url: .*http:// or https://") as info:
        LLMSettings.from_env(env={"OPENAI_API_KEY": KEY}, base_url="localhost:8000")
    assert KEY not in str(info.value)
    with pytest.raises(LLMError, match="concurrency"):
        LLMSettings.from_env(env={}, concurrency=0)


# -- plain completions and faults ------------------------------------------------------------------------------
def test_plain_completion_reports_usage() -> None:
    with FakeOpenAIServer() as srv:
        completion, records, _ = _run(srv.base_url, lambda c: c.complete(GEN, role="generator", temperature=1.2,
                                                                          max_tokens=60))
        body = srv.chat_requests[0].body
    assert isinstance(completion, Completion)
    assert "joy" in completion.text and completion.data is None and completion.mode == "text"
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0 and not completion.usage_estimated
    assert body["temperature"] == 1.2 and body["max_tokens"] == 60 and "response_format" not in body
    assert [(r.status, r.attempt, r.role) for r in records] == [("ok", 1, "generator")]
    assert records[0].prompt_tokens == completion.prompt_tokens


def test_grammar_reaches_only_the_embedded_backend() -> None:
    """A GBNF grammar is llama.cpp's extension: a remote OpenAI-compatible endpoint never receives it."""
    with FakeOpenAIServer() as srv:
        _run(srv.base_url, lambda c: c.complete(GEN, role="generator", grammar='root ::= "hi"'))
        assert "grammar" not in srv.chat_requests[0].body


@pytest.mark.parametrize(
    ("fault", "error_fragment"),
    [
        ("429", "HTTP 429"),
        ("500", "HTTP 500"),
        ("timeout", "timed out"),
        ("drop", "connection failed"),
        ("malformed_json", "malformed JSON"),
    ],
)
def test_every_fault_is_retried_and_reported(fault: str, error_fragment: str) -> None:
    # Faults on a structured call; the fallback must NOT be triggered by a single transient fault.
    with FakeOpenAIServer(faults=[fault], retry_after="0", timeout_sleep=10) as srv:
        completion, records, client = _run(
            srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA),
            # Short only where the fault needs it: a loaded machine must not turn other faults into timeouts.
            timeout=2.0 if fault == "timeout" else 30.0,
        )
        n_requests = len(srv.chat_requests)
    assert completion.data["verdict"] == "natural"
    assert completion.attempts == 2 and n_requests == 2
    assert [r.status for r in records] == ["retry", "ok"]
    assert error_fragment in (records[0].error or "")
    assert completion.mode == "json_schema"
    assert set(client.structured_modes.values()) == {"json_schema"}


def test_malformed_json_answer_keeps_its_billed_usage() -> None:
    with FakeOpenAIServer(faults=["malformed_json"]) as srv:
        _, records, _ = _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA))
    assert records[0].status == "retry" and records[0].completion_tokens > 0


def test_refusal_in_structured_mode_is_retried() -> None:
    with FakeOpenAIServer(faults=["refusal"]) as srv:
        completion, records, _ = _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA))
    assert completion.data["verdict"] == "natural"
    assert [r.status for r in records] == ["retry", "ok"]


def test_refusal_and_duplicate_texts_are_returned_as_text() -> None:
    # In text mode these are valid HTTP answers: the pipeline's output checks judge them.
    async def calls(client: LLMClient) -> list[str]:
        return [(await client.complete(GEN, role="generator")).text for _ in range(3)]

    with FakeOpenAIServer(faults=[None, "duplicate", "refusal"]) as srv:
        texts, records, _ = _run(srv.base_url, calls)
    assert texts[0] == texts[1]
    assert texts[2].startswith("I'm sorry")
    assert [r.status for r in records] == ["ok", "ok", "ok"]


def test_retries_exhausted_raise_with_every_attempt_reported() -> None:
    with FakeOpenAIServer(faults=["500"] * 3) as srv:
        with pytest.raises(LLMResponseError, match="after 3 attempts") as info:
            _run(srv.base_url, lambda c: c.complete(GEN, role="generator"), max_retries=2)
        assert len(srv.chat_requests) == 3
    assert srv.base_url in str(info.value)


def test_unreachable_endpoint_raises_connection_error() -> None:
    srv = FakeOpenAIServer().start()
    base_url = srv.base_url
    srv.stop()  # nothing listens on that port any more
    records: list[CallRecord] = []

    async def main() -> None:
        async with LLMClient(_settings(base_url, max_retries=2), on_call=records.append) as client:
            await client.complete(GEN, role="generator")

    with pytest.raises(LLMConnectionError, match="cannot reach") as info:
        asyncio.run(main())
    assert base_url in str(info.value) and KEY not in str(info.value)
    assert [r.status for r in records] == ["retry", "retry", "error"]


def test_non_retryable_http_error_fails_at_once() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "The model `nope` does not exist", "type": "x"}})

    records: list[CallRecord] = []

    async def main() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with LLMClient(_settings("http://mock.test/v1"), http_client=http, on_call=records.append) as c:
            await c.complete(GEN, role="generator")
        await http.aclose()

    with pytest.raises(LLMResponseError, match="HTTP 404.*does not exist"):
        asyncio.run(main())
    assert [r.status for r in records] == ["error"]


# -- Retry-After ------------------------------------------------------------------------------------------------
def _gap_between_requests(srv: FakeOpenAIServer) -> float:
    first, second = srv.chat_requests[:2]
    return second.time - first.time


def test_retry_after_seconds_is_honoured() -> None:
    with FakeOpenAIServer(faults=["429"], retry_after="1") as srv:
        completion, records, _ = _run(srv.base_url, lambda c: c.complete(GEN, role="generator"))
        gap = _gap_between_requests(srv)
    assert completion.attempts == 2 and records[0].http_status == 429
    assert gap >= 1.0 - 0.05


def test_retry_after_http_date_is_honoured() -> None:
    # An HTTP date has one-second resolution: "now + 2 s" waits between 1 and 2 s.
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    with FakeOpenAIServer(faults=["429"], retry_after=when) as srv:
        # server="openai": no detection GETs before the first call eat into the 2 s on a loaded machine.
        _run(srv.base_url, lambda c: c.complete(GEN, role="generator"), server="openai")
        gap = _gap_between_requests(srv)
    assert gap >= 1.0 - 0.05


def test_retry_after_holds_back_other_calls() -> None:
    async def calls(client: LLMClient) -> list[Completion]:
        return await asyncio.gather(*[client.complete(GEN, role="generator") for _ in range(3)])

    with FakeOpenAIServer(faults=["429"], retry_after="1") as srv:
        _run(srv.base_url, calls, concurrency=1)
        times = [r.time for r in srv.chat_requests]
    assert len(times) == 4
    assert all(t - times[0] >= 1.0 - 0.05 for t in times[1:])


def test_retry_after_is_capped() -> None:
    with FakeOpenAIServer(faults=["429"], retry_after="3600") as srv:
        started = time.monotonic()
        completion, _, _ = _run(srv.base_url, lambda c: c.complete(GEN, role="generator"), retry_after_max=0.2)
        elapsed = time.monotonic() - started
    assert completion.attempts == 2
    assert elapsed < 10  # far below the requested hour: the cap applied


# -- structured outputs -----------------------------------------------------------------------------------------
def test_json_schema_accepted_and_sent_strict() -> None:
    with FakeOpenAIServer() as srv:
        completion, _, client = _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA,
                                                                         schema_name="verdict"))
        fmt = srv.chat_requests[0].body["response_format"]
    assert completion.mode == "json_schema"
    assert fmt == {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}
    assert client.structured_modes == {(srv.base_url, "gpt-4.1-mini"): "json_schema"}


def test_fallback_to_json_object_when_json_schema_is_rejected() -> None:
    async def calls(client: LLMClient) -> list[Completion]:
        return [await client.complete(VAL, role="validator", schema=VERDICT_SCHEMA) for _ in range(2)]

    with FakeOpenAIServer(reject_json_schema=True) as srv:
        completions, records, client = _run(srv.base_url, calls)
        formats = [(r.body.get("response_format") or {}).get("type") for r in srv.chat_requests]
    assert [c.mode for c in completions] == ["json_object", "json_object"]
    assert formats == ["json_schema", "json_object", "json_object"]  # the accepted mode is remembered
    assert records[0].status == "retry" and "falling back to json_object" in (records[0].error or "")
    assert client.structured_modes == {(srv.base_url, "gpt-4.1-mini"): "json_object"}
    assert completions[0].data["verdict"] == "natural"


def test_fallback_to_prompting_when_no_json_mode_is_accepted() -> None:
    with FakeOpenAIServer(reject_json_schema=True, reject_json_object=True) as srv:
        completion, _, client = _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA))
        last = srv.chat_requests[-1].body
    assert completion.mode == "prompt"
    assert "response_format" not in last
    assert json.dumps(VERDICT_SCHEMA) in last["messages"][-1]["content"]
    assert client.structured_modes == {(srv.base_url, "gpt-4.1-mini"): "prompt"}
    assert completion.data["verdict"] in VERDICT_SCHEMA["properties"]["verdict"]["enum"]


def test_repeated_5xx_on_a_new_endpoint_falls_back_but_not_once_confirmed() -> None:
    async def one(client: LLMClient) -> Completion:
        return await client.complete(VAL, role="validator", schema=VERDICT_SCHEMA)

    # New endpoint: one 5xx may be transient (retried as is), a second in a row means "format not accepted".
    with FakeOpenAIServer(faults=["500", "500"]) as srv:
        completion, records, _ = _run(srv.base_url, one)
    assert completion.mode == "json_object"
    assert [r.status for r in records] == ["retry", "retry", "ok"]
    assert "falling back to json_object" in (records[1].error or "")

    # Confirmed endpoint: plain 5xx are only retried.
    async def two(client: LLMClient) -> list[Completion]:
        return [await one(client), await one(client)]

    with FakeOpenAIServer(faults={1: "500", 2: "500"}) as srv:
        completions, records, client = _run(srv.base_url, two)
    assert [c.mode for c in completions] == ["json_schema", "json_schema"]
    assert [r.status for r in records] == ["ok", "retry", "retry", "ok"]
    assert set(client.structured_modes.values()) == {"json_schema"}


def test_unprocessable_format_on_a_new_endpoint_falls_back() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "response_format" in body and body["response_format"]["type"] == "json_schema":
            return httpx.Response(422, json={"detail": "unprocessable"})
        content = json.dumps({"verdict": "implausible", "reason": "too young for that job"})
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        })

    async def main() -> Completion:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with LLMClient(_settings("http://mock.test/v1"), http_client=http) as client:
            result = await client.complete(VAL, role="validator", schema=VERDICT_SCHEMA)
        await http.aclose()
        return result

    completion = asyncio.run(main())
    assert completion.mode == "json_object" and completion.data["verdict"] == "implausible"


def test_modes_are_remembered_per_model() -> None:
    async def calls(client: LLMClient) -> None:
        await client.complete(VAL, role="validator", schema=VERDICT_SCHEMA)
        await client.complete(VAL, role="judge", schema=VERDICT_SCHEMA)

    with FakeOpenAIServer(reject_json_schema=True) as srv:
        _, _, client = _run(srv.base_url, calls, models={"judge": "other-model"})
    assert client.structured_modes == {
        (srv.base_url, "gpt-4.1-mini"): "json_object",
        (srv.base_url, "other-model"): "json_object",
    }


def test_non_conforming_json_is_retried_then_fails() -> None:
    with FakeOpenAIServer(responder=lambda body: {"verdict": "maybe", "reason": "?"}) as srv:
        with pytest.raises(LLMResponseError, match="does not match the schema"):
            _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA), max_retries=1)
        assert len(srv.chat_requests) == 2


def test_invalid_schema_is_a_clear_error() -> None:
    with FakeOpenAIServer() as srv, pytest.raises(LLMError, match="invalid JSON schema"):
        _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema={"type": "nonsense"}))


def test_parse_json_text_variants() -> None:
    assert parse_json_text('{"a": 1}') == {"a": 1}
    assert parse_json_text('Sure! ```json\n{"a": 2}\n```') == {"a": 2}
    assert parse_json_text('Here it is: {"a": 3} hope it helps {"b": 4}') == {"a": 3}
    with pytest.raises(ValueError):
        parse_json_text("no json here")


def test_a_callers_http_client_stays_open() -> None:
    async def main() -> list[str]:
        texts = []
        async with httpx.AsyncClient() as http:
            for _ in range(2):  # two LLM clients in turn over one caller-owned connection pool
                async with LLMClient(_settings(srv.base_url), http_client=http) as client:
                    texts.append((await client.complete(GEN, role="generator")).text)
            assert not http.is_closed
        return texts

    with FakeOpenAIServer() as srv:
        texts = asyncio.run(main())
    assert len(texts) == 2 and texts[0] != texts[1]


def test_missing_usage_is_estimated_and_flagged() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "A short happy sentence."}}],
        })

    async def main() -> Completion:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with LLMClient(_settings("http://mock.test/v1"), http_client=http) as client:
            result = await client.complete(GEN, role="generator")
        await http.aclose()
        return result

    completion = asyncio.run(main())
    assert completion.usage_estimated
    assert completion.completion_tokens == 6 and completion.prompt_tokens > 0


# -- limits -----------------------------------------------------------------------------------------------------
def test_concurrency_limit_is_respected() -> None:
    async def calls(client: LLMClient) -> list[Completion]:
        return await asyncio.gather(*[client.complete(GEN, role="generator") for _ in range(24)])

    with FakeOpenAIServer(latency=0.05) as srv:
        completions, _, _ = _run(srv.base_url, calls, concurrency=4)
        peak = srv.max_in_flight
    assert len(completions) == 24
    assert 2 <= peak <= 4


def test_requests_per_minute_limiter_paces_requests() -> None:
    # rpm=120: a burst of 10 s worth (20 requests), then one request every 0.5 s.
    async def calls(client: LLMClient) -> float:
        started = time.monotonic()
        await asyncio.gather(*[client.complete(GEN, role="generator") for _ in range(22)])
        return time.monotonic() - started

    with FakeOpenAIServer() as srv:
        elapsed, records, _ = _run(srv.base_url, calls, rpm=120)
    assert len(records) == 22
    assert elapsed >= 1.0 - 0.05  # the 21st and 22nd requests waited 0.5 s each for a token


def test_tokens_per_minute_limiter_paces_large_requests() -> None:
    # tpm=6000 holds 1000 tokens; each call reserves ~prompt + max_tokens = ~810, refunded to true usage after.
    async def calls(client: LLMClient) -> list[Completion]:
        return await asyncio.gather(*[client.complete(GEN, role="generator", max_tokens=800) for _ in range(3)])

    with FakeOpenAIServer(latency=0.05) as srv:
        completions, _, _ = _run(srv.base_url, calls, tpm=6000)
        peak = srv.max_in_flight
    assert len(completions) == 3
    # Two reservations never fit at once: each call waits for the previous call's refund.
    assert peak == 1


# -- secrets ----------------------------------------------------------------------------------------------------
def test_auth_error_names_endpoint_and_model_but_not_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    records: list[CallRecord] = []
    with FakeOpenAIServer(api_key="sk-the-right-key") as srv:
        async def main() -> None:
            async with LLMClient(_settings(srv.base_url), on_call=records.append) as client:
                await client.complete(GEN, role="generator")

        with pytest.raises(LLMAuthError) as info:
            asyncio.run(main())
        assert len(srv.chat_requests) == 1  # auth failures are not retried
    message = str(info.value)
    assert srv.base_url in message and "gpt-4.1-mini" in message and "401" in message
    assert KEY not in message and KEY not in caplog.text and KEY not in repr(records)
    assert KEY not in repr(srv.requests)


def test_missing_key_is_named_as_such() -> None:
    with FakeOpenAIServer(api_key="sk-the-right-key") as srv:
        async def main() -> None:
            async with LLMClient(LLMSettings(base_url=srv.base_url, backoff_base=0.01)) as client:
                await client.complete(GEN, role="generator")

        with pytest.raises(LLMAuthError, match="needs an API key and none was given"):
            asyncio.run(main())


def test_credentials_in_the_base_url_are_not_shown() -> None:
    srv = FakeOpenAIServer().start()
    port = srv.port
    srv.stop()
    settings = LLMSettings(base_url=f"http://user:hunter2@127.0.0.1:{port}/v1", max_retries=0)

    async def main() -> None:
        async with LLMClient(settings) as client:
            await client.complete(GEN, role="generator")

    with pytest.raises(LLMConnectionError) as info:
        asyncio.run(main())
    assert "hunter2" not in str(info.value) and "127.0.0.1" in str(info.value)


def test_query_parameters_of_the_base_url_reach_every_request_and_stay_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Azure OpenAI style: the API version (and here a key) as query parameters of the base URL. The SDK joins
    # paths onto base_url and drops a query there; the client passes it as the SDK's default_query instead.
    secret = "sk-azure-SECRET-5566778899"
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(faults=["500"]) as srv:
        url = f"{srv.base_url}/?api-version=2024-10-21&api-key={secret}"
        result, records, client = _run(url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA))
        requests = srv.chat_requests
    assert result.data["verdict"] in ("natural", "rare but plausible", "implausible")
    assert len(requests) == 2  # the 500, then the retry: both carry the query
    for req in requests:
        assert req.path == "/v1/chat/completions"
        assert req.query == {"api-version": "2024-10-21", "api-key": secret}
    assert client.base_url == srv.base_url
    assert secret not in caplog.text and secret not in repr(records) and secret not in repr(client)
    assert any("HTTP 500" in (r.error or "") for r in records)


def test_key_never_logged_through_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(faults=["500", "drop", "malformed_json"], reject_json_schema=True) as srv:
        _, records, _ = _run(srv.base_url, lambda c: c.complete(VAL, role="validator", schema=VERDICT_SCHEMA))
    assert records and caplog.text  # something was logged, and none of it is the key
    assert KEY not in caplog.text
    assert KEY not in repr(records)


def test_key_echoed_by_a_server_is_scrubbed_from_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        return httpx.Response(400, json={"error": {"message": f"bad request with {auth}", "type": "x"}})

    async def main() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with LLMClient(_settings("http://mock.test/v1"), http_client=http) as client:
            await client.complete(GEN, role="generator")

    with pytest.raises(LLMResponseError) as info:
        asyncio.run(main())
    assert KEY not in str(info.value) and "HTTP 400" in str(info.value)


# -- local backend ----------------------------------------------------------------------------------------------
def test_local_backend_uses_the_embedded_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.host, body["model"]))
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        })

    fake_module = types.ModuleType("personagen_core.local")
    fake_module.local_transport = lambda name, **kw: httpx.MockTransport(handler)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "personagen_core.local", fake_module)
    import personagen_core

    monkeypatch.setattr(personagen_core, "local", fake_module, raising=False)

    async def main() -> Completion:
        async with LLMClient(LLMSettings.from_env(env={}, local_model="smollm2-135m")) as client:
            return await client.complete(GEN, role="generator")

    completion = asyncio.run(main())
    assert completion.text == "Hi."
    assert seen == [("local.invalid", "smollm2-135m")]


# -- pricing ----------------------------------------------------------------------------------------------------
def test_cost_of_known_and_unknown_models() -> None:
    from personagen_core.generation.pricing import PriceTable, cost

    assert cost("gpt-4.1-mini", 1_000_000, 0) == pytest.approx(0.40)
    assert cost("gpt-4.1-mini", 0, 1_000_000) == pytest.approx(1.60)
    assert cost("gpt-4.1-mini-2025-04-14", 1000, 500) == pytest.approx((1000 * 0.40 + 500 * 1.60) / 1e6)
    assert cost("gpt-4o", 2_000_000, 1_000_000) == pytest.approx(2 * 2.50 + 10.00)
    assert cost("smollm2-135m", 10_000, 10_000) == 0.0
    assert cost("my-private-model", 10, 10) is None  # never a guessed price
    assert PriceTable().price("gpt-4.1-mini-latest") is None  # only dated snapshots match an alias


def test_price_file_overrides_and_errors(tmp_path: Any) -> None:
    from personagen_core.errors import DataError
    from personagen_core.generation.pricing import load_price_table

    yaml_file = tmp_path / "prices.yaml"
    yaml_file.write_text("prices:\n  gpt-4.1-mini: {input: 1.0, output: 2.0}\n  my-vllm: [0.0, 0.5]\n")
    table = load_price_table(yaml_file)
    assert table.cost("gpt-4.1-mini", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("my-vllm", 0, 2_000_000) == pytest.approx(1.0)
    assert table.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # defaults kept
    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps(table.to_dict()))
    assert load_price_table(json_file).to_dict() == table.to_dict()

    bad = tmp_path / "bad.yaml"
    bad.write_text("gpt-4.1: {input: -1, output: 2}\n")
    with pytest.raises(DataError, match=r"bad\.yaml.*gpt-4\.1.*non-negative"):
        load_price_table(bad)
    bad.write_text("gpt-4.1: {input: 1}\n")
    with pytest.raises(DataError, match="missing price key 'output'"):
        load_price_table(bad)
    with pytest.raises(DataError, match="cannot read price file"):
        load_price_table(tmp_path / "absent.yaml")


def test_estimate_run_cost() -> None:
    from personagen_core.generation.pricing import CallEstimate, estimate_run_cost

    estimate = estimate_run_cost({
        "generation": CallEstimate("gpt-4.1-mini", calls=1000, prompt_tokens=300, completion_tokens=50),
        "validation": CallEstimate("gpt-4.1-nano", calls=200, prompt_tokens=500, completion_tokens=40),
    })
    generation = (1000 * 300 * 0.40 + 1000 * 50 * 1.60) / 1e6
    validation = (200 * 500 * 0.10 + 200 * 40 * 0.40) / 1e6
    assert estimate.by_type == {"generation": pytest.approx(generation), "validation": pytest.approx(validation)}
    assert estimate.total_usd == pytest.approx(generation + validation)
    assert estimate.prompt_tokens == 400_000 and estimate.completion_tokens == 58_000
    unknown = estimate_run_cost({"g": CallEstimate("mystery", 10, 10, 10),
                                 "v": CallEstimate("gpt-4.1", 10, 100, 0)})
    assert unknown.total_usd is None and unknown.unknown_models == ["mystery"]
    assert unknown.known_usd == pytest.approx(10 * 100 * 2.00 / 1e6)
    json.dumps(unknown.to_dict())

"""The fake server's Files and Batch API, driven through the openai SDK (the client batch mode uses)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from personagen_core.testing.fake_openai import FakeOpenAIServer

TERMINAL = ("completed", "failed", "expired", "cancelled")


def _lines(n: int) -> bytes:
    return "\n".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "fake-model",
                             "messages": [{"role": "user", "content": "Target emotion: joy"}]}})
        for i in range(n)
    ).encode()


def _wait(client: openai.OpenAI, batch_id: str) -> tuple[object, list[str]]:
    seen = []
    while True:
        b = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in TERMINAL:
            return b, seen
        time.sleep(0.02)


def test_upload_create_poll_download_through_the_sdk() -> None:
    with FakeOpenAIServer(batch_failure_rate=0.3, seed=1) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        f = client.files.create(file=("in.jsonl", _lines(20)), purpose="batch")
        assert client.files.retrieve(f.id).purpose == "batch"
        assert client.files.content(f.id).content == _lines(20)
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "7"})
        assert b.status == "validating" and b.metadata == {"job": "7"}
        b, seen = _wait(client, b.id)
        assert seen == ["validating", "in_progress", "completed"]
        out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
        err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
        assert b.request_counts.completed == len(out) and b.request_counts.failed == len(err)
        assert len(out) + len(err) == 20 and err, "a 30 % failure rate fails some of 20 requests"
        assert {r["custom_id"] for r in out} | {r["custom_id"] for r in err} == {f"r{i}" for i in range(20)}
        body = out[0]["response"]["body"]
        assert out[0]["response"]["status_code"] == 200 and "joy" in body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] > 0
        assert err[0]["response"] is None and err[0]["error"]["code"] == "server_error"
        assert [x.id for x in client.batches.list()] == [b.id]
        assert srv.batches.creates == [b.id]


@pytest.mark.parametrize(("outcome", "status"), [("expire", "expired"), ("fail", "failed")])
def test_scripted_expired_and_failed_batches(outcome: str, status: str) -> None:
    with FakeOpenAIServer(batch_in_progress_s=0.05) as srv:
        srv.batches.add_outcomes([outcome])
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        f = client.files.create(file=("in.jsonl", _lines(6)), purpose="batch")
        b, _ = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                   completion_window="24h").id)
        assert b.status == status
        if outcome == "expire":  # the requests answered before the window ran out are delivered
            assert len(client.files.content(b.output_file_id).text.splitlines()) == 3
        else:
            assert b.output_file_id is None and b.errors.data[0].message
        b2, _ = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h").id)
        assert b2.status == "completed"  # only the scripted batch ends badly


def test_cancel_and_unknown_ids() -> None:
    with FakeOpenAIServer(batch_validating_s=5) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        f = client.files.create(file=("in.jsonl", _lines(2)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert client.batches.cancel(b.id).status == "cancelling"
        ended, _ = _wait(client, b.id)
        assert ended.status == "cancelled" and ended.output_file_id is None  # cancelled while validating
        assert srv.batches.cancels == [b.id]
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
        with pytest.raises(openai.NotFoundError):
            client.files.content("file-nope")
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")


def test_cancel_in_progress_answers_what_ran() -> None:
    """As OpenAI: cancelling -> cancelled, and the output file holds what was answered before the cancel."""
    with FakeOpenAIServer(batch_validating_s=0.0, batch_in_progress_s=30) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        f = client.files.create(file=("in.jsonl", _lines(6)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert client.batches.retrieve(b.id).status == "in_progress"
        assert client.batches.cancel(b.id).status == "cancelling"
        assert client.batches.cancel(b.id).status == "cancelling"  # asked twice: one cancel
        ended, seen = _wait(client, b.id)
        assert seen[-2:] == ["cancelling", "cancelled"] and srv.batches.cancels == [b.id]
        assert ended.request_counts.completed == 3
        out = [json.loads(x) for x in client.files.content(ended.output_file_id).text.splitlines()]
        assert [x["custom_id"] for x in out] == ["r0", "r1", "r2"]
        assert client.batches.cancel(b.id).status == "cancelled"  # a finished batch stays as it is

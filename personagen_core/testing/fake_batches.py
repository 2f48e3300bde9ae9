"""OpenAI's Files and Batch API for :class:`~personagen_core.testing.fake_openai.FakeOpenAIServer`.

Routes (the shapes of the OpenAI API, so ``client.files.create / retrieve / content`` and
``client.batches.create / retrieve / cancel / list`` of the openai SDK work against the fake):

* ``POST /v1/files`` (multipart: ``purpose``, ``file``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``;
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``, ``GET /v1/batches``.

A batch advances on simulated time, computed when it is read (no background thread): ``validating`` for
``validating_s`` seconds, then ``in_progress`` for ``in_progress_s`` seconds, then it ends. Its lines are
answered by the server's chat answer logic (the same responder and usage as ``/v1/chat/completions``) when
it ends. ``failure_rate`` is the share of requests (seeded draw) that fail inside a completed batch: they go
to the error file as ``{"id", "custom_id", "response": null, "error": {"code", "message"}}``. Outcomes of
whole batches are scripted per created batch with :meth:`BatchAPI.add_outcomes`: ``None`` (complete),
``"expire"`` (ends ``expired``, with the first half of its requests answered in the output file, as OpenAI
does for a batch that ran out of its window) or ``"fail"`` (ends ``failed`` with ``errors``, no output).

``POST /v1/batches/{id}/cancel`` moves an unfinished batch to ``cancelling``; ``cancelling_s`` seconds later
it is ``cancelled``, and, as OpenAI does, the requests it had answered are in its output file: none when it
was still ``validating``, the first half when it was ``in_progress``. ``cancels`` lists the cancelled ids.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["BATCH_OUTCOMES", "BatchAPI"]

BATCH_OUTCOMES = frozenset({"expire", "fail"})
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

#: ``answer(body, index) -> (status_code, response_body)``: one chat completion body for one JSONL line.
Answer = Callable[[dict[str, Any], int], tuple[int, dict[str, Any]]]


def parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a ``multipart/form-data`` body: ``{name: (filename, bytes)}`` (stdlib MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


class BatchAPI:
    """The fake's files and batches (thread-safe). ``answer`` answers one chat completion body."""

    def __init__(
        self,
        answer: Answer,
        *,
        validating_s: float = 0.05,
        in_progress_s: float = 0.2,
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self._answer = answer
        self.validating_s = float(validating_s)
        self.in_progress_s = float(in_progress_s)
        self.failure_rate = float(failure_rate)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self._contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}
        self._outcome: dict[str, str | None] = {}
        self._outcomes: deque[str | None] = deque()
        self.creates: list[str] = []  # batch ids in creation order (tests count resubmissions)
        self._answered = 0
        self.cancelling_s = 0.05
        self.cancels: list[str] = []  # batch ids whose cancel was asked, in order
        self._cancelled: dict[str, tuple[float, bool]] = {}  # id -> (when, was in progress)

    def add_outcomes(self, outcomes: Iterable[str | None]) -> None:
        """Script the ends of the next created batches: ``None`` (complete), ``"expire"`` or ``"fail"``."""
        checked = []
        for o in outcomes:
            if o is not None and o not in BATCH_OUTCOMES:
                raise ValueError(f"unknown batch outcome {o!r}; expected one of {sorted(BATCH_OUTCOMES)} or None")
            checked.append(o)
        with self._lock:
            self._outcomes.extend(checked)

    # -- routing ---------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any, str]:
        """Serve one request: ``(status, payload, content_type)``; a ``bytes`` payload is sent as is."""
        parts = [p for p in path.split("/") if p][1:]  # drop the "v1"
        if not parts or parts[0] not in ("files", "batches"):
            return 404, _error(f"no route for {method} {path}", "not_found"), "application/json"
        try:
            if parts[0] == "files":
                return self._files(method, parts[1:], body)
            return self._batches(method, parts[1:], body)
        except _NotFound as exc:
            return 404, _error(str(exc), "invalid_request_error"), "application/json"
        except _BadRequest as exc:
            return 400, _error(str(exc), "invalid_request_error"), "application/json"

    def _files(self, method: str, rest: list[str], body: Any) -> tuple[int, Any, str]:
        if method == "POST" and not rest:
            if not isinstance(body, dict) or "_raw" not in body:
                raise _BadRequest("file uploads must be multipart/form-data with 'purpose' and 'file'")
            fields = parse_multipart(body["_raw"], body.get("_content_type", ""))
            if "file" not in fields or "purpose" not in fields:
                raise _BadRequest("missing 'file' or 'purpose' in the upload")
            name, data = fields["file"]
            purpose = fields["purpose"][1].decode()
            return 200, self._new_file(name or "upload.jsonl", data, purpose), "application/json"
        if method == "GET" and len(rest) == 1:
            return 200, self._file(rest[0]), "application/json"
        if method == "GET" and len(rest) == 2 and rest[1] == "content":
            self._file(rest[0])
            with self._lock:
                return 200, self._contents[rest[0]], "application/octet-stream"
        raise _NotFound(f"no route for {method} /v1/files/{'/'.join(rest)}")

    def _batches(self, method: str, rest: list[str], body: Any) -> tuple[int, Any, str]:
        if method == "POST" and not rest:
            return 200, self._create(body or {}), "application/json"
        if method == "GET" and not rest:
            with self._lock:
                ids = list(self.batches)
            data = [self._advance(i) for i in reversed(ids)]
            return 200, {"object": "list", "data": data, "has_more": False,
                         "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None}, "application/json"
        if method == "GET" and len(rest) == 1:
            return 200, self._advance(rest[0]), "application/json"
        if method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            self._advance(rest[0])
            with self._lock:
                batch = self.batches[rest[0]]
                if batch["status"] not in _TERMINAL and batch["status"] != "cancelling":
                    batch.update(status="cancelling", cancelling_at=int(time.time()))
                    self._cancelled[rest[0]] = (time.monotonic(), batch["in_progress_at"] is not None)
                    self.cancels.append(rest[0])
                return 200, dict(batch), "application/json"
        raise _NotFound(f"no route for {method} /v1/batches/{'/'.join(rest)}")

    # -- files -------------------------------------------------------------------------------------------------
    def _new_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        fid = "file-" + uuid.uuid4().hex[:24]
        info = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed", "status_details": None}
        with self._lock:
            self.files[fid] = info
            self._contents[fid] = data
        return info

    def _file(self, fid: str) -> dict[str, Any]:
        with self._lock:
            if fid not in self.files:
                raise _NotFound(f"No such File object: {fid}")
            return dict(self.files[fid])

    # -- batches -----------------------------------------------------------------------------------------------
    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        fid = body.get("input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            raise _BadRequest(f"endpoint must be /v1/chat/completions, got {body.get('endpoint')!r}")
        self._file(str(fid))
        with self._lock:
            lines = [ln for ln in self._contents[str(fid)].splitlines() if ln.strip()]
        bid = "batch_" + uuid.uuid4().hex[:24]
        now = time.time()
        batch = {
            "id": bid, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": fid, "completion_window": body.get("completion_window", "24h"),
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(now), "in_progress_at": None, "expires_at": int(now) + 86400,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self.batches[bid] = batch
            self._started[bid] = time.monotonic()
            self._outcome[bid] = self._outcomes.popleft() if self._outcomes else None
            self.creates.append(bid)
        return dict(batch)

    def _advance(self, bid: str) -> dict[str, Any]:
        """The batch with its status moved on to where the simulated clock is."""
        with self._lock:
            if bid not in self.batches:
                raise _NotFound(f"No such Batch object: {bid}")
            batch = self.batches[bid]
            if batch["status"] in _TERMINAL:
                return dict(batch)
            if batch["status"] == "cancelling":
                since, running = self._cancelled[bid]
                if time.monotonic() - since < self.cancelling_s:
                    return dict(batch)
                outcome: str | None = "cancel"
                lines = self._lines_locked(batch)
                answered = lines[: len(lines) // 2] if running else []
            else:
                elapsed = time.monotonic() - self._started[bid]
                if elapsed < self.validating_s:
                    return dict(batch)
                if batch["in_progress_at"] is None:
                    batch.update(status="in_progress", in_progress_at=int(time.time()))
                if elapsed < self.validating_s + self.in_progress_s:
                    return dict(batch)
                outcome = self._outcome[bid]
                lines = self._lines_locked(batch)
                answered = lines[: len(lines) // 2] if outcome == "expire" else lines
        # Answer outside the lock: the responder may take a while for a large batch.
        if outcome == "fail":
            ended = {"status": "failed", "failed_at": int(time.time()), "errors": {"object": "list", "data": [
                {"code": "invalid_request", "message": "simulated batch failure", "param": None, "line": None}]}}
            with self._lock:
                batch.update(ended)
                return dict(batch)
        out, err = self._run(answered)
        with self._lock:
            if batch["status"] in _TERMINAL:  # another thread finished it meanwhile
                return dict(batch)
            batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
            if out:
                batch["output_file_id"] = self._store_locked(f"{bid}_output.jsonl", out)
            if err:
                batch["error_file_id"] = self._store_locked(f"{bid}_error.jsonl", err)
            if outcome == "expire":
                batch.update(status="expired", expired_at=int(time.time()))
            elif outcome == "cancel":
                batch.update(status="cancelled", cancelled_at=int(time.time()))
            else:
                batch.update(status="completed", finalizing_at=int(time.time()), completed_at=int(time.time()))
            return dict(batch)

    def _lines_locked(self, batch: dict[str, Any]) -> list[bytes]:
        return [ln for ln in self._contents[batch["input_file_id"]].splitlines() if ln.strip()]

    def _store_locked(self, name: str, lines: list[str]) -> str:
        data = ("\n".join(lines) + "\n").encode()
        fid = "file-" + uuid.uuid4().hex[:24]
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": name, "purpose": "batch_output", "status": "processed",
                           "status_details": None}
        self._contents[fid] = data
        return fid

    def _run(self, lines: list[bytes]) -> tuple[list[str], list[str]]:
        """Answer the request lines: output lines and error lines (OpenAI batch output format)."""
        out: list[str] = []
        err: list[str] = []
        for raw in lines:
            req = json.loads(raw)
            cid = req.get("custom_id")
            with self._lock:
                fail = self.failure_rate > 0 and self._rng.random() < self.failure_rate
                self._answered += 1
                index = self._answered
            rid = f"batch_req_{uuid.uuid4().hex[:24]}"
            if fail:
                err.append(json.dumps({"id": rid, "custom_id": cid, "response": None,
                                       "error": {"code": "server_error", "message": "simulated request failure"}}))
                continue
            status, body = self._answer(req.get("body") or {}, index)
            out.append(json.dumps({"id": rid, "custom_id": cid,
                                   "response": {"status_code": status, "request_id": rid, "body": body},
                                   "error": None}, ensure_ascii=False))
        return out, err


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}

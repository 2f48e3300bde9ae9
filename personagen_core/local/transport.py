"""An httpx transport that serves the OpenAI chat-completions API from an in-process :class:`LocalModel`.

The pipeline keeps its one client path (openai SDK -> httpx) for remote endpoints and for the embedded model
alike, so retries, limits and structured-output handling are shared, and there is no server process to
start, no loopback port to find or leak, and no extra dependency.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx

from personagen_core.errors import LocalModelError
from personagen_core.local.models import DEFAULT_MODEL, MODELS, resolve_model_path
from personagen_core.local.runtime import LocalModel, LocalModelPool, _RequestError, _require_runtime

__all__ = ["LOCAL_BASE_URL", "LocalTransport", "local_transport"]

LOCAL_BASE_URL = "http://local.invalid/v1"


def _json_response(status: int, body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode("utf-8"),
                          headers={"content-type": "application/json"})


class LocalTransport(httpx.AsyncBaseTransport):
    """httpx transport serving ``POST /v1/chat/completions`` and ``GET /v1/models`` from a LocalModel.

    The host is ignored; use base URL :data:`LOCAL_BASE_URL`. httpx timeouts do not apply (no socket):
    a request waits for its turn on the model's single worker, and is dropped if cancelled before then.
    """

    def __init__(self, model: LocalModel, *, owns_model: bool = False) -> None:
        self.model = model
        self._owns_model = owns_model

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Dispatch one request; every failure becomes an OpenAI-style error body."""
        path = request.url.path.rstrip("/")
        try:
            if path.endswith("/models"):
                if request.method != "GET":
                    raise _RequestError(405, f"{request.method} not allowed on {path}")
                entry = {"id": self.model.name, "object": "model", "created": 0,
                         "owned_by": "personagen-local"}
                return _json_response(200, {"object": "list", "data": [entry]})
            if path.endswith("/chat/completions"):
                if request.method != "POST":
                    raise _RequestError(405, f"{request.method} not allowed on {path}")
                try:
                    body = json.loads(await request.aread() or b"null")
                except ValueError as exc:
                    raise _RequestError(400, f"request body is not valid JSON: {exc}") from exc
                if not isinstance(body, dict):
                    raise _RequestError(400, "request body must be a JSON object")
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.model.executor, self.model.chat, body)
                return _json_response(200, result)
            raise _RequestError(404, f"unknown endpoint {request.method} {path}", type_="not_found_error")
        except _RequestError as exc:
            return _json_response(exc.status, exc.body())
        except LocalModelError as exc:
            return _json_response(503, _RequestError(503, str(exc), type_="local_model_error").body())
        except Exception as exc:  # a llama.cpp failure: report it as the server error it is
            return _json_response(500, _RequestError(500, f"embedded model failed: {exc!r}",
                                                     type_="server_error").body())

    async def aclose(self) -> None:
        """Close the model when this transport owns it (created by :func:`local_transport` alone)."""
        if self._owns_model:
            await asyncio.to_thread(self.model.close)


def local_transport(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, *,
                    pool: LocalModelPool | None = None, home: str | Path | None = None,
                    **llama_kwargs: Any) -> LocalTransport:
    """httpx transport for ``openai.AsyncOpenAI(base_url=LOCAL_BASE_URL, http_client=...)``.

    With ``pool`` the model is shared and stays loaded after the client closes; without, the transport
    gets a model of its own (loaded on first request, freed on ``aclose``). The model file is resolved
    and checked here, so a missing or corrupt model raises LocalModelError at once.
    """
    if pool is not None:
        return pool.transport(name_or_path, **llama_kwargs)
    _require_runtime()
    path = resolve_model_path(name_or_path, home=home)
    name = str(name_or_path) if str(name_or_path) in MODELS else path.name
    return LocalTransport(LocalModel(path, name=name, params=llama_kwargs), owns_model=True)

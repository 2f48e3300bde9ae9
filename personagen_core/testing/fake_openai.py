"""An OpenAI-compatible HTTP server on loopback, with scripted faults, for tests, benchmarks and demos.

``FakeOpenAIServer`` is a real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread, one thread
per connection, so slow answers do not serialise each other). It answers ``POST /v1/chat/completions`` in the
OpenAI response format (with ``usage``) and ``GET /v1/models``.

The default responder (:class:`DefaultResponder`) reads the request:

* ``response_format`` of type ``json_schema`` -> a valid instance of that schema, built from the schema
  itself (enums -> first value, or a configured choice per property name; integers within bounds; arrays of
  ``minItems`` items; string properties named like ``text``/``texts`` -> emotion sentences);
* JSON asked another way (``json_object`` or a prompt containing a JSON schema, as ``llm.py``'s fallback
  modes send) -> an instance of the schema found in the prompt, or a verdict / score object by keyword;
* otherwise a short, distinct one- or two-sentence text that names the emotion found in the prompt.

Faults are scripted either as a queue consumed by successive chat requests (``None`` = answer normally), as a
mapping from the 0-based chat request index to a fault, or with ``always=`` for every chat request that has no
scripted fault. Transport faults: ``"429"``, ``"500"``, ``"timeout"``, ``"drop"``; bad bodies with status 200:
``"broken_body"`` (truncated JSON), ``"html"`` (an HTML page), ``"no_choices"`` (JSON without ``choices``);
``"model_404"`` (the model does not exist); bad answers: ``"malformed_json"``, ``"schema_mismatch"`` (valid JSON
that never matches the requested schema), ``"refusal"``, ``"duplicate"``, ``"length"`` (text cut by the token
limit, ``finish_reason: length``), ``"long"`` (one sentence of about 5,000 characters), ``"german"`` and
``"spanish"`` (texts in another language). ``serial=True`` serves one chat request at a time, each taking
``latency`` seconds, like llama.cpp's servers; requests computed for a client that had already given up are
counted in ``abandoned``. ``kind="llama-cpp-python"`` imitates llama-cpp-python's server: its ``/openapi.json``
title, a 500 for ``json_schema`` and a ``json_object`` ``schema`` that is obeyed. ``fail_after=N`` makes an
endpoint break mid-run: chat requests from the N-th on (0-based) get ``fail_with`` (default ``"500"``), for
``fail_for`` requests (default: for good), as one replica of an endpoint pool going down and coming back.
"""

from __future__ import annotations

import json
import math
import random
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl

from personagen_core.testing.fake_batches import BatchAPI

__all__ = [
    "FAULTS",
    "HTML_PAGE",
    "KINDS",
    "LLAMA_CPP_PYTHON_TITLE",
    "REFUSAL_TEXT",
    "SCHEMA_MISMATCH_ANSWER",
    "DefaultResponder",
    "FakeOpenAIServer",
    "RecordedRequest",
    "instance_from_schema",
]

FAULTS = frozenset({
    "429", "500", "timeout", "drop", "malformed_json", "refusal", "duplicate",
    "broken_body", "html", "no_choices", "model_404", "schema_mismatch", "length", "long", "german", "spanish",
})
#: Server kinds the fake can imitate (how it is detected and which structured-output forms it accepts).
KINDS = frozenset({"openai", "llama-cpp-python"})
LLAMA_CPP_PYTHON_TITLE = "\U0001f999 llama.cpp Python API"
HTML_PAGE = "<!DOCTYPE html><html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>"
SCHEMA_MISMATCH_ANSWER = {"answer": "It seems fine to me.", "confidence": "high"}
REFUSAL_TEXT = "I'm sorry, but I can't help with that."

Responder = Callable[[dict[str, Any]], "str | dict[str, Any] | list[Any]"]

_EMOTION_WORDS = (
    "joy", "sadness", "anger", "fear", "surprise", "disgust", "love", "trust", "anticipation", "neutral",
    "happiness", "excitement", "anxiety", "gratitude", "pride", "shame", "guilt", "relief", "loneliness",
)
_EMOTION_RE = re.compile(r"\b(" + "|".join(_EMOTION_WORDS) + r")\b", re.IGNORECASE)
_EMOTION_AFTER_KEYWORD_RE = re.compile(
    r"emotion[^.\n]{0,40}?\b(" + "|".join(_EMOTION_WORDS) + r")\b", re.IGNORECASE
)

# Two independent sentence pools with slot fillers: thousands of combinations, so texts stay distinct.
_FIRST = (
    "Pure {emo} hit me when {event} {time}.",
    "I felt nothing but {emo} as {event} at the {place}.",
    "{Time}, {event}, and the {emo} has not faded since.",
    "There was so much {emo} in me when {event} near the {place}.",
    "A wave of {emo} came over me because {event} {time}.",
    "Honestly, {emo} is all I had left after {event} at the {place}.",
    "My chest filled with {emo} the moment {event}.",
    "I still carry the {emo} from {time}, when {event}.",
    "It was {emo}, plain and simple, when {event} outside the {place}.",
    "Standing by the {place} {time}, I felt {emo} as {event}.",
)
_SECOND = (
    "I keep telling {person} about it.",
    "Even the {thing} looked different afterwards.",
    "{Person} noticed it on my face right away.",
    "I walked home holding the {thing} a little tighter.",
    "I could not stop thinking about it over {meal}.",
    "I sent {person} a long message about it.",
    "The {thing} on my desk reminds me of it every day.",
    "Nobody at the {place} understood why I went quiet.",
    "",
)
_EVENTS = (
    "my sister called out of the blue", "the train doors closed in my face", "the exam results came in",
    "my old teacher recognised me", "the rain ruined our picnic", "my dog ran to greet me",
    "the manager read my report aloud", "a stranger returned my lost wallet", "the lights went out",
    "my best friend moved away", "the cake came out perfectly", "the phone buzzed with bad news",
    "the crowd started cheering", "my grandmother told an old story", "the bus never arrived",
    "my neighbour played loud music again", "the letter finally arrived", "our team lost in the last minute",
    "my son took his first steps", "the landlord raised the rent", "a kitten followed me down the street",
    "the doctor called me back", "my colleague took credit for my idea", "the fireworks lit up the bay",
    "I found my childhood diary", "the shop had sold out", "my partner planned a surprise dinner",
    "the storm knocked over the fence", "my flight was cancelled", "an old song came on the radio",
)
_TIMES = (
    "this morning", "last night", "yesterday afternoon", "on Sunday", "during lunch", "at dawn",
    "after work", "on my birthday", "late on Friday", "before the meeting", "at midnight", "over the weekend",
)
_PLACES = (
    "station", "office", "park", "market", "library", "harbour", "school gate", "bakery", "hospital",
    "shrine", "cafe", "bus stop", "gym", "river bank", "supermarket",
)
_PERSONS = (
    "my mother", "my roommate", "my coworkers", "my brother", "an old friend", "my partner",
    "my neighbour", "my grandfather", "my classmates", "my boss",
)
_THINGS = ("cup of tea", "old photo", "notebook", "umbrella", "bicycle", "letter", "scarf", "plant", "key", "mug")
_MEALS = ("dinner", "breakfast", "lunch", "coffee", "a late snack")
# Foreign-language texts (German, Spanish) with slot fillers, so that they stay distinct.
_FOREIGN = {
    "german": (
        ("Ich war so glücklich, als {event} {time}.", "Ich habe mich sehr geärgert, weil {event} {time}.",
         "Es war für mich ein trauriger Tag, denn {event} {time}."),
        ("meine Schwester anrief", "der Zug ohne mich abfuhr", "die Prüfungsergebnisse kamen",
         "mein Hund auf mich zulief", "der Regen unser Picknick ruinierte", "der Brief endlich ankam"),
        ("heute Morgen", "gestern Abend", "am Sonntag", "nach der Arbeit", "in der Mittagspause"),
    ),
    "spanish": (
        ("Me sentí muy feliz cuando {event} {time}.", "Estaba muy enfadado porque {event} {time}.",
         "Fue un día triste para mí, porque {event} {time}."),
        ("mi hermana me llamó", "el tren se fue sin mí", "llegaron los resultados del examen",
         "mi perro corrió hacia mí", "la lluvia arruinó nuestro picnic", "por fin llegó la carta"),
        ("esta mañana", "anoche", "el domingo", "después del trabajo", "a la hora de comer"),
    ),
}


def _schema_in_text(text: str) -> dict[str, Any] | None:
    """Find a JSON schema embedded in a prompt (as llm.py's json_object / prompt fallbacks send one)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and ("properties" in value or value.get("type") in ("object", "array")):
            return value
    return None


def _wants_json(body: Mapping[str, Any]) -> bool:
    """Did the request ask for JSON (a response_format, or a prompt mentioning JSON, as the fallbacks send)?"""
    fmt = body.get("response_format") or {}
    return bool(fmt.get("type") in ("json_schema", "json_object")
                or re.search(r"\bjson\b", _messages_text(body), re.IGNORECASE))


def _messages_text(body: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "\n".join(parts)


def instance_from_schema(
    schema: Mapping[str, Any],
    *,
    rng: random.Random,
    choices: Mapping[str, Any] | None = None,
    text_fn: Callable[[], str] | None = None,
) -> Any:
    """Build a value that satisfies ``schema`` (the subset of JSON Schema used for structured outputs).

    ``choices`` maps a property name to the value (or a sequence of values drawn at random with ``rng``) for
    enum properties of that name; otherwise enums give their first value. ``text_fn`` produces strings for
    properties named like ``text``/``texts``/``sentence``.
    """
    return _instance(schema, _Builder(schema, rng, choices or {}, text_fn), name="", index=0)


@dataclass(frozen=True)
class _Builder:
    """What every level of :func:`_instance` needs: the root schema (for $ref) and the value sources."""

    root: Mapping[str, Any]
    rng: random.Random
    choices: Mapping[str, Any]
    text_fn: Callable[[], str] | None


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return schema


def _instance(schema: Mapping[str, Any], b: _Builder, *, name: str, index: int) -> Any:
    schema = _resolve(schema, b.root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        options = list(schema["enum"])
        chosen = b.choices.get(name)
        if isinstance(chosen, (list, tuple)):
            chosen = b.rng.choice(list(chosen))
        return chosen if chosen in options else options[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            variants = [v for v in schema[combinator] if _resolve(v, b.root).get("type") != "null"]
            return _instance((variants or schema[combinator])[0], b, name=name, index=index)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return {
            key: _instance(sub, b, name=key, index=index) for key, sub in (schema.get("properties") or {}).items()
        }
    if kind == "array":
        n = int(schema.get("minItems", 1))
        n = min(n, int(schema.get("maxItems", n)))
        item_schema = schema.get("items") or {"type": "string"}
        singular = name.removesuffix("s")
        return [_instance(item_schema, b, name=singular, index=i) for i in range(n)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low = low + 1 if kind == "integer" else low + 0.5
        # Positional ids in batched answers: item i of an array gets low + i.
        value = low + index if name.lower() in ("id", "index", "idx", "candidate", "item") else low
        if high is not None:
            value = min(value, high - 1 if "exclusiveMaximum" in schema and "maximum" not in schema else high)
        return math.ceil(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    # strings
    lowered = name.lower()
    if b.text_fn is not None and lowered in ("text", "texts", "sentence", "sentences", "output", "content"):
        text = b.text_fn()
    elif "reason" in lowered or "explanation" in lowered or "rationale" in lowered:
        text = "The combination is coherent and fits everyday life."
    else:
        text = f"sample {lowered or 'value'}"
    min_len = int(schema.get("minLength", 0))
    if len(text) < min_len:
        text = text + "x" * (min_len - len(text))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class DefaultResponder:
    """Answers a chat request body the way the PersonaGen pipeline expects (see the module docstring).

    ``seed`` makes the text variety reproducible; ``choices`` maps property names to enum choices (a value,
    or a sequence drawn from at random), e.g. ``{"verdict": ["natural", "implausible"]}``.
    Thread-safe: the server calls it from many threads.
    """

    def __init__(self, *, seed: int = 0, choices: Mapping[str, Any] | None = None) -> None:
        self.seed = seed
        self.choices = dict(choices or {})
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str | dict[str, Any] | list[Any]:
        prompt = _messages_text(body)
        fmt = body.get("response_format") or {}
        emotion = self._find_emotion(prompt)
        with self._lock:  # the server calls from many threads; the RNG and the seen-set are shared
            if fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") or {}
                return self._from_schema(schema, emotion)
            wants_json = fmt.get("type") == "json_object" or re.search(r"\bjson\b", prompt, re.IGNORECASE)
            if wants_json:
                schema = _schema_in_text(prompt)
                if schema is not None:
                    return self._from_schema(schema, emotion)
                return self._keyword_json(prompt)
            return self._text(emotion)

    def _find_emotion(self, prompt: str) -> str:
        match = _EMOTION_AFTER_KEYWORD_RE.search(prompt) or _EMOTION_RE.search(prompt)
        return match.group(1).lower() if match else ""

    def _from_schema(self, schema: Mapping[str, Any], emotion: str) -> Any:
        return instance_from_schema(schema, rng=self._rng, choices=self.choices, text_fn=lambda: self._text(emotion))

    def _keyword_json(self, prompt: str) -> dict[str, Any]:
        lowered = prompt.lower()
        if "verdict" in lowered or "plausib" in lowered:
            verdict = self.choices.get("verdict", "natural")
            if isinstance(verdict, (list, tuple)):
                verdict = self._rng.choice(list(verdict))
            return {"verdict": verdict, "reason": "The combination is coherent and fits everyday life."}
        if "score" in lowered or "rate" in lowered:
            return {"score": 4, "reason": "Clear, natural and on topic."}
        return {"result": "ok"}

    def _text(self, emotion: str) -> str:
        """A 1-2 sentence text naming ``emotion``, not produced before by this responder (within 200 draws)."""
        emo = emotion or "emotion"
        for _ in range(200):
            first = self._rng.choice(_FIRST)
            time_ = self._rng.choice(_TIMES)
            text = first.format(
                emo=emo,
                event=self._rng.choice(_EVENTS),
                time=time_,
                Time=time_[0].upper() + time_[1:],
                place=self._rng.choice(_PLACES),
            )
            second = self._rng.choice(_SECOND)
            if second:
                person = self._rng.choice(_PERSONS)
                text += " " + second.format(
                    person=person,
                    Person=person[0].upper() + person[1:],
                    thing=self._rng.choice(_THINGS),
                    meal=self._rng.choice(_MEALS),
                    place=self._rng.choice(_PLACES),
                )
            if text not in self._seen:
                break
        self._seen.add(text)
        return text


@dataclass
class RecordedRequest:
    """One request as the server saw it. The Authorization header's value is never kept."""

    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    index: int | None = None  # 0-based index among chat completion requests
    fault: str | None = None
    status: int | None = None
    time: float = field(default_factory=time.monotonic)
    concurrent: int | None = None  # chat requests in flight when this one arrived, itself included
    #: The URL's query parameters (``api-version`` of Azure OpenAI), kept in memory only, like the body.
    query: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default backlog (5) refuses bursts of concurrent connections
    fake: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's per-request stderr log."""

    def do_GET(self) -> None:
        """Serve ``GET /v1/models``."""
        self.server.fake._handle(self, None)

    def do_POST(self) -> None:
        """Serve ``POST /v1/chat/completions``."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type") or ""
        if ctype.startswith("multipart/form-data"):  # a file upload (/v1/files)
            self.server.fake._handle(self, {"_raw": raw, "_content_type": ctype})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self.server.fake._handle(self, body if isinstance(body, dict) else {"_invalid": raw[:200].decode("latin-1")})


class FakeOpenAIServer:
    """An OpenAI-compatible loopback server with scripted faults. Use as ``with FakeOpenAIServer() as srv:``.

    Parameters
    ----------
    responder:
        ``callable(body) -> str | dict | list`` giving the assistant message content for a chat request
        (dicts and lists are sent as JSON text). Defaults to :class:`DefaultResponder`.
    latency:
        Seconds every chat request waits before answering (threads, so concurrent requests overlap).
    faults:
        A sequence of fault names (or ``None`` for a normal answer) consumed in arrival order by chat
        requests, or a mapping ``{chat_request_index: fault}``. Names are in :data:`FAULTS`.
    api_key:
        When set, requests without ``Authorization: Bearer <api_key>`` get a 401.
    retry_after:
        The ``Retry-After`` header value sent with a scripted 429 (seconds, or an HTTP date string).
    timeout_sleep:
        How long a ``"timeout"`` fault stalls before answering (longer than the client's timeout).
    reject_json_schema / reject_json_object:
        Answer that ``response_format`` type with an error (500 like llama.cpp's server for ``json_schema``,
        400 for ``json_object``).
    seed:
        Seed of the default responder.
    always:
        A fault for every chat request that has no scripted fault (e.g. ``"model_404"``: a hopeless endpoint).
    serial:
        Serve one chat request at a time (the others queue), each taking ``latency`` seconds.
    kind:
        ``"openai"`` (default) or ``"llama-cpp-python"``: answers ``GET /openapi.json`` with that server's
        title, rejects ``json_schema`` with a 500 and obeys ``{"type": "json_object", "schema": S}``.
    fail_after / fail_with / fail_for:
        From chat request ``fail_after`` on (0-based), answer ``fail_with`` (a fault name) to requests without
        a scripted fault, for ``fail_for`` requests (None: from then on). Both may be changed while serving.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        faults: Sequence[str | None] | Mapping[int, str] | None = None,
        api_key: str | None = None,
        retry_after: float | str = 1,
        timeout_sleep: float = 30.0,
        reject_json_schema: bool = False,
        reject_json_object: bool = False,
        model: str = "fake-model",
        seed: int = 0,
        always: str | None = None,
        serial: bool = False,
        kind: str = "openai",
        batch_validating_s: float = 0.05,
        batch_in_progress_s: float = 0.2,
        batch_failure_rate: float = 0.0,
        fail_after: int | None = None,
        fail_with: str = "500",
        fail_for: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r}; expected one of {sorted(KINDS)}")
        self.responder: Responder = responder if responder is not None else DefaultResponder(seed=seed)
        self.latency = float(latency)
        self._lock = threading.Lock()
        self._fault_queue: deque[str | None] = deque()
        self._fault_plan: dict[int, str] = {}
        if isinstance(faults, Mapping):
            self._fault_plan = {int(k): str(self._check_fault(v)) for k, v in faults.items() if v is not None}
        elif faults is not None:
            self.add_faults(faults)
        self._api_key = api_key
        self.retry_after = retry_after
        self.timeout_sleep = float(timeout_sleep)
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.model = model
        self.always = self._check_fault(always)
        self.serial = serial
        self.kind = kind
        self.fail_after = fail_after
        self.fail_with = self._check_fault(fail_with)
        self.fail_for = fail_for
        self._serial_lock = threading.Lock()
        self.abandoned = 0  # serial mode: requests computed although their client had gone
        self.computing = 0  # chat requests being answered now (queued ones in serial mode excluded)
        self.max_computing = 0
        self._odd_count = 0
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0  # chat requests being served or queued now (GETs are not counted)
        self.max_in_flight = 0
        self._chat_count = 0
        self._previous_text: str | None = None
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        #: ``/v1/files`` and ``/v1/batches`` (:mod:`fake_batches`); lines answered like chat requests.
        self.batches = BatchAPI(self.answer_body, validating_s=batch_validating_s,
                                in_progress_s=batch_in_progress_s, failure_rate=batch_failure_rate, seed=seed)

    def answer_body(self, body: dict[str, Any], index: int = 0) -> tuple[int, dict[str, Any]]:
        """``(200, chat completion)`` for a request body, as ``/v1/chat/completions`` answers it without a
        fault (the Batch API and vLLM ``run_batch`` simulations answer each JSONL line with it)."""
        return 200, self._completion(body, self._content(body, None), index)

    def __repr__(self) -> str:
        state = f"listening on {self.base_url}" if self._httpd else "stopped"
        return f"FakeOpenAIServer({state}, latency={self.latency})"

    @staticmethod
    def _check_fault(fault: str | None) -> str | None:
        if fault is not None and str(fault) not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)} or None")
        return None if fault is None else str(fault)

    def add_faults(self, faults: Iterable[str | None]) -> None:
        """Append faults to the queue consumed by the next chat requests (``None`` = a normal answer)."""
        checked = [self._check_fault(f) for f in faults]
        with self._lock:
            self._fault_queue.extend(checked)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled ``timeout`` requests are released."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop``, so records can still be matched to it)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer was never started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded chat completion requests, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.index is not None]

    # -- request handling ------------------------------------------------------------------------------------
    def _handle(self, handler: _Handler, body: dict[str, Any] | None) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        auth = headers.pop("authorization", None)
        headers["authorization"] = "<redacted>" if auth is not None else "<absent>"
        path, _, query = handler.path.partition("?")
        path = path.rstrip("/")
        record = RecordedRequest(method=handler.command, path=path, body=body, headers=headers,
                                 query=dict(parse_qsl(query, keep_blank_values=True)))
        is_chat = handler.command == "POST" and path.endswith("/chat/completions")
        with self._lock:
            self.requests.append(record)
            if is_chat:
                record.index = self._chat_count
                self._chat_count += 1
                if record.index in self._fault_plan:
                    record.fault = self._fault_plan[record.index]
                elif self._fault_queue:
                    record.fault = self._fault_queue.popleft()
                if record.fault is None:
                    record.fault = self.always
                if record.fault is None and self.fail_after is not None and record.index >= self.fail_after and (
                        self.fail_for is None or record.index < self.fail_after + self.fail_for):
                    record.fault = self.fail_with
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                record.concurrent = self.in_flight
        try:
            self._respond(handler, record, auth, is_chat)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up (e.g. its timeout); nothing to answer
        finally:
            if is_chat:
                with self._lock:
                    self.in_flight -= 1

    def _respond(self, handler: _Handler, record: RecordedRequest, auth: str | None, is_chat: bool) -> None:
        if self._api_key is not None and auth != f"Bearer {self._api_key}":
            self._send_error(handler, record, 401, "Incorrect API key provided.", "invalid_request_error",
                             code="invalid_api_key")
            return
        if handler.command == "GET" and record.path.endswith("/models"):
            self._send_json(handler, record, 200, {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "personagen-fake"}],
            })
            return
        if handler.command == "GET" and record.path == "/openapi.json" and self.kind == "llama-cpp-python":
            self._send_json(handler, record, 200, {
                "openapi": "3.1.0", "info": {"title": LLAMA_CPP_PYTHON_TITLE, "version": "0.3.36"}, "paths": {},
            })
            return
        if not is_chat and (record.path.startswith("/v1/files") or record.path.startswith("/v1/batches")):
            status, payload, ctype = self.batches.handle(handler.command, record.path, record.body)
            if isinstance(payload, bytes):
                self._send_bytes(handler, record, status, payload, ctype)
            else:
                self._send_json(handler, record, status, payload)
            return
        if not is_chat:
            self._send_error(handler, record, 404, f"no route for {handler.command} {record.path}", "not_found")
            return
        if self.serial:
            with self._serial_lock:  # one at a time; the others queue, as on llama.cpp's servers
                self._chat(handler, record)
        else:
            self._chat(handler, record)

    def _chat(self, handler: _Handler, record: RecordedRequest) -> None:
        with self._lock:
            self.computing += 1
            self.max_computing = max(self.max_computing, self.computing)
        try:
            self._answer_chat(handler, record)
        finally:
            with self._lock:
                self.computing -= 1

    def _answer_chat(self, handler: _Handler, record: RecordedRequest) -> None:
        body = record.body or {}
        if self.latency > 0:
            self._stopping.wait(self.latency)
        if self.serial and _client_gone(handler.connection):
            with self._lock:
                self.abandoned += 1  # computed for nobody: the client gave up while it was queued or running
        fault = record.fault
        if fault == "timeout":
            self._stopping.wait(self.timeout_sleep)
        if fault == "drop":
            record.status = None
            handler.close_connection = True
            # Close without writing a byte: the client sees a dropped connection.
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "429":
            self._send_error(handler, record, 429, "Rate limit reached; please retry later.", "requests",
                             code="rate_limit_exceeded", headers={"Retry-After": str(self.retry_after)})
            return
        if fault == "500":
            self._send_error(handler, record, 500, "The server had an error while processing your request.",
                             "server_error")
            return
        if fault == "model_404":
            model = body.get("model")
            self._send_error(handler, record, 404, f"The model `{model}` does not exist or you do not have access "
                             "to it.", "invalid_request_error", code="model_not_found")
            return
        if fault in ("broken_body", "html", "no_choices"):
            self._send_bad_body(handler, record, fault)
            return
        fmt = body.get("response_format") or {}
        fmt_type = fmt.get("type")
        if fmt_type == "json_schema" and (self.reject_json_schema or self.kind == "llama-cpp-python"):
            # Mirrors llama-cpp-python's server, which answers 500 to an unsupported response_format.
            self._send_error(handler, record, 500, "1 validation error: ('body', 'response_format', 'type') Input "
                             "should be 'text' or 'json_object', input: 'json_schema'", "internal_server_error")
            return
        if fmt_type == "json_object" and self.reject_json_object:
            self._send_error(handler, record, 400, "response_format type 'json_object' is not supported",
                             "invalid_request_error", param="response_format")
            return
        if fmt_type == "json_object" and isinstance(fmt.get("schema"), Mapping) and self.kind == "llama-cpp-python":
            # llama-cpp-python turns this schema into a grammar: answer as if json_schema had been asked.
            body = {**body, "response_format": {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}}
        content = self._content(body, fault)
        finish = "length" if fault == "length" else "stop"
        self._send_json(handler, record, 200, self._completion(body, content, record.index or 0, finish))

    @staticmethod
    def _send_bad_body(handler: _Handler, record: RecordedRequest, fault: str) -> None:
        """Status 200 with a body that is not a chat completion: cut JSON, an HTML page, or no ``choices``."""
        if fault == "html":
            data, ctype = HTML_PAGE.encode(), "text/html; charset=utf-8"
        elif fault == "no_choices":
            data, ctype = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "usage": None}).encode(), \
                "application/json"
        else:
            data, ctype = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess', \
                "application/json"
        record.status = 200
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _content(self, body: dict[str, Any], fault: str | None) -> str:
        if fault == "refusal":
            return REFUSAL_TEXT
        if fault == "schema_mismatch" and _wants_json(body):
            return json.dumps(SCHEMA_MISMATCH_ANSWER)
        if fault in ("german", "spanish", "long") and not _wants_json(body):
            return self._odd_text(fault)
        with self._lock:
            previous = self._previous_text
        if fault == "duplicate" and previous is not None:
            return previous
        answer = self.responder(body)
        content = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        if fault == "malformed_json":
            # A truncated answer: not valid JSON whatever was asked.
            return content[: max(1, len(content) // 2)].rstrip("}") + ', "unterminated'
        if fault == "length":
            # Cut by the token limit in the middle of a word (the response says finish_reason "length").
            return content[: max(1, len(content) // 2)].rstrip(" .!?")
        with self._lock:
            self._previous_text = content
        return content

    def _odd_text(self, fault: str) -> str:
        """A distinct text in German or Spanish, or one sentence of about 5,000 characters (``long``)."""
        with self._lock:
            self._odd_count += 1
            n = self._odd_count
        if fault == "long":
            rng = random.Random(n)
            clauses = [f"{rng.choice(_TIMES)} {rng.choice(_EVENTS)}" for _ in range(120)]
            text = "I felt joy because " + ", and then ".join(clauses)
            return text[:4990] + "."
        templates, events, times = _FOREIGN[fault]
        # The n-th combination: distinct for the first len(templates) * len(events) * len(times) texts.
        t, rest = divmod(n - 1, len(events) * len(times))
        e, k = divmod(rest, len(times))
        return templates[t % len(templates)].format(event=events[e], time=times[k])

    def _completion(self, body: dict[str, Any], content: str, index: int,
                    finish_reason: str = "stop") -> dict[str, Any]:
        prompt_tokens = max(1, math.ceil(len(_messages_text(body)) / 4))
        completion_tokens = max(1, math.ceil(len(content) / 4))
        return {
            "id": f"chatcmpl-fake-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _send_error(
        self,
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        message: str,
        kind: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self._send_json(handler, record, status, payload, headers=headers)

    @staticmethod
    def _send_bytes(handler: _Handler, record: RecordedRequest, status: int, data: bytes, ctype: str) -> None:
        record.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    @staticmethod
    def _send_json(
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        payload: Any,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        record.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

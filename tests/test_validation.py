"""The validated-candidate supply of stage 4: how much it validates ahead, and that it never stalls."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from personagen_core.generation._validation import Candidate, CandidateSource, Verdict


class _HarshValidator:
    """Keeps one candidate in ``keep_every``, like a weak local validator; records how many calls overlap
    and how many candidates stage 4 had taken when each call started."""

    def __init__(self, keep_every: int, taken: list[Candidate]) -> None:
        self.keep_every = keep_every
        self.taken = taken
        self.in_flight = 0
        self.peak = 0
        self.calls = 0
        self.taken_at_call: list[int] = []

    async def verdicts(self, stage: int, attrs: list[dict[str, str]]) -> list[Verdict]:
        self.calls += 1
        self.taken_at_call.append(len(self.taken))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.005)
        self.in_flight -= 1
        keep = self.keep_every
        return [Verdict("natural" if int(a["i"]) % keep == 0 else "implausible", "test") for a in attrs]


def _supply(max_batches: int | None, wanted: int = 6, *, keep_every: int = 8,
            prefetch: bool = True) -> tuple[_HarshValidator, list[Candidate]]:
    ids, taken = itertools.count(), []
    validator = _HarshValidator(keep_every, taken)

    def sample(n: int) -> list[Candidate]:
        return [Candidate(persona_id=i, attrs={"i": str(i)}, persona_text="", scenario_text=None)
                for i in itertools.islice(ids, n)]

    async def run() -> None:
        source = CandidateSource(
            sample=sample, validator=validator, stages=[1], batch_size=8,  # type: ignore[arg-type]
            need=lambda: wanted - len(taken), may_launch=lambda: True,
            record_verdicts=lambda *_: None, lookahead=16, max_batches=max_batches, prefetch=prefetch,
        )
        while len(taken) < wanted:
            candidate = await source.get()
            assert candidate is not None
            taken.append(candidate)
            await asyncio.sleep(0.001)  # the stage-4 call: lets batches launched meanwhile start
        await source.aclose()

    asyncio.run(asyncio.wait_for(run(), timeout=20))  # a stalled supply fails here instead of hanging
    return validator, taken


@pytest.mark.parametrize("cap", [1, 3])
def test_batches_in_production_never_exceed_the_cap(cap: int) -> None:
    validator, taken = _supply(cap)
    assert validator.peak <= cap
    assert [c.persona_id % 8 for c in taken] == [0] * 6  # only kept candidates reach stage 4
    assert len({c.persona_id for c in taken}) == 6


def test_without_a_cap_a_weak_validator_floods_the_queue() -> None:
    """What the cap prevents: with survival 1/8 the supply launches many batches at once."""
    uncapped, _ = _supply(None)
    capped, _ = _supply(1)
    assert uncapped.peak > 3
    assert capped.peak == 1
    assert capped.calls <= uncapped.calls  # the cap wastes no extra validation either


@pytest.mark.parametrize(("prefetch", "second_call_after"), [(True, 1), (False, 8)])
def test_prefetch_off_validates_the_next_batch_only_once_the_stock_is_used(
    prefetch: bool, second_call_after: int
) -> None:
    """A one-call-at-a-time backend keeps validation and generation calls in runs (prefix reuse)."""
    validator, taken = _supply(1, wanted=16, keep_every=1, prefetch=prefetch)
    assert validator.taken_at_call[:2] == [0, second_call_after]
    if not prefetch:
        assert validator.calls == 2  # two batches of 8 for 16 texts: nothing validated in vain
    assert [c.persona_id for c in taken] == list(range(16))

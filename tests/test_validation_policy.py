"""Validation follows measured validator quality; run-time estimates come from timings on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from personagen_core.generation import throughput
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig, ProgressEvent, run_generation
from personagen_core.generation.validation_policy import decide, default_validation, wilson_interval
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import DefaultResponder


def _quality(key: str, correct: int, n: int = 44) -> dict[str, Any]:
    half = n // 2
    kept = min(correct, half)
    return {"models": {key: {"validation": {"accuracy": correct / n, "confusion": {
        "plausible_kept": kept, "plausible_rejected": half - kept,
        "implausible_rejected": correct - kept, "implausible_kept": half - (correct - kept)}}}}}


_SPEED = {"models": {"m": {"rules_only": {"accepted_per_min": 9.0}, "validated": {"accepted_per_min": 3.0}}}}
_LOCAL = LLMSettings(backend="local", local_model="m")


def test_wilson_interval_matches_the_textbook_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_a_validator_at_chance_is_off_by_default_with_its_figure_and_cost() -> None:
    d = default_validation(_LOCAL, quality=_quality("m", 24), speed=_SPEED)
    assert d.validate is False and d.default is False and not d.explicit and d.at_chance
    assert (d.accuracy, d.n) == (pytest.approx(24 / 44), 44)
    assert "55% on 44 labelled personas" in d.message and "at chance" in d.message
    assert "LLM validation off" in d.message and "about 3.0x slower" in d.message
    # The user's choice wins, and the message then warns that the verdicts carry no information.
    on = decide(_LOCAL, True, quality=_quality("m", 24), speed=_SPEED)
    assert on.validate is True and on.default is False and on.explicit
    assert "LLM validation is on" in on.message and "no information" in on.message


def test_a_validator_clearly_better_than_chance_or_unmeasured_keeps_the_papers_validation() -> None:
    good = default_validation(_LOCAL, quality=_quality("m", 40), speed={})
    assert good.validate is True and good.interval[0] > 0.5 and good.message == ""
    unmeasured = default_validation(LLMSettings(backend="local", local_model="/x/custom.gguf"), quality={},
                                    speed={})
    assert unmeasured.validate is True and unmeasured.accuracy is None
    remote = default_validation(LLMSettings(backend="openai", api_key="k", model="gpt-4.1-mini"))
    assert remote.validate is True and remote.message == ""
    off = decide(LLMSettings(backend="openai", api_key="k"), False)
    assert off.validate is False and "rules and tables only" in off.message


def test_the_shipped_figures_put_every_embedded_model_at_chance() -> None:
    from personagen_core.local import MODELS

    for key in MODELS:
        d = default_validation(LLMSettings(backend="local", local_model=key))
        assert d.validate is False, (key, d)
        assert f"on {d.n} labelled personas" in d.message


def _local_http(requests: list[dict[str, Any]]) -> httpx.AsyncClient:
    """The embedded backend's wire format answered by the fake responder (no model is loaded)."""
    responder = DefaultResponder(seed=1)

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        content = responder(body)
        content = content if isinstance(content, str) else json.dumps(content)
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.mark.parametrize("validate", [None, True])
def test_embedded_runs_default_to_rules_only_and_record_the_decision(tmp_path: Path, validate: bool | None
                                                                     ) -> None:
    spec = load_pack("japan")
    settings = LLMSettings(backend="local", local_model="smollm2-135m")
    config = GenerationConfig(emotions=["joy", "anger"], per_emotion=2, seed=0, llm=settings, validate=validate)
    store = RunStore(tmp_path / "runs.sqlite")
    requests: list[dict[str, Any]] = []
    summary = run_generation(spec, config, store, http_client=_local_http(requests))
    assert summary.complete
    stored = store.run(summary.run_id)["config"]
    validation_calls = [r for r in requests if r.get("response_format")]
    if validate is None:
        assert stored["validate"] is False and validation_calls == []
        assert stored["validation_policy"]["default"] is False and not stored["validation_policy"]["explicit"]
        assert "LLM validation off" in stored["validation_policy"]["message"]
        assert store.funnel(summary.run_id)["stages"] == {} or all(
            v.get("validated", 0) == 0 for v in store.funnel(summary.run_id)["stages"].values())
    else:
        assert stored["validate"] is True and validation_calls
        assert stored["validation_policy"]["explicit"] and "LLM validation is on" in \
            stored["validation_policy"]["message"]


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _event(accepted: int) -> ProgressEvent:
    return ProgressEvent(run_id="r", accepted={"joy": accepted}, target={"joy": 10}, rejections={}, tokens=0,
                         cost=0.0, calls=0, elapsed_s=0.0, eta_s=None, state="running", message="",
                         stop_reason=None)


def test_calibration_on_a_fake_clock_gives_the_estimate(tmp_path: Path) -> None:
    spec = load_pack("japan")
    book = throughput.ThroughputBook(tmp_path / "throughput.json")
    config = GenerationConfig(per_emotion=50, llm=LLMSettings(backend="local", local_model="smollm2-135m"))
    assert throughput.estimate_run_time(config, 10, book) is None  # never timed: no invented figure
    clock = _Clock()
    seen: dict[str, Any] = {}

    def runner(spec: Any, cfg: GenerationConfig, store: RunStore, *, on_event: Any) -> None:
        seen["cfg"] = cfg
        for n, dt in ((0, 2.0), (1, 20.0), (2, 5.0), (3, 5.0)):  # first text after 22 s, then 5 s each
            clock.t += dt
            on_event(_event(n))

    m = throughput.calibrate(spec, config, book=book, clock=clock, runner=runner)
    assert (m.texts, m.seconds, m.first_text_s, m.source) == (3, 32.0, 22.0, "calibration")
    assert seen["cfg"].per_emotion == 1 and len(seen["cfg"].emotions) == 3 and seen["cfg"].validate_ is False
    est = throughput.estimate_run_time(config, 14, book)
    assert est.first_text_s == 22.0 and est.seconds_per_text == 5.0 and est.seconds == 22.0 + 13 * 5.0
    assert est.measured_texts == 3 and "about 1 minutes" not in est.message
    assert est.message.startswith("about a minute on this machine for 14 texts")
    # LLM validation is another profile: not estimated from the rules-only timing.
    assert throughput.estimate_run_time(config.model_copy(update={"validate_": True}), 14, book) is None


def test_real_runs_update_the_estimate_and_only_recent_ones_count(tmp_path: Path) -> None:
    book = throughput.ThroughputBook(tmp_path / "t.json")
    config = GenerationConfig(llm=LLMSettings(backend="openai", api_key="k", model="gpt-4.1-mini"))
    key = throughput.profile_key(config)
    clock = _Clock()
    timer = throughput.RunTimer(clock, accepted_before=4)  # a resumed run: 4 texts came earlier
    for n in (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14):
        clock.t += 2.0
        timer.observe(_event(n))
    book.record(key, timer.measurement())
    est = throughput.estimate_run_time(config, 101, book)
    assert (est.measured_texts, est.first_text_s, est.seconds_per_text) == (10, 4.0, 2.0)
    assert est.seconds == pytest.approx(4.0 + 100 * 2.0) and est.message.startswith("about 3 minutes")
    assert est.message.endswith("; from your last run on this machine (10 texts timed))")
    book.record(key, throughput.Measurement(0, 9.0, None, "run", 0.0))  # nothing accepted: not a rate
    for _ in range(throughput.KEEP):
        book.record(key, throughput.Measurement(11, 110.0, 10.0, "run", 0.0))
    est = throughput.estimate_run_time(config, 101, book)
    assert len(book.measurements(key)) == throughput.KEEP and est.seconds_per_text == 10.0
    assert est.basis == f"from your last {throughput.KEEP} runs on this machine ({11 * throughput.KEEP} texts timed)"
    assert throughput.profile_key(config.model_copy(update={"method": "attrprompt"})) != key


def test_models_overview_shows_each_figure_with_its_n_and_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from personagen_core.local import models

    ladder = {"rules": {"emotion_match": 0.6, "emotion_match_n": 100, "emotion_match_ci": [0.50, 0.69],
                        "rejections": {"refusal": 2},
                        "train_synthetic_test_real": {
                            "synthetic": {"accuracy": 0.41, "n_test": 300, "ci": [0.36, 0.47]},
                            "gold_same_size": {"accuracy": 0.52}, "majority": {"accuracy": 0.2}}},
              "llm": {"emotion_match": 0.55, "emotion_match_n": 40, "rejections": {}}}
    quality = _quality("qwen2.5-coder-1.5b", 24)
    quality["models"]["qwen2.5-coder-1.5b"]["ladder"] = ladder
    monkeypatch.setattr(models, "model_quality", lambda: quality)
    monkeypatch.setattr(models, "model_speed", lambda: {"models": {"qwen2.5-coder-1.5b": {
        "rules_only": {"accepted_per_min": 8.26}, "validated": {"accepted_per_min": 1.03},
        "slowdown": {"value": 3.2}}}})
    row = next(r for r in models.models_overview() if r["model"].startswith("qwen2.5-coder-1.5b"))
    assert row["validator accuracy"] == "55% of 44 (CI 40%-68%)"
    # An interval missing from the file is computed from the share and n (Wilson), never left out.
    lo, hi = wilson_interval(22, 40)
    assert row["emotion match"] == f"rules: 60% of 100 (CI 50%-69%); llm: 55% of 40 (CI {lo:.0%}-{hi:.0%})"
    assert row["synthetic→real accuracy"] == "rules: 41% of 300 (CI 36%-47%), gold 52%, majority 20%"
    assert row["refusals"] == "rules: 2 retried; llm: 0 retried"
    assert row["texts/min"] == "rules-only: 8.3; validated: 1.0"


def test_models_list_prints_the_shipped_figures_with_n_interval_and_speed() -> None:
    from typer.testing import CliRunner

    from personagen_core.cli import app
    from personagen_core.local import model_speed

    res = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "55% of 44 (CI 40%-68%)" in res.output
    for key, modes in model_speed().get("models", {}).items():
        assert f"texts/min {key} rules-only: {modes['rules_only']['accepted_per_min']:.1f}" in res.output

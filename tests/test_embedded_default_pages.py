"""The dashboard's embedded default: rules-only with the measured figure, a small run, a time estimate from
timings on this machine (injected here; a real calibration would load the 1.5B model)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(dashboard_home: Path) -> Path:
    """A fresh dashboard home: the shared ``dashboard_home`` fixture (conftest)."""
    return dashboard_home


def _open(at, page: str):
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("caption", "info", "warning") for e in getattr(at, kind))


def test_generate_page_embedded_default_is_small_rules_only_and_estimated_from_timings(home: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from personagen_core.generation import throughput
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.generation.validation_policy import default_validation
    from personagen_core.local import DEFAULT_MODEL

    at = _open(AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run(), "app_pages/4_generate.py")
    policy = default_validation(LLMSettings(backend="local", local_model=DEFAULT_MODEL))
    assert at.radio(key="keep_backend").value == "local"
    assert at.number_input(key="keep_per_emotion_embedded").value == 2
    toggle = at.toggle(key=f"keep_llm_validation_{DEFAULT_MODEL}")
    assert toggle.value is False
    text = _texts(at)
    assert policy.message in text and "LLM validation off" in text
    assert "never timed on this machine" in text
    assert any(b.label.startswith("Time 3 texts") for b in at.button)

    # A timing of these settings on this machine gives the estimate for the chosen size (7 emotions x 2).
    config = GenerationConfig(llm=LLMSettings(backend="local", local_model=DEFAULT_MODEL))
    throughput.ThroughputBook().record(throughput.profile_key(config),
                                       throughput.Measurement(3, 19.0, 9.0, "calibration", 0.0))
    at.run()
    infos = [i.value for i in at.info]
    # 9 s to the first text, then (19 - 9) / 2 = 5 s per text: 9 + 13 x 5 = 74 s.
    assert any(i.startswith("Time: about a minute on this machine for 14 texts (5.0 s per text, first text "
                            "after 9 s; from a short timing run on this machine (3 texts timed))") for i in infos), infos
    assert not any(b.label.startswith("Time 3 texts") for b in at.button)  # measured: no button

    # A finished run of these settings is recorded by the run itself; the estimate says it comes from it.
    throughput.ThroughputBook().record(throughput.profile_key(config),
                                       throughput.Measurement(9, 49.0, 9.0, "run", 1.0))
    at.run()
    infos = [i.value for i in at.info]
    assert any("from your last run and a short timing run on this machine (12 texts timed)" in i
               for i in infos), infos

    # Turning LLM validation on warns with the same figure; that profile was never timed.
    toggle.set_value(True).run()
    assert any(policy.message.split(" — ")[0] in w.value and "LLM validation is on" in w.value
               for w in at.warning)
    assert "never timed on this machine" in _texts(at)

    # The preview warns with the same figure when the embedded model validates.
    _open(at, "app_pages/3_preview.py")
    assert any("LLM validation is on" in w.value and f"on {policy.n} labelled personas" in w.value
               for w in at.warning)

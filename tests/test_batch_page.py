"""Dashboard: the Generate page's "Batch API" choice launches a Batch API run; the run view shows its batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_app_pages import _wait_for_run


@pytest.fixture
def home(dashboard_home: Path) -> Path:
    """A fresh dashboard home: the shared ``dashboard_home`` fixture (conftest)."""
    return dashboard_home


@pytest.mark.slow
def test_generate_page_batch_api_choice_runs_through_batches(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-test-0123456789", batch_in_progress_s=0.05) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.switch_page("app_pages/4_generate.py").run()
        assert not at.exception, [e.value for e in at.exception]
        at.number_input(key="keep_per_emotion").set_value(3)
        at.multiselect(key="keep_emotions").set_value(["joy", "anger"])
        at.toggle(key="keep_batch_api").set_value(True).run()
        at.number_input(key="keep_batch_poll").set_value(1).run()
        next(b for b in at.button if b.label == "Launch").click().run()
        assert not at.exception, [e.value for e in at.exception]
        store = RunStore(home / "runs.sqlite")
        run_id = str(_wait_for_run(home, timeout=90)["run_id"])
        assert store.run(run_id)["status"] == "done", store.run(run_id)
        assert not srv.chat_requests and srv.batches.creates  # everything went through batches
        assert store.accepted_counts(run_id) == {"joy": 3, "anger": 3}
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        tables = [d.value for d in at.dataframe if "batch_id" in getattr(d.value, "columns", [])]
        assert tables and set(tables[0]["batch_id"]) == set(store.batch_jobs(run_id)["batch_id"])
        assert any("Surplus texts" in c.value for c in at.caption)


def test_dashboard_resume_of_a_batch_run_takes_the_pages_limits(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Resume on the dashboard raises a batch run's cost limit to the Generate page's, as for async runs."""
    import ui.run_jobs as jobs
    from personagen_core.generation.batch import BatchOptions, run_batch_generation
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(batch_in_progress_s=0.02) as srv:
        llm = LLMSettings(backend="openai", base_url=srv.base_url, api_key="k", model="gpt-4.1-mini")
        cfg = GenerationConfig(per_emotion=3, emotions=["joy", "anger"], validate=True, llm=llm, max_cost=1e-9)
        stopped = run_batch_generation(load_pack("japan"), cfg, store, options=BatchOptions(poll_interval=0.02))
        assert stopped.stop_reason == "max_cost"
        started: dict[str, object] = {}
        monkeypatch.setattr(jobs, "get_store", lambda: store)
        monkeypatch.setattr(jobs, "kept", lambda key, default=None: {"max_cost": 5.0}.get(key, default))
        monkeypatch.setattr(jobs, "_start", lambda run_id, call, settings, cancel: started.update(call=call)
                            or run_id)
        jobs.resume_run(stopped.run_id, llm)
        summary = started["call"]()  # type: ignore[operator]
    assert summary.state == "done", summary.message
    assert store.accepted_counts(stopped.run_id) == {"joy": 3, "anger": 3}

"""Every run setting reaches both shells: each field of ``GenerationConfig`` and ``LLMSettings`` has a flag of
``personagen generate`` and a widget of the dashboard's Generate page, or is listed as deliberately absent
from that shell with a reason. A field added without either fails here; so does a mapping naming a flag or
a widget that does not exist. Two end-to-end tests check that the values set in each shell reach the run's
stored config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from personagen_core.cli import app
from personagen_core.cli.generate_cmds import NOT_ON_CLI, SETTING_FLAGS
from personagen_core.errors import BudgetExceeded
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.run_config import GenerationConfig
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from test_app_pages import _app, _open, _wait_for_run

from ui.settings_fields import NOT_IN_DASHBOARD, SETTING_FIELDS, setting_hint, stop_hint

FIELDS = [*GenerationConfig.model_fields, *LLMSettings.model_fields]
KEY = "sk-reach-test-0123456789"


@pytest.mark.parametrize(
    ("shell", "mapped", "absent"),
    [("CLI", SETTING_FLAGS, NOT_ON_CLI), ("dashboard", SETTING_FIELDS, NOT_IN_DASHBOARD)],
)
def test_every_setting_is_mapped_or_listed_with_a_reason(shell: str, mapped: dict, absent: dict) -> None:
    unmapped = [f for f in FIELDS if f not in mapped and f not in absent]
    assert not unmapped, f"{shell}: settings with no way to set them and no reason why: {unmapped}"
    both = sorted(set(mapped) & set(absent))
    assert not both, f"{shell}: listed as mapped and as absent: {both}"
    stale = sorted((set(mapped) | set(absent)) - set(FIELDS))
    assert not stale, f"{shell}: entries for settings that do not exist: {stale}"
    assert all(len(reason) > 20 for reason in absent.values()), "each absence needs a reason"


def test_every_flag_exists_on_generate() -> None:
    command = typer.main.get_command(app).commands["generate"]  # type: ignore[attr-defined]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    missing = sorted(flag for flag in SETTING_FLAGS.values() if flag not in options)
    assert not missing, f"SETTING_FLAGS names flags `generate` does not have: {missing}"


def _widget_keys(at) -> set[str]:
    kinds = ("number_input", "text_input", "selectbox", "slider", "toggle", "radio", "multiselect", "checkbox")
    return {str(w.key) for kind in kinds for w in getattr(at, kind) if w.key}


def _has(keys: set[str], key: str) -> bool:
    return any(k.startswith(key[:-1]) for k in keys) if key.endswith("*") else key in keys


def _generate_page():
    return _open(_app().run(), "app_pages/4_generate.py")


def test_every_dashboard_widget_exists_on_the_generate_page(dashboard_home: Path) -> None:
    at = _generate_page()
    keys = _widget_keys(at)  # the embedded backend: its model picker
    at.radio(key="keep_backend").set_value("compatible").run()
    keys |= _widget_keys(at)  # an OpenAI-compatible endpoint: URL, key, limits
    missing = {f: key for f, (key, _label) in SETTING_FIELDS.items() if not _has(keys, key)}
    assert not missing, f"SETTING_FIELDS names widgets the Generate page does not draw: {missing}"


def test_core_errors_name_settings_and_each_shell_adds_its_own_hint() -> None:
    exc = BudgetExceeded("the cost limit needs a price", settings=("max_cost", "token_budget"))
    from personagen_core.cli.generate_cmds import setting_hint as cli_hint

    assert cli_hint(exc) == " (set with --max-cost / --token-budget)"
    assert setting_hint(exc) == " (the Generate page's *Max cost (USD)* / *Token budget*)"
    assert "Token budget" in stop_hint("token_budget") and "Token budget" in stop_hint("max_tokens")
    assert stop_hint("cancelled") == ""


@pytest.mark.slow
def test_cli_flags_reach_the_stored_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    db = tmp_path / "runs.sqlite"
    with FakeOpenAIServer(api_key=KEY) as srv:
        res = CliRunner().invoke(app, [
            "generate", "--pack", "japan", "--emotions", "joy", "--per-emotion", "2", "--db", str(db),
            "--base-url", srv.base_url, "--model", "fake-model", "--stages", "12", "--validation-batch", "4",
            "--texts-per-persona", "2", "--near-duplicate-threshold", "0.9", "--temperature", "0.6",
            "--max-attempts", "500", "--max-cost", "50", "--token-budget", "10000000", "--rpm", "60000",
            "--tpm", "10000000", "--server", "openai", "--structured", "json_object", "--max-retries", "3",
            "--give-up-after", "20", "--concurrency", "5", "--timeout", "30", "--verdict-reasons", "rejected",
        ])
    assert res.exit_code == 0, res.output
    stored = RunStore(db).run(RunStore(db).list_runs()["run_id"].iloc[0])["config"]
    assert {k: stored[k] for k in ("stages", "validation_batch", "texts_per_persona", "near_duplicate_threshold",
                                   "temperature", "max_attempts", "max_cost", "token_budget", "verdict_reasons")} == {
        "stages": "12", "validation_batch": 4, "texts_per_persona": 2, "near_duplicate_threshold": 0.9,
        "temperature": 0.6, "max_attempts": 500, "max_cost": 50.0, "token_budget": 10_000_000,
        "verdict_reasons": "rejected"}
    llm = stored["llm"]
    assert {k: llm[k] for k in ("rpm", "tpm", "server", "structured", "max_retries", "give_up_after",
                                "concurrency", "timeout")} == {
        "rpm": 60000.0, "tpm": 10_000_000.0, "server": "openai", "structured": "json_object", "max_retries": 3,
        "give_up_after": 20, "concurrency": 5, "timeout": 30.0}


@pytest.mark.slow
def test_dashboard_widgets_reach_the_stored_config(dashboard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer(api_key=KEY) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        at = _generate_page()
        assert at.radio(key="keep_backend").value == "compatible"
        at.multiselect(key="keep_emotions").set_value(["joy"])
        at.number_input(key="keep_per_emotion").set_value(2)
        at.selectbox(key="keep_stages").set_value("12")
        at.number_input(key="keep_validation_batch").set_value(4)
        at.number_input(key="keep_texts_per_persona").set_value(2)
        at.number_input(key="keep_max_attempts").set_value(500)
        at.slider(key="keep_near_duplicate_threshold").set_value(0.9)
        at.number_input(key="keep_rpm").set_value(60000.0)
        at.number_input(key="keep_max_retries").set_value(3)
        at.number_input(key="keep_give_up_after").set_value(20)
        at.selectbox(key="keep_server").set_value("openai")
        at.selectbox(key="keep_structured").set_value("json_object")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        next(b for b in at.button if b.label == "Launch").click().run()
        assert not at.exception, [e.value for e in at.exception]
        run = _wait_for_run(dashboard_home)
    assert run["status"] == "done", run
    cfg = run["config"]
    assert (cfg["stages"], cfg["validation_batch"], cfg["texts_per_persona"], cfg["max_attempts"]) == ("12", 4, 2, 500)
    assert cfg["near_duplicate_threshold"] == pytest.approx(0.9)
    llm = cfg["llm"]
    assert (llm["rpm"], llm["max_retries"], llm["give_up_after"], llm["server"], llm["structured"]) == (
        60000.0, 3, 20, "openai", "json_object")

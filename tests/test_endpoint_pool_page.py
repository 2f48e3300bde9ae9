"""The Generate page's endpoints table (issue 14): two endpoints entered in the dashboard are kept across
pages, a bad row gets an error naming it, and a launched run spreads its calls over both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app_pages import _app, _button, _open, _texts, _wait_for_run, home  # noqa: F401 - the fixture


@pytest.mark.slow
def test_generate_page_runs_on_two_endpoints_entered_in_the_table(
    home: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from personagen_core.spec_library import SpecLibrary
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    monkeypatch.setenv("GPU2_KEY", "sk-gpu2-secret-0123456789")
    with FakeOpenAIServer() as a, FakeOpenAIServer(api_key="sk-gpu2-secret-0123456789") as b:
        at = _open(_app().run(), "app_pages/4_generate.py")
        at.radio(key="keep_backend").set_value("compatible").run()
        at.toggle(key="keep_several_endpoints").set_value(True).run()
        assert not at.exception
        added = [{"url": b.base_url, "weight": 3, "key_env": "GPU2_KEY", "max_concurrency": 4}]
        at.session_state["endpoints_editor"] = {  # what the browser's table sends: one edit, one new row
            "edited_rows": {0: {"url": a.base_url, "weight": 0}}, "added_rows": added, "deleted_rows": []}
        at.run()
        assert not at.exception
        assert f"endpoints table: entry 1 ({a.base_url}): field 'weight'" in _texts(at)  # named row and field
        # The table keeps its key: its state holds all edits since it was opened (the browser sends them all).
        at.session_state["endpoints_editor"] = {
            "edited_rows": {0: {"url": a.base_url, "weight": 1}}, "added_rows": added, "deleted_rows": []}
        at.run()
        at.text_input(key="keep_model").set_value("fake-model").run()
        at.number_input(key="keep_per_emotion").set_value(2)
        at.multiselect(key="keep_emotions").set_value(["joy", "anger"])
        at.run()
        # Kept across pages, as every other setting of the page.
        _open(at, "app_pages/5_explore.py")
        _open(at, "app_pages/4_generate.py")
        rows = at.session_state["_kept"]["endpoint_rows"]
        assert [(r["url"], r["weight"], r["key_env"], r["max_concurrency"]) for r in rows] == [
            (a.base_url, 1.0, None, None), (b.base_url, 3.0, "GPU2_KEY", 4)]
        assert any("Estimated" in i.value for i in at.info), _texts(at)
        _button(at, "Launch").click().run()
        assert not at.exception
        # The launch selected its run in the saved draft at once: a reload or another browser shows it.
        with SpecLibrary(home / "specs.sqlite") as lib:
            assert lib.load_draft().form["run"] == at.session_state["last_run_id"]
        run = _wait_for_run(home)
        assert run["status"] == "done", run
        used_a, used_b = len(a.chat_requests), len(b.chat_requests)
    endpoints = run["config"]["llm"]["endpoints"]
    assert [(e["url"], e["weight"], e["key_env"]) for e in endpoints] == [
        (a.base_url, 1.0, None), (b.base_url, 3.0, "GPU2_KEY")]
    usage = RunStore(home / "runs.sqlite").endpoint_usage(run["run_id"]).set_index("endpoint")
    assert int(usage.loc[a.base_url, "calls"]) == used_a > 0
    assert int(usage.loc[b.base_url, "calls"]) == used_b > 0  # B answered: its key came from GPU2_KEY
    assert int(usage["failed"].sum()) == 0
    draft = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert b"sk-gpu2-secret" not in draft  # neither the store nor the saved draft holds the key
    at.run()
    assert not at.exception
    assert any(df.value.columns[0] == "endpoint" for df in at.dataframe)  # the run view's usage per endpoint

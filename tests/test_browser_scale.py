"""The Generate page's issue-14 features walked in headless Chromium (Playwright), as a user does them.

* The *Batch API* switch: a small run goes through ``/v1/files`` + ``/v1/batches`` of the loopback fake (simulated
  turnaround); the run view's batch table follows it live, the run ends with its exact quotas, and after a
  reload and in a second browser session the same run and batch table are shown; the dataset export downloads.
* The *Several endpoints* table: a second endpoint is typed into the table, the run is launched over both, one
  of them starts failing mid-run, the run finishes on the healthy one, and the usage table shows the split per
  endpoint, also after a reload.

Tables are read through their toolbar's *Download as CSV* (the grid is a canvas), and compared with the run
store the page reads. One ``streamlit run`` server for the module; every wait is for a condition.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _browser import (
    BROWSER_MARKS,
    chromium,
    edit_cell,
    fill_number,
    multiselect_values,
    new_page,
    no_exception,
    recorded_page,
    selected,
    settle,
    switch_on,
    table_csv,
    unselect,
)

from personagen_core.testing.serving import served_dashboard, wait_until

pytestmark = BROWSER_MARKS

KEY = "sk-browser-scale-key-0123456789"
FINISHED = re.compile(r"\d+ / \d+ texts · (done|failed|stopped|cancelled|interrupted)")


class Served:
    """The dashboard, its home folder and log, and the fake endpoints: ``fake`` (the default, with the Batch
    API) and ``failing`` (answers a few calls, then only 500s)."""

    def __init__(self, url: str, home: Path, log: Path, fake: Any, failing: Any) -> None:
        self.url, self.home, self.log, self.fake, self.failing = url, home, log, fake, failing

    def store(self) -> Any:
        from personagen_core.store import RunStore

        return RunStore(self.home / "runs.sqlite")

    def newest_run(self) -> str | None:
        with self.store() as store:
            runs = store.list_runs()
        return str(runs.iloc[0]["run_id"]) if len(runs) else None

    def draft_form(self) -> dict[str, Any]:
        from personagen_core.spec_library import SpecLibrary

        with SpecLibrary(self.home / "specs.sqlite") as lib:
            draft = lib.load_draft()
        return dict(draft.form) if draft is not None else {}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    tmp = tmp_path_factory.mktemp("browser_scale")
    # A batch takes ~1.5 s to turn around (long enough for the page to show it in progress); the failing
    # endpoint answers its first 4 calls, then 500 to every call.
    with FakeOpenAIServer(api_key=KEY, batch_validating_s=0.3, batch_in_progress_s=1.2) as fake, \
            FakeOpenAIServer(api_key=KEY, fail_after=4, fail_with="500") as failing:
        env = {"PERSONAGEN_HOME": str(tmp / "home"), "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": KEY}
        log = tmp / "streamlit.log"
        with served_dashboard(env, log) as url:
            yield Served(url, tmp / "home", log, fake, failing)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def page(browser: Any, served: Served, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh session, recorded (:func:`_browser.recorded_page`)."""
    with recorded_page(browser, f"scale_{request.node.name}", served.log, height=1100) as p:
        yield p


def _open_generate(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/generate")
    page.get_by_role("heading", name="Generate").first.wait_for()
    page.get_by_text("Estimated", exact=False).first.wait_for(timeout=60_000)  # the settings form is drawn
    settle(page)
    no_exception(page)


def _small_run(page: Any) -> None:
    """Two texts for each of two emotions (joy, anger); the form may already hold them (kept in the draft)."""
    fill_number(page, "Texts per emotion", "2")
    for _ in range(10):  # one at a time, re-read: a click that lands while the page redraws is tried again
        extra = [e for e in multiselect_values(page, "Emotions") if e not in ("joy", "anger")]
        if not extra:
            break
        unselect(page, "Emotions", extra[0])
    assert multiselect_values(page, "Emotions") == ["joy", "anger"]


def _launch(page: Any, served: Served, before: str | None) -> str:
    """Press Launch; the id of the run it created (the page selects it)."""
    page.get_by_role("button", name="Launch").click()
    run_id = wait_until(lambda: (r := served.newest_run()) != before and r, timeout=30,
                        what="the launched run in the store")
    # The launch selected the run, also in the saved draft: a reload or another browser shows it.
    wait_until(lambda: served.draft_form().get("run") == run_id, timeout=30, what="the launched run in the draft")
    _picked(page, str(run_id))  # the run picker follows the launch
    return str(run_id)


def _picked(page: Any, run_id: str) -> None:
    """Wait until the run picker (not the *Compare with* one) shows ``run_id``."""
    wait_until(lambda: selected(page, "Run").startswith(run_id), timeout=60, what=f"the run picker on {run_id}")


def _frame_after(page: Any, caption: str) -> Any:
    """The dataframe drawn right after the caption ``caption`` (the run view's tables are captioned)."""
    return page.locator('[data-testid="stElementContainer"]', has=page.locator(
        '[data-testid="stCaptionContainer"]', has_text=re.compile(f"^{re.escape(caption)}"))).locator(
        'xpath=following-sibling::div[1]').locator('[data-testid="stDataFrame"]').first


def _reload(page: Any, run_id: str) -> None:
    page.reload()
    page.get_by_role("heading", name="Generate").first.wait_for()
    _picked(page, run_id)
    page.get_by_text(FINISHED).first.wait_for(timeout=60_000)
    settle(page)
    no_exception(page)


def test_batch_api_switch_runs_through_batches_live_and_after_reload(page: Any, browser: Any, served: Served) -> None:
    started = time.monotonic()
    _open_generate(page, served)
    _small_run(page)
    switch_on(page, "Batch API")
    fill_number(page, "Batch poll interval (s)", "1")
    run_id = _launch(page, served, served.newest_run())
    laps = {"form": time.monotonic() - started}

    # Live: the batch table appears while the run works, and its caption follows the batches' states.
    captions: list[str] = []

    def finished() -> bool:
        for text in page.locator('[data-testid="stCaptionContainer"]',
                                 has_text="Batches (Batch API)").all_inner_texts():
            if not captions or captions[-1] != text:
                captions.append(text)
        no_exception(page)
        return page.get_by_text(FINISHED).count() > 0

    wait_until(finished, timeout=120, interval=0.25, what="the batch run to finish in the page")
    settle(page)
    laps["run"] = time.monotonic() - started - sum(laps.values())
    assert page.get_by_text("4 / 4 texts · done").count(), page.locator("body").inner_text()[-2000:]
    live = [c for c in captions if " · " in c]  # "Batches (Batch API) · <what the run does now>"
    assert len(set(live)) >= 2, captions  # the view changed while the batches were worked on
    assert any(re.search(r"batch \S+ (validating|in_progress)", c) for c in live), captions

    with served.store() as store:
        run = store.run(run_id)
        jobs = store.batch_jobs(run_id)
        assert run["status"] == "done" and store.accepted_counts(run_id) == {"joy": 2, "anger": 2}
    assert not served.fake.chat_requests  # nothing went through /v1/chat/completions
    assert sorted(jobs["batch_id"]) == sorted(served.fake.batches.creates)  # each batch created once
    assert (jobs["status"] == "completed").all(), jobs

    def shown_batches(p: Any) -> pd.DataFrame:
        table = table_csv(p, _frame_after(p, "Batches (Batch API)"))
        return table.sort_values(["wave", "step", "attempt"]).reset_index(drop=True)

    expected = jobs[["wave", "step", "attempt", "status", "batch_id", "requests", "completed", "failed"]]
    expected = expected.sort_values(["wave", "step", "attempt"]).reset_index(drop=True)

    def same_as_store(table: pd.DataFrame) -> None:
        assert list(table["batch_id"]) == list(expected["batch_id"]), table
        assert list(table["status"]) == list(expected["status"])
        assert list(table["requests"]) == list(expected["requests"])
        assert list(table["completed"]) == list(expected["completed"])
        assert set(table["step"]) >= {"stage1", "stage2", "stage3", "generate"}  # one batch per stage

    same_as_store(shown_batches(page))
    page.get_by_text("Surplus texts (kept, not delivered)", exact=False).first.wait_for()

    # A reload is a new session: the kept run is shown again, with the same batches.
    _reload(page, run_id)
    same_as_store(shown_batches(page))

    # A second browser (no shared cookies) opens the same run and batch table.
    second = new_page(browser, 1100)
    _open_generate(second, served)
    _picked(second, run_id)
    second.get_by_text(FINISHED).first.wait_for(timeout=60_000)
    settle(second)
    same_as_store(shown_batches(second))

    # The dataset export of the run downloads from the Report page: exactly the accepted texts.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Report & export").first.click()
    page.get_by_role("heading", name="Report & export").first.wait_for()
    settle(page)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    assert info.value.suggested_filename == f"{run_id}.csv"
    raw = Path(info.value.path()).read_bytes()
    exported = pd.read_csv(info.value.path())
    assert len(exported) == 4 and exported["emotion"].value_counts().to_dict() == {"joy": 2, "anger": 2}
    assert KEY.encode() not in raw
    assert KEY not in served.log.read_text(errors="replace")
    laps["checks"] = time.monotonic() - started - sum(laps.values())
    print(f"batch walk: {time.monotonic() - started:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in laps.items())}), "
          f"{len(jobs)} batches, captions seen: {len(live)}")


def test_several_endpoints_table_splits_usage_and_survives_a_reload(page: Any, served: Served) -> None:
    started = time.monotonic()
    _open_generate(page, served)
    _small_run(page)
    switch_on(page, "Several endpoints")
    editor = page.locator('[data-testid="stDataFrame"]').first
    editor.wait_for()

    def rows() -> list[dict[str, Any]]:
        return served.draft_form().get("endpoint_rows") or []

    # The table opens with the endpoint from OPENAI_BASE_URL; add a row and type the second URL into it.
    if len(rows()) < 2:
        editor.hover()
        editor.get_by_role("button", name="Add row").click()
        wait_until(lambda: len(rows()) == 2, timeout=30, what="the added row in the saved draft")
        settle(page)
    # As a user fills a row: click its URL cell, type, Tab to the next cell (Model), type, Enter. (Each edit
    # used to re-create the grid, which dropped the typing in the next cell.)
    for _ in range(3):  # a click that lands while the grid redraws is tried again
        box = page.locator('[data-testid="stDataFrame"]').first.locator("canvas").first.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 100, box["y"] + 36 + 35 + 17)  # row 2, column URL (header 36 px, rows 35)
        edit_cell(page, served.failing.base_url, then="Tab")
        edit_cell(page, "fake-model", then="Enter")
        try:
            wait_until(lambda: [(r.get("url"), r.get("model")) for r in rows()] == [
                (served.fake.base_url, None), (served.failing.base_url, "fake-model")],
                timeout=10, what="both endpoints in the saved draft")
            break
        except TimeoutError:
            page.keyboard.press("Escape")
    assert [(r.get("url"), r.get("model")) for r in rows()] == [
        (served.fake.base_url, None), (served.failing.base_url, "fake-model")], rows()
    table = table_csv(page, page.locator('[data-testid="stDataFrame"]').first)
    assert list(table["url"]) == [served.fake.base_url, served.failing.base_url], table
    no_exception(page)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0

    before = served.newest_run()
    healthy_before, failing_before = len(served.fake.chat_requests), len(served.failing.chat_requests)
    run_id = _launch(page, served, before)
    laps = {"form": time.monotonic() - started}
    page.get_by_text(FINISHED).first.wait_for(timeout=120_000)
    settle(page)
    laps["run"] = time.monotonic() - started - sum(laps.values())
    assert page.get_by_text("4 / 4 texts · done").count(), page.locator("body").inner_text()[-2000:]

    with served.store() as store:
        run = store.run(run_id)
        assert run["status"] == "done" and store.accepted_counts(run_id) == {"joy": 2, "anger": 2}
        usage = store.endpoint_usage(run_id).set_index("endpoint")
    healthy = len(served.fake.chat_requests) - healthy_before
    failing = len(served.failing.chat_requests) - failing_before
    assert failing > 4 and healthy > 0  # the failing endpoint was used, then failed
    assert [e["url"] for e in run["config"]["llm"]["endpoints"]] == [served.fake.base_url, served.failing.base_url]
    assert int(usage.loc[served.fake.base_url, "calls"]) == healthy
    assert int(usage.loc[served.fake.base_url, "failed"]) == 0
    assert int(usage.loc[served.failing.base_url, "calls"]) == failing
    assert int(usage.loc[served.failing.base_url, "failed"]) == failing - 4  # its 500s, each recorded

    def same_as_store(p: Any) -> None:
        shown = table_csv(p, _frame_after(p, "Usage per endpoint")).set_index("endpoint")
        assert set(shown.index) == {served.fake.base_url, served.failing.base_url}, shown
        for endpoint in shown.index:
            assert int(shown.loc[endpoint, "calls"]) == int(usage.loc[endpoint, "calls"])
            assert int(shown.loc[endpoint, "failed"]) == int(usage.loc[endpoint, "failed"])

    same_as_store(page)
    _reload(page, run_id)
    same_as_store(page)
    # The table itself is kept too: the reloaded page shows both endpoints.
    table = table_csv(page, page.locator('[data-testid="stDataFrame"]').first)
    assert list(table["url"]) == [served.fake.base_url, served.failing.base_url], table
    assert KEY not in served.log.read_text(errors="replace")
    laps["checks"] = time.monotonic() - started - sum(laps.values())
    print(f"endpoints walk: {time.monotonic() - started:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in laps.items())}); "
          f"calls healthy {healthy}, failing {failing}")

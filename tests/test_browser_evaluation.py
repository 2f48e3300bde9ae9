"""End-to-end evaluation workflows in headless Chromium (Playwright) against one `streamlit run` server.

The runs are generated through the library (fake OpenAI endpoint) into the server's PERSONAGEN_HOME before
the server starts. The tests then walk what broke in issue 11: evaluating again in the same session and in a
second browser context (the process-wide embedder's SQLite cache used to fail from the second Streamlit
thread on), a run of 3 texts per emotion (partial results with warnings instead of a scikit-learn error),
and the Report page after a reload (a stored evaluation is reopened and its HTML downloaded and parsed).
Uses Debian's chromium; skipped when it is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _browser import ARTIFACTS, BROWSER_MARKS, chromium, goto, no_exception, settle

from personagen_core.testing.serving import served_dashboard

pytestmark = BROWSER_MARKS

KEY = "sk-browser-eval-key"


def _generate(home: Path, base_url: str, per_emotion: int, emotions: list[str] | None) -> str:
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore

    llm = LLMSettings(backend="openai", base_url=base_url, api_key=KEY, model="fake-model", concurrency=4)
    config = GenerationConfig(per_emotion=per_emotion, emotions=emotions, llm=llm)
    store = RunStore(home / "runs.sqlite")
    summary = run_generation(load_pack("japan"), config, store)
    assert summary.state == "done", summary
    return summary.run_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One streamlit server for the module, with two runs in its store: 3 texts for each of the 7 emotions,
    then (newest, so the pickers' default) 6 texts for each of 3 emotions."""
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    tmp = tmp_path_factory.mktemp("browser_eval")
    home = tmp / "home"
    with FakeOpenAIServer(api_key=KEY) as fake:
        small = _generate(home, fake.base_url, 3, None)
        normal = _generate(home, fake.base_url, 6, ["joy", "fear", "anger"])
        env = {"PERSONAGEN_HOME": str(home), "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": KEY}
        log_path = tmp / "streamlit.log"
        with served_dashboard(env, log_path) as url:
            yield {"url": url, "home": home, "small": small, "normal": normal, "log": log_path, "tmp": tmp}


@pytest.fixture(scope="module")
def browser(server: dict[str, Any]) -> Iterator[Any]:
    with chromium() as b:
        yield b


def _page(browser: Any, server: dict[str, Any], path: str = "") -> Any:
    """A page in a new browser context (= a new Streamlit session), opened on the app's home page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server["url"] + path)
    page.locator('[data-testid="stSidebarNav"]').wait_for()
    settle(page)
    return page


def _errors(page: Any) -> list[str]:
    return page.locator('[data-testid="stAlertContentError"]').all_inner_texts()


def _stored_options(page: Any) -> list[str]:
    """The options of the stored-evaluation picker, newest first (the list is opened, read, closed)."""
    box = page.locator('[data-testid="stSelectbox"]', has_text="Evaluation (newest first)")
    box.get_by_role("button", name="Open").click()
    page.get_by_role("option").first.wait_for()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return options


def _stored_count(server: dict[str, Any]) -> int:
    from personagen_core.evaluation.stored import EvaluationStore

    store = EvaluationStore(server["home"] / "evaluations.sqlite")
    try:
        return len(store.list())
    finally:
        store.close()


def _evaluate(page: Any, server: dict[str, Any]) -> None:
    """Press Evaluate and wait until a new evaluation is stored and drawn, without any error."""
    before = _stored_count(server)
    page.get_by_role("button", name="Evaluate").click()
    page.wait_for_function("() => true")  # let the click reach the server before polling
    deadline = 120_000
    while _stored_count(server) == before and deadline > 0:
        page.wait_for_timeout(500)
        deadline -= 500
        no_exception(page)
        assert not _errors(page), _errors(page)
    assert _stored_count(server) == before + 1, "no new evaluation was stored"
    settle(page)
    page.get_by_text("Evaluation (newest first)").first.wait_for(timeout=60_000)
    no_exception(page)
    assert not _errors(page), _errors(page)


def _set_cap(page: Any, value: int) -> None:
    cap = page.get_by_label("Max texts per run (0 = all)")
    cap.fill(str(value))
    cap.press("Enter")
    page.wait_for_timeout(500)  # the rerun starts
    settle(page)
    assert cap.input_value() == str(value)


def _select_run(page: Any, run_id: str) -> None:
    """Make ``run_id`` the only selected run of the Evaluate page's multiselect."""
    box = page.locator('[data-testid="stMultiSelect"]', has_text="Runs (several = side by side)")
    box.get_by_role("button", name="Clear all").click()
    settle(page)
    box.get_by_role("combobox").fill(run_id)
    page.get_by_role("option", name=re.compile(re.escape(run_id))).first.click()
    page.keyboard.press("Escape")
    settle(page)
    assert box.locator(f'[aria-label^="{run_id}"]').count() == 1


def _debug(page: Any, server: dict[str, Any], name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    print("--- page text ---\n" + page.locator("body").inner_text()[-3000:])
    print("--- streamlit log ---\n" + server["log"].read_text(errors="replace")[-3000:])


def test_evaluate_twice_in_one_session_and_once_in_another(browser: Any, server: dict[str, Any]) -> None:
    first = _page(browser, server)
    second = None
    try:
        goto(first, "Evaluate", "LLM judge")
        _evaluate(first, server)  # the first evaluation of the process: loads the embedder
        first.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)  # the projection
        _set_cap(first, 12)  # other settings: a real second evaluation, in another Streamlit thread
        _evaluate(first, server)
        assert "max 12 texts" in _stored_options(first)[0]

        second = _page(browser, server)  # a second browser context is a second session
        goto(second, "Evaluate", "LLM judge")
        _set_cap(second, 14)
        _evaluate(second, server)
        options = _stored_options(second)
        assert len(options) == 3 and all(server["normal"] in o for o in options), options
        assert "max 14 texts" in options[0]
        # Separability was computed (6 texts per emotion) and comes with its small-sample warning.
        second.get_by_role("tab", name="Separability").click()
        second.get_by_text(re.compile("too small to mean anything|fewer than 25 texts")).first.wait_for()
        # The table (a canvas grid: its headers are in hidden accessibility cells) has the interval and n.
        for header in ("accuracy interval", "n_test", "texts per class"):
            second.get_by_text(header, exact=True).first.wait_for(state="attached")
    except Exception:
        _debug(first, server, "eval_twice_failure")
        if second is not None:
            _debug(second, server, "eval_second_context_failure")
        raise
    finally:
        first.context.close()
        if second is not None:
            second.context.close()


def test_three_texts_per_emotion_shows_projection_and_diversity_with_warnings(
    browser: Any, server: dict[str, Any]
) -> None:
    page = _page(browser, server)
    try:
        goto(page, "Evaluate", "LLM judge")
        _select_run(page, server["small"])
        _set_cap(page, 0)  # kept values are shared through the draft: another test may have set a cap
        _evaluate(page, server)
        assert server["small"] in _stored_options(page)[0]
        page.get_by_text(f"{server['small']}: 21 (anger 3, fear 3", exact=False).first.wait_for()
        # Projection: the scatter is drawn, with the warning that 21 points say little.
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
        page.get_by_text("a picture of so few points", exact=False).first.wait_for()
        # Separability says what it needs instead of a scikit-learn error.
        page.get_by_role("tab", name="Separability").click()
        page.get_by_text("5 or more texts each", exact=False).first.wait_for()
        # Diversity: the table, per emotion with n = 3, flagged as unreliable.
        page.get_by_role("tab", name="Diversity").click()
        page.get_by_text("fewer than 25 texts", exact=False).first.wait_for()
        assert page.locator('[data-testid="stDataFrame"]').count() >= 2
        assert not _errors(page), _errors(page)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "eval_small_run.png"), full_page=True)
    except Exception:
        _debug(page, server, "eval_small_failure")
        raise
    finally:
        page.context.close()


class _Html(HTMLParser):
    """Collects the title, section ids and the text of the downloaded report."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.sections, self.text, self._in = "", [], [], ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in = tag
        if tag == "section":
            self.sections.append(dict(attrs).get("id"))

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in != "script":
            self.text.append(data)


def test_report_page_after_reload_downloads_a_stored_evaluation(browser: Any, server: dict[str, Any]) -> None:
    from personagen_core.evaluation.stored import EvaluationStore

    listed = EvaluationStore(server["home"] / "evaluations.sqlite").list()
    if listed.empty:  # run alone: store one evaluation through the page first
        page = _page(browser, server)
        goto(page, "Evaluate", "LLM judge")
        _select_run(page, server["small"])
        _evaluate(page, server)
        page.context.close()
        listed = EvaluationStore(server["home"] / "evaluations.sqlite").list()
    page = _page(browser, server)
    try:
        goto(page, "Report & export", "Download the HTML report")
        page.reload()  # a reload starts a new session: nothing of the evaluation is in its memory
        page.locator('[data-testid="stSidebarNav"]').wait_for()
        page.get_by_text("Download the HTML report").first.wait_for(timeout=60_000)
        settle(page)
        options = _stored_options(page)
        assert len(options) == len(listed)
        assert str(listed.iloc[0]["eval_id"]) in options[0]  # newest first
        # The picker shows the kept choice (or the newest): download that one.
        picker = page.locator('[data-testid="stSelectbox"]', has_text="Evaluation (newest first)")
        chosen = picker.get_by_role("combobox").input_value().rsplit(" · ", 1)[-1]
        assert chosen in set(listed["eval_id"]), chosen
        row = listed[listed["eval_id"] == chosen].iloc[0]
        with page.expect_download() as info:
            page.get_by_role("button", name="Download the HTML report").click()
        download = info.value
        assert download.suggested_filename == f"personagen_report_{chosen}.html"
        html = Path(download.path()).read_text(encoding="utf-8")
        parsed = _Html()
        parsed.feed(html)
        text = re.sub(r"\s+", " ", " ".join(parsed.text))
        runs = row["runs"]
        assert parsed.title.startswith("PersonaGen evaluation: ") and runs[0] in parsed.title
        assert {"datasets", "projections", "diversity", "separability", "settings"} <= set(parsed.sections)
        assert f"Stored evaluation {chosen}" in text
        assert "Table IV" in text
        assert not re.search(r"<script[^>]+src=", html)  # self-contained
        if runs == [server["small"]]:  # the small run's report carries its warnings
            assert "Small samples." in text and "fewer than 25 texts" in text
        assert not _errors(page), _errors(page)
    except Exception:
        _debug(page, server, "report_reload_failure")
        raise
    finally:
        page.context.close()

"""What the Chromium (Playwright) tests share: the browser, the markers, and waiting on Streamlit.

Serving the dashboard itself is :func:`personagen_core.testing.serving.served_dashboard` (the benches need
the port and wait helpers too); this module is for the tests only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: ``pytestmark`` of a browser test module: slow, marked ``browser``, skipped without Debian's chromium.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium (/usr/bin/chromium) is not installed; apt-get install chromium",
    ),
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, height: int = 1000) -> Any:
    """A page in a new browser context (a new Streamlit session, no shared cookies) that takes downloads,
    also a table's *Download as CSV* (:data:`NO_SAVE_PICKER`)."""
    context = browser.new_context(viewport={"width": 1400, "height": height}, accept_downloads=True)
    context.add_init_script(NO_SAVE_PICKER)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


@contextmanager
def recorded_page(browser: Any, name: str, log: Path, height: int = 1000) -> Iterator[Any]:
    """:func:`new_page` for one test: on exit its last view is saved as tests/artifacts/<name>.png, its text
    and the server's ``log`` are printed (pytest shows them when the test fails) and every context of
    ``browser`` (also a second session the test opened) is closed."""
    page = new_page(browser, height)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        print("--- page text ---\n" + page.locator("body").inner_text()[-3000:])
        print("--- streamlit log ---\n" + log.read_text(errors="replace")[-3000:])
        for context in list(browser.contexts):
            context.close()


def no_exception(page: Any) -> None:
    """Fail when the page shows a Streamlit exception box (a traceback)."""
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows a traceback"


def settle(page: Any) -> None:
    """Wait until Streamlit finished running the script (the status widget disappears)."""
    page.wait_for_timeout(300)  # a click's rerun may not have shown the status widget yet
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
    )


def goto(page: Any, title: str, ready_text: str) -> None:
    """Open a page from the sidebar and wait until ``ready_text`` (drawn late on that page) is visible."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title, exact=False).first.wait_for(timeout=30_000)
    page.get_by_text(ready_text, exact=False).first.wait_for(timeout=60_000)
    settle(page)
    no_exception(page)


def screenshot(page: Any, name: str) -> None:
    """Save a full-page screenshot as tests/artifacts/<name>.png (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# Streamlit widgets, found by their label.


def widget(page: Any, testid: str, label: str) -> Any:
    return page.locator(f'[data-testid="{testid}"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=re.compile(f"^{re.escape(label)}"))
    ).first


def fill_number(page: Any, label: str, value: str) -> None:
    box = widget(page, "stNumberInput", label).locator("input")
    box.fill(value)
    box.press("Enter")
    settle(page)


def fill_text(page: Any, label: str, value: str) -> None:
    box = widget(page, "stTextInput", label).locator("input")
    box.fill(value)
    box.press("Enter")
    settle(page)


def choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in a selectbox: type its start to filter the list, then click it."""
    field = widget(page, "stSelectbox", label).locator('input[role="combobox"]')
    for attempt in range(3):
        field.click()
        field.press("Control+a")
        field.press_sequentially(option[:4])
        choice = page.get_by_role("option", name=option, exact=True).first
        try:
            choice.wait_for(timeout=5_000)
        except Exception:
            page.keyboard.press("Escape")
            if attempt == 2:
                raise
            continue
        choice.click()
        break
    settle(page)


def selected(page: Any, label: str) -> str:
    return widget(page, "stSelectbox", label).locator('input[role="combobox"]').input_value()


def multiselect_values(page: Any, label: str) -> list[str]:
    tags = widget(page, "stMultiSelect", label).locator(".react-aria-ComboBox [data-tag]")
    return [tags.nth(i).get_attribute("aria-label") for i in range(tags.count())]


def unselect(page: Any, label: str, value: str) -> None:
    box = widget(page, "stMultiSelect", label).locator(".react-aria-ComboBox")
    box.get_by_role("button", name=f"Remove {value}", exact=True).click()
    settle(page)


def number(page: Any, label: str) -> str:
    return widget(page, "stNumberInput", label).locator("input").input_value()


def text(page: Any, label: str) -> str:
    return widget(page, "stTextInput", label).locator("input").input_value()


def switch_on(page: Any, label: str) -> None:
    """Turn a ``st.toggle`` on (its input is covered by the drawn switch: click the label) and wait for it."""
    box = page.locator('[data-testid="stCheckbox"]', has_text=label).first
    switch = box.get_by_role("switch")
    for _ in range(3):
        if switch.is_checked():
            break
        box.locator("label").first.click()
        settle(page)
    assert switch.is_checked(), f"the switch {label!r} did not turn on"


def edit_cell(page: Any, value: str, then: str = "Tab") -> None:
    """Type ``value`` into the selected cell of a ``st.data_editor`` grid, then press ``then`` (Tab: commit and
    move right; Enter: commit).

    Enter opens the cell's editor, and the value is typed once that editor is there: typed straight onto the
    selected cell, the keys that arrive while the grid mounts its editor are lost ("http://..." became
    "tp://..." in Chromium 156)."""
    page.keyboard.press("Enter")
    editor = page.locator("textarea.gdg-input").first
    editor.wait_for(timeout=10_000)
    editor.fill(value)
    page.keyboard.press(then)
    settle(page)


def table_csv(page: Any, frame: Any) -> Any:
    """A ``st.dataframe``/``st.data_editor`` as its toolbar's *Download as CSV* gives it (a pandas frame).

    The grid is a canvas: this is how to read every cell as the user sees it. Needs a context made with
    ``accept_downloads=True`` and :data:`NO_SAVE_PICKER`. A click that lands while the grid redraws is tried
    again."""
    import pandas as pd

    for attempt in range(3):
        try:
            frame.hover()
            with page.expect_download(timeout=10_000) as info:
                frame.get_by_role("button", name="Download as CSV").click(timeout=10_000)
            return pd.read_csv(info.value.path(), encoding="utf-8-sig")
        except Exception:
            if attempt == 2:
                raise
            settle(page)
    raise AssertionError("unreachable")


#: Init script for a context: Chromium has the File System Access API, with which Streamlit would open a
#: save dialog for *Download as CSV*; without it Streamlit falls back to a download Playwright receives.
NO_SAVE_PICKER = "delete window.showSaveFilePicker;"

"""What the Chromium (Playwright) tests share: the browser, the markers, and waiting on Streamlit.

Serving the dashboard itself is :func:`personagen_core.testing.serving.served_dashboard` (the benches need
the port and wait helpers too); this module is for the tests only.
"""

from __future__ import annotations

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

"""End-to-end: the dashboard served by `streamlit run`, driven in a real headless Chromium (Playwright).

Visits every page, moves a slider, launches a small generation against a local OpenAI-compatible test
server, waits for it to finish, opens the evaluation and saves a screenshot of each page under
tests/artifacts/ (gitignored). Uses Debian's chromium package; skipped when it is not installed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium (/usr/bin/chromium) is not installed; apt-get install chromium",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("streamlit did not become healthy in time")


@pytest.fixture()
def served_app(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """The app served by `streamlit run` with a fresh PERSONAGEN_HOME and a fake OpenAI endpoint."""
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-browser-test-key") as fake:
        port = _free_port()
        env = {
            **os.environ,
            "PERSONAGEN_HOME": str(tmp_path / "home"),
            "HF_HUB_OFFLINE": "1",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-browser-test-key",
        }
        log = (tmp_path / "streamlit.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc)
            yield url, fake
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows a traceback"


def _goto(page, title: str, ready_text: str) -> None:
    """Open a page from the sidebar and wait until ``ready_text`` (drawn late on that page) is visible."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title, exact=False).first.wait_for(timeout=30_000)
    page.get_by_text(ready_text, exact=False).first.wait_for(timeout=60_000)
    _settle(page)
    _no_exception(page)


def _settle(page) -> None:
    """Wait until Streamlit finished running the script (the status widget disappears)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
    )


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_end_to_end_in_chromium(served_app: tuple[str, object], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, fake = served_app
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.get_by_role("heading", name="Distributions").wait_for()
            _settle(page)
            _no_exception(page)

            # Move the first age slider by clicking on its track at 80 %: the spec and its neighbours change.
            first = page.locator('input[type="range"][aria-label="6-12"]')
            second = page.locator('input[type="range"][aria-label="13-17"]')
            before, second_before = float(first.get_attribute("value")), float(second.get_attribute("value"))
            slider = page.locator('[data-testid="stSlider"]', has=first)
            track = slider.locator('div[style*="position: relative"]').first
            box = track.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + box["height"] / 2)
            page.wait_for_function(
                "(b) => document.querySelector('input[type=range][aria-label=\"13-17\"]').value !== b",
                arg=second.get_attribute("value"),
            )
            _settle(page)
            after = float(first.get_attribute("value"))
            assert after > before + 0.5
            assert float(second.get_attribute("value")) < second_before  # renormalised
            _no_exception(page)
            _shot(page, "1_distributions")

            _goto(page, "Scenarios & emotions", "The spec currently has")
            _shot(page, "2_scenarios")
            _goto(page, "Persona preview", "Persona 6")
            _shot(page, "3_preview")

            # A small generation against the fake endpoint (its URL and key come from the app's environment):
            # 5 texts for each of the 7 emotions, enough for the held-out split of the separability check.
            _goto(page, "Generate", "Estimated")
            per_emotion = page.get_by_label("Texts per emotion")
            per_emotion.fill("5")
            per_emotion.press("Enter")
            _settle(page)
            page.get_by_text("Estimated", exact=False).first.wait_for()
            page.get_by_role("button", name="Launch").click()
            finished = page.get_by_text(
                re.compile(r"\d+ / \d+ texts · (done|failed|stopped|cancelled)")
            ).first
            finished.wait_for(timeout=180_000)  # generous: the check is the outcome, not the time
            assert "35 / 35 texts · done" in finished.inner_text(), finished.inner_text()
            _no_exception(page)
            assert fake.chat_requests, "the texts were generated by the test server"
            _shot(page, "4_generate")

            _goto(page, "Explore", "select a row")
            page.locator('[data-testid="stDataFrame"]').first.wait_for()
            _shot(page, "5_explore")

            _goto(page, "Evaluate", "LLM judge")
            page.get_by_role("button", name="Evaluate").click()
            page.locator('[data-testid="stPlotlyChart"], [data-testid="stAlertContentError"]').first.wait_for(
                timeout=90_000
            )
            _settle(page)
            _no_exception(page)
            errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
            assert not errors, errors
            _shot(page, "6_evaluate")

            _goto(page, "Real data", "Gold dataset")
            _shot(page, "7_real_data")
            _goto(page, "Report & export", "Download the HTML report")
            _shot(page, "8_report")
        except Exception:
            _shot(page, "failure")  # what the browser showed when the test failed
            # Printed output is shown with the failure: what the page said and what the server logged.
            print("--- page text ---\n" + page.locator("body").inner_text()[-4000:])
            log = (tmp_path / "streamlit.log").read_text(errors="replace")
            print("--- streamlit log ---\n" + log[-4000:])
            raise
        finally:
            context.close()
    assert {p.name for p in ARTIFACTS.glob("*.png")} >= {
        f"{n}.png"
        for n in (
            "1_distributions",
            "2_scenarios",
            "3_preview",
            "4_generate",
            "5_explore",
            "6_evaluate",
            "7_real_data",
            "8_report",
        )
    }

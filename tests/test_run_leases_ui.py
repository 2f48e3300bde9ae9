"""The dashboard takes a run's interrupted state from the run store (lease gone), not from its own clock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(dashboard_home: Path) -> Path:
    """A fresh dashboard home: the shared ``dashboard_home`` fixture (conftest)."""
    return dashboard_home


def _page_text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts + [str(getattr(p, "text", "")) for p in at.get("progress")])


def test_generate_page_shows_a_killed_run_as_interrupted_and_offers_resume(home: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from personagen_core.store import RunStore

    store = RunStore(home / "runs.sqlite")
    run_id = store.create_run(method="personagen", config={}, target={"joy": 2}, spec_yaml=None,
                              spec_hash=None, spec_name="x")
    store.acquire_lease(run_id)
    store.start_session(run_id)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # The run's process was killed a moment ago: its lease names a dead pid on this host, heartbeat fresh.
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE leases SET pid = ?, heartbeat = ? WHERE run_id = ?", (dead.pid, time.time(), run_id))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/4_generate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "interrupted" in _page_text(at)
    assert any(b.label == "Resume" for b in at.button)
    # the same run with a live holder (this process) is running: no Resume button
    with sqlite3.connect(store.path) as conn:
        import os

        conn.execute("UPDATE leases SET pid = ? WHERE run_id = ?", (os.getpid(), run_id))
    at.run()
    assert "interrupted" not in _page_text(at) and not any(b.label == "Resume" for b in at.button)

"""`personagen app` as a process: SIGTERM / SIGINT stop the Streamlit server it started (nothing left
listening, no orphan), and a busy port is refused with a message naming it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from personagen_core.testing.serving import free_port, listening, wait_for_http

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PERSONAGEN_HOME": str(tmp_path / "home"),
            "HF_HUB_OFFLINE": "1"}


def _start(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start `personagen app` and wait until its server answers; returns the CLI process and server pid."""
    log = tmp_path / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "personagen_core.cli", "app", "--port", str(port), "--address", "127.0.0.1"],
        cwd=ROOT, env=_env(tmp_path), stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", timeout=60, proc=proc, log=log)
    except Exception:
        proc.kill()
        raise
    found = re.search(r"server pid (\d+)", log.read_text())
    assert found, log.read_text()
    return proc, int(found.group(1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_and_leaves_nothinglistening(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc, server_pid = _start(tmp_path, port)
    assert listening(port) and Path(f"/proc/{server_pid}").exists()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert not listening(port), f"something still serves port {port} after {sig.name}"
    # The server process is gone (not a zombie or an orphan re-parented to init).
    status = Path(f"/proc/{server_pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


def test_busy_port_is_refused_with_its_number(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "personagen_core.cli", "app", "--port", str(port), "--address", "127.0.0.1"],
            cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60,
        )
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr and "--port" in out.stderr

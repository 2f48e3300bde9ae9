"""Serving things for tests and benches: a free loopback port, waiting for a condition or for a server to
answer, stopping a child process, and the dashboard served by ``streamlit run`` for a browser.

One copy of what the browser tests, the app-lifecycle and CLI tests, the llama.cpp server tests and
``bench/bench_endpoints.py`` each used to carry. It starts processes but imports nothing of Streamlit (the
dashboard runs in a child process), so ``personagen_core`` stays pure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

__all__ = [
    "ProcessExited",
    "free_port",
    "listening",
    "served_dashboard",
    "stop_process",
    "wait_for_http",
    "wait_until",
]

T = TypeVar("T")


class ProcessExited(RuntimeError):
    """The child process a wait depended on exited before the condition was met (message: its log's tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- log tail ---\n" + log.read_text(errors="replace")[-chars:]


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy and return that.

    Raises :class:`TimeoutError` naming ``what`` after ``timeout`` seconds, or :class:`ProcessExited`
    as soon as ``proc`` (the process that should bring the condition about) has exited; both messages end
    with the tail of ``log``. The condition is tried once more at the deadline, so a slow last poll does not
    turn a met condition into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what}: the process exited with code {proc.returncode}{_tail(log)}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s{_tail(log)}")
        time.sleep(interval)


def wait_for_http(
    url: str,
    *,
    timeout: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Wait until a GET of ``url`` answers 200 (see :func:`wait_until` for the errors)."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=timeout, what=f"waiting for {url} to answer 200", interval=0.3, proc=proc,
               log=log)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it is still there after ``timeout`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@contextmanager
def served_dashboard(
    env: Mapping[str, str], log: Path, *, timeout: float = 60.0, address: str = "127.0.0.1"
) -> Iterator[str]:
    """The dashboard (``app.py``) served by ``streamlit run`` on a free port; yields its URL.

    ``env`` is added to this process's environment (e.g. ``PERSONAGEN_HOME``, ``OPENAI_BASE_URL``); the
    server also gets ``HF_HUB_OFFLINE=1`` and ``PYTHONPATH`` set to this checkout, so it runs the same code
    as the caller whatever an editable install points at. Its output goes to ``log``. The server is stopped
    on exit.
    """
    from personagen_core.cli.app_cmd import app_path, build_command

    root = app_path().parent
    port = free_port(address)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root), **env}
    url = f"http://{address}:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(build_command(port, address=address), cwd=root, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"{url}/_stcore/health", timeout=timeout, proc=proc, log=log)
            yield url
        finally:
            stop_process(proc)

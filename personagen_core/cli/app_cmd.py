"""``personagen app``: launch the Streamlit dashboard, and stop it again.

The dashboard (``app.py``) lives at the repository root beside the ``personagen_core`` package; this
command runs it with the same Python interpreter as the CLI so that the dashboard sees the same
installed packages. The server is a child process: Ctrl+C (SIGINT) or SIGTERM stops it before this
command exits, and on Linux the child is also told to stop if this command is killed outright, so no
orphaned server is left holding the port.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import typer

from personagen_core.errors import PersonaGenError

__all__ = ["DEFAULT_PORT", "app_path", "build_command", "check_port_free", "register", "serve"]

DEFAULT_PORT = 8501
#: How long the server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0


def app_path() -> Path:
    """Return the path of the dashboard entry point (``<repo>/app.py``).

    Raises :class:`PersonaGenError` when the package is installed without the repository checkout
    (a wheel does not contain the dashboard).
    """
    path = Path(__file__).resolve().parents[2] / "app.py"
    if not path.is_file():
        raise PersonaGenError(
            f"the dashboard entry point was not found at {path}; "
            "run `personagen app` from an editable install of the repository"
        )
    return path


def build_command(port: int | None = None, *, address: str = "localhost") -> list[str]:
    """Return the ``streamlit run`` command line for the dashboard (current interpreter)."""
    path = app_path()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(path),
        "--server.headless",
        "true",
        "--server.address",
        address,
        "--browser.gatherUsageStats",
        "false",
    ]
    if port is not None:
        cmd += ["--server.port", str(port)]
    return cmd


def check_port_free(port: int, address: str = "localhost") -> None:
    """Raise :class:`PersonaGenError` naming ``address:port`` when something already listens there."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PersonaGenError(f"cannot serve on address {address!r}: {exc}") from exc
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise PersonaGenError(
                    f"port {port} on {address} is already in use ({exc.strerror}); stop what is serving "
                    f"there or choose another port with --port"
                ) from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when this process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(cmd: list[str], *, cwd: Path) -> int:
    """Run the server command until it exits or this process gets SIGINT/SIGTERM; then stop the server
    (SIGTERM, SIGKILL after :data:`STOP_TIMEOUT_S`) and return its exit code (0 after a requested stop)."""
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd),
        # Its own process group: a Ctrl+C in the terminal reaches only us, and we stop the server once.
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
    )
    stop_requested = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True
        if proc.poll() is None:
            proc.terminate()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        typer.echo(f"personagen app: server pid {proc.pid}; Ctrl+C stops it", err=True)
        deadline: float | None = None
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop_requested:
                    deadline = deadline or time.monotonic() + STOP_TIMEOUT_S
                    if time.monotonic() > deadline:
                        proc.kill()  # did not stop in time
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # an unexpected exception: never leave the server running
            proc.kill()
            proc.wait()
    return 0 if stop_requested else code


def register(app: typer.Typer) -> None:
    """Register the ``app`` command on the ``personagen`` typer application."""

    @app.command("app")
    def run_app(
        port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=1, max=65535, help="Port to serve on."),
        address: str = typer.Option("localhost", "--address", help="Address to bind to."),
    ) -> None:
        """Launch the Streamlit dashboard (Ctrl+C or SIGTERM stops it)."""
        check_port_free(port, address)
        cmd = build_command(port, address=address)
        # Run from the repo root so Streamlit picks up .streamlit/config.toml.
        raise typer.Exit(serve(cmd, cwd=app_path().parent))

"""``personagen app``: launch the Streamlit dashboard.

The dashboard (``app.py``) lives at the repository root beside the ``personagen_core`` package; this
command runs it with the same Python interpreter as the CLI so that the dashboard sees the same
installed packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from personagen_core.errors import PersonaGenError

__all__ = ["app_path", "build_command", "register"]


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


def register(app: typer.Typer) -> None:
    """Register the ``app`` command on the ``personagen`` typer application."""

    @app.command("app")
    def run_app(
        port: int = typer.Option(None, "--port", "-p", min=1, max=65535, help="Port to serve on."),
        address: str = typer.Option("localhost", "--address", help="Address to bind to."),
    ) -> None:
        """Launch the Streamlit dashboard (Ctrl+C to stop)."""
        cmd = build_command(port, address=address)
        # Run from the repo root so Streamlit picks up .streamlit/config.toml.
        try:
            code = subprocess.call(cmd, cwd=str(app_path().parent))
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)

"""Where PersonaGen keeps its files: the one owner of ``PERSONAGEN_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "runs_db"]


def home() -> Path:
    """``$PERSONAGEN_HOME`` (``~`` expanded), default ``~/.personagen``; not created here."""
    env = os.environ.get("PERSONAGEN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".personagen"


def runs_db() -> Path:
    """The default run store: ``<home>/runs.sqlite``."""
    return home() / "runs.sqlite"

"""Session-wide test settings: offline, and every PersonaGen write goes to a temporary home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub; the embedding model ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the dashboard does: OpenMP threads (LightGBM, llama.cpp) sleep instead of spinning, which
# on 2 shared cores keeps the Streamlit server, Chromium and the tests' own threads from starving.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests must never pick up a developer's real endpoint or key.
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
CARER_DIR = REPO_ROOT.parent / "shared" / "data" / "carer"


@pytest.fixture(autouse=True, scope="session")
def _personagen_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point PERSONAGEN_HOME (run store, caches) at a per-session temporary folder."""
    home = tmp_path_factory.mktemp("personagen_home")
    os.environ["PERSONAGEN_HOME"] = str(home)
    return home


@pytest.fixture
def carer_dir() -> Path:
    """The real CARER gold data beside the repo; tests that need it skip when it is absent."""
    if not (CARER_DIR / "test.txt").exists():
        pytest.skip(f"CARER gold data not found at {CARER_DIR} (see ../shared/data/carer/README.md)")
    return CARER_DIR


@pytest.fixture
def dashboard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PERSONAGEN_HOME for a dashboard test, no OpenAI settings from outside, empty Streamlit caches."""
    import streamlit as st

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path
    st.cache_data.clear()
    st.cache_resource.clear()

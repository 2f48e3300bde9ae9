"""Session and process state of the dashboard: the working spec, the run store, field errors, widget
values kept across pages, and the error boundary that turns exceptions into one-paragraph messages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from personagen_core import paths
from personagen_core.personas.spec import DEFAULT_PACK, load_pack
from personagen_core.store import RunStore
from ui.probabilities import redact

__all__ = [
    "current_spec",
    "defaults",
    "error_boundary",
    "field_error",
    "get_store",
    "home_dir",
    "keep_widget_state",
    "page_title",
    "set_spec",
    "show_error",
    "store_path",
]


def home_dir() -> Path:
    """Return ``$PERSONAGEN_HOME`` (default ``~/.personagen``)."""
    return paths.home()


def store_path() -> Path:
    """Return the run store path ``$PERSONAGEN_HOME/runs.sqlite``."""
    return paths.runs_db()


def _session_secrets() -> list[str]:
    """The API keys this session may hold (typed in the page or from the environment), for redaction."""
    keys = [st.session_state.get("keep_api_key"), os.environ.get("OPENAI_API_KEY")]
    return [k for k in keys if isinstance(k, str) and k]


def show_error(exc: BaseException, *, where: str | None = None) -> None:
    """Show an exception as one ``st.error`` paragraph (never a traceback, never a secret)."""
    from personagen_core.errors import PersonaGenError

    prefix = f"{where}: " if where else ""
    if isinstance(exc, PersonaGenError):
        text = f"{prefix}{exc}"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{prefix}unexpected error ({type(exc).__name__}){': ' + first[:300] if first else ''}"
    st.error(redact(text, _session_secrets()))


@contextlib.contextmanager
def error_boundary(where: str | None = None) -> Iterator[None]:
    """Context manager that shows any exception raised inside as a short ``st.error``.

    Streamlit's own control-flow exceptions (``st.stop``, ``st.rerun``) derive from ``BaseException``
    and pass through untouched.
    """
    try:
        yield
    except Exception as exc:  # the page stays usable; details are in the message
        show_error(exc, where=where)


def current_spec() -> Any:
    """Return the session's working spec, loading the default pack the first time."""
    if "spec" not in st.session_state:
        st.session_state["spec"] = load_pack(DEFAULT_PACK)
        st.session_state["spec_rev"] = 0
    return st.session_state["spec"]


def set_spec(spec: Any, *, replace: bool = False) -> None:
    """Store ``spec`` as the session's working spec; ``replace=True`` resets the widgets bound to it."""
    st.session_state["spec"] = spec
    if replace:
        st.session_state["spec_rev"] = st.session_state.get("spec_rev", 0) + 1


@st.cache_resource(show_spinner=False)
def _store_for(path: str) -> RunStore:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return RunStore(path)


def get_store() -> RunStore:
    """Return the run store at :func:`store_path`, opened once per process (``st.cache_resource``)."""
    return _store_for(str(store_path()))


def _set_field_error(field_key: str, message: str | None) -> None:
    errors = st.session_state.setdefault("field_errors", {})
    if message:
        errors[field_key] = message
    else:
        errors.pop(field_key, None)


def field_error(field_key: str) -> None:
    """Show the validation error recorded for ``field_key`` (if any) right where it is called."""
    message = st.session_state.get("field_errors", {}).get(field_key)
    if message:
        st.error(message, icon=":material/error:")


def keep_widget_state() -> None:
    """Keep ``keep_*`` widget values across page switches.

    Streamlit drops the state of a widget at the end of a run that did not draw it; the values are copied
    to a plain dict at the start of every run and put back when their widget's page is drawn again.
    """
    kept = st.session_state.setdefault("_kept_widgets", {})
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("keep_")]:
        kept[key] = st.session_state[key]
    for key, value in kept.items():
        if key not in st.session_state:
            st.session_state[key] = value


def defaults(**values: Any) -> None:
    """Initial values of ``keep_*`` widgets, set once in session state (the widgets take no ``value=``)."""
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def page_title(title: str) -> None:
    """Start a page: restore kept widget values (see :func:`keep_widget_state`), then draw the title.

    Done by each page rather than by ``app.py`` because a page can also run on its own (Streamlit's
    ``pages/`` folder convention, used by ``AppTest.switch_page``).
    """
    keep_widget_state()
    st.title(title)

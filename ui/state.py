"""Session and process state of the dashboard: the working spec and its server-side draft, the run store,
field errors, widget values kept across pages and reloads, and the error boundary that turns exceptions
into one-paragraph messages.

Widget values. Streamlit deletes the state of every widget that a run did not draw, so a value held only
by a widget is lost as soon as the user opens another page. Each kept value therefore lives in a plain
session dict (``st.session_state["_kept"]``, never deleted by Streamlit); :func:`keep` re-seeds the widget
from it before the widget is drawn and copies a change back in the widget's ``on_change``. The dict is
also saved with the draft in the spec library (``$PERSONAGEN_HOME/specs.sqlite``), so a reload, another
tab or a restarted server gets the same values. Values that must never reach the disk (the API key) are
kept with ``session_only=True`` in a separate dict that is never saved.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from personagen_core import paths
from personagen_core.personas.spec import DEFAULT_PACK, load_pack
from personagen_core.spec_library import SpecLibrary
from personagen_core.store import RunStore
from ui.probabilities import redact

__all__ = [
    "autosave",
    "current_spec",
    "defaults",
    "keep",
    "kept",
    "set_kept",
    "spec_library",
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
    keys = [
        st.session_state.get(_SESSION_ONLY, {}).get("api_key"),
        st.session_state.get("keep_api_key"),
        os.environ.get("OPENAI_API_KEY"),
    ]
    return [k for k in keys if isinstance(k, str) and k]


def show_error(exc: BaseException, *, where: str | None = None) -> None:
    """Show an exception as one ``st.error`` paragraph (never a traceback, never a secret)."""
    from personagen_core.errors import PersonaGenError
    from ui.settings_fields import setting_hint

    prefix = f"{where}: " if where else ""
    if isinstance(exc, PersonaGenError):
        text = f"{prefix}{exc}{setting_hint(exc)}"  # the core names settings; the hint names their fields
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


@st.cache_resource(show_spinner=False)
def _library_for(path: str) -> SpecLibrary:
    return SpecLibrary(path)


def spec_library() -> SpecLibrary:
    """The spec library at ``$PERSONAGEN_HOME/specs.sqlite``, one per process, shared by every session
    (thread-safe)."""
    return _library_for(str(paths.home() / "specs.sqlite"))


#: Session keys: the kept widget values (saved with the draft), the session-only ones (never saved),
#: what was last saved, so an unchanged draft is not written again, and the names the user set since.
_KEPT, _SESSION_ONLY, _SAVED, _SET = "_kept", "_kept_session", "_draft_saved", "_kept_set"
#: The spec as this session last loaded or saved it: what its own changes are measured from.
_SPEC_BASE = "_draft_spec_base"


def _restore_draft() -> None:
    """First run of a session: take the spec and form values from the server's draft (or the default pack)."""
    draft = None
    try:
        draft = spec_library().load_draft()
    except Exception as exc:  # an unreadable library must not make the dashboard unusable
        st.session_state["_draft_error"] = str(exc)
    spec = draft.spec if draft is not None and draft.spec is not None else load_pack(DEFAULT_PACK)
    st.session_state["spec"] = spec
    st.session_state[_SPEC_BASE] = spec.model_copy(deep=True)
    st.session_state["spec_rev"] = 0
    st.session_state[_KEPT] = dict(draft.form) if draft is not None else {}
    st.session_state[_SAVED] = (_digest(spec), _form_json(st.session_state[_KEPT]))


def _digest(spec: Any) -> str:
    import hashlib

    return hashlib.sha256(spec.model_dump_json().encode("utf-8")).hexdigest()


def _form_json(form: dict[str, Any]) -> str:
    import json

    return json.dumps(form, sort_keys=True, default=str)


def current_spec() -> Any:
    """Return the session's working spec: the server's draft the first time (else the default pack)."""
    if "spec" not in st.session_state:
        _restore_draft()
    return st.session_state["spec"]


def set_spec(spec: Any, *, replace: bool = False) -> None:
    """Store ``spec`` as the session's working spec (and the server's draft); ``replace=True`` resets the
    widgets bound to it."""
    st.session_state["spec"] = spec
    if replace:
        st.session_state["spec_rev"] = st.session_state.get("spec_rev", 0) + 1
    autosave()


def autosave() -> None:
    """Save the working spec and the kept form values as the server's draft when they changed."""
    if "spec" not in st.session_state:
        return
    spec, form = st.session_state["spec"], st.session_state.get(_KEPT, {})
    state = (_digest(spec), _form_json(form))
    saved = st.session_state.get(_SAVED, (None, None))
    user_set = st.session_state.get(_SET, set())
    if state == saved and not user_set:
        return
    try:
        if state[0] != saved[0]:
            # Only what this session changed in the spec goes over the stored one (another tab may have
            # tuned other distributions meanwhile).
            spec_library().update_draft_spec(st.session_state.get(_SPEC_BASE), spec)
            st.session_state[_SPEC_BASE] = spec.model_copy(deep=True)
        if state[1] != saved[1] or user_set:
            # Only the values this session changed (set by the user, or changed since the last save): the
            # draft keeps what other sessions changed meanwhile. A widget's default, filled in when a page
            # first draws it, is not a change: saved, it would undo another tab's setting.
            before = json.loads(saved[1]) if saved[1] else {}
            now = json.loads(state[1])
            changes = {k: form[k] for k, v in now.items() if k in user_set or (k in before and before[k] != v)}
            if changes:
                spec_library().update_draft_form(changes)
    except Exception as exc:  # shown once on the page; the session keeps working from memory
        st.session_state["_draft_error"] = str(exc)
        return
    st.session_state[_SAVED] = state
    st.session_state[_SET] = set()


def kept(name: str, default: Any = None) -> Any:
    """The kept value ``name`` (what its widget shows, on any page), or ``default``."""
    for store in (_SESSION_ONLY, _KEPT):
        values = st.session_state.get(store, {})
        if name in values:
            return values[name]
    return default


def set_kept(name: str, value: Any, *, session_only: bool = False) -> None:
    """Set a kept value; its widget shows it the next time it is drawn."""
    st.session_state.setdefault(_SESSION_ONLY if session_only else _KEPT, {})[name] = value
    if not session_only:
        st.session_state.setdefault(_SET, set()).add(name)


def _on_kept_change(name: str, store: str, key: str) -> None:
    st.session_state.setdefault(store, {})[name] = st.session_state.get(key)
    if store == _KEPT:
        st.session_state.setdefault(_SET, set()).add(name)


def keep(
    name: str, default: Any, *, session_only: bool = False, options: Any = None, key: str | None = None
) -> dict[str, Any]:
    """Bind a widget to the kept value ``name``: pass the result as the widget's keyword arguments
    (``key``, ``on_change``, ``args``) and give the widget no ``value``/``index``/``default`` of its own.

    With ``options``, a kept value that is no longer one of them (or, for a list, the items that are not)
    is dropped in favour of ``default``. ``session_only`` values are never saved to disk. ``key`` names
    the widget when several widgets show the same kept value (default ``keep_<name>``).
    """
    if "spec" not in st.session_state:
        _restore_draft()
    store = _SESSION_ONLY if session_only else _KEPT
    values = st.session_state.setdefault(store, {})
    value = values.get(name, default)
    if options is not None:
        allowed = list(options)
        if isinstance(value, list):
            value = [v for v in value if v in allowed]
        elif value not in allowed:
            value = default
    values[name] = value
    key = key or f"keep_{name}"
    st.session_state.setdefault("_bound_keys", set()).add(key)
    st.session_state[key] = value
    return {"key": key, "on_change": _on_kept_change, "args": (name, store, key)}


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
    """Keep ``keep_*`` widget values across page switches (widgets not bound with :func:`keep`).

    Streamlit drops the state of a widget at the end of a run that did not draw it; the values are copied
    to a plain dict at the start of every run and put back when their widget's page is drawn again.
    """
    kept = st.session_state.setdefault("_kept_widgets", {})
    bound = st.session_state.get("_bound_keys", set())
    for key in [
        k for k in st.session_state if isinstance(k, str) and k.startswith("keep_") and k not in bound
    ]:
        kept[key] = st.session_state[key]
    for key, value in kept.items():
        if key not in st.session_state:
            st.session_state[key] = value


def defaults(**values: Any) -> None:
    """Initial values of ``keep_*`` widgets, set once in session state (the widgets take no ``value=``)."""
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def page_title(title: str) -> None:
    """Start a page: restore the draft on a session's first run, keep widget values, save the draft when
    the last run changed it, then draw the title.

    Done by each page rather than by ``app.py`` so that every page script is complete on its own.
    """
    current_spec()
    keep_widget_state()
    autosave()
    st.title(title)
    if st.session_state.get("_draft_error"):
        st.warning(f"The draft could not be saved or read: {st.session_state.pop('_draft_error')}")

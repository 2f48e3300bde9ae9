"""Saved specs: named specs and the dashboard's auto-saved working draft, in one SQLite file.

The library lives at ``$PERSONAGEN_HOME/specs.sqlite`` (:func:`personagen_core.paths.home`). Named specs
are stored as their canonical YAML (``dump_spec``) and re-validated when loaded, so a saved spec is exactly
what a spec file would be; the CLI reads them by name (``--spec NAME``). The draft is what the dashboard
is editing right now: the spec (pydantic JSON, fast enough to save on every slider move) plus the
non-secret values of the dashboard's forms, so a reload, a second tab or a restarted server gets both back.

One :class:`SpecLibrary` may be shared by many threads (the dashboard keeps one per process): every
statement runs under a lock on one connection, and SQLite's own locking (WAL, busy timeout) orders
writers of several processes (dashboard and CLI).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personagen_core.errors import PersonaGenError, SpecError
from personagen_core.personas.spec import Spec, dump_spec, parse_spec, spec_hash

__all__ = [
    "Draft",
    "SavedSpec",
    "SpecLibrary",
    "default_library_path",
    "resolve_spec",
    "valid_name",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS specs (
    name TEXT PRIMARY KEY,
    spec_name TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    spec_yaml TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS drafts (
    draft TEXT PRIMARY KEY,
    spec_json TEXT,
    form_json TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
"""

#: A saved spec's name: letters, digits, space, ``_ . -``; it must not look like a file path.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,79}$")
#: Form fields that could hold a secret are refused, so a key typed in a page never reaches the disk.
# "token" names a secret (auth_token, hf_token), except the run's token budget (a number of tokens).
_SECRET_FIELD = re.compile(r"(api_?key|secret|token(?!_budget)|password)", re.IGNORECASE)


def _refuse_secrets(form: Mapping[str, Any]) -> None:
    bad = [k for k in form if _SECRET_FIELD.search(str(k))]
    if bad:
        raise PersonaGenError(f"refusing to save secret form field(s) {', '.join(sorted(bad))} to disk")


#: A key deleted between two specs (:func:`_changes`).
_DELETED = object()


def _json_object(text: str | None) -> dict[str, Any]:
    """A stored JSON object, or {} for none or an unreadable one."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _changes(old: Any, new: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, new value) of what differs from ``old`` to ``new``: dictionaries key by key, anything else whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() | new.keys():
            if key not in new:
                yield (*path, key), _DELETED
            elif key not in old or old[key] != new[key]:
                yield from _changes(old.get(key, _DELETED), new[key], (*path, key))
    elif old != new:
        yield path, new


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``data`` with ``value`` at ``path`` (dictionaries created as needed; ``_DELETED`` removes the key)."""
    if not path:
        return value if isinstance(value, dict) else data
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if value is _DELETED:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return data


def default_library_path() -> Path:
    """``$PERSONAGEN_HOME/specs.sqlite``."""
    from personagen_core import paths

    return paths.home() / "specs.sqlite"


def valid_name(name: str) -> str:
    """Return ``name`` stripped, or raise :class:`SpecError` saying what a spec name may contain."""
    stripped = (name or "").strip()
    if not _NAME.match(stripped) or stripped.endswith((".yaml", ".yml")):
        raise SpecError(
            f"{name!r} is not a valid saved-spec name: use 1-80 letters, digits, spaces, '_', '.' or '-', "
            "starting with a letter or digit, and no .yaml ending",
            "name",
        )
    return stripped


@dataclass(frozen=True)
class SavedSpec:
    """One row of :meth:`SpecLibrary.list`."""

    name: str
    spec_name: str
    spec_hash: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Draft:
    """The working draft: its spec (None when only form values were saved) and form values."""

    spec: Spec | None
    form: dict[str, Any]
    updated_at: float


class SpecLibrary:
    """Named specs and drafts in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_library_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # One connection used under a lock: Streamlit calls from many threads; SQLite objects may only
            # cross threads when access is serialised, which the lock does.
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no fsync per draft save (every slider move); a power cut can lose the last
            # draft writes, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise PersonaGenError(f"spec library {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SpecLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
                return cur.fetchall()
            except sqlite3.Error as exc:
                raise PersonaGenError(f"spec library {self.path}: {exc}") from exc

    # -- named specs --------------------------------------------------------------------------------------
    def save(self, name: str, spec: Spec, *, overwrite: bool = True) -> SavedSpec:
        """Save ``spec`` under ``name`` (replacing an existing one unless ``overwrite=False``)."""
        name = valid_name(name)
        text = dump_spec(spec)
        now = time.time()
        with self._lock:
            try:
                exists = self._db.execute("SELECT 1 FROM specs WHERE name = ?", (name,)).fetchone()
                if exists and not overwrite:
                    raise SpecError(f"a saved spec named {name!r} already exists", "name")
                self._db.execute(
                    "INSERT INTO specs(name, spec_name, spec_hash, spec_yaml, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET spec_name = excluded.spec_name,"
                    " spec_hash = excluded.spec_hash, spec_yaml = excluded.spec_yaml,"
                    " updated_at = excluded.updated_at",
                    (name, spec.name, spec_hash(spec), text, now, now),
                )
            except sqlite3.Error as exc:
                raise PersonaGenError(f"spec library {self.path}: {exc}") from exc
        return self.info(name)

    def info(self, name: str) -> SavedSpec:
        """The listing row of one saved spec (:class:`SpecError` when there is none of that name)."""
        rows = self._run(
            "SELECT name, spec_name, spec_hash, created_at, updated_at FROM specs WHERE name = ?", (name,)
        )
        if not rows:
            raise SpecError(self._missing(name), "name")
        return SavedSpec(*rows[0])

    def _missing(self, name: str) -> str:
        names = self.names()
        known = f"saved specs: {', '.join(names)}" if names else "no spec has been saved yet"
        return f"no saved spec named {name!r} in {self.path} ({known})"

    def names(self) -> list[str]:
        """Names of the saved specs, sorted."""
        return [r[0] for r in self._run("SELECT name FROM specs ORDER BY name")]

    def list(self) -> list[SavedSpec]:
        """Every saved spec, most recently updated first."""
        rows = self._run(
            "SELECT name, spec_name, spec_hash, created_at, updated_at FROM specs"
            " ORDER BY updated_at DESC, name"
        )
        return [SavedSpec(*r) for r in rows]

    def yaml(self, name: str) -> str:
        """The canonical YAML of a saved spec."""
        rows = self._run("SELECT spec_yaml FROM specs WHERE name = ?", (name,))
        if not rows:
            raise SpecError(self._missing(name), "name")
        return str(rows[0][0])

    def load(self, name: str) -> Spec:
        """The saved spec ``name``, validated like a spec file."""
        return parse_spec(self.yaml(name), source=f"saved spec {name!r}")

    def __contains__(self, name: object) -> bool:
        return bool(self._run("SELECT 1 FROM specs WHERE name = ?", (str(name),)))

    def rename(self, old: str, new: str) -> SavedSpec:
        """Rename a saved spec; refuses to overwrite another one."""
        new = valid_name(new)
        with self._lock:
            try:
                if not self._db.execute("SELECT 1 FROM specs WHERE name = ?", (old,)).fetchone():
                    raise SpecError(f"no saved spec named {old!r}", "name")
                if old != new and self._db.execute("SELECT 1 FROM specs WHERE name = ?", (new,)).fetchone():
                    raise SpecError(f"a saved spec named {new!r} already exists", "name")
                self._db.execute(
                    "UPDATE specs SET name = ?, updated_at = ? WHERE name = ?", (new, time.time(), old)
                )
            except sqlite3.Error as exc:
                raise PersonaGenError(f"spec library {self.path}: {exc}") from exc
        return self.info(new)

    def delete(self, name: str) -> None:
        """Delete a saved spec (:class:`SpecError` when there is none of that name)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM specs WHERE name = ?", (name,))
            deleted = cur.rowcount
        if not deleted:
            raise SpecError(self._missing(name), "name")

    # -- the working draft --------------------------------------------------------------------------------
    def save_draft(
        self, spec: Spec | None = None, form: Mapping[str, Any] | None = None, *, draft: str = "default"
    ) -> None:
        """Save the working spec and/or form values (``None`` keeps what the draft already has).

        Form values must be JSON-serialisable and none may be a secret: a field named like an API key,
        token or password raises :class:`PersonaGenError` (keys stay in the browser session's memory).
        """
        spec_json = spec.model_dump_json() if spec is not None else None
        form_json = None
        if form is not None:
            _refuse_secrets(form)
            try:
                form_json = json.dumps(dict(form), sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise PersonaGenError(f"draft form values are not JSON-serialisable: {exc}") from exc
        self._run(
            "INSERT INTO drafts(draft, spec_json, form_json, updated_at) VALUES (?,?,?,?)"
            " ON CONFLICT(draft) DO UPDATE SET"
            " spec_json = COALESCE(excluded.spec_json, drafts.spec_json),"
            " form_json = CASE WHEN ? THEN excluded.form_json ELSE drafts.form_json END,"
            " updated_at = excluded.updated_at",
            (draft, spec_json, form_json or "{}", time.time(), form_json is not None),
        )

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction taken at once (``BEGIN IMMEDIATE``: no other writer, in any process, between
        its reads and writes), under the lock; sqlite errors become :class:`PersonaGenError`."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # also when COMMIT itself failed: never leave it open
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise PersonaGenError(f"spec library {self.path}: {exc}") from exc

    def update_draft_form(self, changes: Mapping[str, Any], *, draft: str = "default") -> None:
        """Set the form values in ``changes`` in the draft, keeping every other value it holds.

        Each dashboard session saves only the values it changed: with several sessions open (two tabs, two
        people), saving a session's whole form would put back the values it loaded long ago over what the
        others changed since. Read, merge and write are one transaction, also against other processes.
        """
        _refuse_secrets(changes)
        try:
            update = json.loads(json.dumps(dict(changes), sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise PersonaGenError(f"draft form values are not JSON-serialisable: {exc}") from exc
        with self._immediate() as db:
            row = db.execute("SELECT form_json FROM drafts WHERE draft = ?", (draft,)).fetchone()
            form = _json_object(row[0] if row else None)
            db.execute(
                "INSERT INTO drafts(draft, spec_json, form_json, updated_at) VALUES (?, NULL, ?, ?)"
                " ON CONFLICT(draft) DO UPDATE SET form_json = excluded.form_json, updated_at = excluded.updated_at",
                (draft, json.dumps({**form, **update}, sort_keys=True), time.time()),
            )

    def update_draft_spec(self, base: Spec | None, spec: Spec, *, draft: str = "default") -> Spec:
        """Save the parts of ``spec`` that differ from ``base`` into the draft's spec; returns what was saved.

        ``base`` is the spec the session last loaded or saved. Only the fields it changed since (an
        attribute's items, a conditional row, the rules, ...: dictionaries are compared key by key, lists
        whole) are written over the stored spec, so a tab tuning one distribution does not put back the
        others as it loaded them over another tab's changes. When the merge is not a valid spec (the two
        tabs' edits contradict each other), or there is no ``base`` or stored spec, ``spec`` is saved whole.
        """
        with self._immediate() as db:
            row = db.execute("SELECT spec_json FROM drafts WHERE draft = ?", (draft,)).fetchone()
            stored = _json_object(row[0] if row else None)
            merged = spec
            if base is not None and stored:
                data = stored
                for path, value in _changes(base.model_dump(mode="json"), spec.model_dump(mode="json")):
                    data = _set_path(data, path, value)
                try:
                    merged = Spec.model_validate(data)
                except ValueError:  # contradicting edits: this session's spec, whole
                    merged = spec
            db.execute(
                "INSERT INTO drafts(draft, spec_json, form_json, updated_at) VALUES (?, ?, '{}', ?)"
                " ON CONFLICT(draft) DO UPDATE SET spec_json = excluded.spec_json, updated_at = excluded.updated_at",
                (draft, merged.model_dump_json(), time.time()),
            )
        return merged

    def load_draft(self, *, draft: str = "default") -> Draft | None:
        """The saved draft, or None. A draft whose spec no longer validates comes back without its spec."""
        rows = self._run("SELECT spec_json, form_json, updated_at FROM drafts WHERE draft = ?", (draft,))
        if not rows:
            return None
        spec_json, form_json, updated = rows[0]
        spec = None
        if spec_json:
            try:
                spec = Spec.model_validate_json(spec_json)
            except ValueError:  # written by an older version whose spec layout differs: keep the form
                spec = None
        try:
            form = json.loads(form_json or "{}")
        except ValueError:
            form = {}
        return Draft(spec=spec, form=form if isinstance(form, dict) else {}, updated_at=float(updated))

    def clear_draft(self, *, draft: str = "default") -> None:
        """Forget the draft."""
        self._run("DELETE FROM drafts WHERE draft = ?", (draft,))


def resolve_spec(value: str | Path, *, library: SpecLibrary | None = None, normalise: bool = False) -> Spec:
    """Load ``value`` as a spec file when such a file exists, else as a saved spec name.

    The error when neither exists names both places that were looked at.
    """
    from personagen_core.personas.spec import load_spec

    path = Path(value)
    if path.is_file():
        return load_spec(path, normalise=normalise)
    text = str(value)
    if not _NAME.match(text.strip()):
        return load_spec(path, normalise=normalise)  # looks like a path: the file error says what is wrong
    lib = library if library is not None else SpecLibrary()
    try:
        if text.strip() not in lib:
            raise SpecError(f"no spec file {str(path)!r}, and {lib._missing(text.strip())}", "spec")
        spec = lib.load(text.strip())
    finally:
        if library is None:
            lib.close()
    if normalise:
        return parse_spec(dump_spec(spec), normalise=True, source=f"saved spec {text!r}")
    return spec

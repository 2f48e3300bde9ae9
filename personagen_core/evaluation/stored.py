"""Stored evaluations: every evaluation report with its settings, kept in SQLite under ``PERSONAGEN_HOME``.

The dashboard and ``personagen evaluate`` save each report here, so an evaluation can be reopened after a
reload or a restart, listed with its runs, date and settings, and turned into the stakeholder HTML report
at any time. The file also remembers the gold data files used recently (paths only, never their content).

One :class:`EvaluationStore` is shared by all the threads of a dashboard process: it holds one connection
opened with ``check_same_thread=False`` and takes a lock around every use (Streamlit runs every script run
in a new thread, so a connection per thread would leave one open file per finished run behind). WAL and a
busy timeout let another process (the CLI) write the same file meanwhile.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personagen_core import paths
from personagen_core.errors import StoreError

__all__ = ["LIST_COLUMNS", "EvaluationStore", "content_key", "default_path", "describe_settings"]

#: Columns of :meth:`EvaluationStore.list`.
LIST_COLUMNS = [
    "eval_id",
    "created_at",
    "source",
    "datasets",
    "runs",
    "n_texts",
    "settings",
    "has_gold",
    "warnings",
    "summary",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    eval_id     TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    source      TEXT NOT NULL,
    input_key   TEXT,
    datasets    TEXT NOT NULL,   -- JSON list of dataset names, in report order
    runs        TEXT NOT NULL,   -- JSON list of the run ids evaluated (may be empty: data files)
    n_texts     INTEGER NOT NULL,
    settings    TEXT NOT NULL,   -- JSON of report["settings"]
    has_gold    INTEGER NOT NULL,
    warnings    INTEGER NOT NULL,
    report      BLOB NOT NULL    -- zlib-compressed JSON of the whole report
);
CREATE INDEX IF NOT EXISTS evaluations_key ON evaluations (input_key, created_at);
CREATE TABLE IF NOT EXISTS evaluation_html (
    eval_id     TEXT PRIMARY KEY,
    renderer    TEXT NOT NULL,   -- report.renderer_id() when rendered: another renderer re-renders
    html        BLOB NOT NULL    -- zlib-compressed report.html
);
CREATE TABLE IF NOT EXISTS recent_gold (
    path     TEXT PRIMARY KEY,
    split    TEXT,
    used_at  TEXT NOT NULL
);
"""


def default_path() -> Path:
    """``<PERSONAGEN_HOME>/evaluations.sqlite``."""
    return paths.home() / "evaluations.sqlite"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _frame_digest(frame: pd.DataFrame | None) -> str:
    """sha256 of a table's content (every column, in order, as text), independent of its index."""
    if frame is None:
        return "-"
    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    for col in frame.columns:
        values = [str(v) for v in frame[col].tolist()]  # pandas' str dtype keeps NaN as a float
        # The lengths make the joined bytes unambiguous whatever the texts contain.
        digest.update(np.fromiter(map(len, values), dtype=np.int64, count=len(values)).tobytes())
        digest.update("\x00".join(values).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def content_key(
    datasets: Mapping[str, pd.DataFrame],
    *,
    settings: Any,
    gold: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
    label_map: Mapping[str, Any] | None = None,
    extra: Iterable[Any] = (),
) -> str:
    """A key for :meth:`EvaluationStore.save` / :meth:`~EvaluationStore.find` from the inputs' content:
    every dataset (name and all its columns), the gold splits, the label map, the settings and ``extra``
    (e.g. the embedding model's identity, rejections, the judge's endpoint), plus the package version so
    that a new release recomputes. Hashing 100,000 texts takes a fraction of a second."""
    from personagen_core import __version__

    dump = getattr(settings, "model_dump_json", None)
    settings_json = dump() if dump is not None else json.dumps(settings, sort_keys=True)
    parts = [
        __version__,
        settings_json,
        [[name, _frame_digest(frame)] for name, frame in datasets.items()],
        [_frame_digest(g) for g in gold],
        dict(label_map or {}),
        [str(x) for x in extra],
    ]
    return "content:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def describe_settings(settings: Mapping[str, Any]) -> str:
    """A one-line summary of an evaluation's settings for pickers and listings."""
    from personagen_core.evaluation.projection import METHOD_NAMES

    proj = settings.get("projections") or []
    parts = [
        "projections " + ("+".join(METHOD_NAMES.get(p, p) for p in proj) or "none"),
        f"seed {settings.get('seed', 0)}",
    ]
    if settings.get("max_texts"):
        parts.append(f"max {settings['max_texts']} texts")
    if settings.get("judge"):
        parts.append("judge" + (f" {settings['judge_model']}" if settings.get("judge_model") else ""))
    return ", ".join(parts)


class EvaluationStore:
    """Evaluation reports saved with their settings (SQLite, WAL; safe to share between threads)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"evaluation store {self.path} cannot be opened: {exc}") from exc

    # ------------------------------------------------------------------------------------ evaluations

    def save(
        self,
        report: Mapping[str, Any],
        *,
        runs: Iterable[str] = (),
        source: str = "api",
        key: str | None = None,
    ) -> str:
        """Store ``report`` and return its new evaluation id.

        ``runs`` are the run ids evaluated (listed and searchable); ``source`` says who evaluated
        (``dashboard``, ``cli``, ``api``); ``key`` identifies the inputs (runs, their sizes, settings, gold
        data) so that :meth:`find` can return the stored result of the same evaluation instead of redoing it.
        """
        from personagen_core.evaluation.report import to_jsonable

        data = to_jsonable(report)
        try:
            blob = zlib.compress(json.dumps(data, allow_nan=False).encode("utf-8"), 6)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the report cannot be stored as JSON: {exc}") from exc
        created = str(data.get("generated_at") or _now())
        # The date first, so that ids sort by time; the random part keeps concurrent saves distinct.
        eval_id = f"ev-{created[:19].replace('-', '').replace(':', '').replace('T', '-')}-{uuid.uuid4().hex[:6]}"
        datasets = data.get("datasets") or {}
        row = (
            eval_id,
            created,
            source,
            key,
            json.dumps(list(datasets)),
            json.dumps([str(r) for r in runs]),
            int(sum(int(d.get("n", 0)) for d in datasets.values())),
            json.dumps(data.get("settings") or {}, sort_keys=True),
            int(bool(data.get("gold"))),
            len(data.get("warnings") or []),
            blob,
        )
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO evaluations VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        return eval_id

    def get(self, eval_id: str) -> dict[str, Any]:
        """The stored report (``report["stored"]`` gives its id, source and runs). StoreError if unknown."""
        with self._lock:
            row = self._conn.execute(
                "SELECT report, source, runs, created_at FROM evaluations WHERE eval_id = ?", (eval_id,)
            ).fetchone()
        if row is None:
            raise StoreError(f"no stored evaluation {eval_id!r} in {self.path}")
        report = json.loads(zlib.decompress(row[0]))
        report["stored"] = {
            "eval_id": eval_id,
            "source": row[1],
            "runs": json.loads(row[2]),
            "stored_at": row[3],
        }
        return report

    def find(self, key: str) -> str | None:
        """The id of the newest evaluation stored with inputs ``key``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT eval_id FROM evaluations WHERE input_key = ? ORDER BY created_at DESC, rowid DESC "
                "LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else str(row[0])

    def list(self, *, limit: int | None = None, run_id: str | None = None) -> pd.DataFrame:
        """Stored evaluations, newest first (columns :data:`LIST_COLUMNS`); ``run_id`` keeps those of a run."""
        sql = (
            "SELECT eval_id, created_at, source, datasets, runs, n_texts, settings, has_gold, warnings "
            "FROM evaluations ORDER BY created_at DESC, rowid DESC"
        )
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        records = []
        for r in rows:
            datasets, runs, settings = json.loads(r[3]), json.loads(r[4]), json.loads(r[6])
            if run_id is not None and run_id not in runs:
                continue
            records.append(
                {
                    "eval_id": r[0],
                    "created_at": r[1],
                    "source": r[2],
                    "datasets": datasets,
                    "runs": runs,
                    "n_texts": int(r[5]),
                    "settings": settings,
                    "has_gold": bool(r[7]),
                    "warnings": int(r[8]),
                    "summary": f"{', '.join(datasets)} · {int(r[5])} texts · {describe_settings(settings)}"
                    + (" · gold" if r[7] else ""),
                }
            )
            if limit is not None and len(records) >= limit:
                break
        return pd.DataFrame(records, columns=LIST_COLUMNS)

    def save_html(self, eval_id: str, html: str, *, renderer: str) -> None:
        """Keep the rendered HTML page of ``eval_id`` (drawing 10,000-point projections takes seconds; a
        rerun of the same evaluation writes the kept page). ``renderer`` identifies the code that drew it."""
        blob = zlib.compress(html.encode("utf-8"), 6)
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO evaluation_html (eval_id, renderer, html) VALUES (?, ?, ?)",
                (eval_id, renderer, blob),
            )

    def get_html(self, eval_id: str, *, renderer: str) -> str | None:
        """The kept HTML page of ``eval_id`` drawn by ``renderer``, or None (never kept, or drawn by other
        code)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT html FROM evaluation_html WHERE eval_id = ? AND renderer = ?", (eval_id, renderer)
            ).fetchone()
        return None if row is None else zlib.decompress(row[0]).decode("utf-8")

    def delete(self, eval_id: str) -> None:
        """Remove a stored evaluation (StoreError if unknown)."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM evaluation_html WHERE eval_id = ?", (eval_id,))
            cur = self._conn.execute("DELETE FROM evaluations WHERE eval_id = ?", (eval_id,))
        if cur.rowcount == 0:
            raise StoreError(f"no stored evaluation {eval_id!r} in {self.path}")

    # ------------------------------------------------------------------------------ recent gold files

    def remember_gold_file(self, path: str | os.PathLike[str], *, split: str | None = None) -> None:
        """Remember that ``path`` (made absolute) was used as gold data (``split``: train / test)."""
        resolved = str(Path(path).expanduser().resolve())
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO recent_gold (path, split, used_at) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET split = excluded.split, used_at = excluded.used_at",
                (resolved, split, _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")),
            )
            # Keep the memory small: the 50 most recent paths.
            self._conn.execute(
                "DELETE FROM recent_gold WHERE path NOT IN "
                "(SELECT path FROM recent_gold ORDER BY used_at DESC, rowid DESC LIMIT 50)"
            )

    def recent_gold_files(self, *, split: str | None = None, limit: int = 10) -> list[str]:
        """Recently used gold files that still exist, newest first (``split`` filters train / test)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT path, split FROM recent_gold ORDER BY used_at DESC, rowid DESC"
            ).fetchall()
        out = [p for p, s in rows if (split is None or s in (None, split)) and Path(p).is_file()]
        return out[:limit]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

"""The run store's Batch API tables (generation/batch.py): ``batch_runs``, ``batch_jobs``, ``batch_requests``
and ``batch_surplus``, with the :class:`BatchTables` methods that :class:`personagen_core.store.RunStore`
inherits (split out of store.py to keep it readable; the public API is RunStore's, unchanged).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from personagen_core.errors import StoreError
from personagen_core.generation.vocabulary import KEPT_VERDICTS

__all__ = ["BATCH_JOB_COLUMNS", "BATCH_SCHEMA", "BatchTables", "migrate_batch_tables"]

#: Batch API runs (generation/batch.py): per run its options, per remote batch (one wave step) its ids and
#: status, per request what it carries (candidates or one text slot), and texts beyond a quota (surplus).
BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_runs (
    run_id TEXT PRIMARY KEY,
    options_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    wave INTEGER NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL,
    batch_id TEXT,
    input_file_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    ingested INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    kept INTEGER NOT NULL DEFAULT 0,
    judged INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_jobs_run ON batch_jobs(run_id, job_id);
CREATE TABLE IF NOT EXISTS batch_requests (
    run_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    groups_json TEXT NOT NULL,
    persona_id INTEGER,
    emotion TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (run_id, custom_id)
);
CREATE INDEX IF NOT EXISTS batch_requests_job ON batch_requests(job_id);
CREATE INDEX IF NOT EXISTS batch_requests_persona ON batch_requests(run_id, persona_id);
CREATE TABLE IF NOT EXISTS batch_surplus (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    emotion TEXT NOT NULL,
    text TEXT NOT NULL,
    persona_id INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_surplus_run ON batch_surplus(run_id);
"""
BATCH_JOB_COLUMNS = (
    "job_id", "run_id", "wave", "step", "attempt", "status", "batch_id", "input_file_id", "output_file_id",
    "error_file_id", "requests", "completed", "failed", "ingested", "message", "created_at", "updated_at",
    "kept", "judged",
)
#: Columns added to ``batch_jobs`` after it first shipped: what a job's answers kept of what they judged
#: (candidates for a validation step, outputs for generation), for the wave sizing's recent rates.
_ADDED_JOB_COLUMNS = ("kept", "judged")


def migrate_batch_tables(conn: sqlite3.Connection) -> None:
    """Create the batch tables, and add the columns a store from an older version lacks."""
    conn.executescript(BATCH_SCHEMA)
    have = {r[1] for r in conn.execute("PRAGMA table_info(batch_jobs)")}
    for col in _ADDED_JOB_COLUMNS:
        if col not in have:
            conn.execute(f"ALTER TABLE batch_jobs ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")



class BatchTables:
    """Batch API methods of :class:`personagen_core.store.RunStore` (a mixin: it uses the store's
    connection helpers ``_query``, ``_write``, ``_writemany``, ``_tx``, ``_defer`` and ``_lock``)."""

    if TYPE_CHECKING:  # RunStore's connection helpers, declared for type checkers
        path: Path
        _lock: threading.RLock

        def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...
        def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor: ...
        def _writemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
        def _tx(
            self, sql: str | None = None, params: Sequence[Any] = (), many: list[Sequence[Any]] | None = None
        ) -> sqlite3.Cursor | None: ...
        def _defer(self, sql: str, rows: Iterable[Sequence[Any]], *, checked: bool = False) -> None: ...

    def _has_batch_tables(self) -> bool:
        """False for a store written before batch mode existed and opened read-only (never migrated)."""
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batch_jobs'"))

    def set_batch_run(self, run_id: str, options: Mapping[str, Any]) -> None:
        """Mark ``run_id`` as a Batch API run with its ``options`` (poll interval, retries; no secrets)."""
        self._write(
            "INSERT OR REPLACE INTO batch_runs(run_id, options_json, created_at) VALUES (?,?,?)",
            (run_id, json.dumps(dict(options), sort_keys=True), time.time()),
        )

    def batch_run(self, run_id: str) -> dict[str, Any] | None:
        """The batch options of a Batch API run, None for a run of the async path."""
        if not self._has_batch_tables():
            return None
        rows = self._query("SELECT options_json FROM batch_runs WHERE run_id = ?", (run_id,))
        return json.loads(rows[0][0]) if rows else None

    def add_batch_job(
        self,
        run_id: str,
        *,
        wave: int,
        step: str,
        attempt: int,
        requests: Sequence[tuple[list[list[int]], int | None, str | None]],
    ) -> int:
        """Record a batch before it is sent, with its requests ``(groups, persona_id, emotion)`` (custom ids
        ``<job_id>-<index>``), in one transaction together with every deferred write: the job id."""
        now = time.time()
        with self._lock:
            cur = self._tx(
                "INSERT INTO batch_jobs(run_id, wave, step, attempt, status, requests, created_at, updated_at)"
                " VALUES (?,?,?,?,'preparing',?,?,?)",
                (run_id, wave, step, attempt, len(requests), now, now),
            )
            assert cur is not None
            job_id = int(cur.lastrowid or 0)
            self._writemany(
                "INSERT INTO batch_requests(run_id, custom_id, job_id, groups_json, persona_id, emotion)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (run_id, f"{job_id}-{i}", job_id, json.dumps(g), pid, emo)
                    for i, (g, pid, emo) in enumerate(requests)
                ],
            )
        return job_id

    def update_batch_job(self, job_id: int, **fields: Any) -> None:
        """Set columns of a batch job (``status``, ``batch_id``, file ids, counts, ``ingested``, ``message``,
        ``kept``, ``judged``)."""
        bad = set(fields) - set(BATCH_JOB_COLUMNS[2:])
        if bad:
            raise StoreError(f"unknown batch job field(s): {', '.join(sorted(bad))}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(
            f"UPDATE batch_jobs SET {cols}, updated_at = ? WHERE job_id = ?",
            (*fields.values(), time.time(), job_id),
        )

    def drop_batch_job(self, job_id: int) -> None:
        """Forget a batch job that was never sent (a crash before its upload) and its requests."""
        self._write("DELETE FROM batch_requests WHERE job_id = ?", (job_id,))
        self._write("DELETE FROM batch_jobs WHERE job_id = ?", (job_id,))

    def batch_jobs(self, run_id: str) -> pd.DataFrame:
        """Every batch of a run in order: ``job_id, wave, step, attempt, status, batch_id``, file ids,
        ``requests, completed, failed, ingested, message`` and times (empty for other runs)."""
        if not self._has_batch_tables():
            return pd.DataFrame(columns=list(BATCH_JOB_COLUMNS))
        rows = self._query(
            f"SELECT {self._job_columns()} FROM batch_jobs WHERE run_id = ? ORDER BY job_id",
            (run_id,),
        )
        return pd.DataFrame([dict(r) for r in rows], columns=list(BATCH_JOB_COLUMNS))

    def _job_columns(self) -> str:
        """The SELECT list of batch_jobs (0 for a column a read-only store from an older version lacks)."""
        have = {r[1] for r in self._query("PRAGMA table_info(batch_jobs)")}
        return ", ".join(c if c in have else f"0 AS {c}" for c in BATCH_JOB_COLUMNS)

    def batch_job(self, job_id: int) -> dict[str, Any]:
        """One batch job as a dict (StoreError if unknown)."""
        rows = self._query(f"SELECT {self._job_columns()} FROM batch_jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise StoreError(f"no batch job {job_id} in the run store {self.path}")
        return dict(rows[0])

    def batch_requests(self, job_id: int) -> list[dict[str, Any]]:
        """The requests of a batch job: ``custom_id, groups`` (persona ids per prompt item),
        ``persona_id, emotion, status`` (``pending``, ``ok``, ``failed``)."""
        rows = self._query(
            "SELECT custom_id, groups_json, persona_id, emotion, status FROM batch_requests WHERE job_id = ?"
            " ORDER BY rowid",
            (job_id,),
        )
        return [
            {"custom_id": r[0], "groups": json.loads(r[1]), "persona_id": r[2], "emotion": r[3], "status": r[4]}
            for r in rows
        ]

    def set_batch_request_status(self, run_id: str, items: Sequence[tuple[str, str]]) -> None:
        """Set ``(custom_id, status)`` of batch requests (deferred like other bookkeeping)."""
        self._defer(
            "UPDATE batch_requests SET status = ? WHERE run_id = ? AND custom_id = ?",
            [(st, run_id, cid) for cid, st in items],
        )

    def generation_uses(self, run_id: str) -> dict[int, int]:
        """Per candidate, the generation requests of a Batch API run that were sent or answered (not
        failed): how many of its ``texts_per_persona`` are used."""
        rows = self._query(
            "SELECT persona_id, COUNT(*) FROM batch_requests WHERE run_id = ? AND persona_id IS NOT NULL"
            " AND status != 'failed' GROUP BY persona_id",
            (run_id,),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def candidates_with_status(self, run_id: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Candidates of a run whose funnel status is one of ``statuses``: ``persona_id, status, attrs,
        persona_text, scenario_text``, in id order."""
        marks = ",".join("?" * len(statuses))
        rows = self._query(
            "SELECT persona_id, status, attrs_json, persona_text, scenario_text FROM personas"
            f" WHERE run_id = ? AND status IN ({marks}) ORDER BY persona_id",
            (run_id, *statuses),
        )
        return [
            {"persona_id": int(r[0]), "status": r[1], "attrs": json.loads(r[2]), "persona_text": r[3],
             "scenario_text": r[4] or None}
            for r in rows
        ]

    def stage_survival(self, run_id: str) -> dict[int, tuple[int, int]]:
        """Per stage, ``(kept, judged)`` verdict counts of the run (the measured acceptance rates)."""
        kept = sorted(KEPT_VERDICTS)
        rows = self._query(
            f"SELECT stage, SUM(verdict IN ({', '.join('?' * len(kept))})), COUNT(*) FROM verdicts"
            " WHERE run_id = ? GROUP BY stage",
            (*kept, run_id),
        )
        return {int(r[0]): (int(r[1] or 0), int(r[2])) for r in rows}

    def add_surplus(self, run_id: str, *, emotion: str, text: str, persona_id: int | None) -> None:
        """Record a text that passed every check after its emotion's quota was met (kept, not delivered)."""
        self._defer(
            "INSERT INTO batch_surplus(run_id, emotion, text, persona_id, created_at) VALUES (?,?,?,?,?)",
            [(run_id, emotion, text, persona_id, time.time())],
        )

    def surplus_counts(self, run_id: str) -> dict[str, int]:
        """Surplus texts per emotion (Batch API runs; never part of exports or accepted counts)."""
        if not self._has_batch_tables():
            return {}
        return {
            r[0]: int(r[1])
            for r in self._query(
                "SELECT emotion, COUNT(*) FROM batch_surplus WHERE run_id = ? GROUP BY emotion", (run_id,)
            )
        }

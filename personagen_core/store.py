"""SQLite run store (WAL): runs, personas, verdicts, texts, rejections, usage, judge scores, events.

Everything a run pays for is committed as soon as it arrives, so a process killed with ``kill -9`` loses at
most the calls that were in flight. Accepted texts are protected twice: a ``UNIQUE(run_id, text_norm)``
constraint (no duplicate text in a run) and a quota guard inside the ``INSERT`` (never more than the target
per emotion, even with several writers; it reads a per-(run, emotion) counter that triggers keep exact).

One connection per thread (``sqlite3`` connections are not shared across threads); the dashboard can read
a run from its own thread or process while the pipeline writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from personagen_core import paths
from personagen_core.errors import StoreError
from personagen_core.generation.vocabulary import FUNNEL_VERDICTS
from personagen_core.store_batches import BatchTables, migrate_batch_tables

__all__ = [
    "HEARTBEAT_S",
    "LEASE_TTL_S",
    "CallRow",
    "Lease",
    "RunBusyError",
    "RunStore",
    "default_db_path",
    "new_run_id",
    "text_hash",
    "verdict_key",
]

#: Accepted texts per (run, emotion), kept by triggers in the transaction that writes ``texts``: the quota
#: guard of :meth:`RunStore.add_text` reads one row instead of counting the emotion's texts at every insert
#: (O(1) instead of O(texts so far): ~14k index entries per insert at 100k texts). Triggers live in the
#: store file, so every writer (other processes, older code) keeps the counts exact.
_TEXT_COUNTS_SCHEMA = (
    """CREATE TABLE text_counts (
        run_id TEXT NOT NULL,
        emotion TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (run_id, emotion)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER texts_count_insert AFTER INSERT ON texts BEGIN
        INSERT INTO text_counts(run_id, emotion, n) VALUES (NEW.run_id, NEW.emotion, 1)
        ON CONFLICT(run_id, emotion) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER texts_count_delete AFTER DELETE ON texts BEGIN
        UPDATE text_counts SET n = n - 1 WHERE run_id = OLD.run_id AND emotion = OLD.emotion;
    END""",
    """CREATE TRIGGER texts_count_update AFTER UPDATE OF run_id, emotion ON texts BEGIN
        UPDATE text_counts SET n = n - 1 WHERE run_id = OLD.run_id AND emotion = OLD.emotion;
        INSERT INTO text_counts(run_id, emotion, n) VALUES (NEW.run_id, NEW.emotion, 1)
        ON CONFLICT(run_id, emotion) DO UPDATE SET n = n + 1;
    END""",
    # a store from before the counters: count what it holds, in the same transaction as the triggers
    "INSERT INTO text_counts(run_id, emotion, n) SELECT run_id, emotion, COUNT(*) FROM texts"
    " GROUP BY run_id, emotion",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    spec_name TEXT,
    spec_hash TEXT,
    spec_yaml TEXT,
    config_json TEXT NOT NULL,
    target_json TEXT NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    message TEXT
);
CREATE TABLE IF NOT EXISTS personas (
    run_id TEXT NOT NULL,
    persona_id INTEGER NOT NULL,
    session INTEGER NOT NULL,
    attrs_json TEXT NOT NULL,
    persona_text TEXT,
    scenario_text TEXT,
    status TEXT NOT NULL DEFAULT 'sampled',
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, persona_id)
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    persona_id INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    model TEXT,
    verdict TEXT NOT NULL,
    reason TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_run ON verdicts(run_id, stage);
-- WITHOUT ROWID: the key (a JSON attribute tuple) is stored once, in the primary key's b-tree, not again in
-- an automatic index (it was ~1.3 kB of the ~3.8 kB a validated run stores per text; new stores only).
CREATE TABLE IF NOT EXISTS verdict_cache (
    stage INTEGER NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (stage, model, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS texts (
    text_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    emotion TEXT NOT NULL,
    text TEXT NOT NULL,
    text_norm TEXT NOT NULL,
    persona_id INTEGER,
    model TEXT,
    created_at REAL NOT NULL,
    UNIQUE (run_id, text_norm)
);
CREATE INDEX IF NOT EXISTS texts_run_emotion ON texts(run_id, emotion);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    emotion TEXT,
    persona_id INTEGER,
    text TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_run ON rejections(run_id);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stage INTEGER,
    role TEXT,
    model TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    status TEXT,
    error TEXT,
    mode TEXT,
    cost REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    endpoint TEXT
);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
CREATE TABLE IF NOT EXISTS judge_scores (
    run_id TEXT NOT NULL,
    text_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, text_id, model)
);
CREATE TABLE IF NOT EXISTS judge_cache (
    model TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (model, text_hash)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    payload_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS estimates (
    run_id TEXT PRIMARY KEY,
    estimate_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""

#: Seconds after its last heartbeat that a run's lease counts as expired (its process died or hung).
LEASE_TTL_S = 60.0
#: How often a live session renews its lease (well inside :data:`LEASE_TTL_S`).
HEARTBEAT_S = 5.0


#: Validated stages whose verdicts :meth:`RunStore.texts` joins to each text.
_STAGES = (1, 2, 3)


def default_db_path() -> Path:
    """``$PERSONAGEN_HOME/runs.sqlite`` (see :func:`personagen_core.paths.runs_db`)."""
    return paths.runs_db()


def new_run_id() -> str:
    """A short, sortable, unique run id such as ``20261124-011502-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def verdict_key(attrs: Mapping[str, Any], columns: Sequence[str]) -> str:
    """The exact attribute tuple of ``columns`` (in that order) as canonical JSON: the verdict cache key."""
    return json.dumps([[c, str(attrs[c])] for c in columns], ensure_ascii=False, separators=(",", ":"))


def text_hash(text: str) -> str:
    """sha256 hex of a text (the judge cache key)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RunBusyError(StoreError):
    """Another live process (or thread) holds the run's lease: it is generating this run right now."""


@dataclass(frozen=True)
class Lease:
    """Who generates a run: ``owner`` token of the session, its ``pid`` and ``host``, last ``heartbeat``."""

    run_id: str
    owner: str
    pid: int
    host: str
    acquired_at: float
    heartbeat: float

    def alive(self, now: float | None = None, ttl: float = LEASE_TTL_S) -> bool:
        """Whether the holder still counts as running: a fresh heartbeat, and on this host a live pid."""
        now = time.time() if now is None else now
        if now - self.heartbeat > ttl:
            return False
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class CallRow:
    """One LLM call (HTTP attempt) as stored in ``calls``."""

    stage: int | None
    role: str | None
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None
    status: str | None = None
    error: str | None = None
    mode: str | None = None
    cost: float = 0.0
    endpoint: str | None = None  # an endpoint pool's label for the endpoint (redacted URL or name)


class RunStore(BatchTables):
    """SQLite run store at ``path`` (created with its folders when missing), WAL journal.

    ``read_only=True`` opens an existing file without ever writing to it (``runs list``, ``runs show``,
    ``export`` on a store the user may not write); a missing file is then a :class:`StoreError`. Opening for
    writing checks an existing file with ``PRAGMA quick_check`` and refuses a corrupt one, so a new run is
    never written into a damaged store.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.read_only = read_only
        self._local = threading.local()
        self._lock = threading.RLock()
        # deferred writes: (statement, rows, whether every row must be written: see add_text(defer=True))
        self._pending: list[tuple[str, list[Sequence[Any]], bool]] = []
        self._buffering = 0
        self._immutable = False
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"there is no run store at {self.path}")
            try:
                self._conn().execute("SELECT 1 FROM runs LIMIT 1").fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._open_error(exc) from exc
            return
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            if existed:
                bad = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall() if r[0] != "ok"]
                if bad:
                    raise StoreError(
                        f"the run store {self.path} is corrupt (PRAGMA quick_check: {'; '.join(bad)}); "
                        "nothing was written to it. Move it aside (or restore a backup) and start again; "
                        "runs may still be readable with `sqlite3 FILE .recover`"
                    )
            conn.executescript(_SCHEMA)
            self._ensure_text_counts(conn)
            if "endpoint" not in {r[1] for r in conn.execute("PRAGMA table_info(calls)")}:
                conn.execute("ALTER TABLE calls ADD COLUMN endpoint TEXT")  # a store from before endpoint pools
            migrate_batch_tables(conn)
        except StoreError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise self._open_error(exc) from exc

    @staticmethod
    def _ensure_text_counts(conn: sqlite3.Connection) -> None:
        """Create the per-(run, emotion) text counters and their triggers once, filled from ``texts``."""
        has = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'text_counts'"
        if conn.execute(has).fetchone():
            return
        conn.execute("BEGIN IMMEDIATE")  # no text can be written between the count and the triggers
        try:
            if not conn.execute(has).fetchone():  # another process may have just created them
                for stmt in _TEXT_COUNTS_SCHEMA:
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _open_error(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and (
            "malformed" in text or "not a database" in text or "corrupt" in text
        ):
            return StoreError(
                f"the run store {self.path} is corrupt ({text}); nothing was written to it. Move it aside "
                "(or restore a backup) and start again"
            )
        if "readonly" in text or "read-only" in text:
            return StoreError(
                f"the run store {self.path} is read-only ({text}): listing, showing and exporting runs work, "
                "generating needs a writable store (--db)"
            )
        return StoreError(f"cannot open the run store at {self.path}: {text}")

    # -- connection -------------------------------------------------------------------------------------
    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        if not self._immutable:
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
                return conn
            except sqlite3.OperationalError:
                # A WAL store needs its -shm file; in a folder we may not write, read the file as it is.
                self._immutable = True
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30.0, isolation_level=None)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = self._connect_read_only()
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA query_only=ON")
                self._local.conn = conn
                return conn
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when they are collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(
        self, sql: str | None = None, params: Sequence[Any] = (), many: list[Sequence[Any]] | None = None
    ) -> sqlite3.Cursor | None:
        """One transaction: the deferred writes, then ``sql`` (if any). An IntegrityError of ``sql`` is
        re-raised after the deferred writes are committed."""
        if self.read_only:
            if sql is None and not self._pending:
                return None
            raise StoreError(f"the run store {self.path} was opened read-only; it cannot be written")
        conn = self._conn()
        with self._lock:
            pending, self._pending = self._pending, []
            if sql is None and not pending:
                return None
            integrity: sqlite3.IntegrityError | None = None
            refused = 0
            cur = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for stmt, rows, checked in pending:
                    done = conn.executemany(stmt, rows).rowcount
                    if checked:
                        refused += len(rows) - done
                if sql is not None:
                    try:
                        cur = conn.executemany(sql, many) if many is not None else conn.execute(sql, params)
                    except sqlite3.IntegrityError as exc:  # only this statement is undone
                        integrity = exc
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"run store {self.path}: {exc}") from exc
        if integrity is not None:
            raise integrity
        if refused:
            # The writer counted these texts as accepted; the store's guards refused them, so some other
            # process wrote this run meanwhile. Everything else was committed; resume recounts from disk.
            raise StoreError(
                f"run store {self.path}: {refused} deferred accepted text(s) were refused (duplicate or quota "
                "reached): another process wrote to this run; resume it to recount"
            )
        return cur

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cur = self._tx(sql, params)
        assert cur is not None
        return cur

    def _writemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._tx(sql, many=list(rows))

    def _defer(self, sql: str, rows: Iterable[Sequence[Any]], *, checked: bool = False) -> None:
        """Write now, or with the next transaction while :meth:`write_behind` is active."""
        if self._buffering:
            with self._lock:
                self._pending.append((sql, list(rows), checked))
        else:
            self._writemany(sql, rows)

    def flush(self) -> None:
        """Commit the deferred writes (see :meth:`write_behind`)."""
        self._tx()

    @contextmanager
    def write_behind(self) -> Iterator[None]:
        """Defer bookkeeping writes (personas, verdicts, rejections, calls, events) and commit them with the
        next immediate write, the next read or :meth:`flush`, whichever comes first; flushed on exit.

        Accepted texts are committed immediately, together with everything deferred before them (so a text's
        persona row is always on disk with it), unless the writer defers them too with
        ``add_text(defer=True)`` (the pipeline does: one transaction per flush instead of one per text). A
        crash loses at most what was deferred since the last commit, which the pipeline bounds by flushing
        ten times a second and before it reports progress, so no accepted text it reported is lost.
        """
        with self._lock:
            self._buffering += 1  # a count: two runs may share one store (e.g. the dashboard's)
        try:
            yield
        finally:
            with self._lock:
                self._buffering -= 1
            self.flush()

    def _query(self, sql: str, params: Sequence[Any] = (), *, own_writes: bool = True) -> list[sqlite3.Row]:
        if own_writes and self._pending:
            self.flush()  # read your own deferred writes
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"run store {self.path}: {exc}") from exc

    # -- runs -------------------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        method: str,
        config: Mapping[str, Any],
        target: Mapping[str, int],
        spec_yaml: str | None,
        spec_hash: str | None,
        spec_name: str | None,
        run_id: str | None = None,
    ) -> str:
        """Insert a new run (status ``created``) and return its id. ``config`` must hold no secret."""
        run_id = run_id or new_run_id()
        now = time.time()
        try:
            self._write(
                "INSERT INTO runs(run_id, created_at, updated_at, status, method, spec_name, spec_hash,"
                " spec_yaml,"
                " config_json, target_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    now,
                    now,
                    "created",
                    method,
                    spec_name,
                    spec_hash,
                    spec_yaml,
                    json.dumps(dict(config), sort_keys=True),
                    json.dumps(dict(target)),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"run {run_id!r} already exists in {self.path}") from exc
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's row as a dict (``config`` and ``target`` decoded, ``lease`` the :class:`Lease` as a dict or None);
        StoreError when it does not exist. ``status`` reads ``interrupted`` for a run marked running whose
        lease holder is gone (killed, crashed): such a run can be resumed."""
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise StoreError(f"no run {run_id!r} in the run store {self.path}")
        out = dict(rows[0])
        out["config"] = json.loads(out.pop("config_json"))
        out["target"] = json.loads(out.pop("target_json"))
        lease = self.lease(run_id)
        out["lease"] = asdict(lease) if lease is not None else None
        out["status"] = self._shown_status(out["status"], lease, time.time())
        return out

    def start_session(self, run_id: str) -> int:
        """Mark the run ``running`` and return the new session number (0 for the first start, then 1, ...)."""
        self.run(run_id)
        self._write(
            "UPDATE runs SET sessions = sessions + 1, status = 'running', stop_reason = NULL, message = NULL,"
            " updated_at = ? WHERE run_id = ?",
            (time.time(), run_id),
        )
        return int(self._query("SELECT sessions FROM runs WHERE run_id = ?", (run_id,))[0][0]) - 1

    def set_estimate(self, run_id: str, estimate: Mapping[str, Any]) -> None:
        """Keep the cost estimate made before the run started (``runs show`` compares it with the cost)."""
        self._write(
            "INSERT OR REPLACE INTO estimates(run_id, estimate_json, created_at) VALUES (?,?,?)",
            (run_id, json.dumps(dict(estimate), sort_keys=True, default=str), time.time()),
        )

    def estimate(self, run_id: str) -> dict[str, Any] | None:
        """The run's stored cost estimate, or None (older runs, or a store written by an older version)."""
        try:
            rows = self._query("SELECT estimate_json FROM estimates WHERE run_id = ?", (run_id,))
        except StoreError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return json.loads(rows[0][0]) if rows else None

    # -- leases: one process per run -------------------------------------------------------------------
    def acquire_lease(self, run_id: str, *, ttl: float = LEASE_TTL_S) -> str:
        """Take the run's lease for this session and return its owner token.

        Raises :class:`RunBusyError` when a live holder has it (a fresh heartbeat and, on this host, a live
        pid); a lease whose holder died or stopped beating for ``ttl`` seconds is taken over.
        """
        self.run(run_id)
        owner = uuid.uuid4().hex
        now = time.time()
        host, pid = socket.gethostname(), os.getpid()
        conn = self._conn()
        if self.read_only:
            raise StoreError(f"the run store {self.path} was opened read-only; it cannot be written")
        self.flush()
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,)).fetchone()
                held = Lease(**dict(row)) if row is not None else None
                if held is not None and held.alive(now, ttl):
                    conn.execute("ROLLBACK")
                    where = "this process" if held.pid == pid and held.host == host else (
                        f"pid {held.pid} on {held.host}"
                    )
                    raise RunBusyError(
                        f"run {run_id} is being generated right now by {where} (last heartbeat "
                        f"{max(0.0, now - held.heartbeat):.0f} s ago); wait until it ends, or stop it "
                        "(Ctrl-C) and resume it then"
                    )
                conn.execute(
                    "INSERT OR REPLACE INTO leases(run_id, owner, pid, host, acquired_at, heartbeat)"
                    " VALUES (?,?,?,?,?,?)",
                    (run_id, owner, pid, host, now, now),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"run store {self.path}: {exc}") from exc
        return owner

    def heartbeat(self, run_id: str, owner: str) -> bool:
        """Renew the lease; False when ``owner`` no longer holds it (it expired and was taken over)."""
        cur = self._write(
            "UPDATE leases SET heartbeat = ? WHERE run_id = ? AND owner = ?", (time.time(), run_id, owner)
        )
        return cur.rowcount == 1

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up (the session ended); a lease taken over by someone else is left alone."""
        self._write("DELETE FROM leases WHERE run_id = ? AND owner = ?", (run_id, owner))

    def lease(self, run_id: str) -> Lease | None:
        """The run's lease row, or None."""
        return self._leases([run_id]).get(run_id)

    def _leases(self, run_ids: Sequence[str] | None = None) -> dict[str, Lease]:
        try:
            if run_ids is None:
                rows = self._query("SELECT * FROM leases")
            else:
                rows = []
                for i in range(0, len(run_ids), 500):
                    chunk = list(run_ids[i : i + 500])
                    marks = ",".join("?" * len(chunk))
                    rows += self._query(f"SELECT * FROM leases WHERE run_id IN ({marks})", chunk)
        except StoreError as exc:
            if "no such table" in str(exc):  # a read-only store written by an older version
                return {}
            raise
        return {r["run_id"]: Lease(**dict(r)) for r in rows}

    @staticmethod
    def _shown_status(status: str, lease: Lease | None, now: float) -> str:
        # A run marked running whose holder is gone (killed, crashed, host down) was interrupted.
        if status == "running" and (lease is None or not lease.alive(now)):
            return "interrupted"
        return status

    def set_status(
        self, run_id: str, status: str, *, stop_reason: str | None = None, message: str | None = None
    ) -> None:
        """Set the run's status (``running|done|stopped|failed|cancelled``) and why it stopped."""
        self._write(
            "UPDATE runs SET status = ?, stop_reason = ?, message = ?, updated_at = ? WHERE run_id = ?",
            (status, stop_reason, message, time.time(), run_id),
        )

    def list_runs(self) -> pd.DataFrame:
        """One row per run, newest first: id, times, status, method, spec, target, accepted, tokens, cost.
        A running run whose lease expired shows as ``interrupted``."""
        rows = self._query(
            """SELECT r.run_id, r.created_at, r.updated_at, r.status, r.stop_reason, r.method, r.spec_name,
                      r.spec_hash, r.target_json,
                      (SELECT COUNT(*) FROM texts t WHERE t.run_id = r.run_id) AS accepted,
                      (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM calls c
                         WHERE c.run_id = r.run_id) AS tokens,
                      (SELECT COALESCE(SUM(cost), 0) FROM calls c WHERE c.run_id = r.run_id) AS cost
               FROM runs r ORDER BY r.created_at DESC, r.run_id DESC"""
        )
        cols = [
            "run_id",
            "created_at",
            "updated_at",
            "status",
            "stop_reason",
            "method",
            "spec_name",
            "spec_hash",
            "target",
            "accepted",
            "tokens",
            "cost",
        ]
        data = []
        leases = self._leases() if any(r["status"] == "running" for r in rows) else {}
        now = time.time()
        for r in rows:
            d = dict(r)
            d["target"] = sum(json.loads(d.pop("target_json")).values())
            d["status"] = self._shown_status(d["status"], leases.get(d["run_id"]), now)
            data.append(d)
        return pd.DataFrame(data, columns=cols)

    def size(self) -> dict[str, Any]:
        """The store on disk: ``bytes`` (database plus its WAL and shared-memory files), ``runs``, ``texts``
        (accepted texts of every run) and ``bytes_per_1000_texts`` (None without texts). The file holds every
        run's personas, verdicts, calls and events too, so this is the whole store's cost per text."""
        size = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.is_file()
        )
        runs, texts = self._query("SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM texts)")[0]
        return {
            "bytes": size,
            "runs": int(runs),
            "texts": int(texts),
            "bytes_per_1000_texts": size / texts * 1000 if texts else None,
        }

    # -- personas and verdicts ---------------------------------------------------------------------------
    def next_persona_id(self, run_id: str) -> int:
        """The next free persona id of a run (ids are never reused, also across resumed sessions)."""
        row = self._query("SELECT COALESCE(MAX(persona_id), -1) FROM personas WHERE run_id = ?", (run_id,))
        return int(row[0][0]) + 1

    def add_personas(
        self, run_id: str, session: int, rows: Sequence[tuple[int, Mapping[str, Any], str, str]]
    ) -> None:
        """Record sampled candidates: ``(persona_id, attributes, persona_text, scenario_text)`` tuples."""
        now = time.time()
        self._defer(
            "INSERT INTO personas(run_id, persona_id, session, attrs_json, persona_text, scenario_text,"
            " status,"
            " created_at) VALUES (?,?,?,?,?,?,'sampled',?)",
            [
                (run_id, pid, session, json.dumps(dict(a), ensure_ascii=False), pt, st, now)
                for pid, a, pt, st in rows
            ],
        )

    def personas(self, run_id: str) -> pd.DataFrame:
        """Every sampled candidate of a run: ``persona_id, status`` (``sampled``, ``validated``,
        ``rejected_stage<n>``) and one column per attribute (for per-attribute rejection rates)."""
        rows = self._query(
            "SELECT persona_id, status, attrs_json FROM personas WHERE run_id = ? ORDER BY persona_id", (run_id,)
        )
        data = [
            {"persona_id": r["persona_id"], "status": r["status"], **json.loads(r["attrs_json"] or "{}")}
            for r in rows
        ]
        return pd.DataFrame(data) if data else pd.DataFrame(columns=["persona_id", "status"])

    def set_persona_status(self, run_id: str, persona_ids: Sequence[int], status: str) -> None:
        """Set the funnel status of candidates (``passed``, ``rejected_s1`` ...)."""
        self._defer(
            "UPDATE personas SET status = ? WHERE run_id = ? AND persona_id = ?",
            [(status, run_id, pid) for pid in persona_ids],
        )

    def add_verdicts(self, run_id: str, rows: Sequence[tuple[int, int, str | None, str, str, bool]]) -> None:
        """Record verdicts: ``(persona_id, stage, model, verdict, reason, cached)`` tuples."""
        now = time.time()
        self._defer(
            "INSERT INTO verdicts(run_id, persona_id, stage, model, verdict, reason, cached, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [(run_id, pid, st, m, v, r, int(c), now) for pid, st, m, v, r, c in rows],
        )

    def cached_verdicts(self, stage: int, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Cross-run verdict cache lookup: ``{key: (verdict, reason)}`` for the keys already validated.

        Reads what is committed, without committing the deferred writes first: the validator asks before
        every batch, and a commit each time was about one transaction per four texts on top of the ten a
        second that the run makes. A verdict still deferred is in the asking validator's memory; at worst
        another run in this process asks the LLM once more.
        """
        out: dict[str, tuple[str, str]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._query(
                "SELECT key, verdict, reason FROM verdict_cache WHERE stage = ? AND model = ?"
                f" AND key IN ({marks})",
                (stage, model, *chunk),
                own_writes=False,
            ):
                out[r["key"]] = (r["verdict"], r["reason"])
        return out

    def cache_verdicts(self, stage: int, model: str, items: Mapping[str, tuple[str, str]]) -> None:
        """Store fresh verdicts in the cross-run cache (first answer wins)."""
        now = time.time()
        self._defer(
            "INSERT OR IGNORE INTO verdict_cache(stage, model, key, verdict, reason, created_at)"
            " VALUES (?,?,?,?,?,?)",
            [(stage, model, k, v, r, now) for k, (v, r) in items.items()],
        )

    # -- texts and rejections ------------------------------------------------------------------------------
    def add_text(
        self,
        run_id: str,
        *,
        emotion: str,
        text: str,
        text_norm: str,
        persona_id: int | None,
        model: str | None,
        quota: int,
        defer: bool = False,
    ) -> str:
        """Commit an accepted text unless it would exceed ``quota`` for its emotion or duplicate one.

        Returns ``"accepted"``, ``"duplicate"`` (same normalised text already in the run) or ``"quota_full"``.

        ``defer=True`` inside :meth:`write_behind`: the text is written with the next commit and
        ``"accepted"`` is returned at once. Only for the run's one writer (the lease holder), which has
        already checked the duplicate and the quota in memory; the same guards still apply when it is
        written, and a text they refuse makes that commit raise :class:`StoreError`.
        """
        # the emotion's counter (kept by triggers in this same transaction), not a COUNT(*) of its texts
        guard = " WHERE COALESCE((SELECT n FROM text_counts WHERE run_id = ? AND emotion = ?), 0) < ?"
        row = (run_id, emotion, text, text_norm, persona_id, model, time.time(), run_id, emotion, quota)
        if defer and self._buffering:
            self._defer(
                "INSERT OR IGNORE INTO texts(run_id, emotion, text, text_norm, persona_id, model, created_at)"
                " SELECT ?,?,?,?,?,?,?" + guard,
                [row],
                checked=True,
            )
            return "accepted"
        try:
            cur = self._write(
                "INSERT INTO texts(run_id, emotion, text, text_norm, persona_id, model, created_at)"
                " SELECT ?,?,?,?,?,?,?" + guard,
                row,
            )
        except sqlite3.IntegrityError:
            return "duplicate"
        return "accepted" if cur.rowcount == 1 else "quota_full"

    def accepted_counts(self, run_id: str) -> dict[str, int]:
        """Accepted texts per emotion."""
        return {
            r[0]: int(r[1])
            for r in self._query(
                "SELECT emotion, COUNT(*) FROM texts WHERE run_id = ? GROUP BY emotion", (run_id,)
            )
        }

    def accepted_texts(self, run_id: str) -> list[str]:
        """The accepted texts of a run in commit order (to rebuild the near-duplicate index on resume)."""
        return [
            r[0] for r in self._query("SELECT text FROM texts WHERE run_id = ? ORDER BY text_id", (run_id,))
        ]

    def add_rejection(
        self,
        run_id: str,
        *,
        stage: int,
        reason: str,
        detail: str | None = None,
        emotion: str | None = None,
        persona_id: int | None = None,
        text: str | None = None,
    ) -> None:
        """Record why a candidate (stages 1-3) or an output (stage 4) was rejected."""
        self._defer(
            "INSERT INTO rejections(run_id, stage, reason, detail, emotion, persona_id, text, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [(run_id, stage, reason, detail, emotion, persona_id, text, time.time())],
        )

    def rejection_counts(self, run_id: str) -> dict[str, int]:
        """Rejections per reason."""
        return {
            r[0]: int(r[1])
            for r in self._query(
                "SELECT reason, COUNT(*) FROM rejections WHERE run_id = ? GROUP BY reason ORDER BY 2 DESC",
                (run_id,),
            )
        }

    def rejections(self, run_id: str) -> pd.DataFrame:
        """Every rejection of a run (stage, reason, detail, emotion, persona id, text)."""
        rows = self._query(
            "SELECT stage, reason, detail, emotion, persona_id, text, created_at FROM rejections"
            " WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return pd.DataFrame(
            [dict(r) for r in rows],
            columns=["stage", "reason", "detail", "emotion", "persona_id", "text", "created_at"],
        )

    def texts(self, run_id: str) -> pd.DataFrame:
        """One row per accepted text: ``text_id, run_id, method, emotion, text``, the persona and scenario
        descriptions, ``persona_id``, one column per sampled attribute, then the stage 1-3 verdicts of its
        persona/scene: ``verdict_stage1, reason_stage1, ..., reason_stage3`` (joined from the run's verdict
        rows; None where the method or ablation did not validate that stage). For a large run, read it in
        chunks with :meth:`iter_texts` instead."""
        chunks = list(self.iter_texts(run_id))
        return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]

    def text_columns(self, run_id: str) -> list[str]:
        """The columns of :meth:`texts` for a run (the attribute columns found by SQLite, not in Python)."""
        base = ["text_id", "run_id", "method", "emotion", "text", "model", "persona_id", "persona", "scenario"]
        verdict_cols = [f"{kind}_stage{s}" for s in _STAGES for kind in ("verdict", "reason")]
        # attribute names in first-seen order: by the first text whose persona has them, then position
        keys = self._query(
            """SELECT j.key FROM texts t JOIN personas p ON p.run_id = t.run_id AND p.persona_id = t.persona_id,
                      json_each(p.attrs_json) j
               WHERE t.run_id = ? GROUP BY j.key ORDER BY MIN(t.text_id), MIN(j.id)""",
            (run_id,),
        )
        reserved = set(base) | set(verdict_cols)
        return base + [r[0] for r in keys if r[0] not in reserved] + verdict_cols

    def iter_texts(self, run_id: str, chunk_size: int = 10_000) -> Iterator[pd.DataFrame]:
        """The rows of :meth:`texts` in frames of at most ``chunk_size`` rows, read from one cursor (a large
        run is never held in memory at once). Always yields at least one frame (empty for a run with no
        texts), every frame with the same columns."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        run = self.run(run_id)
        columns = self.text_columns(run_id)
        verdict_cols = [c for c in columns if c.startswith(("verdict_stage", "reason_stage"))]
        # The latest verdict row per (persona, stage) (SQLite takes the bare columns from the MAX(id) row);
        # a persona is validated once per stage, MAX only guards against a repeated row.
        joins = "".join(
            f" LEFT JOIN v v{s} ON v{s}.persona_id = t.persona_id AND v{s}.stage = {s}" for s in _STAGES
        )
        picks = "".join(
            f", v{s}.verdict AS verdict_stage{s}, v{s}.reason AS reason_stage{s}" for s in _STAGES
        )
        if self._pending:
            self.flush()  # read your own deferred writes
        try:
            cur = self._conn().execute(
                f"""WITH v AS (SELECT persona_id, stage, verdict, reason, MAX(id) FROM verdicts
                               WHERE run_id = ? GROUP BY persona_id, stage)
                   SELECT t.text_id, t.run_id, t.emotion, t.text, t.model, t.persona_id, p.attrs_json,
                          p.persona_text, p.scenario_text{picks}
                   FROM texts t LEFT JOIN personas p ON p.run_id = t.run_id AND p.persona_id = t.persona_id{joins}
                   WHERE t.run_id = ? ORDER BY t.text_id""",
                (run_id, run_id),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"run store {self.path}: {exc}") from exc
        yielded = False
        try:
            while rows := cur.fetchmany(chunk_size):
                data = [
                    {
                        "text_id": r["text_id"],
                        "run_id": r["run_id"],
                        "method": run["method"],
                        "emotion": r["emotion"],
                        "text": r["text"],
                        "model": r["model"],
                        "persona_id": r["persona_id"],
                        "persona": r["persona_text"],
                        "scenario": r["scenario_text"],
                        **(json.loads(r["attrs_json"]) if r["attrs_json"] else {}),
                        **{c: r[c] for c in verdict_cols},
                    }
                    for r in rows
                ]
                yielded = True
                yield pd.DataFrame(data, columns=columns)
        finally:
            cur.close()
        if not yielded:
            yield pd.DataFrame([], columns=columns)

    # -- usage ----------------------------------------------------------------------------------------------
    def add_calls(self, run_id: str, calls: Sequence[CallRow]) -> None:
        """Record LLM calls (one row per HTTP attempt, failed ones included)."""
        now = time.time()
        self._defer(
            "INSERT INTO calls(run_id, stage, role, model, prompt_tokens, completion_tokens, latency_s,"
            " status,"
            " error, mode, cost, created_at, endpoint) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    c.stage,
                    c.role,
                    c.model,
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.latency_s,
                    c.status,
                    c.error,
                    c.mode,
                    c.cost,
                    now,
                    c.endpoint,
                )
                for c in calls
            ],
        )

    def usage(self, run_id: str) -> pd.DataFrame:
        """Usage per stage and model: calls, failed calls, prompt/completion tokens, latency, cost."""
        rows = self._query(
            """SELECT stage, role, model, COUNT(*) AS calls,
                      SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS failed,
                      SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
                      AVG(latency_s) AS mean_latency_s, SUM(cost) AS cost
               FROM calls WHERE run_id = ? GROUP BY stage, role, model ORDER BY stage, role, model""",
            (run_id,),
        )
        return pd.DataFrame(
            [dict(r) for r in rows],
            columns=[
                "stage",
                "role",
                "model",
                "calls",
                "failed",
                "prompt_tokens",
                "completion_tokens",
                "mean_latency_s",
                "cost",
            ],
        )

    def endpoint_usage(self, run_id: str) -> pd.DataFrame:
        """Usage per endpoint of a run that used an endpoint pool (empty otherwise): ``endpoint`` (its label:
        the redacted URL or its name), ``calls``, ``failed``, ``prompt_tokens``, ``completion_tokens``,
        ``cost`` and ``last_error`` (the endpoint's most recent failed attempt)."""
        columns = ["endpoint", "calls", "failed", "prompt_tokens", "completion_tokens", "cost", "last_error"]
        try:
            rows = self._query(
                """SELECT endpoint, COUNT(*) AS calls,
                          SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS failed,
                          SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
                          SUM(cost) AS cost,
                          (SELECT e.error FROM calls e WHERE e.run_id = c.run_id AND e.endpoint = c.endpoint
                             AND e.error IS NOT NULL ORDER BY e.id DESC LIMIT 1) AS last_error
                   FROM calls c WHERE run_id = ? AND endpoint IS NOT NULL GROUP BY endpoint ORDER BY endpoint""",
                (run_id,),
            )
        except StoreError:  # a read-only store from before endpoint pools has no endpoint column
            rows = []
        return pd.DataFrame([dict(r) for r in rows], columns=columns)

    def totals(self, run_id: str) -> dict[str, float]:
        """Run-wide totals: ``calls``, ``failed_calls``, ``prompt_tokens``, ``completion_tokens``, ``tokens``,
        ``cost``."""
        r = self._query(
            """SELECT COUNT(*), COALESCE(SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END), 0),
                      COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                      COALESCE(SUM(cost), 0)
               FROM calls WHERE run_id = ?""",
            (run_id,),
        )[0]
        return {
            "calls": int(r[0]),
            "failed_calls": int(r[1]),
            "prompt_tokens": int(r[2]),
            "completion_tokens": int(r[3]),
            "tokens": int(r[2]) + int(r[3]),
            "cost": float(r[4]),
        }

    def last_call(self, run_id: str, *, failed: bool = False) -> dict[str, Any] | None:
        """The run's most recent LLM call (``failed=True``: the most recent one with an error) as a dict
        ``stage, role, model, status, error, created_at``; None when there is none."""
        where = " AND error IS NOT NULL" if failed else ""
        rows = self._query(
            f"SELECT stage, role, model, status, error, created_at FROM calls WHERE run_id = ?{where}"
            " ORDER BY id DESC LIMIT 1",
            (run_id,),
        )
        return dict(rows[0]) if rows else None

    def latest_texts(self, run_id: str, n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` newest accepted texts of a run, newest first: ``text_id, emotion, text, created_at``."""
        rows = self._query(
            "SELECT text_id, emotion, text, created_at FROM texts WHERE run_id = ? ORDER BY text_id DESC LIMIT ?",
            (run_id, int(n)),
        )
        return [dict(r) for r in rows]

    def funnel(self, run_id: str) -> dict[str, Any]:
        """The run's funnel: candidates sampled, verdicts per stage, outputs generated/accepted/rejected."""
        sampled = int(self._query("SELECT COUNT(*) FROM personas WHERE run_id = ?", (run_id,))[0][0])
        stages: dict[int, dict[str, int]] = {}
        for r in self._query(
            "SELECT stage, verdict, COUNT(*), SUM(cached) FROM verdicts WHERE run_id = ?"
            " GROUP BY stage, verdict",
            (run_id,),
        ):
            st = stages.setdefault(int(r[0]), {**dict.fromkeys(FUNNEL_VERDICTS, 0), "cached": 0})
            st[r[1]] = st.get(r[1], 0) + int(r[2])
            st["cached"] += int(r[3] or 0)
        out_rej = {
            r[0]: int(r[1])
            for r in self._query(
                "SELECT reason, COUNT(*) FROM rejections WHERE run_id = ? AND stage = 4 GROUP BY reason",
                (run_id,),
            )
        }
        accepted = int(self._query("SELECT COUNT(*) FROM texts WHERE run_id = ?", (run_id,))[0][0])
        return {
            # The sampler only emits rows that satisfy the whitelist rules, so every sampled row passed them.
            "sampled": sampled,
            "passed_rules": sampled,
            "stages": {str(k): v for k, v in sorted(stages.items())},
            "generated": accepted + sum(v for k, v in out_rej.items() if k != "quota_full"),
            "accepted": accepted,
            "output_rejections": out_rej,
        }

    # -- events ---------------------------------------------------------------------------------------------
    def add_event(self, run_id: str, state: str, payload: Mapping[str, Any]) -> None:
        """Append a progress event (JSON payload) so another thread or process can follow the run."""
        self._defer(
            "INSERT INTO events(run_id, ts, state, payload_json) VALUES (?,?,?,?)",
            [(run_id, time.time(), state, json.dumps(dict(payload), default=str))],
        )

    def latest_event(self, run_id: str) -> dict[str, Any] | None:
        """The last progress event of a run (decoded payload), or None."""
        rows = self._query(
            "SELECT payload_json FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)
        )
        return json.loads(rows[0][0]) if rows else None

    def events(self, run_id: str, *, after_id: int = 0) -> list[dict[str, Any]]:
        """Progress events of a run with an id greater than ``after_id`` (each has ``id`` and ``ts``)."""
        rows = self._query(
            "SELECT id, ts, payload_json FROM events WHERE run_id = ? AND id > ? ORDER BY id",
            (run_id, after_id),
        )
        return [{"id": r[0], "ts": r[1], **json.loads(r[2])} for r in rows]

    # -- judge scores (evaluation) ----------------------------------------------------------------------
    def get_judge_scores(self, model: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Judge cache lookup by (judge model, key), the key being a text hash: ``{key: scores}`` found."""
        out: dict[str, dict[str, Any]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._query(
                f"SELECT text_hash, scores_json FROM judge_cache WHERE model = ? AND text_hash IN ({marks})",
                (model, *chunk),
            ):
                out[r[0]] = json.loads(r[1])
        return out

    def put_judge_scores(self, model: str, scores: Mapping[str, Mapping[str, Any]]) -> None:
        """Fill the judge cache: ``{key: scores}`` for one judge model (a later answer replaces one)."""
        now = time.time()
        self._writemany(
            "INSERT OR REPLACE INTO judge_cache(model, text_hash, scores_json, created_at) VALUES (?,?,?,?)",
            [(model, k, json.dumps(dict(v), sort_keys=True), now) for k, v in scores.items()],
        )

    def save_judge_scores(
        self, run_id: str, model: str, scores: Sequence[tuple[int, str, Mapping[str, Any]]]
    ) -> None:
        """Store a run's judge scores: ``(text_id, key, scores)`` tuples (key: the judge cache key)."""
        self.run(run_id)
        now = time.time()
        self._writemany(
            "INSERT OR REPLACE INTO judge_scores(run_id, text_id, model, text_hash, scores_json,"
            " created_at) VALUES (?,?,?,?,?,?)",
            [(run_id, tid, model, k, json.dumps(dict(s), sort_keys=True), now) for tid, k, s in scores],
        )
        self.put_judge_scores(model, {k: s for _, k, s in scores})

    def judge_scores(self, run_id: str) -> pd.DataFrame:
        """A run's judge scores: ``text_id, model`` and one column per criterion."""
        rows = self._query(
            "SELECT text_id, model, scores_json FROM judge_scores WHERE run_id = ? ORDER BY text_id",
            (run_id,),
        )
        return pd.DataFrame([{"text_id": r[0], "model": r[1], **json.loads(r[2])} for r in rows])

    def with_judge_scores(self, run_id: str, texts: pd.DataFrame | None = None) -> pd.DataFrame:
        """The run's accepted texts (``texts``, else :meth:`texts`) with their judge scores as
        ``judge_<criterion>`` columns, one row per text (unchanged when the run was never judged)."""
        texts = self.texts(run_id) if texts is None else texts
        scores = self.judge_scores(run_id)
        if len(scores) == 0 or len(texts) == 0:
            return texts
        scores = scores.drop(columns=[c for c in ("model",) if c in scores.columns])
        scores = scores.rename(columns={c: f"judge_{c}" for c in scores.columns if c != "text_id"})
        return texts.merge(scores.drop_duplicates("text_id"), on="text_id", how="left")

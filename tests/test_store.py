"""Run store: schema, quota-guarded and duplicate-free text inserts, verdict and judge caches, usage."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from personagen_core.errors import StoreError
from personagen_core.store import CallRow, RunStore, default_db_path, verdict_key


def _run(store: RunStore, **kw: object) -> str:
    return store.create_run(
        method="personagen",
        config={"per_emotion": 2},
        target={"joy": 2, "fear": 2},
        spec_yaml="name: x\n",
        spec_hash="abc",
        spec_name="x",
        **kw,
    )  # type: ignore[arg-type]


def test_wal_mode_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "sub" / "runs.sqlite")
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / "runs.sqlite"


def test_run_lifecycle_and_missing_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store, run_id="r1")
    info = store.run(run_id)
    assert info["status"] == "created" and info["config"] == {"per_emotion": 2}
    assert info["target"] == {"joy": 2, "fear": 2} and info["spec_hash"] == "abc"
    assert store.start_session(run_id) == 0
    assert store.start_session(run_id) == 1
    store.set_status(run_id, "stopped", stop_reason="max_cost", message="budget")
    info = store.run(run_id)
    assert (info["status"], info["stop_reason"], info["sessions"]) == ("stopped", "max_cost", 2)
    with pytest.raises(StoreError, match="already exists"):
        _run(store, run_id="r1")
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.run("nope")
    runs = store.list_runs()
    assert list(runs["run_id"]) == ["r1"] and int(runs["target"].iloc[0]) == 4


def test_add_text_enforces_quota_and_uniqueness(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store)
    kw = {"persona_id": None, "model": "m", "quota": 2}
    assert store.add_text(run_id, emotion="joy", text="A!", text_norm="a", **kw) == "accepted"
    assert store.add_text(run_id, emotion="joy", text="a", text_norm="a", **kw) == "duplicate"
    assert store.add_text(run_id, emotion="fear", text="a.", text_norm="a", **kw) == "duplicate"
    assert store.add_text(run_id, emotion="joy", text="B", text_norm="b", **kw) == "accepted"
    assert store.add_text(run_id, emotion="joy", text="C", text_norm="c", **kw) == "quota_full"
    assert store.accepted_counts(run_id) == {"joy": 2}
    assert store.accepted_texts(run_id) == ["A!", "B"]
    other = _run(store)  # the same text is fine in another run
    assert store.add_text(other, emotion="joy", text="A!", text_norm="a", **kw) == "accepted"


def test_quota_holds_with_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    run_id = _run(RunStore(path))
    outcomes: list[str] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        store = RunStore(path)  # its own connection, like a second process
        for i in range(15):
            out = store.add_text(
                run_id,
                emotion="joy",
                text=f"t{w}-{i}",
                text_norm=f"t{w}-{i}",
                persona_id=None,
                model=None,
                quota=20,
            )
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("accepted") == 20 and outcomes.count("quota_full") == 40
    assert RunStore(path).accepted_counts(run_id) == {"joy": 20}


def test_quota_is_exact_when_two_writers_flush_deferred_texts_past_it(tmp_path: Path) -> None:
    """Two stores on one file (like two processes), each deferring more texts than the quota allows and
    flushing them in one transaction: the guard must see every earlier row of the same flush and the other
    writer's commits, so exactly the quota is delivered (an over-delivery here breaks the product's promise)."""
    path = tmp_path / "r.sqlite"
    a, b = RunStore(path), RunStore(path)
    run_id = _run(a)
    kw = {"persona_id": None, "model": "m", "quota": 5, "defer": True}
    with a.write_behind():
        for i in range(3):
            a.add_text(run_id, emotion="joy", text=f"a{i}", text_norm=f"a{i}", **kw)
        a.flush()
    refused = []
    for store, tag in ((b, "b"), (a, "c")):
        with pytest.raises(StoreError, match="deferred accepted text") as err:
            with store.write_behind():
                for i in range(4):
                    store.add_text(run_id, emotion="joy", text=f"{tag}{i}", text_norm=f"{tag}{i}", **kw)
                store.add_text(run_id, emotion="fear", text=f"{tag}f", text_norm=f"{tag}f", **kw)
        refused.append(str(err.value).split(": ")[1].split(" ")[0])
    assert refused == ["2", "4"]  # b: 2 of 4 joy texts fit (3 + 2 = 5); c: none
    assert RunStore(path).accepted_counts(run_id) == {"joy": 5, "fear": 2}
    assert sorted(a.accepted_texts(run_id)) == ["a0", "a1", "a2", "b0", "b1", "bf", "cf"]


def test_quota_guard_reads_the_counters_which_a_store_from_before_them_gets_filled(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    kw = {"persona_id": None, "model": "m", "quota": 3}
    for i in range(2):
        assert store.add_text(run_id, emotion="joy", text=f"j{i}", text_norm=f"j{i}", **kw) == "accepted"
    store.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT emotion, n FROM text_counts").fetchall() == [("joy", 2)]
    # a store written before the counters existed: no table, no triggers
    for trigger in ("texts_count_insert", "texts_count_delete", "texts_count_update"):
        raw.execute(f"DROP TRIGGER {trigger}")
    raw.execute("DROP TABLE text_counts")
    raw.commit()
    store = RunStore(path)  # rebuilds them from the texts it holds
    assert store.add_text(run_id, emotion="joy", text="j2", text_norm="j2", **kw) == "accepted"
    assert store.add_text(run_id, emotion="joy", text="j3", text_norm="j3", **kw) == "quota_full"
    assert store.accepted_counts(run_id) == {"joy": 3}
    # the guard consults the counter (one row), not a count of the texts
    raw.execute("UPDATE text_counts SET n = 0 WHERE run_id = ? AND emotion = 'joy'", (run_id,))
    raw.commit()
    assert store.add_text(run_id, emotion="joy", text="j4", text_norm="j4", **kw) == "accepted"
    raw.execute("DELETE FROM texts WHERE text_norm = 'j4'")  # the delete trigger keeps the counter in step
    raw.commit()
    assert raw.execute("SELECT n FROM text_counts WHERE emotion = 'joy'").fetchone()[0] == 0


def test_verdict_cache_is_shared_across_store_instances(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    key = verdict_key({"age": "25-34", "gender": "female", "x": "ignored"}, ["age", "gender"])
    assert key == '[["age","25-34"],["gender","female"]]'
    RunStore(path).cache_verdicts(1, "m", {key: ("natural", "fine")})
    RunStore(path).cache_verdicts(1, "m", {key: ("implausible", "second answer loses")})
    store = RunStore(path)
    assert store.cached_verdicts(1, "m", [key, "other"]) == {key: ("natural", "fine")}
    assert store.cached_verdicts(2, "m", [key]) == {}  # keyed by stage
    assert store.cached_verdicts(1, "other-model", [key]) == {}  # and by model


def test_verdict_cache_lookup_reads_committed_rows_without_committing_deferred_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    store.cache_verdicts(1, "m", {"k1": ("natural", "fine")})
    reader = sqlite3.connect(path)
    with store.write_behind():
        store.add_calls(run_id, [CallRow(1, "validator", "m", 10, 1)])
        store.cache_verdicts(1, "m", {"k2": ("implausible", "odd")})
        assert store.cached_verdicts(1, "m", ["k1", "k2"]) == {"k1": ("natural", "fine")}
        assert reader.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0  # still deferred
        assert store.totals(run_id)["calls"] == 1  # other reads still see their own writes
    assert store.cached_verdicts(1, "m", ["k1", "k2"]) == {"k1": ("natural", "fine"), "k2": ("implausible", "odd")}


def test_funnel_usage_rejections_and_texts(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store)
    store.add_personas(
        run_id,
        0,
        [(0, {"age": "6-12"}, "a child", "at school"), (1, {"age": "25-34"}, "an adult", "at work")],
    )
    store.add_verdicts(run_id, [(0, 1, "m", "implausible", "no", False), (1, 1, "m", "natural", "ok", True)])
    store.add_rejection(run_id, stage=1, reason="stage1_implausible", detail="no", persona_id=0)
    store.add_rejection(run_id, stage=4, reason="refusal", emotion="joy", persona_id=1, text="I'm sorry")
    store.add_text(run_id, emotion="joy", text="Yay", text_norm="yay", persona_id=1, model="m", quota=2)
    store.add_calls(
        run_id,
        [
            CallRow(1, "validator", "m", 100, 10, 0.1, "ok", cost=0.5),
            CallRow(4, "generator", "m", 50, 5, 0.2, "retry", error="HTTP 429", cost=0.25),
        ],
    )
    funnel = store.funnel(run_id)
    assert funnel["sampled"] == 2 and funnel["accepted"] == 1 and funnel["generated"] == 2
    assert funnel["stages"]["1"]["implausible"] == 1 and funnel["stages"]["1"]["cached"] == 1
    assert funnel["output_rejections"] == {"refusal": 1}
    assert store.rejection_counts(run_id) == {"stage1_implausible": 1, "refusal": 1}
    assert store.totals(run_id) == {
        "calls": 2,
        "failed_calls": 1,
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "tokens": 165,
        "cost": 0.75,
    }
    usage = store.usage(run_id)
    assert list(usage["stage"]) == [1, 4] and list(usage["failed"]) == [0, 1]
    texts = store.texts(run_id)
    row = texts.iloc[0]
    assert (row["text"], row["emotion"], row["persona"], row["scenario"], row["age"], row["method"]) == (
        "Yay",
        "joy",
        "an adult",
        "at work",
        "25-34",
        "personagen",
    )
    assert store.next_persona_id(run_id) == 2
    runs = store.list_runs()
    assert int(runs["accepted"].iloc[0]) == 1 and float(runs["cost"].iloc[0]) == pytest.approx(0.75)


def test_events_and_judge_cache(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store)
    assert store.latest_event(run_id) is None
    store.add_event(run_id, "running", {"accepted": {"joy": 1}})
    store.add_event(run_id, "done", {"accepted": {"joy": 2}})
    assert store.latest_event(run_id) == {"accepted": {"joy": 2}}
    evs = store.events(run_id)
    assert [e["accepted"]["joy"] for e in evs] == [1, 2]
    assert store.events(run_id, after_id=evs[0]["id"])[0]["accepted"] == {"joy": 2}

    scores = {"emotion_match": 5, "grammaticality": 4, "lexical_diversity": 3, "structure_logic": 4}
    store.save_judge_scores(run_id, "judge-m", [(1, "hash1", scores)])
    assert store.get_judge_scores("judge-m", ["hash1", "hash2"]) == {"hash1": scores}
    assert store.get_judge_scores("other", ["hash1"]) == {}
    store.put_judge_scores("other", {"hash2": scores})
    assert RunStore(store.path).get_judge_scores("other", ["hash2"]) == {"hash2": scores}
    table = store.judge_scores(run_id)
    assert table.iloc[0]["text_id"] == 1 and table.iloc[0]["emotion_match"] == 5
    # the join the Explore page shows: one row per text, judge_<criterion> columns, NaN where not judged
    texts = pd.DataFrame({"text_id": [1, 2], "text": ["a", "b"]})
    joined = store.with_judge_scores(run_id, texts)
    assert list(joined["text_id"]) == [1, 2] and joined["judge_emotion_match"].iloc[0] == 5
    assert pd.isna(joined["judge_grammaticality"].iloc[1]) and "judge_model" not in joined.columns
    assert store.with_judge_scores(_run(store), texts) is texts  # never judged: unchanged


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the run store"):
        RunStore(blocker / "runs.sqlite")


def test_write_behind_defers_bookkeeping_but_commits_it_with_each_text(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    reader = sqlite3.connect(path)  # another connection, like a dashboard or a crash survivor

    def count(table: str) -> int:
        return reader.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    with store.write_behind():
        store.add_personas(run_id, 0, [(0, {"age": "6-12"}, "a child", "")])
        store.add_calls(run_id, [CallRow(1, "validator", "m", 10, 1)])
        store.add_rejection(run_id, stage=4, reason="refusal")
        assert count("personas") == 0 and count("calls") == 0  # not yet committed
        # an accepted text commits everything deferred before it, in the same transaction
        assert (
            store.add_text(
                run_id, emotion="joy", text="Yay", text_norm="yay", persona_id=0, model="m", quota=2
            )
            == "accepted"
        )
        assert (count("personas"), count("calls"), count("rejections"), count("texts")) == (1, 1, 1, 1)
        store.add_calls(run_id, [CallRow(4, "generator", "m", 10, 1)])
        # a duplicate is refused but the deferred rows before it are still committed
        assert (
            store.add_text(
                run_id, emotion="joy", text="yay!", text_norm="yay", persona_id=0, model="m", quota=2
            )
            == "duplicate"
        )
        assert count("calls") == 2
        store.add_event(run_id, "running", {"n": 1})
        assert store.latest_event(run_id) == {"n": 1}  # reads see deferred writes
    store.add_calls(run_id, [CallRow(4, "generator", "m", 10, 1)])  # outside: written at once
    assert count("calls") == 3 and count("events") == 1


def test_texts_carry_the_stage_verdicts_of_their_persona(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id, other = _run(store), _run(store)
    for rid in (run_id, other):
        store.add_personas(
            rid, 0, [(0, {"age": "6-12"}, "a child", "at school"), (1, {"age": "25-34"}, "", "")]
        )
    store.add_verdicts(
        run_id,
        [
            (0, 1, "m", "natural", "common", False),
            (0, 2, "m", "rare but plausible", "unusual but fine", True),
            (0, 3, "m", "natural", "everyday scene", False),
        ],
    )
    # Another run's verdicts for the same persona ids must not leak into this run's texts.
    store.add_verdicts(other, [(0, 1, "m", "implausible", "no", False), (1, 1, "m", "natural", "x", False)])
    store.add_verdicts(run_id, [(0, 3, "m", "natural", "everyday scene", True)])  # a repeated row
    store.add_text(run_id, emotion="joy", text="Yay", text_norm="yay", persona_id=0, model="m", quota=2)
    store.add_text(run_id, emotion="joy", text="Meh", text_norm="meh", persona_id=1, model="m", quota=2)
    texts = store.texts(run_id).set_index("text")
    cols = [f"{k}_stage{s}" for s in (1, 2, 3) for k in ("verdict", "reason")]
    assert list(texts.columns[-6:]) == cols and "age" in texts.columns
    assert texts.loc["Yay", cols].tolist() == [
        "natural",
        "common",
        "rare but plausible",
        "unusual but fine",
        "natural",
        "everyday scene",
    ]
    assert texts.loc["Meh", cols].isna().all()  # persona 1 was never validated in this run
    assert len(texts) == 2  # the join adds columns, never rows (not even for the repeated verdict row)
    # A run without any validation (e.g. attrprompt) still has the columns, all empty.
    store.add_text(other, emotion="joy", text="Hm", text_norm="hm", persona_id=None, model="m", quota=2)
    bare = store.texts(other)
    assert list(bare.columns[-6:]) == cols and bare[cols].isna().all().all()


# -- leases, read-only and corrupt stores ---------------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_one_holder_and_interrupted_state(tmp_path: Path) -> None:
    import os
    import socket
    import time

    from personagen_core.store import LEASE_TTL_S, RunBusyError

    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store, run_id="r1")
    owner = store.acquire_lease(run_id)
    store.start_session(run_id)
    assert store.run(run_id)["status"] == "running"
    lease = store.run(run_id)["lease"]
    assert (lease["pid"], lease["host"]) == (os.getpid(), socket.gethostname())
    with pytest.raises(RunBusyError, match="r1 is being generated right now by this process"):
        store.acquire_lease(run_id)
    assert store.run(run_id)["status"] == "running"  # the refused second session changed nothing
    assert store.heartbeat(run_id, owner)
    store.release_lease(run_id, owner)
    # no lease while marked running: interrupted (killed before it could mark anything)
    assert store.run(run_id)["status"] == "interrupted"
    assert store.list_runs()["status"].tolist() == ["interrupted"]

    def put(pid: int, host: str, age: float) -> None:
        with sqlite3.connect(store.path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?)",
                (run_id, "other", pid, host, time.time() - age, time.time() - age),
            )

    put(_dead_pid(), socket.gethostname(), 0.0)  # holder on this host died (kill -9): at once interrupted
    assert store.run(run_id)["status"] == "interrupted"
    put(1, "some-other-host", 1.0)  # another machine, fresh heartbeat: live
    assert store.run(run_id)["status"] == "running"
    with pytest.raises(RunBusyError, match="pid 1 on some-other-host"):
        store.acquire_lease(run_id)
    put(1, "some-other-host", LEASE_TTL_S + 5)  # its heartbeat expired: interrupted, and can be taken over
    assert store.run(run_id)["status"] == "interrupted"
    mine = store.acquire_lease(run_id)
    assert store.run(run_id)["status"] == "running"
    assert not store.heartbeat(run_id, "other")  # the old holder learns it lost the run
    store.release_lease(run_id, "other")  # and cannot release the new holder's lease
    assert store.lease(run_id).owner == mine  # type: ignore[union-attr]


def test_lease_is_taken_by_exactly_one_of_many_threads(tmp_path: Path) -> None:
    from personagen_core.store import RunBusyError

    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store)
    barrier = threading.Barrier(8)
    won: list[str] = []
    busy: list[str] = []

    def go() -> None:
        barrier.wait()
        try:
            won.append(store.acquire_lease(run_id))
        except RunBusyError as exc:
            busy.append(str(exc))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(busy) == 7


def test_read_only_store_reads_and_never_writes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    store.add_text(run_id, emotion="joy", text="So happy!", text_norm="so happy", persona_id=None, model="m",
                   quota=2)
    store.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    ro = RunStore(path, read_only=True)
    assert ro.list_runs()["accepted"].tolist() == [1]
    assert ro.texts(run_id)["text"].tolist() == ["So happy!"] and ro.run(run_id)["status"] == "created"
    with pytest.raises(StoreError, match="opened read-only"):
        ro.set_status(run_id, "done")
    with pytest.raises(StoreError, match="opened read-only"):
        ro.acquire_lease(run_id)
    ro.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with pytest.raises(StoreError, match="no run store at"):
        RunStore(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()


def _corrupt_store(path: Path) -> None:
    store = RunStore(path)
    run_id = _run(store)
    with store.write_behind():  # one transaction
        for i in range(400):
            store.add_rejection(run_id, stage=4, reason="x", detail="d" * 200, text=f"text {i} " * 20)
    store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 40 * 4096
    mid = len(data) // 2 // 4096 * 4096  # a page in the middle of the file: its header and cells
    data[mid : mid + 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))


def test_corrupt_store_is_refused_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    _corrupt_store(path)
    damaged = path.read_bytes()
    with pytest.raises(StoreError, match=r"runs\.sqlite is corrupt") as exc:
        RunStore(path)
    assert str(path) in str(exc.value) and "Move it aside" in str(exc.value)
    assert path.read_bytes() == damaged  # nothing was written into it


def test_deferred_texts_are_committed_in_one_transaction_with_the_flush(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    reader = sqlite3.connect(path)

    def count() -> int:
        return reader.execute("SELECT COUNT(*) FROM texts").fetchone()[0]

    kw = {"persona_id": None, "model": "m", "quota": 2, "defer": True}
    with store.write_behind():
        for i, emotion in enumerate(["joy", "joy", "fear"]):
            assert store.add_text(run_id, emotion=emotion, text=f"T{i}", text_norm=f"t{i}", **kw) == "accepted"
        assert count() == 0  # deferred: a kill -9 now loses them (they were never reported)
        store.flush()
        assert count() == 3
    # outside write_behind, defer=True writes at once and still reports the guards' answer
    assert store.add_text(run_id, emotion="joy", text="T9", text_norm="t9", **kw) == "quota_full"
    assert count() == 3


def test_a_deferred_text_the_guards_refuse_fails_the_flush_but_keeps_the_rest(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _run(store)
    kw = {"persona_id": None, "model": "m", "quota": 2, "defer": True}
    assert store.add_text(run_id, emotion="joy", text="A", text_norm="a", quota=2, persona_id=None, model="m") == (
        "accepted"
    )
    with store.write_behind():
        store.add_calls(run_id, [CallRow(4, "generator", "m", 10, 1)])
        store.add_text(run_id, emotion="joy", text="a!", text_norm="a", **kw)  # a duplicate slipped through
        store.add_text(run_id, emotion="fear", text="B", text_norm="b", **kw)
        with pytest.raises(StoreError, match="1 deferred accepted text"):
            store.flush()
    assert store.accepted_counts(run_id) == {"joy": 1, "fear": 1}
    assert store.totals(run_id)["calls"] == 1


_RUN_TABLES = ("texts", "calls", "personas", "verdicts", "rejections", "events")


def test_run_queries_use_indexes_not_full_scans(tmp_path: Path) -> None:
    """Every query that ``runs list/show``, export and resume send is planned with an index on the run: no
    full scan of a run table (a 100k-text store would read every row of every run)."""
    from typer.testing import CliRunner

    from personagen_core.cli import app
    from personagen_core.export import export_run

    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    run_id = _run(store)
    store.add_personas(run_id, 0, [(0, {"age": "6-12"}, "a child", "")])
    store.add_verdicts(run_id, [(0, 1, "m", "natural", "", False)])
    store.add_text(run_id, emotion="joy", text="Yay", text_norm="yay", persona_id=0, model="m", quota=2)
    store.add_calls(run_id, [CallRow(1, "validator", "m", 10, 1)])
    store.add_rejection(run_id, stage=4, reason="refusal")
    store.add_event(run_id, "running", {"n": 1})
    store.close()

    statements: list[str] = []
    original = RunStore._conn

    def traced(self: RunStore) -> sqlite3.Connection:
        conn = original(self)
        conn.set_trace_callback(statements.append)
        return conn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "_conn", traced)
        for args in (["runs", "list"], ["runs", "show", run_id]):
            res = CliRunner().invoke(app, [*args, "--db", str(path)])
            assert res.exit_code == 0, res.output
        reader = RunStore(path)
        for fmt in ("csv", "jsonl", "parquet"):
            export_run(reader, run_id, fmt, tmp_path / f"out.{fmt}")
        # what a resumed session reads before it starts
        reader.accepted_counts(run_id), reader.rejection_counts(run_id), reader.totals(run_id)
        reader.accepted_texts(run_id), reader.next_persona_id(run_id)
        reader.close()
    selects = {s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))}
    assert any("FROM texts" in s for s in selects) and any("FROM calls" in s for s in selects)
    conn = sqlite3.connect(path)
    scans = []
    for sql in selects:
        for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
            detail = row[-1]
            words = detail.split()
            if words[:1] == ["SCAN"] and words[1] in _RUN_TABLES and "INDEX" not in detail:
                scans.append((detail, sql))
    assert scans == []


def test_verdict_cache_keys_are_stored_once(tmp_path: Path) -> None:
    """The cache key (a JSON attribute tuple) lives in the primary key's b-tree only: no automatic index
    holding a second copy of every key (it was a third of a validated run's store)."""
    store = RunStore(tmp_path / "r.sqlite")
    key = verdict_key({"age": "6-12", "job": "pupil"}, ["age", "job"])
    store.cache_verdicts(1, "m", {key: ("natural", "")})
    assert store.cached_verdicts(1, "m", [key, "other"]) == {key: ("natural", "")}
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'verdict_cache' AND type = 'index'").fetchall() == []
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT verdict FROM verdict_cache WHERE stage = 1 AND model = 'm' AND key = ?", (key,)))
    assert "USING PRIMARY KEY" in plan

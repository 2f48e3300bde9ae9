"""Batch API mode (generation/batch.py): exact quotas in waves, surplus, batch prices, failed requests and
batches, kill -9 then resume without resubmitting, and the vLLM run_batch round trip (batch export/import)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personagen_core.cli import app
from personagen_core.export import export_frame
from personagen_core.generation import pricing
from personagen_core.generation.batch import BatchOptions, run_batch_generation
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.pipeline import GenerationConfig
from personagen_core.personas.spec import load_pack
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import DefaultResponder, FakeOpenAIServer

KEY = "sk-batch-test-0123456789"
FAST = BatchOptions(poll_interval=0.02)


def _config(srv: FakeOpenAIServer, per: int, **kw: object) -> GenerationConfig:
    return GenerationConfig(per_emotion=per, emotions=["joy", "fear", "anger"], validate=True, llm=LLMSettings(
        backend="openai", base_url=srv.base_url, api_key=KEY, model="gpt-4.1-mini"), **kw)


def _mixed() -> DefaultResponder:
    """One verdict in three implausible: waves must top up what validation drops."""
    return DefaultResponder(seed=3, choices={"verdict": ["natural", "rare but plausible", "implausible"]})


def test_exact_quotas_surplus_and_batch_prices(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    events = []
    with FakeOpenAIServer(_mixed(), batch_in_progress_s=0.02) as srv:
        summary = run_batch_generation(load_pack("japan"), _config(srv, 12), store, options=FAST,
                                       on_event=events.append)
        creates = len(srv.batches.creates)
        chat = len(srv.chat_requests)
    assert summary.state == "done", summary.message
    texts = store.texts(summary.run_id)
    assert texts.groupby("emotion").size().to_dict() == {"joy": 12, "fear": 12, "anger": 12}
    assert store.accepted_counts(summary.run_id) == {"joy": 12, "fear": 12, "anger": 12}
    assert len(export_frame(store, summary.run_id)) == 36  # surplus is never delivered
    jobs = store.batch_jobs(summary.run_id)
    assert creates == len(jobs) and chat == 0  # everything went through batches
    assert list(jobs["step"][:4]) == ["stage1", "stage2", "stage3", "generate"]
    assert (jobs["status"] == "completed").all() and jobs["ingested"].all()
    gen = jobs[jobs["step"] == "generate"]
    surplus = sum(store.surplus_counts(summary.run_id).values())
    assert int(gen["completed"].sum()) >= 36 and surplus >= 0
    with sqlite3.connect(store.path) as conn:
        n_sur = conn.execute("SELECT COUNT(*) FROM batch_surplus WHERE run_id = ?", (summary.run_id,)).fetchone()[0]
    assert n_sur == surplus
    # every verdict was asked through a batch: stage 1 dropped about a third (over-provisioned, topped up)
    assert store.rejection_counts(summary.run_id).get("stage1_implausible", 0) > 0
    usage = store.usage(summary.run_id)
    for _, row in usage.iterrows():
        full = pricing.cost("gpt-4.1-mini", int(row["prompt_tokens"]), int(row["completion_tokens"]))
        assert row["cost"] == pytest.approx(full * pricing.BATCH_DISCOUNT, rel=1e-6)
    assert summary.cost > 0 and events[-1].state == "done"
    # the estimate recorded for `runs show` is at batch prices: half the async estimate of the same run
    from personagen_core.generation.pipeline import estimate_cost

    full = estimate_cost(load_pack("japan"), _config(srv, 12)).total_usd
    assert store.estimate(summary.run_id)["total_usd"] == pytest.approx(full * pricing.BATCH_DISCOUNT)
    assert any("batch" in (e.message or "") for e in events)


def test_failed_requests_inside_a_batch_are_sent_again(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(batch_in_progress_s=0.02, batch_failure_rate=0.25, seed=5) as srv:
        summary = run_batch_generation(load_pack("japan"), _config(srv, 8), store, options=FAST)
    assert summary.state == "done", summary.message
    assert store.accepted_counts(summary.run_id) == {"joy": 8, "fear": 8, "anger": 8}
    jobs = store.batch_jobs(summary.run_id)
    assert jobs["failed"].sum() > 0
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT job_id, groups_json, status FROM batch_requests WHERE run_id = ?"
                            " AND persona_id IS NULL", (summary.run_id,)).fetchall()
    failed = [(jid, g) for jid, g, st in rows if st == "failed"]
    assert failed, "some validation request failed"
    # the candidates of a failed validation request were sent again by a later batch of the same stage (the
    # last batch's failures are not, once the quotas are met)
    step = dict(zip(jobs["job_id"], jobs["step"]))

    def sent_after(jid: int) -> set[int]:
        return {p for j, g, _ in rows if j > jid and step[j] == step[jid] for grp in json.loads(g) for p in grp}

    rechecked = [(jid, g) for jid, g in failed if any(j > jid and s == step[jid] for j, s in step.items())]
    assert rechecked
    for jid, groups in rechecked:
        assert {p for grp in json.loads(groups) for p in grp} <= sent_after(jid)
    calls = store.usage(summary.run_id)
    assert calls["failed"].sum() == jobs["failed"].sum()


def test_expired_batch_is_resubmitted(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(batch_in_progress_s=0.02) as srv:
        srv.batches.add_outcomes(["expire"])
        summary = run_batch_generation(load_pack("japan"), _config(srv, 5), store, options=FAST)
    assert summary.state == "done", summary.message
    jobs = store.batch_jobs(summary.run_id)
    assert list(jobs["status"][:2]) == ["expired", "completed"]
    assert list(jobs["step"][:2]) == ["stage1", "stage1"] and list(jobs["attempt"][:2]) == [1, 2]
    # the expired batch delivered half its answers; the retry asked only the rest
    assert jobs["completed"].iloc[0] > 0 and jobs["requests"].iloc[1] == jobs["requests"].iloc[0] - jobs[
        "completed"].iloc[0]
    assert store.accepted_counts(summary.run_id) == {"joy": 5, "fear": 5, "anger": 5}


def test_a_batch_failing_past_the_retries_stops_the_run_with_the_reason(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(batch_in_progress_s=0.01) as srv:
        srv.batches.add_outcomes(["fail", "fail"])
        summary = run_batch_generation(load_pack("japan"), _config(srv, 3), store,
                                       options=BatchOptions(poll_interval=0.02, max_batch_retries=1))
        assert summary.state == "failed"
        assert "ended failed 2 time(s)" in (summary.message or "") and "simulated batch failure" in summary.message
        assert store.run(summary.run_id)["status"] == "failed"
        assert sum(summary.accepted.values()) == 0
        # the cause is gone: a resume carries on to the quotas
        from personagen_core.generation.batch import resume_batch_generation

        again = resume_batch_generation(store, summary.run_id, poll_interval=0.02, llm=_config(srv, 3).llm)
    assert again.state == "done" and store.accepted_counts(summary.run_id) == {"joy": 3, "fear": 3, "anger": 3}


def _cli(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "personagen_core.cli", *args]


@pytest.mark.slow
def test_kill_9_during_a_batch_then_resume_polls_the_same_batch(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    with FakeOpenAIServer(api_key=KEY, batch_in_progress_s=3.0) as srv:
        cmd = [sys.executable, "-m", "personagen_core.cli", "generate", "--batch", "--poll-interval", "0.1",
               "--pack", "japan", "--emotions", "joy,fear", "--per-emotion", "4", "--base-url", srv.base_url,
               "--model", "gpt-4.1-mini", "--llm-validation", "--db", str(db)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killed_batch = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and killed_batch is None:
            time.sleep(0.1)
            try:
                with sqlite3.connect(db) as conn:
                    row = conn.execute("SELECT batch_id FROM batch_jobs WHERE status = 'in_progress'").fetchone()
            except sqlite3.OperationalError:
                continue
            killed_batch = row[0] if row else None
        assert killed_batch is not None and proc.poll() is None, proc.communicate()[0].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        assert store.run(run_id)["status"] == "interrupted"
        res = subprocess.run([sys.executable, "-m", "personagen_core.cli", "generate", "--resume", run_id,
                              "--poll-interval", "0.1", "--db", str(db), "--base-url", srv.base_url],
                             env=env, capture_output=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
        assert srv.batches.creates.count(killed_batch) == 1  # polled again, never created again
        jobs = store.batch_jobs(run_id)
        assert list(jobs["batch_id"]) == srv.batches.creates  # one remote batch per recorded job, no other
        creates = [r for r in srv.requests if r.method == "POST" and r.path == "/v1/batches"]
        assert len(creates) == len(jobs)
    assert store.accepted_counts(run_id) == {"joy": 4, "fear": 4}
    assert store.run(run_id)["status"] == "done"
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--db", str(db)])
    assert shown.exit_code == 0 and killed_batch in shown.output and "batches" in shown.output, shown.output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def run_batch_simulation(requests: Path, results: Path, srv: FakeOpenAIServer, *, fail_every: int = 0) -> int:
    """What ``vllm.entrypoints.openai.run_batch`` does: one output line per input line, in vLLM's format;
    answers come from the fake's chat logic. ``fail_every`` makes every n-th request fail (HTTP 500)."""
    out = []
    for i, line in enumerate(requests.read_text().splitlines()):
        req = json.loads(line)
        assert req["method"] == "POST" and req["url"] == "/v1/chat/completions"
        if fail_every and i % fail_every == fail_every - 1:
            out.append({"id": f"vllm-{i}", "custom_id": req["custom_id"],
                        "response": {"status_code": 500, "request_id": f"vllm-batch-{i}",
                                     "body": {"object": "error", "message": "boom"}}, "error": None})
            continue
        status, body = srv.answer_body(req["body"], i)
        out.append({"id": f"vllm-{i}", "custom_id": req["custom_id"],
                    "response": {"status_code": status, "request_id": f"vllm-batch-{i}", "body": body},
                    "error": None})
    results.write_text("".join(json.dumps(x) + "\n" for x in out))
    return len(out)


def test_vllm_run_batch_round_trip_through_export_and_import(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    store = RunStore(db)
    srv = FakeOpenAIServer(_mixed())  # not started: only its answer logic simulates the GPU job
    runner = CliRunner()
    out = runner.invoke(app, ["batch", "new", "--pack", "japan", "--emotions", "joy,sadness", "--per-emotion", "6",
                              "--model", "fake-model", "--db", str(db)])
    assert out.exit_code == 0, out.output
    run_id = out.output.split()[1].rstrip(":")
    assert store.run(run_id)["status"] == "stopped" and store.batch_run(run_id) is not None
    steps = []
    for round_ in range(40):
        req, res = tmp_path / f"req{round_}.jsonl", tmp_path / f"res{round_}.jsonl"
        out = runner.invoke(app, ["batch", "export", run_id, "--out", str(req), "--db", str(db)])
        assert out.exit_code == 0, out.output
        if "nothing to export" in out.output:
            break
        first = json.loads(req.read_text().splitlines()[0])
        assert set(first) == {"custom_id", "method", "url", "body"} and first["body"]["messages"]
        steps.append(first["custom_id"])
        if "response_format" not in first["body"]:  # a generation step exported again gives the same lines
            again = tmp_path / f"again{round_}.jsonl"
            out = runner.invoke(app, ["batch", "export", run_id, "--out", str(again), "--db", str(db)])
            assert out.exit_code == 0, out.output
            assert again.read_text() == req.read_text()
        run_batch_simulation(req, res, srv, fail_every=7)
        if round_ == 1:  # resuming an offline run waiting for its import says so and changes nothing
            waiting = runner.invoke(app, ["generate", "--resume", run_id, "--db", str(db)])
            assert waiting.exit_code == 3 and "batch import" in waiting.output, waiting.output
        if round_ == 0:  # a results file of some other job is refused, naming the file and the custom id
            stray = tmp_path / "stray.jsonl"
            stray.write_text(json.dumps({"id": "x", "custom_id": "999-0", "response": None, "error": None}) + "\n")
            bad = runner.invoke(app, ["batch", "import", run_id, str(stray), "--db", str(db)])
            assert "stray.jsonl" in str(bad.exception) and "999-0" in str(bad.exception)
        out = runner.invoke(app, ["batch", "import", run_id, str(res), "--db", str(db)])
        assert out.exit_code == 0, out.output
        if "done" in out.output.splitlines()[0]:
            break
    assert store.run(run_id)["status"] == "done"
    assert store.accepted_counts(run_id) == {"joy": 6, "sadness": 6}
    jobs = store.batch_jobs(run_id)
    assert list(jobs["step"][:4]) == ["stage1", "stage2", "stage3", "generate"] and jobs["failed"].sum() > 0
    # importing a file of another export, or twice, is refused with the reason
    bad = runner.invoke(app, ["batch", "import", run_id, str(tmp_path / "res0.jsonl"), "--db", str(db)])
    assert bad.exit_code != 0 and "no exported batch" in str(bad.exception)
    # an answer line for a request this export did not make is refused, naming the file
    runner.invoke(app, ["generate", "--resume", run_id, "--db", str(db)])  # done: nothing happens
    assert store.run(run_id)["status"] == "done"


def _answered_lines(srv: FakeOpenAIServer) -> list[str]:
    """custom_ids of every request line the fake answered (output and error files of every batch)."""
    import openai

    client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
    out = []
    for bid in srv.batches.creates:
        b = client.batches.retrieve(bid)
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                out += [json.loads(x)["custom_id"] for x in client.files.content(fid).text.splitlines() if x]
    return out


def _run_in_thread(fn: object) -> tuple[object, dict[str, object]]:
    import threading

    result: dict[str, object] = {}
    worker = threading.Thread(target=lambda: result.update(s=fn()))  # type: ignore[operator]
    worker.start()
    return worker, result


@pytest.mark.parametrize("step", ["stage1", "generate"])
def test_cancel_cancels_the_remote_batch_and_resume_collects_its_answers(tmp_path: Path, step: str) -> None:
    """Cancelling a run cancels its batch at the endpoint (recorded); a resume ingests what the cancelled
    batch had answered, sends only the rest again, and meets the quotas exactly: no request paid twice."""
    import threading

    from personagen_core.generation.batch import resume_batch_generation

    store = RunStore(tmp_path / "runs.sqlite")
    cancel = threading.Event()
    # the first batch (stage 1, or generation when validation is off) is held in progress until cancelled
    with FakeOpenAIServer(_mixed(), batch_validating_s=0.0, batch_in_progress_s=60.0) as srv:
        cfg = _config(srv, 8)
        if step == "generate":
            cfg = cfg.model_copy(update={"validate_": False})
        worker, result = _run_in_thread(lambda: run_batch_generation(
            load_pack("japan"), cfg, store, options=BatchOptions(poll_interval=0.05), cancel=cancel))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            srv.batches.creates and srv.batches.batches[srv.batches.creates[0]]["status"] == "in_progress"
        ):
            time.sleep(0.01)
        cancel.set()
        worker.join(timeout=60)
        summary = result["s"]
        run_id = summary.run_id  # type: ignore[attr-defined]
        assert summary.state == "cancelled", summary.message  # type: ignore[attr-defined]
        assert "cancelled at the endpoint" in summary.message  # type: ignore[attr-defined]
        cancelled = srv.batches.cancels
        assert len(cancelled) == 1
        job = store.batch_jobs(run_id).set_index("batch_id").loc[cancelled[0]]
        assert job["step"] == step and job["status"] == "cancelling" and "cancelled by the user" in job["message"]
        assert store.run(run_id)["status"] == "cancelled"

        srv.batches.in_progress_s = 0.02
        again = resume_batch_generation(store, run_id, llm=cfg.llm, poll_interval=0.05)
        assert again.state == "done", again.message
        answered = _answered_lines(srv)

    assert store.accepted_counts(run_id) == {"joy": 8, "fear": 8, "anger": 8}
    jobs = store.batch_jobs(run_id)
    first = jobs.set_index("batch_id").loc[cancelled[0]]
    assert first["status"] == "cancelled" and first["ingested"] == 1
    assert 0 < first["completed"] < first["requests"]  # half of it was answered before the cancel, and kept
    assert srv.batches.creates.count(cancelled[0]) == 1
    retry = jobs[(jobs["wave"] == first["wave"]) & (jobs["step"] == step) & (jobs["attempt"] == 2)]
    assert len(retry) == 1 and int(retry["requests"].iloc[0]) <= first["requests"] - first["completed"]
    # no request answered twice, and every answered line was recorded (and paid) once
    assert len(answered) == len(set(answered))
    assert store.totals(run_id)["calls"] == len(answered)
    with sqlite3.connect(store.path) as conn:
        twice = conn.execute("SELECT persona_id, stage FROM verdicts WHERE run_id = ? GROUP BY persona_id, stage"
                             " HAVING COUNT(*) > 1", (run_id,)).fetchall()
        per_persona = conn.execute("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM batch_requests WHERE run_id = ?"
                                   " AND persona_id IS NOT NULL AND status = 'ok' GROUP BY persona_id)",
                                   (run_id,)).fetchone()[0]
    assert twice == [] and per_persona <= 1  # texts_per_persona 1: one paid text per candidate


def test_hard_budgets_shrink_waves_and_never_overspend(tmp_path: Path) -> None:
    """--max-cost in batch mode: each batch's worst case (prompt + max_tokens at batch prices) is reserved
    before it is created and waves shrink to what the budget left can carry, so the run stops within its
    limit and says so; a resume with a larger limit completes exactly. A token budget too small for even one
    request stops before anything is sent, naming the budget."""
    from personagen_core.generation.batch import resume_batch_generation

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(_mixed(), batch_in_progress_s=0.02) as srv:
        full = run_batch_generation(load_pack("japan"), _config(srv, 8), store, options=FAST)
        assert full.state == "done"
        limit = full.cost / 5  # a fifth of what the whole run costs
        cfg = _config(srv, 8, max_cost=limit)
        summary = run_batch_generation(load_pack("japan"), cfg, store, options=FAST)
        assert summary.state == "stopped" and summary.stop_reason == "max_cost", summary.message
        assert summary.cost <= limit  # the reservation is a worst case: never past the limit
        assert summary.budget is not None and summary.budget["overshoot"] == 0.0
        assert summary.budget["limit"] == pytest.approx(limit)
        assert "cost limit" in (summary.message or "") and "sampled" in (summary.message or "")
        assert 0 < sum(summary.accepted.values()) < 24
        # the first wave was shrunk: fewer candidates asked at stage 1 than in the unbudgeted run
        first = store.batch_jobs(full.run_id)
        small = store.batch_jobs(summary.run_id)
        assert small["requests"].iloc[0] < first["requests"].iloc[0]
        assert store.run(summary.run_id)["stop_reason"] == "max_cost"
        again = resume_batch_generation(store, summary.run_id, llm=cfg.llm, poll_interval=0.02, max_cost=1.0)
        assert again.state == "done", again.message
        assert store.accepted_counts(summary.run_id) == {"joy": 8, "fear": 8, "anger": 8}

        before = len(srv.batches.creates)
        tiny = run_batch_generation(load_pack("japan"), _config(srv, 8, token_budget=50), store, options=FAST)
        assert tiny.state == "stopped" and tiny.stop_reason == "token_budget"
        assert len(srv.batches.creates) == before and tiny.tokens == 0  # nothing was sent
        assert "token budget" in (tiny.message or "") and "needs up to" in (tiny.message or "")


def test_wave_sizing_follows_the_latest_waves_rates(tmp_path: Path) -> None:
    """Each ingested batch records what it kept of what it judged; the planner's rates weigh the latest wave
    most, so a drop in acceptance shows at once (the cumulative rate would lag behind)."""
    from personagen_core.generation.batch import PRIOR_RATE, PRIOR_WEIGHT, RECENCY, _session

    store = RunStore(tmp_path / "runs.sqlite")
    with FakeOpenAIServer(_mixed(), batch_in_progress_s=0.02) as srv:
        summary = run_batch_generation(load_pack("japan"), _config(srv, 8), store, options=FAST)
    assert summary.state == "done"
    jobs = store.batch_jobs(summary.run_id)
    assert (jobs["judged"] > 0).all() and (jobs["kept"] <= jobs["judged"]).all()
    gen = jobs[jobs["step"] == "generate"]
    # generation: every answered output was judged; kept = delivered + surplus
    assert int(gen["judged"].sum()) == int(gen["completed"].sum())
    assert int(gen["kept"].sum()) == 24 + sum(store.surplus_counts(summary.run_id).values())
    # a run whose acceptance fell from 90 % (wave 1) to 50 % (wave 2)
    gid = [int(j) for j in gen["job_id"]]
    assert len(gid) >= 2  # a top-up wave followed (one verdict in three implausible)
    store.update_batch_job(gid[0], wave=1, kept=900, judged=1000)
    for j in gid[1:]:
        store.update_batch_job(j, wave=2, kept=500 // (len(gid) - 1), judged=1000 // (len(gid) - 1))
    session = _session(store, summary.run_id)
    try:
        _, out = session._rates()
    finally:
        session.close()
    k2, n2 = 500 // (len(gid) - 1) * (len(gid) - 1), 1000 // (len(gid) - 1) * (len(gid) - 1)
    want = (RECENCY * 900 + k2 + PRIOR_RATE * PRIOR_WEIGHT) / (RECENCY * 1000 + n2 + PRIOR_WEIGHT)
    assert out == pytest.approx(want)
    assert out < (900 + k2) / (1000 + n2) - 0.05  # well below the cumulative rate


def test_a_store_from_before_the_job_counts_gets_them(tmp_path: Path) -> None:
    """batch_jobs.kept/judged were added later: an older store is migrated when opened for writing and reads
    as 0 when opened read-only."""
    from personagen_core.store_batches import BATCH_SCHEMA

    old = BATCH_SCHEMA.replace("    kept INTEGER NOT NULL DEFAULT 0,\n    judged INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old != BATCH_SCHEMA
    for name in ("ro", "rw"):
        path = tmp_path / f"{name}.sqlite"
        RunStore(path).close()
        with sqlite3.connect(path) as conn:
            conn.executescript("DROP TABLE batch_jobs;" + old)
            conn.execute("INSERT INTO batch_jobs(run_id, wave, step, status, created_at, updated_at)"
                         " VALUES ('r', 1, 'generate', 'completed', 0, 0)")
        store = RunStore(path, read_only=name == "ro")
        jobs = store.batch_jobs("r")
        assert list(jobs[["kept", "judged"]].iloc[0]) == [0, 0]
        if name == "rw":
            store.update_batch_job(int(jobs["job_id"].iloc[0]), kept=3, judged=4)
            assert store.batch_job(int(jobs["job_id"].iloc[0]))["judged"] == 4


@pytest.mark.slow
def test_sigterm_in_the_cli_cancels_the_remote_batch_then_resume_completes(tmp_path: Path) -> None:
    """`personagen generate --batch` stopped with SIGTERM: the batch in flight is cancelled at the endpoint
    (`runs show` says so), the run is `cancelled` (exit 3) and `--resume` completes it exactly."""
    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    with FakeOpenAIServer(api_key=KEY, batch_validating_s=0.0, batch_in_progress_s=60.0) as srv:
        cmd = [sys.executable, "-m", "personagen_core.cli", "generate", "--batch", "--poll-interval", "0.1",
               "--pack", "japan", "--emotions", "joy,fear", "--per-emotion", "4", "--base-url", srv.base_url,
               "--model", "gpt-4.1-mini", "--llm-validation", "--db", str(db)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (
            srv.batches.creates and srv.batches.batches[srv.batches.creates[0]]["status"] == "in_progress"
        ):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 3, out
        assert srv.batches.cancels == srv.batches.creates[:1], out
        assert "cancelled at the endpoint" in out
        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        assert store.run(run_id)["status"] == "cancelled"
        shown = CliRunner().invoke(app, ["runs", "show", run_id, "--db", str(db)])
        assert "cancelled by the user" in shown.output, shown.output
        srv.batches.in_progress_s = 0.05
        res = subprocess.run([sys.executable, "-m", "personagen_core.cli", "generate", "--resume", run_id,
                              "--poll-interval", "0.1", "--db", str(db), "--base-url", srv.base_url],
                             env=env, capture_output=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert store.accepted_counts(run_id) == {"joy": 4, "fear": 4}
    assert srv.batches.creates.count(srv.batches.cancels[0]) == 1


def test_cancel_during_the_upload_creates_no_batch(tmp_path: Path) -> None:
    """A cancel that arrives while a batch file is being uploaded stops before the batch is created (nothing
    runs or is paid at the endpoint); the resume creates it from the uploaded file and completes."""
    import threading

    from personagen_core.generation.batch import OpenAIBatches, resume_batch_generation

    store = RunStore(tmp_path / "runs.sqlite")
    cancel = threading.Event()

    class CancelOnUpload(OpenAIBatches):
        def upload(self, name: str, data: object) -> str:  # type: ignore[override]
            fid = super().upload(name, data)  # type: ignore[arg-type]
            cancel.set()  # Ctrl-C while the file went up
            return fid

    with FakeOpenAIServer(batch_in_progress_s=0.02) as srv:
        cfg = _config(srv, 3)
        summary = run_batch_generation(load_pack("japan"), cfg, store, options=FAST, cancel=cancel,
                                       remote=CancelOnUpload(cfg.llm))
        assert summary.state == "cancelled" and srv.batches.creates == [] and srv.batches.cancels == []
        job = store.batch_jobs(summary.run_id).iloc[0]
        assert job["status"] == "uploaded" and job["input_file_id"] and not job["batch_id"]
        again = resume_batch_generation(store, summary.run_id, llm=cfg.llm, poll_interval=0.02)
        assert again.state == "done", again.message
        first = store.batch_jobs(summary.run_id).iloc[0]
        assert first["input_file_id"] == job["input_file_id"] and first["batch_id"] == srv.batches.creates[0]
    assert store.accepted_counts(summary.run_id) == {"joy": 3, "fear": 3, "anger": 3}

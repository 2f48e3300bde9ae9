"""``personagen generate / runs / export`` end to end, including kill -9 in the middle of a run and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from personagen_core.cli import app, main
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer
from personagen_core.testing.serving import wait_until

KEY = "sk-cli-test-NEVER-STORED-9876543210"


def _files_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_generate_runs_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    db = tmp_path / "runs.sqlite"
    runner = CliRunner()
    with FakeOpenAIServer(api_key=KEY, latency=0.005) as srv:
        res = runner.invoke(
            app,
            [
                "generate",
                "--pack",
                "japan",
                "--emotions",
                "joy,sadness",
                "--per-emotion",
                "3",
                "--base-url",
                srv.base_url,
                "--model",
                "fake-model",
                "--db",
                str(db),
                "--concurrency",
                "4",
                "--seed",
                "7",
                "--verdict-reasons",
                "rejected",
            ],
        )
        systems = [r.body["messages"][0]["content"] for r in srv.chat_requests
                   if r.body and "response_format" in r.body]
    assert res.exit_code == 0, res.output
    assert systems and all('for an "implausible" verdict only' in m for m in systems)
    assert "estimate:" in res.output and "done - 6/6 texts" in res.output
    # not a terminal: plain progress lines, no bar characters
    assert "joy 3/3 sadness 3/3 | total 6/6 | rejected" in res.output and "━" not in res.output
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"  # generate may run llama.cpp: threads sleep
    run_id = RunStore(db).list_runs()["run_id"].iloc[0]
    assert RunStore(db).run(run_id)["config"]["verdict_reasons"] == "rejected"

    res = runner.invoke(app, ["runs", "list", "--db", str(db)])
    assert res.exit_code == 0 and run_id in res.output and "6/6" in res.output
    res = runner.invoke(app, ["runs", "show", run_id, "--db", str(db)])
    assert res.exit_code == 0
    for word in ("funnel", "stage 1", "stage 3", "rejections", "usage", "validator", "generator", "total:"):
        assert word in res.output, word
    # the store's size on disk and per 1,000 texts (one run of 6 texts in it)
    m = re.search(r"store .*: ([\d.,]+) MB for 6 texts in 1 run\(s\), ([\d.,]+) MB per 1,000 texts", res.output)
    assert m is not None, res.output
    total, per_1000 = (float(g.replace(",", "")) for g in m.groups())
    # the total is printed to 0.1 MB: per 1,000 texts is total / 6 * 1000 within that rounding
    assert total > 0 and per_1000 == pytest.approx(total / 6 * 1000, abs=0.05 / 6 * 1000 + 0.01)
    assert RunStore(db).size()["texts"] == 6

    frames = {}
    for fmt, name in (("csv", "t.csv"), ("jsonl", "t.jsonl"), ("parquet", "t.parquet"), ("hf", "hf")):
        res = runner.invoke(
            app, ["export", run_id, "--format", fmt, "-o", str(tmp_path / "out" / name), "--db", str(db)]
        )
        assert res.exit_code == 0, res.output
    frames["csv"] = pd.read_csv(tmp_path / "out" / "t.csv")
    frames["jsonl"] = pd.read_json(tmp_path / "out" / "t.jsonl", lines=True)
    frames["parquet"] = pd.read_parquet(tmp_path / "out" / "t.parquet")
    import datasets

    frames["hf"] = datasets.load_from_disk(str(tmp_path / "out" / "hf")).to_pandas()
    for fmt, df in frames.items():
        assert len(df) == 6, fmt
        assert {
            "text",
            "emotion",
            "label",
            "persona",
            "scenario",
            "method",
            "run_id",
            "age",
            "activity",
        } <= set(df.columns), fmt
        assert sorted(df["emotion"]) == ["joy"] * 3 + ["sadness"] * 3
        assert (df["label"] == df["emotion"]).all() and set(df["method"]) == {"personagen"}
    card = (tmp_path / "out" / "hf" / "README.md").read_text()
    assert run_id in card and "japan" in card and "fake-model" in card and "## Funnel" in card
    assert "| joy | 3 |" in card
    # the key was used (the server checks it) but is in no database or export file
    for path, data in _files_bytes(tmp_path):
        assert KEY.encode() not in data, path


def test_generate_errors_and_done_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    with pytest.raises(SystemExit) as exc:
        main(["runs", "show", "no-such-run", "--db", str(db)])
    assert exc.value.code == 2 and "error: no run 'no-such-run'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "generate",
                "--pack",
                "japan",
                "--emotions",
                "joy,rage",
                "--per-emotion",
                "1",
                "--db",
                str(db),
                "--base-url",
                "http://127.0.0.1:9/v1",
            ]
        )
    assert exc.value.code == 2 and "unknown emotion" in capsys.readouterr().err
    res = CliRunner().invoke(app, ["generate", "--pack", "japan", "--db", str(db)])
    assert res.exit_code != 0 and "--per-emotion" in res.output
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: x\n")
    res = CliRunner().invoke(
        app, ["generate", "--pack", "japan", "--spec", str(spec_file), "--per-emotion", "1"]
    )
    assert res.exit_code != 0 and "not both" in res.output

    runner = CliRunner()
    with FakeOpenAIServer() as srv:
        args = ["--base-url", srv.base_url, "--model", "fake-model", "--db", str(db)]
        res = runner.invoke(
            app,
            [
                "generate",
                "--pack",
                "japan",
                "--emotions",
                "fear",
                "--per-emotion",
                "2",
                "--token-budget",
                "500",
                "--temperature",
                "0.35",
                *args,
            ],
        )
        assert res.exit_code == 3, res.output  # stopped by the budget: resumable
        run_id = RunStore(db).list_runs()["run_id"].iloc[0]
        assert "--resume " + run_id in res.output and "--token-budget N" in res.output  # the CLI's own hint
        assert RunStore(db).run(run_id)["config"]["temperature"] == 0.35
        # --max-tokens: the deprecated name of --token-budget, still accepted with a warning
        res = runner.invoke(app, ["generate", "--resume", run_id, "--max-tokens", "1000000", *args])
        assert res.exit_code == 0, res.output
        assert "--max-tokens is deprecated" in res.output
        texts = [r.body for r in srv.chat_requests if r.body and "response_format" not in r.body]
        assert texts and {b["temperature"] for b in texts} == {0.35}  # the run's temperature, not the spec's
        res = runner.invoke(app, ["generate", "--resume", run_id, *args])
        assert res.exit_code == 0 and "already complete" in res.output
    assert RunStore(db).accepted_counts(run_id) == {"fear": 2}


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    per = 15
    with FakeOpenAIServer(api_key=KEY, latency=0.12) as srv:
        cmd = [
            sys.executable,
            "-m",
            "personagen_core.cli",
            "generate",
            "--pack",
            "japan",
            "--emotions",
            "joy,fear",
            "--per-emotion",
            str(per),
            "--base-url",
            srv.base_url,
            "--model",
            "fake-model",
            "--db",
            str(db),
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        before = _wait_for_texts(db, proc, 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        # killed: nobody marked it, but its lease holder is gone, so it shows as interrupted
        assert store.run(run_id)["status"] == "interrupted"
        assert store.list_runs().set_index("run_id").loc[run_id, "status"] == "interrupted"
        res = CliRunner().invoke(app, ["runs", "show", run_id, "--db", str(db)])
        assert res.exit_code == 0 and f"run {run_id}: interrupted" in res.output, res.output
        killed_with = store.accepted_texts(run_id)
        assert set(before) <= set(killed_with) and len(killed_with) < 2 * per

        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "personagen_core.cli",
                "generate",
                "--resume",
                run_id,
                "--db",
                str(db),
                "--base-url",
                srv.base_url,
            ],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()

    store = RunStore(db)
    texts = store.texts(run_id)
    assert texts.groupby("emotion").size().to_dict() == {"joy": per, "fear": per}
    assert texts["text"].is_unique and texts["text_id"].is_unique
    assert killed_with == list(texts["text"])[: len(killed_with)]  # nothing lost, order kept
    info = store.run(run_id)
    assert info["status"] == "done" and info["sessions"] == 2
    assert json.dumps(info["config"]).find(KEY) == -1
    store.close()
    for path, data in _files_bytes(tmp_path):
        assert KEY.encode() not in data, path


def _generate_cmd(srv: FakeOpenAIServer, db: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "personagen_core.cli",
        "generate",
        "--base-url",
        srv.base_url,
        "--model",
        "fake-model",
        "--db",
        str(db),
        *extra,
    ]


def _texts(db: Path) -> list[str]:
    """The texts a running CLI process has stored so far (none before it created the schema)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT text FROM texts ORDER BY text_id")]
    except sqlite3.OperationalError:
        return []  # schema not created yet


def _wait_for_texts(db: Path, proc: subprocess.Popen[bytes], n: int, timeout: float = 60) -> list[str]:
    """Wait until the running ``proc`` has stored ``n`` texts in ``db`` and return them."""

    def enough() -> list[str] | None:
        texts = _texts(db)
        return texts if len(texts) >= n else None

    return wait_until(enough, timeout=timeout, what=f"{n} texts stored by the CLI", interval=0.1, proc=proc)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(tmp_path: Path, sig: signal.Signals) -> None:
    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    with FakeOpenAIServer(api_key=KEY, latency=0.2) as srv:
        args = ["--pack", "japan", "--emotions", "joy,fear", "--per-emotion", "6", "--concurrency", "2"]
        proc = subprocess.Popen(
            _generate_cmd(srv, db, *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        _wait_for_texts(db, proc, 1)
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 3, out
        assert "Traceback" not in out and "KeyError" not in out, out
        assert f"{sig.name}: cancelling" in out and "Resume with: personagen generate --resume" in out
        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        info = store.run(run_id)
        assert (info["status"], info["stop_reason"], info["lease"]) == ("cancelled", "cancelled", None)
        assert sum(store.accepted_counts(run_id).values()) < 12
        res = subprocess.run(
            _generate_cmd(srv, db, "--resume", run_id), env=env, capture_output=True, timeout=120, check=False
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert RunStore(db).accepted_counts(run_id) == {"joy": 6, "fear": 6}


@pytest.mark.slow
def test_second_resume_of_a_live_run_is_refused(tmp_path: Path) -> None:
    import threading

    from personagen_core.testing.fake_openai import DefaultResponder

    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    per = 6
    release = threading.Event()
    seen = [0]
    lock = threading.Lock()
    default = DefaultResponder()

    def responder(body: dict) -> object:
        # The first run holds still after a few answers until the second process has been refused.
        with lock:
            seen[0] += 1
            n = seen[0]
        if n > 8:
            release.wait(timeout=120)
        return default(body)

    with FakeOpenAIServer(responder=responder, api_key=KEY) as srv:
        first = subprocess.Popen(
            _generate_cmd(srv, db, "--pack", "japan", "--emotions", "joy", "--per-emotion", str(per),
                          "--concurrency", "1"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_texts(db, first, 1)
            run_id = RunStore(db).list_runs()["run_id"].iloc[0]
            res = subprocess.run(_generate_cmd(srv, db, "--resume", run_id), env=env, capture_output=True,
                                 timeout=60, check=False)
            err = res.stderr.decode()
            assert res.returncode == 2, err
            assert f"error: run {run_id} is being generated right now by pid {first.pid}" in err
            assert "UNIQUE" not in err and "Traceback" not in err
            assert RunStore(db).run(run_id)["status"] == "running"  # not marked failed
        finally:
            release.set()
        out = first.communicate(timeout=120)[0].decode()
        assert first.returncode == 0, out
    store = RunStore(db)
    assert store.run(run_id)["status"] == "done" and store.accepted_counts(run_id) == {"joy": per}
    assert store.run(run_id)["sessions"] == 1


def test_base_url_credentials_never_printed_or_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_pw, secret_q = "sk-userinfo-SECRET-1234567890", "sk-query-SECRET-0987654321"
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    db = tmp_path / "runs.sqlite"
    runner = CliRunner()
    args = ["--pack", "japan", "--emotions", "joy", "--per-emotion", "2", "--db", str(db), "--model", "fake-model"]
    with FakeOpenAIServer() as srv:  # accepts any credentials (the URL's basic auth replaces the key)
        url = srv.base_url.replace("http://", f"http://user:{secret_pw}@")
        res = runner.invoke(app, ["generate", *args, "--base-url", url, "--token-budget", "300"])
        assert res.exit_code == 3, res.output  # stopped by the token budget
        assert "estimate: ~" in res.output and "http://***@127.0.0.1" in res.output
        shown = res.output
        run_id = RunStore(db).list_runs()["run_id"].iloc[0]
        assert RunStore(db).run(run_id)["config"]["llm"]["base_url"] == "http://***@" + srv.base_url[7:]
        # resuming needs the URL again (its credentials were not stored), and says so
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--resume", run_id, "--db", str(db), "--token-budget", "100000"])
        err = capsys.readouterr().err
        # the core names the setting, the CLI adds its flag
        assert exc.value.code == 2 and "give the base URL again" in err and "(set with --base-url)" in err, err
        shown += err
        res = runner.invoke(
            app, ["generate", "--resume", run_id, "--db", str(db), "--token-budget", "100000", "--base-url", url]
        )
        assert res.exit_code == 0, res.output
        shown += res.output
        # a key in a query parameter: redacted in the estimate line, the stored config and the rejections
        query_url = srv.base_url + f"?api_key={secret_q}&x=1"
        res = runner.invoke(
            app, ["generate", *args, "--base-url", query_url, "--no-validate", "--max-attempts", "2"]
        )
        assert "?api_key=***&x=1" in res.output, res.output
        # ... and still sent: the SDK gets the query as its default_query, so the server sees it
        assert srv.chat_requests[-1].query == {"api_key": secret_q, "x": "1"}
        assert srv.chat_requests[-1].path == "/v1/chat/completions"
        shown += res.output
        runs = RunStore(db).list_runs()
        second = runs["run_id"].iloc[0]
        assert RunStore(db).run(second)["config"]["llm"]["base_url"].endswith("?api_key=***&x=1")
        for cmd in (["runs", "list"], ["runs", "show", run_id], ["runs", "show", second],
                    ["export", run_id, "-o", str(tmp_path / "t.csv")]):
            res = runner.invoke(app, [*cmd, "--db", str(db)])
            assert res.exit_code == 0, res.output
            shown += res.output
    with FakeOpenAIServer(api_key="sk-the-right-key-0000000000") as srv:  # 401: the error names the URL
        url = srv.base_url.replace("http://", f"http://user:{secret_pw}@")
        with pytest.raises(SystemExit) as exc:
            main(["generate", *args, "--base-url", url])
        out = capsys.readouterr()
        assert exc.value.code == 2 and "http://***@127.0.0.1" in out.err, out.err
        shown += out.out + out.err
    assert secret_pw not in shown and secret_q not in shown
    for path, data in _files_bytes(tmp_path):
        for secret in (secret_pw, secret_q, KEY):
            assert secret.encode() not in data, (path, secret)


def test_progress_keeps_counts_readable_at_80_columns() -> None:
    import io

    from rich.console import Console

    from personagen_core.cli.generate_cmds import _ProgressView
    from personagen_core.generation.pipeline import ProgressEvent

    target = {"joy": 10, "sadness": 10, "surprise": 10}
    ev = ProgressEvent(
        run_id="r", state="running", accepted={"joy": 3, "sadness": 7, "surprise": 10}, target=target,
        rejections={"near_duplicate": 12, "stage1_implausible": 30}, tokens=1_234_567, cost=12.3456,
        calls=999, elapsed_s=3725.0, eta_s=1800.0,
    )
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None, legacy_windows=False)
    view = _ProgressView(console, target, live=True)
    view.update(ev)
    console.print(view.progress.get_renderable())
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    rows = [" ".join(line.split()) for line in lines]
    for i, row in enumerate(("joy 3/10 ━", "sadness 7/10 ━", "surprise 10/10 ━", "total 20/30 ━")):
        assert rows[i].startswith(row), text  # name and counts first, the bar after them
    assert rows[4] == "rejected 42 | 1,234,567 tok | $12.3456 | 1:02:05 elapsed, ETA 30:00", text
    assert "…" not in text
    # not a terminal: plain lines
    plain = io.StringIO()
    pview = _ProgressView(Console(file=plain, width=80), target, live=False, every_s=0)
    pview.update(ev)
    pview.update(ev, final=True)  # unchanged: not printed twice
    assert plain.getvalue().splitlines() == [
        (
            "joy 3/10 sadness 7/10 surprise 10/10 | total 20/30 | rejected 42 | 1,234,567 tok | $12.3456 | "
            "1:02:05 elapsed, ETA 30:00"
        )
    ]


def test_list_show_export_open_the_store_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    db = tmp_path / "runs.sqlite"
    store = RunStore(db)
    run_id = store.create_run(method="personagen", config={}, target={"joy": 1}, spec_yaml=None, spec_hash=None,
                              spec_name="x")
    store.add_text(run_id, emotion="joy", text="So glad!", text_norm="so glad", persona_id=None, model="m", quota=1)
    store.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    opened: list[bool] = []
    real_init = RunStore.__init__

    def spy(self: RunStore, path: object = None, *, read_only: bool = False) -> None:
        opened.append(read_only)
        real_init(self, path, read_only=read_only)  # type: ignore[arg-type]

    monkeypatch.setattr(RunStore, "__init__", spy)
    runner = CliRunner()
    for cmd in (["runs", "list"], ["runs", "show", run_id], ["export", run_id, "-o", str(tmp_path / "t.csv")]):
        res = runner.invoke(app, [*cmd, "--db", str(db)])
        assert res.exit_code == 0, res.output
    assert opened == [True, True, True]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    missing = tmp_path / "none" / "runs.sqlite"
    res = runner.invoke(app, ["runs", "list", "--db", str(missing)])
    assert res.exit_code == 0 and "no runs yet" in res.output and not missing.parent.exists()


def test_generate_refuses_a_corrupt_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    store = RunStore(db)
    run_id = store.create_run(method="personagen", config={}, target={"joy": 1}, spec_yaml=None, spec_hash=None,
                              spec_name="x")
    with store.write_behind():  # one transaction
        for i in range(400):
            store.add_rejection(run_id, stage=4, reason="x", detail="d" * 200, text=f"text {i} " * 20)
    store.close()
    data = bytearray(db.read_bytes())
    mid = len(data) // 2 // 4096 * 4096  # a page in the middle of the file
    data[mid : mid + 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--pack", "japan", "--per-emotion", "1", "--db", str(db), "--base-url",
              "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"error: the run store {db} is corrupt" in err and "Traceback" not in err

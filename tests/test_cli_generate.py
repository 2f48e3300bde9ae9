"""``personagen generate / runs / export`` end to end, including kill -9 in the middle of a run and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from personagen_core.cli import app, main
from personagen_core.store import RunStore
from personagen_core.testing.fake_openai import FakeOpenAIServer

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
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"  # generate may run llama.cpp: threads sleep
    run_id = RunStore(db).list_runs()["run_id"].iloc[0]
    assert RunStore(db).run(run_id)["config"]["llm"]["verdict_reasons"] == "rejected"

    res = runner.invoke(app, ["runs", "list", "--db", str(db)])
    assert res.exit_code == 0 and run_id in res.output and "6/6" in res.output
    res = runner.invoke(app, ["runs", "show", run_id, "--db", str(db)])
    assert res.exit_code == 0
    for word in ("funnel", "stage 1", "stage 3", "rejections", "usage", "validator", "generator", "total:"):
        assert word in res.output, word

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
                "--max-tokens",
                "500",
                *args,
            ],
        )
        assert res.exit_code == 3, res.output  # stopped by the budget: resumable
        run_id = RunStore(db).list_runs()["run_id"].iloc[0]
        assert "--resume " + run_id in res.output
        res = runner.invoke(app, ["generate", "--resume", run_id, "--max-tokens", "1000000", *args])
        assert res.exit_code == 0, res.output
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
        before: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if db.exists():
                try:
                    with sqlite3.connect(db) as conn:
                        before = [r[0] for r in conn.execute("SELECT text FROM texts ORDER BY text_id")]
                except sqlite3.OperationalError:
                    continue  # schema not created yet
            if len(before) >= 5 or proc.poll() is not None:
                break
        assert proc.poll() is None, proc.communicate()[0].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        store = RunStore(db)
        run_id = store.list_runs()["run_id"].iloc[0]
        assert store.run(run_id)["status"] == "running"  # killed: nobody marked it
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

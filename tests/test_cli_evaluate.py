"""``personagen evaluate`` in process: data files, runs, the judge over HTTP, and clear errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from personagen_core.cli import main

_WORDS = {
    "joy": ["happy", "delighted", "thrilled", "glad", "cheerful", "overjoyed"],
    "anger": ["furious", "angry", "annoyed", "livid", "irritated", "outraged"],
    "sadness": ["sad", "heartbroken", "gloomy", "miserable", "down", "lonely"],
}
_EVENTS = ["the exam results", "my sister's call", "the train delay", "the new job", "the rainy weekend"]


def make_texts(n_per_label: int, offset: int = 0) -> pd.DataFrame:
    """Deterministic short texts, emotion words per label (as in test_evaluation.py)."""
    rows = [
        {
            "text": f"I feel so {words[(i + offset) % 6]} about {_EVENTS[(i + offset) % 5]}, "
            f"number {i + offset}.",
            "label": label,
        }
        for label, words in _WORDS.items()
        for i in range(n_per_label)
    ]
    return pd.DataFrame(rows)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_two_csv_files_side_by_side_with_real_embedder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # evaluate without a local judge keeps libgomp's default wait policy (PASSIVE slows LightGBM 1.7x)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    a, b = tmp_path / "persona.csv", tmp_path / "attrprompt.csv"
    make_texts(10).to_csv(a, index=False)
    other = make_texts(10, offset=40)[["text", "label"]]
    other["label"] = other["label"].replace({"sadness": "gloom"})  # mapped onto the gold label below
    other.to_csv(b, index=False)
    label_map = tmp_path / "map.yaml"
    label_map.write_text("gloom: sadness\npleasure: null\n")
    gold_dir = tmp_path / "gold"
    gold_dir.mkdir()
    # the paper's gold format: text;label lines without a header
    for split, offset, n in (("train", 100, 12), ("test", 200, 6)):
        frame = make_texts(n, offset=offset)
        (gold_dir / f"{split}.txt").write_text(
            "".join(f"{t};{lab}\n" for t, lab in zip(frame["text"], frame["label"], strict=True))
        )
    out = tmp_path / "report"
    code, stdout, stderr = _run(
        [
            "evaluate",
            "--data",
            str(a),
            "--data",
            str(b),
            "--gold-train",
            str(gold_dir / "train.txt"),
            "--gold-test",
            str(gold_dir / "test.txt"),
            "--label-map",
            str(label_map),
            "--projection",
            "none",
            "--seed",
            "3",
            "--bootstrap",
            "2",
            "--prd-runs",
            "1",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "wrote" in stdout and "persona:" in stdout and "attrprompt:" in stdout
    # 30 + 30 data texts, 18 gold test texts and the whole 36-text gold train split (< 500 per class)
    assert "embedding up to 114 texts (persona 30, attrprompt 30, gold test 18, gold train" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["seed"] == 3
    assert report["gold"]["test"]["read"]["format"] == "semicolon"
    assert report["datasets"]["persona"]["read"]["text_col"] == "text"
    assert report["gold"]["label_map"] == {"gloom": "sadness", "pleasure": None}
    assert report["downstream"]["rows"]["attrprompt"]["confusion"]["labels"] == ["anger", "joy", "sadness"]
    assert report["embedding"]["model"]  # the real MiniLM model id
    assert report["embedding"]["dim"] == 384
    assert report["embedding"]["precision"] in ("float32", "bfloat16")
    assert "OMP_WAIT_POLICY" not in os.environ
    assert set(report["separability"]["datasets"]) == {"persona", "attrprompt"}
    assert {"persona", "attrprompt", "majority class"} <= set(report["downstream"]["rows"])
    page = (out / "report.html").read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", page)
    assert "Table VII" in page and "attrprompt" in page


def test_csv_without_label_column_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["a text", "another"], "emotion_name": ["joy", "anger"]}).to_csv(bad, index=False)
    code, stdout, stderr = _run(["evaluate", "--data", str(bad), "-o", str(tmp_path / "out")], capsys)
    assert code == 2
    assert stderr.startswith("error: ") and "label" in stderr and "bad.csv" in stderr
    assert "Traceback" not in stderr + stdout
    assert not (tmp_path / "out" / "report.json").exists()


def test_nothing_to_evaluate_and_bad_projection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = _run(["evaluate", "-o", str(tmp_path)], capsys)
    assert code == 2 and "nothing to evaluate" in stderr
    csv = tmp_path / "d.csv"
    make_texts(4).to_csv(csv, index=False)
    code, _, stderr = _run(
        ["evaluate", "--data", str(csv), "--projection", "pca,xyz", "-o", str(tmp_path)], capsys
    )
    assert code == 2 and "--projection" in stderr


def test_name_count_must_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "d.csv"
    make_texts(4).to_csv(csv, index=False)
    code, _, stderr = _run(
        ["evaluate", "--data", str(csv), "--name", "a", "--name", "b", "-o", str(tmp_path)], capsys
    )
    assert code == 2 and "--name was given 2 times for 1 datasets" in stderr


def test_missing_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = _run(
        ["evaluate", "no-such-run", "--db", str(tmp_path / "r.sqlite"), "-o", str(tmp_path)], capsys
    )
    assert code == 2 and "no-such-run" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_run_from_store_with_judge_over_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    db = tmp_path / "runs.sqlite"
    store = RunStore(db)
    run_id = store.create_run(
        method="personagen", config={}, target={}, spec_yaml=None, spec_hash=None, spec_name=None
    )
    for row in make_texts(8).itertuples():
        store.add_text(
            run_id,
            emotion=row.label,
            text=row.text,
            text_norm=row.text.lower(),
            persona_id=None,
            model="m",
            quota=100,
        )
    store.close()

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return {"emotion_match": 4, "grammaticality": 5, "lexical_diversity": 3, "structure_logic": 4}

    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test-secret-42")
    with FakeOpenAIServer(responder, api_key="sk-cli-test-secret-42") as srv:
        argv = [
            "evaluate",
            run_id,
            "--db",
            str(db),
            "--judge",
            "--judge-model",
            "judge-m",
            "--backend",
            "openai",
            "--base-url",
            srv.base_url,
            "--projection",
            "none",
            "-o",
            str(tmp_path / "out"),
        ]
        code, _, stderr = _run(argv, capsys)
        assert code == 0, stderr
        assert len(srv.chat_requests) == 24
        # second evaluation (--no-cache: not the stored evaluation): judge scores come from the store's cache
        code, _, stderr = _run([*argv, "--no-cache"], capsys)
        assert code == 0, stderr
        assert len(srv.chat_requests) == 24
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["judge"]["model"] == "judge-m"
    assert report["judge"]["datasets"][run_id]["mean"]["grammaticality"] == 5.0
    saved = RunStore(db).judge_scores(run_id)
    assert len(saved) == 24
    text = (tmp_path / "out" / "report.json").read_text() + (tmp_path / "out" / "report.html").read_text()
    assert "sk-cli-test-secret-42" not in text


@pytest.mark.slow
def test_small_file_gives_partial_results_and_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 texts per label: CLI users get the projection and diversity with warnings, and a stored evaluation."""
    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    data = tmp_path / "small.csv"
    make_texts(3).to_csv(data, index=False)
    code, stdout, stderr = _run(
        ["evaluate", "--data", str(data), "--projection", "tsne", "-o", str(tmp_path / "out")], capsys
    )
    assert code == 0, stderr
    assert "skipped separability" in stderr and "5 or more texts" in stderr
    assert "warning (diversity, small)" in stderr and "fewer than 25 texts" in stderr
    eval_id = re.search(r"stored as evaluation (ev-\S+)", stdout).group(1)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["projections"]["small"]["coords"]["tsne"]["x"] and report["diversity"]

    code, stdout, _ = _run(["evaluations", "list"], capsys)
    assert code == 0 and eval_id in stdout and "small · 9 texts · projections t-SNE" in stdout
    code, stdout, _ = _run(["evaluations", "export", eval_id, "-o", str(tmp_path / "again")], capsys)
    assert code == 0 and (tmp_path / "again" / "report.html").read_text().startswith("<!DOCTYPE html>")
    code, _, stderr = _run(["evaluations", "export", "ev-nope", "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "no stored evaluation 'ev-nope'" in stderr


def test_gold_file_with_wrong_columns_names_the_gold_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.csv"
    make_texts(4).to_csv(data, index=False)
    gold_file = tmp_path / "gold.csv"
    gold_file.write_text("sentence_id,utterance,emo\n1,so happy,joy\n2,so sad,sadness\n", encoding="utf-8")
    argv = ["evaluate", "--data", str(data), "--gold-test", str(gold_file), "-o", str(tmp_path / "out")]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2 and "Traceback" not in stderr + stdout
    assert "gold.csv" in stderr and "columns found: sentence_id, utterance, emo" in stderr
    assert f"{gold_file}:text=COLUMN or --gold-text-col" in stderr
    # --gold-text-col reaches the gold file only (the data file has no such column, and is not broken).
    code, _, stderr = _run([*argv[:-2], "--gold-text-col", "utterance", "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "/d.csv" not in stderr
    assert "gold.csv: no label column" in stderr and "--gold-label-col" in stderr


def test_per_file_specs_reach_only_their_file(tmp_path: Path) -> None:
    from personagen_core.cli.evaluate_cmds import _load_input
    from personagen_core.evaluation.gold import ReadOptions

    raw = tmp_path / "raw.psv"
    raw.write_text("joy|I won the prize|x\nfear|a noise | downstairs|y\n", encoding="utf-8")
    frame = _load_input(
        f"{raw}:sep=pipe,header=no,text=1,label=0", ReadOptions(text_col="text"), gold_file=True
    )
    assert frame["text"].tolist() == ["I won the prize", "a noise | downstairs"]
    assert frame["label"].tolist() == ["joy", "fear"]
    with pytest.raises(Exception, match=r"--text-col"):
        _load_input(str(raw) + ":sep=pipe,header=no", ReadOptions(text_col="nope"), gold_file=False)

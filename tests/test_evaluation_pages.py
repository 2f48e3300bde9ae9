"""Evaluate and Report pages through AppTest: stored evaluations reopened in a new session, kept settings,
small-sample warnings on screen, and the recent gold files memory (no embedding model: a stored report)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


class _HashEmbedder:
    model_id = "hash-bow-32"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for r, text in enumerate(texts):
            for tok in re.findall(r"[a-z]+", text.lower()):
                out[r, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A home with one run of 3 texts per emotion and its evaluation stored (as the dashboard stores it)."""
    import streamlit as st

    from personagen_core.evaluation.stored import EvaluationStore
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate, load_run_dataset
    from personagen_core.store import RunStore

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen", config={}, target={"joy": 3, "anger": 3, "fear": 3}, spec_yaml="name: x\n",
        spec_hash="h", spec_name="x",
    )
    for i, emotion in enumerate(["joy", "anger", "fear"] * 3):
        text = f"so much {emotion} about the {['bus', 'exam', 'call'][i // 3]} today {i}"
        store.add_text(run_id, emotion=emotion, text=text, text_norm=text, persona_id=None, model="m", quota=3)
    store.flush()
    report = evaluate(
        {run_id: load_run_dataset(store, run_id)},
        settings=EvaluationSettings(projections=("tsne",)),
        embedder=_HashEmbedder(),
        cache_dir=tmp_path / "results",
    )
    eval_id = EvaluationStore(tmp_path / "evaluations.sqlite").save(report, runs=[run_id], source="dashboard")
    yield {"path": tmp_path, "run_id": run_id, "eval_id": eval_id}
    st.cache_data.clear()
    st.cache_resource.clear()


def _open(page: str, at: Any = None) -> Any:
    from streamlit.testing.v1 import AppTest

    at = at or AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: Any) -> str:
    return "\n".join(str(e.value) for kind in ("info", "warning", "caption", "error") for e in getattr(at, kind))


def test_a_new_session_reopens_the_stored_evaluation_with_its_warnings(home: dict[str, Any]) -> None:
    at = _open("app_pages/6_evaluate.py")  # a new session, as after a reload
    picker = at.selectbox(key="keep_eval_open")
    assert picker.value == home["eval_id"] and home["run_id"] in picker.format_func(picker.value)
    assert at.session_state["last_report"]["stored"]["eval_id"] == home["eval_id"]
    assert at.get("plotly_chart"), "the projection of 9 texts is drawn"
    text = _texts(at)
    assert "a picture of so few points" in text  # projection warning
    assert "fewer than 25 texts" in text  # diversity warning (every tab is drawn by AppTest)
    assert "5 or more texts" in text  # what separability needs
    assert "joy 3" in text  # n per class in the caption
    assert not at.error, [e.value for e in at.error]

    report = _open("app_pages/8_report.py", at)
    labels = {b.proto.label for b in report.get("download_button")}
    assert "Download the HTML report" in labels
    assert home["eval_id"] in _texts(report) and "warning(s) about small samples" in _texts(report)


def test_the_time_estimate_leaves_out_texts_already_embedded(home: dict[str, Any]) -> None:
    """Before the Evaluate button: the run's texts not in the embedding cache are what the estimate counts;
    once they are cached (here written as another process would), a new look says so."""
    from personagen_core.evaluation.embeddings import Embedder, _text_key
    from personagen_core.store import RunStore

    at = _open("app_pages/6_evaluate.py")
    assert "embedding up to 9 texts" in _texts(at) and "9 not in the embedding cache" in _texts(at)
    with RunStore(home["path"] / "runs.sqlite") as store:
        texts = store.accepted_texts(home["run_id"])
    cache = Embedder(None)  # the dashboard's embedder: same cache folder (PERSONAGEN_HOME) and model id
    vec = np.ones(4, dtype=np.float32).tobytes()
    cache._get_store().put(cache.model_id, [(_text_key(t), vec) for t in texts[:6]])
    at.run()
    assert "3 not in the embedding cache" in _texts(at)
    cache._get_store().put(cache.model_id, [(_text_key(t), vec) for t in texts[6:]])
    at.run()
    assert "all of them are in the embedding cache" in _texts(at)
    cache.close()


def test_evaluate_settings_are_kept_across_pages(home: dict[str, Any]) -> None:
    at = _open("app_pages/6_evaluate.py")
    at.multiselect(key="keep_eval_methods").set_value(["tsne", "umap"]).run()
    at.number_input(key="keep_eval_cap").set_value(20).run()
    assert at.number_input(key="keep_eval_points").value == 10_000  # the default sample size
    at.number_input(key="keep_eval_points").set_value(5000).run()
    at.toggle(key="keep_eval_judge").set_value(True).run()
    _open("app_pages/5_explore.py", at)
    _open("app_pages/6_evaluate.py", at)
    assert at.multiselect(key="keep_eval_methods").value == ["tsne", "umap"]
    assert at.number_input(key="keep_eval_cap").value == 20
    assert at.number_input(key="keep_eval_points").value == 5000
    assert at.toggle(key="keep_eval_judge").value is True


def test_recent_gold_files_are_offered_again(home: dict[str, Any], tmp_path: Path) -> None:
    gold = tmp_path / "gold_test.csv"
    pd.DataFrame({"text": ["a happy day", "so angry now"] * 3, "label": ["joy", "anger"] * 3}).to_csv(
        gold, index=False
    )
    at = _open("app_pages/7_real_data.py")
    at.text_input(key="keep_gold_test_path").set_value(str(gold)).run()
    assert not at.exception and "6 texts" in _texts(at), _texts(at)

    fresh = _open("app_pages/7_real_data.py")  # a new session: the path field is empty ...
    assert fresh.text_input(key="keep_gold_test_path").value in ("", str(gold.resolve()))
    recent = fresh.selectbox(key="gold_test_recent")  # ... and the file is offered
    assert str(gold.resolve()) in recent.options
    recent.set_value(str(gold.resolve())).run()
    assert fresh.text_input(key="keep_gold_test_path").value == str(gold.resolve())
    assert "6 texts" in _texts(fresh)


def test_stored_evaluations_open_without_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data files evaluated with the CLI leave no run behind: Evaluate and Report still open them."""
    import streamlit as st

    from personagen_core.evaluation.stored import EvaluationStore
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path))
    st.cache_data.clear()
    st.cache_resource.clear()
    frame = pd.DataFrame({"text": [f"joy text {i}" for i in range(6)] + [f"sad text {i}" for i in range(6)],
                          "label": ["joy"] * 6 + ["sadness"] * 6})
    # A projection of a sample (10 of the 12 texts): the page says so under the figure.
    settings = EvaluationSettings(projections=("pca",), max_projection_points=10)
    report = evaluate({"file": frame}, settings=settings, embedder=_HashEmbedder(), cache_dir=tmp_path / "results")
    eval_id = EvaluationStore(tmp_path / "evaluations.sqlite").save(report, source="cli")
    try:
        at = _open("app_pages/6_evaluate.py")
        assert "No runs in the run store yet" in _texts(at)
        assert at.selectbox(key="keep_eval_open").value == eval_id and not at.error
        assert "file: seeded stratified sample (by label) of 10 of 12 texts" in _texts(at)
        report_page = _open("app_pages/8_report.py", at)
        assert "Download the HTML report" in {b.proto.label for b in report_page.get("download_button")}
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()


def _store_evaluation(tmp_path: Path, counts: dict[str, int], *, drop_intervals: bool = False) -> str:
    """A run with ``counts`` texts per emotion and its evaluation stored; returns the evaluation id."""
    from personagen_core.evaluation.stored import EvaluationStore
    from personagen_core.evaluation.suite import EvaluationSettings, evaluate, load_run_dataset
    from personagen_core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen", config={}, target=counts, spec_yaml="name: x\n", spec_hash="h", spec_name="x"
    )
    words = ["bus", "exam", "call", "rain", "party", "train", "work", "cat"]
    for emotion, n in counts.items():
        for i in range(n):
            text = f"so much {emotion} about the {words[i % 8]} and {words[(i * 3) % 8]} today {i}"
            store.add_text(run_id, emotion=emotion, text=text, text_norm=text, persona_id=None, model="m", quota=n)
    store.flush()
    report = evaluate(
        {run_id: load_run_dataset(store, run_id)},
        settings=EvaluationSettings(projections=(), diversity_resamples=3, bootstrap=2),
        embedder=_HashEmbedder(),
        cache_dir=tmp_path / "results",
    )
    if drop_intervals:  # as stored before the intervals existed
        report["diversity"].pop("equal_size")
        for d in report["diversity"]["datasets"].values():
            d.pop("equal_size")
    return EvaluationStore(tmp_path / "evaluations.sqlite").save(report, runs=[run_id], source="dashboard")


def test_evaluate_page_shows_diversity_intervals_and_what_small_emotions_need(dashboard_home: Path) -> None:
    _store_evaluation(dashboard_home, {"joy": 12, "anger": 12, "unknown": 3})
    at = _open("app_pages/6_evaluate.py")
    assert at.number_input(key="keep_eval_div_resamples").value == 20  # B, configurable on the page
    text = _texts(at)
    assert "3 seeded subsamples (seed 0)" in text and "joy 6" in text
    assert "no interval for unknown: an interval needs at least 10 texts of this emotion; it has 3" in text
    frames = [d.value for d in at.dataframe]
    with_ci = [
        f
        for f in frames
        if "Mean Cosine Distance" in f.columns and f["Mean Cosine Distance"].astype(str).str.contains(r"\[").any()
    ]
    assert len(with_ci) == 2  # overall (one row per run) and per emotion
    overall, per = with_ci
    cell = overall.loc[overall.index[0], "Mean Cosine Distance"]
    value, low, high = map(float, re.match(r"([\d.e-]+) \[([\d.e-]+), ([\d.e-]+)\]", cell).groups())
    assert low <= value <= high
    assert list(per.index) == ["anger", "joy", "unknown", "overall"]
    assert per.loc["joy", "n"] == "6" and "needs at least 10" in per.loc["unknown", "Mean Cosine Distance"]
    assert not at.error, [e.value for e in at.error]


def test_an_evaluation_stored_before_intervals_still_opens(dashboard_home: Path) -> None:
    _store_evaluation(dashboard_home, {"joy": 12, "anger": 12}, drop_intervals=True)
    at = _open("app_pages/6_evaluate.py")
    assert "No intervals in this evaluation" in _texts(at)
    frames = [d.value for d in at.dataframe]
    assert any("Mean Cosine Distance" in f.columns and len(f) == 1 for f in frames)  # the full-data table
    assert not any(
        "Mean Cosine Distance" in f.columns and f["Mean Cosine Distance"].astype(str).str.contains(r"\[").any()
        for f in frames
    )
    assert not at.error, [e.value for e in at.error]

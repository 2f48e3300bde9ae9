"""Large evaluations (issue 14, part 4): stratified seeded samples for projections and classifiers, WebGL
scatter plots that say they show a sample, batched embedding with progress events, the HTML size cap, and
the reuse of a stored evaluation. Small inputs with small caps stand in for 100k texts, so this is fast."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_cli_evaluate import _run

from personagen_core.errors import DataError
from personagen_core.evaluation import embeddings, figures
from personagen_core.evaluation.report import REPORT_SIZE_CAP, render_html, to_jsonable
from personagen_core.evaluation.subsample import allocate, stratified_indices
from personagen_core.evaluation.suite import EvaluationSettings, evaluate

LABELS = ["joy", "anger", "sadness"]


class RandomEmbedder:
    """Random unit vectors seeded by each text's hash (no model): sizes without the cost of real embeddings.
    Reports progress like :class:`embeddings.Embedder` (two steps)."""

    model_id = "random-8"

    def encode(self, texts: list[str], on_progress: Any = None) -> np.ndarray:
        rows = [
            np.random.default_rng(
                int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            ).standard_normal(8)
            for t in texts
        ]
        if on_progress is not None:
            on_progress(len(texts) // 2, len(texts))
            on_progress(len(texts), len(texts))
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def unbalanced(n: int, seed: int = 0) -> pd.DataFrame:
    labels = np.random.default_rng(seed).choice(LABELS, n, p=[0.6, 0.3, 0.1])
    return pd.DataFrame(
        {"text": [f"text number {i} about {lab}" for i, lab in enumerate(labels)], "label": labels}
    )


# ------------------------------------------------------------------------------------------- sampling


def test_allocation_is_proportional_and_keeps_rare_strata() -> None:
    assert allocate([600, 300, 100], 100).tolist() == [60, 30, 10]
    assert allocate([50, 30, 15, 4, 1], 10).tolist() == [4, 3, 1, 1, 1]  # the stratum of 1 stays visible
    assert allocate([5, 5], 20).tolist() == [5, 5]  # never more than a stratum has
    assert allocate([1, 1, 1], 2).sum() == 2
    for counts, n in (([7, 3, 90], 13), ([1000, 1], 10), ([3, 3, 3, 3], 5)):
        out = allocate(counts, n)
        assert out.sum() == n and (out <= np.asarray(counts)).all()


def test_stratified_sample_keeps_label_shares_and_is_seeded() -> None:
    y = np.array(["joy"] * 6000 + ["anger"] * 3000 + ["fear"] * 900 + ["love"] * 100)
    idx = stratified_indices([y], 1000, random_state=3)
    assert len(idx) == 1000 and len(set(idx.tolist())) == 1000 and (np.diff(idx) > 0).all()
    counts = dict(zip(*np.unique(y[idx], return_counts=True), strict=True))
    assert counts == {"joy": 600, "anger": 300, "fear": 90, "love": 10}
    assert np.array_equal(idx, stratified_indices([y], 1000, random_state=3))  # same seed, same sample
    assert not np.array_equal(idx, stratified_indices([y], 1000, random_state=4))
    assert np.array_equal(stratified_indices([y], 20_000), np.arange(len(y)))  # small enough: everything


def test_stratified_sample_by_two_columns() -> None:
    labels = np.array(["joy", "anger"] * 500)
    source = np.array(["synthetic"] * 800 + ["real"] * 200)
    idx = stratified_indices([labels, source], 100, random_state=0)
    pairs = pd.Series(list(zip(labels[idx], source[idx], strict=True))).value_counts().to_dict()
    assert pairs == {
        ("joy", "synthetic"): 40,
        ("anger", "synthetic"): 40,
        ("joy", "real"): 10,
        ("anger", "real"): 10,
    }
    with pytest.raises(DataError, match="differ in length"):
        stratified_indices([labels, source[:10]], 5)
    with pytest.raises(DataError, match="at least 1"):
        stratified_indices([labels], 0)


# ------------------------------------------------------------------------------ evaluation on samples


@pytest.fixture(scope="module")
def sampled_report(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    events: list[tuple[str, float]] = []
    settings = EvaluationSettings(
        projections=("pca",),
        max_projection_points=120,
        max_train_texts=300,
        bootstrap=3,
        prd_runs=1,
        prd_clusters=5,
        gold_per_class=20,
        self_bleu_sample=20,
    )
    gold = pd.DataFrame({"text": [f"gold text {i}" for i in range(150)], "label": LABELS * 50})
    report = evaluate(
        {"big": unbalanced(600), "small": unbalanced(90, seed=1)},
        gold_test=gold,
        settings=settings,
        embedder=RandomEmbedder(),
        cache_dir=tmp_path_factory.mktemp("results"),
        on_event=lambda stage, frac: events.append((stage, frac)),
    )
    return report, events


def test_projection_of_a_large_dataset_is_a_stated_stratified_sample(sampled_report: Any) -> None:
    report, _ = sampled_report
    big = report["projections"]["big"]
    assert big["sample"]["n"] == 120 and big["sample"]["of"] == 600
    assert big["sample"]["stratified_by"] == ["label"] and big["sample"]["seed"] == 0
    assert len(big["coords"]["pca"]["x"]) == len(big["label"]) == len(big["text"]) == 120
    full = pd.Series(unbalanced(600)["label"]).value_counts(normalize=True)
    shown = pd.Series(big["label"]).value_counts(normalize=True)
    assert (abs(full - shown) < 0.01).all()  # the sample keeps the label shares
    assert big["sample"]["labels"] == pd.Series(big["label"]).value_counts().sort_index().to_dict()
    assert set(big["text"]) <= set(unbalanced(600)["text"])
    # the small dataset is below the cap: every text, no sample note
    assert "sample" not in report["projections"]["small"]
    assert len(report["projections"]["small"]["text"]) == 90


def test_classifiers_train_on_a_stated_sample(sampled_report: Any) -> None:
    report, _ = sampled_report
    sep = report["separability"]["datasets"]["big"]
    assert sep["sample"] == {"n": 300, "of": 600, "stratified_by": ["label"]}
    assert sep["n_train"] + sep["n_test"] == 300
    assert "sample" not in report["separability"]["datasets"]["small"]
    row = report["downstream"]["rows"]["big"]
    assert row["train_sample"]["n"] == 300 and row["n_train"] == 300
    assert "seeded stratified sample" in report["downstream"]["method"]


def test_figures_are_webgl_and_say_they_show_a_sample(
    sampled_report: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, _ = sampled_report
    fig = figures.projection_figure_from_report(report, method="pca")
    assert fig.data and {type(t).__name__ for t in fig.data} == {"Scattergl"}
    assert "seeded stratified sample (by label) of 120 of 600 texts" in fig.layout.title.text
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("big (seeded stratified sample") and titles[1] == "small"
    assert sum(len(t.x) for t in fig.data) == 120 + 90
    drawn: list[Any] = []
    original = figures.projection_figure_from_report

    def recording(*args: Any, **kwargs: Any) -> Any:
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(figures, "projection_figure_from_report", recording)
    page = render_html(to_jsonable(report))
    # the HTML report draws its projections with the same WebGL traces
    assert drawn and all({type(t).__name__ for t in f.data} == {"Scattergl"} for f in drawn)
    assert page.count('"type":"scattergl"') >= len(fig.data)
    assert "the projections show a seeded stratified sample (by label) of 120 of 600 texts" in page
    assert "trained on a seeded stratified sample (by label) of 300 of 600 texts" in page
    assert page.count("function(") >= 1 and page.count("plotly.js v") == 1  # plotly.js inlined once


def test_progress_events_move_within_the_embedding_stage(sampled_report: Any) -> None:
    _, events = sampled_report
    embedding = [f for s, f in events if s == "embeddings"]
    assert len(embedding) >= 4 and len(set(embedding)) >= 3  # not only the stage's start
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and events[-1] == ("done", 1.0)


def test_max_projection_points_none_projects_everything(tmp_path: Path) -> None:
    settings = EvaluationSettings(projections=("pca",), max_projection_points=None, bootstrap=0, prd_runs=1)
    report = evaluate({"a": unbalanced(60)}, settings=settings, embedder=RandomEmbedder(), cache_dir=tmp_path)
    assert "sample" not in report["projections"]["a"] and len(report["projections"]["a"]["label"]) == 60
    with pytest.raises(ValueError, match="max_projection_points"):
        EvaluationSettings(max_projection_points=5)


# ------------------------------------------------------------------------------ embedding in batches


class _FakeModel:
    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.calls.append(list(texts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # as a user stopping a long embedding
        out = np.array([[len(t), t.count("e") + 1, 1.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_embedding_runs_in_chunks_with_progress_and_keeps_finished_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "ENCODE_CHUNK", 3)
    texts = [f"text {i}" for i in range(10)]
    emb = embeddings.Embedder(cache_dir=tmp_path)
    failing = _FakeModel(fail_on_call=3)
    monkeypatch.setattr(emb, "_load_model", lambda: failing)
    with pytest.raises(KeyboardInterrupt):
        emb.encode(texts)
    assert [len(c) for c in failing.calls] == [3, 3, 3]  # the third chunk was interrupted
    emb.close()

    progress: list[tuple[int, int]] = []
    again = embeddings.Embedder(cache_dir=tmp_path)
    model = _FakeModel()
    monkeypatch.setattr(again, "_load_model", lambda: model)
    out = again.encode([*texts, "text 0"], on_progress=lambda done, total: progress.append((done, total)))
    assert model.calls == [texts[6:9], texts[9:]]  # the first two chunks came from the cache
    assert progress == [(6, 10), (9, 10), (10, 10)]
    assert out.shape == (11, 3) and np.array_equal(out[0], out[10])
    assert again.stats.to_dict() == {"hits": 7, "misses": 4}
    again.close()


def test_cache_lookups_are_batched_not_one_query_per_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"a text {i}" for i in range(2500)]
    emb = embeddings.Embedder(cache_dir=tmp_path)
    monkeypatch.setattr(emb, "_load_model", lambda: _FakeModel())
    emb.encode(texts)
    store = emb._get_store()
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    emb.encode(texts)  # all cached
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert 1 <= len(selects) <= 3  # 2,500 keys in chunks of at most 900
    emb.close()
    with sqlite3.connect(tmp_path / "embeddings.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 2500


# ------------------------------------------------------------------------------------ HTML size cap


def _inflated(report: dict[str, Any], datasets: int, points: int, text_len: int) -> dict[str, Any]:
    """The report with ``datasets`` projections of ``points`` points each, long texts and personas."""
    rng = np.random.default_rng(0)
    out = json.loads(json.dumps(to_jsonable(report)))
    out["projections"], out["datasets"] = {}, {}
    for d in range(datasets):
        labels = rng.choice(LABELS, points).tolist()
        coords = {
            m: {
                "x": rng.normal(size=points).round(4).tolist(),
                "y": rng.normal(size=points).round(4).tolist(),
            }
            for m in ("tsne", "umap", "pca")
        }
        out["projections"][f"run{d}"] = {
            "coords": coords,
            "label": labels,
            "text": [f"{i} " + "word " * (text_len // 5) for i in range(points)],
            "persona": [f"persona {i} " + "trait " * 20 for i in range(points)],
            "attributes": {"age": rng.choice(["20s", "40s"], points).tolist()},
            "sample": {"n": points, "of": points * 10, "stratified_by": ["label"], "seed": 0},
        }
        out["datasets"][f"run{d}"] = {"n": points * 10, "labels": {lab: points for lab in LABELS}}
    return out


def test_report_is_slimmed_under_its_cap_and_says_so(sampled_report: Any) -> None:
    report, _ = sampled_report
    big = _inflated(report, datasets=2, points=800, text_len=280)
    full = render_html(big, max_bytes=None)
    cap = len(full.encode()) * 2 // 3  # the full page is too big for this cap
    page = render_html(big, max_bytes=cap)
    assert len(page.encode()) <= cap
    note = re.search(r"To keep this page under [^<]*", page)
    assert note and "hover texts shortened" in note.group(0) and "report.json has the full" in note.group(0)
    assert "the projections show a seeded stratified sample (by label)" in page
    # a report that fits is not touched
    fits = render_html(big, max_bytes=len(full.encode()) + 100)  # (plotly's div ids are random)
    assert "To keep this page" not in fits and abs(len(fits) - len(full)) < 100
    assert REPORT_SIZE_CAP == 15_000_000


def test_slimming_ends_with_fewer_points_when_texts_are_not_enough(sampled_report: Any) -> None:
    report, _ = sampled_report
    big = _inflated(report, datasets=1, points=2000, text_len=40)
    full = len(render_html(big, max_bytes=None).encode())
    plotly_js = len(render_html(_inflated(report, 1, 4, 4), max_bytes=None).encode())
    cap = plotly_js + (full - plotly_js) // 8
    page = render_html(big, max_bytes=cap)
    assert len(page.encode()) <= cap
    drawn = re.search(r"at most ([\d,]+) points drawn per dataset \(seeded stratified sample\)", page)
    assert drawn and int(drawn.group(1).replace(",", "")) < 2000  # fewer points than the report holds
    assert f"seeded stratified sample (by label) of {drawn.group(1)} of 20,000 texts" in page


# ----------------------------------------------------------------------------------------------- CLI


class _CliEmbedder(RandomEmbedder):
    """What ``personagen evaluate`` needs of an embedder, without a model."""

    dtype = "float32"

    def __init__(self, *_: Any, **__: Any) -> None:
        self.stats = embeddings.EmbedStats()


def test_cli_samples_projections_shows_progress_and_reuses_the_same_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(embeddings, "Embedder", _CliEmbedder)
    data = tmp_path / "d.csv"
    unbalanced(200).to_csv(data, index=False)
    argv = ["evaluate", "--data", str(data), "--projection", "pca", "--max-projection-points", "50"]
    argv += ["--max-train-texts", "100", "--bootstrap", "0", "--prd-runs", "1"]
    code, out, err = _run([*argv, "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    eval_id = re.search(r"stored as evaluation (ev-\S+)", out).group(1)
    assert re.search(r"\[\s*\d+%\] embeddings", err) and "[100%] done" in err  # progress lines off a tty
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["projections"]["d"]["sample"] == {
        **report["projections"]["d"]["sample"],
        "n": 50,
        "of": 200,
    }
    assert report["settings"]["max_projection_points"] == 50
    assert report["separability"]["datasets"]["d"]["sample"] == {
        "n": 100,
        "of": 200,
        "stratified_by": ["label"],
    }

    code, out, err = _run([*argv, "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert f"reused stored evaluation {eval_id}" in out and "embedding up to" not in err
    page_a, page_b = ((tmp_path / d / "report.html").read_text() for d in "ab")
    assert page_a == page_b and f"Stored evaluation <code>{eval_id}</code>" in page_b  # the kept page

    # other content, or --no-cache: evaluated again
    frame = unbalanced(200)
    frame.loc[0, "text"] = "a changed text"
    frame.to_csv(data, index=False)
    code, out, _ = _run([*argv, "-o", str(tmp_path / "c")], capsys)
    assert code == 0 and "reused" not in out and "stored as evaluation" in out
    code, out, _ = _run([*argv, "--no-cache", "-o", str(tmp_path / "d")], capsys)
    assert code == 0 and "reused" not in out


def test_cli_progress_bar_on_a_terminal() -> None:
    import io

    from personagen_core.cli.evaluate_cmds import _ProgressBar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = _ProgressBar(stream)
    for stage, frac in (("embeddings", 0.0), ("embeddings", 0.1), ("embeddings", 0.2), ("done", 1.0)):
        bar(stage, frac)
    text = stream.getvalue()
    assert text.count("\r[") == 4 and "[###...." in text and text.endswith("100% done                \n")

"""evaluate() end to end on small synthetic fixtures written here (a few dozen short texts, 3 labels)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from personagen_core.errors import DataError, PersonaGenError
from personagen_core.evaluation.report import to_jsonable, write_report
from personagen_core.evaluation.suite import EvaluationSettings, evaluate, load_data_file, load_run_dataset

_WORDS = {
    "joy": ["happy", "delighted", "thrilled", "glad", "cheerful", "overjoyed"],
    "anger": ["furious", "angry", "annoyed", "livid", "irritated", "outraged"],
    "sadness": ["sad", "heartbroken", "gloomy", "miserable", "down", "lonely"],
}
_EVENTS = [
    "the exam results",
    "my sister's call",
    "the train delay",
    "the new job",
    "the rainy weekend",
    "the team meeting",
    "my old friend",
    "the late bus",
    "the broken phone",
    "the birthday party",
]


def make_texts(n_per_label: int, offset: int = 0) -> pd.DataFrame:
    """Deterministic short texts: each label has its own emotion words, events are shared."""
    rows = []
    for label, words in _WORDS.items():
        for i in range(n_per_label):
            j = i + offset
            word = words[j % len(words)]
            event = _EVENTS[(j * 3) % len(_EVENTS)]
            rows.append(
                {
                    "text": f"I feel so {word} about {event} today, number {j}.",
                    "label": label,
                    "gender": ["female", "male"][j % 2],
                    "age": ["20s", "40s", "60s"][j % 3],
                }
            )
    return pd.DataFrame(rows)


class HashEmbedder:
    """A tiny deterministic embedder (hashed bag of words): fast and good enough to separate the labels."""

    model_id = "hash-bow-64"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for r, text in enumerate(texts):
            for tok in re.findall(r"[a-z']+", text.lower()):
                out[r, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# No projection by default (t-SNE costs seconds even on a few dozen points); the module fixture has one.
FAST = EvaluationSettings(
    projections=(), bootstrap=2, prd_runs=1, prd_clusters=5, gold_per_class=8, self_bleu_sample=20
)


def _numbers(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every numeric leaf (and None) with its path."""
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _numbers(v, f"{path}[{i}]")]
    if obj is None or isinstance(obj, (int, float)):
        return [(path, obj)]
    return []


@pytest.fixture(scope="module")
def small_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("results")
    datasets = {"personagen": make_texts(12), "baseline": make_texts(10, offset=50)}
    return evaluate(
        datasets,
        gold_train=make_texts(14, offset=100),
        gold_test=make_texts(8, offset=200),
        settings=FAST,
        embedder=HashEmbedder(),
        cache_dir=cache,
    )


@pytest.mark.slow
def test_report_has_every_section_for_both_datasets(small_report: dict[str, Any]) -> None:
    for section in (
        "settings",
        "datasets",
        "projections",
        "diversity",
        "separability",
        "real_data",
        "downstream",
    ):
        assert small_report[section], section
    assert small_report["judge"] is None and "judge" in small_report["skipped"]
    names = {"personagen", "baseline"}
    assert set(small_report["datasets"]) == names
    assert small_report["datasets"]["personagen"]["labels"] == {"anger": 12, "joy": 12, "sadness": 12}
    assert set(small_report["projections"]) == names
    assert set(small_report["diversity"]["datasets"]) == names
    assert set(small_report["separability"]["datasets"]) == names
    assert set(small_report["real_data"]["datasets"]) == names
    rows = small_report["downstream"]["rows"]
    assert names <= set(rows) and "majority class" in rows and any(r.startswith("gold") for r in rows)
    assert small_report["settings"]["seed"] == 0 and small_report["embedding"]["model"] == "hash-bow-64"


@pytest.mark.slow
def test_numbers_are_finite_and_json_strict(small_report: dict[str, Any]) -> None:
    data = to_jsonable(small_report)
    json.dumps(data, allow_nan=False)
    leaves = _numbers({k: data[k] for k in ("diversity", "separability", "downstream")})
    assert leaves
    bad = [(p, v) for p, v in leaves if v is None or not math.isfinite(v)]
    assert not bad, bad[:5]
    for name, metrics in data["real_data"]["datasets"].items():
        for metric in (
            "fid",
            "prd_f8",
            "prd_f1_8",
            "kl",
            "hist_cosine",
            "precision",
            "recall",
            "density",
            "coverage",
        ):
            assert metrics[metric]["value"] is not None and math.isfinite(metrics[metric]["value"]), (
                name,
                metric,
            )


@pytest.mark.slow
def test_known_properties_of_the_numbers(small_report: dict[str, Any]) -> None:
    div = small_report["diversity"]["datasets"]["personagen"]
    assert set(div["per_emotion"]) == {"anger", "joy", "sadness"}
    for e in div["per_emotion"].values():
        assert 0 < e["mean_cosine_distance"] <= 2
        assert 0 <= e["cluster_entropy"] <= math.log(5) + 1e-9
    sep = small_report["separability"]["datasets"]["personagen"]
    counts = np.asarray(sep["confusion"]["counts"])
    assert counts.sum() == sep["n_test"]
    assert np.allclose(np.asarray(sep["confusion"]["normalised"]).sum(axis=1), 1.0)
    majority = small_report["downstream"]["rows"]["majority class"]
    assert majority["accuracy"] == pytest.approx(1 / 3)  # balanced gold test, 3 labels
    proj = small_report["projections"]["personagen"]
    assert proj["coords"] == {} and len(proj["text"]) == 36  # hover fields even without a projection
    assert set(proj["attributes"]) == {"gender", "age"}
    assert proj["persona"][0].startswith("gender: ")


@pytest.mark.slow
def test_projection_coordinates_are_stored(tmp_path: Path) -> None:
    settings = FAST.model_copy(update={"projections": ("tsne",)})
    data = {"a": make_texts(6)}
    report = evaluate(data, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path / "c1")
    coords = report["projections"]["a"]["coords"]["tsne"]
    assert len(coords["x"]) == len(coords["y"]) == 18
    assert all(math.isfinite(v) for v in coords["x"] + coords["y"])
    from personagen_core.evaluation.figures import projection_figure_from_report

    fig = projection_figure_from_report(report, method="tsne", color_by="age")
    assert {t.name for t in fig.data} == {"20s", "40s", "60s"}


@pytest.mark.slow
def test_report_files_and_html(small_report: dict[str, Any], tmp_path: Path) -> None:
    json_path, html_path = write_report(small_report, tmp_path)
    assert json.loads(json_path.read_text())["datasets"].keys() == {"personagen", "baseline"}
    page = html_path.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", page)
    for table in re.findall(r"<table.*?</table>", page, flags=re.S):
        if "<th>train</th>" in table or "<th>seconds</th>" in table:
            continue
        assert "personagen" in table and "baseline" in table


def test_warm_reevaluation_reuses_cached_results(tmp_path: Path) -> None:
    datasets = {"a": make_texts(8)}
    settings = FAST
    first = evaluate(datasets, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files  # something was cached
    second = evaluate(datasets, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files  # nothing recomputed
    for key in ("diversity", "separability"):
        assert second[key] == first[key]
    # A different seed is a different computation.
    evaluate(
        datasets,
        settings=settings.model_copy(update={"seed": 1}),
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) > len(files)


def test_progress_events_and_persona_hover(tmp_path: Path) -> None:
    events: list[tuple[str, float]] = []
    frame = make_texts(6)
    frame["persona"] = [f"a person {i}" for i in range(len(frame))]
    frame["scenario"] = [""] + [f"at home {i}" for i in range(1, len(frame))]
    report = evaluate(
        {"a": frame},
        settings=FAST,
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
        on_event=lambda stage, frac: events.append((stage, frac)),
    )
    stages = [s for s, _ in events]
    assert stages[0] == "embeddings" and stages[-1] == "done"
    assert "separability" in stages and "diversity" in stages
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    persona = report["projections"]["a"]["persona"]
    assert persona[0] == "a person 0" and persona[1] == "a person 1 | at home 1"
    assert set(report["projections"]["a"]["attributes"]) == {"gender", "age"}  # not persona / scenario


def test_label_map_leaves_out_unmapped_labels(tmp_path: Path) -> None:
    syn = make_texts(8)
    syn.loc[syn["label"] == "sadness", "label"] = "pleasure"  # a label the gold set does not have
    report = evaluate(
        {"syn": syn},
        gold_test=make_texts(6, offset=300),
        label_map={"pleasure": None},
        settings=FAST,
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert report["gold"]["dropped_labels"] == ["pleasure", "sadness"]
    assert report["real_data"]["sample_size"]["syn"]["labels"] == ["anger", "joy"]
    assert report["downstream"]["rows"]["syn"]["confusion"]["labels"] == ["anger", "joy"]
    assert "gold" not in " ".join(report["downstream"]["rows"])  # no gold_train: no gold row
    assert report["gold"]["label_map"] == {"pleasure": None}


def test_bad_inputs_are_data_errors() -> None:
    with pytest.raises(DataError, match="'label'"):
        evaluate({"x": pd.DataFrame({"text": ["a", "b"]})}, settings=FAST, embedder=HashEmbedder())
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate({}, embedder=HashEmbedder())
    with pytest.raises(PersonaGenError, match="judge"):
        evaluate(
            {"x": make_texts(3)}, settings=FAST.model_copy(update={"judge": True}), embedder=HashEmbedder()
        )


def test_max_texts_caps_each_dataset_stratified(tmp_path: Path) -> None:
    report = evaluate(
        {"a": make_texts(20)},
        settings=FAST.model_copy(update={"max_texts": 30}),
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert report["datasets"]["a"]["labels"] == {"anger": 10, "joy": 10, "sadness": 10}


def test_judge_section_with_fake_server(tmp_path: Path) -> None:
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        score = 5 if "happy" in json.dumps(body["messages"]) else 3
        return {"emotion_match": score, "grammaticality": 4, "lexical_diversity": 3, "structure_logic": 4}

    cache: dict[tuple[str, str], dict[str, int]] = {}
    with FakeOpenAIServer(responder) as srv:
        llm = LLMSettings(backend="openai", base_url=srv.base_url, api_key="sk-test-000000", model="gen")
        settings = FAST.model_copy(update={"judge": True, "judge_model": "judge-x"})
        report = evaluate(
            {"a": make_texts(6), "b": make_texts(6, offset=9)},
            settings=settings,
            embedder=HashEmbedder(),
            llm_settings=llm,
            judge_cache=cache,
            cache_dir=tmp_path,
        )
        assert {r.body["model"] for r in srv.chat_requests} == {"judge-x"}
    judge = report["judge"]
    assert judge["model"] == "judge-x" and set(judge["datasets"]) == {"a", "b"}
    a = judge["datasets"]["a"]
    assert a["n_scored"] == 18 and a["distribution"]["grammaticality"]["4"] == 18
    # only some joy texts say "happy"; anger texts never do
    assert a["per_emotion"]["anger"]["emotion_match"] == 3.0
    assert len(cache) == 36


def test_load_data_file_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    make_texts(3).to_csv(path, index=False)
    frame = load_data_file(path)
    assert list(frame.columns[:2]) == ["text", "label"] and len(frame) == 9
    assert frame.attrs["source"] == str(path)


def test_load_run_dataset_from_store(tmp_path: Path) -> None:
    from personagen_core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen",
        config={},
        target={"joy": 1, "anger": 1},
        spec_yaml=None,
        spec_hash=None,
        spec_name=None,
    )
    for emotion, text in (("joy", "What a lovely morning!"), ("anger", "They cancelled again.")):
        store.add_text(
            run_id, emotion=emotion, text=text, text_norm=text.lower(), persona_id=None, model="m", quota=5
        )
    frame = load_run_dataset(store, run_id)
    assert sorted(frame["label"]) == ["anger", "joy"]
    assert {"text", "label", "run_id", "text_id"} <= set(frame.columns)
    with pytest.raises(DataError, match="no accepted texts"):
        empty = store.create_run(
            method="personagen", config={}, target={}, spec_yaml=None, spec_hash=None, spec_name=None
        )
        load_run_dataset(store, empty)


# ------------------------------------------------------------------------ small and odd data: partial results


def _sections(report: dict[str, Any], section: str) -> list[str]:
    return [w["message"] for w in report["warnings"] if w["section"] == section]


def test_one_text_per_emotion_gives_diversity_and_says_what_separability_needs(tmp_path: Path) -> None:
    settings = FAST.model_copy(update={"projections": ("tsne",)})
    report = evaluate({"tiny": make_texts(2)}, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path)
    # 6 texts: the projection and the diversity table are there, flagged as unreliable
    assert len(report["projections"]["tiny"]["coords"]["tsne"]["x"]) == 6
    assert set(report["diversity"]["datasets"]["tiny"]["per_emotion"]) == {"anger", "joy", "sadness"}
    assert report["diversity"]["datasets"]["tiny"]["unreliable"] == ["anger", "joy", "sadness"]
    assert any("fewer than 25 texts" in m for m in _sections(report, "diversity"))
    assert any("so few points" in m for m in _sections(report, "projections"))
    # separability is left out with what it needs and what the data has
    assert report["separability"] is None
    reason = report["skipped"]["separability"]
    assert "at least 2 labels with 5 or more texts" in reason and "anger 2, joy 2, sadness 2" in reason
    # one text per emotion: fewer than t-SNE's 4 points, still no error
    one = evaluate({"one": make_texts(1)}, settings=settings, embedder=HashEmbedder(), cache_dir=tmp_path)
    assert one["projections"]["one"]["coords"] == {}
    assert "needs at least 4 texts; this dataset has 3" in one["projections"]["one"]["skipped"]["tsne"]
    assert one["diversity"]["datasets"]["one"]["per_emotion"]["joy"]["n"] == 1


def test_three_per_emotion_of_seven_is_partial_not_a_scikit_learn_error(tmp_path: Path) -> None:
    # the case: 7 emotions x 3 texts made scikit-learn fail ("test_size = 5 ... classes = 7")
    rows = [
        {"text": f"text {i} about {e} number {j}", "label": e}
        for i, e in enumerate(["anger", "fear", "joy", "love", "neutral", "sadness", "surprise"])
        for j in range(3)
    ]
    report = evaluate(
        {"run": pd.DataFrame(rows)},
        settings=FAST.model_copy(update={"projections": ("tsne",)}),
        embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert report["projections"]["run"]["coords"]["tsne"]
    assert report["diversity"]["datasets"]["run"]["per_emotion"]["fear"]["n"] == 3
    assert "5 or more texts" in report["skipped"]["separability"]
    assert "anger 3" in report["skipped"]["separability"]


def test_unbalanced_data_leaves_out_only_the_small_labels(tmp_path: Path) -> None:
    frame = pd.concat([make_texts(10), make_texts(1, offset=70).assign(label="fear")], ignore_index=True)
    report = evaluate({"u": frame}, settings=FAST, embedder=HashEmbedder(), cache_dir=tmp_path)
    sep = report["separability"]["datasets"]["u"]
    assert sep["left_out"] == {"fear": 3}
    assert set(sep["per_class"]) == {"anger", "joy", "sadness"}
    assert sep["n_per_class"] == {"anger": 10, "joy": 10, "sadness": 10}
    assert any("left out of separability" in m and "fear (3)" in m for m in _sections(report, "separability"))


def test_a_tiny_classifier_comes_with_a_warning_and_an_interval(tmp_path: Path) -> None:
    report = evaluate({"small": make_texts(12)}, settings=FAST, embedder=HashEmbedder(), cache_dir=tmp_path)
    sep = report["separability"]["datasets"]["small"]
    low, high = sep["accuracy_ci"]
    assert 0 <= low <= sep["accuracy"] <= high <= 1 and high - low > 0.3  # 8 held-out texts: wide
    warnings = _sections(report, "separability")
    # 28 training texts: LightGBM (leaves of 20) cannot split, so it predicts one label for everything
    if len(sep["predicted_labels"]) == 1:
        assert any("too small to mean anything" in m for m in warnings), warnings
    else:
        assert any("unreliable" in m and "fewer than 25 texts" in m for m in warnings), warnings
    big = evaluate({"big": make_texts(40)}, settings=FAST, embedder=HashEmbedder(), cache_dir=tmp_path)
    assert not _sections(big, "separability") and not _sections(big, "diversity")


def test_one_class_gives_what_can_be_computed(tmp_path: Path) -> None:
    frame = make_texts(8)
    frame["label"] = "joy"
    report = evaluate({"x": frame}, settings=FAST, embedder=HashEmbedder(), cache_dir=tmp_path)
    assert report["diversity"]["datasets"]["x"]["per_emotion"]["joy"]["n"] == 24
    assert report["separability"] is None and "joy 24" in report["skipped"]["separability"]


def test_a_dataset_without_gold_labels_keeps_its_other_sections(tmp_path: Path) -> None:
    gold = make_texts(6, offset=300)
    odd = make_texts(6)
    odd["label"] = odd["label"].map({"joy": "glee", "anger": "rage", "sadness": "gloom"})  # unknown labels
    report = evaluate(
        {"odd": odd, "ok": make_texts(8)}, gold_test=gold, settings=FAST, embedder=HashEmbedder(),
        cache_dir=tmp_path,
    )
    assert "odd" in report["diversity"]["datasets"] and "odd" in report["separability"]["datasets"]
    assert set(report["real_data"]["datasets"]) == {"ok"}
    assert "'odd' shares 0 label" in report["real_data"]["skipped"]["odd"]
    assert "odd" not in report["downstream"]["rows"] and "odd" in report["downstream"]["skipped"]
    alone = evaluate({"odd": odd}, gold_test=gold, settings=FAST, embedder=HashEmbedder(), cache_dir=tmp_path)
    assert alone["real_data"] is None and "shares 0 label" in alone["skipped"]["real_data"]


def test_evaluations_run_concurrently_on_one_shared_embedder(tmp_path: Path, monkeypatch) -> None:
    """Several dashboard sessions evaluate at once with the process-wide embedder and result cache."""
    from concurrent.futures import ThreadPoolExecutor

    from personagen_core.evaluation.embeddings import Embedder

    shared = Embedder(cache_dir=tmp_path / "emb")
    monkeypatch.setattr(shared, "_load_model", lambda: _HashModel())
    shared.encode(["warm up in the main thread"])
    inputs = [make_texts(6 + i % 3, offset=10 * i) for i in range(6)]

    def run(frame: pd.DataFrame) -> dict[str, Any]:
        return evaluate({"d": frame}, settings=FAST, embedder=shared, cache_dir=tmp_path / "results")

    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(run, inputs))
    for frame, report in zip(inputs, reports, strict=True):
        assert report["datasets"]["d"]["n"] == len(frame)
        alone = evaluate({"d": frame}, settings=FAST, embedder=shared, cache_dir=tmp_path / "alone")
        assert report["diversity"] == alone["diversity"] and report["separability"] == alone["separability"]


class _HashModel:
    """Stands in for the sentence-transformers model inside a real Embedder (its cache is what is tested)."""

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return HashEmbedder().encode(list(texts))


@pytest.mark.slow
def test_evaluation_while_a_generation_writes_the_same_store(tmp_path: Path, monkeypatch) -> None:
    """The dashboard evaluates a run while another run is generated into the same (shared) run store."""
    import threading

    from personagen_core.evaluation.embeddings import Embedder
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig, run_generation
    from personagen_core.personas.spec import load_pack
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    store = RunStore(tmp_path / "runs.sqlite")  # one object, as ui.get_store() shares it
    embedder = Embedder(cache_dir=tmp_path / "emb")
    monkeypatch.setattr(embedder, "_load_model", lambda: _HashModel())
    spec = load_pack("japan")
    with FakeOpenAIServer(api_key="sk-test-concurrent", latency=0.02) as srv:
        llm = LLMSettings(backend="openai", base_url=srv.base_url, api_key="sk-test-concurrent", model="m")

        def config(n: int) -> GenerationConfig:
            return GenerationConfig(per_emotion=n, emotions=["joy", "fear", "anger"], llm=llm)

        first = run_generation(spec, config(5), store)
        assert first.state == "done"
        generated: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: generated.update(s=run_generation(spec, config(8), store)))
        thread.start()
        reports, overlapped = [], []
        while thread.is_alive() or not reports:
            overlapped.append(thread.is_alive())
            frame = load_run_dataset(store, first.run_id)
            reports.append(evaluate({"r": frame}, settings=FAST, embedder=embedder, cache_dir=tmp_path / "c"))
        thread.join()
    assert any(overlapped), "no evaluation ran while the generation did"
    assert generated["s"].state == "done" and len(store.texts(generated["s"].run_id)) == 24
    assert all(r["datasets"]["r"]["n"] == 15 for r in reports)
    assert all(r["diversity"] == reports[0]["diversity"] for r in reports)

"""Slices (issue 16): per persona/scenario attribute figures on a generated fake run, each checked against
a direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from personagen_core.evaluation import metrics
from personagen_core.evaluation import slices as S


@pytest.fixture(scope="module")
def run() -> dict:
    rng = np.random.default_rng(7)
    n = 120
    frame = pd.DataFrame(
        {
            "text": [f"text {i}" for i in range(n)],
            "label": rng.choice(["joy", "anger", "sadness"], n),
            "age": rng.choice(["20s", "40s", "60s"], n),
            "medium": rng.choice(["chat", "email"], n),
            "persona_id": np.arange(n),
            "verdict_stage1": "natural",
        }
    )
    X = rng.standard_normal((n, 16))
    # The gold classifier agrees far less often on texts of 60s personas.
    p_match = np.where(frame["age"] == "60s", 0.2, 0.8)
    match = (rng.random(n) < p_match).astype(float)
    match[::10] = np.nan  # emotions the gold data lacks are not scored
    realism = rng.random(n)
    cand = pd.DataFrame(
        {"age": rng.choice(["20s", "40s", "60s"], 300), "medium": rng.choice(["chat", "email"], 300)}
    )
    cand["rejected"] = rng.random(300) < np.where(cand["age"] == "20s", 0.5, 0.1)
    outs = frame[["age", "medium"]].copy()
    outs["rejected"] = False
    outs = pd.concat([outs, pd.DataFrame({"age": ["40s"] * 6, "medium": ["chat"] * 6, "rejected": True})])
    table = S.slice_table(frame, X, match=match, realism=realism, candidates=cand, outputs=outs, n_boot=300)
    return {
        "frame": frame,
        "X": X,
        "match": match,
        "realism": realism,
        "cand": cand,
        "outs": outs,
        "table": table,
    }


def _row(table: pd.DataFrame, attribute: str, value: str) -> pd.Series:
    return table[(table["attribute"] == attribute) & (table["value"] == value)].iloc[0]


def test_attribute_columns_skip_bookkeeping(run: dict) -> None:
    assert S.attribute_columns(run["frame"]) == ["age", "medium"]
    assert set(run["table"]["attribute"]) == {"(all)", "age", "medium"}


@pytest.mark.parametrize(("attribute", "value"), [("age", "60s"), ("medium", "email"), ("(all)", "(all)")])
def test_slice_figures_match_a_direct_computation(run: dict, attribute: str, value: str) -> None:
    frame, table = run["frame"], run["table"]
    mask = np.ones(len(frame), bool) if attribute == "(all)" else (frame[attribute] == value).to_numpy()
    row = _row(table, attribute, value)
    assert row["n"] == mask.sum()
    m = run["match"][mask]
    m = m[~np.isnan(m)]
    assert row["emotion_match"] == pytest.approx(m.mean()) and row["emotion_match_n"] == len(m)
    ci = binomtest(int(m.sum()), len(m)).proportion_ci(confidence_level=0.95, method="wilson")
    assert (row["emotion_match_low"], row["emotion_match_high"]) == pytest.approx((ci.low, ci.high))
    assert row["realism"] == pytest.approx(run["realism"][mask].mean())
    assert row["diversity"] == pytest.approx(metrics.mean_cosine_distance(run["X"][mask]))
    assert row["diversity_low"] < row["diversity"] < row["diversity_high"]
    cand = run["cand"] if attribute == "(all)" else run["cand"][run["cand"][attribute] == value]
    assert row["rejection_rate"] == pytest.approx(cand["rejected"].mean()) and row["rejection_rate_n"] == len(
        cand
    )
    outs = run["outs"] if attribute == "(all)" else run["outs"][run["outs"][attribute] == value]
    assert row["output_rejection_rate"] == pytest.approx(outs["rejected"].mean())


def test_mcd_bootstrap_matches_resampling_directly() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    value, lo, hi = S.mean_cosine_distance_ci(X, n_boot=400, random_state=1)
    direct = []
    rng2 = np.random.default_rng(1)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    for _ in range(400):
        idx = rng2.integers(0, 40, 40)
        G = Xn[idx] @ Xn[idx].T
        distinct = idx[:, None] != idx[None, :]  # pairs of two different texts
        direct.append(1 - G[distinct].mean())
    assert (lo, hi) == pytest.approx((np.quantile(direct, 0.025), np.quantile(direct, 0.975)))
    assert value == pytest.approx(metrics.mean_cosine_distance(X))


def test_nearest_distance() -> None:
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    ref = np.array([[0.0, 1.0], [1.0, 1.0]])
    assert S.nearest_distance(X, ref) == pytest.approx([1 - 1 / np.sqrt(2), 0.0])


def test_differ_most_finds_the_planted_slices(run: dict) -> None:
    top = S.differ_most(run["table"], "emotion_match", k=3)
    assert (top.loc[0, "attribute"], top.loc[0, "value"]) == ("age", "60s")
    assert top.loc[0, "gap"] < 0 and top.loc[0, "score"] > 1
    rej = S.differ_most(run["table"], "rejection_rate", k=3)
    planted = rej[rej["value"] == "20s"].iloc[0]
    assert planted["gap"] > 0.2 and planted["score"] > 1


def test_compare_two_runs_slice_by_slice(run: dict) -> None:
    a = run["table"]
    b = a.copy()
    b.loc[
        (b["attribute"] == "age") & (b["value"] == "60s"),
        ["emotion_match", "emotion_match_low", "emotion_match_high"],
    ] = [0.9, 0.85, 0.95]
    cmp = S.compare_slices(a, b, names=("before", "after"), metrics=["emotion_match"])
    row = cmp[(cmp["attribute"] == "age") & (cmp["value"] == "60s")].iloc[0]
    assert row["emotion_match delta"] == pytest.approx(0.9 - _row(a, "age", "60s")["emotion_match"])
    assert not row["emotion_match overlap"]
    same = cmp[(cmp["attribute"] == "age") & (cmp["value"] == "20s")].iloc[0]
    assert same["emotion_match delta"] == 0 and same["emotion_match overlap"]


def test_a_stored_run_gets_slices_with_rejection_rates(tmp_path) -> None:
    """End to end: a fake run in the store (personas with verdict statuses, texts, stage-4 rejections)
    evaluated against gold data; the report's slices match counts taken directly from the store."""
    import hashlib
    import re

    from personagen_core.evaluation.suite import (
        EvaluationSettings,
        evaluate,
        load_run_dataset,
        load_run_rejections,
    )
    from personagen_core.store import RunStore

    words = {"joy": ["happy", "glad", "delighted"], "anger": ["furious", "angry", "livid"]}

    class HashEmbedder:
        model_id = "hash-16"

        def encode(self, texts):
            out = np.zeros((len(texts), 16), dtype=np.float32)
            for r, t in enumerate(texts):
                for tok in re.findall(r"[a-z]+", t.lower()):
                    out[r, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 16] += 1
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen",
        config={},
        target={"joy": 12},
        spec_yaml="name: x\n",
        spec_hash="h",
        spec_name="x",
    )
    ages = ["20s", "60s"]
    store.add_personas(
        run_id, 0, [(i, {"age": ages[i % 2], "medium": "chat"}, f"p{i}", "s") for i in range(40)]
    )
    rejected = [i for i in range(40) if i % 2 == 1 and i < 20]  # ten 60s candidates rejected at stage 2
    store.set_persona_status(run_id, rejected, "rejected_stage2")
    store.set_persona_status(run_id, [i for i in range(40) if i not in rejected], "validated")
    kept = [i for i in range(40) if i not in rejected]
    for j, pid in enumerate(kept[:24]):
        emotion = ["joy", "anger"][j % 2]
        text = f"I feel {words[emotion][j % 3]} about thing {j}"
        store.add_text(
            run_id, emotion=emotion, text=text, text_norm=text, persona_id=pid, model="m", quota=12
        )
    for pid in kept[:3]:  # three stage-4 rejections of 20s personas
        store.add_rejection(run_id, stage=4, reason="refusal", emotion="joy", persona_id=pid, text="no")
    store.add_rejection(run_id, stage=4, reason="quota_full", emotion="joy", persona_id=kept[4], text="x")
    store.flush()

    gold = pd.DataFrame(
        {
            "text": [f"so {w} today {i}" for i in range(10) for w in ("happy", "glad", "furious", "angry")],
            "label": ["joy", "joy", "anger", "anger"] * 10,
        }
    )
    frame = load_run_dataset(store, run_id)
    report = evaluate(
        {"run": frame},
        gold_train=gold,
        gold_test=gold,
        settings=EvaluationSettings(
            projections=(), bootstrap=2, prd_runs=1, prd_clusters=3, gold_per_class=20
        ),
        embedder=HashEmbedder(),
        cache_dir=tmp_path / "cache",
        rejections={"run": load_run_rejections(store, run_id)},
    )
    rows = {(r["attribute"], r["value"]): r for r in report["slices"]["datasets"]["run"]["rows"]}
    assert report["slices"]["datasets"]["run"]["columns"] == ["age"]  # medium has a single value
    old = rows[("age", "60s")]
    assert old["n"] == int((frame["age"] == "60s").sum())
    assert old["rejection_rate"] == pytest.approx(10 / 20) and old["rejection_rate_n"] == 20
    young = rows[("age", "20s")]
    assert (
        young["rejection_rate"] == 0
        and young["output_rejection_rate_n"] == int((frame["age"] == "20s").sum()) + 3
    )
    assert young["output_rejection_rate"] == pytest.approx(3 / young["output_rejection_rate_n"])
    assert rows[("(all)", "(all)")]["emotion_match_n"] == len(frame)
    assert (
        0 <= rows[("(all)", "(all)")]["emotion_match"] <= 1
        and rows[("(all)", "(all)")]["realism"] is not None
    )
    assert "emotion_match" in report["slices"]["datasets"]["run"]["differ_most"]

    from personagen_core.evaluation.report import render_html, to_jsonable

    page = render_html(to_jsonable(report))
    assert "Slices: which personas make good data" in page and "age = 60s" in page
    # Two runs: the report lists the slices whose intervals do not overlap (here a copy: none).
    twice = dict(
        report,
        slices={
            **report["slices"],
            "datasets": {"a": report["slices"]["datasets"]["run"], "b": report["slices"]["datasets"]["run"]},
        },
    )
    assert "a vs b: slices whose intervals do not overlap: none." in render_html(to_jsonable(twice))

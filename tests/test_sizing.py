"""Size awareness (issue 16): texts to embed, time estimate from the stored rate, warning, sampling note."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from personagen_core.evaluation import sizing
from personagen_core.evaluation.suite import EvaluationSettings


def _frame(n: int, labels: tuple[str, ...] = ("joy", "sadness")) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"t{i}" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]}
    )


def test_plan_counts_caps_and_the_balanced_gold_sample(tmp_path: Path) -> None:
    settings = EvaluationSettings(max_texts=100, max_gold=50, gold_per_class=30)
    plan = sizing.embedding_plan(
        {"run": _frame(400), "small": _frame(20)},
        _frame(90, ("joy", "sadness", "love")),
        _frame(60),
        settings,
        model_id="m",
        home=tmp_path,
    )
    assert plan.counts == {"run": 100, "small": 20, "gold test": 50, "gold train (balanced sample)": 90}
    assert plan.sampled == {"run": (100, 400), "gold test": (50, 60)}
    assert plan.rate == sizing.FALLBACK_RATE and "conservative default" in plan.rate_source
    lines = plan.lines()
    assert lines[0].startswith("embedding up to 260 texts (run 100, small 20, gold test 50")
    assert "a seeded stratified sample of 100 of 400 texts" in lines[1]
    assert not plan.warn


def test_stored_rate_is_used_and_large_inputs_warn(tmp_path: Path) -> None:
    assert sizing.record_rate("m", 100, 1.0, home=tmp_path) is None  # too few texts to be a measurement
    assert sizing.record_rate("m", 1000, 5.0, home=tmp_path) == 200.0
    rate, source = sizing.rate_for("m", home=tmp_path)
    assert rate == 200.0 and "measured here" in source and "1000 texts in 5.0 s" in source
    assert sizing.rate_for("other", home=tmp_path)[0] == sizing.FALLBACK_RATE
    plan = sizing.embedding_plan(
        {"big": _frame(496_000)}, None, None, EvaluationSettings(), model_id="m", home=tmp_path
    )
    assert plan.seconds == 496_000 / 200.0 and plan.warn
    assert "about 41 min at 200 texts/s" in plan.lines()[0]
    assert "--max-texts N" in plan.lines()[-1] and "big is the largest input" in plan.lines()[-1]


def test_texts_in_the_embedding_cache_are_left_out_of_the_estimate(tmp_path: Path) -> None:
    """A re-evaluation of embedded texts is not announced as hours of embedding: the plan asks the cache."""
    import numpy as np

    from personagen_core.evaluation.embeddings import Embedder, _text_key

    embedder = Embedder(cache_dir=tmp_path / "cache")
    big = _frame(40_000)
    assert embedder.cached_fraction(big["text"].tolist()) == 0.0
    vec = np.ones(4, dtype=np.float32).tobytes()
    # three quarters of the big input's texts are cached (written as an earlier evaluation would)
    embedder._get_store().put(embedder.model_id, [(_text_key(t), vec) for t in big["text"][:30_000]])
    assert embedder.cached_fraction(big["text"].tolist() * 2) == 0.75  # distinct texts count once
    sizing.record_rate("m", 1000, 10.0, home=tmp_path)  # 100 texts/s
    settings = EvaluationSettings()
    cold = sizing.embedding_plan({"big": big}, None, None, settings, model_id="m", home=tmp_path)
    assert cold.seconds == 400.0 and not cold.cached
    other, test = _frame(100), _frame(2_000)
    other["text"], test["text"] = "other " + other["text"], "test " + test["text"]
    plan = sizing.embedding_plan({"big": big, "gold": other}, None, test, settings, model_id="m",
                                 home=tmp_path, cached_fraction=embedder.cached_fraction)
    assert plan.cached == {"big": 30_000, "gold": 0, "gold test": 0}
    assert plan.to_embed == 12_100 and plan.seconds == 121.0 and not plan.warn
    assert "12,100 not in the embedding cache: about 2 min at 100 texts/s" in plan.lines()[0]
    embedder._get_store().put(embedder.model_id, [(_text_key(t), vec) for t in big["text"][30_000:]])
    warm = sizing.embedding_plan({"big": big}, None, None, settings, model_id="m", home=tmp_path,
                                 cached_fraction=embedder.cached_fraction)
    assert warm.to_embed == 0 and warm.lines() == [
        "embedding up to 40,000 texts (big 40,000): all of them are in the embedding cache"]
    embedder.close()

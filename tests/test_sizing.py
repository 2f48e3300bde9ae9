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

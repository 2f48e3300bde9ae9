"""report.json / report.html from a hand-made report dict (no embedding, fast)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from personagen_core.errors import PersonaGenError
from personagen_core.evaluation.report import render_html, to_jsonable, write_report

LABELS = ["anger", "joy", "sadness"]
NAMES = ["PersonaGen run", "AttrPrompt <baseline>"]  # the second name needs escaping


def _confusion() -> dict:
    counts = np.eye(3, dtype=int) * 5 + 1
    return {
        "labels": LABELS,
        "counts": counts.tolist(),
        "normalised": (counts / counts.sum(axis=1, keepdims=True)).tolist(),
    }


def _report() -> dict:
    per_emotion = {
        e: {
            "n": 6,
            "mean_cosine_distance": 0.61,
            "cluster_entropy": 1.55,
            "centroid_distance": 0.2,
            "vendi_score": 4.2,
            "distinct_1": 0.5,
            "self_bleu_4": 0.1,
        }
        for e in LABELS
    }
    return {
        "schema_version": 1,
        "generated_at": "2026-01-01T00:00:00+00:00",
        "settings": {"seed": 3, "embedding_model": "all-MiniLM-L6-v2", "projections": ["tsne"]},
        "datasets": {n: {"n": 18, "labels": {lab: 6 for lab in LABELS}, "source": "test"} for n in NAMES},
        "gold": {
            "train": {"n": 30, "labels": {lab: 10 for lab in LABELS}},
            "test": {"n": 9, "labels": {}},
            "label_map": {"pleasure": None},
            "dropped_labels": ["pleasure"],
        },
        "projections": {
            n: {
                "coords": {"tsne": {"x": list(range(18)), "y": list(range(18))}},
                "label": LABELS * 6,
                "text": [f"<b>text</b> {i}" for i in range(18)],
                "persona": [""] * 18,
                "attributes": {},
            }
            for n in NAMES
        },
        "diversity": {
            "datasets": {n: {"per_emotion": per_emotion, "overall": per_emotion["joy"]} for n in NAMES},
            "definitions": {"mean_cosine_distance": "mean pairwise cosine distance"},
        },
        "separability": {
            "method": "LightGBM",
            "datasets": {
                n: {
                    "accuracy": 0.9,
                    "per_class": {
                        lab: {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 2} for lab in LABELS
                    },
                    "macro": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 6},
                    "weighted": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 6},
                    "confusion": _confusion(),
                    "n_train": 12,
                    "n_test": 6,
                }
                for n in NAMES
            },
        },
        "judge": {
            "model": "judge-model",
            "criteria": ["emotion_match", "grammaticality", "lexical_diversity", "structure_logic"],
            "datasets": {
                n: {
                    "n_scored": 18,
                    "n_failed": 0,
                    "mean": {
                        c: 4.0
                        for c in ["emotion_match", "grammaticality", "lexical_diversity", "structure_logic"]
                    },
                    "distribution": {
                        c: {"1": 0, "2": 0, "3": 6, "4": 6, "5": 6}
                        for c in ["emotion_match", "grammaticality", "lexical_diversity", "structure_logic"]
                    },
                    "per_emotion": {
                        lab: {
                            "emotion_match": 4.0,
                            "grammaticality": 4.0,
                            "lexical_diversity": 4.0,
                            "structure_logic": 4.0,
                        }
                        for lab in LABELS
                    },
                }
                for n in NAMES
            },
        },
        "real_data": {
            "reference": "gold test split",
            "datasets": {
                n: {
                    "fid": {"value": 0.5, "ci": [0.4, 0.6]},
                    "prd_f8": {"value": 0.7, "ci": [0.6, 0.8]},
                    "kl": {"value": np.float64(0.2), "ci": [0.1, 0.3]},
                }
                for n in NAMES
            },
            "notes": {"KL": "KL(real || synthetic)"},
        },
        "downstream": {
            "test": "gold test",
            "method": "LightGBM",
            "rows": {
                **{
                    n: {
                        "accuracy": 0.5,
                        "weighted_precision": 0.5,
                        "weighted_recall": 0.5,
                        "weighted_f1": 0.5,
                        "macro_f1": 0.4,
                        "n_train": 18,
                        "n_test": 9,
                        "confusion": _confusion(),
                    }
                    for n in NAMES
                },
                "majority class": {
                    "accuracy": 0.33,
                    "weighted_f1": 0.17,
                    "macro_f1": 0.17,
                    "n_train": 30,
                    "n_test": 9,
                    "confusion": _confusion(),
                },
            },
        },
        "skipped": {},
        "timings": {"embeddings": 0.1},
    }


def test_write_report_writes_strict_json_and_html(tmp_path) -> None:
    report = _report()
    report["diversity"]["datasets"][NAMES[0]]["overall"] = {"mean_cosine_distance": float("nan")}
    json_path, html_path = write_report(report, tmp_path / "out")
    assert json_path.name == "report.json" and html_path.name == "report.html"
    data = json.loads(json_path.read_text())  # strict JSON: NaN became null
    assert data["diversity"]["datasets"][NAMES[0]]["overall"]["mean_cosine_distance"] is None
    assert data["real_data"]["datasets"][NAMES[0]]["kl"]["value"] == 0.2


def test_html_is_self_contained_and_has_the_paper_tables() -> None:
    page = render_html(to_jsonable(_report()))
    # plotly.js inlined exactly once, no script or stylesheet fetched from anywhere
    assert page.count("<script") > 1
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']?https?:", page)
    assert len(re.findall(r"plotly\.js v\d", page)) == 1
    for name in ("Table IV", "Table V", "Table VI", "Table VII", "Fig. 4"):
        assert name in page
    assert "2026-01-01T00:00:00+00:00" in page  # generated timestamp
    assert "&quot;seed&quot;" not in page and "seed" in page  # settings listed


def test_every_table_shows_both_datasets_escaped() -> None:
    page = render_html(to_jsonable(_report()))
    tables = re.findall(r"<table.*?</table>", page, flags=re.S)
    assert len(tables) >= 6
    for table in tables:
        if "<th>train</th>" in table or "<th>seconds</th>" in table:
            continue  # the gold-data and timing tables are not per dataset
        assert "PersonaGen run" in table, table[:200]
        assert "AttrPrompt &lt;baseline&gt;" in table, table[:200]
    assert "<baseline>" not in page.split("<script")[0]  # never injected raw
    assert "majority class" in page


def test_texts_cannot_break_out_of_the_figure_scripts() -> None:
    report = _report()
    report["projections"][NAMES[0]]["text"][0] = "</script><script>alert(1)</script>"
    page = render_html(to_jsonable(report))
    assert "</script><script>alert(1)" not in page


def test_missing_sections_say_why() -> None:
    report = _report()
    report["judge"] = None
    report["skipped"] = {"judge": "judge disabled"}
    for proj in report["projections"].values():
        proj["coords"] = {}
    report["skipped"]["projections"] = "no projection method selected"
    page = render_html(to_jsonable(report))
    assert "Not computed: judge disabled" in page
    assert "Not computed: no projection method selected" in page


def test_unwritable_directory_is_a_clear_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PersonaGenError, match="cannot write the report"):
        write_report(_report(), blocker / "sub")


def test_small_samples_are_flagged_in_the_html() -> None:
    report = _report()
    report["warnings"] = [
        {"section": "diversity", "dataset": NAMES[1], "message": "unreliable: joy (3) has fewer than 25 texts"},
        {"section": "separability", "dataset": NAMES[0], "message": "predicted 'joy' for every held-out text"},
    ]
    report["separability"]["skipped"] = {"tiny": "separability needs at least 5 texts per label; tiny has 3"}
    sep = report["separability"]["datasets"][NAMES[0]]
    sep.update(accuracy_ci=[0.1, 0.6], n_per_class={"anger": 12, "joy": 12}, n_train=19, n_test=5)
    report["stored"] = {"eval_id": "ev-1", "source": "dashboard", "runs": ["run-a"]}
    page = re.sub(r"<script.*?</script>", "", render_html(to_jsonable(report)), flags=re.S)
    assert "2 warning(s) in: diversity, separability" in page  # the summary box at the top
    boxes = re.findall(r'<div class="warn"><ul>.*?</ul></div>', page, flags=re.S)
    assert len(boxes) == 2
    assert "AttrPrompt &lt;baseline&gt;</b>: unreliable: joy (3)" in boxes[0]
    assert "predicted &#x27;joy&#x27;" in boxes[1] and "<b>tiny</b> left out: separability needs" in boxes[1]
    assert "[0.1000, 0.6000]" in page and "anger 12, joy 12" in page  # interval and n per label
    diversity = page[page.index("Table IV. Diversity") :]
    assert "<th>n</th>" in diversity[: diversity.index("</table>")]  # n beside each emotion's figures
    assert "Stored evaluation <code>ev-1</code>" in page


def test_no_warning_box_without_warnings() -> None:
    page = render_html(to_jsonable(_report()))
    assert 'class="warn"' not in page

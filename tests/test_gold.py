"""Tests of personagen_core.evaluation.gold: formats, column mapping, label maps, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation import gold

ROWS = [("i feel great today", "joy"), ("this is awful, really", "sadness"), ("who did this", "anger")]


def _write_all(tmp_path: Path) -> dict[str, Path]:
    df = pd.DataFrame(ROWS, columns=["text", "label"])
    paths = {
        "csv": tmp_path / "d.csv",
        "tsv": tmp_path / "d.tsv",
        "jsonl": tmp_path / "d.jsonl",
        "parquet": tmp_path / "d.parquet",
        "semicolon": tmp_path / "d.txt",
    }
    df.to_csv(paths["csv"], index=False)
    df.to_csv(paths["tsv"], sep="\t", index=False)
    df.to_json(paths["jsonl"], orient="records", lines=True)
    df.to_parquet(paths["parquet"])
    paths["semicolon"].write_text("".join(f"{t};{lab}\n" for t, lab in ROWS) + "\n", encoding="utf-8")
    return paths


@pytest.mark.parametrize("fmt", gold.FORMATS)
def test_every_format_loads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    path = _write_all(tmp_path)[fmt]
    assert gold.detect_format(path) == fmt
    df = gold.load_dataset(path)
    assert list(df.columns[:2]) == ["text", "label"]
    assert list(zip(df["text"], df["label"], strict=True)) == ROWS


def test_content_sniffing_without_extension(tmp_path: Path) -> None:
    p = tmp_path / "noext"
    p.write_text("hello there;joy\nbye now;sadness\n", encoding="utf-8")
    assert gold.detect_format(p) == "semicolon"
    p2 = tmp_path / "noext2"
    p2.write_text('{"text": "x", "label": "joy"}\n', encoding="utf-8")
    assert gold.load_dataset(p2)["label"].tolist() == ["joy"]


def test_column_mapping_and_extra_columns(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    pd.DataFrame({"Sentence": ["a", "b"], "y": ["joy", "fear"], "persona": ["p1", "p2"]}).to_csv(
        p, index=False
    )
    df = gold.load_dataset(p, label_col="y")
    assert df.columns.tolist() == ["text", "label", "persona"]
    assert df["text"].tolist() == ["a", "b"]


def test_missing_column_error_names_file_and_column(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["a"], "emo": ["joy"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match=r"bad\.csv.*no label column.*columns found: text, emo"):
        gold.load_dataset(p)
    with pytest.raises(DataError, match=r"bad\.csv: no label column 'lab'"):
        gold.load_dataset(p, label_col="lab")


def test_other_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        gold.load_dataset(tmp_path / "nope.csv")
    p = tmp_path / "d.txt"
    p.write_text("fine;joy\nno separator here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.txt: line 2 has no ';'"):
        gold.load_dataset(p, fmt="semicolon")
    e = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["a", ""], "label": ["joy", "fear"]}).to_csv(e, index=False)
    with pytest.raises(DataError, match=r"empty\.csv: column 'text' \(text\) is empty in 1 row.*line 3"):
        gold.load_dataset(e)
    with pytest.raises(DataError, match="unknown format"):
        gold.load_dataset(e, fmt="xml")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read as parquet"):
        gold.load_dataset(broken)


def test_default_label_map_matches_the_emotion_sets() -> None:
    from personagen_core.personas.spec import EMOTION_SETS

    paper7 = {e.name for e in EMOTION_SETS["paper7"]}
    carer6 = {e.name for e in EMOTION_SETS["carer6"]}
    assert set(gold.DEFAULT_LABEL_MAP) == paper7
    assert {v for v in gold.DEFAULT_LABEL_MAP.values() if v is not None} <= carer6
    assert gold.DEFAULT_LABEL_MAP["pleasure"] is None and gold.DEFAULT_LABEL_MAP["neutral"] is None


def test_label_map_files_and_apply(tmp_path: Path) -> None:
    y = tmp_path / "map.yaml"
    y.write_text("pleasure: joy\nneutral: null\n", encoding="utf-8")
    j = tmp_path / "map.json"
    j.write_text(json.dumps({"pleasure": "joy", "neutral": None}), encoding="utf-8")
    assert gold.load_label_map(y) == gold.load_label_map(j) == {"pleasure": "joy", "neutral": None}
    df = pd.DataFrame({"text": list("abcd"), "label": ["pleasure", "neutral", "fear", "joy"]})
    out = gold.apply_label_map(df, gold.load_label_map(y))
    assert out["label"].tolist() == ["joy", "fear", "joy"]
    assert out["text"].tolist() == ["a", "c", "d"]
    assert df["label"].tolist()[0] == "pleasure"  # input untouched
    bad = tmp_path / "bad.yaml"
    bad.write_text("- joy\n- fear\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.yaml: a label map must be"):
        gold.load_label_map(bad)
    grouped = tmp_path / "grouped.yaml"  # target: [sources], many-to-one, null target = leave out
    grouped.write_text("joy: [amusement, excitement]\nnervousness: fear\n~: [neutral]\n", encoding="utf-8")
    assert gold.load_label_map(grouped) == {
        "amusement": "joy",
        "excitement": "joy",
        "nervousness": "fear",
        "neutral": None,
    }
    nested = tmp_path / "nested.yaml"
    nested.write_text("joy: {a: b}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"label 'joy' maps to"):
        gold.load_label_map(nested)


def test_loads_real_carer_split(carer_dir: Path) -> None:
    df = gold.load_dataset(carer_dir / "test.txt")
    assert len(df) == 2000
    assert df["label"].value_counts().to_dict()["joy"] == 695

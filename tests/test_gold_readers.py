"""Gold data as it comes (issue 16): ready-made readers, sniffing, label ids, maps, multi-label rows and
line numbers in errors. Every fixture is a few lines written here, in the shape of the public datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from personagen_core.errors import DataError
from personagen_core.evaluation import gold
from personagen_core.evaluation.gold import ColumnError, ReadOptions

GOEMOTIONS_NAMES = ["admiration", "amusement", "anger", "annoyance", "joy", "sadness", "neutral"]


def _goemotions(tmp_path: Path) -> Path:
    (tmp_path / "labels.txt").write_text("\n".join(GOEMOTIONS_NAMES) + "\n", encoding="utf-8")
    p = tmp_path / "train.tsv"
    p.write_text(
        'That is "so" funny\t1\teeabc1\n'
        "I am furious about this\t2\teeabc2\n"
        "What a lovely, kind gesture\t0,4\teeabc3\n"
        "ok\t6\teeabc4\n",
        encoding="utf-8",
    )
    return p


def test_carer_reader_and_sniffed_semicolon_file(tmp_path: Path) -> None:
    p = tmp_path / "val.txt"
    p.write_text("i feel rather happy today;joy\ni didnt feel humiliated;sadness\n", encoding="utf-8")
    for df in (gold.load_dataset(p, fmt="carer"), gold.load_dataset(p)):
        assert df[["text", "label"]].values.tolist() == [
            ["i feel rather happy today", "joy"],
            ["i didnt feel humiliated", "sadness"],
        ]
    assert gold.load_dataset(p).attrs["read"]["header"] is False
    # A semicolon CSV with a header used to read as one column: the delimiter is sniffed.
    c = tmp_path / "semi.csv"
    c.write_text('Sentence;Emotion\n"Hello, friend";joy\nso sad, so tired;sadness\n', encoding="utf-8")
    df = gold.load_dataset(c)
    assert df["text"].tolist() == ["Hello, friend", "so sad, so tired"] and df.attrs["read"][
        "sep"
    ].startswith("';'")


def test_goemotions_ids_with_labels_txt_and_multi_label_policies(tmp_path: Path) -> None:
    p = _goemotions(tmp_path)
    with pytest.raises(
        DataError, match=r"train\.tsv: line 3: label '0,4' holds 2 labels.*first.*drop.*explode"
    ):
        gold.load_dataset(p, fmt="goemotions")
    first = gold.load_dataset(p, fmt="goemotions", multi_label="first")
    assert first["label"].tolist() == ["amusement", "anger", "admiration", "neutral"]
    assert first["text"].tolist()[0] == 'That is "so" funny'  # quotes are plain characters in TSV
    assert first.attrs["read"]["multi_label"] == {"policy": "first", "rows": 1}
    drop = gold.load_dataset(p, fmt="goemotions", multi_label="drop")
    assert drop["label"].tolist() == ["amusement", "anger", "neutral"]
    explode = gold.load_dataset(p, fmt="goemotions", multi_label="explode")
    assert explode["label"].tolist() == ["amusement", "anger", "admiration", "joy", "neutral"]
    assert explode["text"].tolist()[2] == explode["text"].tolist()[3] == "What a lovely, kind gesture"
    assert explode.columns.tolist() == ["text", "label", "2"]  # the comment id column is kept


def test_many_to_one_map_applied_to_gold_merges_multi_labels(tmp_path: Path) -> None:
    p = _goemotions(tmp_path)
    ekman = tmp_path / "ekman.yaml"
    ekman.write_text(
        "joy: [admiration, amusement, joy]\nanger: [anger, annoyance]\n~: [neutral]\n", encoding="utf-8"
    )
    df = gold.load_dataset(p, fmt="goemotions", label_map=str(ekman))
    # "0,4" is admiration + joy, both joy after the map: one label, no multi-label policy needed.
    assert df["label"].tolist() == ["joy", "anger", "joy"]
    assert df.attrs["read"]["left_out_by_map"] == 1  # the neutral row


def test_headerless_tsv_picks_text_and_label_columns(tmp_path: Path) -> None:
    p = tmp_path / "raw.tsv"
    p.write_text(
        "fear\tI heard a noise downstairs at night\t17\n"
        "joy\tWe won the final match at last\t18\n"
        "fear\tThe dog growled at me in the dark\t19\n",
        encoding="utf-8",
    )
    df = gold.load_dataset(p)
    assert df.attrs["read"]["header"] is False
    assert df.attrs["read"]["text_col"] == "1" and df.attrs["read"]["label_col"] == "0"
    assert df["label"].tolist() == ["fear", "joy", "fear"]
    named = gold.load_dataset(p, text_col="1", label_col="0", header=False)
    assert named["text"].tolist() == df["text"].tolist()


def test_isear_pipes_with_stray_separators_and_broken_lines(tmp_path: Path) -> None:
    p = tmp_path / "isear.csv"
    p.write_text(
        "ID|CITY|EMOT|Field1|SIT|STATE|\n"
        "11001|1|1|joy|On days when I feel close to my partner|1|\n"
        "11002|1|2|fear|Every time I imagine that someone | I love could die|1|\n"
        "11003|1|3|anger|When I had been obviously unjustly treated á\n and had no way out|2|\n",
        encoding="latin-1",
    )
    df = gold.load_dataset(p, fmt="isear")
    assert df["label"].tolist() == ["joy", "fear", "anger"]
    assert df["text"].tolist()[1] == "Every time I imagine that someone | I love could die"
    assert df["text"].tolist()[2].startswith("When I had been obviously unjustly treated á\n and had")
    assert "STATE" in df.columns and df.attrs["read"]["encoding"] != "utf-8"


def test_latin1_is_detected_and_an_explicit_wrong_encoding_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\nun café très agréable,joy\nune journée triste,sadness\n".encode("latin-1"))
    df = gold.load_dataset(p)
    assert df["text"].tolist() == ["un café très agréable", "une journée triste"]
    assert df.attrs["read"]["encoding"] != "utf-8"
    with pytest.raises(DataError, match=r"latin\.csv: line 2, column 7: byte 0xe9 is not valid utf-8"):
        gold.load_dataset(p, encoding="utf-8")
    assert gold.load_dataset(p, encoding="latin-1")["text"].tolist() == df["text"].tolist()


def test_errors_give_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,label\n\nfine,joy\nmissing label\nok,fear\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv: line 4 has no ',' \(comma\) separating text and label"):
        gold.load_dataset(p)
    e = tmp_path / "e.csv"
    e.write_text('text,label\n"a text\nover two lines",joy\n"",fear\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"e\.csv: column 'text' \(text\) is empty in 1 row\(s\), first at line 4"
    ):
        gold.load_dataset(e)
    n = tmp_path / "ids.tsv"
    n.write_text("a\t0\nb\t9\n", encoding="utf-8")
    names = tmp_path / "names.txt"
    names.write_text("joy\nfear\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ids\.tsv: line 2: label id 9 is beyond the 2 names"):
        gold.load_dataset(n, label_names=str(names), header=False, text_col="0", label_col="1")


def test_missing_columns_raise_column_error_listing_columns(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(ColumnError, match=r"no text column.*columns found: foo, bar") as err:
        gold.load_dataset(p)
    assert err.value.columns == ["foo", "bar"] and err.value.role == "text"
    assert gold.load_dataset(p, text_col="foo", label_col="bar")["label"].tolist() == ["2"]


def test_file_specs() -> None:
    path, o = gold.parse_file_spec("data/go.tsv:text=0,label=1,header=no,sep=tab,multi-label=first")
    assert path == Path("data/go.tsv")
    assert o == ReadOptions(text_col="0", label_col="1", header=False, sep="\t", multi_label="first")
    assert gold.parse_file_spec("plain.csv") == (Path("plain.csv"), ReadOptions())
    _, o = gold.parse_file_spec("x.csv:sep=pipe,encoding=latin-1,format=isear,names=labels.txt")
    assert (o.sep, o.encoding, o.fmt, o.label_names) == ("|", "latin-1", "isear", "labels.txt")
    with pytest.raises(DataError, match=r"'colour=red' is not an option"):
        gold.parse_file_spec("x.csv:colour=red")
    with pytest.raises(DataError, match="multi-label policy must be one of"):
        gold.parse_file_spec("x.csv:multi-label=all")
    assert ReadOptions(text_col="a").merged(ReadOptions(text_col="b", label_col="c")) == ReadOptions(
        text_col="a", label_col="c"
    )


def test_hugging_face_datasets_folder(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["sadness", "joy", "love"]),
        }
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["so sad", "so happy", "i adore you"], "label": [0, 1, 2]}, features=features
            ),
            "test": datasets.Dataset.from_dict(
                {"text": ["gloomy day", "great news"], "label": [0, 1]}, features=features
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "emotion"))
    with pytest.raises(DataError, match=r"choose a split with split=NAME; splits found: train, test"):
        gold.load_dataset(tmp_path / "emotion")
    df = gold.load_dataset(tmp_path / "emotion", split="test")
    assert df[["text", "label"]].values.tolist() == [["gloomy day", "sadness"], ["great news", "joy"]]
    multi = datasets.Dataset.from_dict(
        {"text": ["a", "b"], "labels": [[0, 1], [2]]},
        features=datasets.Features(
            {
                "text": datasets.Value("string"),
                "labels": datasets.Sequence(datasets.ClassLabel(names=["x", "y", "z"])),
            }
        ),
    )
    multi.save_to_disk(str(tmp_path / "multi"))
    with pytest.raises(DataError, match=r"row 1: label \['x', 'y'\] holds 2 labels"):
        gold.load_dataset(tmp_path / "multi")
    assert gold.load_dataset(tmp_path / "multi", multi_label="explode")["label"].tolist() == ["x", "y", "z"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "joy"}\n\n{"text": "", "label": "fear"}\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=r"d\.jsonl: column 'text' \(text\) is empty in 1 row\(s\), first at line 3"
    ):
        gold.load_dataset(p)

"""The Real data page reads gold files as they come: reading options, a text/label column picker when the
columns are not found (issue 11), and a preview of the parsed rows (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import streamlit as st

    from personagen_core.store import RunStore

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen", config={}, target={"joy": 2}, spec_yaml="name: x\n", spec_hash="h", spec_name="x"
    )
    store.add_personas(run_id, 0, [(i, {"age": "25-34"}, f"persona {i}", "at work") for i in range(4)])
    for i, emotion in enumerate(["joy", "joy", "sadness", "sadness"]):
        store.add_text(
            run_id, emotion=emotion, text=f"t {i}", text_norm=f"t {i}", persona_id=i, model="m", quota=2
        )
    store.flush()
    yield tmp_path
    st.cache_data.clear()
    st.cache_resource.clear()


def _page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/7_real_data.py").run()
    at.radio(key="keep_gold_kind").set_value("upload").run()
    return at


def _upload(at, name: str, data: bytes) -> None:
    at.file_uploader(key="gold_test_upload").set_value((name, data, "text/plain")).run()
    assert not at.exception, [e.value for e in at.exception]


def _captions(at) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_wrong_columns_offer_a_column_picker_not_a_cli_option(home: Path) -> None:
    at = _page()
    _upload(at, "gold.csv", b"utterance,emo\nso happy today,joy\nso sad today,sadness\nhappy again,joy\n")
    errors = [e.value for e in at.error]
    assert any("gold.csv" in e and "Pick the text column above" in e for e in errors), errors
    assert not any("--" in e or "text_col" in e for e in errors), errors  # no option the page lacks
    assert at.selectbox(key="gold_test_text_col").options == ["(auto)", "utterance", "emo"]
    at.selectbox(key="gold_test_text_col").set_value("utterance").run()
    at.selectbox(key="gold_test_label_col").set_value("emo").run()
    assert not at.error, [e.value for e in at.error]
    assert "3 texts, labels: joy, sadness" in _captions(at)
    frames = [d.value for d in at.dataframe]
    preview = next(f for f in frames if list(f.columns) == ["text", "label"])  # the parsed rows
    assert preview["text"].tolist()[0] == "so happy today" and preview["label"].tolist()[1] == "sadness"


def test_reading_options_and_multi_label_policy(home: Path) -> None:
    at = _page()
    # GoEmotions-like: headerless TSV, text then labels, one row with two labels.
    _upload(at, "go.tsv", b"so happy today\tjoy\tid1\nso sad and angry\tsadness,anger\tid2\nglad\tjoy\tid3\n")
    assert any("line 2" in e.value and "first" in e.value for e in at.error), [e.value for e in at.error]
    at.selectbox(key="keep_gold_test_multi").set_value("explode").run()
    assert not at.error, [e.value for e in at.error]
    assert "4 texts, labels: anger, joy, sadness" in _captions(at)
    # A semicolon file read with an explicit separator and no header line.
    _upload(at, "semi.txt", b"i feel great;joy\ni feel low;sadness\n")
    at.selectbox(key="keep_gold_test_sep").set_value("semicolon").run()
    at.selectbox(key="keep_gold_test_header").set_value("no").run()
    assert not at.error, [e.value for e in at.error]
    assert "2 texts, labels: joy, sadness" in _captions(at)


@pytest.mark.slow
def test_compare_shows_like_with_like_table_vii_and_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlit as st

    from personagen_core.store import RunStore

    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    words = {"joy": ["happy", "glad", "delighted"], "sadness": ["sad", "gloomy", "down"]}
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(
        method="personagen",
        config={},
        target={"joy": 12},
        spec_yaml="name: x\n",
        spec_hash="h",
        spec_name="x",
    )
    store.add_personas(run_id, 0, [(i, {"age": ["20s", "60s"][i % 2]}, f"p{i}", "s") for i in range(24)])
    for i in range(24):
        emotion = ["joy", "sadness"][(i // 2) % 2]
        text = f"I feel {words[emotion][i % 3]} about the day number {i}"
        store.add_text(run_id, emotion=emotion, text=text, text_norm=text, persona_id=i, model="m", quota=12)
    store.flush()
    gold = "".join(
        f"{w} news about my {thing};{emotion}\n"
        for emotion in ("joy", "sadness", "love")
        for w in (words.get(emotion) or ["adore", "cherish", "dear"])
        for thing in ("job", "friend", "team", "house")
    )
    at = _page()
    _upload(at, "test.txt", gold.encode())
    next(b for b in at.button if b.label == "Compare with real data").click().run(timeout=240)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    report = at.session_state["last_report"]
    rows = report["downstream"]["rows"]
    assert rows[run_id]["left_out"] == ["love"] and rows[run_id]["labels"] == ["joy", "sadness"]
    assert {r["value"] for r in report["slices"]["datasets"][run_id]["rows"]} >= {"20s", "60s"}
    subheaders = [h.value for h in at.subheader]
    assert "Slices · which personas make good data" in subheaders
    # From a slice to its texts in Explore.
    at.selectbox(key="slices_explore_pick").set_value(("age", "60s")).run()
    next(b for b in at.button if b.label == "Show its texts in Explore").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = next(d.value for d in at.dataframe if "text" in d.value.columns)
    assert len(shown) == 12 and set(shown["age"]) == {"60s"}
    st.cache_data.clear()
    st.cache_resource.clear()


def test_size_estimate_before_the_comparison(home: Path) -> None:
    """Before embedding, the page says how many texts it will embed and how long that should take
    (sizing, as the CLI prints), and warns above the threshold (issue 16)."""
    from personagen_core.evaluation import sizing
    from personagen_core.evaluation.embeddings import Embedder

    at = _page()
    _upload(at, "test.txt", b"so happy today;joy\nso sad today;sadness\nhappy again;joy\n")
    # 4 run texts + 3 gold test texts at the fallback rate; nothing embedded yet.
    assert "embedding up to 7 texts" in _captions(at) and "10 texts/s" in _captions(at), _captions(at)
    assert not at.warning, [w.value for w in at.warning]
    # A slow measured rate on this machine: above the threshold, a warning naming the page's controls.
    sizing.record_rate(Embedder(None).model_id, 500, 50_000, home=home)  # 0.01 texts/s: 7 texts in 700 s
    at.run()
    assert "embedding up to 7 texts" in _captions(at) and "measured here" in _captions(at), _captions(at)
    warnings = [w.value for w in at.warning]
    assert any("more than 10 min" in w and "gold sizes" in w for w in warnings), warnings
    assert not any("--max" in w for w in warnings), warnings  # no CLI option the page lacks


def test_evaluate_page_shows_the_size_estimate(home: Path) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/6_evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    captions = "\n".join(str(c.value) for c in at.caption)
    assert "embedding up to 4 texts" in captions, captions

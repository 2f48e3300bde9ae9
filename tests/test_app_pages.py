"""Dashboard tests: ui.py's pure helpers, and every page through streamlit.testing.v1.AppTest."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ui  # noqa: E402
import ui.spec_editor  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------

_dists = (
    hst.lists(hst.floats(0.0, 1.0), min_size=1, max_size=12)
    .filter(lambda v: sum(v) > 1e-6)
    .map(lambda v: [x / sum(v) for x in v])
)


@settings(max_examples=200, deadline=None)
@given(_dists, hst.data())
def test_renormalise_keeps_a_distribution_and_locked_items(values: list[float], data: hst.DataObject) -> None:
    n = len(values)
    index = data.draw(hst.integers(0, n - 1))
    locked = data.draw(hst.sets(hst.integers(0, n - 1), max_size=n))
    new_value = data.draw(hst.floats(0.0, 1.0))
    out = ui.renormalise(values, index, new_value, locked)
    assert len(out) == n
    assert math.isclose(sum(out), 1.0, abs_tol=1e-9)
    assert all(v >= 0 for v in out)
    for i in locked - {index}:
        assert out[i] == pytest.approx(values[i])
    # The edited item gets what was asked, unless the locked items leave less.
    room = 1.0 - sum(values[i] for i in locked - {index})
    if len(set(range(n)) - locked - {index}) > 0:
        assert out[index] == pytest.approx(min(new_value, max(room, 0.0)), abs=1e-9)


def test_renormalise_scales_others_proportionally() -> None:
    out = ui.renormalise([0.5, 0.3, 0.2], 0, 0.0)
    assert out == pytest.approx([0.0, 0.6, 0.4])
    out = ui.renormalise([0.5, 0.3, 0.2], 0, 0.8, locked={1})
    assert out == pytest.approx([0.7, 0.3, 0.0])  # clipped: item 1 is locked at 0.3
    out = ui.renormalise([1.0, 0.0, 0.0], 0, 0.4)
    assert out == pytest.approx([0.4, 0.3, 0.3])  # zeros share equally


def test_add_and_remove_items_keep_a_distribution() -> None:
    assert ui.add_item([0.5, 0.5], 0.2) == pytest.approx([0.4, 0.4, 0.2])
    assert ui.add_item([], 0.3) == [1.0]
    assert ui.remove_item([0.5, 0.3, 0.2], 0) == pytest.approx([0.6, 0.4])
    assert ui.remove_item([0.5, 0.3, 0.2], 0, locked=[1]) == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError):
        ui.remove_item([1.0], 0)


def test_filter_frame() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {
            "text": ["I am Happy", "so angry", "happy again"],
            "emotion": ["joy", "anger", "joy"],
            "age": ["18-24", "25-34", "25-34"],
            "judge_emotion_match": [5, 2, 4],
        }
    )
    assert list(ui.filter_frame(df, query="happy")["text"]) == ["I am Happy", "happy again"]
    assert list(ui.filter_frame(df, emotions=["anger"])["text"]) == ["so angry"]
    assert list(
        ui.filter_frame(df, values={"age": ["25-34"]}, ranges={"judge_emotion_match": (3, 5)})["text"]
    ) == ["happy again"]
    df["verdict_stage2"] = ["natural", None, "rare but plausible"]
    assert list(ui.filter_frame(df, verdicts={"verdict_stage2": ["rare but plausible"]})["text"]) == [
        "happy again"
    ]
    assert list(ui.filter_frame(df, verdicts={"verdict_stage2": ["not validated", "natural"]})["text"]) == [
        "I am Happy",
        "so angry",
    ]


def test_spec_error_field_and_redact() -> None:
    assert ui.spec_error_field("attributes.age.items[3].p") == ("age", 3)
    assert ui.spec_error_field("scenario.activity") == ("activity", None)
    assert ui.spec_error_field("emotions[0].name") == (None, None)
    assert ui.spec_error_field(None) == (None, None)
    assert ui.redact("bad key sk-secret123 rejected", ["sk-secret123"]) == "bad key *** rejected"


# --------------------------------------------------------------------------------------------------
# Pages through AppTest
# --------------------------------------------------------------------------------------------------

APP = str(ROOT / "app.py")
# Every page script, in navigation order (the numeric prefix), as app.py lists them.
PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "app_pages").glob("[0-9]_*.py"))


@pytest.fixture
def home(dashboard_home: Path) -> Path:
    """A fresh dashboard home: the shared ``dashboard_home`` fixture (conftest)."""
    return dashboard_home


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=60)


def _texts(at) -> str:
    """Every text element of the page (markdown, captions, alerts) joined, for assertions."""
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _open(at, page: str):
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_every_page_renders_without_a_run(home: Path) -> None:
    at = _app().run()
    assert not at.exception
    for page in PAGES:
        _open(at, page)
        text = _texts(at)
        assert at.title, f"{page} has no title"
        if page in {f"app_pages/{n}.py" for n in ("5_explore", "6_evaluate", "7_real_data", "8_report")}:
            assert "No runs in the run store yet" in text, page
    # The Distributions page draws a slider per item of the selected category.
    _open(at, "app_pages/1_distributions.py")
    spec = at.session_state["spec"]
    assert len(at.slider) >= len(spec.attributes["age"].items)


def test_generate_page_shows_the_embedded_models_measured_quality(home: Path) -> None:
    from personagen_core.local import MODELS

    at = _open(_app().run(), "app_pages/4_generate.py")
    assert not at.exception
    table = next(df.value for df in at.dataframe if "validator accuracy" in df.value.columns)
    assert [m.split(" ")[0] for m in table["model"]] == list(MODELS)
    assert "judges no better than chance" in _texts(at)


def _sampled_bar(at, category: str) -> list[float]:
    import json

    chart = at.get("plotly_chart")[0]
    fig = json.loads(chart.proto.spec)
    trace = next(t for t in fig["data"] if t["name"] == "sampled")
    return list(trace["x"] if trace.get("orientation") == "h" else trace["y"])


def test_slider_changes_spec_and_sampled_marginals(home: Path) -> None:
    at = _open(_app().run(), "app_pages/1_distributions.py")
    before_spec = list(at.session_state["spec"].attributes["age"].probs)
    before_bar = _sampled_bar(at, "age")
    key = next(s.key for s in at.slider if s.key.startswith("p:") and s.key.endswith("attributes.age:0"))
    at.slider(key=key).set_value(0.6).run()
    assert not at.exception
    after = at.session_state["spec"].attributes["age"].probs
    assert after[0] == pytest.approx(0.6)
    assert sum(after) == pytest.approx(1.0)
    # The other items were rescaled proportionally.
    scale = (1 - 0.6) / (1 - before_spec[0])
    assert after[1] == pytest.approx(before_spec[1] * scale)
    after_bar = _sampled_bar(at, "age")
    assert after_bar[0] > before_bar[0] + 0.2  # 1,000 samples: the share follows the new probability
    assert after_bar[0] == pytest.approx(0.6, abs=0.06)


def test_invalid_spec_upload_shows_an_error_not_a_traceback(home: Path) -> None:
    from personagen_core.personas.spec import dump_spec, load_pack

    at = _open(_app().run(), "app_pages/1_distributions.py")
    name_before = at.session_state["spec"].name
    at.file_uploader(key="spec_upload").set_value(
        ("broken.yaml", b"name: [unclosed", "application/x-yaml")
    ).run()
    assert not at.exception
    assert any("broken.yaml is not a valid spec" in e.value for e in at.error)
    # A well-formed YAML whose probabilities do not sum to 1: the error names the field at fault.
    text = re.sub(r"p: [0-9.e-]+", "p: 0.9", dump_spec(load_pack("japan")), count=1)
    at.file_uploader(key="spec_upload").set_value(("bad_sum.yaml", text.encode(), "application/x-yaml")).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("bad_sum.yaml" in e and "items" in e for e in errors), errors
    assert at.session_state["spec"].name == name_before  # the working spec was kept


def _button(at, label: str):
    return next(b for b in at.button if b.label == label)


def _wait_for_run(home: Path, *, timeout: float = 60.0) -> dict:
    """The newest run of ``home``'s store once it has ended."""
    from personagen_core.store import RunStore
    from personagen_core.testing.serving import wait_until

    store = RunStore(home / "runs.sqlite")

    def ended() -> dict | None:
        runs = store.list_runs()
        if len(runs) and runs.iloc[0]["status"] in ("done", "failed", "stopped", "cancelled"):
            return store.run(str(runs.iloc[0]["run_id"]))
        return None

    return wait_until(ended, timeout=timeout, what="the generation to finish")


@pytest.mark.slow
def test_generation_completes_and_texts_appear_in_explore_and_evaluate(home: Path, monkeypatch) -> None:
    from personagen_core.store import RunStore
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-test-0123456789") as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
        at = _open(_app().run(), "app_pages/4_generate.py")
        assert at.radio(key="keep_backend").value == "compatible"
        at.number_input(key="keep_per_emotion").set_value(5)
        at.multiselect(key="keep_emotions").set_value(["joy", "anger"])
        at.selectbox(key="keep_verdict_reasons").set_value("rejected")
        at.slider(key="keep_temperature").set_value(0.4)
        at.number_input(key="keep_token_budget").set_value(10_000_000)
        at.run()
        assert any("Estimated" in i.value for i in at.info)
        _button(at, "Launch").click().run()
        assert not at.exception
        run = _wait_for_run(home)
        assert run["status"] == "done", run
        texts = RunStore(home / "runs.sqlite").texts(run["run_id"])
        assert len(texts) == 10 and set(texts["emotion"]) == {"joy", "anger"}
        assert srv.chat_requests  # the texts came from the test server
        # The page's verdict-reasons setting reached the run: validation asked for rejections' reasons only.
        assert run["config"]["verdict_reasons"] == "rejected"
        assert run["config"]["temperature"] == pytest.approx(0.4) and run["config"]["token_budget"] == 10_000_000
        gen = [r.body for r in srv.chat_requests if r.body and "response_format" not in r.body]
        assert gen and all(b["temperature"] == pytest.approx(0.4) for b in gen)  # the page's; spec untouched
        systems = [r.body["messages"][0]["content"] for r in srv.chat_requests
                   if r.body and "response_format" in r.body]
        assert systems and all('for an "implausible" verdict only' in m for m in systems)

    at.run()
    assert not at.exception
    assert any("10 / 10 texts · done" in p.proto.text for p in at.get("progress"))

    _open(at, "app_pages/5_explore.py")
    shown = at.dataframe[0].value
    assert set(shown["text"]) == set(texts["text"])
    at.multiselect[0].set_value(["joy"]).run()
    assert set(at.dataframe[0].value["text"]) == set(texts.loc[texts["emotion"] == "joy", "text"])

    _open(at, "app_pages/6_evaluate.py")
    _button(at, "Evaluate").click().run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    report = at.session_state["last_report"]
    assert report["datasets"][run["run_id"]]["n"] == 10
    assert report["projections"][run["run_id"]]["text"]  # the scatter's hover texts are the run's texts
    assert set(report["projections"][run["run_id"]]["text"]) == set(texts["text"])
    assert at.get("plotly_chart"), "the evaluation draws figures"
    # Coming back to the page shows the same evaluation again (memoised, not recomputed, no error).
    _open(at, "app_pages/5_explore.py")
    _open(at, "app_pages/6_evaluate.py")
    assert not at.error and at.get("plotly_chart"), [e.value for e in at.error]

    # Real data: a gold file with the wrong columns gets a clear message; a good one is read and mapped.
    _open(at, "app_pages/7_real_data.py")
    at.radio(key="keep_gold_kind").set_value("upload").run()
    at.file_uploader(key="gold_test_upload").set_value(("gold.csv", b"foo,bar\n1,2\n", "text/csv")).run()
    assert not at.exception
    assert any("gold test data" in e.value and "gold.csv" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    good = "text,label\n" + "\n".join(
        f'"{t}",{e}' for t, e in zip(texts["text"], texts["emotion"], strict=True)
    )
    at.file_uploader(key="gold_test_upload").set_value(("gold.csv", good.encode(), "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "10 texts, labels: anger, joy" in _texts(at)

    _open(at, "app_pages/8_report.py")
    assert {b.proto.label for b in at.get("download_button")} >= {
        "Download CSV",
        "Download JSONL",
        "Download PARQUET",
        "Download the HTML report",
    }


def test_wrong_api_key_shows_a_clear_error_without_the_key(home: Path, monkeypatch) -> None:
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-right-key-000") as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        at = _open(_app().run(), "app_pages/4_generate.py")
        at.text_input(key="keep_api_key").set_value("sk-wrong-key-123")
        at.number_input(key="keep_per_emotion").set_value(1)
        at.run()
        _button(at, "Launch").click().run()
        run = _wait_for_run(home)
    assert run["status"] == "failed"
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and any("rejected" in e.lower() or "api key" in e.lower() or "401" in e for e in errors), (
        errors
    )
    assert not any("sk-wrong-key-123" in e for e in errors)


def test_locked_item_keeps_its_value(home: Path) -> None:
    at = _open(_app().run(), "app_pages/1_distributions.py")
    before = list(at.session_state["spec"].attributes["age"].probs)
    lock = next(c.key for c in at.checkbox if c.key.endswith("attributes.age:1"))
    at.checkbox(key=lock).check().run()
    _open(at, "app_pages/3_preview.py")  # a lock survives a visit to another page
    _open(at, "app_pages/1_distributions.py")
    assert at.checkbox(key=lock).value is True
    slider = next(s.key for s in at.slider if s.key.endswith("attributes.age:0"))
    at.slider(key=slider).set_value(0.3).run()
    after = at.session_state["spec"].attributes["age"].probs
    assert after[1] == pytest.approx(before[1])
    assert after[0] == pytest.approx(0.3)
    assert sum(after) == pytest.approx(1.0)


def test_conditions_tables_and_rules_round_trip() -> None:
    from personagen_core.errors import SpecError
    from personagen_core.personas.spec import load_pack

    assert ui.parse_conditions("age = 6-12 | 13-17; gender = female") == {
        "age": ["6-12", "13-17"],
        "gender": ["female"],
    }
    with pytest.raises(ValueError, match="category = item"):
        ui.parse_conditions("age 6-12")
    spec = load_pack("japan")
    cat = spec.attributes["occupation"]
    rows = ui.spec_editor._frame_to_table(ui.table_frame(cat), cat.names)
    assert [r.model_dump() for r in rows] == [
        {"when": r.when, "items": [i.model_dump() for i in r.items if i.p > 0]} for r in cat.table
    ]
    frame = ui.rules_frame(spec)
    assert list(frame["when"])[0] == ui.format_conditions(spec.rules[0].when)
    # A table row that no longer sums to 1 is refused with the path of the field at fault.
    broken = spec.model_copy(deep=True)
    broken.attributes["occupation"].table[0].items[0].p += 0.5
    with pytest.raises(SpecError) as err:
        ui.revalidate(broken)
    assert err.value.path and err.value.path.startswith("attributes.occupation.table[0]")


def test_scenario_filter_limits_the_sampled_scenarios(home: Path) -> None:
    at = _open(_app().run(), "app_pages/2_scenarios.py")
    spec = at.session_state["spec"]
    activity = spec.scenario["activity"].names[0]
    at.multiselect(key="filter:0:activity").set_value([activity]).run()
    assert not at.exception
    assert at.session_state["spec"].scenario_filters["activity"] == [activity]
    next(s for s in at.selectbox if s.label == "Element").set_value("activity").run()
    bar = _sampled_bar(at, "activity")
    assert bar[0] == pytest.approx(1.0) and sum(bar[1:]) == 0  # every sampled scenario has that activity


def test_preview_validates_personas_with_the_llm(home: Path, monkeypatch) -> None:
    from personagen_core.testing.fake_openai import DefaultResponder, FakeOpenAIServer

    responder = DefaultResponder(seed=0, choices={"verdict": ["natural", "natural", "implausible"]})
    with FakeOpenAIServer(responder=responder) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-preview")
        at = _open(_app().run(), "app_pages/3_preview.py")
        assert "Not validated yet" in _texts(at)
        _button(at, "Validate with the LLM").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert srv.chat_requests
    text = _texts(at)
    assert "Stage 1:" in text and "Not validated yet" not in text
    assert at.get("plotly_chart"), "the funnel is drawn"
    # The page shows what the core computed: one card per persona, accepted or rejected at its stage.
    validated = at.session_state["preview_verdicts"][1]
    assert len(validated) == 6
    for stage in validated["dropped_stage"].dropna().unique():
        assert f"rejected at stage {stage}" in text
    assert text.count("accepted") == int(validated["kept"].sum())
    assert 0 < int(validated["kept"].sum()) < 6


def test_explore_filters_texts_by_stage_verdict(home: Path) -> None:
    from personagen_core.store import RunStore

    store = RunStore(home / "runs.sqlite")
    run_id = store.create_run(
        method="personagen",
        config={"per_emotion": 3},
        target={"joy": 3},
        spec_yaml="name: x\n",
        spec_hash="abc",
        spec_name="x",
    )
    store.add_personas(run_id, 0, [(i, {"age": "25-34"}, f"persona {i}", "at work") for i in range(3)])
    second = {0: "natural", 1: "rare but plausible", 2: "rare but plausible"}
    store.add_verdicts(
        run_id,
        [(i, 1, "m", "natural", "ok", False) for i in range(3)]
        + [(i, 2, "m", v, "why", False) for i, v in second.items()],
    )
    for i in range(3):
        store.add_text(
            run_id, emotion="joy", text=f"text {i}", text_norm=f"text {i}", persona_id=i, model="m", quota=3
        )
    store.flush()

    at = _open(_app().run(), "app_pages/5_explore.py")
    assert set(at.dataframe[0].value["text"]) == {"text 0", "text 1", "text 2"}
    assert at.multiselect(key="verdict_filter_1").value == ["natural"]
    assert "verdict_filter_3" not in [m.key for m in at.multiselect]  # stage 3 was not validated
    at.multiselect(key="verdict_filter_2").set_value(["rare but plausible"]).run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert set(shown["text"]) == {"text 1", "text 2"}
    assert set(shown["verdict_stage2"]) == {"rare but plausible"}


def test_app_command_runs_streamlit_on_the_repo_app() -> None:
    from personagen_core.cli.app_cmd import app_path, build_command

    assert app_path() == ROOT / "app.py"
    cmd = build_command(8600)
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and str(ROOT / "app.py") in cmd
    assert cmd[cmd.index("--server.port") + 1] == "8600"


def test_add_and_remove_an_item(home: Path) -> None:
    at = _open(_app().run(), "app_pages/1_distributions.py")
    n = len(at.session_state["spec"].attributes["age"].items)
    at.text_input(key="add_name:attributes.age").set_value("100+")
    at.number_input(key="add_p:attributes.age").set_value(0.1)
    next(b for b in at.button if b.key == "add:attributes.age").click().run()
    assert not at.exception
    cat = at.session_state["spec"].attributes["age"]
    assert (
        cat.names[-1] == "100+" and cat.probs[-1] == pytest.approx(0.1) and sum(cat.probs) == pytest.approx(1)
    )
    assert len(at.slider) >= n + 1
    remove = next(
        b for b in at.button if b.key and b.key.startswith("rm:") and b.key.endswith(f"attributes.age:{n}")
    )
    remove.click().run()
    cat = at.session_state["spec"].attributes["age"]
    assert "100+" not in cat.names and sum(cat.probs) == pytest.approx(1)
    # A duplicate name is refused next to the category.
    at.text_input(key="add_name:attributes.age").set_value(cat.names[0])
    next(b for b in at.button if b.key == "add:attributes.age").click().run()
    assert any("already exists" in e.value for e in at.error)


def test_generate_settings_survive_page_switches_and_a_new_session(home: Path) -> None:
    """Widget values live outside Streamlit's widget state and in the server-side draft (no API key)."""
    at = _open(_app().run(), "app_pages/4_generate.py")
    at.radio(key="keep_backend").set_value("compatible").run()
    values = {"keep_per_emotion": 3, "keep_gen_seed": 7, "keep_concurrency": 5, "keep_max_cost": 2.0,
              "keep_token_budget": 50_000}
    for key, value in values.items():
        at.number_input(key=key).set_value(value)
    at.slider(key="keep_temperature").set_value(0.7)
    at.multiselect(key="keep_emotions").set_value(["joy", "fear"])
    at.selectbox(key="keep_method").set_value("attrprompt")
    at.text_input(key="keep_base_url").set_value("http://127.0.0.1:9/v1")
    at.text_input(key="keep_model").set_value("my-model")
    at.text_input(key="keep_api_key").set_value("sk-never-on-disk-123")
    at.run()
    _open(at, "app_pages/1_distributions.py")
    _open(at, "app_pages/5_explore.py")
    _open(at, "app_pages/4_generate.py")

    def check(at, *, key_kept: bool) -> None:
        for key, value in values.items():
            assert at.number_input(key=key).value == value, key
        assert at.slider(key="keep_temperature").value == pytest.approx(0.7)
        assert at.multiselect(key="keep_emotions").value == ["joy", "fear"]
        assert at.selectbox(key="keep_method").value == "attrprompt"
        assert at.radio(key="keep_backend").value == "compatible"
        assert at.text_input(key="keep_base_url").value == "http://127.0.0.1:9/v1"
        assert at.text_input(key="keep_model").value == "my-model"
        assert at.text_input(key="keep_api_key").value == ("sk-never-on-disk-123" if key_kept else "")

    check(at, key_kept=True)
    # A new session (a reload, another tab, a restarted server) gets the same values from the draft,
    # except the API key, which never left the first session's memory.
    fresh = _open(_app().run(), "app_pages/4_generate.py")
    check(fresh, key_kept=False)
    for path in home.rglob("*"):
        if path.is_file():
            assert b"sk-never-on-disk-123" not in path.read_bytes(), path


def test_open_tabs_do_not_undo_each_others_settings(home: Path) -> None:
    """Three tabs open at once: each one's changes reach the draft, and none puts back the values it loaded
    (or its widgets' defaults) over what the others changed since: a session saves the values it changed,
    not its whole form."""
    third = _open(_app().run(), "app_pages/1_distributions.py")  # a tab on another page, open before it all
    first = _open(_app().run(), "app_pages/4_generate.py")
    first.radio(key="keep_backend").set_value("compatible").run()
    second = _open(_app().run(), "app_pages/4_generate.py")  # opened now: it loaded the same draft
    first.text_input(key="keep_model").set_value("model-from-tab-1").run()
    second.number_input(key="keep_gen_seed").set_value(42).run()  # tab 2 still holds the old model
    first.number_input(key="keep_concurrency").set_value(3).run()
    second.text_input(key="keep_model").set_value("model-from-tab-2").run()
    second.number_input(key="keep_per_emotion").set_value(4).run()
    # The third tab draws the Generate page for the first time (its widgets' defaults, as it loaded the draft
    # before any of this: the embedded backend) and changes one value: only that value is saved.
    first.text_input(key="keep_model").set_value("model-from-tab-1-again").run()
    _open(third, "app_pages/4_generate.py")
    third.number_input(key="keep_max_cost").set_value(1.5).run()
    fresh = _open(_app().run(), "app_pages/4_generate.py")
    assert fresh.text_input(key="keep_model").value == "model-from-tab-1-again"  # the last change wins
    assert fresh.number_input(key="keep_gen_seed").value == 42
    assert fresh.number_input(key="keep_concurrency").value == 3  # tab 2's later saves kept tab 1's change
    assert fresh.number_input(key="keep_per_emotion").value == 4
    assert fresh.number_input(key="keep_max_cost").value == 1.5


def test_tuned_spec_is_kept_across_pages_and_sessions(home: Path) -> None:
    at = _open(_app().run(), "app_pages/1_distributions.py")
    key = next(s.key for s in at.slider if s.key.startswith("p:") and s.key.endswith("attributes.age:0"))
    at.slider(key=key).set_value(0.55).run()
    _open(at, "app_pages/3_preview.py")
    _open(at, "app_pages/1_distributions.py")
    assert at.slider(key=key).value == pytest.approx(0.55)
    fresh = _open(_app().run(), "app_pages/1_distributions.py")
    assert fresh.session_state["spec"].attributes["age"].items[0].p == pytest.approx(0.55)
    assert fresh.slider(key=key).value == pytest.approx(0.55)


def test_tabs_tuning_different_distributions_keep_both_changes(home: Path) -> None:
    """Two tabs on the Distributions page tune different categories: the draft keeps both (a tab saves what it
    changed in the spec, not its whole spec as it loaded it)."""
    first = _open(_app().run(), "app_pages/1_distributions.py")
    second = _open(_app().run(), "app_pages/1_distributions.py")
    first.slider(key="p:0:attributes.age:0").set_value(0.41).run()
    second.selectbox(key="keep_dist_category").set_value("attributes.gender").run()
    second.slider(key="p:0:attributes.gender:0").set_value(0.37).run()
    for tab in (first, second):
        assert not tab.exception and not tab.error, [e.value for e in tab.error]
    fresh = _open(_app().run(), "app_pages/1_distributions.py")
    spec = fresh.session_state["spec"]
    assert spec.attributes["age"].items[0].p == pytest.approx(0.41)  # the first tab's change survived
    assert spec.attributes["gender"].items[0].p == pytest.approx(0.37)
    assert sum(i.p for i in spec.attributes["age"].items) == pytest.approx(1.0)
    # A conflicting edit of the same category: the later one wins whole (no blend of the two tabs).
    first.selectbox(key="keep_dist_category").set_value("attributes.gender").run()
    first.slider(key="p:0:attributes.gender:1").set_value(0.5).run()
    gender = _open(_app().run(), "app_pages/1_distributions.py").session_state["spec"].attributes["gender"]
    assert gender == first.session_state["spec"].attributes["gender"]


def test_conditional_rows_are_edited_where_they_act(home: Path) -> None:
    """Education is conditioned on age: a row is picked, its sliders change that row of the table, and the
    sampled marginal follows (the category's own items would have no effect)."""
    at = _open(_app().run(), "app_pages/1_distributions.py")
    at.selectbox(key="keep_dist_category").set_value("attributes.education").run()
    spec = at.session_state["spec"]
    cat = spec.attributes["education"]
    row = next(i for i, r in enumerate(cat.table) if r.when == {"age": ["25-34"]})
    at.selectbox(key="keep_cond_row:attributes.education").set_value(f"attributes.education@{row}").run()
    assert not at.exception
    uni = cat.names.index("university")
    before = ui.target_probs(spec, f"attributes.education@{row}")
    key = next(s.key for s in at.slider if s.key.endswith(f"attributes.education@{row}:{uni}"))
    at.slider(key=key).set_value(0.9).run()
    assert not at.exception
    new = at.session_state["spec"]
    after = ui.target_probs(new, f"attributes.education@{row}")
    assert after[uni] == pytest.approx(0.9) and sum(after) == pytest.approx(1.0)
    assert after != before and new.attributes["education"].probs == cat.probs  # the row moved, not the fallback
    # Other rows are untouched.
    assert [r.model_dump() for i, r in enumerate(new.attributes["education"].table) if i != row] == [
        r.model_dump() for i, r in enumerate(cat.table) if i != row
    ]
    import json

    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in fig["data"]]
    assert names[0].startswith("edited: age = 25-34") and "marginal (exact)" in names
    ui.revalidate(new)  # still a valid spec


def test_long_category_uses_a_searchable_table_and_labels_every_bar(home: Path) -> None:
    import json

    at = _open(_app().run(), "app_pages/1_distributions.py")
    at.selectbox(key="keep_dist_category").set_value("attributes.mbti").run()
    n = len(at.session_state["spec"].attributes["mbti"].items)
    assert n > ui.LONG_CATEGORY
    assert not [s for s in at.slider if s.key.startswith("p:")]  # no column of 32 sliders
    grids = [d.value for d in at.dataframe if list(d.value.columns) == ["item", "p", "lock"]]
    assert len(grids) == 1 and len(grids[0]) == n
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["yaxis"]["dtick"] == 1 and fig["data"][0]["orientation"] == "h"
    assert len(fig["data"][0]["y"]) == n


def test_a_filter_that_conflicts_with_rules_offers_working_fixes(home: Path) -> None:
    at = _open(_app().run(), "app_pages/2_scenarios.py")
    at.multiselect(key="filter:0:location_type").set_value(["workplace"]).run()
    assert not at.exception
    assert any("rules[11]" in e.value for e in at.error), [e.value for e in at.error]
    fix = next(b for b in at.button if b.label.startswith("Let rules[11]"))
    fix.click().run()
    assert not at.exception
    spec = at.session_state["spec"]
    assert spec.scenario_filters == {"location_type": ["workplace"]}  # the filter is kept
    assert "location_type" not in spec.rules[11].deny
    assert not any(b.label.startswith("Let rules[") for b in at.button)  # no conflict any more
    at.selectbox(key="keep_scenario_element").set_value("location_type").run()
    names = spec.scenario["location_type"].names
    bar = _sampled_bar(at, "location_type")
    assert bar[names.index("workplace")] == pytest.approx(1.0)  # every sampled scene is at a workplace


@pytest.mark.slow
def test_progress_tells_the_story_of_a_run_with_failing_calls(home: Path, monkeypatch) -> None:
    """Failing calls are counted and the latest error shown; the newest texts and the stage are visible."""
    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-story", faults=["500", "500", None, "500"]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-story")
        at = _open(_app().run(), "app_pages/4_generate.py")
        at.number_input(key="keep_per_emotion").set_value(1)
        at.multiselect(key="keep_emotions").set_value(["joy", "anger"])
        at.run()
        _button(at, "Launch").click().run()
        # The picker follows the launch at once, even before the run's thread has stored it.
        launched = at.session_state["last_run_id"]
        assert at.selectbox(key="keep_run_gen_run").value == launched
        run = _wait_for_run(home)
        assert run["run_id"] == launched and run["status"] == "done", run
    at.run()
    assert not at.exception
    text = _texts(at)
    assert "3 call(s) failed" in text and "Latest error, while" in text, text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Failing"] == "3" and int(metrics["LLM calls"]) > 3
    tail = next(d.value for d in at.dataframe if list(d.value.columns) == ["emotion", "text"])
    assert set(tail["emotion"]) == {"joy", "anger"} and len(tail) == 2
    assert "sk-story" not in text


@pytest.mark.slow
def test_progress_names_the_stage_being_worked_on(home: Path, monkeypatch) -> None:
    import time

    from personagen_core.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(api_key="sk-stage", latency=0.4) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-stage")
        at = _open(_app().run(), "app_pages/4_generate.py")
        at.number_input(key="keep_per_emotion").set_value(4)
        at.multiselect(key="keep_emotions").set_value(["joy"])
        at.run()
        _button(at, "Launch").click().run()
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            at.run()
            seen |= {c.value for c in at.caption if c.value.startswith(("Now:", "Starting"))}
            if any("generating texts" in s for s in seen):
                break
            time.sleep(0.2)
        _wait_for_run(home)
    assert any(s.startswith("Now: validating stage") for s in seen), seen  # stages 1-3 before texts
    assert any(s.startswith("Now: generating texts") for s in seen), seen

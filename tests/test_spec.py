"""Spec models: packs, canonical round trip, emotion sets and every bad-input error with its path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from personagen_core.errors import SpecError
from personagen_core.personas.spec import (
    DEFAULT_PACK,
    EMOTION_SETS,
    Category,
    Item,
    Spec,
    dump_spec,
    list_packs,
    load_pack,
    load_spec,
    pack_path,
    parse_spec,
    spec_hash,
)

TINY: dict[str, Any] = {
    "version": 1,
    "name": "tiny",
    "attributes": {
        "age": {
            "stage": 1,
            "items": [
                {"name": "child", "p": 0.2},
                {"name": "adult", "p": 0.5},
                {"name": "senior", "p": 0.2},
                {"name": "teen", "p": 0.1},
            ],
        },
        "job": {
            "stage": 1,
            "given": ["age"],
            "items": [
                {"name": "pupil", "p": 0.3},
                {"name": "lawyer", "p": 0.3},
                {"name": "retired", "p": 0.4},
            ],
            "table": [{"when": {"age": ["child"]}, "items": [{"name": "pupil", "p": 1.0}]}],
        },
    },
    "scenario": {
        "activity": {"items": [{"name": "SNS posting", "p": 0.5}, {"name": "chatting", "p": 0.5}]},
    },
    "rules": [{"name": "kids are pupils", "when": {"age": ["child"]}, "allow": {"job": ["pupil"]}}],
}


def _text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _err(data: dict[str, Any], **kw: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(_text(data), **kw)
    return info.value


def _mut(**changes: Any) -> dict[str, Any]:
    return copy.deepcopy(TINY) | changes


# ------------------------------------------------------------------------------------------ packs


def test_packs_listed_and_default_is_japan() -> None:
    assert {"japan", "united_states"} <= set(list_packs())
    assert DEFAULT_PACK == "japan"
    with pytest.raises(SpecError, match="unknown pack 'mars'"):
        load_pack("mars")


def test_japan_pack_reproduces_paper_table_one() -> None:
    spec = load_pack("japan")
    p = {k: dict(zip(c.names, c.probs, strict=True)) for k, c in spec.categories().items()}
    assert p["gender"] == {"male": 0.49, "female": 0.49, "other": 0.02}
    occ = p["occupation"]
    assert len(occ) >= 30
    assert occ["freelancer"] == pytest.approx(0.048, abs=1e-6)
    assert occ["civil servant"] == pytest.approx(0.040, abs=1e-6)
    for needed in ("homemaker", "retired", "unemployed", "university student", "elementary school student"):
        assert occ[needed] > 0
    mbti = p["mbti"]
    assert len(mbti) == 32 and {t[-1] for t in mbti} == {"A", "T"}
    assert mbti["ISFJ-A"] == pytest.approx(0.065) and mbti["ENFP-T"] == pytest.approx(0.025)
    assert len(p["prefecture"]) == 47
    assert max(p["prefecture"], key=p["prefecture"].get) == "Tokyo"
    assert spec.stage_columns(1) == ["age", "gender", "occupation", "mbti"]
    assert spec.stage_columns(2) == [
        "education",
        "prefecture",
        "setting",
        "family",
        "religion",
        "beliefs",
        "income",
    ]
    assert spec.stage_columns(3) == [
        "location_type",
        "location_detail",
        "activity",
        "interlocutor",
        "medium",
        "language_style",
    ]
    for key, cat in spec.categories().items():
        assert cat.source, f"{key} has no source"
        assert abs(sum(cat.probs) - 1) < 1e-6
    given = {k: c.given for k, c in spec.attributes.items() if c.given}
    assert given["education"] == ["age"] and given["family"] == ["age"] and given["occupation"] == ["age"]
    assert given["income"] == ["age", "occupation"] and given["beliefs"] == ["education"]
    assert spec.emotion_names == ["joy", "anger", "sadness", "pleasure", "surprise", "fear", "neutral"]
    g = spec.generation
    assert (g.temperature, g.max_sentences, g.texts_per_persona) == (1.2, 2, 1)


def test_united_states_pack_is_a_different_country() -> None:
    spec = load_pack("united_states")
    assert "state" in spec.attributes and len(spec.attributes["state"].items) == 51
    assert len(spec.attributes["mbti"].items) == 32
    assert len(spec.attributes["occupation"].items) >= 30
    assert spec.stage_columns(3) == load_pack("japan").stage_columns(3)


@pytest.mark.parametrize("name", ["japan", "united_states"])
def test_pack_file_is_canonical_so_round_trip_is_byte_identical(name: str) -> None:
    text = pack_path(name).read_text(encoding="utf-8")
    spec = load_pack(name)
    assert dump_spec(spec) == text
    assert dump_spec(parse_spec(dump_spec(spec))) == text
    assert spec_hash(spec) == spec_hash(parse_spec(text))


def test_round_trip_is_lossless_for_hand_written_spec(tmp_path: Path) -> None:
    data = _mut(scenario_filters={"activity": "SNS posting"}, emotions="carer6")
    spec = parse_spec(_text(data))
    out = tmp_path / "spec.yaml"
    out.write_text(dump_spec(spec), encoding="utf-8")
    again = load_spec(out)
    assert again == spec
    assert dump_spec(again) == dump_spec(spec)
    assert again.scenario_filters == {"activity": ["SNS posting"]}
    assert "emotions: carer6" in dump_spec(again)


def test_hash_changes_with_content() -> None:
    a = parse_spec(_text(TINY))
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"][0]["p"] = 0.25
    data["attributes"]["age"]["items"][1]["p"] = 0.45
    assert spec_hash(a) != spec_hash(parse_spec(_text(data)))
    assert len(spec_hash(a)) == 64


def test_emotion_sets() -> None:
    assert [e.name for e in EMOTION_SETS["carer6"]] == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert all(e.description for es in EMOTION_SETS.values() for e in es)
    assert parse_spec(_text(_mut(emotions="carer6"))).emotion_names[2] == "love"
    custom = parse_spec(_text(_mut(emotions=[{"name": "calm", "description": "at peace"}])))
    assert custom.emotion_names == ["calm"]
    assert "- {name: calm, description: at peace}" in dump_spec(custom)
    assert _err(_mut(emotions="sixteen")).path == "emotions"


def test_generation_defaults_and_bounds() -> None:
    spec = parse_spec(_text(TINY))
    assert spec.generation.temperature == 1.2 and spec.generation.max_tokens == 80
    assert _err(_mut(generation={"temperature": 5})).path == "generation.temperature"


# ------------------------------------------------------------------------------------------ errors


def test_negative_probability_names_item_path_and_line() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"][3]["p"] = -0.1
    err = _err(data)
    assert err.path == "attributes.age.items[3].p"
    assert "negative" in str(err) and "line" in str(err)
    assert "\n" not in str(err)


def test_sum_not_one_refused_unless_normalise() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"][0]["p"] = 0.4  # sum 1.2
    err = _err(data)
    assert err.path == "attributes.age.items"
    assert "sum to 1.2" in str(err) and "normalise" in str(err)
    spec = parse_spec(_text(data), normalise=True)
    assert sum(spec.attributes["age"].probs) == pytest.approx(1.0)
    assert spec.attributes["age"].probs[0] == pytest.approx(0.4 / 1.2)


def test_table_row_sum_checked_too() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["job"]["table"][0]["items"][0]["p"] = 0.5
    assert _err(data).path == "attributes.job.table[0].items"


def test_unknown_category_in_rule() -> None:
    data = _mut(rules=[{"when": {"agee": ["child"]}, "allow": {"job": ["pupil"]}}])
    err = _err(data)
    assert err.path == "rules[0].when.agee" and "unknown category 'agee'" in str(err)


def test_unknown_item_in_rule_target() -> None:
    data = _mut(rules=[{"when": {"age": ["child"]}, "deny": {"job": ["pupil", "astronaut"]}}])
    err = _err(data)
    assert err.path == "rules[0].deny.job[1]" and "'astronaut'" in str(err)


def test_rule_needs_allow_or_deny_and_cannot_target_its_condition() -> None:
    assert _err(_mut(rules=[{"when": {"age": ["child"]}}])).path == "rules[0]"
    assert (
        _err(_mut(rules=[{"when": {"age": ["child"]}, "deny": {"age": ["adult"]}}])).path
        == "rules[0].deny.age"
    )


def test_unknown_references_in_conditional_table() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["job"]["table"][0]["items"][0]["name"] = "astronaut"
    assert _err(data).path == "attributes.job.table[0].items[0].name"
    data = copy.deepcopy(TINY)
    data["attributes"]["job"]["given"] = ["height"]
    assert _err(data).path == "attributes.job.given[0]"
    data = copy.deepcopy(TINY)
    data["attributes"]["job"]["table"][0]["when"] = {"age": ["toddler"]}
    assert _err(data).path == "attributes.job.table[0].when.age[0]"
    data = copy.deepcopy(TINY)
    data["attributes"]["job"]["table"][0]["when"] = {"activity": ["chatting"]}
    assert _err(data).path == "attributes.job.table[0].when.activity"


def test_empty_category_and_all_zero_category() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"] = []
    assert _err(data).path == "attributes.age.items"
    data = copy.deepcopy(TINY)
    data["scenario"]["activity"]["items"] = [{"name": "x", "p": 0.0}]
    err = _err(data, normalise=True)
    assert err.path == "scenario.activity.items" and "empty" in str(err)


def test_filter_with_unknown_item_or_category() -> None:
    assert _err(_mut(scenario_filters={"activity": ["skydiving"]})).path == "scenario_filters.activity[0]"
    assert _err(_mut(scenario_filters={"weather": ["rain"]})).path == "scenario_filters.weather"


def test_typo_field_and_duplicate_item() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["itmes"] = data["attributes"]["age"]["items"]
    assert _err(data).path == "attributes.age.itmes"
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"][1]["name"] = "child"
    assert _err(data).path == "attributes.age.items[1].name"


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nattributes:\n  age: {items: [\n    {name: a, p: 1}\n", encoding="utf-8"
    )
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "broken YAML" in str(info.value) and "line" in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(SpecError, match="top level"):
        parse_spec("- just\n- a list\n")


def test_missing_file_and_wrong_version(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.yaml")
    assert _err(_mut(version=2)).path == "version"


def test_scenario_categories_get_stage_three() -> None:
    spec = parse_spec(_text(TINY))
    assert spec.scenario["activity"].stage == 3
    assert spec.category_path("activity") == "scenario.activity"
    assert _err(
        _mut(attributes={**TINY["attributes"], "x": {"stage": 3, "items": [{"name": "a", "p": 1}]}})
    ).path == ("attributes.x.stage")


def test_numeric_item_names_become_strings() -> None:
    data = copy.deepcopy(TINY)
    data["attributes"]["age"]["items"][3]["name"] = 2020
    data["rules"][0]["when"] = {"age": 2020}
    spec = parse_spec(_text(data))
    assert spec.attributes["age"].names[3] == "2020" and spec.rules[0].when == {"age": ["2020"]}
    assert dump_spec(parse_spec(dump_spec(spec))) == dump_spec(spec)


def test_with_filters_validates_and_merges() -> None:
    from personagen_core.personas.spec import with_filters

    base = parse_spec(_text(TINY))
    one = with_filters(base, {"activity": "SNS posting"})
    assert one.scenario_filters == {"activity": ["SNS posting"]} and base.scenario_filters == {}
    two = with_filters(one, {"age": ["adult", "senior"]})
    assert two.scenario_filters == {"activity": ["SNS posting"], "age": ["adult", "senior"]}
    assert with_filters(two, {"age": ["adult"]}, replace=True).scenario_filters == {"age": ["adult"]}
    with pytest.raises(SpecError) as info:
        with_filters(base, {"activity": ["chatting", "skydiving"]})
    assert info.value.path == "scenario_filters.activity[1]"


_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    names=st.lists(_NAMES, min_size=1, max_size=5, unique=True),
    weights=st.lists(st.floats(0.001, 1000, allow_nan=False), min_size=5, max_size=5),
    label=_NAMES,
)
def test_property_dump_load_is_lossless_and_stable(
    names: list[str], weights: list[float], label: str
) -> None:
    total = sum(weights[: len(names)])
    cat = Category(
        label=label,
        stage=1,
        source=label,
        items=[Item(name=n, p=w / total) for n, w in zip(names, weights[: len(names)], strict=True)],
    )
    spec = Spec(name=label, description=label, attributes={"x": cat}, scenario_filters={"x": [names[0]]})
    text = dump_spec(parse_spec(dump_spec(spec), normalise=True))
    again = parse_spec(text, normalise=True)
    assert dump_spec(again) == text
    assert again.attributes["x"].names == names and again.name == label
    assert again.attributes["x"].probs == pytest.approx(cat.probs, rel=1e-12)

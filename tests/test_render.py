"""Renderer: persona and scenario descriptions from a sampled row."""

from __future__ import annotations

import pytest
import yaml

from personagen_core.errors import SpecError
from personagen_core.personas.render import describe_persona, describe_row, describe_scenario, phrase
from personagen_core.personas.sampling import sample_personas
from personagen_core.personas.spec import load_pack, parse_spec


def _row(pack: str = "japan", seed: int = 0) -> dict[str, str]:
    return sample_personas(load_pack(pack), 1, random_state=seed).iloc[0].to_dict()


def test_persona_description_mentions_every_attribute_value() -> None:
    spec = load_pack("japan")
    row = _row()
    text = describe_persona(row, spec)
    for key in spec.stage_columns(1) + spec.stage_columns(2):
        assert row[key] in text, key
    assert text.startswith("A person aged ") and "Background: " in text and text.endswith(".")
    assert f"lives in {row['prefecture']} Prefecture" in text
    for key in spec.stage_columns(3):
        assert f"{spec.scenario[key].template.split('{')[0]}{row[key]}" not in text


def test_stage_selection() -> None:
    spec = load_pack("japan")
    row = _row(seed=3)
    base = describe_persona(row, spec, stages=(1,))
    assert row["mbti"] in base and "Background" not in base
    background = describe_persona(row, spec, stages=(2,))
    assert background.startswith("Background: ") and f"personality type {row['mbti']}" not in background
    with pytest.raises(SpecError, match="describe_scenario"):
        describe_persona(row, spec, stages=(3,))


def test_scenario_description() -> None:
    spec = load_pack("united_states")
    row = _row("united_states", seed=5)
    text = describe_scenario(row, spec)
    assert text.startswith("Scenario: location: ")
    for key in spec.stage_columns(3):
        assert row[key] in text
    assert describe_row(row, spec) == f"{describe_persona(row, spec)} {text}"


def test_missing_values_are_skipped_and_output_is_deterministic() -> None:
    spec = load_pack("japan")
    row = _row(seed=1)
    row.pop("religion")
    row["beliefs"] = float("nan")  # type: ignore[assignment]
    text = describe_persona(row, spec)
    assert "religion:" not in text and "values:" not in text
    assert text == describe_persona(row, spec)


def test_template_fallback_and_bad_template() -> None:
    data = {
        "version": 1,
        "name": "t",
        "attributes": {
            "hobby_type": {"stage": 1, "items": [{"name": "chess", "p": 1.0}]},
            "pet": {"stage": 1, "label": "favourite pet", "items": [{"name": "cat", "p": 1.0}]},
            "odd": {"stage": 2, "template": "has {nope}", "items": [{"name": "x", "p": 1.0}]},
        },
    }
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(data))
    assert info.value.path == "attributes.odd.template"
    data["attributes"]["odd"]["template"] = "has {value}"
    spec = parse_spec(yaml.safe_dump(data))
    assert phrase("hobby_type", spec.attributes["hobby_type"], "chess") == "hobby type: chess"
    assert describe_persona({"pet": "cat"}, spec, stages=(1,)) == "A person favourite pet: cat."
    assert describe_persona({"odd": "x"}, spec, stages=(2,)) == "Background: has x."
    spec.attributes["odd"].template = "has {nope}"  # edited after validation: still a clear error
    with pytest.raises(SpecError, match="template"):
        describe_persona({"odd": "x"}, spec, stages=(2,))

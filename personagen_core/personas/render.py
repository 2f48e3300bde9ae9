"""Turn a sampled persona and scenario into natural-language descriptions for prompts and previews.

Each category may carry a ``template`` in the spec (``"lives in {value} Prefecture"``); without one the
phrase is ``"<label>: <value>"``. Phrases are joined in spec order, so the same row always renders to
the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from personagen_core.errors import SpecError
from personagen_core.personas.spec import Category, Spec

__all__ = ["describe_persona", "describe_scenario", "describe_row", "phrase"]


def phrase(key: str, cat: Category, value: Any) -> str:
    """One category's phrase, e.g. ``"aged 35-44"`` or ``"religion: Buddhism"``."""
    text = str(value)
    if cat.template:
        try:
            return cat.template.format(value=text)
        except (KeyError, IndexError, ValueError) as exc:
            raise SpecError(
                f"template {cat.template!r} is not a valid '{{value}}' template ({exc})", f"{key}.template"
            ) from None
    return f"{cat.label or key.replace('_', ' ')}: {text}"


def _phrases(row: Mapping[str, Any], cats: Mapping[str, Category], keys: Iterable[str]) -> list[str]:
    out = []
    for key in keys:
        value = row.get(key)
        if value is None or (isinstance(value, float) and value != value):  # missing or NaN: skip
            continue
        out.append(phrase(key, cats[key], value))
    return out


def _sentence(parts: list[str], lead: str) -> str:
    if not parts:
        return ""
    return f"{lead}{', '.join(parts)}."


def describe_persona(row: Mapping[str, Any], spec: Spec, stages: Iterable[int] = (1, 2)) -> str:
    """Description of the persona's stage 1 (base) and/or stage 2 (background) attributes."""
    sentences = []
    for stage in stages:
        if stage not in (1, 2):
            raise SpecError(f"persona stages are 1 and 2 (got {stage}); use describe_scenario for stage 3")
        parts = _phrases(row, spec.attributes, spec.stage_columns(stage))
        lead = "A person " if stage == 1 else "Background: "
        sentences.append(_sentence(parts, lead))
    return " ".join(s for s in sentences if s)


def describe_scenario(row: Mapping[str, Any], spec: Spec) -> str:
    """Description of the stage 3 scenario (location, activity, interlocutor, medium, style)."""
    return _sentence(_phrases(row, spec.scenario, spec.scenario), "Scenario: ")


def describe_row(row: Mapping[str, Any], spec: Spec) -> str:
    """Persona (stages 1-2) and scenario (stage 3) in one text, as written by ``personagen personas``."""
    return " ".join(s for s in (describe_persona(row, spec), describe_scenario(row, spec)) if s)

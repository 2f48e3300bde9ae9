"""Ways out of a sampling conflict: when rules, conditional tables and scenario filters leave some reachable
case without any allowed value (``SamplingError``), :func:`conflict_fixes` proposes edited specs that sample
again, each tried with :func:`sampling.build_model` before it is offered.

The fixes, in this order: let the rule(s) that forbid a filtered value allow it (remove it from their ``deny``
or add it to their ``allow``), drop those rule(s) for this spec, widen a filter by one value, or remove a
filter. Only fixes that
make the spec sample are returned, so a button built on one always works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from personagen_core.errors import SamplingError, SpecError
from personagen_core.personas.sampling import build_model
from personagen_core.personas.spec import Rule, Spec

__all__ = ["Fix", "conflict", "conflict_fixes"]


@dataclass(frozen=True)
class Fix:
    """One proposed edit: what it does (``label``), its kind, and the spec that results."""

    label: str
    kind: Literal["allow_in_rule", "drop_rule", "widen_filter", "remove_filter"]
    spec: Spec


def conflict(spec: Spec) -> SamplingError | None:
    """The spec's sampling conflict, or None when it samples."""
    try:
        build_model(spec)
    except SamplingError as exc:
        return exc
    return None


def _samples(spec: Spec) -> bool:
    try:
        build_model(spec)
    except (SamplingError, SpecError):
        return False
    return True


def _rule_allowing(rule: Rule, key: str, values: list[str]) -> Rule | None:
    """``rule`` changed so that it no longer forbids ``values`` of ``key`` (None if it does not touch it)."""
    deny, allow = dict(rule.deny), dict(rule.allow)
    changed = False
    if key in deny and set(deny[key]) & set(values):
        rest = [v for v in deny[key] if v not in values]
        if rest:
            deny[key] = rest
        else:
            del deny[key]
        changed = True
    if key in allow and not set(values) <= set(allow[key]):
        allow[key] = [*allow[key], *(v for v in values if v not in allow[key])]
        changed = True
    return rule.model_copy(update={"deny": deny, "allow": allow}) if changed else None


def _name(rule: Rule, index: int) -> str:
    """As the conflict message names a rule: ``rules[11] (its name)``."""
    return f"rules[{index}] ({rule.name})" if rule.name else f"rules[{index}]"


def conflict_fixes(spec: Spec, *, max_widen: int = 3) -> list[Fix]:
    """Edited copies of ``spec`` that sample, for a spec whose sampling conflicts (``[]`` when it samples,
    or when nothing tried helps). At most ``max_widen`` widen-the-filter fixes per filter."""
    if conflict(spec) is None:
        return []
    fixes: list[Fix] = []
    filters = {k: list(v) for k, v in spec.scenario_filters.items() if v}
    for key, values in filters.items():
        edits = {i: e for i, r in enumerate(spec.rules) if (e := _rule_allowing(r, key, values)) is not None}
        # One rule at a time first; when several rules forbid the value, all of them together.
        groups = [[i] for i in edits] + ([sorted(edits)] if len(edits) > 1 else [])
        shown = " | ".join(values)
        for group in groups:
            rules = [edits[i] if i in group else r for i, r in enumerate(spec.rules)]
            candidate = spec.model_copy(update={"rules": rules})
            if _samples(candidate):
                names = " and ".join(_name(spec.rules[i], i) for i in group)
                fixes.append(Fix(f"Let {names} allow {key} = {shown}", "allow_in_rule", candidate))
        for group in groups:
            candidate = spec.model_copy(update={"rules": [r for j, r in enumerate(spec.rules) if j not in group]})
            if _samples(candidate):
                names = " and ".join(_name(spec.rules[i], i) for i in group)
                fixes.append(Fix(f"Drop {names} for this spec", "drop_rule", candidate))
    for key, values in filters.items():
        widened = 0
        for extra in spec.scenario[key].names:
            if extra in values or widened >= max_widen:
                continue
            candidate = spec.model_copy(update={"scenario_filters": {**filters, key: [*values, extra]}})
            if _samples(candidate):
                fixes.append(Fix(f"Also allow {key} = {extra} in the filter", "widen_filter", candidate))
                widened += 1
        rest = {k: v for k, v in filters.items() if k != key}
        candidate = spec.model_copy(update={"scenario_filters": rest})
        if _samples(candidate):
            fixes.append(Fix(f"Remove the filter on {key}", "remove_filter", candidate))
    return fixes

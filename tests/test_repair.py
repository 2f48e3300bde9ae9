"""Ways out of a sampling conflict (personas/repair.py): every proposed fix samples, and names what it does."""

from __future__ import annotations

from personagen_core.personas.repair import conflict, conflict_fixes
from personagen_core.personas.sampling import sample_personas
from personagen_core.personas.spec import load_pack, with_filters


def test_a_spec_that_samples_needs_no_fix() -> None:
    spec = load_pack("japan")
    assert conflict(spec) is None and conflict_fixes(spec) == []


def test_filter_conflicting_with_a_rule_offers_allow_drop_widen_and_remove() -> None:
    spec = with_filters(load_pack("japan"), {"location_type": ["workplace"]})
    err = conflict(spec)
    assert err is not None and "rules[11]" in str(err)
    fixes = conflict_fixes(spec)
    kinds = {f.kind for f in fixes}
    assert {"allow_in_rule", "drop_rule", "remove_filter"} <= kinds
    labels = [f.label for f in fixes]
    # The rule that forbids children at a workplace is named, and letting it allow the value is offered.
    assert any(lbl.startswith("Let rules[11] (children are not at a workplace") and "rules[12]" in lbl
               for lbl in labels), labels
    assert "Remove the filter on location_type" in labels
    for fix in fixes:  # every button works: the fixed spec samples, and keeps the filter unless removed
        df = sample_personas(fix.spec, 50, random_state=0)
        if fix.kind in ("allow_in_rule", "drop_rule"):
            assert set(df["location_type"]) == {"workplace"}
    allow = next(f for f in fixes if f.kind == "allow_in_rule" and "children" in f.label)  # rules 12 and 13
    rule = allow.spec.rules[11]
    assert "location_type" not in rule.deny and rule.deny["medium"] == ["email"]  # only the filtered value


def test_conflict_with_a_conditional_table_offers_the_filter_fixes() -> None:
    spec = with_filters(load_pack("japan"), {"medium": ["social media post"]})
    assert conflict(spec) is not None
    fixes = conflict_fixes(spec)
    assert fixes and all(conflict(f.spec) is None for f in fixes)
    assert any(f.kind == "widen_filter" for f in fixes)

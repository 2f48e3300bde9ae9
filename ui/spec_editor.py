"""Widgets that edit the working spec (Distributions and Scenarios pages): probabilities (sliders, the
long-category grid), conditional tables, rules, filters, emotions, and the way out of a sampling conflict.
The cached sampling behind the charts is :mod:`ui.spec_sampling`; upload and saved specs
:mod:`ui.spec_library_view`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from ui.probabilities import (
    add_item,
    format_conditions,
    parse_conditions,
    remove_item,
    renormalise,
    spec_error_field,
)
from ui.spec_sampling import _category, _spec_hash, sampled
from ui.state import _set_field_error, field_error, keep, kept, set_kept, set_spec

__all__ = [
    "LONG_CATEGORY",
    "category_editor",
    "edit_target",
    "conflict_panel",
    "emotion_editor",
    "on_filter_change",
    "revalidate",
    "rules_editor",
    "row_label",
    "rules_frame",
    "table_editor",
    "table_frame",
    "target_probs",
    "with_probs",
    "with_target_probs",
]


def with_probs(spec: Any, qualified: str, probs: Sequence[float]) -> Any:
    """A copy of ``spec`` where the items of category ``qualified`` (``section.key``) get ``probs``."""
    from personagen_core.personas.spec import Item

    section, key = qualified.split(".", 1)
    cat = getattr(spec, section)[key]
    if len(probs) != len(cat.items):
        raise ValueError(f"{qualified}: {len(probs)} probabilities for {len(cat.items)} items")
    # Copy only what changes (a deep copy of a full pack costs ~30 ms per slider move).
    new_cat = cat.model_copy(
        update={"items": [Item(name=it.name, p=float(p)) for it, p in zip(cat.items, probs, strict=True)]}
    )
    return spec.model_copy(update={section: {**getattr(spec, section), key: new_cat}})


def revalidate(spec: Any) -> Any:
    """Validate an edited spec the way a file is validated (round trip through its canonical YAML).

    Raises ``SpecError`` naming the field at fault.
    """
    from personagen_core.personas.spec import dump_spec, parse_spec

    return parse_spec(dump_spec(spec), source="the edited spec")


def _split_target(target: str) -> tuple[str, int | None]:
    """``attributes.occupation@2`` → ``("attributes.occupation", 2)``; no ``@`` → the category's own items."""
    qualified, _, row = target.partition("@")
    return qualified, (int(row) if row else None)


def target_probs(spec: Any, target: str) -> list[float]:
    """The probabilities a target edits, one per item of the category (a table row's missing items are 0)."""
    qualified, row = _split_target(target)
    cat = _category(spec, qualified)
    if row is None:
        return list(cat.probs)
    given = {it.name: it.p for it in cat.table[row].items}
    return [float(given.get(n, 0.0)) for n in cat.names]


def with_target_probs(spec: Any, target: str, probs: Sequence[float]) -> Any:
    """A copy of ``spec`` where the target (the category's items or one table row) gets ``probs``."""
    from personagen_core.personas.spec import Item

    qualified, row = _split_target(target)
    if row is None:
        return with_probs(spec, qualified, probs)
    section, key = qualified.split(".", 1)
    cat = getattr(spec, section)[key]
    if len(probs) != len(cat.items):
        raise ValueError(f"{target}: {len(probs)} probabilities for {len(cat.items)} items")
    items = [Item(name=n, p=float(p)) for n, p in zip(cat.names, probs, strict=True) if p > 0]
    table = list(cat.table)
    table[row] = table[row].model_copy(update={"items": items})
    new_cat = cat.model_copy(update={"table": table})
    return spec.model_copy(update={section: {**getattr(spec, section), key: new_cat}})


def _slider_key(target: str, index: int) -> str:
    return f"p:{st.session_state.get('spec_rev', 0)}:{target}:{index}"


def _lock_key(target: str, index: int) -> str:
    return f"lock:{st.session_state.get('spec_rev', 0)}:{target}:{index}"


def _locked(target: str, n: int) -> list[int]:
    # Locks are kept values (session only), so they survive a visit to another page.
    return [j for j in range(n) if kept(_lock_key(target, j))]


def _adopt_probs(target: str, index: int, value: float) -> None:
    spec = st.session_state["spec"]
    current = target_probs(spec, target)
    probs = renormalise(current, index, value, _locked(target, len(current)))
    st.session_state["spec"] = with_target_probs(spec, target, probs)
    for j, p in enumerate(probs):
        st.session_state[_slider_key(target, j)] = p


def _on_slide(target: str, index: int) -> None:
    _adopt_probs(target, index, st.session_state[_slider_key(target, index)])


def _grid_key(target: str) -> str:
    return f"grid:{st.session_state.get('spec_rev', 0)}:{target}:{st.session_state.get('grid_edits', 0)}"


def _on_grid_edit(target: str) -> None:
    """A cell of the long-category editor changed: locks first, then each edited probability in turn."""
    edits = (st.session_state.get(_grid_key(target)) or {}).get("edited_rows", {})
    for i, change in sorted(edits.items()):
        if "lock" in change:
            set_kept(_lock_key(target, int(i)), bool(change["lock"]), session_only=True)
    for i, change in sorted(edits.items()):
        if change.get("p") is not None:
            _adopt_probs(target, int(i), float(change["p"]))
    # A new editor key: the next run shows the renormalised values, not the stale edit.
    st.session_state["grid_edits"] = st.session_state.get("grid_edits", 0) + 1


def _apply(new_spec: Any, field_key: str) -> bool:
    """Validate ``new_spec``; adopt it (and reset the bound widgets) or record the error by field."""
    from personagen_core.errors import SpecError

    try:
        valid = revalidate(new_spec)
    except SpecError as exc:
        category, _ = spec_error_field(exc.path)
        _set_field_error(field_key, str(exc))
        if category and category in new_spec.categories() and field_key != new_spec.category_path(category):
            _set_field_error(new_spec.category_path(category), str(exc))  # also next to that category
        return False
    _set_field_error(field_key, None)
    set_spec(valid, replace=True)
    return True


def _on_remove(qualified: str, index: int) -> None:
    spec = st.session_state["spec"]
    cat = _category(spec, qualified)
    if len(cat.items) <= 1:
        _set_field_error(qualified, "A category needs at least one item.")
        return
    name = cat.items[index].name
    probs = remove_item(cat.probs, index, _locked(qualified, len(cat.items)))
    new = spec.model_copy(deep=True)
    ncat = _category(new, qualified)
    ncat.items = [it for j, it in enumerate(ncat.items) if j != index]
    for it, p in zip(ncat.items, probs, strict=True):
        it.p = p
    if not _apply(new, qualified):
        _set_field_error(qualified, f"Cannot remove {name!r}: {st.session_state['field_errors'][qualified]}")


def _on_add(qualified: str) -> None:
    from personagen_core.personas.spec import Item

    spec = st.session_state["spec"]
    cat = _category(spec, qualified)
    name = str(st.session_state.get(f"add_name:{qualified}", "")).strip()
    p = float(st.session_state.get(f"add_p:{qualified}", 0.0))
    if not name:
        _set_field_error(qualified, "Give the new item a name.")
        return
    if name in cat.names:
        _set_field_error(qualified, f"{qualified}.items: an item named {name!r} already exists.")
        return
    probs = add_item(cat.probs, p, _locked(qualified, len(cat.items)))
    new = spec.model_copy(deep=True)
    ncat = _category(new, qualified)
    ncat.items.append(Item(name=name, p=0.0))
    for it, q in zip(ncat.items, probs, strict=True):
        it.p = q
    if _apply(new, qualified):
        st.session_state[f"add_name:{qualified}"] = ""


#: Above this many items a category is edited in a searchable table instead of one slider per item.
LONG_CATEGORY = 12


def row_label(cat: Any, row: int | None) -> str:
    """How a target is named in the row picker: the table row's condition, or the fallback items."""
    if row is None:
        return "no row matches (the category's own items)"
    return format_conditions(cat.table[row].when) or "every other case (default row)"


def edit_target(spec: Any, qualified: str) -> str:
    """For a conditioned category, a picker of the row to edit (kept per category); else the category.

    Returns the target that :func:`category_editor` edits: ``qualified`` or ``qualified@row``.
    """
    cat = _category(spec, qualified)
    if not cat.given:
        return qualified
    options = [*(f"{qualified}@{i}" for i in range(len(cat.table))), qualified]
    return st.selectbox(
        f"Edit P({qualified.split('.', 1)[1]} | {', '.join(cat.given)}) when",
        options,
        format_func=lambda t: row_label(cat, _split_target(t)[1]),
        help="Conditional rows are matched in order, first match wins. The chart beside shows this row and "
        "the marginal that follows from every row.",
        **keep(f"cond_row:{qualified}", options[0], options=options),
    )


def category_editor(spec: Any, target: str) -> None:
    """Edit one target: sliders with lock and remove (a searchable table for long categories), plus an
    "add item" row. ``target`` is a category (``section.key``) or one of its table rows (``…@row``)."""
    qualified, row = _split_target(target)
    cat = _category(spec, qualified)
    if cat.source:
        st.caption(f"Source: {cat.source}")
    if cat.given and row is None:
        st.caption(
            f"Conditioned on {', '.join(cat.given)}: these probabilities are used only when no row of the "
            "conditional table matches."
        )
    field_error(qualified)
    probs = target_probs(spec, target)
    if len(cat.items) > LONG_CATEGORY:
        _grid_editor(cat, target, probs)
    else:
        for i, item in enumerate(cat.items):
            key = _slider_key(target, i)
            if key not in st.session_state:
                st.session_state[key] = float(probs[i])
            c_slider, c_lock, c_remove = st.columns([6, 2, 1], vertical_alignment="center")
            c_slider.slider(
                item.name, 0.0, 1.0, step=0.001, format="%.3f", key=key, on_change=_on_slide, args=(target, i)
            )
            c_lock.checkbox("lock", **keep(_lock_key(target, i), False, session_only=True,
                                           key=_lock_key(target, i)))
            c_remove.button(
                "✕",
                type="tertiary",
                key=f"rm:{st.session_state.get('spec_rev', 0)}:{target}:{i}",
                on_click=_on_remove,
                args=(qualified, i),
                help=f"Remove {item.name}",
            )
    c_name, c_p, c_add = st.columns([5, 3, 2], vertical_alignment="bottom")
    c_name.text_input("New item", key=f"add_name:{qualified}", placeholder="name")
    c_p.number_input("Probability", 0.0, 1.0, 0.0, step=0.01, key=f"add_p:{qualified}")
    c_add.button("Add", key=f"add:{qualified}", on_click=_on_add, args=(qualified,), icon=":material/add:")


def _grid_editor(cat: Any, target: str, probs: Sequence[float]) -> None:
    """A long category as a compact, searchable table (probability and lock per item; remove below)."""
    import pandas as pd

    qualified, _ = _split_target(target)
    frame = pd.DataFrame(
        {
            "item": cat.names,
            "p": [float(p) for p in probs],
            "lock": [bool(kept(_lock_key(target, i))) for i in range(len(cat.items))],
        }
    )
    st.caption(
        f"{len(cat.items)} items: edit a probability (the unlocked others are rescaled) or lock it. "
        "Search with the table's magnifier."
    )
    st.data_editor(
        frame,
        hide_index=True,
        width="stretch",
        height=min(35 * (len(frame) + 1) + 3, 560),
        num_rows="fixed",
        disabled=["item"],
        column_config={
            "item": st.column_config.TextColumn("item"),
            "p": st.column_config.NumberColumn("probability", min_value=0.0, max_value=1.0, step=0.001,
                                               format="%.3f"),
            "lock": st.column_config.CheckboxColumn("lock"),
        },
        key=_grid_key(target),
        on_change=_on_grid_edit,
        args=(target,),
    )
    c_pick, c_rm = st.columns([5, 2], vertical_alignment="bottom")
    index = c_pick.selectbox("Remove an item", range(len(cat.items)), format_func=lambda i: cat.names[i],
                             key=f"rm_pick:{qualified}")
    c_rm.button("Remove", key=f"rm_long:{qualified}", on_click=_on_remove, args=(qualified, index),
                icon=":material/delete:")


def table_frame(cat: Any) -> Any:
    """A category's conditional table as a wide DataFrame: ``when`` + one probability column per item."""
    import numpy as np
    import pandas as pd

    # One float matrix (NaN = not listed = 0), built at once: a per-column astype took ~25 ms on 39 items.
    index = {n: j for j, n in enumerate(cat.names)}
    probs = np.full((len(cat.table), len(cat.names)), np.nan)
    for i, row in enumerate(cat.table):
        for it in row.items:
            if it.name in index:
                probs[i, index[it.name]] = it.p
    frame = pd.DataFrame(probs, columns=list(cat.names))
    frame.insert(0, "when", pd.Series([format_conditions(r.when) for r in cat.table], dtype=object))
    return frame


def _frame_to_table(frame: Any, names: Sequence[str]) -> list[Any]:
    from personagen_core.personas.spec import TableRow

    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        when = parse_conditions(str(rec.get("when") or ""))
        items = [
            {"name": n, "p": float(rec[n])}
            for n in names
            if rec.get(n) is not None and rec[n] == rec[n] and float(rec[n]) > 0
        ]
        if not when and not items:
            continue  # an empty row added by the editor
        if not items:
            raise ValueError(f"row {i + 1} gives no probability")
        rows.append(TableRow(when=when, items=items))
    return rows


def table_editor(spec: Any, qualified: str) -> None:
    """Edit the conditional table of one category (rows matched in order, first match wins)."""
    cat = _category(spec, qualified)
    field_key = f"{qualified}.table"
    if not cat.given:
        st.caption("This category is not conditioned on another one (no `given`), so it has no table.")
        return
    st.caption(
        f"P({qualified.split('.', 1)[1]} | {', '.join(cat.given)}). Each row: a condition such as "
        f"`{cat.given[0]} = value | value`, then the probabilities (blank = 0); rows must sum to 1."
    )
    edited = st.data_editor(
        table_frame(cat),
        num_rows="dynamic",
        hide_index=True,
        key=f"table:{st.session_state.get('spec_rev', 0)}:{qualified}",
    )
    field_error(field_key)
    if st.button("Apply table", key=f"apply_table:{qualified}"):
        try:
            rows = _frame_to_table(edited, cat.names)
        except ValueError as exc:
            _set_field_error(field_key, f"{field_key}: {exc}")
            st.rerun()
        new = spec.model_copy(deep=True)
        _category(new, qualified).table = rows
        if not _apply(new, field_key):
            st.rerun()
        st.rerun()


def rules_frame(spec: Any) -> Any:
    """The whitelist rules as a DataFrame of strings: ``name, when, allow, deny``."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "name": r.name,
                "when": format_conditions(r.when),
                "allow": format_conditions(r.allow),
                "deny": format_conditions(r.deny),
            }
            for r in spec.rules
        ],
        columns=["name", "when", "allow", "deny"],
    ).astype("object")


def rules_editor(spec: Any) -> None:
    """Edit the whitelist rules: when every `when` condition holds, keep only `allow`, remove `deny`."""
    from personagen_core.personas.spec import Rule

    with st.expander(f"Whitelist rules ({len(spec.rules)})"):
        st.caption(
            "Conditions are written `category = item | item; category = item`. A rule applies when every "
            "condition holds; `allow` keeps only the listed items, `deny` removes them."
        )
        edited = st.data_editor(
            rules_frame(spec),
            num_rows="dynamic",
            hide_index=True,
            key=f"rules:{st.session_state.get('spec_rev', 0)}",
        )
        field_error("rules")
        if st.button("Apply rules", key="apply_rules"):
            try:
                rules = []
                for i, rec in enumerate(edited.to_dict("records")):
                    if not any(str(rec.get(c) or "").strip() for c in ("name", "when", "allow", "deny")):
                        continue
                    try:
                        rules.append(
                            Rule(
                                name=str(rec.get("name") or ""),
                                when=parse_conditions(str(rec.get("when") or "")),
                                allow=parse_conditions(str(rec.get("allow") or "")),
                                deny=parse_conditions(str(rec.get("deny") or "")),
                            )
                        )
                    except ValueError as exc:
                        raise ValueError(f"rules[{i}]: {exc}") from None
            except ValueError as exc:
                _set_field_error("rules", str(exc).splitlines()[0])
                st.rerun()
            new = spec.model_copy(deep=True)
            new.rules = rules
            _apply(new, "rules")
            st.rerun()


def on_filter_change(key: str) -> None:
    """Callback of a scenario filter: adopt the new filter if the spec stays valid."""
    spec = st.session_state["spec"]
    values = list(st.session_state.get(f"filter:{st.session_state.get('spec_rev', 0)}:{key}") or [])
    new = spec.model_copy(deep=True)
    if values:
        new.scenario_filters[key] = values
    else:
        new.scenario_filters.pop(key, None)
    from personagen_core.errors import SpecError

    try:
        st.session_state["spec"] = revalidate(new)
        _set_field_error(f"scenario_filters.{key}", None)
    except SpecError as exc:
        _set_field_error(f"scenario_filters.{key}", str(exc))


def emotion_editor(spec: Any, presets: dict[str, Any]) -> None:
    """Choose a preset emotion set or edit names and descriptions; applied after validation."""
    import pandas as pd

    current = next((name for name, emos in presets.items() if emos == spec.emotions), "custom")
    options = [*presets, "custom"]
    choice = st.segmented_control(
        "Label set", options, default=current, key=f"emo_set:{st.session_state.get('spec_rev', 0)}"
    )
    base = presets.get(choice, spec.emotions) if choice else spec.emotions
    frame = pd.DataFrame(
        [{"name": e.name, "description": e.description} for e in base], columns=["name", "description"]
    ).astype("object")
    edited = st.data_editor(
        frame,
        num_rows="dynamic",
        hide_index=True,
        key=f"emotions:{st.session_state.get('spec_rev', 0)}:{choice}",
    )
    field_error("emotions")
    if st.button("Apply emotions", key="apply_emotions"):
        from personagen_core.personas.spec import Emotion

        rows = [r for r in edited.to_dict("records") if str(r.get("name") or "").strip()]
        if not rows:
            _set_field_error("emotions", "emotions: give at least one emotion.")
            st.rerun()
        new = spec.model_copy(deep=True)
        new.emotions = [
            Emotion(name=str(r["name"]).strip(), description=str(r.get("description") or "").strip())
            for r in rows
        ]
        _apply(new, "emotions")
        st.rerun()
    st.caption(f"The spec currently has {len(spec.emotions)} emotions: {', '.join(spec.emotion_names)}.")


@st.cache_data(show_spinner=False, max_entries=16)
def _fixes_cached(digest: str, _spec: Any) -> tuple[str | None, list[Any]]:
    from personagen_core.personas.repair import conflict, conflict_fixes

    err = conflict(_spec)
    return (str(err), conflict_fixes(_spec)) if err is not None else (None, [])


def _apply_fix(digest: str, index: int) -> None:
    _, fixes = _fixes_cached(digest, st.session_state["spec"])
    if index < len(fixes):
        _apply(fixes[index].spec, "conflict")


def conflict_panel(spec: Any, n: int = 1000, seed: int = 0) -> bool:
    """When rules, tables and filters leave a case without any value, show the conflict and one button per
    fix that makes the spec sample again (computed by ``personas.repair``). Returns whether it conflicts.

    The check is the page's own cached sampling (``n``, ``seed``: pass the chart's), so a spec that
    samples costs nothing extra here.
    """
    from personagen_core.errors import SamplingError

    try:
        sampled(spec, n, seed)
        return False
    except SamplingError:
        pass
    digest = _spec_hash(spec)
    message, fixes = _fixes_cached(digest, spec)
    if message is None:
        return False
    with st.container(border=True):
        st.error(message, icon=":material/block:")
        if fixes:
            st.caption("Ways out (each one was tried and makes the spec sample again):")
            for i, fix in enumerate(fixes):
                st.button(fix.label, key=f"fix:{digest[:12]}:{i}", on_click=_apply_fix, args=(digest, i),
                          icon=":material/build:")
        else:
            st.caption("No single rule or filter change resolves it; edit the rules or tables below.")
        field_error("conflict")
    return True



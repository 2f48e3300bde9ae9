"""Distributions: tune every attribute category with sliders; compare spec and sampled marginals."""

from __future__ import annotations

import functools

import streamlit as st

import ui
from personagen_core.personas import spec as spec_mod

ui.page_title("Distributions")

st.caption(
    "Each slider is one item's probability. Moving it rescales the unlocked items of the category "
    "so the distribution stays valid; lock an item to keep its value."
)

spec = ui.current_spec()

# ---- pack / load / save ------------------------------------------------------------------------------
c_pack, c_upload, c_save = st.columns([2, 3, 2])
with c_pack:
    packs = spec_mod.list_packs()
    pack = st.selectbox("Pack", packs, **ui.keep("pack", spec_mod.DEFAULT_PACK, options=packs))
    if st.button("Load pack", icon=":material/inventory_2:"):
        with ui.error_boundary("loading the pack"):
            ui.set_spec(spec_mod.load_pack(pack), replace=True)
            st.rerun()
with c_upload:
    upload = st.file_uploader("Load a spec (YAML)", type=["yaml", "yml"], key="spec_upload")
    ui.handle_spec_upload(upload, spec_mod)
with c_save:
    # Deferred (the YAML dump takes ~0.1 s), but bound to this run's spec object: the callable runs later,
    # outside the session, where st.session_state is not available.
    st.download_button(
        "Download spec (YAML)",
        functools.partial(spec_mod.dump_spec, ui.current_spec()),
        file_name=f"{spec.name}.yaml",
        mime="application/x-yaml",
        icon=":material/download:",
    )
    st.caption(f"Spec `{ui.current_spec().name}` v{ui.current_spec().version} · auto-saved as the draft")

with st.expander("Saved specs", icon=":material/bookmarks:"):
    ui.spec_library_panel()

ui.conflict_panel(ui.current_spec(), int(ui.kept("dist_n", 1000)), int(ui.kept("dist_seed", 0)))
spec = ui.current_spec()
categories = ui.category_options(spec)

# ---- the probabilities of one category (or of one row of its conditional table) -------------------------
left, right = st.columns([3, 4], gap="large")
with left:
    key = st.selectbox(
        "Category", list(categories), format_func=lambda k: categories[k],
        **ui.keep("dist_category", next(iter(categories)), options=categories),
    )
    target = ui.edit_target(spec, key)
    ui.category_editor(spec, target)

# ---- what the spec gives: the edited probabilities beside the marginals they lead to -------------------
with right:
    c_n, c_seed = st.columns(2)
    n = c_n.number_input("Personas sampled", 100, 20_000, step=100, **ui.keep("dist_n", 1000))
    seed = c_seed.number_input("Seed", 0, 2**31 - 1, **ui.keep("dist_seed", 0))
    with ui.error_boundary("sampling"):
        spec = ui.current_spec()
        df = ui.sampled(spec, int(n), int(seed))
        summary = ui.marginals(spec, int(n), int(seed))
        qualified, _, row = target.partition("@")
        cat = spec.categories()[qualified.split(".", 1)[1]]
        row_probs = ui.target_probs(spec, target) if cat.given else None
        row_name = ui.row_label(cat, int(row) if row else None) if cat.given else ""
        st.plotly_chart(
            ui.marginal_figure(summary, key, categories[key], row=row_probs, row_label=f"edited: {row_name}"),
            key="dist_chart",
        )
        st.caption(
            "Marginals are measured after conditional tables and whitelist rules"
            + (": for a conditioned category the orange bars are the row being edited, the green ones the "
               "marginal that follows from every row." if cat.given else ".")
        )
        with st.expander("Preview of sampled personas"):
            st.dataframe(df.head(10), hide_index=True)

# ---- the whole conditional table, full width ---------------------------------------------------------
if ui.has_table(spec, key):
    st.subheader("Conditional table")
    ui.table_editor(spec, key)

ui.rules_editor(ui.current_spec())

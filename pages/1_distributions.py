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
    pack = st.selectbox(
        "Pack", packs, index=packs.index(spec_mod.DEFAULT_PACK) if spec_mod.DEFAULT_PACK in packs else 0
    )
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
        functools.partial(spec_mod.dump_spec, spec),
        file_name=f"{spec.name}.yaml",
        mime="application/x-yaml",
        icon=":material/download:",
    )
    st.caption(f"Spec `{spec.name}` v{spec.version}")

spec = ui.current_spec()
categories = ui.category_options(spec)

# ---- sliders of one category -------------------------------------------------------------------------
left, right = st.columns([3, 4], gap="large")
with left:
    key = st.selectbox(
        "Category", list(categories), format_func=lambda k: categories[k],
        **ui.keep("dist_category", next(iter(categories)), options=categories),
    )
    ui.category_editor(spec, key)
    if ui.has_table(spec, key):
        with st.expander("Conditional table"):
            ui.table_editor(spec, key)

# ---- spec vs sampled marginals -----------------------------------------------------------------------
with right:
    c_n, c_seed = st.columns(2)
    n = c_n.number_input("Personas sampled", 100, 20_000, step=100, **ui.keep("dist_n", 1000))
    seed = c_seed.number_input("Seed", 0, 2**31 - 1, **ui.keep("dist_seed", 0))
    with ui.error_boundary("sampling"):
        df = ui.sampled(ui.current_spec(), int(n), int(seed))
        summary = ui.marginals(ui.current_spec(), int(n), int(seed))
        st.plotly_chart(ui.marginal_figure(summary, key, categories[key]), key="dist_chart")
        st.caption("Sampled marginals are measured after conditional tables and whitelist rules.")
        with st.expander("Preview of sampled personas", expanded=True):
            st.dataframe(df.head(10), hide_index=True)

ui.rules_editor(ui.current_spec())

"""Explore: browse and search the generated texts with their persona and scenario."""

from __future__ import annotations

import streamlit as st

import ui

ui.page_title("Explore")

run_id = ui.run_picker()
texts = ui.texts_with_scores(run_id)
if len(texts) == 0:
    st.info("This run has no accepted text yet.")
    st.stop()

c_search, c_emotion = st.columns([3, 2])
query = c_search.text_input("Search the texts", placeholder="word or phrase", **ui.keep("explore_query", ""))
emotions = sorted(texts["emotion"].astype(str).unique())
# Kept per run: another run has other emotions, and its own choice.
chosen = c_emotion.multiselect("Emotion", emotions, **ui.keep(f"explore_emotions:{run_id}", emotions, options=emotions,
                                                              key="explore_emotions"))

verdicts = ui.verdict_filters(texts)
values, ranges = ui.attribute_filters(texts)
view = ui.filter_frame(texts, query=query, emotions=chosen, values=values, ranges=ranges, verdicts=verdicts)
st.caption(f"{len(view)} of {len(texts)} texts · select a row to see its persona card")
event = st.dataframe(
    view, hide_index=True, on_select="rerun", selection_mode="single-row", key="explore_table"
)
rows = event.selection.rows if event is not None else []
if rows:
    ui.text_card(view.iloc[rows[0]].to_dict())

"""PersonaGen dashboard entry point: ``streamlit run app.py`` (or ``personagen app``).

A multipage app built with ``st.navigation``; each page is one short script in ``pages/`` that reads
state, calls ``personagen_core`` and draws. Shared widgets and state plumbing live in the ``ui`` package.
"""

from __future__ import annotations

import os

import streamlit as st

# Nothing is ever fetched from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# llama.cpp's OpenMP threads spin-wait by default, which starves everything else on a small machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

st.set_page_config(page_title="PersonaGen", page_icon=":material/diversity_3:", layout="wide")

PAGES = [
    st.Page("pages/1_distributions.py", title="Distributions", icon=":material/tune:", default=True),
    st.Page("pages/2_scenarios.py", title="Scenarios & emotions", icon=":material/theater_comedy:"),
    st.Page("pages/3_preview.py", title="Persona preview", icon=":material/badge:"),
    st.Page("pages/4_generate.py", title="Generate", icon=":material/play_circle:"),
    st.Page("pages/5_explore.py", title="Explore", icon=":material/search:"),
    st.Page("pages/6_evaluate.py", title="Evaluate", icon=":material/insights:"),
    st.Page("pages/7_real_data.py", title="Real data", icon=":material/dataset:"),
    st.Page("pages/8_report.py", title="Report & export", icon=":material/download:"),
]

page = st.navigation(PAGES)
st.sidebar.caption("PersonaGen · persona-based synthetic emotion data")
page.run()

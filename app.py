"""PersonaGen dashboard entry point: ``streamlit run app.py`` (or ``personagen app``).

A multipage app built with ``st.navigation``; each page is one short script in ``app_pages/`` that reads
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

# The page scripts live in app_pages/, not pages/: a pages/ folder beside app.py switches Streamlit to its
# older folder-based navigation for a session whose first request is a deep link (/evaluate), which then
# runs that page alone and lists the raw file names. Explicit url paths keep the links stable.
PAGES = [
    st.Page(
        "app_pages/1_distributions.py", title="Distributions", icon=":material/tune:", url_path="distributions",
        default=True,
    ),
    st.Page("app_pages/2_scenarios.py", title="Scenarios & emotions", icon=":material/theater_comedy:", url_path="scenarios"),
    st.Page("app_pages/3_preview.py", title="Persona preview", icon=":material/badge:", url_path="preview"),
    st.Page("app_pages/4_generate.py", title="Generate", icon=":material/play_circle:", url_path="generate"),
    st.Page("app_pages/5_explore.py", title="Explore", icon=":material/search:", url_path="explore"),
    st.Page("app_pages/6_evaluate.py", title="Evaluate", icon=":material/insights:", url_path="evaluate"),
    st.Page("app_pages/7_real_data.py", title="Real data", icon=":material/dataset:", url_path="real_data"),
    st.Page("app_pages/8_report.py", title="Report & export", icon=":material/download:", url_path="report"),
]

page = st.navigation(PAGES)
st.sidebar.caption("PersonaGen · persona-based synthetic emotion data")
page.run()

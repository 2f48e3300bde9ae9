"""Evaluation: embeddings, projections, diversity and real-data metrics, classifiers, judge, figures, report.

* :mod:`.embeddings` – all-MiniLM-L6-v2 embeddings with an on-disk cache;
* :mod:`.metrics` – diversity and real-data metrics as plain functions on arrays (docs/METRICS.md);
* :mod:`.classify` – LightGBM separability and train-on-synthetic / test-on-real;
* :mod:`.projection` – t-SNE / UMAP; :mod:`.gold` – gold datasets and label maps; :mod:`.judge` – LLM judge;
* :mod:`.suite` – the whole evaluation as one call (:func:`evaluate`) returning a report dict;
* :mod:`.figures` – plotly figures from a report; :mod:`.report` – the self-contained HTML report.
"""

from __future__ import annotations

from personagen_core.evaluation.suite import *  # noqa: F403
from personagen_core.evaluation.suite import __all__ as _suite_all

__all__ = [*_suite_all]

"""Shared widgets and state plumbing for the PersonaGen dashboard (UI only; no business logic).

``personagen_core`` stays free of Streamlit; the pages (``app_pages/*.py``) call the core and draw with the
helpers re-exported here:

* :mod:`ui.probabilities` – pure functions (no Streamlit) that keep a distribution valid while sliders
  move, parse table cells, locate a ``SpecError`` field, redact secrets;
* :mod:`ui.state` – the working spec, the run store, field errors, kept widget values, error boundary;
* :mod:`ui.spec_editor` – sliders, tables, rules, filters and emotions of the spec, sampling conflicts;
* :mod:`ui.spec_sampling` – the spec's categories and the cached sampling behind the charts;
* :mod:`ui.spec_library_view` – spec upload and the saved-specs panel;
* :mod:`ui.settings_fields` – where each run setting lives on the Generate page (and error hints);
* :mod:`ui.run_browser` – the run picker, a run's texts, text filters and cards, exports;
* :mod:`ui.llm_form` – the LLM backend form and the ``LLMSettings`` it makes;
* :mod:`ui.run_jobs` – background generation threads (launch, resume, the process-wide registry);
* :mod:`ui.run_view` – one run's live progress, cancel/resume, its settings and a diff against another;
* :mod:`ui.preview` – persona cards and stage verdicts;
* :mod:`ui.evaluation_view` – memoised evaluation, its tables and figures;
* :mod:`ui.gold_view` – gold data inputs, the label map editor, Tables VI-VII.
"""

from __future__ import annotations

from ui.evaluation_view import *  # noqa: F403
from ui.evaluation_view import __all__ as _evaluation_view_all
from ui.gold_view import *  # noqa: F403
from ui.gold_view import __all__ as _gold_view_all
from ui.llm_form import *  # noqa: F403
from ui.llm_form import __all__ as _llm_form_all
from ui.preview import *  # noqa: F403
from ui.preview import __all__ as _preview_all
from ui.probabilities import *  # noqa: F403
from ui.probabilities import __all__ as _probabilities_all
from ui.run_browser import *  # noqa: F403
from ui.run_browser import __all__ as _run_browser_all
from ui.run_jobs import *  # noqa: F403
from ui.run_jobs import __all__ as _run_jobs_all
from ui.run_view import *  # noqa: F403
from ui.run_view import __all__ as _run_view_all
from ui.spec_editor import *  # noqa: F403
from ui.spec_editor import __all__ as _spec_editor_all
from ui.spec_library_view import *  # noqa: F403
from ui.spec_library_view import __all__ as _spec_library_view_all
from ui.spec_sampling import *  # noqa: F403
from ui.spec_sampling import __all__ as _spec_sampling_all
from ui.state import *  # noqa: F403
from ui.state import __all__ as _state_all

__all__ = [
    *_probabilities_all,
    *_state_all,
    *_spec_editor_all,
    *_spec_sampling_all,
    *_spec_library_view_all,
    *_llm_form_all,
    *_run_browser_all,
    *_run_jobs_all,
    *_run_view_all,
    *_preview_all,
    *_evaluation_view_all,
    *_gold_view_all,
]

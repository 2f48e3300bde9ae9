"""Generation: LLM validation of stages 1-3 and the stage-4 texts, with exact quotas and budgets.

* :mod:`.llm` – the async client over the openai SDK (retries, limits, structured outputs, transports);
* :mod:`.prompts` – validation, generation and judge prompts and their schemas and grammars;
* :mod:`.checks` – stage-4 output checks (refusal, sentences, echo, language, near-duplicates);
* :mod:`.pricing` – model prices, cost estimate and actual cost;
* :mod:`.pipeline` – the public entry points: run, resume, estimate, validate a persona table;
* ``_validation`` and ``_scheduler`` – the verdict cache and candidate supply, and one run session's workers.
"""

from __future__ import annotations

from personagen_core.generation.pipeline import *  # noqa: F403
from personagen_core.generation.pipeline import __all__ as _pipeline_all

__all__ = [*_pipeline_all]

"""Generation: LLM validation of stages 1-3 and the stage-4 texts, with exact quotas and budgets.

* :mod:`.vocabulary` – the words of generation: methods, verdicts, default model and concurrency;
* :mod:`.run_config` – :class:`GenerationConfig` and its resolution against a spec (emotions, stages, quota);
* :mod:`.llm` – the async client over the openai SDK (retries, limits, structured outputs, transports);
* :mod:`.prompts` – validation, generation and judge prompts and their schemas and grammars;
* :mod:`.checks` – stage-4 output checks (refusal, sentences, echo, language, near-duplicates);
* :mod:`.pricing` – model prices, cost estimate and actual cost;
* :mod:`.pipeline` – the public entry points: run, resume, estimate, validate a persona table;
* ``_validation`` and ``_scheduler`` – the verdict cache and candidate supply, and one run session's workers.

The pipeline's names are importable from here; they load on first use, so importing a light submodule
(``vocabulary``) does not load the LLM client.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "METHODS",
    "RESUME_OVERRIDES",
    "VERDICTS",
    "GenerationConfig",
    "ProgressEvent",
    "RunSummary",
    "aresume_generation",
    "arun_generation",
    "avalidate_personas",
    "emotions_of",
    "estimate_cost",
    "funnel",
    "resolve_validation",
    "resume_generation",
    "run_generation",
    "stages_of",
    "stored_llm_settings",
    "targets_of",
    "validate_personas",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'personagen_core.generation' has no attribute {name!r}")
    value = getattr(importlib.import_module("personagen_core.generation.pipeline"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

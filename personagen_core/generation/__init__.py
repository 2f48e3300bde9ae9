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
from pathlib import Path
from typing import Any

_PIPELINE = "personagen_core.generation.pipeline"


def __getattr__(name: str) -> Any:
    if (Path(__file__).parent / f"{name}.py").is_file():  # a submodule (``from ... import vocabulary``)
        return importlib.import_module(f"{__name__}.{name}")
    # The pipeline's public names (its ``__all__``), loaded on first use.
    pipeline = importlib.import_module(_PIPELINE)
    if name.startswith("__") or name not in pipeline.__all__:
        raise AttributeError(f"module 'personagen_core.generation' has no attribute {name!r}")
    value = getattr(pipeline, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(importlib.import_module(_PIPELINE).__all__)

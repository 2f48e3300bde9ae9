"""PersonaGen: persona-based synthetic emotion data with multi-stage LLM conditioning.

The public API is re-exported here; each name is imported on first use (PEP 562), so ``import
personagen_core`` stays cheap and the heavy stacks (torch, llama.cpp, LightGBM) load only when needed.
Subpackages hold one domain each (``personas``, ``generation``, ``evaluation``, ``local``, ``testing``)
beside the run ``store``, ``export``, ``paths`` and ``errors``; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from personagen_core import errors as _errors
from personagen_core.errors import (
    BudgetExceeded,
    DataError,
    LLMAuthError,
    LLMConnectionError,
    LLMEndpointError,
    LLMError,
    LLMResponseError,
    LocalModelError,
    PersonaGenError,
    SamplingError,
    SpecError,
    StoreError,
)

try:
    __version__ = version("personagen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY: dict[str, str] = {
    # spec and sampling (stages 1-3)
    "Spec": "personas.spec",
    "EMOTION_SETS": "personas.spec",
    "DEFAULT_PACK": "personas.spec",
    "load_spec": "personas.spec",
    "parse_spec": "personas.spec",
    "dump_spec": "personas.spec",
    "spec_hash": "personas.spec",
    "load_pack": "personas.spec",
    "list_packs": "personas.spec",
    "with_filters": "personas.spec",
    "sample_personas": "personas.sampling",
    "build_model": "personas.sampling",
    "marginal_summary": "personas.sampling",
    "describe_persona": "personas.render",
    "describe_scenario": "personas.render",
    # LLM access
    "LLMSettings": "generation.llm",
    "LLMClient": "generation.llm",
    "Completion": "generation.llm",
    "LocalModelPool": "local",
    "FakeOpenAIServer": "testing.fake_openai",
    # generation and the run store
    "RunStore": "store",
    "GenerationConfig": "generation.pipeline",
    "ProgressEvent": "generation.pipeline",
    "RunSummary": "generation.pipeline",
    "run_generation": "generation.pipeline",
    "resume_generation": "generation.pipeline",
    "validate_personas": "generation.pipeline",
    "estimate_cost": "generation.pipeline",
    "export_run": "export",
    # evaluation
    "Embedder": "evaluation.embeddings",
    "EvaluationSettings": "evaluation.suite",
    "evaluate": "evaluation.suite",
    "load_dataset": "evaluation.gold",
    "write_report": "evaluation.report",
}

__all__ = [
    *_errors.__all__,
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'personagen_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"personagen_core.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

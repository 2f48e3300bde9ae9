"""PersonaGen: persona-based synthetic emotion data with multi-stage LLM conditioning.

The public API is re-exported here; each name is imported on first use (PEP 562), so ``import
personagen_core`` stays cheap and the heavy stacks (torch, llama.cpp, LightGBM) load only when needed.
Modules hold one concept each; see docs/ARCHITECTURE.md.
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
    "Spec": "spec",
    "EMOTION_SETS": "spec",
    "DEFAULT_PACK": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "dump_spec": "spec",
    "spec_hash": "spec",
    "load_pack": "spec",
    "list_packs": "spec",
    "with_filters": "spec",
    "sample_personas": "sampling",
    "build_model": "sampling",
    "marginal_summary": "sampling",
    "describe_persona": "render",
    "describe_scenario": "render",
    # LLM access
    "LLMSettings": "llm",
    "LLMClient": "llm",
    "Completion": "llm",
    "LocalModelPool": "local_llm",
    "FakeOpenAIServer": "fake_openai",
    # generation and the run store
    "RunStore": "store",
    "GenerationConfig": "pipeline",
    "ProgressEvent": "pipeline",
    "RunSummary": "pipeline",
    "run_generation": "pipeline",
    "resume_generation": "pipeline",
    "validate_personas": "pipeline",
    "estimate_cost": "pipeline",
    "export_run": "export",
    # evaluation
    "Embedder": "embeddings",
    "EvaluationSettings": "evaluation",
    "evaluate": "evaluation",
    "load_dataset": "gold",
    "write_report": "report",
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

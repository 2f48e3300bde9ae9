"""The embedded offline LLM: bundled GGUF models run in process with llama-cpp-python.

* :mod:`.models` – the registry of bundled models, joining and verifying their files, measured quality;
* :mod:`.runtime` – a loaded model answering OpenAI request bodies, and the per-process pool;
* :mod:`.transport` – the httpx transport that lets the openai SDK talk to a loaded model.

Measured figures are in ``docs/LOCAL_LLM.md`` and ``model_quality.json``.
"""

from __future__ import annotations

from personagen_core.local.models import *  # noqa: F403
from personagen_core.local.models import __all__ as _models_all
from personagen_core.local.runtime import *  # noqa: F403
from personagen_core.local.runtime import __all__ as _runtime_all
from personagen_core.local.transport import *  # noqa: F403
from personagen_core.local.transport import __all__ as _transport_all

__all__ = [*_models_all, *_runtime_all, *_transport_all]

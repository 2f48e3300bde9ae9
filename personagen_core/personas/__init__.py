"""The persona engine (stages 1-3 without the LLM): the spec a user edits, seeded sampling, rendering.

* :mod:`.spec` – pydantic models of the versioned YAML spec; load, dump, hash; shipped packs (``packs/``);
* :mod:`.sampling` – compiled, vectorised sampling of stage 1-3 attributes under rules and filters;
* :mod:`.render` – a sampled row as the natural-language persona and scenario the prompts use.
"""

from __future__ import annotations

from personagen_core.personas.render import describe_persona, describe_row, describe_scenario
from personagen_core.personas.sampling import *  # noqa: F403
from personagen_core.personas.sampling import __all__ as _sampling_all
from personagen_core.personas.spec import *  # noqa: F403
from personagen_core.personas.spec import __all__ as _spec_all

__all__ = [*_spec_all, *_sampling_all, "describe_persona", "describe_row", "describe_scenario"]

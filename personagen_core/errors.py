"""One exception hierarchy for PersonaGen.

Every error the library raises on bad input derives from :class:`PersonaGenError`, so the CLI and the
dashboard can show a one-paragraph message instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BudgetExceeded",
    "DataError",
    "LLMAuthError",
    "LLMConnectionError",
    "LLMEndpointError",
    "LLMError",
    "LLMResponseError",
    "LocalModelError",
    "PersonaGenError",
    "SamplingError",
    "SpecError",
    "StoreError",
]


class PersonaGenError(Exception):
    """Base class of every error PersonaGen raises on purpose.

    ``settings`` names the settings the message is about (field names of ``GenerationConfig`` or
    ``LLMSettings``, e.g. ``("max_cost",)``). The message itself speaks of settings ("the cost limit"); each
    shell adds where to change them: the CLI its flag, the dashboard its field.
    """

    def __init__(self, *args: object, settings: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.settings: tuple[str, ...] = tuple(settings)


class SpecError(PersonaGenError):
    """A spec is invalid. ``path`` is the dotted field path at fault, e.g. ``attributes.age.items[3].p``."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SamplingError(PersonaGenError):
    """Rules, conditional tables or filters leave a category with no reachable value."""


class LLMError(PersonaGenError):
    """An LLM endpoint failed in a way retries did not fix."""


class LLMAuthError(LLMError):
    """The endpoint rejected the credentials (HTTP 401/403)."""


class LLMConnectionError(LLMError):
    """The endpoint could not be reached."""


class LLMResponseError(LLMError):
    """The endpoint answered, but not with something usable (bad JSON, wrong schema)."""


class LLMEndpointError(LLMError):
    """The endpoint cannot work: calls keep failing for the same reason (model not found, HTML instead of the
    API, answers that never match the schema, ...). The message names the endpoint's last error and what to
    change; a run stops at once, resumable, instead of spending calls on it."""


class BudgetExceeded(PersonaGenError):
    """A cost, token or attempt budget was reached; the run stops cleanly and stays resumable."""


class StoreError(PersonaGenError):
    """The run store cannot be read or written, or a run id does not exist."""


class DataError(PersonaGenError):
    """An input data file (gold set, CSV of texts) is unreadable or lacks a needed column."""


class LocalModelError(PersonaGenError):
    """The embedded model or its runtime is missing or corrupt."""

"""Where each run setting lives in the dashboard (no streamlit import: the test of settings reach and the
error display both read it).

The core's errors and stop messages name settings ("the cost limit"; ``PersonaGenError.settings`` holds
their field names); the dashboard adds the field that changes them, as the CLI adds its flag
(``personagen_core.cli.generate_cmds.SETTING_FLAGS``). tests/test_settings_reach.py checks that every field
of ``GenerationConfig`` and ``LLMSettings`` is here or in :data:`NOT_IN_DASHBOARD`, and that each widget
exists on the Generate page.
"""

from __future__ import annotations

from typing import Any

from personagen_core.generation.vocabulary import INTERNAL_SETTINGS

__all__ = ["LIMIT_SETTINGS", "NOT_IN_DASHBOARD", "SETTING_FIELDS", "setting_hint", "stop_hint"]

#: Run setting (``GenerationConfig`` / ``LLMSettings`` field) -> (widget key on the Generate page, label).
#: A key ending in ``*`` is a prefix (the widget's key carries a variant, e.g. the validator model).
SETTING_FIELDS: dict[str, tuple[str, str]] = {
    "method": ("keep_method", "Method"),
    "emotions": ("keep_emotions", "Emotions"),
    "per_emotion": ("keep_per_emotion*", "Texts per emotion"),
    "seed": ("keep_gen_seed", "Seed"),
    "stages": ("keep_stages", "Conditioning stages"),
    "validate_": ("keep_llm_validation_*", "LLM validation (stages 1-3)"),
    "validation_batch": ("keep_validation_batch", "Candidates per validation call"),
    "verdict_reasons": ("keep_verdict_reasons", "Reasons of validation verdicts"),
    "texts_per_persona": ("keep_texts_per_persona", "Texts per persona"),
    "temperature": ("keep_temperature", "Temperature"),
    "max_attempts": ("keep_max_attempts", "Attempt limit"),
    "max_cost": ("keep_max_cost", "Max cost (USD)"),
    "token_budget": ("keep_token_budget", "Token budget"),
    "near_duplicate_threshold": ("keep_near_duplicate_threshold", "Near-duplicate threshold"),
    "backend": ("keep_backend", "Backend"),
    "base_url": ("keep_base_url", "Base URL"),
    "api_key": ("keep_api_key", "API key"),
    "model": ("keep_model", "Model"),
    "models": ("keep_model_*", "Model per stage"),
    "local_model": ("keep_local_model", "Embedded model"),
    "concurrency": ("keep_concurrency", "Concurrency"),
    "max_retries": ("keep_max_retries", "Retries per call"),
    "timeout": ("keep_timeout", "Timeout per call"),
    "rpm": ("keep_rpm", "Requests per minute"),
    "tpm": ("keep_tpm", "Tokens per minute"),
    "server": ("keep_server", "Server kind"),
    "structured": ("keep_structured", "Structured output"),
    "give_up_after": ("keep_give_up_after", "Give up after failed calls"),
    "endpoints": ("keep_several_endpoints", "Several endpoints"),
}

#: Run settings without a field on the Generate page, and why.
NOT_IN_DASHBOARD: dict[str, str] = dict(INTERNAL_SETTINGS)

#: Stop reasons that are limits -> the setting that raises each (``max_tokens``: the token budget's stop
#: reason in runs stored by older versions).
LIMIT_SETTINGS = {"max_cost": "max_cost", "token_budget": "token_budget", "max_tokens": "token_budget",
                  "max_attempts": "max_attempts"}


def setting_hint(exc: Any) -> str:
    """The dashboard's addition to a core error that names settings: the fields that change them."""
    labels = [SETTING_FIELDS[s][1] for s in getattr(exc, "settings", ()) if s in SETTING_FIELDS]
    return f" (the Generate page's {' / '.join(f'*{x}*' for x in dict.fromkeys(labels))})" if labels else ""


def stop_hint(stop_reason: str | None) -> str:
    """For a run stopped at a limit: which field to raise before resuming ('' for other stops)."""
    setting = LIMIT_SETTINGS.get(stop_reason or "")
    if setting is None:
        return ""
    return f" Raise *{SETTING_FIELDS[setting][1]}* on this page, then Resume (it replaces the stored limit)."

"""The words of generation, each defined once: methods, verdicts, verdict-reason modes, default model and
concurrency. Standard library only, so the CLI builds its option choices from here without loading the LLM
client (the CLI starts fast); the modules that use these words re-export them (:mod:`prompts`,
:mod:`run_config`, :mod:`llm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from personagen_core.generation.checks import CheckLevel

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MODEL",
    "ERROR_VERDICT",
    "FUNNEL_VERDICTS",
    "INTERNAL_SETTINGS",
    "KEPT_VERDICTS",
    "METHODS",
    "ROLES",
    "SERVER_KINDS",
    "STAGE_CHOICES",
    "STRUCTURED_MODES",
    "VERDICTS",
    "VERDICT_REASONS",
    "Method",
    "MethodInfo",
    "Role",
    "ServerKind",
    "StageChoice",
    "StructuredChoice",
    "VerdictReasons",
]


@dataclass(frozen=True)
class MethodInfo:
    """How a method samples (``spec`` tables or ``uniform``), whether it validates, which checks it uses,
    and its name for people (the dashboard's choice, the CLI's help)."""

    mode: Literal["spec", "uniform"]
    validate: bool
    checks: CheckLevel
    label: str


Method = Literal["personagen", "attrprompt", "priorwork"]
#: The generation methods (:mod:`pipeline` says what each one is); CLI and dashboard choices come from here.
METHODS: dict[str, MethodInfo] = {
    "personagen": MethodInfo("spec", True, "full", "PersonaGen (validated personas)"),
    "attrprompt": MethodInfo("uniform", False, "minimal", "AttrPrompt"),
    "priorwork": MethodInfo("spec", False, "basic", "Prior work (unvalidated personas)"),
}
assert set(get_args(Method)) == set(METHODS)

StageChoice = Literal["1", "12", "123"]
#: The conditioning ablations: stage 1, stages 1+2, or all three.
STAGE_CHOICES: tuple[str, ...] = get_args(StageChoice)

#: The verdicts a validator may give a stage 1-3 candidate.
VERDICTS: tuple[str, ...] = ("natural", "rare but plausible", "implausible")
#: The verdicts that keep a candidate.
KEPT_VERDICTS: frozenset[str] = frozenset({"natural", "rare but plausible"})
#: The pseudo-verdict recorded when the endpoint gave no usable answer (the candidate is dropped).
ERROR_VERDICT = "error"
#: What a validation funnel counts per stage: the verdicts and the errors.
FUNNEL_VERDICTS: tuple[str, ...] = (*VERDICTS, ERROR_VERDICT)

#: Which verdicts carry a one-sentence reason: ``all`` (written before the verdict, as the paper's
#: validator does) or only ``rejected`` ones (verdict first; a reason follows an "implausible" verdict).
VerdictReasons = Literal["all", "rejected"]
VERDICT_REASONS: tuple[str, ...] = get_args(VerdictReasons)

Role = Literal["validator", "generator", "judge"]
#: What the LLM is asked to be; each role may have its own model (``LLMSettings.models``).
ROLES: tuple[str, ...] = get_args(Role)

ServerKind = Literal["auto", "openai", "llama-cpp-python", "llama.cpp", "vllm", "ollama"]
#: Server kinds the client knows how to send schemas and grammars to ("auto": detect once per endpoint).
SERVER_KINDS: tuple[str, ...] = get_args(ServerKind)
StructuredChoice = Literal["auto", "json_schema", "json_object", "prompt"]
#: The structured-output mode a client starts from ("auto": by server kind).
STRUCTURED_MODES: tuple[str, ...] = get_args(StructuredChoice)

#: The model of every role unless one is chosen (the embedded backend's default is
#: ``personagen_core.local.DEFAULT_MODEL``).
DEFAULT_MODEL = "gpt-4.1-mini"
#: Most LLM calls in flight, the same in the core, the CLI and the dashboard. It is a ceiling: the client
#: starts lower (4 remote, 1 embedded) and adapts to what the endpoint sustains (429s and latency back it
#: off), so a higher ceiling only matters where the endpoint keeps up; 16 lets a hosted API reach useful
#: throughput without bursting a new account's rate limit (the dashboard's former 8 halved it for no gain).
DEFAULT_CONCURRENCY = 16

#: Fields of ``GenerationConfig`` / ``LLMSettings`` that neither shell offers, and why (each shell lists the
#: rest: ``cli.generate_cmds.SETTING_FLAGS``, ``ui/settings_fields.SETTING_FIELDS``).
INTERNAL_SETTINGS: dict[str, str] = {
    "validation_policy": "recorded by the run (why validation is on or off), not chosen",
    "workers": "derived from the concurrency; a knob for tests and benchmarks",
    "llm": "its fields have their own flags and widgets",
    "backoff_base": "retry timing: the defaults follow the OpenAI SDK's; changed in code and tests only",
    "backoff_max": "retry timing: the defaults follow the OpenAI SDK's; changed in code and tests only",
    "retry_after_max": "retry timing: the defaults follow the OpenAI SDK's; changed in code and tests only",
}

"""The run configuration: what a generation run makes and within which limits (one owner for its settings).

:class:`GenerationConfig` is what the CLI (``personagen generate``) and the dashboard's Generate page build,
what :mod:`pipeline` starts and resumes, and what the store keeps with each run. Its helpers resolve it
against a spec: :func:`emotions_of` (the run's emotions, checked), :func:`stages_of` (the conditioning
stages) and :func:`targets_of` (the per-emotion quota the store records and the scheduler works to).
:data:`METHODS` describes the generation methods; :data:`RESUME_OVERRIDES` the settings a resume may change.

Old stored configs keep loading: ``max_tokens`` (the run budget's former name) becomes ``token_budget``, and
``llm.verdict_reasons`` (formerly an LLM setting) becomes ``verdict_reasons``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personagen_core.errors import SpecError
from personagen_core.generation.llm import LLMSettings
from personagen_core.generation.vocabulary import METHODS, Method, MethodInfo, StageChoice, VerdictReasons
from personagen_core.personas.render import describe_persona, describe_scenario
from personagen_core.personas.spec import Spec
from personagen_core.redaction import redact_url

__all__ = [
    "METHODS",
    "RESUME_OVERRIDES",
    "GenerationConfig",
    "Method",
    "MethodInfo",
    "emotions_of",
    "render_candidate",
    "stages_of",
    "targets_of",
    "upgrade_stored_config",
]



#: Settings a resumed run may change (budgets and limits; never what or how much to generate).
RESUME_OVERRIDES = ("max_attempts", "max_cost", "token_budget")

#: Former names of settings, as found in configs stored by older versions: old name -> current name.
_RENAMED = {"max_tokens": "token_budget"}


def upgrade_stored_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict as stored by any version, in today's field names (a copy; unknown keys are left for
    validation to reject). ``max_tokens`` -> ``token_budget``; ``llm.verdict_reasons`` -> ``verdict_reasons``.
    """
    out = dict(data)
    for old, new in _RENAMED.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ValueError(f"give {new} only ({old} is its former name), not both")
            out.setdefault(new, value)
    llm = out.get("llm")
    if isinstance(llm, Mapping) and "verdict_reasons" in llm:
        llm = dict(llm)
        out.setdefault("verdict_reasons", llm.pop("verdict_reasons"))
        out["llm"] = llm
    return out


class GenerationConfig(BaseModel):
    """What to generate and the limits of a run. ``validate`` (attribute ``validate_``) turns the stage 1-3
    LLM validation on or off; None (default) leaves it to :func:`validation_policy.decide` (off for a validator
    measured at chance, such as the embedded models; on otherwise). A started run records the resolved value
    and the decision (``validation_policy``) in its stored config. ``stages`` is the ablation switch (``"1"``,
    ``"12"`` or ``"123"``).

    ``max_attempts`` bounds accepted + rejected outputs + rejected candidates over the whole run (default:
    ten per wanted text plus 50); ``max_cost`` (USD) and ``token_budget`` (tokens) bound the run's usage: once
    reached no new call starts, calls in flight finish, and the run stops resumable. (The per-call completion
    limit is the spec's ``generation.max_tokens``.) ``texts_per_persona`` overrides the spec's value;
    ``validation_batch`` is how many candidates share one validation call. ``temperature`` is the stage-4
    sampling temperature (None: the spec's ``generation.temperature``). ``verdict_reasons`` says which
    validation verdicts carry a one-sentence reason: ``all`` (written before the verdict, as in the paper) or
    ``rejected`` (verdict first, a reason for "implausible" only: fewer generated tokens, but on the embedded
    1.5B model it rejected a third of the candidates at random, docs/LOCAL_LLM.md).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Method = "personagen"
    emotions: list[str] | None = None
    per_emotion: int = Field(default=10, ge=1, le=10_000_000)
    seed: int = 0
    stages: StageChoice = "123"
    validate_: bool | None = Field(default=None, alias="validate")
    validation_policy: dict[str, Any] | None = None
    validation_batch: int = Field(default=8, ge=1, le=64)
    verdict_reasons: VerdictReasons = "all"
    texts_per_persona: int | None = Field(default=None, ge=1, le=100)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_attempts: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0)
    token_budget: int | None = Field(default=None, ge=1)
    near_duplicate_threshold: float = Field(default=0.8, gt=0, le=1)
    workers: int | None = Field(default=None, ge=1, le=4096)
    llm: LLMSettings = Field(default_factory=LLMSettings)

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        return upgrade_stored_config(data) if isinstance(data, Mapping) else data

    def stored(self) -> dict[str, Any]:
        """JSON-safe dict for the run store; the API key is excluded by :class:`LLMSettings`, credentials
        in the base URL (user-info, ``api_key=``-style parameters) are replaced by ``***``."""
        out = self.model_dump(mode="json", by_alias=True)
        llm = out.get("llm") or {}
        if llm.get("base_url"):
            llm["base_url"] = redact_url(llm["base_url"])
        for endpoint in llm.get("endpoints") or []:  # an endpoint pool: key variable names only, never keys
            endpoint["url"] = redact_url(endpoint["url"])
        return out

    def temperature_for(self, spec: Spec) -> float:
        """The stage-4 sampling temperature: this config's, else the spec's."""
        return float(spec.generation.temperature if self.temperature is None else self.temperature)


def emotions_of(spec: Spec, config: GenerationConfig) -> list[str]:
    """The run's emotions: ``config.emotions`` (checked against the spec) or all of the spec's."""
    names = spec.emotion_names
    if not config.emotions:
        return names
    unknown = [e for e in config.emotions if e not in names]
    if unknown:
        raise SpecError(
            f"unknown emotion(s) {', '.join(map(repr, unknown))}; the spec defines {', '.join(names)}",
            path="emotions",
        )
    return list(dict.fromkeys(config.emotions))


def stages_of(spec: Spec, config: GenerationConfig) -> list[int]:
    """Stages whose attributes condition the text (those with columns in the spec)."""
    return [s for s in (1, 2, 3) if str(s) in config.stages and spec.stage_columns(s)]


def targets_of(spec: Spec, config: GenerationConfig) -> dict[str, int]:
    """The run's quota: texts wanted per emotion (:func:`emotions_of`'s emotions, ``per_emotion`` each)."""
    return {e: config.per_emotion for e in emotions_of(spec, config)}


def render_candidate(row: Mapping[str, Any], spec: Spec, stages: Sequence[int]) -> tuple[str, str | None]:
    """The persona and scene texts that condition a text for one sampled ``row`` (attribute -> value as
    strings): the persona from stages 1-2 (stage 1 alone when neither conditions it), the scene only when
    stage 3 does (else None). ``stages``: :func:`stages_of`. Runs and cost estimates render the same way."""
    persona_stages = tuple(s for s in stages if s in (1, 2)) or (1,)
    persona = describe_persona(row, spec, stages=persona_stages)
    return persona, describe_scenario(row, spec) if 3 in stages else None

"""Whether a run validates personas with the LLM by default: it follows the validator's measured quality.

The paper validates every stage 1-3 candidate with the LLM. A validator that cannot tell a plausible persona
from an absurd one adds cost and no information, so when the validator has a measured accuracy on the
plausibility fixture (``local/fixtures/plausibility.jsonl``, figures in ``local/model_quality.json``) that
is not clearly better than chance, the default is rules-only validation: the spec's whitelist rules and
conditional tables (applied while sampling), no LLM verdicts. "Clearly better" means the lower bound of
the 95 % Wilson interval on that accuracy is above 50 %. A validator without such a measurement (remote
endpoints, a custom GGUF file) keeps the paper's LLM validation.

The user's explicit choice always wins; :func:`decide` returns both the default and the effective value
with the one-line message the CLI and the dashboard show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from personagen_core.generation.llm import LLMSettings

__all__ = ["CHANCE", "ValidationDecision", "decide", "default_validation", "wilson_interval"]

#: Accuracy of a validator guessing on the fixture (half plausible, half implausible).
CHANCE = 0.5
_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95 % by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ValidationDecision:
    """Whether stage 1-3 LLM validation runs, and why.

    ``default`` is what the policy chose, ``validate`` what the run does (the user's choice when given);
    ``accuracy``/``n``/``interval`` are the validator's measured figures on the fixture (None when not
    measured); ``slowdown`` is the measured ratio of rules-only to LLM-validated throughput of this model
    (None when not measured); ``message`` is one line for the CLI and the pages ("" when there is nothing
    to say: the paper's validation on an unmeasured validator).
    """

    validate: bool
    default: bool
    explicit: bool
    model: str
    accuracy: float | None
    n: int | None
    interval: tuple[float, float] | None
    slowdown: float | None
    message: str

    @property
    def at_chance(self) -> bool:
        """True when the validator's measured accuracy is not clearly better than chance."""
        return self.interval is not None and self.interval[0] <= CHANCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, recorded with a run."""
        return {
            "validate": self.validate, "default": self.default, "explicit": self.explicit, "model": self.model,
            "accuracy": self.accuracy, "n": self.n, "interval": list(self.interval) if self.interval else None,
            "slowdown": self.slowdown, "message": self.message,
        }


def _measured(settings: LLMSettings, quality: dict[str, Any] | None, speed: dict[str, Any] | None
              ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(validator key, its quality entry, its speed entry); empty dicts when not measured."""
    if settings.backend != "local":
        return settings.model_for("validator"), {}, {}
    from personagen_core.local import models as local_models

    key = settings.local_model
    quality = local_models.model_quality() if quality is None else quality
    speed = local_models.model_speed() if speed is None else speed
    return key, quality.get("models", {}).get(key, {}), speed.get("models", {}).get(key, {})


def _slowdown(speed: dict[str, Any]) -> float | None:
    # Prefer the bench's load-independent figure (the same work at equal token speeds) to the raw ratio.
    if isinstance(speed.get("slowdown"), dict) and speed["slowdown"].get("value"):
        return float(speed["slowdown"]["value"])
    rules, validated = speed.get("rules_only", {}), speed.get("validated", {})
    r, v = rules.get("accepted_per_min"), validated.get("accepted_per_min")
    return r / v if r and v else None


def decide(settings: LLMSettings, validate: bool | None = None, *, quality: dict[str, Any] | None = None,
           speed: dict[str, Any] | None = None) -> ValidationDecision:
    """The validation a run with ``settings`` uses: ``validate`` when given (True/False), else the default.

    ``quality`` and ``speed`` replace the shipped measurement files (``model_quality.json``,
    ``model_speed.json``) for tests.
    """
    key, q, s = _measured(settings, quality, speed)
    val = q.get("validation") or {}
    confusion = val.get("confusion") or {}
    n = sum(int(v) for v in confusion.values()) or None
    accuracy = val.get("accuracy")
    interval = None
    if accuracy is not None and n:
        correct = int(confusion.get("plausible_kept", 0)) + int(confusion.get("implausible_rejected", 0))
        interval = wilson_interval(correct, n)
    slowdown = _slowdown(s)
    default = not (interval is not None and interval[0] <= CHANCE)
    chosen = default if validate is None else bool(validate)
    message = ""
    if interval is not None and interval[0] <= CHANCE:
        figure = f"{key} validator: {accuracy:.0%} on {n} labelled personas (95% CI {interval[0]:.0%}-" \
                 f"{interval[1]:.0%}), " + ("below" if interval[1] < CHANCE else "at") + " chance"
        slower = f", about {slowdown:.1f}x slower" if slowdown else " (its cost not measured yet)"
        if chosen:
            message = f"{figure} — LLM validation is on: its verdicts add cost and no information{slower}."
        else:
            message = (f"{figure} — LLM validation off (rules and tables only); turn it on to follow the "
                       f"paper exactly{slower}.")
    elif not chosen:
        message = "LLM validation off: stage 1-3 candidates pass the spec's rules and tables only."
    return ValidationDecision(chosen, default, validate is not None, key, accuracy, n, interval, slowdown,
                              message)


def default_validation(settings: LLMSettings, *, quality: dict[str, Any] | None = None,
                       speed: dict[str, Any] | None = None) -> ValidationDecision:
    """The policy's default for ``settings`` (no explicit choice); see :func:`decide`."""
    return decide(settings, None, quality=quality, speed=speed)

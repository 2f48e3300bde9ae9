"""Per-model prices (USD per 1M tokens), the cost of a call, and a cost estimate before a run.

The defaults are OpenAI's published list prices for standard (non-batch, uncached) text tokens of a few common
models, and 0 for the embedded local models. They change over time: override or extend them with a YAML/JSON
file (:func:`load_price_table`) rather than trusting them blindly. An unknown model has no price: ``cost``
returns ``None`` instead of guessing.

Price file format (YAML or JSON), either form::

    prices:                       # or the mapping at top level
      gpt-4.1-mini: {input: 0.40, output: 1.60}
      my-vllm-model: [0.0, 0.0]   # [input, output]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from personagen_core.errors import DataError

__all__ = [
    "BATCH_DISCOUNT",
    "DEFAULT_PRICES",
    "CallEstimate",
    "CostEstimate",
    "Price",
    "PriceTable",
    "batch_cost",
    "batch_price_table",
    "cost",
    "estimate_run_cost",
    "load_price_table",
]


@dataclass(frozen=True)
class Price:
    """USD per one million input (prompt) and output (completion) tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise DataError(f"price {name} must be a non-negative number, got {value!r}")


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType({
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    # Embedded models run on this machine: no per-token charge.
    "qwen2.5-coder-1.5b": Price(0.0, 0.0),
    "qwen2.5-coder-0.5b": Price(0.0, 0.0),
    "smollm2-135m": Price(0.0, 0.0),
    "fake-model": Price(0.0, 0.0),
})

# OpenAI dated snapshots ("gpt-4.1-mini-2025-04-14") cost the same as their alias.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class PriceTable:
    """An immutable model -> :class:`Price` table. ``with_prices`` returns an edited copy."""

    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def __post_init__(self) -> None:
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def price(self, model: str) -> Price | None:
        """The price of ``model``, matching a dated snapshot to its alias; ``None`` when unknown."""
        if model in self.prices:
            return self.prices[model]
        alias = _SNAPSHOT_SUFFIX.sub("", model)
        return self.prices.get(alias)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for one call's usage, or ``None`` when the model has no price."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise DataError(f"token counts must be non-negative, got {prompt_tokens} and {completion_tokens}")
        price = self.price(model)
        if price is None:
            return None
        return (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1e6

    def with_prices(self, prices: Mapping[str, Price | Any]) -> PriceTable:
        """A copy with ``prices`` added or replaced (values: Price, ``{input, output}`` or ``[input, output]``)."""
        merged = dict(self.prices)
        for model, value in prices.items():
            merged[str(model)] = _to_price(value, where=f"model {model!r}")
        return PriceTable(merged)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{model: {"input": ..., "output": ...}}``, the format :func:`load_price_table` reads."""
        return {m: {"input": p.input_per_million, "output": p.output_per_million} for m, p in self.prices.items()}


def _to_price(value: Any, *, where: str) -> Price:
    if isinstance(value, Price):
        return value
    try:
        if isinstance(value, Mapping):
            unknown = set(value) - {"input", "output"}
            if unknown:
                raise DataError(f"{where}: unknown price keys {sorted(unknown)}; expected 'input' and 'output'")
            return Price(float(value["input"]), float(value["output"]))
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return Price(float(value[0]), float(value[1]))
    except KeyError as exc:
        raise DataError(f"{where}: missing price key {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise DataError(f"{where}: prices must be numbers, got {value!r}") from None
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    raise DataError(f"{where}: expected {{input: X, output: Y}} or [X, Y] (USD per 1M tokens), got {value!r}")


def load_price_table(path: str | Path, *, base: PriceTable | None = None) -> PriceTable:
    """Read a YAML/JSON price file and apply it over ``base`` (default: the built-in prices)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read price file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DataError(f"price file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if isinstance(data, Mapping) and "prices" in data:
        data = data["prices"]
    if not isinstance(data, Mapping):
        raise DataError(f"price file {path}: expected a mapping of model -> {{input, output}}")
    try:
        return (base or PriceTable()).with_prices(data)
    except DataError as exc:
        raise DataError(f"price file {path}: {exc}") from None


def cost(model: str, prompt_tokens: int, completion_tokens: int, *, table: PriceTable | None = None) -> float | None:
    """USD for ``prompt_tokens`` + ``completion_tokens`` on ``model``; ``None`` for an unknown model."""
    return (table or PriceTable()).cost(model, prompt_tokens, completion_tokens)


#: Share of the list price paid for requests sent through a Batch API (OpenAI: 50 % off input and output
#: tokens of batch requests, results within 24 h).
BATCH_DISCOUNT = 0.5


def batch_cost(
    model: str, prompt_tokens: int, completion_tokens: int, *, table: PriceTable | None = None
) -> float | None:
    """USD for a request sent through the Batch API: :func:`cost` times :data:`BATCH_DISCOUNT`."""
    full = cost(model, prompt_tokens, completion_tokens, table=table)
    return None if full is None else full * BATCH_DISCOUNT


def batch_price_table(table: PriceTable | None = None) -> PriceTable:
    """``table`` (default: the default prices) at Batch API prices, for estimates of batch runs."""
    base = table or PriceTable()
    return PriceTable({
        m: Price(p.input_per_million * BATCH_DISCOUNT, p.output_per_million * BATCH_DISCOUNT)
        for m, p in base.prices.items()
    })


@dataclass(frozen=True)
class CallEstimate:
    """Expected calls of one type (e.g. ``"stage1 validation"``) and the expected tokens of each call."""

    model: str
    calls: float
    prompt_tokens: float
    completion_tokens: float


@dataclass(frozen=True)
class CostEstimate:
    """Result of :func:`estimate_run_cost`. ``total_usd`` is ``None`` if any call type's model has no price
    (``unknown_models`` lists them; ``known_usd`` sums the priced types)."""

    total_usd: float | None
    known_usd: float
    by_type: dict[str, float | None]
    prompt_tokens: float
    completion_tokens: float
    unknown_models: list[str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "total_usd": self.total_usd,
            "known_usd": self.known_usd,
            "by_type": dict(self.by_type),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "unknown_models": list(self.unknown_models),
        }


def estimate_run_cost(
    estimates: Mapping[str, CallEstimate] | Iterable[tuple[str, CallEstimate]],
    *,
    table: PriceTable | None = None,
) -> CostEstimate:
    """Expected cost of a run: for each call type, calls x (prompt, completion) tokens per call x price.

    Assumptions (the caller supplies the expected counts, this function only prices them): cost is linear in
    tokens at the table's list prices; no cached-input, batch or volume discounts; retries and rejected
    outputs must be included in ``calls`` by the caller (e.g. ``texts / expected acceptance rate``).
    """
    table = table or PriceTable()
    items = list(estimates.items()) if isinstance(estimates, Mapping) else list(estimates)
    by_type: dict[str, float | None] = {}
    unknown: list[str] = []
    prompt_total = completion_total = known = 0.0
    for name, est in items:
        if min(est.calls, est.prompt_tokens, est.completion_tokens) < 0:
            raise DataError(f"cost estimate {name!r}: calls and token counts must be non-negative")
        prompt = est.calls * est.prompt_tokens
        completion = est.calls * est.completion_tokens
        prompt_total += prompt
        completion_total += completion
        price = table.price(est.model)
        if price is None:
            by_type[name] = None
            if est.model not in unknown:
                unknown.append(est.model)
            continue
        usd = (prompt * price.input_per_million + completion * price.output_per_million) / 1e6
        by_type[name] = usd
        known += usd
    return CostEstimate(
        total_usd=None if unknown else known,
        known_usd=known,
        by_type=by_type,
        prompt_tokens=prompt_total,
        completion_tokens=completion_total,
        unknown_models=unknown,
    )

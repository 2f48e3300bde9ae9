"""Pure helpers on probability vectors and spec text fields (no Streamlit): keep a distribution valid
while sliders move, parse conditions written in a table cell, locate a SpecError field, redact secrets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

__all__ = [
    "add_item",
    "format_conditions",
    "parse_conditions",
    "redact",
    "remove_item",
    "renormalise",
    "spec_error_field",
]


#: Below this a sum counts as zero.
_EPS = 1e-12


def renormalise(
    values: Sequence[float], index: int, new_value: float, locked: Sequence[int] | frozenset[int] = ()
) -> list[float]:
    """Set ``values[index]`` to ``new_value`` and rescale the other unlocked items so the sum stays 1.

    Locked items keep their value. The free mass ``1 - new_value - sum(locked)`` is shared among the
    other unlocked items in proportion to their current values (equally when they are all zero).
    ``new_value`` is clipped to what the locked items leave. When there is no other unlocked item the
    edited item takes all the free mass, so the result always sums to 1 (up to float rounding).
    """
    n = len(values)
    if not 0 <= index < n:
        raise IndexError(f"item index {index} out of range for {n} items")
    locked_set = {i for i in locked if i != index and 0 <= i < n}
    vals = [max(0.0, float(v)) for v in values]
    locked_mass = sum(vals[i] for i in locked_set)
    free = [i for i in range(n) if i != index and i not in locked_set]
    budget = max(0.0, 1.0 - locked_mass)
    target = min(max(0.0, float(new_value)), budget)
    if not free:
        target = budget  # nothing else can absorb the change
    rest = budget - target
    out = list(vals)
    out[index] = target
    current = sum(vals[i] for i in free)
    for i in free:
        out[i] = rest * (vals[i] / current if current > _EPS else 1.0 / len(free))
    return out


def add_item(values: Sequence[float], p: float = 0.0, locked: Sequence[int] = ()) -> list[float]:
    """Append an item with probability ``p`` and rescale the unlocked others so the sum stays 1."""
    extended = [float(v) for v in values] + [0.0]
    if not values:
        return [1.0]
    return renormalise(extended, len(extended) - 1, p, locked)


def remove_item(values: Sequence[float], index: int, locked: Sequence[int] = ()) -> list[float]:
    """Remove item ``index`` and share its mass among the remaining unlocked items proportionally.

    When every remaining item is locked the mass is shared among all of them, so the result is still a
    distribution. Removing the only item is an error (a category needs at least one item).
    """
    n = len(values)
    if n <= 1:
        raise ValueError("a category needs at least one item")
    if not 0 <= index < n:
        raise IndexError(f"item index {index} out of range for {n} items")
    kept = [float(v) for i, v in enumerate(values) if i != index]
    # Indices shift down by one after the removed item.
    shifted = {i - (i > index) for i in locked if i != index}
    free = [i for i in range(len(kept)) if i not in shifted] or list(range(len(kept)))
    total_free = sum(kept[i] for i in free)
    mass = max(0.0, 1.0 - sum(kept))
    out = list(kept)
    for i in free:
        out[i] = kept[i] + mass * (kept[i] / total_free if total_free > _EPS else 1.0 / len(free))
    return out


def spec_error_field(path: str | None) -> tuple[str | None, int | None]:
    """Split a ``SpecError.path`` such as ``attributes.age.items[3].p`` into ``("age", 3)``.

    Returns the category key (for ``attributes.*`` and ``scenario.*`` paths) and the item index when
    the path names one; ``(None, None)`` for paths elsewhere in the spec.
    """
    if not path:
        return None, None
    parts = path.split(".")
    if len(parts) < 2 or parts[0] not in ("attributes", "scenario"):
        return None, None
    category = parts[1].split("[", 1)[0]
    index: int | None = None
    for part in parts[2:]:
        if part.startswith("items[") and part.endswith("]"):
            with contextlib.suppress(ValueError):
                index = int(part[len("items[") : -1])
            break
    return category, index


def redact(message: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of a secret (longer than 3 characters) by ``***``."""
    for secret in secrets:
        if secret and len(secret) > 3:
            message = message.replace(secret, "***")
    return message


def format_conditions(conditions: dict[str, Sequence[str]]) -> str:
    """``{"age": ["6-12", "13-18"], "gender": ["female"]}`` → ``"age = 6-12 | 13-18; gender = female"``."""
    return "; ".join(f"{k} = {' | '.join(v)}" for k, v in conditions.items())


def parse_conditions(text: str) -> dict[str, list[str]]:
    """Inverse of :func:`format_conditions`; raises ``ValueError`` naming the malformed part."""
    out: dict[str, list[str]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{part.strip()!r} is not of the form `category = item | item`")
        key, values = part.split("=", 1)
        items = [v.strip() for v in values.split("|") if v.strip()]
        if not key.strip() or not items:
            raise ValueError(f"{part.strip()!r} is not of the form `category = item | item`")
        out[key.strip()] = items
    return out

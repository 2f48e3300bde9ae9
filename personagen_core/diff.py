"""What changed between two specs, two run configs or two runs: a flat list of :class:`Change`.

Specs are compared field by field on their JSON form, with list items that have a ``name`` (categories'
items, emotions, rules) matched by name rather than by position, so moving one slider shows as one
changed probability (``attributes.age.items[6-12].p``), and an added item as one addition. Conditional
table rows are matched by their ``when`` condition. Floats equal within ``tol`` are not changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Change", "diff_configs", "diff_runs", "diff_specs", "diff_values", "flatten"]


@dataclass(frozen=True)
class Change:
    """One difference: ``kind`` is ``changed``, ``added`` (only in the second) or ``removed``."""

    path: str
    kind: Literal["changed", "added", "removed"]
    before: Any = None
    after: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable when the values are)."""
        return asdict(self)


def _label(item: Mapping[str, Any]) -> str | None:
    if isinstance(item.get("name"), str) and item["name"]:
        return item["name"]
    if "when" in item and isinstance(item["when"], Mapping):  # a conditional table row
        when = item["when"]
        return "; ".join(f"{k}={'|'.join(map(str, v))}" for k, v in when.items()) or "default"
    return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [{"name": "x", "p": 1}]}}`` → ``{"a.b[x].p": 1}``; leaves are scalars or empty
    containers. List items are keyed by their name (or table condition) when every item has a distinct
    one, else by position."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        if not value and prefix:
            out[prefix] = []
        labels = [_label(v) if isinstance(v, Mapping) else None for v in value]
        by_label = all(labels) and len(set(labels)) == len(labels)
        if not by_label and all(not isinstance(v, (Mapping, list, tuple)) for v in value) and value:
            out[prefix] = list(value)  # a list of scalars (e.g. a filter's values) is one leaf
            return out
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{labels[i] if by_label else i}]"))
    else:
        out[prefix] = value
    return out


def _equal(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tol)
    return bool(a == b)


def diff_values(a: Any, b: Any, *, tol: float = 1e-9) -> list[Change]:
    """Changes from ``a`` to ``b`` (nested dicts and lists of JSON values), in ``a``'s order then ``b``'s."""
    fa, fb = flatten(a), flatten(b)
    changes: list[Change] = []
    for path, va in fa.items():
        if path not in fb:
            changes.append(Change(path, "removed", before=va))
        elif not _equal(va, fb[path], tol):
            changes.append(Change(path, "changed", before=va, after=fb[path]))
    changes += [Change(path, "added", after=vb) for path, vb in fb.items() if path not in fa]
    return changes


def _spec_data(spec: Any) -> Any:
    """A spec (pydantic model), its YAML text or an already-plain dict, as plain data."""
    if spec is None:
        return {}
    if hasattr(spec, "model_dump"):
        return json.loads(spec.model_dump_json())
    if isinstance(spec, str):
        from personagen_core.personas.spec import parse_spec

        return json.loads(parse_spec(spec, source="a stored spec").model_dump_json())
    return spec


def diff_specs(a: Any, b: Any, *, tol: float = 1e-9) -> list[Change]:
    """Changes between two specs (``Spec`` objects, canonical YAML texts or plain dicts)."""
    return diff_values(_spec_data(a), _spec_data(b), tol=tol)


def diff_configs(a: Mapping[str, Any] | Any, b: Mapping[str, Any] | Any, *, tol: float = 1e-9) -> list[Change]:
    """Changes between two generation configs (``GenerationConfig`` objects or their stored dicts)."""

    def plain(c: Any) -> Any:
        return json.loads(c.model_dump_json()) if hasattr(c, "model_dump_json") else dict(c or {})

    return diff_values(plain(a), plain(b), tol=tol)


def diff_runs(run_a: Mapping[str, Any], run_b: Mapping[str, Any], *, tol: float = 1e-9) -> dict[str, list[Change]]:
    """Spec, config and target changes between two runs as :meth:`RunStore.run` returns them
    (``spec_yaml``, ``config``, ``target``, ``method``)."""
    return {
        "spec": diff_specs(run_a.get("spec_yaml"), run_b.get("spec_yaml"), tol=tol),
        "config": diff_values(
            {"method": run_a.get("method"), **dict(run_a.get("config") or {})},
            {"method": run_b.get("method"), **dict(run_b.get("config") or {})},
            tol=tol,
        ),
        "target": diff_values(run_a.get("target") or {}, run_b.get("target") or {}, tol=tol),
    }

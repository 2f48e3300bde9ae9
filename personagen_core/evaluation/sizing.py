"""How many texts an evaluation embeds, and how long that takes on this machine.

The rate is measured from real evaluations: after each one that embedded at least
:data:`MIN_TEXTS_TO_RECORD` new texts, ``texts / seconds`` of its embedding stages (model loading
included, so the figure errs on the slow side) is stored per embedding model in
``<PERSONAGEN_HOME>/embedding_rate.json``. Until then :data:`FALLBACK_RATE` is used; it is conservative:
the rate measured on a busy 2-core machine (docs/METRICS.md, "Size and time").
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "FALLBACK_RATE",
    "MIN_TEXTS_TO_RECORD",
    "WARN_SECONDS",
    "EmbeddingPlan",
    "embedding_plan",
    "rate_for",
    "record_rate",
]

#: Texts per second assumed before any measurement: all-MiniLM-L6-v2 (bfloat16) on this project's 2-core
#: machine shared with other jobs embedded 15.7 texts/s (load ~10) and 9.4 texts/s (load ~14)
#: (docs/METRICS.md, "Size and time"); an idle machine is several times faster, so this errs on the
#: slow side.
FALLBACK_RATE = 10.0
#: Above this estimate the plan warns and suggests --max-texts / --max-gold.
WARN_SECONDS = 600.0
#: Evaluations that embedded fewer new texts do not update the stored rate (model loading dominates).
MIN_TEXTS_TO_RECORD = 500
_RATE_FILE = "embedding_rate.json"


def _rate_path(home: Path | None) -> Path:
    from personagen_core.paths import home as personagen_home

    return (home or personagen_home()) / _RATE_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def rate_for(model_id: str, *, home: Path | None = None) -> tuple[float, str]:
    """(texts per second, where the figure comes from) for ``model_id`` on this machine."""
    entry = _read(_rate_path(home)).get(model_id)
    if isinstance(entry, dict) and float(entry.get("rate", 0)) > 0:
        return float(entry["rate"]), (
            f"measured here on {entry.get('measured_at', '?')} ({entry.get('texts')} texts in "
            f"{entry.get('seconds')} s)"
        )
    return FALLBACK_RATE, "a conservative default; the first evaluation on this machine measures it"


def record_rate(model_id: str, texts: int, seconds: float, *, home: Path | None = None) -> float | None:
    """Store ``texts / seconds`` for ``model_id`` when ``texts`` is large enough; returns the rate."""
    if texts < MIN_TEXTS_TO_RECORD or seconds <= 0:
        return None
    path = _rate_path(home)
    data = _read(path)
    rate = texts / seconds
    data[model_id] = {
        "rate": round(rate, 2),
        "texts": int(texts),
        "seconds": round(seconds, 2),
        "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        return None  # a read-only home only loses the measurement
    return rate


@dataclass
class EmbeddingPlan:
    """Texts each input contributes to the embedding stage, and the time that should take."""

    counts: dict[str, int]
    sampled: dict[str, tuple[int, int]] = field(default_factory=dict)  # input -> (kept, of)
    rate: float = FALLBACK_RATE
    rate_source: str = ""
    #: input -> texts of it estimated to be in the embedding cache already (only inputs that were checked)
    cached: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All texts to embed (cached ones included: an upper bound)."""
        return sum(self.counts.values())

    @property
    def to_embed(self) -> int:
        """Texts expected to need the model: the total less those found in the cache."""
        return max(0, self.total - sum(self.cached.values()))

    @property
    def seconds(self) -> float:
        """Estimated seconds at the stored rate (cached texts left out)."""
        return self.to_embed / self.rate

    @property
    def warn(self) -> bool:
        """True when the estimate exceeds :data:`WARN_SECONDS`."""
        return self.seconds > WARN_SECONDS

    def lines(self) -> list[str]:
        """What to tell the user before embedding."""
        per = ", ".join(f"{name} {n:,}" for name, n in self.counts.items())
        if self.cached and not self.to_embed:
            out = [f"embedding up to {self.total:,} texts ({per}): all of them are in the embedding cache"]
        elif self.cached:
            out = [f"embedding up to {self.total:,} texts ({per}), {self.to_embed:,} not in the embedding "
                   f"cache: about {_duration(self.seconds)} at {self.rate:.0f} texts/s ({self.rate_source})"]
        else:
            out = [
                f"embedding up to {self.total:,} texts ({per}): about {_duration(self.seconds)} at "
                f"{self.rate:.0f} texts/s ({self.rate_source}); cached texts are faster"
            ]
        for name, (kept, of) in self.sampled.items():
            out.append(f"  {name}: a seeded stratified sample of {kept:,} of {of:,} texts")
        if self.warn:
            biggest = max(self.counts, key=self.counts.__getitem__)
            out.append(
                f"warning: that is more than {_duration(WARN_SECONDS)}; {biggest} is the largest input. "
                "Pass --max-texts N (per dataset) and/or --max-gold N (gold test split) to evaluate a seeded "
                "stratified sample, stated in the report"
            )
        return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def embedding_plan(
    datasets: Mapping[str, pd.DataFrame],
    gold_train: pd.DataFrame | None,
    gold_test: pd.DataFrame | None,
    settings: Any,
    *,
    model_id: str = "",
    home: Path | None = None,
    cached_fraction: Callable[[Sequence[str]], float] | None = None,
) -> EmbeddingPlan:
    """Count what :func:`suite.evaluate` will embed with ``settings`` (caps, the balanced gold sample).

    ``cached_fraction`` (e.g. :meth:`Embedder.cached_fraction`) tells which share of an input's texts is in
    the embedding cache; each input with a ``text`` column is then counted as that share of its embedded
    texts (a sample of an input is assumed to be cached like the whole), and the time covers the rest only.
    """
    counts: dict[str, int] = {}
    sampled: dict[str, tuple[int, int]] = {}
    frames: dict[str, pd.DataFrame] = {}
    for name, frame in datasets.items():
        counts[name] = _capped(name, len(frame), settings.max_texts, sampled)
        frames[name] = frame
    if gold_test is not None:
        counts["gold test"] = _capped("gold test", len(gold_test), settings.max_gold, sampled)
        frames["gold test"] = gold_test
    if gold_train is not None:
        per_label = gold_train["label"].astype(str).value_counts()
        counts["gold train (balanced sample)"] = int(per_label.clip(upper=settings.gold_per_class).sum())
        frames["gold train (balanced sample)"] = gold_train
    cached: dict[str, int] = {}
    if cached_fraction is not None:
        for name, frame in frames.items():
            if "text" in frame.columns and len(frame):
                cached[name] = round(counts[name] * cached_fraction(frame["text"].astype(str).tolist()))
    rate, source = rate_for(model_id, home=home)
    return EmbeddingPlan(counts=counts, sampled=sampled, rate=rate, rate_source=source, cached=cached)


def _capped(name: str, n: int, cap: int | None, sampled: dict[str, tuple[int, int]]) -> int:
    if cap is not None and n > cap:
        sampled[name] = (cap, n)
        return cap
    return n

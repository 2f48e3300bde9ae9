"""How long a run will take on this machine: throughput measured here, and the estimate before launch.

Speed depends on the machine, the model, whether the LLM validates personas and on the load, so no
constant is built in. Figures come from runs on this machine: a short calibration run at first use
(:func:`calibrate`: a few texts into a throw-away store) and every finished run recorded with a
:class:`RunTimer`. They are kept per *profile* (backend + model(s) + method + validation on/off, see
:func:`profile_key`) in ``<PERSONAGEN_HOME>/throughput.json`` (:class:`ThroughputBook`); the last
:data:`KEEP` measurements of a profile are pooled.

A run's time is modelled as the time to its first accepted text (model warm-up, the first validation
batches) plus a steady time per further text; :func:`estimate_run_time` applies it to the wanted number of
texts and says from how many measured texts it comes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personagen_core import paths

if TYPE_CHECKING:
    from personagen_core.generation.pipeline import GenerationConfig, ProgressEvent
    from personagen_core.personas.spec import Spec

__all__ = [
    "KEEP",
    "Measurement",
    "RunTimeEstimate",
    "RunTimer",
    "ThroughputBook",
    "calibrate",
    "estimate_run_time",
    "profile_key",
]

#: Measurements kept (and pooled) per profile: recent ones, since load and versions change.
KEEP = 5
#: Texts a calibration run generates (one per emotion, for the first emotions of the run).
CALIBRATION_TEXTS = 3


@dataclass(frozen=True)
class Measurement:
    """One timed run: ``texts`` accepted in ``seconds`` (wall clock), the first after ``first_text_s``."""

    texts: int
    seconds: float
    first_text_s: float | None
    source: str  # "calibration" | "run"
    measured_at: float  # unix time

    @property
    def per_minute(self) -> float:
        """Accepted texts per minute over the whole measurement."""
        return 60.0 * self.texts / self.seconds if self.seconds > 0 else 0.0


def profile_key(config: GenerationConfig) -> str:
    """What throughput depends on besides the machine: backend, model(s), method, LLM validation on/off."""
    from personagen_core.generation.pipeline import METHODS, resolve_validation

    config = resolve_validation(config)
    llm = config.llm
    validated = METHODS[config.method].validate and bool(config.validate_)
    if llm.backend == "local":
        where = f"local:{llm.local_model}"
    elif llm.endpoints:  # an endpoint pool: its endpoints (labels: URLs without credentials) and their capacity
        from personagen_core.generation.endpoints import total_concurrency

        where = (f"pool:{','.join(e.label for e in llm.endpoints)}|{llm.model_for('validator')}"
                 f"|{llm.model_for('generator')}|concurrency={total_concurrency(llm)}")
    else:
        where = (f"{llm.effective_base_url}|{llm.model_for('validator')}|{llm.model_for('generator')}"
                 f"|concurrency={llm.concurrency}")
    return f"{where}|{config.method}|{'llm-validated' if validated else 'no-llm-validation'}"


class ThroughputBook:
    """The measured throughputs of this machine, a small JSON file (default ``<home>/throughput.json``).

    Reads and writes the file on each call (no state kept in memory), so the CLI, the dashboard and
    several processes see each other's measurements; a write replaces the file atomically.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else paths.home() / "throughput.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def measurements(self, key: str) -> list[Measurement]:
        """The kept measurements of profile ``key``, oldest first."""
        rows = self._read().get(key, [])
        return [Measurement(**r) for r in rows if isinstance(r, dict)]

    def record(self, key: str, measurement: Measurement) -> None:
        """Add ``measurement`` to profile ``key`` (keeping the last :data:`KEEP`); runs without texts are
        not recorded (they measure nothing about the rate)."""
        if measurement.texts <= 0 or measurement.seconds <= 0:
            return
        data = self._read()
        rows = [*data.get(key, []), asdict(measurement)][-KEEP:]
        data[key] = rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".throughput.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.path)


class RunTimer:
    """Times a run from its progress events: pass :meth:`observe` as ``on_event``, then :meth:`measurement`.

    ``accepted_before`` is the run's count before this session (a resumed run); ``clock`` (seconds,
    monotonic) is injectable for tests. The timer starts when created.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, accepted_before: int = 0) -> None:
        self.clock = clock
        self.start = clock()
        self.first_text_s: float | None = None
        self.baseline = accepted_before
        self.texts = 0

    def observe(self, event: ProgressEvent) -> None:
        """Note the accepted count of one progress event."""
        self.texts = max(self.texts, sum(event.accepted.values()) - self.baseline)
        if self.texts > 0 and self.first_text_s is None:
            self.first_text_s = self.clock() - self.start

    def measurement(self, source: str = "run") -> Measurement:
        """The measurement so far (texts accepted, wall seconds since the timer started)."""
        return Measurement(self.texts, self.clock() - self.start, self.first_text_s, source, time.time())


@dataclass(frozen=True)
class RunTimeEstimate:
    """The expected wall time of a run of ``texts`` texts, from ``measured_texts`` texts timed here."""

    seconds: float
    texts: int
    first_text_s: float
    seconds_per_text: float
    measured_texts: int
    measurements: int
    sources: tuple[str, ...]

    @property
    def minutes(self) -> float:
        """The estimate in minutes."""
        return self.seconds / 60.0

    @property
    def message(self) -> str:
        """"about 7 minutes on this machine (…)": one line for the CLI and the Generate page."""
        m = self.minutes
        size = f"about {m:.0f} minutes" if m >= 1.5 else ("about a minute" if m >= 0.75 else "under a minute")
        return (f"{size} on this machine for {self.texts} texts ({self.seconds_per_text:.1f} s per text, "
                f"first text after {self.first_text_s:.0f} s; {self.basis})")

    @property
    def basis(self) -> str:
        """Where the figures come from: "from your last run on this machine (12 texts)", "from your last 3
        runs and a 3-text timing run on this machine (40 texts)"."""
        runs = sum(1 for s in self.sources if s == "run")
        timings = len(self.sources) - runs
        parts = []
        if runs:
            parts.append("your last run" if runs == 1 else f"your last {runs} runs")
        if timings:
            parts.append("a short timing run" if timings == 1 else f"{timings} short timing runs")
        return f"from {' and '.join(parts)} on this machine ({self.measured_texts} texts timed)"


def estimate_run_time(config: GenerationConfig, texts: int, book: ThroughputBook | None = None
                      ) -> RunTimeEstimate | None:
    """Expected wall time of a run of ``texts`` texts with ``config`` on this machine; None when this
    profile was never measured here (then :func:`calibrate`, or run once)."""
    book = book or ThroughputBook()
    rows = book.measurements(profile_key(config))
    if not rows:
        return None
    firsts = [m.first_text_s for m in rows if m.first_text_s is not None]
    first = statistics.median(firsts) if firsts else sum(m.seconds for m in rows) / sum(m.texts for m in rows)
    # Steady time per text after the first, pooled over measurements with more than one text.
    steady = [(m.seconds - (m.first_text_s or 0.0), m.texts - 1) for m in rows if m.texts > 1]
    if steady and sum(n for _, n in steady):
        per_text = max(0.0, sum(s for s, _ in steady)) / sum(n for _, n in steady)
    else:
        per_text = sum(m.seconds for m in rows) / sum(m.texts for m in rows)
    texts = max(0, int(texts))
    seconds = first + per_text * max(0, texts - 1) if texts else 0.0
    return RunTimeEstimate(seconds, texts, first, per_text, sum(m.texts for m in rows), len(rows),
                           tuple(m.source for m in rows))


def calibrate(
    spec: Spec,
    config: GenerationConfig,
    *,
    book: ThroughputBook | None = None,
    texts: int = CALIBRATION_TEXTS,
    http_client: Any = None,
    clock: Callable[[], float] = time.monotonic,
    runner: Callable[..., Any] | None = None,
) -> Measurement:
    """Time a short run of ``texts`` texts (one per emotion) with ``config``'s backend, model and validation
    into a throw-away run store, and record it in ``book``. ``runner`` (default
    :func:`pipeline.run_generation`) and ``clock`` are injectable for tests."""
    from personagen_core.generation.pipeline import emotions_of, resolve_validation, run_generation
    from personagen_core.store import RunStore

    book = book or ThroughputBook()
    runner = runner or run_generation
    config = resolve_validation(config)
    names = emotions_of(spec, config)[: max(1, texts)]
    short = config.model_copy(update={"emotions": names, "per_emotion": max(1, -(-texts // len(names)))})
    timer = RunTimer(clock)
    with tempfile.TemporaryDirectory(prefix="personagen-calibration-") as tmp:
        store = RunStore(Path(tmp) / "calibration.sqlite")
        try:
            kwargs = {"http_client": http_client} if http_client is not None else {}
            runner(spec, short, store, on_event=timer.observe, **kwargs)
        finally:
            store.close()
    measurement = timer.measurement("calibration")
    book.record(profile_key(config), measurement)
    return measurement

"""Generation in background threads of the server process: the process-wide registry of runs (shared by
every session and tab), launching and resuming runs (direct or through the Batch API), and the embedded
model pool their calls go through.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from ui.probabilities import redact
from ui.state import autosave, get_store, home_dir, kept, set_kept

__all__ = [
    "RunHandle",
    "any_run_active",
    "http_client_for",
    "local_pool",
    "resume_limits",
    "resume_run",
    "run_registry",
    "select_run",
    "start_generation",
]


@dataclass
class RunHandle:
    """A generation running in a background thread of this server process."""

    run_id: str
    thread: threading.Thread
    cancel: threading.Event
    last_event: Any = None
    error: str | None = None
    summary: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Whether the thread is still running."""
        return self.thread.is_alive()


@st.cache_resource(show_spinner=False)
def run_registry() -> dict[str, RunHandle]:
    """Process-wide registry of background runs keyed by run id (shared by every session and tab)."""
    return {}


def select_run(run_id: str) -> None:
    """Make ``run_id`` the run shown by every single-run picker (e.g. right after launching it), also after a
    reload and in another browser: the draft is saved now, since a page saves it only when it starts (the
    next full rerun, which may never come: the run view refreshes as a fragment)."""
    st.session_state["last_run_id"] = run_id
    set_kept("run", run_id)
    autosave()


@st.cache_resource(show_spinner=False)
def local_pool() -> Any:
    """The embedded-model pool of this server process (models load once, on first use)."""
    from personagen_core.local import LocalModelPool

    return LocalModelPool(home=home_dir())


def http_client_for(settings: Any) -> Any:
    """For the embedded backend, an ``httpx.AsyncClient`` over the process-wide model pool; else None."""
    if settings.backend != "local":
        return None
    import httpx

    return httpx.AsyncClient(transport=local_pool().transport(settings.local_model))


def _run_in_thread(handle: RunHandle, call: Any, secrets: list[str]) -> None:
    from personagen_core.errors import PersonaGenError

    try:
        handle.summary = call()
    except PersonaGenError as exc:
        handle.error = redact(str(exc), secrets)
    except Exception as exc:  # shown on the page; the run stays in the store and can be resumed
        handle.error = redact(f"unexpected error ({type(exc).__name__}): {exc}", secrets)


def _secrets_of(settings: Any) -> list[str]:
    from personagen_core.generation.endpoints import endpoint_secrets

    key = getattr(settings, "api_key", None)
    return ([key.get_secret_value()] if key is not None else []) + endpoint_secrets(settings)


def _start(run_id: str, call: Any, settings: Any, cancel: threading.Event) -> str:
    handle = RunHandle(run_id=run_id, thread=threading.Thread(target=lambda: None), cancel=cancel)
    handle.thread = threading.Thread(
        target=_run_in_thread,
        args=(handle, call, _secrets_of(settings)),
        name=f"personagen-run-{run_id}",
        daemon=True,
    )
    run_registry()[run_id] = handle
    handle.thread.start()
    select_run(run_id)
    return run_id


def start_generation(spec: Any, config: Any, *, batch_poll_s: float | None = None) -> str:
    """Start ``pipeline.run_generation`` in a background thread; returns the new run's id at once. With
    ``batch_poll_s`` the run goes through the endpoint's Batch API instead (``generation.batch``), its
    batches polled every ``batch_poll_s`` seconds."""
    from personagen_core.generation.pipeline import run_generation
    from personagen_core.store import new_run_id

    store, run_id, cancel = get_store(), new_run_id(), threading.Event()
    if batch_poll_s is not None:
        from personagen_core.generation.batch import BatchOptions, run_batch_generation

        options = BatchOptions(poll_interval=batch_poll_s)
        return _start(run_id, lambda: run_batch_generation(spec, config, store, options=options, cancel=cancel,
                                                           run_id=run_id), config.llm, cancel)

    def call() -> Any:
        from personagen_core.generation import throughput

        timer = throughput.RunTimer()  # the run's own timing feeds the next time estimate
        try:
            return run_generation(spec, config, store, cancel=cancel, run_id=run_id,
                                  http_client=http_client_for(config.llm), on_event=timer.observe)
        finally:  # a failed or stopped run's texts are timed too (a run without texts records nothing)
            throughput.ThroughputBook().record(throughput.profile_key(config), timer.measurement("run"))

    return _start(run_id, call, config.llm, cancel)


def resume_limits() -> dict[str, Any]:
    """The limits set on the Generate page (0 = not set), as resume overrides: a run stopped at its cost
    limit resumes with the page's larger one (the CLI's ``--resume RUN --max-cost N``)."""
    limits = {"max_cost": float(kept("max_cost", 0) or 0), "token_budget": int(kept("token_budget", 0) or 0),
              "max_attempts": int(kept("max_attempts", 0) or 0)}
    return {k: v for k, v in limits.items() if v}


def resume_run(run_id: str, settings: Any) -> str:
    """Resume an interrupted run in a background thread with this session's LLM settings."""
    from personagen_core.generation.pipeline import resume_generation

    store, cancel = get_store(), threading.Event()
    if store.batch_run(run_id) is not None:  # a Batch API run: poll its batch in flight, then go on
        from personagen_core.generation.batch import resume_batch_generation

        return _start(run_id, lambda: resume_batch_generation(store, run_id, llm=settings, cancel=cancel,
                                                              **resume_limits()), settings, cancel)

    def call() -> Any:
        return resume_generation(
            store, run_id, llm=settings, cancel=cancel, http_client=http_client_for(settings), **resume_limits()
        )

    return _start(run_id, call, settings, cancel)


def any_run_active() -> bool:
    """Whether a generation thread of this server process is running."""
    return any(h.alive for h in run_registry().values())

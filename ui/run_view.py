"""One run's live view: progress read from the run store (stage, calls, failures, newest texts, per-emotion
counts, rejections, endpoints, batches), cancel and resume, and the run's spec and settings with a diff
against another run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from ui.llm_form import llm_settings
from ui.probabilities import redact
from ui.run_jobs import RunHandle, _secrets_of, resume_run, run_registry
from ui.settings_fields import stop_hint
from ui.state import _store_for, error_boundary, get_store, keep, store_path

__all__ = [
    "batch_table",
    "run_details",
    "run_status",
    "show_run_progress",
]


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_status(run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None, RunHandle | None]:
    """The run's store row, its latest progress event and this process's thread handle (if any)."""
    store = get_store()
    return store.run(run_id), store.latest_event(run_id), run_registry().get(run_id)


_STAGE_WORK = {1: "validating stage 1 personas", 2: "validating stage 2 personas",
               3: "validating stage 3 scenarios", 4: "generating texts"}


def _stage_line(last: dict[str, Any] | None, alive: bool, backend: str | None) -> str:
    """What the run is doing now, from its latest recorded LLM call."""
    if last is None:
        slow = " (the embedded model loads on first use)" if backend == "local" else ""
        return f"Starting: waiting for the first LLM answer{slow}." if alive else "No LLM call recorded."
    work = _STAGE_WORK.get(int(last["stage"]) if last.get("stage") is not None else 0, "calling the LLM")
    return f"{'Now' if alive else 'Last'}: {work} ({last.get('role') or 'llm'} · {last.get('model') or '?'})."


def show_run_progress(run_id: str) -> None:
    """Progress of one run read from the run store: what it is doing (stage), calls done and failing with
    the last error, the newest accepted texts, per-emotion counts, rejections, usage and ETA; cancel while
    it runs here, resume when it was interrupted. A launch that failed before the run was stored shows
    its error."""
    import pandas as pd

    from personagen_core.errors import StoreError

    store = get_store()
    handle = run_registry().get(run_id)
    try:
        info = store.run(run_id)
    except StoreError:
        if handle is not None and handle.error:
            st.error(f"The run could not start: {handle.error}")
        elif handle is not None:
            st.info("Starting the run…")
        else:
            st.warning(f"Run {run_id} is not in the run store.")
        return
    event = store.latest_event(run_id)
    alive = handle is not None and handle.alive
    accepted = store.accepted_counts(run_id)
    target = info["target"]
    done, total = sum(min(accepted.get(e, 0), n) for e, n in target.items()), sum(target.values())
    status = info["status"]
    # The store shows a running run whose lease holder is gone (server restart, crash) as interrupted.
    stale = status == "interrupted"
    shown = status
    st.progress(done / total if total else 0.0, text=f"{done} / {total} texts · {shown}")
    totals = store.totals(run_id)
    backend = ((info.get("config") or {}).get("llm") or {}).get("backend")
    if status == "running" or alive:
        st.caption(_stage_line(store.last_call(run_id), alive, backend))
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Accepted", f"{done}/{total}")
    c2.metric("LLM calls", f"{totals['calls']:,}", help="HTTP attempts, retries included")
    c3.metric("Failing", f"{totals['failed_calls']:,}")
    c4.metric("Tokens", f"{totals['tokens']:,}")
    eta = event.get("eta_s") if event and alive else None
    c5.metric("ETA", _fmt_seconds(eta) if eta is not None else ("estimating…" if alive else "–"),
              help="Estimated once texts are being accepted.")
    st.caption(f"Cost so far: ${totals['cost']:.4f}")
    if totals["failed_calls"]:
        last_err = store.last_call(run_id, failed=True)
        if last_err and last_err.get("error"):
            stage = _STAGE_WORK.get(int(last_err["stage"] or 0), "a call")
            st.warning(
                f"{totals['failed_calls']} call(s) failed (retried where possible). Latest error, "
                f"while {stage}: {redact(str(last_err['error']), _secrets_of(llm_settings()))}"
            )
    newest = store.latest_texts(run_id, 5)
    if newest:
        st.caption("Newest accepted texts")
        st.dataframe(
            pd.DataFrame(newest)[["emotion", "text"]], hide_index=True, width="stretch",
            key=f"tail_{run_id}_{len(newest)}_{newest[0]['text_id']}",
        )
    per = pd.DataFrame(
        {"accepted": [accepted.get(e, 0) for e in target], "target": list(target.values())},
        index=list(target),
    )
    rejections = store.rejection_counts(run_id)
    left, right = st.columns(2)
    left.caption("Per emotion")
    left.dataframe(per, key=f"per_emotion_{run_id}")
    right.caption("Rejections by reason")
    if rejections:
        right.dataframe(pd.Series(rejections, name="count"), key=f"rejections_{run_id}")
    else:
        right.write("none")
    live = (event or {}).get("endpoints") if alive or status == "running" else None
    if live:  # where the calls go now: each endpoint's state and adapted limit
        st.caption("Endpoints now")
        st.dataframe(
            pd.DataFrame(live)[["label", "state", "in_flight", "concurrency_limit", "picks", "times_out",
                                "probe_in_s", "server_kind", "last_error"]],
            hide_index=True, width="stretch", key=f"endpoints_now_{run_id}",
        )
    per_endpoint = store.endpoint_usage(run_id)
    if not per_endpoint.empty:  # a run over several endpoints: calls, tokens, cost and failures of each
        st.caption("Usage per endpoint")
        st.dataframe(per_endpoint, hide_index=True, width="stretch", key=f"per_endpoint_{run_id}")
    batch_table(run_id, event)
    if handle is not None and handle.error:
        st.error(f"The run stopped: {handle.error}")
    elif status == "failed":
        st.error(f"The run failed: {info.get('message') or info.get('stop_reason') or 'no reason recorded'}")
    elif info.get("message") and status not in ("running", "done"):
        st.warning(f"{status}: {info['message']}.{stop_hint(info.get('stop_reason'))}")
    if alive:
        if st.button("Cancel", key=f"cancel_{run_id}", icon=":material/stop_circle:"):
            handle.cancel.set()
            st.toast("Cancelling: calls in flight finish, then the run stops (resumable).")
    elif status in ("stopped", "failed", "cancelled") or stale:
        if st.button("Resume", key=f"resume_{run_id}", icon=":material/play_arrow:"):
            with error_boundary("resuming the run"):
                resume_run(run_id, llm_settings())
                st.rerun()


def _changes_frame(changes: Sequence[Any]) -> Any:
    import pandas as pd

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    return pd.DataFrame(
        [{"field": c.path, "change": c.kind, "before": cell(c.before), "after": cell(c.after)} for c in changes],
        columns=["field", "change", "before", "after"],
    )


@st.cache_data(show_spinner=False, max_entries=64)
def _run_diff(path: str, before: str, after: str) -> dict[str, Any]:
    """``diff_runs`` of two stored runs (a run's spec and settings never change once it is created)."""
    from personagen_core.diff import diff_runs

    store = _store_for(path)
    return diff_runs(store.run(before), store.run(after))


def batch_table(run_id: str, event: dict[str, Any] | None = None) -> None:
    """A Batch API run's batches (wave, step, status, counts), what it is doing now and its surplus."""
    store = get_store()
    jobs = store.batch_jobs(run_id)
    if jobs.empty:
        return
    st.caption("Batches (Batch API)" + (f" · {event['message']}" if event and event.get("message") else ""))
    cols = ["wave", "step", "attempt", "status", "batch_id", "requests", "completed", "failed", "message"]
    st.dataframe(jobs[cols], hide_index=True, width="stretch", key=f"batches_{run_id}_{len(jobs)}")
    surplus = store.surplus_counts(run_id)
    st.caption("Surplus texts (kept, not delivered): "
               + (", ".join(f"{e} {n}" for e, n in surplus.items()) if surplus else "none"))


def run_details(run_id: str) -> None:
    """The exact spec and settings a run was launched with, and what differs from another run."""
    import json

    from personagen_core.errors import StoreError

    store = get_store()
    try:
        info = store.run(run_id)
    except StoreError:
        return
    with st.expander("Spec and settings of this run"):
        st.caption(
            f"Method `{info['method']}` · spec `{info.get('spec_name')}` (sha256 "
            f"{str(info.get('spec_hash') or '')[:12]}) · target {json.dumps(info['target'])}"
        )
        st.json(info.get("config") or {}, expanded=1)
        if info.get("spec_yaml"):
            st.download_button(
                "Download this run's spec (YAML)", info["spec_yaml"], file_name=f"{run_id}_spec.yaml",
                mime="application/x-yaml", key=f"run_spec_dl_{run_id}", icon=":material/download:",
            )
    runs = store.list_runs()
    others = [r for r in runs["run_id"].astype(str) if r != run_id]
    with st.expander("Compare with another run"):
        if not others:
            st.caption("No other run to compare with yet.")
            return
        other = st.selectbox(
            "Compare with", others, **keep("compare_run", others[0], options=others)
        )
        diff = _run_diff(str(store_path()), other, run_id)
        st.caption(f"From run `{other}` (before) to run `{run_id}` (after).")
        for part, title in (("config", "Settings"), ("target", "Target"), ("spec", "Spec")):
            changes = diff[part]
            if changes:
                st.markdown(f"**{title}**: {len(changes)} change(s)")
                st.dataframe(_changes_frame(changes), hide_index=True, width="stretch",
                             key=f"diff_{part}_{other}_{run_id}")
            else:
                st.markdown(f"**{title}**: identical")

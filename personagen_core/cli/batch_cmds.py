"""``personagen batch export|import`` and the Batch API parts of ``generate --batch`` and ``runs show``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from personagen_core.generation.pipeline import GenerationConfig, RunSummary
    from personagen_core.personas.spec import Spec
    from personagen_core.store import RunStore

__all__ = ["batch_table", "register", "resume_batch", "start_batch"]

batch_app = typer.Typer(
    help="Carry a Batch API run out offline (OpenAI / vLLM run_batch JSONL): export a step's requests, "
    "import the results.",
    no_args_is_help=True,
)

_DbOpt = Annotated[
    Path | None, typer.Option("--db", help="Run store (default $PERSONAGEN_HOME/runs.sqlite).")
]


def start_batch(spec: Spec, config: GenerationConfig, store: RunStore, run_id: str,
                poll_interval: float | None, run: Any) -> RunSummary:
    """``generate --batch``: a new Batch API run, with the progress display ``run(start, target)``."""
    from personagen_core.generation.batch import BatchOptions, run_batch_generation

    options = BatchOptions.model_validate({"poll_interval": poll_interval} if poll_interval else {})
    from personagen_core.generation.run_config import targets_of

    target = targets_of(spec, config)  # the quota the run records (emotions checked against the spec)
    typer.echo(f"batch mode: one batch per step, polled every {options.poll_interval:g} s (costs at batch prices)")
    return run(lambda on_event, cancel: run_batch_generation(
        spec, config, store, options=options, on_event=on_event, cancel=cancel, run_id=run_id), target)


def resume_batch(store: RunStore, run_id: str, info: dict[str, Any], llm: Any, poll_interval: float | None,
                 run: Any, **limits: Any) -> RunSummary:
    """``generate --resume`` of a Batch API run: a batch in flight is polled, never sent again; ``limits``
    (``max_cost``, ``token_budget``, ``max_attempts``; None keeps the stored one) may be raised."""
    from personagen_core.generation.batch import resume_batch_generation

    return run(lambda on_event, cancel: resume_batch_generation(
        store, run_id, llm=llm, poll_interval=poll_interval, on_event=on_event, cancel=cancel, **limits),
        info["target"])


def batch_table(store: RunStore, run_id: str, console: Any) -> None:
    """``runs show``: each batch of a Batch API run with its status and counts, and the surplus."""
    from rich.table import Table

    jobs = store.batch_jobs(run_id)
    if jobs.empty:
        return
    t = Table("wave", "step", "try", "status", "batch id", "requests", "completed", "failed", "note",
              title="batches")
    for _, j in jobs.iterrows():
        t.add_row(str(j["wave"]), str(j["step"]), str(j["attempt"]), str(j["status"]), str(j["batch_id"] or ""),
                  str(j["requests"]), str(j["completed"]), str(j["failed"]), str(j["message"] or ""))
    console.print(t)
    surplus = store.surplus_counts(run_id)
    console.print(
        "surplus (kept, not delivered): " + (", ".join(f"{e} {n}" for e, n in surplus.items()) if surplus else "none")
    )


@batch_app.command("new")
def batch_new(
    model: Annotated[str, typer.Option("--model", help="Model name written into every request (the offline "
                                       "job's model).")],
    per_emotion: Annotated[int, typer.Option("--per-emotion", min=1, help="Texts per emotion (exact).")],
    spec_file: Annotated[Path | None, typer.Option("--spec", help="Spec YAML file or saved spec name.")] = None,
    pack: Annotated[str | None, typer.Option("--pack", help="Shipped pack (default: japan).")] = None,
    emotions: Annotated[str | None, typer.Option("--emotions", help="Comma-separated subset.")] = None,
    method: Annotated[str, typer.Option("--method", help="personagen, attrprompt or priorwork.")] = "personagen",
    llm_validation: Annotated[bool, typer.Option("--llm-validation/--no-llm-validation",
                                                 help="Stage 1-3 LLM verdicts (default on).")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the sampling.")] = 0,
    db: _DbOpt = None,
) -> None:
    """Create a Batch API run to be carried out offline (``batch export`` / ``batch import``): nothing is sent."""
    from personagen_core.cli.generate_cmds import _load_spec
    from personagen_core.generation.batch import run_batch_generation
    from personagen_core.generation.llm import LLMSettings
    from personagen_core.generation.pipeline import GenerationConfig
    from personagen_core.store import RunStore

    spec = _load_spec(spec_file, pack)
    config = GenerationConfig(
        method=method, per_emotion=per_emotion, seed=seed, validate=llm_validation,
        emotions=[e.strip() for e in emotions.split(",") if e.strip()] if emotions else None,
        llm=LLMSettings(backend="openai", model=model),
    )
    summary = run_batch_generation(spec, config, RunStore(db), offline=True)
    typer.echo(f"run {summary.run_id}: created for an offline batch job; next: personagen batch export "
               f"{summary.run_id} --out requests.jsonl")


@batch_app.command("export")
def batch_export(
    run_id: Annotated[str, typer.Argument(help="Run id of a Batch API run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (run_batch input).")],
    db: _DbOpt = None,
) -> None:
    """Write the run's next step (a validation stage or the generation) as OpenAI / vLLM run_batch JSONL
    (one ``{"custom_id", "method", "url", "body"}`` per line). Run it with e.g.
    ``python -m vllm.entrypoints.openai.run_batch -i requests.jsonl -o results.jsonl --model M`` and bring
    the results back with ``personagen batch import``."""
    from personagen_core.generation.batch import export_requests
    from personagen_core.store import RunStore

    res = export_requests(RunStore(db), run_id, out)
    if "job_id" not in res:
        typer.echo(f"run {run_id}: nothing to export ({res.get('state')}: {res.get('message') or 'complete'})")
        return
    typer.echo(f"wrote {res['requests']} requests of wave {res['wave']} {res['step']} to {out}; after the batch "
               f"job, run: personagen batch import {run_id} RESULTS.jsonl")


@batch_app.command("import")
def batch_import(
    run_id: Annotated[str, typer.Argument(help="Run id of a Batch API run.")],
    results: Annotated[Path, typer.Argument(help="run_batch output JSONL ({id, custom_id, response, error}).")],
    db: _DbOpt = None,
) -> None:
    """Read the results of the exported step and continue the run with them (verdicts, texts, checks,
    usage at batch prices); then export the next step, until the run is done."""
    from personagen_core.generation.batch import import_results
    from personagen_core.store import RunStore

    if not results.is_file():
        raise typer.BadParameter(f"no such file: {results}", param_hint="RESULTS")
    summary = import_results(RunStore(db), run_id, results)
    acc, tgt = sum(summary.accepted.values()), sum(summary.target.values())
    typer.echo(f"run {run_id}: {summary.state} - {acc}/{tgt} texts, {summary.calls} calls, ${summary.cost:.4f}")
    if summary.state != "done":
        typer.echo(summary.message or summary.state)


def register(app: typer.Typer) -> None:
    """Add ``batch export|import`` to the ``personagen`` app."""
    app.add_typer(batch_app, name="batch")

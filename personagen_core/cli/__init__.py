"""The ``personagen`` command line: one typer sub-module per command group."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from personagen_core.errors import PersonaGenError

app = typer.Typer(
    name="personagen",
    help="Persona-based synthetic emotion data: sample personas, generate texts, evaluate them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Persona-based synthetic emotion data: sample personas, generate texts, evaluate them."""


@app.command()
def version() -> None:
    """Print the installed PersonaGen version."""
    from importlib.metadata import version as _version

    typer.echo(_version("personagen"))


# Each command group lives in its own module and registers itself on ``app``.
_COMMAND_MODULES = ("spec_cmds", "generate_cmds", "batch_cmds", "evaluate_cmds", "local_cmds", "app_cmd")
for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``personagen`` script: errors on bad input print one paragraph, exit code 2."""
    # Models ship inside packages: never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from personagen_core.redaction import redact_text

    try:
        app(args=argv, prog_name="personagen")
    except PersonaGenError as exc:
        from personagen_core.cli.generate_cmds import setting_hint

        # Messages may quote a base URL: never print credentials from it. Core messages name settings; the
        # hint names their flags.
        typer.echo(f"error: {redact_text(str(exc))}{setting_hint(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run handles it itself and exits with 3)
        typer.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["app", "main"]

"""``personagen spec validate|show|export`` and ``personagen personas``: specs and stage 1-3 sampling."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer

from personagen_core.errors import PersonaGenError, SpecError

if TYPE_CHECKING:
    from personagen_core.personas.spec import Spec

__all__ = ["register", "personas_frame", "write_frame"]

spec_app = typer.Typer(help="Validate, show and export generation specs.", no_args_is_help=True)

_PackOpt = Annotated[str | None, typer.Option("--pack", help="Shipped pack name (japan, united_states).")]
_SpecOpt = Annotated[
    Path | None, typer.Option("--spec", help="Spec YAML file, or the name of a saved spec (`spec list`).")
]
_NormOpt = Annotated[bool, typer.Option("--normalise", help="Rescale probabilities that do not sum to 1.")]


def _load(spec_file: Path | None, pack: str | None, normalise: bool = False) -> Spec:
    from personagen_core.personas.spec import DEFAULT_PACK, load_pack
    from personagen_core.spec_library import resolve_spec

    if spec_file is not None and pack is not None:
        raise typer.BadParameter("give --spec or --pack, not both")
    if spec_file is not None:
        return resolve_spec(spec_file, normalise=normalise)
    return load_pack(pack or DEFAULT_PACK)


@spec_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Spec YAML file to check.")],
    normalise: _NormOpt = False,
) -> None:
    """Check a spec file (structure, probabilities, references, rule conflicts); exit 2 on the first error."""
    from personagen_core.personas.sampling import build_model
    from personagen_core.personas.spec import spec_hash

    spec = _load(file, None, normalise)
    build_model(spec)  # rule/filter conflicts are errors too
    n_cat = len(spec.categories())
    typer.echo(
        f"ok: {file} — spec {spec.name!r} v{spec.version}, {n_cat} categories, {len(spec.rules)} rules, "
        f"{len(spec.emotions)} emotions, sha256 {spec_hash(spec)[:12]}"
    )


@spec_app.command("show")
def show(
    pack: _PackOpt = None,
    spec_file: _SpecOpt = None,
    as_yaml: Annotated[
        bool, typer.Option("--yaml", help="Print the canonical YAML instead of a summary.")
    ] = False,
) -> None:
    """Print a readable summary of a pack or spec file (or its canonical YAML with --yaml)."""
    from personagen_core.personas.spec import dump_spec

    spec = _load(spec_file, pack)
    if as_yaml:
        typer.echo(dump_spec(spec), nl=False)
        return
    typer.echo(f"{spec.name} (v{spec.version}) — {spec.label or spec.description}")
    typer.echo(f"emotions: {', '.join(spec.emotion_names)}")
    g = spec.generation
    typer.echo(
        f"generation: temperature {g.temperature}, at most {g.max_sentences} sentences, "
        f"{g.texts_per_persona} text(s) per persona, max_tokens {g.max_tokens}"
    )
    for key, cat in spec.categories().items():
        given = f" | {', '.join(cat.given)}" if cat.given else ""
        typer.echo(f"\n[stage {cat.stage}] {key}{given} — {cat.label} ({len(cat.items)} items)")
        if cat.source:
            typer.echo(f"  source: {cat.source}")
        top = sorted(cat.items, key=lambda it: -it.p)[:8]
        shown = ", ".join(f"{it.name} {it.p:.1%}" for it in top)
        more = f", … {len(cat.items) - len(top)} more" if len(cat.items) > len(top) else ""
        typer.echo(f"  {shown}{more}")
    if spec.scenario_filters:
        typer.echo(f"\nscenario filters: {spec.scenario_filters}")
    typer.echo(f"\nrules: {len(spec.rules)}")
    for i, rule in enumerate(spec.rules):
        typer.echo(f"  [{i}] {rule.name or '(unnamed)'}")


@spec_app.command("export")
def export(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the YAML.")],
    pack: _PackOpt = None,
    spec_file: _SpecOpt = None,
) -> None:
    """Write a pack (or a spec file, canonicalised) as an editable YAML file."""
    from personagen_core.personas.spec import dump_spec

    spec = _load(spec_file, pack)
    _atomic_write_text(out, dump_spec(spec))
    typer.echo(f"wrote {out}")


@spec_app.command("list")
def list_saved() -> None:
    """List the saved specs (saved from the dashboard or with `spec save`), newest first."""
    import datetime as dt

    from personagen_core.spec_library import SpecLibrary

    with SpecLibrary() as lib:
        rows = lib.list()
        if not rows:
            typer.echo(f"no saved specs in {lib.path}")
            return
        for r in rows:
            when = dt.datetime.fromtimestamp(r.updated_at, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            typer.echo(f"{r.name}\t{r.spec_name}\tsha256 {r.spec_hash[:12]}\tupdated {when} UTC")


@spec_app.command("save")
def save(
    name: Annotated[str, typer.Argument(help="Name to save the spec under.")],
    pack: _PackOpt = None,
    spec_file: _SpecOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a saved spec of that name.")] = False,
) -> None:
    """Save a spec file (or a pack) in the spec library under NAME, for `--spec NAME` and the dashboard."""
    from personagen_core.spec_library import SpecLibrary

    spec = _load(spec_file, pack)
    with SpecLibrary() as lib:
        saved = lib.save(name, spec, overwrite=overwrite)
        typer.echo(f"saved {saved.name!r} (spec {spec.name!r}, sha256 {saved.spec_hash[:12]}) in {lib.path}")


@spec_app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="Saved spec to delete.")]) -> None:
    """Delete a saved spec."""
    from personagen_core.spec_library import SpecLibrary

    with SpecLibrary() as lib:
        lib.delete(name)
        typer.echo(f"deleted {name!r} from {lib.path}")


def personas_frame(
    spec: Spec, n: int, *, seed: int | None = 0, reweight: bool = False, uniform: bool = False
) -> pd.DataFrame:
    """Sampled personas plus ``persona_id`` and the rendered descriptions (what ``personas`` writes)."""
    from personagen_core.personas.render import describe_persona, describe_scenario
    from personagen_core.personas.sampling import sample_personas

    df = sample_personas(spec, n, random_state=seed, reweight=reweight, mode="uniform" if uniform else "spec")
    records = df.to_dict("records")
    df.insert(0, "persona_id", range(len(df)))
    df["persona_description"] = [describe_persona(r, spec) for r in records]
    df["scenario_description"] = [describe_scenario(r, spec) for r in records]
    return df


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_frame(df: pd.DataFrame, path: Path) -> None:
    """Write a frame as .jsonl, .csv or .parquet (by suffix), atomically: no partial file on failure."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        raise PersonaGenError(f"output file {path} must end in .jsonl, .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".jsonl":
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        elif suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def personas(
    n: Annotated[int, typer.Option("-n", min=0, help="Number of personas.")],
    spec_file: _SpecOpt = None,
    pack: _PackOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same spec + seed = same personas).")] = 0,
    reweight: Annotated[
        bool,
        typer.Option("--reweight", help="Fit weights so marginals after rules and filters match the spec."),
    ] = False,
    normalise: _NormOpt = False,
    uniform: Annotated[
        bool, typer.Option("--uniform", help="Uniform attributes, no tables or rules (AttrPrompt baseline).")
    ] = False,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", help="Scenario filter KEY=VALUE[,VALUE...]; repeatable.")
    ] = None,
    summary: Annotated[bool, typer.Option("--summary", help="Print spec vs sampled marginals.")] = False,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output .jsonl, .csv or .parquet.")] = None,
) -> None:
    """Sample personas with all stage 1-3 attributes and their rendered description."""
    spec = _load(spec_file, pack, normalise)
    if filters:
        spec = _with_filters(spec, filters)
    if out is not None and out.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        raise typer.BadParameter(f"{out} must end in .jsonl, .csv or .parquet", param_hint="-o")
    df = personas_frame(spec, n, seed=seed, reweight=reweight, uniform=uniform)
    gap = df.attrs.get("personagen", {}).get("ipf_max_gap", 0.0)
    if reweight and gap > 1e-4:
        typer.echo(
            f"warning: rules make the spec's marginals unreachable; after re-weighting the largest gap is "
            f"{gap:.4f} (see --summary)",
            err=True,
        )
    if out is not None:
        write_frame(df, out)
        typer.echo(f"wrote {len(df)} personas to {out}", err=True)
    else:
        typer.echo(
            df.drop(columns=["persona_description", "scenario_description"]).head(20).to_string(index=False)
        )
    if summary:
        from personagen_core.personas.sampling import marginal_summary

        table = marginal_summary(spec, df)
        typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def _with_filters(spec: Spec, filters: list[str]) -> Spec:
    from personagen_core.personas.spec import with_filters

    parsed: dict[str, list[str]] = {}
    for f in filters:
        key, sep, values = f.partition("=")
        if not sep or not values.strip():
            raise SpecError(f"filter {f!r} must look like KEY=VALUE[,VALUE...]", "scenario_filters")
        parsed[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return with_filters(spec, parsed)


def register(app: typer.Typer) -> None:
    """Add the ``spec`` command group and the ``personas`` command to the root app."""
    app.add_typer(spec_app, name="spec")
    app.command("personas")(personas)

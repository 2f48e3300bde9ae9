"""``personagen evaluate``: evaluate runs and/or data files side by side into report.json + .html."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import typer

from personagen_core.errors import DataError

__all__ = ["register", "run_evaluate"]


class _ProgressBar:
    """The evaluation's progress events as a bar on a terminal (stderr), as lines otherwise.

    ``on_event(stage, fraction)`` comes from :func:`evaluation.evaluate`; within the embedding stage it
    moves with every chunk of texts embedded. Off a terminal (logs, CI) a line is printed per stage and
    per 10 % of progress, so a long embedding still shows that it advances.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage = ""
        self.step = -1

    def __call__(self, stage: str, fraction: float) -> None:
        if self.tty:
            filled = int(fraction * 30)
            end = "\n" if stage == "done" else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {stage:<20}{end}")
            self.stream.flush()
            return
        step = int(fraction * 10)
        if stage != self.stage or step != self.step:
            self.stage, self.step = stage, step
            typer.echo(f"[{fraction:4.0%}] {stage}", err=True)


def _parse_projection(projection: str) -> tuple[str, ...]:
    """``both`` (t-SNE + UMAP), ``all``, ``none`` or a comma-separated list of tsne, umap, pca."""
    from personagen_core.evaluation.projection import METHODS

    named = {"both": ("tsne", "umap"), "all": METHODS, "none": ()}
    if projection in named:
        return tuple(named[projection])
    methods = tuple(m.strip() for m in projection.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise DataError(
            f"--projection must be both, all, none or a comma-separated list of {', '.join(METHODS)} "
            f"(got {projection!r})"
        )
    return methods


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name} ({i})", i + 1
    taken.add(out)
    return out


def _load_input(spec: str, defaults: Any, *, gold_file: bool) -> Any:
    """One ``FILE[:key=value,...]`` input read with its own options over the shared defaults; a missing
    column names the options that apply to this kind of file."""
    from personagen_core.evaluation import gold
    from personagen_core.evaluation import suite as evaluation

    path, options = gold.parse_file_spec(spec)
    try:
        return evaluation.load_data_file(path, options.merged(defaults))
    except gold.ColumnError as exc:
        option = f"--gold-{exc.role}-col" if gold_file else f"--{exc.role}-col"
        raise DataError(f"{exc}; name it with {path}:{exc.role}=COLUMN or {option}") from exc


def run_evaluate(
    run_ids: list[str],
    data_files: list[str | Path],
    out_dir: Path,
    *,
    names: list[str] | None = None,
    db: Path | None = None,
    gold_train: str | Path | None = None,
    gold_test: str | Path | None = None,
    label_map: Path | None = None,
    gold_label_map: Path | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    gold_text_col: str | None = None,
    gold_label_col: str | None = None,
    multi_label: str | None = None,
    judge: bool = False,
    judge_model: str | None = None,
    backend: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    projection: str = "both",
    seed: int = 0,
    max_texts: int | None = None,
    max_projection_points: int | None = 10_000,
    max_train_texts: int | None = 20_000,
    max_gold: int | None = None,
    bootstrap: int = 20,
    diversity_resamples: int = 20,
    prd_runs: int = 10,
    use_cache: bool = True,
    store_result: bool = True,
    on_notice: Any = None,
    on_event: Any = None,
) -> tuple[Path, Path, dict[str, Any]]:
    """Load the inputs, run :func:`evaluation.evaluate`, write the report; returns (json, html, report).

    Data and gold files are ``FILE[:key=value,...]`` specs (:func:`gold.parse_file_spec`); ``text_col`` /
    ``label_col`` are the defaults of data files, ``gold_text_col`` / ``gold_label_col`` and
    ``gold_label_map`` those of gold files, ``multi_label`` of both. ``on_notice(line)`` receives the size
    estimate printed before embedding; ``on_event(stage, fraction)`` the progress (default: a bar on stderr).

    With ``use_cache``, an evaluation stored earlier with the same inputs (their content), settings and
    embedding model is reused instead of recomputed (``report["reused"]`` names it).
    """
    from personagen_core.evaluation import gold, sizing
    from personagen_core.evaluation import suite as evaluation
    from personagen_core.evaluation.report import write_report

    if not run_ids and not data_files:
        raise DataError("nothing to evaluate: give one or more RUN_IDs and/or --data FILE")
    methods = _parse_projection(projection)
    if diversity_resamples == 1:
        raise DataError("--diversity-resamples must be 0 (no intervals) or at least 2 (one draw has no spread)")
    if names and len(names) != len(run_ids) + len(data_files):
        raise DataError(
            f"--name was given {len(names)} times for {len(run_ids) + len(data_files)} datasets; "
            "give one name per dataset (runs first, then data files) or none"
        )
    if multi_label is not None and multi_label not in gold.MULTI_LABEL_POLICIES:
        raise DataError(
            f"--multi-label must be one of {', '.join(gold.MULTI_LABEL_POLICIES)} (got {multi_label!r})"
        )

    store = None
    if run_ids or db is not None:
        from personagen_core.store import RunStore

        store = RunStore(db)
    datasets: dict[str, Any] = {}
    taken: set[str] = set()
    rejections: dict[str, Any] = {}
    for run_id in run_ids:
        name = _unique(run_id, taken)
        datasets[name] = evaluation.load_run_dataset(store, run_id)
        rejections[name] = evaluation.load_run_rejections(store, run_id)
    file_names = [_unique(gold.parse_file_spec(str(spec))[0].stem, taken) for spec in data_files]
    final_names = list(names) if names else [*datasets, *file_names]
    if len(set(final_names)) != len(final_names):
        raise DataError(f"--name values must be distinct (got {names})")
    data_defaults = gold.ReadOptions(text_col=text_col, label_col=label_col, multi_label=multi_label)
    gold_defaults = gold.ReadOptions(
        text_col=gold_text_col,
        label_col=gold_label_col,
        multi_label=multi_label,
        label_map=str(gold_label_map) if gold_label_map else None,
    )
    settings = evaluation.EvaluationSettings(
        projections=methods,
        max_projection_points=max_projection_points,
        max_train_texts=max_train_texts,
        seed=seed,
        judge=judge,
        judge_model=judge_model,
        max_texts=max_texts,
        max_gold=max_gold,
        bootstrap=bootstrap,
        diversity_resamples=diversity_resamples,
        prd_runs=prd_runs,
        use_cache=use_cache,
    )
    from personagen_core.evaluation.embeddings import Embedder

    notice = on_notice or (lambda text: typer.echo(text, err=True))
    embedder = Embedder(settings.embedding_model, precision=settings.embedding_precision)
    key = None
    if use_cache:
        from personagen_core.evaluation.stored import content_key

        # Files are keyed by their bytes (and the files their options name), runs by their rows: a rerun
        # finds its stored evaluation without parsing 100,000 lines again.
        key = content_key(
            datasets,
            settings=settings,
            extra=[
                embedder.model_id,
                final_names,
                *(_input_digest(str(spec), data_defaults) for spec in data_files),
                *(_input_digest(str(g), gold_defaults) if g else "-" for g in (gold_train, gold_test)),
                _path_digest(Path(label_map)) if label_map else "-",
                *(content_key(rej, settings={}) for rej in rejections.values()),
                *([backend, base_url, judge_model] if judge else []),
            ],
        )
        reused = _reuse(key, out_dir, notice)
        if reused is not None:
            return reused
    for spec, name in zip(data_files, file_names, strict=True):
        datasets[name] = _load_input(str(spec), data_defaults, gold_file=False)
    if names:
        rejections = {
            new: rejections[old] for old, new in zip(datasets, names, strict=True) if old in rejections
        }
        datasets = dict(zip(names, datasets.values(), strict=True))
    train = _load_input(str(gold_train), gold_defaults, gold_file=True) if gold_train else None
    test = _load_input(str(gold_test), gold_defaults, gold_file=True) if gold_test else None
    mapping = gold.load_label_map(label_map) if label_map else None
    plan = sizing.embedding_plan(datasets, train, test, settings, model_id=embedder.model_id,
                                 cached_fraction=getattr(embedder, "cached_fraction", None))  # any encoder works
    for line in plan.lines():
        notice(line)
    llm_settings = None
    if judge:
        from personagen_core.generation.llm import LLMSettings

        overrides: dict[str, Any] = {"backend": backend, "base_url": base_url, "timeout": timeout}
        if judge_model:
            overrides["models"] = {"judge": judge_model}
        llm_settings = LLMSettings.from_env(**overrides)
        if llm_settings.backend == "local":
            from personagen_core.local import prefer_passive_openmp

            prefer_passive_openmp()  # before LightGBM loads libgomp, which llama.cpp shares
    report = evaluation.evaluate(
        datasets,
        gold_train=train,
        gold_test=test,
        label_map=mapping,
        settings=settings,
        embedder=embedder,
        rejections=rejections,
        llm_settings=llm_settings,
        judge_store=store,
        on_event=on_event or _ProgressBar(),
    )
    timings = report.get("timings", {})
    sizing.record_rate(
        embedder.model_id,
        embedder.stats.misses,
        timings.get("embeddings", 0.0) + timings.get("gold embeddings", 0.0),
    )
    if not store_result:
        json_path, html_path = write_report(report, out_dir)
        return json_path, html_path, report
    from personagen_core.evaluation.report import render_html, renderer_id, to_jsonable
    from personagen_core.evaluation.stored import EvaluationStore

    evaluations = EvaluationStore()
    try:
        eval_id = evaluations.save(report, runs=run_ids, source="cli", key=key)
        report["stored"] = {
            "eval_id": eval_id,
            "source": "cli",
            "runs": list(run_ids),
            "path": str(evaluations.path),
        }
        page = render_html(to_jsonable(report))
        # Kept with the evaluation: a rerun with the same inputs writes this page instead of drawing it.
        evaluations.save_html(eval_id, page, renderer=renderer_id())
    finally:
        evaluations.close()
    json_path, html_path = write_report(report, out_dir, html_page=page)
    return json_path, html_path, report


def _path_digest(path: Path) -> str:
    """sha256 of a file's bytes, of every file below a folder (with their relative paths), or ``-``."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    elif path.is_dir():
        for item in sorted(path.rglob("*")):
            if item.is_file():
                digest.update(item.relative_to(path).as_posix().encode() + b"\x00")
                digest.update(_path_digest(item).encode())
    else:
        return "-"
    return digest.hexdigest()


def _input_digest(spec: str, defaults: Any) -> str:
    """What a ``FILE[:key=value,...]`` input depends on: its options and the bytes of the file, of the
    label names and label map files its options name, and of a names file beside it (GoEmotions)."""
    from personagen_core.evaluation import gold

    path, options = gold.parse_file_spec(spec)
    merged = options.merged(defaults)
    files = [path, *(Path(v) for v in (merged.label_names, merged.label_map) if v)]
    files += [path.parent / n for n in ("labels.txt", "emotions.txt")]
    return hashlib.sha256(
        json.dumps([repr(merged), [(str(f), _path_digest(f)) for f in files]]).encode()
    ).hexdigest()


def _reuse(key: str, out_dir: Path, notice: Any) -> tuple[Path, Path, dict[str, Any]] | None:
    """The stored evaluation with inputs ``key``, written to ``out_dir``, or None when there is none."""
    from personagen_core.evaluation.report import render_html, renderer_id, to_jsonable, write_report
    from personagen_core.evaluation.stored import EvaluationStore

    evaluations = EvaluationStore()
    try:
        found = evaluations.find(key)
        if found is None:
            return None
        report = evaluations.get(found)
        path = evaluations.path
        page = evaluations.get_html(found, renderer=renderer_id())
        if page is None:
            page = render_html(to_jsonable(report))
            evaluations.save_html(found, page, renderer=renderer_id())
    finally:
        evaluations.close()
    notice(
        f"same inputs, settings and embedding model as stored evaluation {found}: reusing it "
        "(--no-cache recomputes)"
    )
    report["stored"] = {**report.get("stored", {}), "path": str(path)}
    json_path, html_path = write_report(report, out_dir, html_page=page)
    report["reused"] = found
    return json_path, html_path, report


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """A few headline numbers per dataset for the terminal."""
    from personagen_core.evaluation.diversity_ci import format_interval, interval_notes

    lines = []
    for name in report["datasets"]:
        parts = [f"{report['datasets'][name]['n']} texts"]
        sep = (report.get("separability") or {}).get("datasets", {}).get(name)
        if sep:
            parts.append(f"separability acc {sep['accuracy']:.3f}")
        div_ds = (report.get("diversity") or {}).get("datasets", {}).get(name, {})
        div = div_ds.get("overall", {})
        if div.get("mean_cosine_distance") is not None:
            parts.append(f"MCD {div['mean_cosine_distance']:.3f}")
        equal = ((div_ds.get("equal_size") or {}).get("overall") or {}).get("mean_cosine_distance")
        if equal and equal.get("value") is not None:
            parts.append(f"MCD at equal size {format_interval(equal)}")
        real = (report.get("real_data") or {}).get("datasets", {}).get(name, {})
        if (real.get("fid") or {}).get("value") is not None:
            parts.append(f"FID {real['fid']['value']:.3f}")
        row = (report.get("downstream") or {}).get("rows", {}).get(name)
        if row and row.get("accuracy") is not None:
            parts.append(f"gold-test acc {row['accuracy']:.3f}")
        lines.append(f"  {name}: " + ", ".join(parts))
    if report.get("diversity"):
        lines += [f"  diversity intervals: {note}" for note in interval_notes(report["diversity"])]
    return lines


def register(app: typer.Typer) -> None:
    """Register ``evaluate`` and the ``evaluations`` group on the ``personagen`` typer application."""
    register_evaluations(app)

    @app.command("evaluate")
    def evaluate_cmd(
        run_ids: list[str] | None = typer.Argument(None, help="Run ids in the run store to evaluate."),
        data: list[str] | None = typer.Option(
            None,
            "--data",
            help="Data file(s) with text and label columns (CSV, TSV, JSONL, Parquet, text;label, a datasets "
            "folder), as FILE or FILE:text=COL,label=COL,sep=tab,header=no,encoding=latin-1,format=F,"
            "names=labels.txt,map=MAP.yaml,multi-label=first,split=S.",
        ),
        out: Path = typer.Option(
            ..., "-o", "--out", help="Output directory for report.json and report.html."
        ),
        name: list[str] | None = typer.Option(
            None, "--name", help="Display name per dataset, in order (runs first, then data files)."
        ),
        db: Path | None = typer.Option(
            None, "--db", help="Run store (default $PERSONAGEN_HOME/runs.sqlite)."
        ),
        gold_train: str | None = typer.Option(
            None,
            "--gold-train",
            help="Gold training split (Table VII gold row); FILE[:key=value,...] as --data.",
        ),
        gold_test: str | None = typer.Option(
            None, "--gold-test", help="Gold test split (Tables VI and VII); FILE[:key=value,...] as --data."
        ),
        label_map: Path | None = typer.Option(
            None, "--label-map", help="YAML/JSON mapping synthetic label -> gold label (null = leave out)."
        ),
        gold_label_map: Path | None = typer.Option(
            None,
            "--gold-label-map",
            help="YAML/JSON map applied to the gold files' labels (e.g. GoEmotions -> Ekman; "
            "target: [sources] groups many-to-one; null = leave out).",
        ),
        text_col: str | None = typer.Option(
            None, "--text-col", help="Text column (name or 0-based position) of the --data files."
        ),
        label_col: str | None = typer.Option(None, "--label-col", help="Label column of the --data files."),
        gold_text_col: str | None = typer.Option(
            None, "--gold-text-col", help="Text column (name or 0-based position) of the gold files."
        ),
        gold_label_col: str | None = typer.Option(
            None, "--gold-label-col", help="Label column of the gold files."
        ),
        multi_label: str | None = typer.Option(
            None,
            "--multi-label",
            help="Rows with several labels: refused (default), or first, drop or explode (stated in the report).",
        ),
        judge: bool = typer.Option(False, "--judge/--no-judge", help="Score every text with the LLM judge."),
        judge_model: str | None = typer.Option(None, "--judge-model", help="Model of the LLM judge."),
        backend: str | None = typer.Option(
            None, "--backend", help="LLM backend for the judge: openai or local."
        ),
        base_url: str | None = typer.Option(
            None, "--base-url", help="OpenAI-compatible endpoint for the judge."
        ),
        timeout: float | None = typer.Option(
            None, "--timeout", min=0.1, help="Seconds per judge call (default: fits the backend)."
        ),
        projection: str = typer.Option(
            "both", "--projection", help="both (t-SNE + UMAP), all, none, or a list such as tsne,pca."
        ),
        max_projection_points: int = typer.Option(
            10_000,
            "--max-projection-points",
            min=0,
            help="Project a seeded sample of at most this many texts per dataset, stratified by label "
            "(stated in the report); 0 = every text.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of every random step."),
        max_texts: int | None = typer.Option(
            None, "--max-texts", help="Cap per dataset (seeded stratified sample, stated in the report)."
        ),
        max_train_texts: int = typer.Option(
            20_000,
            "--max-train-texts",
            min=0,
            help="LightGBM (separability, Table VII) trains on a seeded sample of at most this many texts "
            "per dataset, stratified by label (stated in the report); 0 = every text.",
        ),
        max_gold: int | None = typer.Option(
            None,
            "--max-gold",
            help="Cap on the gold test split (seeded stratified sample, stated in the report).",
        ),
        bootstrap: int = typer.Option(
            20, "--bootstrap", help="Bootstrap resamples for confidence intervals."
        ),
        diversity_resamples: int = typer.Option(
            20,
            "--diversity-resamples",
            min=0,
            help="Seeded equal-size subsamples per dataset for the diversity intervals (0 = none, else >= 2).",
        ),
        prd_runs: int = typer.Option(10, "--prd-runs", help="PRD clusterings averaged (the paper: 10)."),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached results on disk."),
        store: bool = typer.Option(
            True, "--store/--no-store", help="Keep the evaluation in $PERSONAGEN_HOME/evaluations.sqlite."
        ),
    ) -> None:
        """Evaluate runs and/or data files side by side (Tables IV-VII) and write an offline HTML report."""
        json_path, html_path, report = run_evaluate(
            list(run_ids or []),
            list(data or []),
            out,
            names=list(name or []) or None,
            db=db,
            gold_train=gold_train,
            gold_test=gold_test,
            label_map=label_map,
            gold_label_map=gold_label_map,
            text_col=text_col,
            label_col=label_col,
            gold_text_col=gold_text_col,
            gold_label_col=gold_label_col,
            multi_label=multi_label,
            judge=judge,
            judge_model=judge_model,
            backend=backend,
            base_url=base_url,
            timeout=timeout,
            projection=projection,
            seed=seed,
            max_texts=max_texts,
            max_projection_points=max_projection_points or None,
            max_train_texts=max_train_texts or None,
            max_gold=max_gold,
            bootstrap=bootstrap,
            diversity_resamples=diversity_resamples,
            prd_runs=prd_runs,
            use_cache=cache,
            store_result=store,
        )
        for line in _summary_lines(report):
            typer.echo(line)
        for section, reason in report.get("skipped", {}).items():
            typer.echo(f"  (skipped {section}: {reason})", err=True)
        for w in report.get("warnings", []):
            where = f"{w['section']}, {w['dataset']}" if w.get("dataset") else w["section"]
            typer.echo(f"  warning ({where}): {w['message']}", err=True)
        if report.get("reused"):
            typer.echo(f"reused stored evaluation {report['reused']} (same inputs; --no-cache recomputes)")
        elif report.get("stored"):
            typer.echo(f"stored as evaluation {report['stored']['eval_id']} (personagen evaluations list)")
        typer.echo(f"wrote {json_path}")
        typer.echo(f"wrote {html_path}")
        sys.stdout.flush()


def register_evaluations(app: typer.Typer) -> None:
    """Register the ``evaluations`` group: stored evaluations (list, export)."""
    group = typer.Typer(help="Stored evaluations (dashboard and CLI).", no_args_is_help=True)

    @group.command("list")
    def list_cmd(
        run: str | None = typer.Option(None, "--run", help="Only evaluations of this run id."),
        limit: int = typer.Option(20, "--limit", help="How many, newest first."),
    ) -> None:
        """List stored evaluations: id, date, datasets, texts, settings."""
        from personagen_core.evaluation.stored import EvaluationStore

        rows = EvaluationStore().list(limit=limit, run_id=run)
        if rows.empty:
            typer.echo("no stored evaluations")
            return
        for r in rows.itertuples():
            warn = f" · {r.warnings} warning(s)" if r.warnings else ""
            typer.echo(f"{r.eval_id}  {r.created_at}  {r.source:9}  {r.summary}{warn}")

    @group.command("export")
    def export_cmd(
        eval_id: str = typer.Argument(..., help="Evaluation id (see: personagen evaluations list)."),
        out: Path = typer.Option(
            ..., "-o", "--out", help="Output directory for report.json and report.html."
        ),
    ) -> None:
        """Write a stored evaluation as report.json and the self-contained report.html."""
        from personagen_core.evaluation.report import write_report
        from personagen_core.evaluation.stored import EvaluationStore

        json_path, html_path = write_report(EvaluationStore().get(eval_id), out)
        typer.echo(f"wrote {json_path}")
        typer.echo(f"wrote {html_path}")

    app.add_typer(group, name="evaluations")

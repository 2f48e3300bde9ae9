"""Export a run's accepted texts: CSV, JSON lines, Parquet, or a Hugging Face ``datasets`` folder with a card.

Every format has the same columns: ``text_id, run_id, method, emotion, label`` (= emotion, the column the
evaluation reads), ``text``, ``model``, ``persona_id``, the rendered ``persona`` and ``scenario`` and one
column per sampled attribute, then ``verdict_stageN`` / ``reason_stageN`` (N = 1, 2, 3; empty where the
method did not validate). Nothing secret is in a run, so nothing secret can be exported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from personagen_core.errors import PersonaGenError
from personagen_core.generation.vocabulary import FUNNEL_VERDICTS
from personagen_core.store import RunStore

__all__ = ["FORMATS", "dataset_card", "export_frame", "export_run", "iter_export_frames"]

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet", "hf")


def _with_label(df: pd.DataFrame) -> pd.DataFrame:
    df.insert(df.columns.get_loc("emotion") + 1, "label", df["emotion"])
    return df


def export_frame(store: RunStore, run_id: str) -> pd.DataFrame:
    """The exported table of a run (see the module docstring for its columns), all rows in memory."""
    return _with_label(store.texts(run_id))


def iter_export_frames(store: RunStore, run_id: str, chunk_size: int = 10_000) -> Iterator[pd.DataFrame]:
    """The exported table of a run in frames of at most ``chunk_size`` rows, read from one cursor."""
    for df in store.iter_texts(run_id, chunk_size):
        yield _with_label(df)


def _parquet_schema(columns: list[str]) -> Any:
    import pyarrow as pa

    ints = {"text_id", "persona_id"}
    return pa.schema([(c, pa.int64() if c in ints else pa.string()) for c in columns])


def export_run(store: RunStore, run_id: str, fmt: str, path: str | Path, *, chunk_size: int = 10_000) -> Path:
    """Write run ``run_id`` to ``path`` in format ``fmt`` (``csv``, ``jsonl``, ``parquet`` or ``hf``).

    ``csv``, ``jsonl`` and ``parquet`` stream: rows are read from the store and written ``chunk_size`` at a
    time (a 100k-text run is never one table in memory). ``hf`` writes a ``datasets.Dataset.save_to_disk``
    folder plus a ``README.md`` dataset card, from the whole table. Parent folders are created. Returns the
    path written.
    """
    if fmt not in FORMATS:
        raise PersonaGenError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    store.run(run_id)  # a missing run is a StoreError before any file is created
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "hf":
            import datasets  # heavy: only for this format

            df = export_frame(store, run_id)
            datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(out))
            (out / "README.md").write_text(dataset_card(store, run_id), encoding="utf-8")
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            try:
                for df in iter_export_frames(store, run_id, chunk_size):
                    if writer is None:
                        schema = _parquet_schema(list(df.columns))
                        writer = pq.ParquetWriter(out, schema)
                    writer.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False))
            finally:
                if writer is not None:
                    writer.close()
        else:
            with out.open("w", encoding="utf-8", newline="") as f:
                for i, df in enumerate(iter_export_frames(store, run_id, chunk_size)):
                    if fmt == "csv":
                        df.to_csv(f, index=False, header=i == 0)
                    elif len(df):
                        chunk = df.to_json(orient="records", lines=True, force_ascii=False)
                        f.write(chunk if chunk.endswith("\n") else chunk + "\n")
    except OSError as exc:
        raise PersonaGenError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return out


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(store: RunStore, run_id: str) -> str:
    """A Hugging Face dataset card (README.md) for a run: spec, models, method, counts, funnel, usage."""
    info = store.run(run_id)
    cfg = info["config"]
    llm = cfg.get("llm") or {}
    counts = store.accepted_counts(run_id)
    funnel = store.funnel(run_id)
    totals = store.totals(run_id)
    usage = store.usage(run_id)
    models = sorted({m for m in usage["model"].dropna()}) if len(usage) else [llm.get("model", "?")]
    n = sum(counts.values())
    header = "\n".join(
        [
            "---",
            "task_categories:",
            "- text-classification",
            "task_ids:",
            "- multi-class-classification",
            "tags:",
            "- synthetic",
            "- emotion",
            "- personagen",
            "size_categories:",
            f"- {_size_category(n)}",
            "---",
        ]
    )
    stage_rows = [(s, *(v.get(k, 0) for k in (*FUNNEL_VERDICTS, "cached"))) for s, v in funnel["stages"].items()]
    rej = store.rejection_counts(run_id)
    usage_rows = [
        (
            r["stage"],
            r["role"],
            r["model"],
            r["calls"],
            r["prompt_tokens"],
            r["completion_tokens"],
            f"{r['cost']:.4f}",
        )
        for _, r in usage.iterrows()
    ]
    config_public = {k: v for k, v in cfg.items() if k != "llm"}
    config_public["llm"] = {
        k: llm.get(k) for k in ("backend", "model", "models", "local_model", "concurrency") if k in llm
    }
    parts = [
        header,
        f"# PersonaGen synthetic emotion texts: run `{run_id}`",
        "Synthetic short texts, each written by an LLM to express one target emotion, conditioned on a "
        "persona and a scene (PersonaGen, after Inoshita & Harada, *Persona-Based Synthetic Data Generation "
        "Using Multi-Stage Conditioning with Large Language Models for Emotion Recognition*). "
        "These texts are machine-generated, not real posts.",
        "## Provenance",
        _table(
            [
                ("method", info["method"]),
                ("spec", f"{info['spec_name']} (sha256 {info['spec_hash']})"),
                ("models", ", ".join(models)),
                ("status", info["status"]),
                ("texts", n),
                ("LLM calls", totals["calls"]),
                ("tokens", totals["tokens"]),
                ("cost (USD)", f"{totals['cost']:.4f}"),
            ],
            ("field", "value"),
        ),
        "## Texts per emotion",
        _table(sorted(counts.items()), ("emotion", "texts")),
        "## Funnel",
        f"Candidates sampled: {funnel['sampled']} (all satisfy the spec's whitelist rules). "
        f"Outputs generated: {funnel['generated']}, accepted: {funnel['accepted']}.",
        _table(stage_rows, ("stage", *FUNNEL_VERDICTS, "cached"))
        if stage_rows
        else "No LLM validation in this run.",
        "## Rejections",
        _table(sorted(rej.items(), key=lambda kv: -kv[1]), ("reason", "count")) if rej else "None.",
        "## Usage",
        _table(usage_rows, ("stage", "role", "model", "calls", "prompt tokens", "completion tokens", "cost"))
        if usage_rows
        else "No calls recorded.",
        "## Configuration",
        "```json\n" + json.dumps(config_public, indent=2, sort_keys=True) + "\n```",
        "## Columns",
        "`text`, `emotion` and `label` (the same value), `method`, `run_id`, `text_id`, `model`, "
        "`persona_id`, "
        "`persona` and `scenario` (the descriptions the generator saw) and one column per sampled attribute.",
    ]
    return "\n\n".join(parts) + "\n"

"""Export streams: a run is read and written in chunks, never as one table, with the same content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from personagen_core.export import export_frame, export_run
from personagen_core.store import RunStore

N = 53  # texts in the run: 8 chunks of 7 (the last one 4)


def _big_run(store: RunStore) -> str:
    run_id = store.create_run(
        method="personagen", config={}, target={"joy": N, "fear": N}, spec_yaml=None, spec_hash=None,
        spec_name="x",
    )
    with store.write_behind():
        store.add_personas(
            run_id, 0, [(i, {"age": f"{i % 5}0s", "place": "café, \"home\""}, f"p{i}", "") for i in range(N)]
        )
        store.add_verdicts(run_id, [(i, 1, "m", "natural", "fine, really", False) for i in range(N)])
        for i in range(N):
            store.add_text(
                run_id, emotion="joy" if i % 2 else "fear", text=f"Text {i}, with a comma\nand a newline",
                text_norm=f"text {i}", persona_id=i, model="m", quota=N, defer=True,
            )
    return run_id


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_streams_in_chunks_with_the_same_rows(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = _big_run(store)
    expected = export_frame(store, run_id)
    assert len(expected) == N

    sizes: list[int] = []
    original = RunStore.iter_texts

    def counting(self: RunStore, run: str, chunk_size: int = 10_000) -> Iterator[pd.DataFrame]:
        for df in original(self, run, chunk_size):
            sizes.append(len(df))
            yield df

    def whole_table(*_: object, **__: object) -> pd.DataFrame:
        raise AssertionError("export loaded the whole run")

    monkeypatch.setattr(RunStore, "iter_texts", counting)
    monkeypatch.setattr(RunStore, "texts", whole_table)
    out = export_run(store, run_id, fmt, tmp_path / f"out.{fmt}", chunk_size=7)
    assert sizes == [7] * 7 + [4]

    if fmt == "csv":
        got = pd.read_csv(out, dtype=str, keep_default_na=False)
    elif fmt == "jsonl":
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == N
        got = pd.DataFrame([json.loads(line) for line in lines])
    else:
        got = pd.read_parquet(out)
    assert list(got.columns) == list(expected.columns)
    assert list(got.columns[:10]) == ["text_id", "run_id", "method", "emotion", "label", "text", "model",
                                       "persona_id", "persona", "scenario"]
    assert "age" in got.columns and "verdict_stage1" in got.columns
    for col in ("text_id", "text", "age", "place", "verdict_stage1", "reason_stage1", "label"):
        assert got[col].astype(str).tolist() == expected[col].astype(str).tolist(), col


def test_export_of_a_run_without_texts_writes_the_header(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    run_id = store.create_run(method="personagen", config={}, target={"joy": 1}, spec_yaml=None,
                              spec_hash=None, spec_name="x")
    header = export_run(store, run_id, "csv", tmp_path / "e.csv").read_text().strip()
    assert header.startswith("text_id,run_id,method,emotion,label,text")
    assert export_run(store, run_id, "jsonl", tmp_path / "e.jsonl").read_text() == ""
    assert len(pd.read_parquet(export_run(store, run_id, "parquet", tmp_path / "e.parquet"))) == 0
    with pytest.raises(ValueError, match="chunk_size"):
        next(store.iter_texts(run_id, 0))

"""Stored evaluations (personagen_core.evaluation.stored): save, reopen, list, find; shared by threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from personagen_core.errors import StoreError
from personagen_core.evaluation.stored import EvaluationStore, default_path, describe_settings


def _report(name: str = "run-a", n: int = 21, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "generated_at": "2026-12-02T07:30:00+00:00",
        "settings": {"projections": ["tsne"], "seed": 0, "max_texts": None, "judge": False},
        "datasets": {name: {"n": n, "labels": {"joy": n}, "source": f"run {name}"}},
        "diversity": {"datasets": {name: {"overall": {"vendi_score": 1.5}}}},
        "gold": None,
        "warnings": [{"section": "diversity", "dataset": name, "message": "few texts"}],
        **extra,
    }


def test_save_reopen_list_and_delete(tmp_path: Path) -> None:
    store = EvaluationStore(tmp_path / "ev.sqlite")
    first = store.save(_report(), runs=["run-a"], source="dashboard", key="k1")
    second = store.save(_report("run-b", 35), runs=["run-b"], source="cli", key="k2")
    assert first != second and first.startswith("ev-20261202-073000-")
    store.close()

    reopened = EvaluationStore(tmp_path / "ev.sqlite")  # a reload or a restart: a new process opens the file
    report = reopened.get(first)
    assert report["datasets"] == {"run-a": {"n": 21, "labels": {"joy": 21}, "source": "run run-a"}}
    assert report["stored"]["eval_id"] == first and report["stored"]["runs"] == ["run-a"]
    listed = reopened.list()
    assert list(listed["eval_id"]) == [second, first]  # newest first (same second: insertion order)
    row = listed.iloc[1]
    assert row["runs"] == ["run-a"] and row["n_texts"] == 21 and row["warnings"] == 1
    assert row["source"] == "dashboard" and not row["has_gold"]
    assert "run-a · 21 texts · projections t-SNE, seed 0" == row["summary"]
    assert list(reopened.list(run_id="run-b")["eval_id"]) == [second]
    assert reopened.find("k1") == first and reopened.find("nope") is None
    reopened.delete(first)
    with pytest.raises(StoreError, match=first):
        reopened.get(first)
    with pytest.raises(StoreError, match="no stored evaluation"):
        reopened.delete(first)


def test_nan_and_numpy_values_are_stored_as_strict_json(tmp_path: Path) -> None:
    import numpy as np

    store = EvaluationStore(tmp_path / "ev.sqlite")
    eval_id = store.save(_report(extra_value=np.float32(0.5), missing=float("nan"), arr=np.arange(3)))
    back = store.get(eval_id)
    assert back["extra_value"] == 0.5 and back["missing"] is None and back["arr"] == [0, 1, 2]


def test_default_path_is_under_personagen_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONAGEN_HOME", str(tmp_path / "h"))
    assert default_path() == tmp_path / "h" / "evaluations.sqlite"
    assert EvaluationStore().path == tmp_path / "h" / "evaluations.sqlite"


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot be opened"):
        EvaluationStore(blocker / "sub" / "ev.sqlite")


def test_one_store_shared_by_many_threads(tmp_path: Path) -> None:
    """Several dashboard sessions save and reopen evaluations at once through one store object."""
    store = EvaluationStore(tmp_path / "ev.sqlite")
    store.save(_report("created-in-main-thread"))
    barrier = threading.Barrier(8)

    def work(i: int) -> list[str]:
        barrier.wait()
        ids = []
        for j in range(5):
            eval_id = store.save(_report(f"run-{i}-{j}", n=i + j), runs=[f"run-{i}-{j}"], key=f"k{i}")
            assert store.get(eval_id)["datasets"][f"run-{i}-{j}"]["n"] == i + j
            store.list(limit=3)
            store.remember_gold_file(tmp_path / f"gold{i}.csv", split="test")
            ids.append(eval_id)
        return ids

    with ThreadPoolExecutor(8) as pool:
        ids = [eid for batch in pool.map(work, range(8)) for eid in batch]
    assert len(set(ids)) == 40
    assert len(store.list()) == 41
    assert store.find("k3") == ids[3 * 5 + 4]  # the newest of thread 3


def test_recent_gold_files(tmp_path: Path) -> None:
    store = EvaluationStore(tmp_path / "ev.sqlite")
    a, b = tmp_path / "train.csv", tmp_path / "test.csv"
    a.write_text("text,label\n")
    b.write_text("text,label\n")
    store.remember_gold_file(a, split="train")
    store.remember_gold_file(b, split="test")
    store.remember_gold_file(tmp_path / "gone.csv", split="test")  # never existed: not offered
    assert store.recent_gold_files() == [str(b.resolve()), str(a.resolve())]
    assert store.recent_gold_files(split="train") == [str(a.resolve())]
    store.remember_gold_file(a, split="train")  # used again: first
    assert store.recent_gold_files()[0] == str(a.resolve())
    for i in range(60):
        store.remember_gold_file(tmp_path / f"old{i}.csv")
    assert len(store._conn.execute("SELECT path FROM recent_gold").fetchall()) == 50


def test_describe_settings() -> None:
    assert describe_settings({"projections": [], "seed": 3}) == "projections none, seed 3"
    assert (
        describe_settings({"projections": ["tsne", "umap"], "seed": 0, "max_texts": 200, "judge": True,
                           "judge_model": "m"})
        == "projections t-SNE+UMAP, seed 0, max 200 texts, judge m"
    )

"""Gold data on the Real data page: reading gold files (path or upload), the label map editor, and
Tables VI-VII drawn from a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import streamlit as st

from ui.runs import run_texts
from ui.state import defaults, error_boundary

__all__ = ["gold_inputs", "gold_key", "label_map_editor", "run_labels", "show_real_data"]


def _skipped(report: dict[str, Any], section: str) -> None:
    reason = (report.get("skipped") or {}).get(section, "not computed")
    st.info(f"Not computed: {reason}.")


_SHARED_CARER = Path(__file__).resolve().parents[2] / "shared" / "data" / "carer"


@st.cache_data(show_spinner="Reading the gold data…", max_entries=8)
def _load_gold_path(path: str, mtime: float) -> Any:
    from personagen_core.evaluation.gold import load_dataset

    return load_dataset(path)


@st.cache_data(show_spinner="Reading the uploaded file…", max_entries=8)
def _load_gold_bytes(name: str, data: bytes) -> Any:
    import tempfile

    from personagen_core.evaluation.gold import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        frame = load_dataset(path)
    frame.attrs["source"] = name
    return frame


def _gold_from(kind: str, split: str) -> Any:
    if kind == "path":
        default = _SHARED_CARER / f"{split}.txt"
        defaults(**{f"keep_gold_{split}_path": str(default) if default.exists() else ""})
        value = st.text_input(
            f"Gold {split} file",
            key=f"keep_gold_{split}_path",
            placeholder="/path/to/file (csv, tsv, jsonl, parquet, txt)",
        )
        if not value.strip():
            return None
        path = Path(value.strip()).expanduser()
        if not path.is_file():
            st.error(f"Gold {split} file not found: {path}")
            return None
        return _load_gold_path(str(path), path.stat().st_mtime)
    upload = st.file_uploader(
        f"Gold {split} file", key=f"gold_{split}_upload", type=["csv", "tsv", "jsonl", "parquet", "txt"]
    )
    return None if upload is None else _load_gold_bytes(upload.name, upload.getvalue())


def gold_inputs(gold_mod: ModuleType) -> tuple[Any, Any]:
    """Pick the gold train / test splits from a path on the server or an upload; errors are shown."""
    kind = st.radio(
        "Source",
        ["path", "upload"],
        horizontal=True,
        key="keep_gold_kind",
        format_func={"path": "Path on the server", "upload": "Upload"}.get,
    )
    st.caption(
        "Files with `text` and `label` columns (CSV, TSV, JSONL, Parquet) or `text;label` lines. "
        "The test split is the reference of Table VI and the test set of Table VII."
    )
    out: list[Any] = []
    for split, col in zip(("train", "test"), st.columns(2), strict=True):
        with col:
            frame = None
            with error_boundary(f"gold {split} data"):
                frame = _gold_from(kind, split)
                if frame is not None:
                    labels = ", ".join(sorted(frame["label"].astype(str).unique()))
                    st.caption(f"{len(frame):,} texts, labels: {labels}")
            out.append(frame)
    if out[0] is None and out[1] is None:
        st.info("Choose at least a gold test file.")
    return out[0], out[1]


def _content_hash(frame: Any) -> int:
    import pandas as pd

    return int(pd.util.hash_pandas_object(frame[["text", "label"]], index=False).sum())


def gold_key(train: Any, test: Any) -> str:
    """A cache key for the gold splits (source, size, content hash)."""
    parts = []
    for frame in (train, test):
        parts.append(
            "none"
            if frame is None
            else f"{frame.attrs.get('source', '')}:{len(frame)}:{_content_hash(frame)}"
        )
    return "|".join(parts)


def run_labels(run_ids: Sequence[str]) -> list[str]:
    """Distinct emotions of the runs' accepted texts."""
    labels: set[str] = set()
    for run_id in run_ids:
        labels |= set(run_texts(run_id)["emotion"].astype(str))
    return sorted(labels)


_LEAVE_OUT = "(leave out)"


def label_map_editor(
    synthetic: Sequence[str], gold_labels: Sequence[str], defaults: dict[str, str | None]
) -> dict[str, str | None]:
    """Map each synthetic label to a gold label or leave it out; defaults from the core's label map."""
    import pandas as pd

    def default(label: str) -> str:
        if label in defaults:
            return defaults[label] if defaults[label] in gold_labels else _LEAVE_OUT
        return label if label in gold_labels else _LEAVE_OUT

    frame = pd.DataFrame({"synthetic": list(synthetic), "gold": [default(s) for s in synthetic]}).astype(
        "object"
    )
    edited = st.data_editor(
        frame,
        hide_index=True,
        disabled=["synthetic"],
        key="label_map",
        column_config={
            "gold": st.column_config.SelectboxColumn(
                "gold", options=[*gold_labels, _LEAVE_OUT], required=True
            )
        },
    )
    return {
        str(r["synthetic"]): (None if r["gold"] in (None, _LEAVE_OUT) else str(r["gold"]))
        for r in edited.to_dict("records")
    }


def show_real_data(report: dict[str, Any], figures: ModuleType) -> None:
    """Table VI (FID, PRD, KL, histogram cosine, ...) and Table VII (train on synthetic, test on real,
    every row on the same test texts, with intervals, n_test and the labels each row leaves out)."""
    import pandas as pd

    real = report.get("real_data")
    st.subheader("Table VI · comparison with real data")
    if not real:
        _skipped(report, "real_data")
    else:
        table = pd.DataFrame(
            {
                name: {
                    figures.REAL_DATA_METRICS.get(m, m): (v or {}).get("value") for m, v in metrics.items()
                }
                for name, metrics in real["datasets"].items()
            }
        ).T
        st.dataframe(table, key="table6")
        with error_boundary("Table VI chart"):
            st.plotly_chart(figures.real_data_figure(report), key="table6_fig")
    st.subheader("Table VII · train on synthetic, test on real")
    down = report.get("downstream")
    if not down:
        _skipped(report, "downstream")
    else:
        st.caption(f"Tested on {down.get('test', 'the gold test split')}.")
        st.dataframe(figures.downstream_frame(report), key="table7")
        left = down.get("left_out") or {}
        if left:
            st.caption(
                "Gold labels left out of each row: "
                + "; ".join(f"{name}: {', '.join(map(str, labs))}" for name, labs in left.items())
                + ". Rows marked *full test split* are not comparable with the others."
            )
        with error_boundary("Table VII chart"):
            st.plotly_chart(figures.downstream_figure(report), key="table7_fig")
    gold = report.get("gold") or {}
    if gold.get("dropped_labels"):
        st.caption(
            f"Labels without a counterpart on the other side: {', '.join(map(str, gold['dropped_labels']))}."
        )

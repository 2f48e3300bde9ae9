"""Gold data on the Real data page: reading gold files (path or upload), the label map editor, and
Tables VI-VII drawn from a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import streamlit as st

from ui.evaluation_view import recent_gold_picker, remember_gold_file
from ui.run_browser import run_texts
from ui.state import defaults, error_boundary, set_kept

__all__ = ["gold_inputs", "gold_key", "label_map_editor", "run_labels", "show_real_data", "show_slices"]


def _skipped(report: dict[str, Any], section: str) -> None:
    reason = (report.get("skipped") or {}).get(section, "not computed")
    st.info(f"Not computed: {reason}.")


_AUTO = "(auto)"
_SEPARATORS = {_AUTO: None, "comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"}
_HEADER = {_AUTO: None, "yes": True, "no": False}


@st.cache_resource(show_spinner=False)
def _upload_dir() -> Path:
    """A folder of this process for uploaded gold files (the core reads files, with line numbers)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="personagen_gold_"))


def _uploaded_path(name: str, data: bytes) -> Path:
    import hashlib

    folder = _upload_dir() / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(exist_ok=True)
    path = folder / Path(name).name
    if not path.exists():
        path.write_bytes(data)
    return path


@st.cache_data(show_spinner="Reading the gold data…", max_entries=16)
def _read_table(path: str, mtime: float, options: dict[str, Any]) -> Any:
    from personagen_core.evaluation.gold import ReadOptions, read_table

    return read_table(path, ReadOptions(**options))


def _source(kind: str, split: str) -> tuple[Path | None, str]:
    """The chosen file as a local path (uploads are saved first) and its display name."""
    if kind == "path":
        defaults(**{f"keep_gold_{split}_path": ""})  # the user chooses; recent files are offered
        recent_gold_picker(split, f"keep_gold_{split}_path")
        value = st.text_input(
            f"Gold {split} file",
            key=f"keep_gold_{split}_path",
            placeholder="/path/to/file or datasets folder (csv, tsv, jsonl, parquet, txt)",
        )
        if not value.strip():
            return None, ""
        path = Path(value.strip()).expanduser()
        if not path.exists():
            st.error(f"Gold {split} file not found: {path}")
            return None, ""
        return path, str(path)
    upload = st.file_uploader(
        f"Gold {split} file", key=f"gold_{split}_upload", type=["csv", "tsv", "jsonl", "parquet", "txt"]
    )
    if upload is None:
        return None, ""
    return _uploaded_path(upload.name, upload.getvalue()), upload.name


def _read_options(split: str) -> dict[str, Any]:
    """Format, separator, header, encoding and multi-label policy, as the CLI's FILE:key=value options."""
    from personagen_core.evaluation import gold

    c1, c2, c3 = st.columns(3)
    fmt = c1.selectbox("Format", [_AUTO, *gold.FORMATS, *gold.READERS], key=f"keep_gold_{split}_fmt")
    sep = c2.selectbox("Separator", list(_SEPARATORS), key=f"keep_gold_{split}_sep")
    header = c3.selectbox("Header line", list(_HEADER), key=f"keep_gold_{split}_header")
    c1, c2, c3 = st.columns(3)
    encoding = c1.text_input(
        "Encoding", key=f"keep_gold_{split}_encoding", placeholder="auto (UTF-8, else detected)"
    )
    multi = c2.selectbox(
        "Multi-label rows",
        list(gold.MULTI_LABEL_POLICIES),
        key=f"keep_gold_{split}_multi",
        help="Rows with several labels (e.g. GoEmotions' 3,6): refuse (error), keep the first, drop the row, "
        "or one row per label (explode).",
    )
    names = c3.text_input(
        "Label names file", key=f"keep_gold_{split}_names", placeholder="labels.txt for numeric ids (path)"
    )
    return {
        "fmt": None if fmt == _AUTO else fmt,
        "sep": _SEPARATORS[sep],
        "header": _HEADER[header],
        "encoding": encoding.strip() or None,
        "multi_label": multi,
        "label_names": names.strip() or None,
    }


def _gold_split(kind: str, split: str) -> Any:
    """Read one split with the options and columns chosen on the page; preview the parsed rows."""
    from personagen_core.evaluation import gold

    path, name = _source(kind, split)
    if path is None:
        return None
    with st.expander(f"Reading options ({split})", expanded=False):
        options = _read_options(split)
    table = _read_table(str(path), path.stat().st_mtime, options)
    columns = [str(c) for c in table.columns]
    # Column pickers: "(auto)" lets the core find text/label by name (or by shape for headerless files).
    c1, c2 = st.columns(2)
    text_col = c1.selectbox("Text column", [_AUTO, *columns], key=f"gold_{split}_text_col")
    label_col = c2.selectbox("Label column", [_AUTO, *columns], key=f"gold_{split}_label_col")
    chosen = gold.ReadOptions(
        **options,
        text_col=None if text_col == _AUTO else text_col,
        label_col=None if label_col == _AUTO else label_col,
    )
    try:
        frame = gold.to_dataset(table, path, chosen)
    except gold.ColumnError as exc:
        st.error(
            f"gold {split} data: {name}: {str(exc).split(': ', 1)[-1]}. Pick the {exc.role} column above."
        )
        st.dataframe(table.head(5), key=f"gold_{split}_raw")
        return None
    frame.attrs["source"] = name
    if kind == "path":
        remember_gold_file(path, split)
    read = frame.attrs.get("read", {})
    st.caption(
        f"{len(frame):,} texts, labels: {', '.join(sorted(frame['label'].astype(str).unique()))} "
        f"(read as {read.get('format')}, text column {read.get('text_col')!r}, label column "
        f"{read.get('label_col')!r})"
    )
    with st.expander(f"Preview ({split})", expanded=False):
        st.dataframe(frame.head(20)[["text", "label"]], key=f"gold_{split}_preview")
    return frame


def gold_inputs(gold_mod: ModuleType) -> tuple[Any, Any]:
    """Pick the gold train / test splits from a path on the server or an upload, with the same reading
    options as the CLI (format, separator, header, encoding, multi-label policy, names file), a text/label
    column picker and a preview of the parsed rows; errors are shown."""
    kind = st.radio(
        "Source",
        ["path", "upload"],
        horizontal=True,
        key="keep_gold_kind",
        format_func={"path": "Path on the server", "upload": "Upload"}.get,
    )
    st.caption(
        "Any labelled text file: CSV/TSV with any separator or header, JSONL, Parquet, `text;label` lines, "
        "GoEmotions TSV, ISEAR, or a Hugging Face datasets folder (path). The test split is the reference of "
        "Table VI and the test set of Table VII."
    )
    out: list[Any] = []
    for split, col in zip(("train", "test"), st.columns(2), strict=True):
        with col:
            frame = None
            with error_boundary(f"gold {split} data"):
                frame = _gold_split(kind, split)
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


def show_slices(report: dict[str, Any], figures: ModuleType) -> None:
    """Slices: every persona / scenario attribute value of a run with its figures (a sortable table), the
    slices that differ most (a chart), and two runs compared slice by slice."""
    from personagen_core.evaluation import slices as S

    st.subheader("Slices · which personas make good data")
    block = report.get("slices")
    if not block:
        _skipped(report, "slices")
        return
    names = list(block["datasets"])
    metrics = {k: v["name"] for k, v in (block.get("metrics") or {}).items()}
    c1, c2 = st.columns(2)
    name = c1.selectbox("Run", names, key="slices_run")
    usable = [m for m in metrics if m in (block["datasets"][name].get("differ_most") or {})]
    if not usable:
        st.info("No slice figure could be computed for this run.")
        return
    metric = c2.selectbox("Figure", usable, format_func=metrics.get, key="slices_metric")
    table = S.rows_to_table(block["datasets"][name]["rows"])
    shown = table[["attribute", "value", "n", metric, f"{metric}_low", f"{metric}_high", f"{metric}_n"]]
    st.dataframe(shown, hide_index=True, key="slices_table")  # click a column header to sort
    with error_boundary("slices chart"):
        st.plotly_chart(figures.slices_figure(report, name, metric), key="slices_fig")
    _explore_link(report, name, table)
    notes = block.get("notes") or {}
    if notes.get(metric):
        st.caption(f"{metrics[metric]}: {notes[metric]}. {notes.get('differ most', '')}.")
    if len(names) >= 2:
        st.markdown("**Compare two runs slice by slice**")
        c1, c2 = st.columns(2)
        a = c1.selectbox("Before", names, index=0, key="slices_a")
        b = c2.selectbox("After", names, index=1, key="slices_b")
        cmp = S.compare_slices(
            S.rows_to_table(block["datasets"][a]["rows"]),
            S.rows_to_table(block["datasets"][b]["rows"]),
            names=(a, b),
            metrics=[metric],
        )
        cols = [
            "attribute",
            "value",
            f"{metric} {a}",
            f"{metric} {b}",
            f"{metric} delta",
            f"{metric} overlap",
        ]
        st.dataframe(
            cmp[cols].sort_values(f"{metric} delta", key=abs, ascending=False),
            hide_index=True,
            key="slices_compare",
        )
        st.caption("overlap = False: the change is larger than the two intervals allow.")


def _explore_link(report: dict[str, Any], name: str, table: Any) -> None:
    """Open the Explore page on a slice's texts (its run, filtered to the attribute value)."""
    from ui.run_jobs import select_run

    source = str((report.get("datasets") or {}).get(name, {}).get("source", ""))
    if not source.startswith("run "):
        return  # only runs from the store have texts to explore
    run_id = source.removeprefix("run ")
    choices = [(r["attribute"], r["value"]) for r in table.to_dict("records") if r["attribute"] != "(all)"]
    c1, c2 = st.columns([3, 1])
    picked = c1.selectbox(
        "Slice", choices, format_func=lambda av: f"{av[0]} = {av[1]}", key="slices_explore_pick"
    )
    if c2.button("Show its texts in Explore", key="slices_explore") and picked is not None:
        attribute, value = picked
        select_run(run_id)
        set_kept("filter_columns", [attribute])
        set_kept(f"filter_values_{attribute}", [value])
        st.switch_page("app_pages/5_explore.py")

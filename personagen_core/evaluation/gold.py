"""Loading gold (real) datasets and mapping between synthetic and gold label sets.

Formats: CSV, TSV, JSONL, Parquet, and ``text;label`` lines (CARER's format: no header, the label after
the last ``;``). The result always has ``text`` and ``label`` string columns first; other columns are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from personagen_core.errors import DataError

__all__ = [
    "DEFAULT_LABEL_MAP",
    "FORMATS",
    "apply_label_map",
    "detect_format",
    "load_dataset",
    "load_label_map",
]

FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "semicolon")

# The paper's seven emotions -> CARER's six. joy, sadness, anger, fear and surprise exist in both.
# "pleasure" and "neutral" have no CARER counterpart and are left out (None) rather than folded into joy
# by assumption; CARER's "love" has no synthetic counterpart, so gold rows labelled love drop out of the
# shared label set. Override with a YAML/JSON file (load_label_map), e.g. ``pleasure: joy``.
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "joy": "joy",
    "sadness": "sadness",
    "anger": "anger",
    "fear": "fear",
    "surprise": "surprise",
    "pleasure": None,
    "neutral": None,
}

_EXT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_TEXT_CANDIDATES = ("text", "sentence", "content", "tweet")
_LABEL_CANDIDATES = ("label", "emotion", "labels", "class")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format from the extension, else from the first non-empty line."""
    p = Path(path)
    ext = _EXT.get(p.suffix.lower())
    if ext is not None:
        return ext
    try:
        with p.open("rb") as fh:
            head = fh.read(4)
            if head == b"PAR1":
                return "parquet"
            fh.seek(0)
            first = ""
            for raw in fh:
                first = raw.decode("utf-8", errors="replace").strip()
                if first:
                    break
    except OSError as exc:
        raise DataError(f"{p}: cannot read file: {exc}") from exc
    if first.startswith("{"):
        return "jsonl"
    if "\t" in first:
        return "tsv"
    if ";" in first and "," not in first.rsplit(";", 1)[-1]:
        return "semicolon"
    return "csv"


def _read_semicolon(p: Path) -> pd.DataFrame:
    texts, labels = [], []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if ";" not in line:
                raise DataError(f"{p}: line {lineno} has no ';' separating text and label: {line[:60]!r}")
            text, label = line.rsplit(";", 1)
            texts.append(text)
            labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels})


def _read(p: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "semicolon":
            return _read_semicolon(p)
        if fmt == "csv":
            return pd.read_csv(p, dtype=str, keep_default_na=False)
        if fmt == "tsv":
            return pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        if fmt == "jsonl":
            if p.suffix.lower() == ".json" and p.read_text(encoding="utf-8").lstrip().startswith("["):
                return pd.read_json(p, dtype=False)
            return pd.read_json(p, lines=True, dtype=False)
        return pd.read_parquet(p)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{p}: cannot read as {fmt}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for corrupt parquet files
        raise DataError(f"{p}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], role: str, p: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{p}: no {role} column {wanted!r}; columns found: {', '.join(columns) or 'none'}")
        return wanted
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise DataError(
        f"{p}: no {role} column (looked for {', '.join(candidates)}); columns found: "
        f"{', '.join(columns) or 'none'}; name it with the {role}_col option"
    )


def load_dataset(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
) -> pd.DataFrame:
    """Read a labelled text dataset; return a DataFrame with ``text`` and ``label`` (str) first.

    ``fmt`` is one of ``FORMATS`` or ``None`` (detected by :func:`detect_format`). ``text_col`` and
    ``label_col`` name the source columns (defaults: ``text``/``sentence``/``content``/``tweet`` and
    ``label``/``emotion``/``labels``/``class``, case-insensitive). Raises :class:`DataError` naming the file
    and the column or line at fault.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise DataError(f"{p}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    df = _read(p, fmt)
    columns = [str(c) for c in df.columns]
    df.columns = columns
    tcol = _pick(columns, text_col, _TEXT_CANDIDATES, "text", p)
    lcol = _pick(columns, label_col, _LABEL_CANDIDATES, "label", p)
    out = pd.DataFrame(
        {
            "text": df[tcol].astype("string").str.strip(),
            "label": df[lcol].astype("string").str.strip(),
        }
    )
    for role, col in (("text", tcol), ("label", lcol)):
        bad = out[role].isna() | (out[role] == "")
        if bad.any():
            first = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{p}: column {col!r} ({role}) is empty in {int(bad.sum())} row(s), first at row {first + 1}"
            )
    rest = df.drop(columns=[c for c in {tcol, lcol}])
    rest = rest.drop(columns=[c for c in ("text", "label") if c in rest.columns])
    out = pd.concat([out.astype(str), rest.reset_index(drop=True)], axis=1)
    if out.empty:
        raise DataError(f"{p}: no rows")
    return out


def load_label_map(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """Read a YAML or JSON mapping ``synthetic label -> gold label`` (``null`` = leave the label out)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: label map file not found")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"{p}: cannot parse label map: {exc}") from exc
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"{p}: a label map must be a non-empty mapping of synthetic label -> gold label or null")
    out: dict[str, str | None] = {}
    for key, value in data.items():
        if value is not None and not isinstance(value, (str, int)):
            raise DataError(f"{p}: label {key!r} maps to {value!r}; expected a label name or null")
        out[str(key)] = None if value is None else str(value)
    return out


def apply_label_map(
    df: pd.DataFrame, mapping: Mapping[str, str | None], *, column: str = "label"
) -> pd.DataFrame:
    """Return a copy with ``column`` renamed by ``mapping``; rows mapped to ``None`` are dropped.

    Labels not in the mapping are kept unchanged.
    """
    if column not in df.columns:
        raise DataError(f"no {column!r} column to map; columns: {', '.join(map(str, df.columns))}")
    labels = df[column].astype(str)
    drop = {k for k, v in mapping.items() if v is None}
    rename = {k: v for k, v in mapping.items() if v is not None}
    keep = ~labels.isin(drop)
    out = df.loc[keep.to_numpy()].copy()
    out[column] = labels[keep].map(lambda s: rename.get(s, s)).astype(str).to_numpy()
    return out.reset_index(drop=True)

"""Loading gold (real) datasets as they come, and mapping between label sets.

Any labelled text file is read into a DataFrame whose first two columns are ``text`` and ``label`` (str);
other columns are kept. Per file, :class:`ReadOptions` say how (every field optional, sniffed when absent):

- ``fmt``: a file format in :data:`FORMATS` (``csv``, ``tsv``, ``jsonl``, ``parquet``, ``semicolon`` =
  ``text;label`` lines) or a ready-made reader in :data:`READERS`: ``carer`` (``text;label``, no header),
  ``goemotions`` (TSV ``text, label ids, comment id`` without header, names from a ``labels.txt`` or
  ``emotions.txt`` beside the file), ``isear`` (``|``-separated with a header, text ``SIT``, label
  ``Field1``; stray ``|`` inside the text and line breaks inside a record are put back into the text) and
  ``hf`` (a Hugging Face ``datasets`` folder written by ``save_to_disk``; ``ClassLabel`` names used).
- ``sep`` (delimiter; sniffed with :class:`csv.Sniffer`), ``header`` (sniffed), ``encoding`` (UTF-8, else
  detected with ``charset_normalizer``; an explicit encoding that does not fit gives the line and column).
- ``text_col`` / ``label_col``: a column name, or a 0-based position (headerless files have columns
  ``0, 1, ...``). Without them well-known names are looked for; a headerless file's text column is the
  one with the longest values and its label column the one with the fewest distinct values.
- ``label_names``: a file with one label name per line; numeric label ids are replaced by the name on
  line ``id + 1`` (GoEmotions' ``labels.txt``). ``label_map``: a YAML/JSON map applied to this file's
  labels (many-to-one allowed; ``null`` leaves a label out).
- ``multi_label``: rows with several labels (``"3,6"``, or a list in a ``datasets`` column) are refused
  (``"error"``, the default, naming the line) or handled: ``first`` keeps the first label, ``drop`` leaves
  the row out, ``explode`` makes one row per label. What was done is in ``frame.attrs["read"]``.

Delimited text is parsed with the standard library's :mod:`csv` reader, which tracks line numbers, so
every error names the file and the line (and column for encoding errors), never a byte offset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personagen_core.errors import DataError

__all__ = [
    "DEFAULT_LABEL_MAP",
    "FORMATS",
    "MULTI_LABEL_POLICIES",
    "READERS",
    "ColumnError",
    "ReadOptions",
    "apply_label_map",
    "detect_format",
    "load_dataset",
    "load_label_map",
    "parse_file_spec",
    "read_table",
    "to_dataset",
]

FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "semicolon")
READERS: tuple[str, ...] = ("carer", "goemotions", "isear", "hf")
MULTI_LABEL_POLICIES: tuple[str, ...] = ("error", "first", "drop", "explode")

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
_TEXT_CANDIDATES = ("text", "sentence", "content", "tweet", "sit")
_LABEL_CANDIDATES = ("label", "emotion", "labels", "class", "field1")
_SEP_NAMES = {"comma": ",", "tab": "\t", "\\t": "\t", "semicolon": ";", "pipe": "|", "space": " "}
_SEP_DISPLAY = {v: k for k, v in _SEP_NAMES.items() if k != "\\t"}
_NAMES_FILES = ("labels.txt", "emotions.txt")
# Per ready-made reader: format of the rows, separator, header, text and label columns.
_READER_DEFAULTS: dict[str, dict[str, Any]] = {
    "carer": {"sep": ";", "header": False, "text_col": "0", "label_col": "1"},
    "semicolon": {"sep": ";", "header": False},
    "goemotions": {"sep": "\t", "header": False, "text_col": "0", "label_col": "1"},
    "isear": {"sep": "|", "header": True, "text_col": "SIT", "label_col": "Field1"},
    "tsv": {"sep": "\t"},
}


class ColumnError(DataError):
    """A text or label column that is missing or cannot be guessed; ``columns`` lists those found.

    Shells add how to name the column (a CLI option, a spec field, a picker on the page).
    """

    def __init__(self, message: str, *, path: str, role: str, columns: list[str]) -> None:
        super().__init__(message)
        self.path, self.role, self.columns = path, role, columns


@dataclass(frozen=True)
class ReadOptions:
    """How to read one file; ``None`` fields are sniffed or take the format's defaults."""

    fmt: str | None = None
    text_col: str | None = None
    label_col: str | None = None
    header: bool | None = None
    sep: str | None = None
    encoding: str | None = None
    label_names: str | None = None
    label_map: str | None = None
    multi_label: str | None = None
    label_sep: str = ","
    split: str | None = None

    def merged(self, defaults: ReadOptions | None) -> ReadOptions:
        """These options, with unset fields taken from ``defaults``."""
        if defaults is None:
            return self
        return replace(
            self,
            **{f.name: getattr(defaults, f.name) for f in fields(self) if getattr(self, f.name) is None},
        )


_SPEC_KEYS = {
    "text": "text_col",
    "label": "label_col",
    "format": "fmt",
    "fmt": "fmt",
    "header": "header",
    "sep": "sep",
    "encoding": "encoding",
    "names": "label_names",
    "map": "label_map",
    "multi-label": "multi_label",
    "multi_label": "multi_label",
    "label-sep": "label_sep",
    "label_sep": "label_sep",
    "split": "split",
}


def parse_file_spec(spec: str) -> tuple[Path, ReadOptions]:
    """``FILE[:key=value,...]`` → (path, options). Keys: ``text, label, format, header (yes/no), sep
    (a character or comma/tab/semicolon/pipe/space), encoding, names, map, multi-label, label-sep, split``.

    A path that exists as given wins (so paths containing ``:`` still work).
    """
    if ":" not in spec or Path(spec).exists():
        return Path(spec), ReadOptions()
    path, _, tail = spec.rpartition(":")
    if "=" not in tail:
        return Path(spec), ReadOptions()
    values: dict[str, Any] = {}
    for part in tail.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in _SPEC_KEYS:
            raise DataError(
                f"{spec!r}: {part!r} is not an option; use FILE:key=value,... with keys "
                f"{', '.join(sorted(set(_SPEC_KEYS) - {'fmt', 'multi_label', 'label_sep'}))}"
            )
        values[_SPEC_KEYS[key]] = value.strip()
    if "header" in values:
        values["header"] = _parse_bool(values["header"], f"{spec!r}: header")
    for key in ("sep", "label_sep"):
        if key in values:
            values[key] = _SEP_NAMES.get(values[key].lower(), values[key])
    options = ReadOptions(**values)
    _check_options(options, spec)
    return Path(path), options


def _parse_bool(value: str, where: str) -> bool | None:
    v = value.strip().lower()
    if v in ("yes", "true", "1", "y"):
        return True
    if v in ("no", "false", "0", "n"):
        return False
    if v in ("auto", ""):
        return None
    raise DataError(f"{where} must be yes, no or auto (got {value!r})")


def _check_options(o: ReadOptions, where: str) -> None:
    if o.fmt is not None and o.fmt not in FORMATS + READERS:
        raise DataError(f"{where}: unknown format {o.fmt!r}; choose one of {', '.join(FORMATS + READERS)}")
    if o.multi_label is not None and o.multi_label not in MULTI_LABEL_POLICIES:
        raise DataError(
            f"{where}: multi-label policy must be one of {', '.join(MULTI_LABEL_POLICIES)} "
            f"(got {o.multi_label!r})"
        )
    if o.sep is not None and len(o.sep) != 1:
        raise DataError(f"{where}: the separator must be one character or comma/tab/semicolon/pipe/space")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format from the extension, else from the first non-empty line (a folder = ``hf``)."""
    p = Path(path)
    if p.is_dir():
        return "hf"
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


# ----------------------------------------------------------------------------------------- decoding


def _decode(raw: bytes, encoding: str | None, p: Path) -> tuple[str, str]:
    """Text and the encoding used; explicit encodings must fit, else UTF-8, else a detected one."""
    if encoding is not None:
        try:
            return raw.decode(encoding), encoding
        except LookupError as exc:
            raise DataError(f"{p}: unknown encoding {encoding!r}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{p}: {_where(raw, exc.start)}: {_bad_bytes(raw, exc)} is not valid {encoding}"
            ) from exc
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        utf8_error = exc
    from charset_normalizer import from_bytes

    # Short files fit several single-byte code pages equally well; when Windows-1252 (Western, a superset
    # of latin-1's printable characters) is one of them, it is the likeliest for emotion datasets.
    matches = list(from_bytes(raw))
    if any("cp1252" in m.could_be_from_charset for m in matches):
        return raw.decode("cp1252", errors="strict"), "cp1252"
    if not matches or matches[0].encoding in ("utf_8", "utf-8"):
        raise DataError(
            f"{p}: {_where(raw, utf8_error.start)}: {_bad_bytes(raw, utf8_error)} is not valid UTF-8 and no "
            "other encoding fits; give the encoding (e.g. encoding=latin-1)"
        )
    return str(matches[0]), str(matches[0].encoding)


def _where(raw: bytes, offset: int) -> str:
    """``line L, column C`` (1-based; the column counts bytes) of a byte offset."""
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _bad_bytes(raw: bytes, exc: UnicodeDecodeError) -> str:
    chunk = raw[exc.start : max(exc.end, exc.start + 1)]
    return "byte " + " ".join(f"0x{b:02x}" for b in chunk)


# ----------------------------------------------------------------------------------------- reading


def read_table(path: str | os.PathLike[str], options: ReadOptions | None = None) -> pd.DataFrame:
    """Read a file into a table of strings with every column as found (no text/label picked yet).

    ``frame.attrs["lines"]`` holds each row's line number (delimited text; ``None`` otherwise) and
    ``frame.attrs["read"]`` what was used (format, encoding, separator, header). The Real data page shows
    this table so the user can pick the text and label columns.
    """
    o = options or ReadOptions()
    p = Path(path)
    _check_options(o, str(p))
    if not p.exists():
        raise DataError(f"{p}: file not found")
    fmt = o.fmt or detect_format(p)
    if fmt == "hf":
        return _read_hf(p, o)
    if not p.is_file():
        raise DataError(f"{p}: is a folder; only the hf format reads folders (a datasets save_to_disk)")
    if fmt in ("jsonl", "parquet"):
        frame = _read_records(p, fmt)
        frame.attrs["read"] = {"format": fmt}
        jsonl = _jsonl_lines(p, len(frame)) if fmt == "jsonl" else None
        frame.attrs["lines"] = None if jsonl is None else np.asarray(jsonl, dtype=np.int64)
        return frame
    return _read_delimited(p, fmt, o)


def _jsonl_lines(p: Path, n: int) -> list[int] | None:
    """Line numbers of a JSON-lines file's records (blank lines skipped); None when they do not map 1:1."""
    try:
        with p.open("rb") as fh:
            lines = [i for i, raw in enumerate(fh, start=1) if raw.strip()]
    except OSError:
        return None
    return lines if len(lines) == n else None


def _read_records(p: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "jsonl":
            if p.suffix.lower() == ".json" and p.read_text(encoding="utf-8").lstrip().startswith("["):
                frame = pd.read_json(p, dtype=False)
            else:
                frame = pd.read_json(p, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(p)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read as {fmt}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for corrupt parquet files
        raise DataError(f"{p}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _sniff_sep(text: str, fmt: str) -> str:
    """The delimiter: the format's own unless that leaves one column and the Sniffer finds another."""
    sample_lines = [line for line in text[:65536].splitlines() if line.strip()][:50]
    default = {"csv": ",", "tsv": "\t", "semicolon": ";"}.get(fmt, ",")
    if sample_lines and default in sample_lines[0]:
        return default
    try:
        return csv.Sniffer().sniff("\n".join(sample_lines), delimiters=",;\t|").delimiter
    except csv.Error:
        return default


def _sniff_header(rows: list[list[str]], fmt: str) -> bool:
    """A header if the first row names a known text/label column. Otherwise ``text;label`` lines have
    none, and CSV/TSV files have one unless a first-row cell recurs in its column below (labels repeat,
    column names do not) or the first row is all numbers. (csv.Sniffer.has_header votes on value types and
    lengths, which cannot tell a header of words from rows of words.)"""
    if not rows:
        return False
    first = [c.strip() for c in rows[0]]
    if {c.lower() for c in first} & set(_TEXT_CANDIDATES + _LABEL_CANDIDATES):
        return True
    if fmt not in ("csv", "tsv") or len(rows) < 2:
        return False
    if all(re.fullmatch(r"[-+.\d,]*", c) for c in first):
        return False
    body = rows[1:2001]
    return not any(
        cell and any(len(r) > i and r[i].strip() == cell for r in body) for i, cell in enumerate(first)
    )


def _read_delimited(p: Path, fmt: str, o: ReadOptions) -> pd.DataFrame:
    reader_defaults = _READER_DEFAULTS.get(fmt, {})
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read file: {exc}") from exc
    text, encoding = _decode(raw, o.encoding, p)
    sep = o.sep or reader_defaults.get("sep") or _sniff_sep(text, fmt)
    # Tab and pipe files (GoEmotions, ISEAR) use quotes as plain characters; comma/semicolon files quote.
    quoting = csv.QUOTE_NONE if sep in ("\t", "|") else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting, strict=False)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        start = 1
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{p}: line {reader.line_num}: {exc}") from exc
    if not rows:
        raise DataError(f"{p}: no rows")
    header = o.header if o.header is not None else reader_defaults.get("header")
    if header is None:
        header = _sniff_header(rows, fmt)
    unnamed: list[str] = []
    if header:
        columns = [c.strip() or str(i) for i, c in enumerate(rows[0])]
        unnamed = [str(i) for i, c in enumerate(rows[0]) if not c.strip()]
        rows, lines = rows[1:], lines[1:]
    else:
        columns = [str(i) for i in range(Counter(len(r) for r in rows).most_common(1)[0][0])]
    if fmt == "isear":
        rows, lines = _join_broken_records(rows, lines, len(columns))
    width = len(columns)
    text_idx = _index_of(o.text_col or reader_defaults.get("text_col"), columns)
    if text_idx is None:
        text_idx = _guess_text_index(rows, width, columns)
    fixed = []
    for row, line in zip(rows, lines, strict=True):
        if len(row) > width:
            if text_idx is None:
                raise DataError(
                    f"{p}: line {line} has {len(row)} fields, expected {width} (separator {_show(sep)}); "
                    "name the text column so that surplus separators are kept in the text"
                )
            # Separators inside the text (ISEAR, CARER-like files): the surplus fields belong to the text.
            extra = len(row) - width
            row = [
                *row[:text_idx],
                sep.join(row[text_idx : text_idx + extra + 1]),
                *row[text_idx + extra + 1 :],
            ]
        elif len(row) < width:
            if len(row) == 1 and width == 2:
                raise DataError(
                    f"{p}: line {line} has no {_show(sep)} separating text and label: {row[0][:60]!r}"
                )
            raise DataError(
                f"{p}: line {line} has {len(row)} field(s), expected {width} separated by {_show(sep)}"
            )
        fixed.append(row)
    frame = pd.DataFrame(fixed, columns=columns, dtype=str) if fixed else pd.DataFrame(columns=columns)
    # A trailing separator on every line (ISEAR) makes an unnamed, empty column: not data.
    empty = [c for c in unnamed if c in frame.columns and not frame[c].str.strip().astype(bool).any()]
    frame = frame.drop(columns=empty)
    # An array, not a list: pandas deep-copies attrs on every operation (a 100k-item list cost 12 s).
    frame.attrs["lines"] = np.asarray(lines, dtype=np.int64)
    frame.attrs["read"] = {
        "format": fmt,
        "encoding": encoding,
        "sep": _show(sep),
        "header": bool(header),
    }
    return frame


def _join_broken_records(rows: list[list[str]], lines: list[int], width: int) -> tuple[list, list]:
    """ISEAR: a record whose text holds a line break arrives as two short rows; join them back."""
    out_rows: list[list[str]] = []
    out_lines: list[int] = []
    pending: list[str] | None = None
    for row, line in zip(rows, lines, strict=True):
        if pending is not None:
            pending = [*pending[:-1], pending[-1] + "\n" + row[0], *row[1:]]
        else:
            pending = row
            out_lines.append(line)
        if len(pending) >= width:
            out_rows.append(pending)
            pending = None
    if pending is not None:
        out_rows.append(pending)
    return out_rows, out_lines


def _show(sep: str) -> str:
    return (
        f"'{sep}'" if sep not in _SEP_DISPLAY else f"'{sep}' ({_SEP_DISPLAY[sep]})".replace("'\t'", "'\\t'")
    )


def _index_of(col: str | None, columns: list[str]) -> int | None:
    if col is None:
        return None
    if col in columns:
        return columns.index(col)
    lower = [c.lower() for c in columns]
    if col.lower() in lower:
        return lower.index(col.lower())
    if col.isdigit() and int(col) < len(columns):
        return int(col)
    return None


def _guess_text_index(rows: list[list[str]], width: int, columns: list[str]) -> int | None:
    """The text column: a well-known name, else (headerless) the column with the longest values."""
    lower = [c.lower() for c in columns]
    for cand in _TEXT_CANDIDATES:
        if cand in lower:
            return lower.index(cand)
    if not all(c.isdigit() for c in columns):
        return None
    good = [r for r in rows[:2000] if len(r) == width]
    if not good or width < 2:
        return None
    mean_len = [sum(len(r[i]) for r in good) / len(good) for i in range(width)]
    return max(range(width), key=lambda i: mean_len[i])


def _read_hf(p: Path, o: ReadOptions) -> pd.DataFrame:
    """A ``datasets`` folder (``save_to_disk``): one split as a table; ClassLabel ids become names."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{p}: not a Hugging Face datasets folder (save_to_disk): {exc}") from exc
    split = o.split
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise DataError(f"{p}: choose a split with split=NAME; splits found: {', '.join(names)}")
        ds = ds[split]
    frame = ds.to_pandas()
    for name, feature in ds.features.items():
        inner = getattr(feature, "feature", None)  # Sequence / List of ClassLabel: multi-label ids
        if isinstance(feature, list) and len(feature) == 1:
            inner = feature[0]
        if isinstance(feature, datasets.ClassLabel):
            frame[name] = [feature.int2str(int(v)) for v in frame[name]]
        elif isinstance(inner, datasets.ClassLabel):
            frame[name] = [[inner.int2str(int(x)) for x in v] for v in frame[name]]
    frame.columns = [str(c) for c in frame.columns]
    frame.attrs["lines"] = None
    frame.attrs["read"] = {"format": "hf", "split": split}
    return frame


# ----------------------------------------------------------------------------------------- to a dataset


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], role: str, p: Path) -> str:
    if wanted is not None:
        idx = _index_of(wanted, columns)
        if idx is None:
            raise ColumnError(
                f"{p}: no {role} column {wanted!r}; columns found: {', '.join(columns) or 'none'}",
                path=str(p),
                role=role,
                columns=columns,
            )
        return columns[idx]
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise ColumnError(
        f"{p}: no {role} column (looked for {', '.join(candidates)}); columns found: "
        f"{', '.join(columns) or 'none'}",
        path=str(p),
        role=role,
        columns=columns,
    )


def _guess_label(frame: pd.DataFrame, text_col: str) -> str | None:
    """Headerless files: the label is the non-text column with the fewest distinct values."""
    others = [c for c in frame.columns if c != text_col]
    if not others or not all(str(c).isdigit() for c in frame.columns):
        return None
    return min(others, key=lambda c: (frame[c].nunique(), others.index(c)))


def _names_file(p: Path, o: ReadOptions, fmt: str) -> tuple[list[str] | None, str | None]:
    path = Path(o.label_names) if o.label_names else None
    if path is None and fmt == "goemotions":
        path = next((p.parent / n for n in _NAMES_FILES if (p.parent / n).is_file()), None)
        if path is None:
            raise DataError(
                f"{p}: GoEmotions label ids need a names file; none of {', '.join(_NAMES_FILES)} "
                "beside it; give names=FILE"
            )
    if path is None:
        return None, None
    if not path.is_file():
        raise DataError(f"{path}: label names file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: no label names (one name per line expected)")
    return names, str(path)


def to_dataset(
    table: pd.DataFrame, path: str | os.PathLike[str], options: ReadOptions | None = None
) -> pd.DataFrame:
    """Turn a :func:`read_table` table into a dataset: pick the text and label columns, replace label ids
    by names, apply the file's label map and the multi-label policy. Errors name the line."""
    o = options or ReadOptions()
    p = Path(path)
    read = dict(table.attrs.get("read") or {})
    lines = table.attrs.get("lines")
    fmt = read.get("format", o.fmt or "csv")
    defaults = _READER_DEFAULTS.get(fmt, {})
    columns = [str(c) for c in table.columns]
    tcol = _pick(
        columns,
        o.text_col or defaults.get("text_col") or _guessed_text(table, columns),
        _TEXT_CANDIDATES,
        "text",
        p,
    )
    lcol = _pick(
        columns,
        o.label_col or defaults.get("label_col") or _guess_label(table, tcol),
        _LABEL_CANDIDATES,
        "label",
        p,
    )
    if tcol == lcol:
        raise ColumnError(
            f"{p}: the text and label columns are both {tcol!r}", path=str(p), role="label", columns=columns
        )

    def at(i: int) -> str:
        return f"line {lines[i]}" if lines is not None and len(lines) else f"row {i + 1}"

    texts = table[tcol].astype("string").str.strip()
    bad = (texts.isna() | (texts == "")).to_numpy()
    if bad.any():
        first = int(bad.nonzero()[0][0])
        raise DataError(
            f"{p}: column {tcol!r} (text) is empty in {int(bad.sum())} row(s), first at {at(first)}"
        )
    names, names_path = _names_file(p, o, fmt)
    mapping = load_label_map(o.label_map) if o.label_map else None
    policy = o.multi_label or "error"
    label_values = table[lcol].tolist()
    keep_rows: list[int] = []
    out_labels: list[str] = []
    n_multi = n_mapped_out = 0
    for i, value in enumerate(label_values):
        parts = _label_parts(value, o.label_sep)
        if not parts:
            raise DataError(f"{p}: column {lcol!r} (label) is empty at {at(i)}")
        if names is not None:
            parts = [_name_of(part, names, p, at(i), names_path) for part in parts]
        if mapping is not None:
            parts = [mapping.get(part, part) for part in parts]
        parts = [x for x in dict.fromkeys(parts) if x is not None]  # distinct, order kept
        if not parts:
            n_mapped_out += 1
            continue
        if len(parts) > 1:
            n_multi += 1
            if policy == "error":
                total = sum(len(_label_parts(v, o.label_sep)) > 1 for v in label_values)
                raise DataError(
                    f"{p}: {at(i)}: label {_show_value(value)} holds {len(parts)} labels ({total} multi-label "
                    "row(s) in the file); choose a multi-label policy: first (keep the first label), drop "
                    "(leave such rows out) or explode (one row per label)"
                )
            if policy == "drop":
                continue
            if policy == "first":
                parts = parts[:1]
        for label in parts:
            keep_rows.append(i)
            out_labels.append(label)
    if not keep_rows:
        raise DataError(f"{p}: no rows left after the label map and the multi-label policy")
    rest = table.drop(columns=[c for c in dict.fromkeys([tcol, lcol, "text", "label"]) if c in table.columns])
    out = pd.DataFrame({"text": texts.to_numpy()[keep_rows].astype(str), "label": out_labels})
    out = pd.concat([out, rest.iloc[keep_rows].reset_index(drop=True)], axis=1)
    read.update(
        text_col=tcol,
        label_col=lcol,
        rows_read=len(table),
        rows=len(out),
        multi_label={"policy": policy, "rows": n_multi},
    )
    if names_path:
        read["label_names"] = names_path
    if mapping is not None:
        read["label_map"] = str(o.label_map)
        read["left_out_by_map"] = n_mapped_out
    out.attrs["read"] = read
    out.attrs["source"] = str(p)
    return out


def _guessed_text(table: pd.DataFrame, columns: list[str]) -> str | None:
    if not all(c.isdigit() for c in columns) or len(columns) < 2 or table.empty:
        return None
    head = table.head(2000).astype(str)
    return max(columns, key=lambda c: head[c].str.len().mean())


def _label_parts(value: Any, sep: str) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        return [str(x).strip() for x in items if str(x).strip()]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    s = str(value).strip()
    if not s:
        return []
    return [x.strip() for x in s.split(sep) if x.strip()] if sep and sep in s else [s]


def _show_value(value: Any) -> str:
    return repr(value if isinstance(value, str) else list(_label_parts(value, ",")))


def _name_of(part: str, names: list[str], p: Path, where: str, names_path: str | None) -> str:
    if not re.fullmatch(r"\d+", part):
        raise DataError(
            f"{p}: {where}: label {part!r} is not a numeric id, but a names file ({names_path}) was given"
        )
    idx = int(part)
    if idx >= len(names):
        raise DataError(f"{p}: {where}: label id {idx} is beyond the {len(names)} names in {names_path}")
    return names[idx]


def load_dataset(
    path: str | os.PathLike[str],
    options: ReadOptions | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """Read a labelled text dataset; return a DataFrame with ``text`` and ``label`` (str) first.

    ``options`` (a :class:`ReadOptions`) or keyword overrides of its fields (``fmt``, ``text_col``,
    ``label_col``, ``header``, ``sep``, ``encoding``, ``label_names``, ``label_map``, ``multi_label``,
    ``label_sep``, ``split``). What was used is in ``frame.attrs["read"]``. Raises :class:`DataError`
    (:class:`ColumnError` for a missing column) naming the file and the line or column at fault.
    """
    o = replace(options or ReadOptions(), **{k: v for k, v in overrides.items() if v is not None})
    table = read_table(path, o)
    if table.empty:
        raise DataError(f"{Path(path)}: no rows")
    return to_dataset(table, path, o)


def load_label_map(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """Read a YAML or JSON label map: ``source: target`` (``null`` = leave out), or grouped as
    ``target: [source, ...]`` (many-to-one, e.g. GoEmotions' 28 labels to Ekman's 6; a ``null`` target
    leaves its sources out). Both forms may be mixed."""
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
        raise DataError(f"{p}: a label map must be a non-empty mapping of label -> label, null or a list")
    out: dict[str, str | None] = {}
    for key, value in data.items():
        if isinstance(value, list):
            for source in value:
                if not isinstance(source, (str, int)):
                    raise DataError(f"{p}: group {key!r} lists {source!r}; expected label names")
                if str(source) in out and out[str(source)] != (None if key is None else str(key)):
                    raise DataError(f"{p}: label {source!r} is mapped twice")
                out[str(source)] = None if key is None else str(key)
        elif value is None or isinstance(value, (str, int)):
            out[str(key)] = None if value is None else str(value)
        else:
            raise DataError(f"{p}: label {key!r} maps to {value!r}; expected a label name, null or a list")
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

"""Writing an evaluation report to disk: ``report.json`` (every number) and ``report.html``.

The HTML page is self-contained: plotly.js is inlined once in ``<head>``, figures and tables follow, and the
page references nothing outside itself, so it works offline and can be sent to stakeholders as one file.
Tables carry the paper's names (Table IV–VII) and every dataset of the report appears side by side.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from personagen_core.errors import PersonaGenError
from personagen_core.evaluation import figures

__all__ = ["REPORT_SIZE_CAP", "render_html", "renderer_id", "to_jsonable", "write_report"]

#: The HTML report stays under this many bytes (15 MB): plotly.js (~4.7 MB) once, the tables, and the
#: projections of at most ``max_projection_points`` texts per dataset. When a report would be larger (many
#: datasets, long texts), the projections' hover texts are shortened, the attribute-coloured example view is
#: left out and then fewer points are drawn, step by step, until the page fits; the page says what was cut.
REPORT_SIZE_CAP = 15_000_000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933;
       background: #f7f8fa; line-height: 1.45; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 40px; border-bottom: 2px solid #d9e2ec; padding-bottom: 4px; }
.meta { color: #52606d; font-size: 0.92em; }
table.data { border-collapse: collapse; margin: 12px 0 20px; font-size: 0.9em; background: #fff; }
table.data th, table.data td { border: 1px solid #d9e2ec; padding: 4px 8px; text-align: right; }
table.data th { background: #eef2f7; text-align: center; }
table.data tbody th { text-align: left; }
.caption { font-weight: 600; margin-top: 18px; }
.note { color: #52606d; font-size: 0.88em; max-width: 1000px; }
.figure { background: #fff; border: 1px solid #d9e2ec; margin: 12px 0; padding: 6px; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.9em; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; font-family: monospace; }
nav a { margin-right: 14px; }
.warn { background: #fff8e1; border-left: 4px solid #f0b429; padding: 6px 12px; margin: 10px 0;
        font-size: 0.92em; max-width: 1000px; }
.warn ul { margin: 4px 0; padding-left: 20px; }
"""


def to_jsonable(value: Any) -> Any:
    """Convert numpy / pandas values to plain JSON types; non-finite floats become ``None`` (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def renderer_id() -> str:
    """Identifies the code that draws the HTML page (this module and :mod:`figures`, plotly's version):
    a page kept with another id is drawn again."""
    import hashlib

    import plotly

    digest = hashlib.sha256(plotly.__version__.encode())
    for module in (__file__, figures.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:16]


def write_report(
    report: Mapping[str, Any], out_dir: str | Path, *, html_page: str | None = None
) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` and ``out_dir/report.html``; returns both paths.

    ``html_page`` is a page already drawn for this report (e.g. kept with a stored evaluation); without it
    the page is drawn with :func:`render_html`. Raises :class:`PersonaGenError` when the directory cannot be
    created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "report.json"
        html_path = out / "report.html"
        data = to_jsonable(report)
        json_path.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
        html_path.write_text(html_page if html_page is not None else render_html(data), encoding="utf-8")
    except OSError as exc:
        raise PersonaGenError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return json_path, html_path


def render_html(report: Mapping[str, Any], *, max_bytes: int | None = REPORT_SIZE_CAP) -> str:
    """The whole report as one self-contained HTML page (plotly.js inlined once in ``<head>``), under
    ``max_bytes`` (UTF-8; default :data:`REPORT_SIZE_CAP`, None = no cap): when the full page is larger, the
    projection figures are slimmed step by step (:data:`_SLIMMING`) and the page states how."""
    marker = "\x00projections\x00"
    skeleton = _render_page(report, projections_html=marker)
    page = skeleton.replace(marker, _projections_html(report), 1)
    if max_bytes is None or len(page.encode("utf-8")) <= max_bytes or not report.get("projections"):
        return page
    # Only the projections are drawn again at each step; the rest of the page stays as drawn.
    most = max(len(p.get("label") or []) for p in report["projections"].values())
    for step, (hover_chars, persona, example, points) in enumerate(_SLIMMING):
        if points is not None and points >= most and step < len(_SLIMMING) - 1:
            continue  # no dataset has that many points: the step would change nothing
        slim = dict(report)
        slim["projections"] = _slim_projections(report["projections"], hover_chars, persona, points)
        cut = [f"hover texts shortened to {hover_chars} characters"]
        if not persona:
            cut.append("persona summaries left out of the hover")
        if not example:
            cut.append("the attribute-coloured example view left out (the dashboard has every attribute)")
        if points is not None:
            cut.append(f"at most {points:,} points drawn per dataset (seeded stratified sample)")
        slim["_html_slimmed"] = (
            f"To keep this page under {max_bytes / 1e6:.0f} MB: " + "; ".join(cut) + ". report.json has "
            "the full projection data."
        )
        slim["_html_example_view"] = example
        page = skeleton.replace(marker, _projections_html(slim), 1)
        if len(page.encode("utf-8")) <= max_bytes or step == len(_SLIMMING) - 1:
            return page
    return page


#: (hover characters, persona in hover, attribute-coloured example view, max points per dataset) per step.
_SLIMMING: list[tuple[int, bool, bool, int | None]] = [
    (200, True, True, None),
    (200, True, False, None),
    (80, False, False, None),
    (80, False, False, 5000),
    (80, False, False, 2000),
    (40, False, False, 1000),
]


def _slim_projections(
    projections: Mapping[str, Any], hover_chars: int, persona: bool, points: int | None
) -> dict[str, Any]:
    """A copy of ``report["projections"]`` with shortened hover texts and at most ``points`` points."""
    from personagen_core.evaluation.subsample import stratified_indices

    def cut(values: list[Any]) -> list[str]:
        return [s if len(s) <= hover_chars else s[: hover_chars - 1] + "…" for s in map(str, values)]

    out: dict[str, Any] = {}
    for name, p in projections.items():
        q = dict(p)
        n = len(p.get("label") or [])
        keep = list(range(n))
        if points is not None and n > points:
            # The same strata as the report's sample (label, and e.g. source when it had one).
            by = (p.get("sample") or {}).get("stratified_by") or ["label"]
            columns = [p["label"] if col == "label" else (p.get("attributes") or {}).get(col) for col in by]
            columns = [c for c in columns if c is not None and len(c) == n] or [p["label"]]
            keep = stratified_indices(columns, points, random_state=0).tolist()
            q["sample"] = {
                **(p.get("sample") or {"of": n, "stratified_by": ["label"], "seed": 0}),
                "n": len(keep),
            }

        def pick(values: list[Any], keep: list[int] = keep) -> list[Any]:
            return [values[i] for i in keep]

        q["coords"] = {m: {"x": pick(c["x"]), "y": pick(c["y"])} for m, c in p.get("coords", {}).items()}
        q["label"] = pick(p["label"])
        q["text"] = cut(pick(p.get("text") or [""] * n))
        q["persona"] = cut(pick(p["persona"])) if persona and p.get("persona") else [""] * len(keep)
        q["attributes"] = {c: pick(v) for c, v in (p.get("attributes") or {}).items()}
        out[name] = q
    return out


def _projections_html(report: Mapping[str, Any]) -> str:
    """The projections section's content (its warnings, then the figures or why there are none)."""
    flags = _flags(report, "projections")
    if report.get("projections"):
        return flags + _projections_section(report)
    reason = (report.get("skipped") or {}).get("projections", "not computed")
    return flags + f'<p class="note">Not computed: {html.escape(str(reason))}.</p>'


def _render_page(report: Mapping[str, Any], *, projections_html: str | None = None) -> str:
    """The page; ``projections_html`` replaces the projections section's content (default: drawn here)."""
    names = list(report.get("datasets", {}))
    sections: list[tuple[str, str, str]] = []  # (anchor, title, html)
    sections.append(("datasets", "Datasets", _datasets_section(report)))
    builders: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
        ("projections", "Projections (Fig. 2)", _projections_section),
        ("diversity", "Diversity (Table IV)", _diversity_section),
        ("separability", "Separability (Table V, Fig. 3)", _separability_section),
        ("judge", "LLM judge (Fig. 4)", _judge_section),
        ("real_data", "Comparison with real data (Table VI)", _real_data_section),
        ("downstream", "Downstream utility (Table VII)", _downstream_section),
        ("slices", "Slices: which personas make good data", _slices_section),
    ]
    for key, title, build in builders:
        if key == "projections" and projections_html is not None:
            sections.append((key, title, projections_html))
            continue
        flags = _flags(report, key)
        if report.get(key):
            sections.append((key, title, flags + build(report)))
        else:
            reason = (report.get("skipped") or {}).get(key, "not computed")
            not_computed = f'<p class="note">Not computed: {html.escape(str(reason))}.</p>'
            sections.append((key, title, flags + not_computed))
    sections.append(("settings", "Settings", _settings_section(report)))

    nav = " ".join(f'<a href="#{a}">{html.escape(t.split(" (")[0])}</a>' for a, t, _ in sections)
    body = "\n".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>\n{h}</section>' for a, t, h in sections)
    title = "PersonaGen evaluation: " + ", ".join(names)
    generated = html.escape(str(report.get("generated_at", "")))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body><main>\n'
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">Generated {generated} by PersonaGen; embedding model '
        f"<code>{html.escape(str(report.get('settings', {}).get('embedding_model', '')))}</code>.</p>\n"
        f"{_stored_line(report)}<nav>{nav}</nav>\n{_warning_summary(report)}{body}\n</main></body></html>\n"
    )


# ----------------------------------------------------------------------------------------------- helpers


def _fig(fig: go.Figure) -> str:
    """A figure as a div; plotly.js itself is already in <head>."""
    inner = fig.to_html(
        full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True}
    )
    return f'<div class="figure">{inner}</div>'


def _table(frame: pd.DataFrame, caption: str, note: str | None = None) -> str:
    """A DataFrame as an escaped HTML table with a caption (pandas escapes cell text)."""
    table = frame.to_html(
        classes="data", border=0, na_rep="–", float_format=lambda v: f"{v:.4f}", escape=True
    )
    out = f'<div class="caption">{html.escape(caption)}</div>\n{table}'
    if note:
        out += f'\n<p class="note">{html.escape(note)}</p>'
    return out


def _safe_figure(build: Callable[[], go.Figure]) -> str:
    """Draw a figure; a figure that cannot be drawn from the data (e.g. empty) is left out with a note."""
    try:
        return _fig(build())
    except (KeyError, ValueError) as exc:
        return f'<p class="note">Figure not drawn: {html.escape(str(exc))}</p>'


def _datasets_section(report: Mapping[str, Any]) -> str:
    per_ds = report.get("datasets", {})
    labels = sorted({lab for d in per_ds.values() for lab in d.get("labels", {})})
    frame = pd.DataFrame(
        {
            name: [d.get("labels", {}).get(lab, 0) for lab in labels] + [d.get("n", 0)]
            for name, d in per_ds.items()
        },
        index=[*labels, "total"],
    )
    sources = "; ".join(f"{n}: {d.get('source', '')}" for n, d in per_ds.items())
    gold = report.get("gold") or {}
    extra = ""
    if gold:
        gold_frame = pd.DataFrame(
            {
                split: [gold[split].get("labels", {}).get(lab, 0) for lab in labels]
                + [gold[split].get("n", 0)]
                for split in ("train", "test")
                if gold.get(split)
            },
            index=[*labels, "total"],
        )
        extra = _table(gold_frame, "Gold data (after label mapping)", _label_map_note(report))
    return _table(frame, "Texts per label", f"Sources: {sources}") + extra + _notes(_input_notes(report))


def _input_notes(report: Mapping[str, Any]) -> dict[str, str]:
    """How each input was read (format, encoding, columns, multi-label policy) and how it was sampled."""
    gold = report.get("gold") or {}
    inputs = {
        **report.get("datasets", {}),
        **{f"gold {s}": gold[s] for s in ("train", "test") if gold.get(s)},
    }
    notes: dict[str, str] = {}
    for name, d in inputs.items():
        parts = []
        read = d.get("read") or {}
        if read:
            parts.append(f"read as {read.get('format')}")
            if read.get("encoding"):
                parts.append(f"encoding {read['encoding']}")
            if read.get("sep"):
                parts.append(f"separator {read['sep']}, {'a' if read.get('header') else 'no'} header")
            if read.get("text_col") is not None:
                parts.append(f"text column {read['text_col']!r}, label column {read.get('label_col')!r}")
            if read.get("label_names"):
                parts.append(f"label ids named by {read['label_names']}")
            if read.get("label_map"):
                parts.append(
                    f"labels mapped by {read['label_map']} ({read.get('left_out_by_map', 0)} rows left out)"
                )
            multi = read.get("multi_label") or {}
            if multi.get("rows"):
                parts.append(f"{multi['rows']} multi-label rows handled by policy {multi.get('policy')!r}")
        if d.get("sampled_from"):
            parts.append(f"seeded stratified sample of {d.get('n')} of {d['sampled_from']} texts")
        if parts:
            notes[name] = "; ".join(parts)
    return notes


def _label_map_note(report: Mapping[str, Any]) -> str:
    gold = report.get("gold") or {}
    mapping = gold.get("label_map") or {}
    dropped = gold.get("dropped_labels") or []
    pairs = ", ".join(f"{k} → {v if v is not None else '(left out)'}" for k, v in mapping.items())
    parts = [f"Label mapping (synthetic → gold): {pairs or 'identity'}."]
    if dropped:
        parts.append(
            f"Without a counterpart on the other side: {', '.join(map(str, dropped))} (left out of Table VI "
            "and of Table VII's shared-label rows; Table VII lists the labels left out of each row)."
        )
    return " ".join(parts)


def _projections_section(report: Mapping[str, Any]) -> str:
    proj = report["projections"]
    methods = sorted({m for p in proj.values() for m in p.get("coords", {})})
    if not methods:
        reason = (report.get("skipped") or {}).get("projections", "no projection method selected")
        return f'<p class="note">Not computed: {html.escape(str(reason))}.</p>'
    counts = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in (d.get("labels") or {}).items())
        for name, d in (report.get("datasets") or {}).items()
    )
    parts = [f'<p class="note">Texts per label: {html.escape(counts)}.</p>']
    for name in proj:
        note = figures.projection_sample_note(report, name)
        if note:
            parts.append(
                f'<p class="note"><b>{html.escape(name)}</b>: the projections show a {html.escape(note)} '
                "(every other figure on this page uses all texts unless its section says otherwise).</p>"
            )
    if report.get("_html_slimmed"):
        parts.append(f'<div class="warn">{html.escape(str(report["_html_slimmed"]))}</div>')
    for method in methods:
        parts.append(_safe_figure(lambda m=method: figures.projection_figure_from_report(report, method=m)))
    attrs = sorted({c for p in proj.values() for c in (p.get("attributes") or {})})
    if attrs and methods and report.get("_html_example_view", True):
        # One attribute-coloured view as an example; the dashboard offers every attribute.
        parts.append(
            _safe_figure(
                lambda: figures.projection_figure_from_report(report, method=methods[0], color_by=attrs[0])
            )
        )
    return "\n".join(parts)


def _diversity_section(report: Mapping[str, Any]) -> str:
    div = report["diversity"]
    per_ds = div["datasets"]
    paper = ["mean_cosine_distance", "cluster_entropy", "centroid_distance"]
    beyond = [m for m in figures.DIVERSITY_METRICS if m not in paper]
    out = []
    for caption, metrics in (
        ("Table IV. Diversity per emotion (n = texts)", ["n", *paper]),
        ("Table IV (b). Beyond the paper", beyond),
    ):
        columns: dict[tuple[str, str], list[Any]] = {}
        emotions = sorted({e for d in per_ds.values() for e in d["per_emotion"]})
        for name, d in per_ds.items():
            for m in metrics:
                if not any(m in d["per_emotion"].get(e, {}) for e in emotions) and m not in d.get(
                    "overall", {}
                ):
                    continue
                columns[(name, figures.DIVERSITY_METRICS.get(m, m))] = [
                    *(d["per_emotion"].get(e, {}).get(m) for e in emotions),
                    d.get("overall", {}).get(m),
                ]
        if columns:
            frame = pd.DataFrame(columns, index=[*emotions, "overall"])
            frame.columns = pd.MultiIndex.from_tuples(frame.columns)
            out.append(_table(frame, caption))
    out.append(_diversity_intervals(div))
    defs = div.get("definitions") or {}
    out.append(_notes({figures.DIVERSITY_METRICS.get(k, k): v for k, v in defs.items()}))
    if div.get("notes"):
        out.append(f'<p class="note">{html.escape(str(div["notes"]))}</p>')
    out.append(_safe_figure(lambda: figures.diversity_figure(report)))
    return "\n".join(out)


def _diversity_intervals(div: Mapping[str, Any]) -> str:
    """Table IV (c): the equal-size values with intervals, overall and per emotion, and how they were drawn."""
    from personagen_core.evaluation.diversity_ci import (
        interval_emotion_table,
        interval_notes,
        interval_overall_table,
    )

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in interval_notes(div))
    out = [f'<ul class="note">{notes}</ul>']
    overall = interval_overall_table(div).rename(columns=figures.DIVERSITY_METRICS)
    if not overall.empty:
        out.insert(0, _table(overall, "Table IV (c). Diversity at equal size per emotion: median [interval]"))
    if not div.get("equal_size"):
        return "\n".join(out)
    paper = ["mean_cosine_distance", "cluster_entropy", "centroid_distance"]
    beyond = [m for m in figures.DIVERSITY_METRICS if m not in paper]
    for caption, metrics in (("per emotion", paper), ("per emotion, beyond the paper", beyond)):
        # Datasets side by side, as in Table IV: columns (dataset, metric), one row per emotion.
        per = {
            name: interval_emotion_table(div, name, metrics).rename(columns=figures.DIVERSITY_METRICS)
            for name in div.get("datasets") or {}
        }
        per = {name: f for name, f in per.items() if not f.empty}
        if per:
            frame = pd.concat(per, axis=1)
            rows = sorted(r for r in frame.index if r != "overall")
            rows += ["overall"] if "overall" in frame.index else []
            out.append(_table(frame.loc[rows], f"Table IV (c), {caption}, at equal size: median [interval]"))
    return "\n".join(out)


def _separability_section(report: Mapping[str, Any]) -> str:
    sep = report["separability"]["datasets"]
    labels = sorted({lab for d in sep.values() for lab in d["per_class"]})
    rows = [*labels, "macro avg", "weighted avg"]
    columns: dict[tuple[str, str], list[Any]] = {}
    for name, d in sep.items():
        for metric in ("precision", "recall", "f1", "support"):
            columns[(name, metric)] = [
                *(d["per_class"].get(lab, {}).get(metric) for lab in labels),
                d["macro"].get(metric),
                d["weighted"].get(metric),
            ]
    frame = pd.DataFrame(columns, index=rows)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    acc = pd.DataFrame(
        {
            name: [
                d.get("accuracy"),
                _ci_text(d.get("accuracy_ci")),
                d.get("n_train"),
                d.get("n_test"),
                ", ".join(f"{k} {v}" for k, v in (d.get("n_per_class") or {}).items()) or None,
            ]
            for name, d in sep.items()
        },
        index=["accuracy", "interval (Wilson)", "training texts", "held-out texts", "texts per label"],
    ).astype(object)
    settings = report["separability"].get("method", "")
    out = [
        _table(frame, "Table V. Per-class separability (LightGBM on embeddings)", settings),
        _table(acc, "Accuracy"),
        _notes(_sample_notes({name: d.get("sample") for name, d in sep.items()}, "split and scored")),
    ]
    matrices = {name: d["confusion"] for name, d in sep.items()}
    out.append(
        _safe_figure(lambda: figures.confusion_grid(matrices, normalised=False, title="Confusion (counts)"))
    )
    out.append(
        _safe_figure(
            lambda: figures.confusion_grid(matrices, normalised=True, title="Confusion (row-normalised)")
        )
    )
    return "\n".join(out)


def _judge_section(report: Mapping[str, Any]) -> str:
    judge = report["judge"]
    criteria = list(judge["criteria"])
    per_ds = judge["datasets"]
    frame = pd.DataFrame(
        {
            name: [d["mean"].get(c) for c in criteria] + [d.get("n_scored"), d.get("n_failed", 0)]
            for name, d in per_ds.items()
        },
        index=[*(figures.JUDGE_CRITERIA_LABELS.get(c, c) for c in criteria), "texts scored", "texts failed"],
    )
    note = f"Judge model: {judge.get('model')}. Scores 1–5, constrained JSON output."
    out = [_table(frame, "Mean judge score per criterion", note)]
    out.append(_safe_figure(lambda: figures.judge_distribution_figure(report)))
    out.append(_safe_figure(lambda: figures.judge_emotion_figure(report)))
    return "\n".join(out)


def _real_data_section(report: Mapping[str, Any]) -> str:
    real = report["real_data"]
    per_ds = real["datasets"]
    metrics = [m for m in figures.REAL_DATA_METRICS if any(m in d for d in per_ds.values())]
    columns: dict[tuple[str, str], list[Any]] = {}
    for name, d in per_ds.items():
        columns[(name, "value")] = [(d.get(m) or {}).get("value") for m in metrics]
        columns[(name, "95% CI")] = [_ci_text((d.get(m) or {}).get("ci")) for m in metrics]
    frame = pd.DataFrame(columns, index=[figures.REAL_DATA_METRICS[m] for m in metrics])
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    sizes = real.get("sample_size") or {}
    caption = f"Table VI. Synthetic vs {real.get('reference', 'gold')} data"
    if sizes:
        caption += (
            " (equal sample sizes: " + ", ".join(f"{n}: n = {s.get('n')}" for n, s in sizes.items()) + ")"
        )
    out = [_table(frame, caption), _notes(real.get("notes") or {})]
    out.append(_safe_figure(lambda: figures.real_data_figure(report)))
    if real.get("prd_curves"):
        out.append(_safe_figure(lambda: figures.prd_curve_figure(report)))
    return "\n".join(out)


def _downstream_section(report: Mapping[str, Any]) -> str:
    down = report["downstream"]
    rows = down["rows"]
    frame = figures.downstream_frame(report)
    notes: dict[str, str] = {}
    if down.get("shared_labels") is not None:
        notes["Test texts"] = str(down.get("test", ""))
    left = down.get("left_out") or {}
    if left:
        notes["Labels left out"] = "; ".join(
            f"{name}: {', '.join(map(str, labs))}" for name, labs in left.items()
        )
    lacks = {
        name: [lab for lab in down.get("test_labels", []) if lab not in covered]
        for name, covered in (down.get("coverage") or {}).items()
    }
    lacks = {name: labs for name, labs in lacks.items() if labs}
    notes.update(_sample_notes({name: r.get("train_sample") for name, r in rows.items()}, "trained on"))
    if lacks:
        notes["Why"] = "training sets without some gold labels: " + "; ".join(
            f"{name} has no {', '.join(map(str, labs))}" for name, labs in lacks.items()
        )
    out = [
        _table(
            frame,
            f"Table VII. Trained on each set, tested on {down.get('test', 'the gold test split')}",
            down.get("method"),
        ),
        _notes(notes),
        _safe_figure(lambda: figures.downstream_figure(report)),
    ]
    matrices = {name: r["confusion"] for name, r in rows.items() if r.get("confusion")}
    if matrices:
        out.append(
            _safe_figure(
                lambda: figures.confusion_grid(matrices, normalised=True, title="Confusion on gold test")
            )
        )
    return "\n".join(out)


def _slices_section(report: Mapping[str, Any]) -> str:
    """Per dataset, the slices that differ most on each metric (with intervals), one chart per dataset,
    and for several datasets the slices whose figures changed beyond their intervals."""
    from personagen_core.evaluation.slices import compare_slices, rows_to_table

    block = report["slices"]
    metrics = block.get("metrics") or {}
    out = [_notes(block.get("notes") or {})]
    records, charts = [], []
    for name, d in block["datasets"].items():
        whole = {m: r.get(m) for r in d["rows"] if r["attribute"] == "(all)" for m in metrics}
        for metric, rows in (d.get("differ_most") or {}).items():
            for r in rows[:5]:
                records.append(
                    {
                        "dataset": name,
                        "metric": metrics.get(metric, {}).get("name", metric),
                        "slice": f"{r['attribute']} = {r['value']}",
                        "n": r.get(f"{metric}_n"),
                        "value": r.get(metric),
                        "interval": _ci_text([r.get(f"{metric}_low"), r.get(f"{metric}_high")]),
                        "whole dataset": whole.get(metric),
                        "score": r.get("score"),
                    }
                )
        first = next(iter(d.get("differ_most") or {}), None)
        if first:
            charts.append(_safe_figure(lambda n=name, m=first: figures.slices_figure(report, n, m)))
    if records:
        out.append(_table(pd.DataFrame(records), "The slices that differ most from their whole dataset"))
    out.extend(charts)
    names = list(block["datasets"])
    for other in names[1:]:
        a, b = (
            rows_to_table(block["datasets"][names[0]]["rows"]),
            rows_to_table(block["datasets"][other]["rows"]),
        )
        cmp = compare_slices(a, b, names=(names[0], other))
        changed = []
        for metric in metrics:
            col = f"{metric} overlap"
            if col not in cmp:
                continue
            hit = cmp[~cmp[col].astype(bool) & cmp[f"{metric} delta"].notna()]
            for _, r in hit.iterrows():
                changed.append(
                    {
                        "slice": f"{r['attribute']} = {r['value']}",
                        "metric": metrics[metric]["name"],
                        names[0]: r[f"{metric} {names[0]}"],
                        other: r[f"{metric} {other}"],
                        "change": r[f"{metric} delta"],
                    }
                )
        caption = f"{names[0]} vs {other}: slices whose intervals do not overlap"
        out.append(
            _table(pd.DataFrame(changed), caption)
            if changed
            else f'<p class="note">{html.escape(caption)}: none.</p>'
        )
    return "\n".join(out)


def _settings_section(report: Mapping[str, Any]) -> str:
    settings = report.get("settings", {})
    items = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(json.dumps(v, default=str))}</dd>"
        for k, v in settings.items()
    )
    extra = ""
    if report.get("timings"):
        extra = _table(
            pd.DataFrame({"seconds": list(report["timings"].values())}, index=list(report["timings"])),
            "Time per stage (this run; cached stages are fast)",
        )
    return f'<dl class="settings">{items}</dl>{extra}'


def _stored_line(report: Mapping[str, Any]) -> str:
    stored = report.get("stored") or {}
    if not stored.get("eval_id"):
        return ""
    runs = ", ".join(map(str, stored.get("runs") or [])) or "data files"
    return (
        f'<p class="meta">Stored evaluation <code>{html.escape(str(stored["eval_id"]))}</code> '
        f"({html.escape(str(stored.get('source', '')))}; runs: {html.escape(runs)}).</p>\n"
    )


def _warning_summary(report: Mapping[str, Any]) -> str:
    """A box at the top when some figures rest on too few texts (each section lists its own)."""
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    sections = sorted({str(w.get("section")) for w in warnings})
    return (
        f'<div class="warn"><b>Small samples.</b> {len(warnings)} warning(s) in: {html.escape(", ".join(sections))}. '
        "Figures computed from too few texts are flagged as unreliable in their section, with the number of "
        "texts per class behind them.</div>\n"
    )


def _flags(report: Mapping[str, Any], section: str) -> str:
    """The section's warnings and the datasets it left out (and why), as a highlighted list."""
    items = [
        (f"<b>{html.escape(str(w['dataset']))}</b>: " if w.get("dataset") else "")
        + html.escape(str(w.get("message", "")))
        for w in report.get("warnings") or []
        if w.get("section") == section
    ]
    block = report.get(section)
    skipped = block.get("skipped") if isinstance(block, Mapping) and section != "projections" else None
    for name, reason in (skipped or {}).items():
        items.append(f"<b>{html.escape(str(name))}</b> left out: {html.escape(str(reason))}")
    if not items:
        return ""
    return '<div class="warn"><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>\n"


def _sample_notes(samples: Mapping[str, Any], verb: str) -> dict[str, str]:
    """``{name: "... a seeded stratified sample of n of N texts"}`` for the datasets computed on a sample."""
    return {
        str(name): f"{verb} a seeded stratified sample (by label) of {s['n']:,} of {s['of']:,} texts"
        for name, s in samples.items()
        if s
    }


def _notes(notes: Mapping[str, Any]) -> str:
    """A bulleted list of ``{topic: explanation}`` notes."""
    if not notes:
        return ""
    items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in notes.items())
    return f'<ul class="note">{items}</ul>'


def _ci_text(ci: Any) -> str | None:
    if not ci or any(v is None for v in ci):
        return None
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"

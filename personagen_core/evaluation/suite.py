"""Orchestration of the whole evaluation (the paper's Tables IV–VII and Figs. 2–4) into one report dict.

:func:`evaluate` takes one or more datasets (DataFrames with ``text`` and ``label`` columns, plus optional
persona / scenario columns), optional gold train / test splits and a label map, and returns a
JSON-serialisable report. The computations live in :mod:`embeddings`, :mod:`metrics`, :mod:`classify`,
:mod:`projection`; this module picks the inputs, caches the expensive results on disk
(:class:`embeddings.ResultCache`, keyed by the content of the arrays and the settings) and lays them out.

Report layout (every section keyed by dataset name, so several runs sit side by side)::

    schema_version, generated_at, settings, embedding {model, dim}
    datasets[name]      {n, labels {label: count}, source}
    gold                {train {n, labels}, test {n, labels}, label_map, dropped_labels} | None
    projections[name]   {coords {method: {x, y}}, label, text, persona, attributes {column: [...]},
                         sample {n, of, stratified_by, seed, labels} (only when a sample was drawn)}
    diversity           {datasets[name] {per_emotion {emotion: {metric: v}}, overall {metric: v}},
                         definitions, notes}
    separability        {method, datasets[name] {accuracy, per_class, macro, weighted, confusion,
                         n_train, n_test}}
    judge               {model, criteria, datasets[name] {mean, std, distribution, per_emotion,
                         n_scored, n_failed, n_cached}}
    real_data           {reference, notes, metric_settings, sample_size[name],
                         datasets[name] {metric: {value, ci}}, prd_curves[name] {precision, recall}}
    downstream          {test, comparable, shared_labels, test_labels, n_test, n_test_full, coverage[name],
                         left_out[row], method, rows[row] {accuracy, weighted_precision, weighted_recall,
                         weighted_f1, macro_f1, ci {metric: [low, high]}, scope, labels, left_out,
                         confusion, n_train, n_test}}   (Table VII, like with like: see _downstream)
    skipped             {section: reason}   sections not computed and why
    warnings            [{section, dataset, message}]   figures computed from too few texts, left-out labels
    timings             {stage: seconds}

Small or unbalanced data gives partial results rather than an error: a section (or one dataset of it) that
needs more texts is left out with the reason (``report["skipped"][section]`` when no dataset could be
computed, else ``section["skipped"][dataset]``), and figures resting on few texts carry a warning and
their ``n`` per class (thresholds derived from the settings; see :data:`RELIABILITY`).

A confusion block is ``{"labels": [...], "counts": [[...]], "normalised": [[...]]}`` (rows = true label).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from personagen_core.errors import DataError, PersonaGenError
from personagen_core.evaluation.slices import NON_ATTRIBUTE_COLUMNS

__all__ = [
    "DIVERSITY_DEFINITIONS",
    "RELIABILITY",
    "EvaluationSettings",
    "ProgressCallback",
    "evaluate",
    "load_data_file",
    "load_run_dataset",
    "load_run_rejections",
]

#: ``on_event(stage, fraction)``: ``stage`` names the step, ``fraction`` the share of the whole done (0–1).
ProgressCallback = Callable[[str, float], None]


#: How each diversity metric is defined (written into the report next to the numbers).
DIVERSITY_DEFINITIONS: dict[str, str] = {
    "mean_cosine_distance": "mean of 1 - cos(a, b) over all unordered pairs of texts of the emotion",
    "cluster_entropy": "natural-log entropy of the cluster sizes when the emotion's texts are split into k "
    "k-means clusters (maximum ln k)",
    "centroid_distance": "cosine distance between emotion centroids: per emotion the mean distance to the "
    "other emotions' centroids; overall their mean",
    "vendi_score": "Vendi score with the cosine kernel (effective number of distinct texts)",
    "distinct_1": "distinct unigrams / all unigrams",
    "distinct_2": "distinct bigrams / all bigrams",
    "distinct_3": "distinct trigrams / all trigrams",
    "self_bleu_4": "Self-BLEU with n-grams up to 4 on a seeded sample of the texts (lower = more diverse)",
    "compression_ratio": "size of the newline-joined texts / their gzip size (higher = more repetitive)",
}


#: How the reliability thresholds are derived (also written into the report).
RELIABILITY: dict[str, str] = {
    "separability": "a label needs min_child_samples / (1 - test_size) texts (25 with LightGBM's defaults) so "
    "that its training part can fill one LightGBM leaf; fewer and the classifier can hardly learn it. A label "
    "needs ceil(1 / test_size) texts (5) to be in the held-out part at all, below that it is left out.",
    "diversity": "5 texts per k-means cluster (25 per emotion with k = 5): cluster entropy, Vendi score and "
    "distinct-n depend on the number of texts and are noisy below that; cluster entropy needs k texts and "
    "mean cosine distance 2.",
    "projection": "t-SNE needs 4 texts; below 3 x perplexity + 1 (91) texts the perplexity is lowered, and a "
    "picture of a few dozen points says little about the structure.",
    "real_data": "FID fits a covariance in the embedding space: with no more texts than dimensions it is "
    "singular and FID is dominated by that bias; the bootstrap intervals show the uncertainty.",
}
_TEXTS_PER_CLUSTER = 5
_TSNE_MIN = 4
_TSNE_FULL_PERPLEXITY = 91  # 3 x perplexity 30 + 1


class EvaluationSettings(BaseModel):
    """Every knob of the evaluation; stored unchanged in the report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_model: str | None = Field(
        None, description="sentence-transformers model dir or name; None = all-MiniLM-L6-v2 (bundled)"
    )
    embedding_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto = bfloat16 matrix products on CPUs that have them natively, else float32"
    )
    projections: tuple[Literal["tsne", "umap", "pca"], ...] = ("tsne", "umap")
    max_projection_points: int | None = Field(
        10_000,
        ge=10,
        description="projections of a larger dataset are computed on a seeded sample of this many texts, "
        "stratified by label (None = every text)",
    )
    max_train_texts: int | None = Field(
        20_000,
        ge=10,
        description="separability and Table VII train LightGBM on a seeded sample of at most this many "
        "texts per dataset, stratified by label (None = every text)",
    )
    projection_strata: tuple[str, ...] = Field(
        ("source",),
        description="columns besides the label that the projection sample is also stratified by when a "
        "dataset has them (2 to 50 distinct values), e.g. a source column marking synthetic and real texts",
    )
    seed: int = 0
    cluster_k: int = Field(5, ge=2, description="k-means clusters per emotion for Cluster Entropy")
    self_bleu_sample: int = Field(500, ge=2, description="texts sampled per emotion for Self-BLEU")
    test_size: float = Field(0.2, gt=0, lt=1, description="held-out share for separability")
    prd_clusters: int = Field(20, ge=2, description="k-means clusters of PRD / KL / histogram cosine")
    prd_runs: int = Field(10, ge=1, description="PRD clusterings averaged (1001 angles each)")
    prdc_k: int = Field(5, ge=1)
    bootstrap: int = Field(20, ge=0, description="bootstrap resamples for confidence intervals")
    confidence: float = Field(0.95, gt=0, lt=1)
    diversity_resamples: int = Field(
        20,
        ge=0,
        description="seeded equal-size subsamples per dataset for the diversity intervals (0 = none; else >= 2)",
    )
    diversity_sample_max: int = Field(
        500, ge=5, description="largest equal-size subsample per emotion for the diversity intervals"
    )
    gold_per_class: int = Field(500, ge=1, description="balanced gold training sample (the paper's gold row)")
    max_texts: int | None = Field(None, ge=10, description="cap per dataset (seeded stratified subsample)")
    max_gold: int | None = Field(None, ge=10, description="cap on the gold reference/test set")
    judge: bool = False
    judge_model: str | None = Field(
        None, description="alias, recorded with the report: the judge's model is chosen in one place, "
        "LLMSettings.models['judge']; when set, it is applied there for this evaluation"
    )
    use_cache: bool = True

    @field_validator("diversity_resamples")
    @classmethod
    def _resamples_none_or_two(cls, v: int) -> int:
        if v == 1:
            raise ValueError("diversity_resamples must be 0 (no intervals) or at least 2 (one draw has no spread)")
        return v


# ------------------------------------------------------------------------------------------- loading


def load_run_dataset(store: Any, run_id: str) -> pd.DataFrame:
    """A run's accepted texts (``store.texts``) as an evaluation dataset, ``emotion`` renamed ``label``.

    The store's ``persona`` and ``scenario`` descriptions become the hover summary; the attribute columns
    stay, so projections can be coloured by any of them. Raises :class:`StoreError` for an unknown run.
    """
    frame = store.texts(run_id)
    if frame is None or len(frame) == 0:
        raise DataError(f"run {run_id!r} has no accepted texts to evaluate")
    frame = frame.rename(columns={"emotion": "label"}).reset_index(drop=True)
    frame["text"] = frame["text"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame.attrs["source"] = f"run {run_id}"
    return frame


def load_run_rejections(store: Any, run_id: str) -> dict[str, pd.DataFrame]:
    """A run's judged candidates and stage-4 outputs with their persona attributes, for the slices'
    rejection rates: ``{"candidates": attributes + rejected (stages 1-3), "outputs": attributes + rejected
    (accepted texts and outputs the stage-4 checks rejected; quota overflows are not rejections)}``."""
    personas = store.personas(run_id)
    judged = personas[personas["status"].astype(str).str.match(r"validated|rejected")].copy()
    judged["rejected"] = judged["status"].astype(str).str.startswith("rejected")
    texts = store.texts(run_id)[["persona_id"]].assign(rejected=False)
    rej = store.rejections(run_id)
    rej = rej[(rej["stage"] == 4) & (rej["reason"] != "quota_full") & rej["persona_id"].notna()]
    outputs = pd.concat([texts, rej[["persona_id"]].assign(rejected=True)], ignore_index=True)
    attrs = personas.drop(columns=["status"])
    outputs["persona_id"] = outputs["persona_id"].astype("Int64")
    attrs["persona_id"] = attrs["persona_id"].astype("Int64")
    outputs = outputs.merge(attrs, on="persona_id", how="left")
    return {
        "candidates": judged.drop(columns=["status", "persona_id"]).reset_index(drop=True),
        "outputs": outputs.drop(columns=["persona_id"]),
    }


def load_data_file(path: str | Path, options: Any = None, **kwargs: Any) -> pd.DataFrame:
    """A dataset file or folder via :func:`gold.load_dataset` (``options``: a :class:`gold.ReadOptions`;
    keyword arguments override its fields)."""
    from personagen_core.evaluation.gold import load_dataset

    frame = load_dataset(path, options, **kwargs)
    frame.attrs["source"] = str(path)
    return frame


# ------------------------------------------------------------------------------------------- evaluate


def evaluate(
    datasets: Mapping[str, pd.DataFrame],
    *,
    gold_train: pd.DataFrame | None = None,
    gold_test: pd.DataFrame | None = None,
    label_map: Mapping[str, str | None] | None = None,
    settings: EvaluationSettings | None = None,
    embedder: Any | None = None,
    judge_client: Any | None = None,
    llm_settings: Any | None = None,
    judge_store: Any | None = None,
    judge_cache: dict[tuple[str, str], dict[str, int]] | None = None,
    cache_dir: str | Path | None = None,
    on_event: ProgressCallback | None = None,
    rejections: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``datasets`` (name → DataFrame with ``text``, ``label``) and return the report dict.

    - ``rejections`` (per dataset name, from :func:`load_run_rejections`) adds the rejection rates to the
      slices (``report["slices"]``: the figures per persona / scenario attribute value).

    - ``gold_test`` enables Table VI (real-data comparison, on the gold test set) and Table VII (train on each
      dataset, test on gold); ``gold_train`` adds the balanced gold row and the majority baseline to Table VII
      (and is the Table VI reference when there is no test set).
    - ``label_map`` maps synthetic labels to gold labels (``None`` = leave out); labels that do not occur on
      both sides are left out of Tables VI–VII and listed in ``report["gold"]["dropped_labels"]``.
    - ``embedder`` is anything with ``.encode(texts) -> ndarray`` (default: :class:`embeddings.Embedder`
      with ``settings.embedding_model``).
    - The judge runs when ``settings.judge`` is true, with ``judge_client`` (an open
      :class:`llm.LLMClient`) or ``llm_settings`` (a client is opened and closed here); scores are cached
      in ``judge_store`` (a :class:`store.RunStore`) or the ``judge_cache`` dict.
    - Expensive results are cached under ``cache_dir`` (default ``$PERSONAGEN_HOME/results``) unless
      ``settings.use_cache`` is false: re-evaluating unchanged inputs recomputes nothing.
    """
    settings = settings or EvaluationSettings()
    if settings.judge and judge_client is None and llm_settings is None:
        raise PersonaGenError("settings.judge is on but neither judge_client nor llm_settings was given")
    progress = _Progress(on_event)
    data = {name: _check_dataset(name, frame) for name, frame in datasets.items()}
    if not data:
        raise DataError("nothing to evaluate: give at least one dataset")
    data = {name: _cap(frame, settings.max_texts, settings.seed) for name, frame in data.items()}
    gold = _prepare_gold(gold_train, gold_test, label_map, data, settings)

    from personagen_core.evaluation.embeddings import Embedder, ResultCache

    if embedder is None:
        embedder = Embedder(settings.embedding_model, precision=settings.embedding_precision)
    cache = ResultCache(cache_dir, enabled=settings.use_cache)

    report: dict[str, Any] = {
        "schema_version": 1,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": settings.model_dump(mode="json"),
        "datasets": {
            name: {
                "n": int(len(f)),
                "labels": {str(k): int(v) for k, v in f["label"].value_counts().sort_index().items()},
                "source": str(datasets[name].attrs.get("source", "DataFrame")),
                **_input_notes(datasets[name], f),
            }
            for name, f in data.items()
        },
        "skipped": {},
        "warnings": [],
        "reliability": dict(RELIABILITY),
        "timings": {},
    }
    warn = _Warnings(report["warnings"])

    with progress.stage("embeddings", report):
        texts = {name: f["text"] for name, f in data.items()}
        emb = _encode_all(embedder, texts, progress.within("embeddings"))
        report["embedding"] = {
            "model": str(getattr(embedder, "model_id", settings.embedding_model or "all-MiniLM-L6-v2")),
            "dim": int(next(iter(emb.values())).shape[1]),
            "precision": str(getattr(embedder, "dtype", "unknown")),
        }
        report["settings"]["embedding_model"] = report["embedding"]["model"]

    with progress.stage("projections", report):
        report["projections"] = _projections(data, emb, settings, cache, warn)
        if not settings.projections:
            report["skipped"]["projections"] = "no projection method selected (hover fields only)"

    with progress.stage("diversity", report):
        report["diversity"] = _diversity(data, emb, settings, cache, warn)

    with progress.stage("separability", report):
        report["separability"] = _separability(data, emb, settings, cache, warn)
        if report["separability"] is None:
            report["skipped"]["separability"] = "; ".join(warn.skipped.pop("separability", {}).values())

    with progress.stage("judge", report):
        if settings.judge:
            on_judged = progress.within("judge")
            report["judge"] = _judge(
                data, settings, judge_client, llm_settings, judge_store, judge_cache, on_judged
            )
        else:
            report["judge"] = None
            report["skipped"]["judge"] = "judge disabled (settings.judge is false)"

    gold_emb: dict[str, Any] | None = None
    if gold is None:
        report["gold"] = None
        report["real_data"] = None
        report["downstream"] = None
        report["skipped"]["real_data"] = "no gold data given"
        report["skipped"]["downstream"] = "no gold test split given"
    else:
        report["gold"] = gold["summary"]
        for name, reason in gold["unusable"].items():
            warn.skip("real_data", name, reason)
            warn.skip("downstream", name, reason)
        with progress.stage("gold embeddings", report):
            gold_emb = _embed_gold(embedder, gold, settings)
        with progress.stage("real data", report):
            report["real_data"] = _real_data(gold, gold_emb, data, emb, settings, cache, warn)
            if report["real_data"] is None:
                report["skipped"]["real_data"] = "; ".join(warn.skipped.pop("real_data", {}).values())
        with progress.stage("downstream", report):
            if gold["test"] is None:
                report["downstream"] = None
                report["skipped"]["downstream"] = "no gold test split given"
            else:
                report["downstream"] = _downstream(gold, gold_emb, data, emb, settings, cache, warn)
                if report["downstream"] is None:
                    report["skipped"]["downstream"] = "; ".join(warn.skipped.pop("downstream", {}).values())
    with progress.stage("slices", report):
        report["slices"] = _slices(data, emb, gold, gold_emb, rejections or {}, settings, cache)
        if report["slices"] is None:
            report["skipped"]["slices"] = "no dataset has persona or scenario attribute columns"
    progress.done()
    return report


# ------------------------------------------------------------------------------------------- sections


def _projections(
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    settings: EvaluationSettings,
    cache: Any,
    warn: _Warnings,
) -> dict[str, Any]:
    from personagen_core.evaluation.projection import METHOD_NAMES as names
    from personagen_core.evaluation.projection import project
    from personagen_core.evaluation.subsample import stratified_indices

    out: dict[str, Any] = {}
    for name, full in data.items():
        coords, skipped = {}, {}
        n_all = len(full)
        cap = settings.max_projection_points
        sample: dict[str, Any] | None = None
        x = emb[name]
        frame = full
        if cap is not None and n_all > cap:
            # Large datasets: one seeded sample per dataset, stratified by label, shared by every method,
            # so the report carries at most ``cap`` points (and their hover texts) per dataset.
            strata = _projection_strata(full, settings)
            idx = stratified_indices(
                [full[col].to_numpy(dtype=str) for col in strata], cap, random_state=settings.seed
            )
            frame, x = full.iloc[idx].reset_index(drop=True), x[idx]
            sample = {
                "n": len(idx),
                "of": n_all,
                "stratified_by": strata,
                "seed": settings.seed,
                "labels": {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()},
            }
        n = len(frame)
        for method in settings.projections:
            if n < _TSNE_MIN:
                skipped[method] = f"{names[method]} needs at least {_TSNE_MIN} texts; this dataset has {n}"
                continue
            try:
                xy = np.asarray(cache.call(project, x, method=method, random_state=settings.seed))
            except (DataError, ValueError) as exc:  # degenerate input (e.g. identical texts)
                skipped[method] = f"{names[method]} could not lay out these {n} texts: {exc}"
                continue
            coords[method] = {"x": _round(xy[:, 0]), "y": _round(xy[:, 1])}
        if coords and n < _TSNE_FULL_PERPLEXITY:
            warn.add(
                "projections",
                name,
                f"the projection shows {_counts_text(frame)}; a picture of so few points says "
                f"little about the structure (t-SNE's perplexity lowered to {max(1.0, (n - 1) / 3):.1f})",
            )
        for reason in skipped.values():
            warn.add("projections", name, reason)
        attributes = {
            col: frame[col].astype(str).tolist()
            for col in frame.columns
            # Free-text verdict reasons are hover material, not categories to colour by.
            if col not in NON_ATTRIBUTE_COLUMNS
            and not col.startswith("reason_")
            and frame[col].nunique() <= 100
        }
        out[name] = {
            "coords": coords,
            "label": frame["label"].tolist(),
            "text": frame["text"].tolist(),
            "persona": _persona_summaries(frame, list(attributes)),
            "attributes": attributes,
        }
        if skipped:
            out[name]["skipped"] = skipped
        if sample is not None:
            out[name]["sample"] = sample
    return out


def _projection_strata(frame: pd.DataFrame, settings: EvaluationSettings) -> list[str]:
    """``label`` plus each ``settings.projection_strata`` column the dataset has with 2 to 50 values."""
    extra = [
        col
        for col in settings.projection_strata
        if col != "label" and col in frame.columns and 2 <= frame[col].nunique(dropna=False) <= 50
    ]
    return ["label", *extra]


def _diversity(
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    settings: EvaluationSettings,
    cache: Any,
    warn: _Warnings,
) -> dict[str, Any]:
    from personagen_core.evaluation.diversity_ci import diversity_intervals, equal_sizes
    from personagen_core.evaluation.metrics import diversity_table

    reliable_n = _TEXTS_PER_CLUSTER * settings.cluster_k
    # One subsample size per emotion shared by every dataset, so the intervals compare like with like.
    sizes = equal_sizes(
        {name: f["label"].astype(str).value_counts().to_dict() for name, f in data.items()},
        k=settings.cluster_k,
        max_size=settings.diversity_sample_max,
    )
    per_ds = {}
    for name, frame in data.items():
        table = cache.call(
            diversity_table,
            emb[name],
            frame["label"].to_numpy(dtype=str),
            frame["text"].tolist(),
            k=settings.cluster_k,
            random_state=settings.seed,
            self_bleu_sample=settings.self_bleu_sample,
        )
        rows = {str(idx): {str(c): _num(v) for c, v in row.items()} for idx, row in table.iterrows()}
        overall = rows.pop("average", {})
        few = {e: int(r["n"] or 0) for e, r in rows.items() if (r.get("n") or 0) < reliable_n}
        per_ds[name] = {
            "per_emotion": rows,
            "overall": overall,
            "unreliable": sorted(few),
            "min_reliable": reliable_n,
        }
        if settings.diversity_resamples:
            per_ds[name]["equal_size"] = cache.call(
                diversity_intervals,
                emb[name],
                frame["label"].to_numpy(dtype=str),
                frame["text"].tolist(),
                sizes,
                n_resamples=settings.diversity_resamples,
                confidence=settings.confidence,
                k=settings.cluster_k,
                self_bleu_sample=settings.self_bleu_sample,
                random_state=settings.seed,
            )
        if few:
            listed = ", ".join(f"{e} ({c})" for e, c in few.items())
            warn.add(
                "diversity",
                name,
                f"unreliable: {listed} {'has' if len(few) == 1 else 'have'} fewer than {reliable_n} texts "
                f"({_TEXTS_PER_CLUSTER} per k-means cluster, k = {settings.cluster_k}); cluster entropy needs "
                f"{settings.cluster_k} texts and mean cosine distance 2 (blank below that)",
            )
    out = {
        "datasets": per_ds,
        "definitions": dict(DIVERSITY_DEFINITIONS),
        "notes": f"k = {settings.cluster_k} clusters per emotion, seed {settings.seed}; Self-BLEU on up to "
        f"{settings.self_bleu_sample} texts per emotion; overall = unweighted mean of the emotions; formulas "
        "in docs/METRICS.md.",
    }
    if settings.diversity_resamples:
        out["equal_size"] = {
            "sizes": sizes,
            "n_resamples": settings.diversity_resamples,
            "confidence": settings.confidence,
            "max_size": settings.diversity_sample_max,
            "min_texts": _min_interval_texts(settings),
            "seed": settings.seed,
            "description": _equal_size_description(sizes, settings),
        }
    return out


def _min_interval_texts(settings: EvaluationSettings) -> int:
    from personagen_core.evaluation.diversity_ci import min_texts_for_interval

    return min_texts_for_interval(settings.cluster_k)


def _equal_size_description(sizes: Mapping[str, int], settings: EvaluationSettings) -> str:
    """One sentence saying how the equal-size intervals were sampled (report, page, CLI)."""
    if not sizes:
        return (
            f"no interval: every emotion needs at least {_min_interval_texts(settings)} texts in a dataset "
            "(subsamples of half the texts of the smallest compared dataset)"
        )
    per = ", ".join(f"{e} {m}" for e, m in sizes.items())
    return (
        f"{settings.diversity_resamples} seeded subsamples (seed {settings.seed}) without replacement of the "
        f"same number of texts per emotion in every dataset ({per}; half the smallest dataset's texts of the "
        f"emotion, at most {settings.diversity_sample_max}); value = median over the subsamples, "
        f"{settings.confidence:.0%} interval = their percentile range"
    )


def _separability(
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    settings: EvaluationSettings,
    cache: Any,
    warn: _Warnings,
) -> dict[str, Any] | None:
    from personagen_core.evaluation.classify import min_child_samples, min_per_class, separability

    need = min_per_class(settings.test_size)
    leaf = min_child_samples()
    reliable_n = math.ceil(leaf / (1 - settings.test_size) - 1e-9)
    split = f"{1 - settings.test_size:.0%}/{settings.test_size:.0%}"
    per_ds = {}
    for name, frame in data.items():
        y = frame["label"].to_numpy(dtype=str)
        counts = {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}
        kept = [lab for lab, c in counts.items() if c >= need]
        left_out = {lab: c for lab, c in counts.items() if c < need}
        if len(kept) < 2:
            warn.skip(
                "separability",
                name,
                f"separability of {name!r} needs at least 2 labels with {need} or more texts each (a "
                f"stratified {split} split puts every label on both sides); this dataset has "
                f"{_counts_text(frame)}",
            )
            continue
        rows = np.flatnonzero(np.isin(y, kept))
        sample = _train_sample(y[rows], settings)
        if sample is not None:
            rows = rows[sample]
        res = cache.call(
            separability, emb[name][rows], y[rows], random_state=settings.seed, test_size=settings.test_size
        )
        labels = [str(x) for x in res.labels]
        confusion = np.asarray(res.confusion)
        predicted = [lab for lab, col in zip(labels, confusion.sum(axis=0), strict=True) if col > 0]
        per_ds[name] = {
            "accuracy": _num(res.accuracy),
            "accuracy_ci": _wilson(res.accuracy, int(res.n_test), settings.confidence),
            "per_class": {str(k): {m: _num(v) for m, v in d.items()} for k, d in res.per_class.items()},
            "macro": {m: _num(v) for m, v in res.macro_avg.items()},
            "weighted": {m: _num(v) for m, v in res.weighted_avg.items()},
            "confusion": _confusion(labels, res.confusion, res.confusion_normalised),
            "n_train": int(res.n_train),
            "n_test": int(res.n_test),
            "n_per_class": {lab: counts[lab] for lab in labels},
            "left_out": left_out,
            "predicted_labels": predicted,
            "min_reliable": reliable_n,
        }
        if sample is not None:
            of = int(np.isin(y, kept).sum())
            per_ds[name]["sample"] = {"n": len(rows), "of": of, "stratified_by": ["label"]}
        if left_out:
            warn.add(
                "separability",
                name,
                "left out of separability (fewer than "
                f"{need} texts, too few for the {split} split): "
                + ", ".join(f"{lab} ({c})" for lab, c in left_out.items()),
            )
        few = {lab: counts[lab] for lab in labels if counts[lab] < reliable_n}
        if len(predicted) == 1:
            warn.add(
                "separability",
                name,
                f"the classifier predicted {predicted[0]!r} for every held-out text (accuracy "
                f"{res.accuracy:.3f} on {res.n_test} texts): the sample is too small to mean anything; "
                f"LightGBM trained on {res.n_train} texts cannot split leaves of {leaf}",
            )
        elif few:
            warn.add(
                "separability",
                name,
                "unreliable: "
                + ", ".join(f"{lab} ({c})" for lab, c in few.items())
                + f" {'has' if len(few) == 1 else 'have'} fewer than {reliable_n} texts, so LightGBM "
                f"(leaves of at least {leaf} training texts) can hardly learn them; accuracy "
                f"{res.accuracy:.3f} on {res.n_test} held-out texts",
            )
    if not per_ds:
        return None
    out: dict[str, Any] = {
        "method": f"LightGBM (defaults) on the embeddings, stratified {split} split, seed {settings.seed}; "
        f"accuracy interval: Wilson {settings.confidence:.0%} on the held-out texts"
        + _train_cap_note(settings),
        "datasets": per_ds,
    }
    if warn.skipped.get("separability"):
        out["skipped"] = warn.skipped.pop("separability")
    return out


def _judge(
    data: Mapping[str, pd.DataFrame],
    settings: EvaluationSettings,
    client: Any | None,
    llm_settings: Any | None,
    store: Any | None,
    cache: dict[tuple[str, str], dict[str, int]] | None,
    on_progress: Callable[[float], None],
) -> dict[str, Any]:
    from personagen_core.evaluation.judge import JUDGE_CRITERIA, ajudge_texts, summarise_scores

    local_cache = cache if cache is not None else {}
    names = list(data)

    async def run_all(client_: Any) -> dict[str, pd.DataFrame]:
        out = {}
        for i, name in enumerate(names):
            frame = data[name]
            cols = [c for c in ("text", "label", "run_id", "text_id") if c in frame.columns]
            out[name] = await ajudge_texts(
                frame[cols],
                client_,
                store=store,
                cache=local_cache,
                on_progress=lambda done, total, i=i: on_progress((i + done / max(total, 1)) / len(names)),
            )
        return out

    async def run() -> tuple[str, dict[str, pd.DataFrame]]:
        if client is not None:
            return client.settings.model_for("judge"), await run_all(client)
        from personagen_core.generation.endpoints import open_client

        llm = llm_settings
        if settings.judge_model:
            llm = llm.model_copy(update={"models": {**llm.models, "judge": settings.judge_model}})
        async with open_client(llm) as c:  # one endpoint, or an endpoint pool
            return c.settings.model_for("judge"), await run_all(c)

    model, scores = asyncio.run(run())
    return {
        "model": model,
        "criteria": list(JUDGE_CRITERIA),
        "datasets": {name: summarise_scores(s) for name, s in scores.items()},
    }


def _prepare_gold(
    gold_train: pd.DataFrame | None,
    gold_test: pd.DataFrame | None,
    label_map: Mapping[str, str | None] | None,
    data: Mapping[str, pd.DataFrame],
    settings: EvaluationSettings,
) -> dict[str, Any] | None:
    """Gold splits checked and capped; synthetic label mapping and the labels shared by both sides."""
    if gold_train is None and gold_test is None:
        return None
    train = _check_dataset("gold train", gold_train) if gold_train is not None else None
    test = _check_dataset("gold test", gold_test) if gold_test is not None else None
    if test is not None:
        test = _cap(test, settings.max_gold, settings.seed)
    mapping = {str(k): (None if v is None else str(v)) for k, v in (label_map or {}).items()}
    gold_labels = set((test if test is not None else train)["label"])
    mapped = {name: _map_labels(frame, mapping) for name, frame in data.items()}
    syn_labels = set().union(*(set(f["label"]) for f in mapped.values()))
    dropped = sorted(
        {lab for f in data.values() for lab in f["label"] if mapping.get(lab, lab) is None}
        | (syn_labels ^ gold_labels)
    )
    unusable: dict[str, str] = {}
    for name, frame in list(mapped.items()):
        shared = set(frame["label"]) & gold_labels
        if len(shared) < 2:
            # Not an error: the other sections of this dataset stay; only the comparison is left out.
            unusable[name] = (
                f"dataset {name!r} shares {len(shared)} label(s) {sorted(shared)} with the gold data "
                f"({sorted(gold_labels)}); at least two are needed. Map its labels "
                f"{sorted(set(data[name]['label']))} to the gold labels with a label map"
            )
            del mapped[name]
    summary = {
        split: (
            {
                "n": int(len(f)),
                "labels": {str(k): int(v) for k, v in f["label"].value_counts().sort_index().items()},
                "source": str(f.attrs.get("source", "DataFrame")),
                **_input_notes(f, f),
            }
            if f is not None
            else None
        )
        for split, f in (("train", train), ("test", test))
    }
    summary["label_map"] = mapping
    summary["dropped_labels"] = dropped
    return {"train": train, "test": test, "mapped": mapped, "summary": summary, "unusable": unusable}


def _embed_gold(embedder: Any, gold: Mapping[str, Any], settings: EvaluationSettings) -> dict[str, Any]:
    """Embed the gold test set and only the balanced sample of the training split that Table VII uses."""
    from personagen_core.evaluation.classify import balanced_indices

    out: dict[str, Any] = {}
    if gold["test"] is not None:
        out["test"] = _encode(embedder, gold["test"]["text"])
    if gold["train"] is not None:
        y = gold["train"]["label"].to_numpy(dtype=str)
        idx = np.sort(balanced_indices(y, settings.gold_per_class, random_state=settings.seed))
        out["train_idx"] = idx
        out["train"] = _encode(embedder, gold["train"]["text"].iloc[idx])
    return out


def _real_data(
    gold: Mapping[str, Any],
    gold_emb: Mapping[str, Any],
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    settings: EvaluationSettings,
    cache: Any,
    warn: _Warnings,
) -> dict[str, Any] | None:
    from personagen_core.evaluation.metrics import real_data_metrics

    if gold["test"] is not None:
        ref_name, ref_frame, ref_x = "gold test split", gold["test"], gold_emb["test"]
    else:
        idx = gold_emb["train_idx"]
        ref_name, ref_frame, ref_x = (
            "balanced gold training sample",
            gold["train"].iloc[idx],
            gold_emb["train"],
        )
    ref_labels = ref_frame["label"].to_numpy(dtype=str)
    per_ds, sizes, curves = {}, {}, {}
    metric_settings: dict[str, Any] = {}
    for name, frame in gold["mapped"].items():
        shared = sorted(set(frame["label"]) & set(ref_labels))
        syn_mask = frame["label"].isin(shared).to_numpy()
        ref_mask = np.isin(ref_labels, shared)
        x_syn = emb[name][frame["row"].to_numpy()[syn_mask]]
        x_ref = ref_x[ref_mask]
        try:
            res = cache.call(
                real_data_metrics,
                x_ref,
                x_syn,
                random_state=settings.seed,
                n_boot=settings.bootstrap,
                confidence=settings.confidence,
                num_clusters=settings.prd_clusters,
                prd_runs=settings.prd_runs,
                k=settings.prdc_k,
            )
        except DataError as exc:  # too few texts on one side
            warn.skip("real_data", name, f"{name}: {exc} (shared labels {', '.join(shared)})")
            continue
        d = res.to_dict()
        if int(d["n"]) <= x_syn.shape[1]:
            warn.add(
                "real_data",
                name,
                f"unreliable: {d['n']} texts per side, not more than the {x_syn.shape[1]} embedding dimensions, "
                "so FID's covariances are singular and its value is mostly bias; see the confidence intervals",
            )
        metric_settings = d.get("settings", {})
        per_ds[name] = {
            m: {"value": _num(v["value"]), "ci": [_num(v.get("ci_low")), _num(v.get("ci_high"))]}
            for m, v in d["metrics"].items()
        }
        sizes[name] = {"n": int(d["n"]), "labels": shared}
        if d.get("prd_curve"):
            curves[name] = {k: _round(v) for k, v in d["prd_curve"].items()}
    if not per_ds:
        return None
    skipped = warn.skipped.pop("real_data", None)
    return {
        **({"skipped": skipped} if skipped else {}),
        "reference": ref_name,
        "datasets": per_ds,
        "sample_size": sizes,
        "prd_curves": curves,
        "metric_settings": metric_settings,
        "notes": {
            "samples": "both sets restricted to their shared labels, then the larger subsampled to the size "
            "of the smaller (seeded); confidence intervals from "
            f"{settings.bootstrap} seeded bootstrap resamples ({settings.confidence:.0%})",
            "FID": "pytorch-fid formula on the embeddings (eps added to the covariances when the product is "
            "singular)",
            "PRD": f"Sajjadi et al. 2018: {settings.prd_clusters} k-means clusters on both sets pooled, "
            f"{metric_settings.get('num_angles', 1001)} angles, {settings.prd_runs} runs averaged; "
            "F8 ~ recall, F1/8 ~ precision",
            "KL": f"{metric_settings.get('kl_direction', 'KL(real || synthetic)')} over the same cluster "
            f"histograms, additive smoothing alpha = {metric_settings.get('kl_alpha', 1.0)}",
            "PRDC": "improved precision / recall, density and coverage (Naeem et al. 2020), "
            f"k = {settings.prdc_k}",
        },
    }


def _downstream(
    gold: Mapping[str, Any],
    gold_emb: Mapping[str, Any],
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    settings: EvaluationSettings,
    cache: Any,
    warn: _Warnings,
) -> dict[str, Any] | None:
    """Table VII, like with like: every row is scored on the same gold test texts, those whose labels all
    compared training sets (each dataset and the balanced gold sample) can predict; the gold and majority
    rows on the full test split follow as extra rows, and a chance row gives the floor."""
    from personagen_core.evaluation.classify import (
        chance_baseline,
        majority_baseline,
        min_child_samples,
        score_intervals,
        transfer,
    )

    y_test = gold["test"]["label"].to_numpy(dtype=str)
    x_test = gold_emb["test"]
    test_labels = sorted(set(y_test.tolist()))
    train_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    train_samples: dict[str, dict[str, Any]] = {}
    for name, frame in gold["mapped"].items():
        rows, y_ds = frame["row"].to_numpy(), frame["label"].to_numpy(dtype=str)
        sample = _train_sample(y_ds, settings)
        if sample is not None:
            train_samples[name] = {"n": len(sample), "of": len(rows), "stratified_by": ["label"]}
            rows, y_ds = rows[sample], y_ds[sample]
        train_sets[name] = (emb[name][rows], y_ds)
    gold_name = f"gold (balanced {settings.gold_per_class}/class)"
    y_train_full = None
    if gold["train"] is not None:
        y_train_full = gold["train"]["label"].to_numpy(dtype=str)
        train_sets[gold_name] = (gold_emb["train"], y_train_full[gold_emb["train_idx"]])
    coverage = {name: sorted(set(y.tolist()) & set(test_labels)) for name, (_, y) in train_sets.items()}
    shared = sorted(set(test_labels).intersection(*map(set, coverage.values())))
    comparable = len(shared) >= 2
    on = shared if comparable else None  # None: each row on the labels it shares with the test split

    def interval(res: Any, labels: list[str]) -> dict[str, list[float]]:
        ci = score_intervals(
            res.y_true,
            res.y_pred,
            labels,
            n_boot=settings.bootstrap,
            confidence=settings.confidence,
            random_state=settings.seed,
        )
        return {_ROW_KEYS[m]: [_num(lo), _num(hi)] for m, (lo, hi) in ci.items()}

    def row(res: Any, scope: str) -> dict[str, Any]:
        out = _transfer_row(res)
        labels = [str(x) for x in res.labels]
        out.update(
            scope=scope,
            labels=labels,
            left_out=[lab for lab in test_labels if lab not in labels],
            ci=interval(res, labels),
        )
        return out

    if not train_sets:
        return None  # every dataset was left out (reasons in warn.skipped) and no gold training split
    scope = "shared labels" if comparable else "own labels"
    rows: dict[str, Any] = {}
    for name, (x, y) in train_sets.items():
        res = cache.call(transfer, x, y, x_test, y_test, random_state=settings.seed, labels=on)
        rows[name] = row(res, scope)
        if name in train_samples:
            rows[name]["train_sample"] = train_samples[name]
        _warn_small_training(warn, name, rows[name], y, min_child_samples())
    if y_train_full is not None:
        # Cheap, but cached too: scoring it imports scikit-learn, 1.6 s of a warm re-evaluation otherwise.
        rows["majority class"] = row(cache.call(majority_baseline, y_train_full, y_test, labels=on), scope)
    if comparable:
        chance = chance_baseline(y_test, shared)
        rows[f"chance (uniform over {len(shared)} labels)"] = {
            "accuracy": _num(chance["accuracy"]),
            "weighted_precision": _num(chance["precision_weighted"]),
            "weighted_recall": _num(chance["recall_weighted"]),
            "weighted_f1": _num(chance["f1_weighted"]),
            "macro_f1": _num(chance["f1_macro"]),
            "n_train": 0,
            "n_test": int(chance["n_test"]),
            "dropped_test": int(len(y_test) - chance["n_test"]),
            "scope": "shared labels",
            "labels": shared,
            "left_out": [lab for lab in test_labels if lab not in shared],
            "ci": {"accuracy": [_num(v) for v in chance["ci_accuracy"]]},
            "expected": True,
        }
    if y_train_full is not None and comparable and shared != test_labels:
        x_g, y_g = train_sets[gold_name]
        full = "full test split"
        rows[f"{gold_name}, {full}"] = row(
            cache.call(transfer, x_g, y_g, x_test, y_test, random_state=settings.seed), full
        )
        rows[f"majority class, {full}"] = row(cache.call(majority_baseline, y_train_full, y_test), full)
    n_shared = int(np.isin(y_test, shared).sum()) if comparable else None
    left_out = {name: r["left_out"] for name, r in rows.items() if r["left_out"]}
    if comparable:
        test = (
            f"the {n_shared} gold test texts (of {len(y_test)}) labelled {', '.join(shared)}: the labels "
            "every training set can predict"
        )
    else:
        test = (
            f"the gold test split (n = {len(y_test)}); the training sets share fewer than two labels, so "
            "each row is scored on the labels it shares with the test split and rows are not comparable"
        )
    skipped = warn.skipped.pop("downstream", None)
    return {
        **({"skipped": skipped} if skipped else {}),
        "test": test,
        "comparable": comparable,
        "shared_labels": shared,
        "test_labels": test_labels,
        "n_test": n_shared,
        "n_test_full": int(len(y_test)),
        "coverage": coverage,
        "left_out": left_out,
        "method": "LightGBM (defaults) on the embeddings; synthetic labels mapped to gold labels. Every row "
        "marked 'shared labels' is trained and tested on the same labels and the same test texts; rows "
        "marked 'full test split' use every gold label their training set has. Weighted P/R/F1 as in the "
        f"paper, macro F1 beside it; {settings.confidence:.0%} percentile intervals from "
        f"{settings.bootstrap} paired bootstrap resamples of the test texts; the chance row is the "
        f"expected score of uniform guessing (binomial interval); seed {settings.seed}"
        + _train_cap_note(settings),
        "rows": rows,
    }


def _slices(
    data: Mapping[str, pd.DataFrame],
    emb: Mapping[str, np.ndarray],
    gold: Mapping[str, Any] | None,
    gold_emb: Mapping[str, Any] | None,
    rejections: Mapping[str, Mapping[str, pd.DataFrame]],
    settings: EvaluationSettings,
    cache: Any,
) -> dict[str, Any] | None:
    """Per dataset with persona / scenario attribute columns: the figures of every attribute value
    (:func:`slices.slice_table`) and the slices that differ most from the whole dataset."""
    from personagen_core.evaluation import slices as S
    from personagen_core.evaluation.classify import transfer

    # The gold classifier and the realism reference: the balanced gold training sample and the gold test
    # split when given (else whichever exists).
    ref_x, clf = None, None
    if gold is not None and gold_emb is not None:
        ref_x = gold_emb.get("test") if gold_emb.get("test") is not None else gold_emb.get("train")
        if gold_emb.get("train") is not None:
            y_train = gold["train"]["label"].to_numpy(dtype=str)[gold_emb["train_idx"]]
            clf = (gold_emb["train"], y_train, f"the balanced gold training sample ({len(y_train)} texts)")
        elif gold_emb.get("test") is not None:
            clf = (gold_emb["test"], gold["test"]["label"].to_numpy(dtype=str), "the gold test split")
    out: dict[str, Any] = {}
    for name, frame in data.items():
        columns = S.attribute_columns(frame)
        if not columns:
            continue
        match = np.full(len(frame), np.nan)
        mapped = (gold or {}).get("mapped", {}).get(name)
        if clf is not None and mapped is not None:
            shared = sorted(set(clf[1].tolist()) & set(mapped["label"]))
            keep = mapped[mapped["label"].isin(shared)]
            if len(shared) >= 2 and len(keep):
                rows = keep["row"].to_numpy()
                res = cache.call(
                    transfer,
                    clf[0],
                    clf[1],
                    emb[name][rows],
                    keep["label"].to_numpy(dtype=str),
                    random_state=settings.seed,
                )
                match[rows] = (np.asarray(res.y_pred) == np.asarray(res.y_true)).astype(float)
        realism = None if ref_x is None else cache.call(S.nearest_distance, emb[name], ref_x)
        rej = rejections.get(name) or {}
        table = cache.call(
            S.slice_table,
            frame[columns],
            emb[name],
            columns=columns,
            match=match,
            realism=realism,
            candidates=rej.get("candidates"),
            outputs=rej.get("outputs"),
            n_boot=max(settings.bootstrap, 100),
            confidence=settings.confidence,
            random_state=settings.seed,
        )
        out[name] = {
            "columns": columns,
            "rows": S.slices_to_dict(table),
            "differ_most": {
                metric: S.slices_to_dict(S.differ_most(table, metric, k=8))
                for metric in S.METRICS
                if np.isfinite(table[metric].to_numpy(dtype=float)).any()
            },
        }
    if not out:
        return None
    return {
        "datasets": out,
        "metrics": {k: {"name": v[0], "higher_is_better": v[1]} for k, v in S.METRICS.items()},
        "notes": {
            "emotion_match": (
                f"LightGBM trained on {clf[2]} labels each text; share labelled with the emotion it was "
                "written for (texts whose emotion the gold data lacks are not scored); Wilson interval"
                if clf is not None
                else "needs gold data"
            ),
            "realism": "cosine distance from each text to its nearest gold text, averaged; t interval"
            if ref_x is not None
            else "needs gold data",
            "diversity": f"mean cosine distance between the slice's texts; percentile bootstrap interval "
            f"({max(settings.bootstrap, 100)} resamples)",
            "rejection_rate": "share of the slice's judged candidates rejected at stages 1-3, and of its "
            "generated outputs rejected by the stage-4 checks (runs only); Wilson intervals",
            "differ most": "ranked by |slice - whole dataset| / interval half-width (above 1: the slice's "
            "interval excludes the dataset's value); slices of 5 or more texts",
        },
    }


#: classify's score names -> report row keys.
_ROW_KEYS = {
    "accuracy": "accuracy",
    "precision_weighted": "weighted_precision",
    "recall_weighted": "weighted_recall",
    "f1_weighted": "weighted_f1",
    "f1_macro": "macro_f1",
}


# ------------------------------------------------------------------------------------------- helpers


class _Warnings:
    """Collects the report's warnings, and the datasets each section had to leave out (and why)."""

    def __init__(self, out: list[dict[str, Any]]) -> None:
        self.out = out
        self.skipped: dict[str, dict[str, str]] = {}

    def add(self, section: str, dataset: str | None, message: str) -> None:
        self.out.append({"section": section, "dataset": dataset, "message": message})

    def skip(self, section: str, dataset: str, reason: str) -> None:
        self.skipped.setdefault(section, {})[dataset] = reason


def _counts_text(frame: pd.DataFrame) -> str:
    """``"21 texts: anger 3, fear 3, ..."`` for messages."""
    counts = frame["label"].value_counts().sort_index()
    return f"{len(frame)} texts: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def _wilson(accuracy: float, n: int, confidence: float) -> list[float | None]:
    """Wilson score interval of an accuracy measured on ``n`` texts (scipy's binomial test)."""
    if n <= 0:
        return [None, None]
    from scipy.stats import binomtest

    ci = binomtest(round(accuracy * n), n).proportion_ci(confidence_level=confidence, method="wilson")
    return [_num(ci.low), _num(ci.high)]


class _Progress:
    """Forwards ``(stage, fraction)`` to the caller and records each stage's wall time in the report.

    Stages have fixed weights (rough shares of a cold run), so the fraction grows monotonically.
    """

    _WEIGHTS = {
        "embeddings": 3.0,
        "projections": 3.0,
        "diversity": 1.0,
        "separability": 1.0,
        "judge": 2.0,
        "gold embeddings": 2.0,
        "real data": 1.0,
        "downstream": 1.0,
        "slices": 1.0,
    }

    def __init__(self, on_event: ProgressCallback | None) -> None:
        self._on_event = on_event
        self._total = sum(self._WEIGHTS.values())
        self._done = 0.0

    def stage(self, name: str, report: dict[str, Any]) -> _Stage:
        return _Stage(self, name, report)

    def emit(self, stage: str, fraction: float) -> None:
        if self._on_event is not None:
            self._on_event(stage, min(1.0, max(0.0, fraction)))

    def within(self, stage: str) -> Callable[[float], None]:
        """A callback reporting progress ``0..1`` inside ``stage`` as overall progress."""
        weight = self._WEIGHTS.get(stage, 1.0)

        def report(part: float) -> None:
            self.emit(stage, (self._done + weight * min(1.0, max(0.0, part))) / self._total)

        return report

    def done(self) -> None:
        self.emit("done", 1.0)


class _Stage:
    def __init__(self, progress: _Progress, name: str, report: dict[str, Any]) -> None:
        self._p, self._name, self._report = progress, name, report

    def __enter__(self) -> _Stage:
        self._t0 = time.perf_counter()
        self._p.emit(self._name, self._p._done / self._p._total)
        return self

    def __exit__(self, *exc: object) -> None:
        self._report["timings"][self._name] = round(time.perf_counter() - self._t0, 4)
        self._p._done += self._p._WEIGHTS.get(self._name, 1.0)


def _check_dataset(name: str, frame: Any) -> pd.DataFrame:
    """A copy with ``text`` / ``label`` as non-empty strings; a clear DataError otherwise."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"dataset {name!r} is not a table (got {type(frame).__name__})")
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataError(
            f"dataset {name!r} has no {' or '.join(repr(c) for c in missing)} column "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    out = frame.dropna(subset=["text", "label"]).reset_index(drop=True).copy()
    out["text"] = out["text"].astype(str)
    out["label"] = out["label"].astype(str)
    out = out[out["text"].str.strip() != ""].reset_index(drop=True)
    if len(out) == 0:
        raise DataError(f"dataset {name!r} has no non-empty texts")
    out.attrs = dict(frame.attrs)
    return out


def _input_notes(given: pd.DataFrame, used: pd.DataFrame) -> dict[str, Any]:
    """How a dataset was read (``gold.load_dataset``'s ``attrs["read"]``: format, encoding, columns,
    multi-label policy) and, when capped, the size it was sampled from, for the report to state."""
    out: dict[str, Any] = {}
    if given.attrs.get("read"):
        out["read"] = dict(given.attrs["read"])
    if used.attrs.get("sampled_from"):
        out["sampled_from"] = int(used.attrs["sampled_from"])
    return out


def _cap(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """Seeded stratified subsample down to ``cap`` rows (unchanged when smaller)."""
    if cap is None or len(frame) <= cap:
        return frame
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(
            np.arange(len(frame)),
            train_size=cap,
            stratify=frame["label"].to_numpy(dtype=str),
            random_state=seed,
        )
    except ValueError:  # a class too small to stratify: plain seeded sample
        keep = np.random.default_rng(seed).choice(len(frame), size=cap, replace=False)
    out = frame.iloc[np.sort(keep)].reset_index(drop=True)
    out.attrs = {**frame.attrs, "sampled_from": len(frame)}
    return out


def _train_sample(y: np.ndarray, settings: EvaluationSettings) -> np.ndarray | None:
    """Positions of a seeded stratified sample of ``settings.max_train_texts`` labels ``y``, or None when
    ``y`` is not larger (every text is used)."""
    cap = settings.max_train_texts
    if cap is None or len(y) <= cap:
        return None
    from personagen_core.evaluation.subsample import stratified_indices

    return stratified_indices([y], cap, random_state=settings.seed)


def _train_cap_note(settings: EvaluationSettings) -> str:
    if settings.max_train_texts is None:
        return ""
    return (
        f"; a dataset with more than {settings.max_train_texts:,} texts trains on a seeded stratified sample "
        "of that many (stated per dataset)"
    )


def _map_labels(frame: pd.DataFrame, mapping: Mapping[str, str | None]) -> pd.DataFrame:
    """``row`` (position in the dataset) and ``label`` mapped to gold labels; rows mapped to None dropped."""
    labels = [mapping.get(lab, lab) for lab in frame["label"]]
    out = pd.DataFrame({"row": np.arange(len(frame)), "label": labels})
    return out[out["label"].notna()].reset_index(drop=True)


def _encode_all(
    embedder: Any, texts: Mapping[str, pd.Series], on_part: Callable[[float], None]
) -> dict[str, np.ndarray]:
    """Embed every dataset, reporting the share of all their texts embedded so far (``on_part(0..1)``):
    the progress bar moves during a long embedding stage, not only between stages."""
    total = max(1, sum(len(t) for t in texts.values()))
    out, before = {}, 0
    for name, series in texts.items():
        size = len(series)

        def on_progress(done: int, of: int, before: int = before, size: int = size) -> None:
            on_part((before + size * done / max(of, 1)) / total)

        out[name] = _encode(embedder, series, on_progress)
        before += size
    return out


def _encode(
    embedder: Any, texts: pd.Series, on_progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    items = [str(t) for t in texts.tolist()]
    # Embedders given by callers may only have encode(texts); ours also reports progress.
    accepts = on_progress is not None and "on_progress" in inspect.signature(embedder.encode).parameters
    raw = embedder.encode(items, on_progress=on_progress) if accepts else embedder.encode(items)
    x = np.asarray(raw, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(texts):
        raise DataError(f"the embedder returned shape {x.shape} for {len(texts)} texts")
    return x


def _persona_summaries(frame: pd.DataFrame, attributes: list[str], limit: int = 8) -> list[str]:
    """The ``persona`` (+ ``scenario``) descriptions when present, else ``attr: value`` pairs."""
    if "persona" in frame.columns:
        persona = frame["persona"].fillna("").astype(str)
        if "scenario" in frame.columns:
            scenario = frame["scenario"].fillna("").astype(str)
            persona = persona.where(scenario == "", persona + " | " + scenario)
        return persona.tolist()
    cols = attributes[:limit]
    if not cols:
        return [""] * len(frame)
    values = frame[cols].astype(str).to_numpy()
    return ["; ".join(f"{c}: {v}" for c, v in zip(cols, row, strict=True)) for row in values]


def _confusion(labels: list[str], counts: Any, normalised: Any) -> dict[str, Any]:
    return {
        "labels": labels,
        "counts": np.asarray(counts).astype(int).tolist(),
        "normalised": [[_num(v) for v in row] for row in np.asarray(normalised, dtype=float)],
    }


def _warn_small_training(warn: _Warnings, name: str, row: dict[str, Any], y: np.ndarray, leaf: int) -> None:
    """Warn when a Table VII row's classifier learnt from too few texts to mean anything."""
    if len(row.get("predicted_labels", [])) == 1:
        warn.add(
            "downstream",
            name,
            f"the classifier trained on {name!r} predicted {row['predicted_labels'][0]!r} for every test text: "
            f"{row['n_train']} training texts are too few to mean anything (LightGBM leaves hold at least "
            f"{leaf})",
        )
        return
    labels, counts = np.unique(y, return_counts=True)
    few = {str(k): int(v) for k, v in zip(labels, counts, strict=True) if v < leaf}
    if few:
        warn.add(
            "downstream",
            name,
            f"unreliable: trained on fewer than {leaf} texts (one LightGBM leaf) of "
            + ", ".join(f"{k} ({v})" for k, v in few.items()),
        )


def _transfer_row(res: Any) -> dict[str, Any]:
    labels = [str(x) for x in res.labels]
    counts = np.asarray(res.confusion, dtype=float)
    sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)
    return {
        "accuracy": _num(res.accuracy),
        "weighted_precision": _num(res.precision_weighted),
        "weighted_recall": _num(res.recall_weighted),
        "weighted_f1": _num(res.f1_weighted),
        "macro_f1": _num(res.f1_macro),
        "n_train": int(res.n_train),
        "n_test": int(res.n_test),
        "dropped_test": int(getattr(res, "dropped_test", 0)),
        "predicted_labels": [lab for lab, col in zip(labels, counts.sum(axis=0), strict=True) if col > 0],
        "confusion": _confusion(labels, counts, normalised),
    }


def _num(value: Any) -> float | int | None:
    """A plain float (or int) for JSON; NaN / inf become None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    v = float(value)
    return v if np.isfinite(v) else None


def _round(values: Any, digits: int = 4) -> list[float]:
    """Coordinates rounded to keep report.json small (4 decimals is far below what a plot shows)."""
    return [round(float(v), digits) for v in np.asarray(values, dtype=float)]

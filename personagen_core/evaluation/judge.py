"""LLM judge: every text scored 1–5 on four criteria (the paper's Fig. 4).

Criteria: Emotion Match, Grammaticality, Lexical Diversity and Appropriateness, Structure and Logic. The
judge is asked through :class:`personagen_core.generation.llm.LLMClient` with the judge JSON schema (constrained
output), in the client's ``"judge"`` role, so the judge model is a setting independent of the generator.
Scores are cached by (judge model, text hash), in a dict the caller owns and/or the run store's judge
cache. The hash covers the target emotion (Emotion Match depends on it) and the prompt version.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np
import pandas as pd

from personagen_core.errors import DataError, LLMResponseError
from personagen_core.generation.prompts import JUDGE_CRITERIA, JUDGE_SCHEMA, PROMPT_VERSION, judge_messages
from personagen_core.generation.vocabulary import DEFAULT_CONCURRENCY

__all__ = [
    "JUDGE_CRITERIA",
    "JudgeCache",
    "ajudge_texts",
    "judge_key",
    "judge_texts",
    "parse_scores",
    "summarise_scores",
]


#: In-memory cache: ``{(model, text hash): {criterion: score}}``.
JudgeCache = MutableMapping[tuple[str, str], dict[str, int]]


def judge_key(text: str, emotion: str) -> str:
    """sha256 hex of the prompt version, the target emotion and the text (Emotion Match depends on both)."""
    return hashlib.sha256(f"judge-v{PROMPT_VERSION}\x00{emotion}\x00{text}".encode()).hexdigest()


def parse_scores(data: Any) -> dict[str, int]:
    """Check a judge answer: an object with an integer 1–5 for every criterion.

    Raises :class:`LLMResponseError` naming the missing or out-of-range criterion.
    """
    if not isinstance(data, Mapping):
        raise LLMResponseError(f"judge answer is not a JSON object: {str(data)[:200]!r}")
    scores: dict[str, int] = {}
    for crit in JUDGE_CRITERIA:
        value = data.get(crit)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise LLMResponseError(f"judge answer has no integer score for {crit!r}: {value!r}")
        if not 1 <= int(value) <= 5:
            raise LLMResponseError(f"judge score for {crit!r} is {value}, outside 1-5")
        scores[crit] = int(value)
    return scores


async def ajudge_texts(
    frame: pd.DataFrame,
    client: Any,
    *,
    store: Any | None = None,
    cache: JudgeCache | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Score every row of ``frame`` (columns ``text`` and ``label``) with the LLM judge.

    ``client`` is an open :class:`~personagen_core.generation.llm.LLMClient`; its ``"judge"`` role picks the model.
    Cached scores are reused from ``cache`` or ``store`` (its judge cache); new scores go into both, and rows
    with ``run_id`` and ``text_id`` columns are also saved as that run's judge scores in ``store``.
    Calls run concurrently up to the client's ``concurrency``. A text whose answer stays unusable after the
    client's retries is kept with NaN scores and the error in ``error``; connection and auth errors propagate.
    ``on_progress(done, total)`` is called as texts complete.

    Returns a DataFrame: ``text, label, emotion_match, grammaticality, lexical_diversity, structure_logic,
    cached, error`` in the order of ``frame``.
    """
    for col in ("text", "label"):
        if col not in frame.columns:
            raise DataError(f"judge input has no {col!r} column (columns: {list(frame.columns)})")
    model = client.settings.model_for("judge")
    texts = [str(t) for t in frame["text"].tolist()]
    labels = [str(x) for x in frame["label"].tolist()]
    keys = [judge_key(t, e) for t, e in zip(texts, labels, strict=True)]
    known = _lookup(keys, model, store, cache)

    # One request per distinct (text, emotion) not cached: duplicates share the answer.
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in known:
            first_index.setdefault(key, i)
    results: dict[str, dict[str, Any]] = {}
    limit = asyncio.Semaphore(max(1, int(getattr(client.settings, "concurrency", DEFAULT_CONCURRENCY))))
    total = len(first_index)
    done = 0

    async def score(key: str, i: int) -> None:
        nonlocal done
        async with limit:
            try:
                completion = await client.complete(
                    judge_messages(texts[i], labels[i]),
                    role="judge",
                    temperature=0.0,
                    schema=JUDGE_SCHEMA,
                    schema_name="judge_scores",
                )
                results[key] = {"scores": parse_scores(completion.data), "error": None}
            except LLMResponseError as exc:
                results[key] = {"scores": None, "error": str(exc)}
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    await asyncio.gather(*(score(k, i) for k, i in first_index.items()))
    _remember(frame, keys, results, model, store, cache)

    rows = []
    for text, label, key in zip(texts, labels, keys, strict=True):
        if key in known:
            scores, error, cached = known[key], None, True
        else:
            scores, error, cached = results[key]["scores"], results[key]["error"], False
        row: dict[str, Any] = {"text": text, "label": label}
        for crit in JUDGE_CRITERIA:
            row[crit] = float(scores[crit]) if scores else np.nan
        row["cached"] = cached
        row["error"] = error
        rows.append(row)
    return pd.DataFrame(rows, columns=["text", "label", *JUDGE_CRITERIA, "cached", "error"])


def judge_texts(
    frame: pd.DataFrame,
    llm_settings: Any,
    *,
    store: Any | None = None,
    cache: JudgeCache | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    http_client: Any | None = None,
) -> pd.DataFrame:
    """Synchronous wrapper: open an :class:`LLMClient` (an endpoint pool when ``llm_settings`` lists endpoints)
    with ``llm_settings`` and run :func:`ajudge_texts`."""
    from personagen_core.generation.endpoints import open_client

    async def run() -> pd.DataFrame:
        async with open_client(llm_settings, http_client=http_client) as client:  # one endpoint or a pool
            return await ajudge_texts(frame, client, store=store, cache=cache, on_progress=on_progress)

    return asyncio.run(run())


def summarise_scores(scores: pd.DataFrame) -> dict[str, Any]:
    """Fig. 4 numbers from a score table: mean and 1–5 counts per criterion, mean per emotion × criterion."""
    ok = scores.dropna(subset=list(JUDGE_CRITERIA))
    distribution = {
        crit: {str(s): int((ok[crit] == s).sum()) for s in range(1, 6)} for crit in JUDGE_CRITERIA
    }
    per_emotion = {
        str(emotion): {crit: float(part[crit].mean()) for crit in JUDGE_CRITERIA}
        for emotion, part in ok.groupby("label", sort=True)
    }
    return {
        "n_scored": int(len(ok)),
        "n_failed": int(len(scores) - len(ok)),
        "n_cached": int(scores["cached"].sum()) if "cached" in scores else 0,
        "mean": {crit: (float(ok[crit].mean()) if len(ok) else None) for crit in JUDGE_CRITERIA},
        "std": {crit: (float(ok[crit].std(ddof=0)) if len(ok) else None) for crit in JUDGE_CRITERIA},
        "distribution": distribution,
        "per_emotion": per_emotion,
    }


def _lookup(
    keys: list[str], model: str, store: Any | None, cache: JudgeCache | None
) -> dict[str, dict[str, int]]:
    """Cached scores by judge key, from the caller's dict and then the store's judge cache."""
    known: dict[str, dict[str, int]] = {}
    if cache is not None:
        known.update({k: dict(cache[(model, k)]) for k in set(keys) if (model, k) in cache})
    if store is not None:
        missing = [k for k in dict.fromkeys(keys) if k not in known]
        for key, scores in (store.get_judge_scores(model, missing) if missing else {}).items():
            try:
                known[key] = parse_scores(scores)
            except LLMResponseError:  # a malformed cache row is simply asked again
                continue
    return known


def _remember(
    frame: pd.DataFrame,
    keys: list[str],
    results: Mapping[str, Mapping[str, Any]],
    model: str,
    store: Any | None,
    cache: JudgeCache | None,
) -> None:
    """Write new scores to the caller's dict and the store's judge cache (and a stored run's score table)."""
    fresh = {k: r["scores"] for k, r in results.items() if r["scores"] is not None}
    if not fresh:
        return
    if cache is not None:
        for k, v in fresh.items():
            cache[(model, k)] = dict(v)
    if store is None:
        return
    store.put_judge_scores(model, fresh)
    if {"run_id", "text_id"} <= set(frame.columns):
        per_run: dict[str, list[tuple[int, str, dict[str, int]]]] = {}
        for key, run_id, text_id in zip(
            keys, frame["run_id"].tolist(), frame["text_id"].tolist(), strict=True
        ):
            if key in fresh and run_id is not None and text_id is not None:
                per_run.setdefault(str(run_id), []).append((int(text_id), key, fresh[key]))
        for run_id, rows in per_run.items():
            store.save_judge_scores(run_id, model, rows)

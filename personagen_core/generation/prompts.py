"""Prompts: stage 1-3 validation, stage-4 generation and the LLM judge.

Every prompt puts the shared instructions first (a system message identical for every call of its kind) and
the candidate, persona or text last, so endpoints with prefix caching reuse the instructions across calls.
Validation and judging use constrained JSON answers through the client's ``schema=`` argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from personagen_core.generation.vocabulary import KEPT_VERDICTS, VERDICTS, VerdictReasons
from personagen_core.personas.spec import Emotion, Spec

__all__ = [
    "GENERATION_SYSTEM",
    "JUDGE_CRITERIA",
    "JUDGE_SCHEMA",
    "PROMPT_VERSION",
    "VERDICTS",
    "KEPT_VERDICTS",
    "VerdictReasons",
    "batch_verdict_schema",
    "describe_attributes",
    "generation_messages",
    "sentence_grammar",
    "judge_messages",
    "validation_columns",
    "validation_messages",
    "verdict_schema",
]

#: Bumped when a prompt changes in a way that could change verdicts.
PROMPT_VERSION = 1
#: The judge criteria of the paper's Fig. 4 (``lexical_diversity`` covers "lexical diversity and
#: appropriateness", as in the paper).
JUDGE_CRITERIA: tuple[str, ...] = ("emotion_match", "grammaticality", "lexical_diversity", "structure_logic")

_LANGUAGES = {
    "en": "English",
    "ja": "Japanese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "zh": "Chinese",
    "ko": "Korean",
    "it": "Italian",
    "pt": "Portuguese",
}

_VERDICT_RULES = (
    "Answer with one verdict:\n"
    '- "natural": common, nothing surprising;\n'
    '- "rare but plausible": unusual, but such people or situations exist in real life;\n'
    '- "implausible": contradictory or practically impossible (e.g. an age that rules out the occupation).\n'
    "Judge realism only, not desirability, and avoid stereotypes: do not call a combination implausible just "
    "because it is uncommon."
)
_REASON_RULE: dict[str, str] = {
    "all": " Give a one-sentence reason.",
    "rejected": ' Give the verdict first; for an "implausible" verdict only, add a one-sentence reason.',
}

_STAGE_TASK = {
    1: "You check synthetic personas for realism. Each candidate is a set of basic attributes of one person "
    "(such as age group, gender, occupation and personality type) living in {region}. Decide whether the "
    "combination is realistic for one real person.",
    2: "You check synthetic personas for realism. Each candidate is one person living in {region}: basic "
    "attributes plus a socio-cultural background (such as education, region, urban or rural life, family, "
    "religion, beliefs and income). Decide whether the background is consistent with the basic attributes "
    "and with itself.",
    3: "You check everyday scenes for realism. Each candidate is a scene (location, activity, interlocutor, "
    "medium) and the language style of a short message written in it, in {region}. Decide whether someone "
    "could naturally be doing this activity at this location, with this interlocutor, through this "
    "medium, writing in this style.",
}

GENERATION_SYSTEM = (
    "You write short texts that real people post or send in everyday life, for an emotion-recognition "
    "dataset. You are given a target feeling, a persona and usually a scene. Write as that person, in the "
    "first person, in {language}, in the given language style.\n"
    "Rules:\n"
    "- At most {max_sentences} short sentences; every sentence must clearly express the target feeling.\n"
    "- Sound like a real message: specific, natural, no clichés about the persona.\n"
    "- Do not list or restate the persona's attributes (age, occupation, personality type and so on).\n"
    "- Output only the text itself: no quotes, no title, no explanation, no hashtags."
)

_JUDGE_SYSTEM = (
    "You rate short synthetic texts written for an emotion-recognition dataset. For the given text and its "
    "target emotion, give an integer score from 1 (very poor) to 5 (excellent) for each criterion:\n"
    "- emotion_match: how clearly and correctly the text expresses the target emotion;\n"
    "- grammaticality: spelling and grammar (informal social-media style is fine when consistent);\n"
    "- lexical_diversity: lexical diversity and appropriateness: varied, fitting word choice, no filler;\n"
    "- structure_logic: structure and logic: the text is coherent and makes sense as a real message.\n"
    "Be strict and use the whole scale."
)

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {c: {"type": "integer", "minimum": 1, "maximum": 5} for c in JUDGE_CRITERIA},
    "required": list(JUDGE_CRITERIA),
    "additionalProperties": False,
}


def _verdict_object(lead: dict[str, Any], reasons: VerdictReasons) -> dict[str, Any]:
    """A verdict object after the ``lead`` properties; with ``reasons="rejected"`` one of two shapes."""
    def obj(props: dict[str, Any]) -> dict[str, Any]:
        props = {**lead, **props}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    if reasons == "all":
        return obj({"reason": {"type": "string"}, "verdict": {"type": "string", "enum": list(VERDICTS)}})
    if reasons == "rejected":
        kept = [v for v in VERDICTS if v in KEPT_VERDICTS]
        rejected = [v for v in VERDICTS if v not in KEPT_VERDICTS]
        return {"anyOf": [
            obj({"verdict": {"type": "string", "enum": kept}}),
            obj({"verdict": {"type": "string", "enum": rejected}, "reason": {"type": "string"}}),
        ]}
    raise ValueError(f"reasons must be 'all' or 'rejected', got {reasons!r}")


def verdict_schema() -> dict[str, Any]:
    """JSON schema of one verdict: ``{"reason": str, "verdict": one of VERDICTS}``."""
    return _verdict_object({}, "all")


def batch_verdict_schema(n: int, reasons: VerdictReasons = "all") -> dict[str, Any]:
    """JSON schema of ``n`` verdicts in one answer: ``{"verdicts": [{"id": 0..n-1, "reason", "verdict"}]}``;
    with ``reasons="rejected"`` an item is ``{"id", "verdict"}``, plus ``"reason"`` when implausible."""
    item = _verdict_object({"id": {"type": "integer", "minimum": 0, "maximum": n - 1}}, reasons)
    return {
        "type": "object",
        "properties": {"verdicts": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
        "required": ["verdicts"],
        "additionalProperties": False,
    }


def _region(spec: Spec) -> str:
    # "Japan (paper defaults)" -> "Japan": the parenthetical describes the pack, not the place.
    return re.sub(r"\s*\(.*?\)", "", spec.label).strip() or spec.name


def describe_attributes(attrs: Mapping[str, Any], spec: Spec, columns: Sequence[str]) -> str:
    """``label: value`` pairs of ``columns`` joined by ``; `` (the precise form validators see)."""
    cats = spec.categories()
    parts = []
    for col in columns:
        cat = cats.get(col)
        label = (cat.label if cat is not None and cat.label else col).strip()
        parts.append(f"{label}: {attrs[col]}")
    return "; ".join(parts)


def validation_columns(spec: Spec, stage: int) -> list[str]:
    """Columns a stage validates: stage 1 its own, stage 2 those of stages 1 and 2, stage 3 the scene."""
    if stage == 1:
        return spec.stage_columns(1)
    if stage == 2:
        return spec.stage_columns(1) + spec.stage_columns(2)
    if stage == 3:
        return spec.stage_columns(3)
    raise ValueError(f"validation stage must be 1, 2 or 3, got {stage}")


def validation_messages(
    stage: int, candidates: Sequence[Mapping[str, Any]], spec: Spec, *, reasons: VerdictReasons = "all"
) -> list[dict[str, str]]:
    """Chat messages asking for verdicts on ``candidates`` (one, or several numbered from 0) at ``stage``.

    Pair with :func:`verdict_schema` for one candidate and :func:`batch_verdict_schema` for several (and
    for one, with ``reasons="rejected"``); ``reasons`` must match the schema's.
    """
    if stage not in _STAGE_TASK:
        raise ValueError(f"validation stage must be 1, 2 or 3, got {stage}")
    if not candidates:
        raise ValueError("validation_messages needs at least one candidate")
    cols = validation_columns(spec, stage)
    if reasons not in _REASON_RULE:
        raise ValueError(f"reasons must be 'all' or 'rejected', got {reasons!r}")
    system = _STAGE_TASK[stage].format(region=_region(spec)) + "\n" + _VERDICT_RULES + _REASON_RULE[reasons]
    if len(candidates) == 1:
        user = "Candidate:\n" + describe_attributes(candidates[0], spec, cols)
    else:
        system += " Judge every candidate independently and answer for each one, by its id."
        lines = [f"[{i}] {describe_attributes(c, spec, cols)}" for i, c in enumerate(candidates)]
        user = f"{len(candidates)} candidates:\n" + "\n".join(lines)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def generation_messages(
    emotion: Emotion,
    persona: str,
    scenario: str | None,
    *,
    spec: Spec,
) -> list[dict[str, str]]:
    """Stage-4 messages: the shared rules, then the target feeling, the persona and (if any) the scene."""
    language = _LANGUAGES.get(spec.language.split("-")[0].lower(), spec.language)
    system = GENERATION_SYSTEM.format(language=language, max_sentences=spec.generation.max_sentences)
    feeling = f"{emotion.name}" + (f" ({emotion.description})" if emotion.description else "")
    user = f"Target emotion: {feeling}\n\nPersona: {persona}"
    if scenario:
        user += f"\n\nScene: {scenario}"
    # Small local models forget the length rule stated only in the system prompt: repeat it last.
    n = spec.generation.max_sentences
    user += (
        f"\n\nWrite the text now: at most {n} short sentence{'s' if n != 1 else ''}, "
        f"about {12 * n} words in all, expressing {emotion.name}."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def sentence_grammar(max_sentences: int) -> str:
    """GBNF grammar of a text of 1 to ``max_sentences`` sentences on one line (no markup, no line breaks).

    Sent with stage-4 requests to llama.cpp-based backends: small local models ignore the length rule of
    the prompt, so there the limit is enforced while decoding instead of by rejecting finished texts.
    """
    n = max(1, int(max_sentences))
    more = f' (" " sentence){{0,{n - 1}}}' if n > 1 else ""
    return (
        f"root ::= sentence{more}\n"
        'sentence ::= [^.!?\\n#*"]{2,200} [.!?]{1,3}\n'
    )


def judge_messages(text: str, emotion: str) -> list[dict[str, str]]:
    """Judge messages for one text; pair with :data:`JUDGE_SCHEMA` (integer 1-5 per criterion)."""
    return [
        {"role": "system", "content": _JUDGE_SYSTEM},
        {"role": "user", "content": f"Target emotion: {emotion}\nText: {text}"},
    ]

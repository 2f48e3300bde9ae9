"""Stage-4 output checks: refusal, sentence count, empty or off-language text, persona echo, near-duplicates.

Pure functions of their arguments, plus :class:`NearDuplicateIndex`, the only stateful piece (the texts
accepted so far), which the pipeline owns one of per run. Every rejection has a short machine-readable
reason (the ``REASON_*`` constants) and a human-readable detail.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "CheckLevel",
    "CheckResult",
    "NearDuplicateIndex",
    "REASON_DUPLICATE",
    "REASON_EMPTY",
    "REASON_ECHO",
    "REASON_LENGTH",
    "REASON_NEAR_DUPLICATE",
    "REASON_NOT_TEXT",
    "REASON_OFF_LANGUAGE",
    "REASON_REFUSAL",
    "REASON_TOO_MANY_SENTENCES",
    "check_output",
    "clean_output",
    "count_sentences",
    "echoes_persona",
    "is_off_language",
    "is_refusal",
    "jaccard",
    "looks_like_data",
    "normalise",
    "shingles",
]

REASON_EMPTY = "empty"
REASON_REFUSAL = "refusal"
REASON_TOO_MANY_SENTENCES = "too_many_sentences"
REASON_OFF_LANGUAGE = "off_language"
REASON_ECHO = "persona_echo"
REASON_DUPLICATE = "duplicate"
REASON_NEAR_DUPLICATE = "near_duplicate"
REASON_LENGTH = "length"
REASON_NOT_TEXT = "not_text"

#: ``full`` = every check (PersonaGen); ``basic`` = empty, refusal, length and exact duplicates (prior work's
#: threshold filter); ``minimal`` = empty and exact duplicates only (AttrPrompt baseline).
CheckLevel = Literal["full", "basic", "minimal"]

_REFUSAL_PATTERNS = [
    re.compile(r"\bas an ai\b|\b(?:ai|large) language model\b"),
    # "I'm sorry, but I can't help with that." -- an apology followed by a refusal verb in the same sentence.
    re.compile(
        r"\b(?:i\s*am|i'?m|i\s+apologi[sz]e|sorry)\b[^.!?]{0,40}\b(?:but|cannot|can'?t|unable|not able)\b"
        r"[^.!?]{0,40}\b(?:help|assist|comply|fulfil+|provide|create|write|generate|produce|do that"
        r"|with that|with this|continue)\b"
    ),
    re.compile(
        r"^\s*i\s*(?:cannot|can'?t|won'?t|will not|am unable to|'m unable to|'m not able to|am not able to)"
        r"\s+(?:help|assist|comply|fulfil+|provide|create|write|generate|produce)\b"
    ),
]
_ABBREVIATIONS = re.compile(
    r"\b(?:mr|mrs|ms|dr|prof|sr|jr|st|vs|etc|e\.g|i\.e|a\.m|p\.m|no)\.", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.!?。！？…]+[\"'”’)\]]*(?=\s|$)|\n+")
_WORD = re.compile(r"[\w']+", re.UNICODE)
_EN_STOPWORDS = frozenset(
    "i me my we our you your he she it its they them their a an the and or but so to of in on at for with is "
    "am are was were be been have has had do did not no this that just so can will my i'm it's don't".split()
)
_QUOTES = "\"'“”‘’`"


def clean_output(text: str) -> str:
    """Strip whitespace and one pair of wrapping quotes (models often quote their answer)."""
    t = (text or "").strip()
    if len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
        t = t[1:-1].strip()
    return t


def looks_like_data(text: str) -> bool:
    """True when the output is a JSON value or a code block instead of prose (a confused answer)."""
    t = text.strip()
    if t.startswith("```"):
        return True
    if t[:1] in "{[" and t[-1:] in "}]":
        try:
            json.loads(t)
        except ValueError:
            return False
        return True
    return False


def normalise(text: str) -> str:
    """Case-, accent-width- and punctuation-insensitive form used for duplicate detection."""
    t = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    t = re.sub(r"[^\w\s']", " ", t)
    return " ".join(t.split())


def is_refusal(text: str) -> bool:
    """True when the text is a model refusal ("I'm sorry, but I can't help with that", "As an AI ...").

    An apology that is itself the emotion ("I'm sorry I forgot your birthday") is not a refusal.
    """
    t = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    return any(p.search(t) for p in _REFUSAL_PATTERNS)


def count_sentences(text: str) -> int:
    """Number of sentences: runs of text ended by ``.``, ``!``, ``?``, ``…`` (or a line break), ignoring
    common abbreviations such as "Dr." and trailing fragments without a letter (emoji, quotes)."""
    t = _ABBREVIATIONS.sub(lambda m: m.group(0).replace(".", ""), text.strip())
    parts = _SENTENCE_END.split(t)
    return sum(1 for p in parts if re.search(r"\w", p, re.UNICODE))


def is_off_language(text: str, language: str) -> bool:
    """Cheap language heuristic. ``en``: mostly non-ASCII letters, or four or more words and no English
    function word. ``ja``: fewer than 30% of letters in Japanese scripts. Other languages: never flagged."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    lang = language.lower().split("-")[0]
    if lang == "en":
        ascii_ratio = sum(c.isascii() for c in letters) / len(letters)
        if ascii_ratio < 0.85:
            return True
        words = [w.lower() for w in _WORD.findall(text)]
        return len(words) >= 4 and not any(w in _EN_STOPWORDS for w in words)
    if lang == "ja":
        jp = sum(1 for c in letters if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff")
        return jp / len(letters) < 0.3
    return False


def echoes_persona(text: str, persona_description: str, *, min_run: int = 6, ratio: float = 0.5) -> bool:
    """True when the text restates the persona description: it shares a run of ``min_run`` consecutive
    words with it, or at least ``ratio`` of its word trigrams occur in it."""
    tw = normalise(text).split()
    pw = normalise(persona_description).split()
    if not tw or not pw:
        return False
    p_runs = {tuple(pw[i : i + min_run]) for i in range(len(pw) - min_run + 1)}
    if any(tuple(tw[i : i + min_run]) in p_runs for i in range(len(tw) - min_run + 1)):
        return True
    t3 = {tuple(tw[i : i + 3]) for i in range(len(tw) - 2)}
    if not t3:
        return False
    p3 = {tuple(pw[i : i + 3]) for i in range(len(pw) - 2)}
    return len(t3 & p3) / len(t3) >= ratio


def shingles(text: str, n: int = 5) -> frozenset[str]:
    """Character ``n``-grams of the normalised text (the whole text when shorter than ``n``)."""
    t = normalise(text)
    if len(t) <= n:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i : i + n] for i in range(len(t) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two sets (0 when both are empty)."""
    if not a and not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass
class _Entry:
    text: str
    shingles: frozenset[str]


class NearDuplicateIndex:
    """Accepted texts, indexed for exact (normalised) and near-duplicate (character n-gram Jaccard) lookup.

    Candidates are found with MinHash LSH (``bands`` x ``rows`` hash functions, fixed seeds so the index is
    deterministic) and then verified with the exact Jaccard similarity, so the cost per lookup stays flat as
    the run grows. With the defaults a pair at Jaccard 0.8 is a candidate with probability above 0.99.
    """

    def __init__(self, threshold: float = 0.8, *, ngram: int = 5, bands: int = 16, rows: int = 4) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.ngram = ngram
        self._bands, self._rows = bands, rows
        gen = np.random.default_rng(20240607)  # fixed: the hash family is part of the index definition
        k = bands * rows
        self._a = gen.integers(1, 2**63, size=k, dtype=np.uint64) | np.uint64(1)
        self._b = gen.integers(0, 2**63, size=k, dtype=np.uint64)
        self._exact: dict[str, int] = {}
        self._entries: list[_Entry] = []
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]

    def __len__(self) -> int:
        return len(self._entries)

    def _signature(self, sh: frozenset[str]) -> np.ndarray:
        h = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in sh), dtype=np.uint64, count=len(sh))
        # multiply-add hashing modulo 2**64 (numpy wraps); keep the high bits, the well-mixed ones
        return ((h[None, :] * self._a[:, None] + self._b[:, None]) >> np.uint64(32)).min(axis=1)

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self._rows : (i + 1) * self._rows].tobytes() for i in range(self._bands)]

    def find(self, text: str) -> tuple[str, str, float] | None:
        """``(reason, matched_text, similarity)`` if ``text`` duplicates an indexed text, else None."""
        norm = normalise(text)
        if norm in self._exact:
            return REASON_DUPLICATE, self._entries[self._exact[norm]].text, 1.0
        sh = shingles(text, self.ngram)
        if not sh or not self._entries:
            return None
        seen: set[int] = set()
        best: tuple[float, int] | None = None
        for band, key in zip(self._buckets, self._band_keys(self._signature(sh))):
            for idx in band.get(key, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                sim = jaccard(sh, self._entries[idx].shingles)
                if sim >= self.threshold and (best is None or sim > best[0]):
                    best = (sim, idx)
        if best is None:
            return None
        return REASON_NEAR_DUPLICATE, self._entries[best[1]].text, best[0]

    def add(self, text: str) -> None:
        """Index an accepted text."""
        norm = normalise(text)
        if norm in self._exact:
            return
        sh = shingles(text, self.ngram)
        idx = len(self._entries)
        self._entries.append(_Entry(text, sh))
        self._exact[norm] = idx
        if sh:
            for band, key in zip(self._buckets, self._band_keys(self._signature(sh))):
                band.setdefault(key, []).append(idx)

    def extend(self, texts: Iterable[str]) -> None:
        """Index several accepted texts (e.g. when resuming a run)."""
        for t in texts:
            self.add(t)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_output`: ``ok``, the cleaned ``text``; ``reason``/``detail`` when rejected."""

    ok: bool
    text: str
    reason: str | None = None
    detail: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def check_output(
    text: str,
    *,
    language: str = "en",
    max_sentences: int = 2,
    persona_description: str | None = None,
    index: NearDuplicateIndex | None = None,
    level: CheckLevel = "full",
    min_words: int = 2,
    max_words: int = 80,
) -> CheckResult:
    """Check one generated text; the first failing check gives the reason. Does not add it to ``index``."""
    t = clean_output(text)
    if not t or not re.search(r"\w", t):
        return CheckResult(False, t, REASON_EMPTY, "empty output")
    if level in ("full", "basic") and looks_like_data(t):
        return CheckResult(False, t, REASON_NOT_TEXT, "JSON or code instead of a text")
    if level in ("full", "basic") and is_refusal(t):
        return CheckResult(False, t, REASON_REFUSAL, "the model refused")
    if level == "basic":
        n_words = len(_WORD.findall(t))
        if not min_words <= n_words <= max_words:
            return CheckResult(False, t, REASON_LENGTH, f"{n_words} words, allowed {min_words}-{max_words}")
    if level == "full":
        n = count_sentences(t)
        if n > max_sentences:
            return CheckResult(False, t, REASON_TOO_MANY_SENTENCES, f"{n} sentences, at most {max_sentences}")
        if is_off_language(t, language):
            return CheckResult(False, t, REASON_OFF_LANGUAGE, f"does not look like language {language!r}")
        if persona_description and echoes_persona(t, persona_description):
            return CheckResult(False, t, REASON_ECHO, "restates the persona description")
    if index is not None:
        hit = index.find(t)
        if hit is not None and (hit[0] == REASON_DUPLICATE or level == "full"):
            reason, other, sim = hit
            return CheckResult(
                False,
                t,
                reason,
                f"similarity {sim:.2f} to an accepted text: {other[:80]!r}",
                {"similarity": sim},
            )
    return CheckResult(True, t)

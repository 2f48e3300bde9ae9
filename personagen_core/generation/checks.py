"""Stage-4 output checks: cut-off, too long, refusal, sentence count, empty or off-language text, persona
echo, near-duplicates.

Pure functions of their arguments, plus two stateful pieces the pipeline owns one of per run:
:class:`NearDuplicateIndex` (the texts accepted so far) and :class:`LanguageIdentifier` (a lazily built
``lingua`` detector for the spec's language and a few common ones). Every rejection has a short
machine-readable reason (the ``REASON_*`` constants) and a human-readable detail.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "CheckLevel",
    "CheckResult",
    "LanguageIdentifier",
    "NearDuplicateIndex",
    "REASON_DUPLICATE",
    "REASON_EMPTY",
    "REASON_ECHO",
    "REASON_LENGTH",
    "REASON_NEAR_DUPLICATE",
    "REASON_NOT_TEXT",
    "REASON_OFF_LANGUAGE",
    "REASON_REFUSAL",
    "REASON_TOO_LONG",
    "REASON_TOO_MANY_SENTENCES",
    "REASON_TRUNCATED",
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
REASON_TRUNCATED = "truncated"
REASON_TOO_LONG = "too_long"

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
_CJK_RE = re.compile("[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]")
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


#: Languages the identifier tells apart besides the spec's own (ISO 639-1): the ones a model most often
#: drifts into. A small set keeps the detector fast and its memory low.
COMMON_LANGUAGES = ("en", "es", "de", "fr", "it", "pt", "nl", "ja", "zh", "ko", "ru")


class LanguageIdentifier:
    """Is a text in the spec's language? A ``lingua`` detector (offline, statistical n-gram models shipped
    in the package) over ``language`` plus :data:`COMMON_LANGUAGES`, in its low-accuracy mode. Measured with
    ``bench/bench_language_id.py`` on a busy 2-core machine: about 16 MB resident (the high-accuracy mode
    took about 200 MB), 0.2-0.3 s for the first text (the n-gram models load then), about 0.5 ms a text.

    A text is off-language when the detector names another language and gives ``language`` a confidence
    below ``min_confidence``; texts with fewer than ``min_words`` words (or CJK characters) are not judged (too little
    evidence: "So tired of this." looks Portuguese to the short-text model). A ``language`` lingua does
    not know is never flagged. Build one per run (the pipeline does) and reuse it: building is cheap, the
    loaded models are shared by the ``lingua`` package.
    """

    def __init__(self, language: str, *, min_confidence: float = 0.1, min_words: int = 4) -> None:
        self.language = language
        self.code = language.lower().replace("_", "-").split("-")[0]
        self.min_confidence = min_confidence
        self.min_words = min_words
        self._detector: Any = None  # lingua.LanguageDetector once built
        self._target: Any = None  # lingua.Language of ``language``
        self._supported: bool | None = None

    def _build(self) -> bool:
        if self._supported is None:
            from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

            def lang(code: str) -> Language | None:
                try:
                    return Language.from_iso_code_639_1(IsoCode639_1.from_str(code))
                except ValueError:
                    return None

            self._target = lang(self.code)
            self._supported = self._target is not None
            if self._supported:
                langs = [x for x in {lang(c) for c in (self.code, *COMMON_LANGUAGES)} if x is not None]
                self._detector = (
                    LanguageDetectorBuilder.from_languages(*langs).with_low_accuracy_mode().build()
                )
        return bool(self._supported)

    @property
    def supported(self) -> bool:
        """Whether ``lingua`` knows the language (else nothing is flagged)."""
        return self._build()

    def detect(self, text: str) -> str | None:
        """ISO 639-1 code of the most likely language among the detector's, or None when undecided."""
        if not self._build():
            return None
        found = self._detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else None

    def off_language(self, text: str) -> str | None:
        """The language ``text`` is in when that is not the spec's (ISO 639-1 code), else None."""
        # Scripts without spaces: count characters as evidence instead of words.
        cjk = sum(1 for c in text if _CJK_RE.match(c))
        if (len(_WORD.findall(text)) < self.min_words and cjk < self.min_words) or not self._build():
            return None
        found = self.detect(text)
        if found is None or found == self.code:
            return None
        conf = self._detector.compute_language_confidence(text, self._target)
        return found if conf < self.min_confidence else None


def is_off_language(text: str, language: str, identifier: LanguageIdentifier | None = None) -> bool:
    """True when ``text`` is not in ``language`` according to a :class:`LanguageIdentifier` (``identifier``,
    or a new one for ``language``; pass one when checking many texts)."""
    ident = identifier if identifier is not None and identifier.language == language else None
    return (ident or LanguageIdentifier(language)).off_language(text) is not None


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


def _room(buf: np.ndarray, size: int) -> np.ndarray:
    """``buf`` itself, or a copy doubled in length when it holds fewer than ``size`` items (amortised growth)."""
    if size <= len(buf):
        return buf
    grown = np.zeros(max(size, 2 * len(buf)), dtype=buf.dtype)
    grown[: len(buf)] = buf
    return grown


class _BandTable:
    """LSH band keys -> entry numbers, compact: a sorted numpy run plus a small dict of recent keys.

    A dict entry per band key costs ~100 bytes of Python objects; 16 bands x 100k texts made that most of
    a large run's memory. Recent keys go to a dict; when it grows past an eighth of the sorted part it is
    merged in (amortised O(log n) per key), so memory stays ~16 bytes per key (key and entry number).
    """

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)
        self._tail: dict[int, list[int]] = {}
        self._tail_len = 0

    def add(self, keys: np.ndarray, idx: int) -> None:
        for k in keys.tolist():
            self._tail.setdefault(k, []).append(idx)
        self._tail_len += len(keys)
        if self._tail_len > max(4096, len(self._keys) // 8):
            self._merge()

    def _merge(self) -> None:
        ks = [k for k, ids in self._tail.items() for _ in ids]
        new_ids = [i for ids in self._tail.values() for i in ids]
        keys = np.concatenate([self._keys, np.asarray(ks, dtype=np.uint64)])
        ids = np.concatenate([self._ids, np.asarray(new_ids, dtype=np.int64)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._ids = keys[order], ids[order]
        self._tail, self._tail_len = {}, 0

    def get(self, keys: np.ndarray, per_key: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Entry numbers filed under any of ``keys`` (sorted, unique) and under how many of them each is.

        ``per_key`` caps what one key contributes to its newest ``per_key`` entries (entries are numbered in
        the order they were added, and each key's entries are kept in that order), so that a crowded bucket
        costs a bounded amount of work.
        """
        parts = []
        tails = [self._tail.get(k, ()) for k in keys.tolist()]
        if len(self._keys):
            lo = np.searchsorted(self._keys, keys, side="left")
            hi = np.searchsorted(self._keys, keys, side="right")
            for a, b, tail in zip(lo.tolist(), hi.tolist(), tails):
                if per_key is not None:
                    a = max(a, b - max(0, per_key - len(tail)))
                if b > a:
                    parts.append(self._ids[a:b])
        tail_ids = [i for tail in tails for i in (tail if per_key is None else tail[-per_key:])]
        if tail_ids:
            parts.append(np.asarray(tail_ids, dtype=np.int64))
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(parts), return_counts=True)


class NearDuplicateIndex:
    """Accepted texts, indexed for exact (normalised) and near-duplicate (character n-gram Jaccard) lookup.

    Candidates are found with MinHash LSH (``bands`` x ``rows`` hash functions, fixed seeds so the index is
    deterministic) and then verified with the exact Jaccard similarity. With the defaults a pair at Jaccard
    0.8 is a candidate with probability above 0.99.

    The work per lookup is bounded (texts from one template crowd the same buckets, so without a bound it
    grows with the run): each band key contributes at most its newest ``max_candidates`` texts, and when
    more than ``max_candidates`` texts are candidates only those sharing the most bands with the lookup are
    compared (newest first among equals). Effect on recall: a text at Jaccard 0.8 shares 6.5 of the 16 bands
    on average, texts at 0.5 about one, so a near-duplicate is missed only when ``max_candidates`` other texts
    share as many bands with the lookup (a bucket of near-identical texts) or every band it shares is
    crowded with newer texts. ``capped_lookups`` counts the lookups that were cut. Measured with
    ``bench/bench_near_duplicates.py`` on the fake server's templated texts: identical rejections with and
    without the cut at 3,000 and 20,000 texts (2,678 of 20,000 lookups cut).

    Memory is kept small for runs of 100k+ texts: each text's shingles are kept as a sorted array of their
    32-bit hashes in one shared buffer (a candidate is screened on those, then verified on the real
    shingles), the exact-duplicate map is keyed by a 64-bit hash of the normalised text, and the LSH
    buckets live in a :class:`_BandTable` (about 1 kB per text in all, plus the text itself).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        *,
        ngram: int = 5,
        bands: int = 16,
        rows: int = 4,
        max_candidates: int = 128,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {max_candidates}")
        self.threshold = threshold
        self.max_candidates = max_candidates
        #: lookups whose candidates were cut to ``max_candidates`` (how often the cap could cost recall)
        self.capped_lookups = 0
        self.ngram = ngram
        self._bands, self._rows = bands, rows
        gen = np.random.default_rng(20240607)  # fixed: the hash family is part of the index definition
        k = bands * rows
        self._a = gen.integers(1, 2**63, size=k, dtype=np.uint64) | np.uint64(1)
        self._b = gen.integers(0, 2**63, size=k, dtype=np.uint64)
        # band number mixed into each band's key, so one table serves every band
        self._band_salt = gen.integers(0, 2**63, size=bands, dtype=np.uint64)
        self._row_mul = gen.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
        self._exact: dict[int, int] = {}
        self._texts: list[str] = []
        self._hashes = np.empty(1024, dtype=np.uint32)  # every text's sorted shingle hashes, back to back
        self._offsets = np.zeros(1024, dtype=np.int64)  # text i's hashes: _hashes[_offsets[i]:_offsets[i + 1]]
        self._table = _BandTable()
        # the shingles, hashes and band keys of the text last looked up: a text that passes find() is
        # usually add()ed next, and they are most of the cost of both
        self._last: tuple[str, frozenset[str], np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._texts)

    def _features(self, text: str) -> tuple[frozenset[str], np.ndarray, np.ndarray]:
        """Shingles, their sorted unique hashes and the LSH band keys of ``text`` (cached for the last text)."""
        if self._last is not None and self._last[0] == text:
            return self._last[1:]
        sh = shingles(text, self.ngram)
        h = self._shingle_hashes(sh) if sh else np.empty(0, dtype=np.uint32)
        keys = self._band_keys(h) if len(h) else np.empty(0, dtype=np.uint64)
        self._last = (text, sh, h, keys)
        return sh, h, keys

    @staticmethod
    def _norm_key(norm: str) -> int:
        return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")

    @staticmethod
    def _shingle_hashes(sh: frozenset[str]) -> np.ndarray:
        h = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in sh), dtype=np.uint32, count=len(sh))
        return np.unique(h)

    def _band_keys(self, h: np.ndarray) -> np.ndarray:
        # MinHash: multiply-add hashing modulo 2**64 (numpy wraps); keep the high bits, the well-mixed ones
        sig = ((h.astype(np.uint64)[None, :] * self._a[:, None] + self._b[:, None]) >> np.uint64(32)).min(axis=1)
        bands = sig.reshape(self._bands, self._rows)
        return (bands * self._row_mul[None, :]).sum(axis=1) ^ self._band_salt

    def _exact_match(self, norm: str) -> int | None:
        idx = self._exact.get(self._norm_key(norm))
        return idx if idx is not None and normalise(self._texts[idx]) == norm else None

    def contains(self, text: str) -> bool:
        """Whether a text equal to ``text`` after normalisation is indexed (the store's uniqueness rule)."""
        return self._exact_match(normalise(text)) is not None

    def find(self, text: str) -> tuple[str, str, float] | None:
        """``(reason, matched_text, similarity)`` if ``text`` duplicates an indexed text, else None."""
        norm = normalise(text)
        idx = self._exact_match(norm)
        if idx is not None:
            return REASON_DUPLICATE, self._texts[idx], 1.0
        if not self._texts:
            return None
        sh, h, keys = self._features(text)
        if not sh:
            return None
        cands, hits = self._table.get(keys, self.max_candidates)
        if not len(cands):
            return None
        if len(cands) > self.max_candidates:
            self.capped_lookups += 1
            # Compare only the candidates sharing the most bands with the text (newest first among equals):
            # a near-duplicate shares many (at Jaccard 0.8, 6.5 of 16 on average), a crowd of look-alikes few.
            top = np.lexsort((cands, hits))[-self.max_candidates :]
            cands = np.sort(cands[top])
        # Screen the candidates at once on their stored hashes (each one's intersection with the text's
        # sorted hashes, by binary search), then verify the ones that pass on their real shingles.
        starts, ends = self._offsets[cands], self._offsets[cands + 1]
        lens = ends - starts
        firsts = np.cumsum(lens) - lens
        gathered = self._hashes[np.repeat(starts - firsts, lens) + np.arange(int(lens.sum()))]
        pos = np.minimum(np.searchsorted(h, gathered), len(h) - 1)
        inter = np.add.reduceat(h[pos] == gathered, firsts) if len(gathered) else np.zeros(len(cands))
        approx = inter / (len(h) + lens - inter)
        best: tuple[float, int] | None = None
        # A hash collision cannot move the screened similarity by 0.05: verify from the most similar down,
        # and stop once no candidate left can beat the best verified one.
        for k in np.argsort(-approx, kind="stable").tolist():
            if approx[k] < self.threshold - 0.05 or (best is not None and approx[k] < best[0] - 0.05):
                break
            idx = int(cands[k])
            sim = jaccard(sh, shingles(self._texts[idx], self.ngram))
            if sim >= self.threshold and (best is None or sim > best[0]):
                best = (sim, idx)
        if best is None:
            return None
        return REASON_NEAR_DUPLICATE, self._texts[best[1]], best[0]

    def add(self, text: str) -> None:
        """Index an accepted text."""
        norm = normalise(text)
        key = self._norm_key(norm)
        if key in self._exact:
            return
        _, h, keys = self._features(text)
        idx = len(self._texts)
        self._texts.append(text)
        self._exact[key] = idx
        begin = int(self._offsets[idx])
        end = begin + len(h)
        self._hashes = _room(self._hashes, end)
        self._offsets = _room(self._offsets, idx + 2)
        self._hashes[begin:end] = h
        self._offsets[idx + 1] = end
        if len(h):
            self._table.add(keys, idx)

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
    max_chars: int | None = None,
    finish_reason: str | None = None,
    identifier: LanguageIdentifier | None = None,
) -> CheckResult:
    """Check one generated text; the first failing check gives the reason. Does not add it to ``index``.

    ``finish_reason == "length"`` (the endpoint cut the answer at ``max_tokens``) rejects at every level.
    ``max_chars`` and ``max_words`` (the spec's ``generation.max_chars`` / ``max_words``) bound a text at the
    ``full`` and ``basic`` levels; ``basic`` also needs ``min_words``. ``identifier`` judges the language at
    the ``full`` level (one is built for ``language`` when not given).
    """
    t = clean_output(text)
    if finish_reason == "length":
        return CheckResult(False, t, REASON_TRUNCATED, "cut off by the token limit (finish_reason: length)")
    if not t or not re.search(r"\w", t):
        return CheckResult(False, t, REASON_EMPTY, "empty output")
    if level in ("full", "basic") and looks_like_data(t):
        return CheckResult(False, t, REASON_NOT_TEXT, "JSON or code instead of a text")
    if level in ("full", "basic") and is_refusal(t):
        return CheckResult(False, t, REASON_REFUSAL, "the model refused")
    if level in ("full", "basic"):
        n_words = len(_WORD.findall(t))
        if max_chars is not None and len(t) > max_chars:
            return CheckResult(False, t, REASON_TOO_LONG, f"{len(t)} characters, at most {max_chars}")
        if n_words > max_words:
            return CheckResult(False, t, REASON_TOO_LONG, f"{n_words} words, at most {max_words}")
        if level == "basic" and n_words < min_words:
            return CheckResult(False, t, REASON_LENGTH, f"{n_words} words, at least {min_words}")
    if level == "full":
        n = count_sentences(t)
        if n > max_sentences:
            return CheckResult(False, t, REASON_TOO_MANY_SENTENCES, f"{n} sentences, at most {max_sentences}")
        ident = identifier if identifier is not None and identifier.language == language else None
        found = (ident or LanguageIdentifier(language)).off_language(t)
        if found is not None:
            return CheckResult(False, t, REASON_OFF_LANGUAGE, f"language {found!r}, expected {language!r}")
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

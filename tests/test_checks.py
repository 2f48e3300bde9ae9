"""Stage-4 output checks: each check flags what it should and lets ordinary emotional texts through."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personagen_core.generation.checks import (
    REASON_DUPLICATE,
    REASON_ECHO,
    REASON_EMPTY,
    REASON_LENGTH,
    REASON_NEAR_DUPLICATE,
    REASON_NOT_TEXT,
    REASON_OFF_LANGUAGE,
    REASON_REFUSAL,
    REASON_TOO_LONG,
    REASON_TOO_MANY_SENTENCES,
    REASON_TRUNCATED,
    LanguageIdentifier,
    NearDuplicateIndex,
    check_output,
    clean_output,
    count_sentences,
    echoes_persona,
    is_off_language,
    is_refusal,
    jaccard,
    looks_like_data,
    normalise,
    shingles,
)

PERSONA = (
    "A person aged 25-34, female, occupation: nurse, personality type INFJ-A, university graduate, "
    "living in Osaka, urban area, single, no religious affiliation"
)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I am sorry, but I cannot create content like this.",
        "Sorry, I can't assist with that request.",
        "As an AI language model, I do not have feelings.",
        "I cannot write that text.",
        "I’m sorry, but I can’t comply with this.",
    ],
)
def test_refusals_are_detected(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry I forgot your birthday, I feel awful.",
        "I can't believe I finally got the job!",
        "I cannot stop smiling after the concert last night.",
        "Sorry for the late reply, the train was packed and I'm exhausted.",
    ],
)
def test_emotional_texts_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("I won!", 1),
        ("I won! I can't believe it.", 2),
        ("Dr. Tanaka called. The results are fine! I cried.", 3),
        ("Best day ever 😀", 1),
        ("Wow... it finally happened!", 2),
        ("First line\nSecond line", 2),
        ("", 0),
        ('"So happy!" she said.', 2),
    ],
)
def test_count_sentences(text: str, n: int) -> None:
    assert count_sentences(text) == n


def test_off_language_identifier() -> None:
    assert not is_off_language("I am so happy today, the sun is out!", "en")
    assert is_off_language("今日はとても嬉しい一日でした", "en")
    assert is_off_language("Je suis très content aujourd'hui vraiment", "en")
    assert not is_off_language("Yay!!", "en")  # too short to judge
    assert not is_off_language("今日はとても嬉しい", "ja")
    assert is_off_language("I am so happy today", "ja")
    assert not is_off_language("whatever", "xx")  # unknown languages are never flagged


# German and Spanish texts passed the old word-list check ("so" and "a" counted as English words).
FOREIGN = {
    "de": "Ich bin so froh, dass du heute Abend endlich da bist!",
    "es": "Hoy perdí mis llaves y estoy muy enojado con mi hermano.",
    "fr": "Je suis tellement en colère contre mon voisin ce soir.",
    "it": "Sono così felice che la mia squadra abbia vinto la partita.",
}
ENGLISH = [
    "Tonight, my landlord posted the schedule and I could not stop smiling.",
    "So tired of this.",  # short: not judged
    "Ugh, the train is late again and I'm going to miss my interview.",
    "The izakaya on the corner was closed, so sad.",
    "OMG the exam results are out tomorrow and I can't sleep!!",
    "Karaoke night with my team was a blast, I sang until two.",
]


def test_language_identifier_names_the_language() -> None:
    ident = LanguageIdentifier("en")
    assert ident.supported
    for code, text in FOREIGN.items():
        assert ident.off_language(text) == code, text
        res = check_output(text, language="en", identifier=ident)
        assert (res.ok, res.reason) == (False, REASON_OFF_LANGUAGE) and repr(code) in str(res.detail)
    for text in ENGLISH:
        assert ident.off_language(text) is None, text
        assert check_output(text, language="en", identifier=ident).ok, text
    # the spec's language decides: a German spec accepts the German text and rejects the English one
    de = LanguageIdentifier("de")
    assert de.off_language(FOREIGN["de"]) is None and de.off_language(ENGLISH[0]) == "en"
    assert not LanguageIdentifier("xx").supported and LanguageIdentifier("xx").off_language(FOREIGN["de"]) is None


def test_truncated_and_too_long_outputs() -> None:
    text = "Tonight, my landlord posted the schedul"
    for level in ("full", "basic", "minimal"):
        res = check_output(text, finish_reason="length", level=level)  # type: ignore[arg-type]
        assert (res.ok, res.reason) == (False, REASON_TRUNCATED), level
    assert check_output(text + "e.", finish_reason="stop").ok
    long_sentence = "I am so happy " + "and excited " * 40 + "today."
    res = check_output(long_sentence, max_chars=300, max_words=1000)
    assert (res.ok, res.reason) == (False, REASON_TOO_LONG) and f"{len(long_sentence)} characters" in res.detail
    res = check_output(long_sentence, max_chars=10_000, max_words=50)
    assert (res.ok, res.reason) == (False, REASON_TOO_LONG) and "words, at most 50" in str(res.detail)
    assert check_output(long_sentence, max_chars=10_000, max_words=1000, max_sentences=1).ok
    res = check_output(long_sentence, max_chars=300, level="basic")
    assert res.reason == REASON_TOO_LONG
    assert check_output(long_sentence, max_chars=300, level="minimal").ok  # the baseline keeps everything


def test_persona_echo() -> None:
    assert echoes_persona("As a person aged 25-34, female, occupation: nurse, I feel great.", PERSONA)
    assert not echoes_persona("As a nurse I finally got a day off and I'm thrilled!", PERSONA)
    assert not echoes_persona("", PERSONA)


def test_normalise_and_clean() -> None:
    assert normalise("  Hello,   WORLD!! ") == "hello world"
    assert normalise("I’m happy") == normalise("i'm HAPPY.")
    assert clean_output('  "I won the race!"  ') == "I won the race!"
    assert clean_output("'quoted'") == "quoted"


def test_near_duplicate_index_exact_near_and_distinct() -> None:
    idx = NearDuplicateIndex(threshold=0.8)
    idx.add("I finally got the job and I cannot stop smiling!")
    exact = idx.find("i finally got the job, and i cannot stop smiling")
    assert exact is not None and exact[0] == REASON_DUPLICATE
    near = idx.find("I finally got the job and I cannot stop smiling so much!")
    assert near is not None and near[0] == REASON_NEAR_DUPLICATE and near[2] >= 0.8
    assert idx.find("The rain ruined our picnic and now everyone is grumpy.") is None
    assert len(idx) == 1
    idx.add("I finally got the job and I cannot stop smiling!")  # duplicates are not indexed twice
    assert len(idx) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=12, max_size=80), min_size=1, max_size=15))
def test_index_always_finds_copies_and_only_reports_verified_near_hits(texts: list[str]) -> None:
    """LSH candidates plus exact verification: whatever is found is above the threshold, and anything
    identical after normalisation is always found."""
    idx = NearDuplicateIndex(threshold=0.8)
    for t in texts:
        idx.add(t)
    for t in texts:
        if not normalise(t):
            continue
        hit = idx.find(t)
        assert hit is not None and hit[0] == REASON_DUPLICATE
    probe = texts[0] + " extra words"
    hit = idx.find(probe)
    if hit is not None and hit[0] == REASON_NEAR_DUPLICATE:
        assert jaccard(shingles(probe), shingles(hit[1])) >= 0.8


def test_near_duplicate_recall_on_small_edits() -> None:
    base = [
        f"Standing at the station this morning {i}, I felt pure joy as my sister called out of the blue."
        for i in range(200)
    ]
    idx = NearDuplicateIndex(threshold=0.8)
    idx.extend(base[:100])
    # one-character edits of indexed texts are near-duplicates: LSH must not miss any of them
    misses = [t for t in base[:100] if idx.find(t.replace("pure", "sheer")) is None]
    assert misses == []


def test_crowded_buckets_are_cut_to_the_candidates_sharing_most_bands() -> None:
    """300 look-alikes (Jaccard ~0.5 to the probe, one or two shared LSH bands each) indexed after the probe's
    near-duplicate: only ``max_candidates`` are compared, and they are the ones sharing the most bands, so
    the near-duplicate (11 shared bands) is still found."""
    rng = random.Random(0)
    words = "apple river stone cloud paper glass train music window garden winter summer ocean forest".split()
    probe = "When my sister called out of the blue this morning I felt pure joy at the old station."
    twin = "When my sister called out of the blue this morning I felt such pure joy at the old station."
    crowd = [
        f"When my sister called out of the blue this morning I felt {' '.join(rng.sample(words, 4))}."
        for _ in range(300)
    ]
    idx = NearDuplicateIndex(threshold=0.8, max_candidates=8)
    idx.add(twin)
    idx.extend(crowd)
    hit = idx.find(probe)
    assert hit is not None and hit[:2] == (REASON_NEAR_DUPLICATE, twin) and idx.capped_lookups == 1
    # a look-alike of the crowd that duplicates nothing: cut too, and not reported
    assert idx.find("When my sister called out of the blue this morning I felt apple cloud music.") is None
    assert idx.capped_lookups == 2
    with pytest.raises(ValueError, match="max_candidates"):
        NearDuplicateIndex(max_candidates=0)


def test_near_duplicate_hit_is_the_most_similar_indexed_text() -> None:
    base = "Standing by the harbour at dawn, I felt calm as the fishing boats came slowly home again."
    variants = [
        base.replace("slowly ", ""),
        base.replace("fishing boats", "boats"),
        base.replace("at dawn", "at dawn today"),
        base.replace("calm", "so calm"),
    ]
    idx = NearDuplicateIndex(threshold=0.8)
    idx.extend(variants)
    sims = [jaccard(shingles(base), shingles(v)) for v in variants]
    hit = idx.find(base)
    assert hit is not None and hit[0] == REASON_NEAR_DUPLICATE
    assert hit[2] == max(sims) and hit[1] == variants[sims.index(max(sims))]


def test_check_output_reasons_and_levels() -> None:
    idx = NearDuplicateIndex()
    idx.add("My dog ran to greet me and my heart just melted.")
    ok = check_output("I got the tickets! Best day of the year.", index=idx, persona_description=PERSONA)
    assert ok.ok and ok.reason is None
    cases = {
        "   ": REASON_EMPTY,
        '{"verdict": "natural", "reason": "fine"}': REASON_NOT_TEXT,
        "I'm sorry, but I can't help with that.": REASON_REFUSAL,
        "I won. I cried. I called mum.": REASON_TOO_MANY_SENTENCES,
        "今日はとても嬉しい一日でした": REASON_OFF_LANGUAGE,
        "A person aged 25-34, female, occupation: nurse, personality type INFJ-A. So happy!": REASON_ECHO,
        "My dog ran to greet me and my heart just melted!": REASON_DUPLICATE,
        "My dog ran to greet me, and my heart just melted away.": REASON_NEAR_DUPLICATE,
    }
    for text, reason in cases.items():
        res = check_output(text, index=idx, persona_description=PERSONA, max_sentences=2)
        assert (res.ok, res.reason) == (False, reason), text
    # basic (prior work): refusal and length only; minimal (AttrPrompt): empty and exact duplicates only
    assert check_output("I won. I cried. I called mum.", level="basic").ok
    assert check_output("word " * 100, level="basic").reason == REASON_TOO_LONG
    assert check_output("Hi", level="basic").reason == REASON_LENGTH  # basic also needs two words
    assert check_output("I'm sorry, but I can't help with that.", level="minimal").ok
    assert (
        check_output("My dog ran to greet me and my heart just melted", index=idx, level="minimal").reason
        == REASON_DUPLICATE
    )
    assert check_output("My dog ran to greet me, and my heart just melted away.", index=idx, level="basic").ok


def test_index_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=0)


def test_looks_like_data() -> None:
    assert looks_like_data('{"verdicts": [{"id": 0}]}')
    assert looks_like_data("```json\n{}\n```")
    assert looks_like_data("[1, 2]")
    assert not looks_like_data("{so happy} today")  # braces, but not JSON
    assert not looks_like_data("I finally got the job!")


def test_spec_length_limits_validated_and_hash_stable() -> None:
    from personagen_core.errors import SpecError
    from personagen_core.personas.spec import dump_spec, load_pack, parse_spec, spec_hash

    spec = load_pack("japan")
    assert (spec.generation.max_chars, spec.generation.max_words) == (300, 60)
    text = dump_spec(spec)
    assert "max_chars" not in text  # defaults are not dumped: hashes of existing runs stay valid
    custom = text.replace("max_tokens: 80", "max_tokens: 80, max_chars: 500, max_words: 90")
    assert custom != text
    spec2 = parse_spec(custom)
    assert (spec2.generation.max_chars, spec2.generation.max_words) == (500, 90)
    assert parse_spec(dump_spec(spec2)) == spec2 and spec_hash(spec2) != spec_hash(spec)
    with pytest.raises(SpecError, match=r"generation\.max_chars"):
        parse_spec(text.replace("max_tokens: 80", "max_tokens: 80, max_chars: 5"))

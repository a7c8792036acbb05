"""Whisper's English normaliser for WER/CER vs the project's simple one, on hand-made cases.

Every expected string below was worked out by hand from Whisper's published normaliser rules
(openai/whisper ``whisper/normalizers/english.py``, the code transformers copies): lower case, bracketed and
parenthesised text removed, fillers (um, uh, hmm, mm) removed, contraction and title replacers ("mr" ->
"mister ", "won't" -> "will not"), commas between digits removed, periods not followed by a digit removed,
symbols other than ``.%$¢€£`` replaced by spaces with diacritics dropped, spelled numbers to digits with
currency words turned into prefixes ("forty two dollars" -> "$42", "$3 and ¢50" -> "$3.50"), ordinals with
their suffix ("seventh" -> "7th"), British to American spelling (``english.json``), whitespace collapsed.
"""

from __future__ import annotations

import pytest

from src.functional.text import (
    char_error_rate,
    error_rate_normalizer,
    normalize_text,
    word_error_rate,
)

# (raw, Whisper English normaliser by hand, the simple normaliser by hand)
CASES = [
    ("Mr. Smith paid $42 on the 7th.", "mister smith paid $42 on the 7th", "mr smith paid forty two on the seven th"),
    ("mister smith paid forty two dollars on the seventh", "mister smith paid $42 on the 7th",
     "mister smith paid forty two dollars on the seventh"),
    ("It costs $3.50", "it costs $3.50", "it costs three point five"),
    ("it costs three dollars and fifty cents", "it costs $3.50", "it costs three dollars and fifty cents"),
    ("three point five", "3.5", "three point five"),
    ("Twenty-one rooms", "21 rooms", "twenty one rooms"),
    ("1,000,000 people", "1000000 people", "one million people"),
    ("one million people", "1000000 people", "one million people"),
    ("one", "one", "one"),
    ("I won't go.", "i will not go", "i won't go"),
    ("Um, the colour is grey [inaudible] (laughs)", "the color is gray", "um the colour is grey inaudible laughs"),
    ("Café naïve", "cafe naive", "café naïve"),
]  # fmt: skip


@pytest.mark.parametrize("raw,whisper,simple", CASES)
def test_whisper_english_and_simple_by_hand(raw, whisper, simple):
    assert normalize_text(raw, normalizer="whisper_english") == whisper
    assert normalize_text(raw, normalizer="simple") == simple
    assert normalize_text(raw) == simple  # normalize_text's default stays the simple one


def test_wer_by_hand():
    ref, hyp = "Mr. Smith paid $42 on the 7th.", "mister smith paid forty two dollars on the seventh"
    # Whisper: both sides normalise to "mister smith paid $42 on the 7th"
    assert word_error_rate([ref], [hyp]) == 0.0
    assert char_error_rate([ref], [hyp]) == 0.0
    # simple: "mr smith paid forty two on the seven th" (9 words) vs "mister smith paid forty two dollars on the
    # seventh": S(mr/mister) + I(dollars) + S(seven/seventh) + D(th) = 4 edits
    assert word_error_rate([ref], [hyp], normalizer="simple") == pytest.approx(4 / 9)
    # corpus WER = total edits / total reference words: + "the colour" vs "the color" (0 edits with the spelling
    # map; 1 substitution of 2 words with simple)
    refs, hyps = [ref, "the colour"], [hyp, "the color"]
    assert word_error_rate(refs, hyps) == 0.0
    assert word_error_rate(refs, hyps, normalizer="simple") == pytest.approx(5 / 11)
    # CER with spaces: "the colour" (10 characters) vs "the color": one deletion
    assert char_error_rate(["the colour"], ["the color"], normalizer="simple") == pytest.approx(1 / 10)
    # Whisper: "it costs three point five" -> "it costs 3.5" vs "it costs $3.50": 1 substitution of 3 words
    assert word_error_rate(["it costs $3.50"], ["it costs three point five"]) == pytest.approx(1 / 3)
    # "it costs 3.5" vs "it costs $3.50": insert "$", insert "0" = 2 edits of 14 characters
    assert char_error_rate(["it costs $3.50"], ["it costs three point five"]) == pytest.approx(2 / 14)


def test_error_rate_normalizer_by_language():
    for lang in ("en", "EN", "english", "en-US", None):
        assert error_rate_normalizer(lang) == "whisper_english"
    for lang in ("fr", "de", "nl"):
        assert error_rate_normalizer(lang) == "simple"


def test_bad_normalizer_and_empty_reference():
    with pytest.raises(ValueError, match="normalizer must be one of"):
        normalize_text("x", normalizer="whisper")
    with pytest.raises(ValueError, match="reference 0 is empty.*um"):
        word_error_rate(["um"], ["x"])  # Whisper's normaliser drops the filler: nothing left to score


def test_transformers_class_agrees_with_the_whisper_normalizer_package():
    """A second, independent copy of OpenAI's normaliser (the whisper-normalizer package's own class)."""
    from whisper_normalizer.english import EnglishTextNormalizer

    theirs = EnglishTextNormalizer()
    for raw, whisper, _ in CASES:
        assert " ".join(theirs(raw).split()) == whisper

"""The one text normalisation for WER/CER and the error rates, against hand-counted answers."""

from __future__ import annotations

import numpy as np
import pytest

from src.functional.text import char_error_rate, edit_counts, normalize_text, word_error_rate


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The photographer showed us a faded photograph.", "the photographer showed us a faded photograph"),
        ("  Hello,   WORLD?! ", "hello world"),
        ("It's twenty-one o'clock.", "it's twenty one o'clock"),
        ("In 1990 we had 3.5 cats", "in one thousand nine hundred and ninety we had three point five cats"),
        ("1,000 ways", "one thousand ways"),
        ("café \u2019quoted\u2019", "café quoted"),
        ("", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_numbers_can_be_kept():
    assert normalize_text("Room 101.", numbers="keep") == "room 101"


def test_wer_and_cer_hand_counted():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["The cat sat on a mat.", "hello"]  # 1 substitution of 6 words; 1 deletion of 2
    for norm in ("whisper_english", "simple"):
        assert word_error_rate(refs, hyps, normalizer=norm) == pytest.approx(2 / 8)
        assert char_error_rate(["abc"], ["abd"], normalizer=norm) == pytest.approx(1 / 3)
        assert word_error_rate(["twenty one"], ["21"], normalizer=norm) == 0.0  # both sides written alike
    with pytest.raises(ValueError, match="empty after normalisation"):
        word_error_rate(["..."], ["x"], normalizer="simple")
    # Whisper's rule removes a period only when a non-digit (or the end) follows and consumes that character:
    # "..." -> " . " -> "." (the middle period survives), so the reference is not empty there; "." alone -> ""
    assert normalize_text("...", normalizer="whisper_english") == "."
    assert normalize_text(".", normalizer="whisper_english") == ""
    assert word_error_rate(["..."], ["."]) == 1.0  # one deletion of one word


def _levenshtein(a, b):
    """Literal recursion over all alignments (tiny inputs only)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    return min(_levenshtein(a[1:], b) + 1, _levenshtein(a, b[1:]) + 1, _levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_counts_equal_a_literal_levenshtein():
    rng = np.random.default_rng(0)
    for _ in range(60):
        a = [str(x) for x in rng.integers(0, 3, size=int(rng.integers(0, 6)))]
        b = [str(x) for x in rng.integers(0, 3, size=int(rng.integers(0, 6)))]
        assert edit_counts(a, b) == (_levenshtein(a, b), len(a))
    assert edit_counts(["ah", "b"], ["ah", "b"]) == (0, 2)

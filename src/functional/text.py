"""The one text normalisation behind every WER / CER in the project, and the error rates.

``normalize_text`` (used for references and hypotheses alike, everywhere an error rate
is computed):

1. Unicode NFKC, lower case;
2. numbers written as the corpus writes them: the embedded Festival sentences spell
   numbers as words, so digit runs become English words (``num2words``: "1990" ->
   "one thousand nine hundred and ninety", "3.5" -> "three point five"); ``numbers="keep"``
   leaves digits alone for corpora that write digits;
3. hyphens and slashes become spaces ("twenty-one" -> "twenty one"), apostrophes inside
   words stay ("don't"), every other punctuation mark is removed;
4. whitespace collapsed.

Error rates come from jiwer (a kept library: Levenshtein alignment over words or
characters); CER is computed on the normalised text with spaces kept, so word
boundaries count as characters (jiwer's convention).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_KEEP_APOS = re.compile(r"(?<=\w)'(?=\w)")


def _spell(match: re.Match) -> str:
    from num2words import num2words

    s = match.group(0)
    if "," in s and re.fullmatch(r"\d{1,3}(,\d{3})+", s):  # 1,000,000
        s = s.replace(",", "")
    try:
        return " " + num2words(float(s) if "." in s else int(s.replace(",", ""))) + " "
    except (ValueError, OverflowError):
        return " " + s + " "


def normalize_text(text: str, numbers: str = "words") -> str:
    """Normalised text for error rates (see the module docstring).

    >>> normalize_text("In 1990, the   Twenty-one rooms weren't ready!")
    "in one thousand nine hundred and ninety the twenty one rooms weren't ready"
    """
    if numbers not in {"words", "keep"}:
        raise ValueError(f"numbers must be 'words' or 'keep', got {numbers!r}")
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = s.replace("\u2019", "'").replace("\u2018", "'")
    if numbers == "words":
        s = _NUMBER.sub(_spell, s)
    s = re.sub(r"[-/]", " ", s)
    s = _KEEP_APOS.sub("\x00", s)  # protect in-word apostrophes
    s = re.sub(r"[^\w\s\x00]", " ", s).replace("_", " ")
    s = s.replace("\x00", "'")
    return " ".join(s.split())


def _pairs(references: Sequence[str], hypotheses: Sequence[str], numbers: str) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r, numbers) for r in references]
    hyps = [normalize_text(h, numbers) for h in hypotheses]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"reference {empty[0]} is empty after normalisation ({references[empty[0]]!r}); "
                         "an error rate needs a non-empty reference")  # fmt: skip
    return refs, hyps


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], numbers: str = "words") -> float:
    """Corpus WER: total word edits / total reference words, on normalised text."""
    import jiwer

    refs, hyps = _pairs(references, hypotheses, numbers)
    return float(jiwer.wer(refs, hyps))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str], numbers: str = "words") -> float:
    """Corpus CER: total character edits / total reference characters, on normalised text."""
    import jiwer

    refs, hyps = _pairs(references, hypotheses, numbers)
    return float(jiwer.cer(refs, hyps))


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, int]:
    """``(edits, len(reference))`` between two token sequences (phones, characters, words), through
    jiwer's word alignment with one token per "word": per-utterance error rates and their bootstrap.

    >>> edit_counts(["a", "b", "c"], ["a", "c", "d"])
    (2, 3)
    """
    import jiwer

    ref, hyp = [str(t) for t in reference], [str(t) for t in hypothesis]
    if any(not t or any(c.isspace() for c in t) for t in ref + hyp):
        raise ValueError("tokens must be non-empty and contain no whitespace")
    if not ref:
        return len(hyp), 0
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return int(out.substitutions + out.deletions + out.insertions), len(ref)

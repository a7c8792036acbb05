"""Text normalisation for error rates, and the error rates.

Two normalisers, applied to references and hypotheses alike (``normalizer=``):

- ``whisper_english`` (the default of :func:`word_error_rate` / :func:`char_error_rate`, and of every English
  WER in the project): Whisper's English text normaliser as the field computes WER (Radford et al. 2022,
  appendix C), ``transformers.models.whisper.english_normalizer.EnglishTextNormalizer`` with the
  British-to-American spelling map ``english.json`` of the ``whisper-normalizer`` package (OpenAI's
  ``normalizer.json``; transformers keeps it with the checkpoints, not in the library). Numbers become digits
  on both sides ("twenty one" and "21" -> "21", "$42" and "forty two dollars" -> "$42", "seventh" and "7th" ->
  "7th", "three point five" -> "3.5"), titles are spelled out ("Mr." -> "mister"), contractions expanded
  ("won't" -> "will not"), fillers (um, uh, hmm) and bracketed text dropped, diacritics removed, output
  stripped.  The ``numbers`` argument does not apply (it writes every number as digits on both sides).
- ``simple`` (the project's earlier normaliser; :func:`normalize_text`'s default, kept for non-English text,
  for matching words to a words tier, and as a named option) does:

1. Unicode NFKC, lower case;
2. numbers written as the corpus writes them: the embedded Festival sentences spell
   numbers as words, so digit runs become English words (``num2words``: "1990" ->
   "one thousand nine hundred and ninety", "3.5" -> "three point five"); ``numbers="keep"``
   leaves digits alone for corpora that write digits;
3. hyphens and slashes become spaces ("twenty-one" -> "twenty one"), apostrophes inside
   words stay ("don't"), every other punctuation mark is removed;
4. whitespace collapsed.

``error_rate_normalizer(language)`` picks ``whisper_english`` for English (``en``, ``english``, ``en-*``, or
None: English-only models detect no language) and ``simple`` otherwise.

Error rates come from jiwer (a kept library: Levenshtein alignment over words or
characters); CER is computed on the normalised text with spaces kept, so word
boundaries count as characters (jiwer's convention).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

NORMALIZERS = ("whisper_english", "simple")

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


@lru_cache(maxsize=1)
def _whisper_english():
    """transformers' EnglishTextNormalizer with the whisper-normalizer package's spelling map (loaded once)."""
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        path = files("whisper_normalizer") / "normalizers" / "english.json"
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError("normalizer='whisper_english' needs the spelling map of the whisper-normalizer package "
                           "(pip install 'whisper-normalizer>=0.1.12,<0.2'; a project dependency)") from e  # fmt: skip
    return EnglishTextNormalizer(mapping)


def error_rate_normalizer(language: str | None) -> str:
    """The normaliser of English error rates (``whisper_english``) or of any other language (``simple``)."""
    if language is None:
        return "whisper_english"
    lang = str(language).strip().lower()
    return "whisper_english" if lang in ("en", "english") or lang.startswith("en-") or lang.startswith("en_") else "simple"


def normalize_text(text: str, numbers: str = "words", normalizer: str = "simple") -> str:
    """Normalised text for error rates (see the module docstring).

    >>> normalize_text("In 1990, the   Twenty-one rooms weren't ready!")
    "in one thousand nine hundred and ninety the twenty one rooms weren't ready"
    >>> normalize_text("Mr. Smith paid $42 on the 7th.", normalizer="whisper_english")
    'mister smith paid $42 on the 7th'
    """
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    if numbers not in {"words", "keep"}:
        raise ValueError(f"numbers must be 'words' or 'keep', got {numbers!r}")
    if normalizer == "whisper_english":
        s = unicodedata.normalize("NFKC", str(text)).replace("\u2019", "'").replace("\u2018", "'")
        return " ".join(_whisper_english()(s).split())
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = s.replace("\u2019", "'").replace("\u2018", "'")
    if numbers == "words":
        s = _NUMBER.sub(_spell, s)
    s = re.sub(r"[-/]", " ", s)
    s = _KEEP_APOS.sub("\x00", s)  # protect in-word apostrophes
    s = re.sub(r"[^\w\s\x00]", " ", s).replace("_", " ")
    s = s.replace("\x00", "'")
    return " ".join(s.split())


def _pairs(references: Sequence[str], hypotheses: Sequence[str], numbers: str,
           normalizer: str) -> tuple[list[str], list[str]]:  # fmt: skip
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r, numbers, normalizer) for r in references]
    hyps = [normalize_text(h, numbers, normalizer) for h in hypotheses]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"reference {empty[0]} is empty after normalisation ({references[empty[0]]!r}); "
                         "an error rate needs a non-empty reference")  # fmt: skip
    return refs, hyps


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], numbers: str = "words",
                    normalizer: str = "whisper_english") -> float:  # fmt: skip
    """Corpus WER: total word edits / total reference words, on text normalised by ``normalizer``
    (``whisper_english``: Whisper's English normaliser; ``simple`` with ``numbers``: the project's own)."""
    import jiwer

    refs, hyps = _pairs(references, hypotheses, numbers, normalizer)
    return float(jiwer.wer(refs, hyps))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str], numbers: str = "words",
                    normalizer: str = "whisper_english") -> float:  # fmt: skip
    """Corpus CER: total character edits / total reference characters (spaces included), on text normalised
    by ``normalizer`` (as :func:`word_error_rate`)."""
    import jiwer

    refs, hyps = _pairs(references, hypotheses, numbers, normalizer)
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

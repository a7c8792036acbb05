"""Scoring a lens's transcripts: reference texts and word/character edit counts.

Shared by the decoder lens, head ablation and the SAE evaluation (the CTC lens scores phone and character
sequences of its own vocabulary in ``src/analyses/ctc_lens.py``). Errors are ``error`` (``LensError`` unless the
caller names its own class, e.g. an analysis's ``AnalysisError``), naming the utterances.
"""

from __future__ import annotations

from collections.abc import Sequence

SPACE = "\u2581"  # a space as a character token (CER counts word boundaries, as jiwer does)


class LensError(ValueError):
    """A lens cannot score what it was given; the message names the corpus and utterances."""


def reference_texts(corpus, idx: Sequence[int], what: str, error: type[Exception] = LensError) -> list[str]:
    """The transcript of each utterance (else its words tier); ``error`` naming the first without one."""
    from src.datamodules.splits import utterance_text
    from src.functional.text import normalize_text

    out, missing = [], []
    for i in idx:
        t = utterance_text(corpus, i)
        if t is None or not normalize_text(t):
            missing.append(str(corpus.ids[i]))
        out.append(t or "")
    if missing:
        raise error(
            f"{what}: WER needs a reference text, and {len(missing)} of {len(idx)} utterances of corpus "
            f"{getattr(corpus, 'name', '?')!r} have none (no transcript and no words tier), e.g. {missing[:3]}"
        )
    return out


def error_stats(reference: str, hypothesis: str, normalizer: str = "whisper_english") -> tuple[int, int, int, int]:
    """``(word edits, reference words, character edits, reference characters)`` on text normalised by
    ``normalizer`` (:func:`src.functional.text.normalize_text`).

    Characters include the spaces between words (jiwer's CER), so the sums over utterances give
    exactly :func:`src.functional.text.word_error_rate` / ``char_error_rate`` of the lists."""
    from src.functional.text import edit_counts, normalize_text

    r, h = normalize_text(reference, normalizer=normalizer), normalize_text(hypothesis, normalizer=normalizer)
    we, wn = edit_counts(r.split(), h.split())
    ce, cn = edit_counts(list(r.replace(" ", SPACE)), list(h.replace(" ", SPACE)))
    return we, wn, ce, cn

"""Homophone corpora for the context-mixing cue study (Mohebbi et al., EMNLP 2023).

Every item has a *target* word whose spelling depends on a *cue* word elsewhere in the
sentence (``two``/``to``/``too``: "She bought two apples", cue ``apples``). Both corpora
here implement one interface, :class:`CueItem` / :func:`cue_item`:

- :class:`HomophoneCorpus`: English sentences written for this project
  (``homophones.json``), synthesised with Festival by the machinery of
  :class:`~src.datamodules.synth.SynthCorpus` (deterministic, atomic, cached);
- :class:`FrenchHomophoneCorpus`: the tutorial's HF dataset ``hosein-m/french_homophone_asr``
  (hub id or a ``save_to_disk`` folder).

Index convention: ``cue_index`` / ``target_index`` are 0-based positions among the
utterance's non-empty ``words``-tier intervals, in time order
(``utt.tier("words")[item.target_index].label == item.target_word``).
"""

from __future__ import annotations

from dataclasses import dataclass

from src.datamodules.corpus import CorpusError


class HomophoneError(CorpusError):
    """Bad homophone item list or dataset; the message names the item / row / word."""


@dataclass(frozen=True)
class CueItem:
    """One cue annotation of one utterance.

    Words are lower case, as in the words tier (Festival) or as in the dataset's
    alignment (French). Indices are 0-based positions among the utterance's non-empty
    words-tier intervals, in order.
    """

    utterance: str  # utterance id
    text: str  # reference transcription
    cue_word: str
    cue_index: int
    target_word: str
    target_index: int
    alternatives: tuple[str, ...]  # homophone spellings that would be WRONG here
    target2_word: str | None = None
    target2_index: int | None = None


def cue_item(corpus, i: int) -> CueItem | None:
    """The cue annotation of utterance ``i`` of ``corpus``; ``None`` when it has none.

    Dispatches to ``corpus.cue_item(i)``; a corpus without that method has no cue
    annotations (:class:`HomophoneError` names it).
    """
    method = getattr(corpus, "cue_item", None)
    if method is None:
        raise HomophoneError(
            f"corpus {getattr(corpus, 'name', type(corpus).__name__)!r} has no cue annotations "
            "(use data=homophones or data=french_homophones)"
        )
    return method(int(i))

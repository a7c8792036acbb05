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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from src.datamodules.corpus import CorpusError
from src.datamodules.synth import SynthCorpus


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


# ----------------------------------------------------------------------------- English item list

ITEMS_FILE = Path(__file__).resolve().parent / "homophones.txt"
_MARK = re.compile(r"\[([^\[\]]*)\]|\{([^{}]*)\}|<([^<>]*)>")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class HomophoneItem:
    """One annotated sentence of the English item list (indices into ``words``, 0-based)."""

    line: int  # 1-based line of the item list
    text: str  # the sentence without markup (what Festival reads; the reference transcription)
    words: tuple[str, ...]  # lower case, as Festival's words tier lists them
    cue_word: str
    cue_index: int
    target_word: str
    target_index: int
    alternatives: tuple[str, ...]
    target2_word: str | None = None
    target2_index: int | None = None

    @property
    def distance(self) -> int:
        """``target_index - cue_index``: > 0 when the cue comes before the target."""
        return self.target_index - self.cue_index


def homophone_sets(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """Each spelling of the item list's ``=`` lines -> its whole set, in file order."""
    return _parse_items(path)[1]


def load_items(path: str | Path | None = None) -> list[HomophoneItem]:
    """The annotated items of an item list (default: the embedded ``homophones.txt``).

    Format (see the file's header): ``= a b c`` declares a homophone set; every other
    non-comment line is a sentence with exactly one ``[target]``, exactly one ``{cue}``
    and at most one ``<second target>``, each one word. Indices are the marked words'
    positions among :func:`~src.datamodules.synth.sentence_words` of the plain sentence.
    Every error names the file and line.
    """
    return _parse_items(path)[0]


def _parse_items(path) -> tuple[list[HomophoneItem], dict[str, tuple[str, ...]]]:
    path = ITEMS_FILE if path is None else Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise HomophoneError(f"cannot read homophone item list {path}: {e}") from e
    sets: dict[str, tuple[str, ...]] = {}
    pending: list[tuple[int, str]] = []
    for n, raw in enumerate(lines, start=1):
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith("="):
            spellings = tuple(line[1:].lower().split())
            if len(spellings) < 2 or len(set(spellings)) != len(spellings):
                raise HomophoneError(f"{path}:{n}: a homophone set needs >= 2 distinct spellings: {raw!r}")
            for w in spellings:
                if not _WORD.fullmatch(w):
                    raise HomophoneError(f"{path}:{n}: {w!r} is not one plain word")
                if w in sets:
                    raise HomophoneError(f"{path}:{n}: {w!r} is already in the set {sets[w]}")
                sets[w] = spellings
        else:
            pending.append((n, line))
    items = [_parse_item(path, n, line, sets) for n, line in pending]
    if not items:
        raise HomophoneError(f"homophone item list {path} holds no items")
    seen: dict[str, int] = {}
    for it in items:
        if it.text.lower() in seen:
            raise HomophoneError(
                f"{path}:{it.line}: the same sentence as line {seen[it.text.lower()]}: {it.text!r}"
            )
        seen[it.text.lower()] = it.line
    return items, sets


def _parse_item(path: Path, n: int, line: str, sets: dict[str, tuple[str, ...]]) -> HomophoneItem:
    from src.datamodules.synth import sentence_words

    plain, marks, pos = [], {"target": [], "cue": [], "target2": []}, 0
    for m in _MARK.finditer(line):
        plain.append(line[pos : m.start()])
        word = next(g for g in m.groups() if g is not None)
        kind = "target" if m.group(1) is not None else "cue" if m.group(2) is not None else "target2"
        before = "".join(plain)
        marks[kind].append((word, len(sentence_words(before)), before))
        plain.append(word)
        pos = m.end()
    plain.append(line[pos:])
    text = "".join(plain)
    if any(c in text for c in "[]{}<>"):
        raise HomophoneError(f"{path}:{n}: unbalanced markup in {line!r}")
    words = tuple(sentence_words(text))
    if len(marks["target"]) != 1 or len(marks["cue"]) != 1 or len(marks["target2"]) > 1:
        raise HomophoneError(
            f"{path}:{n}: an item needs exactly one [target], one {{cue}} and at most one <target2>; "
            f"got {len(marks['target'])}, {len(marks['cue'])}, {len(marks['target2'])} in {line!r}"
        )
    found = {}
    for kind, marked in marks.items():
        for word, index, _ in marked:
            w = word.lower()
            if not _WORD.fullmatch(w) or index >= len(words) or words[index] != w:
                raise HomophoneError(f"{path}:{n}: the {kind} {word!r} is not one word of {text!r}")
            found[kind] = (w, index)
    for kind in ("target", "target2"):
        if kind in found and found[kind][0] not in sets:
            raise HomophoneError(
                f"{path}:{n}: the {kind} {found[kind][0]!r} is in no homophone set ('= ...' line) of {path}"
            )
    target, cue = found["target"], found["cue"]
    t2 = found.get("target2")
    return HomophoneItem(
        line=n,
        text=text,
        words=words,
        cue_word=cue[0],
        cue_index=cue[1],
        target_word=target[0],
        target_index=target[1],
        alternatives=tuple(w for w in sets[target[0]] if w != target[0]),
        target2_word=None if t2 is None else t2[0],
        target2_index=None if t2 is None else t2[1],
    )


def check_homophony(items: Sequence[HomophoneItem], voice: str = "kal") -> dict[int, tuple[str, ...]]:
    """Which alternatives Festival reads exactly like each item's target, in context.

    For each item and each alternative, the sentence with the alternative in place of the
    target goes through Festival's text analysis (lexicon, post-lexical rules; no
    waveform); an alternative counts when the target word's phones and stresses are
    unchanged. (The rest of the sentence may be read differently: Festival's POS tagger
    sees the other spelling, e.g. "the wind blue" reads "wind" /w ay n d/.) Returns
    ``{item line: homophonous alternatives}``; an empty tuple means the target's audio
    itself tells the spellings apart (e.g. ``to`` /t ax/ vs ``two`` /t uw/).
    """
    from src.datamodules.synth import analyse_text

    texts, keys = [], []
    for it in items:
        texts.append(it.text)
        keys.append((it, None))
        for alt in it.alternatives:
            w = list(it.words)
            w[it.target_index] = alt
            texts.append(" ".join(w))
            keys.append((it, alt))
    ref: dict[int, list] = {}
    out: dict[int, list[str]] = {}
    for (it, alt), a in zip(keys, analyse_text(texts, voice)):
        phones = _word_phones(a.segments, len(it.words), it)[it.target_index]
        if alt is None:
            ref[it.line], out[it.line] = phones, []
        elif phones == ref[it.line]:
            out[it.line].append(alt)
    return {k: tuple(v) for k, v in out.items()}


def _word_phones(segments, n_words: int, it: HomophoneItem) -> list[list[tuple[str, str]]]:
    """Festival's (phone, stress) per word, from segments labelled with their word's name.

    A new word starts where the word label changes (items never repeat a word twice in a
    row, so this is unambiguous; checked against the word count).
    """
    groups: list[list[tuple[str, str]]] = []
    last = None
    for phone, stress, word in segments:
        if phone == "pau":
            last = None
            continue
        if word != last:
            groups.append([])
            last = word
        groups[-1].append((phone, stress))
    if len(groups) != n_words:
        raise HomophoneError(
            f"line {it.line}: cannot split Festival's phones of {it.text!r} into {n_words} words"
        )
    return groups


# ----------------------------------------------------------------------------- English corpus


class HomophoneCorpus(SynthCorpus):
    """The English homophone items read by Festival voices (a :class:`SynthCorpus`).

    Utterance ids are ``<voice>__<voice>_<NNNN>``, NNNN = the item's position in the item
    list (0-based; :meth:`item` gives it back). Before synthesising, Festival's text
    analysis must give exactly the annotated words for every item and voice; after the
    build (and on every load), every utterance's words tier must too: otherwise
    :class:`HomophoneError` names the item's line, the utterance and both word lists.

    Args:
        root: corpus folder (built once, then reused; see :class:`SynthCorpus`).
        voices: Festival voice keys (``kal``, ``ked``, ``slt``).
        items_file: item list (default: the embedded ``homophones.txt``).
        num_items: the first N items (``None``: all).
        sample_rate, workers, max_utterances, progress: as for :class:`SynthCorpus`.
    """

    def __init__(
        self,
        root: str | Path,
        voices: Sequence[str] = ("kal", "ked", "slt"),
        items_file: str | Path | None = None,
        num_items: int | None = None,
        sample_rate: int = 16000,
        workers: int = 2,
        max_utterances: int | None = None,
        progress: bool | None = None,
    ) -> None:
        items = load_items(items_file)
        if num_items is not None:
            if not 1 <= int(num_items) <= len(items):
                raise HomophoneError(
                    f"num_items={num_items}, but {items_file or ITEMS_FILE} holds {len(items)} items"
                )
            items = items[: int(num_items)]
        self.items = items
        self.items_file = Path(items_file or ITEMS_FILE)
        super().__init__(
            root,
            voices=voices,
            num_sentences=len(items),
            sample_rate=sample_rate,
            workers=workers,
            max_utterances=max_utterances,
            progress=progress,
            sentences=[it.text for it in items],
        )
        self.name = "homophones"
        self._check_words_tiers()

    def _build(self, root: Path, workers: int, progress: bool | None) -> None:
        # Festival's text analysis is fast (hundreds of sentences/s): fail before synthesising.
        from src.datamodules.synth import analyse_text

        for voice in self.voices:
            for it, a in zip(self.items, analyse_text([it.text for it in self.items], voice)):
                if tuple(a.words) != it.words:
                    raise HomophoneError(
                        self._mismatch(it, f"Festival's text analysis (voice {voice})", a.words)
                    )
        super()._build(root, workers, progress)

    def _mismatch(self, it: HomophoneItem, where: str, got: Sequence[str]) -> str:
        return (
            f"{self.items_file}:{it.line}: item {it.text!r}: {where} gives the words {list(got)}, "
            f"but the annotation has {list(it.words)} (Festival splits or expands a token: "
            "rephrase the sentence, e.g. spell numbers out)"
        )

    def _check_words_tiers(self) -> None:
        for i in range(len(self)):
            it = self.item(i)
            got = [iv.label for iv in self.annotation(i).tier("words")]
            if tuple(got) != it.words:
                raise HomophoneError(self._mismatch(it, f"the words tier of utterance {self.ids[i]!r}", got))

    def item(self, i: int) -> HomophoneItem:
        """The annotated item read in utterance ``i``."""
        return self.items[self.sentence_index(i)]

    def cue_item(self, i: int) -> CueItem:
        it = self.item(i)
        return CueItem(
            utterance=self.ids[i],
            text=it.text,
            cue_word=it.cue_word,
            cue_index=it.cue_index,
            target_word=it.target_word,
            target_index=it.target_index,
            alternatives=it.alternatives,
            target2_word=it.target2_word,
            target2_index=it.target2_index,
        )

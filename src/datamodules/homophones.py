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

import hashlib
import io
import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from src.datamodules.corpus import (
    Corpus,
    CorpusError,
    Interval,
    Utterance,
    file_sha256,
    resample,
    validate_alignment,
)
from src.datamodules.synth import SynthCorpus

log = logging.getLogger(__name__)


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


def control_index(item: CueItem, num_words: int) -> int | None:
    """A control source word for ``item``: another word of the utterance (not the cue nor
    a target) whose distance to the target is closest to the cue's.

    Ties go to a word on the cue's side of the target, then to the lower index, so the
    choice is deterministic. ``None`` when the utterance has no other word.
    """
    t, c = item.target_index, item.cue_index
    d, side = abs(c - t), (c > t)
    excluded = {c, t, item.target2_index}
    candidates = [j for j in range(int(num_words)) if j not in excluded]
    if not candidates:
        return None
    return min(candidates, key=lambda j: (abs(abs(j - t) - d), (j > t) != side, j))


# ----------------------------------------------------------------------------- spelling outcome

SPELLING_OUTCOMES = ("correct", "alternative", "other", "missing")
# Whisper writes small numbers as digits; "2 apples" spells the number sense of "two".
DIGIT_WORDS = {"1": "one", "2": "two", "4": "four", "8": "eight"}


def spelling_outcome(
    item: CueItem,
    reference_words: Sequence[str],
    hypothesis: str,
    target_index: int | None = None,
    equivalents: dict[str, str] | None = None,
) -> str:
    """How a transcript ``hypothesis`` spells the target word of ``item``.

    The hypothesis's words (white-space tokens through :func:`normalize_word`, then
    ``equivalents``, default :data:`DIGIT_WORDS`) are aligned to ``reference_words`` (the
    utterance's words tier labels) by :class:`difflib.SequenceMatcher`. The hypothesis
    words aligned with the target (``item.target_index`` or ``target_index``, e.g.
    ``item.target2_index``) give: ``"correct"`` (the target's spelling is among them),
    ``"alternative"`` (a wrong homophone spelling of ``item.alternatives`` is),
    ``"other"`` (something else) or ``"missing"`` (the target was deleted).
    """
    import difflib

    eq = DIGIT_WORDS if equivalents is None else equivalents
    ref = [normalize_word(w) for w in reference_words]
    hyp = [eq.get(w, w) for w in (normalize_word(t) for t in str(hypothesis).split()) if w]
    k = item.target_index if target_index is None else int(target_index)
    if not 0 <= k < len(ref):
        raise HomophoneError(f"utterance {item.utterance!r}: target index {k} outside its {len(ref)} words")
    target = normalize_word(ref[k])
    alternatives = {normalize_word(a) for a in item.alternatives}
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if not i1 <= k < i2:
            continue
        if op == "equal":
            return "correct"
        if op == "delete":
            return "missing"
        block = hyp[j1:j2]  # replace: the hypothesis words standing for ref[i1:i2]
        if i2 - i1 == j2 - j1:  # one-for-one: the word at the same offset
            block = [block[k - i1]]
        if target in block:
            return "correct"
        return "alternative" if alternatives & set(block) else "other"
    raise AssertionError("unreachable: the opcodes cover every reference word")


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

    name = "homophones"

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


# ----------------------------------------------------------------------------- French dataset

FRENCH_HUB_ID = "hosein-m/french_homophone_asr"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ID_COLUMNS = ("id", "utterance_id")
SPEAKER_COLUMNS = ("client_id", "speaker_id", "speaker")


def normalize_word(word: str | None) -> str:
    """Lower case without punctuation (Unicode categories P*) or surrounding spaces.

    ``"On"`` -> ``"on"``, ``"aéroport."`` -> ``"aéroport"``, ``"l'avion"`` -> ``"lavion"``.
    """
    if word is None:
        return ""
    return "".join(
        c
        for c in unicodedata.normalize("NFC", str(word)).lower()
        if not unicodedata.category(c).startswith("P")
    ).strip()


def _blank(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or str(value).strip() in ("", "None", "none")
    )


def _intervals(value, where: str) -> list[dict]:
    """``alignment`` -> a list of ``{start, end, word}`` (list of dicts, dict of lists or JSON)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise HomophoneError(f"{where}: alignment is a string but not JSON: {e}") from e
    if isinstance(value, dict) and "intervals" in value:
        value = value["intervals"]
    if isinstance(value, dict) and {"start", "end", "word"} <= set(value):  # Sequence of structs, columnar
        value = [
            dict(zip(("start", "end", "word"), t)) for t in zip(value["start"], value["end"], value["word"])
        ]
    if not isinstance(value, list) or not all(
        isinstance(v, dict) and {"start", "end", "word"} <= set(v) for v in value
    ):
        raise HomophoneError(
            f"{where}: alignment must hold intervals = a list of {{start, end, word}}, got {value!r:.200}"
        )
    return value


class FrenchHomophoneCorpus(Corpus):
    """The tutorial's dataset ``hosein-m/french_homophone_asr`` (Common Voice French clips
    with a homophone target word, its cue word and word alignments).

    Reads ``source``: a folder written by ``datasets``' ``save_to_disk`` (``load_from_disk``;
    a ``DatasetDict`` folder is indexed by ``split``) or a hub id (``load_dataset``, which
    needs network or the dataset in the local HF cache). Rows: ``audio``,
    ``transcription``, ``cue_word``, ``target_word``, ``target_word_2`` and
    ``alignment = {"intervals": [{"start", "end", "word"}, ...]}`` (seconds).

    Conventions:
    - utterance ids: the dataset's ``id`` column when it has one, else the row index as a
      string (row 762 -> ``"762"``), also when ``items`` selects rows;
    - speaker: the ``client_id`` column when present, else ``""`` (unknown);
    - text: ``transcription``; tier ``words``: the alignment intervals, in order, with
      blank words dropped (half-open ``[start, end)`` in seconds);
    - audio: decoded with soundfile from the stored bytes / file (the ``Audio`` column is
      read with ``decode=False``: ``datasets`` >= 4 would decode with torchcodec), mixed
      to mono and resampled to ``sample_rate``;
    - cue items: cue and target found among the words tier by :func:`normalize_word`
      (lower case, punctuation dropped), first occurrence (``repeated="skip"``: a word
      that occurs twice gives no item); a missing cue or target, a multi-word cue or
      target, or cue == target position gives no item (``cue_item`` returns ``None``; one
      warning counts them by reason). A missing second target only drops that target.
      ``alternatives`` is empty: the dataset does not list the wrong spellings.

    Args:
        source: hub id or local ``save_to_disk`` folder.
        split: the split to read.
        items: row indices to keep (e.g. ``[762]``), in the given order; ``None``: all.
        sample_rate: audio rate returned.
        repeated: ``first`` or ``skip`` (see above).
        revision, cache_dir: passed to ``load_dataset`` for a hub id.
    """

    def __init__(
        self,
        source: str | Path = FRENCH_HUB_ID,
        split: str = "train",
        items: Sequence[int] | None = None,
        sample_rate: int = 16000,
        repeated: str = "first",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        name: str = "french_homophones",
    ) -> None:
        if repeated not in ("first", "skip"):
            raise HomophoneError(f"repeated must be 'first' or 'skip', got {repeated!r}")
        self.source, self.split, self.name = str(source), str(split), name
        self.sample_rate = int(sample_rate)
        ds = self._open(source, split, revision, cache_dir)
        cols = set(ds.column_names)
        missing = [c for c in ("audio", "transcription", "alignment") if c not in cols]
        if missing:
            raise HomophoneError(
                f"dataset {self.source!r} (split {split!r}) lacks the columns {missing}; it has {sorted(cols)}"
            )
        import datasets

        if isinstance(ds.features.get("audio"), datasets.Audio):
            ds = ds.cast_column("audio", datasets.Audio(decode=False))
        self._ds = ds
        n = len(ds)
        if items is None:
            rows = list(range(n))
        else:
            rows = [int(r) for r in items]
            bad = [r for r in rows if not 0 <= r < n]
            if bad:
                raise HomophoneError(
                    f"items: row {bad[0]} is out of range: dataset {self.source!r} split {split!r} has {n} rows"
                )
            if len(set(rows)) != len(rows):
                raise HomophoneError(f"items: duplicate rows in {list(items)}")
        self._rows = rows
        meta_cols = [c for c in ds.column_names if c != "audio"]
        meta = ds.select_columns(meta_cols).select(rows).to_list() if rows else []
        id_col = next((c for c in ID_COLUMNS if c in cols), None)
        spk_col = next((c for c in SPEAKER_COLUMNS if c in cols), None)
        self._ids = [str(m[id_col]) if id_col else str(r) for r, m in zip(rows, meta)]
        if len(set(self._ids)) != len(self._ids):
            raise HomophoneError(f"dataset {self.source!r}: column {id_col!r} has duplicate ids")
        self._speakers = [str(m[spk_col]) if spk_col and not _blank(m[spk_col]) else "" for m in meta]
        self._texts = [str(m["transcription"] or "") for m in meta]
        self._words = [self._words_tier(r, m) for r, m in zip(rows, meta)]
        self._cues, counts = [], {}
        for k, m in enumerate(meta):
            item, reason = self._match(k, m, repeated)
            self._cues.append(item)
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
        if counts:
            log.warning(
                "dataset %r: cue annotations not usable for %s of %d rows (no CueItem / no second target): %s",
                self.source,
                sum(v for k, v in counts.items() if not k.startswith("second target")),
                len(rows),
                ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
            )
        self.skipped = counts
        self._annotations: dict[int, Utterance] = {}
        self._lengths: dict[int, int] = {}

    # -- loading -----------------------------------------------------------------------

    def _open(self, source, split, revision, cache_dir):
        try:
            import datasets
        except ImportError as e:
            raise HomophoneError(
                "the French homophone dataset needs the package `datasets`: pip install -e '.[hf]'"
            ) from e
        path = Path(str(source)).expanduser()
        if path.exists():
            if not path.is_dir():
                raise HomophoneError(f"dataset folder {path} is a file, not a save_to_disk folder")
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # datasets raises FileNotFoundError for a folder it did not write
                raise HomophoneError(f"cannot read {path} as a datasets save_to_disk folder: {e}") from e
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise HomophoneError(f"dataset folder {path} has no split {split!r}; it has {sorted(ds)}")
                ds = ds[split]
            return ds
        if not _HUB_ID.fullmatch(str(source)) or str(source).startswith((".", "~", "/")):
            raise HomophoneError(
                f"dataset folder {path} does not exist (and {str(source)!r} is not a hub id)"
            )
        try:
            return datasets.load_dataset(str(source), split=split, revision=revision, cache_dir=cache_dir)
        except (
            Exception
        ) as e:  # offline: ConnectionError / OSError / DatasetNotFoundError, depending on settings
            raise HomophoneError(
                f"cannot load the hub dataset {source!r} (split {split!r}): {type(e).__name__}: {e}. "
                "Loading by hub id needs network access (or the dataset in the HF cache; HF_HUB_OFFLINE / "
                "HF_DATASETS_OFFLINE are "
                f"{os.environ.get('HF_HUB_OFFLINE', 'unset')} / {os.environ.get('HF_DATASETS_OFFLINE', 'unset')}), "
                f"and no local folder {path} exists. To use a local copy, on a machine with network run "
                f"`python -c \"import datasets; datasets.load_dataset('{source}', split='{split}')"
                ".save_to_disk('french_homophones')\"`, copy the folder here and pass it as "
                "data.source=/path/to/french_homophones"
            ) from e

    def _words_tier(self, row: int, meta: dict) -> list[Interval]:
        where = f"dataset {self.source!r} row {row}"
        out = []
        for iv in _intervals(meta["alignment"], where):
            word = str(iv["word"] or "").strip()
            if not word:
                continue
            try:
                start, end = float(iv["start"]), float(iv["end"])
            except (TypeError, ValueError) as e:
                raise HomophoneError(f"{where}: word {word!r} has a bad interval {iv!r}") from e
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                raise HomophoneError(
                    f"{where}: word {word!r} has the interval [{start}, {end}): need 0 <= start < end"
                )
            out.append(Interval(start, end, word))
        return out

    def _match(self, k: int, meta: dict, repeated: str) -> tuple[CueItem | None, str | None]:
        words = [normalize_word(w.label) for w in self._words[k]]

        def find(value, what):
            if _blank(value):
                return None, f"{what} missing"
            w = normalize_word(value)
            if not w or len(w.split()) > 1:
                return None, f"{what} not one word"
            hits = [i for i, x in enumerate(words) if x == w]
            if not hits:
                return None, f"{what} not in the alignment"
            if len(hits) > 1 and repeated == "skip":
                return None, f"{what} repeated"
            return hits[0], None

        cue, why = find(meta.get("cue_word"), "cue")
        if why:
            return None, why
        target, why = find(meta.get("target_word"), "target")
        if why:
            return None, why
        if cue == target:
            return None, "cue and target are the same word"
        t2, why2 = (None, None)
        if not _blank(meta.get("target_word_2")):
            t2, why2 = find(meta.get("target_word_2"), "second target")
            if t2 in (cue, target):
                t2, why2 = None, "second target is the cue or target"
        item = CueItem(
            utterance=self._ids[k],
            text=self._texts[k],
            cue_word=self._words[k][cue].label.lower(),
            cue_index=cue,
            target_word=self._words[k][target].label.lower(),
            target_index=target,
            alternatives=tuple(str(a) for a in meta.get("alternatives") or ()),
            target2_word=None if t2 is None else self._words[k][t2].label.lower(),
            target2_index=t2,
        )
        return item, why2

    # -- Corpus ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def row(self, i: int) -> int:
        """The dataset row of utterance ``i``."""
        return self._rows[i]

    def speaker(self, i: int) -> str:
        return self._speakers[i]

    def _speaker_hint(self) -> str:
        return "this dataset has no client_id column: split by text or utterance instead"

    def cue_item(self, i: int) -> CueItem | None:
        return self._cues[i]

    def _audio(self, i: int) -> tuple[np.ndarray, int]:
        import soundfile as sf

        row = self._rows[i]
        value = self._ds[row]["audio"]
        where = f"dataset {self.source!r} row {row} (utterance {self._ids[i]!r})"
        try:
            if isinstance(value, dict) and value.get("array") is not None:
                data = np.asarray(value["array"], dtype=np.float32)
                sr = int(value["sampling_rate"])
                data = data[:, None] if data.ndim == 1 else data.T  # datasets stores (channels, n)
            elif isinstance(value, dict) and value.get("bytes"):
                data, sr = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            elif isinstance(value, dict) and value.get("path"):
                data, sr = sf.read(value["path"], dtype="float32", always_2d=True)
            else:
                raise HomophoneError(
                    f"{where}: audio holds neither bytes, a path nor an array: {value!r:.200}"
                )
        except HomophoneError:
            raise
        except Exception as e:
            raise HomophoneError(f"{where}: cannot decode the audio: {e}") from e
        audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (n,)
        if audio.size == 0 or not np.isfinite(audio).all():
            raise HomophoneError(f"{where}: audio is empty or holds NaN/inf")
        return audio, sr

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        audio, sr = self._audio(int(i))
        audio = np.ascontiguousarray(resample(audio, sr, self.sample_rate), dtype=np.float32)
        utt = self._utterance(int(i), audio)
        validate_alignment(utt)
        return utt

    def _utterance(self, i: int, audio: np.ndarray) -> Utterance:
        return Utterance(
            id=self._ids[i],
            audio=audio,
            sample_rate=self.sample_rate,
            speaker=self._speakers[i],
            text=self._texts[i],
            tiers={"words": list(self._words[i])},
            path=f"{self.source}[{self.split}][{self._rows[i]}]",
        )

    def num_samples(self, i: int) -> int:
        """Audio length of utterance ``i`` at ``sample_rate`` (WAV/FLAC: from the header; else decoded)."""
        i = int(i)
        if i not in self._lengths:
            n, sr = self._stored_length(i)
            if sr != self.sample_rate:
                r = Fraction(self.sample_rate, sr)  # resample_poly's output length
                n = int(math.ceil(n * r.numerator / r.denominator))
            self._lengths[i] = n
        return self._lengths[i]

    def _stored_length(self, i: int) -> tuple[int, int]:
        import soundfile as sf

        value = self._ds[self._rows[i]]["audio"]
        if (
            isinstance(value, dict)
            and value.get("array") is None
            and (value.get("bytes") or value.get("path"))
        ):
            try:
                info = sf.info(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
                if info.format in ("WAV", "FLAC") and info.frames > 0:  # exact frame counts in the header
                    return int(info.frames), int(info.samplerate)
            except Exception:  # noqa: S110 - decoding below gives the clear error
                pass
        audio, sr = self._audio(i)
        return len(audio), sr

    def annotation(self, i: int) -> Utterance:
        if i not in self._annotations:
            utt = self._utterance(int(i), np.zeros(0, np.float32))
            validate_alignment(utt, duration=self.num_samples(int(i)) / self.sample_rate)
            self._annotations[i] = utt
        return self._annotations[i]

    @property
    def fingerprint(self) -> str:
        """Hash of the dataset's own fingerprint, its Arrow files' contents, the rows read and
        the sample rate (the same data read from a copy elsewhere gives the same value)."""
        if getattr(self, "_fp", None) is None:
            h = hashlib.sha256()
            h.update(f"french-homophones-v1:{self.sample_rate}:{self.split}:".encode())
            h.update(str(getattr(self._ds, "_fingerprint", "")).encode())
            for f in sorted(self._ds.cache_files, key=lambda c: Path(c["filename"]).name):
                h.update(Path(f["filename"]).name.encode())
                h.update(file_sha256(Path(f["filename"])).encode())
            h.update("\n".join(f"{r}:{u}" for r, u in zip(self._rows, self._ids)).encode())
            self._fp = h.hexdigest()[:16]
        return self._fp


# ----------------------------------------------------------------------------- tiny French dataset

def french_words(text: str) -> list[str]:
    """Words of a French transcription as the alignment lists them: lower case, split on
    white space, punctuation stripped at both ends (``"aéroport."`` -> ``"aéroport"``,
    ``"l'as"`` stays)."""
    out = []
    for tok in str(text).lower().split():
        while tok and unicodedata.category(tok[0]).startswith("P"):
            tok = tok[1:]
        while tok and unicodedata.category(tok[-1]).startswith("P"):
            tok = tok[:-1]
        if tok:
            out.append(tok)
    return out

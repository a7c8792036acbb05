"""A spoken-commands corpus synthesised with Festival, in the spirit of Fluent Speech Commands.

Every utterance is a command with three slots, ``action`` / ``object`` / ``location``
(:data:`SLOTS`), generated from the project's templates and slot vocabulary
(``commands.json`` beside this file; see docs/commands.md). The words that determine each
slot are known from the template and stored per item (:class:`CommandItem.slot_words`):
indices into the utterance's NON-EMPTY words-tier intervals, in order, 0-based. The build
checks that Festival's words tier reads exactly the template's words, and fails naming
the utterance when it does not (so the indices are valid for the audio).

Generation (deterministic for a ``seed``): every (action, object, location, template,
surface form) sentence is enumerated; sentences are grouped by their slot combination; the
corpus takes ``num_sentences`` of them round-robin over the combinations (each shuffled
with ``seed``), so every combination is about equally frequent and is read with several
phrasings. Each sentence is read by every voice (speakers), exactly like the synthetic
corpus (:class:`~src.datamodules.synth.SynthCorpus`, which builds and caches it under
``root``); ``split.by=text`` keeps every reading of a sentence in one split, so test
sentences are unseen phrasings/combinations of words.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datamodules.corpus import CorpusError
from src.datamodules.synth import FestivalError, SynthCorpus, sentence_words

HERE = Path(__file__).resolve().parent
TEMPLATES_FILE = HERE / "commands.json"
SLOTS = ("action", "object", "location")
NONE = "none"


@dataclass(frozen=True)
class CommandItem:
    """The slots of one utterance and the words that determine them.

    ``slot_words[slot]`` holds indices into the utterance's NON-EMPTY words-tier intervals
    (in time order, 0-based); an empty tuple when no word determines the slot (a ``none``
    value, or a corpus without an alignment)."""

    utterance: str
    text: str
    slots: dict[str, str]
    slot_words: dict[str, tuple[int, ...]]


def command_item(corpus, i: int) -> CommandItem | None:
    """The :class:`CommandItem` of utterance ``i``, or None for a corpus without slots."""
    fn = getattr(corpus, "command_item", None)
    return fn(int(i)) if callable(fn) else None


# ----------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class CommandSentence:
    """One generated sentence: its words, slots, slot-word indices and the template it came from."""

    text: str
    slots: dict[str, str]
    slot_words: dict[str, tuple[int, ...]]
    template: str

    @property
    def words(self) -> list[str]:
        return self.text.split()

    @property
    def combo(self) -> tuple[str, str, str]:
        return tuple(self.slots[s] for s in SLOTS)  # type: ignore[return-value]


_TOKEN = re.compile(r"\(|\)|\[[^\]]+\]|\{object\}|\{location\}|[a-z']+")


def load_inventory(path: str | Path | None = None) -> dict:
    path = TEMPLATES_FILE if path is None else Path(path).expanduser()
    try:
        inv = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"cannot read commands templates {path}: {e}") from e
    for key in ("slots", "surface", "actions"):
        if key not in inv:
            raise CorpusError(f"commands templates {path}: missing key {key!r}")
    return inv


def render(template: str, obj: str | None, loc: str | None) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """Words and slot-word indices of one template with surface forms ``obj`` / ``loc``
    (``loc=None`` drops the parenthesised group)."""
    words: list[str] = []
    marks: dict[str, list[int]] = {s: [] for s in SLOTS}
    skip = False
    for tok in _TOKEN.findall(template):
        if tok == "(":
            skip = loc is None
            continue
        if tok == ")":
            skip = False
            continue
        if skip:
            continue
        if tok.startswith("["):
            for w in tok[1:-1].split():
                marks["action"].append(len(words))
                words.append(w)
        elif tok == "{object}":
            if obj is None:
                raise CorpusError(f"template {template!r} needs an object")
            for w in obj.split():
                marks["object"].append(len(words))
                words.append(w)
        elif tok == "{location}":
            for w in str(loc).split():
                marks["location"].append(len(words))
                words.append(w)
        else:
            words.append(tok)
    return words, {s: tuple(v) for s, v in marks.items()}


def enumerate_sentences(inv: dict) -> list[CommandSentence]:
    """Every sentence the templates can make, in a fixed order (duplicates removed)."""
    slots, surface = inv["slots"], inv["surface"]
    out: dict[str, CommandSentence] = {}
    for action, spec in inv["actions"].items():
        if action not in slots["action"]:
            raise CorpusError(f"commands templates: action {action!r} is not in slots.action {slots['action']}")
        for obj in spec["objects"]:
            if obj not in slots["object"]:
                raise CorpusError(f"commands templates: object {obj!r} of action {action!r} is not in slots.object")
            locs = [NONE, *surface["location"]] if obj in spec.get("located", []) else [NONE]
            for t in spec["templates"]:
                text_t, only = (t, None) if isinstance(t, str) else (t["text"], t.get("objects"))
                if only is not None and obj not in only:
                    continue
                has_obj, has_loc = "{object}" in text_t, "{location}" in text_t
                if has_obj != (obj != NONE):
                    continue
                obj_forms = surface["object"][obj] if has_obj else [None]
                for loc in locs:
                    if loc != NONE and not has_loc:
                        continue
                    loc_forms = surface["location"][loc] if loc != NONE else [None]
                    for of, lf in itertools.product(obj_forms, loc_forms):
                        words, marks = render(text_t, of, lf)
                        text = " ".join(words)
                        if sentence_words(text) != words:
                            raise CorpusError(f"commands templates: {text_t!r} gives {text!r}, which Festival's word "
                                              "splitting reads differently (use plain lower-case words)")  # fmt: skip
                        slots_ = {"action": action, "object": obj, "location": loc}
                        s = CommandSentence(text, slots_, marks, text_t)
                        if text in out and out[text].slots != slots_:
                            raise CorpusError(f"commands templates: {text!r} is generated with two slot sets "
                                              f"{out[text].slots} and {slots_}")  # fmt: skip
                        out.setdefault(text, s)
    return list(out.values())


def select_sentences(sentences: list[CommandSentence], n: int, seed: int = 0) -> list[CommandSentence]:
    """``n`` sentences, round-robin over slot combinations (each combination's sentences and the
    order of combinations shuffled with ``seed``): combinations are about equally frequent."""
    by_combo: dict[tuple, list[CommandSentence]] = {}
    for s in sentences:
        by_combo.setdefault(s.combo, []).append(s)
    rng = np.random.default_rng(seed)
    combos = sorted(by_combo)
    pools = []
    for c in combos:
        pool = by_combo[c]
        pools.append([pool[j] for j in rng.permutation(len(pool))])
    order = [combos.index(c) for c in (combos[j] for j in rng.permutation(len(combos)))]
    if not 1 <= n <= len(sentences):
        raise CorpusError(f"data.num_sentences={n}, but the templates make {len(sentences)} distinct sentences")
    out: list[CommandSentence] = []
    for r in itertools.count():
        for k in order:
            if r < len(pools[k]):
                out.append(pools[k][r])
                if len(out) == n:
                    return out


# ----------------------------------------------------------------------------- corpus


class CommandsCorpus(SynthCorpus):
    """Festival-read spoken commands with action / object / location slots.

    Args:
        root: corpus folder (built on first use, reused after; see SynthCorpus).
        voices: Festival voices (speakers): kal, ked, slt.
        num_sentences: distinct command sentences (each read by every voice).
        seed: which sentences are chosen (see :func:`select_sentences`).
        templates_file: a JSON file like the embedded ``commands.json``.
        sample_rate, workers, max_utterances, progress: as for SynthCorpus.
    """

    name = "commands"

    def __init__(self, root: str | Path, voices=("kal", "ked", "slt"), num_sentences: int = 155, seed: int = 0,
                 templates_file: str | Path | None = None, sample_rate: int = 16000, workers: int = 2,
                 max_utterances: int | None = None, progress: bool | None = None) -> None:  # fmt: skip
        root = Path(root).expanduser().resolve()
        self.inventory = load_inventory(templates_file)
        self.commands = select_sentences(enumerate_sentences(self.inventory), int(num_sentences), int(seed))
        super().__init__(root, voices=voices, num_sentences=len(self.commands), sentences=[c.text for c in self.commands],
                         sample_rate=sample_rate, workers=workers, max_utterances=max_utterances, progress=progress)  # fmt: skip
        self.name = "commands"
        self.check_words()

    def check_words(self) -> None:
        """Every utterance's words tier must read the command's words (the slot-word indices point into it)."""
        for i in range(len(self)):
            want = self.commands[self.sentence_index(i)].words
            ann = self.annotation(i)
            got = [w.label for w in ann.tiers.get("words", []) if w.label.strip()]
            if got != want:
                raise FestivalError(f"commands corpus: utterance {ann.id!r} ({ann.path}): Festival's words tier reads "
                                    f"{got}, the command is {want}; its slot-word indices would be wrong")  # fmt: skip

    def command_item(self, i: int) -> CommandItem:
        c = self.commands[self.sentence_index(i)]
        return CommandItem(self.ids[i], c.text, dict(c.slots), dict(c.slot_words))

    def slot_classes(self) -> dict[str, list[str]]:
        """Slot -> every value of the inventory (the classifier's classes, in this order)."""
        return {s: list(self.inventory["slots"][s]) for s in SLOTS}

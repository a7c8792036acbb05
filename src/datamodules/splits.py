"""Train/validation/test splits over utterances.

``by``:
- ``utterance``: utterances assigned at random;
- ``text``: utterances grouped by their text (the same sentence read by several voices
  never crosses the split, so lexical content cannot leak) — the default for the
  synthetic corpus;
- ``speaker``: speaker-disjoint; ``test_speakers`` (and optionally ``val_speakers``) name
  them, otherwise the last speakers in sorted order are held out.
- ``timit_core``: TIMIT's standard split (``data=timit``): train = the TRAIN folder, val =
  the 50 dev speakers, test = the 24 core-test speakers (:func:`timit_core_split`);
  its bootstrap unit is the speaker.
- ``order``: fixed positions in the corpus order (``data=haskins`` sorts by file name or follows
  ``data.order_file``; ``data=tutorial_ema`` keeps the pickle's order): train = the first
  ``train_first`` utterances, val = the ``val_count`` after them (0: no validation split, for
  probes that select nothing on it, e.g. ``probe=ridge probe.alphas=[0.0]``), test = the last
  ``test_last`` (the tutorial's ``head(50)`` / ``tail(10)``); its bootstrap unit is the text.
"""

from __future__ import annotations

import logging

import numpy as np

from src.datamodules.corpus import Corpus

log = logging.getLogger(__name__)

UNITS = ("utterance", "text", "speaker")
FIXED_SPLITS = ("timit_core",)  # a corpus-defined split; its groups (bootstrap units) are speakers


class SplitError(ValueError):
    pass


def utterance_text(corpus: Corpus, i: int) -> str | None:
    """The text of utterance ``i``: its transcript, else the words of its ``words`` tier, else None."""
    ann = corpus.annotation(int(i))
    if ann.text and ann.text.strip():
        return " ".join(ann.text.lower().split())
    words = ann.tiers.get("words")
    if words:
        from src.datamodules.labels import label_norm_of

        ws = [w for w in label_norm_of(corpus).apply([w.label for w in words], "words") if w]
        if ws:
            return " ".join(ws)
    return None


def group_keys(corpus: Corpus, by: str, idx=None) -> np.ndarray:
    """The split unit of each utterance: its id (``utterance``), its text (``text``; see
    :func:`utterance_text`; an utterance without any text is its own group, with a warning)
    or its speaker (``speaker``).  These are also the units the bootstrap resamples."""
    if by in FIXED_SPLITS:
        by = "speaker"
    if by == "order":  # positions in the corpus order; its units (bootstrap) are the sentences
        by = "text"
    if by not in UNITS:
        raise SplitError(f"split.by must be one of {UNITS}; got {by!r}")
    idx = np.arange(len(corpus)) if idx is None else np.asarray(idx)
    if by == "utterance":
        return np.array([f"utt:{corpus.ids[int(i)]}" for i in idx], dtype=object).astype(str)
    if by == "speaker":
        return np.array([f"spk:{corpus.speaker(int(i))}" for i in idx], dtype=object).astype(str)
    keys, missing = [], 0
    for i in idx:
        t = utterance_text(corpus, int(i))
        if t is None:
            missing += 1
            keys.append(f"utt:{corpus.ids[int(i)]}")
        else:
            keys.append(f"text:{t}")
    if missing:
        log.warning("split.by=text: %d of %d utterances of corpus %r have no transcript and no words tier; each is its "
                    "own group, so readings of one sentence may cross splits", missing, len(idx), corpus.name)  # fmt: skip
    return np.array(keys, dtype=object).astype(str)


def check_fractions(val_fraction, test_fraction) -> None:
    """``0 < split.val_fraction``, ``0 < split.test_fraction``, their sum ``< 1`` (a training
    set must remain); otherwise a SplitError naming the config key.  A zero fraction is refused
    rather than read as "no such split": the smallest held-out set is one group, never none."""
    fr = {}
    for key, v in (("split.val_fraction", val_fraction), ("split.test_fraction", test_fraction)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise SplitError(f"{key} must be a number in (0, 1), got {v!r}") from None
        if not (np.isfinite(f) and 0 < f < 1):
            raise SplitError(f"{key} must be in (0, 1) (a fraction of the split groups held out), got {v!r}")
        fr[key] = f
    if sum(fr.values()) >= 1:
        raise SplitError(f"split.val_fraction + split.test_fraction must be < 1 (a training split must remain), "
                         f"got {fr['split.val_fraction']:g} + {fr['split.test_fraction']:g} = {sum(fr.values()):g}")  # fmt: skip


def split_utterances(
    corpus: Corpus,
    by: str = "text",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    test_speakers: list[str] | None = None,
    val_speakers: list[str] | None = None,
    seed: int = 0,
    train_first: int | None = None,
    test_last: int | None = None,
    val_count: int = 0,
) -> dict[str, np.ndarray]:
    """Utterance indices per split: {"train", "val", "test"} (sorted arrays, disjoint, covering).

    ``val_fraction`` and ``test_fraction`` (``split.val_fraction`` / ``split.test_fraction``)
    must each be in (0, 1) with a sum below 1, else a :class:`SplitError` names the key
    (checked wherever they are used: not for ``timit_core``, ``order``, or ``speaker`` with
    both ``test_speakers`` and ``val_speakers`` given)."""
    n = len(corpus)
    if by == "timit_core":

        return timit_core_split(corpus)
    if by == "order":
        return order_split(corpus, train_first, test_last, val_count)
    if by not in UNITS:
        raise SplitError(f"split.by must be utterance, text, speaker, timit_core or order; got {by!r}")
    if not (by == "speaker" and test_speakers is not None and val_speakers):
        check_fractions(val_fraction, test_fraction)
    if by == "speaker":
        spk = np.array([corpus.speaker(i) for i in range(n)])
        names = sorted(set(spk))
        if hasattr(corpus, "require_speakers"):
            corpus.require_speakers("split.by=speaker")  # names a file and says data.speaker_from=prefix
        elif "" in names:
            raise SplitError(f"split.by=speaker: corpus {corpus.name!r} has utterances without a speaker; for a flat "
                             "folder with ids like <speaker>_<rest> set data.speaker_from=prefix")  # fmt: skip
        if test_speakers is None:
            if len(names) < 2:
                raise SplitError(f"split.by=speaker needs at least 2 speakers; corpus {corpus.name!r} has {names}")
            test_speakers = names[-max(1, round(test_fraction * len(names))) :]
        unknown = sorted((set(test_speakers) | set(val_speakers or [])) - set(names))
        if unknown:
            raise SplitError(f"split speakers {unknown} are not in corpus {corpus.name!r} (speakers: {names})")
        test = np.isin(spk, test_speakers)
        if val_speakers:
            val = np.isin(spk, val_speakers)
        else:  # validation utterances from the training speakers, by text group
            rest = np.flatnonzero(~test)
            val = np.zeros(n, bool)
            val[_group_split(corpus, rest, val_fraction / max(1e-9, 1 - test_fraction), seed, "text")[1]] = True
        train = ~(test | val)
        out = {"train": np.flatnonzero(train), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}
    elif by in {"utterance", "text"}:
        idx = np.arange(n)
        rest, test = _group_split(corpus, idx, test_fraction, seed, by)
        train, val = _group_split(corpus, rest, val_fraction / max(1e-9, 1 - test_fraction), seed + 1, by)
        out = {"train": train, "val": val, "test": test}
    for k, v in out.items():
        if len(v) == 0:
            sizes = ", ".join(f"{s}={len(x)}" for s, x in out.items())
            n_groups = len(set(group_keys(corpus, "text" if by == "speaker" else by).tolist()))
            raise SplitError(
                f"split {k!r} is empty (corpus {corpus.name!r}: {n} utterances in {n_groups} "
                f"{'text' if by == 'speaker' else by} groups, split.by={by}; utterances per split: {sizes}); "
                "use more utterances or other fractions"
            )
    return out


def _group_split(corpus: Corpus, idx: np.ndarray, fraction: float, seed: int, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with about ``fraction`` of the groups held out."""
    keys = group_keys(corpus, by, idx).tolist()
    groups = sorted(set(keys))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    n_held = max(1, int(round(fraction * len(groups)))) if len(groups) > 1 else 0
    held_groups = {groups[j] for j in order[:n_held]}
    held = np.array([k in held_groups for k in keys], dtype=bool)
    return np.sort(idx[~held]), np.sort(idx[held])


def order_split(corpus: Corpus, train_first: int | None, test_last: int | None, val_count: int = 0) -> dict[str, np.ndarray]:
    """``split.by=order``: train = the first ``train_first`` utterances of the corpus order, val = the
    ``val_count`` after them (may be 0: an empty validation split), test = the last ``test_last``."""
    n = len(corpus)
    if train_first is None or test_last is None:
        raise SplitError("split.by=order needs split.train_first and split.test_last (e.g. 50 and 10: the tutorial's "
                         "head(50) / tail(10))")  # fmt: skip
    train_first, test_last, val_count = int(train_first), int(test_last), int(val_count or 0)
    if train_first < 1 or test_last < 1 or val_count < 0:
        raise SplitError(f"split.train_first and split.test_last must be >= 1 and split.val_count >= 0; got "
                         f"{train_first}, {test_last}, {val_count}")  # fmt: skip
    if train_first + val_count + test_last > n:
        raise SplitError(f"split.by=order: split.train_first={train_first} + split.val_count={val_count} + "
                         f"split.test_last={test_last} exceeds the {n} utterances of corpus {corpus.name!r}")  # fmt: skip
    return {"train": np.arange(train_first), "val": np.arange(train_first, train_first + val_count),
            "test": np.arange(n - test_last, n)}  # fmt: skip


def timit_core_split(corpus) -> dict[str, np.ndarray]:
    """The standard TIMIT split: train = TRAIN folder, val = the 50 dev speakers, test = the 24 core-test speakers.

    The other 92 TEST speakers are in no split (as in Kaldi's recipe)."""
    from src.datamodules.timit_sets import CORE_TEST_SPEAKERS, DEV_SPEAKERS

    if not hasattr(corpus, "timit_subset"):
        raise SplitError(f"split.by=timit_core needs a TIMIT corpus (data=timit) that knows each utterance's TRAIN/TEST "
                         f"folder; corpus {getattr(corpus, 'name', '?')!r} is a {type(corpus).__name__}")  # fmt: skip
    n = len(corpus)
    sub = np.array([corpus.timit_subset(i) for i in range(n)])
    spk = np.array([corpus.speaker(i).lower() for i in range(n)])
    test_part = sub == "test"
    out = {
        "train": np.flatnonzero(sub == "train"),
        "val": np.flatnonzero(test_part & np.isin(spk, sorted(DEV_SPEAKERS))),
        "test": np.flatnonzero(test_part & np.isin(spk, sorted(CORE_TEST_SPEAKERS))),
    }
    if hasattr(corpus, "entry") and any(corpus.entry(i).fields.get("sentence_type") == "sa" for i in range(n)):
        log.warning("split.by=timit_core with SA sentences (data.sentence_types includes sa): every speaker reads "
                    "SA1/SA2, so their texts are in train and test alike; the standard split excludes them")  # fmt: skip
    what = {"train": "utterances in the TRAIN folder", "val": "utterances of the 50 dev speakers (TEST folder)",
            "test": "utterances of the 24 core-test speakers (TEST folder)"}  # fmt: skip
    for k, v in out.items():
        if len(v) == 0:
            sizes = ", ".join(f"{s}={len(x)}" for s, x in out.items())
            raise SplitError(f"split.by=timit_core: split {k!r} is empty: corpus {corpus.name!r} ({n} utterances) has no "
                             f"{what[k]}; utterances per split: {sizes} (check data.root and data.filters)")  # fmt: skip
    return out

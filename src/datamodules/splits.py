"""Train/validation/test splits over utterances.

``by``:
- ``utterance``: utterances assigned at random;
- ``text``: utterances grouped by their text (the same sentence read by several voices
  never crosses the split, so lexical content cannot leak) — the default for the
  synthetic corpus;
- ``speaker``: speaker-disjoint; ``test_speakers`` (and optionally ``val_speakers``) name
  them, otherwise the last speakers in sorted order are held out.
"""

from __future__ import annotations

import numpy as np

from src.datamodules.corpus import Corpus


class SplitError(ValueError):
    pass


def split_utterances(
    corpus: Corpus,
    by: str = "text",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    test_speakers: list[str] | None = None,
    val_speakers: list[str] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Utterance indices per split: {"train", "val", "test"} (sorted arrays, disjoint, covering)."""
    n = len(corpus)
    if by == "speaker":
        spk = np.array([corpus.speaker(i) for i in range(n)])
        names = sorted(set(spk))
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
    else:
        raise SplitError(f"split.by must be utterance, text or speaker; got {by!r}")
    for k, v in out.items():
        if len(v) == 0:
            raise SplitError(
                f"split {k!r} is empty (corpus {corpus.name!r}: {n} utterances, split.by={by}); "
                "use more utterances or other fractions"
            )
    return out


def _group_split(corpus: Corpus, idx: np.ndarray, fraction: float, seed: int, by: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with about ``fraction`` of the groups held out."""
    if by == "text":
        keys = [corpus.annotation(int(i)).text or corpus.ids[int(i)] for i in idx]
    else:
        keys = [corpus.ids[int(i)] for i in idx]
    groups = sorted(set(keys))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    n_held = max(1, int(round(fraction * len(groups)))) if len(groups) > 1 else 0
    held_groups = {groups[j] for j in order[:n_held]}
    held = np.array([k in held_groups for k in keys], dtype=bool)
    return np.sort(idx[~held]), np.sort(idx[held])

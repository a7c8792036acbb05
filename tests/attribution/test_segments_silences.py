"""Phone segments use the project's one silence list (src/datamodules/labels.py SILENCE_LABELS):
the labels written out here by hand, not read from the module."""

from __future__ import annotations

import numpy as np

from src.attribution import make_segments
from src.datamodules.corpus import Interval, Utterance

SILENCES = ["", "sil", "SP", "spn", "pau", "h#", "brth", "#", "<sil>", "<sp>", "<unk>", "<noise>", "<SPN>"]


def _phones(labels):
    step = 1.0 / len(labels)
    tier = [Interval(round(i * step, 6), round((i + 1) * step, 6), lab) for i, lab in enumerate(labels)]
    return Utterance("u", np.zeros(16000, np.float32), 16000, tiers={"phones": tier})


def test_every_listed_silence_is_a_silence_phone_segment():
    for lab in SILENCES:
        s = make_segments(_phones(["ah", lab, "b"]), kind="phones")
        assert s.is_word.tolist() == [True, False, True], lab
        assert s.word_index.tolist() == [0, -1, 1], lab


def test_silence_noise_and_numbers_are_phones_not_silences():
    # changed on purpose: "silence" was a silence here before, while labels.py says it is a word
    s = make_segments(_phones(["silence", "noise", "ah"]), kind="phones")
    assert s.is_word.tolist() == [True, True, True]
    assert s.labels == ["silence", "noise", "ah"]

"""Shared analysis helpers: the one silence filter, the moved token helpers."""

from __future__ import annotations

import numpy as np
import pytest

from src.analyses.base import _drop_silences, check_finite, phone_tokens
from tests.analyses.phone_fakes import phone_corpus, prototype_acts


def test_drop_silences_keeps_speech_only():
    labels = np.array(["sil", "SP", "aa", " pau ", "", "h#", "iy", "s"])
    np.testing.assert_array_equal(_drop_silences(labels), [False, False, True, False, False, False, True, True])
    assert _drop_silences(np.array([], dtype=str)).shape == (0,)


def test_drop_silences_follows_the_run_label_normalisation():
    labels_mod = pytest.importorskip("src.datamodules.labels")
    labels = np.array(["spn", "aa", "sil"])
    np.testing.assert_array_equal(_drop_silences(labels), [False, True, False])  # MFA's spn is a silence too

    class Corpus:
        label_norm = labels_mod.LabelNormalization(drop_silences=False)

    np.testing.assert_array_equal(_drop_silences(labels, Corpus()), [True, True, True])  # kept, as in probing


def test_phone_tokens_drop_silences_and_rare_labels():
    corpus = phone_corpus([["sil", "aa", "iy", "aa", "sp"], ["aa", "iy", "s", "sil"]], ["a", "b"])
    acts = prototype_acts(corpus, {p: np.full((1, 2), float(i)) for i, p in enumerate(["sil", "aa", "iy", "sp", "s"])})
    items = phone_tokens(acts, corpus, min_count=2)
    assert sorted(items.labels.tolist()) == ["aa", "aa", "aa", "iy", "iy"]
    assert items.counts["tokens_of_rare_labels"] == 1 and items.counts["rare_labels"] == ["s"]


def test_check_finite():
    x = np.ones((3, 2), np.float16)
    assert check_finite(x, "layer 2") is not None
    x[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"layer 2 holds non-finite values \(1 inf, 0 NaN, in 1 rows\)"):
        check_finite(x, "layer 2")

"""The Festival radio phone inventory and its phonological classes and features."""

from __future__ import annotations

import doctest
from itertools import combinations

import numpy as np
import pytest

from src.datamodules import phones as ph
from src.datamodules.phones import (
    CONSONANTS,
    PHONES,
    VOWELS,
    UnknownPhoneError,
    feature_names,
    is_vowel,
    phone_classes,
    phone_info,
    phonological_features,
)


def test_inventory_is_the_40_phones_festival_emits():
    # measured: the kal/ked/slt voices on the 493 embedded sentences (see test_synth)
    expected = "aa ae ah ao aw ax ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v w y z zh"
    assert sorted(PHONES) == expected.split(" ")
    assert len(VOWELS) == 16 and len(CONSONANTS) == 24
    assert set(VOWELS) | set(CONSONANTS) == set(PHONES)


@pytest.mark.parametrize(
    "label, kind, manner, place, voiced",
    [
        ("p", "consonant", "stop", "bilabial", False),
        ("g", "consonant", "stop", "velar", True),
        ("f", "consonant", "fricative", "labiodental", False),
        ("dh", "consonant", "fricative", "dental", True),
        ("zh", "consonant", "fricative", "postalveolar", True),
        ("hh", "consonant", "fricative", "glottal", False),
        ("jh", "consonant", "affricate", "postalveolar", True),
        ("ng", "consonant", "nasal", "velar", True),
        ("l", "consonant", "liquid", "alveolar", True),
        ("y", "consonant", "glide", "palatal", True),
        ("w", "consonant", "glide", "labiovelar", True),
        ("iy", "vowel", "vowel", "high-front", True),
        ("ax", "vowel", "vowel", "mid-central", True),
        ("aa", "vowel", "vowel", "low-back", True),
        ("uw", "vowel", "vowel", "high-back", True),
        ("oy", "vowel", "diphthong", "mid-back", True),
        ("ay", "vowel", "diphthong", "low-central", True),
    ],
)
def test_classes(label, kind, manner, place, voiced):
    p = phone_info(label)
    assert (p.kind, p.manner, p.place, p.voiced) == (kind, manner, place, voiced)


def test_is_vowel_normalises_case_and_stress_and_knows_silences():
    assert [is_vowel(x) for x in ("ax", "AY1", "er0", "t", "pau", "sil", "", "ng")] == [
        True, True, True, False, False, False, False, False
    ]  # fmt: skip
    assert sum(map(is_vowel, PHONES)) == 16
    with pytest.raises(UnknownPhoneError, match=r"unknown phone 'qq'"):
        is_vowel("qq")


def test_phone_classes():
    assert phone_classes(["p", "iy", "m"], "manner") == ["stop", "vowel", "nasal"]
    assert phone_classes(["p", "b"], "voiced") == ["False", "True"]
    assert phone_classes(["uw", "iy"], "frontness") == ["back", "front"]
    with pytest.raises(ValueError, match="bad phone attribute 'colour'"):
        phone_classes(["p"], "colour")


def test_feature_matrix_values():
    x, names = phonological_features()
    assert x.shape == (40, 30) and x.dtype == np.float32 and len(names) == 30
    assert set(np.unique(x)) == {0.0, 1.0}
    row = {p: dict(zip(names, x[i])) for i, p in enumerate(PHONES)}
    on = {p: sorted(n for n, v in r.items() if v) for p, r in row.items()}
    assert on["b"] == ["manner=stop", "place=bilabial", "voiced"]
    assert on["s"] == ["manner=fricative", "place=alveolar"]
    assert on["w"] == ["manner=glide", "place=labiovelar", "rounded", "voiced"]
    assert on["uw"] == ["frontness=back", "height=high", "rounded", "tense", "voiced", "vowel"]
    assert on["ax"] == ["frontness=central", "height=mid", "reduced", "voiced", "vowel"]
    assert on["oy"] == [
        "frontness=back", "height=mid", "manner=diphthong", "offglide=front", "rounded", "tense", "voiced", "vowel"
    ]  # fmt: skip
    # Hamming distances: voicing pairs differ in one feature, every phone is distinct
    idx = {p: i for i, p in enumerate(PHONES)}

    def ham(a: str, b: str) -> int:
        return int(np.abs(x[idx[a]] - x[idx[b]]).sum())

    assert [ham(a, b) for a, b in [("p", "b"), ("s", "z"), ("t", "k"), ("iy", "ih"), ("p", "iy")]] == [
        1,
        1,
        2,
        1,
        7,
    ]
    assert all(ham(a, b) > 0 for a, b in combinations(PHONES, 2))
    assert names == feature_names()


def test_feature_matrix_for_a_subset_and_unknown_phone():
    x, _ = phonological_features(["T", "d0"])
    full, _ = phonological_features()
    np.testing.assert_array_equal(x, full[[PHONES.index("t"), PHONES.index("d")]])
    with pytest.raises(UnknownPhoneError, match="'pau'"):
        phonological_features(["pau"])


def test_doctests():
    assert doctest.testmod(ph).failed == 0

"""The one stress-digit rule (labels.strip_stress), used by label normalisation and phones.normalize."""

from __future__ import annotations

import pytest

from src.datamodules.labels import strip_stress
from src.datamodules.phones import normalize, phone_info


@pytest.mark.parametrize(("label", "want"), [("AH1", "AH"), ("ah0", "ah"), ("ER12", "ER"), ("S", "S"), ("12", "12"),
                                             ("", ""), ("a1b", "a1b")])  # fmt: skip
def test_strip_stress_literal(label, want):
    assert strip_stress(label) == want


def test_phones_normalize_uses_the_same_rule():
    assert normalize(" AH1 ") == "ah"
    assert normalize("7") == "7"  # a bare number is not a stress mark (the old phones.py rule gave "")
    assert phone_info("IY0") == phone_info("iy")

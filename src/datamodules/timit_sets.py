"""TIMIT's fixed sets, as data: the 61 -> 48 -> 39 phone folding and the standard dev / core-test speakers.

A leaf module (no imports of the project), so that the label normalisation (labels.py), the splits
(splits.py) and the reader (timit.py) can all use it without importing each other.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

PHONE_MAPS = ("timit48", "timit39")
# the 24 core-test and 50 dev speakers (../shared/CORPORA.md §5.5, from lhotse v1.33 recipes/timit.py)
CORE_TEST_SPEAKERS = frozenset(
    "fdhc0 felc0 fjlm0 fmgd0 fmld0 fnlp0 fpas0 fpkt0 mbpm0 mcmj0 mdab0 mgrt0 mjdh0 mjln0 mjmp0 mklt0 mlll0 mlnt0 "
    "mnjm0 mpam0 mtas1 mtls0 mwbt0 mwew0".split()
)
DEV_SPEAKERS = frozenset(
    "fadg0 faks0 fcal1 fcmh0 fdac1 fdms0 fdrw0 fedw0 fgjd0 fjem0 fjmg0 fjsj0 fkms0 fmah0 fmml0 fnmr0 frew0 fsem0 "
    "majc0 mbdg0 mbns0 mbwm0 mcsh0 mdlf0 mdls0 mdvc0 mers0 mgjf0 mglb0 mgwt0 mjar0 mjfc0 mjsw0 mmdb1 mmdm2 mmjr0 "
    "mmwh0 mpdf0 mrcs0 mreb0 mrjm4 mrjr0 mroa0 mrtk0 mrws1 mtaa0 mtdt0 mteb0 mthc0 mwjg0".split()
)

@lru_cache(maxsize=None)
def phone_map(name: str) -> dict[str, str | None]:
    """``timit48`` or ``timit39``: lower-case label -> folded label (``None``: deleted, i.e. ``q``).

    Covers the 61 TIMIT phones, the 48-set symbols (``timit39`` folds a ``timit48`` label as
    its sources) and the target set's own symbols (identities), so folding twice is folding once."""
    if name not in PHONE_MAPS:
        raise ValueError(f"unknown phone map {name!r}; known: {PHONE_MAPS}")
    col = 1 if name == "timit48" else 2
    text = resources.files("src.datamodules").joinpath("timit_phones.txt").read_text()
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        out[cols[0]] = cols[col] if len(cols) > col and cols[col] else None
    for line in text.splitlines():  # an already-folded 48-set label (cl, vcl, ix) folds as its 61-set sources do
        cols = line.split("\t")
        if line.startswith("#") or len(cols) < 3:
            continue
        prev = out.setdefault(cols[1], cols[col])
        if prev != cols[col]:
            raise ValueError(f"timit_phones.txt: 48-set {cols[1]!r} folds to both {prev!r} and {cols[col]!r}")
    for target in {v for v in out.values() if v}:
        out.setdefault(target, target)  # a target symbol folds to itself
    return out

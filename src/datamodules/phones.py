"""The phone inventory of the synthetic corpus: Festival's "radio" phone set (CMU lexicon).

These are the labels of the ``phones`` tier written by :mod:`src.datamodules.synth`
(lower-case ARPAbet without stress digits; ``ax`` is the reduced vowel, ``er`` the
r-coloured vowel, ``hh`` the glottal fricative). Festival's pause ``pau`` is a silence
and is not written to the tier. Measured on the 493 embedded sentences x 3 voices, the
kal, ked and slt voices emit exactly the 40 phones of :data:`PHONES`; the other members
of the radio set (``axr dx el em en hv nx``) are in the table for other lexicons.

Classes (one value per attribute, see :class:`PhoneInfo`):
- ``kind``: ``vowel`` | ``consonant``
- ``manner``: ``vowel`` | ``diphthong`` | ``stop`` | ``fricative`` | ``affricate`` |
  ``nasal`` | ``liquid`` | ``glide``
- ``place`` (consonants): ``bilabial`` | ``labiodental`` | ``labiovelar`` | ``dental`` |
  ``alveolar`` | ``postalveolar`` | ``palatal`` | ``velar`` | ``glottal``;
  (vowels) ``<height>-<frontness>``, e.g. ``high-front``; diphthongs by their onset.
- ``height`` (vowels): ``high`` | ``mid`` | ``low``; ``frontness``: ``front`` |
  ``central`` | ``back``; ``offglide`` (diphthongs): ``front`` | ``back``
- booleans: ``voiced`` (all vowels, voiced consonants), ``rounded`` (rounded vowels and
  ``w``), ``tense`` (tense vowels and diphthongs), ``rhotic`` (``er``, ``r``),
  ``reduced`` (``ax``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src.datamodules.labels import SILENCE_LABELS, strip_stress


class UnknownPhoneError(ValueError):
    """A label that is not in the phone table."""


@dataclass(frozen=True)
class PhoneInfo:
    label: str
    kind: str  # vowel | consonant
    manner: str
    place: str
    voiced: bool
    height: str = ""  # vowels only
    frontness: str = ""  # vowels only
    rounded: bool = False
    tense: bool = False  # vowels: tense (long) vs lax
    rhotic: bool = False  # r-coloured: er, axr, r
    reduced: bool = False  # the reduced vowels ax, axr
    offglide: str = ""  # diphthongs: front (ay ey oy) | back (aw ow)
    example: str = ""

    @property
    def is_vowel(self) -> bool:
        return self.kind == "vowel"


def _v(
    label: str, height: str, front: str, rounded: bool, tense: bool, example: str, offglide: str = "", **kw
) -> PhoneInfo:
    manner = "diphthong" if offglide else "vowel"
    return PhoneInfo(
        label, "vowel", manner, f"{height}-{front}", True, height, front, rounded, tense,
        offglide=offglide, example=example, **kw,
    )  # fmt: skip


def _c(label: str, manner: str, place: str, voiced: bool, example: str, **kw) -> PhoneInfo:
    return PhoneInfo(label, "consonant", manner, place, voiced, example=example, **kw)


# Classes follow standard descriptions of General American English (IPA chart values);
# Festival's own radio feature table is sparse and marked "wrong" by its author.
_TABLE: list[PhoneInfo] = [
    # monophthongs
    _v("iy", "high", "front", False, True, "beet"),
    _v("ih", "high", "front", False, False, "bit"),
    _v("eh", "mid", "front", False, False, "bet"),
    _v("ae", "low", "front", False, False, "bat"),
    _v("aa", "low", "back", False, True, "father"),
    _v("ao", "mid", "back", True, True, "law"),
    _v("ah", "mid", "central", False, False, "but"),
    _v("ax", "mid", "central", False, False, "about", reduced=True),
    _v("er", "mid", "central", False, True, "bird", rhotic=True),
    _v("uh", "high", "back", True, False, "book"),
    _v("uw", "high", "back", True, True, "boot"),
    # diphthongs (height, frontness and rounding of their onset)
    _v("ey", "mid", "front", False, True, "bait", offglide="front"),
    _v("ay", "low", "central", False, True, "bite", offglide="front"),
    _v("oy", "mid", "back", True, True, "boy", offglide="front"),
    _v("aw", "low", "central", False, True, "bout", offglide="back"),
    _v("ow", "mid", "back", True, True, "boat", offglide="back"),
    # stops
    _c("p", "stop", "bilabial", False, "pin"),
    _c("b", "stop", "bilabial", True, "bin"),
    _c("t", "stop", "alveolar", False, "tin"),
    _c("d", "stop", "alveolar", True, "din"),
    _c("k", "stop", "velar", False, "kin"),
    _c("g", "stop", "velar", True, "give"),
    # affricates
    _c("ch", "affricate", "postalveolar", False, "chin"),
    _c("jh", "affricate", "postalveolar", True, "gin"),
    # fricatives
    _c("f", "fricative", "labiodental", False, "fin"),
    _c("v", "fricative", "labiodental", True, "vine"),
    _c("th", "fricative", "dental", False, "thin"),
    _c("dh", "fricative", "dental", True, "this"),
    _c("s", "fricative", "alveolar", False, "sin"),
    _c("z", "fricative", "alveolar", True, "zoo"),
    _c("sh", "fricative", "postalveolar", False, "shin"),
    _c("zh", "fricative", "postalveolar", True, "measure"),
    _c("hh", "fricative", "glottal", False, "hat"),
    # nasals
    _c("m", "nasal", "bilabial", True, "mat"),
    _c("n", "nasal", "alveolar", True, "net"),
    _c("ng", "nasal", "velar", True, "sing"),
    # liquids and glides
    _c("l", "liquid", "alveolar", True, "let"),
    _c("r", "liquid", "alveolar", True, "red", rhotic=True),
    _c("w", "glide", "labiovelar", True, "wet", rounded=True),
    _c("y", "glide", "palatal", True, "yet"),
]
# Members of the radio phone set that the CMU lexicon of the embedded voices does not emit.
_EXTRA: list[PhoneInfo] = [
    _v("axr", "mid", "central", False, False, "butter", rhotic=True, reduced=True),
    _c("dx", "stop", "alveolar", True, "butter (flap)"),
    _c("el", "liquid", "alveolar", True, "bottle (syllabic)"),
    _c("em", "nasal", "bilabial", True, "rhythm (syllabic)"),
    _c("en", "nasal", "alveolar", True, "button (syllabic)"),
    _c("hv", "fricative", "glottal", True, "ahead"),
    _c("nx", "nasal", "alveolar", True, "winner (flap)"),
]

PHONE_TABLE: dict[str, PhoneInfo] = {p.label: p for p in _TABLE + _EXTRA}
PHONES: tuple[str, ...] = tuple(p.label for p in _TABLE)  # the 40 phones the embedded voices emit
VOWELS: tuple[str, ...] = tuple(p.label for p in _TABLE if p.is_vowel)
CONSONANTS: tuple[str, ...] = tuple(p.label for p in _TABLE if not p.is_vowel)
# one list of silence / noise labels for the whole project (src/datamodules/labels.py)
SILENCES: frozenset[str] = frozenset(SILENCE_LABELS)

MANNERS = ("vowel", "diphthong", "stop", "fricative", "affricate", "nasal", "liquid", "glide")
PLACES = (
    "bilabial", "labiodental", "labiovelar", "dental", "alveolar", "postalveolar", "palatal", "velar", "glottal",
)  # fmt: skip
HEIGHTS = ("high", "mid", "low")
FRONTNESS = ("front", "central", "back")


def normalize(label: str) -> str:
    """Lower case, stress digits dropped (``AH1`` -> ``ah``; labels.py's :func:`strip_stress`)."""
    return strip_stress(label.strip().lower())


def phone_info(label: str) -> PhoneInfo:
    """Class table entry of a phone label (stress digits and case are ignored)."""
    key = normalize(label)
    if key not in PHONE_TABLE:
        raise UnknownPhoneError(f"unknown phone {label!r}; known phones: {' '.join(sorted(PHONE_TABLE))}")
    return PHONE_TABLE[key]


def is_vowel(label: str) -> bool:
    """True for vowels and diphthongs; False for consonants and silences (``pau``, ``sil``, ``""``).

    >>> [is_vowel(x) for x in ("ax", "AY1", "t", "pau")]
    [True, True, False, False]
    """
    key = normalize(label)
    if key in SILENCES:
        return False
    return phone_info(key).is_vowel


def phone_classes(labels: Sequence[str], attribute: str) -> list[str]:
    """One class per label for ``attribute`` (``kind``, ``manner``, ``place``, ``height``,
    ``frontness``, ``voiced``, ``rounded``) as strings, e.g. for probing targets."""
    if attribute not in PhoneInfo.__dataclass_fields__ or attribute in ("label", "example"):
        raise ValueError(f"bad phone attribute {attribute!r}")
    return [str(getattr(phone_info(x), attribute)) for x in labels]


def phonological_order(labels: Sequence[str]) -> list[int]:
    """Positions of ``labels`` in phonological order, for heatmap rows: by manner (:data:`MANNERS`: vowels,
    diphthongs, stops, fricatives, affricates, nasals, liquids, glides), then consonants by place
    (:data:`PLACES`, front to back) and voicing, vowels by height and frontness; labels outside the phone
    table (and silences) last, alphabetically. Stable: equal labels keep their order.

    >>> [["t", "aa", "p", "iy", "xx", "s"][i] for i in phonological_order(["t", "aa", "p", "iy", "xx", "s"])]
    ['iy', 'aa', 'p', 't', 's', 'xx']
    """

    def key(label: str) -> tuple:
        try:
            info = phone_info(label)
        except UnknownPhoneError:
            return (1, 0, 0, 0, 0, normalize(label))
        manner = MANNERS.index(info.manner) if info.manner in MANNERS else len(MANNERS)
        if info.is_vowel:
            a = HEIGHTS.index(info.height) if info.height in HEIGHTS else len(HEIGHTS)
            b = FRONTNESS.index(info.frontness) if info.frontness in FRONTNESS else len(FRONTNESS)
        else:
            a, b = (PLACES.index(info.place) if info.place in PLACES else len(PLACES)), 0
        return (0, manner, a, b, int(info.voiced), info.label)

    keys = [key(str(x)) for x in labels]
    return sorted(range(len(keys)), key=lambda i: keys[i])


def manner_of(label: str) -> str:
    """The manner class of a phone label (:data:`MANNERS`), or ``other`` for labels outside the phone table."""
    try:
        return phone_info(label).manner
    except UnknownPhoneError:
        return "other"


def feature_names() -> list[str]:
    """Names of the columns of :func:`phonological_features`."""
    return (
        ["vowel", "voiced", "rounded", "rhotic", "tense", "reduced"]
        + [f"manner={m}" for m in MANNERS[1:]]  # vowel manner == the vowel column
        + [f"place={p}" for p in PLACES]
        + [f"height={h}" for h in HEIGHTS]
        + [f"frontness={f}" for f in FRONTNESS]
        + ["offglide=front", "offglide=back"]
    )


def phonological_features(phones: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Binary feature matrix of ``phones`` (default :data:`PHONES`) for model RDMs.

    Returns ``(X, names)`` with ``X`` of shape ``(P, F)``, ``F = 30``: ``vowel``,
    ``voiced``, ``rounded``, ``rhotic``, ``tense``, ``reduced``, one-hot manner
    (diphthong, stop, fricative, affricate, nasal, liquid, glide), one-hot consonant place
    (9), one-hot vowel height (3) and frontness (3), diphthong offglide (front, back).
    Consonants have all-zero vowel columns and vice versa; every two of the 40
    :data:`PHONES` differ in at least one column.

    >>> X, names = phonological_features(["p", "b", "iy"])
    >>> X.shape, int(abs(X[0] - X[1]).sum()), names[:3]
    ((3, 30), 1, ['vowel', 'voiced', 'rounded'])
    """
    phones = list(PHONES if phones is None else phones)
    names = feature_names()
    col = {n: j for j, n in enumerate(names)}
    x = np.zeros((len(phones), len(names)), dtype=np.float32)  # (P, F)
    for i, label in enumerate(phones):
        p = phone_info(label)
        x[i, col["vowel"]] = p.is_vowel
        x[i, col["voiced"]] = p.voiced
        x[i, col["rounded"]] = p.rounded
        x[i, col["rhotic"]] = p.rhotic
        x[i, col["tense"]] = p.tense
        x[i, col["reduced"]] = p.reduced
        if p.offglide:
            x[i, col[f"offglide={p.offglide}"]] = 1
        if p.manner != "vowel":
            x[i, col[f"manner={p.manner}"]] = 1
        if p.is_vowel:
            x[i, col[f"height={p.height}"]] = 1
            x[i, col[f"frontness={p.frontness}"]] = 1
        else:
            x[i, col[f"place={p.place}"]] = 1
    return x, names

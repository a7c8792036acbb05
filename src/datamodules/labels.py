"""One label normalisation for every consumer of a tier (probing tasks and analyses alike).

Applied where tiers become items (:mod:`src.datamodules.alignment` views and the stress
task), so ``train.py`` and ``analyze.py`` see the same phone set of one corpus.  Steps, in
order, for every interval label of a tier:

1. Unicode normalisation (``NFC`` by default): an IPA label typed as NFD (``e`` + combining
   acute) and as NFC (``é``) is one class.
2. Surrounding whitespace stripped.
3. Silence / noise labels (``sil``, ``sp``, ``spn``, ``pau``, ``h#``, ``<sil>``, empty, ...;
   compared case-insensitively) dropped: their frames are unlabelled, their segments are
   not items.  ``drop_silences: false`` keeps them as classes.
4. Case: ``lower`` (default), ``upper`` or ``keep``.  ARPAbet from MFA (``AA1``) and
   Festival (``aa``) differ only in case; with ``keep``, labels that differ only in case
   are counted and warned about (X-SAMPA, where case matters, needs ``keep``).
5. Stress digits: trailing digits are stripped from the labels of the tiers listed in
   ``strip_stress_tiers`` (default ``[phones]``: ``AH0``/``AH1`` -> ``ah``).  Syllable
   stress labels are a task of their own (see the stress task's ``secondary`` option).

``phone_map`` (``timit48`` | ``timit39``; default none) folds TIMIT's 61 phones on the
tiers of ``phone_map_tiers`` (default ``[phones]``) as Lee & Hon (1989) and Kaldi do
(:func:`src.datamodules.timit_sets.phone_map`): after step 2, a raw silence (``h#``, ``pau``)
is dropped as in step 3, ``q`` is deleted (``labels_<tier>_phone_deleted``), every other
label is replaced by its folded symbol (a label outside the map is a :class:`LabelError`),
and the folded label goes through steps 3-5: with ``drop_silences: true`` the 39-set's
``sil`` (pauses, ``epi`` and the closures ``bcl dcl gcl pcl tcl kcl``) is dropped (38
classes remain); ``drop_silences: false`` keeps the full 39 (or 48) classes.

Every change is counted (``labels_<tier>_*`` keys), and the counts go to the results.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

SILENCE_LABELS: tuple[str, ...] = (
    "", "sil", "sp", "spn", "pau", "h#", "brth", "#", "<sil>", "<sp>", "<unk>", "<noise>", "<spn>",
)  # fmt: skip  (never plain words: "noise" or "silence" on a words tier are words)
_STRESS = re.compile(r"(?<=\D)[0-9]+$")  # trailing digits after a non-digit ("AH1"), never a bare number


def strip_stress(label: str) -> str:
    """``label`` without its stress digits: trailing digits after a non-digit (``AH1`` -> ``AH``);
    a bare number (``"12"``) is kept.  The one stress rule of the project."""
    return _STRESS.sub("", label)


_MISSING = object()
_MEMO_MAX = 1_000_000  # distinct (label, tier) pairs remembered by one normalisation (words tiers of large corpora)


class LabelError(ValueError):
    pass


@dataclass(frozen=True)
class LabelNormalization:
    """The label normalisation of a run (``labels:`` in train.yaml / analyze.yaml)."""

    unicode: str = "NFC"  # NFC | NFD | NFKC | NFKD | none
    drop_silences: bool = True
    silences: tuple[str, ...] = SILENCE_LABELS
    case: str = "lower"  # lower | upper | keep
    strip_stress_tiers: tuple[str, ...] = ("phones",)
    phone_map: str | None = None  # none | timit48 | timit39
    phone_map_tiers: tuple[str, ...] = ("phones",)

    def __post_init__(self) -> None:
        if self.unicode not in {"NFC", "NFD", "NFKC", "NFKD", "none"}:
            raise LabelError(f"labels.unicode must be NFC, NFD, NFKC, NFKD or none; got {self.unicode!r}")
        if self.case not in {"lower", "upper", "keep"}:
            raise LabelError(f"labels.case must be lower, upper or keep; got {self.case!r}")
        object.__setattr__(self, "silences", tuple(self.silences))
        object.__setattr__(self, "strip_stress_tiers", tuple(self.strip_stress_tiers))
        object.__setattr__(self, "_silence_set", frozenset(s.strip().lower() for s in self.silences))
        object.__setattr__(self, "_memo", {})  # (label, tier) -> normalised label: a corpus has few distinct labels
        pm = None if self.phone_map in (None, "none", "null", "") else str(self.phone_map)
        object.__setattr__(self, "phone_map", pm)
        object.__setattr__(self, "phone_map_tiers", tuple(self.phone_map_tiers))
        if pm is not None:
            from src.datamodules.timit_sets import PHONE_MAPS, phone_map

            if pm not in PHONE_MAPS:
                raise LabelError(f"labels.phone_map must be none, {' or '.join(PHONE_MAPS)}; got {pm!r}")
            object.__setattr__(self, "_phone_map", phone_map(pm))
        else:
            object.__setattr__(self, "_phone_map", None)

    @classmethod
    def from_config(cls, cfg) -> LabelNormalization:
        if cfg is None:
            return cls()
        if isinstance(cfg, LabelNormalization):
            return cfg
        d = dict(cfg)
        unknown = sorted(set(d) - {"unicode", "drop_silences", "silences", "case", "strip_stress_tiers", "phone_map",
                                   "phone_map_tiers"})  # fmt: skip
        if unknown:
            raise LabelError(f"labels: unknown keys {unknown}")
        return cls(**d)

    def is_silence(self, label: str) -> bool:
        return self._text(label).lower() in self._silence_set  # type: ignore[attr-defined]

    def _text(self, label: str) -> str:
        s = str(label)
        if self.unicode != "none":
            s = unicodedata.normalize(self.unicode, s)
        return s.strip()

    def one(self, label: str, tier: str = "") -> str | None:
        """The normalised label, or ``None`` for a dropped silence."""
        s = self._text(label)
        pm = self._phone_map  # type: ignore[attr-defined]
        if pm is not None and tier in self.phone_map_tiers:
            key = s.lower()
            if key in pm:
                if pm[key] is None:
                    return None  # q: deleted, as Kaldi's map does
                if not (self.drop_silences and key in self._silence_set):  # type: ignore[attr-defined]
                    s = pm[key]
            elif key not in self._silence_set:  # type: ignore[attr-defined]
                raise LabelError(
                    f"labels.phone_map={self.phone_map}: label {s!r} on tier {tier!r} is not a TIMIT phone "
                    f"(the map covers {', '.join(sorted(pm))}); set labels.phone_map=none for other phone sets"
                )
        if self.drop_silences and s.lower() in self._silence_set:  # type: ignore[attr-defined]
            return None
        if self.case == "lower":
            s = s.lower()
        elif self.case == "upper":
            s = s.upper()
        if tier in self.strip_stress_tiers:
            s = strip_stress(s)
        return s

    def apply(self, labels: Iterable[str], tier: str = "", counts: dict | None = None) -> list[str | None]:
        """Normalise a sequence of labels of ``tier``; add what changed to ``counts``."""
        raw = [str(x) for x in labels]
        memo: dict = self._memo  # type: ignore[attr-defined]
        out = []
        for x in raw:
            o = memo.get((x, tier), _MISSING)
            if o is _MISSING:
                o = self.one(x, tier)
                if len(memo) < _MEMO_MAX:
                    memo[(x, tier)] = o
            out.append(o)
        if counts is not None:
            key = f"labels_{tier or 'tier'}"
            dropped = sum(o is None for o in out)
            changed = sum(o is not None and o != r for o, r in zip(out, raw))
            pm = self._phone_map  # type: ignore[attr-defined]
            if pm is not None and tier in self.phone_map_tiers:
                deleted = sum(o is None and pm.get(self._text(r).lower(), "") is None for o, r in zip(out, raw))
                if deleted:
                    counts[f"{key}_phone_deleted"] = counts.get(f"{key}_phone_deleted", 0) + deleted
                    dropped -= deleted
            if dropped:
                counts[f"{key}_silence_dropped"] = counts.get(f"{key}_silence_dropped", 0) + dropped
            if changed:
                counts[f"{key}_changed"] = counts.get(f"{key}_changed", 0) + changed
        return out


def case_collisions(labels: Sequence[str]) -> dict[str, list[str]]:
    """Labels that differ only in case: ``{casefolded: [variants]}`` (empty when none)."""
    groups: dict[str, set[str]] = {}
    for x in set(map(str, labels)):
        groups.setdefault(x.casefold(), set()).add(x)
    return {k: sorted(v) for k, v in groups.items() if len(v) > 1}


def warn_case_collisions(labels: Sequence[str], tier: str, counts: dict) -> None:
    coll = case_collisions(labels)
    if coll:
        counts[f"labels_{tier}_differ_only_in_case"] = len(coll)
        ex = "; ".join("/".join(v) for v in list(coll.values())[:5])
        log.warning("tier %r: %d labels differ only in case (%s): they are separate classes; "
                    "set labels.case=lower to merge them", tier, len(coll), ex)  # fmt: skip


def label_norm_of(corpus) -> LabelNormalization:
    """The normalisation attached to a corpus by the entry points (default otherwise)."""
    norm = getattr(corpus, "label_norm", None)
    return norm if isinstance(norm, LabelNormalization) else DEFAULT


DEFAULT = LabelNormalization()

"""An offline articulatory corpus synthesised with VocalTractLab: speech + EMA-like sensor tracks.

VocalTractLab 2.4 (``vocaltractlab-cython``, GPL-3.0, the optional ``articulatory`` extra)
turns a sequence of German SAMPA phones with durations into a gestural score (VTL's own
rules), then into speech (44.1 kHz) and, through the same articulatory model, into the
positions of six virtual EMA sensors at 200 Hz.  Utterances are strings of pseudo-words
made of CV / CVC / CCV(C) syllables over a varied consonant and vowel set, so that tongue
back, middle and tip, lips and jaw all move.  Everything is deterministic from the seed.

Layout written under ``root`` (read back by :class:`~src.datamodules.corpus.TextGridCorpus`)::

    root/corpus.json            manifest, written last: a corpus without it is incomplete
    root/jd3/<id>.wav           16-bit PCM at ``sample_rate``, peak-normalised to 0.5
    root/jd3/<id>.TextGrid      tiers ``phones`` (SAMPA), ``syllables``, ``words``; pauses unlabelled
    root/jd3/<id>.tracks.npz    ``ema`` (200 Hz) and ``tract`` (VTL's 19 vocal-tract parameters)
    root/jd3/<id>.json          {"text": space-joined pseudo-words, "phones": ..., ...}

Conventions:
- Phone times are exactly the durations given to VTL (rounded to 1 ms, cumulative sums),
  and time 0 of every track is audio sample 0 (checked: the EMA equals VTL's own tract
  states at lag 0, and lip closure falls in the bilabial stop intervals).
- ``ema`` columns are midsagittal ``x`` (anterior, towards the lips) and ``y`` (up), in cm,
  for ``tongue_back``, ``tongue_middle``, ``tongue_tip``, ``upper_lip``, ``lower_lip``, ``jaw``
  (VTL's TB, TM, TT, UL, LL, JAW).  VTL's lateral ``z`` is dropped: it is exactly 0 for lips
  and jaw, and for the tongue points it drifts by under 1 mm (a mesh-vertex artefact,
  not an articulatory dimension; x and y move by 0.3-2.9 cm).
- ``tract`` holds VTL's vocal-tract parameters (HX ... TS3, e.g. LD lip distance, VO velum
  opening) at VTL's state rate 44100 / 110 Hz, state ``i`` at audio sample ``110 i``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datamodules.corpus import (
    CorpusError,
    Interval,
    TextGridCorpus,
    Track,
    resample,
    save_tracks,
    write_textgrid,
)
from src.fileutil import atomic_write, file_lock, read_manifest

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the articulatory corpus needs VocalTractLab: pip install -e '.[articulatory]' "
    "(vocaltractlab-cython==0.0.17, an optional GPL-3.0 extra)"
)

GENERATOR_VERSION = 1
SPEAKER = "jd3"
VTL_RATE = 44100  # VTL's audio sampling rate
VTL_STATE_SAMPLES = 110  # audio samples per vocal-tract state (gestural score -> tract sequence)
EMA_RATE = 200.0  # vtlGesturalScoreToEma writes one row every 5 ms, the first at t = 0
MIN_UTTERANCE_S = 0.7  # VTL's standard f0 contour lasts 0.61 s: shorter scores get longer than the phones
PEAK = 0.5  # written wavs are peak-normalised to this (VTL's raw level is about 0.1)

# VTL's EMA sensor abbreviations -> readable names (header of the vtlGesturalScoreToEma file)
EMA_SENSORS = {
    "TB": "tongue_back",
    "TM": "tongue_middle",
    "TT": "tongue_tip",
    "UL": "upper_lip",
    "LL": "lower_lip",
    "JAW": "jaw",
}
EMA_AXES = ("x", "y")  # the lateral z is dropped (see the module docstring)
EMA_NAMES = tuple(f"{EMA_SENSORS[s]}_{a}" for s in EMA_SENSORS for a in EMA_AXES)


class UnsupportedPhoneError(CorpusError):
    """A phone VTL does not know, or one that VTL left out of the gestural score."""


# ----------------------------------------------------------------------------- inventory
# Which gesture in VTL's gestural score realises each phone (read from VTL 2.4.2's own
# output for every phone in context).  Vowels: the vowel-tier gesture values, in order
# (diphthongs make two).  Consonants: (tier, manner suffix) of a non-neutral gesture that
# must overlap the phone's interval; the place is left free because VTL assimilates it
# (t after S becomes ``tt-postalveolar-closure``, l after S ``tt-postalveolar-lateral``).
VOWEL_GESTURES: dict[str, tuple[str, ...]] = {
    "a": ("a",), "a:": ("a",), "e": ("e",), "e:": ("e",), "E": ("E",), "E:": ("E:",),
    "i": ("i",), "i:": ("i",), "I": ("I",), "o": ("o",), "o:": ("o",), "O": ("O",),
    "u": ("u",), "u:": ("u",), "U": ("U",), "y": ("y",), "y:": ("y",), "Y": ("Y",),
    "2": ("2",), "2:": ("2",), "9": ("9",), "@": ("@",), "6": ("6",),
    "aI": ("a", "e"), "aU": ("a", "o"), "OY": ("O", "e"),
}  # fmt: skip
CONSONANT_GESTURES: dict[str, tuple[str, str]] = {
    "p": ("lip", "closure"), "b": ("lip", "closure"), "m": ("lip", "closure"),
    "pf": ("lip", "closure"), "f": ("lip", "fricative"), "v": ("lip", "fricative"),
    "t": ("tongue-tip", "closure"), "d": ("tongue-tip", "closure"), "n": ("tongue-tip", "closure"),
    "ts": ("tongue-tip", "closure"), "tS": ("tongue-tip", "closure"), "dZ": ("tongue-tip", "closure"),
    "s": ("tongue-tip", "fricative"), "z": ("tongue-tip", "fricative"),
    "S": ("tongue-tip", "fricative"), "Z": ("tongue-tip", "fricative"),
    "l": ("tongue-tip", "lateral"),
    "k": ("tongue-body", "closure"), "g": ("tongue-body", "closure"), "N": ("tongue-body", "closure"),
    "C": ("tongue-body", "fricative"), "j": ("tongue-body", "fricative"),
    "x": ("tongue-body", "fricative"), "R": ("tongue-body", "fricative"), "r": ("tongue-body", "fricative"),
    "h": ("glottal-shape", "h"), "?": ("glottal-shape", "stop"),
}  # fmt: skip
SUPPORTED_PHONES = frozenset(VOWEL_GESTURES) | frozenset(CONSONANT_GESTURES)
BILABIAL_STOPS = frozenset({"p", "b", "m"})

# What the pseudo-word generator draws from: every place (labial, labiodental, alveolar,
# postalveolar, palatal, velar, uvular, glottal) and the vowel space corners.
ONSETS = ("p", "b", "t", "d", "k", "g", "f", "v", "s", "z", "S", "C", "x", "j", "h", "m", "n", "l", "R", "ts", "pf")  # fmt: skip
CLUSTERS = (("p", "l"), ("b", "l"), ("k", "l"), ("g", "l"), ("f", "l"), ("S", "l"), ("p", "R"), ("b", "R"),
            ("t", "R"), ("d", "R"), ("k", "R"), ("g", "R"), ("f", "R"), ("S", "p"), ("S", "t"), ("S", "m"),
            ("S", "n"), ("k", "n"), ("S", "v"))  # fmt: skip
CODAS = ("p", "t", "k", "f", "s", "S", "C", "x", "m", "n", "N", "l")
VOWELS = ("a", "a:", "e:", "E", "i:", "I", "o:", "O", "u:", "U", "y:", "Y", "2:", "9", "@", "aI", "aU", "OY")

_LONG = {"a:", "e:", "E:", "i:", "o:", "u:", "y:", "2:"}
_DIPHTHONGS = {"aI", "aU", "OY"}
_BASE_DURATION = {  # seconds, before jitter and lengthening
    "stop": 0.070, "affricate": 0.100, "fricative": 0.090, "nasal": 0.065, "approximant": 0.060,
    "h": 0.060, "short": 0.080, "long": 0.130, "diphthong": 0.150,
}  # fmt: skip


def _phone_class(p: str) -> str:
    if p in VOWEL_GESTURES:
        return "diphthong" if p in _DIPHTHONGS else "long" if p in _LONG else "short"
    if p in ("ts", "pf", "tS", "dZ"):
        return "affricate"
    if p in ("p", "b", "t", "d", "k", "g", "?"):
        return "stop"
    if p in ("m", "n", "N"):
        return "nasal"
    if p in ("l", "j"):
        return "approximant"
    if p == "h":
        return "h"
    return "fricative"


# ----------------------------------------------------------------------------- utterance plans


@dataclass(frozen=True)
class UtterancePlan:
    """What to synthesise: ``phones[i]`` lasts ``durations[i]`` s; ``""`` is a pause.

    ``words`` holds, per pseudo-word, its syllables as tuples of indices into ``phones``.
    """

    id: str
    phones: tuple[str, ...]
    durations: tuple[float, ...]
    words: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def bounds(self) -> np.ndarray:
        """(n + 1,) phone boundaries in seconds: cumulative sums of the durations."""
        # the durations are whole milliseconds: sum integers, so the times are exact to 1e-12
        ms = np.rint(np.asarray(self.durations) * 1000).astype(np.int64)
        return np.concatenate([[0], np.cumsum(ms)]) / 1000.0

    @property
    def duration(self) -> float:
        return float(self.bounds[-1])

    def word_labels(self) -> list[str]:
        return ["".join(self.phones[i] for syl in w for i in syl) for w in self.words]

    @property
    def text(self) -> str:
        return " ".join(self.word_labels())

    def tiers(self) -> dict[str, list[Interval]]:
        """``phones`` (SAMPA, pauses left unlabelled), ``syllables`` and ``words``."""
        b = self.bounds
        phones = [Interval(float(b[i]), float(b[i + 1]), p) for i, p in enumerate(self.phones) if p]
        syllables, words = [], []
        for w, label in zip(self.words, self.word_labels()):
            for syl in w:
                syllables.append(
                    Interval(float(b[syl[0]]), float(b[syl[-1] + 1]), "".join(self.phones[i] for i in syl))
                )
            words.append(Interval(float(b[w[0][0]]), float(b[w[-1][-1] + 1]), label))
        return {"phones": phones, "syllables": syllables, "words": words}


def make_plan(seed: int, index: int, words_per_utterance: tuple[int, int] = (3, 6)) -> UtterancePlan:
    """The ``index``-th utterance for ``seed``: independent of how many utterances are made.

    Pseudo-words of 1-3 syllables (CV, CVC, CCV, CCVC; no cluster utterance-initially);
    phone durations by class with +-20 % jitter, 30 % lengthening of the utterance-final
    syllable, pauses at both ends; the total is at least ``MIN_UTTERANCE_S`` and 2 ms past
    a multiple of 5 ms.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    lo, hi = words_per_utterance
    if not 1 <= lo <= hi:
        raise ValueError(
            f"words_per_utterance must be (lo, hi) with 1 <= lo <= hi, got {words_per_utterance}"
        )
    phones: list[str] = [""]
    durations: list[float] = [float(rng.uniform(0.12, 0.20))]  # leading pause: VTL ramps lung pressure up
    words = []
    n_words = int(rng.integers(lo, hi + 1))
    for w in range(n_words):
        syllables = []
        n_syl = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        for s in range(n_syl):
            final = w == n_words - 1 and s == n_syl - 1
            if (w or s) and rng.random() < 0.2:  # utterance-initial clusters: VTL puts C1 in the pause
                onset = list(CLUSTERS[rng.integers(len(CLUSTERS))])
            else:
                onset = [ONSETS[rng.integers(len(ONSETS))]]
            syl = onset + [VOWELS[rng.integers(len(VOWELS))]]
            if rng.random() < 0.4:
                syl.append(CODAS[rng.integers(len(CODAS))])
            idx = []
            for k, p in enumerate(syl):
                d = _BASE_DURATION[_phone_class(p)] * rng.uniform(0.8, 1.2)
                if len(onset) > 1 and k < len(onset):
                    d *= 0.8  # consonants in clusters are shorter
                if final:
                    d *= 1.3  # phrase-final lengthening (VTL also fades the last phone)
                idx.append(len(phones))
                phones.append(p)
                durations.append(round(d, 3))
            syllables.append(tuple(idx))
        words.append(tuple(syllables))
    phones.append("")
    durations.append(round(float(rng.uniform(0.15, 0.25)), 3))
    durations[0] = round(durations[0], 3)
    total_ms = round(sum(durations) * 1000)
    # keep the score as long as its phones (see MIN_UTTERANCE_S), and end 2 ms past a 5 ms
    # EMA frame, so VTL's floor(total * 200) EMA rows stay within 1 frame of the audio
    pad = max(0, round(MIN_UTTERANCE_S * 1000) - total_ms)
    pad += (2 - (total_ms + pad)) % 5
    durations[-1] = round(durations[-1] + pad / 1000, 3)
    return UtterancePlan(f"art{index:04d}", tuple(phones), tuple(durations), tuple(words))


# ----------------------------------------------------------------------------- VocalTractLab


def vtl_available() -> bool:
    return importlib.util.find_spec("vocaltractlab_cython") is not None


def _import_vtl():
    try:
        import vocaltractlab_cython as vtl  # initialises VTL with the bundled JD3 speaker
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vtl


_LIB = None


def _vtl_lib(vtl) -> ctypes.CDLL:
    """The shared library the Cython wrapper links to; dlopen returns the same, initialised copy."""
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(vtl.__file__), "libVocalTractLabApi.so"))
        lib.vtlGesturalScoreToEma.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.vtlGesturalScoreToEma.restype = ctypes.c_int
        lib.vtlInitialize.argtypes = [ctypes.c_char_p]
        lib.vtlInitialize.restype = ctypes.c_int
        _LIB = lib
    return _LIB


@dataclass(frozen=True)
class Synthesis:
    audio: np.ndarray  # (n,) float32 at ``sample_rate``, VTL's raw level
    sample_rate: int
    tracks: dict[str, Track]  # "ema" (200 Hz, EMA_NAMES), "tract" (VTL state rate)
    gestural_score: str  # the XML VTL made from the phones


def _gesture_tiers(xml_text: str, where: str) -> tuple[dict[str, list[tuple[float, float, str]]], float]:
    """Non-neutral gestures per tier (``lip``, ``tongue-tip``, ``vowel``, ...) as (start, end, value),
    and the score's length in seconds (its longest tier)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise CorpusError(f"{where}: VTL wrote an unreadable gestural score: {e}") from e
    tiers: dict[str, list[tuple[float, float, str]]] = {}
    length = 0.0
    for seq in root.iter("gesture_sequence"):
        name = seq.get("type", "").removesuffix("-gestures")
        t, out = 0.0, []
        for g in seq.iter("gesture"):
            d = float(g.get("duration_s", "0"))
            if g.get("neutral") == "0":
                out.append((t, t + d, g.get("value", "")))
            t += d
        tiers[name] = out
        length = max(length, t)
    return tiers, length


GESTURE_TOLERANCE = 0.1  # s: VTL places some consonant gestures (laterals before stops, clusters) early


def _is_manner(value: str, manner: str) -> bool:
    return value == manner or value.endswith("-" + manner)


def check_gestural_score(
    xml_text: str, phones: Sequence[str], bounds: Sequence[float], where: str = "utterance"
) -> None:
    """Raise :class:`UnsupportedPhoneError` unless every phone is realised in the gestural score.

    VTL drops phones it does not know (``w``, ``{``, ``V``, ...) without an error, keeping
    their time in the neighbouring vowels.  Vowels must give VTL's vowel gestures in order
    (VTL adds a final ``@`` for the closing pause); each consonant needs a non-neutral
    gesture of its own (matched in order, one per consonant) of its tier and manner,
    overlapping its interval widened by ``GESTURE_TOLERANCE``; the score must last as
    long as the phones.
    """
    tiers, length = _gesture_tiers(xml_text, where)
    expected: list[tuple[str, int]] = []  # (vowel gesture, phone index)
    # the last gesture matched in each tier: one gesture per consonant, in order
    used = {tier: -1 for tier in tiers}
    for i, p in enumerate(phones):
        if not p:
            continue
        if p in VOWEL_GESTURES:
            expected += [(v, i) for v in VOWEL_GESTURES[p]]
            continue
        if p not in CONSONANT_GESTURES:
            raise UnsupportedPhoneError(f"{where}: phone {p!r} is not in VTL's German SAMPA inventory")
        tier, manner = CONSONANT_GESTURES[p]
        s, e = bounds[i] - GESTURE_TOLERANCE, bounds[i + 1] + GESTURE_TOLERANCE
        gestures = tiers.get(tier, [])
        match = next(
            (
                k
                for k in range(used.get(tier, -1) + 1, len(gestures))
                if gestures[k][0] < e and gestures[k][1] > s and _is_manner(gestures[k][2], manner)
            ),
            None,
        )
        if match is None:
            raise UnsupportedPhoneError(
                f"{where}: phone {p!r} at {bounds[i]:.3f}-{bounds[i + 1]:.3f} s has no {tier} {manner} gesture "
                f"of its own in VTL's gestural score: VTL dropped it"
            )
        used[tier] = match
    got = [v for _, _, v in tiers.get("vowel", [])]
    if len(got) == len(expected) + 1 and got[-1] == "@":
        got = got[:-1]
    same = len(got) == len(expected) and all(
        g == v or g.startswith(v + "_") for g, (v, _) in zip(got, expected)
    )
    if not same:
        raise UnsupportedPhoneError(
            f"{where}: VTL's vowel gestures {got} do not match the vowels put in "
            f"{[phones[i] for _, i in expected]}: a phone was dropped or changed"
        )
    if abs(length - bounds[-1]) > 1e-3:
        raise CorpusError(
            f"{where}: VTL's gestural score lasts {length:.4f} s but the phones last {bounds[-1]:.4f} s"
            + (
                f" (utterances shorter than {MIN_UTTERANCE_S} s get VTL's longer f0 contour)"
                if length > bounds[-1]
                else ""
            )
        )


def _read_ema(path: Path, where: str) -> np.ndarray:
    """(T, 12) x/y columns of the six sensors, in EMA_NAMES order, from VTL's EMA text file."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and not ln.startswith("#")]
    header = lines[0].split()
    data = np.loadtxt(lines[1:], dtype=np.float64, ndmin=2)  # (T, 1 + 3 * sensors)
    col = {h.split("[")[0]: j for j, h in enumerate(header)}  # "TB-x[cm]" -> "TB-x"
    try:
        cols = [col[f"{s}-{a}"] for s in EMA_SENSORS for a in EMA_AXES]
    except KeyError as e:
        raise CorpusError(f"{where}: VTL's EMA file has no column {e}; header {header}") from e
    times = data[:, col["time"]]
    if not np.allclose(times, np.arange(len(times)) / EMA_RATE, atol=1e-6):
        raise CorpusError(f"{where}: VTL's EMA rows are not at 0, 5, 10, ... ms")
    return data[:, cols].astype(np.float32)


def _read_tract_sequence(path: Path, n_tract: int) -> np.ndarray:
    """(S, n_tract) vocal-tract states from a VTL tract sequence file (glottis and tract lines alternate)."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and not ln.startswith("#")]
    n_states = int(lines[1])
    tract = np.array([ln.split() for ln in lines[3 : 3 + 2 * n_states : 2]], dtype=np.float32)  # (S, n_tract)
    if tract.shape != (n_states, n_tract):
        raise CorpusError(
            f"tract sequence {path}: expected ({n_states}, {n_tract}) states, got {tract.shape}"
        )
    return tract


def synthesize(
    phones: Sequence[str], durations: Sequence[float], sample_rate: int = 16000, where: str = "utterance"
) -> Synthesis:
    """Speech, EMA and vocal-tract parameters for German SAMPA ``phones`` (``""`` = pause).

    Runs VTL in this process (it keeps global state: use processes, not threads, to
    parallelise).  Raises :class:`UnsupportedPhoneError` for phones VTL does not realise.
    Start and end with a pause of 0.1 s or more, and keep the total at ``MIN_UTTERANCE_S``
    or more.  Durations are rounded to 1 ms; the audio lasts exactly their sum (VTL's
    last partial chunk is trimmed); the EMA has ``floor(200 * total)`` rows (+-1).
    """
    if len(phones) != len(durations) or not phones:
        raise ValueError(f"{where}: {len(phones)} phones but {len(durations)} durations")
    bad = sorted({p for p in phones if p and p not in SUPPORTED_PHONES})
    if bad:
        raise UnsupportedPhoneError(
            f"{where}: phones {bad} are not in VTL's German SAMPA inventory; supported: {sorted(SUPPORTED_PHONES)}"
        )
    ms = [round(float(d) * 1000) for d in durations]
    if min(ms) <= 0:
        raise ValueError(f"{where}: every duration must be at least 1 ms, got {min(durations)}")
    bounds = np.concatenate([[0], np.cumsum(ms)]) / 1000.0  # (n + 1,)
    vtl = _import_vtl()
    lib = _vtl_lib(vtl)
    with tempfile.TemporaryDirectory(prefix="vtl-") as tmp:  # ASCII paths, as VTL requires
        seg, ges, ema, tract = (os.path.join(tmp, n) for n in ("u.seg", "u.ges", "u.ema", "u.tract"))
        with open(seg, "w") as f:
            f.writelines(f"name = {p}; duration_s = {d / 1000:.3f};\n" for p, d in zip(phones, ms))
        vtl.phoneme_file_to_gesture_file(seg, ges)
        xml_text = Path(ges).read_text()
        check_gestural_score(xml_text, phones, bounds, where)
        audio44 = vtl.gesture_file_to_audio(ges)  # (n44,) float64
        rc = lib.vtlGesturalScoreToEma(ges.encode(), ema.encode())
        if rc == 1:  # not initialised (cannot happen after the import, but cheap to handle)
            lib.vtlInitialize(vtl.speaker_path().encode())
            rc = lib.vtlGesturalScoreToEma(ges.encode(), ema.encode())
        if rc != 0:
            raise CorpusError(f"{where}: vtlGesturalScoreToEma failed with code {rc}")
        ema_values = _read_ema(Path(ema), where)  # (T, 12)
        vtl.gesture_file_to_motor_file(ges, tract)
        tract_names = tuple(p["name"] for p in vtl.get_param_info("tract"))
        tract_values = _read_tract_sequence(Path(tract), len(tract_names))  # (S, 19)
    n_expected = round(bounds[-1] * VTL_RATE)
    # VTL synthesises whole 110-sample chunks: the audio is the phones plus < 1 chunk of the final
    # pause, trimmed here so that the audio ends where the phones end
    if not n_expected <= len(audio44) < n_expected + VTL_STATE_SAMPLES + 2:
        raise CorpusError(
            f"{where}: VTL made {len(audio44)} samples for {n_expected} expected ({bounds[-1]:.3f} s of phones)"
        )
    if abs(len(ema_values) - bounds[-1] * EMA_RATE) > 1 + 1e-6:
        raise CorpusError(f"{where}: VTL made {len(ema_values)} EMA rows for {bounds[-1]:.3f} s of phones")
    if not np.isfinite(audio44).all() or not np.isfinite(ema_values).all():
        raise CorpusError(f"{where}: VTL output contains NaN or inf")
    if (len(tract_values) - 1) * VTL_STATE_SAMPLES != len(audio44):
        raise CorpusError(
            f"{where}: {len(tract_values)} tract states do not span {len(audio44)} audio samples"
        )
    audio = resample(audio44[:n_expected].astype(np.float32), VTL_RATE, sample_rate)
    tracks = {
        "ema": Track(EMA_RATE, ema_values, EMA_NAMES),
        "tract": Track(VTL_RATE / VTL_STATE_SAMPLES, tract_values, tract_names),
    }
    return Synthesis(np.ascontiguousarray(audio, dtype=np.float32), int(sample_rate), tracks, xml_text)


def lip_aperture(ema: Track) -> np.ndarray:
    """(T,) Euclidean distance between the upper and lower lip sensors (cm)."""
    ix = [ema.names.index(f"{lip}_{a}") for lip in ("upper_lip", "lower_lip") for a in EMA_AXES]
    v = ema.values[:, ix]  # (T, 4): ul_x, ul_y, ll_x, ll_y
    return np.hypot(v[:, 0] - v[:, 2], v[:, 1] - v[:, 3])


# ----------------------------------------------------------------------------- corpus build


def _write_utterance(out_dir: str, plan: UtterancePlan, sample_rate: int) -> dict:
    """Synthesise one plan and write its four files (then a ``.done`` marker). Runs in a worker."""
    import soundfile as sf

    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(out_dir)
    where = f"utterance {plan.id!r}"
    syn = synthesize(plan.phones, plan.durations, sample_rate, where)
    peak = float(np.abs(syn.audio).max())
    if peak <= 0:
        raise CorpusError(f"{where}: VTL produced silence")
    audio = syn.audio * (PEAK / peak)
    duration = len(audio) / sample_rate
    if abs(duration - plan.duration) > 1.5 / sample_rate:
        raise CorpusError(f"{where}: audio lasts {duration:.4f} s but the phones {plan.duration:.4f} s")
    ema = syn.tracks["ema"]
    if abs(len(ema.values) - duration * ema.rate) > 1 + 1e-6:  # within one frame
        raise CorpusError(f"{where}: EMA lasts {len(ema.values) / ema.rate:.3f} s, audio {duration:.3f} s")
    sf.write(str(out / f"{plan.id}.wav"), audio, sample_rate, subtype="PCM_16")
    write_textgrid(out / f"{plan.id}.TextGrid", plan.tiers(), duration)
    save_tracks(out / f"{plan.id}.tracks.npz", syn.tracks)
    meta = {
        "text": plan.text,
        "phones": list(plan.phones),
        "durations": list(plan.durations),
        "gain": PEAK / peak,
    }
    (out / f"{plan.id}.json").write_text(json.dumps(meta))
    stats = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "duration": duration,
    }
    (out / f"{plan.id}.done").write_text(json.dumps(stats))
    return {"id": plan.id, **stats}


class SynthArticulatoryCorpus(TextGridCorpus):
    """VocalTractLab speech with EMA-like tracks, generated into ``root`` on first use.

    Args:
        root: corpus folder; generated (atomically, under a lock) if it does not hold a
            complete corpus with these settings; an existing corpus made with other
            settings is replaced (keeping its utterances when only ``num_utterances`` differs).
        num_utterances: how many utterances to generate.
        seed: utterance ``i`` depends only on ``(seed, i)``.
        sample_rate: audio rate written and read (resampled from VTL's 44.1 kHz).
        workers: processes synthesising in parallel (VTL keeps global state, so not threads).
        max_utterances: read only the first N (generation still makes ``num_utterances``).
        words_per_utterance: (min, max) pseudo-words per utterance.

    Generation costs about 6 s of CPU per second of speech (gestural score 0.7, audio 3.4,
    EMA 1.3, measured on 2 shared cores); the default 40 utterances hold 96 s of speech.
    Reading needs no VTL.
    """

    def __init__(
        self,
        root: str | Path,
        num_utterances: int = 40,
        seed: int = 0,
        sample_rate: int = 16000,
        workers: int = 2,
        max_utterances: int | None = None,
        words_per_utterance: tuple[int, int] = (3, 6),
    ) -> None:
        root = Path(root).expanduser().resolve()
        if getattr(mp.current_process(), "_inheriting", False):
            # a spawned worker re-running the parent's script: it would wait forever for the
            # lock its parent holds (multiprocessing's own check, made before the lock)
            raise RuntimeError(
                "SynthArticulatoryCorpus was constructed while a worker process imported the main "
                "script: put the script's code under `if __name__ == '__main__':`"
            )
        if num_utterances < 1:
            raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
        self.settings = {
            "generator_version": GENERATOR_VERSION,
            "num_utterances": int(num_utterances),
            "seed": int(seed),
            "sample_rate": int(sample_rate),
            "words_per_utterance": [int(words_per_utterance[0]), int(words_per_utterance[1])],
        }
        with file_lock(root / ".lock"):
            if not self._is_complete(root):
                self._build(root, int(workers))
        self.manifest = json.loads((root / "corpus.json").read_text())
        super().__init__(root, sample_rate=sample_rate, speaker_from="dir", max_utterances=max_utterances)

    # -- completeness

    def _is_complete(self, root: Path) -> bool:
        m = read_manifest(root / "corpus.json")
        if m is None:
            return False
        if m.get("settings") != self.settings:
            log.warning(
                "%s holds a corpus made with %s; regenerating for %s", root, m.get("settings"), self.settings
            )
            return False
        suffixes = (".wav", ".TextGrid", ".tracks.npz", ".json")
        return all((root / SPEAKER / f"{u['id']}{s}").exists() for u in m["utterances"] for s in suffixes)

    # -- generation

    def _build(self, root: Path, workers: int) -> None:
        if not vtl_available():
            raise ImportError(f"{root} holds no complete corpus, and {INSTALL_HINT}")
        vtl = _import_vtl()
        s = self.settings
        plans = [make_plan(s["seed"], i, tuple(s["words_per_utterance"])) for i in range(s["num_utterances"])]
        # built beside root (not inside: the reader globs root for wavs); a killed build resumes
        partial = root.parent / f".{root.name}.partial"
        out = partial / SPEAKER
        settings_file = partial / "settings.json"
        if partial.exists() and (not settings_file.exists() or json.loads(settings_file.read_text()) != s):
            shutil.rmtree(partial)
        out.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps(s))
        self._reuse_old(root, out, plans)
        done = {p.stem: json.loads(p.read_text()) for p in out.glob("*.done")}
        todo = [p for p in plans if p.id not in done]
        log.info("generating %d VocalTractLab utterances in %s (%d already done)", len(todo), root, len(done))
        t0 = time.perf_counter()
        for r in self._run(todo, str(out), s["sample_rate"], workers):
            done[r["id"]] = r
        wall = time.perf_counter() - t0
        for p in out.glob("*.done"):
            p.unlink()
        speech = sum(done[p.id]["duration"] for p in plans)
        manifest = {
            "name": "synth_articulatory",
            "settings": s,
            "vtl_version": vtl.get_version(),
            "speaker": SPEAKER,
            "license": "audio and tracks made with VocalTractLab (GPL-3.0), JD3 speaker",
            "tracks": {
                "ema": {
                    "rate": EMA_RATE,
                    "names": list(EMA_NAMES),
                    "units": "cm",
                    "note": "midsagittal x (anterior) and y (up); VTL's lateral z dropped",
                },
                "tract": {
                    "rate": VTL_RATE / VTL_STATE_SAMPLES,
                    "names": [p["name"] for p in vtl.get_param_info("tract")],
                },
            },
            "speech_seconds": speech,
            "build_wall_seconds": wall if todo else None,
            "worker_wall_seconds": sum(done[p.id]["seconds"] for p in plans),
            "cpu_seconds": sum(done[p.id].get("cpu_seconds", 0.0) for p in plans),
            "utterances": [
                {
                    "id": p.id,
                    "text": p.text,
                    "duration": done[p.id]["duration"],
                    "num_phones": sum(1 for q in p.phones if q),
                    "seconds": done[p.id]["seconds"],
                    "cpu_seconds": done[p.id].get("cpu_seconds", 0.0),
                }
                for p in plans
            ],
        }
        # swap in: the manifest goes first and comes back last, so a crash leaves no complete-looking corpus
        (root / "corpus.json").unlink(missing_ok=True)
        if (root / SPEAKER).exists():
            shutil.rmtree(root / SPEAKER)
        os.replace(out, root / SPEAKER)
        atomic_write(root / "corpus.json", json.dumps(manifest, indent=1))
        shutil.rmtree(partial)

    def _reuse_old(self, root: Path, out: Path, plans: list[UtterancePlan]) -> None:
        """Copy utterances of an existing corpus that differs only in ``num_utterances`` (same content)."""
        try:
            m = json.loads((root / "corpus.json").read_text())
        except (OSError, json.JSONDecodeError):
            return
        same = {k: v for k, v in m.get("settings", {}).items() if k != "num_utterances"}
        if same != {k: v for k, v in self.settings.items() if k != "num_utterances"}:
            return
        wanted = {p.id for p in plans}
        suffixes = (".wav", ".TextGrid", ".tracks.npz", ".json")
        for u in m.get("utterances", []):
            src = [root / SPEAKER / f"{u['id']}{x}" for x in suffixes]
            if (
                u["id"] not in wanted
                or (out / f"{u['id']}.done").exists()
                or not all(f.exists() for f in src)
            ):
                continue
            for f in src:
                shutil.copy2(f, out / f.name)
            stats = {k: u.get(k, 0.0) for k in ("seconds", "cpu_seconds")}
            (out / f"{u['id']}.done").write_text(json.dumps({**stats, "duration": u["duration"]}))

    @staticmethod
    def _run(plans: list[UtterancePlan], out: str, sample_rate: int, workers: int) -> Iterator[dict]:
        from src.progress import Progress

        if not plans:
            return
        bar = Progress(total=len(plans), desc="VocalTractLab synthesis", unit="utt")
        try:
            if workers <= 1:
                for p in plans:
                    yield _write_utterance(out, p, sample_rate)
                    bar.update()
                return
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            # spawn: VTL's global state is per process, and the parent may hold threads (torch)
            with ProcessPoolExecutor(min(workers, len(plans)), mp_context=mp.get_context("spawn")) as ex:
                futures = [ex.submit(_write_utterance, out, p, sample_rate) for p in plans]
                try:
                    for f in as_completed(futures):
                        yield f.result()
                        bar.update()
                except BrokenProcessPool as e:
                    raise CorpusError(
                        "a VocalTractLab worker process died (out of memory, killed, or a script without "
                        "`if __name__ == '__main__':`; its error is printed above)"
                    ) from e
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        finally:
            bar.close()

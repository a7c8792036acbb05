"""Haskins Production Rate Comparison (HPRC) EMA database (Tiede et al. 2017): ``data=haskins``.

Layout (../shared/CORPORA.md section 1): one MATLAB v5 ``.mat`` file per utterance, named
``{participant}_B{block}_S{sentence}_R{repetition}_{N|F}.mat`` (e.g. ``F02_B01_S26_R01_N.mat``),
usually under ``<root>/<participant>/data/``; any folder depth is accepted.  ``*palate*``
files (palate traces, not utterances) are skipped.  Each file holds one variable named after
the file stem: a 1 x C struct array with fields ``NAME, SRATE, SIGNAL, SOURCE, SENTENCE,
WORDS, PHONES, LABELS``, one element per channel.  Channels are looked up by ``NAME``
(order and count vary between files):

- ``AUDIO``: SIGNAL (N, 1) at SRATE (44.1 kHz); the only entry with metadata: SENTENCE (the
  prompt), WORDS and PHONES (structs of ``LABEL`` and ``OFFS = [start, end]`` in seconds;
  ARPAbet with stress digits, ``sp`` = pause).
- sensors (``TR TB TT UL LL ML JAW JAWL``): SIGNAL (T, 6) at SRATE (100 Hz); columns 0-2 are
  positions in mm: ``x`` posterior -> anterior, ``y`` right -> left (lateral), ``z`` inferior
  -> superior; columns 3-5 (orientation, unconfirmed) are not read.

What the reader yields (one :class:`~src.datamodules.corpus.Utterance` per file):

- ``audio`` resampled from SRATE to ``sample_rate`` (16 kHz) with ``scipy.signal.resample_poly``
  (polyphase FIR, Kaiser window: an anti-aliased resampler for the exact ratio 160/441);
- ``tiers``: ``words`` and ``phones`` from WORDS / PHONES, labels as in the file (stress
  digits kept, ``sp`` kept: the run's label normalisation drops it as silence and strips the
  digits for phone classes; ``task=stress`` reads them);
- ``tracks["ema"]``: the selected channels ``<SENSOR>_<axis>`` (default the midsagittal x and z
  of TR TB TT UL LL JAW), at the sensors' rate or, with ``ema_rate``, resampled by the named
  ``ema_resample`` method (see :func:`resample_track`); NaN samples stay NaN (masked by
  the tasks);
- ``speaker`` = participant, ``text`` = SENTENCE, ``id`` = the file stem.

Every file is read when the corpus is built, so bad input fails before any extraction with a
:class:`~src.datamodules.corpus.CorpusError` naming the file: a missing AUDIO entry, a requested
channel the file lacks (listing those it has), label times past the audio end, a filter that
selects nothing (listing the values present).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from src.datamodules.corpus import (
    HASH_CACHE_NAME,
    Corpus,
    CorpusError,
    Interval,
    Track,
    Utterance,
    audio_hashes,
    check_track_durations,
    validate_alignment,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(
    r"^(?P<participant>[A-Za-z0-9]+)_B(?P<block>\d+)_S(?P<sentence>\d+)_R(?P<repetition>\d+)_(?P<rate>[NFnf])$"
)
FIELDS = ("NAME", "SRATE", "SIGNAL", "SOURCE", "SENTENCE", "WORDS", "PHONES", "LABELS")
AXES = ("x", "y", "z")  # SIGNAL columns 0, 1, 2: posterior->anterior, right->left, inferior->superior
MIDSAGITTAL_SENSORS = ("TR", "TB", "TT", "UL", "LL", "JAW")
DEFAULT_CHANNELS = tuple(f"{s}_{a}" for s in MIDSAGITTAL_SENSORS for a in ("x", "z"))
EMA_RESAMPLE_METHODS = ("decimate", "poly", "linear")
RATE_NAMES = {"n": "N", "normal": "N", "f": "F", "fast": "F"}


# ----------------------------------------------------------------------------- helpers


def parse_name(stem: str) -> dict | None:
    """``F02_B01_S26_R01_N`` -> {participant: F02, block: 1, sentence: 26, repetition: 1, rate: N}."""
    m = NAME_RE.match(stem)
    if not m:
        return None
    g = m.groupdict()
    return {"participant": g["participant"], "block": int(g["block"]), "sentence": int(g["sentence"]),
            "repetition": int(g["repetition"]), "rate": g["rate"].upper()}  # fmt: skip


def int_values(values, prefix: str, key: str) -> set[int] | None:
    """Filter values as ints: ``1``, ``"1"``, ``"B01"`` -> 1."""
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    out = set()
    for v in values:
        s = str(v).strip()
        if s.upper().startswith(prefix):
            s = s[len(prefix) :]
        if not s.isdigit():
            raise CorpusError(f"data.{key}: {v!r} is not a number or {prefix}<number> (e.g. {prefix}01)")
        out.add(int(s))
    return out


def _rate_values(values) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = set()
    for v in values:
        r = RATE_NAMES.get(str(v).strip().lower())
        if r is None:
            raise CorpusError(f"data.rates: {v!r} is not N/normal or F/fast")
        out.add(r)
    return out


def _str(x) -> str:
    """A MATLAB char array as loadmat returns it (``array(['AUDIO'])``, or empty) -> str."""
    a = np.asarray(x)
    if a.size == 0:
        return ""
    if a.dtype.kind in "US":
        return "".join(str(s) for s in a.reshape(-1))
    if a.dtype == object:
        return _str(a.reshape(-1)[0])
    raise CorpusError(f"expected text, got an array of dtype {a.dtype}")


def _scalar(x) -> float:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size != 1:
        raise CorpusError(f"expected one number, got shape {np.shape(x)}")
    return float(a[0])


def _intervals(struct, path: Path, field: str) -> list[Interval]:
    """A WORDS / PHONES struct array (fields LABEL, OFFS [start, end] s) -> intervals."""
    a = np.asarray(struct)
    if a.size == 0:
        return []
    names = a.dtype.names or ()
    if "LABEL" not in names or "OFFS" not in names:
        raise CorpusError(f"{path}: AUDIO {field} has fields {list(names)}, expected LABEL and OFFS")
    out = []
    for e in a.reshape(-1):
        offs = np.asarray(e["OFFS"], dtype=np.float64).reshape(-1)
        if offs.size != 2:
            raise CorpusError(f"{path}: AUDIO {field} entry {_str(e['LABEL'])!r} has OFFS of shape "
                              f"{np.shape(e['OFFS'])}, expected [start, end]")  # fmt: skip
        out.append(Interval(float(offs[0]), float(offs[1]), _str(e["LABEL"])))
    return out


def resample_track(values: np.ndarray, rate: float, target_rate: float, method: str = "decimate",
                   path: str | Path = "") -> np.ndarray:  # fmt: skip
    """EMA samples ``(T, K)`` at ``rate`` -> ``target_rate``; sample ``j`` stays at time ``j / rate``.

    Methods (``data.ema_resample``):

    - ``decimate``: ``scipy.signal.decimate`` (order-8 Chebyshev type I low-pass at 0.8 x the
      new Nyquist, run forwards and backwards: zero phase) then every ``q``-th sample; an
      integer factor ``q = rate / target_rate`` only (100 -> 50 Hz: q = 2, the tutorial's step).
    - ``poly``: ``scipy.signal.resample_poly`` (polyphase FIR with a Kaiser window: anti-aliased,
      linear phase, aligned), any rational ratio; edges padded by a fitted line (``padtype='line'``).
    - ``linear``: linear interpolation at the new sample times (no anti-aliasing: for upsampling).

    NaN samples (a lost sensor) would smear through a filter: the track is filled by linear
    interpolation over them, filtered, and every output sample whose time lies within one
    input sample of a NaN is set back to NaN (masked downstream, counted by the tasks).
    """
    from scipy import signal

    if method not in EMA_RESAMPLE_METHODS:
        raise CorpusError(f"data.ema_resample must be one of {EMA_RESAMPLE_METHODS}, got {method!r}")
    if target_rate == rate:
        return values
    x = np.asarray(values, dtype=np.float64)  # (T, K)
    T = x.shape[0]
    nan = np.isnan(x)
    if nan.all(axis=0).any() or T < 2:
        filled = np.nan_to_num(x)
    else:
        filled = x.copy()
        j = np.arange(T)
        for k in np.flatnonzero(nan.any(axis=0)):
            ok = ~nan[:, k]
            filled[:, k] = np.interp(j, j[ok], x[ok, k])
    n_out = int(np.ceil(T * target_rate / rate))
    if method == "decimate":
        q = rate / target_rate
        if abs(q - round(q)) > 1e-9 or round(q) < 2:
            raise CorpusError(f"{path}: ema_resample=decimate needs an integer factor >= 2, but {rate:g} Hz -> "
                              f"{target_rate:g} Hz is x{q:.4g}; use data.ema_resample=poly")  # fmt: skip
        q = int(round(q))
        if T <= 27:  # filtfilt's default pad length for the order-8 IIR filter is 3 * 9
            raise CorpusError(
                f"{path}: {T} EMA samples are too few for ema_resample=decimate (need > 27); use poly"
            )
        out = signal.decimate(filled, q, axis=0, zero_phase=True)  # (ceil(T / q), K)
    elif method == "poly":
        r = Fraction(target_rate).limit_denominator(1000) / Fraction(rate).limit_denominator(1000)
        out = signal.resample_poly(filled, r.numerator, r.denominator, axis=0, padtype="line")
    else:
        t_out = np.arange(n_out) / target_rate
        out = np.stack(
            [np.interp(t_out * rate, np.arange(T), filled[:, k]) for k in range(x.shape[1])], axis=1
        )
    out = out[:n_out]
    if nan.any():
        src = np.arange(out.shape[0]) * rate / target_rate  # input position of each output sample
        lo = np.clip(np.floor(src).astype(np.int64) - 1, 0, T - 1)
        hi = np.clip(np.ceil(src).astype(np.int64) + 1, 0, T - 1)
        cum = np.concatenate([np.zeros((1, x.shape[1]), np.int64), np.cumsum(nan, axis=0)])  # (T + 1, K)
        out[(cum[hi + 1] - cum[lo]) > 0] = np.nan
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- reading one file


def read_hprc_mat(path: str | Path) -> dict:
    """One HPRC ``.mat`` file -> ``{"entries": {NAME: {"srate", "signal"}}, "audio_entry": {...}}``.

    ``audio_entry`` has ``srate``, ``signal`` (N,), ``source``, ``sentence``, ``words``,
    ``phones`` (lists of Interval) and ``labels`` (the LABELS struct as (name, offset_ms,
    value_ms) tuples).  Errors name the file.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), mat_dtype=True)  # SRATE is stored as uint8/uint16 without mat_dtype
    except Exception as e:
        raise CorpusError(
            f"cannot read HPRC file {path}: {e} (MATLAB v5 .mat expected; v7.3/HDF5 is not HPRC)"
        ) from e
    keys = [k for k in mat if not k.startswith("__")]
    if path.stem in mat:
        var = mat[path.stem]
    elif len(keys) == 1:
        var = mat[keys[0]]
    else:
        raise CorpusError(f"{path}: no variable named {path.stem!r} (the file stem) and not exactly one variable; "
                          f"it has {keys}")  # fmt: skip
    var = np.asarray(var)
    names = var.dtype.names or ()
    missing = [f for f in ("NAME", "SRATE", "SIGNAL") if f not in names]
    if missing:
        raise CorpusError(
            f"{path}: the struct lacks field(s) {missing}; it has {list(names)} (HPRC: {list(FIELDS)})"
        )
    entries: dict[str, dict] = {}
    audio = None
    for e in var.reshape(-1):
        name = _str(e["NAME"]).strip()
        try:
            srate = _scalar(e["SRATE"])
        except CorpusError as err:
            raise CorpusError(f"{path}: entry {name!r}: SRATE: {err}") from err
        sig = np.asarray(e["SIGNAL"])
        if sig.dtype.kind not in "iuf":
            raise CorpusError(f"{path}: entry {name!r}: SIGNAL is not numeric (dtype {sig.dtype})")
        entries[name] = {"srate": srate, "signal": sig}
        if name.upper() == "AUDIO":

            def get(f, e=e):
                return e[f] if f in names else np.zeros((0, 0))

            audio = {"srate": srate, "signal": sig.astype(np.float32).reshape(-1), "source": _str(get("SOURCE")),
                     "sentence": _str(get("SENTENCE")), "words": _intervals(get("WORDS"), path, "WORDS"),
                     "phones": _intervals(get("PHONES"), path, "PHONES"), "labels": _labels(get("LABELS"))}  # fmt: skip
    if audio is None:
        raise CorpusError(f"{path}: no AUDIO entry (entries by NAME: {list(entries)}); an HPRC utterance file has "
                          "AUDIO and the sensor entries")  # fmt: skip
    return {"entries": entries, "audio_entry": audio}


def _labels(struct) -> list[tuple[str, float, float]]:
    a = np.asarray(struct)
    if a.size == 0 or not a.dtype.names:
        return []
    return [(_str(e["NAME"]), _scalar(e["OFFSET"]), _scalar(e["VALUE"])) for e in a.reshape(-1)]


def sensor_channels(entries: dict) -> list[str]:
    """Every ``<SENSOR>_<axis>`` a file offers (sensors with a (T, >=3) SIGNAL), in file order."""
    out = []
    for name, e in entries.items():
        if name.upper() == "AUDIO":
            continue
        sig = e["signal"]
        if sig.ndim == 2 and sig.shape[1] >= 3:
            out += [f"{name}_{a}" for a in AXES]
    return out


# ----------------------------------------------------------------------------- the corpus


class HaskinsCorpus(Corpus):
    """HPRC ``.mat`` files under ``root`` as utterances (see the module docstring).

    Args:
        root: a folder searched recursively for ``*.mat`` (``*palate*`` files skipped).
        sample_rate: audio rate returned (resampled from SRATE with ``resample_poly``).
        channels: EMA channels ``<SENSOR>_<axis>`` to read, e.g. ``[TR_x, TR_z]``; ``all``: every
            sensor's x, y and z in file order.  Default: x and z of TR TB TT UL LL JAW.
        participants, blocks, sentences, repetitions, rates: filters from the file name
            (``[F02]``, ``[1]`` or ``[B01]``, ``[S26]``, ``[R01]``, ``[N]`` / ``[normal]``); null keeps all.
        ema_rate: null keeps the sensors' rate (100 Hz); a number resamples the EMA to it.
        ema_resample: ``decimate`` | ``poly`` | ``linear`` (:func:`resample_track`).
        order_file: a text file of utterance ids (file stems, ``.mat`` suffix optional), one per
            line: the corpus takes this order (e.g. the tutorial's pickle order, written by
            ``python -m src.datamodules.tutorial_ema convert``); ids not listed are an error.
            Default: sorted by file name.
        track: the name of the EMA track (``task.track``).
        label_tolerance: label times may pass the audio end by this much (s).
        track_tolerance: the EMA may differ from the audio in duration by this much (s).
        max_utterances: keep the first N after filtering.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        channels: Sequence[str] | str | None = DEFAULT_CHANNELS,
        participants: Sequence[str] | str | None = None,
        blocks: Sequence | None = None,
        sentences: Sequence | None = None,
        repetitions: Sequence | None = None,
        rates: Sequence[str] | str | None = None,
        ema_rate: float | None = None,
        ema_resample: str = "decimate",
        order_file: str | Path | None = None,
        track: str = "ema",
        label_tolerance: float = 0.02,
        track_tolerance: float = 0.1,
        max_utterances: int | None = None,
        name: str | None = None,
        hash_cache: str | Path | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"HPRC folder {self.root} does not exist (data.root)")
        if ema_resample not in EMA_RESAMPLE_METHODS:
            raise CorpusError(
                f"data.ema_resample must be one of {EMA_RESAMPLE_METHODS}, got {ema_resample!r}"
            )
        self.sample_rate = int(sample_rate)
        self.channels = None if channels is None or channels == "all" else [str(c) for c in channels]
        self.ema_rate = None if ema_rate is None else float(ema_rate)
        self.ema_resample = ema_resample
        self.track = track
        self.label_tolerance, self.track_tolerance = float(label_tolerance), float(track_tolerance)
        self.name = name or f"haskins_{self.root.name}"
        self.hash_cache = Path(hash_cache) if hash_cache is not None else self.root / HASH_CACHE_NAME
        files = sorted(
            (p for p in self.root.rglob("*.mat") if "palate" not in p.name.lower()), key=lambda p: p.stem
        )
        if not files:
            raise CorpusError(f"HPRC folder {self.root} holds no .mat files (other than *palate*)")
        parsed, odd = [], []
        for p in files:
            info = parse_name(p.stem)
            (parsed.append((p, info)) if info else odd.append(p))
        if odd:
            log.warning("%d .mat files in %s do not follow the HPRC name <participant>_B<nn>_S<nn>_R<nn>_<N|F> "
                        "and are left out, e.g. %s", len(odd), self.root, odd[0])  # fmt: skip
        if not parsed:
            raise CorpusError(f"no .mat file in {self.root} is named <participant>_B<nn>_S<nn>_R<nn>_<N|F>.mat "
                              f"(e.g. F02_B01_S26_R01_N.mat); found e.g. {odd[0].name}")  # fmt: skip
        stems = [p.stem for p, _ in parsed]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            where = [str(p) for p, _ in parsed if p.stem == dup[0]]
            raise CorpusError(f"HPRC folder {self.root}: utterance {dup[0]!r} occurs twice: {where}")
        filters = {
            "participants": ("participant", None if participants is None else
                             {str(v).strip().upper() for v in ([participants] if isinstance(participants, str) else participants)}),
            "blocks": ("block", int_values(blocks, "B", "blocks")),
            "sentences": ("sentence", int_values(sentences, "S", "sentences")),
            "repetitions": ("repetition", int_values(repetitions, "R", "repetitions")),
            "rates": ("rate", _rate_values(rates)),
        }  # fmt: skip
        kept = parsed
        for key, (field, want) in filters.items():
            if want is None:
                continue
            sel = [
                (p, i) for p, i in kept if (i[field].upper() if field == "participant" else i[field]) in want
            ]
            if not sel:
                present = sorted({i[field] for _, i in kept})
                shown = [_fmt(field, v) for v in present]
                raise CorpusError(f"data.{key}={sorted(_fmt(field, v) for v in want)} selects no file in {self.root}; "
                                  f"the {field} values present{' after the other filters' if kept is not parsed else ''} "
                                  f"are {shown}")  # fmt: skip
            kept = sel
        if order_file is not None:
            kept = self._ordered(kept, Path(order_file))
        if max_utterances is not None:
            kept = kept[: int(max_utterances)]
        self._files = [p for p, _ in kept]
        self._info = [i for _, i in kept]
        self._ids = [p.stem for p in self._files]
        self._annotations: dict[int, Utterance] = {}
        self._num_samples: dict[int, int] = {}
        for i in range(len(self._files)):  # every file read now: bad input fails before any extraction
            self._annotations[i] = self._load(i, with_audio=False)

    def _ordered(self, kept: list, order_file: Path) -> list:
        if not order_file.is_file():
            raise CorpusError(f"data.order_file {order_file} does not exist")
        want = [ln.strip().removesuffix(".mat") for ln in order_file.read_text().splitlines() if ln.strip()]
        by = {p.stem: (p, i) for p, i in kept}
        missing = [w for w in want if w not in by]
        if missing:
            raise CorpusError(f"data.order_file {order_file} lists {len(missing)} utterances not among the selected "
                              f"files of {self.root}, e.g. {missing[0]!r}")  # fmt: skip
        unlisted = [s for s in by if s not in set(want)]
        if unlisted:
            raise CorpusError(f"data.order_file {order_file} does not list {len(unlisted)} selected utterances, e.g. "
                              f"{unlisted[0]!r}: list them or narrow the filters")  # fmt: skip
        return [by[w] for w in want]

    # -- Corpus interface

    def __len__(self) -> int:
        return len(self._files)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def speaker(self, i: int) -> str:
        return self._info[i]["participant"]

    def info(self, i: int) -> dict:
        """Participant, block, sentence, repetition and rate of utterance ``i`` (from its file name)."""
        return dict(self._info[i])

    def annotation(self, i: int) -> Utterance:
        return self._annotations[i]

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        return self._load(i, with_audio=True)

    def num_samples(self, i: int) -> int:
        return self._num_samples[i]

    def _audio(self, audio_entry: dict, path: Path) -> np.ndarray:
        sig, sr = audio_entry["signal"], audio_entry["srate"]
        if sig.size == 0:
            raise CorpusError(f"{path}: the AUDIO entry has an empty SIGNAL")
        if not np.isfinite(sig).all():
            raise CorpusError(f"{path}: the AUDIO SIGNAL contains NaN or inf samples")
        if int(round(sr)) != self.sample_rate:
            from scipy.signal import resample_poly

            # polyphase FIR resampling with scipy's Kaiser-window anti-aliasing filter, exact ratio (44.1 -> 16 kHz: 160/441)
            r = Fraction(self.sample_rate, int(round(sr)))
            sig = resample_poly(sig.astype(np.float64), r.numerator, r.denominator)
        return np.ascontiguousarray(sig, dtype=np.float32)

    def _tracks(self, entries: dict, path: Path) -> dict[str, Track]:
        have = sensor_channels(entries)
        want = have if self.channels is None else self.channels
        missing = [c for c in want if c not in have]
        if missing:
            raise CorpusError(f"{path}: no channel(s) {missing} (data.channels); the file has {have}")
        if not want:
            return {}
        rates = {}
        cols = []
        for c in want:
            sensor, axis = c.rsplit("_", 1)
            e = entries[sensor]
            rates[sensor] = e["srate"]
            cols.append(np.asarray(e["signal"], dtype=np.float64)[:, AXES.index(axis)])
        if len(set(rates.values())) > 1:
            raise CorpusError(f"{path}: the selected sensors have different rates {rates}")
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise CorpusError(
                f"{path}: the selected sensors have different numbers of samples {sorted(lengths)}"
            )
        rate = next(iter(rates.values()))
        values = np.stack(cols, axis=1)  # (T, K)
        if self.ema_rate is not None and self.ema_rate != rate:
            values = resample_track(values, rate, self.ema_rate, self.ema_resample, path)
            rate = self.ema_rate
        return {self.track: Track(float(rate), values.astype(np.float32), tuple(want))}

    def _load(self, i: int, with_audio: bool) -> Utterance:
        p = self._files[i]
        data = read_hprc_mat(p)
        a = data["audio_entry"]
        tracks = self._tracks(data["entries"], p)
        audio = self._audio(a, p)
        self._num_samples[i] = len(audio)
        utt = Utterance(id=self._ids[i], audio=audio if with_audio else np.zeros(0, np.float32),
                        sample_rate=self.sample_rate, speaker=self._info[i]["participant"], text=a["sentence"],
                        tiers={"words": a["words"], "phones": a["phones"]}, tracks=tracks, path=str(p))  # fmt: skip
        duration = len(audio) / self.sample_rate
        validate_alignment(utt, tolerance=self.label_tolerance, duration=duration)
        check_track_durations(tracks, duration, p, self.track_tolerance, 0.05)
        return utt

    @property
    def fingerprint(self) -> str:
        """sha256 over the sample rate, the ids and every file's contents (hashes cached by file stat)."""
        hashes = audio_hashes(self._files, self.hash_cache, self.root)
        h = hashlib.sha256()
        h.update(f"hprc-v1:{self.sample_rate}:resample_poly".encode())
        for uid, p in zip(self._ids, self._files):
            h.update(f"{uid}:{hashes[p]}".encode())
        return h.hexdigest()[:16]


def _fmt(field: str, v) -> str:
    return {"block": f"B{v:02d}", "sentence": f"S{v:02d}", "repetition": f"R{v:02d}"}.get(field, str(v)) \
        if isinstance(v, int) else str(v)  # fmt: skip

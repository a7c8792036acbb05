"""The Interspeech 2025 tutorial's EMA probing files: ``data=tutorial_ema``.

The tutorial (notebooks "probing" and "representation_space_comparisons"; ../shared/CORPORA.md
section 1.4) ships, per participant ``P`` (F02, M02):

- ``ema_audio_<P>.pkl``: a pickled pandas DataFrame, one row per utterance, columns
  ``FILENAME`` (``F02_B01_S26_R01_N.mat``), ``SENTENCE``, ``AUDIO`` (float32 array at 16 kHz);
- ``ema_labels_<P>.csv``: one row per EMA frame at 50 Hz, columns ``FILENAME, SENTENCE, TIMESTEP``
  and ``TR_X, TR_Y, TB_X, TB_Y, TT_X, TT_Y, UL_X, UL_Y, LL_X, LL_Y, JAW_X, JAW_Y`` (mm).  ``_X`` is
  posterior -> anterior and ``_Y`` is right -> left (lateral; HPRC column 1, not vertical).

Loading a pickle runs code from the file, so the reader refuses ``.pkl`` unless
``data.allow_pickle=true`` (then it warns).  The safe alternative, once::

    python -m src.datamodules.tutorial_ema convert ema_audio_F02.pkl <out_dir>

writes ``<out_dir>/ema_audio_F02.json`` (rows in the pickle's order: FILENAME, SENTENCE and the
wav path), ``<out_dir>/ema_audio_F02/<stem>.wav`` (float32, 16 kHz, bit-exact), copies
``ema_labels_F02.csv`` beside it when it sits next to the pickle, and writes
``order_F02.txt`` (the stems in the pickle's order, for ``data=haskins data.order_file=...``).
The reader prefers ``ema_audio_<P>.json`` when both exist.

Utterances (in the DataFrame's row order, as the notebooks use it): ``id`` = FILENAME without
``.mat``, ``speaker`` = P, ``text`` = SENTENCE, ``tracks["ema"]`` = the selected channels at
50 Hz named ``<SENSOR>_x`` / ``<SENSOR>_y`` (the CSV's ``_X`` / ``_Y``, the axis names of
``data=haskins``), rows sorted by TIMESTEP.  No tiers (the files have none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.datamodules.corpus import Corpus, CorpusError, Track, Utterance, check_track_durations, resample
from src.datamodules.haskins import _rate_values, int_values, parse_name

log = logging.getLogger(__name__)

SENSORS = ("TR", "TB", "TT", "UL", "LL", "JAW")
CSV_CHANNELS = tuple(f"{s}_{a}" for s in SENSORS for a in ("X", "Y"))
META_COLUMNS = ("FILENAME", "SENTENCE", "TIMESTEP")


def channel_name(csv_column: str) -> str:
    """``TR_X`` -> ``TR_x`` (the axis names of data=haskins)."""
    s, _, a = csv_column.rpartition("_")
    return f"{s}_{a.lower()}"


def _read_pickle(path: Path, allow_pickle: bool):
    if not allow_pickle:
        raise CorpusError(
            f"{path} is a pickle, and loading a pickle runs code from the file; it is read only with "
            f"data.allow_pickle=true. Safer: convert it once with `python -m src.datamodules.tutorial_ema convert "
            f"{path} <out_dir>` and use data.root=<out_dir>"
        )
    import pandas as pd

    warnings.warn(f"reading the pickle {path} (data.allow_pickle=true): it can run code; convert it with "
                  "`python -m src.datamodules.tutorial_ema convert` to avoid this", stacklevel=3)  # fmt: skip
    try:
        df = pd.read_pickle(path)
    except Exception as e:
        raise CorpusError(f"cannot read the pickle {path}: {e}") from e
    if not hasattr(df, "columns"):
        raise CorpusError(f"{path} does not hold a pandas DataFrame (got {type(df).__name__})")
    missing = [c for c in ("FILENAME", "SENTENCE", "AUDIO") if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: no column(s) {missing}; it has {list(df.columns)}")
    return [{"FILENAME": str(r.FILENAME), "SENTENCE": str(r.SENTENCE), "AUDIO": r.AUDIO}
            for r in df.itertuples(index=False)]  # fmt: skip


def _read_json(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
    except Exception as e:
        raise CorpusError(f"cannot read {path}: {e}") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CorpusError(f"{path}: expected a list of {{FILENAME, SENTENCE, wav}} objects")
    for r in rows:
        missing = [k for k in ("FILENAME", "SENTENCE", "wav") if k not in r]
        if missing:
            raise CorpusError(f"{path}: a row lacks {missing}; it has {sorted(r)}")
    return rows


def _read_labels(path: Path) -> dict[str, np.ndarray]:
    """``ema_labels_<P>.csv`` -> {FILENAME: (T, 12) float64 in CSV_CHANNELS order, rows by TIMESTEP}."""
    import pandas as pd

    if not path.is_file():
        raise CorpusError(f"EMA labels file {path} does not exist (the tutorial's ema_labels_<P>.csv)")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise CorpusError(f"cannot read {path}: {e}") from e
    missing = [c for c in ("FILENAME", "TIMESTEP", *CSV_CHANNELS) if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: no column(s) {missing}; it has {list(df.columns)}")
    out = {}
    for fn, g in df.groupby("FILENAME", sort=False):
        g = g.sort_values("TIMESTEP", kind="stable")
        ts = g["TIMESTEP"].to_numpy()
        if len(ts) and (ts != np.arange(len(ts))).any():
            raise CorpusError(
                f"{path}: the TIMESTEP values of {fn!r} are not 0, 1, 2, ... (got {ts[:5].tolist()}...)"
            )
        out[str(fn)] = g[list(CSV_CHANNELS)].to_numpy(dtype=np.float64)
    return out


class TutorialEMACorpus(Corpus):
    """The tutorial's ``ema_audio_<P>`` + ``ema_labels_<P>.csv`` files in ``root`` (module docstring).

    Args:
        root: the folder holding the files (the tutorial's ``ema_probing_data/`` or a converted copy).
        participants: e.g. ``[F02]``; null: every ``ema_audio_<P>`` found (sorted by P).
        blocks, sentences, repetitions, rates: filters on FILENAME (as data=haskins), e.g. ``blocks=[B01]``
            (the notebooks' ``FILENAME.str.contains('B01')``).
        channels: e.g. ``[TR_x, TB_x]``; null: all 12 (the CSV's order).
        allow_pickle: read ``.pkl`` files (they can run code); default false.
        audio_rate: the rate of the AUDIO arrays (16 kHz); resampled to ``sample_rate`` if different.
        ema_rate: the rate of the CSV rows (50 Hz).
    """

    def __init__(
        self,
        root: str | Path,
        participants: Sequence[str] | str | None = None,
        blocks: Sequence | None = None,
        sentences: Sequence | None = None,
        repetitions: Sequence | None = None,
        rates: Sequence[str] | str | None = None,
        channels: Sequence[str] | None = None,
        allow_pickle: bool = False,
        sample_rate: int = 16000,
        audio_rate: int = 16000,
        ema_rate: float = 50.0,
        track: str = "ema",
        track_tolerance: float = 0.1,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"tutorial EMA folder {self.root} does not exist (data.root)")
        self.sample_rate, self.audio_rate, self.ema_rate = int(sample_rate), int(audio_rate), float(ema_rate)
        self.track, self.name = track, name or f"tutorial_ema_{self.root.name}"
        found = sorted({p.stem[len("ema_audio_"):] for p in self.root.glob("ema_audio_*")
                        if p.suffix in (".pkl", ".json")})  # fmt: skip
        if not found:
            raise CorpusError(f"{self.root} holds no ema_audio_<P>.pkl or ema_audio_<P>.json file")
        if participants is not None:
            want = [participants] if isinstance(participants, str) else [str(p) for p in participants]
            absent = [p for p in want if p not in found]
            if absent:
                raise CorpusError(f"data.participants={want}: no ema_audio file for {absent} in {self.root}; "
                                  f"participants present: {found}")  # fmt: skip
            found = want
        if channels is None:
            self.channels = [channel_name(c) for c in CSV_CHANNELS]
        else:
            self.channels = [str(c) for c in channels]
            have = [channel_name(c) for c in CSV_CHANNELS]
            bad = [c for c in self.channels if c not in have]
            if bad:
                raise CorpusError(f"data.channels: no channel(s) {bad} in the tutorial's EMA; it has {have}")
        cols = [[channel_name(c) for c in CSV_CHANNELS].index(c) for c in self.channels]
        self._utts: list[Utterance] = []
        hashes = hashlib.sha256(f"tutorial-ema-v1:{self.sample_rate}".encode())
        for p in found:
            rows, src = self._rows(p, bool(allow_pickle))
            labels_path = self.root / f"ema_labels_{p}.csv"
            ema = _read_labels(labels_path)
            for r in rows:
                fn = r["FILENAME"]
                stem = fn.removesuffix(".mat")
                info = parse_name(stem)
                if info is None:
                    raise CorpusError(
                        f"{src}: FILENAME {fn!r} is not an HPRC name <P>_B<nn>_S<nn>_R<nn>_<N|F>.mat"
                    )
                if fn not in ema:
                    raise CorpusError(f"{labels_path} has no EMA rows for {fn!r} (listed in {src})")
                self._utts.append((r, src, info, ema[fn][:, cols], p))  # type: ignore[arg-type]
        self._utts = self._filter(self._utts, blocks, sentences, repetitions, rates)
        if max_utterances is not None:
            self._utts = self._utts[: int(max_utterances)]
        built = []
        for r, src, info, values, p in self._utts:  # type: ignore[misc]
            audio = r["AUDIO"] if "AUDIO" in r else self._wav(src.parent / r["wav"], src)
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            if audio.size == 0 or not np.isfinite(audio).all():
                raise CorpusError(f"{src}: the AUDIO of {r['FILENAME']!r} is empty or has NaN/inf samples")
            hashes.update(r["FILENAME"].encode() + hashlib.sha256(audio.tobytes()).digest())
            if self.audio_rate != self.sample_rate:
                audio = resample(audio, self.audio_rate, self.sample_rate)
            stem = r["FILENAME"].removesuffix(".mat")
            tracks = {self.track: Track(self.ema_rate, values.astype(np.float32), tuple(self.channels))}
            check_track_durations(tracks, len(audio) / self.sample_rate, self.root / f"ema_labels_{p}.csv",
                                  track_tolerance, 0.05)  # fmt: skip
            built.append(Utterance(stem, audio, self.sample_rate, info["participant"], r["SENTENCE"], {}, tracks,
                                   path=f"{src}#{r['FILENAME']}"))  # fmt: skip
        self._built = built
        self._fingerprint = hashes.hexdigest()[:16]

    def _rows(self, p: str, allow_pickle: bool) -> tuple[list[dict], Path]:
        js, pk = self.root / f"ema_audio_{p}.json", self.root / f"ema_audio_{p}.pkl"
        if js.is_file():
            return _read_json(js), js
        return _read_pickle(pk, allow_pickle), pk

    def _wav(self, path: Path, src: Path) -> np.ndarray:
        import soundfile as sf

        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:
            raise CorpusError(f"cannot read {path} (listed in {src}): {e}") from e
        if sr != self.audio_rate:
            raise CorpusError(f"{path}: {sr} Hz, but data.audio_rate is {self.audio_rate}")
        return data[:, 0]

    def _filter(self, utts, blocks, sentences, repetitions, rates):
        filters = {"blocks": ("block", int_values(blocks, "B", "blocks")),
                   "sentences": ("sentence", int_values(sentences, "S", "sentences")),
                   "repetitions": ("repetition", int_values(repetitions, "R", "repetitions")),
                   "rates": ("rate", _rate_values(rates))}  # fmt: skip
        for key, (field, want) in filters.items():
            if want is None:
                continue
            sel = [u for u in utts if u[2][field] in want]
            if not sel:
                from src.datamodules.haskins import _fmt

                present = sorted({u[2][field] for u in utts})
                raise CorpusError(f"data.{key}={sorted(_fmt(field, v) for v in want)} selects no utterance of "
                                  f"{self.root}; the {field} values present are {[_fmt(field, v) for v in present]}")  # fmt: skip
            utts = sel
        return utts

    def __len__(self) -> int:
        return len(self._built)

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        return self._built[i]

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self._built]

    def speaker(self, i: int) -> str:
        return self._built[i].speaker

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


def convert(pkl: str | Path, out_dir: str | Path) -> Path:
    """Pickle -> ``ema_audio_<P>.json`` + float32 wavs (+ the CSV copied, + ``order_<P>.txt``); see the module doc."""
    import soundfile as sf

    pkl, out_dir = Path(pkl), Path(out_dir)
    stem = pkl.stem
    if not stem.startswith("ema_audio_"):
        raise CorpusError(f"{pkl}: expected a file named ema_audio_<P>.pkl")
    p = stem[len("ema_audio_") :]
    rows = _read_pickle(pkl, allow_pickle=True)
    wav_dir = out_dir / stem
    wav_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        name = r["FILENAME"].removesuffix(".mat")
        audio = np.asarray(r["AUDIO"], dtype=np.float32).reshape(-1)
        sf.write(wav_dir / f"{name}.wav", audio, 16000, subtype="FLOAT")
        out.append({"FILENAME": r["FILENAME"], "SENTENCE": r["SENTENCE"], "wav": f"{stem}/{name}.wav"})
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    (out_dir / f"order_{p}.txt").write_text("".join(r["FILENAME"].removesuffix(".mat") + "\n" for r in rows))
    csv = pkl.parent / f"ema_labels_{p}.csv"
    if csv.is_file() and csv.resolve() != (out_dir / csv.name).resolve():
        shutil.copyfile(csv, out_dir / csv.name)
    return js


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "convert":
        print(
            "usage: python -m src.datamodules.tutorial_ema convert <ema_audio_P.pkl> <out_dir>",
            file=sys.stderr,
        )
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        js = convert(argv[1], argv[2])
    print(f"wrote {js} and the wavs beside it; read them with data=tutorial_ema data.root={Path(argv[2])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

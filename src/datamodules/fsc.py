"""Fluent Speech Commands (Lugosch et al. 2019) as a corpus of :class:`Utterance` with command slots.

Two layouts (``layout: auto`` tells them apart):

- ``folder``: the FSC release, ``<root>/data/{train,valid,test}_data.csv`` (columns ``path``,
  ``speakerId``, ``transcription``, ``action``, ``object``, ``location``; ``path`` relative to
  ``<root>``, e.g. ``wavs/speakers/<speaker>/<uuid>.wav``).
- ``hf``: a ``datasets`` Dataset / DatasetDict saved with ``save_to_disk`` (the tutorial's
  ``FSC_test_sampled``): columns ``audio``, ``transcription``, ``action``, ``object``,
  ``location`` (ClassLabel ints or strings), optionally ``textgrid`` (``{"words": [{"text",
  "xmin", "xmax"}, ...]}``, ``text == ""`` = silence), ``speakerId``, ``input_values``.
  Audio columns are read with ``Audio(decode=False)`` and decoded with soundfile (datasets >= 4
  would decode with torchcodec, which this project does not install).

Alignments: the ``textgrid`` column, or ``textgrid_dir`` (a folder of ``<uuid>.TextGrid`` or
``<id>.TextGrid``, e.g. from the Montreal Forced Aligner, tiers ``words``/``phones``). Without
one an utterance has no ``words`` tier, and anything that needs word segments gets the
:class:`CorpusError` of ``Utterance.tier`` naming the utterance (attribution can still use
windows or frames).

Slots: :meth:`FSCCorpus.command_item` gives the three slot values (the dataset's class names:
``none`` values may be spelled ``none_object`` / ``none_location`` as in the tutorial's
dataset). FSC does not say which words determine a slot; with an alignment, an object or
location value that is spelled as a word of the utterance (``lights``, ``kitchen``) points at
that word (a literal match, documented as a heuristic); every other slot has empty ``slot_words``.

Utterance ids: ``<speaker>__<file stem>`` (folder) or ``<file stem>`` of the audio path when
known, else ``fsc_<row>`` (hf); a duplicate id is an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np

from src.datamodules.commands import SLOTS, CommandItem
from src.datamodules.corpus import Corpus, CorpusError, Interval, Utterance, read_textgrid, resample

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train_data.csv", "valid": "valid_data.csv", "test": "test_data.csv"}


def _words_from_column(tg, uid: str) -> list[Interval]:
    """Non-empty word intervals of a ``textgrid`` cell: {"words": [{text, xmin, xmax}]} or the
    struct-of-lists form datasets uses for a sequence of dicts ({"words": {"text": [...], ...}})."""
    if tg is None:
        return []
    words = tg.get("words") if isinstance(tg, dict) else None
    if words is None:
        raise CorpusError(f"FSC utterance {uid!r}: its textgrid cell has no 'words' entry (keys {sorted(tg or {})})")
    if isinstance(words, dict):  # struct of lists
        words = [dict(zip(words, vals)) for vals in zip(*words.values())]
    out = []
    for w in words:
        try:
            text, s, e = str(w["text"]).strip(), float(w["xmin"]), float(w["xmax"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorpusError(f"FSC utterance {uid!r}: bad textgrid word entry {w!r} (needs text, xmin, xmax)") from err
        if text:
            out.append(Interval(s, e, text.lower()))
    return out


class FSCUtterance(Utterance):
    """An FSC utterance: a missing tier (no alignment) is an error that says where alignments come from."""

    def tier(self, name: str) -> list[Interval]:
        if name not in self.tiers:
            raise CorpusError(
                f"FSC utterance {self.id!r} ({self.path}) has no {name!r} tier: it has no alignment (FSC ships none). "
                "Give data.textgrid_dir (a folder of <uuid>.TextGrid, e.g. from the Montreal Forced Aligner) or a "
                "dataset with a textgrid column; attribution can still use window or frame segments"
            )
        return self.tiers[name]


def shuffled_row(n: int, seed: int, row: int = 0) -> int:
    """Index (into a dataset of ``n`` rows) of row ``row`` of ``dataset.shuffle(seed=seed)``: datasets
    shuffles with ``np.random.default_rng(seed).permutation(n)`` (checked against datasets in the tests).

    The tutorial's attribution example is ``row 0`` of the seed-85 shuffle of the seed-42-shuffled
    FSC sample: ``FSCCorpus(..., shuffle_seed=42)`` then utterance ``shuffled_row(len(corpus), 85)``."""
    if not 0 <= row < n:
        raise CorpusError(f"row {row} is outside a dataset of {n} rows")
    return int(np.random.default_rng(int(seed)).permutation(int(n))[int(row)])


class FSCCorpus(Corpus):
    """Fluent Speech Commands: one split of the folder layout or an HF dataset on disk.

    Args:
        root: the FSC folder (with ``data/`` and ``wavs/``) or a ``save_to_disk`` folder.
        split: ``train`` | ``valid`` | ``test`` (folder), or the DatasetDict key (hf; ``null``: the
            only split, else ``test``).
        layout: ``auto`` | ``folder`` | ``hf``.
        textgrid_dir: folder of TextGrids named by file stem or utterance id (optional).
        shuffle_seed: hf only: ``dataset.shuffle(seed=...)`` first (the tutorial uses 42), so row
            ``i`` is the tutorial's row ``i``.
        sample_rate: audio is returned at this rate (resampled otherwise).
        max_utterances: keep the first N rows (after shuffling and ``rows``).
        rows, rows_shuffle_seed: keep only these rows (of the ``shuffle_seed`` order), or, with
            ``rows_shuffle_seed``, these rows of a further ``shuffle(seed=rows_shuffle_seed)``: the
            tutorial's item is ``shuffle_seed=42, rows=[0], rows_shuffle_seed=85``.
        name: corpus name (results, cache paths).
    """

    def __init__(self, root: str | Path, split: str | None = "test", layout: str = "auto",
                 textgrid_dir: str | Path | None = None, shuffle_seed: int | None = None, sample_rate: int = 16000,
                 max_utterances: int | None = None, name: str = "fsc", rows: list[int] | None = None,
                 rows_shuffle_seed: int | None = None) -> None:  # fmt: skip
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"FSC folder {self.root} does not exist")
        if layout == "auto":
            layout = "folder" if (self.root / "data").is_dir() else "hf"
        if layout not in ("folder", "hf"):
            raise CorpusError(f"FSC layout must be auto, folder or hf; got {layout!r}")
        self.layout = layout
        self.sample_rate = int(sample_rate)
        self.name = name
        self.textgrid_dir = Path(textgrid_dir).expanduser() if textgrid_dir else None
        if self.textgrid_dir is not None and not self.textgrid_dir.is_dir():
            raise CorpusError(f"FSC textgrid_dir {self.textgrid_dir} does not exist")
        self._annotations: dict[int, Utterance] = {}
        self._index: list[int] | None = None
        if layout == "folder":
            self._init_folder(split or "test")
        else:
            self._init_hf(split, shuffle_seed)
        if rows is not None:  # e.g. the tutorial's item: row 0 of a further shuffle (seed 85)
            n_all = len(self._ids)
            pick = [shuffled_row(n_all, rows_shuffle_seed, int(r)) if rows_shuffle_seed is not None else int(r)
                    for r in rows]  # fmt: skip
            for r, k in zip(rows, pick):
                if not 0 <= k < n_all:
                    raise CorpusError(f"FSC data.rows: row {r} is outside the {n_all} utterances of {self.root}")
            self._rows, self._ids = [self._rows[k] for k in pick], [self._ids[k] for k in pick]
            self._index = pick  # positions in the (shuffled) dataset, for the audio
        if max_utterances is not None:
            n = int(max_utterances)
            self._rows, self._ids = self._rows[:n], self._ids[:n]
        if len(set(self._ids)) != len(self._ids):
            dup = next(u for u in self._ids if self._ids.count(u) > 1)
            raise CorpusError(f"FSC {self.root}: duplicate utterance id {dup!r}")
        if not self._ids:
            raise CorpusError(f"FSC {self.root} (split {split!r}) holds no utterances")

    # ------------------------------------------------------------------ layouts
    def _init_folder(self, split: str) -> None:
        import pandas as pd

        if split not in SPLIT_FILES:
            raise CorpusError(f"FSC split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        csv = self.root / "data" / SPLIT_FILES[split]
        if not csv.is_file():
            raise CorpusError(f"FSC folder {self.root}: no {csv.relative_to(self.root)} (the release has data/"
                              f"{{train,valid,test}}_data.csv)")  # fmt: skip
        df = pd.read_csv(csv, keep_default_na=False, dtype=str)
        need = ["path", "speakerId", "transcription", *SLOTS]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise CorpusError(f"{csv}: missing columns {missing} (it has {list(df.columns)})")
        self._rows = df[need].to_dict("records")
        self._ids = [f"{r['speakerId']}__{Path(r['path']).stem}" for r in self._rows]
        # classes: every value of every split file present, sorted (stable whichever split is read)
        values: dict[str, set] = {s: set() for s in SLOTS}
        for f in SPLIT_FILES.values():
            p = self.root / "data" / f
            if p.is_file():
                d = pd.read_csv(p, keep_default_na=False, dtype=str, usecols=list(SLOTS))
                for s in SLOTS:
                    values[s] |= set(d[s])
        self._classes = {s: sorted(v) for s, v in values.items()}
        self._dataset = None

    def _init_hf(self, split: str | None, shuffle_seed: int | None) -> None:
        try:
            import datasets
        except ImportError as e:  # pragma: no cover - the hf extra
            raise CorpusError("reading FSC from a save_to_disk folder needs the datasets package: "
                              "pip install -e '.[hf]'") from e
        try:
            ds = datasets.load_from_disk(str(self.root))
        except Exception as e:
            raise CorpusError(f"cannot read {self.root} as an FSC dataset saved with save_to_disk "
                              f"({type(e).__name__}: {e}); for the FSC release folder use layout=folder") from e  # fmt: skip
        if isinstance(ds, datasets.DatasetDict):
            keys = list(ds)
            key = split if split is not None else (keys[0] if len(keys) == 1 else "test")
            if key not in ds:
                raise CorpusError(f"FSC dataset {self.root} has splits {keys}, not {key!r}: set data.split")
            ds = ds[key]
        need = ["audio", "transcription", *SLOTS]
        missing = [c for c in need if c not in ds.column_names]
        if missing:
            raise CorpusError(f"FSC dataset {self.root}: missing columns {missing} (it has {ds.column_names})")
        if isinstance(ds.features["audio"], datasets.Audio):
            ds = ds.cast_column("audio", datasets.Audio(decode=False))  # no torchcodec: decoded with soundfile
        if shuffle_seed is not None:
            ds = ds.shuffle(seed=int(shuffle_seed))
        self._classes = {}
        for s in SLOTS:
            f = ds.features[s]
            self._classes[s] = list(f.names) if isinstance(f, datasets.ClassLabel) else sorted({str(v) for v in ds[s]})
        keep = [c for c in ("transcription", "speakerId", *SLOTS, "textgrid") if c in ds.column_names]
        meta = ds.select_columns(keep)
        self._rows = [dict(r) for r in meta]
        for r in self._rows:
            for s in SLOTS:
                v = r[s]
                r[s] = self._classes[s][int(v)] if isinstance(ds.features[s], datasets.ClassLabel) else str(v)
        paths = [a.get("path") if isinstance(a, dict) else None for a in ds.select_columns(["audio"])["audio"]]
        self._ids = [Path(p).stem if p else f"fsc_{j:05d}" for j, p in enumerate(paths)]
        if len(set(self._ids)) != len(self._ids):
            self._ids = [f"fsc_{j:05d}" for j in range(len(paths))]
        self._dataset = ds
        self._fp = str(getattr(ds, "_fingerprint", ""))

    # ------------------------------------------------------------------ Corpus
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def speaker(self, i: int) -> str:
        return str(self._rows[i].get("speakerId", "") or "")

    def slot_classes(self) -> dict[str, list[str]]:
        return {s: list(v) for s, v in self._classes.items()}

    def _tiers(self, i: int, uid: str) -> dict[str, list[Interval]]:
        row = self._rows[i]
        if self.textgrid_dir is not None:
            stem = uid.split("__")[-1]
            for cand in (self.textgrid_dir / f"{stem}.TextGrid", self.textgrid_dir / f"{uid}.TextGrid"):
                if cand.is_file():
                    return read_textgrid(cand)
            return {}
        if "textgrid" in row and row["textgrid"] is not None:
            return {"words": _words_from_column(row["textgrid"], uid)}
        return {}

    def _audio(self, i: int) -> tuple[np.ndarray, str]:
        import soundfile as sf

        uid = self._ids[i]
        if self.layout == "folder":
            p = self.root / self._rows[i]["path"]
            from src.datamodules.corpus import read_audio

            return read_audio(p, self.sample_rate), str(p)
        a = self._dataset[i if self._index is None else self._index[i]]["audio"]
        src = a.get("path") or f"{self.root} row {i}"
        try:
            if a.get("bytes"):
                data, sr = sf.read(io.BytesIO(a["bytes"]), dtype="float32", always_2d=True)
            elif a.get("path") and Path(a["path"]).is_file():
                data, sr = sf.read(a["path"], dtype="float32", always_2d=True)
            elif a.get("array") is not None:
                data, sr = np.asarray(a["array"], np.float32)[:, None], int(a["sampling_rate"])
            else:
                raise CorpusError(f"FSC utterance {uid!r}: audio cell has neither bytes nor a readable path ({src})")
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"FSC utterance {uid!r}: cannot decode audio ({src}): {e}") from e
        audio = data.mean(1)  # (n,)
        if sr != self.sample_rate:
            audio = resample(audio, sr, self.sample_rate)
        return np.ascontiguousarray(audio, np.float32), str(src)

    def _load(self, i: int, with_audio: bool) -> Utterance:
        uid = self._ids[i]
        audio, path = self._audio(i) if with_audio else (np.zeros(0, np.float32), "")
        row = self._rows[i]
        return FSCUtterance(id=uid, audio=audio, sample_rate=self.sample_rate, speaker=self.speaker(i),
                         text=str(row.get("transcription", "")), tiers=self._tiers(i, uid),
                         path=path or str(self.root))  # fmt: skip

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._load(int(i) % len(self), True)

    def annotation(self, i: int) -> Utterance:
        if i not in self._annotations:
            self._annotations[i] = self._load(i, False)
        return self._annotations[i]

    def num_samples(self, i: int) -> int:
        if self.layout == "folder":
            import soundfile as sf

            info = sf.info(str(self.root / self._rows[i]["path"]))
            if info.samplerate == self.sample_rate:
                return int(info.frames)
        return len(self._audio(i)[0])

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"fsc-v1:{self.layout}:{self.sample_rate}".encode())
        if self.layout == "folder":
            from src.datamodules.corpus import audio_hashes

            paths = [self.root / r["path"] for r in self._rows]
            hashes = audio_hashes(paths, self.root / ".audio_hashes.json", self.root)
            for uid, p in zip(self._ids, paths):
                h.update(f"{uid}:{hashes[p]}".encode())
        else:
            h.update(self._fp.encode())
            h.update("\n".join(self._ids).encode())
        for r in self._rows:
            h.update("|".join(str(r[s]) for s in SLOTS).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ slots
    def command_item(self, i: int) -> CommandItem:
        """Slots from the dataset's columns; ``slot_words`` only where an alignment spells the value."""
        row = self._rows[i]
        slots = {s: str(row[s]) for s in SLOTS}
        ann = self.annotation(i)
        words = [w.label.lower() for w in ann.tiers.get("words", []) if w.label.strip()]
        sw: dict[str, tuple[int, ...]] = {s: () for s in SLOTS}
        for s in ("object", "location"):
            v = slots[s].lower()
            if words and not v.startswith("none"):
                sw[s] = tuple(k for k, w in enumerate(words) if w in (v, v.rstrip("s"), v + "s"))
        return CommandItem(self._ids[i], ann.text, slots, sw)

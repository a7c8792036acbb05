"""A Hugging Face dataset (hub id or ``save_to_disk`` folder) as a corpus, with a column mapping.

``columns`` maps the roles ``audio``, ``text``, ``speaker``, ``id`` and the alignment tiers
(``words``, ``phones``, or any tier name) to dataset columns. Unmapped roles are looked up among
the usual names (``text``/``transcription``/``transcript``/``sentence``; ``speaker_id``/``speaker``/
``client_id``; ``id``; ``word_detail``/``words``/``alignment``; ``phonetic_detail``/``phonemes``/
``phones``); a column named in ``columns`` that the dataset lacks is a :class:`CorpusError`
naming the columns it has. ``columns.<role>: null`` turns a role off.

Alignment cells, in either common layout (../shared/CORPORA.md section 9):
- column-wise, as ``timit_asr`` (a ``Sequence`` of a dict): ``{"start": [...], "stop": [...], "utterance": [...]}``;
- row-wise, as the LibriSpeech-alignments datasets: ``[{"start", "end", "word"|"phoneme"}, ...]``;
- either wrapped in a one-key dict (``{"intervals": [...]}``, as ``french_homophone_asr``).
Keys: start ``start``/``xmin``/``begin``; end ``stop``/``end``/``xmax``; label ``utterance``/``word``/
``phoneme``/``phone``/``label``/``text``/``symbol``. Units (``units.<tier>``): ``seconds``,
``samples`` (at ``samples_rate``, default the row's audio rate) or ``auto`` (integers: samples;
floats: seconds). Empty labels are dropped.

Audio is read with ``Audio(decode=False)`` and decoded with soundfile from the stored bytes or
path (``datasets`` >= 4 would decode with torchcodec, not installed here), mixed to mono and
resampled to ``sample_rate``. Ids: the ``id`` column when unique, else ``<speaker>-<id>`` when
that is unique (``timit_asr`` repeats ``SA1`` across speakers), else the row index. Filters
apply to any scalar column (``filters: {sentence_type: [SI, SX]}``).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.listed import Entry, ListedCorpus

CANDIDATES = {
    "audio": ("audio",),
    "text": ("text", "transcription", "transcript", "sentence", "normalized_text"),
    "speaker": ("speaker_id", "speaker", "client_id", "speakerId"),
    "id": ("id",),
    "words": ("word_detail", "words", "alignment"),
    "phones": ("phonetic_detail", "phonemes", "phones"),
}
START_KEYS, END_KEYS = ("start", "xmin", "begin"), ("stop", "end", "xmax")
LABEL_KEYS = ("utterance", "word", "phoneme", "phone", "label", "text", "symbol")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
NON_TIER_ROLES = ("audio", "text", "speaker", "id")


def _key(d: Mapping, keys: tuple[str, ...], what: str, where: str) -> str:
    k = next((k for k in keys if k in d), None)
    if k is None:
        raise CorpusError(f"{where}: an alignment entry has no {what} key (one of {list(keys)}); it has {sorted(d)}")
    return k


def alignment_rows(cell, where: str) -> list[tuple[float | int, float | int, str]]:
    """``(start, end, label)`` of an alignment cell in either layout (raw numbers, not yet converted)."""
    if cell is None:
        return []
    if isinstance(cell, Mapping) and len(cell) == 1 and isinstance(next(iter(cell.values())), (list, tuple, Mapping)):
        inner = next(iter(cell.values()))
        if not (isinstance(inner, list) and inner and not isinstance(inner[0], Mapping)):
            cell = inner  # {"intervals": [...]} wrapper
    if isinstance(cell, Mapping):  # column-wise: {"start": [...], "stop": [...], "utterance": [...]}
        ks, ke, kl = _key(cell, START_KEYS, "start", where), _key(cell, END_KEYS, "end", where), _key(cell, LABEL_KEYS, "label", where)
        n = {len(cell[ks]), len(cell[ke]), len(cell[kl])}
        if len(n) != 1:
            raise CorpusError(f"{where}: column-wise alignment lists of different lengths ({ks}, {ke}, {kl}: {sorted(n)})")
        return list(zip(cell[ks], cell[ke], (str(x or "") for x in cell[kl])))
    if isinstance(cell, (list, tuple)):
        out = []
        for d in cell:
            if not isinstance(d, Mapping):
                raise CorpusError(f"{where}: an alignment list holds {type(d).__name__}, not dicts: {d!r:.80}")
            out.append((d[_key(d, START_KEYS, "start", where)], d[_key(d, END_KEYS, "end", where)],
                        str(d[_key(d, LABEL_KEYS, "label", where)] or "")))  # fmt: skip
        return out
    raise CorpusError(f"{where}: an alignment cell is a {type(cell).__name__}, neither a dict of lists nor a list of dicts")


class HFCorpus(ListedCorpus):
    """A Hugging Face dataset with alignments (see the module docstring).

    Args:
        source: hub id or a ``save_to_disk`` folder.
        split: the split (of a DatasetDict folder or a hub dataset).
        columns: role -> column (``audio``, ``text``, ``speaker``, ``id``, and tier names).
        units: tier -> ``auto`` | ``seconds`` | ``samples``.
        samples_rate: the rate of sample-index times (``null``: the row's audio rate).
        filters: ``{column: value or [values]}`` on scalar columns.
        revision, cache_dir: for ``load_dataset`` by hub id.
    """

    _version = "hf-v1"

    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        columns: Mapping[str, str | None] | None = None,
        units: Mapping[str, str] | None = None,
        samples_rate: int | None = None,
        filters: Mapping | None = None,
        sample_rate: int = 16000,
        time_tolerance: float = 0.02,
        max_utterances: int | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        self.source, self.split = str(source), str(split)
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.name = name or Path(self.source).name or "hf"
        ds = self._open(source, split, revision, cache_dir)
        have = list(ds.column_names)
        where = f"dataset {self.source!r} (split {split!r})"
        mapping = dict(columns or {})
        roles: dict[str, str] = {}
        for role, col in mapping.items():
            if col is None:
                continue
            if col not in have:
                raise CorpusError(f"{where}: data.columns.{role}={col!r} is not a column; it has the columns {have}")
            roles[role] = str(col)
        used = set(roles.values())
        for role, cands in CANDIDATES.items():
            if role in mapping:
                continue
            col = next((c for c in cands if c in have and c not in used), None)
            if col is not None:
                roles[role] = col
                used.add(col)
        if "audio" not in roles:
            raise CorpusError(f"{where}: no audio column (data.columns.audio); it has the columns {have}")
        units = dict(units or {})
        tiers = {r: c for r, c in roles.items() if r not in NON_TIER_ROLES}
        for t in units:
            if units[t] not in ("auto", "seconds", "samples"):
                raise CorpusError(f"data.units.{t} must be auto, seconds or samples; got {units[t]!r}")
        self.roles = roles
        import datasets

        if isinstance(ds.features.get(roles["audio"]), datasets.Audio):
            ds = ds.cast_column(roles["audio"], datasets.Audio(decode=False))
        self._ds = ds
        self._fp = str(getattr(ds, "_fingerprint", ""))
        meta_cols = [c for c in have if c != roles["audio"]]
        meta = ds.select_columns(meta_cols).to_list() if meta_cols else [{} for _ in range(len(ds))]
        ids = self._ids_of(meta, roles, where)
        entries = []
        for row, m in enumerate(meta):
            audio_cell = ds[row][roles["audio"]]
            n, sr = self._header(audio_cell, f"{where} row {row}")
            tier_ivs = {}
            for tier, col in tiers.items():
                tier_ivs[tier] = self._tier(m.get(col), units.get(tier, "auto"), samples_rate or sr,
                                            f"{where} row {row} column {col!r}")  # fmt: skip
            fields = {c: str(v) for c, v in m.items() if isinstance(v, (str, int, float, bool)) or v is None}
            spk = m.get(roles["speaker"]) if "speaker" in roles else None
            entries.append(Entry(
                id=ids[row], speaker="" if spk is None else str(spk),
                text=str(m.get(roles["text"]) or "") if "text" in roles else "", tiers=tier_ivs,
                load=self._loader(row, f"{where} row {row}"), native_samples=n, native_rate=sr,
                label_file=f"{where} row {row}", content_key=self._audio_key(audio_cell), fields=fields,
            ))  # fmt: skip
        self._finish(entries, filters, where)
        if max_utterances is not None:
            self._entries, self._ids = self._entries[: int(max_utterances)], self._ids[: int(max_utterances)]

    # -- loading ------------------------------------------------------------------------

    def _open(self, source, split, revision, cache_dir):
        try:
            import datasets
        except ImportError as e:
            raise CorpusError("data=hf needs the package datasets: pip install -e '.[hf]'") from e
        path = Path(str(source)).expanduser()
        if path.exists():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:
                raise CorpusError(f"cannot read {path} as a datasets save_to_disk folder: {e}") from e
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise CorpusError(f"dataset folder {path} has no split {split!r}; it has {sorted(ds)}")
                ds = ds[split]
            return ds
        if not _HUB_ID.fullmatch(str(source)) or str(source).startswith((".", "~", "/")):
            raise CorpusError(f"dataset folder {path} does not exist (and {str(source)!r} is not a hub id)")
        try:
            return datasets.load_dataset(str(source), split=split, revision=revision, cache_dir=cache_dir)
        except Exception as e:
            raise CorpusError(
                f"cannot load the hub dataset {source!r} (split {split!r}): {type(e).__name__}: {e}. Loading by hub id "
                f"needs network or the dataset in the HF cache (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); "
                f"else save it with `datasets.load_dataset('{source}', split='{split}').save_to_disk('folder')` on a "
                "machine with network and pass data.source=/path/to/folder"
            ) from e

    @staticmethod
    def _ids_of(meta, roles, where) -> list[str]:
        n = len(meta)
        if "id" in roles:
            ids = [str(m.get(roles["id"])) for m in meta]
            if len(set(ids)) == n:
                return ids
            if "speaker" in roles:
                ids2 = [f"{m.get(roles['speaker'])}-{i}" for m, i in zip(meta, ids)]
                if len(set(ids2)) == n:
                    return ids2
        return [f"{r:06d}" for r in range(n)]

    @staticmethod
    def _audio_bytes(cell, where):
        if isinstance(cell, Mapping):
            if cell.get("bytes"):
                return io.BytesIO(cell["bytes"])
            if cell.get("path") and Path(cell["path"]).is_file():
                return str(cell["path"])
        raise CorpusError(f"{where}: the audio cell holds neither bytes nor a readable path: {cell!r:.200}")

    def _header(self, cell, where) -> tuple[int, int]:
        import soundfile as sf

        if isinstance(cell, Mapping) and cell.get("array") is not None:
            return len(cell["array"]), int(cell["sampling_rate"])
        try:
            info = sf.info(self._audio_bytes(cell, where))
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"{where}: cannot read the audio header: {e}") from e
        return int(info.frames), int(info.samplerate)

    @staticmethod
    def _audio_key(cell) -> str:
        if isinstance(cell, Mapping) and cell.get("bytes"):
            return hashlib.sha256(cell["bytes"]).hexdigest()
        if isinstance(cell, Mapping) and cell.get("path"):
            p = Path(cell["path"])
            return f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.is_file() else str(p)
        if isinstance(cell, Mapping) and cell.get("array") is not None:
            import numpy as np

            return hashlib.sha256(np.asarray(cell["array"], np.float32).tobytes()).hexdigest()
        return ""

    def _loader(self, row: int, where: str):
        def load():
            import numpy as np
            import soundfile as sf

            cell = self._ds[row][self.roles["audio"]]
            if isinstance(cell, Mapping) and cell.get("array") is not None:
                return np.asarray(cell["array"], np.float32), int(cell["sampling_rate"])
            return sf.read(self._audio_bytes(cell, where), dtype="float32", always_2d=True)

        return load

    @staticmethod
    def _tier(cell, unit: str, rate: int, where: str) -> list[Interval]:
        rows = alignment_rows(cell, where)
        if unit == "auto":
            ints = all(isinstance(s, int) and isinstance(e, int) for s, e, _ in rows)
            unit = "samples" if rows and ints else "seconds"
        out = []
        for s, e, lab in rows:
            if not lab.strip():
                continue
            try:
                start, end = (s / rate, e / rate) if unit == "samples" else (float(s), float(e))
            except (TypeError, ValueError) as err:
                raise CorpusError(f"{where}: label {lab!r} has a bad interval ({s!r}, {e!r})") from err
            if not (math.isfinite(start) and math.isfinite(end)):
                raise CorpusError(f"{where}: label {lab!r} has a non-finite interval ({s!r}, {e!r})")
            out.append(Interval(start, end, lab))
        return out

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self._version}:{self.sample_rate}:{self.source}:{self.split}".encode())
        for e in self._entries:
            h.update(f"{e.id}:{e.content_key}\n".encode())
        return h.hexdigest()[:16]

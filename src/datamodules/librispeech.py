"""LibriSpeech (``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac`` + ``.trans.txt``) with
word / phone alignments from either public source (../shared/CORPORA.md section 7):

- ``condensed``: CorentinJ's ``<speaker>-<chapter>.alignment.txt`` files (one line per utterance:
  ``<utt_id> "<w1>,<w2>,..." "<end1>,<end2>,..."``; silences are empty words; a word starts at the
  previous word's end, the first at 0), beside the transcripts or anywhere under
  ``alignments_root``. Words tier only.
- ``textgrid``: Montreal Forced Aligner TextGrids ``<utt_id>.TextGrid`` anywhere under
  ``alignments_root`` (a folder separate from the audio); tiers matched by name suffix
  (``words`` / ``phones``, also ``<speaker> - words``). Phone labels keep their ARPAbet stress
  digits (``AH0``): ``task=stress`` reads them; the label normalisation strips them for phone tasks.
- ``auto``: ``textgrid`` when ``alignments_root`` holds TextGrids, else ``condensed`` when alignment
  files exist, else ``none`` (no tiers).

Empty labels (silences) are dropped; ``sil``/``sp``/``spn``/``<unk>`` are kept in the tiers and
dropped by the run's label normalisation. An utterance without an alignment is skipped (counted
and warned about; CorentinJ's files lack 127) or, with ``missing_alignment: error``, an error.
Utterance id = the LibriSpeech id, speaker = the speaker id, text = the transcript (upper case).
Filters: ``subset``, ``speaker``, ``chapter``. Audio: FLAC via soundfile.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval, read_textgrid
from src.datamodules.listed import Entry, ListedCorpus, as_list

log = logging.getLogger(__name__)

_LINE = re.compile(r'^(\S+)\s+"([^"]*)"\s+"([^"]*)"\s*$')


def read_condensed(path: str | Path) -> dict[str, list[Interval]]:
    """CorentinJ alignment file -> ``{utt_id: words}`` (empty words dropped; every error names file and line)."""
    path = Path(path)
    out: dict[str, list[Interval]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CorpusError(f"cannot read alignment file {path}: {e}") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise CorpusError(f'{path}:{n}: not \'<utt_id> "<words>" "<end times>"\': {line[:120]!r}')
        uid, words, ends = m.group(1), m.group(2).split(","), m.group(3).split(",")
        if len(words) != len(ends):
            raise CorpusError(f"{path}:{n}: utterance {uid}: {len(words)} words but {len(ends)} end times")
        try:
            times = [float(t) for t in ends]
        except ValueError as e:
            raise CorpusError(f"{path}:{n}: utterance {uid}: bad end time ({e})") from e
        ivs, prev = [], 0.0
        for w, t in zip(words, times):
            if t < prev:
                raise CorpusError(f"{path}:{n}: utterance {uid}: end time {t} before the previous one {prev}")
            if w.strip() and t > prev:
                ivs.append(Interval(prev, t, w.strip()))
            prev = t
        out[uid] = ivs
    return out


def mfa_tiers(path: str | Path) -> dict[str, list[Interval]]:
    """``words`` / ``phones`` tiers of an MFA TextGrid, matched by name suffix (``spk - words``)."""
    tiers = read_textgrid(path)
    out = {}
    for want in ("words", "phones"):
        hits = [k for k in tiers if k.strip().lower() == want or k.strip().lower().endswith(f"- {want}")
                or k.strip().lower().endswith(want)]  # fmt: skip
        if len(hits) > 1:
            raise CorpusError(f"TextGrid {path}: several tiers match {want!r}: {hits} (one speaker per file expected)")
        if hits:
            out[want] = tiers[hits[0]]
    if not out:
        raise CorpusError(f"TextGrid {path}: no 'words' or 'phones' tier; it has {sorted(tiers)}")
    return out


class LibriSpeechCorpus(ListedCorpus):
    """LibriSpeech with alignments (see the module docstring).

    Args:
        root: ``LibriSpeech/`` (holding subsets), one subset folder, or any folder above the transcripts.
        alignments: ``auto`` | ``condensed`` | ``textgrid`` | ``none``.
        alignments_root: folder of the alignments when not beside the audio (MFA output, the CorentinJ zip).
        subsets: keep these subsets (e.g. ``[dev-clean]``); ``null``: all found. Same as ``filters.subset``.
        missing_alignment: ``skip`` (warn and count) or ``error``.
        filters: ``{subset|speaker|chapter: value or [values]}``.
    """

    _version = "librispeech-v1"

    def __init__(
        self,
        root: str | Path,
        alignments: str = "auto",
        alignments_root: str | Path | None = None,
        subsets: list[str] | str | None = None,
        missing_alignment: str = "skip",
        filters: Mapping | None = None,
        sample_rate: int = 16000,
        time_tolerance: float = 0.02,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        import soundfile as sf

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"LibriSpeech folder {self.root} does not exist (data.root)")
        if alignments not in ("auto", "condensed", "textgrid", "none"):
            raise CorpusError(f"data.alignments must be auto, condensed, textgrid or none; got {alignments!r}")
        if missing_alignment not in ("skip", "error"):
            raise CorpusError(f"data.missing_alignment must be skip or error; got {missing_alignment!r}")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.name = name or "librispeech"
        aroot = Path(alignments_root).expanduser() if alignments_root else None
        if aroot is not None and not aroot.is_dir():
            raise CorpusError(f"alignments folder {aroot} does not exist (data.alignments_root)")
        trans = sorted(self.root.rglob("*.trans.txt"), key=lambda p: p.relative_to(self.root).as_posix())
        if not trans:
            raise CorpusError(f"LibriSpeech folder {self.root} holds no <speaker>-<chapter>.trans.txt files")
        textgrids: dict[str, Path] = {}
        condensed_files: dict[str, Path] = {}
        if aroot is not None:
            for p in aroot.rglob("*"):
                if p.suffix == ".TextGrid":
                    textgrids[p.stem] = p
                elif p.name.endswith(".alignment.txt"):
                    condensed_files[p.name] = p
        for t in trans:
            a = t.with_name(t.name.replace(".trans.txt", ".alignment.txt"))
            if a.exists():
                condensed_files.setdefault(a.name, a)
        if alignments == "auto":
            alignments = "textgrid" if textgrids else "condensed" if condensed_files else "none"
            if alignments == "none":
                log.warning("LibriSpeech %s: no alignments found (no .alignment.txt beside the transcripts%s): "
                            "utterances have no tiers", self.root, f", no TextGrid under {aroot}" if aroot else "")  # fmt: skip
        if alignments == "textgrid" and not textgrids:
            raise CorpusError(f"data.alignments=textgrid: no .TextGrid files under {aroot} (data.alignments_root)")
        if alignments == "condensed" and not condensed_files:
            raise CorpusError(f"data.alignments=condensed: no <speaker>-<chapter>.alignment.txt beside the transcripts "
                              f"under {self.root}{' or under ' + str(aroot) if aroot else ''}")  # fmt: skip
        self.alignments = alignments
        want_subsets = set(as_list(subsets)) if subsets is not None else None
        entries: list[Entry] = []
        self.missing: list[str] = []
        for t in trans:
            chapter_dir = t.parent
            subset = chapter_dir.parent.parent.name if chapter_dir.parent != self.root else self.root.name
            spk, chap = chapter_dir.parent.name, chapter_dir.name
            if want_subsets is not None and subset not in want_subsets:
                continue
            cond: dict[str, list[Interval]] = {}
            cfile = condensed_files.get(t.name.replace(".trans.txt", ".alignment.txt"))
            if alignments == "condensed" and cfile is not None:
                cond = read_condensed(cfile)
            for n, line in enumerate(t.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                uid, _, text = line.strip().partition(" ")
                flac = chapter_dir / f"{uid}.flac"
                if not flac.exists():
                    raise CorpusError(f"{t}:{n}: utterance {uid}: no audio file {flac}")
                tiers, tier_file = {}, ""
                if alignments == "condensed":
                    if uid not in cond:
                        self.missing.append(uid)
                        continue
                    tiers, tier_file = {"words": cond[uid]}, str(cfile)
                elif alignments == "textgrid":
                    tg = textgrids.get(uid)
                    if tg is None:
                        self.missing.append(uid)
                        continue
                    tiers, tier_file = {k: [iv for iv in v if iv.label.strip()] for k, v in mfa_tiers(tg).items()}, str(tg)
                try:
                    info = sf.info(str(flac))
                except Exception as e:
                    raise CorpusError(f"cannot read LibriSpeech audio {flac}: {e}") from e
                entries.append(Entry(
                    id=uid, speaker=spk, text=text.strip(), tiers=tiers, load=_reader(flac), native_samples=int(info.frames),
                    native_rate=int(info.samplerate), label_file=tier_file or str(t), audio_file=str(flac),
                    fields={"subset": subset, "speaker": spk, "chapter": chap},
                ))  # fmt: skip
        if want_subsets is not None and not entries and not self.missing:
            found = sorted({(t.parent.parent.parent.name if t.parent.parent != self.root else self.root.name) for t in trans})
            raise CorpusError(f"data.subsets={sorted(want_subsets)} selects no utterance under {self.root}; "
                              f"the subsets present are {found}")  # fmt: skip
        if self.missing:
            where = f"{aroot or self.root} ({alignments})"
            if missing_alignment == "error":
                raise CorpusError(f"{len(self.missing)} utterances have no alignment in {where}, e.g. {self.missing[:5]}")
            log.warning("LibriSpeech: %d utterances without an alignment in %s were skipped (e.g. %s)",
                        len(self.missing), where, ", ".join(self.missing[:5]))  # fmt: skip
        self._finish(entries, filters, f"LibriSpeech folder {self.root}")
        if max_utterances is not None:
            self._entries, self._ids = self._entries[: int(max_utterances)], self._ids[: int(max_utterances)]

    def _hash_root(self) -> Path:
        return self.root


def _reader(path: Path):
    def load():
        import soundfile as sf

        return sf.read(str(path), dtype="float32", always_2d=True)

    return load

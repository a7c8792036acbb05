"""TIMIT (LDC93S1): ``data=timit``.

Layout (docs/corpora.md; ../shared/CORPORA.md §5): ``<root>/{TRAIN,TEST}/DR<n>/<SPK>/<UTT>.{WAV,PHN,WRD,TXT}``,
in upper case (the CD) or lower case (``train/dr1/fcjf0/sa1.wav``); paths are matched
case-insensitively, and the TRAIN/TEST folders may sit one or two levels down
(``<root>/TIMIT/TRAIN``, the Kaggle copy's ``<root>/data/TRAIN``).  Files whose name has
a second extension (the Kaggle copy's converted ``SA1.WAV.wav``) are ignored.

- ``.WAV``: NIST SPHERE (read by :mod:`src.datamodules.sphere`; a shorten-compressed file
  is refused with the ``sph2pipe -f wav`` command), or RIFF when a copy was converted.
- ``.PHN`` / ``.WRD``: ``start end label`` in samples of the audio file's rate,
  intervals ``[start, end)``.  Phones tile the file; word intervals may overlap (``had``
  3050-10337 and ``your`` 9190-11517 in SA1) and leave pauses: both tiers are kept exactly
  as written (sorted by start), so a word segment covers its whole written span; a frame in
  an overlap takes the later word (the framework's frame-label rule, ``alignment.py``).
- ``.TXT``: ``start end prompt``; the prompt (original case and punctuation) is the text.
- ids ``<SPK>_<UTT>`` and speakers ``<SPK>`` in upper case whatever the folder's case;
  attributes ``subset`` (train/test), ``dialect`` (dr1..dr8), ``sex`` (f/m), ``sentence_type``
  (sa/si/sx) are filters.  SA sentences (read by every speaker) are excluded by default.
- ``split.by=timit_core``: train = the TRAIN folder, val = the 50-speaker dev set, test =
  the 24-speaker core test set (speaker lists from lhotse v1.33 ``timit.get_speakers``, as
  Kaldi's recipe): 3696 / 400 / 192 utterances without SA.
- ``labels.phone_map=timit48|timit39``: the Lee & Hon folding (``timit_phones.txt``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import os
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.listed import Entry, ListedCorpus, as_list
from src.datamodules.sphere import audio_info, read_native, read_small_file
from src.datamodules.timit_sets import CORE_TEST_SPEAKERS, DEV_SPEAKERS, PHONE_MAPS, phone_map  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SUBSETS = ("train", "test")
_DR = re.compile(r"dr(\d+)$", re.IGNORECASE)
_TYPE = re.compile(r"(sa|si|sx)\d+$", re.IGNORECASE)
_END = operator.attrgetter("end")


def _interval_factory():
    """``Interval(start, end, label)`` without the frozen dataclass's ``object.__setattr__`` per field
    (about half the cost of planning a TIMIT corpus, which builds ~50 intervals per utterance).
    Falls back to the constructor should ``Interval`` ever get ``__slots__``."""
    probe = Interval(0.0, 1.0, "x")
    if not hasattr(probe, "__dict__"):
        return Interval
    new = object.__new__

    def make(start: float, end: float, label: str) -> Interval:
        iv = new(Interval)
        d = iv.__dict__
        d["start"], d["end"], d["label"] = start, end, label
        return iv

    assert make(0.0, 1.0, "x") == probe
    return make


make_interval = _interval_factory()


@contextlib.contextmanager
def no_cyclic_gc():
    """Pause the cyclic garbage collector while a corpus plan is built: tens of thousands of small
    objects (intervals, entries) that form no cycles would otherwise be re-scanned by every
    collection, a cost that grows with the corpus (bench/corpora.py)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _find_subsets(root: Path) -> dict[str, Path]:
    """The TRAIN / TEST folders (any case) at most two levels below ``root`` (shallowest wins)."""
    found: dict[str, tuple[int, Path]] = {}
    level = [root]
    for depth in range(3):
        nxt = []
        for d in level:
            try:
                children = sorted((c for c in os.scandir(d) if c.is_dir()), key=lambda c: c.name)
            except OSError:
                continue
            if d.name.lower() in SUBSETS and any(_DR.match(c.name) for c in children):
                sub = d.name.lower()
                if sub in found and found[sub][0] == depth:
                    raise CorpusError(f"TIMIT root {root}: two {sub.upper()} folders ({found[sub][1]} and {d}); "
                                      "point data.root at one copy")  # fmt: skip
                found.setdefault(sub, (depth, d))
            nxt += [Path(c.path) for c in children]
        level = nxt
        if found:
            break
    return {k: v[1] for k, v in found.items()}


def _scan(root: Path) -> list[dict]:
    """One record per utterance with a .WAV: paths by kind and the filterable fields."""
    subsets = _find_subsets(root)
    if not subsets:
        raise CorpusError(f"TIMIT root {root}: no TRAIN/ or TEST/ folder (any case) holding DR1..DR8 folders "
                          "within two levels; set data.root to the TIMIT folder")  # fmt: skip
    out = []
    for sub in SUBSETS:
        if sub not in subsets:
            continue
        for dr in sorted(os.scandir(subsets[sub]), key=lambda c: c.name.lower()):
            m = _DR.match(dr.name)
            if not (m and dr.is_dir()):
                continue
            for spk in sorted(os.scandir(dr.path), key=lambda c: c.name.upper()):
                if not spk.is_dir():
                    continue
                groups: dict[str, dict[str, str]] = {}
                for f in os.scandir(spk.path):
                    stem, dot, ext = f.name.rpartition(".")
                    ext = ext.lower()
                    if not dot or "." in stem or ext not in {"wav", "phn", "wrd", "txt"}:
                        continue  # e.g. the Kaggle copy's converted SA1.WAV.wav
                    kinds = groups.setdefault(stem.upper(), {})
                    if ext in kinds:
                        raise CorpusError(f"TIMIT folder {spk.path}: {Path(kinds[ext]).name} and {f.name} differ only in case")
                    kinds[ext] = f.path
                speaker = spk.name.upper()
                for stem in sorted(groups):
                    kinds = groups[stem]
                    if "wav" not in kinds:
                        continue
                    t = _TYPE.match(stem)
                    fields = {"subset": sub, "dialect": f"dr{int(m.group(1))}", "speaker": speaker,
                              "sex": speaker[:1].lower(), "sentence_type": t.group(1).lower() if t else "other"}  # fmt: skip
                    out.append({"id": f"{speaker}_{stem}", "speaker": speaker, "files": kinds, "fields": fields})
    if not out:
        raise CorpusError(f"TIMIT root {root}: the TRAIN/TEST folders hold no .WAV files")
    return out


def read_sample_intervals(path: str | Path, rate: int, what: str) -> list[Interval]:
    """``start end label`` lines (samples at ``rate``) as intervals in seconds, sorted by start.

    Zero-length intervals are dropped; a line that is not ``<int> <int> <label>`` or has
    end < start is an error naming the file and line."""
    try:
        data = read_small_file(path).decode("latin-1")
    except OSError as e:
        raise CorpusError(f"cannot read {what} file {path}: {e}") from e
    tok = data.split()  # fast path: every line is exactly three tokens (TIMIT labels have no spaces)
    try:
        lines = data.splitlines()
        if len(tok) != 3 * (len(lines) - lines.count("")):  # not one triple per non-blank line
            raise ValueError
        starts, ends = list(map(int, tok[0::3])), list(map(int, tok[1::3]))
    except ValueError:
        return _read_sample_lines(path, data, rate, what)
    if starts and min(map(operator.sub, ends, starts)) < 0:
        return _read_sample_lines(path, data, rate, what)
    out = [make_interval(s / rate, e / rate, lab) for s, e, lab in zip(starts, ends, tok[2::3]) if e > s]
    if starts != sorted(starts):
        out.sort(key=lambda iv: iv.start)
    return out


def _read_sample_lines(path, data: str, rate: int, what: str) -> list[Interval]:
    """Line by line (labels with spaces; errors naming the line)."""
    out = []
    for k, line in enumerate(data.splitlines(), 1):
        parts = line.split(None, 2)
        if not parts:
            continue
        try:
            s, e, lab = int(parts[0]), int(parts[1]), parts[2].strip()
        except (ValueError, IndexError):
            raise CorpusError(f"{what} file {path} line {k}: {line!r} is not '<start sample> <end sample> <label>'") from None
        if e < s:
            raise CorpusError(f"{what} file {path} line {k}: end {e} < start {s}")
        if e > s:
            out.append(Interval(s / rate, e / rate, lab))
    return sorted(out, key=lambda iv: iv.start)


def read_txt(path: Path) -> str:
    try:
        line = read_small_file(path).decode("latin-1").strip()
    except OSError as e:
        raise CorpusError(f"cannot read text file {path}: {e}") from e
    parts = line.split(None, 2)
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise CorpusError(f"text file {path}: {line[:60]!r} is not '<start sample> <end sample> <prompt>'")
    return parts[2].strip() if len(parts) > 2 else ""


class TimitCorpus(ListedCorpus):
    """TIMIT: tiers ``phones`` (the 61 symbols as written) and ``words``, text from ``.TXT``, speaker = folder.

    Every label file and audio header is read when the corpus is built (label times past
    the audio, a compressed or truncated SPHERE file, a malformed line: errors naming the
    file before any extraction); audio samples are decoded only by ``corpus[i]``.

    Args:
        root: the TIMIT folder (holding TRAIN/ and TEST/ in any case, or one or two levels above).
        sentence_types: ``[si, sx]`` by default: SA1/SA2 (read by every speaker) are excluded,
            as in the standard recipes; ``[sa, si, sx]`` keeps them.
        filters: ``{field: value or [values]}`` over ``subset`` (train/test), ``dialect``
            (dr1..dr8), ``speaker`` (e.g. FCJF0), ``sex`` (f/m), ``sentence_type``; a filter
            that selects nothing is an error naming the values present.
        require_labels: every utterance has its .PHN, .WRD and .TXT (else an error naming the file).
        time_tolerance: label end times may pass the audio end by this much (s).
        sample_rate: audio is returned at this rate (TIMIT is 16 kHz).
        max_utterances: the first N (after the filters), for quick runs.
    """

    _version = "timit-v1"

    def __init__(
        self,
        root: str | Path,
        sentence_types: list[str] | None = ("si", "sx"),
        filters: Mapping | None = None,
        require_labels: bool = True,
        time_tolerance: float = 0.02,
        sample_rate: int = 16000,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"TIMIT folder {self.root} (data.root) does not exist")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.name = name or "timit"
        where = f"TIMIT folder {self.root}"
        recs = _scan(self.root)
        filters = dict(filters or {})
        if sentence_types is not None:
            st = filters.get("sentence_type")
            filters["sentence_type"] = as_list(sentence_types) if st is None else st
        recs = self._select(recs, filters, where)
        if max_utterances is not None:
            recs = recs[: int(max_utterances)]
        if require_labels:
            for ext in ("phn", "wrd", "txt"):
                missing = [r for r in recs if ext not in r["files"]]
                if missing:
                    raise CorpusError(
                        f"{len(missing)} TIMIT utterances have no .{ext.upper()} file beside their audio, e.g. "
                        f"{missing[0]['files']['wav']}; set data.require_labels=false to read them without it"
                    )
        self._subset = {}
        entries = []
        with no_cyclic_gc():  # ~50 small objects per utterance, none in a cycle: the collector would re-scan them all
            for r in recs:
                entries.append(self._entry(r))
            self._finish(entries, None, where)
            for i in range(len(entries)):  # the annotations every split / task reads, built while the collector rests
                self.annotation(i)

    def _entry(self, r: dict) -> Entry:
        """Read the utterance's audio header and label files."""
        files = r["files"]
        hdr_n, rate = audio_info(files["wav"])
        tiers, tier_files = {}, {}
        for ext, tier in (("phn", "phones"), ("wrd", "words")):
            if ext in files:
                tiers[tier] = read_sample_intervals(files[ext], rate, f"TIMIT .{ext.upper()}")
                tier_files[tier] = files[ext]
        text = read_txt(files["txt"]) if "txt" in files else ""
        self._subset[r["id"]] = r["fields"]["subset"]
        return Entry(
            id=r["id"], speaker=r["speaker"], text=text, tiers=tiers, load=partial(read_native, files["wav"]),
            native_samples=hdr_n, native_rate=rate, label_file=files.get("phn", ""), audio_file=files["wav"],
            fields=r["fields"], tier_files=tier_files,
        )  # fmt: skip

    def _check_times(self, e: Entry) -> None:
        """The label files give integer samples with end > start (read_sample_intervals): only the
        latest end needs checking here; the base class's check names the offending label."""
        dur = e.native_samples / e.native_rate + self.time_tolerance
        if any(ivs and max(map(_END, ivs)) > dur for ivs in e.tiers.values()):
            super()._check_times(e)

    @staticmethod
    def _select(recs: list[dict], filters: Mapping, where: str) -> list[dict]:
        """The filters of :meth:`ListedCorpus._apply_filters`, applied before any file is read."""
        proxies = [Entry(id=r["id"], speaker=r["speaker"], text="", tiers={}, load=None, native_samples=0,  # type: ignore[arg-type]
                         native_rate=1, fields=r["fields"]) for r in recs]  # fmt: skip
        kept = {id(e) for e in ListedCorpus._apply_filters(proxies, filters, where)}
        return [r for r, e in zip(recs, proxies) if id(e) in kept]

    def _hash_root(self) -> Path:
        return self.root

    def timit_subset(self, i: int) -> str:
        """``train`` or ``test``: the folder utterance ``i`` lies in (``split.by=timit_core``)."""
        return self._subset[self._ids[i]]

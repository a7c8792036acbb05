"""The Buckeye Corpus of conversational speech (Pitt et al.): ``.words``, ``.phones``, ``.wav``.

Layout (unpacked, as the scjs and abkhazia readers use it): ``<root>/sNN/sNNNNx/sNNNNx.{wav,words,phones}``;
any folder depth works (every ``*.words`` under ``root`` with a ``.wav`` beside it is a track).
The distributed nested zips (``s01.zip`` > ``s0101a.zip``) are unpacked once into
``unpack_to`` (a folder of the user's choosing; skipped when it already holds the tracks); a root
holding only zips without ``unpack_to`` is an error that says so.

Label files (ESPS/xwaves, ../shared/CORPORA.md section 6): a header ending at the first line that
starts with ``#``, then one entry per line: ``<end time s> <colour> <label>``; the start is the
previous entry's end (the first starts at 0). Known defects are repaired and counted
(``self.repairs``): a negative time is clamped to 0, an entry whose end is not after its start
(a timestamp going backwards) is dropped.

- ``.words`` labels: ``word; citation phonemes; close phonetic transcription; POS`` (2- and 3-field
  entries ``word; pos`` / ``word; phonemic; pos`` occur). Entries starting with ``<`` or ``{``
  (``<SIL>``, ``<VOCNOISE>``, ``{B_TRANS}``, ``<CUTOFF-...>``, ...) are pauses/noise: not words.
- ``.phones`` labels: lower-case ARPAbet-like phones; a ``+1`` or ``;...`` suffix is stripped;
  upper-case non-speech tokens (``SIL``, ``VOCNOISE``, ``NOISE``, ``LAUGH``, ``IVER``, ``UNKNOWN``,
  ``CUTOFF``, ``ERROR``, ``EXCLUDE``, ``{B_TRANS}``...) are not phones (kept only with ``keep_noise``).

Tiers: ``words`` (label chosen by ``word_label``: the orthographic ``word``, the ``citation``
(dictionary) or ``close`` (phonetic) transcription), ``phones`` (the timed ``.phones`` file),
and word-aligned ``citation`` and ``close`` tiers (label = the phone string, e.g. ``k ae t``).
Buckeye's phone labels carry no stress digits.

Utterances: ``utterances: pauses`` (default) cuts each track (10-minute conversations) into
stretches of words between pause/noise entries of at least ``min_pause`` s, no longer than
``max_duration`` s (a longer stretch is cut at the word boundary before it would exceed it);
phones wholly inside a stretch are kept; ``track`` gives one utterance per track. The text is the
orthographic words joined by spaces. Ids ``sNNNNx`` / ``sNNNNx_0007``; speaker ``sNN``.
Filters: ``speaker`` and ``track``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.listed import Entry, ListedCorpus

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s+(-?\d+)\s+(.*?)\s*$")
_TRACK = re.compile(r"^(s\d\d)\d\d[a-z]$")
NOISE_PHONES = frozenset(
    "SIL VOCNOISE NOISE LAUGH IVER UNKNOWN CUTOFF ERROR EXCLUDE {B_TRANS} {E_TRANS} <SIL> <VOCNOISE> <NOISE> "
    "<LAUGH> <IVER> <UNKNOWN>".split()
)


def read_esps(path: str | Path, repairs: dict | None = None) -> list[tuple[float, float, str]]:
    """``(start, end, label)`` entries of an ESPS/xwaves label file (header up to the ``#`` line).

    Negative times are clamped to 0 and entries with ``end <= start`` dropped, each counted in
    ``repairs``. A line that is not ``<time> <colour> <label>`` is an error naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise CorpusError(f"cannot read Buckeye label file {path}: {e}") from e
    body = next((n + 1 for n, ln in enumerate(lines) if ln.startswith("#")), None)
    if body is None:
        raise CorpusError(f"Buckeye label file {path}: no header end (a line starting with '#')")
    out, prev = [], 0.0
    repairs = {} if repairs is None else repairs
    for n in range(body, len(lines)):
        ln = lines[n]
        if not ln.strip():
            continue
        m = _ENTRY.match(ln)
        if not m:
            raise CorpusError(f"{path}:{n + 1}: not '<end time> <colour> <label>': {ln!r}")
        end = float(m.group(1))
        if end < 0:
            repairs["negative_time_clamped"] = repairs.get("negative_time_clamped", 0) + 1
            end = 0.0
        if end <= prev:
            if m.group(3).strip():
                repairs["entries_not_after_previous_dropped"] = repairs.get("entries_not_after_previous_dropped", 0) + 1
            prev = max(prev, end)
            continue
        out.append((prev, end, m.group(3)))
        prev = end
    return out


def unpack_buckeye(root: Path, dest: Path) -> Path:
    """Unpack the distributed ``sNN.zip`` (each holding ``sNN/sNNNNx.zip``) under ``root`` into
    ``dest/sNN/sNNNNx/``; a track already unpacked is skipped. Returns ``dest``.

    Each track is extracted into a temporary folder renamed into place, so an interrupted unpack
    leaves no half-written track. ``root`` already unpacked (no zips) returns ``root``.
    """
    import io
    import shutil
    import tempfile
    import zipfile

    outer = sorted(root.glob("s[0-9][0-9].zip")) or sorted(root.rglob("s[0-9][0-9].zip"))
    if not outer:
        return root
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for oz in outer:
        try:
            with zipfile.ZipFile(oz) as zo:
                for member in sorted(m for m in zo.namelist() if m.endswith(".zip")):
                    track = Path(member).stem
                    m = _TRACK.match(track)
                    target = dest / (m.group(1) if m else oz.stem) / track
                    if target.is_dir():
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = Path(tempfile.mkdtemp(prefix=f".{track}.", dir=target.parent))
                    try:
                        with zipfile.ZipFile(io.BytesIO(zo.read(member))) as zi:
                            for f in zi.namelist():
                                if f.endswith("/"):
                                    continue
                                (tmp / Path(f).name).write_bytes(zi.read(f))
                        tmp.rename(target)
                        n += 1
                    except BaseException:
                        shutil.rmtree(tmp, ignore_errors=True)
                        raise
        except zipfile.BadZipFile as e:
            raise CorpusError(f"Buckeye archive {oz}: {e}") from e
    if n:
        log.info("Buckeye: unpacked %d tracks from %s into %s", n, root, dest)
    return dest


def is_pause(label: str) -> bool:
    return label.lstrip().startswith(("<", "{"))


def parse_word(label: str) -> tuple[str, str, str, str]:
    """``(word, citation, close, pos)`` of a ``.words`` label (2-, 3- and 4-field forms)."""
    f = [x.strip() for x in label.split(";")]
    if len(f) >= 4:
        return f[0], f[1], f[2], f[3]
    if len(f) == 3:
        return f[0], f[1], "", f[2]
    if len(f) == 2:
        return f[0], "", "", f[1]
    return f[0], "", "", ""


def clean_phone(label: str) -> str:
    """A ``.phones`` label without its ``+1`` / ``;...`` suffix."""
    return re.split(r"[+;]", label.strip(), maxsplit=1)[0].strip()


class BuckeyeCorpus(ListedCorpus):
    """The Buckeye Corpus (see the module docstring).

    Args:
        root: the corpus folder (unpacked speaker/track folders).
        sample_rate: audio returned at this rate (the WAV header's rate is read, never assumed).
        utterances: ``pauses`` (stretches between pauses) or ``track`` (one per track).
        min_pause: pause/noise entries at least this long (s) end a stretch.
        max_duration: stretches longer than this (s) are cut at word boundaries (``null``: never).
        word_label: ``word`` | ``citation`` | ``close``: what the ``words`` tier's labels are.
        keep_noise: keep non-speech tokens in the ``phones`` tier (upper case, e.g. ``VOCNOISE``).
        filters: e.g. ``{speaker: [s01, s02]}``, ``{track: s0101a}``.
        time_tolerance: labels may end this much (s) past the audio.
        max_utterances: keep the first N, for quick runs.
        unpack_to: where the distributed zips under ``root`` are unpacked (once) and read from.
    """

    _version = "buckeye-v1"

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        utterances: str = "pauses",
        min_pause: float = 0.0,
        max_duration: float | None = 20.0,
        word_label: str = "word",
        keep_noise: bool = False,
        filters: Mapping | None = None,
        time_tolerance: float = 0.02,
        max_utterances: int | None = None,
        name: str | None = None,
        unpack_to: str | Path | None = None,
    ) -> None:
        import soundfile as sf

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"Buckeye folder {self.root} does not exist (data.root)")
        if utterances not in ("pauses", "track"):
            raise CorpusError(f"data.utterances must be 'pauses' or 'track', got {utterances!r}")
        if word_label not in ("word", "citation", "close"):
            raise CorpusError(f"data.word_label must be word, citation or close, got {word_label!r}")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.name = name or "buckeye"
        self.repairs: dict[str, int] = {}
        if unpack_to is not None:
            self.root = unpack_buckeye(self.root, Path(unpack_to).expanduser())
        words_files = sorted(self.root.rglob("*.words"), key=lambda p: p.relative_to(self.root).as_posix())
        if not words_files:
            zips = sorted(self.root.rglob("*.zip"))
            hint = (
                f"; it holds {len(zips)} zip files (e.g. {zips[0].name}): give data.unpack_to=/a/folder to unpack "
                f"them there once, or unpack them yourself (`cd {self.root} && for z in s*.zip; do unzip -o \"$z\"; "
                "done && for z in s*/*.zip; do unzip -o \"$z\" -d \"${z%.zip}\"; done`)"
                if zips else ""
            )
            raise CorpusError(f"Buckeye folder {self.root} holds no .words files{hint}")
        entries: list[Entry] = []
        for wf in words_files:
            track = wf.stem
            wav, pf = wf.with_suffix(".wav"), wf.with_suffix(".phones")
            if not wav.exists():
                raise CorpusError(f"Buckeye track {track}: no audio {wav} beside {wf}")
            if not pf.exists():
                raise CorpusError(f"Buckeye track {track}: no phone file {pf} beside {wf}")
            try:
                info = sf.info(str(wav))
            except Exception as e:
                raise CorpusError(f"cannot read Buckeye audio {wav}: {e}") from e
            m = _TRACK.match(track)
            speaker = m.group(1) if m else wf.parent.parent.name if wf.parent != self.root else track
            entries.extend(self._track_entries(wf, pf, wav, int(info.frames), int(info.samplerate), speaker,
                                               utterances, float(min_pause), max_duration, word_label, keep_noise))  # fmt: skip
        if sum(self.repairs.values()):
            log.warning("Buckeye %s: label defects repaired: %s", self.root, self.repairs)
        self._finish(entries, filters, f"Buckeye folder {self.root}")
        if max_utterances is not None:
            self._entries, self._ids = self._entries[: int(max_utterances)], self._ids[: int(max_utterances)]

    def _hash_root(self) -> Path:
        return self.root

    def _track_entries(self, wf, pf, wav, frames, sr, speaker, utterances, min_pause, max_duration, word_label,
                       keep_noise) -> list[Entry]:  # fmt: skip
        track = wf.stem
        words_raw = read_esps(wf, self.repairs)
        phones_raw = read_esps(pf, self.repairs)
        pick = {"word": 0, "citation": 1, "close": 2}[word_label]
        words, ortho, citation, close, pauses = [], [], [], [], []
        for s, e, lab in words_raw:
            if is_pause(lab):
                pauses.append((s, e))
                continue
            f = parse_word(lab)
            if not f[0]:
                continue
            words.append(Interval(s, e, f[pick] or f[0]))
            ortho.append(Interval(s, e, f[0]))
            citation.append(Interval(s, e, f[1]))
            close.append(Interval(s, e, f[2]))
        phones = []
        for s, e, lab in phones_raw:
            p = clean_phone(lab)
            if not p or (not keep_noise and (p in NOISE_PHONES or p.isupper() or is_pause(p))):
                continue
            phones.append(Interval(s, e, p))
        tiers_all = {"words": words, "phones": phones, "citation": citation, "close": close, "_ortho": ortho}
        fields = {"speaker": speaker, "track": track}
        if utterances == "track":
            return [self._entry(track, wav, wf, speaker, tiers_all, 0, frames, frames, sr, fields)]
        # stretches of words between pauses >= min_pause, cut to max_duration at word boundaries
        stretches: list[list[Interval]] = []
        cur: list[Interval] = []
        long_pauses = [(s, e) for s, e in pauses if e - s >= min_pause]
        pi = 0
        for w in words:
            while pi < len(long_pauses) and long_pauses[pi][1] <= w.start + 1e-9:
                if cur and long_pauses[pi][0] >= cur[-1].end - 1e-9:
                    stretches.append(cur)
                    cur = []
                pi += 1
            if cur and max_duration is not None and w.end - cur[0].start > float(max_duration):
                stretches.append(cur)
                cur = []
            cur.append(w)
        if cur:
            stretches.append(cur)
        out = []
        for k, st in enumerate(stretches):
            t0, t1 = st[0].start, st[-1].end
            a, b = int(round(t0 * sr)), min(frames, int(round(t1 * sr)))
            if b <= a:
                continue
            off = a / sr
            tiers = {
                name: [Interval(round(iv.start - off, 9), round(iv.end - off, 9), iv.label) for iv in ivs
                       if iv.start >= t0 - 1e-9 and iv.end <= t1 + 1e-9 and iv.end - off > 0]
                for name, ivs in tiers_all.items()
            }  # fmt: skip
            tiers = {n: [Interval(max(0.0, iv.start), iv.end, iv.label) for iv in ivs] for n, ivs in tiers.items()}
            out.append(self._entry(f"{track}_{k:04d}", wav, wf, speaker, tiers, a, b, frames, sr, fields))
        return out

    @staticmethod
    def _entry(uid, wav, wf, speaker, tiers, a, b, frames, sr, fields) -> Entry:
        import soundfile as sf

        def load(wav=wav, a=a, b=b):
            data, rate = sf.read(str(wav), start=a, stop=b, dtype="float32", always_2d=True)
            return data, rate

        text = " ".join(w.label for w in tiers["_ortho"])
        tiers = {k: [iv for iv in v if iv.label.strip()] for k, v in tiers.items() if k != "_ortho"}
        return Entry(id=uid, speaker=speaker, text=text, tiers=tiers, load=load, native_samples=b - a, native_rate=sr,
                     label_file=str(wf), audio_file=str(wav), content_key=f"{a}:{b}", fields=dict(fields),
                     tier_files={"phones": str(wf.with_suffix(".phones"))})  # fmt: skip

    def __repr__(self) -> str:
        return f"BuckeyeCorpus({self.root}, {len(self)} utterances)"


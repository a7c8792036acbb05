"""mngu0 day-1 EMA (Richmond, Hoole & King 2011): ``data=mngu0``.

Layout (docs/corpora.md; ../shared/CORPORA.md §3): EST Track ``mngu0_s1_NNNN.ema`` files
(binary, 200 Hz, 87 channels named ``<sensor>_<quantity>``), xwaves/ESPS phone labels
``mngu0_s1_NNNN.lab`` and 16 kHz ``mngu0_s1_NNNN.wav``, each set in its own folder
(``ema_basic_data/``, ``phone_labels/``, ``wav_16kHz/`` or the release names
``mngu0_s1_ema_basic_1.1.0/`` ...): files are matched by name anywhere under ``root``
(``ema_dir`` / ``lab_dir`` / ``wav_dir`` pick one folder when a name occurs twice).
Headerless ``.ema`` files (the ``nema/`` normalised copies) are skipped.

- tracks: ``ema`` with the header's own channel names (``T1_py`` ...): ``px`` lateral, ``py``
  front-back, ``pz`` bottom-top (CORPORA.md §3.2; signs UNCONFIRMED).  Default channels: the
  midsagittal 12 (``py``/``pz`` of T1 T2 T3 jaw upperlip lowerlip); ``data.channels=all`` for
  every channel.  Position channels are multiplied by ``position_scale`` (1.0: the AG500's
  mm; the unit is UNCONFIRMED, so it is a parameter).  Break frames become NaN.
- tiers: ``phones`` from the ``.lab`` (Combilex SAMPA-like symbols; ``#`` is silence).
- text: from Festival prompt files (``txt.done.data*``: ``( mngu0_s1_0001 "text" )``) when found.
- speaker: ``mngu0`` (one speaker: split by text or utterance).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from src.datamodules.buckeye import read_esps
from src.datamodules.corpus import CorpusError, Interval, Track, Utterance, check_track_durations
from src.datamodules.est import est_to_track, find_files, is_est, read_est, select_channels
from src.datamodules.listed import Entry, ListedCorpus
from src.datamodules.sphere import audio_info, read_native

MIDSAGITTAL = [f"{s}_{a}" for s in ("T1", "T2", "T3", "jaw", "upperlip", "lowerlip") for a in ("py", "pz")]
_POSITION = re.compile(r"_p[xyz]$")
_PROMPT = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def read_prompts(path: Path) -> dict[str, str]:
    """Festival ``txt.done.data`` lines ``( <id> "<text>" )`` -> ``{id: text}``."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _PROMPT.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).replace('\\"', '"')
    return out


class EmaCorpus(ListedCorpus):
    """A :class:`ListedCorpus` whose utterances also carry EMA tracks (read with the labels, before any extraction)."""

    track_key = "ema"

    def _utterance(self, i: int, audio) -> Utterance:
        u = super()._utterance(i, audio)
        u.tracks = dict(self._tracks[i])
        return u

    def _hash_root(self) -> Path:
        return self.root

    def _select(self, emas: dict, labs: dict, wavs: dict, filters, max_utterances, require_labels: bool, where: str,
                wav_dir: Path | None = None, lab_dir: Path | None = None) -> list[str]:  # fmt: skip
        """The EMA stems to read: filtered (speaker from the ``<speaker>_...`` stem), cut to ``max_utterances``,
        each with its audio (and labels when ``require_labels``), else a CorpusError naming a file without."""
        stems = sorted(emas)
        proxies = [Entry(id=s, speaker=s.split("_")[0], text="", tiers={}, load=None, native_samples=0,  # type: ignore[arg-type]
                         native_rate=1, fields={"id": s, "speaker": s.split("_")[0]}) for s in stems]  # fmt: skip
        stems = [e.id for e in self._apply_filters(proxies, filters or {}, where)]
        if max_utterances is not None:
            stems = stems[: int(max_utterances)]
        under = lambda d: f" under {d}" if d is not None else ""  # noqa: E731
        missing = [s for s in stems if s not in wavs]
        if missing:
            raise CorpusError(f"{where}: {len(missing)} EMA files have no audio, e.g. {emas[missing[0]]} "
                              f"(no {missing[0]}.wav{under(wav_dir)})")  # fmt: skip
        missing = [s for s in stems if s not in labs] if require_labels else []
        if missing:
            raise CorpusError(f"{where}: {len(missing)} EMA files have no phone labels, e.g. {emas[missing[0]]} "
                              f"(no {missing[0]}.lab{under(lab_dir)}); set data.require_labels=false to read them "
                              "without")  # fmt: skip
        return stems

    def _ema_track(self, ema_path: Path, channels, default, scale, rate, audio_seconds, where) -> Track:
        est = read_est(ema_path)
        chans = select_channels(est, channels, default, where)
        tr = est_to_track(est, chans, scale(chans), rate=rate)
        check_track_durations({self.track_key: tr}, audio_seconds, ema_path, self.track_tolerance,
                              self.track_tolerance_fraction, self.track_rate_tolerance)  # fmt: skip
        return tr


class Mngu0Corpus(EmaCorpus):
    """mngu0 EMA + audio + phone labels (see the module docstring).

    Args:
        root: the folder holding the mngu0 release folders.
        channels: EMA channel names (default the 12 midsagittal ``py``/``pz``), or ``all``.
        position_scale: factor from the files' position unit to mm (1.0).
        ema_rate: the EMA frame rate (200 Hz); the time column must agree within 0.5 %.
        ema_dir / lab_dir / wav_dir: sub-folders to read (default: search all of ``root``).
        require_labels: every EMA file needs its ``.lab`` (else an error naming the file).
        filters: ``{id: [...]}`` or ``{speaker: [...]}``; a filter selecting nothing names the values present.
        time_tolerance: labels may end this much (s) past the audio.
        track_tolerance, track_tolerance_fraction, track_rate_tolerance: the EMA duration must
            match the audio's (see :func:`src.datamodules.corpus.check_track_durations`).
    """

    _version = "mngu0-v1"

    def __init__(
        self,
        root: str | Path,
        channels: list[str] | str | None = None,
        position_scale: float = 1.0,
        ema_rate: float | None = 200.0,
        ema_dir: str | None = None,
        lab_dir: str | None = None,
        wav_dir: str | None = None,
        require_labels: bool = True,
        filters: Mapping | None = None,
        time_tolerance: float = 0.02,
        track_tolerance: float = 0.1,
        track_tolerance_fraction: float = 0.05,
        track_rate_tolerance: float | None = 0.01,
        sample_rate: int = 16000,
        max_utterances: int | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CorpusError(f"mngu0 folder {self.root} (data.root) does not exist")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.track_tolerance, self.track_tolerance_fraction = float(track_tolerance), float(track_tolerance_fraction)
        self.track_rate_tolerance = track_rate_tolerance
        self.name = name or "mngu0"
        where = f"mngu0 folder {self.root}"
        emas = {s: p for s, p in find_files(self.root, "ema", ema_dir, "EMA").items() if is_est(p)}
        if not emas:
            raise CorpusError(f"{where}: no EST Track .ema files (headerless nema/*.ema files are not read)")
        labs = find_files(self.root, "lab", lab_dir, "label")
        wavs = find_files(self.root, "wav", wav_dir, "audio")
        prompts: dict[str, str] = {}
        for p in sorted(self.root.rglob("txt.done.data*")):
            prompts.update(read_prompts(p))
        stems = self._select(emas, labs, wavs, filters, max_utterances, require_labels, where,
                             self.root / (wav_dir or ""), self.root / (lab_dir or ""))  # fmt: skip
        fields = {s: {"id": s, "speaker": s.split("_")[0]} for s in stems}
        default = MIDSAGITTAL
        scale = lambda chans: {c: float(position_scale) for c in chans if _POSITION.search(c)}  # noqa: E731
        self._tracks = []
        entries = []
        for s in stems:
            n, sr = audio_info(wavs[s])
            tiers = {}
            if s in labs:
                tiers["phones"] = [Interval(a, b, lab) for a, b, lab in read_esps(labs[s])]
            tr = self._ema_track(emas[s], channels, default, scale, ema_rate, n / sr, where)
            self._tracks.append({self.track_key: tr})
            entries.append(Entry(
                id=s, speaker=fields[s]["speaker"], text=prompts.get(s, ""), tiers=tiers, load=partial(read_native, str(wavs[s])),
                native_samples=n, native_rate=sr, label_file=str(labs.get(s, "")), audio_file=str(wavs[s]), fields=fields[s],
            ))  # fmt: skip
        self._finish(entries, None, where)

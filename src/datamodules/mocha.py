"""MOCHA-TIMIT (Wrench): ``data=mocha``.

Layout (docs/corpora.md; ../shared/CORPORA.md §4): one folder per speaker (``fsew0/``,
``msak0_v1.1/``, ...) holding ``<spk>_<NNN>.{wav,ema,lab}`` (``.lar``, the laryngograph, is
not read).  Files are found anywhere under ``root`` and matched by name.

- audio: NIST SPHERE at 16 kHz (or RIFF in converted copies; sniffed, not by extension).
- tracks: ``ema`` from the EST Track ``.ema`` (binary, 500 Hz, 20 channels): the header's
  names with trailing spaces stripped (``v_x `` -> ``v_x``), ``****`` channels dropped.
  Coils: ``ui`` upper incisor and ``bn`` bridge of nose (references), ``li`` lower incisor
  (jaw), ``ul``/``ll`` lips, ``tt`` tongue tip, ``tb`` tongue body, ``td`` tongue dorsum,
  ``v`` velum; axes ``x`` front-back, ``y`` bottom-top: every channel is midsagittal (2-D
  data).  Default channels: the 14 articulator channels (``li ul ll tt tb td v``, ``x``
  and ``y``); ``data.channels=all`` adds the references.  Values are in 10 µm (INFERRED
  from two readers that divide by 100 and 1000), converted to mm by ``position_scale``
  (0.01).  Break frames become NaN.
- tiers: ``phones`` from the ``.lab`` (``start end label`` in seconds); ``breath`` becomes
  ``sil`` (a silence the label normalisation drops) unless ``breath_as_silence=false``.
- speaker: the file name up to the first ``_`` (``fsew0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.est import find_files, is_est
from src.datamodules.listed import Entry
from src.datamodules.mngu0 import EmaCorpus
from src.datamodules.sphere import audio_info, read_native

ARTICULATORS = [f"{c}_{a}" for c in ("li", "ul", "ll", "tt", "tb", "td", "v") for a in ("x", "y")]


def read_mocha_lab(path: Path) -> list[Interval]:
    """``start end label`` lines (seconds); errors name the file and line."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CorpusError(f"cannot read MOCHA label file {path}: {e}") from e
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split(None, 2)
        if not parts:
            continue
        try:
            s, e, lab = float(parts[0]), float(parts[1]), parts[2].strip()
        except (ValueError, IndexError):
            raise CorpusError(f"MOCHA label file {path} line {k}: {line!r} is not '<start s> <end s> <label>'") from None
        if e < s:
            raise CorpusError(f"MOCHA label file {path} line {k}: end {e} < start {s}")
        if e > s:
            out.append(Interval(s, e, lab))
    return sorted(out, key=lambda iv: iv.start)


class MochaCorpus(EmaCorpus):
    """MOCHA-TIMIT audio + EMA + phone labels (see the module docstring).

    Args:
        root: the folder holding the speaker folders (or one speaker folder).
        channels: EMA channel names (default the 14 articulator channels), or ``all``.
        position_scale: factor from the files' unit to mm (0.01: 10 µm units).
        ema_rate: the EMA frame rate (500 Hz); the time column must agree within 0.5 %.
        breath_as_silence: label ``breath`` as ``sil``.
        require_labels: every utterance needs its ``.lab``.
        filters: ``{speaker: [fsew0]}`` (or ``id``); a filter selecting nothing names the values present.
        time_tolerance, track_tolerance, track_tolerance_fraction, track_rate_tolerance: as ``data=mngu0``.
    """

    _version = "mocha-v1"

    def __init__(
        self,
        root: str | Path,
        channels: list[str] | str | None = None,
        position_scale: float = 0.01,
        ema_rate: float | None = 500.0,
        breath_as_silence: bool = True,
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
            raise CorpusError(f"MOCHA-TIMIT folder {self.root} (data.root) does not exist")
        self.sample_rate, self.time_tolerance = int(sample_rate), float(time_tolerance)
        self.track_tolerance, self.track_tolerance_fraction = float(track_tolerance), float(track_tolerance_fraction)
        self.track_rate_tolerance = track_rate_tolerance
        self.name = name or "mocha"
        where = f"MOCHA-TIMIT folder {self.root}"
        emas = {s: p for s, p in find_files(self.root, "ema", None, "EMA").items() if is_est(p)}
        if not emas:
            raise CorpusError(f"{where}: no EST Track .ema files")
        labs = find_files(self.root, "lab", None, "label")
        wavs = find_files(self.root, "wav", None, "audio")
        stems = self._select(emas, labs, wavs, filters, max_utterances, require_labels, where)
        fields = {s: {"id": s, "speaker": s.split("_")[0]} for s in stems}
        scale = lambda chans: float(position_scale)  # noqa: E731  (every MOCHA channel is a position)
        self._tracks, entries = [], []
        for s in stems:
            n, sr = audio_info(wavs[s])
            tiers = {}
            if s in labs:
                ivs = read_mocha_lab(labs[s])
                if breath_as_silence:
                    ivs = [Interval(iv.start, iv.end, "sil") if iv.label == "breath" else iv for iv in ivs]
                tiers["phones"] = ivs
            tr = self._ema_track(emas[s], channels, ARTICULATORS, scale, ema_rate, n / sr, where)
            self._tracks.append({self.track_key: tr})
            entries.append(Entry(
                id=s, speaker=fields[s]["speaker"], text="", tiers=tiers, load=partial(read_native, str(wavs[s])),
                native_samples=n, native_rate=sr, label_file=str(labs.get(s, "")), audio_file=str(wavs[s]), fields=fields[s],
            ))  # fmt: skip
        self._finish(entries, None, where)

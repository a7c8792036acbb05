"""Buckeye layout writer: ``<root>/sNN/sNNNNx/sNNNNx.{wav,words,phones,log,txt}`` (CORPORA.md section 6),
optionally also packed as distributed (``sNN.zip`` > ``sNNNNx.zip``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import soundfile as sf

from tests.corpus_writers import pcm16

HEADER = "signal {name}\ntype 0\ncolor 121\ncomment created by tests.corpus_writers.buckeye\nfont -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*\nseparator ;\nnfields 4\n#\n"


def _t(x: float) -> str:
    return f"{x:.7f}"


def track_names(utts) -> dict[str, tuple[str, str]]:
    """utterance id -> (speaker folder sNN, track sNNNNa), speakers numbered in sorted order from 01."""
    spk_no = {s: k + 1 for k, s in enumerate(sorted({u.speaker for u in utts}))}
    seen: dict[str, int] = {}
    out = {}
    for u in sorted(utts, key=lambda x: (x.speaker, x.id)):
        seen[u.speaker] = seen.get(u.speaker, 0) + 1
        s = f"s{spk_no[u.speaker]:02d}"
        out[u.id] = (s, f"{s}{seen[u.speaker]:02d}a")
    return out


def write_buckeye(root, utts, zipped: bool = False) -> dict[str, str]:
    """Write each utterance as one Buckeye track; pauses as ``<SIL>`` / ``SIL`` entries, ``{B_TRANS}``
    and ``{E_TRANS}`` at the ends of the words file; word labels ``word; citation; close; POS`` with
    the word's phones as both transcriptions. Returns utterance id -> track name."""
    root = Path(root)
    names = track_names(utts)
    for u in utts:
        spk, track = names[u.id]
        d = root / spk / track
        d.mkdir(parents=True, exist_ok=True)
        dur = len(u.audio) / u.sample_rate
        sf.write(d / f"{track}.wav", pcm16(u.audio), u.sample_rate, subtype="PCM_16")
        words, phones = u.tiers["words"], u.tiers["phones"]
        wl, t = [], 0.0
        for w in words:
            if w.start > t:
                wl.append((w.start, "{B_TRANS}" if t == 0.0 else "<SIL>"))
            ph = " ".join(p.label for p in phones if w.start <= p.start < w.end)
            wl.append((w.end, f"{w.label}; {ph}; {ph}; NN"))
            t = w.end
        if dur > t:
            wl.append((dur, "{E_TRANS}"))
        pl, t = [], 0.0
        for p in phones:
            if p.start > t:
                pl.append((p.start, "SIL"))
            pl.append((p.end, p.label))
            t = p.end
        if dur > t:
            pl.append((dur, "SIL"))
        (d / f"{track}.words").write_text(HEADER.format(name=track) + "".join(f"    {_t(e)}  121 {lab}\n" for e, lab in wl))
        (d / f"{track}.phones").write_text(HEADER.format(name=track) + "".join(f"    {_t(e)}  122 {lab}\n" for e, lab in pl))
        (d / f"{track}.log").write_text(HEADER.format(name=track) + f"    {_t(dur)}  121 <VOICE=modal>\n")
        (d / f"{track}.txt").write_text(u.text + "\n")
    if zipped:
        for spk in sorted({s for s, _ in names.values()}):
            with zipfile.ZipFile(root / f"{spk}.zip", "w") as outer:
                for track in sorted(t for s, t in names.values() if s == spk):
                    inner = root / spk / f"{track}.zip"
                    with zipfile.ZipFile(inner, "w") as z:
                        for f in sorted((root / spk / track).iterdir()):
                            z.write(f, f.name)
                    outer.write(inner, f"{spk}/{track}.zip")
                    inner.unlink()
    return {k: v[1] for k, v in names.items()}

"""LibriSpeech layout writer (CORPORA.md section 7): ``<root>/<subset>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac``,
``<spk>-<chap>.trans.txt``, CorentinJ ``<spk>-<chap>.alignment.txt`` and MFA TextGrids in a separate folder."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from tests.corpus_writers import pcm16


def utt_ids(utts, first_speaker: int = 84, chapter: int = 121123) -> dict[str, tuple[str, str, str]]:
    """utterance id -> (speaker, chapter, LibriSpeech id); speakers numbered in sorted order."""
    spk = {s: str(first_speaker + k) for k, s in enumerate(sorted({u.speaker for u in utts}))}
    out, seen = {}, {}
    for u in sorted(utts, key=lambda x: (x.speaker, x.id)):
        s = spk[u.speaker]
        out[u.id] = (s, str(chapter), f"{s}-{chapter}-{seen.setdefault(s, 0):04d}")
        seen[s] += 1
    return out


def condensed_line(uid: str, words, duration: float) -> str:
    """``<uid> ",W1,,W2," "e0,e1,..."``: empty words for silences, one at each end even when 0 s long."""
    ws, ts, t = [], [], 0.0
    if not words or words[0].start > 0:
        ws.append("")
        ts.append(words[0].start if words else duration)
        t = ts[-1]
    else:
        ws.append("")
        ts.append(0.0)
    for w in words:
        if w.start > t + 1e-9:
            ws.append("")
            ts.append(w.start)
        ws.append(w.label.upper())
        ts.append(w.end)
        t = w.end
    ws.append("")
    ts.append(max(duration, t))
    return f'{uid} "{",".join(ws)}" "{",".join(f"{x:.3f}" for x in ts)}"'


def write_mfa_textgrid(path, words, phones, duration: float, fmt: str = "long", speaker: str | None = None,
                       silence_phone: str = "sil") -> None:  # fmt: skip
    """An MFA-style TextGrid: ``words`` with blank silences, ``phones`` with ``silence_phone`` gaps."""
    from praatio import textgrid

    def filled(ivs, gap):
        out, t = [], 0.0
        for iv in ivs:
            if iv.start > t + 1e-9:
                out.append((t, iv.start, gap))
            out.append((iv.start, iv.end, iv.label))
            t = iv.end
        if duration > t + 1e-9:
            out.append((t, duration, gap))
        return out

    tg = textgrid.Textgrid(minTimestamp=0.0, maxTimestamp=duration)
    pre = f"{speaker} - " if speaker else ""
    tg.addTier(textgrid.IntervalTier(f"{pre}words", filled(words, ""), 0.0, duration))
    tg.addTier(textgrid.IntervalTier(f"{pre}phones", filled(phones, silence_phone), 0.0, duration))
    tg.save(str(path), format=f"{fmt}_textgrid", includeBlankSpaces=True)


def write_librispeech(root, utts, subset: str = "dev-clean", condensed: bool = True, textgrid_root=None,
                      textgrid_format: str = "long") -> dict[str, str]:  # fmt: skip
    """Write the utterances as LibriSpeech; returns utterance id -> LibriSpeech id."""
    root = Path(root)
    ids = utt_ids(utts)
    by_chapter: dict[tuple[str, str], list] = {}
    for u in utts:
        s, c, lid = ids[u.id]
        by_chapter.setdefault((s, c), []).append((lid, u))
    for (s, c), items in sorted(by_chapter.items()):
        d = root / subset / s / c
        d.mkdir(parents=True, exist_ok=True)
        items.sort(key=lambda x: x[0])
        (d / f"{s}-{c}.trans.txt").write_text("".join(f"{lid} {u.text.upper()}\n" for lid, u in items))
        for lid, u in items:
            sf.write(d / f"{lid}.flac", pcm16(u.audio), u.sample_rate, subtype="PCM_16", format="FLAC")
        dur = {lid: len(u.audio) / u.sample_rate for lid, u in items}
        if condensed:
            (d / f"{s}-{c}.alignment.txt").write_text(
                "".join(condensed_line(lid, u.tiers["words"], dur[lid]) + "\n" for lid, u in items)
            )
        if textgrid_root is not None:
            td = Path(textgrid_root) / s
            td.mkdir(parents=True, exist_ok=True)
            for lid, u in items:
                write_mfa_textgrid(td / f"{lid}.TextGrid", u.tiers["words"], u.tiers["phones"], dur[lid], textgrid_format)
    return {k: v[2] for k, v in ids.items()}

"""Counterfactual audio for causal interventions, made by the framework.

Every pair is a :class:`Pair` of two :class:`~src.datamodules.corpus.Utterance` members (``clean``,
``corrupted``) with a ``words`` tier each, so an analysis patches word position ``k`` of one member
into word position ``k`` of the other.

**Minimal pairs** (:func:`synthesize_pairs`): two sentences with the same number of words that differ
in one (or a few) words, read by a Festival diphone voice. Durations are *controlled*, not
time-stretched: member A is synthesised as Festival reads it; member B is run through Festival's text
analysis and duration model, then every segment's end time is set so that each of B's words occupies
exactly A's word interval (the phones of a word scaled uniformly to fill it, pauses scaled into A's
pauses), and only then are pitch targets and the waveform made (``Int_Targets``, ``Wave_Synth``). Why
not time-stretch the differing word's audio: a phase vocoder or WSOLA adds its own artefacts to one
word of one member only (exactly the kind of difference a patching study must not create), and it
cannot move the neighbours' coarticulation; with controlled durations both members come out of the
same synthesiser path, and Festival's diphone concatenation realises any segment duration. The
word boundaries Festival reports for B are checked against A's (to 1e-5 s) and B is cut or
zero-padded at its final pause to A's sample count, so both members have the same words at the same
times and the same length: any frame rate then gives both the same frames per word
(:func:`check_frame_counts` verifies it for a backbone's rate and names the pair and word otherwise).
The HTS voice (``slt``) re-predicts durations inside its own synthesis, so only diphone voices
(``kal``, ``ked``) are accepted.

**Control pairs** (:func:`synthesize_pairs` with ``control=True``): the same sentence twice, A as
Festival reads it and A' through the duration-controlled path with A's own times ("two renditions
produced the same way"); patching between them must recover 1.00 (or show no difference at all).

**Cue pairs** (:func:`cue_pairs`): from the homophone study: a cue word swapped so that the target's
correct spelling flips (``She bought [two|too] {apples|many}.``). Both members are synthesised as a
minimal pair, then the target word's samples of the clean member are spliced into the corrupted one,
so the target's audio is sample-identical (checked).

**Noise corruptions** (:func:`add_noise`, :func:`noise_pairs`): Gaussian noise on chosen word
segments at a stated SNR (signal power over the noised samples / noise power over the same samples,
exactly, after drawing), several seeds. **Non-speech clips** (:func:`nonspeech_clip`): silence,
white/pink/brown noise, tones and music-like chord sequences with envelopes, at a stated RMS level.

**User pairs** (:func:`read_pairs_csv`): ``analysis.pairs=<csv>`` with columns ``clean_id,
corrupted_id[, target, foil]`` naming utterance ids of the run's corpus.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from src.datamodules.corpus import Interval, Utterance, resample
from src.datamodules.synth import (
    SCHEME_FILE,
    check_voices,
    parse_festival_output,
    resolve_voices,
    run_festival,
    scheme_string,
    sentence_words,
    to_pcm16,
)

WORD_TOLERANCE = 1e-5  # seconds: B's word boundaries vs A's (Festival prints 6 decimals)
DIPHONE_VOICES = ("kal", "ked")
NONSPEECH_KINDS = ("silence", "white", "pink", "brown", "tone", "chords")


class CounterfactualError(ValueError):
    """Bad counterfactual input; the message names the pair, the word or the file and line."""


@dataclass(frozen=True)
class Pair:
    """Two members whose word ``k`` stands at the same frames (checked by :func:`check_frame_counts`).

    ``differing``: word positions whose labels differ. ``target``/``foil``: the token strings of a
    logit difference (the clean member's answer and the corrupted member's), ``target_index``: the
    word whose decision is measured (the cue pair's target), all optional.
    """

    id: str
    kind: str  # minimal | control | cue | noise | user
    clean: Utterance
    corrupted: Utterance
    differing: tuple[int, ...] = ()
    target: str | None = None
    foil: str | None = None
    target_index: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def words(self) -> list[Interval]:
        return self.clean.tier("words")


# ----------------------------------------------------------------------------- festival

_SCHEME = """
(define (cf_build_utt text)
  (let ((utt (eval (list (quote Utterance) (quote Text) text))))
    (Initialize utt) (Text utt) (Token_POS utt) (Token utt) (POS utt) (Phrasify utt)
    (Word utt) (Pauses utt) (Intonation utt) (PostLex utt) (Duration utt)
    utt))
(define (cf_dur_dump idx text)
  (let ((utt (cf_build_utt text)))
    (format t "BEGIN %d\\n" idx)
    (synth_dump_items utt)
    (format t "END %d 0 0\\n" idx)))
(define (cf_synth_timed idx text ends wavfile)
  (let ((utt (cf_build_utt text)))
    (let ((segs (utt.relation.items utt 'Segment)))
      (if (equal? (length segs) (length ends))
          (begin
            (mapcar (lambda (s e) (item.set_feat s "end" e)) segs ends)
            (Int_Targets utt) (Wave_Synth utt) (apply_hooks after_synth_hooks utt)
            (let ((info (wave.info (utt.wave utt))))
              (utt.save.wave utt wavfile 'riff)
              (format t "BEGIN %d\\n" idx)
              (synth_dump_items utt)
              (format t "END %d %d %d\\n" idx (cadr (assoc 'num_samples info))
                      (cadr (assoc 'sample_rate info)))))
          (format t "SEGCOUNT %d %d\\n" idx (length segs))))))
"""


def _festival(lines: list[str], voice, workdir: Path) -> list:
    head = [f"(load {scheme_string(str(SCHEME_FILE))})", _SCHEME, f"(voice_{voice.festival})"]
    out = run_festival("\n".join(head + lines) + "\n", workdir)
    bad = re.search(r"SEGCOUNT (\d+)", out)
    if bad:
        raise CounterfactualError(f"festival re-read sentence {bad.group(1)} with another number of segments")
    return list(parse_festival_output(iter(out.splitlines())))


def _words_of(raw) -> list[Interval]:
    return [Interval(s, e, n.lower()) for s, e, n in raw.words]


def _timed_ends(pair_id: str, a_words: list[Interval], a_end: float, b_raw) -> list[float]:
    """Segment end times that put B's words exactly on A's word intervals.

    B's segments are assigned to its own words by midpoint; a word's phones are scaled uniformly into
    A's interval of that word; pauses between words k-1 and k into A's gap there (leading pauses into
    [0, A's first word start), trailing into [A's last word end, A's end)).
    """
    b_words = _words_of(b_raw)
    segs = b_raw.segments
    n = len(a_words)
    # slot of each segment: ("w", k) inside word k, ("p", k) in the gap before word k (k = n: trailing)
    slots = []
    for name, start, end, _s, _w in segs:
        mid = (start + end) / 2
        k = next((i for i, w in enumerate(b_words) if w.start <= mid < w.end), None)
        if k is not None and name != "pau":
            slots.append(("w", k))
        else:
            slots.append(("p", sum(1 for w in b_words if w.end <= mid + 1e-9)))
    gaps_a = [a_words[0].start] + [a_words[k].start - a_words[k - 1].end for k in range(1, n)]
    gaps_a.append(a_end - a_words[-1].end)
    for k in range(n + 1):
        has_b = any(s == ("p", k) for s in slots)
        where = "before the first word" if k == 0 else "after the last word" if k == n else (
            f"between words {k - 1} {a_words[k - 1].label!r} and {k} {a_words[k].label!r}"
        )
        if has_b != (gaps_a[k] > 1e-6):
            raise CounterfactualError(
                f"pair {pair_id!r}: Festival puts a pause {where} in only one member; "
                "rephrase (punctuation) so both read with the same pauses"
            )
    ends = []
    for k_slot in sorted(set(slots), key=lambda s: (s[1], 0 if s[0] == "p" else 1)):
        idx = [i for i, s in enumerate(slots) if s == k_slot]
        kind, k = k_slot
        if kind == "w":
            lo, hi = b_words[k].start, b_words[k].end
            t0, t1 = a_words[k].start, a_words[k].end
        else:
            lo = segs[idx[0]][1]
            hi = segs[idx[-1]][2]
            t0 = 0.0 if k == 0 else a_words[k - 1].end
            t1 = a_end if k == n else a_words[k].start
        for i in idx:
            frac = (segs[i][2] - lo) / (hi - lo) if hi > lo else 1.0
            ends.append((i, t0 + frac * (t1 - t0)))
    ends.sort()
    if [i for i, _ in ends] != list(range(len(segs))):
        raise CounterfactualError(f"pair {pair_id!r}: segments out of word order in Festival's reading")
    return [t for _, t in ends]


def _read_wave(path: Path, raw, sample_rate: int, uid: str) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32")
    if audio.ndim != 1 or sr != raw.sample_rate or len(audio) != raw.num_samples:
        raise CounterfactualError(f"{uid}: festival's wave {path} does not match its report")
    if sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    return (to_pcm16(audio).astype(np.float32) / 32768.0).astype(np.float32)


def _member(uid: str, text: str, audio: np.ndarray, sr: int, words: list[Interval], voice: str) -> Utterance:
    return Utterance(uid, audio, sr, speaker=voice, text=text, tiers={"words": list(words)})


def synthesize_pairs(
    pairs: Sequence[tuple[str, str]],
    voice: str = "kal",
    sample_rate: int = 16000,
    ids: Sequence[str] | None = None,
    control: bool = False,
) -> list[Pair]:
    """Minimal pairs ``(text_a, text_b)`` as duration-controlled Festival audio (module docstring).

    ``control=True`` ignores ``text_b`` and makes ``(A, A')``: the same sentence, A' through the
    duration-controlled path with A's own times. Two Festival processes in all (one per stage).
    Errors (:class:`CounterfactualError`, before any synthesis): a non-diphone voice, members with
    different numbers of words, a minimal pair with no differing word.
    """
    (spec,) = resolve_voices([voice])
    if spec.key not in DIPHONE_VOICES:
        raise CounterfactualError(
            f"voice {voice!r}: duration-controlled pairs need a diphone voice {list(DIPHONE_VOICES)} "
            "(the HTS voice re-predicts durations inside its synthesis)"
        )
    ids = list(ids) if ids is not None else [f"pair{i:03d}" for i in range(len(pairs))]
    if len(ids) != len(pairs) or len(set(ids)) != len(ids):
        raise CounterfactualError(f"ids must be {len(pairs)} unique names, got {ids}")
    specs = []
    for pid, (a, b) in zip(ids, pairs):
        b = a if control else b
        wa, wb = sentence_words(a), sentence_words(b)
        if len(wa) != len(wb):
            raise CounterfactualError(
                f"pair {pid!r}: the members have {len(wa)} and {len(wb)} words ({a!r} / {b!r}); "
                "a minimal pair swaps words, it does not add or drop them"
            )
        diff = tuple(k for k, (x, y) in enumerate(zip(wa, wb)) if x != y)
        if not diff and not control:
            raise CounterfactualError(f"pair {pid!r}: the members are the same sentence {a!r}")
        specs.append((pid, a, b, diff))
    with tempfile.TemporaryDirectory(prefix="counterfactual-") as d:
        work = Path(d)
        check_voices([spec], work)
        lines = []
        for i, (_pid, a, b, _) in enumerate(specs):
            lines.append(f"(synth_dump {2 * i} {scheme_string(a)} {scheme_string(str(work / f'{2 * i}.wav'))})")
            lines.append(f"(cf_dur_dump {2 * i + 1} {scheme_string(b)})")
        first = {r.index: r for r in _festival(lines, spec, work)}
        lines, plans = [], {}
        for i, (pid, a, b, _) in enumerate(specs):
            ra, rb = first.get(2 * i), first.get(2 * i + 1)
            if ra is None or rb is None:
                raise CounterfactualError(f"pair {pid!r}: festival did not read {a!r} / {b!r}")
            a_words = _words_of(ra)
            if [w.label for w in a_words] != sentence_words(a) or [w.label for w in _words_of(rb)] != sentence_words(b):
                raise CounterfactualError(
                    f"pair {pid!r}: Festival's words {[w.label for w in a_words]} / "
                    f"{[w.label for w in _words_of(rb)]} differ from the sentences' words (spell numbers out)"
                )
            a_end = ra.num_samples / ra.sample_rate
            ends = _timed_ends(pid, a_words, ra.segments[-1][2], rb)
            plans[i] = (ra, a_words, a_end)
            ends_s = " ".join(f"{t:.6f}" for t in ends)
            wav = scheme_string(str(work / f"{2 * i + 1}.wav"))
            lines.append(f"(cf_synth_timed {2 * i + 1} {scheme_string(b)} (list {ends_s}) {wav})")
        second = {r.index: r for r in _festival(lines, spec, work)}
        out = []
        for i, (pid, a, b, diff) in enumerate(specs):
            ra, a_words, _ = plans[i]
            rb = second.get(2 * i + 1)
            if rb is None:
                raise CounterfactualError(f"pair {pid!r}: festival did not synthesise {b!r}")
            b_words = _words_of(rb)
            for k, (wa, wb) in enumerate(zip(a_words, b_words)):
                if abs(wa.start - wb.start) > WORD_TOLERANCE or abs(wa.end - wb.end) > WORD_TOLERANCE:
                    raise CounterfactualError(
                        f"pair {pid!r}: word {k} {wb.label!r} lies at [{wb.start:.6f}, {wb.end:.6f}] s in the "
                        f"corrupted member, not at [{wa.start:.6f}, {wa.end:.6f}] s as in the clean"
                    )
            xa = _read_wave(work / f"{2 * i}.wav", ra, sample_rate, f"pair {pid!r} clean")
            xb = _read_wave(work / f"{2 * i + 1}.wav", rb, sample_rate, f"pair {pid!r} corrupted")
            last = int(math.ceil(a_words[-1].end * sample_rate))
            if len(xb) < last:
                raise CounterfactualError(f"pair {pid!r}: the corrupted member ends before its last word")
            xb = np.concatenate([xb, np.zeros(max(0, len(xa) - len(xb)), np.float32)])[: len(xa)]
            b_tier = b_words  # Festival's own report of B's times (checked against A's above)
            clean = _member(f"{pid}/clean", a, xa, sample_rate, a_words, spec.key)
            corrupted = _member(f"{pid}/{'rendition' if control else 'corrupted'}", b, xb, sample_rate, b_tier, spec.key)
            out.append(Pair(pid, "control" if control else "minimal", clean, corrupted, diff,
                            meta={"voice": spec.key}))  # fmt: skip
        return out


# ----------------------------------------------------------------------------- frames


def check_frame_counts(pair: Pair, frame_rate: float, frame_offset: float = 0.0, num_frames: int | None = None):
    """Frames of each word (``src.context_mixing.words.word_frames``, the framework's interval
    mapping) in both members; :class:`CounterfactualError` naming the pair and the word when a word
    has a different number of frames (or the members a different number of words). Returns the
    clean member's frame index arrays."""
    from src.context_mixing.words import word_frames

    groups = []
    for m in (pair.clean, pair.corrupted):
        words = m.tier("words")
        dur = len(m.audio) / m.sample_rate
        n = num_frames if num_frames is not None else max(1, int(math.floor(dur * frame_rate)))
        groups.append(word_frames([(w.label, w.start, w.end) for w in words], n, frame_rate, frame_offset,
                                  utt_id=m.id, audio_duration=dur))  # fmt: skip
    ga, gb = groups
    if len(ga) != len(gb):
        raise CounterfactualError(f"pair {pair.id!r}: the members have {len(ga)} and {len(gb)} words")
    wa, wb = pair.clean.tier("words"), pair.corrupted.tier("words")
    for k, (fa, fb) in enumerate(zip(ga, gb)):
        if len(fa) != len(fb):
            raise CounterfactualError(
                f"pair {pair.id!r}: word {k} ({wa[k].label!r} / {wb[k].label!r}) has {len(fa)} frames in the "
                f"clean member and {len(fb)} in the corrupted at {frame_rate:g} frames/s; make the pair with "
                "duration control (synthesize_pairs) or cut the audio to equal word durations"
            )
    return ga


# ----------------------------------------------------------------------------- cue pairs

CUE_PAIRS = (
    # [clean target|corrupted target] {clean cue|corrupted cue}: one cue swap flips the spelling; the target's
    # audio is spliced from the clean member. The first five have the cue AFTER the target (a decoder
    # teacher-forced on the words before the target sees no cue: only the audio carries it), the rest before.
    "She bought [two|too] {apples|many}.",
    "It is [two|too] {hours|hot}.",
    "He speaks [two|too] {languages|fast}.",
    "The bill is [four|for] {dollars|you}.",
    "They lost [their|there] {books|today}.",
    "{Turn|Please} [right|write] here.",
    "{The|We} [eight|ate] cakes.",
    "{She|Only} [won|one] today.",
    "The {brave|dark} [knight|night] arrived.",
    "I {came|can} [here|hear].",
    "{She|The} [rode|road] home.",
    "{Oh|I} [no|know].",
)
_CUE_MARK = re.compile(r"\[([^\]|]+)\|([^\]]+)\]|\{([^}|]+)\|([^}]+)\}")


def parse_cue_pair(line: str) -> tuple[str, str, str, str, int, int]:
    """``(clean_text, corrupted_text, target, foil, target_index, cue_index)`` of one CUE_PAIRS line."""
    texts = ["", ""]
    pos, target = 0, None
    cue = None
    for m in _CUE_MARK.finditer(line):
        for j in (0, 1):
            texts[j] += line[pos : m.start()]
        before = sentence_words(texts[0])
        if m.group(1) is not None:
            if target is not None:
                raise CounterfactualError(f"cue pair {line!r}: more than one [target|foil]")
            target = (m.group(1).lower(), m.group(2).lower(), len(before))
            texts[0] += m.group(1)
            texts[1] += m.group(2)
        else:
            if cue is not None:
                raise CounterfactualError(f"cue pair {line!r}: more than one {{cue|swap}}")
            cue = len(before)
            texts[0] += m.group(3)
            texts[1] += m.group(4)
        pos = m.end()
    for j in (0, 1):
        texts[j] += line[pos:]
    if target is None or cue is None:
        raise CounterfactualError(f"cue pair {line!r}: needs one [target|foil] and one {{cue|swap}}")
    return texts[0], texts[1], target[0], target[1], target[2], cue


def cue_pairs(lines: Sequence[str] = CUE_PAIRS, voice: str = "kal", sample_rate: int = 16000,
              num_items: int | None = None) -> list[Pair]:  # fmt: skip
    """Cue pairs (module docstring): the target's samples of the clean member are spliced into the
    corrupted member, so the target audio is sample-identical; ``target`` is the clean member's
    spelling, ``foil`` the corrupted member's (the logit difference target - foil flips sign)."""
    lines = list(lines)[: num_items if num_items is not None else None]
    parsed = [parse_cue_pair(x) for x in lines]
    ids = [f"cue{i:02d}_{p[2]}_{p[3]}" for i, p in enumerate(parsed)]
    base = synthesize_pairs([(p[0], p[1]) for p in parsed], voice=voice, sample_rate=sample_rate, ids=ids)
    out = []
    for pair, (_a, _b, target, foil, t_idx, c_idx) in zip(base, parsed):
        w = pair.clean.tier("words")[t_idx]
        lo, hi = int(round(w.start * sample_rate)), int(round(w.end * sample_rate))
        audio = pair.corrupted.audio.copy()
        audio[lo:hi] = pair.clean.audio[lo:hi]
        corrupted = replace(pair.corrupted, audio=audio)
        if not np.array_equal(corrupted.audio[lo:hi], pair.clean.audio[lo:hi]):
            raise CounterfactualError(f"pair {pair.id!r}: the target's samples differ after the splice")
        out.append(replace(pair, kind="cue", corrupted=corrupted, target=target, foil=foil, target_index=t_idx,
                           meta={**pair.meta, "cue_index": c_idx, "target_samples": (lo, hi)}))  # fmt: skip
    return out


def target_samples(pair: Pair) -> tuple[int, int]:
    """Sample range ``[lo, hi)`` of the target word (the spliced, identical part of a cue pair)."""
    if pair.target_index is None:
        raise CounterfactualError(f"pair {pair.id!r} has no target word")
    w = pair.clean.tier("words")[pair.target_index]
    sr = pair.clean.sample_rate
    return int(round(w.start * sr)), int(round(w.end * sr))


# ----------------------------------------------------------------------------- noise


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """``10 log10(sum signal^2 / sum noise^2)`` (float64)."""
    s, n = np.asarray(signal, np.float64), np.asarray(noise, np.float64)
    return float(10 * np.log10(np.sum(s**2) / np.sum(n**2)))


def add_noise(utt: Utterance, words: Sequence[int], snr: float, seed: int) -> tuple[Utterance, np.ndarray]:
    """``utt`` with Gaussian noise on the samples of the given word positions, at ``snr`` dB exactly
    (signal power over those samples / noise power over the same samples, the noise rescaled after
    drawing). Returns the noised utterance and the float64 noise added."""
    tier = utt.tier("words")
    if not words:
        raise CounterfactualError(f"utterance {utt.id!r}: no word positions to corrupt")
    mask = np.zeros(len(utt.audio), bool)
    for k in words:
        if not 0 <= int(k) < len(tier):
            raise CounterfactualError(
                f"utterance {utt.id!r}: word position {k} is outside the utterance ({len(tier)} words, 0..{len(tier) - 1})"
            )
        w = tier[int(k)]
        mask[int(round(w.start * utt.sample_rate)) : int(round(w.end * utt.sample_rate))] = True
    sig = utt.audio[mask].astype(np.float64)
    p_sig = float(np.mean(sig**2))
    if p_sig <= 0:
        raise CounterfactualError(f"utterance {utt.id!r}: words {list(words)} are silent; no SNR is defined")
    rng = np.random.default_rng(int(seed))
    z = rng.standard_normal(int(mask.sum()))
    z *= math.sqrt(p_sig / (10 ** (snr / 10)) / np.mean(z**2))
    noise = np.zeros(len(utt.audio), np.float64)
    noise[mask] = z
    audio = (utt.audio.astype(np.float64) + noise).astype(np.float32)
    return replace(utt, audio=audio, id=f"{utt.id}+noise{seed}"), noise


def dither(utt: Utterance, snr: float | None, seed: int) -> tuple[Utterance, np.ndarray]:
    """A second rendition of ``utt``: the same samples plus independent white Gaussian noise over *every* sample at
    ``snr`` dB exactly (signal power over the whole utterance / noise power, the drawn noise rescaled; float64
    before the float32 audio). ``snr=None``: an exact copy (no noise). Returns the rendition and the noise added.
    The rendition control of analysis=patching uses it: Festival's diphone synthesis has no randomness (the
    duration-controlled path gives sample-identical audio), so an independent low-level dither stands in for a
    second rendition produced the same way."""
    if snr is None:
        return replace(utt, id=f"{utt.id}+copy"), np.zeros(len(utt.audio), np.float64)
    sig = np.asarray(utt.audio, np.float64)
    p_sig = float(np.mean(sig**2))
    if p_sig <= 0:
        raise CounterfactualError(f"utterance {utt.id!r} is silent; no dither SNR is defined")
    z = np.random.default_rng(int(seed)).standard_normal(len(sig))
    z *= math.sqrt(p_sig / (10 ** (float(snr) / 10)) / np.mean(z**2))
    return replace(utt, audio=(sig + z).astype(np.float32), id=f"{utt.id}+dither{seed}"), z


def noise_pairs(utt: Utterance, words: Sequence[int], snr: float = 0.0, seeds: Sequence[int] = (0, 1, 2)) -> list[Pair]:
    """Causal-tracing pairs: ``clean`` = ``utt``, ``corrupted`` = ``utt`` with the words noised, one per seed."""
    out = []
    for s in seeds:
        noisy, _ = add_noise(utt, words, snr, s)
        out.append(Pair(f"{utt.id}/noise{s}", "noise", utt, noisy, tuple(int(k) for k in words),
                        meta={"snr_db": float(snr), "seed": int(s)}))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- non-speech


def _colored(n: int, exponent: float, rng) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), by FFT shaping."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2)
    x = np.fft.irfft(spec, n)
    return x - x.mean()


def nonspeech_clip(kind: str, duration: float = 3.0, sample_rate: int = 16000, seed: int = 0,
                   level_db: float = -26.0) -> Utterance:  # fmt: skip
    """One non-speech clip at RMS ``level_db`` dBFS (silence: all zeros). Kinds: ``silence``,
    ``white``/``pink``/``brown`` noise, ``tone`` (a sine, frequency drawn 200-2000 Hz, 20 ms fades),
    ``chords`` (a sequence of major/minor triads with harmonics and attack-decay envelopes)."""
    if kind not in NONSPEECH_KINDS:
        raise CounterfactualError(f"non-speech kind {kind!r} is not one of {list(NONSPEECH_KINDS)}")
    n = int(round(duration * sample_rate))
    if n < 2:
        raise CounterfactualError(f"non-speech clip of {duration} s is too short")
    rng = np.random.default_rng(int(seed))
    t = np.arange(n) / sample_rate
    if kind == "silence":
        x = np.zeros(n)
    elif kind in ("white", "pink", "brown"):
        x = _colored(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)
    elif kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
        ramp = min(n // 2, int(0.02 * sample_rate))
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[n - ramp :] = np.linspace(1, 0, ramp)
        x = x * env
    else:
        x = np.zeros(n)
        step = int(0.5 * sample_rate)
        for lo in range(0, n, step):
            root = 48 + int(rng.integers(0, 24))  # MIDI note
            third = 4 if rng.random() < 0.5 else 3
            seg = np.arange(min(step, n - lo)) / sample_rate
            env = (1 - np.exp(-seg / 0.01)) * np.exp(-seg / 0.25)
            for note in (root, root + third, root + 7):
                f0 = 440.0 * 2 ** ((note - 69) / 12)
                for h, amp in ((1, 1.0), (2, 0.5), (3, 0.25)):
                    x[lo : lo + len(seg)] += amp * env * np.sin(2 * np.pi * f0 * h * seg)
    if kind != "silence":
        x = x * (10 ** (level_db / 20) / np.sqrt(np.mean(x**2)))
    audio = np.clip(x, -1, 1).astype(np.float32)
    return Utterance(f"{kind}_{seed}", audio, sample_rate, text="", tiers={"words": []})


# ----------------------------------------------------------------------------- user pairs


def read_pairs_csv(path: str | Path, corpus) -> list[Pair]:
    """Pairs of utterances of ``corpus`` named by a csv with columns ``clean_id, corrupted_id[, target,
    foil]`` (header required). Unknown ids, missing columns, a pair of an utterance with itself and
    a target without a foil are errors naming the file and line, raised before any audio is read."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CounterfactualError(f"analysis.pairs: cannot read {path}: {e}") from e
    rows = list(csv.DictReader(text.splitlines()))
    header = rows[0].keys() if rows else next(csv.reader(text.splitlines()), [])
    missing = {"clean_id", "corrupted_id"} - set(header)
    if missing:
        raise CounterfactualError(f"analysis.pairs {path}: missing column(s) {sorted(missing)}; has {list(header)}")
    if not rows:
        raise CounterfactualError(f"analysis.pairs {path}: no pairs")
    index = {u: i for i, u in enumerate(corpus.ids)}
    plan = []
    for line, r in enumerate(rows, start=2):
        a, b = (r.get("clean_id") or "").strip(), (r.get("corrupted_id") or "").strip()
        for col, v in (("clean_id", a), ("corrupted_id", b)):
            if v not in index:
                near = [u for u in corpus.ids if v and v in u][:3]
                raise CounterfactualError(
                    f"analysis.pairs {path}:{line}: {col} {v!r} is not an utterance of the corpus "
                    f"({len(index)} utterances{'; similar: ' + ', '.join(near) if near else ''})"
                )
        if a == b:
            raise CounterfactualError(f"analysis.pairs {path}:{line}: clean_id and corrupted_id are both {a!r}")
        target, foil = (r.get("target") or "").strip() or None, (r.get("foil") or "").strip() or None
        if (target is None) != (foil is None):
            raise CounterfactualError(f"analysis.pairs {path}:{line}: give both target and foil, or neither")
        plan.append((line, a, b, target, foil))
    out = []
    for line, a, b, target, foil in plan:
        ua, ub = corpus[index[a]], corpus[index[b]]
        la, lb = [w.label for w in ua.tier("words")], [w.label for w in ub.tier("words")]
        if len(la) != len(lb):
            raise CounterfactualError(
                f"analysis.pairs {path}:{line}: {a!r} has {len(la)} words and {b!r} has {len(lb)}; "
                "word positions cannot be matched"
            )
        diff = tuple(k for k, (x, y) in enumerate(zip(la, lb)) if x != y)
        out.append(Pair(f"{a}->{b}", "user", ua, ub, diff, target, foil, meta={"line": line}))
    return out

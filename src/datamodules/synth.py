"""The embedded synthetic corpus: English sentences read by Festival voices.

Festival (Debian packages ``festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k
festvox-us-slt-hts``) synthesises each sentence with each voice; the phone, syllable
(lexical stress) and word times are read from Festival's own utterance structure (its
Segment, Syllable and Word relations), so they are exact for the audio, not an alignment.

Layout written under ``root`` (read back by :class:`~src.datamodules.corpus.TextGridCorpus`)::

    corpus.json                     manifest, written last: settings, sentence hash, count
    <voice>/<voice>_<NNNN>.wav      16-bit PCM mono at ``sample_rate``; NNNN = sentence index
    <voice>/<voice>_<NNNN>.TextGrid tiers ``phones`` (Festival "radio" phone names),
                                    ``syllables`` ("1" stressed, "0" unstressed), ``words``
                                    (lower case); pauses are empty intervals
    <voice>/<voice>_<NNNN>.json     {"text", "voice", "sentence_index"}

Conventions:
- sentence index ``i`` is the same text for every voice, so voices can be compared on
  the same sentences (:meth:`SynthCorpus.sentence_index`).
- a build is deterministic: the same settings give byte-identical files.
- a build is atomic: it is written to a temporary folder beside ``root`` and renamed into
  place when complete, under a file lock so parallel jobs build it once. A corpus whose
  manifest does not match the requested settings is rebuilt as a whole.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datamodules.corpus import CorpusError, Interval, TextGridCorpus, resample, write_textgrid
from src.fileutil import file_lock, read_manifest

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SENTENCES_FILE = HERE / "sentences.txt"
SCHEME_FILE = HERE / "synth.scm"
FORMAT_VERSION = 1
INSTALL_HINT = (
    "apt-get install festival festlex-cmu festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts "
    "(or run `make demo`, which sets it up)"
)


@dataclass(frozen=True)
class Voice:
    key: str  # folder name and speaker id
    festival: str  # Festival voice name (as in `(voice.list)`); selected with (voice_<name>)
    package: str  # Debian package that installs it
    cost: float  # relative synthesis time per sentence (diphone voices ~40 sentences/s)


VOICES: dict[str, Voice] = {
    "kal": Voice("kal", "kal_diphone", "festvox-kallpc16k", 1.0),
    "ked": Voice("ked", "ked_diphone", "festvox-kdlpc16k", 1.0),
    "slt": Voice("slt", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts", 7.0),
}

# Festival's end of the last segment may lie a few ms past the last sample; further than
# this is an error.
END_TOLERANCE = 0.02


class FestivalError(CorpusError):
    """Festival is missing, a voice is missing, or Festival failed on a sentence."""


# ----------------------------------------------------------------------------- sentences


def load_sentences(path: str | Path | None = None) -> list[str]:
    """Sentences of a text file, one per line; blank lines and ``#`` comments are skipped.

    ``None`` reads the embedded ``sentences.txt`` (plain ASCII, written for this project).
    """
    path = SENTENCES_FILE if path is None else Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CorpusError(f"cannot read sentences file {path}: {e}") from e
    sentences = [" ".join(line.split()) for line in lines]
    sentences = [s for s in sentences if s and not s.startswith("#")]
    if not sentences:
        raise CorpusError(f"sentences file {path} holds no sentences")
    return sentences


def sentence_words(sentence: str) -> list[str]:
    """The words Festival reads from a plain sentence: lower case, punctuation dropped."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?", sentence.lower())


def scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ----------------------------------------------------------------------------- festival


def festival_binary() -> str:
    exe = shutil.which("festival")
    if exe is None:
        raise FestivalError(f"the synthetic corpus needs Festival, which is not on PATH: {INSTALL_HINT}")
    return exe


def run_festival(script: str, cwd: Path, timeout: float = 600) -> str:
    path = cwd / f"query-{os.getpid()}-{threading.get_ident()}.scm"
    path.write_text(script)
    try:
        proc = subprocess.run(
            [festival_binary(), "-b", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
    finally:
        path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise FestivalError(f"festival failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def festival_version() -> str:
    out = subprocess.run(
        [festival_binary(), "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    text = out.stdout.strip() or out.stderr.strip()
    return re.sub(r"^\S*festival:\s*", "", text)  # drop the binary's path


def resolve_voices(voices: Sequence[str]) -> list[Voice]:
    """Map voice keys (``kal``, ``ked``, ``slt`` or a Festival voice name) to :class:`Voice`."""
    if isinstance(voices, str):
        voices = [voices]
    out = []
    for key in voices:
        key = str(key)
        if key in VOICES:
            out.append(VOICES[key])
        elif re.fullmatch(r"[A-Za-z0-9_]+", key):
            out.append(Voice(key, key, "(unknown package)", 7.0))
        else:
            raise CorpusError(f"bad voice name {key!r}; known voices: {sorted(VOICES)}")
    if not out:
        raise CorpusError("voices is empty")
    if len({v.key for v in out}) != len(out):
        raise CorpusError(f"duplicate voices in {list(voices)}")
    return out


def check_voices(voices: Sequence[Voice], workdir: Path) -> None:
    """Raise :class:`FestivalError` naming the Debian package of each voice Festival lacks."""
    out = run_festival('(format t "VOICES %l\\n" (voice.list))\n', workdir)
    m = re.search(r"VOICES \((.*)\)", out)
    installed = set(m.group(1).split()) if m else set()
    missing = [v for v in voices if v.festival not in installed]
    if missing:
        names = ", ".join(f"{v.key} ({v.festival}: apt-get install {v.package})" for v in missing)
        raise FestivalError(
            f"Festival voice(s) not installed: {names}. Installed voices: {sorted(installed)}. "
            f"All defaults: {INSTALL_HINT}"
        )


@dataclass(frozen=True)
class TextAnalysis:
    """Festival's reading of one sentence (text analysis only, no waveform)."""

    words: list[str]  # lower case, as in the words tier
    segments: list[tuple[str, str, str]]  # (phone, stress, word); pauses: ("pau", "0", "0")


def analyse_text(sentences: Sequence[str], voice: str = "kal") -> list[TextAnalysis]:
    """Run Festival's text analysis (tokens, words, lexicon, pauses, post-lexical rules)
    on each sentence, without synthesising: fast (hundreds of sentences per second).

    Use it to check a sentences file before synthesising (e.g. that numbers are read as
    intended). Rules inside a voice's waveform module (ked's ``er r``) are not applied.
    """
    import tempfile

    (spec,) = resolve_voices([voice])
    lines = [f"(load {scheme_string(str(SCHEME_FILE))})", f"(voice_{spec.festival})"]
    lines += [f"(text_dump {i} {scheme_string(s)})" for i, s in enumerate(sentences)]
    with tempfile.TemporaryDirectory() as d:
        check_voices([spec], Path(d))
        out = run_festival("\n".join(lines) + "\n", Path(d))
    result: list[TextAnalysis | None] = [None] * len(sentences)
    cur = None
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "BEGIN":
            cur = TextAnalysis([], [])
        elif cur is None:
            continue
        elif parts[0] == "SEG":
            cur.segments.append((parts[1], parts[2], " ".join(parts[3:]).lower()))
        elif parts[0] == "WORD":
            cur.words.append(" ".join(parts[1:]).lower())
        elif parts[0] == "END":
            result[int(parts[1])] = cur
            cur = None
    missing = [i for i, r in enumerate(result) if r is None]
    if missing:
        raise FestivalError(f"festival did not analyse sentence {missing[0]} {sentences[missing[0]]!r}")
    return result  # type: ignore[return-value]


@dataclass
class _Raw:
    """One utterance as Festival printed it (times in seconds)."""

    index: int
    segments: list[tuple[str, float, float, str, str]]  # name, start, end, stress, word
    syllables: list[tuple[float, float, str]]  # start, end, stress
    words: list[tuple[float, float, str]]  # start, end, name
    num_samples: int = 0
    sample_rate: int = 0


def parse_festival_output(lines: Iterator[str]) -> Iterator[_Raw]:
    """Parse the BEGIN/SEG/SYL/WORD/END protocol printed by ``synth.scm``."""
    raw: _Raw | None = None
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        tag = parts[0]
        if tag == "BEGIN":
            raw = _Raw(int(parts[1]), [], [], [])
        elif raw is None:
            continue  # festival chatter outside an utterance
        elif tag == "SEG":
            raw.segments.append((parts[1], float(parts[2]), float(parts[3]), parts[4], " ".join(parts[5:])))
        elif tag == "SYL":
            raw.syllables.append((float(parts[1]), float(parts[2]), parts[3]))
        elif tag == "WORD":
            raw.words.append((float(parts[1]), float(parts[2]), " ".join(parts[3:])))
        elif tag == "END":
            raw.num_samples, raw.sample_rate = int(parts[2]), int(parts[3])
            yield raw
            raw = None


# ----------------------------------------------------------------------------- tiers


def build_tiers(raw: _Raw, duration: float, uid: str) -> dict[str, list[Interval]]:
    """Phone, syllable and word tiers from Festival's relations, checked for consistency.

    Pauses (``pau``) are left out (empty intervals in the TextGrid). Interval ends past the
    audio by at most :data:`END_TOLERANCE` are clipped to ``duration``; every interval must
    have ``start < end``, phones must be sorted and non-overlapping, and every syllable and
    word boundary must be a phone boundary.
    """

    def clip(start: float, end: float, what: str) -> tuple[float, float]:
        if end > duration + END_TOLERANCE:
            raise FestivalError(
                f"utterance {uid}: {what} ends at {end:.4f} s, beyond the audio end {duration:.4f} s"
            )
        end = min(end, duration)
        if not start < end:
            raise FestivalError(f"utterance {uid}: {what} has start {start:.6f} >= end {end:.6f}")
        return start, end

    phones = []
    for name, start, end, _stress, _word in raw.segments:
        if name == "pau":
            continue
        s, e = clip(start, end, f"phone {name!r} at {start:.3f} s")
        phones.append(Interval(s, e, name))
    syllables = []
    for start, end, stress in raw.syllables:
        if stress not in ("0", "1"):
            raise FestivalError(f"utterance {uid}: syllable at {start:.3f} s has stress {stress!r}, not 0/1")
        s, e = clip(start, end, f"syllable at {start:.3f} s")
        syllables.append(Interval(s, e, stress))
    words = []
    for start, end, name in raw.words:
        s, e = clip(start, end, f"word {name!r}")
        words.append(Interval(s, e, name.lower()))
    if not phones:
        raise FestivalError(f"utterance {uid}: Festival produced no phones")

    for a, b in itertools.pairwise(phones):
        if b.start < a.end - 1e-9:
            raise FestivalError(f"utterance {uid}: phones {a} and {b} overlap or are out of order")
    bounds = {round(t, 6) for p in phones for t in (p.start, p.end)}
    for tier_name, tier in (("syllables", syllables), ("words", words)):
        for a, b in itertools.pairwise(tier):
            if b.start < a.end - 1e-9:
                raise FestivalError(f"utterance {uid}: {tier_name} {a} and {b} overlap or are out of order")
        for iv in tier:
            if round(iv.start, 6) not in bounds or round(iv.end, 6) not in bounds:
                raise FestivalError(
                    f"utterance {uid}: {tier_name} interval {iv} does not fall on phone boundaries"
                )
    return {"phones": phones, "syllables": syllables, "words": words}


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    # Explicit float -> int16 (round, clip): libsndfile's own float->PCM_16 scaling is
    # asymmetric (x32767 on write, /32768 on read) and does not clip by default.
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- build


def _plan_jobs(voices: Sequence[Voice], n: int, workers: int) -> list[tuple[Voice, list[int]]]:
    """Split (voice, sentences) into festival jobs of similar cost, the costliest first.

    Each job is one festival process (about 0.2-0.4 s start-up); aiming at about three jobs
    per worker balances the slow HTS voice against the fast diphone voices.
    """
    total = sum(v.cost for v in voices) * n
    target = max(total / (3 * max(workers, 1)), 1.0)
    jobs = []
    for v in voices:
        size = max(min(n, 5), math.ceil(target / v.cost))
        for lo in range(0, n, size):
            jobs.append((v, list(range(lo, min(n, lo + size)))))
    jobs.sort(key=lambda j: -j[0].cost * len(j[1]))
    return jobs


class _Builder:
    def __init__(
        self, tmp: Path, voices: list[Voice], sentences: list[str], sample_rate: int, progress
    ) -> None:
        self.tmp, self.voices, self.sentences, self.sample_rate = tmp, voices, sentences, sample_rate
        self.progress = progress
        self.lock = threading.Lock()
        self.words_differ: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.aborted = False

    def abort(self) -> None:
        """Stop the running festival processes; jobs not yet started do nothing."""
        with self.lock:
            self.aborted = True
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()

    def run_job(self, voice: Voice, indices: list[int]) -> None:
        import soundfile as sf

        raw_dir = self.tmp / ".raw" / voice.key
        raw_dir.mkdir(parents=True, exist_ok=True)
        out_dir = self.tmp / voice.key
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"(load {scheme_string(str(SCHEME_FILE))})", f"(voice_{voice.festival})"]
        for i in indices:
            wav = raw_dir / f"{i:04d}.wav"
            lines.append(f"(synth_dump {i} {scheme_string(self.sentences[i])} {scheme_string(str(wav))})")
        script = raw_dir / f"job_{indices[0]:04d}.scm"
        script.write_text("\n".join(lines) + "\n")

        with self.lock:
            if self.aborted:
                return
            proc = subprocess.Popen(
                [festival_binary(), "-b", str(script)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=raw_dir,
            )
            self.procs.append(proc)
        stderr_chunks: list[str] = []
        err_thread = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
        err_thread.start()
        done = set()
        try:
            for raw in parse_festival_output(iter(proc.stdout.readline, "")):
                self._write(voice, raw, raw_dir / f"{raw.index:04d}.wav", sf)
                done.add(raw.index)
                with self.lock:
                    self.progress.update(1)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
            err_thread.join()
        if self.aborted:
            return
        missing = sorted(set(indices) - done)
        if rc != 0 or missing:
            first = missing[0] if missing else indices[0]
            raise FestivalError(
                f"festival (voice {voice.festival}) failed on sentence {first} "
                f"{self.sentences[first]!r} (exit {rc}): {''.join(stderr_chunks).strip()[-2000:]}"
            )

    def _write(self, voice: Voice, raw: _Raw, raw_wav: Path, sf) -> None:
        uid = f"{voice.key}_{raw.index:04d}"
        audio, sr = sf.read(str(raw_wav), dtype="float32")  # (n,)
        if audio.ndim != 1 or sr != raw.sample_rate or len(audio) != raw.num_samples:
            raise FestivalError(f"utterance {uid}: festival's wave {raw_wav} does not match its report")
        if sr != self.sample_rate:
            audio = resample(audio, sr, self.sample_rate)
        pcm = to_pcm16(audio)
        duration = len(pcm) / self.sample_rate
        tiers = build_tiers(raw, duration, uid)
        text = self.sentences[raw.index]
        if [w.label for w in tiers["words"]] != sentence_words(text):
            with self.lock:
                self.words_differ.append(uid)
        base = self.tmp / voice.key / uid
        sf.write(str(base.with_suffix(".wav")), pcm, self.sample_rate, subtype="PCM_16")
        write_textgrid(base.with_suffix(".TextGrid"), tiers, duration)
        meta = {"text": text, "voice": voice.key, "sentence_index": raw.index}
        base.with_suffix(".json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
        raw_wav.unlink()


# ----------------------------------------------------------------------------- corpus


class SynthCorpus(TextGridCorpus):
    """Festival-synthesised English sentences, several voices as speakers.

    Builds the corpus under ``root`` on first use (or when the settings changed), then
    reads it as a :class:`TextGridCorpus` (speaker = voice folder). Utterance ids are
    ``<voice>__<voice>_<NNNN>``, ordered voice by voice (``max_utterances`` therefore
    keeps the first voice first).

    Args:
        root: corpus folder; created if missing. An existing folder that is not a
            synthetic corpus (no ``corpus.json``) and is not empty is never overwritten.
        voices: voice keys: ``kal`` (voice_kal_diphone, male, 16 kHz), ``ked``
            (voice_ked_diphone, male, 16 kHz), ``slt`` (voice_cmu_us_slt_arctic_hts,
            female, 32 kHz resampled), or any other Festival voice name.
        num_sentences: the first N sentences of the file (``None``: all).
        sentences_file: a text file with one sentence per line (default: the embedded
            ``sentences.txt`` of 493 sentences).
        sentences: the sentences themselves (instead of ``sentences_file``; whitespace is
            normalised as in :func:`load_sentences`), e.g. from an annotated item list.
        sample_rate: audio rate of the written files.
        workers: festival processes run at once while building.
        max_utterances: read only the first N utterances (the build is not affected).
        progress: report the build's progress (``None`` or ``True``: a bar on a terminal, log
            lines elsewhere, see src.progress; ``False``: nothing).
    """

    name = "synth"

    def __init__(
        self,
        root: str | Path,
        voices: Sequence[str] = ("kal", "ked", "slt"),
        num_sentences: int | None = 60,
        sentences_file: str | Path | None = None,
        sample_rate: int = 16000,
        workers: int = 2,
        max_utterances: int | None = None,
        progress: bool | None = None,
        sentences: Sequence[str] | None = None,
    ) -> None:
        root = Path(root).expanduser().resolve()
        self.voice_specs = resolve_voices(voices)
        self.voices = [v.key for v in self.voice_specs]
        if sentences is not None:
            if sentences_file is not None:
                raise CorpusError("give sentences or sentences_file, not both")
            all_sentences = [" ".join(str(t).split()) for t in sentences]
            if not all_sentences or not all(all_sentences):
                raise CorpusError("sentences must be a non-empty list of non-blank sentences")
            sentences_file = "the given sentences"
        else:
            all_sentences = load_sentences(sentences_file)
        if num_sentences is None:
            num_sentences = len(all_sentences)
        num_sentences = int(num_sentences)
        if not 1 <= num_sentences <= len(all_sentences):
            raise CorpusError(
                f"num_sentences={num_sentences}, but {sentences_file or SENTENCES_FILE} holds "
                f"{len(all_sentences)} sentences"
            )
        if int(workers) < 1:
            raise CorpusError(f"workers must be >= 1, got {workers}")
        self.sentences = all_sentences[:num_sentences]
        self.settings = {
            "format": FORMAT_VERSION,
            "voices": [[v.key, v.festival] for v in self.voice_specs],
            "num_sentences": num_sentences,
            "sentences_sha256": hashlib.sha256("\n".join(self.sentences).encode()).hexdigest(),
            "sample_rate": int(sample_rate),
        }
        self.built = False  # True when this constructor ran Festival
        if not self._is_complete(root):
            with file_lock(root.parent / f".{root.name}.lock"):
                if not self._is_complete(root):  # another process may have built it meanwhile
                    self._build(root, int(workers), progress)
                    self.built = True
        self.manifest = json.loads((root / "corpus.json").read_text())
        super().__init__(
            root, sample_rate=sample_rate, speaker_from="dir", max_utterances=max_utterances, name="synth"
        )

    # -- reuse -----------------------------------------------------------------------

    def _is_complete(self, root: Path) -> bool:
        m = read_manifest(root / "corpus.json")
        if m is None:
            return False
        if m.get("settings") != self.settings:
            return False
        count = sum(1 for v in self.voices for _ in (root / v).glob("*.TextGrid"))
        return count == m.get("count") == len(self.voices) * self.settings["num_sentences"]

    def _describe_difference(self, root: Path) -> str:
        try:
            old = json.loads((root / "corpus.json").read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its manifest is missing or unreadable"
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.settings.items() if old.get(k) != v]
        return "settings differ (" + "; ".join(diffs) + ")" if diffs else "files are missing"

    # -- build -----------------------------------------------------------------------

    def _build(self, root: Path, workers: int, progress: bool | None) -> None:
        from src.progress import Progress

        if root.exists():
            if not root.is_dir():
                raise CorpusError(f"synthetic corpus root {root} exists and is not a folder")
            if not (root / "corpus.json").exists() and any(root.iterdir()):
                raise CorpusError(
                    f"{root} is not empty and holds no synthetic corpus (no corpus.json); "
                    "refusing to overwrite it: choose another root"
                )
            if (root / "corpus.json").exists():
                log.warning(
                    "rebuilding the synthetic corpus at %s: %s", root, self._describe_difference(root)
                )
        festival_binary()
        root.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of killed builds (we hold the lock, so nobody else is writing them).
        for stale in root.parent.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            check_voices(self.voice_specs, tmp)
            n = self.settings["num_sentences"]
            jobs = _plan_jobs(self.voice_specs, n, workers)
            log.info(
                "synthesising %d sentences x %d voices with Festival into %s (%d jobs, %d workers)",
                n,
                len(self.voices),
                root,
                len(jobs),
                workers,
            )
            mode = "off" if progress is False else None  # a bar on a terminal, log lines elsewhere
            with Progress(total=n * len(self.voices), desc="festival synthesis", unit="utt", mode=mode) as bar:
                builder = _Builder(tmp, self.voice_specs, self.sentences, self.settings["sample_rate"], bar)
                pool = ThreadPoolExecutor(max_workers=workers)
                try:
                    futures = [pool.submit(builder.run_job, v, idx) for v, idx in jobs]
                    for f in futures:
                        f.result()
                except BaseException:  # a failed job or Ctrl-C: stop the others now
                    builder.abort()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                pool.shutdown()
            if builder.words_differ:
                log.warning(
                    "%d utterances have Festival words that differ from the sentence's words "
                    "(numbers or abbreviations expanded?), e.g. %s",
                    len(builder.words_differ),
                    min(builder.words_differ),
                )
            shutil.rmtree(tmp / ".raw")
            manifest = {
                "settings": self.settings,
                "count": n * len(self.voices),
                "festival": festival_version(),
            }
            # Written last: its presence (with matching settings and count) marks a complete corpus.
            (tmp / "corpus.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
            old = None
            if root.exists():
                old = root.parent / f".{root.name}.tmp-old-{os.getpid()}"
                os.rename(root, old)
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- queries ---------------------------------------------------------------------

    def sentence_index(self, i: int) -> int:
        """Sentence index of utterance ``i`` (the same text for every voice)."""
        return int(self._wavs[i].stem.rsplit("_", 1)[1])

    def voice(self, i: int) -> str:
        """Voice key (= speaker) of utterance ``i``."""
        return self._wavs[i].parent.name

    @property
    def fingerprint(self) -> str:
        """Content fingerprint: the manifest (settings, Festival version) and the ids read.

        Builds are deterministic, so this stays the same when the corpus is rebuilt
        with the same settings (unlike the file-time fingerprint of TextGridCorpus).
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.manifest, sort_keys=True).encode())
        h.update(f"{self.sample_rate}:".encode())
        h.update("\n".join(self._ids).encode())
        return h.hexdigest()[:16]

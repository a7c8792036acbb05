"""Shared fixtures: offline environment, tiny random backbones, a tiny tone corpus."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
PHONE_FREQS = {"a": 300.0, "i": 900.0, "s": 2500.0, "m": 150.0, "o": 600.0}


def installed(dist: str) -> bool:
    """True when the distribution ``dist`` (e.g. the embedded-model wheels) is installed."""
    import importlib.metadata

    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


_CLI_NAMES = {"run_cli", "subprocess"}


def _runs_a_process(fn) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and bool(_CLI_NAMES & set(code.co_names))


def pytest_collection_modifyitems(config, items):
    """Mark ``cli`` every test that starts an entry point or another interpreter (it names ``run_cli`` or
    ``subprocess``, itself or in one of its fixtures), so a fast loop can run ``-m "not cli and not slow ..."``.
    ``make test`` (and CI) run them all."""
    for item in items:
        fns = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info else ()):
            fns += [d.func for d in defs]
        if any(_runs_a_process(f) for f in fns):
            item.add_marker(pytest.mark.cli)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op torch thread (two threads spin-wait on a shared 2-core machine), restored
    after the test. Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_wandb(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.mktemp("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(d))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def make_tone_corpus(
    root: Path,
    num_utterances: int = 6,
    speakers: tuple[str, ...] = ("spk1", "spk2"),
    seed: int = 0,
    sample_rate: int = 16000,
    with_tracks: bool = False,
    vocabulary: int | None = None,
) -> Path:
    """Utterances of 'phones' (tones with per-phone frequencies) with exact TextGrids.

    Syllables group phone pairs, stress "1" on syllables whose first phone is a vowel;
    words group syllable pairs and spell their phones.  With ``vocabulary=V``, utterances
    are instead 2-3 words drawn from a fixed lexicon of V phone strings (words repeat
    across utterances, as in real corpora).  With ``with_tracks``, a 2-channel 'ema' track
    at 100 Hz follows the phone frequency (a deterministic function of the audio).
    """
    import soundfile as sf

    from src.datamodules.corpus import Interval, Track, save_tracks, write_textgrid

    rng = np.random.default_rng(seed)
    phones = list(PHONE_FREQS)
    for u in range(num_utterances):
        spk = speakers[u % len(speakers)]
        d = root / spk
        d.mkdir(parents=True, exist_ok=True)
        if vocabulary:
            lex_rng = np.random.default_rng(seed + 1000)
            lexicon = ["".join(lex_rng.choice(phones, size=int(lex_rng.integers(2, 4)))) for _ in range(vocabulary)]
            utt_words = [lexicon[int(rng.integers(vocabulary))] for _ in range(int(rng.integers(2, 4)))]
            seq = [p for w in utt_words for p in w]
        else:
            seq = [phones[int(rng.integers(len(phones)))] for _ in range(int(rng.integers(4, 8)))]
        n_ph = len(seq)
        durs = rng.uniform(0.08, 0.2, size=n_ph)
        pos = int(0.05 * sample_rate)  # sample position (exact integer arithmetic for the times)
        ivs, audio = [], [np.zeros(pos, np.float32)]
        for k in range(n_ph):
            p = seq[k]
            n = int(round(durs[k] * sample_rate))
            start = pos / sample_rate
            tt = np.arange(n) / sample_rate
            gain = 0.3 if spk == speakers[0] else 0.2
            audio.append((gain * np.sin(2 * np.pi * PHONE_FREQS[p] * tt) + 0.01 * rng.standard_normal(n)).astype(np.float32))
            pos += n
            ivs.append(Interval(start, pos / sample_rate, p))
        audio.append(np.zeros(int(0.05 * sample_rate), np.float32))
        wav = np.concatenate(audio)
        dur = len(wav) / sample_rate
        syl = [Interval(ivs[i].start, ivs[min(i + 1, len(ivs) - 1)].end, "1" if ivs[i].label in "aio" else "0")
               for i in range(0, len(ivs), 2)]  # fmt: skip
        words = []  # a word spells the phones it spans (so texts differ between utterances, as real ones do)
        if vocabulary:
            k = 0
            for w in utt_words:
                words.append(Interval(ivs[k].start, ivs[k + len(w) - 1].end, w))
                k += len(w)
        else:
            for i in range(0, len(syl), 2):
                w0, w1 = syl[i].start, syl[min(i + 1, len(syl) - 1)].end
                words.append(Interval(w0, w1, "".join(iv.label for iv in ivs if w0 <= iv.start < w1)))
        uid = f"{spk}_{u:03d}"
        sf.write(d / f"{uid}.wav", wav, sample_rate, subtype="FLOAT")
        write_textgrid(d / f"{uid}.TextGrid", {"phones": ivs, "syllables": syl, "words": words}, dur)
        if with_tracks:
            rate = 100.0
            t = np.arange(int(dur * rate)) / rate
            f = np.zeros_like(t)
            for iv in ivs:
                f[(t >= iv.start) & (t < iv.end)] = PHONE_FREQS[iv.label] / 1000
            values = np.stack([f, np.sin(2 * np.pi * t)], axis=1).astype(np.float32)
            save_tracks(d / f"{uid}.tracks.npz", {"ema": Track(rate, values, ("tongue_x", "jaw_y"))})
    return root


@pytest.fixture(scope="session")
def tone_corpus_dir(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"), num_utterances=8, with_tracks=True)


@pytest.fixture(scope="session")
def tiny_w2v2_dir(tmp_path_factory) -> Path:
    from tests.builders import save_tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_tiny_model(tmp_path_factory.mktemp("tiny_w2v2"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(model_type="wav2vec2", norm="group", **kw) -> Path``: a tiny random model of that family
    (``tests/builders.py: save_tiny_model``), built once per session for each distinct set of arguments.
    Tests only read it: a test that changes the folder builds its own."""
    from tests.builders import save_tiny_model

    built: dict = {}

    def make(model_type: str = "wav2vec2", norm: str = "group", **kw) -> Path:
        key = (model_type, norm, tuple(sorted(kw.items())))
        if key not in built:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built[key] = save_tiny_model(tmp_path_factory.mktemp(f"tiny_{model_type}_{norm}"), model_type, norm, **kw)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    from tests.builders import tiny_whisper

    d = tmp_path_factory.mktemp("tiny_whisper")
    tiny_whisper(d)
    return d

"""Builders of test data and tiny models: random ``transformers`` models saved to a folder, a tiny French
homophone dataset, a hook snapshot. Used by the tests and the benchmark scripts, never by the framework itself.

Benchmarks import it with the repository root on ``sys.path`` (each bench script puts it there).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.datamodules.homophones import HomophoneError, french_words


def tiny_w2v2_config(model_type: str = "wav2vec2", norm: str = "group", **kw):
    """A tiny random config of a wav2vec2-family model (tests, quick runs)."""
    from transformers import AutoConfig

    base = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16),
        conv_stride=(5, 4, 4, 4),  # 320 samples: 50 Hz, like the real models
        conv_kernel=(10, 8, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        vocab_size=12,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )
    base.update(kw)
    return AutoConfig.for_model(model_type, **base)


def save_tiny_model(path: str | Path, model_type: str = "wav2vec2", norm: str = "group", seed: int = 0, **kw) -> Path:
    """Build a tiny random model and save it (plus a feature extractor config) to ``path``."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_w2v2_config(model_type, norm, **kw))
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(path)
    return path


DEFAULT_CHAR_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", "a", "i", "s", "m", "o", "e", "t")
DEFAULT_PHONE_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "a", "i", "s", "m", "o", "e", "t", "n")


def save_tiny_ctc_model(path: str | Path, model_type: str = "wav2vec2", norm: str = "group", seed: int = 0,
                        vocab: tuple[str, ...] | list[str] | None = None, phone: bool = False, **kw) -> Path:  # fmt: skip
    """A tiny random ``*ForCTC`` model saved with its feature extractor and CTC tokenizer (tests, quick runs).

    ``norm="layer"`` gives a stable-layer-norm encoder (final LayerNorm after the last layer), ``"group"``
    a post-LN one. ``vocab``: tokens by id (id 0 = ``<pad>`` = the blank); default letters with ``|`` as
    word delimiter, or phones (``phone=True``, a ``Wav2Vec2PhonemeCTCTokenizer`` without phonemizer).
    """
    from transformers import (
        AutoModelForCTC,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2PhonemeCTCTokenizer,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = list(vocab or (DEFAULT_PHONE_VOCAB if phone else DEFAULT_CHAR_VOCAB))
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    if phone:
        tok = Wav2Vec2PhonemeCTCTokenizer(str(path / "vocab.json"), do_phonemize=False, phone_delimiter_token=" ",
                                          word_delimiter_token=None)  # fmt: skip
    else:
        tok = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), word_delimiter_token="|")
    torch.manual_seed(seed)
    config = tiny_w2v2_config(model_type, norm, vocab_size=len(vocab), pad_token_id=vocab.index("<pad>"), **kw)
    model = AutoModelForCTC.from_config(config)
    with torch.no_grad():  # a larger head than the default init, so the tiny model's posteriors are not flat
        model.lm_head.weight.normal_(0.0, 0.5)
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_whisper(path: str | Path | None = None, seed: int = 0, max_source_positions: int = 100, **kw):
    """A tiny random Whisper (2 s window) for tests; saved with its feature extractor when ``path``."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    cfg = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=max_source_positions,
        max_target_positions=32,
        vocab_size=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    cfg.update(kw)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**cfg))
    fe = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"], chunk_length=2 * max_source_positions * 160 // 16000)
    if path is not None:
        model.save_pretrained(path)
        fe.save_pretrained(path)
    return model, fe


def hook_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, int, int, int]]:
    """Counts of (forward, forward-pre, backward, kwargs-forward) hooks per submodule name.

    transformers may install its own hooks (output recorders) on first use, so tests compare a
    snapshot taken before a call with one taken after, instead of expecting no hooks at all."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                     len(getattr(m, "_forward_hooks_with_kwargs", {})))  # fmt: skip
    return out


TINY_FRENCH_ROWS: tuple[dict, ...] = (
    # row 0 is the tutorial's item 762; row 4's cue word is not in its sentence (no CueItem).
    {
        "transcription": "On y trouve un aéroport.",
        "cue_word": "On",
        "target_word": "trouve",
        "target_word_2": None,
    },
    {
        "transcription": "Les enfants jouent dehors.",
        "cue_word": "Les",
        "target_word": "jouent",
        "target_word_2": None,
    },
    {
        "transcription": "Elles sont parties tôt.",
        "cue_word": "Elles",
        "target_word": "parties",
        "target_word_2": "sont",
    },
    {"transcription": "Il mange une pomme.", "cue_word": "Il", "target_word": "mange", "target_word_2": None},
    {
        "transcription": "Vous chantez bien.",
        "cue_word": "Nous",
        "target_word": "chantez",
        "target_word_2": None,
    },
    {"transcription": "Tu l'as vue hier.", "cue_word": "Tu", "target_word": "vue", "target_word_2": "l'as"},
)


def write_tiny_french_homophones(
    path: str | Path,
    rows: Sequence[dict] | None = None,
    sample_rate: int = 16000,
    word_duration: float = 0.12,
    gap: float = 0.04,
    lead: float = 0.05,
    seed: int = 0,
    split: str | None = None,
    ids: bool = False,
    client_ids: bool = False,
    audio_format: str = "WAV",
) -> Path:
    """Write a tiny dataset in the schema of ``hosein-m/french_homophone_asr`` with
    ``save_to_disk`` (for tests; no network, no torchcodec).

    Each row's words (:func:`french_words` of its transcription) are tones (one frequency
    per word position, 220 Hz upwards, plus a little seeded noise) of ``word_duration`` s
    separated by ``gap`` s of silence after ``lead`` s; the alignment intervals are the
    tones' exact sample boundaries. Audio is stored as 16-bit WAV bytes at ``sample_rate``
    in an ``Audio()`` column (cast through Arrow, so no audio encoder is needed).

    Args:
        rows: dicts with ``transcription``, ``cue_word``, ``target_word``,
            ``target_word_2`` (default :data:`TINY_FRENCH_ROWS`: 6 rows, 0.85 s at most) and
            optionally ``alignment``: a list of ``{start, end, word}`` replacing the tones' own.
        split: save a ``DatasetDict`` with this one split instead of a ``Dataset``.
        ids, client_ids: add an ``id`` column (``"utt<k>"``) / a ``client_id`` column.
        audio_format: ``WAV`` (16-bit), ``FLAC``, ``MP3`` (Common Voice's format; the
            encoder's delay shifts the audio against the intervals) or ``OGG``.

    Returns the folder.
    """
    import datasets
    import soundfile as sf

    rows = list(TINY_FRENCH_ROWS if rows is None else rows)
    rng = np.random.default_rng(seed)
    sr = int(sample_rate)
    cols: dict[str, list] = {
        k: [] for k in ("audio", "transcription", "cue_word", "target_word", "target_word_2", "alignment")
    }
    for k, row in enumerate(rows):
        words = french_words(row["transcription"])
        n_lead, n_word, n_gap = round(lead * sr), round(word_duration * sr), round(gap * sr)
        audio = np.zeros(n_lead + len(words) * (n_word + n_gap), np.float32)
        intervals = []
        for j, w in enumerate(words):
            s = n_lead + j * (n_word + n_gap)
            t = np.arange(n_word) / sr
            audio[s : s + n_word] = 0.3 * np.sin(2 * np.pi * 220.0 * (1 + 0.25 * j) * t)
            intervals.append({"start": s / sr, "end": (s + n_word) / sr, "word": w})
        audio += (0.003 * rng.standard_normal(len(audio))).astype(np.float32)
        buf = io.BytesIO()
        fmt = str(audio_format).upper()
        subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}.get(fmt)
        if subtype is None:
            raise HomophoneError(f"audio_format must be WAV, FLAC, MP3 or OGG, got {audio_format!r}")
        sf.write(buf, np.clip(audio, -1, 1), sr, format=fmt, subtype=subtype)
        cols["audio"].append({"bytes": buf.getvalue(), "path": None})
        cols["transcription"].append(row["transcription"])
        for c in ("cue_word", "target_word", "target_word_2"):
            cols[c].append(row.get(c))
        cols["alignment"].append({"intervals": row.get("alignment", intervals)})  # a row may override them
    features = {
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        "transcription": datasets.Value("string"),
        "cue_word": datasets.Value("string"),
        "target_word": datasets.Value("string"),
        "target_word_2": datasets.Value("string"),
        "alignment": {
            "intervals": datasets.List(
                {
                    "start": datasets.Value("float64"),
                    "end": datasets.Value("float64"),
                    "word": datasets.Value("string"),
                }
            )
        },
    }
    if ids:
        cols["id"] = [f"utt{k}" for k in range(len(rows))]
        features["id"] = datasets.Value("string")
    if client_ids:
        cols["client_id"] = [f"speaker{k % 2}" for k in range(len(rows))]
        features["client_id"] = datasets.Value("string")
    ds = datasets.Dataset.from_dict(cols, features=datasets.Features(features))
    ds = ds.cast_column("audio", datasets.Audio())  # an Arrow cast: no torchcodec encoder
    path = Path(path)
    out = datasets.DatasetDict({split: ds}) if split else ds
    out.save_to_disk(str(path))
    return path

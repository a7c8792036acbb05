"""Activation patching: one forward per (layer, position) vs the framework's batched sweep, same numbers.

    .venv/bin/python bench/patching.py                        # Whisper tiny.en (encoder words, decoder tokens) + wav2vec2
    .venv/bin/python bench/patching.py --cases whisper_encoder --threads 2

Inputs: one Festival sentence of 14 words (synthesised once into a temporary directory, voice kal); the corrupted
member is the same audio with Gaussian noise at 0 dB SNR over one word ("farmer"), so both have the same frames
(causal tracing's corruption). Denoising: clean activations are patched into the corrupted run.

Cases:
- ``whisper_encoder``: embedded Whisper tiny.en, encoder residual states 0..4 x the sentence's first ``--words``
  words (every frame of a word patched at once: encoder frames pooled by word); metric: the teacher-forced
  log-probability of the clean transcript;
- ``whisper_decoder``: the same model and metric, decoder residual states 0..4 x the first ``--tokens`` token
  positions of the teacher-forced sequence (prompt + transcript);
- ``wav2vec2``: a random 12-layer wav2vec2 (hidden 256, 4 heads, FFN 1024, post-LN) on the first
  ``--w2v2-seconds``, residual states 0..12 x every frame; metric: a fixed random linear read-out of the output.

The defaults keep the run near 2-3 minutes on 2 free cores (the loop side dominates); the batched side's cost
per site does not depend on them.

- **loop**: ``patch_sweep(..., batched=False)``: for every site one full forward of the model (Whisper: log-mel
  -> encoder -> teacher-forced decoder) under :func:`src.interventions.patched`;
- **batched**: ``patch_sweep(..., chunk=--chunk)``: the base run once with every encoder layer's call recorded,
  then per state the perturbed copies as one batch re-running only the layers after it (decoder sites: the
  decoder alone on the base run's encoder output).

Each case prints ``case=<name> ratio=<loop / batched> max_abs_delta=<metric, loop vs batched> ...``; the last line
``ratio=<total loop time / total batched time> max_abs_delta=<max over cases>``. Goal ratio >= 5, max |delta|
<= 1e-5.

Measured (2026-12-07, 2 CPU cores shared with other jobs, load 17-22, 1 thread, chunk 16), default run:
whisper_encoder ratio 1.75 (68.6 s vs 39.2 s, 25 sites; 2.00 with --words 14: 214 s vs 107 s), whisper_decoder
7.20 (52.7 s vs 7.3 s, 25 sites; 8.98 with --tokens 8), wav2vec2 3.79 (69.8 s vs 18.4 s, 637 sites); total
ratio=2.94 max_abs_delta=0 (4.3 min at that load). Encoder sweeps stay below 5: every later layer must be re-run
over the whole sequence for each copy, so skipping the layers before the site bounds the saving near 2-2.5
(docs/interventions.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import report  # noqa: E402

SENTENCE = "The old farmer walked slowly down to the river bank with his two dogs"  # 14 words, ~4 s
NOISY_WORD = "farmer"


def synth_sentence(workdir: Path):
    from src.datamodules.synth import SynthCorpus

    corpus = SynthCorpus(root=workdir / "synth", voices=["kal"], sentences=[SENTENCE], num_sentences=None,
                         workers=1, progress=False)  # fmt: skip
    u = corpus[0]
    words = [(iv.label, iv.start, iv.end) for iv in u.tier("words")]
    return torch.as_tensor(np.asarray(u.audio, dtype=np.float32)), words


def corrupt(waveform: torch.Tensor, words, word: str, sr: int = 16000, snr_db: float = 0.0, seed: int = 0):
    """Gaussian noise at ``snr_db`` (relative to the word's own power) over the word's samples."""
    lab, s, e = next(w for w in words if w[0].lower() == word)
    a, b = int(s * sr), int(e * sr)
    g = torch.Generator().manual_seed(seed)
    seg = waveform[a:b]
    noise = torch.randn(b - a, generator=g) * seg.pow(2).mean().sqrt() * 10 ** (-snr_db / 20)
    out = waveform.clone()
    out[a:b] = seg + noise
    return out


def time_both(bb, clean, corr, sites, metric, chunk):
    from src.interventions import patch_sweep

    t0 = time.perf_counter()
    loop = patch_sweep(bb, clean, corr, sites, metric, batched=False)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = patch_sweep(bb, clean, corr, sites, metric, chunk=chunk)
    t_fast = time.perf_counter() - t0
    delta = float(np.abs(loop.values - fast.values).max())
    return t_loop, t_fast, delta, fast


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="whisper_encoder,whisper_decoder,wav2vec2")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--words", type=int, default=5, help="whisper_encoder: the first N words (all 14: --words 14)")
    p.add_argument("--tokens", type=int, default=5, help="whisper_decoder: the first N token positions (0: all)")
    p.add_argument("--w2v2-seconds", type=float, default=1.0, help="wav2vec2: the first S seconds, every frame")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    from src.interventions import Site, make_inputs, word_positions
    from src.interventions import metrics as M

    totals = [0.0, 0.0]
    deltas = []
    with tempfile.TemporaryDirectory() as tmp:
        wave, words = synth_sentence(Path(tmp))
        noisy = corrupt(wave, words, NOISY_WORD)
        if any(c.startswith("whisper") for c in cases):
            from src.backbones.whisper import WhisperBackbone

            bb = WhisperBackbone("embedded:tiny.en")
            clean = make_inputs(bb, wave, utt_id="clean")  # teacher-forced on the clean transcript
            corr = make_inputs(bb, noisy, ids=clean.ids[0].tolist(), utt_id="corrupted")
            metric = M.transcript_logprob(clean.ids[0], len(bb.decoder_prompt_ids()))
            if "whisper_encoder" in cases:
                groups = word_positions(bb, words, clean)[: args.words]
                sites = [Site("encoder", "resid", k, g, label=w[0]) for k in range(bb.num_layers)
                         for g, w in zip(groups, words)]  # fmt: skip
                t_l, t_b, d, res = time_both(bb, clean, corr, sites, metric, args.chunk)
                totals[0] += t_l
                totals[1] += t_b
                deltas.append(d)
                report(case="whisper_encoder", ratio=t_l / t_b, max_abs_delta=d, loop_s=t_l, batched_s=t_b,
                       sites=len(sites), words=len(groups), states=bb.num_layers, clean=res.clean,
                       corrupted=res.corrupted, best_recovery=float(np.nanmax(res.recovery)))  # fmt: skip
            if "whisper_decoder" in cases:
                n_tok = clean.tokens if args.tokens <= 0 else min(args.tokens, clean.tokens)
                nd = len(bb.decoder_layer_modules())
                sites = [Site("decoder", "resid", k, (t,)) for k in range(nd + 1) for t in range(n_tok)]
                t_l, t_b, d, res = time_both(bb, clean, corr, sites, metric, args.chunk)
                totals[0] += t_l
                totals[1] += t_b
                deltas.append(d)
                report(case="whisper_decoder", ratio=t_l / t_b, max_abs_delta=d, loop_s=t_l, batched_s=t_b,
                       sites=len(sites), tokens=n_tok, states=nd + 1, clean=res.clean, corrupted=res.corrupted,
                       best_recovery=float(np.nanmax(res.recovery)))  # fmt: skip
        if "wav2vec2" in cases:
            from src.backbones.hf import HFBackbone
            from tests.builders import save_tiny_model

            d = save_tiny_model(Path(tmp) / "w2v2_12", hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                                intermediate_size=1024, conv_dim=(64, 64, 64, 64))  # fmt: skip
            bb = HFBackbone(str(d))
            n = int(args.w2v2_seconds * 16000)
            clean = make_inputs(bb, wave[:n], utt_id="clean")
            corr = make_inputs(bb, noisy[:n], utt_id="corrupted")
            g = torch.Generator().manual_seed(0)
            W = torch.randn(clean.frames, bb.hidden_size, generator=g) / (clean.frames * bb.hidden_size) ** 0.5

            def metric(o):
                return (o.output[:, : o.frames] * W).sum((1, 2))

            sites = [Site("encoder", "resid", k, (f,)) for k in range(bb.num_layers) for f in range(clean.frames)]
            t_l, t_b, dl, res = time_both(bb, clean, corr, sites, metric, args.chunk)
            totals[0] += t_l
            totals[1] += t_b
            deltas.append(dl)
            report(case="wav2vec2", ratio=t_l / t_b, max_abs_delta=dl, loop_s=t_l, batched_s=t_b, sites=len(sites),
                   frames=clean.frames, states=bb.num_layers)  # fmt: skip
    report(ratio=totals[0] / totals[1], max_abs_delta=max(deltas), loop_s=totals[0], batched_s=totals[1],
           threads=args.threads, chunk=args.chunk)  # fmt: skip


if __name__ == "__main__":
    main()

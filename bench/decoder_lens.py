"""Decoder lens: every encoder layer in one batched ``generate`` vs one ``generate`` per layer.

    .venv/bin/python bench/decoder_lens.py                       # embedded Whisper tiny.en, 4 Festival test utterances
    .venv/bin/python bench/decoder_lens.py --backbone whisper_base --utterances 2

Both ways decode the same lensed encoder states (computed once, outside the timing: the encoder
costs the same either way) greedily, with the same per-utterance token caps as the analysis;
the token ids must be identical (asserted). Last line: ``ratio=<per-layer time / batched time> ...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import best_of, report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="whisper_tiny_en", help="backbone config name (conf/backbone)")
    p.add_argument("--utterances", type=int, default=4, help="Festival test utterances (one generate batch)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from src.analyses.decoder_lens import DecoderLens, select_utterances
    from src.run import load_corpus

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"backbone={args.backbone}", "analysis=decoder_lens"])
    corpus = load_corpus(cfg)
    bb = instantiate(cfg.backbone).eval()
    lens = DecoderLens()
    idx = select_utterances(corpus, "test", {"by": "text"}, cfg.seed, args.utterances)
    ids = [str(corpus.ids[i]) for i in idx]
    audio = [torch.as_tensor(np.asarray(corpus[i].audio, dtype=np.float32)) for i in idx]
    states = lens.resolve(bb)  # every residual state 0..N
    t0 = time.perf_counter()
    enc = bb.window_states(audio, ids)  # (S, B, F, D)
    t_enc = time.perf_counter() - t0
    lensed = [bb.lens_encoder_states(enc, k) for k in states]  # L x (B, F, D)
    caps = lens.caps(bb, [int(a.shape[-1]) for a in audio])

    def per_layer():
        return [bb.generate_from_encoder_states(x, caps, lens.language, lens.task)[0] for x in lensed]

    def batched():
        toks, _ = bb.generate_from_encoder_states(torch.cat(lensed), caps * len(states), lens.language, lens.task)
        b = len(audio)
        return [toks[i * b : (i + 1) * b] for i in range(len(states))]

    t_loop, ref = best_of(per_layer, args.repeats)
    t_batch, got = best_of(batched, args.repeats)
    assert got == ref, "batched decoding changed token ids"
    n_tok = sum(len(t) for layer in ref for t in layer)
    print(f"{bb.name}: {len(states)} states x {len(audio)} utterances, encoder {t_enc:.2f} s (not timed below), "
          f"{n_tok} tokens; one generate per layer {t_loop:.2f} s, one batched generate {t_batch:.2f} s", flush=True)
    report(ratio=t_loop / t_batch, per_layer_s=t_loop, batched_s=t_batch, layers=len(states),
           utterances=len(audio), identical_ids=True, backbone=bb.name)


if __name__ == "__main__":
    main()

"""Decoder lens: every encoder layer in one batched ``generate`` vs one ``generate`` per layer.

    .venv/bin/python bench/decoder_lens.py                       # embedded Whisper tiny.en, 4 Festival test utterances
    .venv/bin/python bench/decoder_lens.py --backbone whisper_base --utterances 2

Both ways decode the same lensed encoder states (computed once, outside the timing: the encoder
costs the same either way) greedily, with the same per-utterance token caps as the analysis;
the token ids must be identical (asserted). For English-only models also the naive way, transformers'
Whisper ``generate(encoder_outputs=...)`` once per layer (same ids asserted). Last line:
``ratio=<per-layer time / batched time> ...``.

Measured (2 shared CPU cores, tiny.en, 4 test utterances, best of 2): per layer 2.09 s, batched 3.18 s,
ratio 0.66: the one-call batch is slower, because generate keeps computing finished rows (cross-attention
over 1500 frames) while the longest row -- typically layer 0 looping to its token cap -- runs on. Timings
on this shared machine varied up to 10x between runs.
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

    def per_layer_whisper_generate():
        """The naive way: transformers' Whisper generate(encoder_outputs=...) once per layer (English-only
        models; on multilingual ones transformers 5.24's Whisper loop fails with encoder_outputs)."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutput

        prompt_len = len(bb.decoder_prompt_ids())
        cap_t = torch.tensor(caps)

        class Cap(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return (input_ids.shape[1] - prompt_len) >= cap_t

        out = []
        for x in lensed:
            seqs = bb.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=x), max_new_tokens=max(caps),
                                     stopping_criteria=StoppingCriteriaList([Cap()]), num_beams=1, do_sample=False)
            out.append(bb._strip(seqs, caps)[0])
        return out

    t_loop, ref = best_of(per_layer, args.repeats)
    t_batch, got = best_of(batched, args.repeats)
    assert got == ref, "batched decoding changed token ids"
    n_tok = sum(len(t) for layer in ref for t in layer)
    extra = {}
    if not getattr(bb.model.generation_config, "is_multilingual", False):
        t_whisper, naive = best_of(per_layer_whisper_generate, args.repeats)
        assert naive == ref, "Whisper's generate per layer gave other token ids"
        extra = {"whisper_generate_per_layer_s": t_whisper, "ratio_vs_whisper_generate_per_layer": t_whisper / t_batch}
        print(f"Whisper's own generate(encoder_outputs=...) once per layer: {t_whisper:.2f} s (same ids)", flush=True)
    print(f"{bb.name}: {len(states)} states x {len(audio)} utterances, encoder {t_enc:.2f} s (not timed below), "
          f"{n_tok} tokens; one generate per layer {t_loop:.2f} s, one batched generate {t_batch:.2f} s", flush=True)
    report(ratio=t_loop / t_batch, per_layer_s=t_loop, batched_s=t_batch, **extra, layers=len(states),
           utterances=len(audio), identical_ids=True, backbone=bb.name)


if __name__ == "__main__":
    main()

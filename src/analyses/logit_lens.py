"""Logit lens on Whisper's decoder (nostalgebraist, 2020; tuned-lens' ``LogitLens``): read every
decoder layer's residual stream through the decoder's own final LayerNorm and output head.

Teacher-forced on the model's own final transcript: the decoder input is the usual prompt
(``backbone.decoder_prompt_ids()``) followed by the greedy transcript's token ids, cross-attending
to the encoder output; the positions from the prompt's last token to the transcript's last token
predict the transcript's tokens and then ``<|endoftext|>`` (the "final tokens").

Decoder states follow the project's convention (src/layers.py): state 0 is the input to the
first decoder layer (token + position embeddings), state k the raw output of decoder layer k.
transformers returns its last decoder hidden state *after* ``decoder.layer_norm`` and all the
others before it; the raw last output is taken with a forward hook (removed on exit and on
error) instead, so every state goes through the norm exactly once:
``logits_k = output_head(decoder.layer_norm(h_k))``. At the last state that is the model's own logits
(tested to 1e-5).

Measures per decoder state, over the transcript positions (means over positions of all
utterances, percentile bootstrap over the split unit ``split.by``: texts by default, the
readings of one sentence resampled together, as the probes do; columns ``unit``, ``n_units``,
``few_units`` (fewer than 5), ``n_utterances``):

- ``top1_agreement``: argmax of the lens == argmax of the final layer;
- ``final_token_rank``: rank of the final token in the lens (0 = its top-1); ``final_token_in_topk``;
- ``final_token_logprob``: log-probability (nats) of the final token under the lens;
- ``kl_final_layer``: KL(final || layer) in nats, ``sum_v p_final (log p_final - log p_layer)``.

Full-vocabulary distributions are never stored: every measure is computed per batch and only the
top-``top_k`` tokens per position and layer are kept (table ``logit_lens_topk``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from src.analyses.base import (
    AnalysisError,
    AnalysisLayerError,
    AnalysisResult,
    MeasureGroupsResult,
    interval_units,
    ratio_rows,
    select_utterances,
    whisper_backbone,
)
from src.lenses.logit import decoder_states, lens_log_probs, position_measures

log = logging.getLogger(__name__)

MEASURES = ("top1_agreement", "final_token_rank", "final_token_in_topk", "final_token_logprob", "kl_final_layer")

class LogitLens:
    """Whisper decoder logit lens, teacher-forced on the model's own transcript.

    Args:
        layers: decoder states (``None``: all, ``0..D``; src.layers syntax over the decoder's states).
        utterances, split, max_utterances, batch_utterances, language, task: as :class:`DecoderLens`.
        top_k: tokens kept per position and layer (table ``logit_lens_topk``; ``0``: no table) and the k of
            ``final_token_in_topk``.
        n_boot, alpha, seed: bootstrap over the split unit ``split.by`` (texts by default).
    """

    needs_cache = False
    lens = "logit_lens"

    def __init__(
        self,
        layers=None,
        utterances: str | Sequence[str] = "test",
        split: dict | None = None,
        max_utterances: int | None = None,
        batch_utterances: int = 4,
        language: str | None = "en",
        task: str = "transcribe",
        top_k: int = 5,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int | None = None,
    ) -> None:
        if int(batch_utterances) < 1:
            raise AnalysisError(f"batch_utterances must be >= 1, got {batch_utterances}")
        if int(top_k) < 0:
            raise AnalysisError(f"top_k must be >= 0, got {top_k}")
        self.layers = layers
        self.utterances = utterances if isinstance(utterances, str) else list(utterances)
        self.split = dict(split or {})
        self.max_utterances = max_utterances
        self.batch_utterances = int(batch_utterances)
        self.language = language
        self.task = task
        self.top_k = int(top_k)
        self.n_boot = int(n_boot)
        self.alpha = float(alpha)
        self.seed = seed

    def resolve(self, bb) -> list[int]:
        from src.layers import resolve_for

        return resolve_for(len(bb.decoder_layer_modules()) + 1, self.layers, what="analysis.layers (decoder states)",
                           error=AnalysisLayerError)  # fmt: skip

    def run(self, ctx) -> AnalysisResult:
        from src.progress import progress

        bb = whisper_backbone(ctx, "analysis=logit_lens")
        positions0 = int(getattr(bb, "decoded_positions", 0))
        corpus = ctx.corpus
        layers = self.resolve(bb)
        last = len(bb.decoder_layer_modules())
        seed = ctx.seed if self.seed is None else int(self.seed)
        idx = select_utterances(corpus, self.utterances, self.split, ctx.seed, self.max_utterances)
        ids = [str(corpus.ids[i]) for i in idx]
        unit, groups = interval_units(corpus, idx, self.split.get("by", "text"), "analysis=logit_lens")
        audio = []
        for i, u in zip(idx, ids):
            a = torch.as_tensor(np.asarray(corpus[i].audio, dtype=np.float32))
            bb.check_input(int(a.shape[-1]), u)
            audio.append(a)
        prompt = bb.decoder_prompt_ids(self.language or "en", self.task)
        eos = bb.eos_token_id

        # per utterance, per layer: sums over positions [agreement, rank, in_topk, logprob, kl, positions]
        sums = np.zeros((len(idx), len(layers), 6))
        topk_rows, transcripts = [], []
        for s in progress(range(0, len(idx), self.batch_utterances), desc="logit lens", unit="batch"):
            ws, us = audio[s : s + self.batch_utterances], ids[s : s + self.batch_utterances]
            enc = bb.window_states(ws, us)[-1]  # (B, F, d): the encoder output (final_norm)
            toks, unended = bb.generate_from_encoder_states(enc, None, self.language, self.task)  # = model.generate
            seqs = [prompt + t for t in toks]
            n = max(len(q) for q in seqs)
            input_ids = torch.tensor([q + [eos] * (n - len(q)) for q in seqs])  # (B, T): right padding, causal
            hs = decoder_states(bb, enc, input_ids)  # (D + 1) x (B, T, d)
            final = lens_log_probs(bb, hs, last)  # (B, T, V)
            for j, t in enumerate(toks):
                u = s + j
                target = torch.tensor(t if unended[j] else t + [eos])  # (N,): eos where the model ended with it
                pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))  # positions predicting target
                transcripts.append({"utterance": us[j], "tokens": len(t), "transcript": bb.decode_ids(t)})
                sums[u, :, 5] = len(target)
                for li, k in enumerate(layers):
                    lp = final[j, pos] if k == last else lens_log_probs(bb, [h[j : j + 1, pos] for h in hs], k)[0]
                    m = position_measures(lp, final[j, pos], target, max(self.top_k, 1))
                    sums[u, li, :5] = [m["agreement"].sum(), m["rank"].sum(), m["in_topk"].sum(),
                                       m["logprob"].sum(), m["kl"].sum()]  # fmt: skip
                    if self.top_k:
                        v, w = lp.topk(self.top_k, dim=-1)  # (N, k)
                        for p in range(len(target)):
                            for r in range(self.top_k):
                                topk_rows.append({"utterance": us[j], "position": p, "final_token": int(target[p]),
                                                  "final_token_text": bb.decode_ids([int(target[p])]) if int(target[p]) != eos else "<|endoftext|>",
                                                  "layer": k, "rank": r, "token": int(w[p, r]),
                                                  "token_text": bb.decode_ids([int(w[p, r])]), "logprob": float(v[p, r])})  # fmt: skip
            del hs, final

        rows = []
        for li, k in enumerate(layers):
            base = {"layer": k, "layer_name": str(k), "lens": self.lens}
            for col, measure in enumerate(MEASURES):
                st = np.stack([sums[:, li, col], sums[:, li, 5]], axis=1)  # (U, 2): sum over positions, positions
                rows.append(ratio_rows(st, base, measure, self.n_boot, self.alpha, seed, groups, unit))
            log.info("logit lens decoder state %d: top-1 agreement %.3f, KL %.3f", k, rows[-5]["value"], rows[-1]["value"])
        meta = {"lens": self.lens, "layers": layers, "states": "decoder", "decoder_layers": last,
                "utterances": len(idx), "positions": int(sums[:, 0, 5].sum()), "prompt_ids": prompt,
                "teacher": "final transcript (greedy)", "top_k": self.top_k, "seed": seed, "n_boot": self.n_boot,
                "bootstrap_unit": unit, "bootstrap_units": int(len(set(groups.tolist()))),
                "decoder_positions": int(getattr(bb, "decoded_positions", 0)) - positions0}  # fmt: skip
        tables = {"logit_lens_transcripts": transcripts}
        if self.top_k:
            tables["logit_lens_topk"] = topk_rows
        groups = {"logit_lens_agreement_over_layers": (["top1_agreement", "final_token_in_topk"], "share of positions"),
                  "logit_lens_kl_over_layers": (["kl_final_layer"], "KL(final || layer), nats"),
                  "logit_lens_logprob_over_layers": (["final_token_logprob"], "log p(final token), nats")}  # fmt: skip
        return MeasureGroupsResult("logit_lens", rows, line_plots=[], meta=meta, tables=tables, figure_groups=groups)

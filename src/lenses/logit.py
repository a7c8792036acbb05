"""The logit lens on Whisper's decoder: decoder states read through the decoder's own final LayerNorm and output
head (nostalgebraist, 2020; tuned-lens' ``LogitLens``), and the per-position measures of one lens.

The backbone's surface gives the states (``WhisperBackbone.decoder_states``: state 0 the input to the first decoder
layer, state k the raw output of layer k) and the modules (``decoder_final_norm_module()``, ``output_head()``);
``src/analyses/logit_lens.py`` runs this over a corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lens_log_probs(bb, states: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
    """``log_softmax(output_head(decoder.layer_norm(states[layer])))``: (B, T, V) float32 log-probabilities."""
    h = bb.decoder_final_norm_module()(states[layer])  # (B, T, d)
    return torch.log_softmax(bb.output_head()(h).float(), dim=-1)  # (B, T, V)


def decoder_states(bb, encoder_output: torch.Tensor, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Decoder states 0..D (raw residual stream) for teacher-forced ``input_ids`` (B, T) cross-attending to
    ``encoder_output`` (B, F, d): ``D + 1`` tensors (B, T, d) (``WhisperBackbone.decoder_states``)."""
    return bb.decoder_states(encoder_output, input_ids)


def position_measures(logp: torch.Tensor, final_logp: torch.Tensor, target: torch.Tensor, top_k: int) -> dict:
    """Per-position measures of one lens: logp, final_logp (N, V) log-probabilities, target (N,) final tokens.

    Returns (N,) arrays: agreement, rank, in_topk, logprob, kl."""
    lt = logp.gather(-1, target[:, None])  # (N, 1)
    rank = (logp > lt).sum(-1)  # (N,) tokens strictly more probable than the final token
    kl = (final_logp.exp() * (final_logp - logp)).sum(-1)  # (N,) KL(final || layer), nats
    return {
        "agreement": (logp.argmax(-1) == final_logp.argmax(-1)).double().numpy(),
        "rank": rank.double().numpy(),
        "in_topk": (rank < top_k).double().numpy(),
        "logprob": lt[:, 0].double().numpy(),
        "kl": kl.clamp_min(0).double().numpy(),
    }

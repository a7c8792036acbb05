"""WavLM self-attention computed faithfully from the module's own weights, exposing per-head weights and values.

transformers' ``WavLMAttention`` runs ``F.multi_head_attention_forward`` (with WavLM's gated relative
position bias) and returns the head-averaged weights copied into every head; it never calls ``v_proj`` as a
module.  :func:`wavlm_attention` recomputes the same attention explicitly:

- relative position bias (layer 0's ``rel_attn_embed`` over ``_relative_positions_bucket(j - i)``), shared by
  every layer, ``(H, R, T)``;
- the gate of each query frame and head from its own hidden state:
  ``g = sigmoid(sum_4(gru_rel_pos_linear(x_i^h).view(2, 4)))``, ``gate = g_a (g_b c_h - 1) + 2``;
- ``alpha^h = softmax(q^h k^h^T / sqrt(d) + gate^h * bias^h)`` with key padding from the (B, T) mask;
- ``out = out_proj(concat_h alpha^h v^h)`` with ``q``/``k``/``v`` from calling ``q_proj``/``k_proj``/``v_proj``
  as modules, so the engine's ``v_proj`` hooks (value zeroing, value capture) reach WavLM's values.

:func:`faithful_wavlm` (a context manager) makes every ``WavLMAttention`` of a model use it for the duration
(an instance-level ``forward`` replaced and restored on exit, also on error; the model files are untouched);
it returns per-head ``alpha`` ``(B, H, R, T)`` as the module's second output.  Verified against transformers'
own layer output (tests/context_mixing/test_encoder_wavlm.py: 1e-10 in float64, 1e-5 in float32) and against
its head-averaged weights.  It also accepts ``key_value_states`` + ``cm_query_positions`` so value zeroing can
restrict the queries to the receiving frames (positions are needed for the relative bias).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def wavlm_attention(attn, bias_attn, x_q: Tensor, x_kv: Tensor, q_pos: Tensor,
                    attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(out (B, R, D), alpha (B, H, R, T))`` of WavLM attention module ``attn`` for queries ``x_q`` (``(B, R, D)``,
    at frame positions ``q_pos`` ``(R,)``) over keys/values ``x_kv`` (``(B, T, D)``); ``bias_attn`` is the layer-0
    module that holds ``rel_attn_embed``; ``attention_mask`` ``(B, T)``: 1 = keep."""
    B, R, D = x_q.shape
    T = x_kv.shape[1]
    H, hd = int(attn.num_heads), int(attn.head_dim)
    # relative position bias (as WavLMAttention.compute_bias, at the query positions asked for)
    rel = torch.arange(T, device=x_q.device)[None, :] - q_pos.to(x_q.device)[:, None]  # (R, T): memory - context
    bias = bias_attn.rel_attn_embed(bias_attn._relative_positions_bucket(rel)).permute(2, 0, 1)  # (H, R, T)
    # gate per query frame and head
    g = attn.gru_rel_pos_linear(x_q.view(B, R, H, hd).permute(0, 2, 1, 3))  # (B, H, R, 8)
    g = g.view(B, H, R, 2, 4).sum(-1)  # (B, H, R, 2)
    gate_a, gate_b = torch.sigmoid(g).chunk(2, dim=-1)  # (B, H, R, 1) each
    gate = gate_a * (gate_b * attn.gru_rel_pos_const - 1.0) + 2.0  # (B, H, R, 1)
    gated_bias = gate * bias.to(x_q.dtype)[None]  # (B, H, R, T)
    q = attn.q_proj(x_q).view(B, R, H, hd).transpose(1, 2)  # (B, H, R, hd)
    k = attn.k_proj(x_kv)
    v = attn.v_proj(x_kv)
    k = k.reshape(k.shape[0], T, H, hd).transpose(1, 2)  # (B, H, T, hd)
    v = v.reshape(v.shape[0], T, H, hd).transpose(1, 2)
    scores = torch.matmul(q * (hd**-0.5), k.transpose(-2, -1)) + gated_bias  # (B, H, R, T)
    if attention_mask is not None:
        pad = attention_mask.ne(1).to(x_q.device)[:, None, None, :]  # (B, 1, 1, T)
        scores = scores.masked_fill(pad, float("-inf"))
    alpha = torch.softmax(scores, dim=-1)  # (B, H, R, T)
    z = torch.matmul(alpha, v).transpose(1, 2).reshape(B, R, D)  # (B, R, D)
    return attn.out_proj(z), alpha


def _is_wavlm_attention(m) -> bool:
    return type(m).__name__ == "WavLMAttention"


@contextmanager
def faithful_wavlm(model) -> Iterator[list]:
    """Within the block every ``WavLMAttention`` of ``model`` (a module, or a list of modules such as
    ``backbone.attention_modules()``) computes :func:`wavlm_attention` and returns ``(out, alpha per head,
    position_bias)``; restored on exit, also on error. Yields the attention modules."""
    roots = [model] if isinstance(model, torch.nn.Module) else list(model)
    mods = [m for r in roots for m in r.modules() if _is_wavlm_attention(m)]
    if not mods:
        yield []
        return
    bias_attn = next((m for m in mods if hasattr(m, "rel_attn_embed")), None)
    if bias_attn is None:
        raise ValueError("no WavLM attention module holds a relative position embedding (rel_attn_embed)")

    def make(m):
        def forward(hidden_states, attention_mask=None, position_bias=None, index=0, key_value_states=None,
                    cm_query_positions=None, **kwargs):  # fmt: skip
            x_kv = hidden_states if key_value_states is None else key_value_states
            R = hidden_states.shape[1]
            if cm_query_positions is None:
                if R != x_kv.shape[1]:
                    raise ValueError("a query subset needs cm_query_positions")
                cm_query_positions = torch.arange(R)
            out, alpha = wavlm_attention(m, bias_attn, hidden_states, x_kv, cm_query_positions, attention_mask)
            return out, alpha, position_bias

        return forward

    try:
        for m in mods:
            m.forward = make(m)
        yield mods
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)

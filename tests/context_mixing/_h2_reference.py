"""Literal references for the Whisper decoder measures (src/context_mixing/decoder.py).

Deliberately slow and explicit: every attention weight, value vector and norm is computed with Python
loops over heads, positions and layers, straight from the module weights, without hooks and without
transformers' attention code. Value zeroing recomputes the whole decoder layer by hand with the chosen
value vectors set to zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm of each row, one row at a time: (N, D) -> (N, D)."""
    out = []
    for row in x:
        mu = row.mean()
        var = ((row - mu) ** 2).mean()
        out.append((row - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias)
    return torch.stack(out)


def attention(attn, xq: torch.Tensor, xkv: torch.Tensor, causal: bool, zero: set[int] = frozenset()):
    """One Whisper attention sublayer by hand: (N, D) queries, (S, D) keys/values -> (output (N, D),
    alpha (H, N, S), f (H, S, D) = value vectors through each head's slice of out_proj, bias b_V included).
    Source positions in ``zero`` get value vectors 0 (all heads) after the softmax."""
    H, dh = attn.num_heads, attn.head_dim
    N, S = xq.shape[0], xkv.shape[0]
    Wq, bq = attn.q_proj.weight, attn.q_proj.bias
    Wk = attn.k_proj.weight
    Wv, bv = attn.v_proj.weight, attn.v_proj.bias
    Wo, bo = attn.out_proj.weight, attn.out_proj.bias
    alpha = torch.zeros(H, N, S, dtype=xq.dtype)
    f = torch.zeros(H, S, Wo.shape[0], dtype=xq.dtype)
    heads_out = torch.zeros(N, H * dh, dtype=xq.dtype)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        vs, ks = [], [Wk[sl] @ xkv[j] for j in range(S)]
        for j in range(S):
            v = Wv[sl] @ xkv[j] + bv[sl]
            f[h, j] = Wo[:, sl] @ v
            vs.append(torch.zeros_like(v) if j in zero else v)
        for i in range(N):
            q = (Wq[sl] @ xq[i] + bq[sl]) * dh**-0.5
            scores = []
            for j in range(S):
                scores.append(-math.inf if causal and j > i else float(q @ ks[j]))
            m = max(scores)
            e = [0.0 if s == -math.inf else math.exp(s - m) for s in scores]
            z = sum(e)
            for j in range(S):
                alpha[h, i, j] = e[j] / z
                heads_out[i, sl] = heads_out[i, sl] + alpha[h, i, j] * vs[j]
    out = torch.stack([Wo @ heads_out[i] + bo for i in range(N)])
    return out, alpha, f


def decoder_layer(layer, h: torch.Tensor, enc: torch.Tensor, zero_self=frozenset(), zero_cross=frozenset()):
    """A WhisperDecoderLayer by hand (pre-LN; gelu FFN): h (N, D), enc (F, D) -> (out (N, D), parts)."""
    x = layer_norm(h, layer.self_attn_layer_norm)
    a, alpha_s, f_s = attention(layer.self_attn, x, x, causal=True, zero=set(zero_self))
    h1 = h + a
    x = layer_norm(h1, layer.encoder_attn_layer_norm)
    c, alpha_c, f_c = attention(layer.encoder_attn, x, enc, causal=False, zero=set(zero_cross))
    h2 = h1 + c
    x = layer_norm(h2, layer.final_layer_norm)
    ff = torch.stack([layer.fc2.weight @ torch.nn.functional.gelu(layer.fc1.weight @ r + layer.fc1.bias) + layer.fc2.bias
                      for r in x])  # fmt: skip
    return h2 + ff, {"alpha_self": alpha_s, "f_self": f_s, "alpha_cross": alpha_c, "f_cross": f_c}


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(a @ b) / (float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b)))


def norms(alpha: torch.Tensor, f: torch.Tensor, residual: torch.Tensor | None = None) -> np.ndarray:
    """Kobayashi norms with loops: N[i, j] = || sum_h alpha[h, i, j] f[h, j] (+ residual[i] if i == j) ||."""
    H, N, S = alpha.shape
    out = np.zeros((N, S))
    for i in range(N):
        for j in range(S):
            z = torch.zeros(f.shape[-1], dtype=f.dtype)
            for h in range(H):
                z = z + alpha[h, i, j] * f[h, j]
            if residual is not None and i == j:
                z = z + residual[i]
            out[i, j] = float(torch.linalg.vector_norm(z))
    return out


def rollout(att: np.ndarray) -> np.ndarray:
    """Rollout with loops: att (L, N, N) -> (L, N, N), R_0 = A^_0, R_l = A^_l R_{l-1}, A^ = rownorm(A + I)."""
    L, N, _ = att.shape
    out = np.zeros_like(att)
    prev = None
    for layer in range(L):
        a = att[layer] + np.eye(N)
        for i in range(N):
            a[i] = a[i] / a[i].sum()
        if prev is None:
            cur = a
        else:
            cur = np.zeros((N, N))
            for i in range(N):
                for j in range(N):
                    cur[i, j] = sum(a[i, k] * prev[k, j] for k in range(N))
        out[layer] = cur
        prev = cur
    return out


def decoder_reference(model, feats: torch.Tensor, input_ids: list[int], groups: list[np.ndarray]) -> dict:
    """Every decoder measure by hand, per layer: the clean layer inputs come from the model's hidden states;
    each layer (and each value-zeroing copy) is recomputed by :func:`decoder_layer`."""
    with torch.no_grad():
        out = model(input_features=feats, decoder_input_ids=torch.tensor([input_ids]), output_hidden_states=True,
                    use_cache=False)  # fmt: skip
        hs = out.decoder_hidden_states  # L + 1 states, the last after decoder.layer_norm
        enc = out.encoder_last_hidden_state[0]  # (F, D)
        layers = model.model.decoder.layers
        L, N = len(layers), len(input_ids)
        res = {k: [] for k in ("attention", "heads", "attention_norm", "attention_norm_res", "vz", "cross_attention",
                               "cross_heads", "cross_norm", "cross_vz", "recomputed")}  # fmt: skip
        for layer_i, layer in enumerate(layers):
            h = hs[layer_i][0]  # (N, D) clean input
            clean, parts = decoder_layer(layer, h, enc)
            last = layer_i == L - 1
            if last:
                clean = layer_norm(clean, model.model.decoder.layer_norm)
            res["recomputed"].append(float((clean - hs[layer_i + 1][0]).abs().max()))
            a_s, f_s = parts["alpha_self"], parts["f_self"]
            res["heads"].append(a_s.numpy())
            res["attention"].append(a_s.mean(0).numpy())
            res["attention_norm"].append(norms(a_s, f_s))
            res["attention_norm_res"].append(norms(a_s, f_s, residual=h))
            a_c, f_c = parts["alpha_cross"], parts["f_cross"]
            res["cross_heads"].append(a_c.numpy())
            res["cross_attention"].append(a_c.mean(0).numpy())
            res["cross_norm"].append(norms(a_c, f_c))
            vz = np.zeros((N, N))
            for t in range(N):
                y, _ = decoder_layer(layer, h, enc, zero_self={t})
                if last:
                    y = layer_norm(y, model.model.decoder.layer_norm)
                for i in range(t, N):  # positions before t never see t
                    vz[i, t] = cosine_distance(y[i], clean[i])
            res["vz"].append(vz)
            cvz = np.zeros((N, len(groups)))
            for g, idx in enumerate(groups):
                y, _ = decoder_layer(layer, h, enc, zero_cross={int(k) for k in idx})
                if last:
                    y = layer_norm(y, model.model.decoder.layer_norm)
                for i in range(N):
                    cvz[i, g] = cosine_distance(y[i], clean[i])
            res["cross_vz"].append(cvz)
    return {k: np.stack(v) if k != "recomputed" else v for k, v in res.items()}

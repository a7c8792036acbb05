"""Literal references for the context-mixing measures (tests only).

Deliberately slow and explicit: loops over layers, heads, words and frame pairs; attention is recomputed
from each module's own weights (q, k, v projections, softmax, a loop over heads, the out projection) and
each layer is re-implemented per layout, so nothing here shares code (or hooks) with src/context_mixing.

WavLM: its gated relative position bias is recomputed by loops over heads and frame pairs (bucket rule
written out, gate from each query frame's own head slice), added to the scores before the softmax.

Layouts: ``post_ln`` (wav2vec2/HuBERT/data2vec-audio base: h = LN(x + attn(x)); out = LN'(h + FF(h))),
``stable_ln`` (pre-LN wav2vec2: h = x + attn(LN(x)); out = h + FF(LN'(h)); encoder.layer_norm after the
last layer), ``whisper`` (pre-LN: h = x + attn(LN(x)); out = h + fc2(gelu(fc1(LN'(h)))); encoder.layer_norm
after the last layer).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics.pairwise import cosine_distances

# ============================================================================ encoder


def layout_of(backbone) -> str:
    if backbone.config.model_type == "whisper":
        return "whisper"
    return "stable_ln" if type(backbone.model.encoder).__name__.endswith("StableLayerNorm") else "post_ln"


def final_norm_of(backbone, layout: str):
    if layout == "whisper":
        return backbone.model.model.encoder.layer_norm
    if layout == "stable_ln":
        return backbone.model.encoder.layer_norm
    return None


def layer_inputs(backbone, waveform) -> list[torch.Tensor]:
    """transformers' own hidden states: the input (1, T, D) of every layer, float64."""
    p = next(backbone.model.parameters())
    with torch.no_grad():
        if backbone.config.model_type == "whisper":
            feats = backbone.features([waveform]).to(p.dtype)
            hs = backbone.model.model.encoder(feats, output_hidden_states=True).hidden_states
        else:
            batch, mask, _ = backbone._prepare([waveform])
            hs = backbone.model(batch.to(p.dtype), attention_mask=mask, output_hidden_states=True).hidden_states
    n = len(backbone.layer_modules())
    return [hs[i].double() for i in range(n)]


def _lin(x, lin):
    y = x @ lin.weight.double().T
    if lin.bias is not None:
        y = y + lin.bias.double()
    return y


def _bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    """WavLM's relative-position bucket of ``rel = j - i`` (Transformer-XL / T5 style), one pair at a time."""
    nb = num_buckets // 2
    out = nb if rel > 0 else 0
    rp = abs(rel)
    max_exact = nb // 2
    if rp < max_exact:
        return out + rp
    large = max_exact + int(math.log(rp / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact))
    return out + min(large, nb - 1)


def wavlm_bias(bias_attn, attn, xa: torch.Tensor) -> list[torch.Tensor]:
    """Per head h the gated relative position bias (T, T): gate_h(x_i) * E[bucket(j - i), h], by loops."""
    H, hd = attn.num_heads, attn.head_dim
    T = xa.shape[0]
    E = bias_attn.rel_attn_embed.weight.double()
    W = attn.gru_rel_pos_linear.weight.double()
    b = attn.gru_rel_pos_linear.bias.double()
    c = attn.gru_rel_pos_const.double().reshape(-1)
    buckets = [[_bucket(j - i, bias_attn.num_buckets, bias_attn.max_distance) for j in range(T)] for i in range(T)]
    out = []
    for h in range(H):
        M = torch.zeros(T, T, dtype=torch.float64)
        for i in range(T):
            p = W @ xa[i, h * hd : (h + 1) * hd] + b  # (8,)
            ga, gb = torch.sigmoid(p[:4].sum()), torch.sigmoid(p[4:].sum())
            gate = ga * (gb * c[h] - 1.0) + 2.0
            M[i] = gate * E[buckets[i], h]  # the row's T pairs (i, j)
        out.append(M)
    return out


def _bias(backbone, i: int, xa: torch.Tensor):
    if backbone.config.model_type != "wavlm":
        return None
    return wavlm_bias(backbone.attention_modules()[0], backbone.attention_modules()[i], xa)


def attention_heads(attn, xa: torch.Tensor, bias=None) -> list[torch.Tensor]:
    """Per head h: softmax(q_h k_h^T / sqrt(d) [+ bias_h]) as a (T, T) tensor; xa: (T, D) attention input."""
    H, hd = attn.num_heads, attn.head_dim
    q, k = _lin(xa, attn.q_proj), _lin(xa, attn.k_proj)
    out = []
    for h in range(H):
        qh, kh = q[:, h * hd : (h + 1) * hd], k[:, h * hd : (h + 1) * hd]
        scores = (qh @ kh.T) * hd**-0.5
        if bias is not None:
            scores = scores + bias[h]
        out.append(torch.softmax(scores, dim=-1))
    return out


def attention_output(attn, xa: torch.Tensor, zero: list[int] | None = None, bias=None) -> torch.Tensor:
    """The attention sub-layer's output (T, D) with the value vectors of frames ``zero`` set to 0 in every head."""
    H, hd = attn.num_heads, attn.head_dim
    alphas = attention_heads(attn, xa, bias)
    v = _lin(xa, attn.v_proj)
    if zero is not None:
        v = v.clone()
        for j in zero:
            v[j] = 0.0
    parts = []
    for h in range(H):
        parts.append(alphas[h] @ v[:, h * hd : (h + 1) * hd])
    return _lin(torch.cat(parts, dim=1), attn.out_proj)


def layer_forward(backbone, layout: str, i: int, x: torch.Tensor, zero=None) -> torch.Tensor:
    """Layer i re-implemented on x (T, D)."""
    L = backbone.layer_modules()[i]
    if layout == "post_ln":
        h = L.layer_norm(x + attention_output(L.attention, x, zero, _bias(backbone, i, x)))
        return L.final_layer_norm(h + L.feed_forward(h))
    if layout == "stable_ln":
        xa = L.layer_norm(x)
        h = x + attention_output(L.attention, xa, zero, _bias(backbone, i, xa))
        return h + L.feed_forward(L.final_layer_norm(h))
    h = x + attention_output(L.self_attn, L.self_attn_layer_norm(x), zero)
    return h + L.fc2(L.activation_fn(L.fc1(L.final_layer_norm(h))))


def attention_input(backbone, layout: str, i: int, x: torch.Tensor) -> torch.Tensor:
    L = backbone.layer_modules()[i]
    if layout == "post_ln":
        return x
    if layout == "stable_ln":
        return L.layer_norm(x)
    return L.self_attn_layer_norm(x)


def word_blocks(S: np.ndarray, recv, src) -> np.ndarray:
    """(T, S) -> (W_r, W_s): mean of each frame block, by loops over word pairs and frames."""
    out = np.zeros((len(recv), len(src)))
    for a, I in enumerate(recv):
        for b, J in enumerate(src):
            tot = 0.0
            for n in I:
                for m in J:
                    tot += S[n, m]
            out[a, b] = tot / (len(I) * len(J))
    return out


def normalize_rows(S: np.ndarray) -> np.ndarray:
    out = np.zeros_like(S, dtype=np.float64)
    for r in range(S.shape[0]):
        s = S[r].sum()
        out[r] = 0.0 if s == 0 else S[r] / s
    return out


def compute_joint_attention(att_mat, add_residual=True):
    """Abnar & Zuidema's attention_graph_util.compute_joint_attention (numpy), as published."""
    if add_residual:
        residual_att = np.eye(att_mat.shape[1])[None, ...]
        aug_att_mat = att_mat + residual_att
        aug_att_mat = aug_att_mat / aug_att_mat.sum(axis=-1)[..., None]
    else:
        aug_att_mat = att_mat
    joint_attentions = np.zeros(aug_att_mat.shape)
    layers = joint_attentions.shape[0]
    joint_attentions[0] = aug_att_mat[0]
    for i in np.arange(1, layers):
        joint_attentions[i] = aug_att_mat[i].dot(joint_attentions[i - 1])
    return joint_attentions


def head_mean_attention(backbone, waveform) -> np.ndarray:
    """(L, T, T): per layer the mean over heads of the recomputed weights."""
    layout = layout_of(backbone)
    xs = layer_inputs(backbone, waveform)
    out = []
    with torch.no_grad():
        for i, x in enumerate(xs):
            attn = backbone.attention_modules()[i]
            xa = attention_input(backbone, layout, i, x[0])
            heads = attention_heads(attn, xa, _bias(backbone, i, xa))
            tot = heads[0].clone()
            for h in heads[1:]:
                tot = tot + h
            out.append((tot / len(heads)).numpy())
    return np.stack(out)


def attention_norm(backbone, waveform, residual: bool = False, rows=None) -> np.ndarray:
    """(L, T, T): ||sum_h alpha^h_ij f^h(x_j)|| (+ x_i on the diagonal), by loops over i, j and h (only the
    receiving frames ``rows`` when given; other rows are NaN)."""
    layout = layout_of(backbone)
    xs = layer_inputs(backbone, waveform)
    out = []
    with torch.no_grad():
        for i, x in enumerate(xs):
            attn = backbone.attention_modules()[i]
            xa = attention_input(backbone, layout, i, x[0])
            alphas = attention_heads(attn, xa, _bias(backbone, i, xa))
            v = _lin(xa, attn.v_proj).numpy()
            Wo = attn.out_proj.weight.double().numpy()
            al = [a.numpy() for a in alphas]
            xr = x[0].numpy()
            H, hd = attn.num_heads, attn.head_dim
            T = xa.shape[0]
            f = [[Wo[:, h * hd : (h + 1) * hd] @ v[j, h * hd : (h + 1) * hd] for h in range(H)] for j in range(T)]
            N = np.full((T, T), np.nan)
            for a in range(T) if rows is None else rows:
                for b in range(T):
                    vec = al[0][a, b] * f[b][0]
                    for h in range(1, H):
                        vec = vec + al[h][a, b] * f[b][h]
                    if residual and a == b:
                        vec = vec + xr[a]
                    N[a, b] = np.sqrt(np.dot(vec, vec))
            out.append(N)
    return np.stack(out)


def value_zeroing_words(backbone, waveform, words, layers=None) -> np.ndarray:
    """(L, W, W) row-normalised word VZ, the tutorial's way: for every layer and every source word one
    forward of that layer alone (on transformers' own input to it) with the word's values zeroed, the final
    norm after the last layer where the model has one, cosine_distances(...).diagonal(), mean over the
    receiving word's frames."""
    layout = layout_of(backbone)
    xs = layer_inputs(backbone, waveform)
    norm = final_norm_of(backbone, layout)
    n = len(xs)
    layers = list(range(n)) if layers is None else list(layers)
    out = np.zeros((len(layers), len(words), len(words)))
    with torch.no_grad():
        for k, i in enumerate(layers):
            x = xs[i]
            clean = layer_forward(backbone, layout, i, x[0])
            if norm is not None and i == n - 1:
                clean = norm(clean)
            for j, J in enumerate(words):
                alt = layer_forward(backbone, layout, i, x[0], zero=list(J))
                if norm is not None and i == n - 1:
                    alt = norm(alt)
                dist = cosine_distances(alt.numpy(), clean.numpy()).diagonal()
                for a, I in enumerate(words):
                    out[k, a, j] = np.mean([dist[t] for t in I])
            out[k] = normalize_rows(out[k])
    return out


# =====================================================================================================
# Decoder section: literal references for the Whisper decoder measures (src/context_mixing/decoder.py).
# Deliberately slow and explicit: every attention weight, value vector and norm is computed with Python
# loops over heads, positions and layers, straight from the module weights, without hooks and without
# transformers' attention code. Value zeroing recomputes the whole decoder layer by hand with the chosen
# value vectors set to zero. Names start with dec_ (the encoder references above are separate).
# =====================================================================================================


def dec_layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm of each row, one row at a time: (N, D) -> (N, D)."""
    out = []
    for row in x:
        mu = row.mean()
        var = ((row - mu) ** 2).mean()
        out.append((row - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias)
    return torch.stack(out)


def dec_attention(attn, xq: torch.Tensor, xkv: torch.Tensor, causal: bool, zero: set[int] = frozenset()):
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


def dec_layer(layer, h: torch.Tensor, enc: torch.Tensor, zero_self=frozenset(), zero_cross=frozenset()):
    """A WhisperDecoderLayer by hand (pre-LN; gelu FFN): h (N, D), enc (F, D) -> (out (N, D), parts)."""
    x = dec_layer_norm(h, layer.self_attn_layer_norm)
    a, alpha_s, f_s = dec_attention(layer.self_attn, x, x, causal=True, zero=set(zero_self))
    h1 = h + a
    x = dec_layer_norm(h1, layer.encoder_attn_layer_norm)
    c, alpha_c, f_c = dec_attention(layer.encoder_attn, x, enc, causal=False, zero=set(zero_cross))
    h2 = h1 + c
    x = dec_layer_norm(h2, layer.final_layer_norm)
    ff = torch.stack([layer.fc2.weight @ torch.nn.functional.gelu(layer.fc1.weight @ r + layer.fc1.bias) + layer.fc2.bias
                      for r in x])  # fmt: skip
    return h2 + ff, {"alpha_self": alpha_s, "f_self": f_s, "alpha_cross": alpha_c, "f_cross": f_c}


def dec_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(a @ b) / (float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b)))


def dec_norms(alpha: torch.Tensor, f: torch.Tensor, residual: torch.Tensor | None = None) -> np.ndarray:
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


def dec_rollout(att: np.ndarray) -> np.ndarray:
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
            clean, parts = dec_layer(layer, h, enc)
            last = layer_i == L - 1
            if last:
                clean = dec_layer_norm(clean, model.model.decoder.layer_norm)
            res["recomputed"].append(float((clean - hs[layer_i + 1][0]).abs().max()))
            a_s, f_s = parts["alpha_self"], parts["f_self"]
            res["heads"].append(a_s.numpy())
            res["attention"].append(a_s.mean(0).numpy())
            res["attention_norm"].append(dec_norms(a_s, f_s))
            res["attention_norm_res"].append(dec_norms(a_s, f_s, residual=h))
            a_c, f_c = parts["alpha_cross"], parts["f_cross"]
            res["cross_heads"].append(a_c.numpy())
            res["cross_attention"].append(a_c.mean(0).numpy())
            res["cross_norm"].append(dec_norms(a_c, f_c))
            vz = np.zeros((N, N))
            for t in range(N):
                y, _ = dec_layer(layer, h, enc, zero_self={t})
                if last:
                    y = dec_layer_norm(y, model.model.decoder.layer_norm)
                for i in range(t, N):  # positions before t never see t
                    vz[i, t] = dec_cosine_distance(y[i], clean[i])
            res["vz"].append(vz)
            cvz = np.zeros((N, len(groups)))
            for g, idx in enumerate(groups):
                y, _ = dec_layer(layer, h, enc, zero_cross={int(k) for k in idx})
                if last:
                    y = dec_layer_norm(y, model.model.decoder.layer_norm)
                for i in range(N):
                    cvz[i, g] = dec_cosine_distance(y[i], clean[i])
            res["cross_vz"].append(cvz)
    return {k: np.stack(v) if k != "recomputed" else v for k, v in res.items()}

"""Context mixing in speech encoders: attention, rollout, attention norms and value zeroing, per layer,
at frame level, through hooks on the unmodified transformers model (no forked model files).

Families: wav2vec2 (post-LN base and stable-LN large/XLS-R), HuBERT, data2vec-audio and the Whisper
encoder, and WavLM through the faithful attention of src/context_mixing/wavlm.py (``wavlm="faithful"``; with
``"transformers"`` every measure is a clear error, see :data:`WAVLM_UNSUPPORTED`: never the head-averaged
weights transformers broadcasts to every head).  Definitions (docs/context_mixing.md):

- ``attention``: post-softmax weights ``alpha^h_ij`` (eager attention, switched on only for the
  measures that need weights and restored afterwards), mean over heads (per head on request).
- ``rollout`` (Abnar & Zuidema 2020): ``A~_l = row_normalise(mean_h alpha_l + I)``, ``R_0 = A~_0``,
  ``R_l = A~_l R_{l-1}``, from the first transformer layer on, at frame level.
- ``attention_norm`` (Kobayashi et al. 2020): ``N_ij = || sum_h alpha^h_ij f^h(x_j) ||_2`` with
  ``f^h(x_j) = (x_j W_V + b_V)[head h] W_O[head h]`` (the out-projection bias b_O excluded).  ``x_j`` is
  whatever the layer feeds its ``v_proj`` (captured by a hook): the layer input for post-LN layers
  (wav2vec2/HuBERT/data2vec base), ``LN(layer input)`` for pre-LN layers (Whisper, stable-LN wav2vec2).
  Computed per source frame through the Gram matrix ``G_j[h, h'] = <f^h(x_j), f^h'(x_j)>``:
  ``N_ij^2 = a_ij^T G_j a_ij`` with ``a_ij = (alpha^h_ij)_h``, so memory is O(H T^2), never (T, T, D).
- ``attention_norm_res`` (+RES, Kobayashi et al. 2021): the same off the diagonal; on it
  ``|| sum_h alpha^h_ii f^h(x_i) + r_i ||`` with ``r_i`` = the vector the layer adds to its attention
  output in the residual connection = the *layer input* (un-normalised in pre-LN layers).  No
  LayerNorm term is decomposed: in post-LN layers the LN after the residual sum is left out (no +LN1),
  in pre-LN layers the LN before attention is inside ``x_j`` (values are computed from ``LN(x)``).
- ``value_zeroing`` (Mohebbi et al. 2023): for layer ``l`` alone, on its original input (captured by a
  forward pre-hook during one clean forward under the backbone's own attention implementation), the
  ``v_proj`` output rows (bias included, every head) of one source group are zeroed by a forward hook,
  the layer output is recomputed, and ``1 - cos`` to the clean output of that layer is taken per frame.
  Where the model applies its final norm right after that layer (Whisper, stable-LN wav2vec2; not
  post-LN base models, whose ``encoder.layer_norm`` sits before the first layer) both outputs go through
  it.  Batched: the perturbed copies of a layer input are one batch (chunks of ``batch_size``).  Only
  the receiving frames that are asked for are computed (``receivers``): a layer's output at a frame
  depends on that frame's query row alone, so the copies carry only those rows as queries while keys
  and values are those of the full clean sequence (a pre-hook passes the full attention input as the
  attention module's ``key_value_states``; keys and values are projected once per layer, not per copy).
  This is exact (same arithmetic per row) and is where the speed-up over the per-word loop comes from.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from src.backbones.base import BackboneError
from src.backbones.hooks import (
    capture_layer_inputs,
    capture_module_inputs,
    capture_outputs,
    first_output,
    hooked,
)
from src.context_mixing.common import (
    ContextMixingError,
    cosine_distance_rows,
    groups_keep_mask,
)

ENCODER_MEASURES = ("attention", "rollout", "attention_norm", "attention_norm_res", "value_zeroing")
WEIGHT_MEASURES = ("attention", "rollout", "attention_norm", "attention_norm_res")

WAVLM_UNSUPPORTED = {
    "attention": "transformers' WavLM computes attention in F.multi_head_attention_forward and returns the "
    "head-averaged weights copied into every head, not per-head weights",
    "rollout": "it needs the per-layer attention weights, which transformers' WavLM does not expose (it returns "
    "head-averaged weights broadcast to every head)",
    "attention_norm": "it needs per-head weights and values; WavLM's attention runs inside "
    "F.multi_head_attention_forward, which neither returns per-head weights nor calls v_proj",
    "attention_norm_res": "it needs per-head weights and values; WavLM's attention runs inside "
    "F.multi_head_attention_forward, which neither returns per-head weights nor calls v_proj",
    "value_zeroing": "WavLM's attention runs inside F.multi_head_attention_forward with v_proj's weights, so a "
    "v_proj hook cannot zero its value vectors",
}

__all__ = ["ENCODER_MEASURES", "WEIGHT_MEASURES", "ContextMixingError", "EncoderScores", "encoder_scores",
           "encoder_inputs", "value_zeroing_outputs"]  # fmt: skip


@dataclass
class EncoderScores:
    """Frame-level context-mixing scores of one utterance.

    ``layers``: 0-based transformer layer indices (0 = the first transformer layer; score index ``k``
    belongs to ``layers[k]``).  ``num_frames`` = T, the sequence the encoder sees (1500 for Whisper:
    the whole 30 s window, padding included).  Frame ``t`` stands for ``frame_offset + t / frame_rate`` s.
    ``frame[m]``: ``(L, T, T)`` float64 for the weight measures, rows = receiving frame, columns =
    source frame.  ``heads["attention"]``: ``(L, H, T, T)`` when ``per_head``.  ``value_zeroing``:
    ``(L, T, G)``, ``1 - cos`` of receiving frame t when source group g is zeroed; rows of frames not
    in ``receivers`` are NaN.  ``attn_implementation``: the implementation each measure ran under.
    """

    layers: list[int]
    num_frames: int
    frame_rate: float
    frame_offset: float
    frame: dict[str, np.ndarray] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)
    value_zeroing: np.ndarray | None = None
    receivers: np.ndarray | None = None  # frames at which value_zeroing rows were computed
    attn_implementation: dict[str, str] = field(default_factory=dict)  # measure -> implementation used


# ------------------------------------------------------------------------------------ plumbing


def encoder_inputs(backbone, waveform: Tensor, utt_id: str = "?"):
    """``(run, T)``: ``run()`` does one forward of the encoder on ``waveform`` built exactly as the backbone
    builds it for the cache (``backbone.encoder_run``: ``prepare`` for wav2vec2-family models, ``features`` for
    Whisper), in the model's dtype; ``T`` = frames the encoder sees (Whisper: its whole window,
    ``max_source_positions``). Bad audio (too short, longer than Whisper's window): ContextMixingError."""
    try:
        return backbone.encoder_run(waveform, utt_id)
    except BackboneError as e:
        raise ContextMixingError(str(e)) from e


def _check_request(backbone, measures, layers, utt_id, faithful=True) -> tuple[list[str], list[int]]:
    measures = [str(m) for m in measures]
    if not measures:
        raise ContextMixingError("analysis.measures is empty: choose from " + ", ".join(ENCODER_MEASURES))
    for m in measures:
        if m not in ENCODER_MEASURES:
            raise ContextMixingError(f"analysis.measures: unknown encoder measure {m!r}; choose from {list(ENCODER_MEASURES)}")
    n_layers = len(backbone.layer_modules())
    if layers is None:
        layers = list(range(n_layers))
    layers = [int(x) for x in layers]
    if not layers:
        raise ContextMixingError(f"utterance {utt_id!r}: analysis.layers is empty (0-based transformer layers 0..{n_layers - 1})")
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ContextMixingError(f"analysis.layers: {bad} out of range; {backbone.name} has transformer layers 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ContextMixingError(f"analysis.layers: {layers} has duplicates")
    if backbone.model_type == "wavlm" and not faithful:
        m = measures[0]
        raise ContextMixingError(f"measure {m!r} is not available for WavLM ({backbone.name}) with "
                                 f"wavlm='transformers': {WAVLM_UNSUPPORTED[m]}; use wavlm='faithful'")
    return measures, layers


# ------------------------------------------------------------------------------ weight measures


def _weights_pass(backbone, run, T: int, needed: list[int], want_values: bool, measure: str, utt_id: str):
    """One clean forward under eager attention: per needed layer the per-head weights ``(H, T, T)``, and
    (``want_values``) the v_proj inputs ``(T, D)`` and layer inputs ``(T, D)``."""
    attn = backbone.attention_modules()
    lays = backbone.layer_modules()
    a_mods = [attn[i] for i in needed]
    with backbone.using_attention("eager"), torch.no_grad():
        impl = backbone.attention_implementation
        with capture_outputs(a_mods, index=1) as weights, \
             capture_module_inputs([m.v_proj for m in a_mods] if want_values else []) as vin, \
             capture_layer_inputs([lays[i] for i in needed] if want_values else []) as lin:  # fmt: skip
            run()
    out = {}
    for k, i in enumerate(needed):
        w = weights[k]
        if not isinstance(w, Tensor) or w.dim() != 4 or w.shape[-1] != T or w.shape[-2] != T:
            raise ContextMixingError(
                f"utterance {utt_id!r}: measure {measure!r}: {backbone.name} did not return attention weights for "
                f"layer {i} under attn_implementation={impl!r} (got {type(w).__name__}); this model cannot "
                "return attention"
            )
        entry = {"alpha": w[0]}  # (H, T, T) in the model's dtype (float64 per layer where used: memory)
        if want_values:
            entry["v_in"] = vin[k][0].to(torch.float64)  # (T, D)
            args, kwargs = lin[k]
            x = args[0] if args else kwargs["hidden_states"]
            entry["x"] = x[0].to(torch.float64)  # (T, D)
        out[i] = entry
    return out, impl


def _head_values(attn, v_in: Tensor) -> Tensor:
    """``f^h(x_j)``: ``(T, H, D)`` = value vectors (bias included) of head h through that head's slice of W_O."""
    H, hd = int(attn.num_heads), int(attn.head_dim)
    Wv = attn.v_proj.weight.to(torch.float64)
    bv = attn.v_proj.bias.to(torch.float64) if attn.v_proj.bias is not None else 0.0
    v = v_in @ Wv.T + bv  # (T, D)
    Wo = attn.out_proj.weight.to(torch.float64)  # (D, D): out = z @ Wo.T
    T, D = v.shape[0], Wo.shape[0]
    return torch.einsum("thd,ehd->the", v.view(T, H, hd), Wo.view(D, H, hd))  # (T, H, D)


def attention_norms(alpha: Tensor, F: Tensor, residual: Tensor | None = None, chunk: int = 256) -> Tensor:
    """``N_ij = || sum_h alpha[h, i, j] F[j, h] ||`` (``(H, T, S)``, ``(S, H, D)`` -> ``(T, S)``), through the
    per-source Gram matrices ``G_j = F_j F_j^T`` (``(S, H, H)``): memory O(H T S), never (T, S, D).
    ``residual`` ``(T, D)``: on the diagonal ``|| sum_h alpha[h, i, i] F[i, h] + residual[i] ||`` instead."""
    G = torch.einsum("jhd,jkd->jhk", F, F)  # (S, H, H)
    T = alpha.shape[1]
    out = torch.empty(T, alpha.shape[2], dtype=torch.float64)
    for s in range(0, T, chunk):
        a = alpha[:, s : s + chunk]  # (H, c, S)
        ga = torch.einsum("jhk,kij->hij", G, a)  # (H, c, S)
        out[s : s + chunk] = (a * ga).sum(0).clamp_min(0).sqrt()
    if residual is not None:
        n = min(T, alpha.shape[2])
        diag = alpha[:, torch.arange(n), torch.arange(n)]  # (H, n)
        vec = torch.einsum("hi,ihd->id", diag, F[:n]) + residual[:n]  # (n, D)
        out[torch.arange(n), torch.arange(n)] = torch.linalg.vector_norm(vec, dim=-1)
    return out


# ------------------------------------------------------------------------------- value zeroing


def _takes(attn, name: str) -> bool:
    try:
        return name in inspect.signature(attn.forward).parameters
    except (TypeError, ValueError):
        return False


def _has_kv_input(attn) -> bool:
    return _takes(attn, "key_value_states")


def _sub_rows(obj, rows: Tensor, T: int):
    """Restrict per-query tensors of a layer's keyword inputs (a (.., T, T) attention mask) to ``rows``."""
    if isinstance(obj, Tensor) and obj.dim() >= 2 and obj.shape[-2] == T and obj.shape[-1] == T:
        return obj[..., rows, :]
    return obj


def _batch(obj, b: int):
    if isinstance(obj, Tensor) and obj.dim() >= 1 and obj.shape[0] == 1 and b != 1:
        return obj.expand(b, *obj.shape[1:])
    return obj


@torch.no_grad()
def value_zeroing_outputs(layer, attn, layer_args: tuple, layer_kwargs: dict, attn_input: Tensor | None,
                          keep: Tensor, rows: Tensor | None = None, final_norm=None, batch_size: int = 16):  # fmt: skip
    """Recompute one layer on its captured clean input with value vectors zeroed; yields ``(g0, out)`` per chunk,
    ``out`` ``(b, R, D)`` the outputs (through ``final_norm`` when given) of copies ``g0 .. g0 + b - 1``.

    ``layer_args`` / ``layer_kwargs``: the layer's clean inputs (batch 1; ``layer_args[0]`` the hidden states
    ``(1, T, D)``).  ``keep``: ``(G, T)``, 0 = zero that source frame's value vector (every head) in copy g.
    ``rows``: receiving frames to compute (None: all); needs ``attn_input`` = the attention module's clean
    input ``(1, T, D)``, which becomes its ``key_value_states`` so keys and values cover the whole sequence.
    Keys and values are projected once (batch 1) and broadcast to the copies.
    """
    x = layer_args[0] if layer_args else layer_kwargs["hidden_states"]
    T = int(x.shape[1])
    G = int(keep.shape[0])
    if rows is not None and attn_input is None:
        raise ContextMixingError("receiving-frame subsets need the attention input (key_value_states)")
    if rows is not None and not _has_kv_input(attn):
        rows = None  # cannot restrict the queries of this attention module: compute every row
        attn_input = None
    takes_positions = _takes(attn, "cm_query_positions")
    for g0 in range(0, G, batch_size):
        k_mask = keep[g0 : g0 + batch_size]  # (b, T)
        b = int(k_mask.shape[0])
        xr = x if rows is None else x[:, rows]  # (1, R, D)
        xb = xr.expand(b, *xr.shape[1:]).contiguous()  # (b, R, D)
        def prep(v, b=b):
            return _batch(_sub_rows(v, rows, T) if rows is not None else v, b)

        if layer_args:
            args = [xb] + [prep(a) for a in layer_args[1:]]
            kwargs = {k: prep(v) for k, v in layer_kwargs.items()}
        else:
            args = []
            kwargs = {k: prep(v) for k, v in layer_kwargs.items() if k != "hidden_states"}
            kwargs["hidden_states"] = xb

        def to_one(_m, a):  # project keys/values once (batch 1), broadcast afterwards
            return (a[0][:1],) + tuple(a[1:])

        def k_out(_m, _a, out, b=b):
            return out.expand(b, *out.shape[1:])

        def v_out(_m, _a, out, k_mask=k_mask):
            return out * k_mask.to(device=out.device, dtype=out.dtype)[..., None]  # (b, T, D): zeroed values

        def kv_in(_m, a, kw, b=b):
            kw = dict(kw)
            kw["key_value_states"] = attn_input.expand(b, *attn_input.shape[1:])
            if takes_positions:  # WavLM's relative position bias needs the queries' frame positions
                kw["cm_query_positions"] = rows
            return a, kw

        regs = [lambda: attn.k_proj.register_forward_pre_hook(to_one),
                lambda: attn.k_proj.register_forward_hook(k_out),
                lambda: attn.v_proj.register_forward_pre_hook(to_one),
                lambda: attn.v_proj.register_forward_hook(v_out)]  # fmt: skip
        if rows is not None:
            regs.append(lambda: attn.register_forward_pre_hook(kv_in, with_kwargs=True))
        with hooked(*regs):
            out = first_output(layer(*args, **kwargs))  # (b, R, D)
        if final_norm is not None:
            out = final_norm(out)
        yield g0, out


def _vz_pass(backbone, run, T, layers, groups, rows, batch_size, utt_id, progress=False):
    """Value zeroing of ``groups`` at ``layers``: ``(L, T, G)`` float64 (NaN outside ``rows``)."""
    lays = backbone.layer_modules()
    attn = backbone.attention_modules()
    with torch.no_grad(), capture_layer_inputs([lays[i] for i in layers]) as lin, \
         capture_outputs([lays[i] for i in layers], index=0) as lout, \
         capture_layer_inputs([attn[i] for i in layers]) as ain:  # fmt: skip
        run()
    norm = backbone.final_norm_module()
    last = len(lays) - 1
    dev = backbone.parameter_device
    keep = groups_keep_mask(groups, T).to(device=dev, dtype=backbone.parameter_dtype)  # (G, T)
    rows_t = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=dev)
    out = np.full((len(layers), T, len(groups)), np.nan)
    r_idx = np.arange(T) if rows is None else np.asarray(rows)
    it = enumerate(layers)
    if progress:
        from src.progress import Progress

        it = Progress(it, total=len(layers), desc=f"value zeroing {utt_id}", unit="layer")
    for k, i in it:
        if lin[k] is None or lout[k] is None:
            raise ContextMixingError(f"utterance {utt_id!r}: layer {i} of {backbone.name} was not run")
        args, kwargs = lin[k]
        a_args, a_kwargs = ain[k]
        a_in = a_args[0] if a_args else a_kwargs["hidden_states"]  # (1, T, D)
        fn = norm if (norm is not None and i == last) else None
        rows_k = rows_t if _has_kv_input(attn[i]) else None  # None: this module computes every row
        ref = first_output(lout[k])  # (1, T, D): the clean output of layer i
        ref = ref if rows_k is None else ref[:, rows_k]
        if fn is not None:
            ref = fn(ref)
        for g0, o in value_zeroing_outputs(lays[i], attn[i], args, kwargs, a_in, keep, rows_k, fn, batch_size):
            d = cosine_distance_rows(o, ref).T.cpu().numpy()  # (R, b)
            if rows_k is None and rows is not None:
                d = d[rows]
            out[k, r_idx, g0 : g0 + d.shape[1]] = d
    return out


# ------------------------------------------------------------------------------------ the verb


def encoder_scores(backbone, waveform: torch.Tensor, measures: Sequence[str], layers: Sequence[int] | None = None,
                   source_groups: list[np.ndarray] | None = None, per_head: bool = False,
                   batch_size: int = 16, utt_id: str = "?", receivers="groups",
                   wavlm: str = "faithful", progress: bool = False) -> EncoderScores:  # fmt: skip
    """Frame-level context-mixing scores of one utterance's encoder (see the module docstring).

    ``backbone``: an ``HFBackbone`` or ``WhisperBackbone`` (in eval mode); ``waveform``: ``(S,)`` samples.
    ``layers``: 0-based transformer layers (None: all).  ``source_groups``: frame sets zeroed together in
    value zeroing (words; None: every frame alone, so ``G = T``).  ``receivers``: receiving frames whose
    value-zeroing rows are computed: ``"groups"`` (default) the union of ``source_groups`` (every frame
    when ``source_groups`` is None), None every frame, or an index array; other rows are NaN.
    ``batch_size``: perturbed copies per layer call.  ``progress``: report the value-zeroing layers (src.progress)
    (frame-level VZ of a 1500-frame Whisper window is 1500 copies per layer).  Errors (:class:`ContextMixingError`): an unknown
    measure, no layers, audio beyond Whisper's window, a model that returns no attention weights.

    ``wavlm``: ``"faithful"`` (default) runs WavLM's attention through :mod:`src.context_mixing.wavlm` (an explicit
    recomputation from the module's weights that exposes per-head weights and calls ``v_proj``, verified to
    reproduce transformers' layer outputs); ``"transformers"`` keeps transformers' own WavLM attention, with which
    every measure is a :class:`ContextMixingError` (its weights are head-averaged copies, its values unreachable).
    """
    if wavlm not in ("faithful", "transformers"):
        raise ContextMixingError(f"analysis.wavlm={wavlm!r}: use 'faithful' or 'transformers'")
    if backbone.model_type == "wavlm" and wavlm == "faithful":
        from src.context_mixing.wavlm import faithful_wavlm

        _check_request(backbone, measures, layers, utt_id)
        with faithful_wavlm(backbone.attention_modules()):
            return _encoder_scores(backbone, waveform, measures, layers, source_groups, per_head, batch_size, utt_id,
                                   receivers, True, progress)  # fmt: skip
    return _encoder_scores(backbone, waveform, measures, layers, source_groups, per_head, batch_size, utt_id,
                           receivers, wavlm == "faithful", progress)  # fmt: skip


def _encoder_scores(backbone, waveform, measures, layers, source_groups, per_head, batch_size, utt_id, receivers,
                    faithful, progress=False) -> EncoderScores:  # fmt: skip
    measures, layers = _check_request(backbone, measures, layers, utt_id, faithful)
    if batch_size < 1:
        raise ContextMixingError(f"analysis.batch_size={batch_size} must be >= 1")
    backbone.eval()
    run, T = encoder_inputs(backbone, waveform, utt_id)
    res = EncoderScores(layers=list(layers), num_frames=T, frame_rate=float(backbone.frame_rate),
                        frame_offset=float(backbone.frame_offset))  # fmt: skip
    wm = [m for m in measures if m in WEIGHT_MEASURES]
    if wm:
        needed = sorted(set(layers) | (set(range(max(layers) + 1)) if "rollout" in wm else set()))
        want_values = any(m.startswith("attention_norm") for m in wm)
        got, impl = _weights_pass(backbone, run, T, needed, want_values, wm[0], utt_id)
        attn = backbone.attention_modules()
        mean = {i: got[i]["alpha"].to(torch.float64).mean(0) for i in needed}  # (T, T) per layer
        if "attention" in wm:
            res.frame["attention"] = np.stack([mean[i].cpu().numpy() for i in layers])
            if per_head:
                res.heads["attention"] = np.stack([got[i]["alpha"].to(torch.float64).cpu().numpy() for i in layers])
        if "rollout" in wm:
            from src.context_mixing.words import rollout

            R = rollout(np.stack([mean[i].cpu().numpy() for i in range(max(layers) + 1)]))
            res.frame["rollout"] = R[layers]
        for m in ("attention_norm", "attention_norm_res"):
            if m in wm:
                mats = []
                for i in layers:
                    F = _head_values(attn[i], got[i]["v_in"])  # (T, H, D)
                    alpha = got[i]["alpha"].to(torch.float64)  # (H, T, T)
                    mats.append(attention_norms(alpha, F, got[i]["x"] if m.endswith("_res") else None).cpu().numpy())
                res.frame[m] = np.stack(mats)
        for m in wm:
            res.attn_implementation[m] = impl
    if "value_zeroing" in measures:
        groups = [np.arange(t, t + 1) for t in range(T)] if source_groups is None else \
                 [np.asarray(g, dtype=np.int64) for g in source_groups]  # fmt: skip
        for g, idx in enumerate(groups):
            if idx.size == 0 or idx.min() < 0 or idx.max() >= T:
                raise ContextMixingError(f"utterance {utt_id!r}: source group {g} has no frames or frames outside 0..{T - 1}")
        if isinstance(receivers, str):
            if receivers != "groups":
                raise ContextMixingError(f"receivers={receivers!r}: use 'groups', None or an index array")
            rows = None if source_groups is None else np.unique(np.concatenate(groups))
        else:
            rows = None if receivers is None else np.unique(np.asarray(receivers, dtype=np.int64))
        if rows is not None and (rows.size == 0 or rows.min() < 0 or rows.max() >= T):
            raise ContextMixingError(f"utterance {utt_id!r}: receiving frames must lie in 0..{T - 1}")
        res.attn_implementation["value_zeroing"] = str(backbone.attention_implementation)
        res.value_zeroing = _vz_pass(backbone, run, T, layers, groups, rows, batch_size, utt_id, progress)
        res.receivers = np.arange(T) if rows is None else rows
    return res

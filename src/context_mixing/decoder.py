"""Context mixing in Whisper's decoder: self-attention (token x token) and cross-attention
(decoder token x encoder frame), per decoder layer, with hooks only.

Teacher forcing (the tutorial's way, TUTORIAL_SPEC 1.4). Let ``prompt`` be the model's usual
prompt (``backbone.decoder_prompt_ids``: ``<|startoftranscript|>`` [``<|lang|>`` ``<|task|>``]
``<|notimestamps|>``) and ``text`` the token ids of the transcript: the model's own greedy
transcript (``teacher_forcing="model"``, default; ``backbone.transcribe_ids``, prompt and
end-of-text removed) or the reference text tokenised by the model's tokenizer
(``teacher_forcing="reference"``: ``tokenizer.encode(" " + text)``, no special tokens). The
full sequence is ``seq = prompt + text + [<|endoftext|>]``; the decoder input is
``seq[:-1]`` (= ``[start] + generated_ids[:-1]`` of the tutorial, ``generated_ids = seq[1:]``)
and position ``i`` predicts ``seq[i + 1]``. ``N = len(seq) - 1`` positions.

Index convention of every matrix here: ``S[l, i, j]`` = how much *receiving* position ``i``
(row; it predicts ``output_ids[i] = seq[i + 1]``) draws on *source* ``j`` (column; decoder input
token ``input_ids[j] = seq[j]``, or encoder frame / encoder word ``j`` for cross-attention), in
decoder layer ``l`` (0-based: 0 = the first decoder layer). Frame-level, not row-normalised.

Self-attention measures (:data:`SELF_MEASURES`):

- ``attention``: post-softmax weights, mean over heads (per head in ``heads``);
- ``rollout`` (Abnar & Zuidema 2020): per layer the head mean plus identity, row-normalised,
  multiplied cumulatively from the first decoder layer (``R_l = A^_l R_{l-1}``), always over every
  decoder layer whatever ``layers`` selects;
- ``attention_norm`` (Kobayashi et al. 2020): ``|| sum_h alpha^h_ij f^h(x_j) ||_2`` with
  ``f^h(x_j) = (x_j W_V + b_V)^h W_O^h`` (value bias included, output bias excluded); Whisper's
  layers are pre-LN, so ``x_j`` is the *normalised* sublayer input ``self_attn_layer_norm(h_j)``;
  per head ``alpha^h_ij || f^h(x_j) ||``;
- ``attention_norm_res``: as ``attention_norm`` plus the residual on the diagonal:
  ``|| sum_h alpha^h_ij f^h(x_j) + delta_ij h_i ||`` where ``h_i`` is the layer's *raw* input (the
  residual stream the pre-LN sublayer adds its output to; no LayerNorm term: the only LN of the
  sublayer is before the attention, and is inside ``x_j``);
- ``value_zeroing`` (Mohebbi et al. 2023): for layer ``l`` alone, on its original input, the
  self-attention value vectors (``self_attn.v_proj`` output rows, all heads) of source token ``t``
  are zeroed, the layer is recomputed (cross-attention and FFN included) and
  ``S[l, i, t] = 1 - cos(y~_i, y_i)`` for ``i >= t``; ``S[l, i, t] = 0`` for ``i < t`` (causal: those
  positions never see ``t``). The last decoder layer's outputs both go through
  ``decoder.layer_norm`` (what the output head reads). Lower triangular.

Cross-attention measures (:data:`CROSS_MEASURES`), sources = encoder frames of the whole window
(``F = max_source_positions`` frames, padding included, exactly what the decoder reads):

- ``attention``, ``attention_norm``: as above with ``x_j`` = the encoder output (after
  ``encoder.layer_norm``, which the cross-attention reads directly); ``(L, N, F)``;
- ``value_zeroing``: per *source group* (an encoder word's frames) the cross-attention value
  vectors (``encoder_attn.v_proj`` output rows) of those frames are zeroed, the decoder layer is
  recomputed, and ``S[l, i, g] = 1 - cos`` for every position ``i``: ``(L, N, G)``.

Batched value zeroing: the perturbed copies of one layer input form one batch (``batch_size``
copies per forward); a forward hook on ``v_proj`` multiplies the value rows by a per-copy 0/1 mask
(bias included, i.e. the value vectors themselves); attention weights, queries and keys are the
model's own. Layers never propagate perturbations: each layer is re-run alone on the input
recorded (forward pre-hook with kwargs) in one clean teacher-forced forward with
``use_cache=False``. The copies share the encoder states, so the cross-attention keys and values are
projected once per chunk and broadcast (hooks on ``encoder_attn.k_proj`` / ``v_proj``), not per copy. Every hook is removed on exit and on error. Eager attention is switched on
(and restored) only while a measure needs the weights (``attention``, ``rollout``, norms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from src.backbones.hooks import first_output, hooked
from src.context_mixing.common import (
    ContextMixingError,
    cosine_distance_rows,
    zero_values,
)
from src.context_mixing.words import rollout as _rollout_np

SELF_MEASURES = ("attention", "rollout", "attention_norm", "attention_norm_res", "value_zeroing")
CROSS_MEASURES = ("attention", "attention_norm", "value_zeroing")
WEIGHT_MEASURES = {"attention", "rollout", "attention_norm", "attention_norm_res"}
TEACHER_FORCING = ("model", "reference")


@dataclass
class DecoderScores:
    """Frame/token-level decoder scores of one utterance (see the module docstring for conventions).

    ``layers``: 0-based decoder layers of the arrays' first axis. ``input_ids`` (N,) decoder input
    tokens (= column sources of the self-attention matrices); ``output_ids`` (N,) the token each
    position predicts under teacher forcing (row labels). ``text_ids``: the transcript's ids
    (``seq[len(prompt):-1]``); ``prompt_len``: ``len(prompt)``; generated token ``k`` of ``text_ids``
    is input position ``prompt_len + k`` and output row ``prompt_len + k - 1``.
    ``predicted_ids`` (N,): argmax of the teacher-forced logits per position (raw logits, no
    suppression). ``self_frame`` measure -> (L, N, N); ``self_heads`` measure -> (L, H, N, N)
    (``attention``, ``attention_norm`` with ``per_head``); ``cross_frame`` measure -> (L, N, F);
    ``cross_heads`` measure -> (L, H, N, F); ``cross_value_zeroing`` (L, N, G) or None.
    ``num_frames`` = F encoder frames, frame ``k`` at ``frame_offset + k / frame_rate`` s.
    """

    layers: list[int]
    input_ids: list[int]
    output_ids: list[int]
    text_ids: list[int]
    prompt_len: int
    teacher_forcing: str
    num_frames: int
    frame_rate: float
    frame_offset: float
    predicted_ids: list[int] = field(default_factory=list)
    self_frame: dict[str, np.ndarray] = field(default_factory=dict)
    self_heads: dict[str, np.ndarray] = field(default_factory=dict)
    cross_frame: dict[str, np.ndarray] = field(default_factory=dict)
    cross_heads: dict[str, np.ndarray] = field(default_factory=dict)
    cross_value_zeroing: np.ndarray | None = None


# ----------------------------------------------------------------------------- pieces


def attn_implementation(backbone, impl: str | None):
    """``backbone.using_attention(impl)``: the attention implementation switched for a block and restored on
    exit and on error (a module-level name, so a test can pretend eager attention is unavailable)."""
    return backbone.using_attention(impl)


def require_whisper(backbone, what: str) -> None:
    """ContextMixingError unless ``backbone`` has a text decoder (``backbone.has_decoder``: Whisper; names the
    class it is)."""
    if not getattr(backbone, "has_decoder", False):
        model = getattr(backbone, "model", backbone)
        raise ContextMixingError(
            f"{what} needs Whisper's text decoder; backbone {getattr(backbone, 'name', '?')!r} is a "
            f"{type(model).__name__}, which has none (components 'decoder' and 'cross' are Whisper-only; "
            "use backbone=whisper_tiny_en, whisper_base or whisper_hub)"
        )


def teacher_forcing_ids(backbone, waveform: Tensor, teacher_forcing: str = "model", reference_text: str | None = None,
                        language: str | None = "en", task: str = "transcribe", utt_id: str = "?") -> tuple[list[int], list[int]]:  # fmt: skip
    """``(prompt, text_ids)``: the prompt and the transcript's token ids (see the module docstring)."""
    if teacher_forcing not in TEACHER_FORCING:
        raise ContextMixingError(f"teacher_forcing must be one of {TEACHER_FORCING}, got {teacher_forcing!r}")
    prompt = backbone.decoder_prompt_ids(language or "en", task)
    if teacher_forcing == "model":
        # greedy generate with the usual prompt, in the model's dtype (the tests run float64); the language only
        # matters for multilingual models (generation_kwargs ignores it otherwise)
        text = backbone.transcribe_ids([waveform], language if backbone.is_multilingual else None, task)[0]
    else:
        tok = backbone.tokenizer()
        if tok is None:
            raise ContextMixingError(
                f"utterance {utt_id!r}: teacher_forcing=reference needs the model's tokenizer, and backbone "
                f"{backbone.name!r} has none; use teacher_forcing=model"
            )
        if not reference_text or not str(reference_text).strip():
            raise ContextMixingError(f"utterance {utt_id!r}: teacher_forcing=reference but the utterance has no text")
        text = [int(t) for t in tok.encode(" " + str(reference_text).strip(), add_special_tokens=False)]
    return list(prompt), [int(t) for t in text]


def _check_length(backbone, prompt: list[int], text: list[int], utt_id: str) -> None:
    limit = int(backbone.config.max_target_positions)
    if len(prompt) + len(text) > limit:
        raise ContextMixingError(
            f"utterance {utt_id!r}: {len(prompt)} prompt + {len(text)} transcript tokens exceed the decoder's "
            f"{limit} positions (max_target_positions)"
        )


def attention_norms(alpha: Tensor, x_src: Tensor, attn: torch.nn.Module, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Kobayashi norms of one attention sublayer.

    alpha (H, T, S) weights; x_src (S, D) the sublayer's key/value input; ``attn`` the attention
    module (``v_proj``, ``out_proj``, ``num_heads``, ``head_dim``); ``residual`` (T, D): added on the
    diagonal (``T == S``) when given. Returns ``(N (T, S), per-head N^h (H, T, S))``.

    ``N_ij^2 = a_ij^T G_j a_ij`` with ``a_ij = (alpha^h_ij)_h`` and the per-source Gram matrix
    ``G_j[h, h'] = <f^h(x_j), f^h'(x_j)>`` (the encoder's Gram trick, docs/context_mixing.md): memory O(H^2 S + H T S), never the
    (T, S, D) tensor (cross-attention: S = 1500 frames).
    """
    h, dh = int(attn.num_heads), int(attn.head_dim)
    v = attn.v_proj(x_src).view(x_src.shape[0], h, dh).transpose(0, 1)  # (H, S, dh), bias b_V included
    w_o = attn.out_proj.weight.view(-1, h, dh).permute(1, 2, 0)  # (H, dh, D): head h's slice of W_O^T
    f = v @ w_o  # (H, S, D), out_proj bias excluded
    per_head = alpha * torch.linalg.vector_norm(f, dim=-1)[:, None, :]  # (H, T, S)
    gram = torch.einsum("hsd,gsd->shg", f, f)  # (S, H, H)
    n2 = torch.einsum("hts,shg,gts->ts", alpha, gram, alpha)  # (T, S)
    if residual is not None:
        idx = torch.arange(alpha.shape[1])
        z = torch.einsum("hi,hid->id", alpha[:, idx, idx], f[:, idx]) + residual  # (T, D): diagonal vectors
        n2[idx, idx] = (z * z).sum(-1)
    return torch.sqrt(n2.clamp_min(0.0)), per_head


# ----------------------------------------------------------------------------- the engine


@torch.no_grad()
def decoder_scores(
    backbone,
    waveform: Tensor,
    self_measures: Sequence[str] = ("attention", "value_zeroing"),
    cross_measures: Sequence[str] = ("attention", "value_zeroing"),
    layers: Sequence[int] | None = None,
    source_groups: Sequence[np.ndarray] | None = None,
    teacher_forcing: str = "model",
    reference_text: str | None = None,
    language: str | None = "en",
    task: str = "transcribe",
    per_head: bool = False,
    batch_size: int = 16,
    utt_id: str = "?",
    text_ids: Sequence[int] | None = None,
) -> DecoderScores:
    """Decoder self-attention and cross-attention scores of one utterance (module docstring).

    ``layers``: 0-based decoder layers (None: all). ``source_groups``: encoder frame indices per
    encoder word, needed for cross ``value_zeroing``. ``text_ids``: force these transcript ids
    (overrides ``teacher_forcing``; the tests use it). Returns :class:`DecoderScores` (float64 numpy).
    """
    require_whisper(backbone, "decoder context mixing")
    bad = [m for m in self_measures if m not in SELF_MEASURES] + [m for m in cross_measures if m not in CROSS_MEASURES]
    if bad:
        raise ContextMixingError(f"unknown decoder measures {bad}: self-attention has {SELF_MEASURES}, "
                                 f"cross-attention {CROSS_MEASURES}")  # fmt: skip
    if batch_size < 1:
        raise ContextMixingError(f"batch_size must be >= 1, got {batch_size}")
    model = backbone.model
    dec_norm = backbone.decoder_final_norm_module()  # decoder.layer_norm, what the output head reads
    dec_layers = list(backbone.decoder_layer_modules())
    sa_mods = list(backbone.decoder_attention_modules())  # each layer's self-attention
    ca_mods = list(backbone.cross_attention_modules())  # each layer's cross-attention (to the encoder)
    n_layers = len(dec_layers)
    sel = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    if not sel or sel[0] < 0 or sel[-1] >= n_layers:
        raise ContextMixingError(f"decoder layers {list(layers or [])} out of range 0..{n_layers - 1}")
    if "value_zeroing" in cross_measures and source_groups is None:
        raise ContextMixingError(f"utterance {utt_id!r}: cross value_zeroing needs source_groups (encoder words)")
    backbone.check_input(int(waveform.shape[-1]), utt_id)  # beyond Whisper's window: an error naming the utterance

    if text_ids is None:
        prompt, text = teacher_forcing_ids(backbone, waveform, teacher_forcing, reference_text, language, task, utt_id)
    else:
        prompt, text = list(backbone.decoder_prompt_ids(language or "en", task)), [int(t) for t in text_ids]
    _check_length(backbone, prompt, text, utt_id)
    seq = prompt + text + [backbone.eos_token_id]
    inp = torch.tensor([seq[:-1]])  # (1, N)
    dtype = backbone.parameter_dtype
    feats = backbone.features([waveform]).to(dtype)  # (1, M, 2F)

    need_w = bool(WEIGHT_MEASURES & set(self_measures)) or bool({"attention", "attention_norm"} & set(cross_measures))
    inputs: list = [None] * n_layers  # (args, kwargs) of each decoder layer
    outputs: list = [None] * n_layers
    sa_in: list = [None] * n_layers  # self_attn hidden_states input (normalised)
    ca_in: list = [None] * n_layers  # encoder_attn key_value_states (the encoder output)

    def rec_in(i):
        def fn(_m, args, kwargs):
            inputs[i] = (args, dict(kwargs))

        return fn

    def rec_out(i):
        def fn(_m, _args, out):
            outputs[i] = first_output(out)

        return fn

    def rec_sa(i):
        def fn(_m, args, kwargs):
            sa_in[i] = args[0] if args else kwargs["hidden_states"]

        return fn

    def rec_ca(i):
        def fn(_m, _args, kwargs):
            ca_in[i] = kwargs.get("key_value_states")

        return fn

    pre = [(m, rec_in(i)) for i, m in enumerate(dec_layers)]
    pre += [(m, rec_sa(i)) for i, m in enumerate(sa_mods)]
    pre += [(m, rec_ca(i)) for i, m in enumerate(ca_mods)]
    with attn_implementation(backbone, "eager" if need_w else None):
        regs = [(lambda m=m, fn=fn: m.register_forward_pre_hook(fn, with_kwargs=True)) for m, fn in pre]
        regs += [(lambda m=m, i=i: m.register_forward_hook(rec_out(i))) for i, m in enumerate(dec_layers)]
        with hooked(*regs):
            # the encoder alone first, without weights (its T x T maps are not needed here and are large)
            out = backbone.teacher_forced(feats, inp, output_attentions=need_w)
    if any(x is None for x in inputs) or any(x is None for x in outputs):
        raise ContextMixingError(f"utterance {utt_id!r}: the decoder layers were not all run (hooks saw no input)")
    if need_w and (not out.decoder_attentions or out.decoder_attentions[0] is None or not out.cross_attentions):
        raise ContextMixingError(
            f"utterance {utt_id!r}: model {type(model).__name__} returned no attention weights under eager attention; "
            "the measures attention / rollout / attention_norm need them"
        )
    enc_out = out.encoder_last_hidden_state  # (1, F, D), after encoder.layer_norm
    num_frames = int(enc_out.shape[1])

    res = DecoderScores(
        layers=sel, input_ids=seq[:-1], output_ids=seq[1:], text_ids=text, prompt_len=len(prompt),
        teacher_forcing="ids" if text_ids is not None else teacher_forcing, num_frames=num_frames,
        frame_rate=float(backbone.frame_rate), frame_offset=float(backbone.frame_offset),
        predicted_ids=[int(t) for t in out.logits[0].argmax(-1).tolist()],
    )  # fmt: skip

    def np64(x: Tensor) -> np.ndarray:
        return x.detach().to(torch.float64).cpu().numpy()

    # ------------------------------------------------------------- weight measures (from the clean forward)
    if need_w:
        sa = [a[0] for a in out.decoder_attentions]  # L x (H, N, N)
        ca = [a[0] for a in out.cross_attentions]  # L x (H, N, F)
        if "attention" in self_measures:
            res.self_frame["attention"] = np64(torch.stack([sa[l].mean(0) for l in sel]))  # (L, N, N)
            if per_head:
                res.self_heads["attention"] = np64(torch.stack([sa[l] for l in sel]))  # (L, H, N, N)
        if "rollout" in self_measures:
            roll = _rollout_np(np64(torch.stack([a.mean(0) for a in sa])))  # (L_all, N, N), from the first layer
            res.self_frame["rollout"] = roll[sel]
        if "attention_norm" in self_measures or "attention_norm_res" in self_measures:
            norms, norms_res, heads = [], [], []
            for l in sel:
                n, nh = attention_norms(sa[l], sa_in[l][0], sa_mods[l])
                norms.append(n)
                heads.append(nh)
                if "attention_norm_res" in self_measures:
                    norms_res.append(attention_norms(sa[l], sa_in[l][0], sa_mods[l], residual=inputs[l][0][0][0])[0])
            if "attention_norm" in self_measures:
                res.self_frame["attention_norm"] = np64(torch.stack(norms))  # (L, N, N)
                if per_head:
                    res.self_heads["attention_norm"] = np64(torch.stack(heads))  # (L, H, N, N)
            if norms_res:
                res.self_frame["attention_norm_res"] = np64(torch.stack(norms_res))
        if "attention" in cross_measures:
            res.cross_frame["attention"] = np64(torch.stack([ca[l].mean(0) for l in sel]))  # (L, N, F)
            if per_head:
                res.cross_heads["attention"] = np64(torch.stack([ca[l] for l in sel]))  # (L, H, N, F)
        if "attention_norm" in cross_measures:
            pairs = [attention_norms(ca[l], ca_in[l][0], ca_mods[l]) for l in sel]
            res.cross_frame["attention_norm"] = np64(torch.stack([p[0] for p in pairs]))  # (L, N, F)
            if per_head:
                res.cross_heads["attention_norm"] = np64(torch.stack([p[1] for p in pairs]))  # (L, H, N, F)

    # ------------------------------------------------------------- value zeroing (batched, one layer at a time)
    n_pos = len(seq) - 1
    if "value_zeroing" in self_measures:
        masks = 1.0 - torch.eye(n_pos, dtype=torch.float64)  # copy t keeps every value row but t: (N, N)
        vz = []
        for l in sel:
            d = _zeroed_layer_distances(dec_layers, l, (sa_mods[l], ca_mods[l]), inputs[l], outputs[l], dec_norm,
                                        masks, "self_attn", batch_size, enc_out)  # (N copies, N positions)
            m = d.T.clone()  # (N receivers, N sources)
            m[torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), diagonal=1)] = 0.0  # rows i < t: never saw t
            vz.append(m)
        res.self_frame["value_zeroing"] = np64(torch.stack(vz))  # (L, N, N)
    if "value_zeroing" in cross_measures:
        groups = [np.asarray(g, dtype=np.int64) for g in source_groups]
        masks = torch.ones(len(groups), num_frames, dtype=torch.float64)  # (G, F): 0 = zeroed
        for g, idx in enumerate(groups):
            if len(idx) and (idx.min() < 0 or idx.max() >= num_frames):
                raise ContextMixingError(f"utterance {utt_id!r}: source group {g} has frames outside 0..{num_frames - 1}")
            masks[g, torch.as_tensor(idx)] = 0.0
        vz = [_zeroed_layer_distances(dec_layers, l, (sa_mods[l], ca_mods[l]), inputs[l], outputs[l], dec_norm, masks,
                                      "encoder_attn", batch_size, enc_out).T for l in sel]  # fmt: skip
        res.cross_value_zeroing = np64(torch.stack(vz)) if vz else None  # (L, N, G)
    return res


def _zeroed_layer_distances(dec_layers, l: int, attns: tuple, recorded, clean: Tensor, final_norm, keep: Tensor,
                            which: str, batch_size: int, enc_out: Tensor) -> Tensor:  # fmt: skip
    """Decoder layer ``l`` re-run on its recorded input with copy ``b`` keeping only the value rows ``keep[b]``
    of its ``which`` attention (``self_attn`` / ``encoder_attn``; ``attns``: the layer's (self-attention,
    cross-attention) modules): ``1 - cos`` to the clean output, (B, N)."""
    import inspect

    layer = dec_layers[l]
    self_attn, cross_attn = attns
    args, kwargs = recorded
    # every recorded argument by name (the model passes some positionally): {hidden_states, attention_mask, ...}
    bound = inspect.signature(type(layer).forward).bind(layer, *args, **kwargs)
    named = {k: v for k, v in bound.arguments.items() if k != "self"}
    named.update(named.pop("kwargs", {}) or {})
    h = named.pop("hidden_states")  # (1, N, D)
    enc = named.get("encoder_hidden_states")
    enc = enc_out if enc is None else enc  # (1, F, D)
    ref = clean[0]  # (N, D)
    last = l == len(dec_layers) - 1
    if last:
        ref = final_norm(ref)
    out = []
    for s in range(0, keep.shape[0], batch_size):
        k = keep[s : s + batch_size]  # (B, S)
        b = int(k.shape[0])
        kw = {**named, "encoder_hidden_states": enc.expand(b, -1, -1)}  # (B, F, D), a view
        if which == "self_attn":
            with zero_values(self_attn.v_proj, k), _shared_cross_kv(cross_attn, b):
                y = first_output(layer(h.expand(b, -1, -1), **kw))  # (B, N, D)
        else:
            with _shared_cross_kv(cross_attn, b, keep=k):
                y = first_output(layer(h.expand(b, -1, -1), **kw))  # (B, N, D)
        if last:
            y = final_norm(y)
        out.append(cosine_distance_rows(y, ref[None].expand_as(y)))  # (B, N), float64
    return torch.cat(out)  # (G, N)


def _shared_cross_kv(attn, b: int, keep: Tensor | None = None):
    """Hooks for ``b`` copies whose cross-attention reads the *same* encoder states: ``k_proj`` and ``v_proj``
    project them once (a pre-hook passes batch item 0 only) and a forward hook broadcasts the result to the ``b``
    copies; ``keep`` (``(b, F)``, 0 = zero that frame's value vector, bias included) multiplies the values per copy.
    Same numbers as projecting every copy (tested against the literal reference), without ``b`` projections of
    the 1500-frame window per chunk (the bulk of a decoder layer's cost)."""

    def first(_m, args):
        return (args[0][:1],)  # (1, F, D)

    def broadcast(_m, _args, out):
        return out.expand(b, *out.shape[1:])  # (b, F, D), a view

    def masked(_m, _args, out):
        kk = keep.to(device=out.device, dtype=out.dtype)
        if kk.shape != (b, out.shape[1]):
            raise ContextMixingError(f"value mask {tuple(kk.shape)} does not match {b} copies of {out.shape[1]} frames")
        return out * kk[..., None]  # (b, F, D)

    return hooked(
        lambda: attn.k_proj.register_forward_pre_hook(first),
        lambda: attn.k_proj.register_forward_hook(broadcast),
        lambda: attn.v_proj.register_forward_pre_hook(first),
        lambda: attn.v_proj.register_forward_hook(broadcast if keep is None else masked),
    )


# ----------------------------------------------------------------------------- token labels and words


def token_labels(backbone, ids: Sequence[int]) -> list[str]:
    """Display label of each token id (TUTORIAL_SPEC 1.8: ``convert_tokens_to_string(token).strip()``; special tokens
    as written, e.g. ``<|en|>``); without a tokenizer (tests' tiny random Whisper) ``<id>``."""
    tok = backbone.tokenizer() if hasattr(backbone, "tokenizer") else None
    if tok is None:
        return [f"<{int(i)}>" for i in ids]
    out = []
    for i in ids:
        t = tok.convert_ids_to_tokens(int(i))
        s = tok.convert_tokens_to_string([t]).strip() if t is not None else ""
        out.append(s if s else (t or f"<{int(i)}>"))
    return out


def transcript_words(backbone, text_ids: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Normalised words of the transcript ``text_ids`` and, per word, the indices (into ``text_ids``) of the tokens
    that spell it, by incremental decoding: token ``k`` covers characters ``len(decode(ids[:k]))`` ..
    ``len(decode(ids[:k+1]))`` of the decoded text; a word takes every token that overlaps its characters.
    Words are whitespace-separated pieces through :func:`src.functional.text.normalize_text` (a piece may give
    several words, or none: punctuation). Without a tokenizer, every token is one word ``<id>``."""
    import re

    from src.functional.text import normalize_text

    tok = backbone.tokenizer() if hasattr(backbone, "tokenizer") else None
    ids = [int(t) for t in text_ids]
    if tok is None:
        return [f"<{t}>" for t in ids], [[k] for k in range(len(ids))]
    ends, text = [], ""
    for k in range(len(ids)):
        text = tok.decode(ids[: k + 1], skip_special_tokens=True)
        ends.append(len(text))
    starts = [0] + ends[:-1]
    words, toks = [], []
    for m in re.finditer(r"\S+", text):
        s, e = m.span()
        covered = [k for k in range(len(ids)) if starts[k] < e and ends[k] > s]
        for w in normalize_text(m.group(0)).split():
            words.append(w)
            toks.append(covered)
    return words, toks

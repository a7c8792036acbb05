"""Literal re-implementation of activation patching and head ablation (tests only).

Written independently of src/interventions/: explicit ifs per component/kind to find the module, one full
forward of the model per (layer, position, head), the activation replaced position by position in Python
loops, heads sliced by hand from ``out_proj``'s input viewed as ``(B, T, H, head_dim)``, hooks registered with
``register_forward_hook`` / ``register_forward_pre_hook`` and removed in ``finally``. Only the backbone surface
is used to reach modules and run the model.

Layers: residual ``layer`` = state k (0 = the first layer's input, k = layer k's output); head and MLP ``layer`` =
k in 1..N, the layer whose output is state k, i.e. the layer module at index k - 1 (the framework's one convention).
"""

from __future__ import annotations

import torch


def module_for(backbone, component: str, kind: str, layer: int):
    """(module, 'out' | 'in') where the activation lives."""
    if kind != "resid":
        assert layer >= 1, "head / MLP layers count from 1"
        layer = layer - 1  # the module index of layer k
    if component == "encoder":
        layers = backbone.layer_modules()
        if kind == "resid":
            if layer == 0:
                return layers[0], "in"
            return layers[layer - 1], "out"
        if kind == "mlp":
            return backbone.mlp_modules()[layer], "out"
        return backbone.attention_modules()[layer].out_proj, "in"
    if component == "decoder":
        layers = backbone.decoder_layer_modules()
        if kind == "resid":
            if layer == 0:
                return layers[0], "in"
            return layers[layer - 1], "out"
        if kind == "mlp":
            return backbone.decoder_mlp_modules()[layer], "out"
        return backbone.decoder_attention_modules()[layer].out_proj, "in"
    return backbone.cross_attention_modules()[layer].out_proj, "in"


def heads_of(backbone, component: str, layer: int) -> tuple[int, int]:
    """(heads, head width) of the attention of layer ``layer`` (1..N, module ``layer - 1``)."""
    assert layer >= 1
    layer = layer - 1
    if component == "encoder":
        a = backbone.attention_modules()[layer]
    elif component == "decoder":
        a = backbone.decoder_attention_modules()[layer]
    else:
        a = backbone.cross_attention_modules()[layer]
    return int(a.num_heads), int(a.head_dim)


def run(backbone, waveform, ids=None):
    """One full forward: (logits or None, encoder output (1, T, D))."""
    if backbone.has_decoder:
        feats = backbone.features([waveform]).to(backbone.parameter_dtype)
        out = backbone.teacher_forced(feats, torch.as_tensor(ids).reshape(1, -1))
        return out.logits, out.encoder_last_hidden_state
    fn, _ = backbone.encoder_run(waveform)
    out = fn()
    return None, out.last_hidden_state


def _get(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def record(backbone, component, kind, layer, waveform, ids=None) -> torch.Tensor:
    """The whole activation (1, T, F) of one module in one forward."""
    mod, how = module_for(backbone, component, kind, layer)
    box = []
    if how == "out":
        h = mod.register_forward_hook(lambda m, a, o: box.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
    else:
        h = mod.register_forward_pre_hook(lambda m, a, k: box.append(_get(a, k).detach().clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            run(backbone, waveform, ids)
    finally:
        h.remove()
    return box[0]


def run_replaced(backbone, component, kind, layer, waveform, ids, replace):
    """One forward with ``replace(x) -> x'`` applied to the activation."""
    mod, how = module_for(backbone, component, kind, layer)
    if how == "out":
        def hook(m, a, o):
            if isinstance(o, tuple):
                return (replace(o[0]),) + tuple(o[1:])
            return replace(o)

        h = mod.register_forward_hook(hook)
    else:
        def pre(m, a, k):
            if a:
                return (replace(a[0]),) + tuple(a[1:]), k
            k = dict(k)
            k["hidden_states"] = replace(k["hidden_states"])
            return a, k

        h = mod.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            return run(backbone, waveform, ids)
    finally:
        h.remove()


def patch_one(backbone, component, kind, layer, positions, head, source, base_wave, ids):
    """Base run with the activation at ``positions`` (None: all) (and ``head``) taken from ``source`` (1, T, F)."""
    def replace(x):
        y = x.clone()
        T = y.shape[1]
        pos = range(T) if positions is None else positions
        if kind == "head":
            H, d = heads_of(backbone, component, layer)
            yv = y.view(y.shape[0], T, H, d)
            sv = source.view(source.shape[0], source.shape[1], H, d)
            for p in pos:
                for b in range(y.shape[0]):
                    yv[b, p, head, :] = sv[0, p, head, :]
        else:
            for p in pos:
                for b in range(y.shape[0]):
                    y[b, p, :] = source[0, p, :]
        return y

    return run_replaced(backbone, component, kind, layer, base_wave, ids, replace)


def patching_loop(backbone, clean_wave, corrupted_wave, sites, metric, ids=None, direction="denoising"):
    """One forward per site: the metric (a function of (logits, encoder output)) of each patched run."""
    base, src = (corrupted_wave, clean_wave) if direction == "denoising" else (clean_wave, corrupted_wave)
    values = []
    for component, kind, layer, positions, head in sites:
        source = record(backbone, component, kind, layer, src, ids)
        logits, enc = patch_one(backbone, component, kind, layer, positions, head, source, base, ids)
        values.append(float(metric(logits, enc)))
    return values


def ablate_heads(backbone, component, layer, heads, waveform, ids=None, mode="zero", fill=None):
    """One forward with heads of one layer replaced (before out_proj): zero, or ``fill[h]`` (a (T or 1, d) tensor
    per head) for mean/resample ablation."""
    def replace(x):
        y = x.clone()
        H, d = heads_of(backbone, component, layer)
        yv = y.view(y.shape[0], y.shape[1], H, d)
        for h in heads:
            for p in range(y.shape[1]):
                if mode == "zero":
                    yv[:, p, h, :] = 0.0
                else:
                    f = fill[h]
                    yv[:, p, h, :] = f[0] if f.shape[0] == 1 else f[p]
        return y

    return run_replaced(backbone, component, "head", layer, waveform, ids, replace)


def transcribe_with_zeroed_heads(backbone, waveforms, heads, max_new_tokens):
    """Whisper greedy transcripts (transformers' ``generate``, one waveform at a time) with the heads
    ``(component, layer 1..N, head)`` (component ``decoder_self_attention`` | ``cross_attention``) zeroed before
    ``out_proj`` by plain pre-hooks, position by position, at every generation step."""
    hooks = []

    def zero(h, H, d):
        def pre(_m, a):
            y = a[0].clone()
            yv = y.view(y.shape[0], y.shape[1], H, d)
            for p in range(y.shape[1]):
                yv[:, p, h, :] = 0.0
            return (y,) + tuple(a[1:])

        return pre

    for comp, layer, h in heads:
        c = "decoder" if comp == "decoder_self_attention" else comp
        mod, _ = module_for(backbone, c, "head", layer)
        H, d = heads_of(backbone, c, layer)
        hooks.append(mod.register_forward_pre_hook(zero(h, H, d)))
    try:
        with torch.no_grad():
            ids = [backbone.transcribe_ids([w], max_new_tokens=max_new_tokens)[0] for w in waveforms]
    finally:
        for hk in hooks:
            hk.remove()
    return [backbone.decode_ids(i) for i in ids]


def generate_scores(backbone, waveform, max_new_tokens):
    """transformers' greedy ``generate`` of one waveform: ``(token ids, scores (steps, V))`` (hooks installed around
    the call act at every step)."""
    feats = backbone.features([waveform]).to(backbone.parameter_dtype)
    kw = {**backbone.generation_kwargs(), "max_new_tokens": int(max_new_tokens)}
    with torch.no_grad():
        out = backbone.model.generate(feats, output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences[0].tolist(), torch.stack([s[0] for s in out.scores])


def transcribe_with_resampled_heads(backbone, waveform, heads, ref_waveform, ref_ids, max_new_tokens,
                                    scores=False):  # fmt: skip
    """Whisper greedy transcript of ``waveform`` (transformers' ``generate``) with each head ``(component, layer
    1..N, head)`` replaced by its output on another clip: ``ref_waveform`` is first run teacher-forced on
    ``ref_ids`` (its own transcript, prompt included) and each head's output is cut by hand from ``out_proj``'s
    input viewed as ``(B, T, H, d)``; then, during generation, decoder position ``p`` (counted by hand: a call of
    several positions starts at 0, a call of one continues) gets the reference's position ``p`` (its last
    position past its end)."""
    found = []
    for comp, layer, h in heads:
        c = "decoder" if comp == "decoder_self_attention" else comp
        mod, _ = module_for(backbone, c, "head", layer)
        H, d = heads_of(backbone, c, layer)
        found.append((mod, h, H, d))
    fills = []
    for mod, h, H, d in found:
        box = []
        hk = mod.register_forward_pre_hook(lambda m, a, box=box: box.append(a[0].detach().clone()))
        try:
            run(backbone, ref_waveform, ref_ids)
        finally:
            hk.remove()
        x = box[0]
        fills.append(x.view(x.shape[0], x.shape[1], H, d)[0, :, h, :].clone())  # (P_ref, d)

    def substitute(h, H, d, fill):
        seen = [0]

        def pre(_m, a):
            y = a[0].clone()
            n = y.shape[1]
            start = 0 if n > 1 else seen[0]
            seen[0] = start + n
            yv = y.view(y.shape[0], n, H, d)
            for i in range(n):
                p = start + i
                yv[:, i, h, :] = fill[p] if p < fill.shape[0] else fill[fill.shape[0] - 1]
            return (y,) + tuple(a[1:])

        return pre

    hooks = [mod.register_forward_pre_hook(substitute(h, H, d, f)) for (mod, h, H, d), f in zip(found, fills)]
    try:
        if scores:  # (ids, scores of every step) of transformers' generate
            return generate_scores(backbone, waveform, max_new_tokens)
        with torch.no_grad():
            ids = backbone.transcribe_ids([waveform], max_new_tokens=max_new_tokens)[0]
    finally:
        for hk in hooks:
            hk.remove()
    return backbone.decode_ids(ids)

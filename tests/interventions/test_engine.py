"""The intervention engine against a literal re-implementation (tests/reference/interventions.py) on tiny random
models of each family (float64): patching, batched = unbatched, full patches, ablation, attribution patching,
hooks removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.interventions import (
    Site,
    ablated,
    attribution_patching,
    capture,
    forward,
    make_inputs,
    patch_sweep,
    patched,
    rank_correlation,
)
from tests.interventions.conftest import FAMILY_NAMES, IDS
from tests.reference import interventions as ref


def _inputs(bb, pair):
    ids = IDS if bb.has_decoder else None
    return make_inputs(bb, pair[0], ids=ids, utt_id="clean"), make_inputs(bb, pair[1], ids=ids, utt_id="corrupted")


def _metrics(bb, frames):
    """(engine metric of an Out, reference metric of (logits, encoder output)): the same formula twice."""
    if bb.has_decoder:
        return (lambda o: o.logits[:, 3, 9] - o.logits[:, 3, 10]), (lambda lg, enc: lg[0, 3, 9] - lg[0, 3, 10])
    g = torch.Generator().manual_seed(3)
    W = torch.randn(frames, bb.hidden_size, generator=g, dtype=torch.float64)
    return (lambda o: (o.output[:, :frames] * W).sum((1, 2))), (lambda lg, enc: (enc[0, :frames] * W).sum())


def _sites(bb, frames):
    n = len(bb.layer_modules())
    out = []
    for k in range(n + 1):
        out += [Site("encoder", "resid", k, (p,)) for p in (0, 5, frames - 1)]
        out.append(Site("encoder", "resid", k, tuple(range(3, 9)), label="w1"))
    if bb.model_type != "wavlm":
        for l in range(1, n + 1):  # head / MLP layers 1..N (layer k = module k - 1)
            out += [Site("encoder", "head", l, pos, head=h) for h in range(2) for pos in ((2,), (10, 11, 12))]
    for l in range(1, n + 1):
        out += [Site("encoder", "mlp", l, (4,)), Site("encoder", "mlp", l, (7, 8))]
    if bb.has_decoder:
        L = len(IDS)
        nd = len(bb.decoder_layer_modules())
        out += [Site("decoder", "resid", k, (p,)) for k in range(nd + 1) for p in range(L)]
        out += [Site(c, "head", l, (p,), head=h) for c in ("decoder", "cross_attention") for l in range(1, nd + 1)
                for h in range(2) for p in (1, 3)]  # fmt: skip
        out += [Site("decoder", "mlp", l, (p,)) for l in range(1, nd + 1) for p in (0, 3)]
    return out


def _tuples(sites):
    return [(s.component, s.kind, s.layer, s.positions, s.head) for s in sites]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sweep_equals_literal_loop(backbones, pair, family, direction):
    bb = backbones(family)
    clean, corr = _inputs(bb, pair)
    m, m_ref = _metrics(bb, clean.frames)
    sites = _sites(bb, clean.frames)
    got = patch_sweep(bb, clean, corr, sites, m, direction=direction, chunk=5)
    want = ref.patching_loop(bb, pair[0], pair[1], _tuples(sites), m_ref, ids=IDS if bb.has_decoder else None,
                             direction=direction)  # fmt: skip
    np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-9)
    lg_c, enc_c = ref.run(bb, pair[0], IDS if bb.has_decoder else None)
    lg_k, enc_k = ref.run(bb, pair[1], IDS if bb.has_decoder else None)
    assert got.clean == pytest.approx(float(m_ref(lg_c, enc_c)), abs=1e-10)
    assert got.corrupted == pytest.approx(float(m_ref(lg_k, enc_k)), abs=1e-10)
    # the effect is real: some site moves the metric
    assert np.abs(got.values - got.corrupted if direction == "denoising" else got.values - got.clean).max() > 1e-4


def test_wavlm_resid_and_mlp_sweep_equals_literal_loop(iv_root, pair):
    """WavLM: layers re-run from a state get the recorded relative position bias repeated per copy; head sites are
    refused (no hook reaches a head before out_proj)."""
    from src.interventions import InterventionError
    from tests.context_mixing.conftest import make_backbone

    bb = make_backbone(iv_root, "wavlm_post", attn="eager")
    clean, corr = _inputs(bb, pair)
    m, m_ref = _metrics(bb, clean.frames)
    sites = _sites(bb, clean.frames)
    got = patch_sweep(bb, clean, corr, sites, m, chunk=4)
    want = ref.patching_loop(bb, pair[0], pair[1], _tuples(sites), m_ref)
    np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-9)
    with pytest.raises(InterventionError, match="WavLM"):
        patch_sweep(bb, clean, corr, [Site("encoder", "head", 1, (1,), head=0)], m)


@pytest.mark.parametrize("family", ["whisper", "w2v2_stable"])
def test_batched_equals_unbatched(backbones, pair, family):
    bb = backbones(family)
    clean, corr = _inputs(bb, pair)
    m, _ = _metrics(bb, clean.frames)
    sites = _sites(bb, clean.frames)
    a = patch_sweep(bb, clean, corr, sites, m, chunk=3)
    b = patch_sweep(bb, clean, corr, sites, m, chunk=1000)
    c = patch_sweep(bb, clean, corr, sites, m, batched=False)
    np.testing.assert_allclose(a.values, c.values, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.values, c.values, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_full_patch_reproduces_clean_and_empty_patch_the_corrupted_run(backbones, pair, family):
    bb = backbones(family)
    clean, corr = _inputs(bb, pair)
    out_clean, out_corr = forward(bb, clean), forward(bb, corr)
    n = len(bb.layer_modules())
    for k in range(n + 1):  # every position of state k from the clean run: the clean output, exactly
        s = Site("encoder", "resid", k)
        v = capture(bb, clean, [s])[s.key]
        with patched(bb, s, v):
            o = forward(bb, corr)
        torch.testing.assert_close(o.output, out_clean.output, rtol=0, atol=1e-10)  # float64 (the bar: 1e-5 in float32)
        if bb.has_decoder:
            torch.testing.assert_close(o.logits, out_clean.logits, rtol=0, atol=1e-10)  # float64 (the bar: 1e-5 in float32)
    if bb.has_decoder:  # the decoder's last state at every token from the clean run: the clean logits
        s = Site("decoder", "resid", len(bb.decoder_layer_modules()))
        with patched(bb, s, capture(bb, clean, [s])[s.key]):
            o = forward(bb, corr)
        torch.testing.assert_close(o.logits, out_clean.logits, rtol=0, atol=1e-10)  # float64 (the bar: 1e-5 in float32)
        assert (out_clean.logits - out_corr.logits).abs().max() > 1e-5  # tiny random model: small effects
    with patched(bb, [], []):  # hooks on nothing: the corrupted run
        o = forward(bb, corr)
    torch.testing.assert_close(o.output, out_corr.output, rtol=0, atol=0)
    # a sweep whose source is the base run itself changes nothing
    m, _ = _metrics(bb, clean.frames)
    r = patch_sweep(bb, corr, corr, _sites(bb, clean.frames), m, chunk=7)
    np.testing.assert_allclose(r.values, r.corrupted, rtol=0, atol=1e-10)


def test_full_patch_reproduces_clean_generation(backbones, pair):
    """Whisper: patching every encoder frame of a state with the clean run's values gives the clean greedy ids."""
    bb = backbones("whisper")
    clean, corr = _inputs(bb, pair)
    want = bb.transcribe_ids([pair[0]], max_new_tokens=8)
    s = Site("encoder", "resid", 1)
    with patched(bb, s, capture(bb, clean, [s])[s.key]):
        got = bb.transcribe_ids([pair[1]], max_new_tokens=8)
    assert got == want
    assert len(want[0]) > 0


@pytest.mark.parametrize("family", ["whisper", "w2v2_post", "hubert"])
def test_head_ablation(backbones, pair, family):
    bb = backbones(family)
    clean, corr = _inputs(bb, pair)
    ids = IDS if bb.has_decoder else None
    comps = ["encoder"] + (["decoder", "cross_attention"] if bb.has_decoder else [])
    for comp in comps:
        layer = 1  # the first layer (module 0)
        H, d = ref.heads_of(bb, comp, layer)
        # one head, zero: the literal loop
        with ablated(bb, Site(comp, "head", layer, head=1)):
            o = forward(bb, clean)
        lg, enc = ref.ablate_heads(bb, comp, layer, [1], pair[0], ids)
        torch.testing.assert_close(o.output, enc, rtol=0, atol=1e-10)
        if lg is not None:
            torch.testing.assert_close(o.logits, lg, rtol=0, atol=1e-10)
        # all heads of the layer = the attention module's output replaced by out_proj's bias (out_proj of zeros)
        attn = ref.module_for(bb, comp, "head", layer)[0]
        with ablated(bb, [Site(comp, "head", layer, head=h) for h in range(H)]):
            o = forward(bb, clean)
        h = attn.register_forward_hook(lambda m, a, out: torch.zeros_like(out) + m.bias)
        try:
            lg, enc = ref.run(bb, pair[0], ids)
        finally:
            h.remove()
        torch.testing.assert_close(o.output, enc, rtol=0, atol=1e-10)
        if lg is not None:
            torch.testing.assert_close(o.logits, lg, rtol=0, atol=1e-10)
    # mean (over a reference corpus of two inputs) and resample ablation of encoder head 0 of layer 2
    s = Site("encoder", "head", 2, head=0)
    full = ref.record(bb, "encoder", "head", 2, pair[0], ids).view(1, -1, 2, ref.heads_of(bb, "encoder", 2)[1])
    full2 = ref.record(bb, "encoder", "head", 2, pair[1], ids).view(1, -1, 2, ref.heads_of(bb, "encoder", 2)[1])
    mean = torch.cat([full[0, :, 0], full2[0, :, 0]], 0).mean(0, keepdim=True)  # (1, d)
    with ablated(bb, s, mode="mean", reference=[clean, corr]):
        o = forward(bb, clean)
    _, enc = ref.ablate_heads(bb, "encoder", 2, [0], pair[0], ids, mode="mean", fill={0: mean})
    torch.testing.assert_close(o.output, enc, rtol=0, atol=1e-10)
    with ablated(bb, s, mode="resample", reference=corr):
        o = forward(bb, clean)
    _, enc = ref.ablate_heads(bb, "encoder", 2, [0], pair[0], ids, mode="resample", fill={0: full2[0, :, 0]})
    torch.testing.assert_close(o.output, enc, rtol=0, atol=1e-10)


def test_attribution_equals_patching_when_linear(backbones, pair):
    """Post-LN wav2vec2: the output is state N itself, so a linear metric is linear in state N (and in the
    last layer's MLP output? no: post-LN normalises it) -- attribution patching is exact for state-N sites."""
    bb = backbones("w2v2_post")
    clean, corr = _inputs(bb, pair)
    m, _ = _metrics(bb, clean.frames)
    N = len(bb.layer_modules())
    sites = [Site("encoder", "resid", N, (p,)) for p in range(clean.frames)] + [Site("encoder", "resid", N, (2, 3, 9))]
    real = patch_sweep(bb, clean, corr, sites, m)
    attr = attribution_patching(bb, clean, corr, sites, m)
    np.testing.assert_allclose(attr.values, real.values - real.corrupted, rtol=0, atol=1e-9)
    assert rank_correlation(attr.values, real.values - real.corrupted) == pytest.approx(1.0)
    # noising: gradient at the clean run times (corrupted - clean)
    real_n = patch_sweep(bb, clean, corr, sites, m, direction="noising")
    attr_n = attribution_patching(bb, clean, corr, sites, m, direction="noising")
    np.testing.assert_allclose(attr_n.values, real_n.values - real_n.clean, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["whisper", "w2v2_stable"])
def test_attribution_first_order(backbones, pair, family):
    """Non-linear models: attribution patching = the directional derivative, checked against a central finite
    difference of the real patched run along (source - base); and it ranks sites like real patching."""
    bb = backbones(family)
    clean, corr = _inputs(bb, pair)
    m, _ = _metrics(bb, clean.frames)
    s = Site("encoder", "resid", 1, (4, 5, 6))
    attr = attribution_patching(bb, clean, corr, [s], m).values[0]
    src = capture(bb, clean, [s])[s.key]
    base = capture(bb, corr, [s])[s.key]
    eps = 1e-4
    vals = []
    for t in (eps, -eps):
        with patched(bb, s, base + t * (src - base)):
            vals.append(float(m(forward(bb, corr))[0]))
    assert attr == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-5, abs=1e-8)


def _hook_counts(bb):
    mods = list(bb.modules())
    return sum(len(mm._forward_hooks) + len(mm._forward_pre_hooks) for mm in mods)


def test_hooks_removed_after_runs_and_errors(backbones, pair):
    bb = backbones("whisper")
    clean, corr = _inputs(bb, pair)
    before = _hook_counts(bb)
    m, _ = _metrics(bb, clean.frames)
    sites = _sites(bb, clean.frames)[:12] + [Site("cross_attention", "head", 1, (1,), head=0)]
    patch_sweep(bb, clean, corr, sites, m, chunk=4)
    attribution_patching(bb, clean, corr, sites, m)
    with ablated(bb, Site("decoder", "head", 1, head=1)):
        forward(bb, clean)
    assert _hook_counts(bb) == before

    def bad(_o):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        patch_sweep(bb, clean, corr, sites, bad)
    with pytest.raises(RuntimeError, match="metric failed"):
        attribution_patching(bb, clean, corr, sites, bad)
    with pytest.raises(RuntimeError, match="inside"):
        with patched(bb, sites[0], capture(bb, clean, [sites[0]])[sites[0].key]):
            raise RuntimeError("inside the block")
    s = Site("encoder", "resid", 1, (0, 1))
    with pytest.raises(RuntimeError):  # values of the wrong width: fails inside the model's forward
        with patched(bb, s, torch.zeros(1, 2, bb.hidden_size + 1, dtype=torch.float64)):
            forward(bb, clean)
    assert _hook_counts(bb) == before


def test_site_grid(backbones):
    from src.interventions import site_grid

    bb = backbones("whisper")
    g = site_grid(bb, "cross_attention", "head", [(1,), (2, 3)], labels=["a", "b"])
    want = [Site("cross_attention", "head", 1, p, head=h) for h in range(2) for p in [(1,), (2, 3)]]
    assert g == want and [s.label for s in g] == ["a", "b", "a", "b"]
    g = site_grid(bb, "encoder", "resid", [None])
    assert [s.layer for s in g] == [0, 1, 2] and g[0].layer_name == "state 0"
    assert [s.layer for s in site_grid(bb, "encoder", "mlp", [None])] == [1, 2]
    assert [s.layer_name for s in site_grid(bb, "decoder", "mlp", [(0,)])] == ["layer 1 (-> state 1)"]


def test_head_ablation_holds_during_generation(backbones, pair):
    """Zero ablation of a decoder self-attention and a cross-attention head (every position) also applies to each
    cached generation step: the same ids as a literal pre-hook zeroing the heads by hand."""
    bb = backbones("whisper")
    sites = [Site("decoder", "head", 1, head=1), Site("cross_attention", "head", 1, head=0)]  # layer 1 = module 0
    with ablated(bb, sites):
        got = bb.transcribe_ids([pair[0]], max_new_tokens=10)
    hs = []

    def zero(h):
        def pre(_m, a):
            y = a[0].clone()
            y.view(y.shape[0], y.shape[1], 2, -1)[:, :, h, :] = 0.0
            return (y,)

        return pre

    hs.append(bb.decoder_attention_modules()[0].out_proj.register_forward_pre_hook(zero(1)))
    hs.append(bb.cross_attention_modules()[0].out_proj.register_forward_pre_hook(zero(0)))
    try:
        want = bb.transcribe_ids([pair[0]], max_new_tokens=10)
    finally:
        for h in hs:
            h.remove()
    assert got == want and len(got[0]) > 0


def test_resample_ablation_follows_positions_during_generation(backbones, pair):
    """Resample ablation of a decoder self-attention and a cross-attention head during cached generation: the
    other clip's head outputs (teacher-forced on its own greedy transcript, cut by hand) substituted position by
    position, as a literal pre-hook with a hand-kept position counter does it: every step's scores to 1e-10; and
    different from the unablated scores (the test can see the substitution)."""
    bb = backbones("whisper")
    heads = [("decoder_self_attention", 1, 1), ("cross_attention", 1, 0)]
    sites = [Site("decoder", "head", 1, head=1), Site("cross_attention", "head", 1, head=0)]
    prompt = list(bb.decoder_prompt_ids())
    ref_ids = prompt + bb.transcribe_ids([pair[1]], max_new_tokens=3)[0]  # shorter than the generation below
    other = make_inputs(bb, pair[1], ids=ref_ids, utt_id="other")
    vals = capture(bb, other, sites)
    with ablated(bb, sites, "resample", reference=vals):
        got_ids, got = ref.generate_scores(bb, pair[0], 8)
    want_ids, want = ref.transcribe_with_resampled_heads(bb, pair[0], heads, pair[1], ref_ids, 8, scores=True)
    assert got_ids == want_ids and got.shape[0] == 8
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    _, plain = ref.generate_scores(bb, pair[0], 8)
    assert float((plain - want).abs().max()) > 1e-3
    # a full teacher-forced forward: position p gets the reference's position p (its last past its end)
    clean = make_inputs(bb, pair[0], ids=IDS + IDS, utt_id="clean")
    with ablated(bb, sites[:1], "resample", reference=vals):
        o = forward(bb, clean)
    fill = vals[sites[0].key][0]
    idx = torch.arange(len(IDS) * 2).clamp(max=fill.shape[0] - 1)
    lg, _ = ref.ablate_heads(bb, "decoder", 1, [1], pair[0], IDS + IDS, mode="resample", fill={1: fill[idx]})
    torch.testing.assert_close(o.logits, lg, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["whisper", "w2v2_stable"])
def test_mlp_and_attention_outputs_are_the_residual_updates(backbones, pair, family):
    """Pre-LN layers: layer output = input + attention output + MLP output (``mlp_modules()``), so an MLP site is
    the MLP's whole contribution to the residual stream."""
    bb = backbones(family)
    layer, attn, mlp = bb.layer_modules()[1], bb.attention_modules()[1], bb.mlp_modules()[1]
    got = {}
    def keep(name, pre=False):
        def hook(m, a, *rest):
            o = (a[0] if a else rest[0]["hidden_states"]) if pre else rest[0]
            got.setdefault(name, o[0] if isinstance(o, tuple) else o)

        return hook

    hs = [layer.register_forward_pre_hook(keep("x", pre=True), with_kwargs=True),
          layer.register_forward_hook(keep("y")), attn.register_forward_hook(keep("a")),
          mlp.register_forward_hook(keep("m"))]  # fmt: skip
    try:
        forward(bb, make_inputs(bb, pair[0], ids=IDS if bb.has_decoder else None))
    finally:
        for h in hs:
            h.remove()
    torch.testing.assert_close(got["y"], got["x"] + got["a"] + got["m"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["whisper", "w2v2_post"])
def test_one_layer_convention(backbones, pair, family):
    """Head and MLP sites follow the state convention of residual sites: layer k is the layer whose output is state
    k, i.e. layer module k - 1 (read here with plain hooks on the modules, by index); layer 0 and N + 1 are errors."""
    from src.interventions import InterventionError, validate_site

    bb = backbones(family)
    clean = make_inputs(bb, pair[0], ids=IDS if bb.has_decoder else None)
    n = len(bb.layer_modules())
    for k in range(1, n + 1):
        raw: dict = {}

        def keep(name, raw=raw):
            return lambda m, a, o=None: raw.setdefault(name, a[0] if o is None else (o[0] if isinstance(o, tuple) else o))

        hs = [bb.layer_modules()[k - 1].register_forward_hook(keep("y")),
              bb.mlp_modules()[k - 1].register_forward_hook(keep("m")),
              bb.attention_modules()[k - 1].out_proj.register_forward_pre_hook(keep("h"))]  # fmt: skip
        try:
            forward(bb, clean)
        finally:
            for h in hs:
                h.remove()
        sites = [Site("encoder", "resid", k), Site("encoder", "mlp", k), Site("encoder", "head", k, head=1)]
        got = capture(bb, clean, sites)
        d = raw["h"].shape[-1] // 2
        torch.testing.assert_close(got[sites[0].key], raw["y"], rtol=0, atol=0)  # state k = layer k's output
        torch.testing.assert_close(got[sites[1].key], raw["m"], rtol=0, atol=0)
        torch.testing.assert_close(got[sites[2].key], raw["h"][..., d : 2 * d], rtol=0, atol=0)
        assert sites[1].layer_name == f"layer {k} (-> state {k})" and sites[0].layer_name == f"state {k}"
    for bad in (0, n + 1):
        with pytest.raises(InterventionError, match=rf"layer {bad} is out of range; the encoder has layers 1\.\.{n} "
                                                    r"\(the state convention"):  # fmt: skip
            validate_site(bb, Site("encoder", "mlp", bad))


def test_site_layers_spec():
    """analysis.layers per kind over the states 0..N: literal expected lists."""
    from src.interventions import InterventionError, site_layers

    assert site_layers(None, 4, "resid") == [0, 1, 2, 3, 4]
    assert site_layers(None, 4, "head") == [1, 2, 3, 4]
    assert site_layers("all", 4, "head") == [1, 2, 3, 4]  # state 0 skipped
    assert site_layers("0-2", 4, "mlp") == [1, 2]
    assert site_layers([0, -1], 4, "resid") == [0, 4]
    assert site_layers("last", 4, "head") == [4]
    with pytest.raises(InterventionError, match=r"names state 0.*layers 1\.\.4"):
        site_layers(0, 4, "head")
    with pytest.raises(InterventionError, match=r"out of range"):
        site_layers(5, 4, "head")

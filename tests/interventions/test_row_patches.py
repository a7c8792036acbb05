"""Many decoder ablations decoded as one batch: the cross-attention keys and values computed once
(``WhisperBackbone.cross_attention_kv``, ``generate_from_encoder_states(cross_kv=)``), a different patch per batch row
(``src.interventions.patched_rows``) that follows the greedy batch as finished rows leave it (``on_rows=``), and
analysis=head_ablation built on them. Each is compared with an independent way to the same numbers: the projections
written out from the module weights, one decoding per ablation under :func:`patched`, and transformers' ``generate``
with the heads zeroed by plain hooks (tests/reference/interventions.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from src.backbones.base import BackboneError
from src.interventions import InterventionError, Site, patched, patched_rows


@pytest.fixture(scope="module")
def bb(backbones):
    return backbones("whisper")


def _enc(bb, n: int = 2) -> torch.Tensor:
    """Encoder outputs of ``n`` items (n, F, D): what the decoder reads (random states of the model's size)."""
    g = torch.Generator().manual_seed(n)
    f = int(bb.config.max_source_positions)
    return torch.randn(n, f, int(bb.hidden_size), generator=g, dtype=bb.parameter_dtype)


def test_cross_attention_kv_is_each_layers_projection(bb):
    enc = _enc(bb)
    kv = bb.cross_attention_kv(enc)
    mods = bb.cross_attention_modules()
    assert len(kv) == len(mods)
    for (k, v), m in zip(kv, mods):
        b, f, _ = enc.shape
        h, d = int(m.num_heads), int(m.head_dim)
        with torch.no_grad():  # written out: the projection, split into heads (B, heads, F, head_dim)
            want_k = (enc @ m.k_proj.weight.T + (m.k_proj.bias if m.k_proj.bias is not None else 0)).reshape(b, f, h, d)
            want_v = (enc @ m.v_proj.weight.T + m.v_proj.bias).reshape(b, f, h, d)
        torch.testing.assert_close(k, want_k.transpose(1, 2), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, want_v.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_decoding_from_cached_keys_and_values_is_the_same_decoding(bb):
    enc = _enc(bb, 3)
    kv = bb.cross_attention_kv(enc)
    before = [(k.clone(), v.clone()) for k, v in kv]
    caps = [2, 5, 7]  # rows leave the batch at different steps
    plain = bb.generate_from_encoder_states(enc, caps, loop="greedy")
    assert bb.generate_from_encoder_states(enc, caps, loop="greedy", cross_kv=kv) == plain
    assert bb.generate_from_encoder_states(None, caps, loop="greedy", cross_kv=kv) == plain
    assert bb.generate_from_encoder_states(enc, caps, loop="generate") == plain  # transformers' own loop
    for (k, v), (k0, v0) in zip(kv, before):  # the caller's tensors are read, never written
        assert torch.equal(k, k0) and torch.equal(v, v0)
    with pytest.raises(ValueError, match="cross_kv"):
        bb.generate_from_encoder_states(enc[:2], 3, loop="greedy", cross_kv=kv)
    with pytest.raises(ValueError, match="needs cross_kv"):
        bb.generate_from_encoder_states(None, 3)
    with pytest.raises(BackboneError, match="needs the greedy loop"):  # generate would read the placeholder states
        bb.generate_from_encoder_states(None, 3, loop="generate", cross_kv=kv)


def _configs(bb):
    cross = bb.cross_attention_modules()[0]
    d = int(cross.head_dim)
    mean_like = torch.linspace(-1, 1, d, dtype=bb.parameter_dtype)
    zero = torch.zeros(d, dtype=bb.parameter_dtype)
    return [
        [],  # no ablation: the unpatched decoding
        [(Site("cross_attention", "head", 1, None, 0), zero)],
        [(Site("decoder", "head", 1, None, 1), zero)],
        [(Site("cross_attention", "head", 1, None, 0), zero), (Site("decoder", "head", 1, None, 1), mean_like)],
        [(Site("cross_attention", "head", 1, None, 1), mean_like)],
    ]


@pytest.mark.parametrize("shared", [True, False], ids=["one_item_broadcast", "one_item_per_row"])
def test_patched_rows_decode_each_row_as_patched_alone(bb, shared):
    """One batch, a different ablation per row (rows stop at different caps, so the batch shrinks and the
    patches follow it through on_rows) == one decoding per ablation under patched()."""
    configs = _configs(bb)
    enc = _enc(bb, 1 if shared else len(configs))
    kv = bb.cross_attention_kv(enc)
    r = len(configs)
    caps = [3, 6, 2, 5, 4]
    if shared:
        rows_kv = [(k.expand(r, *k.shape[1:]), v.expand(r, *v.shape[1:])) for k, v in kv]
    else:
        rows_kv = kv
    with patched_rows(bb, configs) as p:
        got, _ = bb.generate_from_encoder_states(None, caps, loop="greedy", cross_kv=rows_kv, on_rows=p.select)
    for i, entries in enumerate(configs):
        e = enc[:1] if shared else enc[i : i + 1]
        if entries:
            with patched(bb, [s for s, _ in entries], [v for _, v in entries]):
                want, _ = bb.generate_from_encoder_states(e, [caps[i]], loop="greedy")
        else:
            want, _ = bb.generate_from_encoder_states(e, [caps[i]], loop="greedy")
        assert got[i] == want[0], f"row {i} ({[s.key for s, _ in entries]})"


def test_patched_rows_refuses_a_batch_it_does_not_follow(bb):
    configs = _configs(bb)
    enc = _enc(bb, 1)
    kv = [(k.expand(len(configs), *k.shape[1:]), v.expand(len(configs), *v.shape[1:])) for k, v in bb.cross_attention_kv(enc)]
    with patched_rows(bb, configs), pytest.raises(InterventionError, match="select"):  # rows leave, nobody tells it
        bb.generate_from_encoder_states(None, [1, 3, 3, 3, 3], loop="greedy", cross_kv=kv)
    with pytest.raises(InterventionError, match="positions"):
        with patched_rows(bb, [[(Site("decoder", "head", 1, (0,), 0), torch.zeros(4))]]):
            pass
    # hooks are gone after the error: a plain decoding runs
    bb.generate_from_encoder_states(enc, 2, loop="greedy")


def test_head_ablation_single_heads_equal_transformers_generate_with_zeroed_heads(tmp_path, bb):
    """Every single-head ablation's clip transcripts (batched by item here) == transformers' generate, one clip and
    one head at a time, the head zeroed by a plain pre-hook; and batch_rows does not change a number."""
    from src.analyses.base import AnalysisContext
    from src.analyses.head_ablation import HeadAblation
    from src.datamodules.corpus import TextGridCorpus
    from src.interventions.counterfactual import nonspeech_clip
    from tests.conftest import make_tone_corpus
    from tests.reference import interventions as ref

    corpus = TextGridCorpus(make_tone_corpus(tmp_path / "c", num_utterances=2, vocabulary=4))
    kinds = ["silence", "white", "tone"]
    frames = {}
    for rows in (96, 1):
        an = HeadAblation(layers=[1], kinds=kinds, clips_per_kind=1, duration=1.0, max_utterances=2, max_new_tokens=4,
                          n_boot=20, batch_rows=rows)  # fmt: skip
        res = an.run(AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: bb))
        res.save(tmp_path / f"r{rows}", {"backbone": "tiny"})
        frames[rows] = pd.read_csv(tmp_path / f"r{rows}" / "results.csv")
    pd.testing.assert_frame_equal(frames[96], frames[1])
    clips = [nonspeech_clip(k, 1.0, bb.sample_rate, seed=j, level_db=-30.0) for k in kinds for j in range(1)]
    waves = [torch.as_tensor(c.audio) for c in clips]
    _, enc_clips, _, _, _ = an._ablate_args  # the run's clip encodings (and their keys and values)
    heads = [(comp, 1, h) for comp, mods in (("decoder_self_attention", bb.decoder_attention_modules()),
                                             ("cross_attention", bb.cross_attention_modules()))
             for h in range(int(mods[0].num_heads))]  # fmt: skip
    configs = [[Site("decoder" if c == "decoder_self_attention" else c, "head", layer, None, h)] for c, layer, h in heads]
    got = an.decode_rows(bb, enc_clips, configs + [[s[0] for s in configs[:3]]], None)
    for cfg_ids, heads_ in zip(got, [[h] for h in heads] + [heads[:3]]):
        want = ref.transcribe_with_zeroed_heads(bb, waves, heads_, 4)
        assert [bb.decode_ids(i) for i in cfg_ids] == want, heads_
    df = frames[96]
    hall = df[(df["intervention"] == "zero_ablation") & (df["metric"] == "hallucinated") & (df["item"] != "mean")]
    assert len(hall) == len(heads) * len(clips)
    assert len(heads) >= 4

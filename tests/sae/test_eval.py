"""SAE evaluation (src/sae/eval.py, analysis=sae_eval): the splice, the downstream cost, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.activations import ActivationCache
from src.analyses.base import AnalysisContext
from src.analyses.sae_eval import SAEEval, sae_split
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus
from src.sae import SAE, SAEFileError, SAEMismatchError, save_sae
from src.sae.eval import Item, latent_effects, splice, whisper_forward
from tests.builders import tiny_whisper
from tests.conftest import make_tone_corpus
from tests.sae.helpers import exact_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sae_eval_whisper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(d, init_std=1.0)  # greedy tokens vary (the default 0.02 repeats one token)
    bb = WhisperBackbone(str(d)).eval()
    corpus = TextGridCorpus(make_tone_corpus(tmp_path_factory.mktemp("sae_eval_tones"), num_utterances=12))
    acts = ActivationCache(tmp_path_factory.mktemp("sae_eval_cache"), dtype="float32", progress=False).get(
        bb, corpus
    )
    return bb, corpus, acts


def _hooks(bb) -> set:
    return {(n, kind, k) for n, m in bb.model.named_modules()
            for kind, dd in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for k in dd}  # fmt: skip


def _items(bb, corpus, idx=(0, 1)):
    out = []
    for u in idx:
        w = torch.as_tensor(np.asarray(corpus[u].audio, dtype=np.float32))
        out.append(Item(corpus.ids[u], w, int(bb.num_frames(len(w))), "x", [5, 7, 9]))
    return out


@pytest.mark.parametrize("state", [0, 2, "final_norm"])
def test_identity_splice_gives_the_models_own_outputs_exactly(setup, state):
    bb, corpus, _ = setup
    items = _items(bb, corpus)
    prompt = bb.decoder_prompt_ids("en")
    k = list(bb.layer_names).index(str(state))
    with torch.no_grad():
        clean = whisper_forward(bb, items, prompt)
        before = _hooks(bb)
        with splice(bb, k, torch.nn.Identity(), [it.n_frames for it in items]):
            assert len(_hooks(bb)) == len(before) + 1
            spliced = whisper_forward(bb, items, prompt)
    assert _hooks(bb) == before
    for a, b in zip(clean["logits"], spliced["logits"]):
        assert torch.equal(a, b)
    assert clean["ids"] == spliced["ids"]
    assert np.array_equal(clean["nll"], spliced["nll"])


def test_splice_changes_only_real_frames_and_zero_ablation_hurts(setup):
    bb, corpus, _ = setup
    items = _items(bb, corpus, (0,))
    seen = {}

    def rec(_m, _a, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    layer = bb.layer_modules()[0]  # state 1 = its output

    def grab(_m, args):
        seen["in2"] = args[0].clone()

    with torch.no_grad():
        with bb.hooks([(layer, rec)]):
            bb.window_states([items[0].wave])
        clean_h = seen["h"]
        with (
            splice(bb, 1, lambda h: torch.zeros_like(h), [items[0].n_frames]),
            bb.hooks([(bb.layer_modules()[1], grab)], pre=True),
        ):
            bb.window_states([items[0].wave])
    n = items[0].n_frames
    assert 0 < n < clean_h.shape[1]
    assert torch.all(seen["in2"][0, :n] == 0)  # the next layer reads the replaced state on the real frames
    assert torch.equal(seen["in2"][0, n:], clean_h[0, n:])  # and the model's own padding frames


def test_hooks_removed_after_an_error_inside(setup):
    bb, corpus, _ = setup
    items = _items(bb, corpus, (0,))
    bb.window_states([items[0].wave])  # transformers' own capture hooks are installed once: warm up
    before = _hooks(bb)

    def boom(_h):
        raise RuntimeError("boom")

    for state in (0, 2, 3):
        with (
            pytest.raises(RuntimeError, match="boom"),
            torch.no_grad(),
            splice(bb, state, boom, [items[0].n_frames]),
        ):
            bb.window_states([items[0].wave])
        assert _hooks(bb) == before
    with pytest.raises(KeyError), splice(bb, 1, torch.nn.Identity()):
        raise KeyError("raised in the block")
    assert _hooks(bb) == before


def _run(setup, sae_path, **kw):
    bb, corpus, acts = setup
    ctx = AnalysisContext(acts, corpus, seed=0, backbone_factory=lambda: bb)
    return SAEEval(sae=str(sae_path), **kw).run(ctx)


def _fvu_literal(x, xh):
    mean = x.mean(0)
    return float(((x - xh) ** 2).sum() / ((x - mean) ** 2).sum())


def test_exact_sae_recovers_all_loss_and_a_random_one_less(setup, tmp_path):
    bb, corpus, acts = setup
    d = acts.hidden_size
    save_sae(exact_sae(d, "2"), tmp_path / "saes" / "layer_2")
    rnd = SAE(d, 4 * d, "topk", k=3, meta={"layer_name": "1"}, seed=1)
    save_sae(rnd, tmp_path / "saes" / "layer_1")
    res = _run(setup, tmp_path, max_frames=None, max_utterances=2)
    by = {(r["layer_name"], r["metric"]): r["value"] for r in res.rows}
    assert by[("2", "fvu")] == 0.0 and by[("2", "dead")] >= 1 / (2 * d + 1)  # latent 2d never fires
    assert by[("2", "ce_sae")] == by[("2", "ce_clean")]
    assert by[("2", "loss_recovered")] == 1.0
    assert by[("2", "wer_sae")] == by[("2", "wer_clean")]
    # the random TopK SAE: FVU and L0 against a literal numpy computation over the test frames
    split = sae_split(corpus, {}, 0)
    rows = np.concatenate([acts.offsets[u] + np.arange(acts.lengths[u]) for u in split["test"]])
    x = np.asarray(acts.layer(1)[rows], dtype=np.float64)
    w_enc, w_dec = rnd.W_enc.detach().double().numpy(), rnd.W_dec.detach().double().numpy()
    pre = x @ w_enc
    z = np.zeros_like(pre)
    for r in range(len(pre)):
        top = np.argsort(-pre[r])[:3]
        z[r, top] = np.maximum(pre[r, top], 0)
    assert by[("1", "fvu")] == pytest.approx(_fvu_literal(x, z @ w_dec), rel=1e-4)
    assert by[("1", "l0")] == pytest.approx(float((z > 0).sum(1).mean()))
    assert by[("1", "dead")] == pytest.approx(float((~(z > 0).any(0)).mean()))
    ce = {m: by[("1", f"ce_{m}")] for m in ("clean", "sae", "zero", "mean")}
    assert by[("1", "loss_recovered")] == pytest.approx((ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]))
    assert ce["zero"] != ce["clean"]
    for space in ("raw", "latents"):
        assert 0.0 <= by[("2", f"phone_probe_acc_{space}")] <= 1.0
    out = tmp_path / "out"
    res.save(out, {"backbone": bb.name})
    assert (out / "activation_frequency_2.png").stat().st_size > 1000


def test_bad_saes_are_refused_before_model_work(setup, tmp_path):
    bb, corpus, acts = setup

    def no_model():
        raise AssertionError("the model was built")

    ctx = AnalysisContext(acts, corpus, seed=0, backbone_factory=no_model)
    wide = SAE(acts.hidden_size + 3, 8, "relu", meta={"layer_name": "2"})
    save_sae(wide, tmp_path / "wide")
    with pytest.raises(SAEMismatchError, match=rf"{acts.hidden_size + 3}.*{acts.hidden_size}"):
        SAEEval(sae=str(tmp_path / "wide")).run(ctx)
    other = SAE(acts.hidden_size, 8, "relu", meta={"layer_name": "17"})
    save_sae(other, tmp_path / "other")
    with pytest.raises(SAEMismatchError, match=r"'17'.*final_norm"):
        SAEEval(sae=str(tmp_path / "other")).run(ctx)
    good = save_sae(SAE(acts.hidden_size, 8, "relu", meta={"layer_name": "2"}), tmp_path / "trunc")
    wf = good / "sae_weights.safetensors"
    wf.write_bytes(wf.read_bytes()[:-40])
    with pytest.raises(SAEFileError, match="sae_weights.safetensors"):
        SAEEval(sae=str(good)).run(ctx)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no saved SAE"):
        SAEEval(sae=str(tmp_path / "empty")).run(ctx)


def test_auto_finds_the_newest_saes(setup, tmp_path):
    from src.sae.eval import find_sae_dirs

    d = setup[2].hidden_size
    save_sae(SAE(d, 8, "relu", meta={"layer_name": "1"}), tmp_path / "train" / "a" / "saes" / "layer_1")
    import time

    time.sleep(0.01)
    save_sae(SAE(d, 8, "relu", meta={"layer_name": "1"}), tmp_path / "train" / "b" / "saes" / "layer_1")
    save_sae(SAE(d, 8, "relu", meta={"layer_name": "2"}), tmp_path / "train" / "b" / "saes" / "layer_2")
    got = find_sae_dirs("auto", tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "train/b/saes/layer_1",
        "train/b/saes/layer_2",
    ]


def test_causal_check_dead_latent_is_zero_and_matches_a_hand_hook(setup):
    bb, corpus, acts = setup
    d = acts.hidden_size
    sae = exact_sae(d, "2")
    split = sae_split(corpus, {}, 0)
    j = int(np.argmax(np.abs(np.asarray(acts.layer(2)[: acts.lengths[0]])).mean(0)))  # a busy dimension
    effects = latent_effects(sae, bb, acts, corpus, split, [j, 2 * d])
    e = effects[0]
    # the same ablation through a hook written by hand: x_j -> x_j - relu(x_j) on the real frames
    test = [int(u) for u in split["test"]]
    items = _items(bb, corpus, test)
    from src.sae.eval import forced_tokens

    forced_tokens(bb, items, "auto", "en", "transcribe")
    prompt = bb.decoder_prompt_ids("en")

    def lp(hand):
        tot = 0.0
        for it in items:

            def hook(_m, _a, out, n=it.n_frames):
                h = out[0] if isinstance(out, tuple) else out
                h = h.clone()
                h[:, :n, j] = h[:, :n, j] - torch.relu(h[:, :n, j])
                return (h, *out[1:]) if isinstance(out, tuple) else h

            with torch.no_grad(), bb.hooks([(bb.layer_modules()[1], hook)] if hand else []):
                tot -= float(whisper_forward(bb, [it], prompt, decode=False)["nll"].sum())
        return tot

    # float32 batches of different sizes differ in the last bits: 1e-5 relative
    assert e["logprob_clean"] == pytest.approx(lp(False), rel=1e-5)
    assert e["logprob_ablated"] == pytest.approx(lp(True), rel=1e-5)
    assert abs(e["logprob_delta"] - (lp(True) - lp(False))) < 0.05 * abs(lp(True) - lp(False)) + 1e-3
    assert e["logprob_delta"] != 0.0
    assert -1 <= e["phone_error_delta"] <= 1 and set(e["per_phone"]) <= {"a", "i", "s", "m", "o"}
    assert effects[1]["logprob_delta"] == 0.0 and effects[1]["phone_error_delta"] == 0.0  # the dead latent
    assert all(v == 0.0 for v in effects[1]["per_phone"].values())

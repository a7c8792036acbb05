"""CTC head, CTC probes per layer and tuned CTC lens (src/lenses/ctc.py) on small known structures.

Fakes: utterances of phones laid end to end, ``frames_per_phone`` frames each; a "linear"
state gives every frame of a phone a fixed random vector (a linear code of the phone) plus
noise, a "noise" state is noise alone. The phones are decodable from the first, not the second.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from src.lenses import ctc
from tests.lenses.helpers import PHONES, _splits, toy

FAST = dict(max_epochs=40, lr=3e-2, batch_size=4, patience=10)


def _per(head, acts, corpus, idx, layer, **kw):
    e, n = ctc.ctc_per(
        head,
        ctc.utterance_states(acts, corpus, idx, layer),
        [ctc.phone_sequences(corpus)[i] for i in idx],
        **kw,
    )
    return e.sum() / n.sum()


# ----------------------------------------------------------------------------- decoding and loss


def test_greedy_decoding_collapses_repeats_then_drops_blanks():
    frames = [0, 1, 1, 0, 1, 2, 2, 0, 0, 3]  # blank = 0: "1 1" separated by a blank stays two tokens
    lp = torch.nn.functional.one_hot(torch.tensor(frames), 4).float()
    assert ctc.greedy_ids(lp) == [1, 1, 2, 3]
    assert ctc.greedy_ids(torch.zeros(0, 4)) == []
    assert ctc.ctc_min_frames([1, 1, 1, 2]) == 6


def _literal_ctc_nll(logp: torch.Tensor, target: list[int], blank: int = 0) -> float:
    """-log of the sum, over every frame path that collapses to ``target``, of the path's probability."""
    T, V = logp.shape
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        if ctc.greedy_ids(torch.nn.functional.one_hot(torch.tensor(path), V).float(), blank) == list(target):
            total += math.exp(sum(float(logp[t, s]) for t, s in enumerate(path)))
    return -math.log(total)


def test_stacked_ctc_loss_equals_literal_sum_over_alignments():
    StackedHeads, _, _ = ctc._classes()
    torch.manual_seed(0)
    m = StackedHeads(2, 3, 3, 0, [0, 1], seed=0, lr=1e-3, weight_decay=0.0).double()
    x = torch.randn(2, 5, 2, 3, dtype=torch.float64)  # (B, T, K, D)
    xlen, y, ylen = torch.tensor([5, 4]), torch.tensor([[1, 1, 2], [2, 0, 0]]), torch.tensor([3, 1])
    per = m.per_item_loss((x, xlen, y, ylen))  # (B, K), divided by the target length
    lp = m(x)  # (B, T, K, V)
    for b in range(2):
        for k in range(2):
            ref = _literal_ctc_nll(lp[b, : xlen[b], k], y[b, : ylen[b]].tolist()) / int(ylen[b])
            assert float(per[b, k]) == pytest.approx(ref, rel=1e-9)
    # torch's own reduction="mean" is the same normalisation (per-target-length, then mean over items)
    mean = torch.nn.functional.ctc_loss(lp[:, :, 0].transpose(0, 1), y, xlen, ylen, reduction="mean")
    assert float(mean) == pytest.approx(float(per[:, 0].mean()), rel=1e-12)


@pytest.mark.parametrize("hidden", [0, 4])
def test_exported_heads_equal_their_column_of_the_stacked_module(hidden):
    StackedHeads, _, _ = ctc._classes()
    m = StackedHeads(3, 5, 4, hidden, [0, 2, 7], seed=1, lr=1e-3, weight_decay=0.0)
    with torch.no_grad():
        m.mu.normal_()
        m.sigma.uniform_(0.5, 2)
    x = torch.randn(2, 6, 3, 5)  # (B, T, K, D)
    out = m(x)  # (B, T, K, V)
    for j in range(3):
        head = ctc.export_head(m, j, [ctc.BLANK, "a", "b", "c"], layer=str(j))
        torch.testing.assert_close(head(x[:, :, j]), out[:, :, j], rtol=1e-5, atol=1e-6)
    # each head's initial weights depend only on (seed, layer id)
    other = StackedHeads(1, 5, 4, hidden, [2], seed=1, lr=1e-3, weight_decay=0.0)
    assert torch.equal(other.w2[0], m.w2[1]) and torch.equal(other.b2[0], m.b2[1])


# ----------------------------------------------------------------------------- head and probes


def test_head_learns_toy_sequences_to_per_zero_and_records_what_it_read():
    corpus, acts = toy()
    sp = _splits(len(corpus))
    head, metrics = ctc.train_ctc_head(acts, corpus, "0", splits=sp, **FAST)
    assert _per(head, acts, corpus, sp["test"], "0") == 0.0
    assert (
        head.vocab == [ctc.BLANK, *PHONES] and head.blank == 0
    )  # "A1" -> "a": stress and case normalised, sil dropped
    assert (head.layer, head.norm, head.backbone) == ("0", "none", "fake@0123")
    assert metrics["train_utterances"] == 24 and metrics["best_epoch"] >= 0
    out = head(torch.randn(2, 7, acts.hidden_size))
    assert out.shape == (2, 7, 6) and torch.allclose(out.exp().sum(-1), torch.ones(2, 7))


def test_probe_per_layer_decodes_the_linear_layer_not_the_noise_layer_and_is_independent_of_the_others():
    corpus, acts = toy(short=(3,))
    sp = _splits(len(corpus))
    probes = ctc.train_ctc_probes(acts, corpus, [0, 1], splits=sp, **FAST)
    assert set(probes) == {"0", "1"}
    assert _per(probes["0"], acts, corpus, sp["test"], "0") < 0.05
    assert _per(probes["1"], acts, corpus, sp["test"], "1") > 0.5
    assert probes["0"].metrics["train_skipped_too_short"] == 1  # utterance 3 has 1 frame for >= 3 phones
    assert probes["0"].metrics["train_utterances"] == 23
    alone = ctc.train_ctc_probes(acts, corpus, [0], splits=sp, **FAST)[
        "0"
    ]  # seeded by (seed, layer): same head
    assert alone.metrics["best_epoch"] == probes["0"].metrics["best_epoch"]
    for a, b in zip(alone.state_dict().values(), probes["0"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_phone_targets_of_the_tone_corpus_go_through_the_label_normalisation(tmp_path):
    from src.datamodules.corpus import TextGridCorpus
    from tests.conftest import make_tone_corpus

    corpus = TextGridCorpus(make_tone_corpus(tmp_path, num_utterances=3))
    seqs = ctc.phone_sequences(corpus)
    raw = [[iv.label for iv in corpus.annotation(i).tier("phones")] for i in range(3)]
    assert seqs == raw and all(4 <= len(s) < 8 for s in seqs)  # tone phones are already normal: unchanged
    assert ctc.build_vocab(seqs) == [ctc.BLANK, *sorted({p for s in seqs for p in s})]


# ----------------------------------------------------------------------------- tuned lens


def _lens_setup(seed=0):
    """States 0 and 1 of `toy`; the 'final' state = LayerNorm(M h_0): a rotated, scaled copy of layer 0."""
    corpus, acts = toy(n_utts=40, dim=12, seed=seed)
    rng = np.random.default_rng(seed + 1)
    M = (np.linalg.qr(rng.standard_normal((12, 12)))[0] * 1.5).astype(np.float32)
    norm = nn.LayerNorm(12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
    h0 = acts._states[0]
    with torch.no_grad():
        final = norm(torch.from_numpy(h0 @ M)).numpy()
    acts._states = np.concatenate([acts._states, final[None]], 0)
    acts.layer_names = ["0", "1", "final_norm"]
    return corpus, acts, norm


def test_untrained_tuned_lens_equals_the_plain_lens_exactly():
    torch.manual_seed(0)
    head = ctc.CTCHead(12, [ctc.BLANK, *PHONES], norm="final_norm")
    norm = nn.LayerNorm(12)
    tuned = ctc.TunedLens(12, ["0", "1", "2"])
    h = torch.randn(3, 9, 12) * 5
    for layer in ("0", "2"):
        assert torch.equal(tuned.translate(h, layer), h)
        assert torch.equal(
            ctc.lens_log_probs(head, h, layer, norm, tuned=tuned), ctc.lens_log_probs(head, h, layer, norm)
        )
    assert torch.equal(ctc.lens_log_probs(head, h, layer, norm), head(norm(h)))
    with pytest.raises(ctc.CTCHeadError, match="final_norm_module"):
        ctc.lens_log_probs(head, h, "0", None)


def test_tuned_lens_lowers_heldout_kl_and_reports_kl_of_a_literal_reference():
    corpus, acts, norm = _lens_setup()
    sp = _splits(len(corpus))
    head, _ = ctc.train_ctc_head(acts, corpus, "final_norm", splits=sp, **FAST)
    assert head.norm == "final_norm"
    tuned, m = ctc.train_tuned_lens(acts, corpus, head, [0, 1], backbone_final_norm=norm, splits=sp, max_epochs=40,
                                    lr=3e-2, batch_size=64)  # fmt: skip
    assert m["layers"] == ["0", "1"] and m["final_state"] == "final_norm"
    # the reported plain-lens KL (init) against a literal per-frame sum over the validation frames
    val_rows = [acts.index_of(corpus.ids[i]) for i in sp["val"]]
    for j, layer in enumerate(["0", "1"]):
        tot, n = 0.0, 0
        with torch.no_grad():
            for r in val_rows:
                s = slice(acts.offsets[r], acts.offsets[r] + acts.lengths[r])
                p = head(torch.from_numpy(acts.layer("final_norm")[s])).exp().double()
                q = head(norm(torch.from_numpy(acts.layer(layer)[s]))).exp().double()
                for t in range(len(p)):
                    tot += sum(
                        float(p[t, v] * (math.log(p[t, v]) - math.log(q[t, v])))
                        for v in range(len(head.vocab))
                    )
                    n += 1
        assert m["kl_val_init"][j] == pytest.approx(tot / n, rel=1e-4)
    assert m["kl_val"][0] < 0.2 * m["kl_val_init"][0]  # layer 0 is an affine image of the final state's input
    assert m["kl_val"][1] <= m["kl_val_init"][1]  # noise: never worse than the plain lens (best epoch kept)
    test = sp["test"]
    plain = _per(head, acts, corpus, test, "0", norm_module=norm)
    tuned_per = _per(
        head, acts, corpus, test, "0", norm_module=norm, transform=lambda h: tuned.translate(h, "0")
    )
    assert plain > 0.5 and tuned_per < 0.5 * plain, (plain, tuned_per)


def test_tuned_lens_needs_the_final_norm_for_a_head_that_reads_through_it():
    corpus, acts, _ = _lens_setup()
    head = ctc.CTCHead(12, [ctc.BLANK, *PHONES], norm="final_norm")
    with pytest.raises(ctc.CTCHeadError, match="backbone_final_norm"):
        ctc.train_tuned_lens(acts, corpus, head, [0], splits=_splits(len(corpus)))


# ----------------------------------------------------------------------------- files


def test_head_and_tuned_lens_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    head = ctc.CTCHead(6, [ctc.BLANK, "a", "b"], hidden=4, norm="none", layer="3", backbone="bb@1")
    with torch.no_grad():
        head.mu.normal_()
        head.sigma.uniform_(0.5, 2)
    head.metrics = {"best_epoch": np.int64(3), "val_loss": 0.5}
    back = ctc.CTCHead.load(head.save(tmp_path / "h.pt"))
    assert back.config() == head.config() and back.metrics == {"best_epoch": 3, "val_loss": 0.5}
    h = torch.randn(2, 5, 6)
    assert torch.equal(back(h), head.eval()(h))
    lens = ctc.TunedLens(6, ["0", "final_norm"])
    with torch.no_grad():
        lens.weight.normal_()
    lens2 = ctc.TunedLens.load(lens.save(tmp_path / "l.pt"))
    assert lens2.layers == ["0", "final_norm"] and torch.equal(
        lens2.translate(h, "0"), lens.translate(h, "0")
    )


def test_bad_head_files_give_errors_naming_the_path(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(ctc.CTCHeadError, match=f"{missing}.*does not exist"):
        ctc.CTCHead.load(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ctc.CTCHeadError, match=f"{junk} is not a readable CTC head file"):
        ctc.CTCHead.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ctc.CTCHeadError, match=f"{other} is not a CTC head file"):
        ctc.CTCHead.load(other)
    head = ctc.CTCHead(4, [ctc.BLANK, "a"])
    bad = tmp_path / "bad.pt"
    blob = {"format": ctc.HEAD_FORMAT, "config": {**head.config(), "dim": 5}, "state_dict": head.state_dict()}
    torch.save(blob, bad)
    with pytest.raises(ctc.CTCHeadError, match=f"{bad}: the weights do not fit"):
        ctc.CTCHead.load(bad)
    with pytest.raises(ctc.CTCHeadError, match="expects states of size 4"):
        head(torch.zeros(1, 2, 3))

"""Controls and intervals of the probing pipeline, on synthetic cases with a known answer.

- selectivity separates a representation that encodes only the label from one that
  memorises word identity (Hewitt & Liang's point), and a control whose types are the
  labels is refused;
- bootstrap intervals over the split unit (texts) cover a known mean at the nominal
  rate, while resampling correlated readings (utterances) does not;
- MDL blocks of whole utterances do not let near-identical frames of one segment leak
  into the training prefix (frame shuffling does).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from src.datamodules.tasks import ProbeData
from src.functional.intervals import bootstrap_ci
from src.probes.pipeline import ControlTaskError, SplitArrays, check_control_types, control_rows, mdl_rows
from src.probes.ridge import RidgeProbe


def _lexicon_items(seed=0, n_words=40, n_phones=8, n_utts=240, words_per_utt=4):
    """Phone tokens of utterances built from a fixed lexicon: (phone, type=word|pos, utt)."""
    rng = np.random.default_rng(seed)
    lex = [rng.integers(0, n_phones, size=int(rng.integers(3, 6))) for _ in range(n_words)]
    phone, types, utt = [], [], []
    for u in range(n_utts):
        for w in rng.integers(0, n_words, size=words_per_utt):
            for k, p in enumerate(lex[w]):
                phone.append(int(p))
                types.append(f"w{w}|{k}")
                utt.append(u)
    return np.array(phone), np.array(types), np.array(utt)


def _arrays(x, y, types, utt, n_classes):
    data = ProbeData("phones", "classification", y, utt, ["phones"], [str(c) for c in range(n_classes)], types=types)
    u = np.unique(utt)
    split = {"train": u[: int(0.6 * len(u))], "val": u[int(0.6 * len(u)) : int(0.8 * len(u))], "test": u[int(0.8 * len(u)) :]}
    out = {}
    for s, us in split.items():
        m = np.isin(utt, us)
        out[s] = SplitArrays(torch.from_numpy(x[m]), torch.from_numpy(y[m]).long(), utt[m], data.subset(m), utt[m])
    return data, out


def _fit(arrays, kind, C):
    factory = partial(RidgeProbe, alphas=[0.1, 1.0, 10.0])
    probe = factory(num_layers=arrays["train"].x.shape[1], dim=arrays["train"].x.shape[2], num_outputs=C, kind=kind)
    tr, va = arrays["train"], arrays["val"]
    return factory, probe.fit(tr.x, tr.y, va.x, va.y, kind, C)


def test_selectivity_separates_label_encoding_from_word_memorisation():
    phone, types, utt = _lexicon_items()
    rng = np.random.default_rng(1)
    P, D = 8, 256
    uniq_types, tidx = np.unique(types, return_inverse=True)
    e_phone = rng.standard_normal((P, D))
    e_type = rng.standard_normal((len(uniq_types), D))
    label_only = e_phone[phone] + 0.3 * rng.standard_normal((len(phone), D))  # knows the phone, nothing else
    memorises = e_type[tidx] + 0.3 * rng.standard_normal((len(phone), D))  # knows word + position (hence the phone)
    x = np.stack([label_only, memorises], axis=1).astype(np.float32)  # (N, 2, D): two "layers"
    data, arrays = _arrays(x, phone, types, utt, P)
    factory, probe = _fit(arrays, "classification", P)
    counts: dict = {}
    rows = control_rows(factory, arrays, data, [0, 1], None, probe, counts, seed=0, n_boot=200)
    val = {(r["layer"], r["metric"]): r for r in rows}
    task0, task1 = val[(0, "accuracy_control_types_seen")]["value"], val[(1, "accuracy_control_types_seen")]["value"]
    sel0, sel1 = val[(0, "selectivity")]["value"], val[(1, "selectivity")]["value"]
    assert task0 > 0.95 and task1 > 0.95  # both representations solve the task
    assert sel0 > 0.4  # only the label: the control task (random labels per word|pos) cannot be learnt
    assert sel1 < 0.15  # memorised word identity: the control task is learnt too
    assert sel0 - sel1 > 0.3
    # selectivity's interval is the paired bootstrap of the per-item difference; it contains the estimate
    for layer in (0, 1):
        r = val[(layer, "selectivity")]
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert val[(0, "selectivity")]["ci_high"] - val[(0, "selectivity")]["ci_low"] > 0.01
    assert counts["test_items_control_type_seen_in_train"] > 0.9 * len(arrays["test"].y)


def test_control_types_equal_to_labels_are_refused():
    phone, types, utt = _lexicon_items(n_utts=40)
    x = np.random.default_rng(0).standard_normal((len(phone), 1, 8)).astype(np.float32)
    labels_as_types = phone.astype(str)
    data, arrays = _arrays(x, phone, labels_as_types, utt, 8)
    with pytest.raises(ControlTaskError, match="function of the task label"):
        check_control_types(data, arrays["train"])
    # a task that says why it has no informative type (task=words) is refused with that reason
    from dataclasses import replace

    words = replace(data, types=None, types_reason="task=words predicts the 'words' label itself")
    with pytest.raises(ControlTaskError, match="task=words predicts"):
        check_control_types(words)


def test_phone_control_types_from_a_corpus_without_words_are_refused(tmp_path):
    """The silent fallback (no words tier -> types = '<none>|<phone>') is gone: the reason names the utterance."""
    import soundfile as sf

    from src.datamodules.corpus import Interval, TextGridCorpus, write_textgrid
    from src.datamodules.tasks import FrameClassification

    (tmp_path / "c").mkdir()
    sf.write(tmp_path / "c" / "u1.wav", np.zeros(8000, np.float32), 16000)
    write_textgrid(tmp_path / "c" / "u1.TextGrid", {"phones": [Interval(0.0, 0.25, "a"), Interval(0.25, 0.5, "b")]}, 0.5)
    corpus = TextGridCorpus(tmp_path / "c")

    class Acts:  # 50 Hz frames of the one utterance
        ids = corpus.ids
        offsets = np.array([0])
        frame_rate = 50.0

        def frame_times(self, u):
            return np.arange(25) / 50.0

    data = FrameClassification(min_count=1).build(Acts(), corpus, control_types=True)
    assert data.types is None and "'words' tier" in data.types_reason and "'u1'" in data.types_reason
    with pytest.raises(ControlTaskError, match="'words' tier"):
        check_control_types(data)


def _simulate_text_readings(rng, n_texts=12, n_voices=3, n_items=20, mu=0.7, sd_text=0.12):
    p_text = np.clip(mu + sd_text * rng.standard_normal(n_texts), 0.01, 0.99)  # per-text difficulty
    correct, text, utt = [], [], []
    for t in range(n_texts):
        for v in range(n_voices):
            correct.append(rng.random(n_items) < p_text[t])
            text += [t] * n_items
            utt += [t * n_voices + v] * n_items
    return np.concatenate(correct).astype(float), np.array(text), np.array(utt)


def test_bootstrap_over_texts_covers_the_known_mean():
    """Readings of one text share its difficulty: resampling texts covers the population mean at
    about the nominal 95%; resampling utterances (the old behaviour) gives too narrow intervals."""
    rng = np.random.default_rng(0)
    # the population mean of clip(0.7 + 0.12 z) (clipping at .01/.99 is negligible here)
    z = np.random.default_rng(99).standard_normal(2_000_000)
    truth = float(np.clip(0.7 + 0.12 * z, 0.01, 0.99).mean())
    hits = {"text": 0, "utterance": 0}
    n_sim = 1000  # Monte Carlo s.e. of a coverage near .93: about .008
    for s in range(n_sim):
        correct, text, utt = _simulate_text_readings(rng, n_texts=30)
        for name, groups in (("text", text), ("utterance", utt)):
            ci = bootstrap_ci(correct, groups, statistic="accuracy", n_boot=400, seed=s)
            hits[name] += ci.low <= truth <= ci.high
    cov_text, cov_utt = hits["text"] / n_sim, hits["utterance"] / n_sim
    assert 0.90 <= cov_text <= 0.99, cov_text  # measured here: .930 (with 12 texts: .899, percentile bootstrap)
    assert cov_utt < 0.85, cov_utt  # measured here: .806 (the review's 12-text case: .73)


def test_mdl_whole_utterance_blocks_do_not_leak_segment_identity():
    """Frames of one segment share a large offset; with frames shuffled into blocks, siblings of
    a block's frames sit in the training prefix and the probe compresses by memorising them."""
    rng = np.random.default_rng(0)
    n_utt, n_seg, n_fr, K, D = 300, 8, 5, 4, 64
    means = 0.5 * rng.standard_normal((K, D))
    xs, ys, utt = [], [], []
    for u in range(n_utt):
        for _ in range(n_seg):
            c = int(rng.integers(K))
            offset = 2.0 * rng.standard_normal(D)  # shared by the segment's frames
            xs.append(means[c] + offset + 0.05 * rng.standard_normal((n_fr, D)))
            ys += [c] * n_fr
            utt += [u] * n_fr
    x = np.concatenate(xs).astype(np.float32)[:, None]  # (N, 1, D)
    y, utt = np.array(ys), np.array(utt)
    data = ProbeData("phones", "classification", y, utt, ["phones"], [str(k) for k in range(K)])
    comp = {}
    for name, groups in (("utterance", utt), ("frame", np.arange(len(y)))):
        arrays = {"train": SplitArrays(torch.from_numpy(x), torch.from_numpy(y).long(), utt, data, groups)}
        rows = mdl_rows(arrays, data, [0], seed=0, max_items=None, unit=name)
        comp[name] = next(r["value"] for r in rows if r["metric"] == "mdl_compression")
        assert all(r["unit"] == f"blocks of whole {name}s" for r in rows)
    assert comp["frame"] > 1.3 * comp["utterance"], comp  # measured here: 3.01 vs 1.95

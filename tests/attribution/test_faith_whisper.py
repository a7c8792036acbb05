"""Faithfulness for Whisper ASR targets on a tiny random Whisper: the teacher-forced token log-prob as f (the
target as given by whisper_token_targets), and the WER of the re-decoded waveform after each deletion step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.functional import faithfulness as F


def test_token_logprob_and_wer_after_redecoding(whisper_bb):
    from src.attribution import attribute, make_segments, segment_scores, whisper_token_targets
    from tests.attribution.conftest import make_utt

    bb = whisper_bb
    utt = make_utt(n=16000)
    segs = make_segments(utt, "words")
    targets = whisper_token_targets(bb, utt, "waveform", level="token", max_new_tokens=4)
    t = targets[0]
    mask = t.feature_mask(segs)
    n = t.n_groups(segs)
    base = t.baseline("zeros")
    sc = F.PerturbationScorer(t, t.x0, base, mask, n, batch_size=4)
    assert sc.full == pytest.approx(float(t(t.x0)[0]), abs=1e-5)  # f(x) is the token's log-prob as given
    raw, _ = attribute(t, "saliency", None, segs)
    scores = np.zeros(n)
    scores[: len(segs)] = segment_scores(raw, mask, len(segs))
    units = np.flatnonzero(segs.is_word)
    it = F.item_measures(sc, scores, units, n_random=2, seed=0)
    # a deletion step's score is the log-prob with those words' samples zeroed, checked directly
    x = t.x0.clone()
    x[mask == int(it.curves.order[0])] = 0.0
    assert it.curves.deletion[1] == pytest.approx(float(t(x)[0]), abs=1e-5)
    assert it.values[("comprehensiveness_aopc", "all_k")] == pytest.approx(
        np.mean([sc.full - d for d in it.curves.deletion[1:]]), abs=1e-9)  # fmt: skip

    def decode(xb):  # re-decode perturbed waveforms with the model's own greedy transcript
        ids = bb.transcribe_ids(list(xb), max_new_tokens=4)
        return [bb.decode_ids(i) for i in ids]

    own = decode(t.x0)[0]
    wer = F.deletion_wer_curve(decode, t.x0, base, mask, it.curves.order, own, n, batch_size=4)
    assert wer.shape == (len(units) + 1,) and wer[0] == 0.0  # nothing removed: the model's own transcript
    from src.functional.text import word_error_rate

    x_all = F.replace_segments(t.x0, base, mask, np.isin(np.arange(n), units)[None])
    assert wer[-1] == pytest.approx(word_error_rate([own], decode(x_all)), abs=1e-12)
    assert torch.equal(F.replace_segments(t.x0, base, mask, np.zeros((1, n), bool)), t.x0)


class _OneUtt:
    name = "one"

    def __init__(self, utt):
        self.utt, self.ids = utt, [utt.id]

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.utt


def test_analysis_with_asr_targets(whisper_bb):
    from src.analyses.base import AnalysisContext
    from src.analyses.faithfulness import Faithfulness
    from src.attribution import attribute, make_segments, segment_scores, whisper_token_targets
    from tests.attribution.conftest import make_utt

    bb = whisper_bb
    utt = make_utt(n=16000)
    an = Faithfulness(target="asr_token", methods=["saliency"], inputs=["waveform"], replace_with="zeros",
                      max_targets=2, asr_max_tokens=4, n_random=2, wer=True, utterances=[utt.id], n_boot=20, seed=1)  # fmt: skip
    res = an.run(AnalysisContext(None, _OneUtt(utt), backbone_factory=lambda: bb))
    got = {(r["metric"], r["variant"]): r for r in res.rows}
    assert {r["head"] for r in res.rows} == {"all"}
    # direct: the mean over the 2 token targets of each one's AOPC
    segs = make_segments(utt, "words")
    targets = whisper_token_targets(bb, utt, "waveform", level="token", max_new_tokens=4)[:2]
    vals = []
    for t in targets:
        mask, n = t.feature_mask(segs), t.n_groups(segs)
        raw, _ = attribute(t, "saliency", None, segs)
        s = np.zeros(n)
        s[: len(segs)] = segment_scores(raw, mask, len(segs))
        sc = F.PerturbationScorer(t, t.x0, t.baseline("zeros"), mask, n)
        vals.append(F.item_measures(sc, s, np.flatnonzero(segs.is_word), n_random=2, seed=[1, 0]).values[
            ("comprehensiveness_aopc", "eraser")])  # fmt: skip
    assert got[("comprehensiveness_aopc", "eraser")]["value"] == pytest.approx(np.mean(vals), abs=1e-5)
    w = got[("deletion_wer_auc", "trapezoid")]
    assert w["n_units"] == 1 and w["value"] >= 0.0 and w["n_random"] == 2

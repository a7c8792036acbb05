"""Intervals say what they resample and how few units they rest on.

The lenses and the context-mixing cue study resample the split unit (texts: the readings of one
sentence together), as the probes do; every analysis result marks intervals over fewer than 5 units
(``n_units``, ``few_units``) and logs a warning. References: a literal loop over the documented
resample design (``np.random.default_rng(seed).integers(0, G, size=(B, G))`` over the groups in sorted
order) and ``np.quantile``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from src.analyses.base import (
    MIN_UNITS,
    AnalysisContext,
    AnalysisResult,
    flag_few_units,
    interval_fields,
    interval_units,
    ratio_rows,  # fmt: skip
)
from src.analyses.context_mixing import ContextMixing
from src.analyses.decoder_lens import DecoderLens
from src.analyses.logit_lens import LogitLens
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import Utterance
from tests.helpers import ListCorpus


def literal_ratio_interval(stats, groups, n_boot, seed, alpha=0.05):
    """sum(stats[:, 0]) / sum(stats[:, 1]) over the utterances of each resample of whole groups, a plain loop."""
    names = sorted(set(groups))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    reps = []
    for row in draws:
        num = den = 0.0
        for g in row:
            for s, key in zip(stats, groups):
                if key == names[g]:
                    num += s[0]
                    den += s[1]
        reps.append(num / den)
    return np.quantile(reps, [alpha / 2, 1 - alpha / 2])


def literal_mean_interval(values, groups, n_boot, seed, alpha=0.05):
    names = sorted(set(groups))
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    reps = []
    for row in draws:
        picked = [v for g in row for v, key in zip(values, groups) if key == names[g]]
        reps.append(sum(picked) / len(picked))
    return np.quantile(reps, [alpha / 2, 1 - alpha / 2])


def readings(texts: list[str], speakers: list[str], seconds: float = 0.5) -> ListCorpus:
    g = np.random.default_rng(0)
    return ListCorpus([Utterance(f"u{i}", (0.1 * g.standard_normal(int(16000 * seconds))).astype(np.float32), 16000,
                                 speaker=s, text=t) for i, (t, s) in enumerate(zip(texts, speakers))])  # fmt: skip


def test_min_units_is_the_probes_threshold():
    from src.probes.pipeline import MIN_UNITS_WARN

    assert MIN_UNITS == MIN_UNITS_WARN == 5


def test_interval_units_groups_readings_of_one_sentence_and_falls_back(caplog):
    corpus = readings(["a b", "c d", "a b", "c d", "e"], ["s1", "s1", "s2", "s2", "s2"])
    unit, keys = interval_units(corpus, [0, 1, 2, 3, 4], "text")
    assert unit == "text" and keys.tolist() == ["text:a b", "text:c d", "text:a b", "text:c d", "text:e"]
    unit, keys = interval_units(corpus, [0, 2], "text")  # two readings of one sentence: one text -> utterances
    assert unit == "utterance" and keys.tolist() == ["utt:u0", "utt:u2"]
    assert "hold 1 text; intervals resample utterances instead" in caplog.text
    unit, keys = interval_units(corpus, [2, 3], "speaker")  # one speaker -> texts
    assert unit == "text" and keys.tolist() == ["text:a b", "text:c d"]
    with pytest.raises(ValueError, match="split.by must be one of"):
        interval_units(corpus, [0], "sentence")


def test_ratio_rows_resample_whole_groups():
    rng = np.random.default_rng(3)
    stats = np.stack([rng.integers(0, 6, 9), rng.integers(3, 9, 9)], axis=1).astype(float)  # (9, 2) edits, words
    groups = np.array(["text:x", "text:y", "text:z", "text:x", "text:y", "text:z", "text:w", "text:v", "text:w"])
    r = ratio_rows(stats, {"layer": 1}, "wer", n_boot=300, alpha=0.05, seed=7, groups=groups, unit="text")
    lo, hi = literal_ratio_interval(stats, groups.tolist(), 300, 7)
    assert r["value"] == pytest.approx(stats[:, 0].sum() / stats[:, 1].sum(), abs=1e-12)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert (r["unit"], r["n_units"], r["few_units"], r["n_utterances"]) == ("text", 5, False, 9)
    per_utt = ratio_rows(stats, {"layer": 1}, "wer", n_boot=300, alpha=0.05, seed=7)  # each utterance its own unit
    assert (per_utt["unit"], per_utt["n_units"]) == ("utterance", 9)
    assert (per_utt["ci_low"], per_utt["ci_high"]) != (r["ci_low"], r["ci_high"])
    few = ratio_rows(stats[:4], {}, "wer", n_boot=50, alpha=0.05, seed=0, groups=groups[:4], unit="text")
    assert (few["n_units"], few["few_units"]) == (3, True)


def test_every_result_flags_intervals_on_few_units(caplog):
    rows = [
        {"layer": 0, "metric": "m", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, **interval_fields("text", 3)},
        {"layer": 1, "metric": "m", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, **interval_fields("text", 5)},
        {"layer": 2, "metric": "m", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "unit": "utterance", "n_units": 2},
        {"layer": 3, "metric": "no_interval", "value": 1.0},
    ]
    table = [{"kind": "cue", "value": 0.4, "ci_low": 0.3, "ci_high": 0.5, "unit": "text", "n_units": 1}]
    with caplog.at_level(logging.WARNING):
        res = AnalysisResult("toy", rows, tables={"cue_contribution": table})
    assert [(r.get("n_units"), r.get("few_units")) for r in res.rows] == [(3, True), (5, False), (2, True),
                                                                           (None, None)]  # fmt: skip
    assert res.tables["cue_contribution"][0]["few_units"] is True
    assert res.meta["intervals_on_few_units"] == 3
    assert "toy: 2 of 3 intervals rest on fewer than 5 texts/utterances (as few as 2)" in caplog.text
    assert "toy (cue_contribution): 1 of 1 intervals rest on fewer than 5 texts (as few as 1)" in caplog.text
    caplog.clear()
    out, few = flag_few_units([rows[1]], "fine")
    assert few == 0 and out[0]["few_units"] is False and not caplog.text


def test_cue_study_resamples_texts():
    """aggregate(): 3 sentences x 2 voices; the pair of readings of a sentence is resampled together."""
    rng = np.random.default_rng(1)
    items = [{"utterance": f"u{i}", "component": "decoder", "metric": "value_zeroing", "layer": 0,
              "target_from_cue": float(c), "target_from_control": float(k)}
             for i, (c, k) in enumerate(zip(rng.uniform(0.3, 0.9, 6), rng.uniform(0.0, 0.4, 6)))]  # fmt: skip
    unit_of = {f"u{i}": f"text:s{i % 3}" for i in range(6)}
    out = {r["kind"]: r for r in ContextMixing(n_boot=400).aggregate(items, seed=5, unit_of=unit_of, unit="text")}
    cue = [r["target_from_cue"] for r in items]
    diff = [r["target_from_cue"] - r["target_from_control"] for r in items]
    groups = [unit_of[r["utterance"]] for r in items]
    for kind, v in (("cue", cue), ("cue_minus_control", diff)):
        lo, hi = literal_mean_interval(v, groups, 400, 5)
        assert out[kind]["value"] == pytest.approx(np.mean(v), abs=1e-12)
        assert (out[kind]["ci_low"], out[kind]["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
        assert (out[kind]["unit"], out[kind]["n_units"], out[kind]["few_units"], out[kind]["n_items"]) == ("text", 3, True, 6)


@pytest.fixture(scope="module")
def whisper(tiny_whisper_dir):
    torch.set_num_threads(1)
    return WhisperBackbone(str(tiny_whisper_dir))


def test_lenses_resample_texts_and_flag_few(whisper, caplog):
    """Four utterances, two readings each of two sentences: the lenses' intervals rest on 2 texts, flagged."""
    corpus = readings(["a b", "c d", "a b", "c d"], ["s1", "s1", "s2", "s2"])
    ctx = AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: whisper)
    with caplog.at_level(logging.WARNING):
        dl = DecoderLens(layers="last", utterances="all", max_tokens_per_second=4.0, extra_tokens=1,
                         check_final="none", n_boot=200).run(ctx)  # fmt: skip
    wer = next(r for r in dl.rows if r["metric"] == "wer")
    assert (wer["unit"], wer["n_units"], wer["few_units"], wer["n_utterances"]) == ("text", 2, True, 4)
    t = dl.tables["transcripts"]
    stats = np.array([[r["word_edits"], r["reference_words"]] for r in t], dtype=float)
    lo, hi = literal_ratio_interval(stats, [f"text:{r['reference']}" for r in t], 200, 0)
    assert (wer["ci_low"], wer["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert "decoder_lens: 5 of 5 intervals rest on fewer than 5 texts (as few as 2)" in caplog.text
    assert dl.meta["bootstrap_unit"] == "text" and dl.meta["bootstrap_units"] == 2
    ll = LogitLens(layers=0, utterances="all", top_k=0, n_boot=50).run(ctx)
    assert {(r["unit"], r["n_units"], r["few_units"], r["n_utterances"]) for r in ll.rows} == {("text", 2, True, 4)}

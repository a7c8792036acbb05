"""Splits that keep their promise: by=text groups readings of one sentence, also without transcripts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from src.datamodules.corpus import Interval, TextGridCorpus, write_textgrid
from src.datamodules.splits import SplitError, group_keys, split_utterances


def _corpus(tmp_path, sentences, speakers=("a", "b", "c"), words=True):
    for spk in speakers:
        d = tmp_path / "c" / spk
        d.mkdir(parents=True, exist_ok=True)
        for i, sent in enumerate(sentences):
            sf.write(d / f"{spk}_{i}.wav", np.zeros(8000, np.float32), 16000)
            ws = sent.split()
            tiers = {"phones": [Interval(0.0, 0.5, "a")]}
            if words:
                tiers["words"] = [Interval(k * 0.5 / len(ws), (k + 1) * 0.5 / len(ws), w) for k, w in enumerate(ws)]
            write_textgrid(d / f"{spk}_{i}.TextGrid", tiers, 0.5)
    return TextGridCorpus(tmp_path / "c")


SENTS = [f"the cat number {i} sat" for i in range(10)]


def test_text_split_takes_the_text_from_the_words_tier(tmp_path):
    corpus = _corpus(tmp_path, SENTS)  # no <id>.json transcripts: text comes from the words tier
    keys = group_keys(corpus, "text")
    assert len(set(keys.tolist())) == 10
    s = split_utterances(corpus, by="text", val_fraction=0.2, test_fraction=0.2)
    for a in ("train", "val", "test"):
        for b in ("train", "val", "test"):
            if a < b:  # no sentence in two splits
                assert not set(keys[s[a]].tolist()) & set(keys[s[b]].tolist())
    assert len(s["test"]) == 6  # 2 sentences x 3 readers


def test_text_split_warns_when_there_is_no_text(tmp_path, caplog):
    corpus = _corpus(tmp_path, SENTS[:4], words=False)
    with caplog.at_level(logging.WARNING):
        keys = group_keys(corpus, "text")
    assert len(set(keys.tolist())) == 12 and "no transcript and no words tier" in caplog.text


def test_empty_split_names_the_set_and_the_counts(tmp_path):
    corpus = _corpus(tmp_path, SENTS[:2])
    with pytest.raises(SplitError, match=r"split 'val' is empty.*6 utterances in 2 text groups.*train=\d, val=0, test=\d"):
        split_utterances(corpus, by="text", val_fraction=0.2, test_fraction=0.3)


def test_bootstrap_unit_is_the_split_unit_with_a_fallback_for_one_test_speaker(tmp_path, caplog):
    from src.probes.pipeline import bootstrap_unit

    corpus = _corpus(tmp_path, SENTS)
    s = split_utterances(corpus, by="text", val_fraction=0.2, test_fraction=0.2)
    counts: dict = {}
    unit, keys = bootstrap_unit(corpus, "text", s["test"], counts)
    assert unit == "text" and counts["bootstrap_units_in_test"] == 2 and counts["warning_few_test_units"] == 2
    s = split_utterances(corpus, by="speaker", test_speakers=["c"])
    counts = {}
    with caplog.at_level(logging.WARNING):
        unit, keys = bootstrap_unit(corpus, "speaker", s["test"], counts)
    assert unit == "text" and counts["bootstrap_unit_fallback"] == "speaker->text" and "1 speaker" in caplog.text


def test_constant_target_fails_before_training():
    from src.datamodules.tasks import ProbeData
    from src.probes.pipeline import SplitArrays, check_targets

    y = np.stack([np.arange(6.0), np.ones(6)], axis=1)
    data = ProbeData("ema", "regression", y, np.arange(6), ["tongue_x", "jaw_y"])
    arrays = {s: SplitArrays(torch.zeros(6, 1, 2), torch.from_numpy(y).float(), np.arange(6), data) for s in ("train", "test")}
    with pytest.raises(ValueError, match=r"\['jaw_y'\] are constant in split 'train'"):
        check_targets(arrays, data)

"""Split fractions are validated: 0, negative, >= 1 or a sum >= 1 is an error naming the config key."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import Interval, TextGridCorpus, write_textgrid
from src.datamodules.splits import SplitError, check_fractions, split_utterances


@pytest.fixture()
def corpus(tmp_path):
    d = tmp_path / "c" / "spk"
    d.mkdir(parents=True)
    for i in range(10):
        sf.write(d / f"u{i}.wav", np.zeros(8000, np.float32), 16000)
        write_textgrid(d / f"u{i}.TextGrid", {"words": [Interval(0.0, 0.5, f"word{i}")]}, 0.5)
    return TextGridCorpus(tmp_path / "c")


@pytest.mark.parametrize("by", ["text", "utterance"])
@pytest.mark.parametrize(
    "val, test, key",
    [
        (0.15, 0.0, r"split\.test_fraction must be in \(0, 1\).*got 0\.0"),
        (0.15, -0.2, r"split\.test_fraction must be in \(0, 1\).*got -0\.2"),
        (0.0, 0.2, r"split\.val_fraction must be in \(0, 1\).*got 0\.0"),
        (-1, 0.2, r"split\.val_fraction must be in \(0, 1\).*got -1"),
        (0.15, 1.0, r"split\.test_fraction must be in \(0, 1\).*got 1\.0"),
        (0.15, float("nan"), r"split\.test_fraction must be in \(0, 1\).*got nan"),
        (0.5, 0.5, r"split\.val_fraction \+ split\.test_fraction must be < 1.*0\.5 \+ 0\.5 = 1"),
        (0.6, 0.45, r"split\.val_fraction \+ split\.test_fraction must be < 1.*0\.6 \+ 0\.45 = 1\.05"),
        ("a", 0.2, r"split\.val_fraction must be a number in \(0, 1\), got 'a'"),
    ],
)
def test_bad_fractions_name_the_config_key(corpus, by, val, test, key):
    with pytest.raises(SplitError, match=key):
        split_utterances(corpus, by=by, val_fraction=val, test_fraction=test)


def test_test_fraction_zero_used_to_hold_out_one_group_silently(corpus):
    # before the check, test_fraction=0 still held out max(1, round(0 * 10)) = 1 sentence as "test"
    with pytest.raises(SplitError, match=r"split\.test_fraction"):
        split_utterances(corpus, by="text", val_fraction=0.2, test_fraction=0)


def test_speaker_splits_check_the_fractions_too(corpus):
    with pytest.raises(SplitError, match=r"split\.test_fraction"):
        split_utterances(corpus, by="speaker", test_speakers=["spk"], val_fraction=0.2, test_fraction=-0.1)


def test_good_fractions_pass_and_give_the_literal_sizes(corpus):
    check_fractions(0.15, 0.2)
    check_fractions(0.01, 0.98)
    s = split_utterances(corpus, by="text", val_fraction=0.2, test_fraction=0.3)
    # 10 groups: round(0.3 * 10) = 3 test; the rest 7, round(0.2 / 0.7 * 7) = 2 val; 5 train
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (5, 2, 3)


def test_fractions_are_not_checked_where_they_are_not_used(corpus):
    # by=speaker with both speaker lists: neither fraction is read
    with pytest.raises(SplitError, match=r"split 'train' is empty"):  # one speaker: the fractions are not the issue
        split_utterances(corpus, by="speaker", test_speakers=["spk"], val_speakers=["spk"], test_fraction=0)
    # by=order: positions, not fractions
    s = split_utterances(corpus, by="order", train_first=6, test_last=2, val_count=2, test_fraction=0)
    assert [x.tolist() for x in (s["train"], s["val"], s["test"])] == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]

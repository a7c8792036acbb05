"""Figures of the live-model analyses (src/reporting/figures_live.py), read back from the drawn objects; the
contract that analyses draw only through src.reporting; the RSA null band and the phonological RDM order."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from src.reporting import figures_live as FL
from tests.reporting.figure_reader import drawn  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
CTX = "whisper_tiny_en, commands"


def _plaus(n_groups: int, k: int = 6):
    heads = ["action", "object", "location"]
    return [{"head": heads[i % 3], "method": ["saliency", "integrated_gradients"][i % 2], "input": "spectrogram",
             "metric": "top_word_plausibility", "value": 0.5, "ci_low": 0.0, "ci_high": 1.0, "random": 0.3,
             "random_ci_low": 0.25, "random_ci_high": 0.35, "n_utterances": n_groups, "n_units": n_groups}
            for i in range(k)]  # fmt: skip


def test_plausibility_few_units_states_n_and_draws_no_intervals(tmp_path, drawn):  # noqa: F811
    FL.plot_plausibility(_plaus(4), tmp_path / "p.png", CTX)
    rec = drawn[0]
    ax = rec["axes"][0]
    assert "n = 4 utterances, 4 sentences" in ax["title"] and "no intervals" in ax["title"] and CTX in ax["title"]
    assert ax["errorbars"] == 0  # no error bars
    assert rec["overlaps"][0] == 0  # wrapped, rotated tick labels do not overlap
    assert ax["legend_outside"]


def test_plausibility_enough_units_draws_intervals(tmp_path, drawn):  # noqa: F811
    FL.plot_plausibility(_plaus(12, k=12), tmp_path / "p.png", CTX)
    rec = drawn[0]
    assert rec["axes"][0]["errorbars"] > 0  # error bars
    assert "no intervals" not in rec["axes"][0]["title"] and rec["overlaps"][0] == 0


def test_cue_contribution_bands_and_labels(tmp_path, drawn):  # noqa: F811
    rows = [{"metric": m, "kind": kind, "layer": k, "value": v + 0.01 * k, "ci_low": v - 0.02, "ci_high": v + 0.03,
             "n_units": 8} for m in ("attention", "value_zeroing") for kind, v in (("cue", 0.3), ("control", 0.1))
            for k in range(1, 5)]  # fmt: skip
    FL.plot_cue_contribution(rows, tmp_path / "c.png", "decoder", CTX, layer_note=" (1 = first)")
    rec = drawn[0]
    ax = rec["axes"][0]
    np.testing.assert_allclose(ax["lines"]["target \u2190 cue"]["y"], [0.31, 0.32, 0.33, 0.34])
    assert len(ax["bands"]) == 2 and ax["xlabel"] == "layer (1 = first)"
    assert "Context mixing" in rec["suptitle"] and CTX in rec["suptitle"]


def test_mixing_heatmap_colourbar_names_the_quantity(tmp_path, drawn):  # noqa: F811
    m = np.array([[0.7, 0.3], [0.4, 0.6]])
    FL.plot_mixing_heatmaps({"mats": {"attention": m, "value_zeroing": m}, "rows": ["a", "b"], "cols": ["a", "b"],
                             "component": "encoder", "layer": 2, "utterance": "u1"}, tmp_path / "h.png",
                            context=CTX)  # fmt: skip
    rec = drawn[0]
    assert "row-normalised" in rec["axes"][-1]["ylabel"]  # the colour bar
    assert [a["title"] for a in rec["axes"][:2]] == ["attention", "value zeroing"]


def test_top_heads_and_faithfulness_curves(tmp_path, drawn):  # noqa: F811
    table = [{"component": "decoder", "layer": 1, "head": h, "value": 0.5 - 0.1 * h, "ci_low": 0.3 - 0.1 * h,
              "ci_high": 0.6 - 0.1 * h} for h in range(3)]  # fmt: skip
    FL.plot_top_heads(table, tmp_path / "t.png", "logit_diff", "Activation patching: top heads")
    ax = drawn[0]["axes"][0]
    assert ax["yticks"] == ["decoder L1 h0", "decoder L1 h1", "decoder L1 h2"][::-1] or ax["yticks"][0]
    assert "95% bootstrap interval" in ax["xlabel"]
    c = {"x": [0, 0.5, 1.0], "methods": {"saliency": ([0, -1, -2], [-2, -1, 0])},
         "random": (np.zeros((5, 3)), np.zeros((5, 3)))}  # fmt: skip
    FL.plot_deletion_insertion(c, tmp_path / "d.png", "Faithfulness")
    left, right = drawn[1]["axes"]
    np.testing.assert_allclose(left["lines"]["saliency"]["y"], [0, -1, -2])
    assert "lower is better" in left["ylabel"] and "higher is better" in right["ylabel"]
    assert right["legend_outside"]


def test_activation_frequency_histogram(tmp_path, drawn):  # noqa: F811
    f = np.array([0.0, 0.0, 0.01, 0.1, 0.5])
    FL.plot_activation_frequency(f, tmp_path / "a.png", "3", "whisper_tiny_en, synth")
    ax = drawn[0]["axes"][0]
    assert "2 of 5 latents dead" in ax["title"] and "whisper_tiny_en, synth" in ax["title"]
    assert ax["xlabel"].startswith("log10 firing frequency")


# ---------------------------------------------------------------------------------------------- contracts


def test_analyses_draw_only_through_reporting():
    """No analysis imports matplotlib or a private name of src.reporting (figures are public functions there)."""
    bad = []
    for path in sorted((ROOT / "src" / "analyses").glob("*.py")):
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"^\s*(import matplotlib|from matplotlib|import pylab)", line) or "plt." in line:
                bad.append(f"{path.name}:{n}: {line.strip()}")
            m = re.search(r"from src\.reporting(\.\w+)? import (.+)", line)
            if m and any(name.strip().startswith("_") for name in m.group(2).strip("() ").split(",")):
                bad.append(f"{path.name}:{n}: {line.strip()}")
        for m in re.finditer(r"from src\.reporting(?:\.\w+)? import \(([^)]*)\)", text):
            if any(name.strip().startswith("_") for name in m.group(1).split(",") if name.strip()):
                bad.append(f"{path.name}: private import in {m.group(0)[:60]}")
    assert bad == []


def test_rsa_rows_carry_the_permutation_null_band():
    """null_low / null_high of RSA rows are the 2.5% / 97.5% quantiles of a literal permutation null
    (reference items permuted with the same generator, Spearman by scipy); r and p are unchanged."""
    from scipy.spatial.distance import pdist, squareform
    from scipy.stats import spearmanr

    from src.functional.rsa import permutation_test

    rng = np.random.default_rng(3)
    x, y = pdist(rng.normal(size=(9, 4))), pdist(rng.normal(size=(9, 3)))
    r, p, null = permutation_test(x, y, n_perm=50, seed=7, method="spearman", return_null=True)
    assert (r, p) == permutation_test(x, y, n_perm=50, seed=7, method="spearman")
    gen = np.random.default_rng(7)
    ys = squareform(y)
    literal = [spearmanr(x, squareform(ys[np.ix_(pi, pi)], checks=False)).statistic
               for pi in (gen.permutation(9) for _ in range(50))]  # fmt: skip
    np.testing.assert_allclose(null, literal, atol=1e-12)


def test_rsa_analysis_rows_and_heatmap_order(tmp_path, drawn):  # noqa: F811
    from src.analyses.base import AnalysisContext
    from src.analyses.rsa import RSA
    from tests.analyses.phone_fakes import phone_corpus, prototype_acts

    phones = ["t", "aa", "s", "iy", "p", "n", "m", "z"]
    corpus = phone_corpus([phones * 3, phones[::-1] * 3], ["s1", "s2"])
    rng = np.random.default_rng(0)
    acts = prototype_acts(corpus, {p: rng.normal(size=(3, 6)) for p in phones}, noise=0.3, seed=1)
    res = RSA(references=["phonological"], n_perm=40, min_count=1).run(AnalysisContext(acts, corpus))
    rows = [r for r in res.rows if r["metric"] == "rsa_kendall_tau_a"]
    assert all(r["null_low"] < r["null_high"] for r in rows) and len(rows) == acts.num_layers
    m = res.matrices["rdm_layer00"]
    assert m.row_labels == sorted(phones)  # the saved matrix keeps the item order
    _, shown, _, groups = m.shown()
    assert shown == ["iy", "aa", "p", "t", "s", "z", "m", "n"]  # vowels high -> low, stops, fricatives, nasals
    assert groups == ["vowel", "vowel", "stop", "stop", "fricative", "fricative", "nasal", "nasal"]
    res.save(tmp_path, {"backbone": "fake", "corpus": "phones"})
    titles = [r["axes"][0]["title"] for r in drawn]
    assert titles and all(t.endswith("fake, phones") for t in titles)
    heat = next(r for r in drawn if r["path"].endswith("rdm_layer00.png"))
    assert heat["axes"][0]["yticks"] == shown and heat["axes"][1]["ylabel"] == "model dissimilarity (correlation distance)"
    assert (tmp_path / "rsa_over_layers.png").exists()


def test_phonological_order_literal():
    from src.datamodules.phones import phonological_order

    labels = ["z", "b", "uw", "ng", "iy", "xyz", "ay", "l", "p", "aa", "y", "ch"]
    got = [labels[i] for i in phonological_order(labels)]
    # vowels (high front, high back, low back), diphthong, stops (bilabial p then voiced b), affricate after the
    # fricative, nasal, liquid, glide, unknown last
    assert got == ["iy", "uw", "aa", "ay", "p", "b", "z", "ch", "ng", "l", "y", "xyz"]

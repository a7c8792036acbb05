"""Figures of the cache analyses and probing controls, read back from the drawn matplotlib objects: lines,
labels, titles, chance lines, null bands, colour bars (src/reporting/figures_analyses.py, figures.py)."""

from __future__ import annotations

import numpy as np
import pytest

from src.reporting import figures as F
from src.reporting import figures_analyses as FA
from tests.reporting.figure_reader import drawn  # noqa: F401  (fixture)

CTX = "whisper_tiny_en, synth"


def _rsa_rows():
    rows = []
    for layer in range(5):
        v_ph, v_mf = 0.30 + 0.05 * layer, 0.60 - 0.02 * layer
        rows += [
            {"layer": layer, "reference": "phonological", "metric": "rsa_kendall_tau_a", "value": v_ph,
             "method": "kendall_tau_a", "null_low": -0.05, "null_high": 0.06},
            {"layer": layer, "reference": "phonological", "metric": "p_value", "value": 0.2 if layer == 0 else 0.001},
            {"layer": layer, "reference": "mfcc", "metric": "rsa_spearman", "value": v_mf, "method": "spearman",
             "null_low": -0.1, "null_high": 0.12},
            {"layer": layer, "reference": "mfcc", "metric": "p_value", "value": 0.001},
        ]  # fmt: skip
    return rows


def test_rsa_every_reference_on_one_figure_with_null_bands(tmp_path, drawn):  # noqa: F811
    FA.plot_rsa(_rsa_rows(), tmp_path / "rsa.png", CTX)
    assert len(drawn) == 1 and (tmp_path / "rsa.png").stat().st_size > 5000
    ax = drawn[0]["axes"][0]
    assert "RSA" in ax["title"] and ax["title"].endswith(CTX)
    assert {"phonological (Kendall \u03c4a)", "mfcc (Spearman \u03c1)"} <= set(ax["legend"])  # statistic named
    assert "phonological: 95% of permutation null" in ax["legend"]
    np.testing.assert_allclose(ax["lines"]["phonological (Kendall \u03c4a)"]["y"], [0.30, 0.35, 0.40, 0.45, 0.50])
    np.testing.assert_allclose(ax["lines"]["mfcc (Spearman \u03c1)"]["y"], [0.60, 0.58, 0.56, 0.54, 0.52])
    bands = {b["label"]: b for b in ax["bands"]}
    assert bands["phonological: 95% of permutation null"]["ymin"] == pytest.approx(-0.05)
    assert bands["mfcc: 95% of permutation null"]["ymax"] == pytest.approx(0.12)
    assert ax["ylim"][0] <= -0.1 and ax["ylim"][1] >= 0.6  # not truncated: 0 and the nulls are in view
    hollow = [s for s in ax["scatters"] if len(s.get_offsets())]
    assert [tuple(o) for s in hollow for o in s.get_offsets()] == [(0.0, 0.30)]  # p = 0.2 at layer 0 only
    assert ax["ylabel"].startswith("RSA") and "rsa_" not in ax["ylabel"]


def test_rsa_positive_values_still_show_zero(tmp_path, drawn):  # noqa: F811
    rows = [{"layer": k, "reference": "mfcc", "metric": "rsa_spearman", "value": 0.9 + 0.01 * k} for k in range(3)]
    FA.plot_rsa(rows, tmp_path / "r.png")
    ax = drawn[0]["axes"][0]
    assert ax["ylim"][0] <= 0.0 and ax["ylabel"] == "RSA: Spearman \u03c1 of model and reference RDMs"


def test_cca_pairs_on_the_x_axis_and_distinguishable_nulls(tmp_path, drawn):  # noqa: F811
    rows = []
    for k in range(3):
        for m, v in (("pwcca", 0.8), ("cca_mean", 0.6), ("pwcca_null", 0.02), ("cca_mean_null", 0.02)):
            rows.append({"layer": k, "layer_b": k + 1, "reference": "self", "metric": m, "value": v - 0.01 * k})
    FA.plot_cca(rows, tmp_path / "cca.png", CTX)
    ax = drawn[0]["axes"][0]
    assert ax["xticks"] == ["0\u21921", "1\u21922", "2\u21923"]
    assert "k\u2192k+1" in ax["xlabel"]
    n1 = ax["lines"]["PWCCA: null (one view's frames shuffled)"]
    n2 = ax["lines"]["mean canonical correlation: null (one view's frames shuffled)"]
    assert n1["ls"] == "--" and n2["ls"] == "--" and n1["marker"] != n2["marker"]
    assert not np.allclose(n1["x"], n2["x"])  # nudged apart: equal nulls do not hide each other
    np.testing.assert_allclose(n1["y"], [0.02, 0.01, 0.0], atol=1e-12)
    assert ax["lines"]["PWCCA"]["ls"] == "-" and ax["lines"]["PWCCA"]["colour"] == n1["colour"]
    assert ax["ylim"][0] <= 0 and ax["ylim"][1] >= 1


def test_abx_within_and_across_with_chance(tmp_path, drawn):  # noqa: F811
    rows = [{"layer": k, "metric": f"abx_{m}", "value": v - 0.02 * k} for k in range(4)
            for m, v in (("within", 0.2), ("across", 0.3))]  # fmt: skip
    FA.plot_abx(rows, tmp_path / "abx.png", CTX)
    ax = drawn[0]["axes"][0]
    assert ax["ylabel"] == "ABX error rate (lower is better)"
    assert set(ax["lines"]) >= {"within speaker", "across speakers"}
    np.testing.assert_allclose(ax["lines"]["across speakers"]["y"], [0.3, 0.28, 0.26, 0.24])
    assert [h["y"] for h in ax["hlines"] if h["label"] == "chance (0.5)"] == [0.5]
    assert ax["ylim"][0] <= 0 and ax["ylim"][1] >= 0.55
    assert ax["title"].startswith("ABX") and CTX in ax["title"]


def test_dimred_measures_only_at_measured_layers(tmp_path, drawn):  # noqa: F811
    rows = [{"layer": k, "reference": sp, "metric": "silhouette_manner", "value": 0.1 * k + d}
            for k in (0, 2, 4) for sp, d in (("full", 0.0), ("pca", 0.05))]  # fmt: skip
    FA.plot_dimred_measure(rows, tmp_path / "s.png", "silhouette_manner", CTX)
    ax = drawn[0]["axes"][0]
    line = ax["lines"]["PCA (2-D)"]
    finite = np.isfinite(line["y"])
    np.testing.assert_allclose(line["x"][finite], [0, 2, 4])  # markers at the measured layers
    assert (~finite).sum() == 2  # no solid segment across the unmeasured layers 1 and 3
    assert ax["xticks"] == ["0", "2", "4"] and ax["ylabel"].startswith("silhouette (manner)")
    acc = [{"layer": k, "reference": "lda", "metric": "lda_centroid_accuracy", "value": 0.3} for k in (0, 2, 4)]
    FA.plot_dimred_measure(acc, tmp_path / "a.png", "lda_centroid_accuracy", CTX,
                           chance={"uniform guess (1 / #phones)": 1 / 40, "majority phone (held-out)": 0.09})  # fmt: skip
    ax = drawn[1]["axes"][0]
    assert sorted(h["y"] for h in ax["hlines"]) == pytest.approx([0.025, 0.09])
    assert ax["ylim"][0] <= 0 and ax["ylim"][1] >= 1


def test_scatter_distinct_styles_for_many_classes(tmp_path, drawn):  # noqa: F811
    rng = np.random.default_rng(0)
    labels = [f"p{i % 25}" for i in range(500)]
    F.plot_scatter_2d(rng.normal(size=(500, 2)), labels, tmp_path / "sc.png", "PCA", xlabel="PC1 (12.0% of variance)",
                      ylabel="PC2 (8.0% of variance)", label_name="phone")  # fmt: skip
    ax = drawn[0]["axes"][0]
    styles = {(tuple(np.round(s.get_facecolor()[0], 3)), s.get_paths()[0].vertices.tobytes()) for s in ax["scatters"]}
    assert len(ax["scatters"]) == 25 and len(styles) == 25  # 25 classes, 25 colour x marker pairs
    assert min(float(s.get_sizes()[0]) for s in ax["scatters"]) >= 12
    assert ax["xlabel"] == "PC1 (12.0% of variance)" and drawn[0]["axes"][0]["legend_outside"]


def test_probing_selectivity_beside_accuracies_and_mdl_uniform_line(tmp_path, drawn):  # noqa: F811
    rows = [{"backbone": "w", "task": "phones", "layer": -1, "target": "phone", "metric": "accuracy_majority_baseline",
             "value": 0.09, "split": "test"}]  # fmt: skip
    for k in range(3):
        for metric, v in (("accuracy", 0.7), ("accuracy_control_types_seen", 0.72), ("control_accuracy", 0.3),
                          ("selectivity", 0.42)):  # fmt: skip
            rows.append({"backbone": "w", "task": "phones", "layer": k, "target": "phone", "metric": metric,
                         "value": v + 0.01 * k, "ci_low": v - 0.05, "ci_high": v + 0.05, "split": "test"})  # fmt: skip
        rows.append({"backbone": "w", "task": "phones", "layer": k, "target": "phone", "metric": "mdl_compression",
                     "value": 1.2 + 0.3 * k, "split": "train"})  # fmt: skip
    pngs = FA.probing_figures(rows, tmp_path, "accuracy", "classification", CTX)
    assert {p.name for p in pngs} == {"accuracy_over_layers.png", "selectivity_over_layers.png",
                                      "mdl_compression_over_layers.png"}  # fmt: skip
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in drawn}
    sel = by_name["selectivity_over_layers.png"]
    left, right = sel["axes"]
    np.testing.assert_allclose(left["lines"]["probe: the control task"]["y"], [0.3, 0.31, 0.32])
    np.testing.assert_allclose(left["lines"]["probe: the task"]["y"], [0.72, 0.73, 0.74])
    assert [h["y"] for h in left["hlines"]] == [0.09]
    np.testing.assert_allclose(right["lines"]["selectivity"]["y"], [0.42, 0.43, 0.44])
    assert right["bands"] and "phones" in sel["suptitle"] and CTX in sel["suptitle"]
    mdl = by_name["mdl_compression_over_layers.png"]["axes"][0]
    assert [h["y"] for h in mdl["hlines"] if h["label"] == "uniform code (1.0)"] == [1.0]
    assert "uniform" in mdl["ylabel"] and mdl["ylim"][0] <= 0
    acc = by_name["accuracy_over_layers.png"]["axes"][0]
    assert acc["ylabel"] == "accuracy (test, higher is better)" and acc["bands"]  # intervals as bands
    assert [h["label"] for h in acc["hlines"]] == ["majority baseline (0.09)"]


def test_readable_labels_not_raw_keys(tmp_path, drawn):  # noqa: F811
    import pandas as pd

    df = pd.DataFrame([{"layer": k, "metric": "rsa_kendall_tau_a", "value": 0.1 * k, "target": "phonological",
                        "split": "all"} for k in range(3)])  # fmt: skip
    F.plot_over_layers(df, tmp_path / "x.png", "rsa_kendall_tau_a", split="all")
    assert drawn[0]["axes"][0]["ylabel"] == "RSA (Kendall \u03c4a)"
    assert F.readable("abx_within").endswith("(lower is better)")
    assert F.readable("pwcca_null") == "PWCCA, shuffled null"


def test_matrix_colourbar_names_the_quantity_and_groups(tmp_path, drawn):  # noqa: F811
    F.plot_matrix(np.eye(4), tmp_path / "m.png", list("abcd"), list("abcd"), "CKA: layers x layers")
    assert drawn[0]["axes"][1]["ylabel"] == "CKA"  # the colour bar's axes
    F.plot_matrix(np.eye(4), tmp_path / "g.png", list("abcd"), list("abcd"), "RDM", colorbar_label="distance",
                  groups=["stop", "stop", "nasal", "nasal"])  # fmt: skip
    assert drawn[1]["axes"][1]["ylabel"] == "distance"
    assert {" stop", " nasal"} <= set(drawn[1]["axes"][0]["texts"])


def test_figure_titles_name_model_and_corpus():
    assert F.context_label({"backbone": "whisper_tiny_en", "corpus": "synth", "x": 1}) == "whisper_tiny_en, synth"
    assert F.figure_title("RSA", "whisper_tiny_en, synth") == "RSA\nwhisper_tiny_en, synth"
    assert F.figure_title("RSA", "") == "RSA"

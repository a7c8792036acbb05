"""What the project logs to W&B, read back from the offline run's own ``.wandb`` records.

One offline run is shared by the module (``logged``): fake result tables of RSA (two references), CKA
(one-layer references, a within-model matrix, a multi-layer reference), ABX, context mixing (word
matrices, outside mass, cue study) and, last, a probing run directory through the job layer's
``log_to_wandb`` (results.json counts, majority baseline, weighted-sum head, a model artifact). The run is
then decoded with :mod:`src.reporting.wandb_read` and every test asserts on the records. Expected values are
literals or recomputed here from the fake matrices, never taken from the logging code.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.reporting.results import write_results
from src.reporting.wandb_read import WandbReadError, iter_records, read_offline_run
from src.reporting.wandb_utils import direction, story

# ------------------------------------------------------------------------------ fake result tables

ACC_TEST = [0.5, 0.7, 0.8, 0.6]  # best layer 2, not the last
ACC_VAL = [0.55, 0.75, 0.7, 0.65]
RSA = {"phonological": ("kendall_tau_a", [0.1, 0.3, 0.2]), "mfcc": ("spearman", [0.5, 0.4, 0.2])}
RSA_P = {"phonological": [0.01, 0.02, 0.03], "mfcc": [0.2, 0.3, 0.4]}
CKA_REF = {"mfcc": [0.6, 0.4, 0.3], "logmel": [0.2, 0.5, 0.4]}
ABX = {"abx_within": [0.3, 0.2, 0.25], "abx_across": [0.4, 0.35, 0.3]}
# context mixing: row-normalised word matrices S[receiver, source] per (utterance, layer); one zero row
CM = {
    ("u1", 1): [[0.8, 0.2], [0.4, 0.6]],
    ("u1", 2): [[0.5, 0.5], [0.5, 0.5]],
    ("u2", 1): [[0.5, 0.25, 0.25], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2]],
    ("u2", 2): [[1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 0.0], [0.1, 0.1, 0.8]],
}
WORDS = {"u1": ["a", "b"], "u2": ["c", "d", "e"]}
OUTSIDE = {("u1", 1): 0.1, ("u2", 1): 0.3, ("u1", 2): 0.2, ("u2", 2): 0.4}
CUE = {1: (0.15, 0.05, 0.25), 2: (0.05, -0.02, 0.12)}  # cue minus control: value, ci_low, ci_high


def rsa_table() -> pd.DataFrame:
    rows = []
    for layer in range(3):
        for ref, (method, vals) in RSA.items():
            rows.append({"backbone": "bb", "analysis": "rsa", "layer": layer, "reference": ref,
                         "metric": f"rsa_{method}", "value": vals[layer], "method": method})  # fmt: skip
            rows.append({"backbone": "bb", "analysis": "rsa", "layer": layer, "reference": ref, "metric": "p_value",
                         "value": RSA_P[ref][layer], "method": method})  # fmt: skip
    return pd.DataFrame(rows)


def cka_value(i: int, j: int) -> float:
    return 1.0 - abs(i - j) * (0.1 + 0.1 * min(i, j))


def cka_table() -> pd.DataFrame:
    rows = []
    for i in range(3):
        for ref, vals in CKA_REF.items():
            rows.append({"analysis": "cka", "layer": i, "layer_b": None, "reference": ref, "metric": "cka",
                         "value": vals[i], "mode": "exact"})  # fmt: skip
        for j in range(3):
            rows.append({"analysis": "cka", "layer": i, "layer_b": j, "reference": "self", "metric": "cka",
                         "value": cka_value(i, j), "mode": "exact"})  # fmt: skip
        for j in range(2):
            rows.append({"analysis": "cka", "layer": i, "layer_b": j, "reference": "whisper_base", "metric": "cka",
                         "value": 0.1 * (i + 1) + 0.3 * j * (i == 1), "mode": "exact"})  # fmt: skip
    return pd.DataFrame(rows)


def abx_table() -> pd.DataFrame:
    return pd.DataFrame([{"analysis": "abx", "layer": layer, "metric": m, "value": v[layer]}
                         for layer in range(3) for m, v in ABX.items()])  # fmt: skip


def cm_tables(tmp: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rows = []
    for (u, layer), mat in CM.items():
        for r, row in enumerate(mat):
            for s, v in enumerate(row):
                base = {"utterance": u, "component": "encoder", "metric": "attention", "layer": layer,
                        "receiver_index": r, "receiver": WORDS[u][r], "source_index": s, "source": WORDS[u][s]}  # fmt: skip
                rows.append({**base, "value": v, "head": None})
                rows.append({**base, "value": float(r == s), "head": 0})  # per-head rows: not in the summaries
    df = pd.DataFrame(rows).assign(backbone="bb", corpus="c", analysis="context_mixing")
    outside = pd.DataFrame([{"utterance": u, "component": "encoder", "metric": "attention", "layer": layer,
                             "outside_mass": v} for (u, layer), v in OUTSIDE.items()])  # fmt: skip
    cue = []
    for layer, (d, lo, hi) in CUE.items():
        for kind, v, a, b in (("cue", 0.3, 0.2, 0.4), ("control", 0.3 - d, 0.1, 0.3), ("cue_minus_control", d, lo, hi)):
            cue.append({"component": "encoder", "metric": "attention", "layer": layer, "kind": kind, "value": v,
                        "ci_low": a, "ci_high": b, "unit": "text", "n_units": 6, "few_units": False, "n_items": 6})  # fmt: skip
    tables = {}
    for name, frame in (("outside_mass", outside), ("cue_contribution", pd.DataFrame(cue))):
        frame.to_csv(tmp / f"{name}.csv", index=False)  # as the job layer reads them back
        tables[name] = pd.read_csv(tmp / f"{name}.csv", keep_default_na=False)
    return df, tables


def probe_dir(tmp: Path) -> Path:
    rows = []
    for layer in range(4):
        for split, vals in (("test", ACC_TEST), ("val", ACC_VAL)):
            v = vals[layer]
            rows.append({"backbone": "bb", "task": "phones", "probe": "LinearProbe", "layer": layer, "target": "phone",
                         "metric": "accuracy", "value": v, "ci_low": v - 0.05, "ci_high": v + 0.04, "split": split})  # fmt: skip
    rows.append({"backbone": "bb", "task": "phones", "probe": "LinearProbe", "layer": -1, "target": "phone",
                 "metric": "accuracy_majority_baseline", "value": 0.3, "ci_low": 0.25, "ci_high": 0.35, "split": "test"})  # fmt: skip
    rows.append({"backbone": "bb", "task": "phones", "probe": "LinearProbe", "layer": -1, "target": "phone",
                 "metric": "accuracy", "value": 0.75, "ci_low": 0.7, "ci_high": 0.8, "split": "test"})  # fmt: skip
    out = tmp / "probe_run"
    write_results(rows, out, meta={"counts": {"train_items": 100, "test_utterances": 7, "bootstrap_unit": "text"},
                                   "seconds": 1.5, "num_layers": 4, "corpus": "synth"})  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(range(4), ACC_TEST)
    fig.savefig(out / "accuracy_over_layers.png")
    plt.close(fig)
    (out / "classifier.pt").write_bytes(b"weights")
    return out


# ------------------------------------------------------------------------------ the shared run


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    import wandb

    from src.jobs.common import log_to_wandb
    from src.reporting.wandb_utils import log_results_to_wandb

    tmp = tmp_path_factory.mktemp("wandb_story")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(tmp / "wbhome"))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        run = wandb.init(mode="offline", dir=str(tmp), project="speechinterp-test", name="story", group="g1",
                         reinit="create_new")  # fmt: skip
        run_dir = Path(run.settings.sync_dir)
        out = {}
        try:
            out["rsa"] = log_results_to_wandb(run, rsa_table())
            out["cka"] = log_results_to_wandb(run, cka_table())
            out["abx"] = log_results_to_wandb(run, abx_table())
            cm_df, cm_tabs = cm_tables(tmp)
            with pytest.MonkeyPatch.context() as small:
                small.setattr(wandb.Table, "MAX_ROWS", 20)  # the word-matrix table is longer: it goes to an artifact
                out["cm"] = log_results_to_wandb(run, cm_df, tables=cm_tabs)
            pdir = probe_dir(tmp)
            log_to_wandb(types.SimpleNamespace(experiment=run), pdir, [pdir / "accuracy_over_layers.png"],
                         artifacts=[{"name": "utterance-classifier-bb_synth_3_seed0", "paths": [pdir / "classifier.pt"],
                                     "metadata": {"test_accuracy": {"phone": 0.8}}}])  # fmt: skip
        finally:
            run.finish()
    return read_offline_run(run_dir, wait=60), out


def test_run_was_decoded(logged):
    run, _ = logged
    assert run.finished and run.info["group"] == "g1" and run.info["name"] == "story"


def test_no_step_at_layer_minus_one(logged):
    run, _ = logged
    for ns, layers in (("rsa", {0, 1, 2}), ("cka", {0, 1, 2}), ("abx", {0, 1, 2}), ("context_mixing", {1, 2}),
                       ("probe", {0, 1, 2, 3})):  # fmt: skip
        steps = [row[f"{ns}/layer"] for row in run.history if f"{ns}/layer" in row]
        assert set(steps) == layers, ns
        assert len(steps) == len(layers), ns  # one step per layer
    assert run.metrics["rsa/rsa_spearman/mfcc"]["step_metric"] == "rsa/layer"


def test_rsa_references_are_separate_keys(logged):
    run, _ = logged
    assert run.series("rsa/rsa_kendall_tau_a/phonological") == pytest.approx(dict(enumerate(RSA["phonological"][1])))
    assert run.series("rsa/rsa_spearman/mfcc") == pytest.approx(dict(enumerate(RSA["mfcc"][1])))
    assert run.series("rsa/p_value/phonological/kendall_tau_a") == pytest.approx(dict(enumerate(RSA_P["phonological"])))
    assert run.series("rsa/p_value/mfcc/spearman") == pytest.approx(dict(enumerate(RSA_P["mfcc"])))
    rsa_keys = {k for k in run.history_keys() if k.startswith("rsa/") and k != "rsa/layer"}
    rsa_keys -= run.table_keys()
    assert rsa_keys == {"rsa/rsa_kendall_tau_a/phonological", "rsa/rsa_spearman/mfcc",
                        "rsa/p_value/phonological/kendall_tau_a", "rsa/p_value/mfcc/spearman"}  # fmt: skip
    s = run.summary
    assert s["rsa/rsa_kendall_tau_a/phonological/best_layer"] == 1
    assert s["rsa/rsa_kendall_tau_a/phonological"] == pytest.approx(0.3)
    assert s["rsa/rsa_spearman/mfcc/best_layer"] == 0
    assert "rsa/p_value/mfcc/spearman/best_layer" not in s  # a p-value has no best layer


def test_cka_references_and_matrices(logged):
    run, out = logged
    for ref, vals in CKA_REF.items():
        assert run.series(f"cka/cka/{ref}") == pytest.approx(dict(enumerate(vals)))
    assert run.summary["cka/cka/mfcc/best_layer"] == 0 and run.summary["cka/cka/logmel/best_layer"] == 1
    assert run.series("cka/cka/self/next_layer") == pytest.approx({0: cka_value(0, 1), 1: cka_value(1, 2)})
    assert run.series("cka/cka/whisper_base/max_over_reference_layers") == pytest.approx({0: 0.1, 1: 0.5, 2: 0.3})
    assert run.series("cka/cka/whisper_base/argmax_reference_layer") == {0: 0, 1: 1, 2: 0}
    mat = run.table("cka/matrix/cka/self")
    assert list(mat["layer"]) == [0, 1, 2]
    assert mat["2"].tolist() == pytest.approx([cka_value(i, 2) for i in range(3)])
    assert "cka/cka/self" not in run.history_keys()  # a matrix is never averaged into one series


def test_abx_lower_is_better_and_chance(logged):
    run, _ = logged
    assert run.summary["abx/abx_within/best_layer"] == 1 and run.summary["abx/abx_within"] == pytest.approx(0.2)
    assert run.summary["abx/abx_across/best_layer"] == 2
    assert run.series("abx/abx_chance") == {0: 0.5, 1: 0.5, 2: 0.5}
    assert run.summary["abx/abx_chance"] == 0.5


def test_context_mixing_summaries_not_cell_means(logged):
    run, _ = logged
    # literal: per utterance the mean diagonal over rows that are not all zero, then the mean over utterances
    expected = {}
    for layer in (1, 2):
        per_utt = []
        for u in ("u1", "u2"):
            m = np.array(CM[(u, layer)])
            keep = m.sum(1) > 0
            per_utt.append(np.diag(m)[keep].mean())
        expected[layer] = float(np.mean(per_utt))
    assert run.series("context_mixing/self_share/encoder/attention") == pytest.approx(expected)
    assert expected[1] == pytest.approx(0.55)
    assert run.series("context_mixing/outside_mass/encoder/attention") == pytest.approx({1: 0.2, 2: 0.3})
    assert run.series("context_mixing/cue_minus_control/encoder/attention") == pytest.approx({1: 0.15, 2: 0.05})
    assert run.series("context_mixing/cue_minus_control/encoder/attention/ci_low") == pytest.approx({1: 0.05, 2: -0.02})
    assert run.series("context_mixing/cue_minus_control/encoder/attention/ci_high") == pytest.approx({1: 0.25, 2: 0.12})
    assert run.summary["context_mixing/cue_minus_control/encoder/attention/best_layer"] == 1
    keys = {k for k in run.history_keys() if k.startswith("context_mixing/")} - run.table_keys()
    kinds = {k.split("/")[1] for k in keys}
    assert kinds == {"layer", "self_share", "outside_mass", "cue", "control", "cue_minus_control"}
    # the word matrices: the cell table (longer than the run-table limit set here) as an artifact of tables
    (art,) = [a for a in run.artifacts if a["type"] == "results" and a["name"].startswith("context_mixing-tables")]
    assert "context_mixing__results.csv" in art["files"]
    assert "context_mixing/outside_mass" in run.table_keys() and "context_mixing/cue_contribution" in run.table_keys()


def test_probing_best_layer_baselines_intervals_counts(logged):
    run, out = logged
    s = run.summary
    assert run.series("probe/test/accuracy/phone") == pytest.approx(dict(enumerate(ACC_TEST)))
    assert run.series("probe/val/accuracy/phone") == pytest.approx(dict(enumerate(ACC_VAL)))
    assert run.series("probe/test/accuracy/phone/ci_low") == pytest.approx({k: v - 0.05 for k, v in enumerate(ACC_TEST)})
    assert run.series("probe/test/accuracy/phone/ci_high") == pytest.approx({k: v + 0.04 for k, v in enumerate(ACC_TEST)})
    # the main series' best layer is the argmax, not the last layer
    assert s["best_layer"] == 2 and s["best_value"] == pytest.approx(0.8)
    assert s["best_series"] == "probe/test/accuracy/phone"
    assert s["probe/test/accuracy/phone"] == pytest.approx(0.8)  # the best, not the last (0.6)
    assert s["probe/test/accuracy/phone/ci_low"] == pytest.approx(0.75)
    assert s["probe/val/accuracy/phone/best_layer"] == 1
    # baselines: a constant series over the layers and a summary value, never a point at layer -1
    assert run.series("probe/test/accuracy_majority_baseline/phone") == {0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3}
    assert s["probe/test/accuracy_majority_baseline/phone"] == 0.3
    assert s["probe/test/accuracy_majority_baseline/phone/ci_low"] == 0.25
    assert s["probe/test/accuracy/phone/weighted_sum"] == 0.75
    # counts from results.json meta
    assert s["counts/train_items"] == 100 and s["counts/test_utterances"] == 7 and s["counts/num_layers"] == 4
    assert s["seconds"] == 1.5
    assert "probe/figures/accuracy_over_layers" in run.image_keys()
    results = run.table("probe/results")
    assert len(results) == 10 and set(results["metric"]) == {"accuracy", "accuracy_majority_baseline"}


def test_model_artifact(logged):
    run, _ = logged
    (art,) = [a for a in run.artifacts if a["type"] == "model"]
    assert art["name"] == "utterance-classifier-bb_synth_3_seed0"
    assert art["files"] == ["classifier.pt"] and art["metadata"] == {"test_accuracy": {"phone": 0.8}}


def test_returned_summary_matches_records(logged):
    run, out = logged
    assert out["rsa"]["best"]["rsa/rsa_spearman/mfcc"]["layer"] == 0
    assert out["cm"]["main"] == "context_mixing/cue_minus_control/encoder/attention"
    for key, v in out["rsa"]["summary"].items():
        if key.startswith("rsa/"):  # best_layer / best_value / best_series: the last table logged (probing) wins
            assert run.summary[key] == pytest.approx(v)
    assert out["rsa"]["summary"]["best_series"] == "rsa/rsa_kendall_tau_a/phonological"  # first reference in the table


# ------------------------------------------------------------------------------ sweeps


def test_sweep_summary_run(tmp_path, monkeypatch):
    from src.reporting.wandb_utils import log_sweep_summary

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = tmp_path / "2026-12-07_10-00-00_phones"
    sweep.mkdir()
    pd.DataFrame({"job": ["a", "a", "b", "b"], "layer": [0, 1, 0, 1], "metric": "accuracy",
                  "value": [0.5, 0.6, 0.4, 0.7]}).to_csv(sweep / "summary.csv", index=False)  # fmt: skip
    curves = [{"metric": "accuracy", "split": "test", "curve": "whisper_tiny_en", "kind": "curve", "baseline": None,
               "layer": k, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n_seeds": 1}
              for k, v in enumerate([0.5, 0.8, 0.6])]  # fmt: skip
    curves += [{"metric": "accuracy", "split": "test", "curve": "random init", "kind": "curve", "baseline": None,
                "layer": k, "value": v, "n_seeds": 2, "spread_low": v - 0.1, "spread_high": v + 0.1}
               for k, v in enumerate([0.4, 0.3, 0.2])]  # fmt: skip
    curves.append({"metric": "accuracy", "split": "test", "curve": "mfcc", "kind": "layer", "baseline": None,
                   "layer": 0, "value": 0.45, "ci_low": 0.4, "ci_high": 0.5, "n_seeds": 1})  # fmt: skip
    curves.append({"metric": "accuracy", "split": "test", "curve": "whisper_tiny_en", "kind": "baseline",
                   "baseline": "majority", "layer": None, "value": 0.3, "ci_low": 0.25, "ci_high": 0.35})  # fmt: skip
    pd.DataFrame(curves).to_csv(sweep / "summary_curves.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0.5, 0.6])
    fig.savefig(sweep / "summary.png")
    plt.close(fig)
    out = log_sweep_summary(sweep, project="speechinterp-test", mode="offline")
    assert out is not None
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir, wait=60)
    assert run.info["job_type"] == "sweep-summary" and run.info["group"] == sweep.name
    assert run.table("sweep/summary")["value"].tolist() == [0.5, 0.6, 0.4, 0.7]
    assert run.table("sweep/summary_curves")["curve"].tolist()[:4] == ["whisper_tiny_en"] * 3 + ["random init"]
    # the curves as W&B series over layers, best layers in the summary, the baseline a constant
    assert run.series("sweep/accuracy/test/whisper_tiny_en") == pytest.approx({0: 0.5, 1: 0.8, 2: 0.6})
    assert run.series("sweep/accuracy/test/whisper_tiny_en/ci_high") == pytest.approx({0: 0.55, 1: 0.85, 2: 0.65})
    assert run.series("sweep/accuracy/test/random init/spread_low") == pytest.approx({0: 0.3, 1: 0.2, 2: 0.1})
    assert run.summary["sweep/accuracy/test/whisper_tiny_en/best_layer"] == 1
    assert run.summary["sweep/accuracy/test/random init/best_layer"] == 0
    assert "sweep/accuracy/test/random init/spread_low/best_layer" not in run.summary
    assert run.series("sweep/accuracy/test/baseline/majority") == {0: 0.3, 1: 0.3, 2: 0.3}
    # a one-layer job (MFCC) beside the layer curves: a level line, not a lone point at layer 0
    assert run.series("sweep/accuracy/test/mfcc") == {0: 0.45, 1: 0.45, 2: 0.45}
    assert run.summary["sweep/accuracy/test/mfcc/ci_low"] == 0.4
    assert run.summary["best_series"] == "sweep/accuracy/test/whisper_tiny_en" and run.summary["best_layer"] == 1
    assert "sweep/figures/summary" in run.image_keys()
    assert run.summary["sweep/jobs"] == 2
    (art,) = [a for a in run.artifacts if a["type"] == "sweep-summary"]
    assert sorted(art["files"]) == ["summary.csv", "summary.png", "summary_curves.csv"]
    assert log_sweep_summary(tmp_path / "empty_dir_that_is_not_there") is None
    from src.reporting.wandb_utils import main

    assert main([str(tmp_path / "empty_dir_that_is_not_there"), "--mode", "offline"]) == 1


def test_sweep_summary_from_config_skips_other_loggers(tmp_path):
    from omegaconf import OmegaConf

    from src.reporting.wandb_utils import log_sweep_summary_from_config

    (tmp_path / "summary.csv").write_text("job,value\na,1\n")
    cfg = OmegaConf.create({"logger": {"_target_": "lightning.pytorch.loggers.CSVLogger"}})
    assert log_sweep_summary_from_config(tmp_path, cfg) is None
    cfg = OmegaConf.create({"logger": {"_target_": "src.reporting.wandb_utils.make_wandb_logger", "mode": "disabled"}})
    assert log_sweep_summary_from_config(tmp_path, cfg) is None
    assert not (tmp_path / "wandb").exists()


# ------------------------------------------------------------------------------ without W&B


def test_direction():
    for m in ("abx_within", "fvu", "wer", "per", "error_rate", "kl_final_layer", "final_token_rank", "val_loss",
              "mdl_codelength_kbits", "dead_fraction", "mse", "wer_cost", "hallucinated"):  # fmt: skip
        assert direction(m) == "min", m
    for m in ("accuracy", "pearson_r", "rsa_spearman", "cka", "mdl_compression", "selectivity", "top1_agreement",
              "cue_minus_control", "aligned_token_prob", "loss_recovered", "hallucination_reduction", "nmi"):  # fmt: skip
        assert direction(m) == "max", m
    for m in ("p_value", "layer_weight", "self_share", "outside_mass", "accuracy_majority_baseline", "svcca_null",
              "capped", "cka/next_layer", "best_epoch", "control_accuracy"):
        assert direction(m) is None, m


def test_story_keys_every_distinguishing_column():
    mi = pd.DataFrame([{"analysis": "mutual_info", "layer": layer, "reference": f"k={k}", "k": k, "metric": "mi",
                        "value": 0.1 * layer + k} for layer in range(2) for k in (5, 10)])  # fmt: skip
    series, _ = story(mi)
    assert set(series["key"]) == {"mutual_info/mi/k=5", "mutual_info/mi/k=10"}
    lens = pd.DataFrame([{"analysis": "ctc_lens", "layer": layer, "lens": lens, "metric": m, "value": 0.5}
                         for layer in range(2) for lens in ("plain", "tuned") for m in ("per", "wer")])  # fmt: skip
    series, _ = story(lens)
    assert set(series["key"]) == {f"ctc_lens/{m}/{le}" for m in ("per", "wer") for le in ("plain", "tuned")}
    # a column this module does not know still keeps rows apart (no silent average)
    odd = pd.DataFrame([{"analysis": "x", "layer": 0, "metric": "m", "value": v, "flavour": f}
                        for v, f in ((0.1, "sweet"), (0.9, "sour"))])  # fmt: skip
    series, _ = story(odd)
    assert dict(zip(series["key"], series["value"])) == {"x/m/sweet": 0.1, "x/m/sour": 0.9}
    # run-level choices (one probe) stay out of the key, so a sweep's runs share keys; two probes are kept apart
    rows = [{"task": "t", "probe": p, "layer": 0, "target": "y", "metric": "accuracy", "value": 0.5, "split": "test"}
            for p in ("ridge", "mlp")]  # fmt: skip
    assert set(story(pd.DataFrame(rows[:1]))[0]["key"]) == {"probe/test/accuracy/y"}
    assert set(story(pd.DataFrame(rows))[0]["key"]) == {"probe/test/accuracy/y/ridge", "probe/test/accuracy/y/mlp"}


def test_table_without_layers_goes_to_the_summary():
    from src.reporting.wandb_utils import log_results_to_wandb

    rows = [{"analysis": "faithfulness", "method": m, "input": "waveform", "head": "all", "metric": "deletion_wer_auc",
             "variant": "trapezoid", "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
            for m, v in (("saliency", 0.3), ("integrated_gradients", 0.5))]  # fmt: skip
    run = FakeRun()
    out = log_results_to_wandb(run, pd.DataFrame(rows))
    key = "faithfulness/deletion_wer_auc/saliency/waveform/trapezoid/all"
    assert run.summary[key] == 0.3 and run.summary[f"{key}/ci_high"] == pytest.approx(0.4)
    assert run.summary["faithfulness/deletion_wer_auc/integrated_gradients/waveform/trapezoid/all"] == 0.5
    assert out["series"] == {} and "best_layer" not in run.summary
    assert not any("faithfulness/layer" in d for d in run.logged)  # no steps without layers
    # rows that no column keeps apart are averaged, with a warning and without an interval
    dup = pd.DataFrame([{"analysis": "x", "layer": 0, "metric": "m", "value": v, "ci_low": 0.0, "ci_high": 1.0}
                        for v in (0.2, 0.4)])  # fmt: skip
    with pytest.warns(UserWarning, match="share a series key"):
        series, _ = story(dup)
    assert series["value"].tolist() == pytest.approx([0.3]) and series["ci_low"].isna().all()


def test_story_per_item_rows_and_named_states_left_out_of_series():
    rows = [{"analysis": "tutorial_cka", "layer": layer, "reference": "mfcc", "utterance": u, "metric": m,
             "value": 0.1 * layer} for layer in range(2) for u, m in (("s1", "cka"), ("mean", "cka_mean"))]  # fmt: skip
    rows.append({"analysis": "ctc_lens", "layer": "final_norm", "reference": "mfcc", "metric": "cka_mean", "value": 0.7})
    series, _ = story(pd.DataFrame(rows), namespace="tutorial_cka")
    assert set(series["key"]) == {"tutorial_cka/cka_mean/mfcc", "tutorial_cka/cka_mean/mfcc/final_norm"}
    flat = series[series["constant"]]
    assert flat["key"].tolist() == ["tutorial_cka/cka_mean/mfcc/final_norm"] and flat["value"].tolist() == [0.7]


def test_reader_refuses_other_files(tmp_path):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b"not a wandb file at all")
    with pytest.raises(WandbReadError, match="not a W&B transaction log"):
        list(iter_records(p))


class FakeRun:
    """Records define_metric / log / summary calls (no W&B)."""

    id = "fake"

    def __init__(self):
        self.defined, self.logged, self.summary = {}, [], {}

    def define_metric(self, name, **kw):
        self.defined[name] = kw.get("step_metric")

    def log(self, data):
        self.logged.append(data)


def test_log_results_checks_figures_and_logs_extra_tables(tmp_path):
    from src.reporting.wandb_utils import log_results_to_wandb

    df = pd.DataFrame([{"analysis": "decoder_lens", "layer": k, "metric": "wer", "value": v, "ci_low": v - 0.1,
                        "ci_high": v + 0.1} for k, v in enumerate([0.9, 0.4, 0.2, 0.3])])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="missing.png"):
        log_results_to_wandb(FakeRun(), df, [tmp_path / "missing.png"])
    run = FakeRun()
    transcripts = pd.DataFrame({"utterance": ["u1", "u1"], "layer": [0, 1], "hypothesis": ["a cat", ""]})
    out = log_results_to_wandb(run, df, tables={"transcripts": transcripts})
    assert "decoder_lens/transcripts" in out["tables"] and "decoder_lens/transcripts" in run.logged[-1]
    assert [d["decoder_lens/layer"] for d in run.logged[:4]] == [0, 1, 2, 3]
    assert run.defined["decoder_lens/wer"] == "decoder_lens/layer"
    assert run.defined["decoder_lens/wer/ci_low"] == "decoder_lens/layer"
    assert run.summary["best_layer"] == 2 and run.summary["decoder_lens/wer"] == 0.2  # WER: lower is better
    with pytest.raises(Exception, match="wandb run or WandbLogger"):
        log_results_to_wandb(object(), df)


def test_count_summary_takes_counts_not_settings():
    from src.reporting.wandb_utils import count_summary

    meta = {"counts": {"train_items": 100, "per_split": {"test": 7}, "bootstrap_unit": "text"}, "seed": 0,
            "n_boot": 1000, "n_perm": 200, "num_layers": 4, "utterances": 5, "seconds": {"total": 3.5, "pooling": 1},
            "references": {"mfcc": {"frames_matched": 10, "kernel": "linear"}}}  # fmt: skip
    assert count_summary(meta) == {"counts/train_items": 100, "counts/per_split/test": 7, "counts/num_layers": 4,
                                   "counts/utterances": 5, "counts/references/mfcc/frames_matched": 10,
                                   "seconds": 3.5}  # fmt: skip


def test_ctc_head_files_and_per_table_to_wandb(tmp_path, monkeypatch):
    from src.jobs.ctc_head import log_heads_to_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "ctc_head_tiny.pt"
    out.write_bytes(b"head")
    probe = tmp_path / "ctc_head_tiny_probe_1.pt"
    probe.write_bytes(b"probe")
    per = tmp_path / "ctc_head_tiny_per.csv"
    pd.DataFrame([{"layer": name, "lens": lens, "metric": "per", "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1,
                   "n_units": 12} for name, lens, v in (("0", "ctc_lens", 0.9), ("1", "ctc_lens", 0.5),
                                                       ("final_norm", "ctc_lens", 0.2), ("0", "ctc_probe", 0.7),
                                                       ("1", "ctc_probe", 0.4))]).to_csv(per, index=False)  # fmt: skip
    name = log_heads_to_wandb("offline", out, [out, probe], {"backbone": "tiny", "seed": 0}, per_csv=per)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir, wait=60)
    assert run.info["job_type"] == "ctc-head" and run.config == {"backbone": "tiny", "seed": 0}
    (art,) = [a for a in run.artifacts if a["type"] == "model"]
    assert art["name"] == name == "ctc-head-ctc_head_tiny" and sorted(art["files"]) == [out.name, probe.name]
    assert run.series("ctc_head/per/ctc_lens") == pytest.approx({0: 0.9, 1: 0.5})
    assert run.series("ctc_head/per/ctc_probe") == pytest.approx({0: 0.7, 1: 0.4})
    # the named state without an index: a constant, under its own key
    assert run.summary["ctc_head/per/ctc_lens/final_norm"] == pytest.approx(0.2)
    assert run.summary["ctc_head/per/ctc_probe/best_layer"] == 1  # PER: lower is better


def test_a_wandb_failure_does_not_fail_the_job(tmp_path, monkeypatch, caplog):
    import wandb

    from src.jobs.common import log_to_wandb

    finished = []
    monkeypatch.setattr(wandb, "finish", lambda exit_code=None: finished.append(exit_code))
    pdir = probe_dir(tmp_path)
    log_to_wandb(types.SimpleNamespace(experiment=FakeRun()), pdir, [pdir / "no_such_figure.png"])
    assert finished == [1] and "logging probe_run to W&B failed" in caplog.text
    log_to_wandb(types.SimpleNamespace(experiment=FakeRun()), pdir, [])
    assert finished == [1, 0]

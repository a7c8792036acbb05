"""Sweep summaries: fake multirun directories in the layout Hydra writes, merged, then the figure read back.

Every job directory holds what a real ``train.py -m`` job leaves: ``.hydra/overrides.yaml``,
``.hydra/hydra.yaml`` (``override_dirname``, ``runtime.choices``), ``.hydra/config.yaml``,
``results.csv`` and ``results.json`` (with the corpus in its meta). The figure that
``merge_results`` saves is captured (``plot_sweep`` returns it with its axes) and its lines,
points and legend labels are compared with values computed here from the rows written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from src.reporting import sweep as sw
from src.reporting.multirun import main as multirun_main
from src.reporting.multirun import merge_results
from src.reporting.results import write_results

EXCLUDE = ["seed", "data.root", "backbone.model_id", "paths.cache_dir", "paths.output_dir"]
MAJORITY = {0: 0.071, 1: 0.083}  # majority-class accuracy of the test split of each seed


def hydra_job(sweep: Path, num: int, overrides: list[str], rows: list[dict], choices: dict, config: dict,
              corpus: str = "synth") -> Path:  # fmt: skip
    """One job directory as Hydra's basic launcher and train.py leave it."""
    kv = dict(o.split("=", 1) for o in overrides)
    dirname = ",".join(sorted(o for o in overrides if o.split("=", 1)[0] not in EXCLUDE))
    job = sweep / f"{num}_{dirname}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    hydra = {"hydra": {
        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}_${hydra.job.override_dirname}"},
        "job": {"name": "train", "override_dirname": dirname, "id": str(num), "num": num,
                "config": {"override_dirname": {"kv_sep": "=", "item_sep": ",", "exclude_keys": EXCLUDE}}},
        "runtime": {"version": "1.3.8", "choices": {**choices, **{k: v for k, v in kv.items() if k in choices}}},
        "overrides": {"task": list(overrides)},
    }}  # fmt: skip
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    cfg = {**config, "seed": int(kv.get("seed", config.get("seed", 0)))}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_results(rows, job, meta={"corpus": corpus, "num_layers": 5})
    return job


CHOICES = {
    "backbone": "whisper_tiny_en",
    "data": "synth",
    "task": "phones",
    "probe": "linear",
    "logger": "none",
}
CONFIG = {"seed": 0, "backbone": {"name": "whisper_tiny_en", "pretrained": True}, "probe": {"layer": None}}


def acc(backbone: str, layer: int, seed: int) -> float:
    """A made-up accuracy that rises over layers, differs by backbone and seed."""
    base = 0.43 if backbone == "mfcc" else 0.5 + 0.07 * layer - 0.008 * layer**2
    return round(base + 0.01 * seed, 6)


def rows_for(backbone: str, layers: list[int], seed: int, probe: str = "LinearProbe") -> list[dict]:
    rows = []
    for k in layers:
        for split in ("val", "test"):
            v = acc(backbone, k, seed) + (0.02 if split == "val" else 0.0)
            rows.append({"backbone": backbone, "task": "phones", "probe": probe, "layer": k, "layer_name": str(k),
                         "target": "phones", "metric": "accuracy", "value": v, "ci_low": v - 0.03,
                         "ci_high": v + 0.04, "split": split})  # fmt: skip
    m = MAJORITY[seed]
    rows.append({"backbone": backbone, "task": "phones", "probe": probe, "layer": -1, "layer_name": "baseline",
                 "target": "phones", "metric": "accuracy_majority_baseline", "value": m, "ci_low": m - 0.01,
                 "ci_high": m + 0.01, "split": "test"})  # fmt: skip
    return rows


@pytest.fixture
def capture(monkeypatch):
    """The Figures merge_results draws, by metric (plot_sweep returns them with their axes)."""
    figs: dict[str, object] = {}
    real = sw.plot_sweep

    def keep(curves, out_png, title=None, metric=None, spread="minmax"):
        fig = real(curves, out_png, title=title, metric=metric, spread=spread)
        figs[Path(out_png).name] = fig
        return fig

    monkeypatch.setattr(sw, "plot_sweep", keep)
    return figs


def lines_of(fig) -> dict[str, object]:
    ax = fig.axes[0]
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def finite_points(line) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    ok = np.isfinite(y)
    return x[ok], y[ok]


def test_layer_sweep_is_one_curve_with_band_and_baseline(tmp_path, capture):
    """``-m probe.layer=0,1,2 probe=ridge``: three jobs, one curve of three points, the majority a level line."""
    sweep = tmp_path / "train_multirun" / "2026-12-07_10-00-00_phones"
    for num, k in enumerate([0, 1, 2]):
        hydra_job(sweep, num, [f"probe.layer={k}", "probe=ridge"], rows_for("whisper_tiny_en", [k], 0, "RidgeProbe"),
                  CHOICES, CONFIG)  # fmt: skip
    df = merge_results(sweep)

    assert df["job"].nunique() == 3 and set(df["curve"]) == {"whisper_tiny_en"}
    back = pd.read_csv(sweep / "summary.csv")
    assert list(back.columns[:2]) == ["job", "curve"] and back.columns[-1] == "job_dir"
    assert len(back) == 3 * 3 and set(back["corpus"]) == {"synth"}
    assert back["job"].tolist()[0] == "probe.layer=0,probe=ridge"  # the job label stays the override string

    curves = pd.read_csv(sweep / "summary_curves.csv")
    layer_rows = curves[(curves.metric == "accuracy") & (curves.kind == "layer")]
    assert layer_rows["layer"].tolist() == [0, 1, 2]
    assert layer_rows["value"].tolist() == pytest.approx([acc("whisper_tiny_en", k, 0) for k in range(3)])
    assert layer_rows["ci_low"].tolist() == pytest.approx(
        [acc("whisper_tiny_en", k, 0) - 0.03 for k in range(3)]
    )
    assert (layer_rows["n_seeds"] == 1).all()
    base = curves[curves.kind == "baseline"]
    assert base["baseline"].tolist() == ["majority"] and base["value"].tolist() == pytest.approx(
        [MAJORITY[0]]
    )
    assert base["n_seeds"].tolist() == [1]  # three jobs repeat one seed's baseline: not three replicates
    assert "accuracy_majority_baseline" not in set(curves.metric)

    fig = capture["summary.png"]
    lines = lines_of(fig)
    assert list(lines) == ["whisper_tiny_en", f"majority ({MAJORITY[0]:.3g})"]
    x, y = finite_points(lines["whisper_tiny_en"])
    assert x.tolist() == [0, 1, 2] and y.tolist() == pytest.approx(
        [acc("whisper_tiny_en", k, 0) for k in range(3)]
    )
    assert np.asarray(lines[f"majority ({MAJORITY[0]:.3g})"].get_ydata(), float).tolist() == pytest.approx(
        [MAJORITY[0]] * 2
    )
    ax = fig.axes[0]
    assert len(ax.collections) == 1  # the interval band of the one curve
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(acc("whisper_tiny_en", 0, 0) - 0.03)
    assert band[:, 1].max() == pytest.approx(acc("whisper_tiny_en", 2, 0) + 0.04)
    title = ax.get_title()
    assert title.startswith("phones on synth: accuracy over layers") and "95% interval" in title
    assert (
        ax.get_xlabel().startswith("layer (state k")
        and ax.get_ylabel() == "accuracy (test, higher is better)"
    )
    assert (sweep / "summary.png").stat().st_size > 5000
    assert not list(sweep.glob("summary_*.png"))  # one metric, one figure


def test_backbone_by_seed_sweep_pools_seeds_and_levels_mfcc(tmp_path, capture):
    """``-m backbone=whisper_tiny_en,mfcc seed=0,1``: whisper over 5 layers, mfcc one layer; seeds pooled."""
    sweep = tmp_path / "sweep"
    num = 0
    for bb in ("whisper_tiny_en", "mfcc"):
        for seed in (0, 1):
            layers = list(range(5)) if bb != "mfcc" else [0]
            hydra_job(
                sweep, num, [f"backbone={bb}", f"seed={seed}"], rows_for(bb, layers, seed), CHOICES, CONFIG
            )
            num += 1
    df = merge_results(sweep)
    assert df.drop_duplicates("job_dir")["curve"].tolist() == ["whisper_tiny_en"] * 2 + ["mfcc"] * 2
    assert df.drop_duplicates("job_dir")["job"].tolist() == [
        "backbone=whisper_tiny_en,seed=0", "backbone=whisper_tiny_en,seed=1", "backbone=mfcc,seed=0", "backbone=mfcc,seed=1",
    ]  # fmt: skip

    curves = pd.read_csv(sweep / "summary_curves.csv")
    w = curves[(curves.curve == "whisper_tiny_en") & (curves.kind == "layer")]
    assert w["layer"].tolist() == [0, 1, 2, 3, 4] and (w["n_seeds"] == 2).all()
    want = [(acc("whisper_tiny_en", k, 0) + acc("whisper_tiny_en", k, 1)) / 2 for k in range(5)]
    assert w["value"].tolist() == pytest.approx(want)
    assert w["spread_low"].tolist() == pytest.approx([acc("whisper_tiny_en", k, 0) for k in range(5)])
    assert w["spread_high"].tolist() == pytest.approx([acc("whisper_tiny_en", k, 1) for k in range(5)])
    assert w["ci_low"].isna().all()  # a pooled point has a seed spread, not one run's interval
    base = curves[curves.kind == "baseline"]
    assert base["value"].tolist() == pytest.approx([np.mean(list(MAJORITY.values()))] * 2)

    fig = capture["summary.png"]
    lines = lines_of(fig)
    level = f"{np.mean(list(MAJORITY.values())):.3g}"
    assert list(lines) == ["whisper_tiny_en (n=2 seeds)", "mfcc (n=2 seeds) [layer 0]", f"majority ({level})"]
    x, y = finite_points(lines["whisper_tiny_en (n=2 seeds)"])
    assert x.tolist() == [0, 1, 2, 3, 4] and y.tolist() == pytest.approx(want)
    mfcc = np.asarray(lines["mfcc (n=2 seeds) [layer 0]"].get_ydata(), float)
    assert mfcc.tolist() == pytest.approx([(acc("mfcc", 0, 0) + acc("mfcc", 0, 1)) / 2] * 2)  # a level line
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    assert "min-max over seeds" in ax.get_title() and "mean of 2 seeds" in ax.get_title()
    assert len(ax.collections) == 1 and len(ax.patches) == 1  # whisper's band, mfcc's band across the layers

    png = sweep / "summary.png"
    import shutil

    shutil.copy(png, tmp_path / "pooled.png")
    # seeds kept apart: four curves, no seed spread
    capture.clear()
    merge_results(sweep, pool_seeds=False)
    labels = list(lines_of(capture["summary.png"]))
    assert labels[:4] == ["whisper_tiny_en, seed 0", "whisper_tiny_en, seed 1",
                          "mfcc, seed 0 [layer 0]", "mfcc, seed 1 [layer 0]"]  # fmt: skip
    assert labels[4:] == [
        f"majority ({MAJORITY[s]:.3g}): whisper_tiny_en, seed {s} / mfcc, seed {s}" for s in (0, 1)
    ]
    sep = pd.read_csv(sweep / "summary_curves.csv")
    assert (sep.loc[sep.kind == "layer", "n_seeds"] == 1).all()
    assert sep.loc[(sep.curve == "whisper_tiny_en, seed 1") & (sep.kind == "layer"), "value"].tolist() == \
        pytest.approx([acc("whisper_tiny_en", k, 1) for k in range(5)])  # fmt: skip


def test_layer_by_seed_sweep_with_random_init_and_a_crashed_job(tmp_path, capture):
    """``-m probe.layer=0,1,2 backbone.pretrained=true,false seed=0,1`` with the (layer 1, random, seed 1) job lost."""
    sweep = tmp_path / "sweep"
    num = 0
    for pre in ("true", "false"):
        for seed in (0, 1):
            for k in (0, 1, 2):
                if (pre, seed, k) == ("false", 1, 1):
                    (sweep / f"{num}_crashed" / ".hydra").mkdir(parents=True)
                    num += 1
                    continue
                bb = "whisper_tiny_en" if pre == "true" else "whisper_tiny_en-random"
                hydra_job(sweep, num, [f"probe.layer={k}", f"backbone.pretrained={pre}", f"seed={seed}"],
                          rows_for(bb, [k], seed), CHOICES, CONFIG)  # fmt: skip
                num += 1
    with pytest.warns(UserWarning, match="crashed"):
        merge_results(sweep, spread="sd")
    curves = pd.read_csv(sweep / "summary_curves.csv")
    rnd = curves[(curves.curve == "random init") & (curves.kind == "layer")]
    assert rnd["n_seeds"].tolist() == [2, 1, 2]  # layer 1 has one seed left: its own interval, no spread
    one = rnd[rnd.layer == 1].iloc[0]
    assert one["value"] == pytest.approx(acc("whisper_tiny_en-random", 1, 0))
    assert one["ci_low"] == pytest.approx(acc("whisper_tiny_en-random", 1, 0) - 0.03) and np.isnan(
        one["spread_low"]
    )
    two = rnd[rnd.layer == 2].iloc[0]
    vals = [acc("whisper_tiny_en-random", 2, s) for s in (0, 1)]
    assert two["spread_high"] - two["value"] == pytest.approx(np.std(vals, ddof=1))
    fig = capture["summary.png"]
    assert list(lines_of(fig))[:2] == ["pretrained (n=2 seeds)", "random init (n=1-2 seeds)"]
    assert "mean ± 1 sd over seeds" in fig.axes[0].get_title()


def test_sweep_curves_from_a_summary_table_without_curve_column():
    """What a W&B helper holds: a merged table (here an older summary.csv without ``curve``)."""
    rows = []
    for job, bb, seed in [("backbone=whisper_tiny_en,seed=0", "whisper_tiny_en", 0),
                          ("backbone=whisper_tiny_en,seed=1", "whisper_tiny_en", 1), ("backbone=mfcc,seed=0", "mfcc", 0)]:  # fmt: skip
        for r in rows_for(bb, [0, 1] if bb != "mfcc" else [0], seed):
            rows.append({"job": job, **r})
    curves = sw.sweep_curves(pd.DataFrame(rows), metric="accuracy")
    got = curves[curves.kind == "layer"].set_index(["curve", "layer"])["value"]
    assert got.to_dict() == pytest.approx({
        ("whisper_tiny_en", 0.0): (acc("whisper_tiny_en", 0, 0) + acc("whisper_tiny_en", 0, 1)) / 2,
        ("whisper_tiny_en", 1.0): (acc("whisper_tiny_en", 1, 0) + acc("whisper_tiny_en", 1, 1)) / 2,
        ("mfcc", 0.0): acc("mfcc", 0, 0),
    })  # fmt: skip
    assert list(curves.columns) == sw.CURVE_COLUMNS
    with pytest.raises(sw.SweepError, match="available"):
        sw.sweep_curves(pd.DataFrame(rows), metric="wer")
    with pytest.raises(sw.SweepError, match="spread"):
        sw.sweep_curves(pd.DataFrame(rows), spread="iqr")


def test_regression_targets_and_analysis_series():
    """Pearson r uses the job's own mean over targets; an analysis's reference column splits curves."""
    rows = []
    for k in range(3):
        for t, v in (("a", 0.2), ("b", 0.4), ("mean", 0.3)):
            rows.append({"job": "x", "curve": "w", "task": "ema", "layer": k, "target": t, "metric": "pearson_r",
                         "value": v + 0.1 * k, "split": "test"})  # fmt: skip
        for ref, v in (("phonological", 0.1), ("mfcc", 0.5)):
            rows.append({"job": "x", "curve": "w", "analysis": "rsa", "layer": k, "reference": ref,
                         "metric": "rsa", "value": v + k, "split": None})  # fmt: skip
        for kk in (3, 5):
            rows.append({"job": "x", "curve": "w", "analysis": "mutual_info", "layer": k, "reference": f"k={kk}",
                         "k": kk, "metric": "mi", "value": kk + k, "split": None})  # fmt: skip
    curves = sw.sweep_curves(pd.DataFrame(rows))
    assert curves[curves.metric == "mi"]["curve"].unique().tolist() == ["w, k=3", "w, k=5"]
    r = curves[curves.metric == "pearson_r"]
    assert r["curve"].unique().tolist() == ["w"] and r["value"].tolist() == pytest.approx([0.3, 0.4, 0.5])
    rsa = curves[curves.metric == "rsa"]
    assert rsa["curve"].unique().tolist() == ["w, phonological", "w, mfcc"]
    assert rsa[rsa.curve == "w, mfcc"]["value"].tolist() == pytest.approx([0.5, 1.5, 2.5])


def test_weighted_probe_is_a_level_named_by_its_curve():
    """``-m probe=linear,weighted``: the weighted-sum probe's layer -1 rows are a reference line, not a point at -1."""
    rows = [{"job": "probe=linear", **r} for r in rows_for("whisper_tiny_en", [0, 1, 2], 0)]
    rows += [
        {"job": "probe=weighted", **r, "probe": "WeightedSumProbe"}
        for r in rows_for("whisper_tiny_en", [], 0)
    ]
    rows += [{"job": "probe=weighted", "backbone": "whisper_tiny_en", "task": "phones", "probe": "WeightedSumProbe",
              "layer": -1, "layer_name": "baseline", "target": "phones", "metric": "accuracy", "value": 0.66,
              "ci_low": 0.6, "ci_high": 0.7, "split": "test"}]  # fmt: skip
    curves = sw.sweep_curves(pd.DataFrame(rows), metric="accuracy")
    ref = curves[curves.baseline == "weighted sum of layers"]
    assert (
        ref["curve"].tolist() == ["weighted"]
        and ref["value"].tolist() == [0.66]
        and ref["ci_low"].tolist() == [0.6]
    )
    assert (curves[curves.kind == "layer"]["layer"] >= 0).all()
    fig = sw.draw_sweep(curves)
    labels = list(lines_of(fig))
    assert labels == ["linear", "weighted sum of layers (0.66): weighted", f"majority ({MAJORITY[0]:.3g})"]
    assert min(fig.axes[0].get_xlim()) > -0.5  # nothing drawn at layer -1


def test_readable_labels():
    groups = ["backbone", "probe", "task", "data"]
    assert sw.readable_value("backbone", "whisper_tiny_en", groups) == "whisper_tiny_en"
    assert sw.readable_value("backbone.pretrained", "false", groups) == "random init"
    assert sw.readable_value("backbone.pretrained", True, groups) == "pretrained"
    assert sw.readable_value("probe.lr", "1e-3", groups) == "lr=1e-3"
    assert sw.readable_value("data.root", "/x/corpus_b/", groups) == "root=corpus_b"
    assert (
        sw._direction("abx_within") == "lower is better" and sw._direction("macro_f1") == "higher is better"
    )
    assert sw._direction("cka") == "" and sw._direction("rsa_spearman") == ""
    assert sw.is_layer_key("probe.layer") and sw.is_layer_key("analysis.layers") and sw.is_layer_key("layers")
    assert not sw.is_layer_key("probe.layer_norm") and sw.is_seed_key("seed") and not sw.is_seed_key("seeds")
    jobs = [{"overrides": {"probe": "ridge", "probe.layer": "0"}, "defaults": {}, "groups": groups},
            {"overrides": {"probe.layer": "1"}, "defaults": {"probe": "linear"}, "groups": groups}]  # fmt: skip
    assert sw.curve_labels(jobs) == ["ridge", "linear"]  # the job without the override: its own choice


def test_cli_options(tmp_path, capture):
    sweep = tmp_path / "sweep"
    for num, seed in enumerate((0, 1)):
        hydra_job(sweep, num, [f"seed={seed}"], rows_for("whisper_tiny_en", [0, 1], seed), CHOICES, CONFIG)
    assert multirun_main([str(sweep), "--seeds-separate"]) == 0
    assert set(pd.read_csv(sweep / "summary_curves.csv")["curve"]) == {
        "whisper_tiny_en, seed 0",
        "whisper_tiny_en, seed 1",
    }
    assert multirun_main([str(sweep)]) == 0
    assert set(pd.read_csv(sweep / "summary_curves.csv")["curve"]) == {"whisper_tiny_en"}


def test_missing_layer_is_a_gap_and_a_lone_point_an_error_bar():
    rows = [{"job": "backbone=a", **r} for r in rows_for("a", [0, 1, 2], 0)]
    rows += [{"job": "backbone=b", **r} for r in rows_for("b", [0, 2], 0)]  # the layer-1 job of b crashed
    fig = sw.draw_sweep(sw.sweep_curves(pd.DataFrame(rows), metric="accuracy"))
    b = lines_of(fig)["b"]
    assert np.asarray(b.get_xdata(), float).tolist() == [0, 1, 2]
    assert np.isnan(np.asarray(b.get_ydata(), float)[1])  # not a straight line through an unmeasured layer

    one = sw.sweep_curves(
        pd.DataFrame([{"job": "x", **r} for r in rows_for("mfcc", [0], 0)]), metric="accuracy"
    )
    ax = sw.draw_sweep(one).axes[0]
    (bar,) = ax.containers
    segs = bar.lines[2][0].get_segments()
    assert np.asarray(segs[0])[:, 1].tolist() == pytest.approx(
        [acc("mfcc", 0, 0) - 0.03, acc("mfcc", 0, 0) + 0.04]
    )


def test_callback_logs_the_sweep_summary_to_wandb(tmp_path, monkeypatch):
    """``logger=wandb``: after merging, summary.csv, summary_curves.csv and summary.png go to the sweep's group."""
    from omegaconf import OmegaConf

    from src.reporting.multirun import MergeResults
    from src.reporting.wandb_read import read_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = tmp_path / "2026-12-07_10-00-00_phones"
    for num, k in enumerate([0, 1]):
        hydra_job(sweep, num, [f"probe.layer={k}"], rows_for("whisper_tiny_en", [k], 0), CHOICES, CONFIG)
    logger = {"_target_": "src.reporting.wandb_utils.make_wandb_logger", "_partial_": True,
              "project": "speechinterp-test", "mode": "offline"}  # fmt: skip
    MergeResults().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": logger})
    )
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir, wait=60)
    assert run.info["group"] == sweep.name and run.info["job_type"] == "sweep-summary"
    curves = run.table("sweep/summary_curves")
    layer_rows = curves[curves["kind"] == "layer"]
    assert layer_rows["value"].tolist() == pytest.approx([acc("whisper_tiny_en", k, 0) for k in (0, 1)])
    assert "sweep/figures/summary" in run.image_keys()

    other = tmp_path / "csv_sweep"
    hydra_job(other, 0, ["probe.layer=0"], rows_for("whisper_tiny_en", [0], 0), CHOICES, CONFIG)
    MergeResults().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(other)}}, "logger": None})
    )
    assert (other / "summary_curves.csv").is_file() and not (other / "wandb").exists()


def test_a_second_merge_leaves_no_figure_of_a_metric_that_is_gone(tmp_path, capture):
    """Figures of an earlier merge (here a stray summary_<old metric>.png) are removed before drawing, so
    neither the folder nor the W&B sweep run shows a metric the sweep no longer has."""
    sweep = tmp_path / "sweep"
    for num, k in enumerate([0, 1]):
        hydra_job(sweep, num, [f"probe.layer={k}"], rows_for("whisper_tiny_en", [k], 0), CHOICES, CONFIG)
    stale = sweep / "summary_accuracy_majority_baseline.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"old")
    merge_results(sweep)
    assert not stale.exists()
    assert (sweep / "summary.png").stat().st_size > 5000

"""src/reporting: result tables, figures, W&B helpers, multirun merge."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.reporting import figures as F
from src.reporting.multirun import MergeResults, MergeResultsWarning, find_job_dirs, job_label, merge_results
from src.reporting.results import (
    RESULT_COLUMNS,
    ResultsError,
    read_results,
    to_jsonable,
    write_config,
    write_results,
)
from src.reporting.wandb_utils import (
    WandbConfigError,
    api_key_present,
    make_wandb_logger,
    wandb_mode,
)

ROOT = Path(__file__).resolve().parents[2]


def probe_rows(layers=4, targets=("t0", "t1"), splits=("val", "test"), backbone="whisper", scale=1.0):
    """value = scale * (0.3 + 0.1 layer + 0.02 k); CI +-0.05 (none at layer 0)."""
    rows = []
    for layer in range(layers):
        for k, t in enumerate(targets):
            for s in splits:
                v = scale * (0.3 + 0.1 * layer + 0.02 * k)
                rows.append(
                    {
                        "backbone": backbone,
                        "task": "ema",
                        "probe": "ridge",
                        "layer": np.int64(layer),
                        "target": t,
                        "metric": "pearson_r",
                        "value": np.float64(v),
                        "ci_low": float("nan") if layer == 0 else v - 0.05,
                        "ci_high": v + 0.05,
                        "split": s,
                    }
                )
    return rows


def assert_png(path: Path, min_bytes: int = 8000) -> Image.Image:
    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    with Image.open(path) as im:
        assert im.format == "PNG"
        im = im.convert("RGB")
    assert im.width > 300 and im.height > 200
    colours = im.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20  # not blank / single colour
    return im


@pytest.fixture
def drawn(monkeypatch):
    """Records what each figure holds just before it is saved."""
    records: list[dict] = []
    orig = F.save_figure

    def spy(fig, out_png):
        ax = fig.axes[0]
        leg = ax.get_legend()
        records.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "legend": [t.get_text() for t in leg.get_texts()] if leg else [],
                "texts": [t.get_text() for t in ax.texts],
                "lines": {ln.get_label(): ln.get_ydata() for ln in ax.get_lines()},
                "yticks": [t.get_text() for t in ax.get_yticklabels()],
                "xticks": [t.get_text() for t in ax.get_xticklabels()],
            }
        )
        return orig(fig, out_png)

    monkeypatch.setattr(F, "save_figure", spy)
    return records


# ------------------------------------------------------------------------------ results


def test_write_results_round_trip(tmp_path):
    rows = probe_rows()
    rows.append(
        {
            "backbone": "whisper",
            "layer": 9,
            "metric": "pearson_r",
            "value": float("nan"),
            "note": "constant target",
        }
    )
    meta = {"seed": np.int64(3), "nan": float("nan"), "path": tmp_path}
    paths = write_results(rows, tmp_path, columns_first=RESULT_COLUMNS, meta=meta)
    assert paths == {"csv": tmp_path / "results.csv", "json": tmp_path / "results.json"}

    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert header == RESULT_COLUMNS + ["note"]
    data = json.loads(paths["json"].read_text())  # strict JSON: no NaN token
    assert "NaN" not in paths["json"].read_text()
    assert data["meta"] == {"seed": 3, "nan": None, "path": str(tmp_path)}
    assert data["rows"][1]["ci_low"] is None and data["rows"][-1]["value"] is None
    assert data["rows"][-1]["note"] == "constant target"

    a, b = read_results(tmp_path), read_results(paths["json"])
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 17 and list(a.columns) == header
    assert a["layer"].dtype == np.int64
    # layer 3, t1, test: 0.3 + 0.3 + 0.02
    sel = a[(a.layer == 3) & (a.target == "t1") & (a.split == "test")]
    assert sel["value"].item() == pytest.approx(0.62, abs=1e-12)
    assert sel["ci_low"].item() == pytest.approx(0.57, abs=1e-12)
    assert math.isnan(a.loc[0, "ci_low"]) and math.isnan(a.iloc[-1]["value"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "abc"])
def test_non_finite_value_refused(tmp_path, bad):
    rows = probe_rows(layers=2)
    rows.insert(
        2,
        {
            "backbone": "whisper",
            "layer": 5,
            "target": "jaw",
            "metric": "pearson_r",
            "value": bad,
            "split": "test",
        },
    )
    with pytest.raises(ResultsError, match=r"row 2 .*'target': 'jaw'"):
        write_results(rows, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    rows[2]["note"] = "   "  # a blank note explains nothing
    with pytest.raises(ResultsError):
        write_results(rows, tmp_path)


def test_column_order_and_text_columns(tmp_path):
    rows = [
        {"zeta": 1, "value": 0.5, "target": "0", "layer": 1, "alpha": "x"},
        {"value": 0.25, "target": "1", "layer": 2, "beta": 2.5},
    ]
    write_results(rows, tmp_path, columns_first=["layer", "target", "value", "split"])
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "layer,target,value,split,alpha,beta,zeta"  # given first (split empty), rest sorted
    df = read_results(tmp_path / "results.csv")
    assert df["target"].tolist() == ["0", "1"]  # stress-like labels stay strings
    assert df["split"].isna().all() and df["beta"].iloc[1] == 2.5
    # default order: known columns first
    write_results(rows, tmp_path, name="r2")
    assert (tmp_path / "r2.csv").read_text().splitlines()[0] == "layer,target,value,alpha,beta,zeta"


def test_write_is_atomic(tmp_path, monkeypatch):
    write_results(probe_rows(layers=2), tmp_path, meta={"v": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(self, fh, **kw):
        fh.write("backbone,task,pro")  # half a file, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError, match="disk full"):
        write_results(probe_rows(layers=3), tmp_path, meta={"v": 2})
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # old csv and json intact, no temp file left behind
    assert len(read_results(tmp_path)) == 8


def test_to_jsonable_and_write_config(tmp_path):
    from omegaconf import OmegaConf

    assert to_jsonable({"a": np.float32(0.5), "b": np.arange(3), "c": (np.inf, 1)}) == {
        "a": 0.5,
        "b": [0, 1, 2],
        "c": [None, 1],
    }
    cfg = OmegaConf.create({"dim": 8, "probe": {"hidden": "${dim}"}})
    p = write_config(cfg, tmp_path)
    assert OmegaConf.load(p).probe.hidden == 8  # resolved


# ------------------------------------------------------------------------------ figures


def test_plot_over_layers(tmp_path, drawn):
    df = pd.DataFrame(probe_rows())
    out = F.plot_over_layers(df, tmp_path / "a.png", "pearson_r", baselines={"MFCC": 0.2, "majority": 0.1})
    assert_png(out)
    rec = drawn[-1]
    assert rec["xlabel"] == "layer" and rec["ylabel"] == "Pearson r (test)"  # readable names, not raw keys
    assert rec["title"] == "Pearson r over layers: whisper"
    assert rec["legend"] == ["t0", "t1", "MFCC (0.2)", "majority (0.1)"]
    np.testing.assert_allclose(rec["lines"]["t1"], [0.32, 0.42, 0.52, 0.62])


def test_plot_over_layers_many_targets_band(tmp_path, drawn):
    df = pd.DataFrame(probe_rows(layers=3, targets=[f"s{i}" for i in range(12)], splits=("test",)))
    assert_png(F.plot_over_layers(df, tmp_path / "b.png", "pearson_r", title="EMA"))
    rec = drawn[-1]
    assert rec["legend"] == ["min-max over 12 targets", "mean over 12 targets"]
    # mean over k of 0.02 k, k = 0..11 -> 0.11
    np.testing.assert_allclose(rec["lines"]["mean over 12 targets"], [0.41, 0.51, 0.61])
    assert rec["title"] == "EMA"


def test_plot_errors_name_what_exists(tmp_path):
    df = pd.DataFrame(probe_rows(layers=2))
    with pytest.raises(F.FigureError, match=r"available: \['pearson_r'\]"):
        F.plot_over_layers(df, tmp_path / "x.png", "accuracy")
    with pytest.raises(F.FigureError, match=r"available splits: \['test', 'val'\]"):
        F.plot_over_layers(df, tmp_path / "x.png", "pearson_r", split="train")
    with pytest.raises(F.FigureError, match="row labels"):
        F.plot_matrix(np.eye(3), tmp_path / "m.png", range(2), range(3), "bad")
    assert not (tmp_path / "x.png").exists()


def test_layer_target_heatmap(tmp_path, drawn):
    targets = ["t2", "t10", "t1"]
    df = pd.DataFrame(probe_rows(layers=3, targets=targets))
    assert_png(F.plot_layer_target_heatmap(df, tmp_path / "h.png", "pearson_r"))
    rec = drawn[-1]
    assert rec["xticks"] == ["t1", "t2", "t10"] and rec["yticks"] == ["0", "1", "2"]
    assert (rec["xlabel"], rec["ylabel"]) == ("target", "layer")
    # row-major annotations; t1 is k=2, t2 k=0, t10 k=1
    expected = [f"{0.3 + 0.1 * layer + 0.02 * k:.2f}" for layer in range(3) for k in (2, 0, 1)]
    assert rec["texts"] == expected


def test_plot_matrix_annotation(tmp_path, drawn):
    rng = np.random.default_rng(0)
    small = rng.random((4, 5))
    assert_png(F.plot_matrix(small, tmp_path / "s.png", range(4), list("abcde"), "CKA", vmin=0, vmax=1))
    assert drawn[-1]["texts"] == [f"{v:.2f}" for v in small.ravel()]
    big = rng.random((25, 25))
    big[3, 4] = np.nan
    assert_png(F.plot_matrix(big, tmp_path / "b.png", range(25), range(25), "CKA 25"))
    assert drawn[-1]["texts"] == [] and drawn[-1]["title"] == "CKA 25"


def test_plot_lines_overlay_scatter(tmp_path, drawn):
    assert_png(F.plot_lines([0, 1, 2], {"a": [1, 2, 3], "b": [3, 1, 2]}, tmp_path / "l.png", "x", "y", "t"))
    assert drawn[-1]["legend"] == ["a", "b"]

    dfs = {
        "backbone=whisper": pd.DataFrame(probe_rows()),
        "backbone=mfcc": pd.DataFrame(probe_rows(layers=1, scale=0.5)),
    }
    assert_png(F.plot_overlay(dfs, tmp_path / "o.png", "pearson_r", "test", baselines={"chance": 0.0}))
    rec = drawn[-1]
    assert rec["legend"] == [
        "backbone=whisper (mean of 2)",
        "backbone=mfcc (mean of 2) [layer 0]",
        "chance (0)",
    ]
    np.testing.assert_allclose(rec["lines"]["backbone=whisper (mean of 2)"], [0.31, 0.41, 0.51, 0.61])
    np.testing.assert_allclose(rec["lines"]["backbone=mfcc (mean of 2) [layer 0]"], [0.155, 0.155])
    one = pd.concat([t.assign(job=j) for j, t in dfs.items()])
    F.plot_overlay(one, tmp_path / "o2.png", "pearson_r", "test")
    assert drawn[-1]["lines"].keys() >= {
        "backbone=whisper (mean of 2)",
        "backbone=mfcc (mean of 2) [layer 0]",
    }

    rng = np.random.default_rng(1)
    labels = [f"p{i}" for i in rng.zipf(1.6, size=600) % 40]
    pts = rng.normal(size=(600, 2))
    assert_png(F.plot_scatter_2d(pts, labels, tmp_path / "sc.png", "t-SNE of layer 3", max_legend=5))
    legend = drawn[-1]["legend"]
    from collections import Counter

    top = {k for k, _ in Counter(labels).most_common(5)}
    n_rest = sum(v for k, v in Counter(labels).items() if k not in top)
    assert legend[0] == f"other ({len(set(labels)) - 5} labels, {n_rest} points)"
    assert set(legend[1:]) == top


# ------------------------------------------------------------------------------ W&B


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def clean_auth(tmp_path, monkeypatch):
    """No key anywhere: empty HOME, NETRC and wandb config dir."""
    for var in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_MODE",
        "WANDB_DISABLED",
        "WANDB_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wbconf"))
    return tmp_path


def test_wandb_mode_decisions(clean_auth, monkeypatch, no_network):
    tmp = clean_auth
    assert wandb_mode() == "offline" and not api_key_present()
    for m in ("online", "offline", "disabled"):
        assert wandb_mode(m) == m
    with pytest.raises(WandbConfigError, match="dryrun"):
        wandb_mode("dryrun")

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit environment choice wins over auto
    assert wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert wandb_mode() == "disabled"
    monkeypatch.delenv("WANDB_DISABLED")
    monkeypatch.delenv("WANDB_API_KEY")

    (tmp / "netrc").write_text("machine example.org login user password secret\n")
    assert wandb_mode() == "offline"
    (tmp / "netrc").write_text(
        "machine example.org login u password s\nmachine api.wandb.ai login user password k1\n"
    )
    assert wandb_mode() == "online"
    monkeypatch.setenv(
        "WANDB_BASE_URL", "https://wandb.mylab.edu"
    )  # a private server: key for that host only
    assert wandb_mode() == "offline"
    (tmp / "netrc").write_text("machine wandb.mylab.edu login user password k2\n")
    assert wandb_mode() == "online"
    (tmp / "netrc").write_text("garbage ( not netrc")
    assert wandb_mode() == "offline"

    monkeypatch.delenv("WANDB_BASE_URL")
    (tmp / "wbconf").mkdir()
    (tmp / "wbconf" / "settings").write_text("[default]\nbase_url = https://api.wandb.ai\napi_key = k3\n")
    assert wandb_mode() == "online"


def test_make_wandb_logger_finishes_a_stale_run(tmp_path, monkeypatch):
    """A run left open by an earlier (failed) job in the same process is finished, not reused."""
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    stale = wandb.init(mode="offline", dir=str(tmp_path), project="speechinterp-test", name="stale")
    try:
        with pytest.warns(UserWarning, match="stale"):
            logger = make_wandb_logger("speechinterp-test", "job1", "sweep-a", tmp_path / "logs", mode="offline")
        exp = logger.experiment
        assert exp is not stale and exp.name == "job1" and exp.id != stale.id
    finally:
        wandb.finish()
        stale.finish()
    assert wandb.run is None


def test_make_wandb_logger_offline(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = make_wandb_logger(
        "speechinterp-test",
        "job0",
        "sweep-a",
        tmp_path / "logs",
        mode="auto",
        tags=["probe"],
        config={"layer": 3},
    )
    try:
        exp = logger.experiment
        assert exp.settings.mode == "offline" and exp.group == "sweep-a" and exp.name == "job0"
        assert dict(exp.config)["layer"] == 3 and list(exp.tags) == ["probe"]
    finally:
        wandb.finish()
    assert len(list((tmp_path / "logs" / "wandb").glob("offline-run-*"))) == 1


# ------------------------------------------------------------------------------ multirun


def make_job(sweep: Path, sub: str, overrides: list[str] | None, rows: list[dict] | None) -> Path:
    d = sweep / sub
    (d / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rows is not None:
        write_results(rows, d)
    return d


def test_merge_results_fake_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    acc = [
        {
            "backbone": "whisper",
            "layer": k,
            "target": "phone",
            "metric": "accuracy",
            "value": 0.5 + 0.1 * k,
            "split": s,
        }
        for k in range(3)
        for s in ("val", "test")
    ]
    make_job(sweep, "0", ["probe.layer=all", "backbone=whisper"], acc + probe_rows(layers=3))
    make_job(
        sweep, "1", ["backbone=mfcc"], [dict(r, backbone="mfcc", value=0.4) for r in acc if r["layer"] == 0]
    )
    make_job(sweep, "2", ["backbone=broken"], None)  # crashed: nothing written
    (sweep / "multirun.yaml").write_text("{}\n")

    with pytest.warns(MergeResultsWarning, match=r"1 job\(s\).*\['2'\]"):
        df = merge_results(sweep)
    assert df["job"].unique().tolist() == ["backbone=whisper,probe.layer=all", "backbone=mfcc"]
    assert len(df) == 6 + 12 + 2 and df.columns[0] == "job"
    back = pd.read_csv(sweep / "summary.csv")
    assert len(back) == len(df) and back["job_dir"].astype(str).tolist().count("1") == 2
    t = back[(back.metric == "accuracy") & (back.split == "test") & (back.layer == 2)]
    assert t["value"].tolist() == pytest.approx([0.7])
    assert_png(sweep / "summary.png")
    assert_png(sweep / "summary_accuracy.png")
    assert_png(sweep / "summary_pearson_r.png")


def test_job_labels_and_dirs(tmp_path):
    sweep = tmp_path / "s"
    a = make_job(sweep, "backbone=x/nested", None, [{"layer": 0, "metric": "cka", "value": 1.0}])
    b = make_job(sweep, "10", ["b=2", "a=1"], None)
    c = make_job(sweep, "9", [], None)
    (c / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    override_dirname: a=1,b=3\n")
    write_results([{"layer": 0, "metric": "x", "value": 1.0}], a / "analysis")  # inside a job: not a job
    assert find_job_dirs(sweep) == [c, b, a]
    assert [job_label(d, sweep) for d in (a, b, c)] == ["backbone=x/nested", "a=1,b=2", "a=1,b=3"]


def test_labels_name_seed_and_random_init_jobs(tmp_path):
    """Jobs that differ only in an excluded key (seed) or in backbone.pretrained get distinct labels."""
    from src.reporting.multirun import distinct_labels

    sweep = tmp_path / "sweep"
    specs = [
        ("0_task=ema", "task=ema", ["task=ema", "seed=0"], "whisper_tiny_en"),
        ("1_task=ema", "task=ema", ["task=ema", "seed=1"], "whisper_tiny_en"),
        ("2_backbone.pretrained=false,task=ema", "backbone.pretrained=false,task=ema",
         ["task=ema", "backbone.pretrained=false", "seed=0"], "whisper_tiny_en-random"),
        ("3_task=ema", "task=ema", ["task=ema", "seed=0", "data.root=/data/corpus_b/"], "whisper_tiny_en"),
    ]  # fmt: skip
    for sub, dirname, overrides, backbone in specs:
        d = make_job(sweep, sub, overrides, probe_rows(layers=3, backbone=backbone))
        (d / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    override_dirname: {dirname}\n")
    df = merge_results(sweep)
    labels = df.drop_duplicates("job_dir")["job"].tolist()
    assert labels == [
        "task=ema,seed=0",
        "task=ema,seed=1",
        "backbone.pretrained=false,task=ema,seed=0",
        "task=ema,data.root=corpus_b,seed=0",
    ]
    assert_png(sweep / "summary.png")
    # no overrides file, same label: the backbone names from the results tell them apart, then the path
    jobs = [
        {"label": "experiment=x", "overrides": {}, "backbones": ["w"], "rel": "0"},
        {"label": "experiment=x", "overrides": {}, "backbones": ["w-random"], "rel": "1"},
        {"label": "experiment=y", "overrides": {}, "backbones": ["w"], "rel": "2"},
        {"label": "experiment=y", "overrides": {}, "backbones": ["w"], "rel": "3"},
    ]
    assert distinct_labels(jobs) == ["experiment=x (w)", "experiment=x (w-random)", "experiment=y", "experiment=y [3]"]


def test_callback_never_fails(tmp_path, caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "does-not-exist")}}})
    MergeResults().on_multirun_end(cfg)  # logged, not raised
    assert "does-not-exist" in caplog.text


def test_callback_in_real_hydra_multirun(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent("""
        import hydra
        from hydra.core.config_store import ConfigStore
        from hydra.core.hydra_config import HydraConfig
        from src.reporting.results import write_results

        ConfigStore.instance().store(name="cfg", node={
            "backbone": "a", "scale": 1.0,
            "hydra": {"callbacks": {"merge": {"_target_": "src.reporting.multirun.MergeResults"}}}})

        @hydra.main(version_base="1.3", config_path=None, config_name="cfg")
        def main(cfg):
            if cfg.backbone == "broken":
                return
            rows = [dict(backbone=cfg.backbone, layer=k, target="t", metric="accuracy",
                         value=cfg.scale * k / 10, split="test") for k in range(3)]
            write_results(rows, HydraConfig.get().runtime.output_dir)

        main()
    """)
    )
    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, str(app), "-m", "backbone=a,b,broken", "scale=2", f"hydra.sweep.dir={sweep}"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote no results.csv" in proc.stdout + proc.stderr
    df = pd.read_csv(sweep / "summary.csv")
    assert df["job"].unique().tolist() == ["backbone=a,scale=2", "backbone=b,scale=2"]
    assert df.loc[df.job == "backbone=b,scale=2", "value"].tolist() == pytest.approx([0.0, 0.2, 0.4])
    assert_png(sweep / "summary.png")


def test_module_imports_stay_light():
    code = (
        "import sys; import src.reporting.results, src.reporting.figures, src.reporting.wandb_utils; "
        "print(sorted(m for m in ('pandas', 'matplotlib', 'wandb', 'lightning', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_warnings_from_clean_figure(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.plot_over_layers(pd.DataFrame(probe_rows(layers=2)), tmp_path / "w.png", "pearson_r")


def test_named_states_get_their_names_on_the_layer_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.reporting.figures import _named_states_x

    d = pd.DataFrame(dict(layer=[0, 1, 2, 3, 3], layer_name=["0", "1", "2", "final_norm", "final_norm"]))
    fig, ax = plt.subplots()
    _named_states_x(ax, d)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "final_norm"]
    fig2, ax2 = plt.subplots()
    before = list(ax2.get_xticks())
    _named_states_x(ax2, d[d.layer < 3])  # numeric names only: ticks untouched
    assert list(ax2.get_xticks()) == before
    plt.close(fig), plt.close(fig2)


def test_integer_columns_with_gaps_stay_integers(tmp_path):
    from src.reporting.results import write_results

    write_results([dict(layer=0, metric="a", value=0.5, n_units=12), dict(layer=1, metric="b", value=0.25)], tmp_path)
    assert (tmp_path / "results.csv").read_text().splitlines() == ["layer,metric,value,n_units", "0,a,0.5,12", "1,b,0.25,"]

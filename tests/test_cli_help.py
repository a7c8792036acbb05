"""``--help`` of the three entry points (what each does, its main keys, the config groups it uses), Hydra's
``--hydra-help`` kept, and run directory names that name the corpus (one sweep directory per multirun)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from src.jobs.common import register_resolvers
from tests.conftest import ROOT, make_tone_corpus

register_resolvers()


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def _groups(text: str) -> dict[str, list[str]]:
    """group -> options as printed in the help's config-group section (wrapped lines joined)."""
    section = text.split("== Config groups", 1)[1].split("\n\n", 1)[0]
    out, key = {}, None
    for line in section.splitlines()[1:]:
        m = re.match(r"^  (\w+):\s+(.*)$", line)
        if m:
            key = m.group(1)
            out[key] = m.group(2)
        elif key and line.startswith(" " * 14):
            out[key] += " " + line.strip()
    return {k: [o.strip() for o in v.split(",")] for k, v in out.items()}


def _help_text(entry: str, overrides=()) -> str:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(entry, overrides=list(overrides), return_hydra_config=True)
    return str(cfg.hydra.help.template)


def _run_dirs(entry: str, overrides=(), swept=()) -> tuple[str, str]:
    """(run dir, sweep dir) as Hydra resolves them; ``swept``: sweep overrides a multirun's config would hold."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(entry, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task.extend(swept)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


@pytest.mark.cli
def test_train_help_says_what_it_does_and_lists_its_groups():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.startswith("train.py: probe what each layer of a frozen speech model encodes.")
    assert "outputs/train/<time>_<backbone>[-random]_<corpus>_<task>_seed<seed>/" in text
    for key in ("layers=null", "probe.layer=null", "split.by=text", "controls.selectivity", "backbone.model_id="):
        assert key in text
    groups = _groups(text)
    assert set(groups) == {"paths", "backbone", "data", "task", "probe", "labels", "split", "controls", "cache", "trainer",
                           "logger", "experiment"}  # fmt: skip
    assert "analysis" not in groups  # train.py never uses it
    assert [o.lstrip("*") for o in groups["backbone"]] == _options("backbone")  # every option, as on disk
    assert [o for o in groups["backbone"] if o.startswith("*")] == ["*whisper_tiny_en"]
    assert [o for o in groups["probe"] if o.startswith("*")] == ["*linear"]
    assert "--hydra-help" in text and "Traceback" not in proc.stderr
    hydra_help = subprocess.run([sys.executable, str(ROOT / "train.py"), "--hydra-help"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert hydra_help.returncode == 0 and "== Flags ==" in hydra_help.stdout and "--multirun" in hydra_help.stdout


def test_analyze_and_build_cache_help_list_only_their_groups():
    text = _help_text("analyze", ["analysis=rsa"])
    assert text.startswith("analyze.py: representation analyses")
    groups = _groups(text)
    assert set(groups) == {"paths", "backbone", "data", "analysis", "labels", "cache", "logger", "experiment"}
    assert [o.lstrip("*") for o in groups["analysis"]] == _options("analysis") and "*rsa" in groups["analysis"]
    text = _help_text("build_cache")
    assert text.startswith("build_cache.py: build (or find) the activation cache")
    assert set(_groups(text)) == {"paths", "backbone", "data", "cache", "experiment"}  # no task, probe, trainer, logger
    # an experiment's groups are the ones shown: experiment=sae adds sae
    assert "sae" in _groups(_help_text("train", ["experiment=sae"]))


def test_run_directories_name_the_corpus():
    run, sweep = _run_dirs("train")
    assert re.search(r"/train/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_whisper_tiny_en_synth_phones_seed0$", run), run
    assert re.search(r"/train_multirun/[\d_-]+_synth_phones$", sweep), sweep
    run, _ = _run_dirs("train", ["data=textgrid", "data.root=/corpora/my_buckeye/", "backbone=mfcc"])
    assert run.endswith("_mfcc_my_buckeye_phones_seed0"), run  # folder-named corpora: as TextGridCorpus names itself
    run, _ = _run_dirs("train", ["data=timit", "data.root=/x/TIMIT", "data.name=timit_core", "backbone.pretrained=false"])
    assert run.endswith("_whisper_tiny_en-random_timit_core_phones_seed0"), run
    run, sweep = _run_dirs("analyze", ["analysis=rsa", "data=librispeech", "data.root=/x/LibriSpeech"])
    assert run.endswith("_whisper_tiny_en_librispeech_rsa_seed0") and sweep.endswith("_librispeech_rsa"), (run, sweep)
    run, sweep = _run_dirs("build_cache", ["experiment=commands"])
    assert run.endswith("_whisper_tiny_en_commands") and sweep.endswith("_commands"), (run, sweep)
    # what a multirun sweeps is named as such in its one sweep directory
    assert _run_dirs("train", swept=["data=synth,timit"])[1].endswith("_corpora_phones")
    assert _run_dirs("train", swept=["task=phones,stress"])[1].endswith("_synth_tasks")
    assert _run_dirs("analyze", swept=["analysis=cka,rsa"])[1].endswith("_synth_analyses")


@pytest.mark.cli
def test_a_multirun_over_corpora_has_one_sweep_directory(tmp_path):
    """Each job resolves its own config; the sweep directory still is the multirun's (one, named ``corpora``)."""
    a = make_tone_corpus(tmp_path / "tones_a", num_utterances=3)
    b = make_tone_corpus(tmp_path / "tones_b", num_utterances=3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "build_cache.py"), "-m", "backbone=mfcc", "data=textgrid", f"data.root={a},{b}",
           f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}", "cache.progress=false"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [sweep] = (tmp_path / "outputs" / "build_cache_multirun").iterdir()
    assert sweep.name.endswith("_corpora")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [j.split("_", 1)[0] for j in jobs] == ["0", "1"] and (sweep / "caches.csv").exists()
    assert all((sweep / j / "cache.json").exists() for j in jobs)

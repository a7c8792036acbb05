"""The README's layer specs work as documented, from the command line to the layers probed or analysed.

README: "Layer specs everywhere (`layers=`, `probe.layer=`, `analysis.layers=`) accept ints (negative
from the end), `first`, `middle`, `last`, `all`, ranges `1:3` / `1-3` and `final_norm`", and
`layers='[all,final_norm]'` / `layers=final_norm`. Each form is composed through Hydra exactly as typed
on the command line and read by the code the entry points use (in process, against a literal list of
states); two forms (a bare name and a bare int, the ones `list(cfg.layers)` broke) run through
`train.py` itself, in one multirun process.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.analyses.base import AnalysisLayerError, analysis_layers
from src.jobs.common import register_resolvers
from src.layers import LayerSpecError, layer_spec, resolve_layers
from src.probes.pipeline import probed_layers
from tests.conftest import ROOT, make_tone_corpus
from tests.helpers import run_cli

register_resolvers()

# a cache of 5 residual states (0..4) and the named extra state final_norm (index 5), as Whisper tiny.en's
ACTS = SimpleNamespace(num_layers=5, extra_states=["final_norm"])

# (override value as typed after `=`, the states it names): every form the README lists
FORMS = [
    ("2", [2]),
    ("-1", [4]),
    ("first", [0]),
    ("middle", [2]),
    ("last", [4]),
    ("all", [0, 1, 2, 3, 4]),
    ("1:3", [1, 2]),  # end exclusive, as in Python
    ("1-3", [1, 2, 3]),  # end inclusive
    ("final_norm", [5]),
    ("[all,final_norm]", [0, 1, 2, 3, 4, 5]),
    ("[first,-1,last]", [0, 4]),
]


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=overrides)


@pytest.mark.parametrize("typed, states", FORMS, ids=[f for f, _ in FORMS])
def test_train_layers_and_probe_layer(typed, states):
    cfg = _compose("train", [f"layers={typed}"])
    spec = layer_spec(cfg.get("layers"), "layers")  # what src/run.py's probing_job passes to run_probing
    assert probed_layers(ACTS, spec, None) == states
    cfg = _compose("train", [f"probe.layer={typed}"])
    single = instantiate(cfg.probe).keywords["layer"]  # what run_probing reads from the probe factory
    assert probed_layers(ACTS, None, single) == states


@pytest.mark.parametrize("typed, states", FORMS, ids=[f for f, _ in FORMS])
def test_analysis_layers(typed, states):
    cfg = _compose("analyze", ["analysis=cka", f"analysis.layers={typed}"])
    analysis = instantiate({k: v for k, v in cfg.analysis.items() if k != "name"})  # as src/run.py's analysis_job
    assert analysis_layers(analysis.layers, ACTS) == states


def test_scalar_specs_are_one_item_and_errors_name_the_key():
    assert layer_spec("final_norm") == "final_norm" and layer_spec(2) == 2 and layer_spec(None) is None
    assert resolve_layers("final_norm", 5, extras=["final_norm"]) == [5]
    assert resolve_layers(2, 5) == [2]
    with pytest.raises(LayerSpecError, match=r"^layers: layer 7 is out of range; valid layers: 0\.\.4"):
        probed_layers(ACTS, layer_spec(7), None)
    with pytest.raises(LayerSpecError, match=r"^probe\.layer: cannot read layer 'final'"):
        probed_layers(ACTS, None, "final")
    with pytest.raises(AnalysisLayerError, match=r"^analysis\.layers: range '3:1' is empty or out of range"):
        analysis_layers("3:1", ACTS)
    with pytest.raises(LayerSpecError, match=r"^layers: a mapping .* is not a layer spec"):
        resolve_layers({"a": 1}, 5)
    with pytest.raises(LayerSpecError, match=r"give either layers=final_norm or probe\.layer=2, not both"):
        probed_layers(ACTS, "final_norm", 2)


def test_train_cli_scalar_layer_specs(tmp_path, tiny_whisper_dir):
    """`train.py -m layers=final_norm,2`: before the fix the first failed ("cannot read layer 'f'") and the second
    raised a TypeError; now each job probes exactly the one state it names (tiny Whisper: states 0..2 + final_norm)."""
    corpus = make_tone_corpus(tmp_path / "corpus", num_utterances=8)
    sweep = tmp_path / "sweep"
    run_cli("train.py", ["data=textgrid", f"data.root={corpus}", f"paths.cache_dir={tmp_path / 'cache'}",
                         f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false", "backbone=whisper_hub",
                         f"backbone.model_id={tiny_whisper_dir}", "backbone.name=tw", "logger=none",
                         "trainer.max_epochs=1", "probe.min_steps=0", "probe.patience=0", "n_boot=20",
                         "split.by=utterance", "task.min_count=1", "layers=final_norm,2"], sweep, multirun=True)  # fmt: skip
    got = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "results.csv").exists()):
        df = pd.read_csv(job / "results.csv")
        probed = df[df.layer >= 0]
        got[job.name.split("layers=")[1].split(",")[0]] = sorted(set(zip(probed.layer, probed.layer_name.astype(str))))
    assert got == {"final_norm": [(3, "final_norm")], "2": [(2, "2")]}

"""The one layer parser (src/layers.py) and its use by the probing pipeline."""

from __future__ import annotations

import pytest

from src.layers import LayerSpecError, layer_label, resolve_layers


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, [0, 1, 2, 3, 4]),
        ("all", [0, 1, 2, 3, 4]),
        (3, [3]),
        (-1, [4]),
        ("-2", [3]),
        (["first", "middle", "last"], [0, 2, 4]),
        ([4, 4, -1, "last"], [4]),  # duplicates removed
        ("1:3", [1, 2]),  # python slice: end exclusive
        ("1-3", [1, 2, 3]),  # dash: end inclusive
        ("range(0,5)", [0, 1, 2, 3, 4]),
        (["final_norm", 0], [0, 5]),
        ([2.0], [2]),
    ],
)
def test_specs(spec, expected):
    assert resolve_layers(spec, 5, extras=["final_norm"]) == expected


@pytest.mark.parametrize("spec", [5, -6, "7", [0, 9], "3-1", "2:2", "x", True, [], "final_norm", 1.5])
def test_bad_specs_name_the_key_and_the_valid_range(spec):
    with pytest.raises(LayerSpecError) as e:
        resolve_layers(spec, 5, what="probe.layer")
    assert "probe.layer" in str(e.value)
    if spec not in ([], 1.5):
        assert "0..4" in str(e.value)


def test_omegaconf_lists_are_read():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"layers": [0, "last", "final_norm"]})
    assert resolve_layers(cfg.layers, 4, extras=["final_norm"]) == [0, 3, 4]


def test_label():
    assert layer_label(5, ["0", "1", "2", "3", "4", "final_norm"]) == "final_norm"
    assert layer_label(2, None) == "2"


class _Acts:
    num_layers = 5
    extra_states = ["final_norm"]


def test_pipeline_never_wraps_a_layer_index():
    """probe.layer=5 on a 5-state model used to probe layer 0 (% num_layers)."""
    from src.probes.pipeline import probed_layers

    with pytest.raises(LayerSpecError, match=r"probe.layer: layer 5 is out of range.*0\.\.4"):
        probed_layers(_Acts(), None, 5)
    with pytest.raises(LayerSpecError, match="not both"):
        probed_layers(_Acts(), [0, 1], 1)
    assert probed_layers(_Acts(), [0, 0, -1], None) == [0, 4]
    assert probed_layers(_Acts(), None, "final_norm") == [5]


def test_resolve_for_reads_every_kind_of_owner_the_same_way():
    """The one adapter: a count, a cache-like owner (extra_states) and a backbone-like owner (layer_names) name
    the same states as the parser given the counts by hand; errors take the caller's class and key."""
    from types import SimpleNamespace

    from src.layers import LayerSpecError, resolve_for, resolve_layers

    cache = SimpleNamespace(num_layers=5, extra_states=["final_norm"])
    model = SimpleNamespace(num_layers=5, layer_names=["0", "1", "2", "3", "4", "final_norm"])
    for spec in [None, 2, -1, "last", "1-3", ["first", "final_norm"], "all"]:
        want = resolve_layers(spec, 5, extras=["final_norm"])
        assert resolve_for(cache, spec) == want == resolve_for(model, spec)
    assert resolve_for(5, "1:3") == [1, 2]
    assert resolve_for(cache, "every", every=True) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(LayerSpecError, match="final_norm"):
        resolve_for(5, "final_norm", what="probe.layer")  # a count has no extras

    class MyError(LayerSpecError):
        pass

    with pytest.raises(MyError, match="analysis.layers"):
        resolve_for(cache, 9, what="analysis.layers", error=MyError)
    with pytest.raises(LayerSpecError):
        resolve_for(cache, "every")  # only where the caller accepts it

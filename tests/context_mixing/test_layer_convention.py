"""analysis.layers of context mixing in the project's state convention (src.layers): layer k = the transformer
layer whose output is state k (1 = the first); state 0 and final_norm produce no attention. Literal references."""

import logging

import pytest

from src.analyses.base import AnalysisLayerError
from src.analyses.context_mixing import ContextMixing


@pytest.mark.parametrize(
    ("spec", "want"),
    [(None, [1, 2, 3, 4]), (1, [1]), (-1, [4]), ("last", [4]), ("middle", [2]), ("2-3", [2, 3]), ([4, 1], [1, 4])],
)
def test_state_convention(spec, want):
    assert ContextMixing(layers=spec).component_layers("encoder", 4) == want


def test_state_zero_skipped_with_a_message(caplog):
    with caplog.at_level(logging.WARNING):
        assert ContextMixing(layers="all").component_layers("encoder", 4) == [1, 2, 3, 4]
        assert ContextMixing(layers="0-2").component_layers("encoder", 4) == [1, 2]
    assert "state 0" in caplog.text and "skipped" in caplog.text


@pytest.mark.parametrize("spec", [0, "first", [0]])
def test_state_zero_alone_is_an_error(spec):
    with pytest.raises(AnalysisLayerError, match=r"analysis.layers \(encoder: layers 1..4.*state 0.*the first layer is 1"):
        ContextMixing(layers=spec).component_layers("encoder", 4)


def test_final_norm_and_out_of_range_are_errors():
    with pytest.raises(AnalysisLayerError, match=r"final_norm.*LayerNorm"):
        ContextMixing(layers=["final_norm", 1]).component_layers("encoder", 4)
    with pytest.raises(AnalysisLayerError, match=r"analysis.layers \(decoder: layers 1..2.*5.*out of range"):
        ContextMixing(layers=5).component_layers("decoder", 2)

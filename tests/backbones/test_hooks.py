"""The one hook toolkit (src/backbones/hooks.py): what each tool records, against literal values of a tiny
module with known weights, and that every hook is gone after the block: on normal exit, on an exception
raised in the block, on an exception raised inside a hook or the model's forward, and on an error while a
later hook is being registered."""

from __future__ import annotations

import pytest
import torch

from src.backbones import hooks as H
from src.backbones.base import _first, forward_hooks, record_outputs


class Pair(torch.nn.Module):
    """Returns a tuple ``(2 x, x + 1)`` like a transformers layer (tensor first)."""

    def forward(self, x, scale=1.0):
        return (2.0 * x * scale, x + 1.0)


def _net():
    lin = torch.nn.Linear(2, 2, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    return lin, Pair()


def _n_hooks(*mods) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
               + len(getattr(m, "_forward_pre_hooks_with_kwargs", {})) for m in mods)  # fmt: skip


X = torch.tensor([[1.0, 1.0]])  # lin(X) = [[1 + 2 + .5, 3 + 4 - .5]] = [[3.5, 6.5]]


def test_records_literal_values():
    lin, pair = _net()
    with H.capture_outputs([lin, pair]) as out, H.capture_outputs([pair], index=None) as whole, \
         H.capture_module_inputs([lin]) as mod_in, H.capture_layer_inputs([pair]) as call_in:  # fmt: skip
        y = lin(X)
        pair(y, scale=3.0)
        pair(torch.zeros(1, 2))  # capture_layer_inputs keeps the first call, capture_outputs the last
    assert out[0].tolist() == [[3.5, 6.5]]
    assert out[1].tolist() == [[0.0, 0.0]]  # 2 * 0: element 0 of the tuple, last call
    assert isinstance(whole[0], tuple) and whole[0][1].tolist() == [[1.0, 1.0]]
    assert mod_in[0].tolist() == [[1.0, 1.0]]
    args, kwargs = call_in[0]
    assert args[0].tolist() == [[3.5, 6.5]] and kwargs == {"scale": 3.0}
    with record_outputs([pair]) as rec:
        pair(X)
    assert rec[0].tolist() == [[2.0, 2.0]]
    assert _first((X, 1)) is X and H.first_output(X) is X and _first is H.first_output
    assert _n_hooks(lin, pair) == 0


def test_forward_hooks_change_values_and_pre_hooks_see_kwargs():
    lin, pair = _net()
    with forward_hooks([(lin, lambda m, a, o: o * 0.0)]) as handles:
        assert len(handles) == 1 and lin(X).tolist() == [[0.0, 0.0]]
    assert lin(X).tolist() == [[3.5, 6.5]]
    seen = {}
    with forward_hooks([(pair, lambda m, a, kw: seen.update(kw))], pre=True, with_kwargs=True):
        pair(X, scale=2.0)
    assert seen == {"scale": 2.0} and _n_hooks(lin, pair) == 0


TOOLS = {
    "forward_hooks": lambda lin, pair: forward_hooks(
        [(lin, lambda m, a, o: None), (pair, lambda m, a, o: None)]
    ),
    "forward_pre_hooks": lambda lin, pair: forward_hooks(
        [(lin, lambda m, a, kw: None)], pre=True, with_kwargs=True
    ),
    "hooked": lambda lin, pair: H.hooked(
        lambda: lin.register_forward_hook(lambda m, a, o: None),
        lambda: pair.register_forward_pre_hook(lambda m, a: None),
    ),
    "capture_outputs": lambda lin, pair: H.capture_outputs([lin, pair]),
    "record_outputs": lambda lin, pair: record_outputs([lin, pair]),
    "capture_layer_inputs": lambda lin, pair: H.capture_layer_inputs([lin, pair]),
    "capture_module_inputs": lambda lin, pair: H.capture_module_inputs([lin, pair]),
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_hooks_removed_on_exit_and_on_error(tool):
    lin, pair = _net()
    with TOOLS[tool](lin, pair):
        assert _n_hooks(lin, pair) > 0
        pair(lin(X))
    assert _n_hooks(lin, pair) == 0
    with pytest.raises(KeyError, match="in the block"):  # an exception raised inside the context
        with TOOLS[tool](lin, pair):
            raise KeyError("in the block")
    assert _n_hooks(lin, pair) == 0
    boom = lin.register_forward_hook(lambda m, a, o: (_ for _ in ()).throw(RuntimeError("in the forward")))
    try:
        with pytest.raises(
            RuntimeError, match="in the forward"
        ):  # raised while the model runs under the hooks
            with TOOLS[tool](lin, pair):
                pair(lin(X))
    finally:
        boom.remove()
    assert _n_hooks(lin, pair) == 0


def test_registration_error_removes_the_hooks_already_installed():
    lin, pair = _net()

    def bad():
        raise ValueError("cannot register")

    with pytest.raises(ValueError, match="cannot register"):
        with H.hooked(lambda: lin.register_forward_hook(lambda m, a, o: None), bad):
            pass  # never reached
    assert _n_hooks(lin, pair) == 0
    with pytest.raises(AttributeError):  # forward_hooks on a non-module after a good one
        with forward_hooks([(lin, lambda m, a, o: None), (object(), lambda m, a, o: None)]):
            pass
    assert _n_hooks(lin, pair) == 0


def test_backbone_hooks_method_is_the_toolkit(tiny_w2v2_dir):
    import warnings

    from src.backbones.hf import HFBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = HFBackbone(str(tiny_w2v2_dir), attn_implementation="eager")
    layer = bb.layer_modules()[0]
    bb.encode([torch.zeros(4000)])  # transformers installs its own output recorders on the first forward
    before = _n_hooks(layer)
    with pytest.raises(RuntimeError, match="stop"):
        with bb.hooks([(layer, lambda m, a, o: (_ for _ in ()).throw(RuntimeError("stop")))]):
            bb.encode([torch.zeros(4000)])
    assert _n_hooks(layer) == before

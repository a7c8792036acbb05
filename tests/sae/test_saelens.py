"""Round trip through sae-lens (PyPI ``sae-lens``): our saved folders load with ``sae_lens.SAE.load_from_disk``
as its own classes, and its forward pass on raw activations equals ours (encode, decode, the JumpReLU
threshold, TopK) on the same weights. Skipped when sae_lens is not importable."""

from __future__ import annotations

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from src.sae import save_sae  # noqa: E402
from tests.sae.helpers import make  # noqa: E402

CLASSES = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "jumprelu": "JumpReLUSAE"}


@pytest.mark.parametrize("std", [False, True])
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelens_loads_ours_and_computes_the_same(tmp_path, arch, std):
    s = make(arch, d=16, f=48, std=std)
    save_sae(s, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(theirs).__name__ == CLASSES[arch]
    assert (theirs.cfg.d_in, theirs.cfg.d_sae) == (16, 48)
    assert theirs.cfg.metadata.hook_name == "2"
    if arch == "topk":
        assert theirs.cfg.k == 4
    x = torch.randn(64, 16) * 2 + 0.5
    z_ours = s.encode(s.normalize(x))
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        xh_theirs = theirs.decode(z_theirs)
    torch.testing.assert_close(z_theirs, z_ours.detach(), rtol=1e-4, atol=1e-4)
    assert ((z_theirs > 0) == (z_ours > 0)).float().mean() > 0.999  # the same active set (threshold / top-k)
    if arch == "topk":
        assert ((z_theirs > 0).sum(1) <= 4).all()
    torch.testing.assert_close(xh_theirs, s.denormalize(s(s.normalize(x))).detach(), rtol=1e-4, atol=1e-4)

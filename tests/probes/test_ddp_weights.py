"""DDP shares of uneven global batches: the ranks' weighted losses average to the batch mean loss."""

from __future__ import annotations

import torch

from src.probes.data import GlobalBatchSampler, ProbeDataset, RankShare
from src.probes.linear import LinearProbe


def _grads(probe, batch):
    probe.zero_grad()
    probe.training_step(batch, 0).backward()
    return [p.grad.detach().clone() for p in probe.parameters()]


def test_two_rank_shares_of_uneven_batches_give_the_one_process_gradient(monkeypatch):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 2, 5, generator=g), torch.randint(0, 3, (23,), generator=g)
    probe = LinearProbe(num_layers=2, dim=5, num_outputs=3).double()
    monkeypatch.setattr(probe, "log", lambda *a, **k: None)
    ds = ProbeDataset(x.double(), y)
    one = list(GlobalBatchSampler(23, 7, rank=0, world=1))  # batches of 7, 7, 7, 2
    shares = [list(GlobalBatchSampler(23, 7, rank=r, world=3, pad=True)) for r in range(3)]
    assert [len(b) for b in one] == [7, 7, 7, 2] and all(isinstance(s[0], RankShare) for s in shares)
    for k, batch in enumerate(one):
        # literal reference: the gradient of the batch's mean cross-entropy summed over heads
        probe.zero_grad()
        out = probe(x[batch].double())  # (B, H, C)
        ref_loss = sum(torch.nn.functional.cross_entropy(out[:, h], y[batch]) for h in range(2))
        ref_loss.backward()
        ref = [p.grad.detach().clone() for p in probe.parameters()]
        per_rank = [_grads(probe, ds.__getitems__(s[k])) for s in shares]  # rank 2 of the last batch: weight 0
        ddp = [sum(gr[i] for gr in per_rank) / 3 for i in range(len(ref))]  # DDP averages the ranks' gradients
        for a, b in zip(ddp, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert shares[2][-1].weights == [0.0]  # a rank without an item of the last batch repeats one, weighted 0

"""TopK training on the selected latents only (`SAEModule._topk_sparse_losses`, `SAE.pre_acts_at`,
`SAE.decode_sparse`) against a literal dense reference written here: the same losses, parts, firing record
and gradients of every parameter (float64, to 1e-10), with dead latents (aux-k on, both when it chooses
among the dead and when it takes them all), without, with tied and negative pre-activations and with
zero-weight (padding) items; and a short training run with each path ending at the same FVU and L0."""

from __future__ import annotations

import math

import pytest
import torch

from src.sae.model import topk_indices
from src.sae.train import SAEModule, SAETrainConfig, evaluate, fit_saes
from tests.sae.conftest import stream_of, trainer_factory

pytestmark = pytest.mark.usefixtures("one_thread")

B, D, F, K = 64, 16, 48, 4
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def select(pre, k, ties=False):
    """torch.topk's indices of the k largest per row. ``ties``: where values tie at the k-th place the module's
    selection (`topk_indices`) may keep the other tied latent (torch.topk's tie order is unspecified; the two
    differ in the loss when the tied latents' decoder rows differ), so its indices are taken instead, after
    checking they are a top-k of ``pre`` as well: distinct, and the same multiset of values as torch.topk's."""
    top = torch.topk(pre, k, dim=1)
    if not ties:
        return top.indices
    idx = topk_indices(pre, k)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()
    assert torch.equal(pre.gather(1, idx).sort(1).values, top.values.sort(1).values)
    return idx


def reference(s, x, w, dead, aux_k, aux_coefficient, ties=False):
    """The dense maths, literally: top-k by torch.topk + scatter, ``z @ W_dec``, aux-k over the -inf-masked
    pre-activations of the dead latents; autograd does the rest. Returns (loss, parts, fired (F,) bool).
    ``ties``: the top-k tie-break is the module's (`select`)."""
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    idx = select(pre.detach(), K, ties)
    z = torch.zeros_like(pre).scatter(1, idx, torch.relu(pre.gather(1, idx)))
    err = x - (z @ s.W_dec + s.b_dec)
    mse = (err**2).sum(1)
    aux = torch.zeros_like(mse)
    n_dead = int(dead.sum())
    if n_dead:
        scale = min(n_dead / aux_k, 1.0)
        p = torch.where(dead[None, :], pre, torch.full_like(pre, -math.inf))
        ta = torch.topk(p, min(aux_k, n_dead), dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, ta.indices, torch.relu(ta.values))
        aux = aux_coefficient * scale * ((err.detach() - z_aux @ s.W_dec) ** 2).sum(1)
    loss = (w * (mse + aux)).sum()
    parts = {"mse": (w * mse).sum(), "penalty": torch.zeros((), dtype=x.dtype), "aux": (w * aux).sum(),
             "l0": (w * (z > 0).sum(1)).sum()}  # fmt: skip
    fired = ((z > 0) & (w > 0)[:, None]).any(0)
    return loss, {k: v.detach() for k, v in parts.items()}, fired


def module_of(n_dead: int, aux_k: int, seed: int = 0) -> SAEModule:
    """A one-layer float64 TopK module with generic weights (encoder not the decoder's transpose, biases
    nonzero, decoder rows not unit) and ``n_dead`` latents past ``dead_after_frames``."""
    cfg = SAETrainConfig(
        architecture="topk", d_sae=F, k=K, aux_k=aux_k, dead_after_frames=100, standardize=False
    )
    m = SAEModule(cfg, D, ["0"], total_steps=10).double().train()
    g = torch.Generator().manual_seed(seed)
    s = m.saes[0]
    with torch.no_grad():
        s.W_enc.copy_(torch.randn(D, F, generator=g, dtype=torch.float64) / 3)
        s.b_enc.copy_(torch.randn(F, generator=g, dtype=torch.float64) * 0.3)
        s.W_dec.mul_(torch.rand(F, 1, generator=g, dtype=torch.float64) + 0.5)
        s.b_dec.copy_(torch.randn(D, generator=g, dtype=torch.float64) * 0.2)
        dead = torch.randperm(F, generator=g)[:n_dead]
        m.since_fired[0, dead] = 101
        m.since_fired[0, torch.randperm(F, generator=g)[:5]] += 100  # live but not firing lately: not dead
    return m


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.full((B,), 1.0 / B, dtype=torch.float64)
    w[-3:] = 0.0  # padding items of a DDP share: weighted 0, never fire
    return x, w


def compare(m: SAEModule, x: torch.Tensor, w: torch.Tensor, ties: bool = False) -> dict[str, float]:
    """Sparse path vs the reference (and the module's own dense path): asserts, returns the max differences."""
    s = m.saes[0]
    dead = m.since_fired[0] > m.cfg.dead_after_frames
    since0 = m.since_fired.clone()
    loss_r, parts_r, fired_r = reference(s, x, w, dead, m.cfg.aux_k, m.cfg.aux_coefficient, ties)
    grads_r = torch.autograd.grad(loss_r, [getattr(s, p) for p in PARAMS])
    out = {}
    for sparse in (True, False):
        m.since_fired.copy_(since0)
        m._sparse_topk = sparse
        ((loss, parts),) = m.layer_losses(x[:, None], w, B)
        grads = torch.autograd.grad(loss, [getattr(s, p) for p in PARAMS])
        tag = "sparse" if sparse else "dense"
        out[f"{tag}_loss"] = float((loss - loss_r).detach().abs())
        torch.testing.assert_close(loss, loss_r, rtol=0, atol=1e-10)
        for k in parts_r:
            out[f"{tag}_{k}"] = float((parts[k] - parts_r[k]).abs())
            torch.testing.assert_close(parts[k].double(), parts_r[k].double(), rtol=0, atol=1e-10, msg=k)
        for p, a, b in zip(PARAMS, grads, grads_r):
            out[f"{tag}_d{p}"] = float((a - b).abs().max())
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"{tag} gradient of {p}")
        expect = torch.where(fired_r, 0, since0[0] + B)
        assert torch.equal(m.since_fired[0], expect), f"{tag} firing record"
    del m._sparse_topk
    return out


@pytest.mark.parametrize(
    ("n_dead", "aux_k"), [(12, 6), (5, 8), (0, 8)], ids=["choose-dead", "all-dead", "no-dead"]
)
def test_sparse_equals_dense_reference(n_dead, aux_k):
    m = module_of(n_dead, aux_k)
    since0 = m.since_fired.clone()
    x, w = inputs()
    diffs = compare(m, x, w)
    print(n_dead, aux_k, {k: f"{v:.1e}" for k, v in diffs.items() if k.startswith("sparse")})
    # the test has teeth: the gradients are not all zero and the aux-k term counts when latents are dead
    m.since_fired.copy_(since0)
    ((loss, parts),) = m.layer_losses(x[:, None], w, B)
    assert (parts["aux"] > 0) == (n_dead > 0)
    assert all(
        float(g.abs().max()) > 1e-3
        for g in torch.autograd.grad(loss, [getattr(m.saes[0], p) for p in PARAMS])
    )


@pytest.mark.parametrize("case", ["positive-tie", "zero-and-negative-tie"])
def test_ties_and_negative_pre_activations(case):
    """Latents 0 and 1 are copies (tied pre-activations in every row). Rows 0-7 are ``x = b_dec``, so their
    pre-activations are ``b_enc`` exactly: latents 8, 7 at 0.3, 0.25, then either latent 5 at 0.2 and the tie
    0 = 1 at 0.1 for the last of the k = 4 places (positive-tie), or latent 5 at exactly 0 and the tie at -0.05
    (zero-and-negative-tie: two selected latents through ReLU to 0, not fired, no gradient). The other
    latents' biases are -3 or lower, so the random rows select negative pre-activations too."""
    m = module_of(n_dead=10, aux_k=6, seed=2)
    s = m.saes[0]
    x, w = inputs(3)
    with torch.no_grad():
        s.W_enc[:, 1] = s.W_enc[:, 0]
        s.b_enc.copy_(-3 - torch.rand(F, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
        s.b_enc[[8, 7]] = torch.tensor([0.3, 0.25], dtype=torch.float64)
        s.b_enc[5], s.b_enc[[0, 1]] = (0.2, 0.1) if case == "positive-tie" else (0.0, -0.05)
        x[:8] = s.b_dec
    top = torch.topk(s.pre_acts(x).detach(), K, dim=1)
    assert ((top.indices[:8] == 0) ^ (top.indices[:8] == 1)).any(1).all()  # one of the tied pair, per row
    if case == "positive-tie":
        assert (top.values[:8] > 0).all()
    else:
        assert (top.values[:8] == 0).any(1).all() and (top.values[:8] < 0).any(1).all()
    assert (top.values[8:] < 0).any()  # negative selections in random rows as well
    compare(m, x, w, ties=True)


def test_mutations_are_caught(monkeypatch):
    """The comparison fails when the sparse path loses a piece: the aux-k term, or b_dec's gradient
    through the encoder (``x - b_dec``)."""
    import src.sae.model as model_mod
    import src.sae.train as train_mod

    x, w = inputs()
    real = model_mod.SAE.pre_acts_at

    def no_b_dec(self, x_, idx, pre=None, bags=None, xc=None):  # the encoder's input without b_dec's gradient
        return model_mod._SelectedPreActs.apply(
            pre.detach(), idx, x_, (x_ - self.b_dec).detach(), self.b_dec.detach(), self.W_enc, self.b_enc
        )

    monkeypatch.setattr(model_mod.SAE, "pre_acts_at", no_b_dec)
    with pytest.raises(AssertionError, match="b_dec"):
        compare(module_of(12, 6), x, w)
    monkeypatch.setattr(model_mod.SAE, "pre_acts_at", real)
    monkeypatch.setattr(train_mod.SAEModule, "_aux_setup", lambda self, j, s: None)
    with pytest.raises(AssertionError):
        compare(module_of(12, 6), x, w)


# Training: 40 steps of batch 256 on dict_cache (2 layers of 64 dims, 3 of 48 atoms per frame), d_sae 96,
# k 4, lr 1e-2, dead after 1,024 frames (aux-k on from step 5: 6 and 1 latents dead at the end), float32.
# The paths round differently (a weighted sum of k rows vs a dense product), which could swap a near-tied
# selection and let the trajectories part; measured on this machine (seeds 0-3): |FVU_sparse - FVU_dense|
# at most 1.5e-9 (FVU 0.14, weights within 1.2e-7), L0 identical (4.0). Tolerances: FVU 1e-8 absolute,
# about 7x the largest drift; L0 1e-6 (identical so far).
FVU_TOL, L0_TOL = 1e-8, 1e-6


def test_training_run_sparse_vs_dense(dict_cache, monkeypatch):
    path = dict_cache[0]
    cfg = dict(architecture="topk", d_sae=96, k=4, batch_size=256, max_steps=40, lr=1e-2, warmup_steps=5,
               dead_after_frames=1024, init_frames=1024)  # fmt: skip
    rows = {}
    for sparse in (True, False):
        monkeypatch.setattr(SAEModule, "_sparse_topk", sparse)
        m = fit_saes(stream_of(path), SAETrainConfig(**cfg), trainer_factory())
        assert int(m.trainer.global_step) == 40
        assert (m.since_fired > 1024).any()  # aux-k was on
        rows[sparse] = evaluate(m.export(), stream_of(path))
    for a, b in zip(rows[True], rows[False]):
        print(
            f"layer {a['layer_name']}: fvu sparse {a['fvu']:.7f} dense {b['fvu']:.7f}, l0 {a['l0']:.3f} {b['l0']:.3f}"
        )
        assert a["fvu"] < 0.5  # it trained
        assert abs(a["fvu"] - b["fvu"]) < FVU_TOL, (a, b)
        assert abs(a["l0"] - b["l0"]) < L0_TOL, (a, b)


@pytest.mark.parametrize("x_grad", [False, True])
def test_selected_pre_acts_gradients_against_autograd(x_grad):
    """`SAE.pre_acts_at`'s hand-written backward (``d b_dec = -W_enc @ d b_enc``; ``d x`` only when x needs it)
    equals autograd through the dense ``((x - b_dec) @ W_enc + b_enc).gather(1, idx)``, float64, with a latent
    repeated within a row."""
    s = module_of(0, 6).saes[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    idx = torch.randint(0, F, (B, 5), generator=g)
    idx[:, 4] = idx[:, 0]  # a repeated pair: its gradients add
    up = torch.randn(B, 5, generator=g, dtype=torch.float64)
    grads = []
    for sparse in (True, False):
        xs = x.clone().requires_grad_(x_grad)
        for p in s.parameters():
            p.grad = None
        if sparse:
            out = s.pre_acts_at(xs, idx)
        else:
            out = ((xs - s.b_dec) @ s.W_enc + s.b_enc).gather(1, idx)
        (out * up).sum().backward()
        grads.append({"x": xs.grad, **{n: getattr(s, n).grad.clone() for n in ("W_enc", "b_enc", "b_dec")}})
    assert (grads[0]["x"] is None) == (not x_grad)
    for name, ref in grads[1].items():
        if ref is None:
            continue
        torch.testing.assert_close(grads[0][name], ref, rtol=1e-12, atol=1e-12, msg=name)

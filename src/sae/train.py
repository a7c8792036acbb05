"""Lightning training of one SAE per layer in a single pass over the frame stream.

`SAEModule` holds the SAEs (one per layer of the stream); ``training_step`` gets ``(x (b, L, D), w (b,),
B)`` from `SAEBatches` and sums each layer's weighted loss ``sum_i w_i * l_i`` (``w = 1/B`` in one
process, ``W/B`` on a DDP rank's share of a global batch: DDP's gradient average is then the one-process
batch mean). One Adam over every SAE: Adam is per-parameter, so a layer's SAE does not depend on the
others. Batch-level quantities are reduced over ranks so DDP reproduces one process: the BatchTopK
selection (the global ``k * B``-th largest activation), its inference-threshold estimate, and the
firing record that decides which latents are dead.

Per-item losses (``x`` in the SAE's space; ``e = x - x_hat``):
- all: ``||e||^2`` (sum over dimensions);
- ``relu``: ``+ l1_coefficient * sum_f z_f * ||W_dec[f]||`` (the decoder norm folded into the penalty,
  Anthropic's April 2024 update; decoder rows are not renormalised), coefficient warmed up linearly
  over ``l1_warmup_steps``;
- ``topk``/``batchtopk``: ``+ aux_coefficient * ||e - e_aux||^2`` (Gao et al. 2024 auxiliary-k: the top
  ``aux_k`` pre-activations among dead latents reconstruct the error; dead = not fired over the last
  ``dead_after_frames`` frames); decoder rows kept at unit norm (gradient component along a row removed
  before the step, rows renormalised after it);
- ``jumprelu``: ``+ l0_coefficient * sum_f H(pre_f - theta_f)`` with straight-through gradients to the
  threshold through a rectangle kernel of width ``bandwidth`` (Rajamanoharan et al. 2024); unit decoder rows.
TopK computes on its selected latents only (`SAEModule._topk_sparse_losses`): ``pre`` is computed densely,
without grad, only to choose each row's k latents (and k_aux dead ones); the chosen pre-activations are
taken from it with a backward that sends gradients to ``W_enc``, ``b_enc``, ``b_dec`` through these entries
alone (`SAE.pre_acts_at`), and both decodes are sums of k (k_aux) decoder rows (`SAE.decode_sparse`,
`sparse_rows`). A top-k/ReLU selection has zero gradient elsewhere, so losses and gradients are those of
the dense maths (tests/sae/test_sparse_train.py, float64 to 1e-10), with one (B, D) x (D, F) product per
step and layer instead of about nine. ReLU, BatchTopK and JumpReLU train densely.
Learning rate: linear warm-up over ``warmup_steps``, constant, linear decay to 0 over the last
``decay_fraction`` of the steps. ``b_dec`` starts at the geometric median (or mean) of a sample of
training frames. A non-finite loss stops training with an `SAETrainingError` naming step and layer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import lightning as L
import torch
from torch import Tensor, nn

from src.sae.data import SAEBatches, collate
from src.sae.model import SAE, LatentBags, SAEConfigError, sparse_rows, topk_indices

log = logging.getLogger(__name__)


class SAETrainingError(RuntimeError):
    """Training that cannot go on (a non-finite loss: names the step and the layer)."""


@dataclass
class SAETrainConfig:
    """Options of SAE training (``sae.*`` in conf/sae/*.yaml; docs/sae.md)."""

    architecture: str = "topk"
    expansion_factor: int = 8
    d_sae: int | None = None  # overrides expansion_factor
    k: int | None = 32
    l1_coefficient: float = 5.0
    l1_warmup_steps: int = 0
    decoder_norm: str = "auto"  # auto (relu: penalty, others: unit) | unit | penalty
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    aux_k: int | None = None  # None: d_in // 2
    aux_coefficient: float = 1 / 32
    dead_after_frames: int = 100_000
    batchtopk_threshold_lr: float = 0.01
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    batch_size: int = 1024
    epochs: int = 1
    max_steps: int | None = None
    standardize: bool = True
    b_dec_init: str = "geometric_median"  # geometric_median | mean | zeros
    init_frames: int = 8192
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> SAETrainConfig:
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise SAEConfigError(f"unknown sae training option(s) {bad}; known: {sorted(names)}")
        d = dict(d)
        if "adam_betas" in d and d["adam_betas"] is not None:
            d["adam_betas"] = tuple(float(b) for b in d["adam_betas"])
        return cls(**d)

    def validate(self) -> None:
        from src.sae.model import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            raise SAEConfigError(
                f"sae.architecture={self.architecture!r}: choose from {', '.join(ARCHITECTURES)}"
            )
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise SAEConfigError(
                f"sae.b_dec_init={self.b_dec_init!r}: choose geometric_median, mean or zeros"
            )
        for key in ("lr", "batch_size", "expansion_factor"):
            if not getattr(self, key) > 0:
                raise SAEConfigError(f"sae.{key}={getattr(self, key)!r}: must be positive")
        if self.decoder_norm not in ("auto", "unit", "penalty"):
            raise SAEConfigError(f"sae.decoder_norm={self.decoder_norm!r}: choose auto, unit or penalty")
        if not 0 <= self.decay_fraction <= 1:
            raise SAEConfigError(f"sae.decay_fraction={self.decay_fraction}: must be in [0, 1]")


# ----------------------------------------------------------------------------- helpers
def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's algorithm on the rows of ``x`` (N, D) in float64 -> (D,)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        d = (x - y).norm(dim=1).clamp_min(eps)
        w = 1 / d
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < 1e-7 * (1 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.float()


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: Tensor, op: str) -> Tensor:
    if _dist():
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
               "min": torch.distributed.ReduceOp.MIN}  # fmt: skip
        torch.distributed.all_reduce(t, op=ops[op])
    return t


def _all_gather_cat(t: Tensor) -> Tensor:
    if not _dist():
        return t
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t)
    return torch.cat(out)


class _JumpReLU(torch.autograd.Function):
    """``x * (x > theta)``; d/dtheta through a rectangle kernel of width ``bw`` (straight-through)."""

    @staticmethod
    def forward(ctx, x, theta, bw):
        ctx.save_for_backward(x, theta)
        ctx.bw = bw
        return x * (x > theta)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        bw = ctx.bw
        gx = (x > theta) * g
        k = ((x - theta).abs() < bw / 2).to(x.dtype) / bw
        gt = (-(theta / 1.0) * k * g).sum(0)
        return gx, gt, None


class _Step(torch.autograd.Function):
    """``H(x - theta)``; d/dtheta = ``-K((x - theta) / bw) / bw`` (rectangle kernel)."""

    @staticmethod
    def forward(ctx, x, theta, bw):
        ctx.save_for_backward(x, theta)
        ctx.bw = bw
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        bw = ctx.bw
        k = ((x - theta).abs() < bw / 2).to(x.dtype) / bw
        return torch.zeros_like(x), (-k * g).sum(0), None


def lr_lambda(warmup: int, total: int, decay_fraction: float):
    """Linear warm-up over ``warmup`` steps, constant, linear decay to 0 over the last ``decay_fraction``."""
    decay_start = total - int(round(decay_fraction * total))

    def f(step: int) -> float:
        m = 1.0
        if warmup > 0 and step < warmup:
            m = (step + 1) / warmup
        if decay_fraction > 0 and step >= decay_start and total > decay_start:
            m = min(m, max(0.0, (total - step) / (total - decay_start)))
        return m

    return f


class _ResumableLoader(torch.utils.data.DataLoader):
    """The training loader. Mid-epoch resumption is done by `SAEModule` (the checkpoint records the batches
    done in the epoch and `SAEBatches.skip` passes over them); these methods tell Lightning so."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ----------------------------------------------------------------------------- the module
class SAEModule(L.LightningModule):
    """One SAE per layer (``layer_names``), trained together from one stream.

    Args:
        cfg: `SAETrainConfig`.
        d_in: input width; layer_names: the SAEs' layers (cache names); total_steps: for the schedule.
        mean, std: ``(L, D)`` standardisation statistics (None: raw activations).
        metas: per-layer metadata given to each SAE (backbone record, cache key, ...).
        train_data: the training `SAEBatches` (its ``epoch_fn`` is bound to the trainer here).
    """

    # TopK trains on its selected latents only (`_topk_sparse_losses`); False forces the dense path (tests
    # and bench/sae.py compare the two). Only TopK: its selection is a fixed k per row, an (n, k) index
    # matrix; BatchTopK's (a global threshold: ragged rows) and JumpReLU's straight-through threshold
    # gradients, which need every pre-activation near the threshold, stay dense, as does ReLU (not sparse).
    _sparse_topk: bool = True

    def __init__(self, cfg: SAETrainConfig, d_in: int, layer_names: list[str], total_steps: int,
                 mean: Tensor | None = None, std: Tensor | None = None, metas: list[dict] | None = None,
                 train_data: SAEBatches | None = None) -> None:  # fmt: skip
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.layer_names = [str(n) for n in layer_names]
        self.total_steps = max(1, int(total_steps))
        d_sae = int(cfg.d_sae) if cfg.d_sae else int(cfg.expansion_factor) * int(d_in)
        self.saes = nn.ModuleList()
        for j, name in enumerate(self.layer_names):
            meta = dict((metas or [{}] * len(self.layer_names))[j])
            meta["layer_name"] = name
            if mean is not None:
                meta["norm_mean"], meta["norm_std"] = mean[j].tolist(), std[j].tolist()
            else:
                meta["norm_mean"], meta["norm_std"] = None, None
            meta["training"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
            self.saes.append(SAE(d_in, d_sae, cfg.architecture, k=cfg.k, meta=meta, seed=cfg.seed * 1000 + j,
                                 jumprelu_init_threshold=cfg.jumprelu_init_threshold))  # fmt: skip
        L_ = len(self.layer_names)
        self.register_buffer("mean", mean.clone().float() if mean is not None else torch.zeros(L_, d_in))
        self.register_buffer("std", std.clone().float() if std is not None else torch.ones(L_, d_in))
        self.standardized = mean is not None
        self.register_buffer("since_fired", torch.zeros(L_, d_sae, dtype=torch.int64))
        self.unit_decoder = cfg.decoder_norm == "unit" or (
            cfg.decoder_norm == "auto" and cfg.architecture != "relu"
        )
        self.train_data = train_data
        self._epoch_batches = 0
        self._resume_skip: int | None = None
        if self.unit_decoder:
            for s in self.saes:
                s.normalize_decoder()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_b_dec(self, sample: Tensor) -> None:
        """``b_dec`` of each SAE from a sample ``(n, L, D)`` of raw training frames."""
        if self.cfg.b_dec_init == "zeros" or len(sample) == 0:
            return
        for j, s in enumerate(self.saes):
            x = self.to_space(sample[:, j].to(self.mean.device), j)
            s.b_dec.copy_(geometric_median(x) if self.cfg.b_dec_init == "geometric_median" else x.mean(0))

    def to_space(self, x: Tensor, j: int) -> Tensor:
        return (x - self.mean[j]) / self.std[j] if self.standardized else x

    # ------------------------------------------------------------------ losses
    def _encode_train(self, j: int, s: SAE, x: Tensor, w: Tensor, B: int) -> tuple[Tensor, Tensor, Tensor]:
        """Latents with the training rule, pre-activations, extra per-item penalty (n,)."""
        cfg = self.cfg
        pre = s.pre_acts(x)
        extra = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if s.architecture == "relu":
            z = torch.relu(pre)
            coef = cfg.l1_coefficient
            if cfg.l1_warmup_steps > 0:
                coef *= min(1.0, (self.global_step + 1) / cfg.l1_warmup_steps)
            extra = coef * (z.sum(1) if self.unit_decoder else (z * s.W_dec.norm(dim=1)).sum(1))
        elif s.architecture == "topk":
            from src.sae.model import topk_acts

            z = topk_acts(pre, s.k)
        elif s.architecture == "batchtopk":
            acts = torch.relu(pre) * (w > 0)[:, None]  # zero-weight (padding) items select nothing
            m = s.k * int(B)
            flat = acts.detach().reshape(-1)
            top = torch.topk(flat, min(m, flat.numel())).values
            if len(top) < m:
                top = torch.cat([top, torch.full((m - len(top),), -1.0, dtype=top.dtype, device=top.device)])
            allv = _all_gather_cat(top)
            kth = torch.topk(allv, m).values[-1]
            z = acts * ((acts >= kth) & (acts > 0))
            with torch.no_grad():
                pos = z[z > 0]
                mn = (
                    pos.min().double()
                    if pos.numel()
                    else torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
                )
                mn = _all_reduce(mn.reshape(1).clone(), "min")[0]
                if torch.isfinite(mn):
                    th = s.topk_threshold
                    th.copy_(mn if float(th) < 0 else th + cfg.batchtopk_threshold_lr * (mn - th))
        else:  # jumprelu
            theta = s.log_threshold.exp()
            z = _JumpReLU.apply(torch.relu(pre), theta, cfg.jumprelu_bandwidth)
            extra = cfg.l0_coefficient * _Step.apply(pre, theta, cfg.jumprelu_bandwidth).sum(1)
        return z, pre, extra

    def _aux_setup(self, j: int, s: SAE) -> tuple[Tensor, int, float] | None:
        """The auxiliary-k selection of layer ``j``: (dead mask (F,), latents per row, loss scale), or None
        when no latent is dead or the architecture has no auxiliary loss."""
        dead = self.since_fired[j] > self.cfg.dead_after_frames
        n_dead = int(dead.sum())
        if n_dead == 0 or s.architecture not in ("topk", "batchtopk"):
            return None
        k_aux = self.cfg.aux_k or max(1, s.d_in // 2)
        return dead, min(k_aux, n_dead), min(n_dead / k_aux, 1.0)

    def _aux_loss(self, j: int, s: SAE, pre: Tensor, err: Tensor) -> Tensor:
        """Per-item auxiliary-k loss (n,) over dead latents (zeros when none are dead)."""
        setup = self._aux_setup(j, s)
        if setup is None:
            return torch.zeros(len(pre), dtype=pre.dtype, device=pre.device)
        dead, k_aux, scale = setup
        p = torch.where(dead[None, :], pre, torch.full_like(pre, -math.inf))
        from src.sae.model import topk_acts

        z_aux = topk_acts(p, k_aux)
        e_hat = z_aux @ s.W_dec
        return self.cfg.aux_coefficient * scale * ((err.detach() - e_hat) ** 2).sum(1)

    def _topk_sparse_losses(self, j: int, s: SAE, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """TopK's per-item mse and aux losses (n,) computed on the selected latents only, and the
        selection: (mse, aux, idx (n, k), vals (n, k)) with ``z[r, idx[r, i]] = vals[r, i]``, 0 elsewhere.

        The same losses and gradients as the dense path (`_encode_train`, ``decode``, `_aux_loss`): the
        pre-activations are computed densely without grad, only to choose the latents; a top-k/ReLU
        selection has zero gradient outside the chosen entries, so the chosen pre-activations
        (`SAE.pre_acts_at`, gradients to W_enc, b_enc, b_dec through them alone) and the sparse decodes
        (`SAE.decode_sparse`) carry the whole gradient, at n*k*D (n*k_aux*D) work instead of n*F*D for each
        of the eight other dense products of the dense path."""
        with torch.no_grad():
            xc = x - s.b_dec  # formed once: the encoder input of both the dense product and the selected entries
            pre = s.pre_acts(x, xc)
            idx = topk_indices(pre, s.k)  # the selection of `topk_acts`
            setup = self._aux_setup(j, s)
            idx_aux = None
            if setup is not None:
                dead, k_aux, scale = setup
                dead_idx = dead.nonzero().squeeze(1)
                if k_aux == len(dead_idx):  # every dead latent, in every row: no selection to make
                    idx_aux = dead_idx.expand(len(x), k_aux).contiguous()
                else:  # the k_aux largest among the dead columns (the dense path's -inf mask, narrowed;
                    # only an exact tie at the k_aux-th place could be broken the other way)
                    idx_aux = dead_idx[topk_indices(pre[:, dead_idx], k_aux)]
        # each selection's latent grouping (one sort) serves the encoder's d W (one backward for both
        # selections, a column block each) and its own decoder's d W
        bags = LatentBags(idx, s.d_sae)
        bags_aux = None if idx_aux is None else LatentBags(idx_aux, s.d_sae)
        both = idx if idx_aux is None else torch.cat([idx, idx_aux], 1)
        sel = s.pre_acts_at(x, both, pre, bags if idx_aux is None else [bags, bags_aux], xc=xc)
        vals = torch.relu(sel[:, : s.k])
        err = x - s.decode_sparse(idx, vals, bags)
        mse = (err**2).sum(1)
        if idx_aux is None:
            aux = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        else:
            e_hat = sparse_rows(idx_aux, torch.relu(sel[:, s.k :]), s.W_dec, bags_aux)  # z_aux @ W_dec
            aux = self.cfg.aux_coefficient * scale * ((err.detach() - e_hat) ** 2).sum(1)
        return mse, aux, idx, vals

    def layer_losses(self, x: Tensor, w: Tensor, B: int) -> list[tuple[Tensor, dict]]:
        """Per layer: the weighted loss and its parts (mse, penalty, aux, l0) -- also updates the firing record."""
        out = []
        w = w.to(x.dtype)
        valid = w > 0
        for j, s in enumerate(self.saes):
            xj = self.to_space(x[:, j], j)
            if s.architecture == "topk" and self._sparse_topk:
                mse, aux, idx, vals = self._topk_sparse_losses(j, s, xj)
                extra = torch.zeros_like(mse)
                with torch.no_grad():
                    on = (vals > 0) & valid[:, None]  # a selected latent whose ReLU is 0 does not fire
                    n_active = (vals > 0).sum(1)
                    fired = torch.zeros(s.d_sae, dtype=torch.int64, device=x.device)
                    fired[idx[on]] = 1
            else:
                z, pre, extra = self._encode_train(j, s, xj, w, B)
                x_hat = s.decode(z)
                err = xj - x_hat
                mse = (err**2).sum(1)
                aux = self._aux_loss(j, s, pre, err)
                with torch.no_grad():
                    n_active = (z > 0).sum(1)
                    fired = ((z > 0) & valid[:, None]).any(0).to(torch.int64)
            loss = (w * (mse + extra + aux)).sum()
            with torch.no_grad():
                fired = _all_reduce(fired, "max").bool()
                if self.training:
                    self.since_fired[j] += int(B)
                    self.since_fired[j][fired] = 0
                parts = {"mse": (w * mse).sum().detach(), "penalty": (w * extra).sum().detach(),
                         "aux": (w * aux).sum().detach(), "l0": (w * n_active).sum().detach()}  # fmt: skip
            out.append((loss, parts))
        return out

    # ------------------------------------------------------------------ Lightning
    def training_step(self, batch, batch_idx):
        x, w, B = batch
        x = x.to(self.device)
        w = w.to(self.device)
        total = 0.0
        for name, (loss, parts) in zip(self.layer_names, self.layer_losses(x, w, int(B))):
            if not torch.isfinite(loss):
                raise SAETrainingError(
                    f"non-finite SAE loss ({float(loss)}) at training step {self.global_step} (epoch "
                    f"{self.current_epoch}, batch {batch_idx}) in the SAE of layer {name!r}: lower sae.lr "
                    f"({self.cfg.lr}) or check the activations of that layer")  # fmt: skip
            total = total + loss
            self.log(f"train/loss/{name}", loss.detach(), on_step=True, on_epoch=False, batch_size=len(x))
            self.log(f"train/l0/{name}", parts["l0"], on_step=True, on_epoch=False, batch_size=len(x))
        self._epoch_batches += 1
        return total

    def on_train_epoch_start(self) -> None:
        if self._resume_skip is None:
            self._epoch_batches = 0
        self._resume_skip = None

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.unit_decoder:
            for s in self.saes:
                s.remove_parallel_grad()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.unit_decoder:  # inside the step: a checkpoint saved after the batch holds unit rows
            for s in self.saes:
                s.normalize_decoder()

    def configure_optimizers(self):
        # fused: Adam's update in one pass over each parameter (torch's own kernel, the same formulas as the
        # default per-op implementation in another rounding order) instead of about ten tensor ops
        opt = torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.adam_betas), fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg.warmup_steps, self.total_steps,
                                                                 self.cfg.decay_fraction))  # fmt: skip
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        if self.train_data is None:
            raise SAETrainingError("SAEModule has no training data (train_data)")
        self.train_data.epoch_fn = lambda: int(self.trainer.current_epoch) if self._trainer is not None else 0
        n = len(self.train_data)
        if self._resume_skip is not None and 0 < self._resume_skip < n:
            self.train_data.skip = self._resume_skip
        return _ResumableLoader(self.train_data, batch_size=None, collate_fn=collate, num_workers=0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sae_epoch_batches"] = int(self._epoch_batches)
        checkpoint["sae_layer_names"] = list(self.layer_names)
        checkpoint["sae_topk_thresholds"] = [float(s.topk_threshold) for s in self.saes]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        names = checkpoint.get("sae_layer_names")
        if names is not None and list(names) != self.layer_names:
            raise SAETrainingError(
                f"checkpoint holds SAEs of layers {names}, this run trains {self.layer_names}"
            )
        self._epoch_batches = int(checkpoint.get("sae_epoch_batches", 0))
        self._resume_skip = self._epoch_batches

    # ------------------------------------------------------------------ export
    def export(self) -> list[SAE]:
        """The trained SAEs (copies on CPU, in eval mode)."""
        import copy

        out = []
        for s in self.saes:
            c = copy.deepcopy(s).cpu().eval()
            c.meta = dict(s.meta)
            out.append(c)
        return out


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(saes: list[SAE], stream, split: str = "val", batch_size: int = 4096, dense_threshold: float = 0.1
             ) -> list[dict]:  # fmt: skip
    """Per SAE (layer): FVU (raw space), L0, dead and dense fractions over every frame of ``split``.

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the split's frames, x raw activations,
    x_hat = denormalize(SAE(normalize(x))). Dead: never active; dense: active on more than
    ``dense_threshold`` of the frames."""
    Lyr = len(saes)
    n = 0
    s1 = torch.zeros(Lyr, saes[0].d_in, dtype=torch.float64)
    s2 = torch.zeros(Lyr, dtype=torch.float64)
    sse = torch.zeros(Lyr, dtype=torch.float64)
    l0 = torch.zeros(Lyr, dtype=torch.float64)
    freq = torch.zeros(Lyr, saes[0].d_sae, dtype=torch.float64)
    for rows in stream.epoch_batches(0, batch_size, split, shuffle=False):
        x = stream.read(rows)  # (b, L, D)
        n += len(x)
        for j, s in enumerate(saes):
            xj = x[:, j]
            z = s.encode(s.normalize(xj))
            xh = s.denormalize(s.decode(z))
            s1[j] += xj.double().sum(0)
            s2[j] += (xj.double() ** 2).sum()
            sse[j] += ((xj - xh).double() ** 2).sum()
            act = z > 0
            l0[j] += act.sum()
            freq[j] += act.sum(0)
    if n == 0:
        raise SAETrainingError(f"no frame in the {split!r} split to evaluate on (raise sae.val_fraction)")
    rows = []
    for j, s in enumerate(saes):
        tss = float(s2[j] - (s1[j] ** 2).sum() / n)
        f = freq[j] / n
        rows.append({"layer_name": s.meta.get("layer_name"), "fvu": float(sse[j]) / tss if tss > 0 else float("nan"),
                     "l0": float(l0[j]) / n, "dead_fraction": float((f == 0).double().mean()),
                     "dense_fraction": float((f > dense_threshold).double().mean()), "frames": n,
                     "d_sae": s.d_sae})  # fmt: skip
    return rows


def fit_saes(stream, cfg: SAETrainConfig, trainer_factory, metas: list[dict] | None = None, ckpt_path: str | None = None,
             reader=None, callbacks=None) -> SAEModule:  # fmt: skip
    """Standardisation statistics and b_dec init from the stream, then ``trainer.fit``; returns the module.

    ``reader``: read rows from memory instead of the cache (`InMemoryFrames`; tests, bench).
    ``trainer_factory(**kw)``: a partial ``lightning.Trainer`` (``max_steps`` and ``callbacks`` are set here)."""
    cfg.validate()
    L.seed_everything(cfg.seed, verbose=False)
    mean = std = None
    if cfg.standardize:
        mean, std = stream.layer_stats(reader=reader)
    data = SAEBatches(stream, cfg.batch_size, "train", shuffle=True, reader=reader)
    per_epoch = len(data)
    total = per_epoch * int(cfg.epochs) if cfg.max_steps is None else int(cfg.max_steps)
    module = SAEModule(cfg, stream.dim, stream.layer_names, total, mean, std, metas, data)
    rows = stream.sample_rows(cfg.init_frames, seed=cfg.seed)
    module.init_b_dec((reader or stream.read)(rows))
    from src.progress import lightning_callback

    bar = lightning_callback(f"SAE training (layers {','.join(stream.layer_names)})")
    trainer = trainer_factory(max_steps=total, max_epochs=max(1, math.ceil(total / per_epoch)),
                              callbacks=[*(callbacks or []), bar])  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return module

"""Centred kernel alignment (CKA) between the layers of a model and reference spaces.

What is compared (``reference``):

- ``None`` (or ``"self"``): every analysed layer with every other one (L x L);
- a backbone config name (``mfcc``, ``logmel``, ``whisper_base``, ``random`` = the analysed
  architecture with random weights, ...): model layers x reference layers. Each model
  frame is paired with the reference frame nearest in time (``aligned_rows``); frame
  counts that differ are reported in ``meta``;
- ``"track:<name>"`` (e.g. ``"track:ema"``): each layer vs the values of an articulatory
  track interpolated at the frame times (``alignment.track_items``); frames without a
  track value are left out and counted;
- a list of the above: one comparison per entry, all in one result.

How (``mode``):

- ``pooled``: one CKA over frames of all utterances, a random subset of at most
  ``max_frames`` pairs (seeded). Linear CKA is computed in feature space by
  ``cka_matrix`` reading the rows chunk-wise, so memory stays ``O(max_frames * D)`` per
  layer read and no frame x frame matrix is formed. RBF CKA needs ``n x n`` Gram
  matrices: it uses at most ``rbf_max_frames`` frames.
- ``per_utterance``: CKA within each utterance (the Gram matrices of its frames), then
  the mean over utterances, as in the tutorial. Utterances with fewer than 4 frames, or
  where a layer is constant, are skipped and counted.
- ``minibatch``: Nguyen et al. (2021) minibatch CKA: the unbiased HSIC accumulated over
  random batches of ``batch_size`` frames that together cover every frame (measure
  ``cka_debiased``; linear kernel only).

Memory at scale (a 100 h cache is far larger than RAM): every mode reads frame rows
through ``src.analyses.base.read_rows``, which releases the memory-mapped pages it touched,
so resident memory does not grow with the cache. ``pooled``: ``O(max_frames)`` indices plus
one chunk of rows; ``per_utterance``: one utterance's Gram matrices at a time;
``minibatch``: ``O(L batch_size^2)`` plus index arrays of about 24 bytes per frame (rows,
utterance, permutation); it visits every frame, so its time is ``O(N batch_size D L)``
(``compute_dtype: float32`` halves it; a smaller ``batch_size`` too).

Rows: ``layer``, ``layer_b`` (the other model layer, or the reference layer; empty for a
one-layer reference such as MFCC or a track, so that those rows draw as a line over
layers), ``reference``, ``metric`` (``cka`` or ``cka_debiased``), ``value``, ``mode``.
Matrices: ``cka_<reference>``, model layers x reference layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    AnalysisResult,
    FramePairs,
    Matrix,
    analysis_layers,
    check_finite,
    frame_pairs,
    layer_names,
    read_rows,
    require,
    safe_name,
    subsample,
)
from src.functional.cka import MinibatchCKA, cka_matrix, hsic, rbf_gram

log = logging.getLogger(__name__)

MODES = ("pooled", "per_utterance", "minibatch")
KERNELS = ("linear", "rbf")
MIN_FRAMES_PER_UTTERANCE = 4  # CKA of 2-3 centred points is degenerate (2 points: always 1)


def reference_list(reference) -> list[str | None]:
    """``reference`` option -> list of entries (``None`` = within the model)."""
    if reference is None or isinstance(reference, str):
        refs = [reference]
    else:
        refs = list(reference)
    out: list[str | None] = []
    for r in refs:
        if r is None or r == "self":
            out.append(None)
        elif isinstance(r, str) and r:
            if r.startswith("track:") and not r[len("track:") :]:
                raise AnalysisError("reference 'track:' needs a track name, e.g. 'track:ema'")
            out.append(r)
        else:
            raise AnalysisError(
                f"reference entries must be null, a backbone config name or 'track:<name>', got {r!r}"
            )
    if not out:
        raise AnalysisError("reference: empty list; give null for layer x layer CKA within the model")
    names = [r or "self" for r in out]
    if len(set(names)) != len(names):
        raise AnalysisError(f"reference lists an entry twice: {names}")
    return out


class _LazyRows:
    """``(n, d)`` array-like whose slices are read on demand: what ``cka_matrix`` reads chunk-wise."""

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], idx: np.ndarray, dim: int) -> None:
        self._read, self._idx = read, idx
        self.shape = (len(idx), int(dim))

    def __getitem__(self, s: slice) -> np.ndarray:
        return self._read(self._idx[s])


def cka_from_grams(
    gx: Sequence[torch.Tensor], gy: Sequence[torch.Tensor] | None, debiased: bool
) -> torch.Tensor:
    """``(L1, L2)`` CKA from Gram matrices (``gy=None``: symmetric, of ``gx``), via ``hsic``.

    Raises ValueError when a Gram matrix has no (unbiased) self-HSIC > 0 (constant features).
    """
    sym = gy is None
    gy = gx if sym else gy
    sx = torch.stack([hsic(k, k, debiased) for k in gx])  # (L1,)
    sy = sx if sym else torch.stack([hsic(k, k, debiased) for k in gy])  # (L2,)
    for name, s in (("x", sx), ("y", sy)):
        bad = torch.nonzero(~(s > 0)).flatten().tolist()
        if bad:
            raise ValueError(f"{name}[{bad[0]}] has constant features (self-HSIC {float(s[bad[0]]):.3g})")
    out = torch.empty(len(gx), len(gy), dtype=torch.float64)  # (L1, L2)
    for i, k in enumerate(gx):
        for j, l in enumerate(gy):
            if sym and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = hsic(k, l, debiased) / torch.sqrt(sx[i] * sy[j])
    return out


class CKA:
    """Layer-wise CKA (Kornblith et al., 2019) within a model or against reference spaces.

    Args:
        layers: analysed layers (``None``: every residual state; ints, negatives, ``first``/``middle``/
            ``last``, ranges, named extra states such as ``final_norm``: :func:`src.layers.resolve_layers`).
            A layer holding inf/NaN raises AnalysisError naming it.
        reference: ``None`` (layer x layer), a backbone config name, ``"track:<name>"``, or a list.
        kernel: ``linear`` or ``rbf`` (bandwidth ``threshold`` x median distance).
        debiased: use the unbiased HSIC estimator (Song et al., 2012; Nguyen et al., 2021).
        mode: ``pooled``, ``per_utterance`` or ``minibatch`` (see the module docstring).
        max_frames: pooled mode: at most this many frame pairs (random, seeded).
        batch_size: minibatch mode: frames per batch.
        seed: subsampling / batching seed (``None``: the run's seed).
        threshold: RBF bandwidth factor.
        rbf_max_frames: pooled RBF: at most this many frames (Gram matrices are n x n).
        compute_dtype: minibatch mode: ``float64`` (default) or ``float32`` Gram products
            (about 2x faster, CKA within about 1e-6; see :class:`src.functional.cka.MinibatchCKA`).
    """

    def __init__(
        self,
        layers: Sequence[int | str] | int | str | None = None,
        reference: str | Sequence[str | None] | None = None,
        kernel: str = "linear",
        debiased: bool = False,
        mode: str = "pooled",
        max_frames: int | None = 50_000,
        batch_size: int = 1024,
        seed: int | None = None,
        threshold: float = 1.0,
        rbf_max_frames: int = 2000,
        compute_dtype: str = "float64",
    ) -> None:
        if compute_dtype not in ("float32", "float64"):
            raise AnalysisError(f"compute_dtype must be float32 or float64, got {compute_dtype!r}")
        if kernel not in KERNELS:
            raise AnalysisError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if mode not in MODES:
            raise AnalysisError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "minibatch" and kernel != "linear":
            raise AnalysisError("mode=minibatch accumulates linear HSIC only: use kernel=linear")
        if int(batch_size) < 4:
            raise AnalysisError(f"batch_size must be at least 4 (unbiased HSIC), got {batch_size}")
        if max_frames is not None and int(max_frames) < 4:
            raise AnalysisError(f"max_frames must be at least 4 (or null for all frames), got {max_frames}")
        if int(rbf_max_frames) < 4:
            raise AnalysisError(f"rbf_max_frames must be at least 4, got {rbf_max_frames}")
        self.layers = layers  # parsed against the cache in run (src.layers.resolve_layers)
        self.references = reference_list(reference)
        self.kernel = kernel
        self.debiased = bool(debiased)
        self.mode = mode
        self.max_frames = None if max_frames is None else int(max_frames)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.threshold = float(threshold)
        self.rbf_max_frames = int(rbf_max_frames)
        self.compute_dtype = compute_dtype

    @property
    def measure(self) -> str:
        return "cka_debiased" if self.debiased or self.mode == "minibatch" else "cka"

    # ------------------------------------------------------------------------------ run

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        acts = ctx.acts
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        seed = ctx.seed if self.seed is None else int(self.seed)
        rows, matrices = [], {}
        meta: dict = {"mode": self.mode, "kernel": self.kernel, "debiased": self.debiased, "layers": layers,
                      "seed": seed, "references": {}}  # fmt: skip
        one_layer_refs = []
        for ref in self.references:
            pairs = frame_pairs(ctx, ref, layers)
            values, info = self._compute(acts, layers, pairs, seed)  # (L, L_ref)
            meta["references"][pairs.name] = {**pairs.counts, **info}
            one_layer = pairs.read_ref is not None and len(pairs.ref_labels) == 1
            if one_layer:
                one_layer_refs.append(pairs.name)
            for i, layer in enumerate(layers):
                for j in range(values.shape[1]):
                    layer_b = None if one_layer else (layers[j] if pairs.read_ref is None else j)
                    rows.append({"layer": layer, "layer_b": layer_b, "reference": pairs.name,
                                 "metric": self.measure, "value": float(values[i, j]), "mode": self.mode})  # fmt: skip
            what = "layers" if pairs.read_ref is None else pairs.name
            matrices[f"cka_{safe_name(pairs.name)}"] = Matrix(
                values, layer_names(acts, layers), pairs.ref_labels,
                title=f"{self.measure} ({self.mode}, {self.kernel}): layers x {what}", vmin=0.0, vmax=1.0,
                quantity=f"{self.measure.upper() if self.measure == 'cka' else self.measure} ({self.kernel})",
                xlabel="layer" if pairs.name == "self" else f"{pairs.name} layer",
            )  # fmt: skip
            log.info("CKA vs %s: %s", pairs.name, np.round(values, 3).tolist())
        return AnalysisResult(
            "cka",
            rows,
            matrices,
            line_plots=[self.measure] if one_layer_refs and len(layers) > 1 else [],
            meta=meta,
        )

    # ------------------------------------------------------------------------------ compute

    def _compute(self, acts, layers: list[int], pairs: FramePairs, seed: int) -> tuple[np.ndarray, dict]:
        n = len(pairs.rows)
        require(n, 4 if self.debiased or self.mode == "minibatch" else 2, f"CKA vs {pairs.name}: frame pairs")

        names = layer_names(acts, layers)

        def read_model(k: int, idx: np.ndarray) -> np.ndarray:
            return check_finite(read_rows(acts.layer(layers[k]), pairs.rows[idx]), f"layer {names[k]}")  # (n, D)

        try:
            if self.mode == "pooled":
                return self._pooled(read_model, len(layers), acts.hidden_size, pairs, seed)
            if self.mode == "per_utterance":
                return self._per_utterance(read_model, len(layers), pairs)
            return self._minibatch(read_model, len(layers), pairs, seed)
        except ValueError as e:
            if isinstance(e, AnalysisError):
                raise
            raise AnalysisError(
                f"CKA of layers {layers} vs {pairs.name} ({self.mode}): {e} (positions in this message "
                f"count the analysed layers {layers} first, then the {len(pairs.ref_labels)} reference layers)"
            ) from e

    def _pooled(
        self, read_model, num: int, dim: int, pairs: FramePairs, seed: int
    ) -> tuple[np.ndarray, dict]:
        n = len(pairs.rows)
        if self.kernel == "linear":
            idx = subsample(n, self.max_frames, seed)
            xs = [_LazyRows(lambda i, k=k: read_model(k, i), idx, dim) for k in range(num)]
            ys = None
            if pairs.read_ref is not None:
                ys = [
                    _LazyRows(lambda i, j=j: pairs.read_ref(j, i), idx, d)
                    for j, d in enumerate(pairs.ref_dims)
                ]
            m = cka_matrix(xs, ys, debiased=self.debiased)  # (L, L_ref)
            return m.numpy(), {"frames_used": len(idx)}
        cap = self.rbf_max_frames if self.max_frames is None else min(self.max_frames, self.rbf_max_frames)
        idx = subsample(n, cap, seed)
        from src.progress import progress

        gx = [
            rbf_gram(read_model(k, idx), self.threshold)
            for k in progress(range(num), desc="rbf grams", unit="gram")
        ]
        gy = None
        if pairs.read_ref is not None:
            gy = [rbf_gram(pairs.read_ref(j, idx), self.threshold) for j in range(len(pairs.ref_dims))]
        return cka_from_grams(gx, gy, self.debiased).numpy(), {"frames_used": len(idx)}

    def _grams(self, xs: list[np.ndarray]) -> list[torch.Tensor]:
        out = []
        for x in xs:
            t = torch.from_numpy(np.asarray(x, dtype=np.float64))
            if self.kernel == "rbf":
                out.append(rbf_gram(t, self.threshold))  # (T, T)
            else:
                t = t - t.mean(0, keepdim=True)  # (T, D) centred
                out.append(t @ t.T)  # (T, T) linear Gram
        return out

    def _per_utterance(self, read_model, num: int, pairs: FramePairs) -> tuple[np.ndarray, dict]:
        from src.progress import progress

        bounds = np.flatnonzero(np.diff(pairs.utt)) + 1
        groups = np.split(np.arange(len(pairs.rows)), bounds)  # pair indices per utterance
        total, used, short, constant, frames = None, 0, 0, 0, 0
        for idx in progress(groups, desc=f"CKA per utterance vs {pairs.name}", unit="utt"):
            if len(idx) < MIN_FRAMES_PER_UTTERANCE:
                short += 1
                continue
            gx = self._grams([read_model(k, idx) for k in range(num)])
            gy = (
                None
                if pairs.read_ref is None
                else self._grams([pairs.read_ref(j, idx) for j in range(len(pairs.ref_dims))])
            )
            try:
                m = cka_from_grams(gx, gy, self.debiased)  # (L, L_ref)
            except ValueError as e:
                constant += 1
                log.debug("utterance %d skipped: %s", int(pairs.utt[idx[0]]), e)
                continue
            total = m if total is None else total + m
            used += 1
            frames += len(idx)
        if used == 0:
            raise AnalysisError(
                f"CKA per utterance vs {pairs.name}: no utterance usable ({short} with fewer than "
                f"{MIN_FRAMES_PER_UTTERANCE} frames, {constant} with a constant layer or reference); "
                "the analysis needs at least 1"
            )
        if short or constant:
            log.warning("CKA vs %s: %d utterances skipped (%d shorter than %d frames, %d constant)",
                        pairs.name, short + constant, short, MIN_FRAMES_PER_UTTERANCE, constant)  # fmt: skip
        info = {"frames_used": frames,
                "utterances_used": used, "utterances_too_short": short, "utterances_constant": constant}  # fmt: skip
        return (total / used).numpy(), info

    def _minibatch(self, read_model, num: int, pairs: FramePairs, seed: int) -> tuple[np.ndarray, dict]:
        from src.progress import progress

        n = len(pairs.rows)
        perm = np.random.default_rng(seed).permutation(n)
        acc = MinibatchCKA(getattr(torch, self.compute_dtype))
        dropped = 0
        for s in progress(range(0, n, self.batch_size), desc=f"minibatch CKA vs {pairs.name}", unit="batch"):
            idx = np.sort(perm[s : s + self.batch_size])  # order within a batch does not change HSIC_1
            if len(idx) < 4:
                dropped += len(idx)
                continue
            xs = [read_model(k, idx) for k in range(num)]
            ys = (
                None
                if pairs.read_ref is None
                else [pairs.read_ref(j, idx) for j in range(len(pairs.ref_dims))]
            )
            acc.update(xs, ys)
        m = acc.compute()  # (L, L_ref)
        return m.numpy(), {"frames_used": n - dropped, "batches": acc.num_batches, "frames_dropped": dropped}

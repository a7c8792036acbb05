"""Faithfulness of a segment attribution: comprehensiveness, sufficiency, AOPC variants, deletion and
insertion curves, each against random segment rankings.

torch + numpy only (no Lightning, Hydra or captum). A model enters as a callable ``f(x) -> scores``
(``x``: ``(B, *shape)``, scores ``(B,)``: a logit, a probability, a token log-prob, ... whatever the
caller chose to explain), an item as its input ``x0`` ``(1, *shape)``, a ``baseline`` of the same shape
(zeros = silence, noise, the features of silence: the *replacement* keeps the input length), and a
segment ``mask`` (long, ``x0``'s shape or broadcastable to it): the segment index of every element, as
``AttributionTarget.feature_mask`` gives it. Elements with a negative index belong to no segment and
are never replaced.

Conventions (one place for all of them):

- **Units.** The segments that are ranked and removed (``units``: e.g. the word segments; silences
  and gaps then stay as they are in every perturbed input). ``m = len(units)``.
- **Ranking.** Units in descending score order; ties keep the lower segment index first (a stable
  sort of ``-score``), so a ranking is a deterministic function of the scores.
- **Comprehensiveness** ``comp(k) = f(x) - f(x with the top-k units replaced by the baseline)``;
  **sufficiency** ``suff(k) = f(x) - f(x with only the top-k units kept, every other unit replaced)``.
  High comprehensiveness and low sufficiency mean a faithful ranking. Units: those of ``f``.
- **Deletion curve** ``D[k] = f(x with the top-k units replaced)``, **insertion curve**
  ``I[k] = f(x with only the top-k units kept)``, ``k = 0..m``, on the normalised axis ``k / m``
  (so ``D[0] = I[m] = f(x)`` and ``D[m] = I[0]`` = everything replaced). Areas by the trapezoid rule on
  ``[0, 1]``: ``sum_k (y[k] + y[k+1]) / 2 / m``. A faithful ranking has a low deletion and a high
  insertion area. Every AOPC below is a function of these two curves (``comp(k) = f(x) - D[k]``,
  ``suff(k) = f(x) - I[k]``), so one item costs at most ``2m`` model evaluations per ranking, and
  replacement sets shared between rankings (random ones included) are evaluated once.
- **AOPC variants** (named, never mixed; ``AOPC_VARIANTS``):

  ``eraser``  DeYoung et al. (2020) bins ``{1, 5, 10, 20, 50}%`` of the ``m`` units:
      ``k_b = min(m, max(1, ceil(b * m)))`` (``b * m`` rounded to 9 decimals before the ceiling, so
      ``0.1 * 30`` is 3, not 4), mean over the five bins (bins that give the same ``k`` on short
      utterances still count once each: the denominator is always 5). The paper's formula divides by
      ``|B| + 1`` with a ``k = 0`` term that is 0 for comprehensiveness; the released scorer averages the
      thresholds it is given, as done here.
  ``all_k``   every ``k = 1..m`` (one word to all), mean over the ``m`` values.
  ``ferret``  ferret's speech evaluator, reproduced exactly (``ferret/evaluators/
      faithfulness_measures_speech.py`` with ``utils_from_soft_to_discrete.py``): for each threshold
      ``p`` in ``numpy.arange(0.1, 1.1, 0.1)``, ``v = int(p * m)`` (``m`` = all units, truncation);
      ``p`` is skipped when ``v == 0``; the rationale is the top-``v`` units **filtered to scores > 0**
      (``only_pos``), so it can be shorter than ``v`` or empty; a rationale equal (as a set) to the
      previous evaluated one is skipped (distinct rationales only); the AOPC is the plain mean over the
      evaluated rationales, and **0** when none was evaluated. An empty rationale is evaluated once
      (comprehensiveness 0; sufficiency = everything removed). See docs/faithfulness.md for why this is a
      poor convention (a variable number of steps, a 0 that means "no information").

- **Random rankings.** Each measure is also computed for ``R`` random rankings of the same item:
  ranking r is ``units[perm_r]``, ``perm_r`` the r-th ``numpy.random.default_rng(seed).permutation(m)``
  (``R`` draws in order), and the method's unit scores, sorted in descending order, are laid along it
  (so the ``ferret`` variant keeps the method's number of positive scores). The rankings depend only on
  the seed and ``m``: with one seed per utterance every method is compared with the *same* random
  rankings (paired), and their curves are evaluated once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AOPC_VARIANTS",
    "ERASER_BINS",
    "FERRET_THRESHOLDS",
    "FaithfulnessError",
    "Curves",
    "PerturbationScorer",
    "aopc",
    "aopc_from_curves",
    "curve_area",
    "eraser_ks",
    "ferret_rationales",
    "comprehensiveness",
    "sufficiency",
    "curves",
    "item_measures",
    "random_rankings",
    "ranking",
    "replace_segments",
    "summarize_over_items",
    "deletion_wer_curve",
    "MEASURES",
    "HIGHER_IS_BETTER",
]

AOPC_VARIANTS = ("eraser", "all_k", "ferret")
ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
FERRET_THRESHOLDS = np.arange(0.1, 1.1, 0.1)  # exactly ferret's parse_evaluator_args default (float steps included)
# measure -> True when a higher value means a more faithful ranking
HIGHER_IS_BETTER = {"comprehensiveness_aopc": True, "sufficiency_aopc": False, "deletion_auc": False,
                    "insertion_auc": True}  # fmt: skip
MEASURES = tuple(HIGHER_IS_BETTER)


class FaithfulnessError(ValueError):
    """Bad input to a faithfulness measure (shapes, segment indices, unknown variant); the message says which."""


# ----------------------------------------------------------------------------- rankings and schedules


def ranking(scores: Any, units: Sequence[int] | None = None) -> np.ndarray:
    """The units in descending score order (ties: lower segment index first). ``scores``: ``(n_segments,)``
    over all segments; ``units``: the segment indices that take part (default: all). Returns segment indices."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise FaithfulnessError(f"scores must be a vector (n_segments,), got shape {s.shape}")
    u = np.arange(len(s)) if units is None else np.asarray(units, dtype=np.int64)
    if len(u) and (u.min() < 0 or u.max() >= len(s)):
        raise FaithfulnessError(f"units {u.tolist()} outside the {len(s)} scored segments")
    if len(np.unique(u)) != len(u):
        raise FaithfulnessError(f"units hold duplicates: {u.tolist()}")
    if not np.isfinite(s[u]).all():
        raise FaithfulnessError(f"scores of units hold non-finite values: {s[u].tolist()}")
    return u[np.argsort(-s[u], kind="stable")]


def eraser_ks(m: int, bins: Sequence[float] = ERASER_BINS) -> list[int]:
    """ERASER's k per bin for ``m`` units: ``min(m, max(1, ceil(b * m)))`` (``b * m`` rounded to 9 decimals)."""
    if m < 1:
        return []
    return [min(m, max(1, math.ceil(round(float(b) * m, 9)))) for b in bins]


def ferret_rationales(scores: Any, thresholds: Sequence[float] = FERRET_THRESHOLDS,
                      only_pos: bool = True) -> list[list[int]]:  # fmt: skip
    """ferret's evaluated rationales (positions into ``scores``), in threshold order, duplicates dropped.

    ``v = int(p * len(scores))``; ``0 < v <= len`` else skipped; top-``v`` by descending score (ties: lower
    position first; ferret's ``argsort()[::-1]`` leaves ties unspecified) filtered to ``score > 0`` when
    ``only_pos``; a rationale equal to the previous evaluated one (as a set) is dropped."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    order = np.argsort(-s, kind="stable")
    out: list[list[int]] = []
    last: set | None = None
    for p in thresholds:
        v = int(p * n)
        if not (0 < v <= n):
            continue
        top = [int(i) for i in order[:v] if (s[i] > 0 or not only_pos)]
        if last is not None and set(top) == last:
            continue
        last = set(top)
        out.append(top)
    return out


def random_rankings(n_units: int, n: int, seed: int) -> np.ndarray:
    """``(n, n_units)`` permutations: row r is ``default_rng(seed)``'s r-th ``permutation(n_units)``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_units) for _ in range(n)]) if n else np.zeros((0, n_units), np.int64)


# ----------------------------------------------------------------------------- perturbation


def _check_item(x0: Tensor, baseline: Tensor, mask: Tensor, n_segments: int) -> Tensor:
    if x0.ndim < 1 or x0.shape[0] != 1:
        raise FaithfulnessError(f"x0 must be (1, *shape) for one item, got {tuple(x0.shape)}")
    if baseline.shape != x0.shape:
        raise FaithfulnessError(f"baseline shape {tuple(baseline.shape)} differs from x0 {tuple(x0.shape)} "
                                "(the replacement keeps the input length)")  # fmt: skip
    if mask.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise FaithfulnessError(f"mask must hold integer segment indices, got {mask.dtype}")
    try:
        mask = mask.expand_as(x0)
    except RuntimeError:
        raise FaithfulnessError(f"mask shape {tuple(mask.shape)} cannot broadcast to x0 {tuple(x0.shape)}") from None
    if mask.numel() and int(mask.max()) >= n_segments:
        raise FaithfulnessError(f"mask holds segment index {int(mask.max())} but there are {n_segments} segments")
    return mask.long()


def replace_segments(x0: Tensor, baseline: Tensor, mask: Tensor, replaced: Any) -> Tensor:
    """Perturbed copies ``(P, *shape)``: element e of copy p is ``baseline`` where ``replaced[p, mask[e]]``,
    else ``x0``. ``replaced``: bool ``(P, n_segments)``; negative mask entries are never replaced."""
    r = torch.as_tensor(np.asarray(replaced, dtype=bool))
    if r.ndim != 2:
        raise FaithfulnessError(f"replaced must be (P, n_segments), got shape {tuple(r.shape)}")
    mask = _check_item(x0, baseline, mask, r.shape[1])
    r = torch.cat([r, torch.zeros(r.shape[0], 1, dtype=torch.bool)], dim=1)  # column -1: no segment
    idx = torch.where(mask[0] < 0, r.shape[1] - 1, mask[0])  # (*shape)
    sel = r[:, idx]  # (P, *shape)
    return torch.where(sel, baseline.to(x0.dtype), x0)  # broadcast (1, *shape) against (P, *shape)


class PerturbationScorer:
    """``f`` on copies of one item with sets of segments replaced; memoised per set, batched.

    ``scorer(sets)`` -> ``(P,)`` float64 scores, ``sets`` an iterable of segment-index collections. Sets not
    seen before are evaluated in batches of ``batch_size`` copies under ``torch.no_grad()``; ``n_evals``
    counts model evaluations (copies), ``full`` is ``f(x0)``.

    ``f`` may also return ``(B, K)``: K targets of one forward (e.g. every head of a classifier); then calls
    return ``(P, K)``, ``full`` is ``(K,)``, and :meth:`output` gives a one-target view (same interface, its
    evaluations shared with the other targets).
    """

    def __init__(self, f: Callable[[Tensor], Tensor], x0: Tensor, baseline: Tensor, mask: Tensor,
                 n_segments: int, batch_size: int = 16) -> None:  # fmt: skip
        if batch_size < 1:
            raise FaithfulnessError(f"batch_size must be >= 1, got {batch_size}")
        self.f, self.x0, self.baseline = f, x0, baseline
        self.mask = _check_item(x0, baseline, mask, n_segments)
        self.n_segments = int(n_segments)
        self.batch_size = int(batch_size)
        self.cache: dict[frozenset, np.ndarray] = {}
        self.n_evals = 0
        self.n_outputs: int | None = None
        full = self([()])[0]
        self.full = float(full) if self.n_outputs is None else full

    def _eval(self, sets: list[frozenset]) -> None:
        for s in range(0, len(sets), self.batch_size):
            chunk = sets[s : s + self.batch_size]
            rep = np.zeros((len(chunk), self.n_segments), dtype=bool)
            for i, c in enumerate(chunk):
                rep[i, list(c)] = True
            x = replace_segments(self.x0, self.baseline, self.mask, rep)  # (P, *shape)
            with torch.no_grad():
                y = self.f(x)
            y = torch.as_tensor(y).detach().double().cpu().numpy()
            if y.ndim not in (1, 2) or y.shape[0] != len(chunk):
                raise FaithfulnessError(f"f returned shape {y.shape} for {len(chunk)} inputs: it must map (B, ...) -> "
                                        "(B,) or (B, K)")  # fmt: skip
            k = None if y.ndim == 1 else y.shape[1]
            if self.cache and k != self.n_outputs:
                raise FaithfulnessError(f"f returned {k} outputs per input, earlier {self.n_outputs}")
            self.n_outputs = k
            self.n_evals += len(chunk)
            for c, v in zip(chunk, y):
                self.cache[c] = v

    def __call__(self, sets) -> np.ndarray:
        keys = [frozenset(int(i) for i in s) for s in sets]
        bad = [sorted(k) for k in keys if k and (min(k) < 0 or max(k) >= self.n_segments)]
        if bad:
            raise FaithfulnessError(f"segment sets {bad[:3]} outside 0..{self.n_segments - 1}")
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            self._eval(todo)
        return np.array([self.cache[k] for k in keys], dtype=np.float64)

    def output(self, j: int) -> _ScorerView:
        """The j-th target of a multi-output ``f`` as a scorer of its own."""
        if self.n_outputs is None or not 0 <= int(j) < self.n_outputs:
            raise FaithfulnessError(f"output {j}: f has {self.n_outputs or 1} output(s) per input")
        return _ScorerView(self, int(j))


class _ScorerView:
    """One column of a multi-output :class:`PerturbationScorer` (shares its cache and evaluations)."""

    def __init__(self, parent: PerturbationScorer, j: int) -> None:
        self.parent, self.j = parent, j
        self.n_segments = parent.n_segments
        self.full = float(parent.full[j])

    @property
    def n_evals(self) -> int:
        return self.parent.n_evals

    def __call__(self, sets) -> np.ndarray:
        return self.parent(sets)[:, self.j]


# ----------------------------------------------------------------------------- curves and measures


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of one ranking: ``deletion[k]``, ``insertion[k]`` for k = 0..m units."""

    full: float  # f(x)
    order: np.ndarray  # (m,) unit segment indices, best first
    deletion: np.ndarray  # (m + 1,) f with the top-k units replaced
    insertion: np.ndarray  # (m + 1,) f with only the top-k units kept

    @property
    def x(self) -> np.ndarray:
        """The normalised axis k / m (``[0]`` when there is no unit)."""
        m = len(self.order)
        return np.arange(m + 1) / m if m else np.zeros(1)


def curves(scorer: PerturbationScorer, order: Sequence[int], units: Sequence[int] | None = None) -> Curves:
    """Deletion / insertion curves of ``order`` (a ranking of ``units``; default: ``order`` is all the units)."""
    order = np.asarray(order, dtype=np.int64)
    units_set = set(int(u) for u in (order if units is None else units))
    if set(order.tolist()) != units_set or len(order) != len(units_set):
        raise FaithfulnessError(f"order {order.tolist()} is not a ranking of the units {sorted(units_set)}")
    m = len(order)
    dele = [order[:k].tolist() for k in range(m + 1)]
    ins = [sorted(units_set - set(order[:k].tolist())) for k in range(m + 1)]
    ys = scorer(dele + ins)
    return Curves(scorer.full, order, ys[: m + 1], ys[m + 1 :])


def curve_area(y: Any) -> float:
    """Trapezoid area of a curve ``y[k]``, k = 0..m, on the axis k / m in [0, 1]; ``y[0]`` when m = 0."""
    y = np.asarray(y, dtype=np.float64)
    m = len(y) - 1
    if m < 1:
        return float(y[0]) if len(y) else float("nan")
    return float(np.sum((y[:-1] + y[1:]) / 2.0) / m)


def comprehensiveness(c: Curves, k: int) -> float:
    """``f(x) - f(x without the top-k units)``."""
    return float(c.full - c.deletion[k])


def sufficiency(c: Curves, k: int) -> float:
    """``f(x) - f(x with only the top-k units)``."""
    return float(c.full - c.insertion[k])


def aopc(c: Curves, measure: str, variant: str, unit_scores: Any = None) -> float:
    """AOPC of ``comprehensiveness`` or ``sufficiency`` by ``variant`` (module docstring).

    ``unit_scores``: the scores of the units in the order of ``c.order`` (needed by ``ferret``, which filters
    to positive scores)."""
    if measure not in ("comprehensiveness", "sufficiency"):
        raise FaithfulnessError(f"measure must be comprehensiveness or sufficiency, got {measure!r}")
    curve = c.deletion if measure == "comprehensiveness" else c.insertion
    m = len(c.order)
    if variant == "eraser":
        ks = eraser_ks(m)
    elif variant == "all_k":
        ks = list(range(1, m + 1))
    elif variant == "ferret":
        if unit_scores is None:
            raise FaithfulnessError("the ferret variant needs the unit scores (it keeps positive ones only)")
        s = np.asarray(unit_scores, dtype=np.float64)
        if len(s) != m:
            raise FaithfulnessError(f"{len(s)} unit scores for a ranking of {m} units")
        # positions into c.order; c.order is descending in s, so a positive-filtered top-v is a prefix
        rats = ferret_rationales(s)
        if not rats:
            return 0.0  # ferret: "nothing can be removed" -> 0
        ks = [len(r) for r in rats]
    else:
        raise FaithfulnessError(f"AOPC variant must be one of {AOPC_VARIANTS}, got {variant!r}")
    if not ks:
        return float("nan")
    return float(np.mean([c.full - curve[k] for k in ks]))


def aopc_from_curves(c: Curves, unit_scores: Any) -> dict[tuple[str, str], float]:
    """Every measure of one ranking: ``{(measure, variant): value}`` for the names in ``MEASURES``."""
    out = {}
    for v in AOPC_VARIANTS:
        out[("comprehensiveness_aopc", v)] = aopc(c, "comprehensiveness", v, unit_scores)
        out[("sufficiency_aopc", v)] = aopc(c, "sufficiency", v, unit_scores)
    out[("deletion_auc", "trapezoid")] = curve_area(c.deletion)
    out[("insertion_auc", "trapezoid")] = curve_area(c.insertion)
    return out


@dataclass(frozen=True)
class ItemFaithfulness:
    """Measures of one item: the method's ranking and ``R`` random ones.

    ``values[(measure, variant)]``: the method's value; ``random[(measure, variant)]``: ``(R,)`` values of the
    random rankings; ``curves``: the method's curves; ``random_curves``: ``(R, 2, m + 1)`` deletion / insertion."""

    values: dict[tuple[str, str], float]
    random: dict[tuple[str, str], np.ndarray]
    curves: Curves
    random_curves: np.ndarray
    n_units: int
    n_evals: int
    extra: dict = field(default_factory=dict)


def item_measures(scorer: PerturbationScorer, scores: Any, units: Sequence[int] | None = None,
                  n_random: int = 10, seed: int = 0) -> ItemFaithfulness:  # fmt: skip
    """All measures of one item for the segment ``scores`` (``(n_segments,)``), and the same for ``n_random``
    random rankings ``units[random_rankings(m, n_random, seed)[r]]`` (module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != scorer.n_segments:
        raise FaithfulnessError(f"{len(s)} scores for {scorer.n_segments} segments")
    units = np.arange(len(s)) if units is None else np.asarray(units, dtype=np.int64)
    if len(units) == 0:
        raise FaithfulnessError("no units to rank (an utterance without word segments?)")
    order = ranking(s, units)
    c = curves(scorer, order, units)
    values = aopc_from_curves(c, s[order])
    rnd: dict[tuple[str, str], list[float]] = {k: [] for k in values}
    rc = []
    sorted_scores = s[order]  # descending: laid along each random ranking
    for perm in random_rankings(len(units), n_random, seed):
        cr = curves(scorer, units[perm], units)
        for k, v in aopc_from_curves(cr, sorted_scores).items():
            rnd[k].append(v)
        rc.append(np.stack([cr.deletion, cr.insertion]))
    m = len(units)
    return ItemFaithfulness(values, {k: np.asarray(v) for k, v in rnd.items()}, c,
                            np.stack(rc) if rc else np.zeros((0, 2, m + 1)), m, scorer.n_evals)  # fmt: skip


# ----------------------------------------------------------------------------- over items


def summarize_over_items(values: Any, random: Any, higher_is_better: bool = True, n_boot: int = 1000,
                         alpha: float = 0.05, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """One measure over U items: the method against its random rankings.

    ``values``: ``(U,)`` the method's per-item values; ``random``: ``(U, R)`` the same measure for R random
    rankings per item (item u's r-th ranking). NaN items (a measure undefined for an item) are dropped
    from both. Returns:

    - ``value``, ``ci_low``, ``ci_high``: mean over items with a percentile bootstrap interval over items
      (:func:`src.functional.intervals.bootstrap_ci`, ``statistic="mean"``, each item once);
    - ``random_mean``: mean over items and rankings; ``random_low`` / ``random_high``: the (alpha/2,
      1 - alpha/2) percentiles over the R per-ranking means over items (the spread of what a random
      ranking scores on these items);
    - ``difference`` = value - random_mean, ``difference_low`` / ``difference_high``: bootstrap over items of
      the paired per-item differences ``values[u] - mean_r random[u, r]``;
    - ``p_random``: ``(1 + #{r: mean_u random[u, r] at least as good as value}) / (R + 1)``, "as good" in the
      measure's direction (``higher_is_better``): the share of random rankings that do as well;
    - ``n_units``: items used (the bootstrap units), ``n_random``: R.
    """
    from src.functional.intervals import bootstrap_ci

    v = np.asarray(values, dtype=np.float64)
    r = np.asarray(random, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != v.shape[0]:
        raise FaithfulnessError(f"random must be (U, R) with U = {v.shape[0]}, got {r.shape}")
    ok = np.isfinite(v) & np.isfinite(r).all(axis=1)
    v, r = v[ok], r[ok]
    nan = float("nan")
    if len(v) == 0:
        return {"value": nan, "ci_low": nan, "ci_high": nan, "random_mean": nan, "random_low": nan,
                "random_high": nan, "difference": nan, "difference_low": nan, "difference_high": nan,
                "p_random": nan, "n_units": 0, "n_random": int(r.shape[1])}  # fmt: skip
    ci = bootstrap_ci(v, statistic="mean", n_boot=n_boot, alpha=alpha, seed=seed)
    out = {"value": float(v.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high)}
    R = r.shape[1]
    if R:
        per_r = r.mean(axis=0)  # (R,) each random ranking's mean over items
        lo, hi = np.quantile(per_r, [alpha / 2, 1 - alpha / 2])
        d = v - r.mean(axis=1)
        dci = bootstrap_ci(d, statistic="mean", n_boot=n_boot, alpha=alpha, seed=seed)
        as_good = per_r >= out["value"] if higher_is_better else per_r <= out["value"]
        out.update(random_mean=float(r.mean()), random_low=float(lo), random_high=float(hi),
                   difference=float(d.mean()), difference_low=float(dci.low), difference_high=float(dci.high),
                   p_random=float((1 + as_good.sum()) / (R + 1)))  # fmt: skip
    else:
        out.update(random_mean=nan, random_low=nan, random_high=nan, difference=nan, difference_low=nan,
                   difference_high=nan, p_random=nan)  # fmt: skip
    out.update(n_units=int(len(v)), n_random=int(R))
    return out


# ----------------------------------------------------------------------------- ASR: WER after re-decoding


def deletion_wer_curve(decode: Callable[[Tensor], list[str]], x0: Tensor, baseline: Tensor, mask: Tensor,
                       order: Sequence[int], reference: str, n_segments: int, batch_size: int = 8,
                       numbers: str = "words", normalizer: str = "whisper_english") -> np.ndarray:  # fmt: skip
    """WER of the re-decoded input after removing the top-k units of ``order``, k = 0..m: ``(m + 1,)``.

    ``decode(x (B, *shape)) -> B transcripts`` (e.g. the Whisper backbone's ``transcribe_ids`` then
    ``decode_ids`` on perturbed waveforms); ``reference``: the text to score against (the model's own
    transcript of ``x0`` makes ``wer[0] = 0``). WER per step from :func:`src.functional.text.word_error_rate`
    (``normalizer``: Whisper's English normaliser by default; ``simple`` with ``numbers`` for other languages). Area: :func:`curve_area` (higher = the ranking found what the
    transcript needs)."""
    from src.functional.text import word_error_rate

    order = np.asarray(order, dtype=np.int64)
    m = len(order)
    rep = np.zeros((m + 1, n_segments), dtype=bool)
    for k in range(1, m + 1):
        rep[k, order[:k]] = True
    hyps: list[str] = []
    for s in range(0, m + 1, batch_size):
        x = replace_segments(x0, baseline, mask, rep[s : s + batch_size])
        with torch.no_grad():
            out = list(decode(x))
        if len(out) != len(x):
            raise FaithfulnessError(f"decode returned {len(out)} transcripts for {len(x)} inputs")
        hyps += out
    return np.array([word_error_rate([reference], [h], numbers=numbers, normalizer=normalizer) for h in hyps],
                    dtype=np.float64)  # fmt: skip

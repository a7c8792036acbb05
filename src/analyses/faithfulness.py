"""Is an attribution faithful? ``python analyze.py analysis=faithfulness`` on the commands classifier.

For every test utterance, classifier head, input type (waveform, spectrogram, cnn) and attribution method,
the method's word scores (computed on the fly through ``src.attribution``, or read from a saved
``analysis=attribution`` results.csv: ``attributions: <path>``) rank the utterance's WORD segments; the
measures of :mod:`src.functional.faithfulness` then replace words by the replacement baseline in the same
input space the method explained (waveform samples, spectrogram frames or CNN frames; the length is kept):

- comprehensiveness / sufficiency AOPC, each named variant (``eraser``, ``all_k``, ``ferret``);
- deletion / insertion curves and their trapezoid areas (normalised x axis: fraction of words);
- ``plausibility_top1``: the top-ranked word determines the head's slot (``CommandItem.slot_words``; the
  definition of analysis=attribution's plausibility table), over the utterances whose slot has a word;
- ``ig_delta``: IntegratedGradients' / GradientShap's mean absolute convergence delta (no random ranking).

The target score is the logit of the head's TRUE class (``which: true``; ``predicted`` on request), the
quantity the attribution explained. Silences and gaps are never ranked nor replaced (``units``: the word
segments; a word shorter than one step of the representation, which no element belongs to, is left out).
Every measure is also computed for ``n_random`` random rankings per utterance (seeded by (seed, utterance
index), so all methods and input types of an utterance face the same random rankings), and reported as
``random_mean`` with the percentile interval of the per-ranking means (``random_low``/``random_high``), the
paired ``difference`` with its bootstrap interval, and ``p_random`` (share of random rankings doing as well).
Rows per ``method x input x head`` and pooled over heads (``head = all``: per utterance the mean over heads,
so the bootstrap unit stays the utterance). Figures: deletion / insertion curves per input type (one line per
method, the random rankings' band), a bar chart method x input per measure. Tables ``curves`` (the mean
curves) and ``scores`` (the word scores used, in analysis=attribution's columns: a valid ``attributions:`` input).

All heads of one perturbed input are scored by ONE forward pass (a multi-output scorer), and replacement
sets shared by rankings (random ones included) are evaluated once. The attributions of all heads (or ASR tokens)
of one input come from shared forward passes too (src/attribution/shared.py: the same numbers as captum head by
head; saliency and input x gradient share one gradient).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.analyses.base import AnalysisError, AnalysisResult

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "feature_ablation")
REPORTED = (("comprehensiveness_aopc", "eraser"), ("sufficiency_aopc", "eraser"), ("deletion_auc", "trapezoid"),
            ("insertion_auc", "trapezoid"))  # fmt: skip


# ----------------------------------------------------------------------------- classifiers (shared with agreement)


def plain(options) -> dict:
    """A Hydra DictConfig (or dict, or None) as plain nested dicts (``method_kwargs`` blocks are then dicts)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(options, DictConfig):
        return dict(OmegaConf.to_container(options, resolve=True))
    return {k: (plain(v) if isinstance(v, (dict, DictConfig)) else v) for k, v in dict(options or {}).items()}


def checkpoint_path(ctx, checkpoint, train_overrides: Sequence[str], seed: int) -> Path:
    """A checkpoint path: ``checkpoint`` itself, or with ``auto`` the classifier the job layer finds or trains
    (``ctx.classifier``: train.py with ``train_overrides + [seed=<seed>]``; the stable copy under
    ``${paths.output_dir}/classifiers/`` when it exists)."""
    if checkpoint is None:
        raise AnalysisError("analysis.checkpoint is null: give a classifier checkpoint (train.py task=commands) or auto")
    if str(checkpoint) != "auto":
        p = Path(str(checkpoint))
        if not p.is_file():
            raise AnalysisError(f"analysis.checkpoint={str(checkpoint)!r}: no such file (train.py task=commands writes "
                                "classifier.pt and ${paths.output_dir}/classifiers/*.pt; or use auto)")  # fmt: skip
        return p
    return ctx.classifier(seed, list(train_overrides))


@dataclass
class Models:
    """The run's backbone and the classifiers trained on it, by name."""

    backbone: object
    classifiers: dict = field(default_factory=dict)  # name -> (classifier, meta, path)


def load_models(paths: dict[str, Path], backbone=None, trust_remote_code: bool = False) -> Models:
    """Classifiers from checkpoints, all trained on one backbone: ``backbone`` (the run's configured model;
    ``load_classifier`` compares fingerprints and refuses a mismatch naming both, so every number is labelled
    with the model that produced it), or, without one, the first checkpoint's backbone rebuilt from its
    validated record. One backbone instance serves every classifier."""
    from src.analyses.base import load_classifier
    from src.probes.utterance import ClassifierError

    models = None
    for name, p in paths.items():
        try:
            bb, clf, meta = load_classifier(p, backbone=backbone, trust_remote_code=trust_remote_code)
        except ClassifierError as e:
            raise AnalysisError(str(e)) from None
        if models is None:
            models, backbone = Models(bb), bb
        models.classifiers[name] = (clf.eval(), meta, Path(p))
    if models is None:
        raise AnalysisError("no classifier checkpoint given")
    return models


def select_items(corpus, meta: dict, utterances, max_utterances: int | None, seed: int) -> list[int]:
    """Corpus indices: ``test`` = the classifier's own test split (``meta["splits"]["test"]``, else
    ``split_utterances(by=text)``), ``val``/``train``/``all``, or a list of utterance ids; the first
    ``max_utterances``."""
    from src.analyses.base import select_utterances

    where = {str(u): i for i, u in enumerate(corpus.ids)}
    splits = (meta or {}).get("splits") or {}
    if isinstance(utterances, str) and utterances in splits:
        missing = [u for u in splits[utterances] if str(u) not in where]
        if missing:
            raise AnalysisError(f"the classifier's {utterances} utterances {missing[:3]} are not in corpus "
                                f"{getattr(corpus, 'name', '?')!r}: was it trained on another corpus?")  # fmt: skip
        idx = [where[str(u)] for u in splits[utterances]]
        return idx[: int(max_utterances)] if max_utterances is not None else idx
    return select_utterances(corpus, utterances, meta.get("split") if meta else None, seed, max_utterances)


def true_labels(corpus, i: int, heads: Sequence[str]) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Slot values and slot words of utterance ``i`` (AnalysisError naming it when the corpus has no slots)."""
    from src.datamodules.commands import command_item

    item = command_item(corpus, i)
    if item is None:
        raise AnalysisError(f"utterance {corpus.ids[i]!r}: corpus {getattr(corpus, 'name', '?')!r} has no command "
                            "slots; faithfulness of the classifier needs data=commands (or data=fsc)")  # fmt: skip
    missing = [h for h in heads if h not in item.slots]
    if missing:
        raise AnalysisError(f"utterance {item.utterance!r} has no slot {missing} (it has {sorted(item.slots)})")
    return {h: item.slots[h] for h in heads}, {h: tuple(item.slot_words.get(h, ())) for h in heads}


def heads_scorer_fn(rep, classifier, heads: Sequence[str], class_index: dict[str, int]):
    """``f(x) -> (B, H)``: the logit of each head's class from ONE pass of the representation ``rep``
    (what ``classifier_target(...)(x)`` gives head by head: the classifier reads the real frames with an
    all-True mask; tested equal)."""
    from src.attribution import eval_mode

    def f(x):
        with eval_mode(rep.backbone, classifier):
            states = rep.states(x)
            real = [s[:, : rep.n_real] for s in states]
            mask = torch.ones(real[0].shape[:2], dtype=torch.bool, device=real[0].device)
            out = classifier(real, mask)
        return torch.stack([out[h][:, class_index[h]] for h in heads], dim=1)  # (B, H)

    return f


def word_units(segments, scores: np.ndarray) -> np.ndarray:
    """Segment indices ranked by faithfulness: the words whose score is finite (a word no step falls in has NaN)."""
    return np.flatnonzero(np.asarray(segments.is_word, bool) & np.isfinite(scores[: len(segments)]))


def attribution_scores(target, method: str, baseline, segments, reduction: str, kwargs: dict):
    """Word scores of one method on one target: (scores over the segments, convergence delta or None, seconds)."""
    from src.attribution import attribute, segment_scores
    from src.attribution.methods import method_kwargs

    t0 = time.perf_counter()
    raw, delta = attribute(target, method, baseline, segments, **method_kwargs(method, kwargs))
    mask = target.feature_mask(segments)
    return segment_scores(raw, mask, len(segments), reduction), delta, time.perf_counter() - t0


def heads_attribution_scores(targets, method: str, baseline, segments, reduction: str, kwargs: dict,
                             cache: dict | None = None) -> list[tuple]:  # fmt: skip
    """:func:`attribution_scores` of every target (the heads of one classifier on one representation) from shared
    forward passes (:func:`src.attribution.shared.attribute_targets`; the same numbers as one captum call per head).
    Seconds: the shared time divided by the number of targets."""
    from src.attribution import segment_scores
    from src.attribution.methods import method_kwargs
    from src.attribution.shared import attribute_targets

    t0 = time.perf_counter()
    outs = attribute_targets(targets, method, baseline, segments, cache=cache, **method_kwargs(method, kwargs))
    each = (time.perf_counter() - t0) / max(1, len(targets))
    mask = targets[0].feature_mask(segments)
    return [(segment_scores(raw, mask, len(segments), reduction), delta, each) for raw, delta, _ in outs]


def read_attributions(path) -> dict:
    """``{(utterance, method, input, head): (segment ids, scores)}`` from an analysis=attribution results.csv."""
    import pandas as pd

    p = Path(str(path))
    if p.is_dir():
        p = p / "results.csv"
    if not p.is_file():
        raise AnalysisError(f"analysis.attributions={str(path)!r}: no results.csv there (run analysis=attribution)")
    df = pd.read_csv(p, keep_default_na=False, na_values=[""])
    need = {"utterance", "method", "input", "segment_index", "segment", "score"}
    if not need <= set(df.columns):
        raise AnalysisError(f"{p} lacks columns {sorted(need - set(df.columns))}: not an analysis=attribution table")
    if "head" not in df.columns:
        df["head"] = ""
    else:  # classifier rows only (analysis=attribution's target is "<head>=<class>"; ASR rows have no head)
        df = df[df["head"].notna() & (df["head"].astype(str) != "")]
    out = {}
    for key, g in df.groupby(["utterance", "method", "input", "head"], sort=False):
        g = g.sort_values("segment_index")
        out[tuple(str(k) for k in key)] = (g["segment"].astype(str).tolist(), g["score"].to_numpy(np.float64))
    return out


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class OrderedResult(AnalysisResult):
    """An AnalysisResult whose results.csv starts with the ``lead`` columns (then the usual ones)."""

    lead: tuple = ()

    def column_order(self, context: list[str], present: set[str]) -> list[str]:
        return [*context, "analysis"] + [c for c in (*self.lead, "metric", "variant", "value", "ci_low", "ci_high",
                                                     "random_mean", "random_low", "random_high", "difference",
                                                     "difference_low", "difference_high", "p_random", "unit", "n_units")
                                         if c in present]  # fmt: skip


@dataclass(frozen=True)
class FaithfulnessResult(OrderedResult):
    """Rows plus the mean curves for the figures: ``curves[input] = {"x", "methods": {m: (del, ins)},
    "random": (del (R, G), ins (R, G))}``, curves as f(x_k) - f(x), pooled over heads and utterances."""

    curves: dict = field(default_factory=dict)
    lead: tuple = ("method", "input", "head")

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        from src.reporting.figures import figure_title
        from src.reporting.figures_live import plot_deletion_insertion, plot_faithfulness_bars

        pngs = super().figures(out_dir, title_prefix)
        out_dir = Path(out_dir)
        for inp, c in self.curves.items():
            pngs.append(plot_deletion_insertion(c, out_dir / f"deletion_insertion_{inp}.png",
                                                figure_title(f"Faithfulness: deletion and insertion, input {inp}",
                                                             title_prefix)))  # fmt: skip
        if self.rows:
            pngs.append(plot_faithfulness_bars(self.rows, out_dir / "faithfulness_bars.png",
                                               figure_title("Faithfulness", title_prefix), REPORTED))  # fmt: skip
        return pngs


# ----------------------------------------------------------------------------- the analysis


class Faithfulness:
    """Faithfulness of word attributions of the commands classifier (module docstring).

    Args:
        checkpoint: a classifier checkpoint (train.py task=commands) or ``auto`` (``ctx.classifier``, the job layer, with
            ``train_overrides`` and ``classifier_seed``).
        train_overrides: train.py overrides for ``auto`` (default ``experiment=commands`` + the analyze run's
            backbone choice, see the config).
        classifier_seed: the seed of the ``auto`` classifier.
        attributions: a results.csv (or its directory) of analysis=attribution to read word scores from, instead
            of computing them (then ``methods`` / ``inputs`` / ``heads`` filter it; ``reduction`` is the file's).
        methods, inputs, heads: what to evaluate (``heads: null`` = every head of the classifier).
        attribution_baseline: the baseline of the attribution methods (``zeros`` | ``silence`` | ``noise`` ...).
        replace_with: what replaces a removed word (``silence``: the representation of zeros in the waveform,
            Whisper log-mel -1.5, CNN features of silence; ``zeros``; ``noise`` at ``snr_db``).
        reduction: word score reduction (mean | sum | l2).
        method_kwargs: per-method options (``{integrated_gradients: {n_steps: 16}}``) or one flat dict.
        which: ``true`` | ``predicted`` class explained and scored.
        utterances, max_utterances: ``test`` = the classifier's test split; a budget.
        n_random: random rankings per utterance; batch_size: perturbed copies per forward.
        curve_points: points of the common x grid of the mean curves.
        n_boot, alpha, seed: bootstrap over utterances and the random rankings' seed (``None``: the run's).
    """

    needs_cache = False

    def __init__(self, checkpoint="auto", train_overrides: Sequence[str] = ("experiment=commands",),
                 classifier_seed: int = 0, attributions=None, methods: Sequence[str] = DEFAULT_METHODS,
                 inputs: Sequence[str] = ("waveform", "spectrogram", "cnn"), heads: Sequence[str] | None = None,
                 attribution_baseline: str = "zeros", replace_with: str = "silence", snr_db: float = 10.0,
                 reduction: str = "mean", method_kwargs: dict | None = None, which: str = "true",
                 utterances="test", max_utterances: int | None = 20, n_random: int = 10, batch_size: int = 8,
                 curve_points: int = 21, n_boot: int = 1000, alpha: float = 0.05, seed: int | None = None,
                 target: str = "classifier", max_targets: int | None = 8, asr_max_tokens: int | None = 32,
                 wer: bool = False, split: dict | None = None) -> None:  # fmt: skip
        from src.attribution import BASELINES, INPUT_TYPES, METHODS, REDUCTIONS

        if target not in ("classifier", "asr_token", "asr_word"):
            raise AnalysisError(f"analysis.target must be classifier, asr_token or asr_word, got {target!r}")
        self.target, self.max_targets, self.asr_max_tokens = target, max_targets, asr_max_tokens
        self.wer, self.split = bool(wer), dict(split or {})

        bad = sorted(set(methods) - set(METHODS))
        if bad:
            raise AnalysisError(f"analysis.methods {bad} unknown; choose from {list(METHODS)}")
        bad = sorted(set(inputs) - set(INPUT_TYPES))
        if bad:
            raise AnalysisError(f"analysis.inputs {bad} unknown; choose from {list(INPUT_TYPES)}")
        for key, v in (("attribution_baseline", attribution_baseline), ("replace_with", replace_with)):
            if v not in BASELINES:
                raise AnalysisError(f"analysis.{key}={v!r}; choose from {list(BASELINES)}")
        if reduction not in REDUCTIONS:
            raise AnalysisError(f"analysis.reduction={reduction!r}; choose from {list(REDUCTIONS)}")
        which = "true" if which is True else str(which)  # YAML's unquoted true
        if which not in ("true", "predicted"):
            raise AnalysisError(f"analysis.which must be true or predicted, got {which!r}")
        if int(n_random) < 1:
            raise AnalysisError(f"analysis.n_random must be >= 1 (every value is compared with random rankings), got {n_random}")
        self.checkpoint = checkpoint
        self.train_overrides = [str(o) for o in (train_overrides or [])]
        self.classifier_seed = int(classifier_seed)
        self.attributions = attributions
        self.methods, self.inputs = list(methods), list(inputs)
        self.heads = None if heads is None else [str(h) for h in heads]
        self.attribution_baseline, self.replace_with, self.snr_db = attribution_baseline, replace_with, float(snr_db)
        self.reduction, self.which = reduction, which
        self.method_kwargs = plain(method_kwargs)
        self.utterances = utterances if isinstance(utterances, str) else [str(u) for u in utterances]
        self.max_utterances = max_utterances
        self.n_random, self.batch_size, self.curve_points = int(n_random), int(batch_size), int(curve_points)
        self.n_boot, self.alpha, self.seed = int(n_boot), float(alpha), seed

    def kwargs_of(self, method: str) -> dict:
        """Options of ``method``: its own block ``method_kwargs[method]`` over the flat keys."""
        flat = {k: v for k, v in self.method_kwargs.items() if not isinstance(v, dict)}
        return {**flat, **dict(self.method_kwargs.get(method) or {})}

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> FaithfulnessResult:
        from src.attribution import Representation, classifier_target, make_segments
        from src.functional.faithfulness import PerturbationScorer, item_measures, random_rankings
        from src.progress import progress

        seed = ctx.seed if self.seed is None else int(self.seed)
        if self.target != "classifier":
            return self._run_asr(ctx, seed)
        path = checkpoint_path(ctx, self.checkpoint, self.train_overrides, self.classifier_seed)
        models = load_models({"trained": path}, ctx.configured_backbone())
        bb = models.backbone
        clf, meta, _ = models.classifiers["trained"]
        heads = list(clf.heads) if self.heads is None else self.heads
        unknown = sorted(set(heads) - set(clf.heads))
        if unknown:
            raise AnalysisError(f"analysis.heads {unknown} are not heads of classifier {path} ({sorted(clf.heads)})")
        corpus = ctx.corpus
        idx = select_items(corpus, meta, self.utterances, self.max_utterances, seed)
        saved = read_attributions(self.attributions) if self.attributions is not None else None

        # per (method, input, head): {utt: ItemFaithfulness}; plausibility hits / random hits; IG deltas
        per: dict[tuple, dict] = {}
        score_table: list[dict] = []  # the word scores used (analysis=attribution's leading columns)
        plaus: dict[tuple, dict] = {}
        deltas: dict[tuple, list] = {}
        seconds: dict[tuple, float] = {}
        n_evals = 0
        t_start = time.perf_counter()
        for u_pos, i in enumerate(progress(idx, desc="faithfulness", unit="utt")):
            utt = corpus[i]
            uid = str(corpus.ids[i])
            labels, slot_words = true_labels(corpus, i, heads)
            segs = make_segments(utt, "words", utt_id=uid)
            item_seed = [int(seed), int(i)]
            inner = progress(total=len(self.inputs) * len(heads) * len(self.methods), unit="attributions",
                             desc=f"faithfulness utterance {u_pos + 1}/{len(idx)} ({uid})")  # fmt: skip
            for inp in self.inputs:
                rep = Representation(bb, utt.audio, inp, uid)
                targets = {h: classifier_target(bb, clf, utt, h, inp, which=self.which, label=labels[h], rep=rep)
                           for h in heads}  # fmt: skip
                t0 = targets[heads[0]]
                mask = t0.feature_mask(segs)
                n_groups = t0.n_groups(segs)
                replacement = rep.baseline(self.replace_with, snr_db=self.snr_db, seed=int(seed))
                cls = {h: int(targets[h].info["class_index"]) for h in heads}
                scorer = PerturbationScorer(heads_scorer_fn(rep, clf, heads, cls), rep.x0, replacement, mask,
                                            n_groups, batch_size=self.batch_size)  # fmt: skip
                abase = None if self.attribution_baseline == "zeros" else rep.baseline(
                    self.attribution_baseline, snr_db=self.snr_db, seed=int(seed))  # fmt: skip
                shared: dict = {}  # method -> {head: (scores, delta, seconds)}: every head from shared forwards
                grad_cache: dict = {}  # saliency and input x gradient share one gradient per head
                for j, h in enumerate(heads):
                    view = scorer.output(j)
                    for m in inner.wrap(self.methods):
                        key = (m, inp, h)
                        if saved is not None:
                            got = saved.get((uid, m, inp, h)) or saved.get((uid, m, inp, ""))
                            if got is None:
                                continue
                            ids, sc = got
                            if list(ids) != list(segs.ids):
                                raise AnalysisError(f"utterance {uid!r}: the saved attribution's segments {ids} differ "
                                                    f"from this corpus's words {segs.ids}")  # fmt: skip
                            delta = None
                        else:
                            if m not in shared:
                                shared[m] = heads_attribution_scores([targets[hh] for hh in heads], m, abase, segs,
                                                                     self.reduction, self.kwargs_of(m), grad_cache)  # fmt: skip
                            sc, delta, sec = shared[m][j]
                            seconds[(m, inp)] = seconds.get((m, inp), 0.0) + sec
                        for k in range(len(segs)):
                            score_table.append({"utterance": uid, "method": m, "input": inp, "target": "classifier",
                                                "segment_index": k, "segment": segs.ids[k],
                                                "start": float(segs.start[k]), "end": float(segs.end[k]),
                                                "score": float(sc[k]), "head": h,
                                                "class": targets[h].info["class"]})  # fmt: skip
                        full = np.zeros(n_groups)
                        full[: len(segs)] = np.nan_to_num(np.asarray(sc, np.float64), nan=0.0)
                        units = word_units(segs, np.asarray(sc, np.float64))
                        if len(units) == 0:
                            continue
                        res = item_measures(view, full, units, n_random=self.n_random, seed=item_seed)
                        per.setdefault(key, {})[uid] = res
                        if delta is not None:
                            deltas.setdefault(key, []).append(abs(float(delta)))
                        slot = set(slot_words[h])
                        if slot:
                            top = int(res.curves.order[0])
                            rnd_top = units[random_rankings(len(units), self.n_random, item_seed)[:, 0]]
                            plaus.setdefault(key, {})[uid] = (
                                float(int(segs.word_index[top]) in slot),
                                np.array([float(int(segs.word_index[t]) in slot) for t in rnd_top]))  # fmt: skip
                n_evals += scorer.n_evals
            inner.close()
            log.info("faithfulness: utterance %d/%d (%s) done, %.0f s so far, %d model evaluations", u_pos + 1,
                     len(idx), uid, time.perf_counter() - t_start, n_evals)  # fmt: skip
        if not per:
            raise AnalysisError("faithfulness: no (utterance, method, input, head) was evaluated "
                                "(attributions file without these methods / inputs / heads?)")  # fmt: skip
        rows = self._rows(per, plaus, deltas, seed)
        curves, table = self._curves(per)
        meta_out = {
            "checkpoint": str(path), "classifier_meta": {k: meta.get(k) for k in ("backbone_name", "corpus", "seed",
                                                                                  "layer", "weighted", "test_accuracy")},
            "heads": heads, "methods": self.methods, "inputs": self.inputs, "utterances": len(idx),
            "utterance_ids": [str(corpus.ids[i]) for i in idx], "n_random": self.n_random, "seed": seed,
            "replace_with": self.replace_with, "attribution_baseline": self.attribution_baseline,
            "reduction": self.reduction, "which": self.which, "attributions": None if saved is None else str(self.attributions),
            "model_evaluations": n_evals, "attribution_seconds": {f"{m}/{i}": round(s, 2) for (m, i), s in seconds.items()},
            "faithfulness_seconds": round(time.perf_counter() - t_start, 2),
            "method_kwargs": {m: self.kwargs_of(m) for m in self.methods},
        }  # fmt: skip
        return FaithfulnessResult("faithfulness", rows, meta=meta_out, tables={"curves": table, "scores": score_table},
                                  curves=curves)  # fmt: skip

    # ------------------------------------------------------------------------ Whisper ASR targets

    def _run_asr(self, ctx, seed: int) -> FaithfulnessResult:
        """``target: asr_token | asr_word``: the analyze run's Whisper backbone, each utterance's first
        ``max_targets`` tokens / words of its own greedy transcript (teacher-forced log-prob, as
        ``whisper_token_targets`` gives it) as targets; rows pooled over targets per utterance (``head = all``).
        ``wer: true`` (waveform input): the WER of the re-decoded audio after deleting words in the order of the
        mean map over targets, its area (``deletion_wer_auc``, higher = the ranking found what the transcript
        needs), against the same random rankings."""
        from src.attribution import make_segments, whisper_token_targets
        from src.functional.faithfulness import (
            PerturbationScorer,
            curve_area,
            deletion_wer_curve,
            item_measures,
            random_rankings,
            ranking,
            summarize_over_items,
        )
        from src.progress import progress

        bb = ctx.backbone()
        if not hasattr(bb, "decoder_prompt_ids"):
            raise AnalysisError(f"analysis.target={self.target}: needs a Whisper backbone (a decoder); "
                                f"{getattr(bb, 'name', '?')!r} has none")  # fmt: skip
        level = self.target.split("_")[1]
        corpus = ctx.corpus
        idx = select_items(corpus, {"split": self.split or None}, self.utterances, self.max_utterances, seed)
        per: dict[tuple, dict] = {}
        wer_items: dict[tuple, dict] = {}
        score_table: list[dict] = []
        deltas: dict[tuple, list] = {}
        n_evals = 0
        t_start = time.perf_counter()
        for i in progress(idx, desc="faithfulness (asr)", unit="utt"):
            utt = corpus[i]
            uid = str(corpus.ids[i])
            segs = make_segments(utt, "words", utt_id=uid)
            item_seed = [int(seed), int(i)]
            for inp in self.inputs:
                targets = whisper_token_targets(bb, utt, inp, level=level, max_new_tokens=self.asr_max_tokens)
                targets = targets[: self.max_targets] if self.max_targets is not None else targets
                rep = targets[0].rep
                mask = targets[0].feature_mask(segs)
                n_groups = targets[0].n_groups(segs)
                replacement = rep.baseline(self.replace_with, snr_db=self.snr_db, seed=int(seed))
                abase = None if self.attribution_baseline == "zeros" else rep.baseline(
                    self.attribution_baseline, snr_db=self.snr_db, seed=int(seed))  # fmt: skip

                def f(x, targets=targets, rep=rep):  # (B, T): one encoder pass, every target's decoder on its states
                    from src.attribution import eval_mode

                    with eval_mode(bb):
                        states = rep.states(x)
                        return torch.stack([t._score(states) for t in targets], dim=1)

                scorer = PerturbationScorer(f, rep.x0, replacement, mask, n_groups, batch_size=self.batch_size)
                maps: dict[str, list] = {}
                shared: dict = {}  # method -> [(scores, delta, seconds)] per target, from shared forwards
                grad_cache: dict = {}
                for j, t in enumerate(targets):
                    for m in self.methods:
                        if m not in shared:
                            shared[m] = heads_attribution_scores(targets, m, abase, segs, self.reduction,
                                                                 self.kwargs_of(m), grad_cache)  # fmt: skip
                        sc, delta, _sec = shared[m][j]
                        units = word_units(segs, np.asarray(sc, np.float64))
                        if len(units) == 0:
                            continue
                        full = np.zeros(n_groups)
                        full[: len(segs)] = np.nan_to_num(np.asarray(sc, np.float64), nan=0.0)
                        res = item_measures(scorer.output(j), full, units, n_random=self.n_random, seed=item_seed)
                        per.setdefault((m, inp, f"{level}{j}"), {})[uid] = res
                        maps.setdefault(m, []).append(full)
                        if delta is not None:
                            deltas.setdefault((m, inp, f"{level}{j}"), []).append(abs(float(delta)))
                        for k in range(len(segs)):
                            score_table.append({"utterance": uid, "method": m, "input": inp, "target": t.name,
                                                "segment_index": k, "segment": segs.ids[k],
                                                "start": float(segs.start[k]), "end": float(segs.end[k]),
                                                "score": float(sc[k]), "head": f"{level}{j}",
                                                "class": t.info.get("token")})  # fmt: skip
                n_evals += scorer.n_evals
                if self.wer and inp == "waveform":
                    own = targets[0].info.get("transcript", "")
                    cap = self.asr_max_tokens

                    def decode(xb, cap=cap):
                        return [bb.decode_ids(ids) for ids in bb.transcribe_ids(list(xb), max_new_tokens=cap)]

                    units = np.flatnonzero(segs.is_word)
                    rnd = [units[p] for p in random_rankings(len(units), self.n_random, item_seed)]
                    rnd_auc = np.array([curve_area(deletion_wer_curve(decode, rep.x0, replacement, mask, o, own,
                                                                      n_groups, self.batch_size)) for o in rnd])  # fmt: skip
                    for m, ms in maps.items():
                        order = ranking(np.mean(ms, axis=0), units)
                        auc = curve_area(deletion_wer_curve(decode, rep.x0, replacement, mask, order, own, n_groups,
                                                            self.batch_size))  # fmt: skip
                        wer_items.setdefault((m, inp), {})[uid] = (auc, rnd_auc)
        if not per:
            raise AnalysisError("faithfulness (asr): nothing was evaluated (empty transcripts?)")
        rows = self._rows(per, {}, deltas, seed, pooled_only=True)
        for (m, inp), d in wer_items.items():
            v = np.array([a for a, _ in d.values()])
            r = np.array([b for _, b in d.values()])
            rows.append({"method": m, "input": inp, "head": "all", "metric": "deletion_wer_auc", "variant": "trapezoid",
                         **summarize_over_items(v, r, True, self.n_boot, self.alpha, seed), "unit": "utterance"})  # fmt: skip
        curves, table = self._curves(per)
        meta = {"target": self.target, "backbone": getattr(bb, "name", "?"), "methods": self.methods,
                "inputs": self.inputs, "utterances": len(idx), "utterance_ids": [str(corpus.ids[i]) for i in idx],
                "max_targets": self.max_targets, "n_random": self.n_random, "seed": seed, "wer": self.wer,
                "replace_with": self.replace_with, "model_evaluations": n_evals,
                "faithfulness_seconds": round(time.perf_counter() - t_start, 2)}  # fmt: skip
        return FaithfulnessResult("faithfulness", rows, meta=meta, tables={"curves": table, "scores": score_table},
                                  curves=curves)  # fmt: skip

    # ------------------------------------------------------------------------ aggregation

    def _rows(self, per: dict, plaus: dict, deltas: dict, seed: int, pooled_only: bool = False) -> list[dict]:
        from src.functional.faithfulness import HIGHER_IS_BETTER, summarize_over_items

        rows = []
        combos = list(dict.fromkeys((m, inp) for (m, inp, _h) in per))
        heads = list(dict.fromkeys(h for (_m, _i, h) in per))
        for m, inp in combos:
            for h in ["all"] if pooled_only else [*heads, "all"]:
                hs = heads if h == "all" else [h]
                items = [per.get((m, inp, hh), {}) for hh in hs]
                utts = sorted(set().union(*[set(d) for d in items]))
                if not utts:
                    continue
                keys = next(iter(next(d for d in items if d).values())).values.keys()
                for measure, variant in keys:
                    v, r = [], []
                    for u in utts:
                        got = [d[u] for d in items if u in d]
                        v.append(np.mean([g.values[(measure, variant)] for g in got]))
                        r.append(np.mean([g.random[(measure, variant)] for g in got], axis=0))
                    s = summarize_over_items(np.array(v), np.array(r), HIGHER_IS_BETTER[measure], self.n_boot,
                                             self.alpha, seed)  # fmt: skip
                    rows.append({"method": m, "input": inp, "head": h, "metric": measure, "variant": variant,
                                 **s, "unit": "utterance"})  # fmt: skip
                pl = [plaus.get((m, inp, hh), {}) for hh in hs]
                putts = sorted(set().union(*[set(d) for d in pl]))
                if putts:
                    v = [np.mean([d[u][0] for d in pl if u in d]) for u in putts]
                    r = [np.mean([d[u][1] for d in pl if u in d], axis=0) for u in putts]
                    s = summarize_over_items(np.array(v), np.array(r), True, self.n_boot, self.alpha, seed)
                    rows.append({"method": m, "input": inp, "head": h, "metric": "plausibility_top1", "variant": "-",
                                 **s, "unit": "utterance"})  # fmt: skip
                dl = [x for hh in hs for x in deltas.get((m, inp, hh), [])]
                if dl:
                    from src.functional.agreement import mean_with_interval

                    s = mean_with_interval(dl, self.n_boot, self.alpha, seed)
                    rows.append({"method": m, "input": inp, "head": h, "metric": "ig_delta", "variant": "abs",
                                 **s, "unit": "item"})  # fmt: skip
        return rows

    def _curves(self, per: dict) -> tuple[dict, list[dict]]:
        """Mean curves (f(x_k) - f(x)) on a common grid, pooled over heads and utterances, per input type.

        The random rankings do not depend on the method, so their curves are taken once per (input, head,
        utterance); the band is the (alpha/2, 1 - alpha/2) percentile over the R per-ranking mean curves."""
        grid = np.linspace(0.0, 1.0, self.curve_points)
        acc: dict = {}
        rnd: dict = {}
        for (m, inp, h), d in per.items():
            for uid, res in d.items():
                x, full = res.curves.x, res.curves.full
                acc.setdefault(inp, {}).setdefault(m, []).append(
                    (np.interp(grid, x, res.curves.deletion - full), np.interp(grid, x, res.curves.insertion - full)))
                rnd.setdefault(inp, {}).setdefault((h, uid), np.stack(
                    [[np.interp(grid, x, rc[0] - full), np.interp(grid, x, rc[1] - full)] for rc in res.random_curves]))
        curves: dict = {}
        table = []
        for inp, by_method in acc.items():
            c = curves[inp] = {"x": grid, "methods": {}}
            for m, items in by_method.items():
                a = np.array(items)  # (N, 2, G)
                c["methods"][m] = (a[:, 0].mean(0), a[:, 1].mean(0))
                for kind, j in (("deletion", 0), ("insertion", 1)):
                    for x, y in zip(grid, a[:, j].mean(0)):
                        table.append({"input": inp, "method": m, "curve": kind, "x": float(x), "y": float(y),
                                      "n": int(len(a))})  # fmt: skip
            r = np.array(list(rnd[inp].values()))  # (N, R, 2, G)
            per_r = r.mean(0)  # (R, 2, G): each random ranking's mean curve over items
            c["random"] = (per_r[:, 0], per_r[:, 1])
            for kind, j in (("deletion", 0), ("insertion", 1)):
                lo, hi = np.quantile(per_r[:, j], [self.alpha / 2, 1 - self.alpha / 2], axis=0)
                for x, y, ylo, yhi in zip(grid, per_r[:, j].mean(0), lo, hi):
                    table.append({"input": inp, "method": "random", "curve": kind, "x": float(x), "y": float(y),
                                  "y_low": float(ylo), "y_high": float(yhi), "n": int(len(r))})  # fmt: skip
        return curves, table

"""Feature attribution (Pastor et al. 2024; Shen et al. 2025): which parts of the input drive a prediction.

``python analyze.py analysis=attribution`` runs the live model (``needs_cache = False``): for every selected
utterance, target, input representation and captum method it computes the raw attribution
(src/attribution) and one score per segment (words by default; silences and gaps are segments of their own).

- **Targets** (``target``): ``classifier`` -- the logit of an ``UtteranceClassifier`` head (``checkpoint``: a
  file saved by train.py, or ``auto`` = the job layer's classifier for the run's backbone and corpus
  (``ctx.classifier``: ``ensure_classifier`` in src/jobs/utterance.py), trained if missing), the true class
  by default (``which: predicted`` / ``class_index``); ``asr_token`` / ``asr_word`` --
  Whisper's teacher-forced log-prob of each token / word of its own greedy transcript; ``ctc`` -- a CTC
  token's summed log-prob over its frames (wav2vec2-family CTC checkpoints).
- **Scores**: gradient methods and Occlusion give an attribution per element; a segment's score is the
  ``reduction`` (mean | sum | l2) over its samples/frames and features.  The mask methods (FeatureAblation,
  ShapleyValueSampling, Lime, KernelShap) perturb whole segments (their ``feature_mask`` = the segments), so
  the segment's score is its group's attribution (``reduction`` column ``group``).
- **Plausibility** (commands corpus, classifier target): per head, method and input type, the fraction of
  utterances whose top-scoring WORD segment (highest signed score among word segments; silences excluded)
  is one of the words that determine the slot (``CommandItem.slot_words``), over utterances whose slot is
  determined by some word; against a random ranking, whose expectation per utterance is
  ``#slot words / #word segments``.  Percentile bootstrap intervals resample sentences (all readings of one
  sentence together).  Table ``plausibility`` (CSV + PNG).

Outputs: ``results.csv`` with the leading columns ``utterance, method, input, target, segment_index, segment,
start, end, score`` (then ``metric`` = attribution and ``value`` = score, the framework's result columns; head, class, token, is_word, word_index, reduction, baseline, ig_delta, completeness_gap / _delta / _ratio (IG), seconds, ...);
``raw/<utterance>.npz`` with every raw attribution when ``save_raw``; per plotted item a PNG with the waveform
and its spectrogram, each attribution overlaid as a curve over time, word boundaries, and a bar chart of the
segment scores per input type.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.analyses.base import AnalysisError, AnalysisResult, interval_fields, safe_name

log = logging.getLogger(__name__)

LEADING = ["utterance", "method", "input", "target", "segment_index", "segment", "start", "end", "score"]
TARGETS = ("classifier", "asr_token", "asr_word", "ctc")


@dataclass(frozen=True)
class AttributionResult(AnalysisResult):
    """Rows with the attribution columns first; plots per item and the plausibility table's PNG."""

    plots: list[dict] = field(default_factory=list)
    raw_dir: str | None = None

    def column_order(self, context: list[str], present: set[str]) -> list[str]:
        return list(LEADING)

    def save_extra(self, out_dir: Path) -> None:
        if self.raw_dir and Path(self.raw_dir).is_dir():
            dest = out_dir / "raw"
            dest.mkdir(exist_ok=True)
            for p in sorted(Path(self.raw_dir).glob("*.npz")):
                shutil.move(str(p), dest / p.name)
            shutil.rmtree(self.raw_dir, ignore_errors=True)

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        from src.reporting.figures_live import plot_attribution_item, plot_plausibility

        out_dir = Path(out_dir)
        pngs = [plot_attribution_item(p, out_dir / f"attribution_{safe_name(p['utterance'])}_{safe_name(p['target'])}_"
                                         f"{p['method']}.png", title_prefix) for p in self.plots]  # fmt: skip
        if self.tables.get("plausibility"):
            pngs.append(plot_plausibility(self.tables["plausibility"], out_dir / "plausibility.png", title_prefix))
        return pngs


# ----------------------------------------------------------------------------- plausibility


def plausibility_rows(items: list[dict], n_boot: int, alpha: float, seed: int) -> list[dict]:
    """``items``: dicts with head, method, input, group (sentence), hit (0/1), chance (#slot words / #words)."""
    from src.functional.intervals import bootstrap_ci

    out = []
    keys = sorted({(d["head"], d["method"], d["input"]) for d in items})
    for head, method, inp in keys:
        sub = [d for d in items if (d["head"], d["method"], d["input"]) == (head, method, inp)]
        groups = np.array([d["group"] for d in sub])
        hit = bootstrap_ci(np.array([d["hit"] for d in sub], float), groups, statistic="mean", n_boot=n_boot,
                           alpha=alpha, seed=seed)  # fmt: skip
        rnd = bootstrap_ci(np.array([d["chance"] for d in sub], float), groups, statistic="mean", n_boot=n_boot,
                           alpha=alpha, seed=seed)  # fmt: skip
        out.append({"head": head, "method": method, "input": inp, "metric": "top_word_plausibility",
                    "value": float(hit.estimate), "ci_low": float(hit.low), "ci_high": float(hit.high),
                    "random": float(rnd.estimate), "random_ci_low": float(rnd.low), "random_ci_high": float(rnd.high),
                    "n_utterances": len(sub),
                    **interval_fields("text", len(set(groups.tolist())))})  # fmt: skip
    return out


# ----------------------------------------------------------------------------- the analysis


class Attribution:
    """Captum attributions per utterance x target x input type x method, scored per segment.

    Args:
        checkpoint: an UtteranceClassifier file (train.py), or ``auto`` (``ctx.classifier``: the job layer's
            classifier for this run's backbone and corpus, trained with train.py's code path if missing). Only
            for ``target: classifier``.
        target: classifier | asr_token | asr_word | ctc.
        heads: classifier heads (None: all).
        which: ``true`` (the utterance's slot value; commands corpus) | ``predicted``; ``class_index`` wins.
        methods, inputs: lists (src.attribution.METHODS, INPUT_TYPES).
        baseline, snr_db: zeros | silence | noise (at snr_db, seeded by ``seed``).
        segments, window: words | phones | windows | frames (window/frame length in s).
        reduction: mean | sum | l2 over a segment's elements (gradient methods, Occlusion).
        options: method options applied wherever a method takes them (n_steps, ig_method, internal_batch_size,
            perturbations_per_eval, n_samples, nt_samples, stdevs, ...); ``per_method``: {method: {option: value}},
            where ``baseline`` / ``snr_db`` give that method its own baseline (integrated_gradients: noise).
        utterances, split, max_utterances: ``test`` = the classifier's own test utterances when its checkpoint
            lists them, else the held-out sentences of ``split``; or val | train | all | a list of ids.
        save_raw: write ``raw/<utterance>.npz`` (every raw attribution, its step times and segment mask).
        plot_utterances: figures for the first n utterances (first head / first 3 ASR targets).
        max_targets: ASR / CTC targets per utterance (the first n tokens or words; None: all).
        n_boot, alpha, seed: plausibility bootstrap and the noise baseline / Lime seed (None: the run's seed).
        ig_tolerance: IntegratedGradients completeness is checked per item: a warning names the utterance, method,
            input and target when ``|f(x) - f(b) - sum(attr)| > ig_tolerance * |f(x) - f(b)|`` (rows:
            ``completeness_gap`` = f(x) - f(b), ``completeness_delta``, ``completeness_ratio`` = sum / gap).
    """

    needs_cache = False

    def __init__(self, checkpoint: str | None = "auto", target: str = "classifier", heads: Sequence[str] | None = None,
                 which: str = "true", class_index: int | None = None,
                 methods: Sequence[str] = ("saliency", "integrated_gradients", "feature_ablation"),
                 inputs: Sequence[str] = ("waveform", "spectrogram", "cnn"), baseline: str = "silence",
                 snr_db: float = 10.0, segments: str = "words", window: float | None = 0.1, reduction: str = "mean",
                 options: dict | None = None, per_method: dict | None = None, utterances="test",
                 split: dict | None = None, max_utterances: int | None = None, save_raw: bool = False,
                 plot_utterances: int = 2, max_targets: int | None = None, language: str | None = "en",
                 n_boot: int = 1000, alpha: float = 0.05, seed: int | None = None,
                 ig_tolerance: float = 0.05) -> None:  # fmt: skip
        from src.attribution import BASELINES, INPUT_TYPES, METHODS, REDUCTIONS, SEGMENT_KINDS

        def check(name, values, allowed):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise AnalysisError(f"analysis.{name}: {bad} not in {list(allowed)}")

        if target not in TARGETS:
            raise AnalysisError(f"analysis.target must be one of {TARGETS}, got {target!r}")
        methods, inputs = [str(m) for m in methods], [str(i) for i in inputs]
        check("methods", methods, METHODS)
        check("inputs", inputs, INPUT_TYPES)
        check("baseline", [baseline], BASELINES)
        check("segments", [segments], SEGMENT_KINDS)
        check("reduction", [reduction], REDUCTIONS)
        which = "true" if which is True else str(which)  # YAML reads an unquoted true as a bool
        if which not in ("true", "predicted"):
            raise AnalysisError(f"analysis.which must be true or predicted, got {which!r}")
        if not methods or not inputs:
            raise AnalysisError("analysis.methods and analysis.inputs must not be empty")
        self.checkpoint = checkpoint
        self.target = target
        self.heads = None if heads is None else [str(h) for h in heads]
        self.which, self.class_index = which, class_index
        self.methods, self.inputs = methods, inputs
        self.baseline, self.snr_db = baseline, float(snr_db)
        self.segments, self.window, self.reduction = segments, window, reduction
        self.options = dict(options or {})
        self.per_method = {str(k): dict(v or {}) for k, v in dict(per_method or {}).items()}
        check("per_method", list(self.per_method), METHODS)
        for m, opts in self.per_method.items():  # a method's own baseline (IG: docs/attribution.md, completeness)
            if "baseline" in opts:
                check(f"per_method.{m}.baseline", [opts["baseline"]], BASELINES)
        self.utterances = utterances if isinstance(utterances, str) else [str(u) for u in utterances]
        self.split = dict(split or {})
        self.max_utterances = max_utterances
        self.save_raw = bool(save_raw)
        self.plot_utterances = int(plot_utterances)
        self.max_targets = max_targets
        self.language = language
        self.n_boot, self.alpha, self.seed = int(n_boot), float(alpha), seed
        if not float(ig_tolerance) >= 0:
            raise AnalysisError(f"analysis.ig_tolerance must be >= 0, got {ig_tolerance!r}")
        self.ig_tolerance = float(ig_tolerance)

    # ------------------------------------------------------------------------ pieces

    def kwargs_for(self, method: str, seed: int) -> dict:
        from src.attribution.methods import method_kwargs

        kw = method_kwargs(method, {"seed": seed, **self.options})
        kw.update({k: v for k, v in self.per_method.get(method, {}).items() if k not in ("baseline", "snr_db")})
        return kw

    def baseline_for(self, method: str) -> tuple[str, float]:
        """``(baseline, snr_db)`` of ``method``: ``per_method.<method>.baseline`` / ``snr_db`` where given."""
        own = self.per_method.get(method, {})
        return str(own.get("baseline", self.baseline)), float(own.get("snr_db", self.snr_db))

    def resolve_checkpoint(self, ctx) -> Path:
        if self.checkpoint not in (None, "auto"):
            p = Path(str(self.checkpoint)).expanduser()
            if not p.is_file():
                raise AnalysisError(f"analysis.checkpoint={str(p)!r} does not exist (train one: python train.py "
                                    "experiment=commands, or set analysis.checkpoint=auto)")  # fmt: skip
            return p
        return ctx.classifier(ctx.seed)  # the job layer finds or trains the run's classifier

    def select(self, corpus, meta: dict, seed: int) -> list[int]:
        from src.analyses.base import select_utterances

        if self.utterances == "test" and isinstance(meta.get("splits"), dict) and meta["splits"].get("test"):
            where = {str(u): i for i, u in enumerate(corpus.ids)}
            ids = [str(u) for u in meta["splits"]["test"]]
            missing = [u for u in ids if u not in where]
            if missing:
                raise AnalysisError(f"the classifier's test utterances {missing[:3]} are not in corpus "
                                    f"{getattr(corpus, 'name', '?')!r}: was it trained on another corpus?")  # fmt: skip
            idx = [where[u] for u in ids]
            return idx[: int(self.max_utterances)] if self.max_utterances is not None else idx
        return select_utterances(corpus, self.utterances, self.split, seed, self.max_utterances)

    def make_targets(self, bb, clf, utt, item, input_type: str, rep_cache: dict):
        """Targets of one utterance for one input type."""
        from src.attribution import Representation, classifier_target, ctc_targets, whisper_token_targets

        if self.target == "classifier":
            key = (utt.id, input_type)
            if key not in rep_cache:
                rep_cache.clear()
                rep_cache[key] = Representation(bb, utt.audio, input_type, utt.id)
            out = []
            for head in self.heads or list(clf.heads):
                label = None
                if self.class_index is None and self.which == "true":
                    if item is None:
                        raise AnalysisError(f"analysis.which=true needs the true {head!r} label of utterance {utt.id!r}: "
                                            "the corpus has no slots (use the commands corpus, or which=predicted)")  # fmt: skip
                    if head not in item.slots:
                        raise AnalysisError(f"utterance {utt.id!r} has no slot {head!r} (slots {sorted(item.slots)})")
                    label = item.slots[head]
                out.append(classifier_target(bb, clf, utt, head, input_type, class_index=self.class_index,
                                             which=self.which, label=label, rep=rep_cache[key]))  # fmt: skip
            return out
        if self.target == "ctc":
            ts = ctc_targets(bb, utt, input_type)
        else:
            level = "token" if self.target == "asr_token" else "word"
            key = (utt.id, "tokens")
            ts = whisper_token_targets(bb, utt, input_type, level=level, tokens=rep_cache.get(key), language=self.language)
            rep_cache[key] = ts[0].info["transcript_ids"]
        return ts[: int(self.max_targets)] if self.max_targets is not None else ts

    def attribute_all(self, targets, method: str, bname: str, snr_db: float, seed: int, seg, kw: dict,
                      cache: dict) -> list[tuple]:  # fmt: skip
        """``[(target, (raw, delta, completeness), seconds)]`` for every target of one utterance and input type.

        Targets that share one representation (the heads of a classifier, the tokens of a transcript) are attributed
        from shared forward passes (:func:`src.attribution.shared.attribute_targets`: the same numbers as captum per
        target); ``seconds`` is then the shared time divided by the number of targets."""
        from src.attribution.methods import attribute_with_completeness
        from src.attribution.shared import attribute_targets, shares_forward

        if shares_forward(targets):
            b = targets[0].baseline(bname, snr_db=snr_db, seed=seed)
            t0 = time.perf_counter()
            outs = attribute_targets(targets, method, b, seg, cache=cache, **kw)
            each = (time.perf_counter() - t0) / len(targets)
            return [(tg, out, each) for tg, out in zip(targets, outs)]
        done = []
        for tg in targets:
            b = tg.baseline(bname, snr_db=snr_db, seed=seed)
            t0 = time.perf_counter()
            out = attribute_with_completeness(tg, method, b, seg, **kw)
            done.append((tg, out, time.perf_counter() - t0))
        return done

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> AnalysisResult:

        from src.attribution import (
            MASK_METHODS,
            AttributionError,
            SegmentError,
            make_segments,
            segment_scores,
        )
        from src.datamodules.commands import command_item
        from src.progress import progress

        corpus = ctx.corpus
        seed = ctx.seed if self.seed is None else int(self.seed)
        clf, meta = None, {}
        if self.target == "classifier":
            from src.analyses.base import load_classifier
            from src.probes.utterance import ClassifierError

            path = self.resolve_checkpoint(ctx)
            try:  # the checkpoint must name the run's backbone: every row is labelled with it
                bb, clf, meta = load_classifier(path, backbone=ctx.configured_backbone())
            except ClassifierError as e:
                raise AnalysisError(str(e)) from None
            meta = {**meta, "checkpoint": str(path)}
        else:
            bb = ctx.backbone()
        bb = bb.eval()
        idx = self.select(corpus, meta, seed)
        raw_dir = tempfile.mkdtemp(prefix="attribution_raw_") if self.save_raw else None
        rows, plaus, plots, incomplete = [], [], [], []
        rep_cache: dict = {}
        n_steps_total = len(idx) * len(self.inputs)
        bar = progress(total=n_steps_total * len(self.methods), unit="attributions",
                       desc=f"attribution ({len(idx)} utt, {len(self.inputs)} inputs, {len(self.methods)} methods)")
        for u_pos, i in enumerate(idx):
            utt = corpus[i]
            item = command_item(corpus, i)
            try:
                seg = make_segments(utt, self.segments, window=self.window)
            except SegmentError as e:
                raise AnalysisError(str(e)) from e
            raw_store: dict[str, np.ndarray] = {}
            per_target: dict[str, dict] = {}
            for input_type in self.inputs:
                try:
                    targets = self.make_targets(bb, clf, utt, item, input_type, rep_cache)
                except (AttributionError, ValueError) as e:
                    raise AnalysisError(f"analysis=attribution: {e}") from e
                shared_cache: dict = {}  # saliency and input x gradient share one gradient per target
                for method in self.methods:
                    kw = self.kwargs_for(method, seed)
                    bname, snr_db = self.baseline_for(method)
                    try:  # every target of this input from shared forwards (seconds: the shared time / #targets)
                        done = self.attribute_all(targets, method, bname, snr_db, seed, seg, kw, shared_cache)
                    except AttributionError as e:
                        raise AnalysisError(f"analysis=attribution: {e}") from e
                    for tg, (raw, delta, check), secs in done:
                        if check is not None and check.fails(self.ig_tolerance):
                            incomplete.append(utt.id)
                            log.warning("IG completeness fails: utterance %s, method %s, input %s, target %s: sum of "
                                        "attributions %.4g vs f(x) - f(b) = %.4g (delta %.4g, ratio %.3g; tolerance "
                                        "%g x |f(x) - f(b)|): more n_steps, or another baseline/input "
                                        "(docs/attribution.md)", utt.id, method, input_type, target_name(tg),
                                        check.attribution_sum, check.gap, check.delta, check.ratio,
                                        self.ig_tolerance)  # fmt: skip
                        comp = ({"completeness_gap": check.gap, "completeness_delta": check.delta,
                                 "completeness_ratio": check.ratio} if check is not None else
                                {"completeness_gap": None, "completeness_delta": None, "completeness_ratio": None})  # fmt: skip
                        mask = tg.feature_mask(seg)
                        grouped = method in MASK_METHODS
                        scores = segment_scores(raw, mask, len(seg), "mean" if grouped else self.reduction)
                        tname = target_name(tg)
                        info = tg.info
                        for k in range(len(seg)):
                            rows.append({"utterance": utt.id, "method": method, "input": input_type, "target": tname,
                                         "segment_index": k, "segment": seg.ids[k], "start": float(seg.start[k]),
                                         "end": float(seg.end[k]), "score": float(scores[k]),
                                         "metric": "attribution", "value": float(scores[k]),
                                         "note": None if np.isfinite(scores[k]) else "segment shorter than one step",
                                         "label": seg.labels[k], "is_word": bool(seg.is_word[k]),
                                         "word_index": int(seg.word_index[k]), "head": info.get("head"),
                                         "class": info.get("class"), "class_index": info.get("class_index"),
                                         "token": info.get("token"), "token_index": info.get("token_index"),
                                         "reduction": "group" if grouped else self.reduction, "baseline": bname,
                                         "ig_delta": delta, **comp, "seconds": round(secs, 4)})  # fmt: skip
                        if item is not None and info.get("target") == "classifier":
                            words = np.flatnonzero(seg.is_word & np.isfinite(scores))
                            slot = set(item.slot_words.get(info["head"], ()))
                            if slot and len(words):
                                top = words[int(np.argmax(scores[words]))]
                                plaus.append({"head": info["head"], "method": method, "input": input_type,
                                              "group": item.text, "hit": float(int(seg.word_index[top]) in slot),
                                              "chance": len(slot & set(seg.word_index[words].tolist())) / len(words)})  # fmt: skip
                        if self.save_raw:
                            raw_store[f"{method}__{input_type}__{safe_name(tname)}"] = raw[0].numpy()
                            raw_store[f"times__{input_type}"] = tg.step_times()
                            raw_store[f"mask__{input_type}"] = mask[0].numpy().astype(np.int32)
                        if u_pos < self.plot_utterances:
                            curve = _time_curve(raw, tg.time_axis)
                            per_target.setdefault((tname, method), {"curves": {}, "scores": {}})
                            per_target[(tname, method)]["curves"][input_type] = (tg.step_times(), curve)
                            per_target[(tname, method)]["scores"][input_type] = scores
                    bar.update(1)
            if self.save_raw and raw_store:
                np.savez_compressed(Path(raw_dir) / f"{safe_name(utt.id)}.npz", segment_ids=np.array(seg.ids),
                                    segment_start=seg.start, segment_end=seg.end, **raw_store)  # fmt: skip
            if u_pos < self.plot_utterances:
                names = list(dict.fromkeys(t for t, _ in per_target))
                keep = names[:1] if self.target == "classifier" else names[:3]
                for (tname, method), d in per_target.items():
                    if tname in keep:
                        plots.append({"utterance": utt.id, "target": tname, "method": method, "audio": utt.audio,
                                      "sample_rate": utt.sample_rate,
                                      "reduction": "group" if method in MASK_METHODS else self.reduction,
                                      "segments": {"ids": seg.ids, "labels": seg.labels, "start": seg.start, "end": seg.end},
                                      **d})  # fmt: skip
        bar.close()
        tables = {}
        if plaus:
            tables["plausibility"] = plausibility_rows(plaus, self.n_boot, self.alpha, seed)
            for r in tables["plausibility"]:
                log.info("plausibility %s %s %s: %.3f [%.3f, %.3f] vs random %.3f (n=%d)", r["head"], r["method"],
                         r["input"], r["value"], r["ci_low"], r["ci_high"], r["random"], r["n_utterances"])  # fmt: skip
        deltas = [r["ig_delta"] for r in rows if r["ig_delta"] is not None and r["segment_index"] == 0]
        out_meta = {"target": self.target, "methods": self.methods, "inputs": self.inputs, "baseline": self.baseline,
                    "snr_db": self.snr_db, "segments": self.segments, "window": self.window,
                    "reduction": self.reduction, "options": self.options, "per_method": self.per_method,
                    "utterances": len(idx), "seed": seed, "n_boot": self.n_boot,
                    "checkpoint": meta.get("checkpoint"), "classifier_test_accuracy": meta.get("test_accuracy"),
                    "backbone_name": getattr(bb, "name", None),
                    "max_ig_delta": max(deltas) if deltas else None, "ig_tolerance": self.ig_tolerance,
                    "ig_incomplete": len(incomplete)}  # fmt: skip
        if incomplete:
            log.warning("IG completeness failed for %d attribution(s) (utterances %s): see completeness_delta / "
                        "completeness_ratio in results.csv", len(incomplete), sorted(set(incomplete))[:5])  # fmt: skip
        return AttributionResult("attribution", rows, meta=out_meta, tables=tables, plots=plots, raw_dir=raw_dir)


def target_name(tg) -> str:
    info = tg.info
    if info.get("target") == "classifier":
        return f"{info['head']}={info['class']}"
    return f"{info['target']}{info.get('token_index')}:{str(info.get('token', '')).strip()}"


def _time_curve(raw: torch.Tensor, time_axis: int) -> np.ndarray:
    """Mean over every axis but time: (n_steps,) float64."""
    a = raw[0].double()
    ax = time_axis - 1
    other = [d for d in range(a.dim()) if d != ax]
    return (a.mean(dim=other) if other else a).numpy()

"""How reliable is an attribution? ``python analyze.py analysis=attribution_agreement``: rank agreement of word
scores between methods, input types, baselines and classifiers trained with different seeds (inter-seed
agreement, Shen et al. 2025), and sanity checks (Adebayo et al. 2018) against randomised models.

Every source is one word-score vector per (utterance, head): the scores of the utterance's WORD segments
(silences left out; a word no step of the representation falls in scores 0), computed through
``src.attribution`` for the head's true class (``which``). Two sources are compared item by item with
:mod:`src.functional.agreement` (Spearman, Kendall tau-b, top-k overlap); items are pooled per utterance (the
mean over heads) and the mean over utterances comes with a percentile bootstrap interval over utterances.

Groups (``groups``), each a matrix per context, saved as rows (``group, method, input, baseline, source_a,
source_b, metric, value, ci_low, ci_high, unit, n_units``) and heatmaps (``heatmap_measures``):

- ``method``: methods x methods, per input type (trained classifier, default baseline);
- ``input``: input types x input types, per method;
- ``baseline``: attribution baselines x baselines, per method that takes a baseline and input type;
- ``seed``: classifiers of ``seeds`` (train.py -m seed=0,1,2: same backbone, same split), per method and input;
  plus a summary row ``group=isa`` (inter-seed agreement: per utterance the mean over seed pairs);
- ``sanity``: the trained classifier's maps vs (a) the same classifier with a re-initialised head
  (``UtteranceClassifier.randomized``), (b) the same architecture with random backbone weights
  (``backbone.pretrained=false``) under the trained head (``random_backbone_head: trained``, Adebayo's
  full-model randomisation without retraining; ``randomized``: a random head too; ``train``: a classifier
  trained on the random backbone by ``ensure_classifier``, which needs a second activation cache). A
  method whose maps barely change under randomisation (high agreement) explains the input, not the model.

``chance`` on top-k rows: the agreement of two independent random rankings, ``k / m`` averaged over items
(Spearman and Kendall: 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from src.analyses.base import AnalysisError, AnalysisResult, Matrix, safe_name
from src.analyses.faithfulness import (
    DEFAULT_METHODS,
    OrderedResult,
    checkpoint_path,
    load_models,
    plain,
    select_items,
    true_labels,
)

log = logging.getLogger(__name__)

GROUPS = ("method", "input", "baseline", "seed", "sanity")
SANITY = ("randomized_head", "random_backbone")
BASELINE_FREE = ("saliency", "input_x_gradient", "noise_tunnel", "smoothgrad")  # methods that take no baseline


class AttributionAgreement:
    """Rank agreement of word attributions across methods, inputs, baselines, seeds; sanity checks.

    Args:
        checkpoint, train_overrides, seeds, seed_checkpoints: the classifiers: ``checkpoint`` (a path or
            ``auto``) is the trained model; the seed group uses ``seed_checkpoints`` (paths) or, with ``auto``,
            ``ensure_classifier`` for each of ``seeds`` (the first seed's classifier is the trained model).
        methods, inputs, heads: the sources (``heads: null`` = every head).
        baseline: the default attribution baseline; baselines: those compared in the baseline group;
        snr_db: noise baselines.
        groups: which of ``GROUPS`` to compute; sanity: which of ``SANITY``; random_backbone_head: ``trained`` |
            ``randomized`` | ``train`` (see the module docstring).
        reduction, method_kwargs, which: as analysis=faithfulness.
        utterances, max_utterances: ``test`` = the classifier's test split.
        measures: of ``AGREEMENT_MEASURES``; top_k: k of the top-k overlap; heatmap_measures: one PNG per matrix
            and measure listed.
        n_boot, alpha, seed: bootstrap over utterances (``None``: the run's seed; also the noise baseline's and the
            randomised head's seed).
    """

    needs_cache = False

    def __init__(self, checkpoint="auto", train_overrides: Sequence[str] = ("experiment=commands",),
                 seeds: Sequence[int] = (0, 1, 2), seed_checkpoints: Sequence[str] | None = None,
                 methods: Sequence[str] = DEFAULT_METHODS, inputs: Sequence[str] = ("waveform", "spectrogram", "cnn"),
                 heads: Sequence[str] | None = None, baseline: str = "zeros", baselines: Sequence[str] = ("zeros", "noise"),
                 snr_db: float = 10.0, groups: Sequence[str] = GROUPS, sanity: Sequence[str] = SANITY,
                 random_backbone_head: str = "trained", reduction: str = "mean", method_kwargs: dict | None = None,
                 which: str = "true", utterances="test", max_utterances: int | None = 20,
                 measures: Sequence[str] = ("spearman", "kendall", "top_k"), top_k: int = 1,
                 heatmap_measures: Sequence[str] = ("spearman",), n_boot: int = 1000, alpha: float = 0.05,
                 seed: int | None = None) -> None:  # fmt: skip
        from src.attribution import BASELINES, INPUT_TYPES, METHODS, REDUCTIONS
        from src.functional.agreement import AGREEMENT_MEASURES

        for key, vals, allowed in (("methods", methods, METHODS), ("inputs", inputs, INPUT_TYPES),
                                   ("baselines", [baseline, *baselines], BASELINES), ("groups", groups, GROUPS),
                                   ("sanity", sanity, SANITY), ("measures", [*measures, *heatmap_measures], AGREEMENT_MEASURES)):  # fmt: skip
            bad = sorted(set(vals) - set(allowed))
            if bad:
                raise AnalysisError(f"analysis.{key}: {bad} unknown; choose from {list(allowed)}")
        if random_backbone_head not in ("trained", "randomized", "train"):
            raise AnalysisError(f"analysis.random_backbone_head must be trained, randomized or train, got {random_backbone_head!r}")
        if reduction not in REDUCTIONS:
            raise AnalysisError(f"analysis.reduction={reduction!r}; choose from {list(REDUCTIONS)}")
        which = "true" if which is True else str(which)  # YAML's unquoted true
        if which not in ("true", "predicted"):
            raise AnalysisError(f"analysis.which must be true or predicted, got {which!r}")
        if "seed" in groups and seed_checkpoints is None and len(seeds) < 2:
            raise AnalysisError(f"analysis.seeds={list(seeds)}: inter-seed agreement needs at least 2 classifiers")
        self.checkpoint = checkpoint
        self.train_overrides = [str(o) for o in (train_overrides or [])]
        self.seeds = [int(s) for s in seeds]
        self.seed_checkpoints = None if seed_checkpoints is None else [str(p) for p in seed_checkpoints]
        self.methods, self.inputs = list(methods), list(inputs)
        self.heads = None if heads is None else [str(h) for h in heads]
        self.baseline, self.baselines, self.snr_db = baseline, list(dict.fromkeys([baseline, *baselines])), float(snr_db)
        self.groups, self.sanity = list(groups), list(sanity)
        self.random_backbone_head = random_backbone_head
        self.reduction, self.which = reduction, which
        self.method_kwargs = plain(method_kwargs)
        self.utterances = utterances if isinstance(utterances, str) else [str(u) for u in utterances]
        self.max_utterances = max_utterances
        self.measures, self.top_k = list(measures), int(top_k)
        self.heatmap_measures = list(heatmap_measures)
        self.n_boot, self.alpha, self.seed = int(n_boot), float(alpha), seed

    def kwargs_of(self, method: str) -> dict:
        flat = {k: v for k, v in self.method_kwargs.items() if not isinstance(v, dict)}
        return {**flat, **dict(self.method_kwargs.get(method) or {})}

    # ------------------------------------------------------------------------ models

    def _models(self, ctx, seed: int, backbone):
        """name -> (backbone, classifier): ``trained``, ``seed<k>``, ``randomized_head``, ``random_backbone``."""
        if self.seed_checkpoints is not None:
            paths = {"trained": checkpoint_path(ctx, self.checkpoint, self.train_overrides, self.seeds[0])}
            paths.update({f"seed{k}": checkpoint_path(ctx, p, (), 0) for k, p in enumerate(self.seed_checkpoints)})
        elif "seed" in self.groups:
            first = checkpoint_path(ctx, self.checkpoint, self.train_overrides, self.seeds[0])
            paths = {"trained": first, f"seed{self.seeds[0]}": first}
            for s in self.seeds[1:]:
                if str(self.checkpoint) != "auto":
                    raise AnalysisError("analysis.checkpoint is a path: give the other seeds' classifiers as "
                                        "analysis.seed_checkpoints (or use checkpoint=auto with analysis.seeds)")  # fmt: skip
                paths[f"seed{s}"] = checkpoint_path(ctx, "auto", self.train_overrides, s)
        else:
            paths = {"trained": checkpoint_path(ctx, self.checkpoint, self.train_overrides, self.seeds[0])}
        m = load_models(paths, backbone)
        bb = m.backbone
        out = {name: (bb, clf) for name, (clf, _meta, _p) in m.classifiers.items()}
        meta = m.classifiers["trained"][1]
        trained = m.classifiers["trained"][0]
        info = {"checkpoints": {k: str(p) for k, (_c, _m, p) in m.classifiers.items()}}
        if "sanity" in self.groups:
            if "randomized_head" in self.sanity:
                out["randomized_head"] = (bb, trained.randomized(seed))
            if "random_backbone" in self.sanity:
                rb, rclf = self._random_backbone(ctx, meta, trained, seed)
                out["random_backbone"] = (rb, rclf)
                info["random_backbone"] = getattr(rb, "name", "?")
        return out, meta, info

    def _random_backbone(self, ctx, meta: dict, trained, seed: int):
        from src.backbones.spec import BackboneRecordError, build_backbone, read_record

        try:  # the checkpoint's backbone record (plain data, validated), with random weights
            rec = read_record(meta.get("backbone"), "the classifier checkpoint")
            rb = build_backbone({"kind": rec["kind"], "args": {**rec["args"], "pretrained": False}},
                                source="the classifier checkpoint").eval()  # fmt: skip
        except BackboneRecordError as e:
            raise AnalysisError(f"cannot build the random-weights backbone of the sanity check: {e}") from None
        if self.random_backbone_head == "trained":
            return rb, trained
        if self.random_backbone_head == "randomized":
            return rb, trained.randomized(seed)
        from src.probes.utterance import UtteranceClassifier

        p = checkpoint_path(ctx, "auto", [*self.train_overrides, "backbone.pretrained=false"], self.seeds[0])
        clf, _ = UtteranceClassifier.load(p)
        return rb, clf.eval()

    # ------------------------------------------------------------------------ scores

    def _sources(self) -> list[tuple[str, str, str, str]]:
        """(model, method, input, baseline) combinations the groups need."""
        need = []
        for m in self.methods:
            for i in self.inputs:
                need.append(("trained", m, i, self.baseline))
                if "baseline" in self.groups and m not in BASELINE_FREE:
                    need += [("trained", m, i, b) for b in self.baselines]
                if "seed" in self.groups:
                    need += [(name, m, i, self.baseline) for name in self._seed_names()]
                if "sanity" in self.groups:
                    need += [(s, m, i, self.baseline) for s in self.sanity]
        return list(dict.fromkeys(need))

    def _seed_names(self) -> list[str]:
        if self.seed_checkpoints is not None:
            return [f"seed{k}" for k in range(len(self.seed_checkpoints))]
        return [f"seed{s}" for s in self.seeds]

    def run(self, ctx) -> AnalysisResult:
        from src.analyses.faithfulness import attribution_scores
        from src.attribution import Representation, classifier_target, make_segments
        from src.progress import progress

        seed = ctx.seed if self.seed is None else int(self.seed)
        models, meta, info = self._models(ctx, seed, ctx.configured_backbone())
        trained = models["trained"][1]
        heads = list(trained.heads) if self.heads is None else self.heads
        unknown = sorted(set(heads) - set(trained.heads))
        if unknown:
            raise AnalysisError(f"analysis.heads {unknown} are not heads of the classifier ({sorted(trained.heads)})")
        corpus = ctx.corpus
        idx = select_items(corpus, meta, self.utterances, self.max_utterances, seed)
        # a seed classifier that is the trained one (same checkpoint) is computed once
        alias = {n: "trained" for n in self._seed_names()
                 if n in info["checkpoints"] and info["checkpoints"][n] == info["checkpoints"]["trained"]}  # fmt: skip
        need = [k for k in self._sources() if k[0] not in alias]
        scores: dict[tuple, dict] = {k: {} for k in need}  # source -> {(utt, head): word scores}
        chance: dict = {}
        seconds: dict = {}
        t_start = time.perf_counter()
        for pos, i in enumerate(progress(idx, desc="attribution agreement", unit="utt")):
            if pos:
                log.info("attribution agreement: %d/%d utterances done, %.0f s", pos, len(idx), time.perf_counter() - t_start)
            utt = corpus[i]
            uid = str(corpus.ids[i])
            labels, _ = true_labels(corpus, i, heads)
            segs = make_segments(utt, "words", utt_id=uid)
            words = np.flatnonzero(segs.is_word)
            for h in heads:
                chance[(uid, h)] = min(self.top_k, len(words)) / max(1, len(words))
            for model in dict.fromkeys(k[0] for k in need):
                bb, clf = models[model]
                for inp in dict.fromkeys(k[2] for k in need if k[0] == model):
                    rep = Representation(bb, utt.audio, inp, uid)
                    bases = {}
                    for h in heads:
                        t = classifier_target(bb, clf, utt, h, inp, which=self.which, label=labels[h], rep=rep)
                        for (mo, m, i2, b) in need:
                            if mo != model or i2 != inp:
                                continue
                            if b not in bases:
                                bases[b] = None if b == "zeros" else rep.baseline(b, snr_db=self.snr_db, seed=seed)
                            sc, _delta, sec = attribution_scores(t, m, bases[b], segs, self.reduction, self.kwargs_of(m))
                            seconds[(model, m, inp)] = seconds.get((model, m, inp), 0.0) + sec
                            scores[(mo, m, i2, b)][(uid, h)] = np.nan_to_num(np.asarray(sc, np.float64)[words], nan=0.0)
        for k in self._sources():
            if k[0] in alias:
                scores[k] = scores[("trained", *k[1:])]
        rows, matrices = self._rows(scores, heads, chance, seed)
        meta_out = {
            **info, "heads": heads, "methods": self.methods, "inputs": self.inputs, "baseline": self.baseline,
            "baselines": self.baselines, "groups": self.groups, "sanity": self.sanity,
            "random_backbone_head": self.random_backbone_head, "utterances": len(idx),
            "utterance_ids": [str(corpus.ids[i]) for i in idx], "measures": self.measures, "top_k": self.top_k,
            "reduction": self.reduction, "which": self.which, "seed": seed,
            "attribution_seconds": {"/".join(k): round(v, 2) for k, v in seconds.items()},
            "seconds_attributions": round(time.perf_counter() - t_start, 2),
            "classifier_meta": {k: meta.get(k) for k in ("backbone_name", "corpus", "seed", "layer", "test_accuracy")},
        }  # fmt: skip
        return OrderedResult("attribution_agreement", rows, matrices=matrices, meta=meta_out,
                             lead=("group", "method", "input", "baseline", "source_a", "source_b"))  # fmt: skip

    # ------------------------------------------------------------------------ matrices

    def _rows(self, scores: dict, heads: list[str], chance: dict, seed: int):
        from src.functional.agreement import (
            agreement_matrix,
            mean_with_interval,
            per_item_agreement,
            unit_means,
        )

        def unit(key):
            return key[0]

        rows: list[dict] = []
        matrices: dict[str, Matrix] = {}

        def add(group: str, context: dict, sources: dict[str, dict], title: str):
            for measure in self.measures:
                mat = agreement_matrix(sources, measure, k=self.top_k, n_boot=self.n_boot, alpha=self.alpha,
                                       seed=seed, unit_of=unit)  # fmt: skip
                extra = {}
                if measure == "top_k":
                    items = set().union(*[set(s) for s in sources.values()])
                    extra["chance"] = float(np.mean(unit_means({k: chance[k] for k in items}, unit)))
                for r in mat.rows(group=group, **context):
                    rows.append({**r, **extra, "unit": "utterance"})
                if measure in self.heatmap_measures:
                    name = safe_name(f"agreement_{group}_" + "_".join(str(v) for v in context.values()) + f"_{measure}")
                    matrices[name] = Matrix(mat.value, mat.names, mat.names, title=f"{title}: {measure}", vmin=-1.0
                                            if measure != "top_k" else 0.0, vmax=1.0, xlabel=group, ylabel=group,
                                            quantity=f"agreement ({measure.replace('_', ' ')})")  # fmt: skip

        b0 = self.baseline
        if "method" in self.groups and len(self.methods) > 1:
            for i in self.inputs:
                add("method", {"input": i, "baseline": b0},
                    {m: scores[("trained", m, i, b0)] for m in self.methods}, f"methods ({i})")
        if "input" in self.groups and len(self.inputs) > 1:
            for m in self.methods:
                add("input", {"method": m, "baseline": b0},
                    {i: scores[("trained", m, i, b0)] for i in self.inputs}, f"input types ({m})")
        if "baseline" in self.groups and len(self.baselines) > 1:
            for m in self.methods:
                if m in BASELINE_FREE:
                    continue
                for i in self.inputs:
                    add("baseline", {"method": m, "input": i},
                        {b: scores[("trained", m, i, b)] for b in self.baselines}, f"baselines ({m}, {i})")
        if "seed" in self.groups:
            names = self._seed_names()
            for m in self.methods:
                for i in self.inputs:
                    src = {n: scores[(n, m, i, b0)] for n in names}
                    add("seed", {"method": m, "input": i, "baseline": b0}, src, f"classifier seeds ({m}, {i})")
                    for measure in self.measures:  # ISA: per utterance the mean over seed pairs (and heads)
                        per: dict = {}
                        for a, b in combinations(names, 2):
                            for key, v in per_item_agreement(src[a], src[b], measure, self.top_k).items():
                                per[(key, a, b)] = v
                        s = mean_with_interval(unit_means(per, lambda k: k[0][0]), self.n_boot, self.alpha, seed)
                        rows.append({"group": "isa", "method": m, "input": i, "baseline": b0, "source_a": "seeds",
                                     "source_b": f"{len(names)} classifiers", "metric": measure, **s,
                                     "n_pairs": len(names) * (len(names) - 1) // 2, "unit": "utterance",
                                     **({"k": self.top_k} if measure == "top_k" else {})})  # fmt: skip
        if "sanity" in self.groups:
            for m in self.methods:
                for i in self.inputs:
                    ref = scores[("trained", m, i, b0)]
                    for s_name in self.sanity:
                        for measure in self.measures:
                            per = per_item_agreement(ref, scores[(s_name, m, i, b0)], measure, self.top_k)
                            s = mean_with_interval(unit_means(per, unit), self.n_boot, self.alpha, seed)
                            extra = {"k": self.top_k, "chance": float(np.mean(unit_means(
                                {k: chance[k] for k in per}, unit)))} if measure == "top_k" else {}  # fmt: skip
                            rows.append({"group": "sanity", "method": m, "input": i, "baseline": b0,
                                         "source_a": "trained", "source_b": s_name, "metric": measure, **s, **extra,
                                         "unit": "utterance"})  # fmt: skip
        return rows, matrices

"""Activation patching and causal tracing on the live model: ``python analyze.py analysis=patching``.

A thin class over the intervention engine (src/interventions: ``patch_sweep``, ``attribution_patching``) and the
counterfactual audio (src/interventions/counterfactual.py). Pairs (``analysis.pairs``):

- ``cue``: the homophone cue pairs (a cue word swapped so that the target's spelling flips, the target's audio
  sample-identical), Festival, duration-controlled; metric = Whisper's logit difference ``target - foil`` at the
  decision position, both runs teacher-forced on the clean sentence;
- ``control``: the same sentences twice, the second through the duration-controlled path (module docstring of
  counterfactual.py): clean and corrupted runs are identical, so every recovery is undefined and every effect 0;
- ``noise`` (causal tracing): utterances of the run's corpus with Gaussian noise at ``snr_db`` on the words
  ``noise_words``, one pair per seed; metric = the teacher-forced log-probability of the clean transcript
  (Whisper), or for an encoder-only ``*ForCTC`` checkpoint the CTC log-probability of its CTC head's greedy
  transcript of the clean member (``ctc_logprob``; any pair source but ``commands`` on such a model);
- ``commands``: minimal pairs of the commands corpus's sentences that differ in one slot word (Festival,
  duration-controlled); metric = the commands classifier's logit difference (clean slot value - corrupted one)
  of that slot; the classifier from ``analysis.checkpoint`` (``auto``: the existing checkpoint machinery,
  src/analyses/attribution.py ``auto_checkpoint``);
- a csv path: pairs of the corpus's utterances by id (``clean_id, corrupted_id[, target, foil]``): with target
  and foil the logit difference at the first clean word equal to the target, else the transcript log-probability.

Sites per pair: ``encoder`` residual states x word positions (a word = its frames), ``decoder`` residual states x
token positions (up to the decision position), ``cross_attention`` (and ``decoder_self_attention``: decoder self-attention)
heads at every token position, ``encoder_self_attention`` heads at every frame, ``encoder_mlp`` / ``decoder_mlp``:
MLP outputs of layers 1..N x words / tokens. Layers in the state convention (layer k = the layer whose output is
state k). Direction ``denoising`` (clean -> corrupted run) or ``noising``.

``results.csv`` columns, exactly: ``item, intervention, component, layer, layer_name, position, position_label,
head, metric, value, ci_low, ci_high``. Per-item rows (``ci_low``/``ci_high`` empty), then one ``item = mean`` row
per (intervention, component, layer, position, head, metric): the mean over the items with a finite value and its
percentile bootstrap interval over items (src/functional/intervals.py ``bootstrap_ci``). How many items each interval
rests on, and whether fewer than 5, is in results.json (``meta.n_items``, ``meta.few_units``) and a warning.
Metrics: ``recovery`` = (patched - corrupted) / (clean - corrupted) (NaN where clean = corrupted), ``effect`` =
patched - corrupted (denoising) or patched - clean (noising), the raw metric at ``intervention = none``
(``<metric>_clean``, ``<metric>_corrupted``), and with ``attribution: true`` the first-order estimate of ``effect``
(``intervention = attribution_patching``) and its Spearman correlation with real patching per item.

Rendition control (``analysis.control``): a second rendition A' of each clean member A (the same samples plus an
independent white dither at ``dither_snr_db``, exact; Festival's diphone synthesis has no randomness of its own) is
patched into the corrupted run B at every encoder state and each word whose audio differs, beside the real patch
from A: rows ``intervention = control_rendition`` with ``recovery`` = (patched_A' - B) / (A - B),
``ratio_to_clean_patch`` = (patched_A' - B) / (patched_A - B) (exactly 1 for an exact copy), ``effect``, role rows
``role:differing`` and the measured ``dither_snr_db`` per pair. If the pair's manipulation (duration control, the
synthesis) created an effect by itself, A' would not stand in for A.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.analyses.base import MIN_UNITS, AnalysisError, AnalysisResult, safe_name

log = logging.getLogger(__name__)

COLUMNS = ["item", "intervention", "component", "layer", "layer_name", "position", "position_label", "head",
           "metric", "value", "ci_low", "ci_high"]  # fmt: skip
PAIR_SOURCES = ("cue", "control", "noise", "commands")
SITE_COMPONENTS = ("encoder", "decoder", "cross_attention", "decoder_self_attention", "encoder_self_attention",
                   "encoder_mlp", "decoder_mlp")  # fmt: skip
DECODER_COMPONENTS = ("decoder", "cross_attention", "decoder_self_attention", "decoder_mlp")


def component_of(site) -> str:
    """The results' ``component`` of an engine site: ``encoder`` / ``decoder`` (residual states),
    ``encoder_self_attention`` / ``decoder_self_attention`` / ``cross_attention`` (heads), ``encoder_mlp`` /
    ``decoder_mlp``."""
    if site.kind == "resid":
        return site.component
    if site.kind == "mlp":
        return f"{site.component}_mlp"
    return {"encoder": "encoder_self_attention", "decoder": "decoder_self_attention"}.get(site.component, site.component)
MEAN_ITEM = "mean"


CONTROL = "control_rendition"


def control_words(pair) -> list[int]:
    """Word positions of ``pair`` whose audio differs between the members (a cue pair's spliced target does not)."""
    out = []
    for k in pair.differing:
        w = pair.clean.tier("words")[k]
        sr = pair.clean.sample_rate
        lo, hi = int(round(w.start * sr)), int(round(w.end * sr))
        if not np.array_equal(pair.clean.audio[lo:hi], pair.corrupted.audio[lo:hi]):
            out.append(int(k))
    return out


# ----------------------------------------------------------------------------- rows and summaries


def role_rows(item_rows: list[dict], roles: dict[str, dict[str, list[int]]]) -> list[dict]:
    """Per item: the mean over the positions of each role (``position`` empty, ``position_label = role:<name>``) of
    every resid row (same intervention, component, layer, metric). Items of different sentences are averaged
    through these: their word positions mean different words."""
    out = []
    groups: dict[tuple, dict[int, float]] = {}
    proto: dict[tuple, dict] = {}
    for r in item_rows:
        if r["position"] is None or r["component"] not in roles:
            continue
        key = (r["intervention"], r["component"], r["layer"], r["metric"])
        groups.setdefault(key, {})[r["position"]] = r["value"]
        proto[key] = r
    for key, vals in groups.items():
        for role, positions in roles[key[1]].items():
            v = [vals[p] for p in positions if p in vals]
            if v:
                out.append({**proto[key], "position": None, "position_label": f"role:{role}",
                            "value": float(np.mean(v))})  # fmt: skip
    return out



def row(item, intervention, component, layer, layer_name, position, position_label, head, metric, value) -> dict:
    return {"item": str(item), "intervention": intervention, "component": component, "layer": layer,
            "layer_name": layer_name, "position": position, "position_label": position_label, "head": head,
            "metric": metric, "value": float(value), "ci_low": None, "ci_high": None}  # fmt: skip


def summarise(rows: list[dict], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[list[dict], dict]:
    """One mean row per (intervention, component, layer, position, head, metric) over the per-item rows: the mean
    of the items' finite values and its percentile bootstrap interval over items. Also ``{n_items: ...}``."""
    from src.functional.intervals import bootstrap_ci

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(r[c] for c in ("intervention", "component", "layer", "layer_name", "position", "position_label",
                                   "head", "metric"))  # fmt: skip
        groups.setdefault(key, []).append(r)
    out, counts = [], []
    for key, rs in groups.items():
        v = np.array([r["value"] for r in rs], dtype=float)
        v = v[np.isfinite(v)]
        counts.append(len(v))
        mean = float(np.mean(v)) if len(v) else float("nan")
        lo = hi = float("nan")
        if len(v) >= 2:
            ci = bootstrap_ci(v, np.arange(len(v)), statistic="mean", n_boot=n_boot, alpha=alpha, seed=seed)
            lo, hi = float(ci.low), float(ci.high)
        r = dict(zip(("intervention", "component", "layer", "layer_name", "position", "position_label", "head",
                      "metric"), key))  # fmt: skip
        out.append({"item": MEAN_ITEM, **r, "value": mean, "ci_low": lo, "ci_high": hi})
    n_min = min(counts) if counts else 0
    return out, {"n_items_min": int(n_min), "n_items_max": int(max(counts) if counts else 0),
                 "few_units": bool(n_min < MIN_UNITS)}  # fmt: skip


def mean_matrix(rows: list[dict], item: str, intervention: str, component: str, metric: str, col: str):
    """``(layer names, column labels, values)`` of one item's rows (``item = mean``: the mean rows) of one
    intervention/component/metric; rows = layers (sorted), columns = word/token positions (``col='position'``),
    roles (``'role'``: the ``role:`` rows) or heads (``'head'``). None when there are no such rows."""
    sel = [r for r in rows if r["item"] == item and r["intervention"] == intervention
           and r["component"] == component and r["metric"] == metric]  # fmt: skip
    if col == "position":
        sel = [r for r in sel if r["position"] is not None]
        keys = sorted({r["position"] for r in sel})
        labels = {r["position"]: r["position_label"] for r in sel}
        col_labels = [f"{k}\n{labels[k]}" for k in keys]  # index over the word (long labels overlap on one line)
        colkey = "position"
    elif col == "role":
        sel = [r for r in sel if r["position"] is None and str(r["position_label"]).startswith("role:")]
        order = ["role:prompt", "role:text", "role:changed", "role:target", "role:other", "role:last"]
        keys = sorted({r["position_label"] for r in sel}, key=lambda x: (order.index(x) if x in order else 99, x))
        col_labels = [k[len("role:"):] for k in keys]
        colkey = "position_label"
    else:
        sel = [r for r in sel if r["head"] is not None]
        keys = sorted({r["head"] for r in sel})
        col_labels = [str(k) for k in keys]
        colkey = "head"
    if not sel:
        return None
    layers = sorted({r["layer"] for r in sel})
    m = np.full((len(layers), len(keys)), np.nan)
    for r in sel:
        m[layers.index(r["layer"]), keys.index(r[colkey])] = r["value"]
    names = {r["layer"]: r["layer_name"] for r in sel}
    return [names[k] for k in layers], col_labels, m


@dataclass(frozen=True)
class InterventionResult(AnalysisResult):
    """results.csv with exactly :data:`COLUMNS`; heatmaps ``(name, intervention, component, metric, columns)``
    drawn on one colour scale per metric with a labelled colour bar; extra tables (top heads) as csv."""

    heatmaps: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    top_heads: list[dict] = field(default_factory=list)
    top_metric: str = ""

    def column_order(self, context: list[str], present: set[str]) -> list[str]:
        return list(COLUMNS)

    def save(self, out_dir, context: dict | None = None) -> list[Path]:
        from src.analyses.base import _write_table
        from src.reporting.results import write_results

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [{c: r.get(c) for c in COLUMNS} for r in self.rows]
        write_results(rows, out_dir, columns_first=list(COLUMNS), meta={**self.meta, **dict(context or {})})
        for name, table in self.tables.items():
            _write_table(out_dir / f"{name}.csv", table)
        if self.top_heads:
            _write_table(out_dir / "top_heads.csv", self.top_heads)
        from src.reporting.figures import context_label

        return self.figures(out_dir, title_prefix=context_label(context))

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        from src.reporting.figures import analysis_name, figure_title, plot_matrix
        from src.reporting.figures_live import plot_top_heads

        out_dir = Path(out_dir)
        pngs = []
        mats = []
        for name, item, intervention, component, metric, col in self.heatmaps:
            got = mean_matrix(self.rows, item, intervention, component, metric, col)
            if got is not None:
                mats.append((name, item, intervention, component, metric, col, *got))
        scale: dict[str, float] = {}
        for *_, metric, _col, _r, _c, m in mats:  # noqa: B007  # one colour scale per metric over every heatmap
            fin = np.abs(m[np.isfinite(m)])
            scale[metric] = max(scale.get(metric, 0.0), float(fin.max()) if fin.size else 1.0)
        xlabels = {"position": "word / token position", "role": "role (mean over its positions)", "head": "head"}
        for name, item, intervention, component, metric, col, rlab, clab, m in mats:
            v = scale[metric] or 1.0  # diverging scale centred on 0, the same for every heatmap of this metric
            what = "mean over items" if item == MEAN_ITEM else f"item {item}"
            pngs.append(plot_matrix(
                m, out_dir / f"{name}.png", rlab, clab,
                title=figure_title(f"{analysis_name(self.analysis)}: {intervention} {component}, {metric} ({what})",
                                   title_prefix),
                vmin=-v, vmax=v, cmap="RdBu_r", xlabel=xlabels[col], ylabel="state / layer",
                colorbar_label=f"{metric} ({what})"))  # fmt: skip
        if self.top_heads:
            pngs.append(plot_top_heads(self.top_heads, out_dir / "top_heads.png", self.top_metric,
                                       figure_title(f"{analysis_name(self.analysis)}: top heads", title_prefix)))  # fmt: skip
        return pngs


def top_heads(rows: list[dict], intervention: str, metric: str, k: int, components: Sequence[str],
              largest: bool = True) -> list[dict]:  # fmt: skip
    """The ``k`` head mean rows of ``intervention``/``metric`` with the largest (or smallest) value."""
    sel = [r for r in rows if r["item"] == MEAN_ITEM and r["intervention"] == intervention and r["metric"] == metric
           and r["head"] is not None and r["component"] in components and np.isfinite(r["value"])]  # fmt: skip
    sel.sort(key=lambda r: -r["value"] if largest else r["value"])
    return [{"rank": i + 1, "component": r["component"], "layer": r["layer"], "head": r["head"], "metric": metric,
             "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]} for i, r in enumerate(sel[:k])]  # fmt: skip


# ----------------------------------------------------------------------------- whisper token sequences


def _text_words(text: str) -> list[str]:
    return text.split()


def teacher_ids(bb, pair) -> tuple[list[int], int | None, int | None, int | None]:
    """Teacher-forced ids of a Whisper pair (prompt + the clean sentence's tokens) and, when the pair has a target
    and foil, ``(decision position, target id, foil id)``: the target word is one token (with its leading space,
    an error naming it and how it tokenises otherwise) and the logits at the decision position predict it."""
    from src.interventions.metrics import single_token

    tok = bb.tokenizer()
    prompt = list(bb.decoder_prompt_ids())
    if tok is None:
        raise AnalysisError(f"{bb.name} has no tokenizer: give pairs whose transcript comes from the model "
                            "(analysis.pairs=noise) or a model with one")  # fmt: skip
    words = _text_words(pair.clean.text or " ".join(w.label for w in pair.clean.tier("words")))
    if pair.target is None:
        return prompt + tok.encode(" " + " ".join(words), add_special_tokens=False), None, None, None
    t = pair.target_index
    if t is None:
        labels = [w.label for w in pair.clean.tier("words")]
        if pair.target.lower() not in labels:
            raise AnalysisError(f"pair {pair.id!r}: target {pair.target!r} is not a word of {labels}")
        t = labels.index(pair.target.lower())
    if len(words) != len(pair.clean.tier("words")):
        raise AnalysisError(f"pair {pair.id!r}: the text {pair.clean.text!r} does not split into its "
                            f"{len(pair.clean.tier('words'))} words")  # fmt: skip
    strip = lambda w: re.sub(r"[^\w']+$", "", w)  # noqa: E731
    target_surface = strip(words[t])
    target_id = single_token(bb, " " + target_surface, "target")
    foil = pair.foil if target_surface.islower() else pair.foil.capitalize()
    foil_id = single_token(bb, " " + foil, "foil")
    prefix = tok.encode(" " + " ".join(words[:t]), add_special_tokens=False) if t > 0 else []
    ids = prompt + prefix  # the logits at the last of these tokens decide the target (nothing after matters)
    return ids, len(ids) - 1, target_id, foil_id


# ----------------------------------------------------------------------------- CTC models


def ctc_readout(bb):
    """The ``*ForCTC`` head of an encoder-only backbone (its metric without a classifier), else an error."""
    if not hasattr(bb, "ctc_head"):
        raise AnalysisError(f"{bb.name}: without a decoder the metric is a classifier's (analysis.pairs=commands with "
                            "analysis.checkpoint) or a CTC head's, and this backbone has neither")  # fmt: skip
    try:
        return bb.ctc_head()
    except Exception as e:  # BackboneError: names the checkpoint class and the classes that have a head
        raise AnalysisError(f"{bb.name}: without a decoder the metric is a classifier's (analysis.pairs=commands "
                            f"with analysis.checkpoint) or the CTC log-probability of a *ForCTC checkpoint: {e}") from None


def ctc_metric(bb, pair):
    """CTC models: ``log p(clean transcript | audio)`` under the model's CTC head, the transcript being the head's
    greedy reading of the clean member (best path: frame argmax, repeats merged, blanks dropped), as Whisper's
    noise pairs score the model's own greedy transcript."""
    import torch

    from src.interventions import forward, make_inputs
    from src.interventions.metrics import ctc_logprob

    readout = ctc_readout(bb)
    inp = make_inputs(bb, pair.clean.audio, utt_id=pair.clean.id)
    with torch.no_grad():
        out = forward(bb, inp)
        best = readout.head(out.output[0, : inp.frames].to(readout.head.weight.dtype)).argmax(-1).tolist()
    ids = [t for i, t in enumerate(best) if t != readout.blank and (i == 0 or t != best[i - 1])]
    if not ids:
        raise AnalysisError(f"pair {pair.id!r}: {bb.name}'s CTC head reads {pair.clean.id!r} as nothing, so there "
                            "is no transcript to score; choose other utterances")  # fmt: skip
    return ctc_logprob(bb, ids)


# ----------------------------------------------------------------------------- the commands classifier


def commands_train_overrides() -> list[str]:
    """train.py overrides of the commands classifier for this analyze.py run: ``experiment=commands`` (the train
    experiment; this run's own experiment is an analyze.py one) with the run's backbone, data, paths and cache
    (Hydra's choices and command-line overrides)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError as e:
        raise AnalysisError("analysis.checkpoint=auto needs a Hydra run (python analyze.py ...); give a checkpoint path") from e
    choices = dict(hc.runtime.choices)
    over = ["experiment=commands"] + [f"{g}={choices[g]}" for g in ("backbone", "data", "paths", "cache") if choices.get(g)]
    keep = ("backbone.", "data.", "paths.", "cache.", "split.")
    return over + [o for o in hc.overrides.task if o.lstrip("+~").startswith(keep)]


def commands_checkpoint(ctx) -> Path:
    """``analysis.checkpoint=auto`` for commands pairs: the classifier of ``python train.py experiment=commands``
    with this run's settings, found or trained by the job layer (``ctx.classifier``), as analysis=attribution's."""
    return Path(ctx.classifier(ctx.seed, commands_train_overrides()))  # a hand-built context: give a path


# ----------------------------------------------------------------------------- the analysis


class Patching:
    """Activation patching / causal tracing over word positions, decoder tokens and heads (module docstring).

    Args: see conf/analysis/patching.yaml (every key is commented there).
    """

    needs_cache = False

    def __init__(self, pairs: str = "cue", num_items: int | None = 8, voice: str = "kal",
                 components: Sequence[str] = ("encoder", "decoder", "cross_attention"), layers=None,
                 words: Sequence[int] | None = None, direction: str = "denoising", attribution: bool = False,
                 utterances="all", max_utterances: int | None = 8, noise_words: Sequence[int] = (0,),
                 snr_db: float = 0.0, seeds: Sequence[int] = (0, 1, 2), checkpoint: str | None = "auto",
                 max_new_tokens: int = 64, chunk: int = 16, top_k: int = 10, control: bool = False,
                 dither_snr_db: float | None = 40.0, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int | None = None) -> None:  # fmt: skip
        comps = [components] if isinstance(components, str) else list(components)
        bad = [c for c in comps if c not in SITE_COMPONENTS]
        if bad or not comps:
            raise AnalysisError(f"analysis.components={comps}: each must be one of {list(SITE_COMPONENTS)}")
        if direction not in ("denoising", "noising"):
            raise AnalysisError(f"analysis.direction={direction!r} is not 'denoising' or 'noising'")
        p = str(pairs)
        if p not in PAIR_SOURCES and not p.endswith(".csv"):
            raise AnalysisError(f"analysis.pairs={p!r}: one of {list(PAIR_SOURCES)} or a .csv file "
                                "(columns clean_id, corrupted_id[, target, foil])")  # fmt: skip
        if p.endswith(".csv") and not Path(p).expanduser().is_file():
            raise AnalysisError(f"analysis.pairs={p!r}: no such file")
        self.pairs, self.num_items, self.voice, self.components, self.layers = p, num_items, voice, comps, layers
        self.words = None if words is None else [int(w) for w in words]
        self.direction, self.attribution = direction, bool(attribution)
        self.utterances, self.max_utterances = utterances, max_utterances
        self.noise_words, self.snr_db, self.seeds = [int(w) for w in noise_words], float(snr_db), [int(s) for s in seeds]
        self.checkpoint, self.max_new_tokens, self.chunk, self.top_k = checkpoint, int(max_new_tokens), int(chunk), int(top_k)
        self.n_boot, self.alpha, self.seed = int(n_boot), float(alpha), seed
        self.control = bool(control)
        self.dither_snr_db = None if dither_snr_db is None else float(dither_snr_db)

    # ------------------------------------------------------------------------ pairs

    def build_pairs(self, ctx) -> list:
        from src.interventions import counterfactual as cf

        n = self.num_items
        if self.pairs == "cue":
            return cf.cue_pairs(voice=self.voice, num_items=n)
        if self.pairs == "control":
            texts = [cf.parse_cue_pair(x)[0] for x in cf.CUE_PAIRS][: n if n is not None else None]
            return cf.synthesize_pairs([(t, "") for t in texts], voice=self.voice, control=True)
        if self.pairs == "noise":
            from src.analyses.base import select_utterances

            idx = select_utterances(ctx.corpus, self.utterances, {}, ctx.seed, self.max_utterances)
            out = []
            for i in idx:
                utt = ctx.corpus[i]
                try:
                    out += cf.noise_pairs(utt, self.noise_words, self.snr_db, self.seeds)
                except cf.CounterfactualError as e:
                    raise AnalysisError(f"analysis.noise_words={self.noise_words}: {e}") from None
            return out[: n * len(self.seeds) if n is not None else None]
        if self.pairs == "commands":
            return self.command_pairs(ctx.corpus)
        try:
            pairs = cf.read_pairs_csv(self.pairs, ctx.corpus)
        except cf.CounterfactualError as e:
            raise AnalysisError(str(e)) from None
        return pairs[: n if n is not None else None]

    def command_pairs(self, corpus) -> list:
        """Minimal pairs of the commands corpus's sentences: same words but one slot word, that word the only
        word of its slot; synthesised duration-controlled. ``target``/``foil`` = the slot values, ``meta.slot``."""
        from src.datamodules.commands import command_item
        from src.interventions import counterfactual as cf

        items, seen = [], set()
        for i in range(len(corpus)):
            it = command_item(corpus, i)
            if it is None:
                raise AnalysisError(f"analysis.pairs=commands needs data=commands (corpus "
                                    f"{getattr(corpus, 'name', '?')!r} has no slots)")  # fmt: skip
            if it.text not in seen:
                seen.add(it.text)
                items.append(it)
        found, used = [], set()
        for a in items:
            wa = a.text.split()
            for b in items:
                wb = b.text.split()
                if a is b or len(wa) != len(wb) or (b.text, a.text) in used:
                    continue
                diff = [k for k in range(len(wa)) if wa[k] != wb[k]]
                if len(diff) != 1:
                    continue
                slots = [s for s in a.slots if a.slots[s] != b.slots[s]]
                if len(slots) != 1 or a.slot_words.get(slots[0]) != (diff[0],) or b.slot_words.get(slots[0]) != (diff[0],):
                    continue
                used.add((a.text, b.text))
                found.append((a, b, slots[0], diff[0]))
        # one pair per slot in turn, so a small num_items still covers every slot
        by_slot: dict[str, list] = {}
        for f in found:
            by_slot.setdefault(f[2], []).append(f)
        order = []
        while any(by_slot.values()):
            for s in sorted(by_slot):
                if by_slot[s]:
                    order.append(by_slot[s].pop(0))
        order = order[: self.num_items if self.num_items is not None else None]
        if not order:
            raise AnalysisError("analysis.pairs=commands: no two commands differ in exactly one slot word")
        ids = [f"{s}:{a.slots[s]}->{b.slots[s]}:{k}" for k, (a, b, s, _) in enumerate(order)]
        pairs = cf.synthesize_pairs([(a.text, b.text) for a, b, _, _ in order], voice=self.voice, ids=ids)
        from dataclasses import replace

        return [replace(p, target=a.slots[s], foil=b.slots[s], target_index=w, meta={**p.meta, "slot": s})
                for p, (a, b, s, w) in zip(pairs, order)]  # fmt: skip

    # ------------------------------------------------------------------------ checks before model work

    def check_pairs(self, bb, pairs) -> None:
        from src.interventions import InterventionError
        from src.interventions.counterfactual import CounterfactualError, check_frame_counts

        if not pairs:
            raise AnalysisError("analysis.pairs: no pairs")
        whisper = bool(getattr(bb, "has_decoder", False))
        for c in self.components:
            if c in DECODER_COMPONENTS and not whisper:
                raise AnalysisError(f"analysis.components={self.components}: {c!r} needs a decoder; {bb.name} "
                                    f"({getattr(bb, 'family', '?')} family) has none: use [encoder] (or "
                                    "encoder_self_attention, encoder_mlp)")  # fmt: skip
        n_enc, n_dec = len(bb.layer_modules()), (len(bb.decoder_layer_modules()) if whisper else 0)
        kinds = {"encoder": ("resid", n_enc, "encoder states"), "encoder_mlp": ("mlp", n_enc, "encoder_mlp layers"),
                 "encoder_self_attention": ("head", n_enc, "encoder_self_attention layers"),
                 "decoder": ("resid", n_dec, "decoder states"), "decoder_mlp": ("mlp", n_dec, "decoder_mlp layers"),
                 "cross_attention": ("head", n_dec, "cross_attention layers"),
                 "decoder_self_attention": ("head", n_dec, "decoder_self_attention layers")}  # fmt: skip
        for c in self.components:  # analysis.layers against every component, before any model work
            self._layers(kinds[c][1], kinds[c][0], kinds[c][2])
        if "encoder_self_attention" in self.components:
            from src.interventions import Site, validate_site

            try:  # WavLM: no hook reaches a head before out_proj
                validate_site(bb, Site("encoder", "head", 1, None, 0))
            except InterventionError as e:
                raise AnalysisError(f"analysis.components={self.components}: {e}") from None
        for p in pairs:
            n = len(p.clean.tier("words"))
            if self.words is not None:
                bad = [w for w in self.words if not 0 <= w < n]
                if bad:
                    raise AnalysisError(f"analysis.words={self.words}: position {bad[0]} is outside pair {p.id!r}, "
                                        f"which has words 0..{n - 1} {[w.label for w in p.clean.tier('words')]}")  # fmt: skip
            if not whisper and self.pairs != "commands":
                ctc_readout(bb)  # the metric is the CTC head's: a checkpoint without one fails here
            try:
                check_frame_counts(p, bb.frame_rate, bb.frame_offset)
                if whisper and p.target is not None and self.pairs != "commands":
                    teacher_ids(bb, p)  # target and foil must be single tokens: checked for every pair up front
            except (CounterfactualError, InterventionError, ValueError) as e:
                raise AnalysisError(str(e)) from None

    # ------------------------------------------------------------------------ metric per pair

    def classifier(self, ctx, bb):
        from src.analyses.base import load_classifier

        if self.checkpoint in (None, "auto"):
            path = commands_checkpoint(ctx)
        else:
            path = Path(str(self.checkpoint)).expanduser()
            if not path.is_file():
                raise AnalysisError(f"analysis.checkpoint={str(path)!r} does not exist (train one: python train.py "
                                    "experiment=commands, or set analysis.checkpoint=auto)")  # fmt: skip
        _, clf, _ = load_classifier(path, backbone=bb)
        return clf

    def prepare(self, bb, pair, clf):
        """``(clean Inputs, corrupted Inputs, metric, metric name, token labels)``."""
        import torch

        from src.interventions import make_inputs
        from src.interventions.metrics import classifier_logit_diff, logit_diff, transcript_logprob

        whisper = bool(getattr(bb, "has_decoder", False))
        ids, labels = None, []
        if clf is not None:
            if pair.target is None:
                raise AnalysisError(f"pair {pair.id!r}: the classifier metric needs target and foil classes")
            slot = pair.meta.get("slot")
            if slot is None:
                raise AnalysisError(f"pair {pair.id!r}: which classifier head? (commands pairs name their slot)")
            metric, name = classifier_logit_diff(clf, slot, pair.target, pair.foil), "classifier_logit_diff"
            if whisper:
                ids = list(bb.decoder_prompt_ids())
        elif not whisper:
            metric, name = ctc_metric(bb, pair), "ctc_logprob"
        elif pair.kind == "noise" or (pair.target is None and bb.tokenizer() is None):
            with torch.no_grad():
                text_ids = bb.transcribe_ids([torch.as_tensor(pair.clean.audio)], max_new_tokens=self.max_new_tokens)[0]
            if not text_ids:
                raise AnalysisError(f"pair {pair.id!r}: {bb.name} transcribes {pair.clean.id!r} as nothing, so there is "
                                    "no transcript to score; choose other utterances or pairs with a target and foil")  # fmt: skip
            ids = list(bb.decoder_prompt_ids()) + [int(t) for t in text_ids]
            metric, name = transcript_logprob(ids, len(bb.decoder_prompt_ids())), "transcript_logprob"
        else:
            ids, pos, t_id, f_id = teacher_ids(bb, pair)
            if t_id is None:
                metric, name = transcript_logprob(ids, len(bb.decoder_prompt_ids())), "transcript_logprob"
            else:
                metric, name = logit_diff(bb, t_id, f_id, pos), "logit_diff"
        if ids is not None:
            tok = bb.tokenizer() if hasattr(bb, "tokenizer") else None
            labels = [tok.decode([i]) if tok is not None else str(i) for i in ids]
        clean = make_inputs(bb, pair.clean.audio, ids=ids, utt_id=pair.clean.id)
        corrupted = make_inputs(bb, pair.corrupted.audio, ids=ids, utt_id=pair.corrupted.id)
        return clean, corrupted, metric, name, labels

    def sites(self, bb, positions, words, n_tokens: int | None) -> list:
        from src.interventions import Site

        out = []
        word_idx = self.words if self.words is not None else list(range(len(positions)))
        if "encoder" in self.components:
            n = len(bb.layer_modules())
            for k in self._layers(n, "resid", "encoder states"):
                for w in word_idx:
                    out.append(Site("encoder", "resid", k, positions[w], label=f"{w}:{words[w]}"))
        n = len(bb.layer_modules())
        if "encoder_mlp" in self.components:  # layer k's MLP output at each word's frames
            for k in self._layers(n, "mlp", "encoder_mlp layers"):
                for w in word_idx:
                    out.append(Site("encoder", "mlp", k, positions[w], label=f"{w}:{words[w]}"))
        if "encoder_self_attention" in self.components:  # each head at every frame the model sees
            attn = bb.attention_modules()
            for k in self._layers(n, "head", "encoder_self_attention layers"):
                for h in range(int(attn[k - 1].num_heads)):
                    out.append(Site("encoder", "head", k, None, h))
        if n_tokens:
            n_dec = len(bb.decoder_layer_modules())
            if "decoder" in self.components:
                for k in self._layers(n_dec, "resid", "decoder states"):
                    for t in range(n_tokens):
                        out.append(Site("decoder", "resid", k, (t,), label=str(t)))
            if "decoder_mlp" in self.components:
                for k in self._layers(n_dec, "mlp", "decoder_mlp layers"):
                    for t in range(n_tokens):
                        out.append(Site("decoder", "mlp", k, (t,), label=str(t)))
            for comp, attn in (("cross_attention", bb.cross_attention_modules()),
                               ("decoder_self_attention", bb.decoder_attention_modules())):  # fmt: skip
                if comp in self.components:
                    engine_comp = "cross_attention" if comp == "cross_attention" else "decoder"
                    for k in self._layers(n_dec, "head", f"{comp} layers"):  # layer k = module k - 1
                        for h in range(int(attn[k - 1].num_heads)):
                            out.append(Site(engine_comp, "head", k, None, h))
        return out

    def _layers(self, n: int, kind: str, what: str) -> list[int]:
        """``analysis.layers`` in the state convention: states 0..n (resid), layers 1..n (heads)."""
        from src.interventions import InterventionError, site_layers

        span = f"0..{n}" if kind == "resid" else f"1..{n}, layer k = the layer whose output is state k"
        try:
            return site_layers(self.layers, n, kind, what=f"analysis.layers ({what} {span})")
        except InterventionError as e:
            raise AnalysisError(str(e)) from None

    @staticmethod
    def roles(pair, n_tokens: int | None, prompt_len: int) -> dict[str, dict[str, list[int]]]:
        """Positions of each role, per component: encoder words ``target`` (the pair's target word), ``changed``
        (the other words that differ or were noised: the cue), ``other``; decoder tokens ``prompt``, ``text``
        (before the last position) and ``last`` (the decision position of a logit difference)."""
        n = len(pair.clean.tier("words"))
        changed = [k for k in pair.differing if k != pair.target_index]
        enc = {"target": [pair.target_index] if pair.target_index is not None else [], "changed": changed}
        enc["other"] = [k for k in range(n) if k not in enc["target"] and k not in changed]
        out = {"encoder": {k: v for k, v in enc.items() if v}}
        if n_tokens:
            dec = {"prompt": list(range(min(prompt_len, n_tokens - 1))), "text": list(range(prompt_len, n_tokens - 1)),
                   "last": [n_tokens - 1]}  # fmt: skip
            out["decoder"] = {k: v for k, v in dec.items() if v}
            out["decoder_mlp"] = out["decoder"]
        out["encoder_mlp"] = out["encoder"]  # MLP sites: the same word / token roles
        return out

    def control_rows(self, bb, pair, clean, corrupted, metric, positions, labels, dither_seed: int) -> list[dict]:
        """The rendition control of one pair (``analysis.control``): A' = the clean member plus an independent dither at
        ``dither_snr_db`` (:func:`~src.interventions.counterfactual.dither`; None: an exact copy), teacher-forced on the
        same tokens. At every encoder state and every word whose audio differs, the corrupted run B is patched once with
        A's states and once with A''s: ``recovery`` = (patched_A' - B) / (A - B) (compare with the ``patch_*`` rows),
        ``ratio_to_clean_patch`` = (patched_A' - B) / (patched_A - B) (1 when the second rendition carries what A
        carries; exactly 1 for an exact copy), ``effect`` = patched_A' - B; role rows ``role:differing`` (the mean over
        those words, comparable across sentences) and the dither's measured SNR (``dither_snr_db``)."""
        from src.interventions import Site, make_inputs, patch_sweep
        from src.interventions.counterfactual import dither, snr_db

        words = control_words(pair)
        if not words:
            raise AnalysisError(f"pair {pair.id!r}: analysis.control needs a word whose audio differs between the members")
        prime, noise = dither(pair.clean, self.dither_snr_db, dither_seed)
        ids = None if clean.ids is None else clean.ids[0].tolist()
        prime_in = make_inputs(bb, prime.audio, ids=ids, utt_id=prime.id)
        sites = [Site("encoder", "resid", k, positions[w], label=f"{w}:{labels[w]}")
                 for k in self._layers(len(bb.layer_modules()), "resid", "encoder states") for w in words]  # fmt: skip
        real = patch_sweep(bb, clean, corrupted, sites, metric, "denoising", chunk=self.chunk)
        ctl = patch_sweep(bb, prime_in, corrupted, sites, metric, "denoising", chunk=self.chunk)
        base, clean_v = real.corrupted, real.clean
        out = []
        if noise.any():  # an exact copy (dither_snr_db=None) has no SNR
            measured = snr_db(pair.clean.audio, prime.audio.astype(np.float64) - pair.clean.audio)
            out.append(row(pair.id, CONTROL, "", None, "", None, "", None, "dither_snr_db", measured))
        item_rows = []
        for s, p_real, p_ctl in zip(sites, real.values, ctl.values):
            w, lab = int(s.label.split(":", 1)[0]), s.label.split(":", 1)[1]
            common = (pair.id, CONTROL, "encoder", s.layer, s.layer_name, w, lab, None)
            d = clean_v - base
            item_rows.append(row(*common, "recovery", (p_ctl - base) / d if d != 0 else float("nan")))
            r = p_real - base
            item_rows.append(row(*common, "ratio_to_clean_patch", (p_ctl - base) / r if r != 0 else float("nan")))
            item_rows.append(row(*common, "effect", p_ctl - base))
        return out + item_rows + role_rows(item_rows, {"encoder": {"differing": words}})

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> InterventionResult:
        from src.interventions import (
            InterventionError,
            attribution_patching,
            pair_word_positions,
            patch_sweep,
            rank_correlation,
        )
        from src.progress import progress

        seed = ctx.seed if self.seed is None else int(self.seed)
        pairs = self.build_pairs(ctx)  # bad pairs (unknown ids, ...) fail before the model is built
        bb = ctx.backbone()
        self.check_pairs(bb, pairs)
        clf = self.classifier(ctx, bb) if self.pairs == "commands" else None
        rows, pair_table = [], []
        for pair in progress(pairs, desc="patching", unit="pair"):
            try:
                clean, corrupted, metric, mname, tok_labels = self.prepare(bb, pair, clf)
                words_c = [(w.label, w.start, w.end) for w in pair.clean.tier("words")]
                words_x = [(w.label, w.start, w.end) for w in pair.corrupted.tier("words")]
                positions = pair_word_positions(bb, clean, corrupted, words_c, words_x)
                labels = [a[0] if a[0] == b[0] else f"{a[0]}/{b[0]}" for a, b in zip(words_c, words_x)]
                n_tok = None
                if clean.ids is not None and set(DECODER_COMPONENTS) & set(self.components):
                    n_tok = int(clean.ids.shape[-1])
                sites = self.sites(bb, positions, labels, n_tok)
                res = patch_sweep(bb, clean, corrupted, sites, metric, self.direction, chunk=self.chunk)
                att = attribution_patching(bb, clean, corrupted, sites, metric, self.direction) if self.attribution else None
            except InterventionError as e:
                raise AnalysisError(f"pair {pair.id!r}: {e}") from None
            base = res.corrupted if self.direction == "denoising" else res.clean
            rows.append(row(pair.id, "none", "", None, "", None, "", None, f"{mname}_clean", res.clean))
            rows.append(row(pair.id, "none", "", None, "", None, "", None, f"{mname}_corrupted", res.corrupted))
            item_rows = []
            rec = res.recovery
            for i, s in enumerate(res.sites):
                comp = component_of(s)
                if s.kind != "head" and s.component == "encoder":
                    pos, plab = int(s.label.split(":", 1)[0]), s.label.split(":", 1)[1]
                elif s.kind != "head":
                    pos = int(s.positions[0])
                    plab = tok_labels[pos] if pos < len(tok_labels) else str(pos)
                else:
                    pos, plab = None, "all"
                common = (pair.id, f"patch_{self.direction}", comp, s.layer, s.layer_name, pos, plab, s.head)
                item_rows.append(row(*common, "recovery", rec[i]))
                item_rows.append(row(*common, "effect", res.values[i] - base))
                if att is not None:
                    item_rows.append(row(pair.id, "attribution_patching", *common[2:], "effect", att.values[i]))
            rows += item_rows + role_rows(item_rows, self.roles(pair, n_tok, len(bb.decoder_prompt_ids()) if n_tok else 0))
            if att is not None:
                rho = rank_correlation(att.values, res.values - base)
                rows.append(row(pair.id, "attribution_patching", "all", None, "", None, "", None,
                                "rank_correlation_with_patching", rho))  # fmt: skip
            if self.control:
                rows += self.control_rows(bb, pair, clean, corrupted, metric, positions, labels, seed + len(pair_table))
            pair_table.append({"item": pair.id, "kind": pair.kind, "clean": pair.clean.text, "corrupted": pair.corrupted.text,
                               "differing": " ".join(map(str, pair.differing)), "target": pair.target, "foil": pair.foil,
                               "metric": mname, "clean_value": res.clean, "corrupted_value": res.corrupted})  # fmt: skip
        means, counts = summarise(rows, self.n_boot, self.alpha, seed)
        counts["few_units"] = len(pairs) < MIN_UNITS  # role, head and metric means rest on every pair
        if counts["few_units"]:
            log.warning("patching: intervals over %d pairs (fewer than %d: unreliable); word-position means rest on "
                        "the pairs of one sentence only", len(pairs), MIN_UNITS)  # fmt: skip
        all_rows = rows + means
        heat = []
        intervention = f"patch_{self.direction}"
        first = pairs[0].id
        for comp, col in (("encoder", "role"), ("encoder_mlp", "role"), ("decoder", "role"), ("decoder_mlp", "role"),
                          ("encoder_self_attention", "head"), ("cross_attention", "head"),
                          ("decoder_self_attention", "head")):  # fmt: skip
            if comp in self.components:
                heat.append((f"heatmap_{comp}_recovery", MEAN_ITEM, intervention, comp, "recovery", col))
                if col == "role":  # the first item's own words / tokens
                    heat.append((f"heatmap_{comp}_recovery_{safe_name(first)}", first, intervention, comp, "recovery",
                                 "position"))  # fmt: skip
                if self.attribution:
                    heat.append((f"heatmap_{comp}_attribution", MEAN_ITEM, "attribution_patching", comp, "effect", col))
        head_comps = [c for c in ("encoder_self_attention", "cross_attention", "decoder_self_attention")
                      if c in self.components]  # fmt: skip
        tops = top_heads(all_rows, intervention, "recovery", self.top_k, head_comps) if head_comps else []
        if self.control:
            heat.append(("heatmap_control_rendition_ratio", MEAN_ITEM, CONTROL, "encoder", "ratio_to_clean_patch", "role"))
        meta = {"pairs": self.pairs, "n_pairs": len(pairs), "direction": self.direction, "components": self.components,
                "control": self.control, "dither_snr_db": self.dither_snr_db if self.control else None,
                "n_items": len(pairs), **counts, "n_boot": self.n_boot, "alpha": self.alpha, "seed": seed}  # fmt: skip
        return InterventionResult("patching", all_rows, meta=meta, tables={"pairs": pair_table}, heatmaps=heat,
                                  top_heads=tops, top_metric="recovery")  # fmt: skip


def item_names(pairs) -> list[str]:
    return [safe_name(p.id) for p in pairs]

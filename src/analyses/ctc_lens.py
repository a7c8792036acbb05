"""CTC lens: read every layer through a CTC head (de Heer Kloots & Zuidema 2024).

    python analyze.py analysis=ctc_lens backbone=local backbone.model_id=/path/to/wav2vec2-base-960h
    python analyze.py analysis=ctc_lens analysis.head=outputs/ctc_head_whisper_tiny_en.pt   # a trained head

Where a probe trains a new classifier per layer, a lens asks what the model's *own* head makes
of layer k. With the project's layer convention (src/layers.py) residual state ``k`` is the raw
output of layer ``k`` and ``final_norm`` the normed last state, so:

- the lens at residual state ``k`` is ``head(final_norm(h_k))`` where the backbone has a norm after
  its last layer (``backbone.final_norm_module()``: stable-layer-norm wav2vec2/HuBERT/WavLM,
  Whisper) and ``head(h_k)`` for post-LN encoders (their layers end in their own LayerNorm);
- the lens at the ``final_norm`` state is ``head(h)``: that state is normed already.

At the last residual state this is exactly what ``*ForCTC`` computes (``model(x).logits``; tested).
A trained :class:`src.lenses.ctc.CTCHead` (``head=<path>``) is applied the same way when its
``norm`` is ``final_norm``, and to the raw state when it is ``none``.

Per layer and lens (rows ``layer, layer_name, lens, metric, value, ci_low, ci_high``):

- greedy CTC decoding (``src.functional.ctc``): argmax per frame, repeats collapsed, blank dropped;
- character vocabularies: ``cer`` and ``wer`` against the transcript (utterance text, else the
  words tier joined), both through ``src.functional.text.normalize_text`` (``text_normalizer``: Whisper's
  English normaliser by default, ``simple`` for other languages); CER counts spaces
  (jiwer's convention);
- phone vocabularies: ``per`` against the phones tier after the run's label normalisation
  (``label_norm_of(corpus)``: silences dropped, case, stress digits); vocabulary tokens get the
  same normalisation;
- ``aligned_token_prob``: per aligned interval of ``align_tier`` (frames by the project's segment
  convention, ``src.datamodules.alignment.segment_frames``), the max over its frames of p(token);
  the mean over intervals. Intervals whose label is not in the vocabulary are counted
  (``n_missing`` column and ``meta``), never silently dropped.

Intervals: percentile bootstrap over ``bootstrap_unit`` groups (texts by default) of the ratio of
sums (edits / reference length; probability sum / intervals), ``bootstrap_from_sums``.

Outputs beside ``results.csv``: ``transcripts.csv`` (utterance, layer, lens, hypothesis,
reference), ``error_over_layers.png`` (every lens and measure one line),
``aligned_token_prob_over_layers.png``, and layer x time posteriorgrams of one utterance
(``posteriorgram_max``: max probability per frame; ``posteriorgram_aligned``: the probability of
the aligned token, grey where no interval is aligned).

Optional lenses trained on the activation cache (``src.lenses.ctc``): ``tuned: true`` (a tuned
CTC lens, one affine translator per layer) and ``probe: true`` (a CTC probe per layer). When
either is on, heads train on the train/val split and every lens is evaluated on the test split.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.analyses.base import AnalysisError, AnalysisLayerError, AnalysisResult, Matrix, interval_fields
from src.functional.intervals import ratio_of_sums_ci
from src.layers import layer_label, resolve_for

log = logging.getLogger(__name__)

MEASURES_CHAR = ("cer", "wer")
MEASURES_PHONE = ("per",)
ERROR_MEASURES = ("per", "cer", "wer")
UNITS = ("auto", "char", "phone")
CTC_CLASSES = "Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC, Data2VecAudioForCTC, UniSpeech(Sat)ForCTC, Wav2Vec2ConformerForCTC"
_SPACE = "\u2581"  # stands for a space in character sequences (edit_counts takes no whitespace tokens)


@dataclass
class Lens:
    """One way of reading a state as CTC log-probabilities, with the vocabulary it decodes into.

    ``fn(k, h)``: state index ``k`` and its frames ``h (T, D)`` -> log-probabilities ``(T, V)``.
    """

    name: str
    fn: Callable[[int, Tensor], Tensor]
    vocab: list[str]
    blank: int
    unit: str  # "char" | "phone"
    word_delimiter: str | None = None
    special_tokens: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LensResult(AnalysisResult):
    """An AnalysisResult whose figures put every lens on one plot over layers."""

    def figures(self, out_dir: str | Path, title_prefix: str = "") -> list[Path]:
        import pandas as pd

        from src.reporting.figures import figure_title, plot_over_layers

        pngs = super().figures(out_dir, title_prefix)  # matrices (posteriorgrams); line_plots is []
        df = pd.DataFrame(self.rows)
        if df.empty:
            return pngs
        err = df[df["metric"].isin(ERROR_MEASURES) & df["value"].notna()]
        if len(err) and err["layer"].nunique() > 1:
            curve = err["lens"].astype(str) + " " + err["metric"].str.upper()
            d = err.assign(curve=curve, metric="error rate")
            pngs.append(plot_over_layers(d, Path(out_dir) / "error_over_layers.png", "error rate", hue="curve",
                                         split=None, title=figure_title("CTC lens: error over layers", title_prefix),
                                         ylim=(0, None)))  # fmt: skip
        prob = df[(df["metric"] == "aligned_token_prob") & df["value"].notna()]
        if len(prob) and prob["layer"].nunique() > 1:
            pngs.append(plot_over_layers(prob, Path(out_dir) / "aligned_token_prob_over_layers.png",
                                         "aligned_token_prob", hue="lens", split=None,
                                         title=figure_title("CTC lens: p(aligned token)", title_prefix),
                                         ylabel="p(aligned token) (mean over tokens, higher is better)",
                                         ylim=(0, 1.02)))  # fmt: skip
        return pngs


class CTCLens:
    """Per-layer CTC lens: greedy transcripts, CER/WER or PER, aligned-token probability.

    Args:
        layers: layer spec (``src.layers.resolve_layers``); null = every residual state (the
            ``final_norm`` state, where the backbone has one, on request: with a head that reads
            normed states it equals the lens at the last residual state).
        head: null (the model's own ``lm_head``: ``*ForCTC`` checkpoints) or the path of a
            :class:`src.lenses.ctc.CTCHead` file (any backbone); an object with that interface
            (``forward``, ``vocab``, ``blank``, ``norm``) is accepted too.
        unit: ``auto`` (phone tokenizers and trained phone heads -> ``phone``, else ``char``),
            ``char`` or ``phone``.
        align_tier: the tier whose intervals give the aligned-token probability (``null``: none).
        bootstrap_unit: ``text`` | ``utterance`` | ``speaker`` (``src.datamodules.splits.group_keys``).
        n_boot, alpha: bootstrap resamples and two-sided level.
        numbers: ``normalize_text`` mode of the ``simple`` normaliser (``words``: digits spelt out as the corpus
            does; ``keep``).
        text_normalizer: ``whisper_english`` (Whisper's English normaliser, as the field computes WER) or
            ``simple`` (other languages; :data:`src.functional.text.NORMALIZERS`).
        batch_size: utterances per forward pass (padding only where the backbone is ``padding_safe``;
            otherwise batches of equal length).
        max_utterances: the first N utterances only (quick runs).
        posteriorgram_utterance: index or id of the utterance drawn as a posteriorgram (null: none).
        tuned, probe: also train (on the cache) and evaluate a tuned CTC lens / per-layer CTC probes.
        split_by: the split (``src.datamodules.splits.split_utterances`` with the seed) heads train on.
        evaluate_on: ``all`` utterances, or ``test``: the held-out part of that split (the default
            split of ``src.lenses.ctc``: by text, seed 0 gives the sentences a trained head never saw);
            ``auto``: ``test`` when tuned/probe train here, else ``all``.
        tuned_options, probe_options: keyword arguments of the trainers.
        seed: bootstrap and training seed (null: the run's seed).
    """

    needs_cache = False

    def __init__(
        self,
        layers=None,
        head=None,
        unit: str = "auto",
        align_tier: str | None = "phones",
        bootstrap_unit: str = "text",
        n_boot: int = 1000,
        alpha: float = 0.05,
        numbers: str = "words",
        text_normalizer: str = "whisper_english",
        batch_size: int = 8,
        max_utterances: int | None = None,
        posteriorgram_utterance: int | str | None = 0,
        tuned: bool = False,
        probe: bool = False,
        split_by: str = "text",
        evaluate_on: str = "auto",
        tuned_options: dict | None = None,
        probe_options: dict | None = None,
        seed: int | None = None,
    ) -> None:
        if unit not in UNITS:
            raise AnalysisError(f"analysis.unit must be one of {UNITS}, got {unit!r}")
        if bootstrap_unit not in ("utterance", "text", "speaker"):
            raise AnalysisError(f"analysis.bootstrap_unit must be utterance, text or speaker, got {bootstrap_unit!r}")
        if numbers not in ("words", "keep"):
            raise AnalysisError(f"analysis.numbers must be words or keep, got {numbers!r}")
        if text_normalizer not in ("whisper_english", "simple"):
            raise AnalysisError(f"analysis.text_normalizer must be whisper_english or simple, got {text_normalizer!r}")
        if int(batch_size) < 1 or int(n_boot) < 1 or not 0 < float(alpha) < 1:
            raise AnalysisError("analysis.batch_size and n_boot must be >= 1 and alpha in (0, 1)")
        self.layers = layers
        self.head = head
        self.unit = unit
        self.align_tier = align_tier
        self.bootstrap_unit = bootstrap_unit
        self.n_boot, self.alpha = int(n_boot), float(alpha)
        self.numbers = numbers
        self.text_normalizer = text_normalizer
        self.batch_size = int(batch_size)
        self.max_utterances = None if max_utterances is None else int(max_utterances)
        self.posteriorgram_utterance = posteriorgram_utterance
        self.tuned, self.probe = bool(tuned), bool(probe)
        self.split_by = split_by
        if evaluate_on not in ("auto", "all", "test"):
            raise AnalysisError(f"analysis.evaluate_on must be auto, all or test, got {evaluate_on!r}")
        if evaluate_on == "all" and (self.tuned or self.probe):
            raise AnalysisError("analysis.evaluate_on=all with tuned/probe would score lenses on their own training "
                                "utterances: use evaluate_on=test (or auto)")  # fmt: skip
        self.evaluate_on = "test" if evaluate_on == "auto" and (self.tuned or self.probe) else evaluate_on
        self.tuned_options = dict(tuned_options or {})
        self.probe_options = dict(probe_options or {})
        self.seed = seed

    # ------------------------------------------------------------------------------ lenses

    def _base_lens(self, backbone) -> tuple[Lens, dict]:
        """The plain CTC lens: the model's lm_head, or a trained CTCHead; checked against the backbone."""
        D = int(backbone.hidden_size)
        if self.head is None:
            get = getattr(backbone, "ctc_head", None)
            if get is None:
                raise AnalysisError(
                    f"backbone {backbone.name!r} ({type(backbone).__name__}) has no CTC head: the CTC lens reads the "
                    f"model's own lm_head, which transformers' CTC classes have ({CTC_CLASSES}; give such a checkpoint "
                    "as backbone=local backbone.model_id=<dir or hub id>), or give a trained head: "
                    "analysis.head=<path> (python -m src.jobs.ctc_head --out <path>)"
                )
            r = get()
            head, vocab, blank, norm = r.head, list(r.vocab), int(r.blank), r.norm
            unit, delim, specials = r.unit, r.word_delimiter, list(r.special_tokens)
            source = f"{r.model_class}.lm_head of {getattr(backbone, 'model_id', backbone.name)}"
            log_softmax = True
        else:
            head = self.head
            if isinstance(head, (str, Path)):
                from src.lenses.ctc import CTCHead  # lazily: it imports Lightning

                source = str(head)
                head = CTCHead.load(head)
            else:
                source = type(head).__name__
            vocab, blank, norm = [str(v) for v in head.vocab], int(head.blank), str(getattr(head, "norm", "none"))
            unit = str(getattr(head, "unit", "phone"))
            delim = getattr(head, "word_delimiter", None)
            specials = [vocab[blank]]
            log_softmax = False  # a CTCHead returns log-probabilities already
        head.eval()
        if self.unit != "auto":
            unit = self.unit
        dim = getattr(head, "dim", None) or getattr(head, "in_features", None)
        what = f"CTC head ({source})"
        if dim is not None and int(dim) != D:
            raise AnalysisError(f"{what} takes states of size {int(dim)} but backbone {backbone.name!r} has "
                                f"hidden_size {D}: the head was trained on another model")  # fmt: skip
        try:
            with torch.no_grad():
                out = head(torch.zeros(1, 1, D))  # (1, 1, V)
        except Exception as e:
            raise AnalysisError(f"{what} does not take backbone {backbone.name!r}'s states of size {D} "
                                f"({type(e).__name__}: {e})") from e  # fmt: skip
        if out.shape[-1] != len(vocab):
            raise AnalysisError(f"{what} has {out.shape[-1]} outputs but a vocabulary of {len(vocab)} tokens "
                                f"(model/backbone {backbone.name!r}): head and vocabulary do not belong together")  # fmt: skip
        if not 0 <= blank < len(vocab):
            raise AnalysisError(f"{what}: blank id {blank} outside its vocabulary of {len(vocab)}")
        trained_on = str(getattr(head, "backbone", "") or "")
        if trained_on and trained_on.split("@")[0] != backbone.name:
            log.warning("CTC head %s was trained on %s, read here on backbone %s", source, trained_on, backbone.name)
        norm_module = backbone.final_norm_module() if norm == "final_norm" else None
        n_res = int(backbone.num_layers)

        def fn(k: int, h: Tensor) -> Tensor:  # (T, D) -> (T, V)
            if norm_module is not None and k < n_res:  # the final_norm state is normed already
                h = norm_module(h)
            z = head(h[None])[0]  # (T, V)
            return z.log_softmax(-1) if log_softmax else z

        info = {"head": source, "head_norm": norm, "applies_final_norm": norm_module is not None, "unit": unit,
                "vocab_size": len(vocab), "blank": blank, "norm_layout": backbone.norm_layout}  # fmt: skip
        return Lens("ctc_lens", fn, vocab, blank, unit, delim, specials), info

    def _trained_lenses(self, ctx, backbone, base: Lens, layer_names: list[str], splits) -> list[Lens]:
        """Tuned lens / CTC probes from src.lenses.ctc, trained on the activation cache (train/val split)."""
        lenses = []
        if not (self.tuned or self.probe):
            return lenses
        import src.lenses.ctc as pc

        if self.tuned and self.head is None:
            raise AnalysisError("analysis.tuned=true trains translators towards a trained CTC head's final "
                                "posteriors: give analysis.head=<path> (a CTCHead file)")  # fmt: skip
        acts = ctx.activations()
        seed = ctx.seed if self.seed is None else int(self.seed)
        if self.tuned:
            train = pc.train_tuned_lens
            head = pc.CTCHead.load(self.head) if isinstance(self.head, (str, Path)) else self.head
            norm = backbone.final_norm_module()
            tuned, _ = train(acts, ctx.corpus, head, layer_names, backbone_final_norm=norm, splits=splits, seed=seed,
                             **self.tuned_options)  # fmt: skip

            def tuned_fn(k: int, h: Tensor, head=head, tuned=tuned, norm=norm) -> Tensor:
                name = layer_label(k, backbone.layer_names)
                return pc.lens_log_probs(head, h[None], layer=name, norm_module=norm, tuned=tuned)[0]

            lenses.append(Lens("tuned_lens", tuned_fn, base.vocab, base.blank, base.unit, base.word_delimiter,
                               base.special_tokens))  # fmt: skip
        if self.probe:
            probes = pc.train_ctc_probes(acts, ctx.corpus, layer_names, splits=splits, seed=seed, **self.probe_options)
            first = next(iter(probes.values()))

            def probe_fn(k: int, h: Tensor, probes=probes) -> Tensor:
                return probes[layer_label(k, backbone.layer_names)](h[None])[0]  # CTCHead: log-probs

            lenses.append(Lens("ctc_probe", probe_fn, list(first.vocab), int(first.blank), "phone", None,
                               [first.vocab[first.blank]]))  # fmt: skip
        return lenses

    # ------------------------------------------------------------------------------ run

    def run(self, ctx) -> AnalysisResult:
        from src.datamodules.labels import label_norm_of
        from src.datamodules.splits import group_keys

        backbone = ctx.backbone()
        corpus = ctx.corpus
        seed = ctx.seed if self.seed is None else int(self.seed)
        layers = resolve_for(backbone, self.layers, what="analysis.layers", error=AnalysisLayerError)
        names = [layer_label(k, backbone.layer_names) for k in layers]
        base, info = self._base_lens(backbone)
        n = len(corpus) if self.max_utterances is None else min(len(corpus), self.max_utterances)
        if n == 0:
            raise AnalysisError(f"corpus {getattr(corpus, 'name', '?')!r} has no utterances")
        utts = np.arange(n)
        splits = None
        if self.evaluate_on == "test":
            from src.datamodules.splits import split_utterances

            splits = split_utterances(corpus, by=self.split_by, seed=seed)
            utts = np.array([u for u in splits["test"] if u < n])
        lenses = [base, *self._trained_lenses(ctx, backbone, base, names, splits)]
        norm = label_norm_of(corpus)
        refs, missing_ref = self._references(corpus, utts, base.unit, norm)
        if not any(r is not None for r in refs.values()):
            what = ("a transcript (utterance text or a words tier)" if base.unit == "char"
                    else "a phones tier with at least one non-silence phone")  # fmt: skip
            raise AnalysisError(
                f"corpus {getattr(corpus, 'name', '?')!r}: none of its {len(utts)} utterances has {what}: the CTC lens "
                f"cannot compute {'CER/WER' if base.unit == 'char' else 'PER'} ({base.unit} vocabulary, "
                f"{info['head']})"
            )
        pg_index = self._posteriorgram_index(corpus, utts)
        acc = _Accumulator(lenses, layers, names, self, norm)
        from src.progress import progress

        bar = progress(total=len(utts), desc=f"CTC lens ({len(lenses)} lenses, {len(layers)} layers)", unit="utt")
        for batch in self._batches(corpus, utts, backbone):
            waves = [torch.from_numpy(np.asarray(corpus[int(u)].audio, dtype=np.float32)) for u in batch]
            enc = backbone.encode(waves)  # hidden (S, B, T, D), lengths (B,)
            for b, u in enumerate(batch):
                T = int(enc.lengths[b])
                h = enc.hidden[layers, b, :T].float()  # (L, T, D)
                ann = corpus.annotation(int(u))
                times = backbone.frame_times(T)
                tier = None
                if self.align_tier:
                    tier = ann.tiers.get(self.align_tier)
                with torch.no_grad():
                    for lens in lenses:
                        logp = torch.stack([lens.fn(k, h[i]) for i, k in enumerate(layers)])  # (L, T, V)
                        acc.add(int(u), ann.id, lens, logp, refs.get(int(u)), tier, times, backbone.frame_rate,
                                draw=int(u) == pg_index and lens is base)  # fmt: skip
            bar.update(len(batch))
        bar.close()
        groups = group_keys(corpus, self.bootstrap_unit, idx=utts)
        gmap = {int(u): g for u, g in zip(utts, groups)}
        rows = acc.rows(gmap, self.n_boot, self.alpha, seed, self.bootstrap_unit)
        meta = {**info, "layers": layers, "layer_names": names, "lenses": [lens.name for lens in lenses],
                "utterances": int(len(utts)), "utterances_without_reference": missing_ref,
                "bootstrap_unit": self.bootstrap_unit, "n_boot": self.n_boot, "alpha": self.alpha,
                "evaluated_on": "test split" if splits is not None else "all utterances",
                "align_tier": self.align_tier, **acc.counts_meta(), "seed": seed}  # fmt: skip
        if base.unit == "phone":
            meta["note"] = "phone vocabulary: PER only (no CER/WER)"
        if missing_ref:
            log.warning("%d utterances have no reference and are left out of the error rates", missing_ref)
        return LensResult("ctc_lens", rows, acc.matrices(), line_plots=[], meta=meta,
                          tables={"transcripts": acc.transcripts})  # fmt: skip

    # ------------------------------------------------------------------------------ helpers

    def _references(self, corpus, utts, unit: str, norm) -> tuple[dict, int]:
        """Per utterance the scoring reference: normalised text (char) or normalised phones (phone), or None."""
        from src.datamodules.splits import utterance_text
        from src.functional.text import normalize_text

        out, missing = {}, 0
        for u in utts:
            ann = corpus.annotation(int(u))
            ref = None
            if unit == "char":
                text = ann.text if ann.text and ann.text.strip() else utterance_text(corpus, int(u))
                ref = normalize_text(text, self.numbers, self.text_normalizer) if text else None
            else:
                tier = ann.tiers.get("phones")
                if tier:
                    ref = [p for p in norm.apply([iv.label for iv in tier], "phones") if p]
            ref = ref or None  # empty after normalisation: no reference
            missing += ref is None
            out[int(u)] = ref
        return out, missing

    def _posteriorgram_index(self, corpus, utts) -> int | None:
        p = self.posteriorgram_utterance
        if p is None:
            return None
        if isinstance(p, str) and not p.lstrip("-").isdigit():
            ids = list(corpus.ids)
            if p not in ids:
                raise AnalysisError(f"analysis.posteriorgram_utterance={p!r} is not an utterance id of the corpus")
            i = ids.index(p)
        else:
            i = int(p)
            if not 0 <= i < len(utts):
                raise AnalysisError(f"analysis.posteriorgram_utterance={i} outside the {len(utts)} evaluated utterances")
            i = int(utts[i])
        return i

    def _batches(self, corpus, utts, backbone) -> list[list[int]]:
        """Utterance batches: by length (less padding) where padding is safe, else equal lengths only."""
        lengths = {int(u): int(corpus.num_samples(int(u))) for u in utts}
        for u, n in lengths.items():
            backbone.check_input(n, corpus.ids[u])
        order = sorted(lengths, key=lambda u: (lengths[u], u))
        if getattr(backbone, "padding_safe", True):
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        out: list[list[int]] = []
        for u in order:
            if out and lengths[out[-1][0]] == lengths[u] and len(out[-1]) < self.batch_size:
                out[-1].append(u)
            else:
                out.append([u])
        return out


class _Accumulator:
    """Per lens x layer x utterance statistics, transcripts and the posteriorgram."""

    def __init__(self, lenses: list[Lens], layers: list[int], names: list[str], opts: CTCLens, norm) -> None:
        self.layers, self.names, self.opts, self.norm = layers, names, opts, norm
        self.lenses = {lens.name: lens for lens in lenses}
        self.err: dict[tuple[str, str], dict[int, np.ndarray]] = {}  # (lens, measure) -> utt -> (L, 2)
        self.prob: dict[str, dict[int, np.ndarray]] = {}  # lens -> utt -> (L, 2) [sum p, count]
        self.missing: dict[str, Counter] = {lens.name: Counter() for lens in lenses}
        self.outside: Counter = Counter()
        self.ref_missing: dict[str, Counter] = {lens.name: Counter() for lens in lenses}  # never producible
        self.transcripts: list[dict] = []
        self.pg: dict[str, Matrix] = {}
        self._token_maps: dict[str, dict[str, int]] = {}

    def _token_map(self, lens: Lens, tier: str) -> dict[str, int]:
        """Normalised label -> vocabulary id (the label normalisation applied to the tokens too)."""
        key = f"{lens.name}:{tier}"
        if key not in self._token_maps:
            skip = set(lens.special_tokens)
            m: dict[str, int] = {}
            for i, t in enumerate(lens.vocab):
                if i == lens.blank or t in skip or t == lens.word_delimiter:
                    continue
                s = self.norm.one(t, tier)
                if s and s not in m:
                    m[s] = i
            self._token_maps[key] = m
        return self._token_maps[key]

    def _decode(self, lens: Lens, ids: list[int]) -> tuple[str, object]:
        """(display hypothesis, scoring hypothesis) of one greedy path."""
        from src.functional.ctc import tokens_to_text
        from src.functional.text import normalize_text

        tokens = [lens.vocab[i] for i in ids]
        if lens.unit == "char":
            text = tokens_to_text(tokens, lens.word_delimiter, lens.special_tokens)
            return text, normalize_text(text, self.opts.numbers, self.opts.text_normalizer)
        skip = set(lens.special_tokens) | ({lens.word_delimiter} if lens.word_delimiter else set())
        phones = [self.norm.one(t, "phones") for t in tokens if t not in skip]
        phones = [p for p in phones if p]
        return " ".join(phones), phones

    def add(self, u: int, uid: str, lens: Lens, logp: Tensor, ref, tier, times: np.ndarray, frame_rate: float,
            draw: bool = False) -> None:  # fmt: skip
        from src.functional.ctc import greedy_decode
        from src.functional.text import edit_counts

        L = len(self.layers)
        paths = greedy_decode(logp, None, lens.blank)  # L lists of ids
        if lens.unit == "char":
            wer = np.zeros((L, 2))
            cer = np.zeros((L, 2))
        else:
            per = np.zeros((L, 2))
        ref_show = "" if ref is None else (ref if isinstance(ref, str) else " ".join(ref))
        for i, ids in enumerate(paths):
            show, hyp = self._decode(lens, ids)
            row = {"utterance": uid, "layer": self.layers[i], "layer_name": self.names[i], "lens": lens.name,
                   "hypothesis": show, "reference": ref_show}  # fmt: skip
            if ref is not None:
                if lens.unit == "char":
                    wer[i] = edit_counts(ref.split(), hyp.split())
                    cer[i] = edit_counts(list(ref.replace(" ", _SPACE)), list(hyp.replace(" ", _SPACE)))
                    row.update(wer=wer[i, 0] / wer[i, 1], cer=cer[i, 0] / cer[i, 1])
                else:
                    per[i] = edit_counts(ref, hyp)
                    row.update(per=per[i, 0] / per[i, 1])
            self.transcripts.append(row)
        if ref is not None:
            if lens.unit == "char":
                tm = self._token_map(lens, "chars")
                self.ref_missing[lens.name].update(c for c in ref.replace(" ", "") if c not in tm)
            else:
                tm = self._token_map(lens, "phones")
                self.ref_missing[lens.name].update(p for p in ref if p not in tm)
            measures = {"wer": wer, "cer": cer} if lens.unit == "char" else {"per": per}
            for m, v in measures.items():
                self.err.setdefault((lens.name, m), {})[u] = v
        if tier is not None:
            self._aligned(u, lens, logp, tier, times, frame_rate, draw)
        if draw:
            probs = logp.exp()  # (L, T, V)
            cols = [f"{t:.2f}" if j % max(1, len(times) // 20) == 0 else "" for j, t in enumerate(times)]
            self.pg["posteriorgram_max"] = Matrix(probs.amax(-1).numpy(), list(self.names), cols,
                                                  title=f"{lens.name} max p per frame: {uid}", vmin=0.0, vmax=1.0,
                                                  xlabel="time (s)", ylabel="layer",
                                                  quantity="largest token probability")  # fmt: skip

    def _aligned(self, u, lens, logp, tier, times, frame_rate, draw) -> None:
        from src.datamodules.alignment import segment_frames
        from src.functional.ctc import aligned_token_probs, frame_token_probs

        tname = self.opts.align_tier
        tmap = self._token_map(lens, tname)
        labels = self.norm.apply([iv.label for iv in tier], tname)
        keep = [i for i, lab in enumerate(labels) if lab]
        ivs = [tier[i] for i in keep]
        labs = [labels[i] for i in keep]
        lo, hi, valid = segment_frames(ivs, times, "mean", frame_rate)
        ids, use = [], []
        for j, lab in enumerate(labs):
            if not valid[j]:
                self.outside[lens.name] += 1
            elif lab not in tmap:
                self.missing[lens.name][lab] += 1
            else:
                ids.append(tmap[lab])
                use.append(j)
        L = len(self.layers)
        stats = np.zeros((L, 2))
        if use:
            p = aligned_token_probs(logp, lo[use], hi[use], np.array(ids))  # (L, n)
            stats[:, 0] = p.sum(1).numpy()
            stats[:, 1] = len(use)
        self.prob.setdefault(lens.name, {})[u] = stats
        if draw and use:
            ft = np.full(len(times), -1, dtype=np.int64)
            for j, v in zip(use, ids):
                ft[lo[j] : hi[j]] = v
            cols = [f"{t:.2f}" if k % max(1, len(times) // 20) == 0 else "" for k, t in enumerate(times)]
            self.pg["posteriorgram_aligned"] = Matrix(frame_token_probs(logp, ft).numpy(), list(self.names), cols,
                                                      title=f"{lens.name} p(aligned {tname} token) per frame",
                                                      vmin=0.0, vmax=1.0, xlabel="time (s)", ylabel="layer",
                                                      quantity=f"p(aligned {tname} token)")  # fmt: skip

    def rows(self, gmap: dict, n_boot: int, alpha: float, seed: int, unit: str) -> list[dict]:
        out = []
        items = [((lens, m), d) for (lens, m), d in self.err.items()]
        items += [((lens, "aligned_token_prob"), d) for lens, d in self.prob.items()]
        for (lens, m), d in items:
            us = sorted(u for u, s in d.items() if s[:, 1].max() > 0)
            if not us:
                continue
            stats = np.stack([d[u] for u in us])  # (n, L, 2)
            groups = np.array([gmap[u] for u in us])
            num, den = stats[..., 0], stats[..., 1]  # (n, L) each
            ci = ratio_of_sums_ci(num, den, groups, n_boot=n_boot, alpha=alpha, seed=seed)
            est, low, high = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (ci.estimate, ci.low, ci.high))
            for i, k in enumerate(self.layers):
                row = {"layer": k, "layer_name": self.names[i], "lens": lens, "metric": m, "value": float(est[i]),
                       "ci_low": float(low[i]), "ci_high": float(high[i]),
                       **interval_fields(unit, len(set(groups.tolist()))), "n_utterances": len(us)}  # fmt: skip
                if m == "aligned_token_prob":
                    row["n_intervals"] = int(stats[:, i, 1].sum())
                    row["n_missing"] = int(sum(self.missing[lens].values()))
                else:
                    row["ref_tokens"] = int(stats[:, i, 1].sum())
                out.append(row)
        return out

    def counts_meta(self) -> dict:
        return {"aligned_labels_not_in_vocab": {k: dict(v) for k, v in self.missing.items() if v},
                "aligned_intervals_missing": {k: int(sum(v.values())) for k, v in self.missing.items()},
                "aligned_intervals_outside_frames": dict(self.outside),
                "reference_tokens_not_in_vocab": {k: dict(v) for k, v in self.ref_missing.items() if v}}  # fmt: skip

    def matrices(self) -> dict[str, Matrix]:
        return dict(self.pg)

"""Context mixing (Mohebbi et al. 2023): how much each word (encoder) or token (Whisper decoder) draws on
the others, per layer and measure, and the homophone cue study.

``python analyze.py analysis=context_mixing`` runs the live model (``needs_cache = False``) on the
selected utterances. Engines: encoder ``src.context_mixing.encoder.encoder_scores``, Whisper decoder
and cross-attention ``src.context_mixing.decoder.decoder_scores``; frames <-> words
``src.context_mixing.words``.

Word matrices ``S[i <- j]`` (row ``i`` = receiving unit, column ``j`` = source unit):

- ``encoder``: words of the ``words`` tier (non-empty labels, in time order). Value zeroing = mean over
  the frames of receiving word ``i`` of the frame scores when word ``j``'s frames are zeroed; attention,
  rollout and norms = the mean over the ``(i, j)`` frame block;
- ``decoder``: tokens; row ``i`` = the position that predicts output token ``i`` (labelled by it),
  column ``j`` = decoder input token ``j`` (TUTORIAL_SPEC 1.8: rows ``generated_ids``, columns
  ``[<|startoftranscript|>] + generated_ids[:-1]``); no pooling;
- ``cross``: rows = decoder tokens as above, columns = encoder words (attention / norm: mean over the
  word's frames; value zeroing: the word's cross-attention values zeroed).

Every word matrix is row-normalised (``S / sum_j S``; a zero row stays 0). ``results.csv`` columns, in
this order: ``utterance, component, metric, layer, receiver_index, receiver, source_index, source,
value`` (``layer`` in the project's state convention, src.layers: layer ``k`` is the transformer layer
whose output is state ``k``, so 1 = the first transformer layer of that component; the other indices are
0-based), then the
run's context (backbone, corpus, analysis) and ``head`` (per-head rows; empty = head mean).

Extra tables: ``outside_mass`` (per utterance, component, metric, layer: the share of the mass of rows
inside words that falls on frames outside every word: silence, Whisper's padding), ``transcripts``
(teacher-forced ids and text), and for corpora with cue annotations (``data=homophones``,
``data=french_homophones``) ``cue_items`` and ``cue_contribution`` (see :meth:`ContextMixing.cue_rows`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.analyses.base import (
    AnalysisError,
    AnalysisLayerError,
    AnalysisResult,
    interval_fields,
    interval_units,
    safe_name,
)

log = logging.getLogger(__name__)

COMPONENTS = ("encoder", "decoder", "cross")
COLUMNS = ["utterance", "component", "metric", "layer", "receiver_index", "receiver", "source_index", "source", "value"]
CMAPS = {"encoder": "Greens", "decoder": "Reds", "cross": "Purples"}  # the tutorial's colour scales
UTTERANCE_SETS = ("test", "val", "train", "all")


def valid_measures(component: str) -> tuple[str, ...]:
    from src.context_mixing.decoder import CROSS_MEASURES, SELF_MEASURES
    from src.context_mixing.encoder import ENCODER_MEASURES

    return {"encoder": ENCODER_MEASURES, "decoder": SELF_MEASURES, "cross": CROSS_MEASURES}[component]


# ----------------------------------------------------------------------------- words <-> transcript tokens


def align_words(ref: Sequence[str], hyp: Sequence[str], prefer: dict[int, set[str]] | None = None) -> list[int | None]:
    """For each reference word, the index of the hypothesis word aligned to it, or None (deleted): difflib's
    matching blocks; in a replaced span, reference position ``p`` takes a hypothesis word of the span that is in
    ``prefer[p]`` (e.g. the target's spellings: "write" in "Poets often write" -> "Port's off and right"), else
    the word at the same offset (clipped to the span)."""
    out: list[int | None] = [None] * len(ref)
    prefer = prefer or {}
    sm = difflib.SequenceMatcher(None, list(ref), list(hyp), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("equal", "replace") and j2 > j1:
            for p in range(i1, i2):
                good = [j for j in range(j1, j2) if hyp[j] in prefer.get(p, ())] if tag == "replace" else []
                out[p] = min(good, key=lambda j: abs(j - j1 - (p - i1))) if good else j1 + min(p - i1, j2 - j1 - 1)
    return out


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ContextMixingResult(AnalysisResult):
    """Rows in the issue's long format (``COLUMNS`` first), heatmaps per utterance/component/layer, cue curves,
    optional frame-level ``.npz`` per utterance."""

    heatmaps: list[dict] = field(default_factory=list)  # {utterance, component, layer, rows, cols, mats: {m: (n, k)}}
    frames: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def column_order(self, context: list[str], present: set[str]) -> list[str]:
        return [*COLUMNS, *context, "analysis"]  # the long format first, then the context

    def save_extra(self, out_dir: Path) -> None:
        if self.frames:
            d = out_dir / "frames"
            d.mkdir(exist_ok=True)
            for utt, arrays in self.frames.items():
                np.savez_compressed(d / f"{safe_name(utt)}.npz", **arrays)

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        from src.reporting.figures_live import plot_cue_contribution, plot_mixing_heatmaps

        out_dir = Path(out_dir)
        pngs = [plot_mixing_heatmaps(h, out_dir / f"heatmap_{h['component']}_layer{h['layer']}_{safe_name(h['utterance'])}.png",
                                     cmap=CMAPS[h["component"]], context=title_prefix) for h in self.heatmaps]  # fmt: skip
        cue = self.tables.get("cue_contribution") or []
        for comp in COMPONENTS:
            sub = [r for r in cue if r["component"] == comp]
            if sub:
                pngs.append(plot_cue_contribution(sub, out_dir / f"cue_contribution_{comp}.png", comp, title_prefix,
                                                  layer_note=" (1 = first transformer layer)"))  # fmt: skip
        return pngs


# ----------------------------------------------------------------------------- the analysis


class ContextMixing:
    """Context-mixing word matrices per layer, measure and component, plus the homophone cue study.

    Args: see conf/analysis/context_mixing.yaml (every key is commented there).
    """

    needs_cache = False

    def __init__(
        self,
        measures: Sequence[str] = ("attention", "value_zeroing"),
        components: Sequence[str] = ("encoder",),
        layers=None,
        per_head: bool = False,
        frame_mapping: str = "interval",
        teacher_forcing: str = "model",
        language: str | None = "en",
        task: str = "transcribe",
        utterances: str | Sequence[str] = "all",
        split: dict | None = None,
        max_utterances: int | None = None,
        tier: str = "words",
        save_frames: bool = False,
        batch_size: int = 16,
        plot_utterances: int = 1,
        cue_study: bool | str = "auto",
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int | None = None,
    ) -> None:
        from src.context_mixing.decoder import TEACHER_FORCING
        from src.context_mixing.words import FRAME_MAPPINGS

        comps = [components] if isinstance(components, str) else list(components)
        bad = [c for c in comps if c not in COMPONENTS]
        if bad or not comps:
            raise AnalysisError(f"analysis.components={comps}: each must be one of {list(COMPONENTS)}")
        ms = [measures] if isinstance(measures, str) else list(measures)
        known = {m for c in COMPONENTS for m in valid_measures(c)}
        if not ms or any(m not in known for m in ms):
            raise AnalysisError(f"analysis.measures={ms}: each must be one of {sorted(known)}")
        for c in comps:
            if not [m for m in ms if m in valid_measures(c)]:
                raise AnalysisError(f"analysis.measures={ms}: none is defined for component {c!r} "
                                    f"(it has {list(valid_measures(c))})")  # fmt: skip
        if frame_mapping not in FRAME_MAPPINGS:
            raise AnalysisError(f"analysis.frame_mapping={frame_mapping!r} is not one of {list(FRAME_MAPPINGS)}")
        if teacher_forcing not in TEACHER_FORCING:
            raise AnalysisError(f"analysis.teacher_forcing={teacher_forcing!r} is not one of {list(TEACHER_FORCING)}")
        if isinstance(utterances, str) and utterances not in UTTERANCE_SETS:
            raise AnalysisError(f"analysis.utterances must be one of {UTTERANCE_SETS} or a list of ids, got {utterances!r}")
        if int(batch_size) < 1:
            raise AnalysisError(f"analysis.batch_size must be >= 1, got {batch_size}")
        if cue_study not in (True, False, "auto"):
            raise AnalysisError(f"analysis.cue_study must be true, false or auto, got {cue_study!r}")
        self.measures, self.components, self.layers = ms, comps, layers
        self.per_head, self.frame_mapping, self.teacher_forcing = bool(per_head), frame_mapping, teacher_forcing
        self.language, self.task = language, task
        self.utterances = utterances if isinstance(utterances, str) else [str(u) for u in utterances]
        self.split, self.max_utterances, self.tier = dict(split or {}), max_utterances, tier
        self.save_frames, self.batch_size, self.plot_utterances = bool(save_frames), int(batch_size), int(plot_utterances)
        self.cue_study, self.n_boot, self.alpha, self.seed = cue_study, int(n_boot), float(alpha), seed

    # ------------------------------------------------------------------------ pieces

    def component_layers(self, component: str, n_layers: int) -> list[int]:
        """Layers of ``component`` named by ``analysis.layers``, in the state convention (src.layers): layer ``k``
        (``1..n_layers``) is the transformer layer whose output is state ``k``; null = all of them.

        Parsed by :func:`src.layers.resolve_layers` over the states ``0..n_layers`` (ints, negatives from the end,
        first/middle/last, all, ranges).  State 0 (the input to the first layer) is produced by no attention
        layer: it is dropped with a warning (so ``all`` or ``0-3`` work), and an error when nothing else is
        named (``0``, ``first``).  ``final_norm`` is an error: a LayerNorm output, no attention layer."""
        from src.layers import LayerSpecError, resolve_layers

        what = f"analysis.layers ({component}: layers 1..{n_layers}, 1 = the first transformer layer)"
        if self.layers is None:
            return list(range(1, n_layers + 1))
        try:
            ks = resolve_layers(self.layers, n_layers + 1, extras=("final_norm",), what=what)
        except LayerSpecError as e:
            raise AnalysisLayerError(f"{e} (states 0..{n_layers}; context mixing reports layers 1..{n_layers}: "
                                     "state 0 and final_norm come from no attention layer)") from None  # fmt: skip
        if any(k > n_layers for k in ks):
            raise AnalysisLayerError(f"{what}: 'final_norm' is the output of the final LayerNorm, which mixes no "
                                     "context; context mixing has a layer for each attention layer only")  # fmt: skip
        if 0 in ks:
            if ks == [0]:
                raise AnalysisLayerError(f"{what}: {self.layers!r} names state 0, the input to the first transformer "
                                         "layer, which no attention layer produces; the first layer is 1")  # fmt: skip
            log.warning("%s: state 0 (the input to the first transformer layer, produced by no attention layer) "
                        "is skipped", what)  # fmt: skip
            ks = [k for k in ks if k != 0]
        return ks

    def words_of(self, utt) -> list[tuple[str, float, float]]:
        from src.context_mixing.common import ContextMixingError
        from src.datamodules.corpus import CorpusError

        try:
            tier = utt.tier(self.tier)
        except CorpusError as e:
            raise ContextMixingError(f"utterance {utt.id!r}: context mixing pools frames to words and needs a "
                                     f"{self.tier!r} tier: {e}") from None  # fmt: skip
        words = [(iv.label.strip(), float(iv.start), float(iv.end)) for iv in tier if iv.label.strip()]
        if not words:
            raise ContextMixingError(f"utterance {utt.id!r}: its {self.tier!r} tier has no non-empty word")
        return words

    def select(self, corpus, seed: int) -> list[int]:
        from src.analyses.base import select_utterances

        return select_utterances(corpus, self.utterances, self.split, seed, self.max_utterances)

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> ContextMixingResult:
        from src.context_mixing.decoder import require_whisper
        from src.progress import progress

        bb = ctx.backbone()
        corpus = ctx.corpus
        whisper = bool(bb.has_decoder)
        for c in self.components:
            if c != "encoder":
                require_whisper(bb, f"analysis.components={self.components} ({c!r})")
        layers = {}
        if "encoder" in self.components:
            layers["encoder"] = self.component_layers("encoder", len(bb.layer_modules()))
        if whisper and {"decoder", "cross"} & set(self.components):
            n_dec = len(bb.decoder_layer_modules())
            for c in ("decoder", "cross"):
                if c in self.components:
                    layers[c] = self.component_layers(c, n_dec)
        seed = ctx.seed if self.seed is None else int(self.seed)
        idx = self.select(corpus, ctx.seed)
        want_cue = self.cue_study is True or (self.cue_study == "auto" and hasattr(corpus, "cue_item"))
        if self.cue_study is True and not hasattr(corpus, "cue_item"):
            raise AnalysisError(f"analysis.cue_study=true but corpus {getattr(corpus, 'name', '?')!r} has no cue "
                                "annotations (data=homophones or data=french_homophones)")  # fmt: skip

        rows, outside, transcripts, cue_items, heatmaps, frames = [], [], [], [], [], {}
        for n_done, i in enumerate(progress(idx, desc="context mixing", unit="utt")):
            utt = corpus[i]
            out = self.utterance(bb, utt, layers, plot=n_done < self.plot_utterances)
            rows += out["rows"]
            outside += out["outside"]
            heatmaps += out["heatmaps"]
            if out.get("transcript"):
                transcripts.append(out["transcript"])
            if self.save_frames:
                frames[str(utt.id)] = out["frames"]
            if want_cue:
                from src.datamodules.homophones import cue_item

                item = cue_item(corpus, i)
                if item is not None:
                    cue_items += self.cue_rows(bb, item, out)
        tables = {"outside_mass": outside}
        if transcripts:
            tables["transcripts"] = transcripts
        if want_cue:
            tables["cue_items"] = cue_items
            cue_utts = sorted({i for i in idx if str(corpus.ids[i]) in {str(r["utterance"]) for r in cue_items}})
            unit, unit_of = "utterance", None
            if cue_utts:
                unit, keys = interval_units(corpus, cue_utts, self.split.get("by", "text"), "context_mixing cue study")
                unit_of = {str(corpus.ids[i]): k for i, k in zip(cue_utts, keys)}
            tables["cue_contribution"] = self.aggregate(cue_items, seed, unit_of, unit)
        meta = {"components": self.components, "measures": self.measures, "layers": layers,
                "frame_mapping": self.frame_mapping, "teacher_forcing": self.teacher_forcing if whisper else None,
                "utterances": len(idx), "row_normalisation": "S / sum_j S, zero rows stay 0",
                "layer_convention": "state convention: layer k = the transformer layer whose output is state k "
                                    "(1 = the first transformer layer of the component)",
                "cue_items": len({r['utterance'] for r in cue_items}), "n_boot": self.n_boot, "seed": seed}  # fmt: skip
        return ContextMixingResult("context_mixing", rows, line_plots=[], meta=meta, tables=tables,
                                   heatmaps=heatmaps, frames=frames)  # fmt: skip

    def utterance(self, bb, utt, layers: dict, plot: bool = False) -> dict:
        """Word matrices of one utterance: rows, outside-mass diagnostics, heatmap data, frame arrays and the
        per-component matrices (``mats[component][measure]`` (L, n, k)) with their labels for the cue study."""
        from src.context_mixing.decoder import decoder_scores, token_labels
        from src.context_mixing.encoder import encoder_inputs, encoder_scores
        from src.context_mixing.words import (
            outside_mass,
            pool_blocks,
            pool_receivers,
            row_normalize,
            word_frames,
        )

        uid = str(utt.id)
        words = self.words_of(utt)
        wav = torch.as_tensor(np.asarray(utt.audio, dtype=np.float32))
        labels = [w[0] for w in words]
        out: dict = {"rows": [], "outside": [], "heatmaps": [], "frames": {}, "mats": {}, "labels": {}, "words": labels}

        def emit(component, measure, mat, layer_ids, recv, src, head=None):
            for a, layer in enumerate(layer_ids):
                m = mat[a]
                for r in range(m.shape[0]):
                    for s in range(m.shape[1]):
                        row = {"utterance": uid, "component": component, "metric": measure, "layer": int(layer),
                               "receiver_index": r, "receiver": recv[r], "source_index": s, "source": src[s],
                               "value": float(m[r, s])}  # fmt: skip
                        if head is not None:
                            row["head"] = int(head)
                        out["rows"].append(row)

        if "encoder" in self.components:
            ms = [m for m in self.measures if m in valid_measures("encoder")]
            _, T = encoder_inputs(bb, wav, uid)
            groups = word_frames(words, T, bb.frame_rate, bb.frame_offset, self.frame_mapping, uid, utt.duration)
            # the engines index layer modules from 0: state convention k = module k - 1
            es = encoder_scores(bb, wav, ms, [k - 1 for k in layers["encoder"]], source_groups=groups,
                                per_head=self.per_head, batch_size=self.batch_size, utt_id=uid,
                                progress=True)  # fmt: skip
            enc_layers = [k + 1 for k in es.layers]  # state convention
            mats = {}
            for m in ms:
                if m == "value_zeroing":
                    mats[m] = row_normalize(pool_receivers(es.value_zeroing, groups))  # (L, W, W)
                else:
                    mats[m] = row_normalize(pool_blocks(es.frame[m], groups, groups))  # (L, W, W)
                    share = outside_mass(es.frame[m], groups)  # (L,)
                    out["outside"] += [{"utterance": uid, "component": "encoder", "metric": m, "layer": int(layer),
                                        "outside_mass": float(v)} for layer, v in zip(enc_layers, share)]  # fmt: skip
                emit("encoder", m, mats[m], enc_layers, labels, labels)
            for m, heads in es.heads.items():
                for h in range(heads.shape[1]):
                    emit("encoder", m, row_normalize(pool_blocks(heads[:, h], groups, groups)), enc_layers, labels, labels, h)
            out["mats"]["encoder"] = mats
            out["labels"]["encoder"] = (labels, labels, enc_layers)
            if self.save_frames:
                out["frames"].update({f"encoder_{m}": v for m, v in es.frame.items()})
                if es.value_zeroing is not None:
                    out["frames"]["encoder_value_zeroing"] = es.value_zeroing
            if plot:
                out["heatmaps"] += [{"utterance": uid, "component": "encoder", "layer": int(layer), "rows": labels,
                                     "cols": labels, "mats": {m: v[a] for m, v in mats.items()}}
                                    for a, layer in enumerate(enc_layers)]  # fmt: skip

        dec_comps = [c for c in ("decoder", "cross") if c in self.components]
        if dec_comps:
            sm = [m for m in self.measures if m in valid_measures("decoder")] if "decoder" in dec_comps else []
            cm = [m for m in self.measures if m in valid_measures("cross")] if "cross" in dec_comps else []
            F = int(bb.config.max_source_positions)
            groups = word_frames(words, F, bb.frame_rate, bb.frame_offset, self.frame_mapping, uid, utt.duration)
            dec_layers = sorted(set(layers.get("decoder", [])) | set(layers.get("cross", [])))
            ds = decoder_scores(bb, wav, sm, cm, [k - 1 for k in dec_layers], source_groups=groups, teacher_forcing=self.teacher_forcing,
                                reference_text=utt.text or " ".join(labels), language=self.language, task=self.task,
                                per_head=self.per_head, batch_size=self.batch_size, utt_id=uid)  # fmt: skip
            recv = token_labels(bb, ds.output_ids)
            src_tok = token_labels(bb, ds.input_ids)
            out["decoder_scores"] = ds
            out["transcript"] = {"utterance": uid, "teacher_forcing": ds.teacher_forcing, "reference": utt.text,
                                 "transcript": bb.decode_ids(ds.text_ids), "input_ids": " ".join(map(str, ds.input_ids)),
                                 "num_positions": len(ds.input_ids),
                                 "matches_greedy": bool(ds.predicted_ids == ds.output_ids)}  # fmt: skip
            singles = [np.array([n]) for n in range(len(ds.output_ids))]
            for comp in dec_comps:
                sel = [ds.layers.index(layer - 1) for layer in layers[comp]]  # engine index = state - 1
                mats = {}
                if comp == "decoder":
                    for m in sm:
                        mats[m] = row_normalize(ds.self_frame[m][sel])  # (L, N, N)
                        emit("decoder", m, mats[m], layers[comp], recv, src_tok)
                    for m, heads in ds.self_heads.items():
                        for h in range(heads.shape[1]):
                            emit("decoder", m, row_normalize(heads[sel, h]), layers[comp], recv, src_tok, h)
                    cols = src_tok
                else:
                    for m in cm:
                        if m == "value_zeroing":
                            mats[m] = row_normalize(ds.cross_value_zeroing[sel])  # (L, N, W)
                        else:
                            fr = ds.cross_frame[m][sel]  # (L, N, F)
                            mats[m] = row_normalize(pool_blocks(fr, singles, groups))  # (L, N, W)
                            inside = np.unique(np.concatenate(groups))
                            tot = fr.sum(-1)  # (L, N)
                            share = np.where(tot > 0, 1.0 - fr[..., inside].sum(-1) / np.where(tot > 0, tot, 1.0), 0.0)
                            out["outside"] += [{"utterance": uid, "component": "cross", "metric": m, "layer": int(layer),
                                                "outside_mass": float(v)} for layer, v in zip(layers[comp], share.mean(-1))]  # fmt: skip
                        emit("cross", m, mats[m], layers[comp], recv, labels)
                    for m, heads in ds.cross_heads.items():
                        for h in range(heads.shape[1]):
                            emit("cross", m, row_normalize(pool_blocks(heads[sel, h], singles, groups)), layers[comp],
                                 recv, labels, h)  # fmt: skip
                    cols = labels
                out["mats"][comp] = mats
                out["labels"][comp] = (recv, cols, layers[comp])
                if plot:
                    out["heatmaps"] += [{"utterance": uid, "component": comp, "layer": int(layer), "rows": recv,
                                         "cols": cols, "mats": {m: v[a] for m, v in mats.items()}}
                                        for a, layer in enumerate(layers[comp])]  # fmt: skip
            if self.save_frames:
                out["frames"].update({f"decoder_{m}": v for m, v in ds.self_frame.items()})
                out["frames"].update({f"cross_{m}": v for m, v in ds.cross_frame.items()})
                if ds.cross_value_zeroing is not None:
                    out["frames"]["cross_value_zeroing"] = ds.cross_value_zeroing
                out["frames"]["decoder_input_ids"] = np.asarray(ds.input_ids)
                out["frames"]["decoder_layers"] = np.asarray(ds.layers) + 1  # state convention
        if self.save_frames:  # word w's frames: word_frame_index[word_frame_start[w]:word_frame_start[w + 1]]
            out["frames"]["word_frame_index"] = np.concatenate(groups)
            out["frames"]["word_frame_start"] = np.cumsum([0] + [len(g) for g in groups])
            out["frames"]["words"] = np.asarray(labels)
        return out

    # ------------------------------------------------------------------------ cue study

    def cue_rows(self, bb, item, out: dict) -> list[dict]:
        """Per item, per component, measure and layer: ``S[target <- cue]`` and ``S[target <- control]`` (row-normalised
        word matrices), where the control is :func:`control_index`.

        - encoder: the target word's row, the cue's (control's) column;
        - cross: the mean over the rows predicting the target word's tokens in the teacher-forced transcript, the
          cue's encoder-word column;
        - decoder: the same rows; the *sum* over the columns of the cue word's input tokens (a row's share given
          to that word, whatever its number of tokens).

        Control word: :func:`src.datamodules.homophones.control_index` (the other word whose distance to the target is
        closest to the cue's; ties: the cue's side, then the lower index; never the cue or a target). A cue that comes after the target in the transcript
          cannot reach it (causal): ``cue_after_target`` is set and these items are left out of the decoder
          aggregate; so are items whose control word comes after the target (``control_after_target``: a
          structural 0 would inflate cue minus control).

        Reference words map to transcript words by :func:`align_words` on normalised words, transcript words to
        tokens by :func:`src.context_mixing.decoder.transcript_words`. ``spelling``:
        :func:`src.datamodules.homophones.spelling_outcome` of the teacher-forced transcript (normalised words, aligned
        to the words tier): ``correct`` / ``alternative`` (a wrong homophone spelling) / ``other`` / ``missing``;
        ``spelled_right`` = ``correct``.
        """
        from src.context_mixing.common import ContextMixingError
        from src.datamodules.homophones import control_index, spelling_outcome
        from src.functional.text import normalize_text

        words = out["words"]
        W = len(words)
        for k, name in ((item.cue_index, "cue"), (item.target_index, "target")):
            if not 0 <= k < W:
                raise ContextMixingError(f"utterance {item.utterance!r}: {name} index {k} is outside its {W} words")
        ctrl = control_index(item, W)
        base = {"utterance": item.utterance, "cue_word": item.cue_word, "cue_index": item.cue_index,
                "target_word": item.target_word, "target_index": item.target_index,
                "control_index": ctrl, "control_word": None if ctrl is None else words[ctrl]}  # fmt: skip
        tok_rows = {}
        ds = out.get("decoder_scores")
        if ds is not None:
            from src.context_mixing.decoder import transcript_words

            hyp_words, hyp_toks = transcript_words(bb, ds.text_ids)
            ref_pieces, owner = [], []
            for k, w in enumerate(words):
                for p in normalize_text(w).split():
                    ref_pieces.append(p)
                    owner.append(k)
            spellings = {normalize_text(item.target_word), *(normalize_text(a) for a in item.alternatives)}
            aligned = align_words(ref_pieces, hyp_words,
                                  {p: spellings for p in range(len(owner)) if owner[p] == item.target_index})  # fmt: skip

            def tokens_of(k):  # token indices (into text_ids) of reference word k in the transcript
                hs = sorted({aligned[p] for p in range(len(owner)) if owner[p] == k and aligned[p] is not None})
                return sorted({t for h in hs for t in hyp_toks[h]}), hs

            t_toks, t_hyp = tokens_of(item.target_index)
            spoken = " ".join(hyp_words[h] for h in t_hyp)
            outcome = spelling_outcome(item, words, " ".join(hyp_words))
            base.update(transcript=" ".join(hyp_words), transcript_target=spoken, target_found=bool(t_toks),
                        spelling=outcome, spelled_right=outcome == "correct")  # fmt: skip
            tok_rows = {"target": [ds.prompt_len + t - 1 for t in t_toks]}
            for name, k in (("cue", item.cue_index), ("control", ctrl)):
                tok_rows[name] = [] if k is None else [ds.prompt_len + t for t in tokens_of(k)[0]]
            for name in ("cue", "control"):  # a source no target row can see (causal decoder): structurally 0
                base[f"{name}_after_target"] = bool(tok_rows["target"] and tok_rows[name]
                                                    and min(tok_rows[name]) > max(tok_rows["target"]))  # fmt: skip
        rows = []
        for comp, mats in out["mats"].items():
            layer_ids = out["labels"][comp][2]
            for m, mat in mats.items():
                for a, layer in enumerate(layer_ids):
                    S = mat[a]
                    vals = {}
                    for name, k in (("cue", item.cue_index), ("control", ctrl)):
                        if k is None:
                            vals[name] = float("nan")
                        elif comp == "encoder":
                            vals[name] = float(S[item.target_index, k])
                        elif not tok_rows.get("target"):
                            vals[name] = float("nan")
                        elif comp == "cross":
                            vals[name] = float(S[tok_rows["target"], k].mean())
                        else:
                            cols = tok_rows[name]
                            vals[name] = float(S[np.ix_(tok_rows["target"], cols)].sum(1).mean()) if cols else float("nan")
                    rows.append({**base, "component": comp, "metric": m, "layer": int(layer),
                                 "target_from_cue": vals["cue"], "target_from_control": vals["control"]})  # fmt: skip
        return rows

    def aggregate(self, items: list[dict], seed: int, unit_of: dict | None = None, unit: str = "utterance") -> list[dict]:
        """Per component, measure and layer: the mean over items of ``S[target <- cue]``, of the control and of their
        paired difference, with percentile bootstrap intervals (src.functional.intervals.bootstrap_ci, one resample
        design for the three, so the difference is paired) over ``unit``: ``unit_of`` maps an item's utterance id to
        its unit key (:func:`src.analyses.base.interval_units`: texts by default, so the readings of one sentence are
        resampled together; ``None``: each item its own unit). Columns ``unit``, ``n_units``, ``few_units`` (fewer
        than 5 units, also a warning) and ``n_items``. Items whose value is undefined (no control word, target not
        found in the transcript; decoder: cue after the target) are left out."""
        from src.functional.intervals import bootstrap_ci

        out = []
        keys = sorted({(r["component"], r["metric"], r["layer"]) for r in items})
        for comp, m, layer in keys:
            sub = [r for r in items if (r["component"], r["metric"], r["layer"]) == (comp, m, layer)
                   and np.isfinite(r["target_from_cue"]) and np.isfinite(r["target_from_control"])
                   and not (comp == "decoder" and (r.get("cue_after_target") or r.get("control_after_target")))]  # fmt: skip
            if not sub:
                continue
            cue = np.array([r["target_from_cue"] for r in sub])
            ctl = np.array([r["target_from_control"] for r in sub])
            groups = np.array([str(unit_of[str(r["utterance"])]) if unit_of is not None else str(r["utterance"])
                               for r in sub])  # fmt: skip
            for kind, v in (("cue", cue), ("control", ctl), ("cue_minus_control", cue - ctl)):
                ci = bootstrap_ci(v, groups, statistic="mean", n_boot=self.n_boot, alpha=self.alpha, seed=seed)
                out.append({"component": comp, "metric": m, "layer": int(layer), "kind": kind, "value": ci.estimate,
                            "ci_low": ci.low, "ci_high": ci.high, **interval_fields(unit, ci.n_groups),
                            "n_items": len(sub),
                            "spelled_right": float(np.mean([bool(r.get("spelled_right")) for r in sub]))
                            if "spelled_right" in sub[0] else None})  # fmt: skip
        return out

"""Decoder lens (Langedijk et al., 2023, "DecoderLens") for Whisper: what does the model's own
decoder make of encoder layer k?

For each analysed encoder state k the decoder cross-attends to that state instead of the
encoder's output, and decodes greedily with the model's usual prompt:

- residual states ``0..N`` (src/layers.py: raw) go through the encoder's final LayerNorm
  (``backbone.final_norm_module()``) first, as the decoder only ever saw normalised encoder
  output; the named state ``final_norm`` is already normalised and is used as is. State ``N``
  through the norm *is* ``final_norm``, so the lens at the last layer is the model's own
  transcript (tested: token ids equal ``model.generate(input_features)`` exactly);
- prompt: ``<|startoftranscript|>`` [``<|en|>`` ``<|transcribe|>``] ``<|notimestamps|>``
  (language and task only for multilingual models; ``language: null`` lets Whisper detect it per
  item, from the lensed state);
- greedy: ``num_beams=1, do_sample=False``;
- every layer of a batch of utterances decodes in **one** ``generate`` call (``batch_layers: true``):
  the lensed states are stacked into a batch of ``layers x utterances`` encoder outputs (the same
  token ids as one call per layer, tested; on CPU not faster, see bench/decoder_lens.py). Every item covers the
  same fixed 30 s window (1500 frames, padding included, exactly as the model sees its own
  input), so no encoder attention mask is needed; the decoder prompts all have one length;
- a cap of ``ceil(max_tokens_per_second * duration) + extra_tokens`` new tokens per utterance
  (a per-item stopping criterion, so no item depends on the others in its batch): early layers
  often loop ("the the the ...") until Whisper's 448-token limit, which costs minutes and makes
  the WER a count of the loop. The share of hypotheses that reached their cap without saying
  end-of-text is reported per layer (measure ``capped``; with ``max_tokens_per_second: null`` there
  is no cap and ``capped`` counts hypotheses that reached the model's maximum length).

Measures per layer (rows ``layer, layer_name, lens, metric, value, ci_low, ci_high, unit, n_units, few_units,
n_utterances``):
``wer``, ``cer`` against the reference text, ``wer_vs_final``, ``cer_vs_final`` against the
model's own final transcript, ``capped``. Error rates are corpus-level (total edits / total
reference words or characters) on text normalised by :func:`src.functional.text.normalize_text`
(Whisper's English normaliser for English, ``language: en`` or null; the simple one otherwise:
:func:`src.functional.text.error_rate_normalizer`), with percentile bootstrap intervals
(:func:`src.functional.intervals.bootstrap_from_sums`) that resample the split unit
(``split.by``, texts by default: the readings of one sentence are resampled together, as the
probes do; ``unit`` and ``n_units`` name them, ``few_units`` flags fewer than 5). Table
``transcripts``: one row per utterance x layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from src.analyses.base import (
    UTTERANCE_SETS,
    AnalysisError,
    AnalysisLayerError,
    AnalysisResult,
    MeasureGroupsResult,
    interval_units,
    ratio_rows,
    select_utterances,
    whisper_backbone,
)
from src.lenses.scoring import error_stats, reference_texts

log = logging.getLogger(__name__)

ERROR_MEASURES = ("wer", "cer", "wer_vs_final", "cer_vs_final")


# ----------------------------------------------------------------------------- the analysis


class DecoderLens:
    """Whisper decoder lens: per encoder state, greedy transcripts through the model's own decoder.

    Args:
        layers: encoder states (``None``: every residual state ``0..N``; ``final_norm`` may be named;
            src.layers.resolve_layers syntax).
        utterances: ``test`` (default; held-out sentences of ``split``), ``val``, ``train``, ``all``, or a list of ids.
        split: options of ``split_utterances`` (default ``by: text`` and its fractions, as train.py).
        max_utterances: the first n selected utterances only (a budget).
        batch_utterances: utterances per ``generate`` call (the batch is ``layers x batch_utterances``).
        max_tokens_per_second, extra_tokens: the per-utterance cap on new tokens (``null``: none).
        language, task: prompt of multilingual models (``language: null``: detected per item).
        check_final: ``first`` (default) / ``all`` / ``none``: compare the lens at the last state with plain
            ``model.generate(input_features)`` on these utterances; a difference is an error.
        batch_layers: all layers of a batch of utterances in one ``generate`` (default) or one ``generate`` per
            layer; the token ids are identical (tested). bench/decoder_lens.py measured the one-call batch *slower*
            on CPU (about 0.6x): finished rows keep being computed while the longest (often a looping early
            layer) runs to its cap.
        n_boot, alpha, seed: bootstrap over the split unit ``split.by`` (texts by default; seed ``None``: the run's
            seed).
    """

    needs_cache = False
    lens = "decoder_lens"

    def __init__(
        self,
        layers=None,
        utterances: str | Sequence[str] = "test",
        split: dict | None = None,
        max_utterances: int | None = None,
        batch_utterances: int = 4,
        max_tokens_per_second: float | None = 10.0,
        extra_tokens: int = 10,
        language: str | None = "en",
        task: str = "transcribe",
        check_final: str = "first",
        batch_layers: bool = True,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int | None = None,
    ) -> None:
        if check_final not in ("first", "all", "none"):
            raise AnalysisError(f"check_final must be first, all or none, got {check_final!r}")
        if int(batch_utterances) < 1:
            raise AnalysisError(f"batch_utterances must be >= 1, got {batch_utterances}")
        if isinstance(utterances, str) and utterances not in UTTERANCE_SETS:
            raise AnalysisError(f"utterances must be one of {UTTERANCE_SETS} or a list of utterance ids, got {utterances!r}")
        if max_tokens_per_second is not None and float(max_tokens_per_second) <= 0:
            raise AnalysisError(f"max_tokens_per_second must be > 0 or null, got {max_tokens_per_second}")
        self.layers = layers
        self.utterances = utterances if isinstance(utterances, str) else list(utterances)
        self.split = dict(split or {})
        self.max_utterances = max_utterances
        self.batch_utterances = int(batch_utterances)
        self.max_tokens_per_second = None if max_tokens_per_second is None else float(max_tokens_per_second)
        self.extra_tokens = int(extra_tokens)
        self.language = language
        self.task = task
        self.check_final = check_final
        self.batch_layers = bool(batch_layers)
        self.n_boot = int(n_boot)
        self.alpha = float(alpha)
        self.seed = seed

    # ------------------------------------------------------------------------ pieces

    def resolve(self, bb) -> list[int]:
        from src.layers import resolve_for

        return resolve_for(bb, self.layers, what="analysis.layers", error=AnalysisLayerError)

    def caps(self, bb, num_samples: Sequence[int]) -> list[int] | None:
        if self.max_tokens_per_second is None:
            return None
        return [int(math.ceil(self.max_tokens_per_second * n / bb.sample_rate)) + self.extra_tokens for n in num_samples]

    def decode(self, bb, waveforms: list[torch.Tensor], utt_ids: list[str], states: list[int],
               batched: bool = True) -> tuple[list[list[list[int]]], list[list[bool]]]:  # fmt: skip
        """Token ids ``[state][utterance]`` and capped flags: one ``generate`` for all states (``batched``) or one
        per state (the reference way, for the benchmark)."""
        enc = bb.window_states(waveforms, utt_ids)  # (S, B, F, D)
        caps = self.caps(bb, [int(w.shape[-1]) for w in waveforms])
        b = len(waveforms)
        lensed = [bb.lens_encoder_states(enc, k) for k in states]  # L x (B, F, D)
        if batched:
            x = torch.cat(lensed)  # (L * B, F, D), state-major
            toks, capped = bb.generate_from_encoder_states(x, None if caps is None else caps * len(states),
                                                           self.language, self.task)  # fmt: skip
            return ([toks[i * b : (i + 1) * b] for i in range(len(states))],
                    [capped[i * b : (i + 1) * b] for i in range(len(states))])  # fmt: skip
        out_t, out_c = [], []
        for x in lensed:
            t, c = bb.generate_from_encoder_states(x, caps, self.language, self.task)
            out_t.append(t)
            out_c.append(c)
        return out_t, out_c

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> AnalysisResult:
        from src.progress import progress

        bb = whisper_backbone(ctx, "analysis=decoder_lens")
        positions0 = int(getattr(bb, "decoded_positions", 0))
        corpus = ctx.corpus
        layers = self.resolve(bb)
        n_res = int(bb.num_layers)
        final_state = n_res - 1 if (n_res - 1 in layers or n_res not in layers) else n_res
        states = sorted(set(layers) | {final_state})
        names = list(bb.layer_names)
        seed = ctx.seed if self.seed is None else int(self.seed)
        idx = select_utterances(corpus, self.utterances, self.split, ctx.seed, self.max_utterances)
        refs = reference_texts(corpus, idx, "analysis=decoder_lens", error=AnalysisError)
        ids = [str(corpus.ids[i]) for i in idx]
        unit, groups = interval_units(corpus, idx, self.split.get("by", "text"), "analysis=decoder_lens")
        audio = []
        for i, u in zip(idx, ids):
            a = torch.as_tensor(np.asarray(corpus[i].audio, dtype=np.float32))
            bb.check_input(int(a.shape[-1]), u)  # longer than the window: an error naming the utterance
            audio.append(a)

        hyp: dict[int, list[list[int]]] = {k: [] for k in states}
        cap: dict[int, list[bool]] = {k: [] for k in states}
        for s in progress(range(0, len(idx), self.batch_utterances), desc="decoder lens", unit="batch"):
            sl = slice(s, s + self.batch_utterances)
            toks, capped = self.decode(bb, audio[sl], ids[sl], states, batched=self.batch_layers)
            for k, t, c in zip(states, toks, capped):
                hyp[k] += t
                cap[k] += c
        final_ids = hyp[final_state]
        checked = self._check_final(bb, audio, ids, final_ids, cap[final_state])
        texts = {k: [bb.decode_ids(t) for t in hyp[k]] for k in states}
        final_text = texts[final_state]
        from src.functional.text import error_rate_normalizer

        norm = error_rate_normalizer(self.language)  # Whisper's English normaliser for English (and language null)
        if any(cap[final_state]):
            log.warning("decoder lens: %d final transcripts stopped at the token cap (max_tokens_per_second=%s)",
                        sum(cap[final_state]), self.max_tokens_per_second)  # fmt: skip

        rows, table = [], []
        for k in layers:
            st = np.array([error_stats(r, h, norm) for r, h in zip(refs, texts[k])], dtype=np.float64)  # (U, 4)
            sf = np.array([error_stats(f, h, norm) for f, h in zip(final_text, texts[k])], dtype=np.float64)  # (U, 4)
            base = {"layer": k, "layer_name": names[k], "lens": self.lens}
            for measure, s2 in (("wer", st[:, :2]), ("cer", st[:, 2:]), ("wer_vs_final", sf[:, :2]),
                                ("cer_vs_final", sf[:, 2:])):  # fmt: skip
                rows.append(ratio_rows(s2, base, measure, self.n_boot, self.alpha, seed, groups, unit))
            c = np.array([[float(x), 1.0] for x in cap[k]])
            rows.append(ratio_rows(c, base, "capped", self.n_boot, self.alpha, seed, groups, unit))
            for u, (uid, r, h, f, e) in enumerate(zip(ids, refs, texts[k], final_text, st)):
                table.append({"utterance": uid, "layer": k, "layer_name": names[k], "lens": self.lens,
                              "hypothesis": h, "reference": r, "model_transcript": f,
                              "word_edits": int(e[0]), "reference_words": int(e[1]),
                              "num_tokens": len(hyp[k][u]), "capped": bool(cap[k][u])})  # fmt: skip
            log.info("decoder lens layer %s: WER %.3f  CER %.3f", names[k], rows[-5]["value"], rows[-4]["value"])
        meta = {"lens": self.lens, "layers": layers, "layer_names": [names[k] for k in layers],
                "utterances": len(idx), "utterance_set": self.utterances if isinstance(self.utterances, str) else "list",
                "final_state": names[final_state], "checked_against_generate": checked,
                "language": self.language if bb.is_multilingual else None,
                "prompt_ids": bb.decoder_prompt_ids(self.language or "en", self.task),
                "max_tokens_per_second": self.max_tokens_per_second, "extra_tokens": self.extra_tokens,
                "batch_utterances": self.batch_utterances, "batch_layers": self.batch_layers, "text_normalisation": norm,
                "seed": seed, "n_boot": self.n_boot, "bootstrap_unit": unit,
                "bootstrap_units": int(len(set(groups.tolist()))),
                "decoder_positions": int(getattr(bb, "decoded_positions", 0)) - positions0}  # fmt: skip
        return MeasureGroupsResult("decoder_lens", rows, line_plots=[], meta=meta, tables={"transcripts": table},
                          figure_groups={"decoder_lens_error_over_layers": (list(ERROR_MEASURES), "error rate")})  # fmt: skip

    def _check_final(self, bb, audio, ids, final_ids, capped) -> int:
        """Plain ``generate(input_features)`` on the first (or every) utterance must give the lens's final ids
        (their first ``cap`` ids where the lens stopped at its cap)."""
        if self.check_final == "none":
            return 0
        n = 1 if self.check_final == "first" else len(audio)
        for s in range(0, n, self.batch_utterances):
            e = min(n, s + self.batch_utterances)
            plain = bb.transcribe_ids(audio[s:e], self.language, self.task)
            for j, p in enumerate(plain):
                if capped[s + j]:
                    p = p[: len(final_ids[s + j])]
                if p != final_ids[s + j]:
                    raise AnalysisError(
                        f"decoder lens: at the last encoder state utterance {ids[s + j]!r} decodes to {final_ids[s + j][:20]} "
                        f"but model.generate(input_features) gives {p[:20]}: the lens does not reproduce the model "
                        "(a token cap too small? raise analysis.max_tokens_per_second)"
                    )
        return n

"""Gram matrices of utterance means across speakers: does a layer group by voice or by sentence?

The tutorial's picture: the same sentences read by several voices (the synthetic corpus:
sentence index i is the same text for every voice). Per layer, each utterance becomes
the mean of its frames; the similarity of every pair of utterance means forms a Gram
matrix (items ordered by sentence then speaker, or speaker then sentence). Early layers
of speech models tend to group by speaker, later ones by sentence.

Conventions:

- Utterances are grouped by their text (``corpus.annotation(i).text``, stripped);
  sentences read by *every* speaker are kept (the first ``max_sentences`` in corpus
  order); a speaker reading a sentence twice contributes its first reading.
- ``similarity``: ``centred`` (default) = the cosine after subtracting the mean over the
  selected items (the Gram matrix of linear CKA, H K H, normalised to a unit diagonal),
  or plain ``cosine`` of the utterance means. Centring removes the component shared by
  all utterances, which otherwise makes every cosine close to 1 (Whisper tiny.en on the
  synthetic corpus: 0.91-0.998 for every pair kind at every layer).
- Measures per layer, means over off-diagonal pairs: ``same_speaker`` (same speaker,
  different sentence), ``same_sentence`` (same sentence, different speaker),
  ``different`` (both differ), and ``speaker_minus_sentence`` = same_speaker -
  same_sentence (positive: the layer groups by speaker).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from src.analyses.base import (
    AnalysisContext,
    AnalysisError,
    CurvesResult,
    Matrix,
    analysis_layers,
    release_pages,
)

log = logging.getLogger(__name__)

PAIR_MEASURES = ("same_speaker", "same_sentence", "different")


def shared_sentences(
    texts: Sequence[str], speakers: Sequence[str], keep_speakers: Sequence[str] | None = None
) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """Sentences read by every speaker: ``(sentences in first-seen order, speakers, (sentence, speaker) -> utterance)``."""
    first: dict[tuple[str, str], int] = {}
    order: list[str] = []
    for i, (t, s) in enumerate(zip(texts, speakers)):
        t = (t or "").strip()
        if not t or (keep_speakers is not None and s not in keep_speakers):
            continue
        if t not in order:
            order.append(t)
        first.setdefault((t, s), i)
    spk = sorted({s for _, s in first}) if keep_speakers is None else list(keep_speakers)
    sents = [t for t in order if all((t, s) in first for s in spk)]
    return sents, spk, first


def pair_means(gram: np.ndarray, sentence: np.ndarray, speaker: np.ndarray) -> dict[str, float]:
    """Mean off-diagonal similarity per pair kind (see the module docstring)."""
    same_spk = speaker[:, None] == speaker[None, :]  # (M, M)
    same_sent = sentence[:, None] == sentence[None, :]
    off = ~np.eye(len(gram), dtype=bool)
    out = {
        "same_speaker": float(gram[same_spk & ~same_sent & off].mean()),
        "same_sentence": float(gram[~same_spk & same_sent & off].mean()),
        "different": float(gram[~same_spk & ~same_sent].mean()),
    }
    out["speaker_minus_sentence"] = out["same_speaker"] - out["same_sentence"]
    return out


class SpeakerGram:
    """Per-layer similarity of utterance means for the same sentences read by several speakers.

    Args:
        layers: analysed layers (``None``: all).
        similarity: ``centred`` or ``cosine`` (see the module docstring).
        order: ``sentence`` (items sorted by sentence, then speaker: same-sentence blocks on
            the diagonal) or ``speaker`` (speaker blocks).
        max_sentences: at most this many shared sentences (first in corpus order; ``None``: all).
        speakers: only these speakers (``None``: every speaker in the corpus).
        heatmaps: draw a Gram heatmap per layer.
    """

    def __init__(
        self,
        layers: Sequence[int | str] | int | str | None = None,
        similarity: str = "centred",
        order: str = "sentence",
        max_sentences: int | None = 20,
        speakers: Sequence[str] | None = None,
        heatmaps: bool = True,
    ) -> None:
        if similarity not in ("cosine", "centred"):
            raise AnalysisError(f"similarity must be 'cosine' or 'centred', got {similarity!r}")
        if order not in ("sentence", "speaker"):
            raise AnalysisError(f"order must be 'sentence' or 'speaker', got {order!r}")
        if max_sentences is not None and int(max_sentences) < 2:
            raise AnalysisError(f"max_sentences must be at least 2 (or null), got {max_sentences}")
        self.layers = layers  # parsed against the cache in run (src.layers.resolve_layers)
        self.similarity = similarity
        self.order = order
        self.max_sentences = None if max_sentences is None else int(max_sentences)
        self.speakers = None if speakers is None else [str(s) for s in speakers]
        self.heatmaps = bool(heatmaps)

    def run(self, ctx: AnalysisContext) -> CurvesResult:
        from src.progress import progress

        acts, corpus = ctx.acts, ctx.corpus
        if list(acts.ids) != list(corpus.ids):
            raise AnalysisError(
                "the activation cache and the corpus list different utterances; rebuild the cache"
            )
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        texts = [corpus.annotation(i).text for i in range(len(corpus))]
        spk_of = [corpus.speaker(i) for i in range(len(corpus))]
        if self.speakers is not None:
            missing = sorted(set(self.speakers) - set(spk_of))
            if missing:
                raise AnalysisError(f"speakers {missing} are not in the corpus; it has {sorted(set(spk_of))}")
        sents, spks, first = shared_sentences(texts, spk_of, self.speakers)
        if len(spks) < 2:
            raise AnalysisError(
                f"speaker gram: {len(spks)} speaker(s) with transcribed utterances; the analysis needs at least 2 "
                "speakers reading the same sentences"
            )
        if len(sents) < 2:
            raise AnalysisError(
                f"speaker gram: {len(sents)} sentence(s) read by all of {spks}; the analysis needs at least 2 "
                "shared sentences (a corpus with the same texts read by several speakers, e.g. data=synth)"
            )
        n_shared = len(sents)
        if self.max_sentences is not None:
            sents = sents[: self.max_sentences]
        keys = [(si, ki) for si in range(len(sents)) for ki in range(len(spks))]  # sentence-major
        if self.order == "speaker":
            keys.sort(key=lambda k: (k[1], k[0]))
        sentence = np.array([si for si, _ in keys])  # (M,)
        speaker = np.array([ki for _, ki in keys])  # (M,)
        utts = [first[(sents[si], spks[ki])] for si, ki in keys]
        labels = [f"{spks[ki]}/s{si}" for si, ki in keys]
        empty = [acts.ids[u] for u in utts if acts.lengths[u] == 0]
        if empty:
            raise AnalysisError(f"utterances without frames in the cache: {empty[:5]}")

        rows, matrices, curves = [], {}, {m: [] for m in (*PAIR_MEASURES, "speaker_minus_sentence")}
        for layer in progress(layers, desc="speaker gram", unit="layer"):
            x = acts.layer(layer)  # (total_frames, D), one layer read at a time
            spans = [(int(acts.offsets[u]), int(acts.offsets[u] + acts.lengths[u])) for u in utts]
            means = np.stack([np.asarray(x[a:b], dtype=np.float64).mean(0) for a, b in spans])  # (M, D)
            release_pages(x)  # the spans' memory-mapped pages do not stay resident (at most M utterances)
            gram = self._gram(means, layer)  # (M, M)
            for name, value in pair_means(gram, sentence, speaker).items():
                rows.append({"layer": layer, "metric": name, "value": value, "similarity": self.similarity})
                curves[name].append(value)
            if self.heatmaps:
                matrices[f"gram_layer_{layer:02d}"] = Matrix(
                    gram,
                    labels,
                    labels,
                    title=f"{self.similarity} similarity of utterance means, layer {layer}",
                    quantity=f"{self.similarity} similarity",
                    xlabel="utterance (sentence, speaker)" if self.order == "sentence" else "utterance (speaker, sentence)",
                    ylabel="utterance",
                )
        meta = {"speakers": spks, "sentences": len(sents), "shared_sentences": n_shared, "items": len(utts),
                "layers": layers, "similarity": self.similarity, "order": self.order,
                "utterances": [acts.ids[u] for u in utts]}  # fmt: skip
        kinds = {k.replace("_", " "): curves[k] for k in PAIR_MEASURES}
        extra = {} if len(layers) < 2 else {
            "pair_similarity_over_layers": (layers, kinds, "layer", f"mean {self.similarity} similarity")
        }  # fmt: skip
        return CurvesResult("speaker_gram", rows, matrices,
                            line_plots=["speaker_minus_sentence"] if len(layers) > 1 else [],
                            meta=meta, curves=extra)  # fmt: skip

    def _gram(self, means: np.ndarray, layer: int) -> np.ndarray:
        if self.similarity == "centred":
            means = means - means.mean(0, keepdims=True)  # (M, D) centred over items
        norms = np.linalg.norm(means, axis=1)  # (M,)
        scale = np.abs(means).max() if means.size else 0.0
        if not (norms > 1e-12 * max(scale, 1e-300)).all() or scale == 0:
            raise AnalysisError(
                f"layer {layer}: an utterance mean is zero{' after centring' if self.similarity == 'centred' else ''}"
                ": cosine similarity is undefined (constant features?)"
            )
        unit = means / norms[:, None]
        return np.clip(unit @ unit.T, -1.0, 1.0)  # (M, M)

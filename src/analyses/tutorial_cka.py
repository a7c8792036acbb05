"""The tutorial's CKA notebook (D, "Locating acoustic and articulatory information in Wav2Vec2 with CKA"), exactly.

``python analyze.py experiment=tutorial_cka data.root=...`` (../shared/TUTORIAL_SPEC.md section 4).  On five
sentences read by two participants (default S18 S33 S04 S52 S42 of F02 and M02, block B01, R01, normal rate):

(a) **frame-level CKA per sentence** of the first participant: for each layer, biased linear CKA between the
    sentence's N frames (N x D) and
    - ``mfcc``: the notebook's librosa call ``librosa.feature.mfcc(y, sr=16000, n_mels=12, n_fft=320,
      hop_length=len(y) // N)`` (librosa defaults otherwise: hann, centred with zero padding, power 2, slaney
      mel scale and area norm, ``power_to_db`` with top_db 80, DCT-II ortho; 12 mel bands give 12
      coefficients), frames cut to the first N.  Computed by :class:`src.backbones.features.SpectralBaseline`
      with those options and a per-sentence hop;
    - ``ema``: the first N rows of the sentence's EMA track (frame k <-> row k; with fewer rows than frames
      both are cut to the shorter, where the notebook would fail; counted in ``meta``).
    Rows ``metric=cka`` per sentence (``utterance``) and their mean (``utterance=mean``), one line per reference.
(b) **Gram matrices of sentence means**, per layer in ``gram_layers``: each of the 10 sentences (both
    participants) becomes the mean of its frames, each feature is z-scored over the 10 rows (ddof 0), and
    ``G = Z Z^T`` (trace = 10 x D).  Matrices ``gram_layer_<k>`` labelled ``<participant>_S<nn>``.
(c) **layer x layer CKA over sentence means** (n = 5): first participant vs itself and vs the second, the
    sentences paired by id.  Matrices ``cka_layers_<P1>_vs_<P1>`` and ``cka_layers_<P1>_vs_<P2>``.
All CKA is biased linear CKA (``src.functional.cka.linear_cka``: Kornblith et al.'s ``cka(gram_linear(x),
gram_linear(y))``).  With n = 5 the layer x layer values are inflated towards 1; only the pattern matters.
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

NOTEBOOK_SENTENCES = ("S18", "S33", "S04", "S52", "S42")


def notebook_mfcc(audio: np.ndarray, num_frames: int, sample_rate: int = 16000) -> np.ndarray:
    """The notebook's MFCC frames for a sentence with ``num_frames`` model frames: ``(num_frames, 12)``."""
    import torch

    from src.backbones.features import SpectralBaseline

    hop = len(audio) // num_frames
    if hop < 1:
        raise AnalysisError(f"{len(audio)} samples cannot give {num_frames} MFCC frames")
    fe = SpectralBaseline(kind="mfcc", n_mels=12, n_mfcc=12, n_fft=320, win_length=320, hop_length=hop,
                          sample_rate=sample_rate, top_db=80.0, mel_scale="slaney", mel_norm="slaney",
                          pad_mode="constant", frames="all")  # fmt: skip
    feats = (
        fe.frames_one(torch.as_tensor(np.asarray(audio, dtype=np.float32))).double().numpy()
    )  # (n // hop + 1, 12)
    return feats[:num_frames]


def zscore_gram(means: np.ndarray) -> np.ndarray:
    """``scipy.stats.zscore(means, axis=0)`` (ddof 0) then ``Z Z^T``: ``(M, M)``."""
    z = (means - means.mean(0)) / means.std(0)  # (M, D); a constant feature gives NaN, as scipy's zscore
    return z @ z.T


class TutorialCKA:
    """Notebook D's three analyses on the activation cache (see the module docstring).

    Args:
        participants: two participants, the first analysed in (a) and as rows in (c).
        sentences: sentence ids within the corpus (``S18`` or 18); each must match exactly one utterance
            per participant (filter the corpus to one block, repetition and rate).
        layers: analysed layers (null: every layer in the cache).
        gram_layers: layers whose Gram matrix (b) is drawn (the notebook shows 0 and 7).
        track: the EMA track name.
    """

    def __init__(
        self,
        participants: Sequence[str] = ("F02", "M02"),
        sentences: Sequence[str | int] = NOTEBOOK_SENTENCES,
        layers=None,
        gram_layers: Sequence[int] = (0, 7),
        track: str = "ema",
    ) -> None:
        from src.datamodules.haskins import int_values

        if len(participants) != 2:
            raise AnalysisError(f"analysis.participants needs two participants, got {list(participants)}")
        self.participants = [str(p) for p in participants]
        self.sentences = [int(s) for s in sentences] if all(isinstance(s, int) for s in sentences) else None
        if self.sentences is None:
            self.sentences = [next(iter(int_values([s], "S", "analysis.sentences"))) for s in sentences]
        if len(self.sentences) < 2:
            raise AnalysisError("analysis.sentences needs at least 2 sentences")
        self.layers, self.gram_layers, self.track = layers, [int(k) for k in gram_layers], track

    def _items(self, corpus) -> dict[str, list[int]]:
        from src.datamodules.haskins import parse_name

        info = [parse_name(uid) for uid in corpus.ids]
        out = {}
        for p in self.participants:
            idx = []
            for s in self.sentences:
                hits = [
                    i
                    for i, inf in enumerate(info)
                    if inf and inf["participant"] == p and inf["sentence"] == s
                ]
                if len(hits) != 1:
                    have = sorted({inf["participant"] for inf in info if inf})
                    raise AnalysisError(
                        f"participant {p} sentence S{s:02d}: {len(hits)} utterances in corpus {corpus.name!r} "
                        f"({[corpus.ids[i] for i in hits][:4]}); need exactly one (participants present: {have}; "
                        "filter the data to one block, repetition and rate)"
                    )
                idx.append(hits[0])
            out[p] = idx
        return out

    def run(self, ctx: AnalysisContext) -> CurvesResult:
        from src.functional.cka import linear_cka

        acts, corpus = ctx.acts, ctx.corpus
        if list(acts.ids) != list(corpus.ids):
            raise AnalysisError(
                "the activation cache and the corpus list different utterances; rebuild the cache"
            )
        layers = analysis_layers(self.layers, acts, "analysis.layers")
        bad = [k for k in self.gram_layers if k not in layers]
        if bad:
            raise AnalysisError(f"analysis.gram_layers {bad} are not among the analysed layers {layers}")
        items = self._items(corpus)
        p1, p2 = self.participants
        utts = items[p1] + items[p2]
        spans = {u: (int(acts.offsets[u]), int(acts.offsets[u] + acts.lengths[u])) for u in utts}
        frames = {layer: {} for layer in layers}  # layer -> utterance -> (N, D) float64
        for layer in layers:
            x = acts.layer(layer)
            for u, (a, b) in spans.items():
                frames[layer][u] = np.asarray(x[a:b], dtype=np.float64)
            release_pages(x)
        refs: dict[str, dict[int, np.ndarray]] = {"mfcc": {}, "ema": {}}
        cut = {}
        for u in items[p1]:
            n = spans[u][1] - spans[u][0]
            refs["mfcc"][u] = notebook_mfcc(corpus[u].audio, n, corpus[u].sample_rate)
            ann = corpus.annotation(u)
            if self.track not in ann.tracks:
                raise AnalysisError(
                    f"utterance {ann.id!r} ({ann.path}) has no track {self.track!r}; it has {sorted(ann.tracks)}"
                )
            ema = np.asarray(ann.tracks[self.track].values, dtype=np.float64)
            if len(ema) < n:
                cut[corpus.ids[u]] = (n, len(ema))
            refs["ema"][u] = ema[:n]
        rows, curves = [], {}
        for ref in ("mfcc", "ema"):
            means = []
            for layer in layers:
                vals = []
                for u in items[p1]:
                    y = refs[ref][u]
                    m = min(len(y), len(frames[layer][u]))
                    v = float(linear_cka(frames[layer][u][:m], y[:m]))
                    vals.append(v)
                    rows.append({"layer": layer, "reference": ref, "utterance": corpus.ids[u], "metric": "cka",
                                 "value": v, "frames": m})  # fmt: skip
                means.append(float(np.mean(vals)))
                rows.append({"layer": layer, "reference": ref, "utterance": "mean", "metric": "cka_mean",
                             "value": means[-1], "frames": None})  # fmt: skip
            curves[ref] = means
        matrices = {}
        sent_means = {layer: {u: frames[layer][u].mean(0) for u in utts} for layer in layers}  # (D,) each
        labels = [
            f"{corpus.speaker(u) or p}_S{s:02d}" for p in (p1, p2) for u, s in zip(items[p], self.sentences)
        ]
        for layer in self.gram_layers:
            g = zscore_gram(np.stack([sent_means[layer][u] for u in utts]))  # (10, 10)
            matrices[f"gram_layer_{layer:02d}"] = Matrix(g, labels, labels, title=f"z-scored sentence-mean Gram, layer {layer}",
                                                         xlabel="sentence", ylabel="sentence",
                                                         quantity="Gram entry (z-scored)")  # fmt: skip
            rows.append({"layer": layer, "reference": "gram", "utterance": "all", "metric": "gram_trace",
                         "value": float(np.trace(g)), "frames": None})  # fmt: skip
        for other in (p1, p2):
            mat = np.empty((len(layers), len(layers)))
            for i, a in enumerate(layers):
                xa = np.stack([sent_means[a][u] for u in items[p1]])  # (5, D)
                for j, b in enumerate(layers):
                    mat[i, j] = float(linear_cka(xa, np.stack([sent_means[b][u] for u in items[other]])))
                    rows.append({"layer": a, "layer_b": b, "reference": f"{p1}_vs_{other}", "utterance": "sentence_means",
                                 "metric": "cka_layers", "value": mat[i, j], "frames": None})  # fmt: skip
            names = [str(k) for k in layers]
            matrices[f"cka_layers_{p1}_vs_{other}"] = Matrix(mat, names, names, title=f"CKA of sentence means, {p1} (rows) "
                                                             f"vs {other} (columns)", vmin=0.8, vmax=1.0,
                                                             quantity="linear CKA")  # fmt: skip
        if cut:
            log.warning("tutorial_cka: %d sentences have fewer EMA rows than frames; both cut to the shorter: %s",
                        len(cut), cut)  # fmt: skip
        meta = {"participants": self.participants, "sentences": [f"S{s:02d}" for s in self.sentences],
                "utterances": {p: [corpus.ids[u] for u in items[p]] for p in self.participants},
                "ema_shorter_than_frames": cut, "layers": layers}  # fmt: skip
        return CurvesResult("tutorial_cka", rows, matrices, line_plots=[], meta=meta,
                            curves={"frame_cka": (layers, {"MFCC": curves["mfcc"], "EMA": curves["ema"]}, "layer",
                                                  "CKA (mean over sentences)")})  # fmt: skip

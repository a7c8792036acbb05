"""``analyze.py analysis=sae_eval``: SAEs evaluated in speech terms (src/sae/eval.py; docs/sae.md).

Per SAE (one per layer): FVU, L0, dead and dense shares on the cached frames of the held-out utterances;
the spliced-in downstream cost (CE per token and WER with the state replaced by the reconstruction, zero-
and mean-ablated, ``loss_recovered``); phone probe accuracy on the latents vs on the raw state. Rows
``layer, layer_name, sae, metric, value, ...``; ``activation_frequency_<layer>.png``: histogram of log10
firing frequencies (dead latents counted in the title).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.analyses.base import AnalysisError, AnalysisResult, safe_name

log = logging.getLogger(__name__)


def sae_split(corpus, split: dict | None, seed: int) -> dict[str, np.ndarray]:
    """Utterance indices ``train`` / ``val`` / ``test`` (src.datamodules.splits, by text unless told)."""
    from src.datamodules.splits import split_utterances

    cfg = {"by": "text", **dict(split or {})}
    parts = split_utterances(corpus, seed=seed, **cfg)
    return {k: np.asarray(parts[k], dtype=np.int64) for k in ("train", "val", "test")}


def open_saes(spec, output_dir, acts, backbone=None):
    """The SAEs of ``spec`` (src.sae.eval.load_saes), checked against the cache (and the backbone when given)
    before any model work."""
    from src.sae.eval import check_cache, load_saes

    saes = load_saes(spec, output_dir, backbone=backbone, layer_names=list(acts.layer_names))
    for s in saes:
        check_cache(s, acts, s.meta.get("path", "SAE"))
    return saes


@dataclass(frozen=True)
class SAEEvalResult(AnalysisResult):
    freqs: dict[str, np.ndarray] = field(default_factory=dict)  # layer name -> (F,) firing frequency

    def save_extra(self, out_dir: Path) -> None:
        for name, f in self.freqs.items():
            np.save(Path(out_dir) / f"activation_frequency_{safe_name(name)}.npy", f)

    def figures(self, out_dir, title_prefix: str = "") -> list[Path]:
        from src.reporting.figures_live import plot_activation_frequency

        pngs = super().figures(out_dir, title_prefix)
        for name, f in self.freqs.items():
            pngs.append(plot_activation_frequency(f, Path(out_dir) / f"activation_frequency_{safe_name(name)}.png",
                                                  name, title_prefix))  # fmt: skip
        return pngs


class SAEEval:
    """See the module doc and conf/analysis/sae_eval.yaml for the options."""

    needs_cache = True

    def __init__(self, sae="auto", output_dir: str = "outputs", split: dict | None = None, max_frames: int | None = 20000,
                 dense_threshold: float = 0.1, downstream: bool = True, wer: bool = True, probe: bool = True,
                 transcript: str = "auto", language: str | None = "en", task: str = "transcribe",
                 max_utterances: int | None = None, tier: str = "phones", probe_max_frames: int | None = 8000,
                 seed: int | None = None) -> None:  # fmt: skip
        if transcript not in ("auto", "reference", "model"):
            raise AnalysisError(f"analysis.transcript must be auto, reference or model, got {transcript!r}")
        if not 0 < float(dense_threshold) <= 1:
            raise AnalysisError(f"analysis.dense_threshold must be in (0, 1], got {dense_threshold}")
        self.sae, self.output_dir, self.split = sae, output_dir, dict(split or {})
        self.max_frames, self.dense_threshold = max_frames, float(dense_threshold)
        self.downstream, self.wer, self.probe = bool(downstream), bool(wer), bool(probe)
        self.transcript, self.language, self.task = transcript, language, task
        self.max_utterances, self.tier, self.seed = max_utterances, tier, seed
        self.probe_max_frames = probe_max_frames

    def options(self, seed: int):
        from src.sae.eval import EvalOptions

        return EvalOptions(dense_threshold=self.dense_threshold, max_frames=self.max_frames, transcript=self.transcript,
                           language=self.language, task=self.task, wer=self.wer, probe=self.probe, tier=self.tier,
                           seed=seed, max_utterances=self.max_utterances, probe_max_frames=self.probe_max_frames)  # fmt: skip

    def run(self, ctx) -> AnalysisResult:
        from src.progress import progress
        from src.sae.eval import evaluate_sae
        from src.sae.io import check_backbone

        acts = ctx.activations()
        saes = open_saes(self.sae, self.output_dir, acts)
        seed = ctx.seed if self.seed is None else int(self.seed)
        bb = None
        if self.downstream:
            bb = ctx.backbone()
            for s in saes:
                check_backbone(s, bb, s.meta.get("path", "SAE"))
        split = sae_split(ctx.corpus, self.split, ctx.seed)
        rows, freqs = [], {}
        for s in progress(saes, desc="SAE evaluation", unit="SAE"):
            r = evaluate_sae(s, acts, ctx.corpus, split, bb, self.options(seed))
            rows += r["rows"]
            freqs[r["layer_name"]] = r["freq"]
        meta = {"saes": [s.meta.get("path") for s in saes], "utterances_test": len(split["test"])}
        plots = [
            "fvu",
            "l0",
            "dead",
            "dense",
            "loss_recovered",
            "loss_recovered_mean",
            "phone_probe_acc_raw",
            "phone_probe_acc_latents",
        ]  # one PNG over layers each (the CE / WER rows: results.csv)
        return SAEEvalResult("sae_eval", rows, meta=meta, freqs=freqs, line_plots=plots)

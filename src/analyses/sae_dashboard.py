"""``analyze.py analysis=sae_dashboard``: a listenable HTML dashboard of SAE latents (src/sae/dashboard.py).

Per SAE (one per layer): the features of every latent over the frames of the chosen utterances
(src/sae/features.py: density, phone / word precision, recall, F1, MI, mean activation per phone, top frames),
the causal check of the shown latents with the highest phone selectivity (src/sae/eval.py
``latent_effects``), and ``dashboard/layer_<name>/index.html`` (open it from disk; ``dashboard/index.html``
links the layers). Tables: ``latents_<layer>`` (every latent), ``phone_selective_<layer>`` (the latents most
selective for each phone), ``effects_<layer>`` (the causal check). Rows: per shown latent ``density``,
``selectivity``, ``mi_phones`` and, where measured, ``logprob_delta`` / ``phone_error_delta``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.analyses.base import AnalysisError, AnalysisResult, safe_name
from src.analyses.sae_eval import open_saes, sae_split

log = logging.getLogger(__name__)

ORDERS = ("selectivity", "density", "mi_phones")


@dataclass(frozen=True)
class DashboardResult(AnalysisResult):
    payloads: dict[str, dict] = field(default_factory=dict)  # layer name -> src.sae.dashboard payload

    def save_extra(self, out_dir: Path) -> None:
        from src.sae.dashboard import write_dashboard, write_top_index

        root = Path(out_dir) / "dashboard"
        root.mkdir(parents=True, exist_ok=True)
        pages = []
        for name, payload in self.payloads.items():
            page = write_dashboard(root / f"layer_{safe_name(name)}", payload)
            pages.append((f"layer {name}", page.relative_to(root).as_posix()))
            log.info("sae_dashboard: layer %s: %s", name, page)
        write_top_index(root, pages)


class SAEDashboard:
    """See the module doc and conf/analysis/sae_dashboard.yaml for the options."""

    needs_cache = True

    def __init__(self, sae="auto", output_dir: str = "outputs", utterances: str = "all", split: dict | None = None,
                 max_latents: int = 24, order: str = "selectivity", min_frames: int = 3, top_k: int = 6,
                 per_utterance: int = 1, context: float = 0.4, causal: bool = True, causal_latents: int = 8,
                 causal_utterances: int | None = 8, per_phone: int = 5, transcript: str = "auto",
                 language: str | None = "en", task: str = "transcribe", seed: int | None = None) -> None:  # fmt: skip
        if utterances not in ("all", "train", "val", "test"):
            raise AnalysisError(f"analysis.utterances must be all, train, val or test, got {utterances!r}")
        if order not in ORDERS:
            raise AnalysisError(f"analysis.order must be one of {ORDERS}, got {order!r}")
        if int(max_latents) < 1 or int(top_k) < 1 or float(context) <= 0:
            raise AnalysisError(
                "analysis.max_latents and analysis.top_k must be >= 1 and analysis.context > 0"
            )
        self.sae, self.output_dir, self.utterances, self.split = (
            sae,
            output_dir,
            utterances,
            dict(split or {}),
        )
        self.max_latents, self.order, self.min_frames = int(max_latents), order, int(min_frames)
        self.top_k, self.per_utterance, self.context = int(top_k), int(per_utterance), float(context)
        self.causal, self.causal_latents, self.causal_utterances = (
            bool(causal),
            int(causal_latents),
            causal_utterances,
        )
        self.per_phone, self.transcript, self.language, self.task, self.seed = (
            per_phone,
            transcript,
            language,
            task,
            seed,
        )

    def shown(self, res: dict) -> list[int]:
        """The latents on the page: those active on at least ``min_frames`` frames, best first by ``order``."""
        dens = np.asarray(res["density"])
        n = int(res["n_frames"])
        alive = np.flatnonzero(dens * n >= self.min_frames - 1e-9)
        t = res["tiers"].get("phones")
        key = {
            "density": dens,
            "selectivity": t["best_f1"] if t else dens,
            "mi_phones": t["mi"] if t else dens,
        }[self.order]
        return [int(i) for i in alive[np.argsort(-np.asarray(key)[alive], kind="stable")][: self.max_latents]]

    def run(self, ctx) -> AnalysisResult:
        from src.progress import progress
        from src.sae.dashboard import dashboard_payload
        from src.sae.eval import EvalOptions, check_cache, latent_effects
        from src.sae.features import latent_features, latent_rows, selective_table
        from src.sae.io import check_backbone

        acts = ctx.activations()
        corpus = ctx.corpus
        saes = open_saes(self.sae, self.output_dir, acts)
        bb = None
        if self.causal:
            bb = ctx.backbone()
            for s in saes:
                check_backbone(s, bb, s.meta.get("path", "SAE"))
        split = sae_split(corpus, self.split, ctx.seed)
        utts = (
            list(range(len(corpus))) if self.utterances == "all" else [int(u) for u in split[self.utterances]]
        )
        tiers = [t for t in ("phones", "words") if any(t in corpus.annotation(u).tiers for u in utts[:50])]
        seed = ctx.seed if self.seed is None else int(self.seed)
        rows, tables, payloads, meta = [], {}, {}, {"saes": [], "utterances": len(utts)}
        for s in progress(saes, desc="SAE dashboard", unit="SAE"):
            state = check_cache(s, acts, s.meta.get("path", "SAE"))
            name = str(acts.layer_names[state])
            res, frames = latent_features(s, acts, corpus, utts, state, tiers, self.top_k, self.per_utterance)
            show = self.shown(res)
            effects = {}
            if self.causal and show:
                opts = EvalOptions(transcript=self.transcript, language=self.language, task=self.task, seed=seed,
                                   max_utterances=self.causal_utterances)  # fmt: skip
                causal = show[: self.causal_latents]
                for e in progress(latent_effects(s, bb, acts, corpus, split, causal, opts), total=len(causal),
                                  desc="SAE causal checks", unit="latent"):  # fmt: skip
                    effects[e["latent"]] = e
            base = {"layer": state, "layer_name": name, "sae": Path(str(s.meta.get("path", ""))).name}
            if "phones" in res["tiers"]:
                all_rows = latent_rows(res, "phones")
                tables[f"latents_{safe_name(name)}"] = [{**base, **r} for r in all_rows]
                tables[f"phone_selective_{safe_name(name)}"] = [
                    {**base, **r} for r in selective_table(res, "phones", self.per_phone)
                ]
                by = {r["latent"]: r for r in all_rows}
            else:
                by = {i: {"latent": i, "density": float(res["density"][i])} for i in show}
            if effects:
                tables[f"effects_{safe_name(name)}"] = [
                    {**base, **{k: v for k, v in e.items() if k != "per_phone"},
                     **{f"phone_error_delta_{p}": v for p, v in e["per_phone"].items()}} for e in effects.values()
                ]  # fmt: skip
            for i in show:
                r = by[i]
                for m in ("density", "selectivity", "mi_phones"):
                    if m in r:
                        rows.append({**base, "latent": i, "metric": m, "value": float(r[m]),
                                     "best_phone": r.get("best_phone", "")})  # fmt: skip
                if i in effects:
                    for m in ("logprob_delta", "phone_error_delta"):
                        rows.append({**base, "latent": i, "metric": m, "value": float(effects[i][m]),
                                     "best_phone": r.get("best_phone", "")})  # fmt: skip
            dead = float((np.asarray(res["density"]) == 0).mean())
            summary = (f"layer {name}: {s.d_sae} latents ({s.architecture}), {dead:.1%} never active over "
                       f"{res['n_frames']} frames of {len(utts)} utterances; {len(show)} shown, ordered by {self.order}; "
                       f"causal check on {len(effects)} (SAE {s.meta.get('path', '')})")  # fmt: skip
            payloads[name] = dashboard_payload(s, acts, corpus, state, res, frames, effects, show, self.context,
                                               title=f"SAE latents, {acts.backbone} layer {name}", summary=summary)  # fmt: skip
            meta["saes"].append(s.meta.get("path"))
        return DashboardResult(
            "sae_dashboard", rows, tables=tables, meta=meta, payloads=payloads, line_plots=[]
        )

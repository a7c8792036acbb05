"""Head ablation on the live model: ``python analyze.py analysis=head_ablation``.

Calm-Whisper's analysis (arXiv 2505.12969) on any Whisper: which decoder self-attention and cross-attention heads,
ablated alone, lower the hallucination rate on non-speech clips most, and what each ablation costs in word error
rate on speech; then sets of heads ablated together (``analysis.head_sets``: the top k of the single-head
ranking, or heads listed by name). Layers are in the framework's state convention: decoder layer k is the layer
whose output is decoder state k (1 = the first; module k - 1). A thin class over the engine's
:func:`~src.interventions.ablated` and the non-speech clips of src/interventions/counterfactual.py (silence,
white/pink/brown noise, tones, chord sequences).

The encoder does not change when a decoder head is ablated, so each clip's encoder output is computed once and
every ablation re-decodes from it (greedy, the model's usual prompt, at most ``max_new_tokens`` tokens; the
ablation hooks act at every decoding step). Nor do the cross-attention keys and values (the heads are ablated
after them, before ``out_proj``): they are projected once per item too (:class:`EncodedItems`). Modes zero and mean
then decode many ablations of one item as one batch (up to ``batch_rows`` rows, each row its own heads ablated:
``src.interventions.patched_rows``), every row cross-attending to the item's keys and values as one stride-0 view
(``WhisperBackbone.generate_from_encoder_states(cross_kv=, on_rows=)``): the same transcripts as one greedy decoding
per ablation and item (tested), in 20 batches instead of two small ones per head. Resample decodes each item alone
(its positions follow its own decoding).

``results.csv`` columns, exactly: ``item, intervention, component, layer, layer_name, position, position_label,
head, metric, value, ci_low, ci_high`` (see src/analyses/patching.py). Per item (a clip or a speech utterance):
``hallucinated`` (1 when the clip's transcript has any word after the WER normalisation), ``wer`` (the
utterance's own word error rate), and per ablated head ``hallucination_reduction`` (baseline - ablated, per clip)
and ``wer_cost`` (ablated - baseline, per utterance); ``intervention = none`` rows hold the baseline. Mean rows
(``item = mean``) over clips / utterances with percentile bootstrap intervals over items: the mean of
``hallucinated`` is the hallucination rate. Tables: ``transcripts`` (baseline and per-ablation transcripts of the
clips that changed), ``top_heads`` (csv + png: the heads with the largest mean hallucination reduction, with their
WER cost), heatmaps layer x head of both. Head sets: rows with ``intervention = <mode>_ablation_set``,
``component = head_set``, ``position_label`` = the set's name (``top3``, ``set2``), ``layer``/``head`` empty, the
same metrics; the table ``head_sets`` (members, hallucination rate, reduction and WER cost with intervals) and
every set's clip transcripts in ``transcripts``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from src.analyses.base import MIN_UNITS, AnalysisError
from src.analyses.patching import MEAN_ITEM, InterventionResult, row, summarise

log = logging.getLogger(__name__)

HEAD_COMPONENTS = ("decoder_self_attention", "cross_attention")
ENGINE_COMPONENT = {"decoder_self_attention": "decoder", "cross_attention": "cross_attention"}


class EncodedItems:
    """Items' encoder output ``states`` ``(B, F, D)`` and the cross-attention keys and values the decoder computes
    from them (``WhisperBackbone.cross_attention_kv``: computed once, read by every decoding), sliced together."""

    def __init__(self, bb, states, kv=None) -> None:
        self.states = states
        self.kv = bb.cross_attention_kv(states) if kv is None else kv

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def __getitem__(self, rows: slice) -> EncodedItems:
        return EncodedItems(None, self.states[rows], [(k[rows], v[rows]) for k, v in self.kv])


class HeadAblation:
    """Single-head ablation vs hallucination on non-speech and WER on speech (module docstring).

    Args: see conf/analysis/head_ablation.yaml (every key is commented there).
    """

    needs_cache = False

    def __init__(self, components: Sequence[str] = HEAD_COMPONENTS, layers=None, heads: Sequence[int] | None = None,
                 mode: str = "zero", kinds: Sequence[str] = ("silence", "white", "pink", "brown", "tone", "chords"),
                 clips_per_kind: int = 2, duration: float = 5.0, level_db: float = -30.0,
                 utterances="all", max_utterances: int | None = 8, max_new_tokens: int = 48, top_k: int = 10,
                 head_sets: Sequence | None = None, resample_draws: int = 3, batch_rows: int = 96,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int | None = None) -> None:  # fmt: skip
        from src.interventions.counterfactual import NONSPEECH_KINDS

        comps = [components] if isinstance(components, str) else list(components)
        bad = [c for c in comps if c not in HEAD_COMPONENTS]
        if bad or not comps:
            raise AnalysisError(f"analysis.components={comps}: each must be one of {list(HEAD_COMPONENTS)}")
        if mode not in ("zero", "mean", "resample"):
            raise AnalysisError(f"analysis.mode={mode!r} is not 'zero', 'mean' (over the speech utterances) or "
                                "'resample' (another speech utterance's output)")  # fmt: skip
        if int(resample_draws) < 1:
            raise AnalysisError(f"analysis.resample_draws={resample_draws}: needs >= 1 draw")
        if int(batch_rows) < 1:
            raise AnalysisError(f"analysis.batch_rows={batch_rows}: needs >= 1 row per decoding batch")
        ks = [kinds] if isinstance(kinds, str) else list(kinds)
        if not ks or any(k not in NONSPEECH_KINDS for k in ks):
            raise AnalysisError(f"analysis.kinds={ks}: each must be one of {list(NONSPEECH_KINDS)}")
        if int(clips_per_kind) < 1 or float(duration) <= 0:
            raise AnalysisError("analysis.clips_per_kind must be >= 1 and analysis.duration > 0")
        self.components, self.layers, self.mode, self.kinds = comps, layers, mode, ks
        self.heads = None if heads is None else [int(h) for h in heads]
        self.clips_per_kind, self.duration, self.level_db = int(clips_per_kind), float(duration), float(level_db)
        self.utterances, self.max_utterances, self.max_new_tokens = utterances, max_utterances, int(max_new_tokens)
        self.top_k, self.n_boot, self.alpha, self.seed = int(top_k), int(n_boot), float(alpha), seed
        self.head_sets = self.parse_head_sets(head_sets)
        self.resample_draws = int(resample_draws)
        self.batch_rows = int(batch_rows)
        self._values: dict = {}  # site key -> what its ablation writes (F,) (modes zero and mean)

    @staticmethod
    def parse_head_sets(spec) -> list:
        """``analysis.head_sets``: null, or a list whose items are an int k (the top k heads of the single-head
        ranking, ablated together) or a list of ``"<component>:<layer>:<head>"`` strings (``component`` one of
        :data:`HEAD_COMPONENTS`, ``layer`` 1..N in the state convention). Returns ``[int | [(comp, layer, head)]]``;
        bad items are errors naming the item."""
        if spec is None:
            return []
        items = [spec] if isinstance(spec, (int, str)) else list(spec)
        out = []
        for i, it in enumerate(items):
            where = f"analysis.head_sets[{i}]={it!r}"
            if isinstance(it, bool):
                raise AnalysisError(f"{where}: give an int k (the top k heads) or a list of 'component:layer:head'")
            if isinstance(it, int):
                if it < 1:
                    raise AnalysisError(f"{where}: the top k heads need k >= 1")
                out.append(int(it))
                continue
            members = [it] if isinstance(it, str) else list(it)
            heads = []
            for m in members:
                parts = str(m).split(":")
                try:
                    comp, layer, head = parts[0], int(parts[1]), int(parts[2])
                    if len(parts) != 3:
                        raise ValueError
                except (IndexError, ValueError):
                    raise AnalysisError(f"{where}: {m!r} is not 'component:layer:head' (e.g. 'cross_attention:2:3', "
                                        "layer 1 = the first decoder layer)") from None  # fmt: skip
                if comp not in HEAD_COMPONENTS:
                    raise AnalysisError(f"{where}: component {comp!r} is not one of {list(HEAD_COMPONENTS)}")
                heads.append((comp, layer, head))
            if not heads or len(set(heads)) != len(heads):
                raise AnalysisError(f"{where}: a set needs at least one head, each named once")
            out.append(heads)
        return out

    # ------------------------------------------------------------------------ pieces

    def head_sites(self, bb) -> list:
        """Every (component, layer, head) site to ablate, validated before any model work."""
        from src.interventions import InterventionError, Site, site_layers

        out = []
        for comp in self.components:
            mods = bb.decoder_attention_modules() if comp == "decoder_self_attention" else bb.cross_attention_modules()
            what = f"analysis.layers ({comp} layers 1..{len(mods)}, layer k = the layer whose output is decoder state k)"
            try:
                layers = site_layers(self.layers, len(mods), "head", what=what)
            except InterventionError as e:
                raise AnalysisError(str(e)) from None
            for k in layers:
                n_heads = int(mods[k - 1].num_heads)
                heads = self.heads if self.heads is not None else list(range(n_heads))
                bad = [h for h in heads if not 0 <= h < n_heads]
                if bad:
                    raise AnalysisError(f"analysis.heads={self.heads}: head {bad[0]} is out of range; {comp} layer {k} "
                                        f"has heads 0..{n_heads - 1}")  # fmt: skip
                out += [(comp, Site(ENGINE_COMPONENT[comp], "head", k, None, h)) for h in heads]
        return out

    def check_sets(self, bb, n_single: int) -> None:
        """Every set names heads that exist (and a top k no larger than the heads ablated alone), before model work."""
        from src.interventions import InterventionError, Site, validate_site

        for i, hs in enumerate(self.head_sets):
            if isinstance(hs, int):
                if hs > n_single:
                    raise AnalysisError(f"analysis.head_sets[{i}]={hs}: the top {hs} heads, but only {n_single} heads "
                                        "are ablated alone (analysis.components / layers / heads)")  # fmt: skip
                continue
            for comp, layer, head in hs:
                try:
                    validate_site(bb, Site(ENGINE_COMPONENT[comp], "head", layer, None, head))
                except InterventionError as e:
                    raise AnalysisError(f"analysis.head_sets[{i}]: {comp}:{layer}:{head}: {e}") from None

    @staticmethod
    def rank_key(reduction: float, cost: float | None, comp: str, layer: int, head: int) -> tuple:
        """Single heads best first: largest mean hallucination reduction, ties: the lower mean WER cost."""
        c = cost if cost is not None and np.isfinite(cost) else np.inf
        return (-reduction, c, comp, layer, head)

    def ranking(self, rows: list[dict], intervention: str) -> list[tuple[str, int, int]]:
        """``(component, layer, head)`` of every single-head ablation, best first (:meth:`rank_key` on the means of
        the per-item rows; the order of the top heads table)."""
        vals: dict[tuple, dict[str, list[float]]] = {}
        for r in rows:
            if r["intervention"] == intervention and r["metric"] in ("hallucination_reduction", "wer_cost"):
                vals.setdefault((r["component"], r["layer"], r["head"]), {}).setdefault(r["metric"], []).append(r["value"])

        def mean(v):
            v = np.asarray(v, dtype=float)
            v = v[np.isfinite(v)]
            return float(np.mean(v)) if len(v) else float("nan")

        keyed = []
        for k, m in vals.items():
            red = mean(m.get("hallucination_reduction", []))
            if np.isfinite(red):
                keyed.append((self.rank_key(red, mean(m.get("wer_cost", [])), *k), k))
        return [k for _, k in sorted(keyed)]

    def decode(self, bb, enc) -> list[str]:
        return [bb.decode_ids(i) for i in self.decode_ids(bb, enc)]

    def decode_ids(self, bb, enc: EncodedItems) -> list[list[int]]:
        import torch

        with torch.no_grad():
            ids, _ = bb.generate_from_encoder_states(enc.states, max_new_tokens=self.max_new_tokens, cross_kv=enc.kv)
        return ids

    def resample_plan(self, n_clips: int, n_speech: int, seed: int) -> list[list[int]]:
        """For each draw, the reference utterance (an index into the speech utterances) of every item: the clips
        first, then the speech utterances (each drawn from the *other* utterances). Draw ``d`` uses the generator
        ``numpy.random.default_rng([seed, d])``."""
        plan = []
        for d in range(self.resample_draws):
            rng = np.random.default_rng([int(seed), d])
            refs = [int(rng.integers(n_speech)) for _ in range(n_clips)]
            for i in range(n_speech):
                j = int(rng.integers(n_speech - 1))
                refs.append(j + (j >= i))  # any utterance but i
            plan.append(refs)
        return plan

    def resampled_decode(self, bb, sites, enc, plan, ref_values, offset: int) -> list[list[str]]:
        """Transcripts per draw of every row of ``enc`` (one decoding per item, so the resampled positions follow
        that item's own generation), the sites ablated with their output on the item's reference utterance of
        that draw (``plan[d][offset + i]``)."""
        from src.interventions import ablated

        out = []
        for refs in plan:
            texts = []
            for i in range(len(enc)):
                vals = ref_values(refs[offset + i], sites)
                with ablated(bb, sites, "resample", reference=vals):
                    texts.append(self.decode(bb, enc[i : i + 1])[0])
            out.append(texts)
        return out

    # ------------------------------------------------------------------------ run

    def run(self, ctx) -> InterventionResult:
        import torch

        from src.analyses.base import select_utterances
        from src.functional.text import normalize_text, word_error_rate
        from src.interventions import capture, make_inputs
        from src.interventions.counterfactual import nonspeech_clip
        from src.lenses.scoring import reference_texts
        from src.progress import progress

        bb = ctx.backbone()
        positions0 = int(getattr(bb, "decoded_positions", 0))
        if not getattr(bb, "has_decoder", False):
            raise AnalysisError(f"analysis=head_ablation ablates decoder heads; {bb.name} "
                                f"({getattr(bb, 'family', '?')} family) has no decoder")  # fmt: skip
        seed = ctx.seed if self.seed is None else int(self.seed)
        sites = self.head_sites(bb)
        self.check_sets(bb, len(sites))
        idx = select_utterances(ctx.corpus, self.utterances, {}, ctx.seed, self.max_utterances)
        refs = reference_texts(ctx.corpus, idx, "analysis=head_ablation (WER on speech)", error=AnalysisError)
        speech = [ctx.corpus[i] for i in idx]
        clips = [nonspeech_clip(k, self.duration, bb.sample_rate, seed=seed * 1000 + j, level_db=self.level_db)
                 for k in self.kinds for j in range(self.clips_per_kind)]  # fmt: skip
        for u in speech + clips:
            bb.check_input(len(u.audio), u.id)
        prompt = list(bb.decoder_prompt_ids())

        def encoder_output(utts):  # what the decoder cross-attends to (after the encoder's final norm), (B, F, D):
            # the encoder alone, one window at a time (the same numbers as a full forward's encoder output)
            return EncodedItems(bb, torch.cat([bb.window_states([torch.as_tensor(u.audio)], [u.id])[-1] for u in utts]))

        enc_clips, enc_speech = encoder_output(clips), encoder_output(speech)

        def hallucinated(texts):
            return [float(len(normalize_text(t).split()) > 0) for t in texts]

        def wers(texts):
            return [word_error_rate([r], [h]) for r, h in zip(refs, texts)]

        base_clip_text = self.decode(bb, enc_clips)
        base_speech_ids = self.decode_ids(bb, enc_speech)
        base_speech_text = [bb.decode_ids(i) for i in base_speech_ids]
        base_h, base_w = hallucinated(base_clip_text), wers(base_speech_text)
        rows = [row(c.id, "none", "", None, "", None, "", None, "hallucinated", v) for c, v in zip(clips, base_h)]
        rows += [row(u.id, "none", "", None, "", None, "", None, "wer", v) for u, v in zip(speech, base_w)]
        transcripts = [{"item": c.id, "ablation": "none", "transcript": t} for c, t in zip(clips, base_clip_text)]
        reference = None
        if self.mode == "mean":
            reference = [make_inputs(bb, u.audio, utt_id=u.id) for u in speech]
        plan, resample_table = None, []
        if self.mode == "resample":
            if len(speech) < 2:
                raise AnalysisError(f"analysis.mode=resample draws each ablated head's output from another speech "
                                    f"utterance: needs >= 2 (analysis.max_utterances), got {len(speech)}")  # fmt: skip
            plan = self.resample_plan(len(clips), len(speech), seed)
            ref_inputs = [make_inputs(bb, u.audio, ids=prompt + list(i), utt_id=u.id)
                          for u, i in zip(speech, base_speech_ids)]  # fmt: skip
            captured: dict[tuple[int, str], object] = {}

            def ref_values(j, site_list):  # the head's output over the reference's own greedy transcript (1, P, d)
                need = [s for s in site_list if (j, s.key) not in captured]
                if need:
                    got = capture(bb, ref_inputs[j], need)
                    for s in need:
                        captured[(j, s.key)] = got[s.key]
                return {s.key: captured[(j, s.key)] for s in site_list}

            items = [c.id for c in clips] + [u.id for u in speech]
            resample_table = [{"draw": d, "seed": f"[{seed}, {d}]", "item": it, "reference": speech[refs[k]].id}
                              for d, refs in enumerate(plan) for k, it in enumerate(items)]  # fmt: skip
        self._ablate_args = (bb, enc_clips, enc_speech, plan, ref_values if plan is not None else None)
        intervention = f"{self.mode}_ablation"
        total, unit = (len(sites), "head") if plan is not None else (len(clips) + len(speech), "item")
        with progress(total=total, desc=f"head ablation ({len(sites)} heads)", unit=unit) as bar:
            runs = self.ablate_all([[site] for _, site in sites], reference, hallucinated, wers, bar)
        for (comp, site), (clip_runs, h, w) in zip(sites, runs):
            common = (intervention, comp, site.layer, site.layer_name, None, "all", site.head)
            for c, a, b in zip(clips, base_h, h):
                rows.append(row(c.id, *common, "hallucinated", b))
                rows.append(row(c.id, *common, "hallucination_reduction", a - b))
            for d, clip_text in enumerate(clip_runs):
                for c, t, t0 in zip(clips, clip_text, base_clip_text):
                    if t != t0:
                        draw = f" draw{d}" if plan is not None else ""
                        transcripts.append({"item": c.id, "ablation": f"{comp} L{site.layer} h{site.head}{draw}",
                                            "transcript": t})  # fmt: skip
            for u, a, b in zip(speech, base_w, w):
                rows.append(row(u.id, *common, "wer", b))
                rows.append(row(u.id, *common, "wer_cost", b - a))
        set_names = self.ablate_sets(bb, rows, intervention, clips, speech, enc_clips, enc_speech, base_h, base_w,
                                     hallucinated, wers, reference, transcripts)  # fmt: skip
        means, counts = summarise(rows, self.n_boot, self.alpha, seed)
        n_items = min(len(clips), len(speech))
        counts["few_units"] = n_items < MIN_UNITS
        if counts["few_units"]:
            log.warning("head_ablation: intervals over %d clips / %d utterances (fewer than %d: unreliable)",
                        len(clips), len(speech), MIN_UNITS)  # fmt: skip
        all_rows = rows + means
        tops = self.top_table(all_rows, intervention)
        heat = []
        for comp in self.components:
            for metric in ("hallucination_reduction", "wer_cost"):
                heat.append((f"heatmap_{comp}_{metric}", MEAN_ITEM, intervention, comp, metric, "head"))
        meta = {"n_clips": len(clips), "n_speech": len(speech), "kinds": self.kinds, "mode": self.mode,
                "duration_s": self.duration, "level_db": self.level_db, "max_new_tokens": self.max_new_tokens,
                "baseline_hallucination_rate": float(np.mean(base_h)), "baseline_wer_mean": float(np.mean(base_w)),
                "baseline_wer_corpus": word_error_rate(refs, base_speech_text), **counts,
                "resample_draws": self.resample_draws if plan is not None else None,
                "n_boot": self.n_boot, "alpha": self.alpha, "seed": seed,
                "decoder_positions": int(getattr(bb, "decoded_positions", 0)) - positions0}  # fmt: skip
        tables = {"transcripts": transcripts}
        if resample_table:
            tables["resample_draws"] = resample_table
        if set_names:
            tables["head_sets"] = self.set_table(all_rows, f"{self.mode}_ablation_set", set_names)
        return InterventionResult("head_ablation", all_rows, meta=meta, tables=tables,
                                  heatmaps=heat, top_heads=tops, top_metric="hallucination_reduction")  # fmt: skip

    def ablate_sets(self, bb, rows, intervention, clips, speech, enc_clips, enc_speech, base_h, base_w, hallucinated,
                    wers, reference, transcripts) -> list[tuple[str, list[tuple[str, int, int]]]]:  # fmt: skip
        """Each of ``analysis.head_sets`` ablated together (rows appended to ``rows``, every clip transcript to
        ``transcripts``); returns ``[(name, members)]``."""
        from src.interventions import Site

        if not self.head_sets:
            return []
        ranked = self.ranking(rows, intervention)
        named = []
        for i, hs in enumerate(self.head_sets):
            named.append((f"top{hs}", ranked[:hs]) if isinstance(hs, int) else (f"set{i + 1}", list(hs)))
        set_int = f"{self.mode}_ablation_set"
        configs = [[Site(ENGINE_COMPONENT[c], "head", layer, None, head) for c, layer, head in members]
                   for _, members in named]  # fmt: skip
        for (name, members), (clip_runs, h, w) in zip(named, self.ablate_all(configs, reference, hallucinated, wers)):
            common = (set_int, "head_set", None, "", None, name, None)
            for c, a, b in zip(clips, base_h, h):
                rows.append(row(c.id, *common, "hallucinated", b))
                rows.append(row(c.id, *common, "hallucination_reduction", a - b))
            for d, clip_text in enumerate(clip_runs):
                for c, t in zip(clips, clip_text):
                    label = f"{name} draw{d}" if self.mode == "resample" else name
                    transcripts.append({"item": c.id, "ablation": label, "transcript": t})
            for u, a, b in zip(speech, base_w, w):
                rows.append(row(u.id, *common, "wer", b))
                rows.append(row(u.id, *common, "wer_cost", b - a))
        return named

    def site_values(self, bb, site, reference):
        """What the ablation writes into ``site`` at every position (``src.interventions.ablation_vector``: zeros,
        or the head's mean output over the speech utterances), computed once per head."""
        from src.interventions import ablation_vector

        if site.key not in self._values:
            self._values[site.key] = ablation_vector(bb, site, self.mode, reference)
        return self._values[site.key]

    def ablate_all(self, configs, reference, hallucinated, wers, bar=None) -> list:
        """Every set of sites in ``configs`` ablated: ``(clip transcripts per run, hallucinated per clip, WER per
        utterance)`` each. Modes zero and mean item by item, the ablations of an item as batches of rows
        (:meth:`decode_rows`); resample one ablation (and item) at a time (:meth:`ablate_resampled`). ``bar``
        counts items (resample: ablations)."""
        bb, enc_clips, enc_speech, plan, _ = self._ablate_args
        if plan is not None:
            out = []
            for sites in configs:
                out.append(self.ablate_resampled(sites, hallucinated, wers))
                if bar is not None:
                    bar.update(1)
            return out
        clip_ids = self.decode_rows(bb, enc_clips, configs, reference, bar)
        speech_ids = self.decode_rows(bb, enc_speech, configs, reference, bar)
        out = []
        for c_ids, s_ids in zip(clip_ids, speech_ids):
            clip_text, speech_text = [bb.decode_ids(i) for i in c_ids], [bb.decode_ids(i) for i in s_ids]
            out.append(([clip_text], hallucinated(clip_text), wers(speech_text)))
        return out

    def decode_rows(self, bb, enc: EncodedItems, configs, reference, bar=None) -> list[list[list[int]]]:
        """Token ids ``[config][item]`` of every item of ``enc`` decoded with each set of sites of ``configs``
        ablated. Item by item: the rows of a batch are ablations (up to ``batch_rows``) of one item, each with its
        own heads ablated (``patched_rows``), all cross-attending to that item's keys and values as one stride-0
        view (no copy per row, and one item's keys stay in the CPU cache across the rows)."""
        import torch

        from src.interventions import patched_rows

        per = self.batch_rows
        out: list[list] = [[None] * len(enc) for _ in configs]
        for i in range(len(enc)):
            for start in range(0, len(configs), per):
                chunk = configs[start : start + per]
                r = len(chunk)
                kv = [(k[i : i + 1].expand(r, *k.shape[1:]), v[i : i + 1].expand(r, *v.shape[1:])) for k, v in enc.kv]
                states = enc.states[i : i + 1].expand(r, *enc.states.shape[1:])  # views: no copy per row
                rows = [[(s, self.site_values(bb, s, reference)) for s in sites] for sites in chunk]
                with torch.no_grad(), patched_rows(bb, rows) as patches:
                    ids, _ = bb.generate_from_encoder_states(states, max_new_tokens=self.max_new_tokens, cross_kv=kv,
                                                             on_rows=patches.select)  # fmt: skip
                for j, t in enumerate(ids):
                    out[start + j][i] = t
            if bar is not None:
                bar.update(1)
        return out

    def ablate_resampled(self, sites, hallucinated, wers) -> tuple[list[list[str]], list[float], list[float]]:
        """Resample ablation of ``sites`` (zero and mean go through :meth:`decode_rows`): one decoding per item and
        draw, ``(clip transcripts per draw, hallucinated per clip, WER per utterance)``, each item's values the mean
        over the draws (the fraction of draws that hallucinate, the mean WER)."""
        bb, enc_clips, enc_speech, plan, ref_values = self._ablate_args
        clip_runs = self.resampled_decode(bb, sites, enc_clips, plan, ref_values, 0)
        speech_runs = self.resampled_decode(bb, sites, enc_speech, plan, ref_values, len(enc_clips))
        h = np.mean([hallucinated(t) for t in clip_runs], axis=0).tolist()
        w = np.mean([wers(t) for t in speech_runs], axis=0).tolist()
        return clip_runs, h, w

    @staticmethod
    def set_table(rows: list[dict], set_int: str, named) -> list[dict]:
        """One row per head set: its members, hallucination rate, reduction and WER cost (means, intervals)."""
        means = {(r["position_label"], r["metric"]): r for r in rows
                 if r["item"] == MEAN_ITEM and r["intervention"] == set_int}  # fmt: skip
        out = []
        for name, members in named:
            rec = {"set": name, "size": len(members),
                   "heads": "; ".join(f"{c} L{layer} h{head}" for c, layer, head in members)}  # fmt: skip
            for metric in ("hallucinated", "hallucination_reduction", "wer_cost"):
                m = means.get((name, metric))
                key = "hallucination_rate" if metric == "hallucinated" else metric
                rec[key] = m["value"] if m else None
                rec[f"{key}_ci_low"] = m["ci_low"] if m else None
                rec[f"{key}_ci_high"] = m["ci_high"] if m else None
            out.append(rec)
        return out

    def top_table(self, rows: list[dict], intervention: str) -> list[dict]:
        """Heads by mean hallucination reduction (largest first), with their WER cost and intervals."""
        means = {(r["component"], r["layer"], r["head"], r["metric"]): r for r in rows
                 if r["item"] == MEAN_ITEM and r["intervention"] == intervention}  # fmt: skip
        red = [r for (c, k, h, m), r in means.items() if m == "hallucination_reduction" and np.isfinite(r["value"])]

        def cost_of(r):  # ties in reduction: the cheaper head (lower WER cost) first
            c = means.get((r["component"], r["layer"], r["head"], "wer_cost"))
            return c["value"] if c is not None else None

        red.sort(key=lambda r: self.rank_key(r["value"], cost_of(r), r["component"], r["layer"], r["head"]))
        out = []
        for i, r in enumerate(red[: self.top_k]):
            cost = means.get((r["component"], r["layer"], r["head"], "wer_cost"))
            out.append({"rank": i + 1, "component": r["component"], "layer": r["layer"], "head": r["head"],
                        "metric": "hallucination_reduction", "value": r["value"], "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"], "wer_cost": cost["value"] if cost else None,
                        "wer_cost_ci_low": cost["ci_low"] if cost else None,
                        "wer_cost_ci_high": cost["ci_high"] if cost else None})  # fmt: skip
        return out

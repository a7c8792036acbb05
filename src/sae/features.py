"""SAE latents in speech terms (docs/sae.md, "Features").

Frames and labels: frame ``t`` of an utterance stands for ``frame_offset + t / frame_rate`` and takes the label
of the interval containing that time (:func:`src.datamodules.alignment.frame_labels`, the project's one rule),
normalised by the run's label normalisation (:mod:`src.datamodules.labels`: silences dropped, case folded,
stress digits stripped on phone tiers). A frame in no interval, or in a silence, has the empty label ``""``.

Per latent ``i`` (``active`` = ``z_i > 0``):

- ``density``: share of all frames where it is active;
- for each label ``c`` of a tier: ``precision = #(active & c) / #active`` (every active frame counts, silence
  included), ``recall = #(active & c) / #c``, ``f1``; the **best label** is the one of highest F1 (ties: the
  first in sorted order), reported with its precision and recall; ``selectivity`` = that F1;
- ``mi``: mutual information (nats) between ``active`` and the frame's label (``""`` a class of its own), from
  the contingency table (the value of sklearn's ``mutual_info_score``; tested);
- ``mean_act[i, c]``: mean of ``z_i`` over the frames of phone ``c`` (inactive frames count as 0);
- top-activating frames: the ``k`` largest activations, at most ``per_utterance`` of them per utterance (1 by
  default: the clips of a dashboard then come from ``k`` different utterances), each with utterance id, time,
  phone and word.

Everything is accumulated over chunks of frames (:class:`LatentStats`), so memory is ``O(F x labels)`` plus
one chunk of latents, whatever the number of frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

NONE = ""


@dataclass
class Frames:
    """The frames of some utterances, in cache order: cache row, utterance index, local frame, time and labels."""

    rows: np.ndarray  # (N,)
    utt: np.ndarray  # (N,) corpus index
    frame: np.ndarray  # (N,) frame within its utterance
    time: np.ndarray  # (N,) seconds
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # tier -> (N,) str, "" where none


def frame_table(
    acts, corpus, utterances: Sequence[int], tiers: Sequence[str] = ("phones", "words")
) -> Frames:
    """Every frame of ``utterances`` with its label on each tier (module doc; a missing tier gives ``""``)."""
    from src.datamodules.alignment import frame_labels
    from src.datamodules.labels import label_norm_of

    norm = label_norm_of(corpus)
    rows, utt, frame, times = [], [], [], []
    labels: dict[str, list] = {t: [] for t in tiers}
    for u in utterances:
        u = int(u)
        t = np.asarray(acts.frame_times(u), dtype=np.float64)
        n = len(t)
        rows.append(int(acts.offsets[u]) + np.arange(n))
        utt.append(np.full(n, u))
        frame.append(np.arange(n))
        times.append(t)
        ann = corpus.annotation(u)
        for tier in tiers:
            ivs = ann.tiers.get(tier) or []
            if not ivs:
                labels[tier].append(np.full(n, NONE, dtype=object))
                continue
            idx, ok = frame_labels(ivs, t)
            labs = [NONE if x is None else x for x in norm.apply([iv.label for iv in ivs], tier)]
            lab = np.array(labs + [NONE], dtype=object)[np.where(ok, idx, -1)]
            labels[tier].append(lab)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt)) if rows else (lambda xs, dt: np.zeros(0, dt))
    return Frames(cat(rows, np.int64), cat(utt, np.int64), cat(frame, np.int64), cat(times, np.float64),
                  {k: (np.concatenate(v).astype(str) if v else np.zeros(0, str)) for k, v in labels.items()})  # fmt: skip


class LatentStats:
    """Counts over chunks of latents ``z`` (n, F) with one label array per tier; :meth:`result` gives the stats.

    ``top_k`` / ``per_utterance``: the top-activating frames kept per latent (a candidate pool of
    ``top_k * pool`` frames per latent is kept so that ``per_utterance`` can be honoured)."""

    def __init__(self, d_sae: int, classes: dict[str, Sequence[str]], top_k: int = 8, per_utterance: int = 1,
                 pool: int = 8) -> None:  # fmt: skip
        self.f = int(d_sae)
        self.classes = {t: [NONE] + sorted(set(c) - {NONE}) for t, c in classes.items()}  # "" first
        self.index = {t: {c: i for i, c in enumerate(cs)} for t, cs in self.classes.items()}
        self.joint = {t: torch.zeros(self.f, len(cs), dtype=torch.float64) for t, cs in self.classes.items()}
        self.label_n = {t: torch.zeros(len(cs), dtype=torch.float64) for t, cs in self.classes.items()}
        self.sum_act = {
            t: torch.zeros(self.f, len(cs), dtype=torch.float64) for t, cs in self.classes.items()
        }
        self.n_active = torch.zeros(self.f, dtype=torch.float64)
        self.sum_all = torch.zeros(self.f, dtype=torch.float64)
        self.n = 0
        self.top_k, self.per_utterance = int(top_k), int(per_utterance)
        self.cand = min(self.top_k * int(pool), 10**9)
        self.top_v = torch.full((self.f, 0), -float("inf"))
        self.top_i = torch.zeros((self.f, 0), dtype=torch.long)

    def update(self, z, labels: dict[str, np.ndarray], first: int) -> None:
        """Add latents ``z`` (n, F) of frames ``first .. first + n - 1`` (global positions, for the top frames)."""
        z = torch.as_tensor(z, dtype=torch.float32)
        n = z.shape[0]
        act = (z > 0).double()  # (n, F)
        self.n_active += act.sum(0)
        self.sum_all += z.double().sum(0)
        for t, lab in labels.items():
            ids = torch.as_tensor(
                [self.index[t].get(x, 0) for x in np.asarray(lab).tolist()], dtype=torch.long
            )
            onehot = torch.nn.functional.one_hot(ids, len(self.classes[t])).double()  # (n, C)
            self.joint[t] += act.T @ onehot
            self.label_n[t] += onehot.sum(0)
            self.sum_act[t] += z.double().T @ onehot
        k = min(self.cand, n)
        if k:
            v, i = torch.topk(z.T, k, dim=1)  # (F, k)
            allv = torch.cat([self.top_v, v], 1)
            alli = torch.cat([self.top_i, i + first], 1)
            kk = min(self.cand, allv.shape[1])
            v2, j = torch.topk(allv, kk, dim=1)
            self.top_v, self.top_i = v2, alli.gather(1, j)
        self.n += n

    def result(self, utt: np.ndarray | None = None) -> dict:
        """``density (F,)``, per tier ``{classes, precision (F, C), recall, f1, mi (F,), best, best_precision,
        best_recall, best_f1, mean_act (F, C)}`` (classes without ``""``; MI over all classes), and
        ``top`` (per latent a list of (position, activation)) with at most ``per_utterance`` per utterance of
        ``utt`` (global position -> utterance)."""
        n = max(self.n, 1)
        out: dict = {
            "density": (self.n_active / n).numpy(),
            "mean_all": (self.sum_all / n).numpy(),
            "n_frames": self.n,
            "tiers": {},
        }
        na = self.n_active[:, None]
        for t, cs in self.classes.items():
            joint, ln = self.joint[t], self.label_n[t]
            prec = torch.where(na > 0, joint / na.clamp_min(1), torch.zeros_like(joint))
            rec = torch.where(ln[None] > 0, joint / ln[None].clamp_min(1), torch.zeros_like(joint))
            f1 = torch.where(
                prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-300), torch.zeros_like(joint)
            )
            # mutual information of (active, label): the 2 x C contingency table of each latent
            p1 = joint / n  # (F, C) active & c
            p0 = (ln[None] - joint) / n  # inactive & c
            pa1, pl = na / n, ln[None] / n
            mi = (_mi_term(p1, pa1, pl) + _mi_term(p0, 1 - pa1, pl)).sum(1).clamp_min(0)
            f1r = f1[:, 1:]  # "" (column 0) is never a best label
            has = f1r.shape[1] > 0
            best = f1r.argmax(1) if has else torch.zeros(self.f, dtype=torch.long)

            def at_best(m: torch.Tensor, best=best, has=has) -> np.ndarray:
                return m[:, 1:].gather(1, best[:, None]).squeeze(1).numpy() if has else np.zeros(self.f)

            mean_act = torch.where(
                ln[None] > 0, self.sum_act[t] / ln[None].clamp_min(1), torch.zeros_like(joint)
            )
            out["tiers"][t] = {
                "classes": list(cs[1:]), "precision": prec[:, 1:].numpy(), "recall": rec[:, 1:].numpy(),
                "f1": f1r.numpy(), "mi": mi.numpy(), "mean_act": mean_act[:, 1:].numpy(),
                "counts": ln[1:].numpy(),
                "best": [cs[1:][int(b)] if has and float(f1r[i, int(b)]) > 0 else "" for i, b in enumerate(best.tolist())],
                "best_precision": at_best(prec), "best_recall": at_best(rec), "best_f1": at_best(f1),
            }  # fmt: skip
        tops = []
        for i in range(self.f):
            seen: dict = {}
            picked = []
            for p, v in zip(self.top_i[i].tolist(), self.top_v[i].tolist()):
                if v <= 0 or len(picked) >= self.top_k:
                    break
                key = int(utt[p]) if utt is not None else p
                if seen.get(key, 0) >= self.per_utterance:
                    continue
                seen[key] = seen.get(key, 0) + 1
                picked.append((int(p), float(v)))
            tops.append(picked)
        out["top"] = tops
        return out


def _mi_term(p: torch.Tensor, pa: torch.Tensor, pl: torch.Tensor) -> torch.Tensor:
    """``p log(p / (pa pl))`` where all are positive, else 0 (one cell of the mutual information)."""
    ok = (p > 0) & (pa > 0) & (pl > 0)
    return torch.where(
        ok, p * (p.clamp_min(1e-300).log() - (pa * pl).clamp_min(1e-300).log()), torch.zeros_like(p)
    )


def latent_features(sae, acts, corpus, utterances: Sequence[int], state: int, tiers=("phones", "words"),
                    top_k: int = 8, per_utterance: int = 1, chunk: int = 4096) -> tuple[dict, Frames]:  # fmt: skip
    """:class:`LatentStats` of ``sae`` over every frame of ``utterances`` (cache state ``state``) and the frame
    table; top frames carry utterance id, time, phone and word (``result["top_frames"]``)."""
    from src.sae.eval import latents_of, read_state

    fr = frame_table(acts, corpus, utterances, tiers)
    st = LatentStats(sae.d_sae, {t: np.unique(fr.labels[t]).tolist() for t in tiers}, top_k, per_utterance)
    for s in range(0, len(fr.rows), chunk):
        x = read_state(acts, state, fr.rows[s : s + chunk])
        st.update(latents_of(sae, x), {t: fr.labels[t][s : s + chunk] for t in tiers}, s)
    res = st.result(fr.utt)
    ids = list(corpus.ids)
    res["top_frames"] = [[{"position": p, "activation": v, "utterance": str(ids[int(fr.utt[p])]), "utt_index": int(fr.utt[p]),
                           "frame": int(fr.frame[p]), "time": float(fr.time[p]),
                           **{t.rstrip("s") if t in ("phones", "words") else t: str(fr.labels[t][p]) for t in tiers}}
                          for p, v in top] for top in res["top"]]  # fmt: skip
    return res, fr


def latent_rows(res: dict, tier: str = "phones", latents: Sequence[int] | None = None) -> list[dict]:
    """One row per latent: density, best label of ``tier`` with precision / recall / F1, MI of each tier."""
    t = res["tiers"][tier]
    rows = []
    for i in range(len(res["density"])) if latents is None else latents:
        r = {"latent": int(i), "density": float(res["density"][i]), f"best_{tier.rstrip('s')}": t["best"][i],
             "precision": float(t["best_precision"][i]), "recall": float(t["best_recall"][i]),
             "selectivity": float(t["best_f1"][i]), f"mi_{tier}": float(t["mi"][i])}  # fmt: skip
        for other, tt in res["tiers"].items():
            if other != tier:
                r[f"best_{other.rstrip('s')}"] = tt["best"][i]
                r[f"mi_{other}"] = float(tt["mi"][i])
        rows.append(r)
    return rows


def selective_table(res: dict, tier: str = "phones", per_label: int = 5, min_count: int = 1) -> list[dict]:
    """For each label of ``tier``: the ``per_label`` latents of highest F1 for it (F1 > 0), with precision,
    recall, mean activation on the label's frames and on all other frames, and density."""
    t = res["tiers"][tier]
    n = max(int(res["n_frames"]), 1)
    dens = res["density"]
    rows = []
    for c, name in enumerate(t["classes"]):
        cnt = float(t["counts"][c])
        if cnt < min_count:
            continue
        order = np.argsort(-t["f1"][:, c], kind="stable")[:per_label]
        for rank, i in enumerate(order):
            if t["f1"][i, c] <= 0:
                break
            on = float(t["mean_act"][i, c])
            rest = float(
                (res["mean_all"][i] * n - on * cnt) / max(n - cnt, 1)
            )  # every other frame, silence included
            rows.append({tier.rstrip("s"): name, "rank": rank + 1, "latent": int(i), "f1": float(t["f1"][i, c]),
                         "precision": float(t["precision"][i, c]), "recall": float(t["recall"][i, c]),
                         "mean_act_on": on, "mean_act_off": rest, "density": float(dens[i]), "frames": int(cnt)})  # fmt: skip
    return rows

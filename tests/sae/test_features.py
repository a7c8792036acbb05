"""SAE latents in speech terms (src/sae/features.py) against literal counting loops and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from src.sae.features import LatentStats, selective_table


def _data(seed=0, n=300, f=7):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["", "a", "i", "s", "m"], size=n, p=[0.2, 0.3, 0.2, 0.2, 0.1])
    z = np.maximum(rng.normal(size=(n, f)), 0) * (rng.random((n, f)) < 0.4)
    z[:, 0] = 0.0  # a dead latent
    z[:, 1] = np.where(labels == "a", 2.0 + rng.random(n), 0.0)  # fires exactly on "a"
    utt = np.repeat(np.arange(n // 30), 30)
    return z.astype(np.float32), labels, utt


def _stats(z, labels, utt, chunk=64, top_k=3, per_utterance=1):
    st = LatentStats(z.shape[1], {"phones": sorted(set(labels))}, top_k=top_k, per_utterance=per_utterance)
    for s in range(0, len(z), chunk):
        st.update(z[s : s + chunk], {"phones": labels[s : s + chunk]}, s)
    return st.result(utt)


def test_precision_recall_mi_mean_against_literal_loops():
    z, labels, utt = _data()
    res = _stats(z, labels, utt)
    t = res["tiers"]["phones"]
    assert t["classes"] == ["a", "i", "m", "s"]
    n, f = z.shape
    for i in range(f):
        active = [z[r, i] > 0 for r in range(n)]
        n_act = sum(active)
        assert res["density"][i] == pytest.approx(n_act / n)
        best, best_f1 = "", 0.0
        for c, name in enumerate(t["classes"]):
            both = sum(1 for r in range(n) if active[r] and labels[r] == name)
            n_c = sum(1 for r in range(n) if labels[r] == name)
            p = both / n_act if n_act else 0.0
            rc = both / n_c
            f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
            assert t["precision"][i, c] == pytest.approx(p)
            assert t["recall"][i, c] == pytest.approx(rc)
            assert t["f1"][i, c] == pytest.approx(f1)
            assert t["mean_act"][i, c] == pytest.approx(
                sum(float(z[r, i]) for r in range(n) if labels[r] == name) / n_c, rel=1e-6
            )
            if f1 > best_f1:
                best, best_f1 = name, f1
        assert t["best"][i] == best
        assert t["best_f1"][i] == pytest.approx(best_f1)
        # sklearn's MI (nats) of the binary activity with the label ("" a class of its own)
        assert t["mi"][i] == pytest.approx(mutual_info_score(labels, np.array(active)), abs=1e-10)
        assert res["mean_all"][i] == pytest.approx(float(z[:, i].astype(np.float64).mean()), rel=1e-6)
    assert t["best"][0] == "" and res["density"][0] == 0
    assert t["best"][1] == "a" and t["best_precision"][1] == 1.0 and t["best_recall"][1] == 1.0


def test_top_frames_one_per_utterance_literal():
    z, labels, utt = _data(1)
    res = _stats(z, labels, utt, chunk=50, top_k=4, per_utterance=1)
    for i in range(z.shape[1]):
        want, seen = [], set()
        for r in sorted(range(len(z)), key=lambda r: (-z[r, i], r)):
            if z[r, i] <= 0 or len(want) == 4:
                break
            if utt[r] in seen:
                continue
            seen.add(utt[r])
            want.append(r)
        got = [p for p, _ in res["top"][i]]
        assert [float(z[r, i]) for r in got] == [float(z[r, i]) for r in want]
        assert len({utt[r] for r in got}) == len(got)


def test_selective_table_ranks_the_exact_latent_first():
    z, labels, utt = _data(2)
    res = _stats(z, labels, utt)
    rows = selective_table(res, "phones", per_label=2)
    first_a = [r for r in rows if r["phone"] == "a" and r["rank"] == 1][0]
    assert first_a["latent"] == 1 and first_a["f1"] == 1.0
    on = z[labels == "a", 1].mean()
    assert first_a["mean_act_on"] == pytest.approx(on, rel=1e-6)
    assert first_a["mean_act_off"] == pytest.approx(0.0)
    assert all(r["f1"] > 0 for r in rows)
    assert not math.isnan(rows[0]["mean_act_off"])

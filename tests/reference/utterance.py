"""Deliberately literal reference of the utterance classifier's forward (explicit loops, float64)."""

from __future__ import annotations

import math


def classifier_logits(states, mask, state_index, weights, mean, std, heads):
    """states: list over S of nested lists [B][T][D]; mask [B][T] bools; state_index: int or None
    (weighted); weights: list of S raw state weights; mean/std: [S'][D]; heads: {name: (W [C][D], b [C])}.
    Returns {name: [B][C]} logits."""
    B = len(mask)
    picks = list(range(len(states))) if state_index is None else [state_index]
    if state_index is None:
        m = max(weights)
        ex = [math.exp(w - m) for w in weights]
        soft = [e / sum(ex) for e in ex]
    out = {h: [] for h in heads}
    for b in range(B):
        D = len(states[0][b][0])
        feat = [0.0] * D
        for j, s in enumerate(picks):
            frames = [states[s][b][t] for t in range(len(mask[b])) if mask[b][t]]
            for d in range(D):
                pooled = sum(f[d] for f in frames) / len(frames)
                z = (pooled - mean[j][d]) / std[j][d]
                feat[d] += z * (soft[s] if state_index is None else 1.0)
        for h, (W, bias) in heads.items():
            out[h].append([sum(W[c][d] * feat[d] for d in range(D)) + bias[c] for c in range(len(W))])
    return out

"""Metrics of a (patched) run, one value per batch row, and summaries over items.

A metric is a callable ``metric(out) -> (B,)`` of an :class:`~src.interventions.engine.Out` (every encoder state,
Whisper's teacher-forced logits). Built here:

- :func:`logit_diff`: logit of a target token minus a foil token at the decision position (Whisper);
- :func:`transcript_logprob`: teacher-forced log-probability of the reference transcript (Whisper);
- :func:`ctc_logprob`: CTC log-probability of a transcript through the model's CTC head (``*ForCTC``);
- :func:`classifier_logit_diff`: a classifier head's logit difference (src/probes/utterance.py);
- :func:`normalised_recovery`: ``(patched - corrupted) / (clean - corrupted)``;
- :func:`wer_after_decoding` and :func:`hallucination_rate` over re-decoded transcripts (src/functional/text.py);
- :func:`item_interval`: a bootstrap interval over items (src/functional/intervals.py ``bootstrap_ci``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from src.interventions.sites import InterventionError


def single_token(backbone, token: str | int, role: str = "token") -> int:
    """The id of ``token`` (an id, or a string that must be exactly one token of the model's tokenizer; Whisper
    words inside a sentence start with a space: ``" there"``). Not one token: an error naming it and how it
    tokenises."""
    if isinstance(token, (int, np.integer)):
        return int(token)
    tok = backbone.tokenizer() if hasattr(backbone, "tokenizer") else None
    if tok is None:
        raise InterventionError(f"{role} {token!r}: {backbone.name} has no tokenizer; give the token id")
    ids = tok.encode(str(token), add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        alt = ""
        other = token[1:] if token.startswith(" ") else " " + token
        other_ids = tok.encode(other, add_special_tokens=False)
        if len(other_ids) == 1:
            alt = f"; {other!r} is one token (id {other_ids[0]})"
        raise InterventionError(f"{role} {token!r} is not a single token of {backbone.name}: it tokenises as "
                                f"{pieces} (ids {ids}){alt}")  # fmt: skip
    return int(ids[0])


def logit_diff(backbone, target: str | int, foil: str | int, position: int):
    """``logits[position, target] - logits[position, foil]`` of the teacher-forced decoder: ``position`` is the
    decision position (the logits there predict the token at ``position + 1``)."""
    t = single_token(backbone, target, "target")
    f = single_token(backbone, foil, "foil")
    p = int(position)

    def metric(out) -> Tensor:
        if out.logits is None:
            raise InterventionError("logit_diff needs Whisper's decoder logits")
        if not 0 <= p < out.logits.shape[1]:
            raise InterventionError(f"logit_diff: decision position {p} is outside the {out.logits.shape[1]} tokens")
        return out.logits[:, p, t] - out.logits[:, p, f]

    metric.__name__ = "logit_diff"
    return metric


def transcript_logprob(ids: Sequence[int] | Tensor, prompt_len: int):
    """Teacher-forced log-probability of tokens ``ids[prompt_len:]`` (each predicted from the position before)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    k = int(prompt_len)
    if not 1 <= k < ids_t.numel():
        raise InterventionError(f"transcript_logprob: prompt_len {k} leaves no transcript tokens in {ids_t.numel()}")

    def metric(out) -> Tensor:
        lp = torch.log_softmax(out.logits[:, k - 1 : ids_t.numel() - 1].double(), -1)  # (B, n, V)
        tgt = ids_t[k:].to(lp.device)
        return lp.gather(-1, tgt[None, :, None].expand(lp.shape[0], -1, 1)).squeeze(-1).sum(-1)

    metric.__name__ = "transcript_logprob"
    return metric


def ctc_logprob(backbone, labels: Sequence[int] | str):
    """``log p(labels | audio)`` under the model's CTC head (``backbone.ctc_head()``: the ``*ForCTC`` checkpoint's
    ``lm_head`` on the encoder output, ``states[-1]``), summed over the utterance's frames. ``labels``: token ids,
    or text spelled with the head's vocabulary (a space = its word delimiter)."""
    readout = backbone.ctc_head()
    if isinstance(labels, str):
        index = {t: i for i, t in enumerate(readout.vocab)}
        ids = []
        for ch in labels:
            key = readout.word_delimiter if ch == " " and readout.word_delimiter else ch
            if key not in index:
                raise InterventionError(f"ctc_logprob: {ch!r} of {labels!r} is not in the CTC vocabulary")
            ids.append(index[key])
    else:
        ids = [int(i) for i in labels]

    def metric(out) -> Tensor:
        x = out.output[:, : out.frames]
        lp = torch.log_softmax(readout.head(x.to(readout.head.weight.dtype)).double(), -1)  # (B, T, V)
        b = lp.shape[0]
        tgt = torch.tensor([ids] * b, dtype=torch.long)
        loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), tgt, torch.full((b,), lp.shape[1], dtype=torch.long),
                                            torch.full((b,), len(ids), dtype=torch.long), blank=readout.blank,
                                            reduction="none", zero_infinity=False)  # fmt: skip
        return -loss

    metric.__name__ = "ctc_logprob"
    return metric


def classifier_logit_diff(classifier, head: str, target: str, foil: str):
    """A trained utterance classifier's (src/probes/utterance.py) logit of class ``target`` minus ``foil`` of head
    ``head``, reading the (patched) states over the utterance's frames."""
    labels = classifier.heads.get(head) if hasattr(classifier, "heads") else None
    if labels is None:
        raise InterventionError(f"the classifier has no head {head!r}; its heads are {list(classifier.heads)}")
    for c in (target, foil):
        if c not in labels:
            raise InterventionError(f"head {head!r} has no class {c!r}; its classes are {labels}")
    t, f = labels.index(target), labels.index(foil)

    def metric(out) -> Tensor:
        logits = classifier([s[:, : out.frames] for s in out.states])[head]
        return logits[:, t] - logits[:, f]

    metric.__name__ = "classifier_logit_diff"
    return metric


def normalised_recovery(patched, clean: float, corrupted: float):
    """``(patched - corrupted) / (clean - corrupted)``: 1 = the patch restores the clean metric, 0 = no effect;
    NaN where clean == corrupted (nothing to recover)."""
    p = np.asarray(patched, dtype=float)
    d = float(clean) - float(corrupted)
    if d == 0.0:
        return np.full_like(p, np.nan)
    return (p - float(corrupted)) / d


def wer_after_decoding(references: Sequence[str], hypotheses: Sequence[str], **kw) -> float:
    """Word error rate of re-decoded transcripts (src/functional/text.py ``word_error_rate``)."""
    from src.functional.text import word_error_rate

    return float(word_error_rate(list(references), list(hypotheses), **kw))


def hallucination_rate(transcripts: Sequence[str]) -> float:
    """Fraction of clips (non-speech input) whose greedy transcript has any word (after the WER normalisation:
    punctuation alone is no word)."""
    from src.functional.text import normalize_text

    if not transcripts:
        raise InterventionError("hallucination_rate: no transcripts")
    return float(np.mean([len(normalize_text(t).split()) > 0 for t in transcripts]))


def item_interval(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Mean over items and its percentile bootstrap interval (items resampled): ``(mean, low, high)``."""
    from src.functional.intervals import bootstrap_ci

    v = np.asarray(values, dtype=float)
    ci = bootstrap_ci(v, np.arange(v.size), statistic="mean", n_boot=n_boot, alpha=alpha, seed=seed)
    return float(v.mean()), float(ci.low), float(ci.high)

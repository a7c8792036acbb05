"""Attribution targets: the scalar function captum explains, for one item.

- :func:`classifier_target`: the logit of one class of one head of an ``UtteranceClassifier`` (the true
  class by default, the predicted one with ``which="predicted"``, or ``class_index``).  The classifier
  reads the states of the real frames (Whisper: trimmed to the utterance) with an all-True mask.
- :func:`whisper_token_targets`: Whisper ASR, teacher-forced on the model's own greedy transcript
  (``WhisperBackbone.transcribe_ids``, the usual prompt): per generated token ``t`` the log-probability
  ``log p(y_t | prompt, y_<t, audio)`` (``level="token"``), or per transcript word the sum of its tokens'
  log-probs (``level="word"``; a word starts at a token whose text starts with a space, or at the first
  token).  The decoder cross-attends to ``final_norm`` over the whole 30 s window, as in ``generate``.
- :func:`ctc_targets`: a wav2vec2-family CTC model (``HFBackbone.ctc_head()``): greedy CTC path over the
  frames; per emitted token (a run of equal non-blank argmax frames) the sum over its frames of
  ``log softmax(logits)[frame, token]``.  The head reads the last state (``final_norm`` where the model has one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from src.attribution.inputs import AttributionError, Representation, eval_mode
from src.attribution.segments import Segments


class AttributionTarget:
    """One item and one scalar target: ``target(x)`` maps ``(B, *shape)`` to ``(B,)`` scores.

    ``x0`` ``(1, *shape)`` is the item's attributed input; ``time_axis`` its time axis.  ``info``: what the
    target is (``target`` kind, ``head``, ``class_index``, ``class_label``, ``token``, ...) for result rows.
    Calls run the model in eval mode with parameters frozen (restored afterwards, also on error)."""

    def __init__(self, rep: Representation, score: Callable[[list[Tensor]], Tensor], info: dict,
                 modules: tuple = ()) -> None:  # fmt: skip
        self.rep = rep
        self._score = score
        self.info = dict(info)
        self._modules = tuple(m for m in (rep.backbone, *modules) if m is not None)
        self._depth = 0

    @property
    def input_type(self) -> str:
        return self.rep.input_type

    @property
    def x0(self) -> Tensor:
        return self.rep.x0

    @property
    def time_axis(self) -> int:
        return self.rep.time_axis

    @property
    def utterance(self) -> str:
        return self.rep.utt_id

    @property
    def name(self) -> str:
        return str(self.info.get("target", "?"))

    def prepared(self):
        """Context: the models in eval mode, parameters without requires_grad (restored on exit)."""
        return eval_mode(*self._modules)

    def __call__(self, x: Tensor) -> Tensor:
        if self._depth:
            return self._score(self.rep.states(x))
        self._depth += 1
        try:
            with self.prepared():
                return self._score(self.rep.states(x))
        finally:
            self._depth -= 1

    def baseline(self, name: str = "zeros", **kw) -> Tensor:
        return self.rep.baseline(name, **kw)

    def seconds_per_step(self) -> float:
        return self.rep.seconds_per_step()

    def step_times(self) -> np.ndarray:
        return self.rep.step_times()

    def step_segments(self, segments: Segments) -> np.ndarray:
        """Segment index of each step along ``time_axis`` (``len(segments)`` for padding steps)."""
        if abs(segments.duration - self.rep.duration) > 1e-6:
            raise AttributionError(f"utterance {self.utterance!r}: segments cover {segments.duration:.4f} s but the "
                                   f"audio has {self.rep.duration:.4f} s")  # fmt: skip
        return segments.index_of_times(self.step_times(), padded=self.rep.padded)

    def feature_mask(self, segments: Segments) -> Tensor:
        """Long tensor shaped like ``x0``: the segment index of every element (all features of a step share it)."""
        idx = torch.as_tensor(self.step_segments(segments))  # (n_steps,)
        shape = [1] * self.x0.dim()
        shape[self.time_axis] = -1
        return idx.reshape(shape).expand_as(self.x0).contiguous()

    def n_groups(self, segments: Segments) -> int:
        """Groups in :meth:`feature_mask` (segments, plus one for padding in padded representations)."""
        return int(self.step_segments(segments).max()) + 1


def _real(states: list[Tensor], n: int) -> list[Tensor]:
    return [s[:, :n] for s in states]


def classifier_target(backbone, classifier, utt, head: str, input_type: str, class_index: int | None = None,
                      which: str = "true", label: str | None = None, rep: Representation | None = None) -> AttributionTarget:  # fmt: skip
    """The logit of class ``class_index`` of ``classifier``'s head ``head`` for utterance ``utt``.

    ``which``: ``true`` (the class named ``label``, the item's true label for that head: required then),
    ``predicted`` (argmax of the head on the item).  An explicit ``class_index`` wins.  ``rep``: reuse one
    item's representation (its cached CNN features) across heads."""
    uid = str(getattr(utt, "id", "?"))
    heads = dict(getattr(classifier, "heads", {}) or {})
    if head not in heads:
        raise AttributionError(f"utterance {uid!r}: the classifier has no head {head!r}; its heads: {sorted(heads)}")
    classes = list(heads[head])
    rep = rep if rep is not None else Representation(backbone, utt.audio, input_type, uid)
    n = rep.n_real

    def logits(states):
        real = _real(states, n)
        mask = torch.ones(real[0].shape[:2], dtype=torch.bool, device=real[0].device)
        return classifier(real, mask)[head]  # (B, C)

    if class_index is None:
        if which == "predicted":
            with torch.no_grad(), eval_mode(backbone, classifier):
                class_index = int(logits(rep.states(rep.x0)).argmax(-1)[0])
        elif which == "true":
            if label is None:
                raise AttributionError(f"utterance {uid!r}: which='true' needs the true {head!r} label (or class_index)")
            if str(label) not in classes:
                raise AttributionError(f"utterance {uid!r}: true {head!r} label {label!r} is not a class of the head "
                                       f"({classes})")  # fmt: skip
            class_index = classes.index(str(label))
        else:
            raise AttributionError(f"which must be 'true' or 'predicted', got {which!r}")
    ci = int(class_index)
    if not 0 <= ci < len(classes):
        raise AttributionError(f"utterance {uid!r}: class index {ci} is outside head {head!r} with {len(classes)} "
                               f"classes ({classes})")  # fmt: skip

    def score(states):
        return logits(states)[:, ci]

    info = {"target": "classifier", "head": head, "class_index": ci, "class": classes[ci], "which": which}
    return AttributionTarget(rep, score, info, modules=(classifier,))


def _word_groups(bb, tokens: list[int]) -> list[tuple[str, list[int]]]:
    tok = bb.tokenizer()
    groups: list[tuple[str, list[int]]] = []
    for t, i in enumerate(tokens):
        text = tok.decode([i]) if tok is not None else bb.decode_ids([i])
        if not groups or (tok is None) or text.startswith(" "):
            groups.append((text, [t]))
        else:
            groups[-1] = (groups[-1][0] + text, groups[-1][1] + [t])
    return [(w.strip(), ts) for w, ts in groups]


def whisper_token_targets(backbone, utt, input_type: str, level: str = "token", tokens: list[int] | None = None,
                          language: str | None = "en", task: str = "transcribe",
                          max_new_tokens: int | None = None) -> list[AttributionTarget]:  # fmt: skip
    """Per generated token (``level="token"``) or per transcript word (``"word"``): the teacher-forced log-prob.

    ``tokens``: the transcript to force (default: the model's own greedy transcript of the item).  All targets
    share one representation (the CNN features are computed once).  A model without a decoder, or an empty
    transcript, is an AttributionError naming the utterance."""
    uid = str(getattr(utt, "id", "?"))
    if level not in ("token", "word"):
        raise AttributionError(f"level must be 'token' or 'word', got {level!r}")
    if not getattr(backbone, "has_decoder", False):
        raise AttributionError(f"utterance {uid!r}: ASR targets need Whisper (a decoder); backbone "
                               f"{getattr(backbone, 'name', '?')!r} has none")  # fmt: skip
    rep = Representation(backbone, utt.audio, input_type, uid)
    if tokens is None:
        with eval_mode(backbone):
            tokens = backbone.transcribe_ids([rep.wave[0]], language, task, max_new_tokens)[0]
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise AttributionError(f"utterance {uid!r}: the model's transcript is empty; no token to explain")
    prompt = backbone.decoder_prompt_ids(language or "en", task)
    ids = torch.tensor([prompt + tokens])[:, :-1]  # (1, P + n - 1): position P - 1 + t predicts token t
    P = len(prompt)
    tok_t = torch.tensor(tokens)  # (n,)

    def logprobs(states):  # (B, n): log p(token t) for every t
        enc = states[-1]  # final_norm over the whole window, (B, F, D)
        b = enc.shape[0]
        h = backbone.decoder_output(ids.expand(b, -1), enc)  # (B, P + n - 1, d), after decoder.layer_norm
        lp = torch.log_softmax(backbone.output_head()(h[:, P - 1 :]).float(), dim=-1)  # (B, n, V)
        return lp.gather(-1, tok_t.view(1, -1, 1).expand(b, -1, 1)).squeeze(-1)

    out = []
    if level == "token":
        for t, i in enumerate(tokens):
            text = backbone.decode_ids([i])
            out.append(AttributionTarget(rep, (lambda s, t=t: logprobs(s)[:, t]),
                                         {"target": "asr_token", "token_index": t, "token_id": i, "token": text,
                                          "transcript": backbone.decode_ids(tokens), "transcript_ids": tokens}))  # fmt: skip
    else:
        for w, (text, ts) in enumerate(_word_groups(backbone, tokens)):
            out.append(AttributionTarget(rep, (lambda s, ts=tuple(ts): logprobs(s)[:, list(ts)].sum(-1)),
                                         {"target": "asr_word", "token_index": w, "token": text, "tokens": list(ts),
                                          "transcript": backbone.decode_ids(tokens), "transcript_ids": tokens}))  # fmt: skip
    return out


def ctc_targets(backbone, utt, input_type: str) -> list[AttributionTarget]:
    """One target per token of the greedy CTC transcript: the summed log-prob of the token over its frames."""
    uid = str(getattr(utt, "id", "?"))
    if not hasattr(backbone, "ctc_head"):
        raise AttributionError(f"utterance {uid!r}: a CTC target needs a wav2vec2-family CTC model; backbone "
                               f"{getattr(backbone, 'name', '?')!r} ({type(backbone).__name__}) has no CTC head")  # fmt: skip
    try:
        readout = backbone.ctc_head()
    except ValueError as e:
        raise AttributionError(f"utterance {uid!r}: CTC target: {e}") from e
    rep = Representation(backbone, utt.audio, input_type, uid)

    def logp(states):
        return torch.log_softmax(readout.head(states[-1][:, : rep.n_real]).float(), dim=-1)  # (B, T, V)

    with torch.no_grad(), eval_mode(backbone, readout.head):
        path = logp(rep.states(rep.x0))[0].argmax(-1).tolist()
    runs: list[tuple[int, list[int]]] = []
    prev = None
    for f, v in enumerate(path):
        if v != readout.blank and v == prev:
            runs[-1][1].append(f)
        elif v != readout.blank:
            runs.append((v, [f]))
        prev = v
    if not runs:
        raise AttributionError(f"utterance {uid!r}: the greedy CTC path is all blank; no token to explain")
    out = []
    for k, (v, frames) in enumerate(runs):
        fr = torch.tensor(frames)

        def score(states, v=v, fr=fr):
            return logp(states)[:, fr, v].sum(-1)

        out.append(AttributionTarget(rep, score, {"target": "ctc", "token_index": k, "token_id": v,
                                                  "token": readout.vocab[v], "frames": frames},
                                     modules=(readout.head,)))  # fmt: skip
    return out

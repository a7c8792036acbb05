"""Utterance classification on a frozen backbone: pool the frames of one state (or the
layer-weighted sum of all states), then one linear head per slot.

Conventions:
- ``states`` are ALL states of the backbone in the framework's order (src/layers.py):
  residual states ``0..N`` then named extras (``final_norm``), each ``(B, T, D)``.
- ``mask`` ``(B, T)`` is True on the utterance's real frames (Whisper: the frames of the
  audio, not of the 30 s padding; ``backbone.num_frames(num_samples)`` of them).
  Pooling = the mean over real frames (float32 or wider), then a fixed per-dimension
  standardisation (``(x - mean) / std`` with the training set's statistics, stored in
  the checkpoint; identity for converted models), then one ``Linear(D, C_head)`` per head.
- ``weighted=True``: every state is pooled and standardised on its own, then summed with
  softmax(``state_weights``) (the s3prl / SUPERB weighted sum). Differentiable throughout.
- Logits are returned per head in the order of ``heads[head]`` (class labels).

Training (:func:`train_classifier`) runs on utterance features pooled from the activation
cache (one pass over the cache, then a few hundred vectors): a plain full-batch loop, not
Lightning, because the whole training set is a (N, S, D) tensor of a few MB and an epoch is
one matrix product; Lightning's per-step machinery and its ~9 s import would dominate.
Cross-entropy summed over heads, Adam, early stopping on the summed validation loss with the
best epoch's weights restored, seeded by ``seed``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.datamodules.tasks import UtteranceTask  # noqa: F401  (moved; old configs name src.probes.utterance)
from src.fileutil import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class ClassifierError(ValueError):
    """Bad classifier input or checkpoint; the message names the file, head or state."""


def resolve_state(layer: int | str, num_layers: int, layer_names: Sequence[str]) -> int:
    """Index into ``states`` of one state given as an int, a layer name or first|middle|last."""
    from src.layers import LayerSpecError, resolve_for

    class _States:  # the owner resolve_for reads: residual count and every state's name
        pass

    owner = _States()
    owner.num_layers, owner.layer_names = num_layers, list(layer_names)
    try:
        (k,) = resolve_for(owner, layer, what="classifier layer")
    except (LayerSpecError, ValueError) as e:
        raise ClassifierError(str(e)) from e
    return int(k)


class UtteranceClassifier(torch.nn.Module):
    """Mean pooling over the real frames of one state (or a softmax-weighted sum over states),
    then one linear head per slot.

    Args:
        heads: head (slot) name -> class labels, in logit order.
        hidden_size: D of the states.
        layer_names: names of every state the backbone gives (``backbone.layer_names``).
        num_layers: residual states ``0..N`` (``backbone.num_layers``); the rest are extras.
        layer: the state read (int, negative from the end of the residual states, a name such as
            ``final_norm``, or first|middle|last); ignored (stored as None) with ``weighted=True``.
        weighted: the layer-weighted sum over all states.
    """

    def __init__(self, heads: dict[str, list[str]], hidden_size: int, layer_names: Sequence[str], num_layers: int,
                 layer: int | str | None = -1, weighted: bool = False) -> None:  # fmt: skip
        super().__init__()
        if not heads:
            raise ClassifierError("heads is empty: give at least one head with its class labels")
        for h, labels in heads.items():
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ClassifierError(f"head {h!r} needs >= 2 distinct class labels, got {list(labels)}")
        self.heads = {str(h): [str(c) for c in labels] for h, labels in heads.items()}
        self.hidden_size = int(hidden_size)
        self.layer_names = [str(n) for n in layer_names]
        self.num_layers = int(num_layers)
        self.weighted = bool(weighted)
        if self.weighted:
            self.layer = None
            self.state_index = None
            self.state_weights = torch.nn.Parameter(torch.zeros(len(self.layer_names)))  # softmax -> uniform
            n_norm = len(self.layer_names)
        else:
            if layer is None:
                raise ClassifierError("layer is None: name a state, or set weighted=true")
            self.state_index = resolve_state(layer, self.num_layers, self.layer_names)
            self.layer = self.layer_names[self.state_index] if self.state_index >= self.num_layers else self.state_index
            n_norm = 1
        self.register_buffer("feat_mean", torch.zeros(n_norm, self.hidden_size))  # (S', D)
        self.register_buffer("feat_std", torch.ones(n_norm, self.hidden_size))  # (S', D)
        # "h_" prefix: a head named like an nn.Module attribute (train, eval, ...) cannot clash
        self.linears = torch.nn.ModuleDict({f"h_{h}": torch.nn.Linear(self.hidden_size, len(c)) for h, c in self.heads.items()})

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        return {"heads": self.heads, "hidden_size": self.hidden_size, "layer_names": self.layer_names,
                "num_layers": self.num_layers, "layer": self.layer, "weighted": self.weighted}  # fmt: skip

    def head(self, name: str) -> torch.nn.Linear:
        if name not in self.heads:
            raise ClassifierError(f"the classifier has no head {name!r}; its heads are {list(self.heads)}")
        return self.linears[f"h_{name}"]

    def state_weight_values(self) -> Tensor | None:
        """softmax(state_weights) (S,), or None for a single-state classifier."""
        return torch.softmax(self.state_weights.detach(), 0) if self.weighted else None

    # ------------------------------------------------------------------ forward
    def _check_states(self, states: Sequence[Tensor]) -> None:
        if len(states) != len(self.layer_names):
            raise ClassifierError(f"the classifier reads {len(self.layer_names)} states ({', '.join(self.layer_names)}), "
                                  f"got {len(states)}: pass every state of the backbone")  # fmt: skip
        D = states[0].shape[-1]
        if D != self.hidden_size:
            raise ClassifierError(f"states have D={D}, the classifier was built for D={self.hidden_size}")

    @staticmethod
    def mean_pool(x: Tensor, mask: Tensor | None) -> Tensor:
        """Mean of ``x`` (B, T, D) over the frames where ``mask`` (B, T) is True -> (B, D)."""
        if mask is None:
            return x.mean(1)
        m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        n = m.sum(1)  # (B, 1)
        if bool((n == 0).any()):
            raise ClassifierError("an item has no real frame in mask: cannot pool an empty utterance")
        return (x * m).sum(1) / n  # (B, D)

    def pooled(self, states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """Pooled (not standardised) features: (B, S, D) with weighted=True (every state), else (B, 1, D)."""
        self._check_states(states)
        picks = states if self.weighted else [states[self.state_index]]
        return torch.stack([self.mean_pool(s, mask) for s in picks], 1)  # (B, S', D)

    def forward_pooled(self, pooled: Tensor) -> dict[str, Tensor]:
        """Logits per head from pooled features (B, S', D) as given by :meth:`pooled`."""
        z = (pooled - self.feat_mean) / self.feat_std  # (B, S', D)
        if self.weighted:
            w = torch.softmax(self.state_weights, 0).to(z.dtype)  # (S,)
            feat = (z * w[None, :, None]).sum(1)  # (B, D)
        else:
            feat = z[:, 0]  # (B, D)
        return {h: self.linears[f"h_{h}"](feat.to(self.linears[f"h_{h}"].weight.dtype)) for h in self.heads}

    def forward(self, states: Sequence[Tensor], mask: Tensor | None = None) -> dict[str, Tensor]:
        """states: every state (B, T, D); mask (B, T) True = real frame -> {head: logits (B, C_head)}."""
        return self.forward_pooled(self.pooled(states, mask))

    # ------------------------------------------------------------------ controls
    def randomized(self, seed: int = 0) -> UtteranceClassifier:
        """A copy with the same shapes (heads, state, standardisation) and re-initialised head weights
        (and uniform state weights): the randomised-model control of sanity checks (Adebayo et al. 2018)."""
        other = copy.deepcopy(self)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for lin in other.linears.values():
                bound = 1.0 / np.sqrt(lin.in_features)  # nn.Linear's default init range
                lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=g))
                lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=g))
            if other.weighted:
                other.state_weights.zero_()
        return other

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write config, weights and ``meta`` (backbone config, corpus, seed, layer, test accuracy) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"format": CHECKPOINT_FORMAT, "config": self.config(),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                "meta": json.loads(json.dumps(meta or {}, default=str))}  # fmt: skip
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)

    @classmethod
    def load(cls, path: str | Path) -> tuple[UtteranceClassifier, dict]:
        """(classifier, meta) of a checkpoint written by :meth:`save`. Only tensors and plain data are read
        (``weights_only=True``); nothing in the file is instantiated or run."""
        path = Path(path)
        if not path.is_file():
            raise ClassifierError(f"classifier checkpoint {path} does not exist")
        blob = read_checkpoint_blob(path, "classifier checkpoint", REBUILD_HINT)
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT or not isinstance(blob.get("config"), dict):
            raise ClassifierError(f"{path} is not an utterance-classifier checkpoint of this project (format "
                                  f"{CHECKPOINT_FORMAT}); {REBUILD_HINT}")  # fmt: skip
        try:
            clf = cls(**blob["config"])
            clf.load_state_dict(blob["state_dict"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise ClassifierError(f"classifier checkpoint {path} is damaged ({type(e).__name__}: {e}); {REBUILD_HINT}") from e
        meta = blob.get("meta")
        return clf.eval(), dict(meta) if isinstance(meta, dict) else {}

    def check_backbone(self, backbone, source: str) -> None:
        """ClassifierError naming ``source`` unless ``backbone`` gives the states this classifier reads (layer names
        and width)."""
        if list(backbone.layer_names) != self.layer_names or backbone.hidden_size != self.hidden_size:
            raise ClassifierError(f"{source}: backbone {backbone.name} gives states {backbone.layer_names} "
                                  f"x {backbone.hidden_size}, the classifier reads {self.layer_names} x {self.hidden_size}")  # fmt: skip


REBUILD_HINT = ("rebuild it with `python train.py experiment=commands` (or delete it: analyses with "
                "analysis.checkpoint=auto train a new one)")


def read_checkpoint_blob(path: Path, what: str, rebuild_hint: str):
    """The checkpoint's plain contents (:func:`src.fileutil.load_plain_checkpoint`), or a ClassifierError saying the
    file is damaged or not a ``what`` of this project and how to rebuild it."""
    from src.fileutil import UnreadableCheckpoint, load_plain_checkpoint

    try:
        return load_plain_checkpoint(path)
    except UnreadableCheckpoint as e:
        raise ClassifierError(f"{what} {path} is damaged or not a {what} of this project ({e.why}); {rebuild_hint}") from None


def live_states(backbone, waveform: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every state of one utterance from the live model, and its mask: ([(1, T, D)] * S, (1, T))."""
    enc = backbone.encode([torch.as_tensor(waveform, dtype=torch.float32)])
    T = int(enc.lengths[0])
    states = [enc.hidden[s, :, :T] for s in range(enc.hidden.shape[0])]  # (1, T, D) each
    return states, torch.ones(1, T, dtype=torch.bool)


# ============================================================================ training from the cache


def pooled_from_cache(acts, utterances: Sequence[int], states: Sequence[int], progress: bool = False) -> np.ndarray:
    """Mean over each utterance's cached frames, per state: (N, len(states), D) float32.

    The cache holds exactly the frames the live model gives for the utterance (Whisper: the
    audio's frames, not the window padding), so this equals pooling the live states with the
    real-frame mask, up to the cache's float16 rounding (tested)."""
    from src.progress import Progress

    utterances = [int(u) for u in utterances]
    out = np.empty((len(utterances), len(states), acts.hidden_size), np.float32)
    bar = Progress(list(states), desc=f"pooling {len(utterances)} utterances", unit="state", mode=None if progress else "off")
    for j, s in enumerate(bar):
        arr = acts.layer(int(s))  # (total_frames, D) memmap
        for n, u in enumerate(utterances):
            rows = acts.rows(u)
            if rows.stop <= rows.start:
                raise ClassifierError(f"utterance {acts.ids[u]!r} has no frames in cache {acts.path}")
            out[n, j] = np.asarray(arr[rows], dtype=np.float32).mean(0)  # (D,)
    return out


def fit_classifier(clf: UtteranceClassifier, x: dict[str, Tensor], y: dict[str, dict[str, Tensor]], *, lr: float = 1e-2,
                   weight_decay: float = 1e-3, max_epochs: int = 300, patience: int = 30, batch_size: int = 64,
                   seed: int = 0, standardize: bool = True) -> dict:  # fmt: skip
    """Train ``clf`` in place on pooled features ``x[split]`` (N, S', D) and labels ``y[split][head]`` (N,).

    Cross-entropy summed over heads; Adam on mini-batches shuffled by a generator seeded with
    ``seed`` (the head init is seeded by the caller); after every epoch the summed validation loss
    is computed and the best epoch's weights are restored at the end (early stopping with
    ``patience`` epochs). Returns the training history."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (and thrash on a busy machine)
    try:
        return _fit(clf, x, y, lr, weight_decay, max_epochs, patience, batch_size, seed, standardize)
    finally:
        torch.set_num_threads(threads)


def _fit(clf, x, y, lr, weight_decay, max_epochs, patience, batch_size, seed, standardize) -> dict:
    if standardize:
        with torch.no_grad():
            clf.feat_mean.copy_(x["train"].mean(0))  # (S', D)
            clf.feat_std.copy_(x["train"].std(0, unbiased=False).clamp_min(1e-5))
    heads = list(clf.heads)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(int(seed))
    n = len(x["train"])

    def loss_of(split: str, idx: Tensor | None = None) -> Tensor:
        xs = x[split] if idx is None else x[split][idx]
        out = clf.forward_pooled(xs)
        return sum(torch.nn.functional.cross_entropy(out[h], y[split][h] if idx is None else y[split][h][idx])
                   for h in heads)  # fmt: skip

    from src.progress import progress

    best, best_state, best_epoch, history = float("inf"), copy.deepcopy(clf.state_dict()), -1, []
    for epoch in progress(range(int(max_epochs)), desc="utterance classifier training", unit="epoch"):
        clf.train()
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n, int(batch_size)):
            opt.zero_grad()
            loss = loss_of("train", perm[lo : lo + int(batch_size)])
            loss.backward()
            opt.step()
        clf.eval()
        with torch.no_grad():
            val = float(loss_of("val"))
        history.append(val)
        if val < best - 1e-6:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(clf.state_dict())
        elif epoch - best_epoch >= int(patience):
            break
    clf.load_state_dict(best_state)
    clf.eval()
    return {"best_epoch": best_epoch, "epochs": len(history), "best_val_loss": best, "val_loss": history}


def layer_token(clf_or_layer, weighted: bool | None = None) -> str:
    """The layer part of a stable checkpoint name: ``weighted`` or the state's name (``4``, ``final_norm``)."""
    if isinstance(clf_or_layer, UtteranceClassifier):
        return "weighted" if clf_or_layer.weighted else str(clf_or_layer.layer)
    return "weighted" if weighted else str(clf_or_layer)

"""CTC heads on cached states: a trained CTC head, CTC probes per layer, the tuned CTC lens.

No CTC checkpoint can be downloaded offline, so the framework trains its own head: a
linear map (optionally one small hidden layer) from a state to ``V = 1 + phones`` CTC
log-probabilities (blank at index 0), trained with ``F.ctc_loss`` on whole utterances of
the activation cache (the backbone is never re-run).  Three readings of layer ``k``:

- **plain CTC lens**: the head trained on the final state read at layer k through the
  backbone's final LayerNorm, ``head(final_norm(h_k))`` (`lens_log_probs`);
- **tuned CTC lens** (`TunedLens`, `train_tuned_lens`): ``head(final_norm(h_k + A_k h_k + b_k))``
  with ``A_k, b_k`` trained to minimise ``KL(p_final || p_k)`` per frame; zero at init, so
  the untrained tuned lens *is* the plain lens;
- **CTC probe per layer** (`train_ctc_probes`): a head of its own trained on layer k
  (where phones are decodable, as opposed to where they are in the final layer's basis).

Conventions (src/probes/base.py): every head is initialised from its own generator seeded
by (seed, cache state index); all layers' heads train in one pass as stacked weights whose
gradients do not interact (loss = sum over heads of each head's mean loss, Adam is
elementwise); each head is restored at the epoch of its own lowest validation loss.
Targets are the utterance's phones tier through the corpus's label normalisation
(`label_norm_of`: silences dropped, case, stress digits). Utterances whose target does not
fit their frames (CTC needs ``T >= U + adjacent repeats``) are skipped and counted
(``<split>_skipped_too_short``); utterances with no phone at all (an empty tier, or only
silences) are skipped, counted apart (``<split>_skipped_empty``) and warned about.

Files: heads and tuned lenses are written atomically (temporary file, ``os.replace``); the
job checks that ``--out`` is writable before it trains anything. A file that cannot be read
back (damaged, or not a checkpoint of this project) is a `CTCHeadError` naming it and the
command that rebuilds it.

PER: greedy decoding (argmax per frame, collapse repeats, drop blanks), edits from
`src.functional.text.edit_counts`, per utterance (for `bootstrap_from_sums`).

The job (src/jobs/ctc_head.py) trains and saves the real head once, from the cache train.py shares::

    python -m src.jobs.ctc_head --out outputs/ctc_head_whisper_tiny_en.pt [--measure]

Measured (2026-12, ``--measure`` defaults: embedded Whisper tiny.en x synth, 60 sentences x
3 voices, split by text, seed 0; linear heads, lr 1e-3; PER on 36 held-out utterances, 95%
text-bootstrap interval in the CSV): head on final_norm 0.261 (train 0.038, val 0.331).

    state       plain lens  tuned lens  CTC probe
    0           1.523       1.111       0.845
    1           2.246       0.657       0.414
    2           1.387       0.441       0.384
    3           0.437       0.266       0.188
    4           0.260       0.257       0.425
    final_norm  0.261       -           0.261

The probe on the raw layer-4 state is worse than on its LayerNorm (0.425 vs 0.261): a linear
map cannot undo the per-frame normalisation (replacing each utterance's first frame, whose
norm is ~25x the median at layer 4, barely changed it: 0.448 -> 0.438, both at lr 3e-3).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

BLANK = "<blank>"
HEAD_FORMAT = "speechinterp-ctc-head/1"
LENS_FORMAT = "speechinterp-tuned-ctc-lens/1"
DEFAULT_OUT = "outputs/ctc_head_whisper_tiny_en.pt"


class CTCHeadError(ValueError):
    """A bad CTC head or tuned-lens file, or a head that does not fit its input; names the file."""


# ----------------------------------------------------------------------------- targets and decoding


def phone_sequences(corpus, tier: str = "phones") -> list[list[str]]:
    """The normalised phone sequence of every utterance (corpus order), silences dropped."""
    from src.datamodules.labels import label_norm_of

    norm = label_norm_of(corpus)
    out = []
    for i in range(len(corpus)):
        labels = [iv.label for iv in corpus.annotation(i).tier(tier)]
        out.append([p for p in norm.apply(labels, tier) if p])
    return out


def build_vocab(sequences: Sequence[Sequence[str]]) -> list[str]:
    """``[BLANK] + sorted inventory``.

    >>> build_vocab([["b", "a"], ["a", "c"]])
    ['<blank>', 'a', 'b', 'c']
    """
    inv = sorted({p for seq in sequences for p in seq})
    if BLANK in inv:
        raise ValueError(f"the phone inventory contains the blank symbol {BLANK!r}")
    return [BLANK, *inv]


def ctc_min_frames(ids: Sequence) -> int:
    """Frames CTC needs for a target: its length plus one blank between adjacent repeats.

    >>> ctc_min_frames([1, 1, 2]), ctc_min_frames([])
    (4, 0)
    """
    ids = list(ids)
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def greedy_ids(log_probs: Tensor, blank: int = 0) -> list[int]:
    """Greedy CTC decoding of ``(T, V)`` scores: argmax per frame, collapse repeats, drop blanks.

    >>> greedy_ids(torch.tensor([[0., 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    [1, 1, 2]
    """
    from src.functional.ctc import greedy_decode  # the one best-path decoder of the project

    if log_probs.shape[0] == 0:
        return []
    return greedy_decode(log_probs, None, blank)[0]


# ----------------------------------------------------------------------------- the head


class CTCHead(nn.Module):
    """A CTC head ``(B, T, D) -> log_probs (B, T, V)``: standardise, linear (or one hidden layer), log-softmax.

    Args:
        dim: input size D.
        vocab: ``[blank, phone, ...]``; ``blank`` is its index (0).
        hidden: 0 (linear) or the width of one GELU hidden layer.
        norm: ``final_norm`` (the head reads states through the backbone's final LayerNorm:
            give it ``backbone.final_norm_module()(h_k)`` for a residual state) or ``none``.
        layer: the cache state the head was trained on (``final_norm``, ``"3"``, ...).
        backbone: the backbone name and fingerprint (``whisper_tiny_en@c754f822bf082956``).

    The standardisation buffers ``mu``/``sigma`` (training-set statistics of the state) are
    part of the head, which stays affine in its input when ``hidden=0``.
    """

    def __init__(self, dim: int, vocab: Sequence[str], hidden: int = 0, norm: str = "final_norm",
                 layer: str = "final_norm", backbone: str = "", blank: int = 0) -> None:  # fmt: skip
        super().__init__()
        if norm not in ("final_norm", "none"):
            raise ValueError(f"norm must be final_norm or none, got {norm!r}")
        self.vocab, self.blank = [str(v) for v in vocab], int(blank)
        if len(self.vocab) < 2 or not 0 <= self.blank < len(self.vocab):
            raise ValueError(f"a CTC vocabulary needs a blank and at least one token, got {self.vocab}")
        self.dim, self.hidden, self.norm, self.layer, self.backbone = (
            int(dim),
            int(hidden),
            norm,
            str(layer),
            str(backbone),
        )
        self.register_buffer("mu", torch.zeros(self.dim))
        self.register_buffer("sigma", torch.ones(self.dim))
        self.inner = nn.Linear(self.dim, self.hidden) if self.hidden else None
        self.out = nn.Linear(self.hidden or self.dim, len(self.vocab))

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    def config(self) -> dict:
        return {"dim": self.dim, "vocab": list(self.vocab), "hidden": self.hidden, "norm": self.norm,
                "layer": self.layer, "backbone": self.backbone, "blank": self.blank}  # fmt: skip

    def logits(self, h: Tensor) -> Tensor:  # (..., D) -> (..., V)
        if h.shape[-1] != self.dim:
            raise CTCHeadError(f"CTC head expects states of size {self.dim} (trained on {self.backbone or '?'} "
                               f"state {self.layer}), got {tuple(h.shape)}")  # fmt: skip
        z = (h.to(self.mu.dtype) - self.mu) / self.sigma  # (..., D)
        if self.inner is not None:
            z = F.gelu(self.inner(z))  # (..., H)
        return self.out(z)  # (..., V)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, D) -> (B, T, V)
        return torch.log_softmax(self.logits(h), dim=-1)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def save(self, path: str | Path) -> Path:
        """Write the head to ``path`` atomically (a temporary file beside it, then ``os.replace``):
        a failed or interrupted save leaves the previous file, never half a head."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        extra = getattr(self, "metrics", None)
        return _save_atomic({"format": HEAD_FORMAT, "config": self.config(), "state_dict": state,
                             "metrics": _plain(extra) if extra else {}}, path)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> CTCHead:
        path = Path(path)
        if not path.is_file():
            raise CTCHeadError(
                f"CTC head file {path} does not exist (train one: python -m src.jobs.ctc_head --out {path})"
            )
        blob = _load_checkpoint(path, "CTC head", _head_rebuild(path))
        if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
            got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise CTCHeadError(f"{path} is not a CTC head file of format {HEAD_FORMAT} (found {got!r}): it is a "
                               f"checkpoint of something else. {_head_rebuild(path)}")  # fmt: skip
        cfg, state = blob.get("config"), blob.get("state_dict")
        if not isinstance(cfg, dict) or not isinstance(state, dict):
            raise CTCHeadError(f"CTC head file {path} has no config or no state dict")
        try:
            head = cls(**cfg)
        except (TypeError, ValueError) as e:
            raise CTCHeadError(f"CTC head file {path} has a bad config ({e}): {cfg}") from e
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise CTCHeadError(f"CTC head file {path}: the weights do not fit its config ({e})") from e
        head.metrics = blob.get("metrics") or {}
        return head.eval()


def _plain(x):
    """JSON-like copy (numbers, strings, lists, dicts) for saving with weights_only loading."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Tensor):
        return x.tolist()
    return x


# ----------------------------------------------------------------------------- the tuned lens


class TunedLens(nn.Module):
    """Per layer an affine translator in residual form ``h + h A_k + b_k`` (A, b zero at init).

    ``layers`` are the cache state names the translators stand for; ``translate(h, layer)``
    maps ``(..., D)`` states of that layer. At init ``translate(h, k)`` equals ``h`` exactly.
    """

    def __init__(self, dim: int, layers: Sequence[str | int]) -> None:
        super().__init__()
        self.dim, self.layers = int(dim), [str(k) for k in layers]
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"duplicate layers {self.layers}")
        self.weight = nn.Parameter(torch.zeros(len(self.layers), self.dim, self.dim))  # (K, D, D)
        self.bias = nn.Parameter(torch.zeros(len(self.layers), self.dim))  # (K, D)
        self.metrics: dict = {}

    def position(self, layer: str | int) -> int:
        name = str(layer)
        if name not in self.layers:
            raise KeyError(f"the tuned lens has no translator for layer {name!r}; it has {self.layers}")
        return self.layers.index(name)

    def translate(self, h: Tensor, layer: str | int) -> Tensor:  # (..., D) -> (..., D)
        k = self.position(layer)
        h = h.to(self.weight.dtype)
        return h + h @ self.weight[k] + self.bias[k]

    def forward(self, h: Tensor, layer: str | int) -> Tensor:
        return self.translate(h, layer)

    def translate_all(self, x: Tensor) -> Tensor:  # (B, K, D) -> (B, K, D), translator k on column k
        return x + torch.einsum("bkd,kde->bke", x, self.weight) + self.bias

    def save(self, path: str | Path) -> Path:
        """Write the lens to ``path`` atomically (temporary file beside it, then ``os.replace``)."""
        return _save_atomic({"format": LENS_FORMAT, "config": {"dim": self.dim, "layers": self.layers},
                             "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                             "metrics": _plain(self.metrics)}, path)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        path = Path(path)
        rebuild = _lens_rebuild(path)
        if not path.is_file():
            raise CTCHeadError(f"tuned-lens file {path} does not exist. {rebuild}")
        blob = _load_checkpoint(path, "tuned-lens", rebuild)
        if not isinstance(blob, dict) or blob.get("format") != LENS_FORMAT:
            got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
            raise CTCHeadError(f"{path} is not a tuned-lens file of format {LENS_FORMAT} (found {got!r}): it is a "
                               f"checkpoint of something else. {rebuild}")  # fmt: skip
        cfg, state = blob.get("config"), blob.get("state_dict")
        if not isinstance(cfg, dict) or not isinstance(state, dict):
            raise CTCHeadError(f"tuned-lens file {path} has no config or no state dict. {rebuild}")
        try:
            lens = cls(**cfg)
            lens.load_state_dict(state)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CTCHeadError(f"tuned-lens file {path}: the weights do not fit its config ({e}). {rebuild}") from e
        lens.metrics = blob.get("metrics") or {}
        return lens


def _save_atomic(blob: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target folder, then ``os.replace`` onto ``path``."""
    import os
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # open(): the umask's mode
    try:
        with open(tmp, "xb") as fh:
            torch.save(blob, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _head_rebuild(path: Path) -> str:
    return f"Rebuild it with: python -m src.jobs.ctc_head --out {path}"


def _lens_rebuild(path: Path) -> str:
    stem = path.stem[: -len("_tuned_lens")] if path.stem.endswith("_tuned_lens") else path.stem
    head = path.with_name(stem + ".pt")
    return (f"Rebuild it with: python -m src.jobs.ctc_head --measure --out {head} (writes {head.stem}_tuned_lens.pt "
            "beside the head)")  # fmt: skip


def _load_checkpoint(path: Path, what: str, rebuild: str):
    """The plain contents of a file this module wrote (:func:`src.fileutil.load_plain_checkpoint`). Any failure
    is a CTCHeadError naming the file, saying it is damaged or not a checkpoint of this project and how to
    rebuild it; torch's own text (which advises ``weights_only=False``) is not repeated."""
    from src.fileutil import UnreadableCheckpoint, load_plain_checkpoint

    try:
        return load_plain_checkpoint(path)
    except UnreadableCheckpoint as e:
        kind = e.kind
    raise CTCHeadError(
        f"{path} is not a readable {what} file: it is damaged (truncated or overwritten) or not a checkpoint "
        f"of this project ({kind}). {rebuild}"
    )


def applies_norm(head: CTCHead, layer: str | int | None) -> bool:
    """Whether the final norm goes between a state and ``head``: when the head reads normalised
    states and the state is not the stored ``final_norm`` state itself (normalised already)."""
    return head.norm == "final_norm" and str(layer) != "final_norm"


def lens_log_probs(head: CTCHead, h: Tensor, layer: str | int | None = None, norm_module: nn.Module | None = None,
                   tuned: TunedLens | None = None) -> Tensor:  # fmt: skip
    """``(..., T, D)`` states of ``layer`` -> ``(..., T, V)`` log-probs of the (tuned) lens.

    plain: ``head(norm(h))``; tuned: ``head(norm(tuned.translate(h, layer)))``; the norm is
    skipped for the ``final_norm`` state and for heads with ``norm="none"``.
    """
    if tuned is not None:
        h = tuned.translate(h, layer)
    if applies_norm(head, layer):
        if norm_module is None:
            raise CTCHeadError(f"the CTC head reads states through the backbone's final norm (trained on "
                               f"{head.backbone} state {head.layer}); pass norm_module=backbone.final_norm_module() "
                               f"to read state {layer}")  # fmt: skip
        h = norm_module(h.float())
    return head(h)


# ----------------------------------------------------------------------------- PER


@torch.no_grad()
def ctc_decode(head: CTCHead, states: Sequence, norm_module: nn.Module | None = None,
               transform: Callable[[Tensor], Tensor] | None = None) -> list[list[str]]:  # fmt: skip
    """Greedy phone sequences of ``states`` (list of ``(T, D)``): ``head(norm(transform(h)))``.

    ``norm_module`` and ``transform`` (e.g. ``lambda h: tuned.translate(h, k)``) are applied
    only when given; the caller decides (see `applies_norm`).
    """
    head.eval()
    out = []
    for s in states:
        h = torch.as_tensor(
            np.asarray(s, dtype=np.float32) if not isinstance(s, Tensor) else s
        ).float()  # (T, D)
        if transform is not None:
            h = transform(h)
        if norm_module is not None:
            h = norm_module(h)
        out.append(head.tokens(greedy_ids(head(h), head.blank)))
    return out


def ctc_per(head: CTCHead, states: Sequence, references: Sequence[Sequence[str]], norm_module: nn.Module | None = None,
            transform: Callable[[Tensor], Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-utterance ``(edits, reference lengths)`` (int64 arrays) of greedy CTC decoding.

    PER = ``edits.sum() / lengths.sum()``; intervals by `bootstrap_from_sums` over groups.
    """
    from src.functional.text import edit_counts

    if len(states) != len(references):
        raise ValueError(f"{len(states)} state arrays for {len(references)} references")
    hyps = ctc_decode(head, states, norm_module, transform)
    pairs = [edit_counts(list(r), h) for r, h in zip(references, hyps)]
    edits = np.array([e for e, _ in pairs], dtype=np.int64)
    lengths = np.array([n for _, n in pairs], dtype=np.int64)
    return edits, lengths


# ----------------------------------------------------------------------------- data from the cache


def resolve_states(acts, spec) -> list[int]:
    """Cache state indices of a layer spec (`src.layers.resolve_layers`); ``"every"`` = every
    stored state (residual ones and named extras such as ``final_norm``)."""
    from src.layers import resolve_for

    return resolve_for(acts, spec, what="layers", every=True)


def _state_index(acts, layer) -> int:
    if hasattr(acts, "layer_index"):
        return acts.layer_index(layer)
    return int(layer)


def _state_name(acts, k: int) -> str:
    names = getattr(acts, "layer_names", None)
    return str(names[k]) if names is not None else str(k)


def _backbone_id(acts) -> str:
    fp = (getattr(acts, "meta", None) or {}).get("backbone_fingerprint")
    name = str(getattr(acts, "backbone", "") or "")
    return f"{name}@{fp}" if fp else name


def _cache_rows(acts, corpus, idx: np.ndarray) -> np.ndarray:
    """Cache utterance positions of corpus utterances ``idx`` (matched by id)."""
    ids = corpus.ids
    return np.array([acts.index_of(ids[int(i)]) for i in idx], dtype=np.int64)


def _default_splits(corpus, seed: int) -> dict[str, np.ndarray]:
    from src.datamodules.splits import split_utterances

    return split_utterances(corpus, by="text", seed=seed)


def _frames_of(acts, states: Sequence[int], rows: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Frames of cache utterances ``rows`` at ``states``: ``(N, K, D)`` in the cache dtype, and per-utterance starts."""
    lengths = acts.lengths[rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    sel = (
        np.concatenate([np.arange(acts.offsets[r], acts.offsets[r] + acts.lengths[r]) for r in rows])
        if len(rows)
        else np.zeros(0, np.int64)
    )
    first = np.asarray(acts.layer(states[0]))
    out = np.empty((len(sel), len(states), first.shape[1]), dtype=first.dtype)  # (N, K, D)
    for j, k in enumerate(states):
        out[:, j] = np.asarray(acts.layer(k))[sel]
    return torch.from_numpy(out), starts


class _SequenceSet(torch.utils.data.Dataset):
    """Utterances as ``(x (T, K, D), target ids)``."""

    def __init__(self, x: Tensor, starts: np.ndarray, lengths: np.ndarray, targets: list[list[int]]) -> None:
        self.x, self.starts, self.lengths, self.targets = x, starts, lengths, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        s = int(self.starts[i])
        return self.x[s : s + int(self.lengths[i])], self.targets[i]


def _collate(items):
    xs, ys = zip(*items)
    T = max(x.shape[0] for x in xs)
    x = torch.zeros(len(xs), T, *xs[0].shape[1:], dtype=torch.float32)  # (B, T, K, D)
    for i, xi in enumerate(xs):
        x[i, : xi.shape[0]] = xi.float()
    xlen = torch.tensor([xi.shape[0] for xi in xs], dtype=torch.long)
    ylen = torch.tensor([len(y) for y in ys], dtype=torch.long)
    y = torch.zeros(len(ys), max(1, int(ylen.max())), dtype=torch.long)  # (B, S)
    for i, yi in enumerate(ys):
        y[i, : len(yi)] = torch.tensor(yi, dtype=torch.long)
    return x, xlen, y, ylen


def _standardization(x: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per state and dimension mean and std of ``x (N, K, D)`` (float64 sums): ``(K, D)`` each."""
    s = torch.zeros(x.shape[1:], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].double()
        s += c.sum(0)
        ss += (c * c).sum(0)
    n = max(1, len(x))
    mu = s / n
    sd = (ss / n - mu**2).clamp_min(0).sqrt()
    return mu.float(), sd.clamp_min(1e-6).float()


def _check_finite(x: Tensor, names: Sequence[str], what: str) -> None:
    bad = [names[j] for j in range(x.shape[1]) if not bool(torch.isfinite(x[:, j]).all())]
    if bad:
        raise ValueError(f"non-finite values (inf/NaN) in the {what} of states {bad}; rebuild the cache with "
                         "cache.dtype=float32 or leave these states out")  # fmt: skip


def _trainer(max_epochs: int, callbacks: list, trainer_kwargs: dict | None, desc: str = "CTC head training"):
    import lightning as L

    from src.progress import lightning_callback

    kw = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)  # fmt: skip
    kw.update(trainer_kwargs or {})
    kw["callbacks"] = list(kw.get("callbacks") or []) + callbacks + [lightning_callback(desc)]
    return L.Trainer(**kw)


def _make_module_class():
    """The Lightning modules (built on first use: Lightning is imported only by training)."""
    import lightning as L

    from src.probes.base import PerHeadMean, batched_linear_init, head_generators

    class PerHeadStopping(L.Callback):
        """Stop when no head's validation loss improved for ``patience`` epochs."""

        def __init__(self, patience: int) -> None:
            self.patience, self.best, self.since = int(patience), None, 0

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            loss = pl_module.validation_loss_per_head().double()
            if self.best is None:
                self.best = torch.full_like(loss, float("inf"))
            better = loss < self.best
            self.best = torch.where(better, loss, self.best)
            self.since = 0 if bool(better.any()) else self.since + 1
            if self.since >= self.patience:
                trainer.should_stop = True

    class PerHeadSteps(L.LightningModule):
        """Training and validation steps shared by the stacked modules: the loss is the sum over heads of
        each head's mean ``per_item_loss`` (B, K), so heads do not interact; validation keeps each head's
        mean (``validation_loss_per_head``) for per-head early stopping."""

        metric = "loss"

        def training_step(self, batch, batch_idx):
            per = self.per_item_loss(batch)  # (B, K)
            loss = per.mean(0).sum()  # sum over heads of each head's mean loss
            self.log(f"train/{self.metric}", loss / self.num_heads, on_step=False, on_epoch=True, batch_size=len(per))
            return loss

        def on_validation_epoch_start(self) -> None:
            self.val_head_loss.reset()

        def validation_step(self, batch, batch_idx):
            per = self.per_item_loss(batch)
            self.val_head_loss.update(per)
            self.log(f"val/{self.metric}", per.mean(), on_epoch=True, batch_size=len(per))

        def validation_loss_per_head(self) -> Tensor:
            return self.val_head_loss.compute().detach().cpu().reshape(-1)

    class StackedHeads(PerHeadSteps):
        """K independent heads, one per state; head_parameters() stacked ``(K, ...)`` for the keep-best callback."""

        def __init__(self, num_heads: int, dim: int, num_outputs: int, hidden: int, layer_ids: Sequence[int],
                     seed: int, lr: float, weight_decay: float) -> None:  # fmt: skip
            super().__init__()
            self.num_heads, self.hidden, self.lr, self.weight_decay = num_heads, hidden, lr, weight_decay
            gens = head_generators(seed, list(layer_ids))
            if hidden:
                self.w1, self.b1 = batched_linear_init(num_heads, dim, hidden, gens)
                self.w2, self.b2 = batched_linear_init(num_heads, hidden, num_outputs, gens)
            else:
                self.w2, self.b2 = batched_linear_init(num_heads, dim, num_outputs, gens)
            self.register_buffer("mu", torch.zeros(num_heads, dim))
            self.register_buffer("sigma", torch.ones(num_heads, dim))
            self.val_head_loss = PerHeadMean(num_heads)
            self.best_epochs: list[int] | None = None

        def head_parameters(self) -> dict[str, nn.Parameter]:
            return dict(self.named_parameters())

        def forward(self, x: Tensor) -> Tensor:  # (B, T, K, D) -> (B, T, K, V) log-probs
            z = (x - self.mu) / self.sigma  # (B, T, K, D)
            if self.hidden:
                z = F.gelu(torch.einsum("btkd,kdh->btkh", z, self.w1) + self.b1)  # (B, T, K, H)
            return torch.log_softmax(torch.einsum("btkd,kdv->btkv", z, self.w2) + self.b2, dim=-1)

        def per_item_loss(self, batch) -> Tensor:  # (B, K): CTC loss per target phone
            x, xlen, y, ylen = batch
            lp = self(x)  # (B, T, K, V)
            B, T, K, V = lp.shape
            lp = lp.permute(1, 0, 2, 3).reshape(T, B * K, V)  # (T, B*K, V), item b head k at b*K + k
            loss = F.ctc_loss(
                lp,
                y.repeat_interleave(K, 0),
                xlen.repeat_interleave(K),
                ylen.repeat_interleave(K),
                blank=0,
                reduction="none",
                zero_infinity=True,
            )  # (B*K,)
            return loss.reshape(B, K) / ylen.clamp_min(1).unsqueeze(1).to(loss.dtype)  # (B, K)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    class StackedTranslators(PerHeadSteps):
        """The tuned lens's translators for K layers, trained on frames: per-head mean KL(p_final || p_k)."""

        metric = "kl"

        def __init__(self, lens: TunedLens, head: CTCHead, norm: nn.Module | None, norm_mask: Sequence[bool],
                     lr: float, weight_decay: float) -> None:  # fmt: skip
            super().__init__()
            self.lens, self.lr, self.weight_decay = lens, lr, weight_decay
            self.head = copy.deepcopy(head).float().eval().requires_grad_(False)
            self.norm = None if norm is None else copy.deepcopy(norm).float().eval().requires_grad_(False)
            self.norm_mask = [bool(m) for m in norm_mask]
            self.num_heads = len(lens.layers)
            self.val_head_loss = PerHeadMean(self.num_heads)
            self.best_epochs: list[int] | None = None

        def head_parameters(self) -> dict[str, nn.Parameter]:
            return {"lens.weight": self.lens.weight, "lens.bias": self.lens.bias}

        def forward(self, x: Tensor) -> Tensor:  # (B, K, D) -> (B, K, V) log-probs of the tuned lens
            z = self.lens.translate_all(x)  # (B, K, D)
            if self.norm is not None and any(self.norm_mask):
                normed = self.norm(z)  # (B, K, D): LayerNorm acts on the last dim only
                mask = torch.tensor(self.norm_mask, device=z.device).view(1, -1, 1)
                z = torch.where(mask, normed, z)
            return self.head(z)

        def per_item_loss(self, batch) -> Tensor:  # (B, K)
            x, logp_final = batch  # (B, K, D), (B, V)
            return kl_divergence(logp_final.unsqueeze(1), self(x.float()))

        def configure_optimizers(self):
            return torch.optim.AdamW(
                [self.lens.weight, self.lens.bias], lr=self.lr, weight_decay=self.weight_decay
            )

    return StackedHeads, StackedTranslators, PerHeadStopping


_CLASSES = None


def _classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _make_module_class()
    return _CLASSES


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p || q)`` over the last dimension from log-probabilities (broadcast): ``sum p (log p - log q)``."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1)


# ----------------------------------------------------------------------------- training


def _prepare_targets(corpus, idx: np.ndarray, vocab: list[str], tier: str, seqs=None) -> list[list[int]]:
    seqs = phone_sequences(corpus, tier) if seqs is None else seqs
    pos = {p: i for i, p in enumerate(vocab)}
    out = []
    for i in idx:
        unknown = sorted({p for p in seqs[int(i)] if p not in pos})
        if unknown:
            raise CTCHeadError(f"utterance {corpus.ids[int(i)]!r} has phones {unknown} outside the head's vocabulary "
                               f"({len(vocab) - 1} phones: {vocab[1:]})")  # fmt: skip
        out.append([pos[p] for p in seqs[int(i)]])
    return out


def export_head(
    module, j: int, vocab: Sequence[str], norm: str = "none", layer: str = "", backbone: str = ""
) -> CTCHead:
    """Head ``j`` of a stacked training module as a stand-alone `CTCHead` (same outputs)."""
    dim, hidden = module.mu.shape[1], module.hidden
    head = CTCHead(dim, vocab, hidden=hidden, norm=norm, layer=layer, backbone=backbone)
    with torch.no_grad():
        head.mu.copy_(module.mu[j])
        head.sigma.copy_(module.sigma[j])
        head.out.weight.copy_(module.w2[j].T)
        head.out.bias.copy_(module.b2[j])
        if hidden:
            head.inner.weight.copy_(module.w1[j].T)
            head.inner.bias.copy_(module.b1[j])
    return head.eval()


def train_ctc_probes(
    acts,
    corpus,
    layers,
    splits: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    max_epochs: int = 300,
    hidden: int = 0,
    trainer_kwargs: dict | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 8,
    patience: int = 30,
    norm: str = "none",
    vocab: Sequence[str] | None = None,
    tier: str = "phones",
    standardize: bool = True,
) -> dict[str, CTCHead]:
    """A CTC head on each state of ``layers`` (a layer spec), all trained in one pass.

    Returns ``{state name: CTCHead}`` (names as in ``acts.layer_names``: ``"0"``, ...,
    ``"final_norm"``); each head carries ``head.metrics`` (best epoch, its validation loss,
    utterance counts, skipped utterances). ``splits`` are corpus utterance indices
    (default: `split_utterances` by text with ``seed``); heads are fitted on ``train`` and
    early-stopped on ``val``. ``norm`` is recorded on the heads (``none`` for probes: they read
    the raw state). Each head depends only on (seed, state index) and the data, not on the
    other states in the run.
    """
    import lightning as L

    from src.probes.pipeline import keep_best_callback

    spec = layers
    states = resolve_states(acts, spec)
    names = [_state_name(acts, k) for k in states]
    splits = _default_splits(corpus, seed) if splits is None else splits
    seqs = phone_sequences(corpus, tier)
    vocab = build_vocab(seqs) if vocab is None else list(vocab)
    counts: dict = {}
    data = {}
    for split in ("train", "val"):
        idx = np.asarray(splits[split], dtype=np.int64)
        rows = _cache_rows(acts, corpus, idx)
        targets = _prepare_targets(corpus, idx, vocab, tier, seqs)
        empty = np.array([len(t) == 0 for t in targets], bool)
        ok = np.array([len(t) > 0 and ctc_min_frames(t) <= int(acts.lengths[r]) for t, r in zip(targets, rows)], bool)
        counts[f"{split}_utterances"] = int(ok.sum())
        counts[f"{split}_skipped_empty"] = int(empty.sum())
        counts[f"{split}_skipped_too_short"] = int((~ok & ~empty).sum())
        if empty.any():
            ex = [corpus.ids[int(i)] for i in idx[empty][:3]]
            log.warning("CTC heads: %d of %d %s utterances have an empty %r tier (no phone left after the label "
                        "normalisation drops silences) and are skipped, e.g. %s", int(empty.sum()), len(idx), split,
                        tier, ex)  # fmt: skip
        if not ok.any():
            raise CTCHeadError(f"no {split} utterance has a phone sequence that fits its frames "
                               f"({len(idx)} utterances in the split: {int(empty.sum())} with an empty {tier!r} "
                               f"tier, {counts[f'{split}_skipped_too_short']} too short)")  # fmt: skip
        rows, targets = rows[ok], [t for t, k in zip(targets, ok) if k]
        x, starts = _frames_of(acts, states, rows)
        _check_finite(x, names, f"{split} states")
        data[split] = _SequenceSet(x, starts, acts.lengths[rows], targets)
    StackedHeads, _, PerHeadStopping = _classes()
    L.seed_everything(seed, workers=True, verbose=False)
    module = StackedHeads(
        len(states), int(acts.hidden_size), len(vocab), hidden, states, seed, lr, weight_decay
    )
    if standardize:
        mu, sd = _standardization(data["train"].x)
        module.mu.copy_(mu)
        module.sigma.copy_(sd)
    g = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(
        data["train"], batch_size=batch_size, shuffle=True, generator=g, collate_fn=_collate
    )
    val_dl = torch.utils.data.DataLoader(data["val"], batch_size=32, collate_fn=_collate)
    keep = keep_best_callback()
    trainer = _trainer(max_epochs, [keep, PerHeadStopping(patience)], trainer_kwargs)
    trainer.fit(module, train_dl, val_dl)
    best = keep.best_loss if keep.best_loss is not None else torch.full((len(states),), float("nan"))
    heads = {}
    for j, (k, name) in enumerate(zip(states, names)):
        head = export_head(module, j, vocab, norm=norm, layer=name, backbone=_backbone_id(acts))
        head.metrics = {**counts, "state_index": int(k), "best_epoch": int((module.best_epochs or [-1] * len(states))[j]),
                        "val_loss": float(best[j]), "epochs_run": int(trainer.current_epoch), "seed": int(seed),
                        "hidden": int(hidden), "lr": float(lr)}  # fmt: skip
        heads[name] = head.eval()
    return heads


def train_ctc_head(
    acts,
    corpus,
    layer: str | int = "final_norm",
    splits: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    max_epochs: int = 300,
    hidden: int = 0,
    trainer_kwargs: dict | None = None,
    **kw,
) -> tuple[CTCHead, dict]:
    """Train the CTC head on one cache state (default ``final_norm``): ``(head, metrics)``.

    ``head.norm`` is ``final_norm`` when trained on the ``final_norm`` state (a lens reads
    layer k as ``head(final_norm(h_k))``), else ``none``. Same training as `train_ctc_probes`
    (so the head equals the probe of that state); ``kw`` goes there (lr, batch_size, patience, ...).
    """
    k = _state_index(acts, layer)
    name = _state_name(acts, k)
    kw.setdefault("norm", "final_norm" if name == "final_norm" else "none")
    heads = train_ctc_probes(acts, corpus, [name], splits=splits, seed=seed, max_epochs=max_epochs, hidden=hidden,
                             trainer_kwargs=trainer_kwargs, **kw)  # fmt: skip
    head = heads[name]
    return head, dict(head.metrics)


def train_tuned_lens(
    acts,
    corpus,
    head: CTCHead,
    layers,
    backbone_final_norm: nn.Module | None = None,
    splits: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    max_epochs: int = 100,
    trainer_kwargs: dict | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 512,
    patience: int = 10,
    final_layer: str | int | None = None,
) -> tuple[TunedLens, dict]:
    """Train one translator per layer of ``layers`` to minimise ``KL(p_final || p_k)`` per frame.

    ``p_final = head(state final_layer)`` (default: the state the head was trained on, e.g.
    ``final_norm``, read without a further norm); ``p_k = head(norm(h_k + A_k h_k + b_k))`` with
    ``norm = backbone_final_norm`` (frozen) when ``head.norm == "final_norm"`` (not for the
    ``final_norm`` state itself). Frames of the ``train`` split, early stopping and each
    translator's best epoch on ``val``. Returns ``(TunedLens, metrics)`` with per-layer
    ``kl_val_init`` (the plain lens) and ``kl_val`` (best).
    """
    import lightning as L

    from src.probes.pipeline import keep_best_callback

    states = resolve_states(acts, layers)
    names = [_state_name(acts, k) for k in states]
    norm_mask = [applies_norm(head, n) for n in names]
    if any(norm_mask) and backbone_final_norm is None:
        raise CTCHeadError(f"the CTC head reads states through the backbone's final norm ({head.backbone}); pass "
                           "backbone_final_norm=backbone.final_norm_module() to train a tuned lens on states "
                           f"{[n for n, m in zip(names, norm_mask) if m]}")  # fmt: skip
    final = _state_index(acts, head.layer if final_layer is None else final_layer)
    splits = _default_splits(corpus, seed) if splits is None else splits
    head = copy.deepcopy(head).float().eval()
    data, counts = {}, {}
    for split in ("train", "val"):
        rows = _cache_rows(acts, corpus, np.asarray(splits[split], dtype=np.int64))
        x, _ = _frames_of(acts, states, rows)  # (N, K, D)
        xf, _ = _frames_of(acts, [final], rows)  # (N, 1, D)
        _check_finite(x, names, f"{split} states")
        with torch.no_grad():
            logp = torch.cat([head(xf[i : i + 8192, 0].float()) for i in range(0, len(xf), 8192)])  # (N, V)
        data[split] = torch.utils.data.TensorDataset(x, logp)
        counts[f"{split}_frames"] = len(x)
    _, StackedTranslators, PerHeadStopping = _classes()
    L.seed_everything(seed, workers=True, verbose=False)
    lens = TunedLens(int(acts.hidden_size), names)
    module = StackedTranslators(lens, head, backbone_final_norm, norm_mask, lr, weight_decay)
    init = _mean_kl(module, data["val"])
    g = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(data["train"], batch_size=batch_size, shuffle=True, generator=g)
    val_dl = torch.utils.data.DataLoader(data["val"], batch_size=4096)
    keep = keep_best_callback()
    trainer = _trainer(max_epochs, [keep, PerHeadStopping(patience)], trainer_kwargs, desc="tuned lens training")
    trainer.fit(module, train_dl, val_dl)
    lens = module.lens.eval()
    final_kl = _mean_kl(module, data["val"])
    lens.metrics = {**counts, "layers": names, "kl_val_init": init.tolist(), "kl_val": final_kl.tolist(),
                    "best_epoch": list(module.best_epochs or [-1] * len(names)), "epochs_run": int(trainer.current_epoch),
                    "final_state": _state_name(acts, final), "seed": int(seed), "lr": float(lr)}  # fmt: skip
    return lens, dict(lens.metrics)


@torch.no_grad()
def _mean_kl(module, ds) -> np.ndarray:
    x, logp = ds.tensors
    tot = torch.zeros(module.num_heads, dtype=torch.float64)
    for i in range(0, len(x), 4096):
        tot += module.per_item_loss((x[i : i + 4096], logp[i : i + 4096])).double().sum(0)
    return (tot / max(1, len(x))).numpy()


# ----------------------------------------------------------------------------- measuring on a cache


def utterance_states(acts, corpus, idx: np.ndarray, layer) -> list[np.ndarray]:
    """``(T, D)`` float32 frames of corpus utterances ``idx`` at one state."""
    rows = _cache_rows(acts, corpus, idx)
    arr = acts.layer(_state_index(acts, layer))
    return [
        np.asarray(arr[acts.offsets[r] : acts.offsets[r] + acts.lengths[r]], dtype=np.float32) for r in rows
    ]


def per_table(acts, corpus, head: CTCHead, idx: np.ndarray, layers, norm_module: nn.Module | None = None,
              tuned: TunedLens | None = None, probes: dict[str, CTCHead] | None = None,
              n_boot: int = 1000, seed: int = 0) -> list[dict]:  # fmt: skip
    """Rows ``(layer, lens, metric="per", value, ci_low, ci_high, n_units)`` on utterances ``idx``
    for the plain lens, the tuned lens (if given) and the probes (if given); intervals by a text-group bootstrap."""
    from src.datamodules.splits import group_keys
    from src.functional.intervals import ratio_of_sums_ci

    states = resolve_states(acts, layers)
    seqs = phone_sequences(corpus)
    refs = [seqs[int(i)] for i in idx]
    groups = group_keys(corpus, "text", np.asarray(idx))
    rows = []
    for k in states:
        name = _state_name(acts, k)
        hs = utterance_states(acts, corpus, idx, k)
        norm = norm_module if applies_norm(head, name) else None
        runs = [("ctc_lens", head, norm, None)]
        if tuned is not None and name in tuned.layers:
            runs.append(("tuned_lens", head, norm, lambda h, n=name: tuned.translate(h, n)))
        if probes is not None and name in probes:
            runs.append(("ctc_probe", probes[name], None, None))
        for lens, h_, nm, tr in runs:
            e, n = ctc_per(h_, hs, refs, nm, tr)
            ci = ratio_of_sums_ci(e, n, groups, n_boot=n_boot, seed=seed, min_denominator=1)
            rows.append({"layer": name, "lens": lens, "metric": "per", "value": float(e.sum() / max(1, n.sum())),
                         "ci_low": float(ci.low), "ci_high": float(ci.high),
                         "n_units": int(len(set(groups.tolist())))})  # fmt: skip
    return rows

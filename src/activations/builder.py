"""Building an activation cache: ``ActivationCache`` runs the backbone once per corpus (a Lightning ``predict``
loop with a writer callback, so it shards across GPUs and nodes), writes every stored state in that pass, and
opens the result as :class:`src.activations.reader.Activations`.

Values (checked at extraction, on the float32 output of the model, before any cast):

- a non-finite value (inf / nan) in any stored state is a ``CacheError`` naming the layer
  and the utterance: the model is broken, no dtype gives a good number;
- with ``dtype=float16``, ``|x| > 65504`` (the float16 range) is a ``CacheError`` naming the
  layer, the utterance and the abs-max, saying to use ``cache.dtype=float32``.  There is no
  silent fallback: the dtype is part of the cache key, and a cache that is float16 for some
  corpora and float32 for others would be a surprise;
- ``meta["layer_stats"]`` records per state the min / max / abs-max of the float32 values.

A build that fails on values removes its ``.partial`` directory (it fails the same way
when run again); nothing is ever renamed into place unless complete.

Atomicity: a build writes into ``<dir>.partial`` and renames it into place only when every
utterance is written and ``meta.json`` says ``complete``; a reader only ever opens the
final name, so a partial cache is never read.  A file lock (``<dir>.lock``, fcntl) lets
parallel multirun jobs share one build: the first builds, the others wait and open it.
A killed build resumes: ``done.npy`` records the utterances whose frames were flushed
(layers and value statistics are flushed before ``done.npy`` is replaced), so a restart
extracts only the rest.

Space: frame offsets are known before extraction (``backbone.num_frames`` is
deterministic), so the size is known: a build checks the free space of the target file
system first (``CacheError`` with GB needed / free and the path), then reserves every
layer file with ``posix_fallocate`` (where the file system supports it), so a full disk is
an error before extraction, never a SIGBUS during a memory-mapped write.  A missing cache
under a read-only root is an error that says so and how to build elsewhere.

The layout, the checksums and what a reader verifies are in src/activations/reader.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# reader.CACHE_FORMAT and reader.CHECKSUM_BLOCK(S) are read through the module: one value for building and reading
from src.activations import reader
from src.activations.reader import (
    VERIFY,
    Activations,
    CacheError,
    _npy_header,
    backbone_layer_names,
    full_sha256,
    sampled_sha256,
)
from src.backbones.base import SpeechBackbone
from src.datamodules.corpus import Corpus
from src.distributed import rank_and_world as _rank_and_world  # module name: tests patch it
from src.fileutil import atomic_write, file_lock
from src.layers import LAYER_CONVENTION, default_layer_names

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


class _UtteranceDataset(torch.utils.data.Dataset):
    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int):
        return i, torch.from_numpy(self.corpus[i].audio)  # lengths were checked in _plan; the writer checks frames


class _FixedBatches(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches, sharded by rank when run under DDP
    (rank r takes batches r, r + W, ...; every rank writes its frames in place).

    With fewer batches than ranks, a rank left without one runs the last batch again and
    writes nothing (Lightning refuses an empty loader on any rank; see ``CacheWriter``)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def _mine(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        mine = self.batches[rank::world]
        return mine if mine or not self.batches else [self.batches[-1]]

    def __iter__(self):
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def _collate(items):
    return [i for i, _ in items], [a for _, a in items]


def plan_batches(indices: Sequence[int], num_samples: Sequence[int], batch_size: int, padding_safe: bool) -> list[list[int]]:
    """Batches sorted by length; when padding is not safe only equal-length utterances share a batch."""
    order = sorted(indices, key=lambda i: (num_samples[i], i))
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (padding_safe or num_samples[batches[-1][0]] == num_samples[i])
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class CacheValueError(CacheError):
    """The model gave values the cache cannot store faithfully (non-finite, or beyond float16)."""


def check_values(hidden: torch.Tensor, lengths, ids: Sequence[str], names: Sequence[str], dtype: np.dtype):
    """Per-item min / max of every state over its valid frames, ``(S, B)`` each, float32.

    Raises CacheValueError naming the state and the utterance on a non-finite value, or on
    ``|x| > 65504`` when storing float16.  NaN and inf propagate through min/max, so one
    pass finds them.
    """
    S, B = hidden.shape[0], hidden.shape[1]
    mn = np.empty((S, B), np.float32)
    mx = np.empty((S, B), np.float32)
    for b in range(B):
        h = hidden[:, b, : int(lengths[b])].reshape(S, -1).float()
        lo, hi = torch.aminmax(h, dim=1)
        lo, hi = lo.cpu().numpy(), hi.cpu().numpy()
        bad = ~(np.isfinite(lo) & np.isfinite(hi))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = h[k]
            n_nan, n_inf = int(torch.isnan(row).sum()), int(torch.isinf(row).sum())
            raise CacheValueError(
                f"utterance {ids[b]!r}: layer {names[k]} of the model output has {n_nan} NaN and {n_inf} inf "
                f"values (layers affected: {', '.join(names[j] for j in np.flatnonzero(bad))}); the model is "
                "broken for this input (no cache dtype can store it); nothing was cached"
            )
        if dtype == np.float16:
            am = np.maximum(np.abs(lo), np.abs(hi))
            over = am > FLOAT16_MAX
            if over.any():
                k = int(np.flatnonzero(over)[0])
                raise CacheValueError(
                    f"utterance {ids[b]!r}: layer {names[k]} has values up to |x| = {float(am[k]):.6g}, beyond the "
                    f"float16 range ({FLOAT16_MAX:.0f}); use cache.dtype=float32 for this model; nothing was cached"
                )
        mn[:, b], mx[:, b] = lo, hi
    return mn, mx


def _extraction_module(backbone: SpeechBackbone, dtype: np.dtype, ids: Sequence[str], names: Sequence[str]):
    import lightning as L

    class Extraction(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def predict_step(self, batch, batch_idx):
            idx, waves = batch
            enc = self.backbone.encode(waves)
            hidden = enc.hidden  # (S, B, T, D), float32 as the model computed it
            if hidden.shape[0] != len(names):
                raise CacheError(
                    f"{backbone.name} returned {hidden.shape[0]} hidden states, its layer_names list "
                    f"{len(names)} ({', '.join(names)})"
                )
            lengths = enc.lengths.cpu().numpy()
            mn, mx = check_values(hidden, lengths, [ids[u] for u in idx], names, dtype)  # before any cast
            out = hidden.to(torch.float16 if dtype == np.float16 else torch.float32)
            return idx, out.cpu().numpy(), lengths, mn, mx

    return Extraction()


def _load_stats(partial: Path, num_states: int) -> np.ndarray:
    """``(S, 2)`` running [min, max] merged over every rank's flushed ``stats*.npy``."""
    stats = np.tile(np.array([np.inf, -np.inf], np.float64), (num_states, 1))
    for f in partial.glob("stats*.npy"):
        if f.name.endswith(".tmp.npy"):
            continue
        s = np.load(f)
        stats[:, 0] = np.minimum(stats[:, 0], s[:, 0])
        stats[:, 1] = np.maximum(stats[:, 1], s[:, 1])
    return stats


def _writer(flush_every: int):
    """The prediction writer of an extraction.  It is created with the trainer (before the
    partial directory may exist, so that every rank knows its rank before anything is
    written) and told what to write by ``configure`` before ``predict``; its files are opened
    when prediction starts."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    class CacheWriter(BasePredictionWriter):
        """Writes each batch's frames in place; flushes layers and stats, then the done bitmap."""

        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.target: tuple | None = None
            self.layers: list[np.ndarray] = []

        def configure(self, partial: Path, offsets: np.ndarray, lengths: np.ndarray, num_states: int,
                      write: bool = True) -> None:  # fmt: skip
            """``write=False``: a rank that only runs another rank's batch (fewer batches than ranks)."""
            self.target, self.write = (partial, offsets, lengths, num_states), write

        def on_predict_start(self, trainer, pl_module) -> None:
            if self.target is None:
                raise CacheError("internal: CacheWriter.configure was not called before predict")
            partial, _, _, num_states = self.target
            self.layers = [np.load(partial / f"layer_{k:02d}.npy", mmap_mode="r+") for k in range(num_states)]
            self.done = np.load(partial / "done.npy")
            self.stats = _load_stats(partial, num_states)
            self.pending = 0
            rank = trainer.global_rank
            suffix = "" if rank == 0 else f"_rank{rank}"
            self.done_file = partial / f"done{suffix}.npy"
            self.stats_file = partial / f"stats{suffix}.npy"

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
            _, offsets, lengths, num_states = self.target
            if not self.write:
                return
            idx, hidden, got, mn, mx = prediction
            for b, u in enumerate(idx):
                if int(got[b]) != int(lengths[u]):
                    raise CacheError(
                        f"utterance #{u}: backbone gave {int(got[b])} frames, expected {int(lengths[u])} "
                        "(num_frames disagrees with the model)"
                    )
                rows = slice(int(offsets[u]), int(offsets[u] + lengths[u]))
                for k in range(num_states):
                    self.layers[k][rows] = hidden[k, b, : lengths[u]]
                self.done[u] = True
            self.stats[:, 0] = np.minimum(self.stats[:, 0], mn.min(axis=1))
            self.stats[:, 1] = np.maximum(self.stats[:, 1], mx.max(axis=1))
            self.pending += 1
            if self.pending >= flush_every:
                self.flush()

        def _save(self, path: Path, arr: np.ndarray) -> None:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)

        def flush(self) -> None:
            for arr in self.layers:
                arr.flush()
            self._save(self.stats_file, self.stats)  # stats cover at least the utterances marked done
            self._save(self.done_file, self.done)
            self.pending = 0

        def on_predict_end(self, trainer, pl_module) -> None:
            self.flush()
            self.layers = []
            trainer.strategy.barrier()  # every rank's frames are flushed before rank 0 finalises

    return CacheWriter()


def _merged_done(partial: Path) -> np.ndarray:
    """Utterances flushed by any rank (``done.npy`` of rank 0, ``done_rank<r>.npy`` of the others)."""
    done = np.load(partial / "done.npy")
    for f in partial.glob("done_rank*.npy"):
        if not f.name.endswith(".tmp.npy"):
            done |= np.load(f)
    return done


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` now (no sparse holes left to fault on a full disk)."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            return  # the file system cannot reserve: the free-space check is all we have
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise CacheError(
                f"no space left to reserve {_gb(size)} for {path} ({_gb(free)} free there); free space or build "
                "the cache elsewhere with paths.cache_dir=... (or cache.root=...)"
            ) from e
        raise
    finally:
        os.close(fd)


_LAUNCH_ID_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID",
                   "TORCHELASTIC_RESTART_COUNT")  # with the rendezvous address: which launch a handshake is for
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class _Layout:
    """Where every utterance's frames go; the same on every rank."""

    partial: Path
    num_samples: np.ndarray  # (U,) samples per utterance
    lengths: np.ndarray  # (U,) frames per utterance
    offsets: np.ndarray  # (U,) first row of each utterance
    names: list[str]  # stored states
    plan: dict  # what a resumable .partial must match


class ActivationCache:
    """Builds (once) and opens activation caches.

    Args:
        root: folder holding caches.
        dtype: ``float16`` (half the disk; values beyond its range are an error) or ``float32``.
        batch_size: utterances per forward pass (models that cannot be padded get equal-length batches only).
        flush_every: batches between durable checkpoints of a build (resume granularity).
        trainer: extra ``lightning.Trainer`` kwargs for extraction (e.g. ``accelerator``, ``devices``).
        progress: report extraction progress (a bar on a terminal, log lines elsewhere: src.progress).
        verify: how opened layer files are checked: ``sampled`` | ``full`` | ``off`` (see Activations).
        wait_timeout: seconds a rank > 0 of a distributed extraction waits for rank 0 (its plan,
            then the finished cache) before a CacheError.
    """

    def __init__(
        self,
        root: str | Path = "cache",
        dtype: str = "float16",
        batch_size: int = 8,
        flush_every: int = 16,
        trainer: dict | None = None,
        progress: bool = True,
        verify: str = "sampled",
        wait_timeout: float = 14400.0,
    ) -> None:
        if dtype not in {"float16", "float32"}:
            raise ValueError(f"cache.dtype must be float16 or float32, got {dtype!r}")
        if verify not in VERIFY:
            raise ValueError(f"cache.verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        self.root = Path(root).expanduser()
        self.dtype = np.dtype(dtype)
        self.batch_size = int(batch_size)
        self.flush_every = int(flush_every)
        self.trainer_kwargs = dict(trainer or {})
        self.progress = progress
        self.verify = verify
        self.wait_timeout = float(wait_timeout)

    def key(self, backbone: SpeechBackbone, corpus: Corpus) -> str:
        blob = json.dumps(
            {"format": reader.CACHE_FORMAT, "backbone": backbone.fingerprint, "corpus": corpus.fingerprint, "dtype": self.dtype.name},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def path_for(self, backbone: SpeechBackbone, corpus: Corpus) -> Path:
        return self.root / f"{backbone.name}__{corpus.name}__{self.key(backbone, corpus)}"

    def get(self, backbone: SpeechBackbone, corpus: Corpus) -> Activations:
        """Open the cache for (backbone, corpus), building it first if it is not complete.

        Single-process extraction (``cache.trainer`` of world size 1, the default): the
        first process takes the lock and builds; parallel jobs wait on the lock, then open.
        Distributed extraction (``cache.trainer={strategy: ddp, devices: N, ...}``, or
        ranks launched by torchrun / srun): see ``_build_rank0`` and ``_join_build``.
        """
        final = self.path_for(backbone, corpus)
        if (final / "meta.json").exists():
            return Activations(final, verify=self.verify)  # no lock, no write: works on read-only storage
        self._check_writable(final)
        trainer = self._extraction_trainer()  # knows its global rank and world size before launching
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        if world == 1:
            with file_lock(final.with_name(final.name + ".lock"), final.name):
                if not (final / "meta.json").exists():  # another job may have built it meanwhile
                    self._refuse_unfinished(final)
                    self._build(backbone, corpus, final, trainer)
        elif rank == 0:
            self._build_rank0(backbone, corpus, final, trainer)
        else:
            self._join_build(backbone, corpus, final, trainer, rank)
        return Activations(final, verify=self.verify)

    # ---------------------------------------------------------------------------------
    def _check_writable(self, final: Path) -> None:
        where = _existing_ancestor(self.root)
        if not os.access(where, os.W_OK):
            raise CacheError(
                f"no complete activation cache at {final}, and it cannot be built there: {where} is read-only. "
                "Build it in a writable place with paths.cache_dir=/writable/dir (or cache.root=/writable/dir), "
                "or copy a complete cache to that name"
            )

    @staticmethod
    def _refuse_unfinished(final: Path) -> None:
        if final.exists():
            raise CacheError(
                f"{final} exists but is not a complete activation cache (no meta.json); delete the "
                "directory and rebuild it"
            )

    def _check_space(self, final: Path, need: int) -> None:
        where = _existing_ancestor(final.parent)
        free = shutil.disk_usage(where).free
        if need > free:
            raise CacheError(
                f"not enough disk space for activation cache {final.name}: it needs {_gb(need)} in {where}, "
                f"{_gb(free)} are free there. Free space, build elsewhere with paths.cache_dir=... "
                f"(or cache.root=...){', or use cache.dtype=float16 (half the size)' if self.dtype == np.float32 else ''}"
            )

    def _plan(self, backbone: SpeechBackbone, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """Samples and frames per utterance; errors name the utterance before anything is written."""
        ns = np.array([corpus.num_samples(i) for i in range(len(corpus))], dtype=np.int64)
        ids = corpus.ids
        for i, n in enumerate(ns):
            backbone.check_input(int(n), ids[i])
        nf = np.array([backbone.num_frames(int(n)) for n in ns], dtype=np.int64)
        return ns, nf

    def _extraction_trainer(self):
        """The ``lightning.Trainer`` of an extraction (``cache.trainer`` overrides the CPU defaults).

        Built before anything is written: ``trainer.global_rank`` / ``world_size`` are exact
        from the first moment (Lightning sets them from the launcher's environment)."""
        import lightning as L

        kwargs = dict(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.progress,
            use_distributed_sampler=False,
        )
        kwargs.update(self.trainer_kwargs)
        if "callbacks" in kwargs:
            raise ValueError("cache.trainer.callbacks is not supported: the extraction writer is the only callback")
        kwargs["callbacks"] = [_writer(self.flush_every)]
        if self.progress:  # log lines when stderr is not a terminal (Lightning's bar is unreadable there)
            from src.progress import lightning_callback

            kwargs["callbacks"].append(lightning_callback("extraction"))
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        return L.Trainer(**kwargs)

    def _layout(self, backbone: SpeechBackbone, corpus: Corpus, final: Path) -> _Layout:
        num_samples, lengths = self._plan(backbone, corpus)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        L_, D = int(backbone.num_layers), int(backbone.hidden_size)
        names = backbone_layer_names(backbone)
        if names[:L_] != default_layer_names(L_) or len(set(names)) != len(names):
            raise CacheError(f"{backbone.name}: layer_names {names} must be '0'..'{L_ - 1}' then unique extra names")
        plan = {"format": reader.CACHE_FORMAT, "key": final.name, "total_frames": int(lengths.sum()), "num_layers": L_,
                "layer_names": names, "hidden_size": D, "dtype": self.dtype.name}  # fmt: skip
        return _Layout(final.with_name(final.name + ".partial"), num_samples, lengths, offsets, names, plan)

    def _prepare(self, backbone: SpeechBackbone, corpus: Corpus, final: Path) -> tuple[_Layout, list[list[int]]]:
        """Create (or resume) ``<final>.partial``: reserved layer files, ``done.npy`` merged over
        every rank of earlier attempts, the plan.  Returns the layout and the batches left to do."""
        lay = self._layout(backbone, corpus, final)
        partial, S, D, total = lay.partial, len(lay.names), lay.plan["hidden_size"], lay.plan["total_frames"]
        plan_path = partial / "plan.json"
        if partial.exists() and not (plan_path.exists() and json.loads(plan_path.read_text()) == lay.plan):
            log.warning("discarding an unusable partial cache at %s", partial)
            shutil.rmtree(partial)
        if not partial.exists():
            self._check_space(final, S * (total * D * self.dtype.itemsize + 4096) + 64 * len(corpus) + (1 << 20))
            tmp = final.with_name(final.name + ".partial-new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                for k in range(S):
                    f = tmp / f"layer_{k:02d}.npy"
                    np.lib.format.open_memmap(f, mode="w+", dtype=self.dtype, shape=(total, D))
                    _reserve(f)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            np.save(tmp / "done.npy", np.zeros(len(corpus), dtype=bool))
            (tmp / "plan.json").write_text(json.dumps(lay.plan))
            os.replace(tmp, partial)
        else:
            for k in range(S):
                _reserve(partial / f"layer_{k:02d}.npy")  # a resumed build is reserved too (no-op when it was)
        done = _merged_done(partial)
        np.save(partial / "done.npy", done)
        todo = [i for i in range(len(corpus)) if not done[i]]
        if len(todo) < len(corpus):
            log.info("resuming cache build %s: %d of %d utterances left", final.name, len(todo), len(corpus))
        batches = plan_batches(todo, lay.num_samples, self.batch_size, backbone.padding_safe) if todo else []
        return lay, batches

    def _extract(self, trainer, backbone: SpeechBackbone, corpus: Corpus, lay: _Layout, batches: list[list[int]]) -> None:
        """One ``trainer.predict`` over ``batches`` (sharded by rank under DDP); frames written in place."""
        loader = torch.utils.data.DataLoader(
            _UtteranceDataset(corpus), batch_sampler=_FixedBatches(batches), collate_fn=_collate, num_workers=0
        )
        writer = next(c for c in trainer.callbacks if hasattr(c, "configure"))
        owns = bool(batches[trainer.global_rank :: trainer.world_size])  # else it re-runs another rank's batch
        writer.configure(lay.partial, lay.offsets, lay.lengths, len(lay.names), write=owns)
        log.info("extracting %d states of %s for %d utterances of %s (rank %d of %d)", len(lay.names), backbone.name,
                 sum(map(len, batches)), corpus.name, trainer.global_rank, trainer.world_size)  # fmt: skip
        for cb in trainer.callbacks:
            if type(cb).__name__ == "ProgressLog":
                cb.desc = f"extraction {backbone.name} on {corpus.name}"
        module = _extraction_module(backbone, self.dtype, corpus.ids, lay.names)
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except CacheValueError:
            if trainer.global_rank == 0:  # it would fail the same way again: free the disk
                shutil.rmtree(lay.partial, ignore_errors=True)
            raise

    def _build(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer) -> None:
        """Single-process build (the caller holds the lock)."""
        t0 = time.perf_counter()
        lay, batches = self._prepare(backbone, corpus, final)
        if batches:
            self._extract(trainer, backbone, corpus, lay, batches)
        self._finalise(backbone, corpus, final, lay, t0)

    # distributed extraction ----------------------------------------------------------
    #
    # Lightning's subprocess launcher starts ranks 1..N-1 only inside ``trainer.predict``, by
    # re-running the script; torchrun / srun start every rank at once.  Either way:
    #   rank 0: takes the lock (held until the cache is renamed into place), prepares
    #     ``.partial`` and publishes the batches in ``<final>.ddp.json`` (with a token naming
    #     this launch) BEFORE ``predict``; after ``predict`` (every rank flushed: barrier in the
    #     writer) it finalises, renames, removes the handshake file;
    #   ranks > 0: never touch the lock; wait for the handshake of this launch (or for the
    #     complete cache), join the same ``predict`` (each writes its own batches in place and
    #     its own done/stats files), then wait for ``meta.json`` of the final cache.
    # A failure of rank 0 is published too (state "failed"), so the others stop with its
    # message instead of waiting for the timeout.  After the build every rank destroys the
    # process group: the probe trainer that follows may be single-process, or a DDP trainer
    # that initialises its own.

    @staticmethod
    def _handshake(final: Path) -> Path:
        return final.with_name(final.name + ".ddp.json")

    @staticmethod
    def _token(trainer) -> str:
        env = trainer.strategy.cluster_environment
        parts = [f"{env.main_address}:{env.main_port}", str(trainer.world_size)]
        parts += [os.environ.get(k, "") for k in _LAUNCH_ID_VARS]
        return "|".join(parts)

    def _publish(self, final: Path, **msg) -> None:
        f = self._handshake(final)
        atomic_write(f, json.dumps(msg))

    def _build_rank0(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer) -> None:
        from src.distributed import destroy_process_group

        token = self._token(trainer)  # fixes the port Lightning's launcher hands to the other ranks
        with file_lock(final.with_name(final.name + ".lock"), final.name):
            t0 = time.perf_counter()
            try:
                if (final / "meta.json").exists():  # built by another job meanwhile
                    self._publish(final, token=token, state="complete", batches=[])
                    return
                self._refuse_unfinished(final)
                lay, batches = self._prepare(backbone, corpus, final)
                self._publish(final, token=token, state="predict", batches=batches,
                              total_frames=lay.plan["total_frames"])  # fmt: skip
                if batches:
                    self._extract(trainer, backbone, corpus, lay, batches)
                self._finalise(backbone, corpus, final, lay, t0)
            except BaseException as e:
                self._publish(final, token=token, state="failed", error=f"{type(e).__name__}: {e}", batches=[])
                raise
            finally:
                destroy_process_group()
            self._handshake(final).unlink(missing_ok=True)

    def _wait(self, final: Path, token: str, rank: int, what: str, until) -> dict | None:
        """Poll until ``until(msg)`` is true (``msg``: the handshake of this launch, or None);
        a published failure of rank 0, rank 0's exit (Lightning-launched ranks) or the
        timeout (``cache.wait_timeout``) is a CacheError."""
        f, deadline, parent = self._handshake(final), time.monotonic() + self.wait_timeout, os.getppid()
        lightning_child = "LOCAL_RANK" in os.environ and "RANK" not in os.environ
        while True:
            msg = None
            try:
                got = json.loads(f.read_text())
                msg = got if got.get("token") == token else None
            except (OSError, ValueError):
                pass
            if msg is not None and msg.get("state") == "failed":
                raise CacheError(f"the distributed build of {final.name} failed on rank 0: {msg.get('error')}")
            if until(msg):
                return msg
            if lightning_child and os.getppid() != parent:
                raise CacheError(f"rank 0 exited while this rank waited for {what} of {final.name}")
            if time.monotonic() > deadline:
                raise CacheError(
                    f"rank {rank} waited {self.wait_timeout:.0f} s for {what} of activation cache "
                    f"{final} (handshake file {f}); rank 0 did not get there. Raise cache.wait_timeout if rank 0 "
                    "is waiting for another job's build of the same cache"
                )
            time.sleep(_POLL_SECONDS)

    def _join_build(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, trainer, rank: int) -> None:
        from src.distributed import destroy_process_group

        token = self._token(trainer)
        complete = lambda: (final / "meta.json").exists()  # noqa: E731
        try:
            msg = self._wait(final, token, rank, "rank 0's plan", lambda m: m is not None or complete())
            if msg is not None and msg.get("batches"):
                lay = self._layout(backbone, corpus, final)
                if lay.plan["total_frames"] != msg.get("total_frames"):
                    raise CacheError(
                        f"rank {rank} plans {lay.plan['total_frames']} frames for {final.name}, rank 0 planned "
                        f"{msg.get('total_frames')}: the ranks do not see the same corpus or backbone"
                    )
                self._extract(trainer, backbone, corpus, lay, msg["batches"])
            self._wait(final, token, rank, "the finished cache", lambda m: complete())
        finally:
            destroy_process_group()

    def _finalise(self, backbone: SpeechBackbone, corpus: Corpus, final: Path, lay: _Layout, t0: float) -> None:
        """Index, checksums, meta.json (last), rename into place.  Rank 0 only."""
        partial, names = lay.partial, lay.names
        done = _merged_done(partial)
        if not done.all():
            raise CacheError(f"cache build {partial} ended with {int((~done).sum())} utterances missing")
        stats = _load_stats(partial, len(names))
        np.savez(
            partial / "index.npz",
            ids=np.array(corpus.ids),
            speakers=np.array([corpus.speaker(i) for i in range(len(corpus))]),
            offsets=lay.offsets,
            lengths=lay.lengths,
            num_samples=lay.num_samples,
        )
        files = []
        for k, name in enumerate(names):
            f = partial / f"layer_{k:02d}.npy"
            shape, dt = _npy_header(f)
            files.append({"file": f.name, "name": name, "shape": list(shape), "dtype": dt.str,
                          "bytes": f.stat().st_size, "sha256_sampled": sampled_sha256(f), "sha256": full_sha256(f)})  # fmt: skip
        layer_stats = [
            {"name": name, "min": float(lo), "max": float(hi), "absmax": float(max(abs(lo), abs(hi)))}
            for name, (lo, hi) in zip(names, stats)
        ]
        meta = {
            "format": reader.CACHE_FORMAT,
            "backbone": backbone.name,
            "backbone_fingerprint": backbone.fingerprint,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint,
            "num_layers": lay.plan["num_layers"],
            "layer_names": names,
            "layer_convention": LAYER_CONVENTION,
            "hidden_size": lay.plan["hidden_size"],
            "frame_rate": backbone.frame_rate,
            "frame_offset": backbone.frame_offset,
            "sample_rate": backbone.sample_rate,
            "dtype": self.dtype.name,
            "num_utterances": len(corpus),
            "total_frames": lay.plan["total_frames"],
            "layer_stats": layer_stats,
            "files": files,
            "index_sha256": full_sha256(partial / "index.npz"),
            "checksum": {"algorithm": "sha256", "block_bytes": reader.CHECKSUM_BLOCK, "blocks": reader.CHECKSUM_BLOCKS},
            "build_seconds": round(time.perf_counter() - t0, 3),
            "complete": True,
        }
        for f in [*partial.glob("done*.npy"), *partial.glob("stats*.npy"), partial / "plan.json"]:
            f.unlink(missing_ok=True)
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))  # last file written
        os.replace(partial, final)
        log.info("activation cache ready: %s (%.1f s)", final, meta["build_seconds"])

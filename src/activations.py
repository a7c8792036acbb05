"""The seam of the framework: an on-disk cache of every layer's activations.

The backbone runs once per corpus; every layer is written in that one pass, and every
probe and analysis reads memory-mapped slices of it.

Layout of one cache directory (``<root>/<backbone>__<corpus>__<key>``)::

    meta.json        backbone/corpus names and fingerprints, frame rate/offset, dtype, layers, complete
    index.npz        ids, speakers, offsets, lengths (frames), num_samples, per utterance
    layer_00.npy     (total_frames, D) one array per hidden state, np.lib.format (memmap-able)
    ...

Atomicity: a build writes into ``<dir>.partial`` and renames it into place only when every
utterance is written and ``meta.json`` says ``complete``; a reader only ever opens the
final name, so a partial cache is never read.  A file lock (``<dir>.lock``, fcntl) lets
parallel multirun jobs share one build: the first builds, the others wait and open it.
A killed build resumes: ``done.npy`` records the utterances whose frames were flushed
(layers are flushed before ``done.npy`` is replaced), so a restart extracts only the rest.

Frame offsets are known before extraction (``backbone.num_frames`` is deterministic), so
the arrays are allocated up front and every batch, on any rank, writes in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.backbones.base import SpeechBackbone
from src.datamodules.corpus import Corpus
from src.fileutil import file_lock

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


class CacheError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- reading


class Activations:
    """Read-only views of a complete cache.  Rows of ``layer(i)`` are frames of all
    utterances, concatenated in corpus order; ``offsets``/``lengths`` index them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise CacheError(f"{self.path} is not an activation cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise CacheError(f"activation cache {self.path} is incomplete; rebuild it")
        idx = np.load(self.path / "index.npz", allow_pickle=False)
        self.ids: list[str] = [str(x) for x in idx["ids"]]
        self.speakers: list[str] = [str(x) for x in idx["speakers"]]
        self.offsets: np.ndarray = idx["offsets"].astype(np.int64)
        self.lengths: np.ndarray = idx["lengths"].astype(np.int64)
        self.num_samples: np.ndarray = idx["num_samples"].astype(np.int64)
        self._pos = {u: i for i, u in enumerate(self.ids)}
        self._layers: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path) -> Activations:
        return cls(path)

    # metadata ------------------------------------------------------------------------
    num_layers = property(lambda self: int(self.meta["num_layers"]))
    hidden_size = property(lambda self: int(self.meta["hidden_size"]))
    frame_rate = property(lambda self: float(self.meta["frame_rate"]))
    frame_offset = property(lambda self: float(self.meta["frame_offset"]))
    sample_rate = property(lambda self: int(self.meta["sample_rate"]))
    backbone = property(lambda self: str(self.meta["backbone"]))
    corpus = property(lambda self: str(self.meta["corpus"]))
    total_frames = property(lambda self: int(self.meta["total_frames"]))

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, utt: str | int) -> int:
        if isinstance(utt, (int, np.integer)):
            return int(utt)
        if utt not in self._pos:
            raise KeyError(f"utterance {utt!r} is not in activation cache {self.path}")
        return self._pos[utt]

    # data ----------------------------------------------------------------------------
    def layer(self, i: int) -> np.ndarray:
        """Memory-mapped ``(total_frames, D)`` array of hidden state ``i`` (negative counts from the end)."""
        if i < 0:
            i += self.num_layers
        if not 0 <= i < self.num_layers:
            raise IndexError(f"layer {i} out of range: cache {self.path.name} has {self.num_layers} layers")
        if i not in self._layers:
            self._layers[i] = np.load(self.path / f"layer_{i:02d}.npy", mmap_mode="r")
        return self._layers[i]

    def rows(self, utt: str | int) -> slice:
        u = self.index_of(utt)
        return slice(int(self.offsets[u]), int(self.offsets[u] + self.lengths[u]))

    def frames(self, utt: str | int, layer: int) -> np.ndarray:
        """``(T, D)`` frames of one utterance at one layer."""
        return self.layer(layer)[self.rows(utt)]

    def frame_times(self, utt: str | int) -> np.ndarray:
        """Time (s) each frame of ``utt`` stands for: ``frame_offset + i / frame_rate``."""
        from src.datamodules.alignment import frame_times

        return frame_times(int(self.lengths[self.index_of(utt)]), self.frame_rate, self.frame_offset)

    def __repr__(self) -> str:
        return (
            f"Activations({self.backbone} x {self.corpus}: {len(self)} utterances, {self.total_frames} frames, "
            f"{self.num_layers} layers x {self.hidden_size}, {self.meta['dtype']})"
        )


# ----------------------------------------------------------------------------- building


class _UtteranceDataset(torch.utils.data.Dataset):
    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int):
        return i, torch.from_numpy(self.corpus[i].audio)  # lengths were checked in _plan; the writer checks frames


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _FixedBatches(torch.utils.data.Sampler):
    """A batch sampler over precomputed batches, sharded by rank when run under DDP
    (rank r takes batches r, r + W, ...; every rank writes its frames in place)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def _mine(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        return self.batches[rank::world]

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


def _extraction_module(backbone: SpeechBackbone, dtype: np.dtype):
    import lightning as L

    class Extraction(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def predict_step(self, batch, batch_idx):
            idx, waves = batch
            enc = self.backbone.encode(waves)
            hidden = enc.hidden.to(torch.float16 if dtype == np.float16 else torch.float32)  # (L, B, T, D)
            return idx, hidden.cpu().numpy(), enc.lengths.cpu().numpy()

    return Extraction()


def _writer(partial: Path, offsets: np.ndarray, lengths: np.ndarray, num_layers: int, flush_every: int):
    from lightning.pytorch.callbacks import BasePredictionWriter

    class CacheWriter(BasePredictionWriter):
        """Writes each batch's frames in place; flushes layers, then the done bitmap."""

        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.layers = [np.load(partial / f"layer_{k:02d}.npy", mmap_mode="r+") for k in range(num_layers)]
            self.done = np.load(partial / "done.npy")
            self.pending = 0
            rank, _ = _rank_and_world()
            self.done_file = partial / ("done.npy" if rank == 0 else f"done_rank{rank}.npy")

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
            idx, hidden, got = prediction
            for b, u in enumerate(idx):
                if int(got[b]) != int(lengths[u]):
                    raise CacheError(
                        f"utterance #{u}: backbone gave {int(got[b])} frames, expected {int(lengths[u])} "
                        "(num_frames disagrees with the model)"
                    )
                rows = slice(int(offsets[u]), int(offsets[u] + lengths[u]))
                for k in range(num_layers):
                    self.layers[k][rows] = hidden[k, b, : lengths[u]]
                self.done[u] = True
            self.pending += 1
            if self.pending >= flush_every:
                self.flush()

        def flush(self) -> None:
            for arr in self.layers:
                arr.flush()
            tmp = self.done_file.with_suffix(".tmp.npy")
            np.save(tmp, self.done)
            os.replace(tmp, self.done_file)
            self.pending = 0

        def on_predict_end(self, trainer, pl_module) -> None:
            self.flush()
            trainer.strategy.barrier()  # every rank's frames are flushed before rank 0 finalises

    return CacheWriter()


def _merged_done(partial: Path) -> np.ndarray:
    """Utterances flushed by any rank (``done.npy`` of rank 0, ``done_rank<r>.npy`` of the others)."""
    done = np.load(partial / "done.npy")
    for f in partial.glob("done_rank*.npy"):
        done |= np.load(f)
    return done


class ActivationCache:
    """Builds (once) and opens activation caches.

    Args:
        root: folder holding caches.
        dtype: ``float16`` (half the disk) or ``float32``.
        batch_size: utterances per forward pass (models that cannot be padded get equal-length batches only).
        flush_every: batches between durable checkpoints of a build (resume granularity).
        trainer: extra ``lightning.Trainer`` kwargs for extraction (e.g. ``accelerator``, ``devices``).
        progress: show a progress bar.
    """

    def __init__(
        self,
        root: str | Path = "cache",
        dtype: str = "float16",
        batch_size: int = 8,
        flush_every: int = 16,
        trainer: dict | None = None,
        progress: bool = True,
    ) -> None:
        if dtype not in {"float16", "float32"}:
            raise ValueError(f"cache.dtype must be float16 or float32, got {dtype!r}")
        self.root = Path(root).expanduser()
        self.dtype = np.dtype(dtype)
        self.batch_size = int(batch_size)
        self.flush_every = int(flush_every)
        self.trainer_kwargs = dict(trainer or {})
        self.progress = progress

    def key(self, backbone: SpeechBackbone, corpus: Corpus) -> str:
        blob = json.dumps(
            {"format": CACHE_FORMAT, "backbone": backbone.fingerprint, "corpus": corpus.fingerprint, "dtype": self.dtype.name},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def path_for(self, backbone: SpeechBackbone, corpus: Corpus) -> Path:
        return self.root / f"{backbone.name}__{corpus.name}__{self.key(backbone, corpus)}"

    def get(self, backbone: SpeechBackbone, corpus: Corpus) -> Activations:
        """Open the cache for (backbone, corpus), building it first if it is not complete."""
        final = self.path_for(backbone, corpus)
        if (final / "meta.json").exists():
            return Activations(final)
        with file_lock(final.with_name(final.name + ".lock"), final.name):
            if not (final / "meta.json").exists():  # another job may have built it meanwhile
                self._build(backbone, corpus, final)
        return Activations(final)

    # ---------------------------------------------------------------------------------
    def _plan(self, backbone: SpeechBackbone, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """Samples and frames per utterance; errors name the utterance before anything is written."""
        ns = np.array([corpus.num_samples(i) for i in range(len(corpus))], dtype=np.int64)
        ids = corpus.ids
        for i, n in enumerate(ns):
            backbone.check_input(int(n), ids[i])
        nf = np.array([backbone.num_frames(int(n)) for n in ns], dtype=np.int64)
        return ns, nf

    def _build(self, backbone: SpeechBackbone, corpus: Corpus, final: Path) -> None:
        import lightning as L

        t0 = time.perf_counter()
        partial = final.with_name(final.name + ".partial")
        num_samples, lengths = self._plan(backbone, corpus)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())
        L_, D = backbone.num_layers, backbone.hidden_size
        plan = {"key": final.name, "total_frames": total, "num_layers": L_, "hidden_size": D, "dtype": self.dtype.name}
        plan_path = partial / "plan.json"
        if partial.exists() and not (plan_path.exists() and json.loads(plan_path.read_text()) == plan):
            log.warning("discarding an unusable partial cache at %s", partial)
            shutil.rmtree(partial)
        if not partial.exists():
            tmp = final.with_name(final.name + ".partial-new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for k in range(L_):
                np.lib.format.open_memmap(tmp / f"layer_{k:02d}.npy", mode="w+", dtype=self.dtype, shape=(total, D))
            np.save(tmp / "done.npy", np.zeros(len(corpus), dtype=bool))
            (tmp / "plan.json").write_text(json.dumps(plan))
            os.replace(tmp, partial)
        done = _merged_done(partial)
        np.save(partial / "done.npy", done)
        todo = [i for i in range(len(corpus)) if not done[i]]
        if len(todo) < len(corpus):
            log.info("resuming cache build %s: %d of %d utterances left", final.name, len(todo), len(corpus))

        if todo:
            batches = plan_batches(todo, num_samples, self.batch_size, backbone.padding_safe)
            loader = torch.utils.data.DataLoader(
                _UtteranceDataset(corpus), batch_sampler=_FixedBatches(batches), collate_fn=_collate, num_workers=0
            )
            writer = _writer(partial, offsets, lengths, L_, self.flush_every)
            kwargs = dict(
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=self.progress,
                use_distributed_sampler=False,
                callbacks=[writer],
            )
            kwargs.update(self.trainer_kwargs)
            trainer = L.Trainer(**kwargs)
            warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
            log.info("extracting %d layers of %s for %d utterances of %s", L_, backbone.name, len(todo), corpus.name)
            trainer.predict(_extraction_module(backbone, self.dtype), dataloaders=loader, return_predictions=False)
            if _rank_and_world()[0] != 0:
                return  # under DDP only rank 0 finalises the cache
            done = _merged_done(partial)
            if not done.all():
                raise CacheError(f"cache build {partial} ended with {int((~done).sum())} utterances missing")

        ids = corpus.ids
        np.savez(
            partial / "index.npz",
            ids=np.array(ids),
            speakers=np.array([corpus.speaker(i) for i in range(len(corpus))]),
            offsets=offsets,
            lengths=lengths,
            num_samples=num_samples,
        )
        meta = {
            "format": CACHE_FORMAT,
            "backbone": backbone.name,
            "backbone_fingerprint": backbone.fingerprint,
            "corpus": corpus.name,
            "corpus_fingerprint": corpus.fingerprint,
            "num_layers": L_,
            "hidden_size": D,
            "frame_rate": backbone.frame_rate,
            "frame_offset": backbone.frame_offset,
            "sample_rate": backbone.sample_rate,
            "dtype": self.dtype.name,
            "num_utterances": len(corpus),
            "total_frames": total,
            "build_seconds": round(time.perf_counter() - t0, 3),
            "complete": True,
        }
        for f in [*partial.glob("done*.npy"), partial / "plan.json"]:
            f.unlink(missing_ok=True)
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))  # last file written
        os.replace(partial, final)
        log.info("activation cache ready: %s (%.1f s)", final, meta["build_seconds"])

"""Activation-cache build time vs bare forward passes of the same utterances.

Both sides in one run, on the same utterances and the same batches:
- reference: ``backbone.encode`` on audio already in memory, outputs dropped;
- this project: ``ActivationCache.get`` from scratch (reads the audio, Lightning predict
  loop, writes every layer to memory-mapped arrays, index, meta, atomic rename).

    python bench/extract.py                          # embedded Whisper tiny.en, 16 Festival utterances
    python bench/extract.py --backbone tiny_w2v2 --utterances 64

Last line: ``ratio=<build / bare>`` (target <= 1.10).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import report  # noqa: E402


def make_backbone(name: str, tmp: Path):
    if name == "whisper_tiny_en":
        from src.backbones.whisper import WhisperBackbone

        return WhisperBackbone("embedded:tiny.en", name="whisper_tiny_en")
    if name == "tiny_w2v2":
        from src.backbones.hf import HFBackbone
        from tests.builders import save_tiny_model

        return HFBackbone(str(save_tiny_model(tmp / "tiny", norm="layer", hidden_size=256, num_hidden_layers=6,
                                              intermediate_size=1024, num_attention_heads=4)), name="tiny_w2v2")  # fmt: skip
    if name == "mfcc":
        from src.backbones.features import SpectralBaseline

        return SpectralBaseline("mfcc", deltas=True)
    raise SystemExit(f"unknown backbone {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="whisper_tiny_en", choices=["whisper_tiny_en", "tiny_w2v2", "mfcc"])
    ap.add_argument("--utterances", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default="data/synth", help="a Festival corpus folder (built if missing)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    torch.set_grad_enabled(False)

    import lightning  # noqa: F401  # a one-off import cost of the process, not of a build: paid before timing

    from src.activations import ActivationCache, plan_batches
    from src.datamodules.synth import SynthCorpus

    corpus = SynthCorpus(args.data, max_utterances=args.utterances)
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        bb = make_backbone(args.backbone, tmp)
        audio = [torch.from_numpy(corpus[i].audio) for i in range(len(corpus))]
        ns = [len(a) for a in audio]
        batches = plan_batches(range(len(corpus)), ns, args.batch_size, bb.padding_safe)
        bb.encode([audio[0]])  # warm-up (allocator, lazy inits) for both sides

        t0 = time.perf_counter()
        for b in batches:
            bb.encode([audio[i] for i in b])
        bare = time.perf_counter() - t0

        cache = ActivationCache(tmp / "cache", dtype="float16", batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        acts = cache.get(bb, corpus)
        build = time.perf_counter() - t0
        print(f"{args.backbone}: {len(corpus)} utterances, {acts.total_frames} frames x {acts.num_layers} layers")
        print(f"bare forward passes: {bare:.2f} s   cache build: {build:.2f} s")
        report(ratio=build / bare, bare_s=bare, build_s=build)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

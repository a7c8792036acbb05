"""Benchmark: set-up of the default phones run (everything before the first probe is fitted).

What ``train.py task=phones`` does before training, on a synthetic corpus of ``--utterances``
utterances (no audio: annotations only, as the set-up reads them) and a fake activation index
(offsets, lengths, 50 Hz frames):

- ``validate``: ``task.validate(corpus, controls)`` (tiers present, before extraction);
- ``build``: ``FrameClassification().build(acts, corpus)`` (items and labels; no control types);
- ``build_types``: the same with ``control_types=True`` (what ``controls.selectivity=true`` costs);
- ``split``: ``split_utterances(corpus, by="text")``;
- ``bootstrap_unit``: ``src.probes.pipeline.bootstrap_unit`` (the resampling unit's keys).

Each utterance reads one of 2,000 sentences (about 8 words, 3 phones per word, 0.08 s per
phone, pauses between words) with one of 3 voices; 100 h at 50 Hz is about 18M frames, i.e.
100k utterances of this kind (180 frames each).

Run it against another checkout to compare code versions in the same way (the "before"):

    git archive <rev> | tar -x -C /tmp/old
    .venv/bin/python bench/setup_time.py --utterances 10000 40000 --src /tmp/old
    .venv/bin/python bench/setup_time.py --utterances 10000 40000

``--src`` is the repository root whose ``src`` package is imported (default: this checkout).
Last line: ``t_<step>=<s at the largest size> ... scaling_<step>=<t(largest) / t(smallest)>
size_ratio=<largest / smallest>``; linear work scales like ``size_ratio``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, nargs="+", default=[10_000, 40_000])
    p.add_argument("--src", type=Path, default=ROOT, help="repository root whose src package is benchmarked")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--steps", nargs="+", default=["validate", "build", "build_types", "split", "bootstrap_unit"])
    return p.parse_args()


def make_corpus(n_utts: int, n_sentences: int, seed: int = 0):
    """A synthetic annotation-only corpus and a matching fake activation index (50 Hz)."""
    from src.datamodules.corpus import Corpus, Interval, Utterance

    rng = np.random.default_rng(seed)
    phones = ["aa", "ae", "ah", "b", "d", "eh", "f", "g", "ih", "k", "l", "m", "n", "p", "r", "s", "t", "uw", "v", "z"]
    lexicon = [[phones[j] for j in rng.integers(0, len(phones), 3)] for _ in range(500)]  # 500 words, 3 phones
    sentences = [rng.integers(0, len(lexicon), int(rng.integers(6, 11))) for _ in range(n_sentences)]
    voices = ["kal", "ked", "slt"]
    empty = np.zeros(0, np.float32)

    utts, lengths = [], []
    for u in range(n_utts):
        s = u % n_sentences
        words, ph, t = [], [], 0.1
        for w in sentences[s]:
            w0 = t
            for p in lexicon[w]:
                ph.append(Interval(t, t + 0.08, p))
                t += 0.08
            words.append(Interval(w0, t, f"w{w}"))
            t += 0.05  # a pause: frames in no phone interval
        dur = t + 0.1
        text = " ".join(f"w{w}" for w in sentences[s])
        utts.append(Utterance(f"u{u:06d}", empty, 16000, voices[(u // n_sentences) % 3], text,
                              {"phones": ph, "words": words}))  # fmt: skip
        lengths.append(int(dur * 50))

    class FakeCorpus(Corpus):
        name = "setup_bench"

        def __len__(self) -> int:
            return len(utts)

        def __getitem__(self, i):  # type: ignore[override]
            return utts[i]

        @property
        def ids(self) -> list[str]:
            return [x.id for x in utts]

        def speaker(self, i: int) -> str:
            return utts[i].speaker

    lengths = np.asarray(lengths, dtype=np.int64)

    class FakeActs:
        path = "<synthetic index>"
        frame_rate, frame_offset = 50.0, 0.0
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])

        def __init__(self) -> None:
            self.lengths = lengths
            self.ids = [x.id for x in utts]

        def frame_times(self, u):
            return self.frame_offset + np.arange(int(self.lengths[int(u)]), dtype=np.float64) / self.frame_rate

    return FakeCorpus(), FakeActs()


def time_steps(n_utts: int, n_sentences: int, steps: list[str]) -> dict[str, float]:
    import logging

    from src.datamodules.splits import split_utterances
    from src.datamodules.tasks import FrameClassification
    from src.probes.pipeline import bootstrap_unit

    logging.disable(logging.WARNING)
    corpus, acts = make_corpus(n_utts, n_sentences)
    task = FrameClassification(min_count=20)
    out: dict[str, float] = {}
    splits = None

    def build_types():
        try:
            return task.build(acts, corpus, control_types=True)
        except TypeError:  # code before the control_types keyword: types are always computed
            return task.build(acts, corpus)

    for step in steps:
        t0 = time.perf_counter()
        if step == "validate":
            task.validate(corpus, {"selectivity": False})
        elif step == "build":
            try:
                data = task.build(acts, corpus, control_types=False)
            except TypeError:
                data = task.build(acts, corpus)
            out["items"] = float(len(data))
        elif step == "build_types":
            data = build_types()
            assert data.types is not None
        elif step == "split":
            splits = split_utterances(corpus, by="text", seed=0)
        elif step == "bootstrap_unit":
            if splits is None:
                splits = split_utterances(corpus, by="text", seed=0)
                t0 = time.perf_counter()
            bootstrap_unit(corpus, "text", splits["test"], {})
        else:
            raise SystemExit(f"unknown step {step!r}")
        out[step] = time.perf_counter() - t0
    out["frames"] = float(acts.lengths.sum())
    return out


def main() -> None:
    args = _parse()
    sys.path.insert(0, str(args.src.resolve()))
    sys.path.insert(1, str(ROOT))
    import src
    from bench._common import report

    print(f"src: {Path(src.__file__).parent}", flush=True)
    results = {}
    for n in args.utterances:
        r = time_steps(n, args.sentences, args.steps)
        results[n] = r
        print(f"utterances={n} frames={int(r['frames'])} items={int(r.get('items', 0))} "
              + " ".join(f"{s}={r[s]:.3f}s" for s in args.steps), flush=True)  # fmt: skip
    lo, hi = min(results), max(results)
    report(
        **{f"t_{s}": results[hi][s] for s in args.steps},
        **{f"scaling_{s}": results[hi][s] / max(results[lo][s], 1e-9) for s in args.steps},
        size_ratio=hi / lo,
    )


if __name__ == "__main__":
    main()

"""Planning a TIMIT-layout corpus against reading its audio.

Writes a synthetic corpus in the TIMIT layout (default 6,300 utterances: 630 speakers x
10 sentences, 2-4 s of 16 kHz SPHERE audio each, ~12 phones/s in .PHN, words with an
occasional overlap in .WRD, a .TXT) and times:

- **plan**: ``TimitCorpus(root)`` (scans the folders, reads every .PHN/.WRD/.TXT and every
  SPHERE header, builds the entries) plus ``annotation(i)`` and ``num_samples(i)`` of every
  utterance: everything a run does before extraction;
- **audio**: reading the audio of the same utterances alone, as extraction gets it
  (``corpus[i].audio``: SPHERE decode to float32 mono at the corpus rate, with the checks);
  also printed: the bare SPHERE decode (``read_sphere``) and soundfile's ``sf.read`` of the
  same files, for reference.

``ratio = plan / audio`` (goal <= 1.5) at N and at N/4 (a second corpus of N/4 utterances),
and ``linear_ratio`` = plan time per utterance at N over that at N/4 (1.0: linear in N).
Times are CPU seconds of this process (``time.process_time``: stable on a shared machine;
wall seconds are printed too), the best of ``--repeats`` interleaved runs after a warm-up
(files in the page cache).  The corpora are written once under ``--out`` (default
/tmp/bench_corpora) and reused.

    python bench/corpora.py            # last line: ratio=... linear_ratio=...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report  # noqa: E402
from src.datamodules.sphere import read_sphere  # noqa: E402
from src.datamodules.timit import TimitCorpus  # noqa: E402

PHONES = "aa ae ah ao aw ax ay b bcl ch d dcl dh dx eh el en er ey f g gcl hh ih ix iy jh k kcl l m n ng ow p pcl r s sh t tcl th uw v w y z".split()
SR = 16000


def _sphere_header(n: int) -> bytes:
    lines = ["NIST_1A", "   1024", "database_id -s5 TIMIT", "database_version -s3 1.0", "utterance_id -s8 xxxx_sx1",
             "channel_count -i 1", f"sample_count -i {n}", f"sample_rate -i {SR}", "sample_min -i -1000",
             "sample_max -i 1000", "sample_n_bytes -i 2", "sample_byte_format -s2 01", "sample_sig_bits -i 16", "end_head"]  # fmt: skip
    head = ("\n".join(lines) + "\n").encode()
    return head + b" " * (1024 - len(head))


def write_corpus(root: Path, n_utt: int, seed: int = 0) -> None:
    """``n_utt`` utterances, 10 per speaker (SA1 SA2 SI* SX*), 8 dialect regions, TRAIN/TEST 73/27 %."""
    stamp = root / "bench.json"
    want = {"n": n_utt, "seed": seed, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return
    rng = np.random.default_rng(seed)
    noise = rng.integers(-1000, 1000, 4 * SR, dtype=np.int16)  # shared sample pool (content does not matter here)
    n_spk = (n_utt + 9) // 10
    k = 0
    for s in range(n_spk):
        sub = "TRAIN" if s < round(0.733 * n_spk) else "TEST"
        spk = f"{'FM'[s % 2]}{s:03d}X0"
        d = root / sub / f"DR{1 + s % 8}" / spk
        d.mkdir(parents=True, exist_ok=True)
        stems = ["SA1", "SA2"] + [f"SI{100 + s * 3 + j}" for j in range(3)] + [f"SX{100 + s * 5 + j}" for j in range(5)]
        for stem in stems:
            if k == n_utt:
                break
            k += 1
            n = int(rng.integers(2 * SR, 4 * SR))
            (d / f"{stem}.WAV").write_bytes(_sphere_header(n) + noise[:n].tobytes())
            n_ph = max(3, int(n / SR * 12))
            bounds = np.sort(rng.choice(np.arange(1, n), n_ph - 1, replace=False))
            b = np.r_[0, bounds, n]
            labs = ["h#"] + [PHONES[j] for j in rng.integers(0, len(PHONES), n_ph - 2)] + ["h#"]
            (d / f"{stem}.PHN").write_text("".join(f"{b[j]} {b[j + 1]} {labs[j]}\n" for j in range(n_ph)))
            wb = b[1:-1:3]  # a word every ~3 phones, inside the h# ends
            words = []
            for j in range(len(wb) - 1):
                start = wb[j] - (200 if j and rng.random() < 0.1 else 0)  # ~10 % overlap the previous word
                words.append(f"{start} {wb[j + 1]} w{int(rng.integers(1000))}\n")
            (d / f"{stem}.WRD").write_text("".join(words))
            (d / f"{stem}.TXT").write_text(f"0 {n} " + " ".join(w.split()[2] for w in words) + ".\n")
    stamp.write_text(json.dumps(want))


def plan(root: Path) -> int:
    c = TimitCorpus(root, sentence_types=["sa", "si", "sx"])
    total = 0
    for i in range(len(c)):
        a = c.annotation(i)
        total += c.num_samples(i) + len(a.tiers["phones"])
    return total


def corpus_audio(corpus: TimitCorpus) -> int:
    return sum(len(corpus[i].audio) for i in range(len(corpus)))


def decode_only(paths: list[str]) -> int:
    return sum(len(read_sphere(p)[0]) for p in paths)


def soundfile_read(paths: list[str]) -> int:
    import soundfile as sf

    return sum(len(sf.read(p, dtype="float32")[0]) for p in paths)


def measure(root: Path, repeats: int) -> tuple[dict[str, tuple[float, float]], int]:
    """{name: (best CPU s, best wall s)} for plan, audio (corpus[i].audio), decode, soundfile."""
    corpus = TimitCorpus(root, sentence_types=["sa", "si", "sx"])
    paths = [e.audio_file for e in corpus._entries]
    fns = {"plan": lambda: plan(root), "audio": lambda: corpus_audio(corpus), "decode": lambda: decode_only(paths),
           "soundfile": lambda: soundfile_read(paths)}  # fmt: skip
    for fn in fns.values():  # warm-up: page cache, imports
        fn()
    best = {k: [float("inf"), float("inf")] for k in fns}
    for _ in range(repeats):  # interleaved, so a burst of load on a shared machine hits every measurement
        for k, fn in fns.items():
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            fn()
            best[k][0] = min(best[k][0], time.process_time() - t_cpu)
            best[k][1] = min(best[k][1], time.perf_counter() - t_wall)
    return {k: (v[0], v[1]) for k, v in best.items()}, len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6300, help="utterances in the large corpus")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_corpora"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    res = {}
    for n in (args.n, args.n // 4):
        root = args.out / f"timit_{n}"
        write_corpus(root, n)
        t, files = measure(root, args.repeats)
        res[n] = (t["plan"][0] / files, t["audio"][0] / files)
        report(n=files, **{f"{k}_us_per_utt": 1e6 * v[0] / files for k, v in t.items()},
               **{f"{k}_wall_us_per_utt": 1e6 * v[1] / files for k, v in t.items()},
               ratio=t["plan"][0] / t["audio"][0], ratio_decode=t["plan"][0] / t["decode"][0],
               ratio_soundfile=t["plan"][0] / t["soundfile"][0], ratio_wall=t["plan"][1] / t["audio"][1])  # fmt: skip
    (p_n, a_n), (p_q, _) = res[args.n], res[args.n // 4]
    report(ratio=p_n / a_n, linear_ratio=p_n / p_q)


if __name__ == "__main__":
    main()

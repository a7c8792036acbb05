"""Mutual information's k-means: scikit-learn's own k-means++ seeding vs the project's copy of it.

    .venv/bin/python bench/mutual_info.py                  # layer 2 of the embedded tiny.en x synth cache, k 50 and 100
    .venv/bin/python bench/mutual_info.py --layer 4 --ks 50,100,200 --repeats 2

Both sides fit ``MiniBatchKMeans(k, batch_size=4096, n_init=3, random_state=0)`` (analysis=mutual_info's
defaults) on the same labelled speech frames of one cached layer (the analysis's frames: phones tier, silences
out, float32): "sklearn" with its ``init="k-means++"``, "project" with ``init=kmeans_plusplus``
(src/analyses/mutual_info.py: the same draws and arithmetic; scikit-learn upcasts the float32 data to float64
again for every centre, which took most of the fit). Then every frame gets its unit and the analysis's
measures (NMI, PNMI, purities, H(phone | unit)) are computed from both. Repeats interleaved, best of each.
Last line ``ratio=<sklearn / project> max_abs_delta=<largest difference of any measure or centre>``.

Measured: see README (mutual information) for the numbers of the last run.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._common import best_of, report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--ks", default="50,100")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--overrides", nargs="*", default=[], help="extra analyze.py overrides (data=..., paths...)")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir
    from sklearn.cluster import MiniBatchKMeans

    from src.analyses.base import _drop_silences, read_rows
    from src.analyses.mutual_info import fit_units
    from src.datamodules.alignment import frame_items
    from src.functional.mutual_info import (
        conditional_entropy,
        normalized_mutual_info,
        phone_normalized_mutual_info,
        purity,
    )
    from src.jobs.common import load_activations

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=["analysis=mutual_info", *args.overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus, acts = load_activations(cfg)
    frames = frame_items(acts, corpus, "phones")
    speech = _drop_silences(frames.labels, corpus)
    rows, labels = frames.rows[speech], frames.labels[speech]
    x = read_rows(acts.layer(args.layer), rows)  # (n, D) float32, as the analysis fits
    ks = [int(k) for k in args.ks.split(",")]
    print(f"{acts.backbone} x {corpus.name}: layer {args.layer}, {len(x)} frames x {x.shape[1]}, ks {ks}", flush=True)

    def measures(km):
        u = km.predict(x)
        pp, cp = purity(u, labels)
        return np.array([normalized_mutual_info(u, labels), phone_normalized_mutual_info(u, labels), pp, cp,
                         conditional_entropy(labels, u)])  # fmt: skip

    def sklearn_side():
        return [MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=3, random_state=0).fit(x) for k in ks]

    def project_side():
        return [fit_units(x, k, "minibatch", 0, 4096) for k in ks]

    t_old = t_new = float("inf")
    for _ in range(args.repeats):  # interleaved
        t, old = best_of(sklearn_side, 1)
        t_old = min(t_old, t)
        t, new = best_of(project_side, 1)
        t_new = min(t_new, t)
    delta = 0.0
    for k, a, b in zip(ks, old, new):
        ma, mb = measures(a), measures(b)
        dc = float(np.abs(a.cluster_centers_ - b.cluster_centers_).max())
        delta = max(delta, float(np.abs(ma - mb).max()), dc)
        print(f"k={k}: NMI {ma[0]:.6f} vs {mb[0]:.6f}, max |centre delta| {dc:.3g}, steps {a.n_steps_} / {b.n_steps_}")
    print(f"sklearn k-means++ {t_old:.2f} s, project k-means++ {t_new:.2f} s", flush=True)
    report(ratio=t_old / t_new, max_abs_delta=delta, sklearn_s=t_old, project_s=t_new, layer=args.layer,
           frames=len(x), ks=args.ks)  # fmt: skip


if __name__ == "__main__":
    main()

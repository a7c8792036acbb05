"""CCA analysis (held-out PWCCA, the default): every view whitened once vs whitened again for every fit.

    .venv/bin/python bench/cca.py                         # embedded tiny.en x synth cache, analysis=cca defaults
    .venv/bin/python bench/cca.py --method cca --pairs all

Both sides run ``CCA(...).run`` on the same cache and frames. "Before": each pair fits CCA from scratch
(``cca_fit``: an SVD of each view's 10,000 fitting frames), then ``pwcca`` fits it a second time for its weights,
and the shuffled null does both again -- 8 SVDs of (10000, 384) per adjacent pair. "Now": each layer's fitting
frames (and each shuffled copy) are whitened once (``whiten``) and reused by every pair and the null
(``cca_fit_whitened``, ``pwcca_weights``): 2 new SVDs per adjacent pair. Repeats interleaved, best of each. Last
line ``ratio=<before / now> max_abs_delta=<largest difference of any result value>``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import best_of, report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="pwcca", choices=["pwcca", "cca"])
    p.add_argument("--pairs", default="adjacent", choices=["adjacent", "all"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overrides", nargs="*", default=[], help="extra analyze.py overrides (data=..., paths...)")
    args = p.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from src.analyses.base import AnalysisContext
    from src.analyses.cca import CCA
    from src.jobs.common import load_activations

    torch.set_num_threads(args.threads)

    class Before(CCA):
        """Every fit from scratch: the whitened views are ignored (the code before)."""

        def _score(self, x_tr, y_tr, x_te, y_te, wx=None, wy=None):
            return super()._score(x_tr, y_tr, x_te, y_te)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=["analysis=cca", *args.overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus, acts = load_activations(cfg)
    ctx = AnalysisContext(acts, corpus, seed=int(cfg.seed))
    print(f"{acts.backbone} x {corpus.name}: {args.method}, pairs {args.pairs}, held out, 1 null shuffle", flush=True)

    t_old = t_new = float("inf")
    for _ in range(args.repeats):  # interleaved
        t, old = best_of(lambda: Before(method=args.method, pairs=args.pairs).run(ctx), 1)
        t_old = min(t_old, t)
        t, new = best_of(lambda: CCA(method=args.method, pairs=args.pairs).run(ctx), 1)
        t_new = min(t_new, t)
    key = [(r["layer"], r["layer_b"], r["metric"]) for r in old.rows]
    assert key == [(r["layer"], r["layer_b"], r["metric"]) for r in new.rows]
    delta = max(abs(a["value"] - b["value"]) for a, b in zip(old.rows, new.rows))
    print(f"every fit from scratch {t_old:.2f} s, views whitened once {t_new:.2f} s; {len(old.rows)} values", flush=True)
    report(ratio=t_old / t_new, max_abs_delta=delta, before_s=t_old, now_s=t_new, method=args.method, pairs=args.pairs)


if __name__ == "__main__":
    main()

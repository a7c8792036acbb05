"""The two slow stages of ``train.py experiment=phones``, old way vs new way, on the same inputs in one process.

    .venv/bin/python bench/phones_stages.py                 # the default corpus's cache (built if missing)
    .venv/bin/python bench/phones_stages.py --layers 2 --mdl-layers 2   # a quick look

Inputs: the phones task's items of the default run (Whisper tiny.en x Festival synth, split by text, the
run's seed 0), built by the pipeline's own functions from the activation cache.

- **probe training** (task probe; the control probe is the same fit on other labels): `fit_probe` with
  ``loop="lightning"`` (``lightning.Trainer.fit``) vs ``loop="plain"`` (`src.probes.loop.plain_fit` on
  features standardised once), conf/probe/linear.yaml's budget. Both sides already read batches with
  ``index_select`` (3x faster than ``x[idx]``, the same rows; it sped up both). ``probe_max_abs_delta`` is
  the largest difference of any parameter: 0 (bit for bit; tests/probes/test_loop.py).
- **MDL online code** per layer (blocks of whole texts, as `mdl_rows`): `fit_logreg_reference`
  (``torch.optim.LBFGS`` + autograd) vs `fit_logreg` (`lbfgs_minimize`, written-out gradient, BLAS two-loop).
  ``mdl_max_rel_delta`` is the largest relative difference of the compression over layers (the tolerance
  is 1e-3; the reference itself moves by 8e-5 between 1 and 2 threads).

Last line: ``probe_ratio=<lightning / plain> probe_max_abs_delta=<..> mdl_ratio=<reference / fast>
mdl_max_rel_delta=<..> ratio=<(old total) / (new total)>``.

Measured (2026-12-07, 2 cores shared with ~9 agents, 1 thread):
- ``--layers 2 --mdl-layers 2`` (load 6.5-6.9): probe training 43.6 s vs 13.8 s (probe_ratio 3.15, delta 0),
  MDL 21.1 s vs 15.6 s (mdl_ratio 1.36, compression 2.17851 vs 2.17870), ratio 2.51;
- all states 0-4 and final_norm, while three other runs of this session loaded the machine (load 8-10):
  probe_ratio 1.36 (166 s vs 122 s: with 6 heads the matrix products dominate a step), mdl_ratio 1.41
  (242 s vs 172 s), mdl_max_rel_delta 1.3e-4, ratio 1.38.
End-to-end times: bench/commands.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import report  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def phones_arrays(layers: list[int] | None):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.datamodules.splits import split_utterances
    from src.jobs.common import load_activations, register_resolvers
    from src.probes.pipeline import bootstrap_unit, drop_unseen_labels, load_split_arrays, unit_codes

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=phones", "logger=none"])
    os.chdir(REPO)  # the default data/ and cache/
    corpus, acts = load_activations(cfg)
    task = instantiate(cfg.task)
    data = task.build(acts, corpus, control_types=False)
    split_cfg = OmegaConf.to_container(cfg.split, resolve=True)
    splits = split_utterances(corpus, seed=0, **split_cfg)
    _, keys = bootstrap_unit(corpus, split_cfg["by"], splits["test"], {})
    from src.probes.pipeline import probed_layers

    layer_ids = probed_layers(acts, layers, None)  # default: the residual states, as train.py
    arrays = load_split_arrays(acts, data, splits, layer_ids, unit_of_utterance=keys, stream=False)
    drop_unseen_labels(arrays, {})
    groups = unit_codes(keys)[arrays["train"].utt]  # MDL blocks of whole texts
    return arrays, data, layer_ids, groups, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="probed layers (default: 0..4)")
    ap.add_argument("--mdl-layers", type=int, nargs="*", default=None, help="layers of the MDL comparison (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hydra.utils import instantiate

    from src.functional.mdl import mdl_block_schedule, online_code_probe, snap_schedule
    from src.probes.mdl import fit_logreg, fit_logreg_reference
    from src.probes.pipeline import fit_probe
    from tests.probes.helpers import trainer_factory

    arrays, data, layer_ids, groups, cfg = phones_arrays(args.layers)
    C = len(data.classes)
    print(f"load={os.getloadavg()[0]:.1f} items={ {k: len(a.y) for k, a in arrays.items()} } layers={layer_ids} classes={C}")
    t, probes = {}, {}
    for loop in ("lightning", "plain"):
        t0 = time.perf_counter()
        probes[loop] = fit_probe(instantiate(cfg.probe), arrays, "classification", C, lambda **kw: trainer_factory(**kw),
                                 batch_size=int(cfg.batch_size), seed=0, layer_ids=layer_ids, loop=loop)  # fmt: skip
        t[loop] = time.perf_counter() - t0
        print(f"probe training ({loop}): {t[loop]:.1f} s, epochs {len(probes[loop].train_losses)}, load {os.getloadavg()[0]:.1f}")
    sa, sb = probes["lightning"].state_dict(), probes["plain"].state_dict()
    probe_delta = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())

    tr = arrays["train"]
    uniq, inv = np.unique(groups, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.random.default_rng(0).permutation(len(uniq))] = np.arange(len(uniq))
    order = np.argsort(rank[inv], kind="stable")
    cum = np.cumsum(np.bincount(rank[inv], minlength=len(uniq)))
    ends = snap_schedule(mdl_block_schedule(int(cum[-1])), cum)
    y = tr.y[order].numpy()
    tm = {"reference": 0.0, "fast": 0.0}
    rel = 0.0
    for j, layer in enumerate(layer_ids):
        if args.mdl_layers is not None and layer not in args.mdl_layers:
            continue
        x = tr.x[order, j].float().numpy()
        comp = {}
        for name, f in (("reference", fit_logreg_reference), ("fast", fit_logreg)):
            t0 = time.perf_counter()
            res = online_code_probe(x, y, C, lambda xp, yp, f=f: f(torch.as_tensor(xp), torch.as_tensor(yp).long(), C),
                                    schedule=ends)  # fmt: skip
            tm[name] += time.perf_counter() - t0
            comp[name] = res.compression
        rel = max(rel, abs(comp["fast"] / comp["reference"] - 1))
        print(f"MDL layer {layer}: compression reference {comp['reference']:.5f} fast {comp['fast']:.5f}; "
              f"time so far reference {tm['reference']:.1f} s fast {tm['fast']:.1f} s; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    old, new = 2 * t["lightning"] + tm["reference"], 2 * t["plain"] + tm["fast"]  # task + control probe, MDL
    report(probe_ratio=t["lightning"] / t["plain"], probe_max_abs_delta=probe_delta,
           mdl_ratio=tm["reference"] / max(tm["fast"], 1e-9), mdl_max_rel_delta=rel, ratio=old / new)  # fmt: skip


if __name__ == "__main__":
    main()

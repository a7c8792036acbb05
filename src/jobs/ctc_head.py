"""The CTC head job: train a CTC phone head on the activation cache and save it; with ``--measure`` also
CTC probes per layer and a tuned lens, and PER per layer on the test split.

    python -m src.jobs.ctc_head --out outputs/ctc_head_whisper_tiny_en.pt [--measure] [hydra overrides]

A plain command line like ``python -m src.jobs.cache list|prune`` (jobs with their own flags live in
src/jobs/ and run as ``python -m src.jobs.<name>``; the Hydra jobs run through train.py, analyze.py and
build_cache.py). The config is train.py's (``--backbone``, ``--data`` and the overrides select it).
The heads, lenses and their trainers are in src/lenses/ctc.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.lenses.ctc import (
    DEFAULT_OUT,
    CTCHead,
    CTCHeadError,
    per_table,
    train_ctc_head,
    train_ctc_probes,
    train_tuned_lens,
)


def check_writable(out: str | Path, what: str = "--out") -> Path:
    """Fail before any training when ``out`` cannot be written: its folder is created if
    missing, then a probe file is created in it and removed (the heads are written there
    atomically, by a temporary file and a rename, so the folder is what must be writable)."""
    import os
    import uuid

    out = Path(out)
    if out.is_dir():
        raise CTCHeadError(f"{what} {out} is a directory; give a file name such as {out / 'ctc_head.pt'}")
    probe = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.write-test"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as e:
        raise CTCHeadError(f"cannot write {what} {out}: {out.parent} is not writable ({e.strerror or e}); nothing "
                           f"was trained. Choose a writable place, e.g. {what} outputs/{out.name}") from None  # fmt: skip
    return out


def _compose(backbone: str, data: str, overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir

    from src.jobs.common import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=[f"backbone={backbone}", f"data={data}", "logger=none", *overrides])


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import csv
    import json
    import logging

    p = argparse.ArgumentParser(prog="python -m src.jobs.ctc_head", description="Train a CTC head on the cache and save it; "
                                "--measure also trains CTC probes per layer and a tuned lens and prints PER per layer.")  # fmt: skip
    p.add_argument("--out", default=DEFAULT_OUT, help=f"head file (default {DEFAULT_OUT})")
    p.add_argument("--backbone", default="whisper_tiny_en")
    p.add_argument("--data", default="synth")
    p.add_argument("--layer", default="final_norm", help="state the head is trained on")
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam lr of the heads (1e-3: lower validation CTC loss than 3e-3 at 5 of 6 states of tiny.en x synth)",
    )
    p.add_argument("--seed", type=int, default=None, help="default: the config's seed")
    p.add_argument(
        "--measure", action="store_true", help="also probes per layer + tuned lens; PER on the test split"
    )
    p.add_argument(
        "--reuse", action="store_true", help="load --out if it exists instead of training the head"
    )
    p.add_argument(
        "--wandb", default="off", choices=["off", "auto", "online", "offline"],
        help="log the head (with --measure also the probes, the tuned lens and the PER table) to a W&B run in "
             "--out's folder, as artifacts of type model; auto = online when logged in, else offline (default off)",
    )  # fmt: skip
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/train.yaml (e.g. paths.cache_dir=...)"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("speechinterp.ctc")
    from omegaconf import OmegaConf

    from src.datamodules.splits import split_utterances
    from src.jobs.common import load_activations, quiet_libraries

    quiet_libraries()
    out = Path(a.out)
    if a.measure or not (a.reuse and out.is_file()):  # something will be written: fail now, not after training
        check_writable(out)
    cfg = _compose(a.backbone, a.data, a.overrides)
    seed = int(cfg.seed if a.seed is None else a.seed)
    corpus, acts = load_activations(cfg)
    log.info("%s", acts)
    splits = split_utterances(corpus, seed=seed, **OmegaConf.to_container(cfg.split, resolve=True))
    if a.reuse and out.is_file():
        head = CTCHead.load(out)
        log.info("reusing %s", out)
    else:
        head, metrics = train_ctc_head(acts, corpus, a.layer, splits=splits, seed=seed, max_epochs=a.max_epochs,
                                       hidden=a.hidden, lr=a.lr)  # fmt: skip
        head.save(out)
        log.info("saved %s: %s", out, json.dumps(metrics))
    if not a.measure:
        if a.wandb != "off":
            log_heads_to_wandb(a.wandb, out, [out], {"backbone": a.backbone, "data": a.data, "layer": a.layer, "seed": seed})
        return 0
    from hydra.utils import instantiate

    norm = instantiate(cfg.backbone).final_norm_module().float().eval().requires_grad_(False)
    residual = list(range(acts.num_layers))
    probes = train_ctc_probes(acts, corpus, "every", splits=splits, seed=seed, max_epochs=a.max_epochs, hidden=a.hidden,
                              lr=a.lr)  # fmt: skip
    log.info(
        "probes: %s",
        {k: (h.metrics["best_epoch"], round(h.metrics["val_loss"], 3)) for k, h in probes.items()},
    )
    for name, probe in probes.items():
        probe.save(out.with_name(f"{out.stem}_probe_{name}.pt"))
    tuned, tmetrics = train_tuned_lens(
        acts, corpus, head, residual, backbone_final_norm=norm, splits=splits, seed=seed
    )
    tuned.save(out.with_name(out.stem + "_tuned_lens.pt"))
    log.info("tuned lens: %s", json.dumps(tmetrics))
    rows = per_table(acts, corpus, head, splits["test"], "every", norm, tuned, probes, seed=seed)
    path = out.with_name(out.stem + "_per.csv")
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table: dict[str, dict[str, str]] = {}
    for r in rows:
        table.setdefault(r["layer"], {})[r["lens"]] = (
            f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        )
    if a.wandb != "off":
        saved = [out, *(out.with_name(f"{out.stem}_probe_{name}.pt") for name in probes), out.with_name(out.stem + "_tuned_lens.pt")]
        log_heads_to_wandb(a.wandb, out, saved, {"backbone": a.backbone, "data": a.data, "layer": a.layer, "seed": seed},
                           per_csv=path)  # fmt: skip
    print(f"PER on {len(splits['test'])} test utterances ({path})")
    print(f"{'layer':>10}  {'ctc_lens':>22}  {'tuned_lens':>22}  {'ctc_probe':>22}")
    for layer, v in table.items():
        print(
            f"{layer:>10}  {v.get('ctc_lens', '-'):>22}  {v.get('tuned_lens', '-'):>22}  {v.get('ctc_probe', '-'):>22}"
        )
    return 0


def log_heads_to_wandb(mode: str, out: Path, files: list[Path], metadata: dict, per_csv: Path | None = None) -> str:
    """One W&B run (``job_type="ctc-head"``, in ``out``'s folder, project of conf/logger/wandb.yaml): ``files``
    as one artifact of type ``model`` named after ``out``, and the PER table's series (``ctc_head/per/<lens>``)
    when given. Returns the artifact name."""
    import pandas as pd
    import wandb
    from omegaconf import OmegaConf

    from src.jobs.common import CONF_DIR
    from src.reporting.wandb_utils import log_model_artifact, log_results_to_wandb, wandb_mode

    project = str(OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml").get("project") or "speechinterp")
    run = wandb.init(project=project, mode=wandb_mode(mode), dir=str(out.parent), job_type="ctc-head", name=out.stem,
                     config=metadata, reinit="create_new")  # fmt: skip
    try:
        name = log_model_artifact(run, f"ctc-head-{out.stem}", files, metadata)
        if per_csv is not None:
            log_results_to_wandb(run, pd.read_csv(per_csv), namespace="ctc_head")
    finally:
        run.finish()
    return name


if __name__ == "__main__":
    raise SystemExit(main())

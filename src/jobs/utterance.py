"""The utterance-classifier job (``train.py experiment=commands``, ``task.kind: utterance``) and its
checkpoint store: train on pooled cache features, write results, keep a stable copy under
``${paths.output_dir}/classifiers/``, find or train the classifier an analysis needs
(``analysis.checkpoint=auto``, handed to analyses as ``AnalysisContext.classifier``), and convert the
tutorial's remote-code multi-head model into a classifier checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.analyses.base import AnalysisError
from src.backbones.remote import (
    MULTIHEAD_HEADS,
    RemoteCodeError,
    check_trust,
    multihead_backbone,
    multihead_parts,
)
from src.jobs.common import CONF_DIR
from src.probes.utterance import (
    ClassifierError,
    UtteranceClassifier,
    fit_classifier,
    layer_token,
    pooled_from_cache,
    resolve_state,
)

log = logging.getLogger(__name__)


def stable_checkpoint_path(output_dir: str | Path, backbone: str, corpus: str, layer: str, seed: int) -> Path:
    """``<output_dir>/classifiers/<backbone>[-random]_<corpus>_<layer>_seed<k>.pt`` (backbone names
    already carry ``-random`` for random-init backbones)."""
    return Path(output_dir) / "classifiers" / f"{backbone}_{corpus}_{layer}_seed{int(seed)}.pt"


def train_utterance_classifier(cfg, out_dir: str | Path) -> dict:
    """The ``train.py task=commands`` run: cache -> pooled features -> split -> classifier ->
    results.csv/json, PNG, ``classifier.pt`` in ``out_dir`` and the stable copy under
    ``${paths.output_dir}/classifiers/``. Returns {"checkpoint", "stable", "rows", "test_accuracy"}."""
    import shutil
    import time

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.backbones.spec import record_from_config
    from src.datamodules.splits import split_utterances
    from src.functional.intervals import bootstrap_ci
    from src.jobs.common import RESULT_COLUMNS, load_activations
    from src.probes.pipeline import bootstrap_unit
    from src.reporting.results import write_config, write_results

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    task = instantiate(cfg.task)
    backbone_record = record_from_config(cfg.backbone, "backbone")  # refuses a non-project target before any work
    split_cfg = OmegaConf.to_container(cfg.split, resolve=True)
    controls = OmegaConf.to_container(cfg.controls, resolve=True) if cfg.get("controls") is not None else None
    state: dict = {}

    def check(corpus) -> None:  # before extraction
        task.validate(corpus, controls)
        state["classes"], state["y"] = task.labels(corpus)
        state["splits"] = split_utterances(corpus, seed=task.split_seed, **split_cfg)

    corpus, acts = load_activations(cfg, before_extraction=check)
    from src.jobs.common import stays_after_cache

    if not stays_after_cache(None):  # a plain loop on one process: other DDP ranks only helped extract
        return None
    classes, y_all, splits = state["classes"], state["y"], state["splits"]
    if list(acts.ids) != list(corpus.ids):
        raise ClassifierError(f"activation cache {acts.path} does not hold the corpus's utterances in order")
    backbone_record["name"] = acts.backbone
    if acts.meta.get("backbone_fingerprint"):
        backbone_record["fingerprint"] = str(acts.meta["backbone_fingerprint"])
    torch.manual_seed(int(cfg.seed))  # head init; after the cache, so a cold and a warm run agree
    clf = UtteranceClassifier(classes, acts.hidden_size, acts.layer_names, acts.num_layers,
                              layer=None if task.weighted else task.layer, weighted=task.weighted)  # fmt: skip
    states = list(range(len(acts.layer_names))) if clf.weighted else [clf.state_index]
    t1 = time.perf_counter()
    x = {k: torch.from_numpy(pooled_from_cache(acts, v, states, progress=True)) for k, v in splits.items()}
    y = {k: {h: torch.from_numpy(y_all[h][v]) for h in clf.heads} for k, v in splits.items()}
    t2 = time.perf_counter()
    hist = fit_classifier(clf, x, y, seed=int(cfg.seed), **task.fit_kw)
    t3 = time.perf_counter()

    unit, keys = bootstrap_unit(corpus, split_cfg.get("by", "text"), splits["test"], counts := {})
    layer_idx = -1 if clf.weighted else int(clf.state_index)
    layer_name = "weighted" if clf.weighted else acts.layer_names[clf.state_index]
    base = dict(backbone=acts.backbone, task=task.name, probe="UtteranceClassifier", layer=layer_idx, layer_name=layer_name)
    rows, test_acc = [], {}
    with torch.no_grad():
        for split in ("val", "test"):
            out = clf.forward_pooled(x[split])
            groups = keys[splits[split]]
            for h in clf.heads:
                correct = (out[h].argmax(-1) == y[split][h]).double().numpy()
                ci = bootstrap_ci(correct, groups, statistic="accuracy", n_boot=int(cfg.n_boot), seed=int(cfg.seed))
                rows.append(dict(base, target=h, metric="accuracy", value=float(correct.mean()), ci_low=float(ci.low),
                                 ci_high=float(ci.high), unit=unit, n_units=int(ci.n_groups), split=split))  # fmt: skip
                if split == "test":
                    test_acc[h] = float(correct.mean())
                    train_counts = np.bincount(y["train"][h].numpy(), minlength=len(classes[h]))
                    maj = (y[split][h].numpy() == int(train_counts.argmax())).astype(np.float64)
                    ci = bootstrap_ci(maj, groups, statistic="accuracy", n_boot=int(cfg.n_boot), seed=int(cfg.seed))
                    rows.append(dict(base, target=h, metric="accuracy_majority_baseline", value=float(maj.mean()),
                                     ci_low=float(ci.low), ci_high=float(ci.high), unit=unit, n_units=int(ci.n_groups),
                                     split=split))  # fmt: skip
    if clf.weighted:
        for s, w in enumerate(clf.state_weight_values().tolist()):
            rows.append(dict(base, layer=s, layer_name=acts.layer_names[s], target="all", metric="layer_weight",
                             value=float(w), ci_low=None, ci_high=None, unit=None, n_units=None, split="train"))  # fmt: skip

    meta = {
        "backbone": backbone_record,
        "backbone_name": acts.backbone,
        "corpus": corpus.name,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "cache": str(acts.path),
        "seed": int(cfg.seed),
        "split_seed": task.split_seed,
        "split": split_cfg,
        "layer": clf.layer,
        "weighted": clf.weighted,
        "test_accuracy": test_acc,
        "splits": {k: [acts.ids[int(i)] for i in v] for k, v in splits.items()},
        "history": {k: v for k, v in hist.items() if k != "val_loss"},
    }
    ckpt = out_dir / "classifier.pt"
    clf.save(ckpt, meta)
    stable = stable_checkpoint_path(cfg.paths.output_dir, acts.backbone, corpus.name, layer_token(clf), int(cfg.seed))
    stable.parent.mkdir(parents=True, exist_ok=True)
    tmp = stable.with_name(f".{stable.name}.{os.getpid()}.tmp")
    shutil.copyfile(ckpt, tmp)
    tmp.replace(stable)
    seconds = {"total": round(time.perf_counter() - t0, 2), "pooling": round(t2 - t1, 2), "training": round(t3 - t2, 3)}
    write_results(rows, out_dir, columns_first=RESULT_COLUMNS,
                  meta={"cache": str(acts.path), "seconds": seconds, "counts": {**counts, **{k: len(v) for k, v in splits.items()}},
                        "checkpoint": str(ckpt), "stable_checkpoint": str(stable), "history": meta["history"]})  # fmt: skip
    write_config(cfg, out_dir)
    from src.reporting.figures import figure_title
    from src.reporting.figures_live import plot_head_accuracy

    png = plot_head_accuracy(rows, out_dir / "accuracy_per_head.png",
                             figure_title(f"Utterance classifier: test accuracy per head, state {layer_name}",
                                          f"{acts.backbone}, {corpus.name}"))  # fmt: skip
    log.info("utterance classifier: test accuracy %s (%.1f s training, %d epochs); %s",
             {h: round(a, 4) for h, a in test_acc.items()}, t3 - t2, hist["epochs"], stable)  # fmt: skip
    return {"checkpoint": ckpt, "stable": stable, "rows": rows, "test_accuracy": test_acc, "png": png, "seconds": seconds}


def utterance_job(cfg) -> float | None:
    """train.py's job for ``task.kind: utterance`` (called from src.jobs.run.probing_job)."""
    from src.jobs.common import job_context, log_to_wandb, make_logger, quiet_libraries

    quiet_libraries()
    out_dir, _multirun, group, name = job_context()
    res = train_utterance_classifier(cfg, out_dir)
    if res is None:  # a rank > 0 of a distributed extraction: rank 0 trains and writes
        return None
    logger = make_logger(cfg, out_dir, group, name, "train")
    if type(logger).__name__ == "WandbLogger":  # results table + the PNG, as the probing runs do; the classifier
        model = {"name": f"utterance-classifier-{Path(res['stable']).stem}", "paths": [res["checkpoint"]],
                 "metadata": {"test_accuracy": res["test_accuracy"], "stable_checkpoint": str(res["stable"])}}  # fmt: skip
        log_to_wandb(logger, out_dir, [res["png"]], artifacts=[model])
    return float(np.mean(list(res["test_accuracy"].values())))


def _stale_reason(path: Path, cfg) -> str | None:
    """Why the checkpoint at ``path`` does not belong to ``cfg`` (its backbone or data settings differ), or None.

    The stable name holds backbone, corpus name, layer and seed only; a corpus rebuilt with other
    settings (voices, sentences) or another model revision keeps the name, so the saved settings decide."""
    from omegaconf import OmegaConf

    try:
        _, meta = UtteranceClassifier.load(path)
    except Exception as e:  # unreadable: retrain rather than trust it
        return f"unreadable checkpoint ({type(e).__name__}: {e})"
    from src.backbones.spec import BackboneRecordError, read_record, record_from_config

    try:
        saved = read_record(meta.get("backbone"), str(path))
    except BackboneRecordError as e:
        return f"its backbone record is not usable ({e})"
    want = record_from_config(cfg.backbone, "backbone")
    if (saved["kind"], saved["args"]) != (want["kind"], want["args"]):
        diff = sorted(k for k in set(saved["args"]) | set(want["args"]) if saved["args"].get(k) != want["args"].get(k))
        return "backbone settings differ: " + ", ".join(diff or ["kind"])
    saved_data = meta.get("data")
    want_data = OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else None
    if isinstance(saved_data, dict) and want_data is not None and saved_data != want_data:
        diff = sorted(k for k in set(saved_data) | set(want_data) if saved_data.get(k) != want_data.get(k))
        return f"data settings differ: {', '.join(diff)}"
    return None


def ensure_classifier(cfg, out_path: str | Path | None = None) -> Path:
    """A trained classifier checkpoint for ``cfg`` (a composed train.py config with
    ``task=commands``: backbone, data, cache, task, split, seed, paths, n_boot): ``out_path`` if it
    exists, else the stable path under ``${paths.output_dir}/classifiers/`` if it exists, else
    trained now with train.py's code path (results in ``<checkpoint stem>_run/`` beside it)."""
    import shutil

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if out_path is not None and Path(out_path).is_file():
        return Path(out_path)
    if str(cfg.backbone.get("_target_", "")).endswith("multihead_backbone"):  # a converted model: nothing to train
        bcfg = OmegaConf.to_container(cfg.backbone, resolve=True)
        try:
            check_trust(str(bcfg.get("model_id")), bcfg.get("trust_remote_code"))  # also when a converted file exists
        except RemoteCodeError as e:
            raise ClassifierError(str(e)) from None
        name = bcfg.get("name") or str(bcfg["model_id"]).rstrip("/").split("/")[-1]
        target = Path(out_path) if out_path is not None else Path(cfg.paths.output_dir) / "classifiers" / f"{name}_converted.pt"
        return target if target.is_file() else convert_to_checkpoint(bcfg, target)
    task = instantiate(cfg.task)
    bname = cfg.backbone.get("name") or str(cfg.backbone.model_id).rstrip("/").split("/")[-1].split(":")[-1]
    if str(cfg.backbone.get("pretrained", True)).lower() in ("false", "0"):
        bname += "-random"
    corpus_name = getattr(instantiate(cfg.data), "name", "corpus")
    layer = "weighted"
    if not task.weighted:  # the state's name (``4``, ``final_norm``) needs the backbone's states
        bb = instantiate(cfg.backbone)
        k = resolve_state(task.layer, bb.num_layers, bb.layer_names)
        layer, bname = bb.layer_names[k], bb.name
        del bb
    stable = stable_checkpoint_path(cfg.paths.output_dir, bname, corpus_name, layer, int(cfg.seed))
    if stable.is_file() and (why := _stale_reason(stable, cfg)) is not None:
        log.warning("classifier %s was trained for another configuration (%s): training a new one", stable, why)
        stable.unlink()
    if out_path is None and stable.is_file():
        return stable
    target = Path(out_path) if out_path is not None else stable
    if out_path is not None and stable.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stable, target)
        return target
    run_dir = target.parent / f"{target.stem}_run"
    log.info("no classifier at %s: training one (results in %s)", target, run_dir)
    res = train_utterance_classifier(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), run_dir)
    if target != res["stable"]:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(res["checkpoint"], target)
    return target


# ============================================================================ the classifier an analysis needs


def compose_train_config(overrides: Sequence[str]):
    """A composed ``train.py`` config (``conf/train.yaml`` with ``overrides``), for ``ensure_classifier``.

    Inside a running Hydra app (analyze.py) the app's config search path is used; elsewhere (tests,
    notebooks) ``conf/`` of the repository."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.jobs.common import register_resolvers

    register_resolvers()
    overrides = [str(o) for o in overrides]
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name="train", overrides=overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except Exception as e:  # hydra's own errors name the override
        raise AnalysisError(f"cannot compose the classifier's train.py config with overrides {overrides}: {e}") from e


def classifier_path(checkpoint, train_overrides: Sequence[str], seed: int) -> Path:
    """A checkpoint path: ``checkpoint`` itself, or with ``auto`` ``ensure_classifier`` for train.py with
    ``train_overrides + [seed=<seed>]`` (trained now if missing, else the stable copy under
    ``${paths.output_dir}/classifiers/``)."""
    if checkpoint is None:
        raise AnalysisError("analysis.checkpoint is null: give a classifier checkpoint (train.py task=commands) or auto")
    if str(checkpoint) != "auto":
        p = Path(str(checkpoint))
        if not p.is_file():
            raise AnalysisError(f"analysis.checkpoint={str(checkpoint)!r}: no such file (train.py task=commands writes "
                                "classifier.pt and ${paths.output_dir}/classifiers/*.pt; or use auto)")  # fmt: skip
        return p
    cfg = compose_train_config([*train_overrides, f"seed={int(seed)}"])
    return Path(ensure_classifier(cfg))


def auto_checkpoint(run_cfg=None) -> Path:
    """``ensure_classifier`` for the running analyze.py job: train.py's config composed with ``task=commands`` and
    the run's backbone, data, paths, cache, split and seed (Hydra's choices and command-line overrides).

    ``run_cfg``: the running job's config, whose ``backbone``, ``data``, ``paths`` and ``cache`` nodes replace the
    composed ones, so what its ``experiment=`` sets there counts too (an analyze.py experiment selects its
    analysis, so train.py cannot compose it)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    try:
        hc = HydraConfig.get()
    except ValueError as e:
        raise AnalysisError("analysis.checkpoint=auto needs a Hydra run (python analyze.py ...); give a checkpoint path") from e
    choices = dict(hc.runtime.choices)
    nodes = ("backbone", "data", "paths", "cache")
    over = [f"{g}={choices[g]}" for g in (() if run_cfg is not None else ("experiment",)) + nodes if choices.get(g)]
    over += ["task=commands"]
    keep = ("split.", "seed=") if run_cfg is not None else ("backbone.", "data.", "paths.", "cache.", "split.", "seed=")
    over += [o for o in hc.overrides.task if o.lstrip("+~").startswith(keep)]
    cfg = compose(config_name="train", overrides=over)
    if run_cfg is not None:  # the run's nodes hold its command-line overrides of them too
        with open_dict(cfg):
            for g in nodes:
                if g in run_cfg:
                    cfg[g] = OmegaConf.create(OmegaConf.to_container(run_cfg[g], resolve=False))
    if cfg.data.get("_target_", "").split(".")[-1] != "CommandsCorpus":
        log.warning("analysis.checkpoint=auto trains the classifier on corpus %s; plausibility needs data=commands",
                    cfg.data.get("_target_"))  # fmt: skip
    return Path(ensure_classifier(cfg))


def classifier_factory(seed: int, train_overrides: Sequence[str] | None, run_cfg=None) -> Path:
    """``AnalysisContext.classifier``: the run's own classifier (``train_overrides`` None: :func:`auto_checkpoint`
    with the running job's config ``run_cfg``), or train.py's with ``train_overrides + [seed=<seed>]``
    (:func:`classifier_path`)."""
    if train_overrides is None:
        return auto_checkpoint(run_cfg)
    return classifier_path("auto", train_overrides, seed)


# ============================================================================ the tutorial's remote-code model


def classifier_from_heads(backbone, labels: dict[str, list[str]], linears: dict, layer) -> UtteranceClassifier:
    """An UtteranceClassifier (mean pooling of ``layer``, no standardisation) with the heads' weights copied."""
    clf = UtteranceClassifier(labels, backbone.hidden_size, backbone.layer_names, backbone.num_layers, layer=layer)
    with torch.no_grad():
        for h, lin in linears.items():
            clf.head(h).weight.copy_(lin.weight)
            clf.head(h).bias.copy_(lin.bias)
    return clf.eval()


def convert_multihead_model(model, model_id: str, name: str | None = None, normalize: bool | None = None,
                            heads: Sequence[str] = MULTIHEAD_HEADS):  # fmt: skip
    """A ``Wav2Vec2ForMultiHeadMultiLabelClassification`` (wav2vec2 + dropout + mean over time of the
    last hidden state + ``classifier1..3``) as (HFBackbone over its ``wav2vec2``, UtteranceClassifier).

    The classifier reads ``last_hidden_state``: state N for post-LN encoders, ``final_norm`` for
    stable-LN ones; mean pooling; no standardisation; the heads' weights are copied. Same logits as
    the model's own ``logits1..3`` (tested on a tiny model of the same shape)."""
    backbone, labels, linears, layer = multihead_parts(model, model_id, name=name, normalize=normalize, heads=heads)
    return backbone, classifier_from_heads(backbone, labels, linears, layer)


def convert_to_checkpoint(backbone_cfg: dict, out_path: str | Path) -> Path:
    """Load the remote multi-head model of ``backbone_cfg`` (``multihead_backbone`` keys, from the user's own
    configuration), convert it and save the classifier at ``out_path`` with a backbone record (kind
    ``multihead``): reading it back needs the user's ``backbone.trust_remote_code=true`` again."""
    from src.backbones.spec import record_of

    check_trust(str(backbone_cfg.get("model_id")), backbone_cfg.get("trust_remote_code"))
    args = {k: v for k, v in backbone_cfg.items() if k != "_target_"}
    backbone = multihead_backbone(**args)
    clf = classifier_from_heads(backbone, *backbone.converted_heads)
    clf.save(out_path, {"backbone": record_of(backbone, backbone_cfg), "backbone_name": backbone.name, "corpus": None,
                        "seed": None, "layer": clf.layer, "weighted": False, "converted_from": backbone.model_id})  # fmt: skip
    return Path(out_path)

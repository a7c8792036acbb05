"""Regenerate docs/figures.md and docs/figures/*.png: one figure per analysis from the embedded run.

    .venv/bin/python docs/make_gallery.py                 # every entry (about 30 min on 2 shared CPU cores)
    .venv/bin/python docs/make_gallery.py --only rsa,abx  # some entries; the page keeps the others' PNGs
    .venv/bin/python docs/make_gallery.py --list          # the entries and their commands

Each entry runs one README command (``train.py`` / ``analyze.py``) on the embedded Whisper tiny.en and the
Festival corpus (``data=synth``), with small settings where the default would take long (the first
``--utterances`` utterances; fewer items for the live-model analyses), in a scratch directory (``--work``,
its own cache and outputs; the repository's ``cache/`` and ``outputs/`` are not touched). The job draws its
figures at ``--dpi`` (``SPEECHINTERP_FIGURE_DPI``); the chosen PNG is copied into docs/figures/ with its
colours quantised (small files) and the page lists every figure with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUT = DOCS / "figures"


@dataclass(frozen=True)
class Entry:
    name: str  # docs/figures/<name>.png
    entry: str  # train.py | analyze.py
    overrides: tuple[str, ...]
    png: str  # the file of the run directory to show
    caption: str
    small: bool = False  # run on the first --utterances utterances (one voice: the corpus is ordered voice by voice)
    extra: tuple[str, ...] = field(default_factory=tuple)


ENTRIES = [
    Entry("probing_accuracy", "train.py", ("controls.selectivity=true", "controls.mdl=true"), "accuracy_over_layers.png",
          "Frame-level phone probes (linear) over layers: test accuracy with 95% bands over held-out sentences, "
          "the majority class as a dashed line.", small=True),
    Entry("probing_selectivity", "train.py", ("controls.selectivity=true", "controls.mdl=true"),
          "selectivity_over_layers.png",
          "Selectivity (Hewitt & Liang): left, the probe's accuracy and the control task's accuracy on the same test "
          "items; right, their difference.", small=True),
    Entry("probing_mdl", "train.py", ("controls.selectivity=true", "controls.mdl=true"),
          "mdl_compression_over_layers.png",
          "MDL (online code): compression relative to the uniform code; the dashed line at 1.0 is the uniform code.",
          small=True),
    Entry("cka", "analyze.py", ("analysis=cka",), "cka_self.png", "Layer x layer linear CKA."),
    Entry("rsa", "analyze.py", ("analysis=rsa", "analysis.n_perm=200"), "rsa_over_layers.png",
          "RSA of phone-class RDMs against each reference, the statistic in the legend; bands: the central 95% of "
          "the permutation null; hollow markers: p >= 0.05."),
    Entry("rsa_rdm", "analyze.py", ("analysis=rsa", "analysis.n_perm=200"), "rdm_layer02.png",
          "The model RDM of the middle layer, phones in phonological order (blocks by manner)."),
    Entry("cca", "analyze.py", ("analysis=cca", "analysis.max_frames=3000"), "pwcca_adjacent_layers.png",
          "PWCCA and mean CCA of each state with the next (held out), with their shuffled-frames nulls (dashed)."),
    Entry("abx", "analyze.py", ("analysis=abx", "analysis.max_items=1500"), "abx_over_layers.png",
          "ABX phone discrimination error within and across speakers; chance is 0.5."),
    Entry("dimred_pca", "analyze.py", ("analysis=dimred", "analysis.methods=[pca,lda]"), "pca_layer02_phone.png",
          "PCA of phone tokens at the middle layer, one colour x marker per phone; explained variance on the axes."),
    Entry("dimred_lda", "analyze.py", ("analysis=dimred", "analysis.methods=[pca,lda]"),
          "lda_centroid_accuracy_over_layers.png",
          "Nearest-centroid accuracy in LDA space at the measured layers, with the uniform and majority chance levels."),
    Entry("dimred_silhouette", "analyze.py", ("analysis=dimred", "analysis.methods=[pca,lda]"),
          "silhouette_manner_over_layers.png",
          "Silhouette by manner class, markers at the measured layers only (dotted across unmeasured ones)."),
    Entry("mutual_info", "analyze.py", ("analysis=mutual_info", "analysis.ks=[50]", "analysis.max_frames=20000"),
          "phone_purity_over_layers.png", "k-means units vs phones over layers."),
    Entry("speaker_gram", "analyze.py", ("analysis=speaker_gram",), "speaker_minus_sentence_over_layers.png",
          "Speaker vs sentence grouping of utterance means over layers."),
    Entry("decoder_lens", "analyze.py", ("analysis=decoder_lens", "analysis.max_utterances=6"),
          "decoder_lens_error_over_layers.png",
          "Decoder lens: Whisper's decoder reading each encoder state; error rates over layers."),
    Entry("logit_lens", "analyze.py", ("analysis=logit_lens", "analysis.max_utterances=6"),
          "*over_layers.png", "Logit lens over the decoder's layers."),
    Entry("context_mixing", "analyze.py", ("experiment=context_mixing", "analysis.components=[encoder]",
                                           "analysis.utterances=[kal__kal_0000]"),
          "heatmap_encoder_layer*.png", "Context mixing: word x word value zeroing and attention at one encoder layer."),
    Entry("attribution_plausibility", "analyze.py", ("analysis=attribution", "experiment=attribution"), "plausibility.png",
          "Feature attribution on the commands corpus (its utterance classifier trained on first use): how often the "
          "top-scoring word is a slot word, against a random ranking; with the default 4 utterances no intervals are "
          "drawn and n is in the title."),
    Entry("attribution_item", "analyze.py", ("analysis=attribution", "experiment=attribution"),
          "attribution_*feature_ablation.png",
          "One utterance: attribution over time on the waveform and spectrogram, and the word scores per input."),
]


def run(e: Entry, work: Path, utterances: int, dpi: int, log) -> Path:
    """Run the entry's command in ``work/runs/<run key>`` (shared by entries with the same command) and return
    its run directory; an existing finished run is reused."""
    key = e.entry.removesuffix(".py") + "_" + "_".join(o.replace("/", "-") for o in e.overrides)
    key += f"_first{utterances}" if e.small else ""
    key = "".join(c if c.isalnum() or c in "_-." else "-" for c in key)[:150]  # Hydra's override grammar
    run_dir = work / "runs" / key
    if (run_dir / "results.csv").exists():
        return run_dir
    cmd = [sys.executable, e.entry, *e.overrides, *e.extra, "logger=none", f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={work / 'cache'}", f"paths.output_dir={work / 'outputs'}"]  # fmt: skip
    if e.small:
        cmd.append(f"data.max_utterances={utterances}")
    env = {**os.environ, "SPEECHINTERP_FIGURE_DPI": str(dpi), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg"}  # fmt: skip
    t0 = time.perf_counter()
    print(f"[gallery] {e.name}: {' '.join(cmd[1:])}", flush=True)
    with open(work / f"{key}.log", "w") as fh:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    log.append((e.name, time.perf_counter() - t0, p.returncode))
    if p.returncode != 0:
        raise RuntimeError(f"{e.name}: exit {p.returncode}; see {work / f'{key}.log'}")
    return run_dir


def redraw_probing(run_dir: Path, dpi: int) -> None:
    """Draw a finished probing run's figures again from its results.csv with the current code (no retraining)."""
    import pandas as pd

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from src.reporting import figures as F
    from src.reporting.figures_analyses import probing_figures

    F.DPI = dpi
    rows = pd.read_csv(run_dir / "results.csv").to_dict("records")
    kind = "regression" if any(r.get("metric") == "pearson_r" for r in rows) else "classification"
    metric = "pearson_r" if kind == "regression" else "accuracy"
    corpus = str(json.loads((run_dir / "results.json").read_text()).get("meta", {}).get("corpus", ""))
    probing_figures(rows, run_dir, metric, kind, ", ".join(x for x in (str(rows[0].get("backbone", "")), corpus) if x))


def copy_small(src: Path, dst: Path, colours: int = 128) -> None:
    """``src`` as a palette PNG of ``colours`` colours (a fraction of the RGBA size) at ``dst``."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp.png")
        im.save(tmp, optimize=True)
        tmp.replace(dst)


def write_page(entries: list[Entry], utterances: int) -> Path:
    lines = [
        "# Figures: one per analysis",
        "",
        "What each analysis draws, from the embedded run: Whisper tiny.en (`backbone=whisper_tiny_en`) on the Festival",
        "corpus (`data=synth`, 60 sentences x 3 voices), with smaller settings where the default takes long (the",
        f"probes: the first {utterances} utterances, `data.max_utterances={utterances}`, i.e. one voice). The numbers can",
        "differ from the README's; the figures are what a run of the same command writes beside its `results.csv`.",
        "",
        "Regenerate with `.venv/bin/python docs/make_gallery.py` (about 30 min on 2 shared CPU cores; `--only NAME,...`",
        "for some). Conventions (src/reporting/figures.py): the title names the analysis, then the model and",
        "corpus; axes name the quantity, its range or direction (\"lower is better\"); chance, majority and null",
        "levels are dashed lines or bands; intervals are bands (or bars at isolated layers); colour bars name the",
        "quantity. Not in the gallery (they need a CTC model or an SAE, or run for long): faithfulness,",
        "attribution agreement, activation patching, head ablation, CTC lens, SAE evaluation; their figures",
        "follow the same conventions (src/reporting/figures_live.py).",
        "",
    ]
    for e in entries:
        png = OUT / f"{e.name}.png"
        if not png.exists():
            continue
        small = "" if not e.small else f" data.max_utterances={utterances}"
        lines += [f"## {e.name.replace('_', ' ')}", "", e.caption, "",
                  f"`python {e.entry} {' '.join(e.overrides)}{small}` -> `{e.png}`", "",
                  f"![{e.name}](figures/{e.name}.png)", ""]  # fmt: skip
    page = DOCS / "figures.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "speechinterp_gallery",
                    help="scratch directory (cache, run directories, logs)")  # fmt: skip
    ap.add_argument("--only", default="", help="comma-separated entry names (default: all)")
    ap.add_argument("--utterances", type=int, default=60, help="data.max_utterances of the small entries")
    ap.add_argument("--dpi", type=int, default=80)
    ap.add_argument("--list", action="store_true", help="print the entries and exit")
    args = ap.parse_args(argv)
    entries = ENTRIES
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {e.name for e in ENTRIES}
        if unknown:
            ap.error(f"unknown entries {sorted(unknown)}; choose from {[e.name for e in ENTRIES]}")
        entries = [e for e in ENTRIES if e.name in want]
    if args.list:
        for e in entries:
            print(f"{e.name:20s} {e.entry} {' '.join(e.overrides)} -> {e.png}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    log, failed = [], []
    for e in entries:
        try:
            run_dir = run(e, args.work, args.utterances, args.dpi, log)
        except RuntimeError as err:
            print(f"[gallery] FAILED {err}", flush=True)
            failed.append(e.name)
            continue
        if e.entry == "train.py":
            redraw_probing(run_dir, args.dpi)
        found = sorted(run_dir.glob(e.png))
        if not found:
            print(f"[gallery] {e.name}: no {e.png} in {run_dir}", flush=True)
            failed.append(e.name)
            continue
        copy_small(found[0], OUT / f"{e.name}.png")
    page = write_page(ENTRIES, args.utterances)
    total = sum(p.stat().st_size for p in OUT.glob("*.png"))
    for name, secs, rc in log:
        print(f"[gallery] {name}: {secs:.0f} s (exit {rc})")
    print(f"[gallery] {page} written; docs/figures/ holds {total / 1024:.0f} KB; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Integrated gradients completeness on the embedded Whisper: sum of attributions vs f(x) - f(b).

    .venv/bin/python bench/ig_completeness.py                     # 1 word x waveform, log-mel x silence (~5-12 min)
    .venv/bin/python bench/ig_completeness.py --inputs waveform spectrogram cnn --baselines silence noise \\
        --rules gausslegendre:32 riemann_trapezoid:32 gausslegendre:128 --targets asr_word classifier
    .venv/bin/python bench/ig_completeness.py --profile           # f along the straight path only (forwards)

Every row is ``src.attribution.methods.attribute_with_completeness(target, "integrated_gradients", baseline,
n_steps=n, ig_method=rule)`` on one utterance of the Festival corpus (``--data synth``, voice kal), printed as
a markdown table: f(x), f(b), their gap, the sum of the attributions, ``delta = f(x) - f(b) - sum``,
``ratio = sum / (f(x) - f(b))`` and whether ``|delta| <= tolerance * |f(x) - f(b)|`` (``--tolerance``, 0.05 as
``analysis.ig_tolerance``). Targets: ``asr_word`` = the log-prob of the first ``--words`` words of the model's
own transcript (teacher-forced); ``classifier`` = one logit of a seeded random linear head on the mean-pooled
layer-4 states (``--checkpoint`` for a trained UtteranceClassifier instead). ``--profile`` prints f(b + a (x - b))
at log-spaced a (forward passes only): where f is steep, a quadrature needs nodes.

Measured: docs/attribution.md ("IG completeness on Whisper").
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

ALPHAS = (0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0)


def load(data: str, n: int, data_dir: str):
    from hydra import compose, initialize_config_dir

    from src.backbones.whisper import WhisperBackbone
    from src.jobs.common import load_corpus

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"data={data}", "data.voices=[kal]", f"data.max_utterances={n}",
                                            f"paths.data_dir={data_dir}"])  # fmt: skip
    corpus = load_corpus(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = WhisperBackbone(model_id="embedded:tiny.en").eval()
    return corpus, bb


def random_classifier(bb, seed: int = 0):
    from src.probes.utterance import UtteranceClassifier

    torch.manual_seed(seed)
    clf = UtteranceClassifier({"head": ["a", "b", "c"]}, bb.hidden_size, bb.layer_names, bb.num_layers, layer=4)
    with torch.no_grad():
        for lin in clf.linears.values():
            lin.weight.normal_(0, 1.0 / bb.hidden_size**0.5)
    return clf.eval()


def targets(kind: str, bb, clf, utt, input_type: str, words: int):
    from src.attribution import classifier_target, whisper_token_targets

    if kind == "asr_word":
        return whisper_token_targets(bb, utt, input_type, level="word")[:words]
    head = next(iter(clf.heads))
    return [classifier_target(bb, clf, utt, head, input_type, class_index=0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synth", choices=["synth", "commands"])
    p.add_argument("--data-dir", default=str(ROOT / "outputs" / "bench_ig_completeness_data"),
                   help="where the one-voice corpus is synthesised (not data/: its settings differ from data=synth's)")
    p.add_argument("--utterances", type=int, default=1)
    p.add_argument("--targets", nargs="+", default=["asr_word"], choices=["asr_word", "classifier"])
    p.add_argument("--words", type=int, default=1, help="asr_word: the first n words of the transcript")
    p.add_argument("--checkpoint", default=None, help="a trained UtteranceClassifier (default: a random head)")
    p.add_argument("--inputs", nargs="+", default=["waveform", "spectrogram"])
    p.add_argument("--baselines", nargs="+", default=["silence"])
    p.add_argument("--rules", nargs="+", default=["gausslegendre:32"], help="ig_method:n_steps")
    p.add_argument("--snr-db", type=float, default=10.0)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8, help="internal_batch_size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="print f along the straight path (forwards only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from src.attribution.methods import attribute_with_completeness

    corpus, bb = load(args.data, args.utterances, args.data_dir)
    clf = None
    if "classifier" in args.targets:
        if args.checkpoint:
            from src.analyses.base import load_classifier

            _, clf, _ = load_classifier(args.checkpoint)
        else:
            clf = random_classifier(bb)
    what = "none" if clf is None else (args.checkpoint or "a seeded random linear head on layer 4")
    print(f"embedded whisper tiny.en; corpus {args.data}; tolerance {args.tolerance}; snr_db {args.snr_db}; "
          f"classifier: {what}", flush=True)  # fmt: skip
    if args.profile:
        print("| utterance | target | input | baseline | " + " | ".join(f"a={a:g}" for a in ALPHAS) + " |")
        print("|---" * (4 + len(ALPHAS)) + "|")
    else:
        print("| utterance | target | input | baseline | rule | steps | f(x) | f(b) | f(x)-f(b) | sum attr | delta | ratio "
              "| complete | s |")  # fmt: skip
        print("|---" * 14 + "|")
    for i in range(min(args.utterances, len(corpus))):
        utt = corpus[i]
        for kind in args.targets:
            for input_type in args.inputs:
                for t in targets(kind, bb, clf, utt, input_type, args.words):
                    name = f"{kind}:{t.info.get('token') or t.info.get('class')}"
                    for bname in args.baselines:
                        b = t.baseline(bname, snr_db=args.snr_db, seed=0)
                        if args.profile:
                            with torch.no_grad():
                                xs = torch.cat([b + a * (t.x0 - b) for a in ALPHAS])
                                f = torch.cat([t(xs[k : k + args.batch]) for k in range(0, len(ALPHAS), args.batch)])
                            print(f"| {utt.id} | {name} | {input_type} | {bname} | "
                                  + " | ".join(f"{v:.3f}" for v in f.tolist()) + " |", flush=True)  # fmt: skip
                            continue
                        for rule in args.rules:
                            method, steps = rule.split(":")
                            t0 = time.perf_counter()
                            _, _, c = attribute_with_completeness(t, "integrated_gradients", b, n_steps=int(steps),
                                                                  ig_method=method, internal_batch_size=args.batch)  # fmt: skip
                            secs = time.perf_counter() - t0
                            ok = "yes" if not c.fails(args.tolerance) else "**no**"
                            print(f"| {utt.id} | {name} | {input_type} | {bname} | {method} | {steps} | {c.f_x:.3f} | "
                                  f"{c.f_b:.3f} | {c.gap:.3f} | {c.attribution_sum:.3f} | {c.delta:.3f} | {c.ratio:.3f} "
                                  f"| {ok} | {secs:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Evaluating SAEs in speech terms (docs/sae.md, "Evaluation").

Three kinds of number per SAE (one SAE per layer; ``analyze.py analysis=sae_eval``):

- **intrinsic**, on cached frames of the evaluated utterances (raw space, i.e. after ``denormalize``):
  fraction of variance unexplained ``FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (the mean over the
  evaluated frames), ``L0`` = mean number of non-zero latents per frame, ``dead`` = share of latents never
  active over the N evaluated frames, ``dense`` = share active on more than ``dense_threshold`` of them, and
  the histogram of log10 activation frequencies;
- **spliced-in downstream cost**: the layer's state is replaced inside the live model by the SAE's
  reconstruction (a forward hook on the backbone's module for that state, :func:`splice`; state ``k`` is the
  output of layer ``k``, state 0 the input of the first layer (a pre-hook), ``final_norm`` the output of the
  final norm: src/layers.py). Only the frames of the real audio are replaced; Whisper's padding frames of the
  30 s window (which the SAE never saw in training) keep their own values. Whisper: decoder cross-entropy
  per token on the transcript (teacher-forced with the model's prompt, end-of-text included; the reference
  text tokenised by the model's tokenizer, or the clean model's own greedy transcript when there is no
  tokenizer or ``transcript: model``) and WER of greedy re-decoding against the reference text; ``*ForCTC``
  models: mean log-prob per frame of the clean model's greedy CTC path (``ctc_logprob``). The same with the
  state zero-ablated and mean-ablated (the mean of the state over the evaluated cached frames) gives the
  reference points: ``loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` (and ``_mean`` against the
  mean ablation);
- **probing**: a phone probe (closed-form ridge classifier, src/functional/ridge.py; penalty chosen on the
  validation utterances) on the SAE latents and on the raw state, frames of the same train / val / test
  utterances; test accuracy of both.

The causal check of one latent (item 5) is :func:`latent_effects`: subtract ``z_i * W_dec[i]`` (in raw
units) from the state at every real frame where latent ``i`` fires, and measure the change of the
transcript's teacher-forced log-probability and of the frame-level phone error of a phone probe read at
the model's last encoder state (trained on clean cached states of the training utterances; evaluated on the
live model's states of the evaluated utterances, clean vs ablated, per phone). Frame-level probe error was
chosen over CTC phone error because Whisper, the default model, has no CTC head.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from src.sae.io import META_FILE, SAEFileError, SAEMismatchError, load_sae
from src.sae.model import SAE

log = logging.getLogger(__name__)

MODES = ("clean", "sae", "zero", "mean")


class SAEEvalError(ValueError):
    """Bad evaluation input (no SAE found, an SAE that does not fit the cache, ...); the message says which."""


# ----------------------------------------------------------------------------- finding SAEs


def _is_sae_dir(p: Path) -> bool:
    return (p / META_FILE).is_file()


def find_sae_dirs(spec: str | Path, output_dir: str | Path = "outputs") -> list[Path]:
    """The SAE folders named by ``spec``: one saved SAE, a folder of per-layer SAEs (``saes/layer_<name>/``,
    what ``train.py experiment=sae`` writes, or the run folder holding ``saes/``), or ``auto``: the most
    recently written such folder under ``output_dir``. Sorted by name; none found is an SAEEvalError."""
    if str(spec) == "auto":
        root = Path(output_dir)
        metas = sorted(root.rglob(META_FILE), key=lambda f: f.stat().st_mtime) if root.is_dir() else []
        metas = [m for m in metas if not any(part.startswith(".") for part in m.relative_to(root).parts)]
        if not metas:
            raise SAEEvalError(f"analysis.sae=auto: no saved SAE ({META_FILE}) under {root.resolve()}; train some with "
                               "`python train.py experiment=sae` or give analysis.sae=<folder>")  # fmt: skip
        spec = metas[-1].parent.parent
        log.info("analysis.sae=auto: the newest SAEs are in %s", spec)
    p = Path(spec).expanduser()
    if not p.exists():
        raise SAEEvalError(f"analysis.sae={str(spec)!r}: no such file or folder")
    if _is_sae_dir(p):
        return [p]
    for base in (p, p / "saes"):
        subs = (
            sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
            if base.is_dir()
            else []
        )
        found = [d for d in subs if _is_sae_dir(d)]
        if found:
            return found
    if (p / "cfg.json").is_file() or (p / "sae_weights.safetensors").is_file():
        raise SAEFileError(
            f"{p / META_FILE}: missing; {p} is not a complete saved SAE (the framework's metadata)"
        )
    raise SAEEvalError(f"analysis.sae={str(spec)!r}: no saved SAE there (a folder with {META_FILE}, or a folder of "
                       "such folders)")  # fmt: skip


def load_saes(
    spec, output_dir="outputs", backbone=None, layer_names: Sequence[str] | None = None
) -> list[SAE]:
    """Every SAE of :func:`find_sae_dirs`, loaded and checked (before any model work) against ``backbone``
    (width and layer, :func:`src.sae.io.check_backbone`) or, without one, against the cache's
    ``layer_names``."""
    out = []
    for d in find_sae_dirs(spec, output_dir):
        sae = load_sae(d, backbone=backbone)
        sae.meta.setdefault("path", str(d))
        sae.meta["path"] = str(d)
        if layer_names is not None and str(sae.meta.get("layer_name")) not in [str(n) for n in layer_names]:
            raise SAEMismatchError(f"{d}: the SAE was trained on layer {sae.meta.get('layer_name')!r}, which the "
                                   f"activation cache does not hold (its layers: {', '.join(map(str, layer_names))})")  # fmt: skip
        out.append(sae)
    return out


def state_index(sae: SAE, names: Sequence[str], source: str = "SAE") -> int:
    """The state index of the SAE's layer among ``names`` (a backbone's or a cache's ``layer_names``)."""
    layer = sae.meta.get("layer_name")
    names = [str(n) for n in names]
    if layer is None or str(layer) not in names:
        raise SAEMismatchError(f"{source}: the SAE's layer {layer!r} is not one of this model's states "
                               f"({', '.join(names)})")  # fmt: skip
    return names.index(str(layer))


def check_cache(sae: SAE, acts, source: str = "SAE") -> int:
    """The cache state index of the SAE's layer; width or layer mismatch is an SAEMismatchError naming both."""
    if int(acts.hidden_size) != sae.d_in:
        raise SAEMismatchError(f"{source}: the SAE reads {sae.d_in}-dim activations (layer {sae.meta.get('layer_name')!r}) "
                               f"but the cache of {acts.backbone!r} holds {acts.hidden_size}-dim states")  # fmt: skip
    return state_index(sae, list(acts.layer_names), source)


# ----------------------------------------------------------------------------- reconstruction in raw units


def reconstruct_fn(sae: nn.Module) -> Callable[[Tensor], Tensor]:
    """Raw state (n, D) -> its replacement (n, D): an :class:`SAE` reconstructs in its own space
    (``denormalize(sae(normalize(x)))``); any other module (e.g. an identity, for tests) is applied as is."""
    if isinstance(sae, SAE):
        return lambda x: sae.denormalize(sae(sae.normalize(x.float()))).to(x.dtype)
    return sae


def latents_of(sae: SAE, x: Tensor | np.ndarray, chunk: int = 8192) -> Tensor:
    """Latents ``(n, F)`` of raw states ``x`` (n, D), in chunks, float32."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    out = []
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            out.append(sae.encode(sae.normalize(x[s : s + chunk].float())))
    return torch.cat(out) if out else torch.zeros(0, sae.d_sae)


def decoder_rows_raw(sae: SAE) -> Tensor:
    """``W_dec`` in raw units ``(F, D)``: a latent's contribution to the raw state is ``z_i * row_i``."""
    w = sae.W_dec.detach().float()
    if sae.has_normalisation:
        w = w * torch.as_tensor(sae.meta["norm_std"], dtype=torch.float32)[None, :]
    return w


def ablate_latent_fn(sae: SAE, latent: int) -> Callable[[Tensor], Tensor]:
    """State (n, D) -> the state minus latent ``latent``'s decoder contribution ``z_i * W_dec[i]`` (raw units)."""
    row = decoder_rows_raw(sae)[latent]

    def fn(x: Tensor) -> Tensor:
        with torch.no_grad():
            z = sae.encode(sae.normalize(x.float()))[:, latent]  # (n,)
        return (x.float() - z[:, None] * row.to(x.device)[None, :]).to(x.dtype)

    return fn


# ----------------------------------------------------------------------------- the splice


def state_module(backbone, state: int) -> tuple[nn.Module, bool]:
    """``(module, pre)``: where state ``state`` of ``backbone.layer_names`` flows. State 0: the input of the
    first layer (a forward pre-hook); state k: the output of layer k; ``final_norm``: the final norm's output."""
    names = list(backbone.layer_names)
    n_res = int(backbone.num_layers)
    layers = backbone.layer_modules()
    if not 0 <= state < len(names):
        raise SAEMismatchError(f"state {state} is not one of {backbone.name!r}'s states 0..{len(names) - 1}")
    if state == 0:
        return layers[0], True
    if state < n_res:
        return layers[state - 1], False
    if names[state] == "final_norm":
        norm = backbone.final_norm_module()
        if norm is None:
            raise SAEMismatchError(
                f"backbone {backbone.name!r} has no final norm module for state 'final_norm'"
            )
        return norm, False
    raise SAEMismatchError(f"state {names[state]!r} of {backbone.name!r} has no module to hook")


def _replace(h: Tensor, fn: Callable[[Tensor], Tensor], n_frames: Sequence[int] | None) -> Tensor:
    """``h`` (B, T, D) with its first ``n_frames[b]`` frames of each item replaced by ``fn`` (all frames when None)."""
    b, t, d = h.shape
    counts = [t] * b if n_frames is None else [min(int(n), t) for n in n_frames]
    if len(counts) != b:
        raise ValueError(f"splice: {len(counts)} frame counts for a batch of {b}")
    real = torch.cat([h[i, :n] for i, n in enumerate(counts)])  # (sum n, D)
    new = fn(real)
    if new.shape != real.shape:
        raise ValueError(
            f"splice: the replacement has shape {tuple(new.shape)}, the state {tuple(real.shape)}"
        )
    out = h.clone()
    s = 0
    for i, n in enumerate(counts):
        out[i, :n] = new[s : s + n].to(h.dtype)
        s += n
    return out


@contextmanager
def splice(
    backbone, state: int, fn: Callable[[Tensor], Tensor] | None, n_frames: Sequence[int] | None = None
):
    """Within the block, state ``state`` of the live model is ``fn(state)`` on the real frames (the first
    ``n_frames[b]`` of each item; all when None). ``fn=None``: nothing installed (the clean model). The hook
    goes through ``backbone.hooks`` and is removed on exit, also on error."""
    if fn is None:
        yield
        return
    module, pre = state_module(backbone, state)
    if pre:

        def pre_hook(_m, args, kwargs):
            if args:
                return (_replace(args[0], fn, n_frames), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": _replace(kwargs["hidden_states"], fn, n_frames)}

        with backbone.hooks([(module, pre_hook)], pre=True, with_kwargs=True):
            yield
        return

    def hook(_m, _args, output):
        if isinstance(output, (tuple, list)):
            return (_replace(output[0], fn, n_frames), *output[1:])
        return _replace(output, fn, n_frames)

    with backbone.hooks([(module, hook)]):
        yield


# ----------------------------------------------------------------------------- downstream measures


@dataclass
class Item:
    """One evaluated utterance: waveform, id, real frames, reference text, forced transcript token ids."""

    uid: str
    wave: Tensor
    n_frames: int
    text: str
    tokens: list[int] = field(default_factory=list)
    raw_text: str = ""  # the transcript as written (case, punctuation), what is forced; "" -> text


def _caps(bb, items: Sequence[Item], per_second: float = 10.0, extra: int = 10) -> list[int]:
    return [int(math.ceil(per_second * len(it.wave) / bb.sample_rate)) + extra for it in items]


def whisper_forward(bb, items: Sequence[Item], prompt: list[int], decode: bool = True, language="en",
                    task="transcribe", keep_states: bool = False) -> dict:  # fmt: skip
    """Under whatever splice is active: the encoder on the items' windows, the teacher-forced log-prob of each
    item's ``tokens`` + end-of-text (``nll`` sum per item, ``n_tokens``), the logits, and greedy ids when
    ``decode``; ``keep_states``: also every encoder state over the windows (``states`` (S, B, F, D))."""
    states = bb.window_states([it.wave for it in items], [it.uid for it in items])  # (S, B, F, D)
    enc = states[-1]  # (B, F, D) the encoder output (final_norm)
    eos = int(bb.eos_token_id)
    nll, ntok, logits = [], [], []
    P = len(prompt)
    for b, it in enumerate(items):
        ids = torch.tensor([prompt + list(it.tokens)], device=enc.device)  # (1, P + n)
        h = bb.decoder_output(ids, enc[b : b + 1])  # (1, P + n, d)
        lg = bb.output_head()(h[:, P - 1 :]).float()  # (1, n + 1, V): predicts tokens + end-of-text
        tgt = torch.tensor(list(it.tokens) + [eos], device=lg.device)
        lp = torch.log_softmax(lg, dim=-1)[0].gather(-1, tgt[:, None]).squeeze(-1)  # (n + 1,)
        nll.append(float(-lp.double().sum()))
        ntok.append(len(tgt))
        logits.append(lg[0])
    out = {"nll": np.array(nll), "n_tokens": np.array(ntok), "logits": logits}
    if keep_states:
        out["states"] = states
    if decode:
        out["ids"], _ = bb.generate_from_encoder_states(enc, _caps(bb, items), language, task)
    return out


def ctc_forward(bb, items: Sequence[Item], paths: list[list[int]] | None = None) -> dict:
    """A ``*ForCTC`` model under whatever splice is active: per item the frame log-probs of the model's own CTC
    head; with ``paths`` (the clean model's greedy labels per item) the CTC log-likelihood of that path
    (``ll`` sum per item) and ``n_frames``."""
    readout = bb.ctc_head()
    lps = []
    for it in items:
        run, t = bb.encoder_run(it.wave, it.uid)
        out = run()
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        lps.append(torch.log_softmax(readout.head(h[:, :t]).float(), dim=-1)[0])  # (T, V)
    res = {"log_probs": lps, "n_frames": np.array([len(lp) for lp in lps])}
    if paths is not None:
        ll = []
        for lp, path in zip(lps, paths):
            if not path:
                ll.append(float(lp[:, readout.blank].double().sum()))
                continue
            loss = torch.nn.functional.ctc_loss(lp[:, None], torch.tensor([path]), torch.tensor([len(lp)]),
                                                torch.tensor([len(path)]), blank=readout.blank, reduction="sum",
                                                zero_infinity=False)  # fmt: skip
            ll.append(float(-loss.double()))
        res["ll"] = np.array(ll)
    return res


def greedy_ctc(lp: Tensor, blank: int) -> list[int]:
    from src.lenses.ctc import greedy_ids

    return greedy_ids(lp, blank)


# ----------------------------------------------------------------------------- intrinsic


def intrinsic(sae: SAE, x: np.ndarray, dense_threshold: float = 0.1, chunk: int = 8192) -> dict:
    """FVU, L0, dead and dense shares and per-latent firing counts on raw frames ``x`` (N, D)."""
    n = len(x)
    if n == 0:
        raise SAEEvalError("no frames to evaluate the SAE on")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    mean = xt.double().mean(0)
    sse = tot = 0.0
    l0 = 0.0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, n, chunk):
            xc = xt[s : s + chunk]
            z = sae.encode(sae.normalize(xc))
            xh = sae.denormalize(sae.decode(z))
            sse += float((xc.double() - xh.double()).square().sum())
            tot += float((xc.double() - mean).square().sum())
            act = z > 0
            l0 += float(act.sum())
            fires += act.sum(0).double()
    freq = (fires / n).numpy()
    return {"fvu": sse / tot if tot > 0 else float("nan"), "l0": l0 / n, "dead": float((freq == 0).mean()),
            "dense": float((freq > dense_threshold).mean()), "n_frames": n, "freq": freq}  # fmt: skip


# ----------------------------------------------------------------------------- probes


def ridge_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0)):  # fmt: skip
    """A closed-form ridge classifier (src/functional/ridge.py: standardised features, penalty by validation
    accuracy); returns ``predict(x) -> class ids`` and the chosen alpha. Constant training columns are left
    out (a dead latent carries nothing)."""
    from src.functional.ridge import RidgeStats, select_alpha_accuracy

    (xtr, ytr), (xva, yva) = train, val
    keep = np.flatnonzero(np.asarray(xtr).std(0) > 0)
    c = int(max(ytr.max(initial=0), yva.max(initial=0))) + 1
    st = RidgeStats()
    st.update(
        torch.as_tensor(xtr[:, keep], dtype=torch.float64),
        torch.nn.functional.one_hot(torch.as_tensor(ytr), c).double(),
    )
    alpha, _ = select_alpha_accuracy(st, xva[:, keep], yva, alphas, standardize=True)
    w, b = st.solve(float(alpha), standardize=True)

    def predict(x: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(np.asarray(x)[:, keep], dtype=torch.float64) @ w + b
        return s.argmax(-1).numpy()

    return predict, float(alpha)


def phone_frames(acts, corpus, utterances: Sequence[int], tier: str = "phones"):
    """Labelled frames of ``utterances`` (src.datamodules.alignment.frame_items: the project's one rule):
    rows, labels, utterance of each."""
    from src.datamodules.alignment import frame_items

    fi = frame_items(acts, corpus, tier, on_missing="skip", utterances=list(utterances))
    return fi.rows, fi.labels, fi.utt


def read_state(acts, state: int, rows: np.ndarray) -> np.ndarray:
    from src.activations.reader import read_rows

    return read_rows(acts.layer(state), rows, np.float32)


# ----------------------------------------------------------------------------- the evaluation


@dataclass
class EvalOptions:
    dense_threshold: float = 0.1
    max_frames: int | None = 20000
    transcript: str = "auto"  # auto | reference | model
    language: str | None = "en"
    task: str = "transcribe"
    wer: bool = True
    probe: bool = True
    tier: str = "phones"
    seed: int = 0
    max_utterances: int | None = None  # downstream and causal check: the first n test utterances only
    probe_max_frames: int | None = 8000  # phone probes: at most this many training frames (seeded subsample)


def forced_tokens(bb, items: list[Item], how: str, language, task) -> str:
    """Fill ``item.tokens``: the reference text through the tokenizer, or the clean model's greedy transcript;
    returns which was used."""
    tok = bb.tokenizer()
    if how == "reference" and tok is None:
        raise SAEEvalError(f"analysis.transcript=reference needs the model's tokenizer; backbone {bb.name!r} has none "
                           "(use transcript=model)")  # fmt: skip
    use = "reference" if how == "reference" or (how == "auto" and tok is not None) else "model"
    if use == "reference":
        for it in items:
            text = (it.raw_text or it.text).strip()  # as written: Whisper writes case and punctuation
            it.tokens = [int(t) for t in tok.encode(" " + text, add_special_tokens=False)]
    else:
        ids = bb.transcribe_ids([it.wave for it in items], language if bb.is_multilingual else None, task)
        for it, t in zip(items, ids):
            it.tokens = [int(x) for x in t]
    return use


def make_items(bb, corpus, utterances: Sequence[int]) -> list[Item]:
    from src.lenses.scoring import reference_texts

    texts = reference_texts(corpus, utterances, "analysis=sae_eval", error=SAEEvalError)
    out = []
    for u, text in zip(utterances, texts):
        utt = corpus[int(u)]
        w = torch.as_tensor(np.asarray(utt.audio, dtype=np.float32))
        ann = corpus.annotation(int(u))
        raw = " ".join(ann.text.split()) if ann.text and ann.text.strip() else ""
        out.append(Item(str(utt.id), w, int(bb.num_frames(len(w))), text, raw_text=raw))
    return out


def downstream(bb, state: int, fns: dict[str, Callable | None], items: list[Item], opts: EvalOptions,
               batch: int = 4) -> dict[str, dict]:  # fmt: skip
    """Per mode (``clean`` / ``sae`` / ``zero`` / ``mean`` ...: ``fns[mode]`` the replacement or None): Whisper CE
    per token and WER (``wer``), or a CTC model's log-prob of the clean greedy path per frame."""
    from src.functional.text import error_rate_normalizer
    from src.lenses.scoring import error_stats
    from src.progress import progress

    out = {}
    if getattr(bb, "has_decoder", False):
        prompt = bb.decoder_prompt_ids(opts.language or "en", opts.task)
        norm = error_rate_normalizer(opts.language)
        bar = progress(total=len(fns) * len(items), desc=f"SAE downstream cost ({', '.join(fns)})", unit="utt")
        for mode, fn in fns.items():
            nll = ntok = 0.0
            edits = words = 0
            for s in range(0, len(items), batch):
                chunk = items[s : s + batch]
                with torch.no_grad(), splice(bb, state, fn, [it.n_frames for it in chunk]):
                    r = whisper_forward(
                        bb, chunk, prompt, decode=opts.wer, language=opts.language, task=opts.task
                    )
                nll += float(r["nll"].sum())
                ntok += float(r["n_tokens"].sum())
                if opts.wer:
                    for it, ids in zip(chunk, r["ids"]):
                        e, n, _, _ = error_stats(it.text, bb.decode_ids(ids), norm)
                        edits, words = edits + e, words + n
                bar.update(len(chunk))
            out[mode] = {"ce": nll / ntok, "n_tokens": int(ntok)}
            if opts.wer:
                out[mode]["wer"] = edits / max(words, 1)
        bar.close()
        return out
    if not hasattr(bb, "ctc_head"):
        raise SAEEvalError(f"backbone {bb.name!r} has neither a decoder nor a CTC head: no downstream cost")
    blank = bb.ctc_head().blank
    with torch.no_grad():
        clean = ctc_forward(bb, items)
    paths = [greedy_ctc(lp, blank) for lp in clean["log_probs"]]
    for mode, fn in fns.items():
        with torch.no_grad(), splice(bb, state, fn, None):
            # the wav2vec2 family runs unpadded single items: every frame is real
            r = ctc_forward(bb, items, paths)
        out[mode] = {
            "ctc_logprob": float(r["ll"].sum() / r["n_frames"].sum()),
            "ce": float(-r["ll"].sum() / r["n_frames"].sum()),
        }
    return out


def loss_recovered(ce: dict[str, float], ref: str) -> float:
    den = ce[ref] - ce["clean"]
    return float((ce[ref] - ce["sae"]) / den) if den != 0 else float("nan")


def evaluate_sae(
    sae: SAE, acts, corpus, split: dict[str, np.ndarray], bb=None, opts: EvalOptions | None = None
) -> dict:
    """All measures of one SAE: ``{"rows": [...], "freq": (F,) firing frequencies, ...}`` (see the module doc).
    ``split``: utterance indices ``train`` / ``val`` / ``test``; intrinsic and downstream on ``test``."""
    opts = opts or EvalOptions()
    state = check_cache(sae, acts, sae.meta.get("path", "SAE"))
    name = str(acts.layer_names[state])
    base = {"layer": state, "layer_name": name, "sae": Path(str(sae.meta.get("path", ""))).name,
            "architecture": sae.architecture, "d_sae": sae.d_sae}  # fmt: skip
    rows = []
    test = [int(u) for u in split["test"]]
    lengths = np.asarray(acts.lengths, dtype=np.int64)
    offsets = np.asarray(acts.offsets, dtype=np.int64)
    rows_test = np.concatenate([offsets[u] + np.arange(lengths[u]) for u in test])
    if opts.max_frames is not None and len(rows_test) > opts.max_frames:
        rng = np.random.default_rng(opts.seed)
        rows_test = np.sort(rng.choice(rows_test, int(opts.max_frames), replace=False))
    x = read_state(acts, state, rows_test)
    t0 = time.perf_counter()
    ins = intrinsic(sae, x, opts.dense_threshold)
    for m in ("fvu", "l0", "dead", "dense"):
        rows.append({**base, "metric": m, "value": ins[m], "n_frames": ins["n_frames"]})
    out = {"rows": rows, "freq": ins["freq"], "state": state, "layer_name": name}
    mean_state = torch.as_tensor(x.mean(0), dtype=torch.float32)
    if bb is not None:
        items = make_items(bb, corpus, test[: opts.max_utterances] if opts.max_utterances else test)
        used = (
            forced_tokens(bb, items, opts.transcript, opts.language, opts.task) if bb.has_decoder else "ctc"
        )
        fns = {"clean": None, "sae": reconstruct_fn(sae), "zero": lambda h: torch.zeros_like(h),
               "mean": lambda h: mean_state.to(h.dtype).expand_as(h).clone()}  # fmt: skip
        t1 = time.perf_counter()
        ds = downstream(bb, state, fns, items, opts)
        log.info("sae_eval %s: downstream cost on %d utterances x %d modes in %.1f s", name, len(items), len(fns),
                 time.perf_counter() - t1)  # fmt: skip
        for mode, r in ds.items():
            for k, v in r.items():
                if k != "n_tokens":
                    rows.append({**base, "metric": f"{k}_{mode}", "value": float(v), "transcript": used,
                                 "n_utterances": len(items)})  # fmt: skip
        ce = {m: r["ce"] for m, r in ds.items()}
        for ref in ("zero", "mean"):
            rows.append({**base, "metric": "loss_recovered" if ref == "zero" else "loss_recovered_mean",
                         "value": loss_recovered(ce, ref), "transcript": used, "n_utterances": len(items)})  # fmt: skip
        out["downstream"] = ds
    if opts.probe:
        t1 = time.perf_counter()
        out["probe"] = probe_rows(sae, acts, corpus, split, state, base, opts)
        log.info("sae_eval %s: phone probes in %.1f s", name, time.perf_counter() - t1)
        rows.extend(out["probe"])
    log.info(
        "sae_eval %s: %s (%.1f s)",
        name,
        ", ".join(f"{r['metric']}={r['value']:.4g}" for r in rows),
        time.perf_counter() - t0,
    )
    return out


def probe_rows(sae: SAE, acts, corpus, split, state: int, base: dict, opts: EvalOptions) -> list[dict]:
    """Phone probe test accuracy on the raw state and on the SAE latents (same frames, same split)."""
    sets = {}
    rng = np.random.default_rng(opts.seed)
    for part in ("train", "val", "test"):
        rows, labels, _ = phone_frames(acts, corpus, split[part], opts.tier)
        if part == "train" and opts.probe_max_frames is not None and len(rows) > opts.probe_max_frames:
            keep = np.sort(rng.choice(len(rows), int(opts.probe_max_frames), replace=False))
            rows, labels = rows[keep], labels[keep]
        sets[part] = (rows, labels)
    classes = sorted(set(sets["train"][1].tolist()))
    index = {c: i for i, c in enumerate(classes)}
    data = {}
    for part, (rows, labels) in sets.items():
        keep = np.array([lab in index for lab in labels.tolist()], dtype=bool)
        data[part] = (rows[keep], np.array([index[lab] for lab in labels[keep].tolist()], dtype=np.int64))
    if any(len(d[0]) == 0 for d in data.values()) or len(classes) < 2:
        log.warning("sae_eval: phone probe skipped (a split without labelled frames or fewer than 2 phones)")
        return []
    out = []
    for space in ("raw", "latents"):
        feats = {}
        for part, (rows, _) in data.items():
            x = read_state(acts, state, rows)
            feats[part] = x if space == "raw" else latents_of(sae, x).numpy()
        predict, alpha = ridge_probe((feats["train"], data["train"][1]), (feats["val"], data["val"][1]))
        acc = float((predict(feats["test"]) == data["test"][1]).mean())
        out.append({**base, "metric": f"phone_probe_acc_{space}", "value": acc, "alpha": alpha,
                    "n_frames": int(len(data["test"][1])), "n_classes": len(classes)})  # fmt: skip
    return out


# ----------------------------------------------------------------------------- the causal check


def latent_effects(sae: SAE, bb, acts, corpus, split: dict[str, np.ndarray], latents: Sequence[int],
                   opts: EvalOptions | None = None) -> list[dict]:  # fmt: skip
    """Item 5: per latent, the change in the transcript's log-probability (sum over tokens of the evaluated
    utterances, teacher-forced, :func:`whisper_forward`; a CTC model: the clean greedy path's log-likelihood)
    when its decoder contribution is subtracted at the SAE's layer, and the change of a frame-level phone
    probe's error at the model's last encoder state, overall and per phone (``phone_error_delta`` is a dict)."""
    opts = opts or EvalOptions()
    state = check_cache(sae, acts, sae.meta.get("path", "SAE"))
    test = [int(u) for u in split["test"]][: opts.max_utterances or None]
    items = make_items(bb, corpus, test)
    if bb.has_decoder:
        forced_tokens(bb, items, opts.transcript, opts.language, opts.task)
    read = (
        acts.layer_index("final_norm") if "final_norm" in list(acts.layer_names) else int(acts.num_layers) - 1
    )
    probe = _read_out_probe(acts, corpus, split, read, opts)
    fr_rows, fr_labels, fr_utt = phone_frames(acts, corpus, test, opts.tier)
    local = fr_rows - np.asarray(acts.offsets)[fr_utt]
    pos = {u: i for i, u in enumerate(test)}

    def measure(fn):
        with torch.no_grad(), splice(bb, state, fn, [it.n_frames for it in items]):
            if bb.has_decoder:
                prompt = bb.decoder_prompt_ids(opts.language or "en", opts.task)
                r = whisper_forward(bb, items, prompt, decode=False, keep_states=True)
                lp = -float(r["nll"].sum())
                enc = r["states"][read]  # (B, F, D): the read-out state, downstream of the ablation
                h = torch.stack([enc[pos[int(u)], int(t)] for u, t in zip(fr_utt, local)]).numpy()
            else:
                raise SAEEvalError("the causal check is implemented for Whisper (a decoder) only")
        wrong = probe[0](h) != probe[1](fr_labels)
        return lp, wrong

    lp0, wrong0 = measure(None)
    out = []
    phones = sorted(set(fr_labels.tolist()))
    for i in latents:
        lp, wrong = measure(ablate_latent_fn(sae, int(i)))
        per_phone = {p: float(wrong[fr_labels == p].mean() - wrong0[fr_labels == p].mean()) for p in phones}
        out.append({"latent": int(i), "logprob_clean": lp0, "logprob_ablated": lp, "logprob_delta": lp - lp0,
                    "phone_error_clean": float(wrong0.mean()), "phone_error_ablated": float(wrong.mean()),
                    "phone_error_delta": float(wrong.mean() - wrong0.mean()), "per_phone": per_phone,
                    "n_utterances": len(items), "n_frames": int(len(fr_labels))})  # fmt: skip
    return out


def _read_out_probe(acts, corpus, split, read: int, opts: EvalOptions):
    """``(predict(x) -> class ids, encode(labels) -> class ids)`` of a phone probe on clean cached state ``read``."""
    parts = {p: phone_frames(acts, corpus, split[p], opts.tier) for p in ("train", "val")}
    classes = sorted(set(parts["train"][1].tolist()))
    index = {c: i for i, c in enumerate(classes)}

    def enc(labels):
        return np.array([index.get(x, -1) for x in np.asarray(labels).tolist()], dtype=np.int64)

    data = {}
    for p, (rows, labels, _) in parts.items():
        y = enc(labels)
        data[p] = (read_state(acts, read, rows[y >= 0]), y[y >= 0])
    predict, _ = ridge_probe(data["train"], data["val"])
    return predict, enc

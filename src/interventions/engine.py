"""The intervention engine: capture, patch, ablate, sweep (batched and exact), attribution patching.

Everything goes through the backbone surface (``layer_modules()``, ``attention_modules()`` and their
``out_proj``, ``mlp_modules()``, ``final_norm_module()``, the Whisper decoder surface, ``teacher_forced``,
``decoder_logits``, ``encoder_run``) and the hook toolkit (src/backbones/hooks.py): every hook is installed in a
``with`` block and removed on exit and on error.

Batched sweeps (:func:`patch_sweep`): the base run (the corrupted input for ``denoising``, the clean one for
``noising``) is run once with every encoder layer's call recorded; a site of the encoder at state ``k`` is then
patched in ``chunk`` copies of state ``k`` at once and only layers ``k+1..N`` are re-run (a head/MLP of layer
``k``, whose input is state ``k-1``: copies of state ``k-1``, layers ``k..N``), on the batch of copies, with the
recorded call's other
arguments (masks, position bias) broadcast to the batch; Whisper's decoder then reads each copy's encoder
output, teacher-forced on the one token sequence both runs share. Decoder and cross-attention sites reuse the
base run's encoder output and run only the decoder on the batch of copies. The literal loop (one full forward
per site) is ``batched=False`` here and, written independently, tests/reference/interventions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from src.backbones.hooks import capture_layer_inputs, first_output, forward_hooks, record_outputs
from src.interventions.sites import InterventionError, Site, hook_point, validate_site

# ============================================================================ inputs and outputs


@dataclass
class Inputs:
    """One input prepared for the live model.

    ``frames``: encoder frames of the utterance; ``window``: frames the encoder sees (Whisper: its whole window,
    the wav2vec2 family: = ``frames``); ``features``: Whisper's log-mel ``(1, M, 2F)`` (None for the wav2vec2
    family, which reads ``waveform``); ``ids``: Whisper's teacher-forced decoder input ``(1, N)`` (prompt
    included)."""

    waveform: Tensor
    utt_id: str
    frames: int
    window: int
    features: Tensor | None = None
    ids: Tensor | None = None

    @property
    def tokens(self) -> int | None:
        return None if self.ids is None else int(self.ids.shape[-1])


def make_inputs(backbone, waveform, ids: Sequence[int] | Tensor | None = None, utt_id: str = "?",
                text_ids: Sequence[int] | None = None) -> Inputs:  # fmt: skip
    """Prepare ``waveform`` (1-D) for interventions. Whisper: the teacher-forced decoder input is ``ids`` (the full
    sequence, prompt included), else the prompt + ``text_ids``, else the prompt + the model's own greedy
    transcript of this waveform. Bad audio (too short or longer than the window): an error naming ``utt_id``."""
    w = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    backbone.check_input(int(w.shape[-1]), utt_id)
    frames = int(backbone.num_frames(int(w.shape[-1])))
    if not getattr(backbone, "has_decoder", False):
        if ids is not None or text_ids is not None:
            raise InterventionError(f"utterance {utt_id!r}: decoder ids given, but {backbone.name} has no decoder")
        return Inputs(w, str(utt_id), frames, frames)
    p_dtype, p_dev = backbone.parameter_dtype, backbone.parameter_device
    feats = backbone.features([w]).to(device=p_dev, dtype=p_dtype)
    if ids is None:
        if text_ids is None:
            text_ids = backbone.transcribe_ids([w])[0]
        ids = list(backbone.decoder_prompt_ids()) + [int(t) for t in text_ids]
    ids_t = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(p_dev)
    limit = int(backbone.config.max_target_positions)
    if ids_t.shape[1] > limit:
        raise InterventionError(f"utterance {utt_id!r}: {ids_t.shape[1]} decoder tokens exceed the model's "
                                f"{limit} positions")  # fmt: skip
    return Inputs(w, str(utt_id), frames, int(feats.shape[-1]) // 2, feats, ids_t)


@dataclass
class Out:
    """What a forward gives a metric: ``states`` = every encoder state of ``backbone.layer_names`` ``(B, T, D)``
    over the model's time axis (residual states 0..N, then ``final_norm`` where the model has it: ``states[-1]``
    is what the decoder / a CTC head reads), ``logits`` = Whisper's teacher-forced decoder logits ``(B, N, V)``
    (None for the wav2vec2 family), ``frames`` = the utterance's frames."""

    states: list[Tensor]
    logits: Tensor | None
    frames: int
    inputs: Inputs | None = field(default=None, repr=False)

    @property
    def output(self) -> Tensor:
        return self.states[-1]


Metric = Callable[[Out], Tensor]  # -> (B,) one value per batch row


def _hidden_arg(call) -> Tensor:
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def forward(backbone, inp: Inputs, batch: int = 1) -> Out:
    """One full forward of ``inp`` (Whisper: the encoder, then the decoder teacher-forced on ``inp.ids``), ``batch``
    identical copies (Whisper only; the wavvec2 family runs one). Hooks installed around it see every module."""
    layers = backbone.layer_modules()
    with capture_layer_inputs([layers[0]]) as first, record_outputs(layers) as outs:
        if getattr(backbone, "has_decoder", False):
            feats = inp.features.expand(batch, *inp.features.shape[1:])
            ids = inp.ids.expand(batch, -1)
            res = backbone.teacher_forced(feats, ids)
            logits, final = res.logits, res.encoder_last_hidden_state
        else:
            if batch != 1:
                raise InterventionError("forward: the wav2vec2 family runs one copy (batch=1)")
            run, _ = backbone.encoder_run(inp.waveform, inp.utt_id)
            res = run()
            logits, final = None, res.last_hidden_state
    if first[0] is None or any(o is None for o in outs):
        raise InterventionError(f"{backbone.name}: the encoder did not run every layer")
    states = [_hidden_arg(first[0]), *outs]
    if backbone.final_norm_module() is not None:
        states.append(final)
    return Out(states, logits, inp.frames, inp)


# ============================================================================ hooks that read and write sites


def _pos_index(positions, device) -> Tensor | slice:
    return slice(None) if positions is None else torch.as_tensor(positions, dtype=torch.long, device=device)


def _select(x: Tensor, site: Site, sl: slice | None) -> Tensor:
    """``x[:, positions, slice]``."""
    return x[:, _pos_index(site.positions, x.device), sl if sl is not None else slice(None)]


def _make_hook(how: str, edit: Callable[[Tensor], Tensor | None]):
    """A forward hook (``how="out"``) or pre-hook with kwargs (``"in"``) that passes the activation through
    ``edit`` (which returns a replacement or None)."""
    if how == "out":

        def hook(_m, _args, output):
            x = first_output(output)
            y = edit(x)
            if y is None:
                return None
            if isinstance(output, tuple):
                return (y, *output[1:])
            if isinstance(output, list):
                return [y, *output[1:]]
            return y

        return hook

    def pre(_m, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        y = edit(x)
        if y is None:
            return None
        if args:
            return (y, *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = y
        return args, kwargs

    return pre


@contextmanager
def _hooks(backbone, points: dict) -> Iterator[None]:
    """``points``: (module, how) -> edit function; installs them all (removed on exit and on error)."""
    outs = [(m, _make_hook("out", fn)) for (m, how), fn in points.items() if how == "out"]
    ins = [(m, _make_hook("in", fn)) for (m, how), fn in points.items() if how == "in"]
    with forward_hooks(outs), forward_hooks(ins, pre=True, with_kwargs=True):
        yield


def _patch_points(backbone, entries: Sequence[tuple[Site, int | None, Tensor]], stream: bool = False) -> dict:
    """Edit functions writing ``values`` into copy ``row`` (None: every row) at each site's positions/slice.

    ``stream``: a site with ``positions=None`` and values of ``P > 1`` positions is written position by position
    across successive calls of its module (Whisper's cached generation: the prompt, then one token per step):
    a call of ``L > 1`` positions starts at position 0 (a full forward, or the prompt), a call of one position
    continues where the previous call ended; positions past ``P - 1`` take position ``P - 1``."""
    by_point: dict = {}
    for site, row, values in entries:
        m, how, sl = hook_point(backbone, site)
        by_point.setdefault((m, how), []).append((site, row, values, sl))

    def make(items):
        seen = [0]  # positions of this module already seen within the block (stream)

        def edit(x):
            y = x.clone()
            n = int(x.shape[1])
            start = 0 if n > 1 else seen[0]
            seen[0] = start + n
            for site, row, values, sl in items:
                rows = slice(None) if row is None else slice(row, row + 1)
                if stream and site.positions is None and values.shape[1] > 1:
                    idx = torch.arange(start, start + n).clamp(max=values.shape[1] - 1)
                    values = values[:, idx]
                y[rows, _pos_index(site.positions, x.device), sl if sl is not None else slice(None)] = values.to(
                    device=x.device, dtype=x.dtype)
            return y

        return edit

    return {k: make(v) for k, v in by_point.items()}


def _check_values(site: Site, values: Tensor, backbone) -> Tensor:
    values = torch.as_tensor(values)
    _, _, sl = hook_point(backbone, site)
    if values.dim() == 1:
        values = values[None, None]  # one vector for every position
    elif values.dim() == 2:
        values = values[None]
    if values.dim() != 3:
        raise InterventionError(f"site {site.key}: values must be (B, P, F), (P, F) or (F,), got {tuple(values.shape)}")
    if site.positions is not None and values.shape[1] not in (1, len(site.positions)):
        raise InterventionError(f"site {site.key}: values have {values.shape[1]} positions, the site has "
                                f"{len(site.positions)}")  # fmt: skip
    if sl is not None and values.shape[-1] != sl.stop - sl.start:
        raise InterventionError(f"site {site.key}: values have {values.shape[-1]} features, a head has "
                                f"{sl.stop - sl.start}")  # fmt: skip
    return values


# ============================================================================ public: capture, patched, ablated


def _validate(backbone, sites, inp: Inputs | None) -> None:
    for s in sites:
        if not isinstance(s, Site):
            raise InterventionError(f"expected a Site, got {type(s).__name__}: {s!r}")
        validate_site(backbone, s, frames=None if inp is None else inp.frames,
                      window=None if inp is None else inp.window, tokens=None if inp is None else inp.tokens,
                      where="" if inp is None else f"utterance {inp.utt_id!r}")  # fmt: skip


def capture(backbone, inputs: Inputs, sites: Sequence[Site], return_output: bool = False):
    """The activation of every site in one forward of ``inputs``: ``{site.key: (1, P, F)}`` (``P`` = the site's
    positions, all of them when None; ``F`` = the model width, or the head width for head sites), detached.
    Hooks are removed on exit and on error. ``return_output``: also the forward's :class:`Out`."""
    sites = list(sites)
    _validate(backbone, sites, inputs)
    got: dict[str, Tensor] = {}
    by_point: dict = {}
    for s in sites:
        m, how, sl = hook_point(backbone, s)
        by_point.setdefault((m, how), []).append((s, sl))

    def make(items):
        def edit(x):
            for s, sl in items:
                got[s.key] = _select(x, s, sl).detach().clone()
            return None

        return edit

    with torch.no_grad(), _hooks(backbone, {k: make(v) for k, v in by_point.items()}):
        out = forward(backbone, inputs)
    return (got, out) if return_output else got


@contextmanager
def patched(backbone, site: Site | Sequence[Site], values: Tensor | Sequence[Tensor]) -> Iterator[None]:
    """Within the block, every forward of the model has the site's activation at its positions replaced by
    ``values`` (``(B or 1, P, F)`` as :func:`capture` returns it from another run, ``(P, F)``, or ``(F,)`` for every
    position). Several sites: parallel lists. Head sites are written into their slice of ``out_proj``'s input (a
    forward pre-hook), so the other heads and ``out_proj``'s bias are untouched. Removed on exit and on error."""
    sites = [site] if isinstance(site, Site) else list(site)
    vals = [values] if isinstance(site, Site) else list(values)
    if len(sites) != len(vals):
        raise InterventionError(f"patched: {len(sites)} sites but {len(vals)} value tensors")
    _validate(backbone, sites, None)
    entries = [(s, None, _check_values(s, v, backbone)) for s, v in zip(sites, vals)]
    with _hooks(backbone, _patch_points(backbone, entries)):
        yield


class RowPatches:
    """What :func:`patched_rows` yields: :meth:`select` narrows its per-row patches with the batch."""

    def __init__(self, points: dict) -> None:
        self.points = points  # (module, how) -> [mask (R, W) bool, fill (R, W)]

    def select(self, rows: Tensor) -> None:
        """The next forwards run rows ``rows`` (indices into the current rows) of the batch: keep their patches
        (``generate_from_encoder_states(on_rows=)``, which calls it whenever finished rows leave the batch)."""
        for v in self.points.values():
            v[0], v[1] = v[0][rows], v[1][rows]


@contextmanager
def patched_rows(backbone, rows: Sequence[Sequence[tuple[Site, Tensor]]]) -> Iterator[RowPatches]:
    """Several interventions decoded as one batch: within the block, row ``r`` of every forward's batch has each
    ``(site, values)`` of ``rows[r]`` written as :func:`patched` writes it (``values`` ``(F,)``: every position;
    sites without positions) and the other rows left alone; a row with no entry is unpatched. Each forward's
    batch must have as many rows as the patches (:meth:`RowPatches.select` follows a batch that shrinks).
    Exactly :func:`patched` of each row's sites, row by row (tests/interventions/test_row_patches.py); the point
    is one batch of many ablations (src/analyses/head_ablation.py, values from :func:`ablation_vector`). Hooks removed on exit and on error."""
    n = len(rows)
    points: dict = {}
    for r, entries in enumerate(rows):
        for site, values in entries:
            if site.positions is not None:
                raise InterventionError(f"patched_rows: site {site.key} has positions; row patches write every "
                                        "position (positions=None)")  # fmt: skip
            _validate(backbone, [site], None)
            m, how, sl = hook_point(backbone, site)
            v = _check_values(site, values, backbone)
            if v.shape[0] != 1 or v.shape[1] != 1:
                raise InterventionError(f"patched_rows: site {site.key}: one vector (F,) per row, got "
                                        f"{tuple(torch.as_tensor(values).shape)}")  # fmt: skip
            if (m, how) not in points:
                w = int(backbone.hidden_size) if sl is None else int(m.in_features)  # a head: out_proj's input
                points[(m, how)] = [torch.zeros(n, w, dtype=torch.bool), torch.zeros(n, w, dtype=backbone.parameter_dtype)]
            mask, fill = points[(m, how)]
            cols = sl if sl is not None else slice(None)
            mask[r, cols] = True
            fill[r, cols] = v[0, 0].to(fill.dtype)
    state = RowPatches(points)

    def make(key):
        def edit(x):
            mask, fill = state.points[key]
            if int(x.shape[0]) != int(mask.shape[0]):
                raise InterventionError(f"patched_rows: a forward of {int(x.shape[0])} rows, the patches have "
                                        f"{int(mask.shape[0])} (call select() when the batch shrinks)")  # fmt: skip
            return torch.where(mask[:, None, :].to(x.device), fill[:, None, :].to(device=x.device, dtype=x.dtype), x)

        return edit

    with _hooks(backbone, {k: make(k) for k in points}):
        yield state


def mean_activation(backbone, reference: Sequence[Inputs], site: Site) -> Tensor:
    """The site's activation averaged over every position of every reference input: ``(F,)`` (mean ablation)."""
    whole = site.at(None)
    acts = [capture(backbone, r, [whole])[whole.key][0] for r in reference]  # (T_i, F) each
    if not acts:
        raise InterventionError(f"mean ablation of {site.key}: the reference corpus is empty")
    return torch.cat(acts, 0).mean(0)


def ablation_vector(backbone, site: Site, mode: str, reference: Inputs | Sequence[Inputs] | Tensor | None = None
                    ) -> Tensor:  # fmt: skip
    """What zero or mean ablation writes into ``site`` at every position, ``(F,)``: zeros of the site's width (a
    head's slice of ``out_proj``'s input, else the model width); or (mean) ``reference`` itself when it is a tensor,
    else the site's activation averaged over every position of the reference input(s) (:func:`mean_activation`).
    What :func:`ablated` writes; :func:`patched_rows` takes it row by row."""
    if mode == "zero":
        _, _, sl = hook_point(backbone, site)
        width = (sl.stop - sl.start) if sl is not None else int(backbone.hidden_size)  # Whisper: d_model both sides
        return torch.zeros(width, dtype=backbone.parameter_dtype)
    if mode != "mean":
        raise InterventionError(f"ablation_vector: mode {mode!r} has no single vector (zero or mean)")
    if isinstance(reference, Tensor):
        return reference
    if reference is None:
        raise InterventionError("mean ablation needs reference= (a list of inputs or a (F,) tensor)")
    return mean_activation(backbone, [reference] if isinstance(reference, Inputs) else list(reference), site)


@contextmanager
def ablated(backbone, sites: Site | Sequence[Site], mode: str = "zero",
            reference: Inputs | Sequence[Inputs] | Tensor | dict | None = None) -> Iterator[None]:  # fmt: skip
    """Ablate head outputs (one head or a set; also MLP or residual sites) within the block: ``zero``; ``mean``
    (the head's output averaged over every position of ``reference``, a list of :class:`Inputs` -- or given as a
    tensor ``(F,)``); ``resample`` (the head's output at the same positions in ``reference``, one other
    :class:`Inputs`). ``reference`` may also be a dict ``{site.key: values}`` (mean: ``(F,)``; resample: ``(1, P, F)``
    as :func:`capture` returns it), one entry per site. Head ablation happens before ``out_proj``: its bias stays.

    Resample with ``positions=None`` follows the positions across calls (``_patch_points`` ``stream``): in a full
    forward position ``p`` gets the reference's position ``p``; during Whisper's cached generation the prompt gets
    the reference's first positions and each generated token the next one (so use one decoding per block, of one
    item); positions past the reference's last take its last."""
    sites = [sites] if isinstance(sites, Site) else list(sites)
    if mode not in ("zero", "mean", "resample"):
        raise InterventionError(f"ablation mode {mode!r} is not one of ['zero', 'mean', 'resample']")
    _validate(backbone, sites, None)
    if mode in ("mean", "resample") and reference is None:
        raise InterventionError(f"{mode} ablation needs reference= (mean: a list of inputs or a (F,) tensor; "
                                "resample: one other input)")  # fmt: skip
    if isinstance(reference, dict):
        missing = [s.key for s in sites if s.key not in reference]
        if missing:
            raise InterventionError(f"{mode} ablation: reference has no values for site(s) {missing}")
    vals = []
    for s in sites:
        if mode == "zero" or (mode == "mean" and not isinstance(reference, dict)):
            vals.append(ablation_vector(backbone, s, mode, reference))
        elif isinstance(reference, dict):
            vals.append(_check_values(s, reference[s.key], backbone))
        else:
            if not isinstance(reference, Inputs):
                raise InterventionError("resample ablation takes one reference input (an Inputs) or a dict of values")
            vals.append(capture(backbone, reference, [s])[s.key])
    if mode != "resample":
        with patched(backbone, sites, vals):
            yield
        return
    entries = [(s, None, _check_values(s, v, backbone)) for s, v in zip(sites, vals)]
    with _hooks(backbone, _patch_points(backbone, entries, stream=True)):
        yield


# ============================================================================ pairs


def check_pair(clean: Inputs, corrupted: Inputs) -> None:
    """Patching needs aligned runs: equal encoder frames and (Whisper) the same teacher-forced tokens."""
    if clean.frames != corrupted.frames:
        raise InterventionError(f"pair ({clean.utt_id!r}, {corrupted.utt_id!r}): {clean.frames} vs {corrupted.frames} "
                                "encoder frames; activation patching needs equal frame counts (synthesise or "
                                "time-stretch the pair to equal durations)")  # fmt: skip
    if (clean.ids is None) != (corrupted.ids is None) or (
            clean.ids is not None and not torch.equal(clean.ids.cpu(), corrupted.ids.cpu())):  # fmt: skip
        raise InterventionError(f"pair ({clean.utt_id!r}, {corrupted.utt_id!r}): the two runs must be teacher-forced "
                                "on the same token sequence (give both the same ids)")  # fmt: skip


def word_positions(backbone, words: Sequence[tuple[str, float, float]], inp: Inputs) -> list[tuple[int, ...]]:
    """Encoder frames of each word ``(label, start_s, end_s)`` (a word owns the frames whose times fall in its
    [start, end); the nearest frame for a word shorter than a frame: src/context_mixing/words.py)."""
    from src.context_mixing.words import word_frames

    try:
        groups = word_frames(list(words), inp.frames, backbone.frame_rate, backbone.frame_offset, utt_id=inp.utt_id,
                             audio_duration=inp.waveform.shape[-1] / backbone.sample_rate)  # fmt: skip
    except ValueError as e:
        raise InterventionError(str(e)) from e
    return [tuple(int(i) for i in g) for g in groups]


def pair_word_positions(backbone, clean: Inputs, corrupted: Inputs, clean_words, corrupted_words) -> list[tuple[int, ...]]:
    """Word frames shared by a pair: every word must own the same frames in both members, else an error naming the
    pair and the word (before any model work)."""
    check_pair(clean, corrupted)
    if len(clean_words) != len(corrupted_words):
        raise InterventionError(f"pair ({clean.utt_id!r}, {corrupted.utt_id!r}): {len(clean_words)} vs "
                                f"{len(corrupted_words)} words")  # fmt: skip
    a = word_positions(backbone, clean_words, clean)
    b = word_positions(backbone, corrupted_words, corrupted)
    for k, (pa, pb) in enumerate(zip(a, b)):
        if pa != pb:
            raise InterventionError(
                f"pair ({clean.utt_id!r}, {corrupted.utt_id!r}): word {k} ({clean_words[k][0]!r} / "
                f"{corrupted_words[k][0]!r}) has {len(pa)} frames [{pa[0]}..{pa[-1]}] vs {len(pb)} frames "
                f"[{pb[0]}..{pb[-1]}]; every word needs the same frames in both members")  # fmt: skip
    return a


# ============================================================================ batched sweeps


@dataclass
class SweepResult:
    """Metric of each patched run (``values[i]`` for ``sites[i]``), of the clean and corrupted runs, and the
    normalised recovery ``(patched - corrupted) / (clean - corrupted)``."""

    sites: list[Site]
    values: np.ndarray
    clean: float
    corrupted: float
    direction: str

    @property
    def recovery(self) -> np.ndarray:
        from src.interventions.metrics import normalised_recovery

        return normalised_recovery(self.values, self.clean, self.corrupted)


def _expand(obj, b: int, backbone, name: str = ""):
    """Broadcast a recorded layer argument of batch 1 to ``b`` copies (tensors with leading dim 1; WavLM's
    ``position_bias`` is ``(heads, T, T)`` per item, repeated per copy)."""
    if isinstance(obj, Tensor):
        if name == "position_bias" and getattr(backbone, "model_type", "") == "wavlm":
            return obj.repeat(b, *([1] * (obj.dim() - 1)))
        if obj.dim() >= 2 and obj.shape[0] == 1:
            return obj.expand(b, *obj.shape[1:])
        return obj
    if isinstance(obj, tuple):
        return tuple(_expand(o, b, backbone, name) for o in obj)
    if isinstance(obj, list):
        return [_expand(o, b, backbone, name) for o in obj]
    return obj


def run_encoder_from(backbone, state: Tensor, start: int, calls: Sequence) -> list[Tensor]:
    """States ``start+1..N`` (then ``final_norm`` where the model has one) from state ``start`` ``(B, T, D)``: the
    encoder layers ``start..N-1`` (0-based modules) called one by one with the other arguments of a recorded call
    of the same input (``calls[j]`` = ``(args, kwargs)`` of layer ``j``, :func:`capture_layer_inputs`)."""
    layers = backbone.layer_modules()
    b = int(state.shape[0])
    h = state
    states = []
    for j in range(start, len(layers)):
        args, kwargs = calls[j]
        args = [_expand(a, b, backbone) for a in args]
        kwargs = {k: _expand(v, b, backbone, k) for k, v in kwargs.items()}
        if args:
            args[0] = h
        else:
            kwargs["hidden_states"] = h
        h = first_output(layers[j](*args, **kwargs))
        states.append(h)
    norm = backbone.final_norm_module()
    if norm is not None:
        states.append(norm(h))
    return states


def _shared_cross_kv(backbone, b: int):
    """Decoder-only sweeps: every copy cross-attends to the *same* encoder output, so each cross-attention's
    ``k_proj`` / ``v_proj`` projects it once (a pre-hook passes copy 0) and the result is broadcast to the ``b``
    copies (a view): the same numbers as the one-copy run, without ``b`` projections of the window."""

    def first(_m, args):
        return (args[0][:1],)

    def broadcast(_m, _args, out):
        return out.expand(b, *out.shape[1:])

    mods = [m for a in backbone.cross_attention_modules() for m in (a.k_proj, a.v_proj)]
    return _stack(forward_hooks([(m, first) for m in mods], pre=True), forward_hooks([(m, broadcast) for m in mods]))


@contextmanager
def _stack(*cms) -> Iterator[None]:
    from contextlib import ExitStack

    with ExitStack() as st:
        for cm in cms:
            st.enter_context(cm)
        yield


def _entry_state(site: Site) -> int:
    """The encoder state a site's re-run starts from: the state itself (resid), the layer's input (head, mlp of
    layer k: state k - 1)."""
    return site.layer if site.kind == "resid" else site.module_index


def patch_sweep(backbone, clean: Inputs, corrupted: Inputs, sites: Sequence[Site], metric: Metric,
                direction: str = "denoising", chunk: int = 16, batched: bool = True) -> SweepResult:  # fmt: skip
    """Patch every site, one at a time, and measure ``metric`` of each patched run.

    ``denoising``: run the corrupted input with the clean run's activation at the site; ``noising``: the clean
    input with the corrupted one's. ``batched``: sites of one layer run as batches of ``chunk`` perturbed copies,
    re-running only the layers after the site (module docstring); ``batched=False``: one full forward per site
    (the slow loop, same numbers). Every check (sites, positions, the pair) runs before any model work."""
    if direction not in ("denoising", "noising"):
        raise InterventionError(f"direction {direction!r} is not 'denoising' or 'noising'")
    if int(chunk) < 1:
        raise InterventionError(f"chunk must be >= 1, got {chunk}")
    sites = list(sites)
    check_pair(clean, corrupted)
    _validate(backbone, sites, clean)
    base, src = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    with torch.no_grad():
        src_vals, src_out = capture(backbone, src, sites, return_output=True)
        layers = backbone.layer_modules()
        with capture_layer_inputs(layers) as calls:
            base_out = forward(backbone, base)
        clean_v = float(metric(src_out if direction == "denoising" else base_out)[0])
        corr_v = float(metric(base_out if direction == "denoising" else src_out)[0])
        values = np.full(len(sites), np.nan)
        if not batched:
            for i, s in enumerate(sites):
                with patched(backbone, s, src_vals[s.key]):
                    values[i] = float(metric(forward(backbone, base))[0])
            return SweepResult(sites, values, clean_v, corr_v, direction)
        enc = [i for i, s in enumerate(sites) if s.component == "encoder"]
        dec = [i for i, s in enumerate(sites) if s.component != "encoder"]
        groups: dict[int, list[int]] = {}
        for i in enc:
            groups.setdefault(_entry_state(sites[i]), []).append(i)
        for e, idx in sorted(groups.items()):
            for c0 in range(0, len(idx), int(chunk)):
                part = idx[c0 : c0 + int(chunk)]
                b = len(part)
                h = base_out.states[e].expand(b, *base_out.states[e].shape[1:]).clone()
                hooked = []
                for r, i in enumerate(part):
                    s = sites[i]
                    if s.kind == "resid":
                        h[r : r + 1, _pos_index(s.positions, h.device)] = src_vals[s.key].to(h.dtype)
                    else:
                        hooked.append((s, r, src_vals[s.key]))
                with _hooks(backbone, _patch_points(backbone, hooked)):
                    after = run_encoder_from(backbone, h, e, calls)
                states = [s.expand(b, *s.shape[1:]) for s in base_out.states[:e]] + [h] + after
                logits = None
                if base.ids is not None:
                    logits = backbone.decoder_logits(base.ids.expand(b, -1), states[-1])
                values[part] = metric(Out(states, logits, base.frames, base)).detach().cpu().double().numpy()
        enc_out = base_out.states[-1]
        for c0 in range(0, len(dec), int(chunk)):
            part = dec[c0 : c0 + int(chunk)]
            b = len(part)
            entries = [(sites[i], r, src_vals[sites[i].key]) for r, i in enumerate(part)]
            with _hooks(backbone, _patch_points(backbone, entries)), _shared_cross_kv(backbone, b):
                logits = backbone.decoder_logits(base.ids.expand(b, -1), enc_out.expand(b, *enc_out.shape[1:]))
            states = [s.expand(b, *s.shape[1:]) for s in base_out.states]
            values[part] = metric(Out(states, logits, base.frames, base)).detach().cpu().double().numpy()
    return SweepResult(sites, values, clean_v, corr_v, direction)


# ============================================================================ attribution patching


@dataclass
class AttributionResult:
    """First-order estimate of ``metric(patched) - metric(base)`` per site: ``grad(metric at base) . (source -
    base)`` summed over the site's positions and features."""

    sites: list[Site]
    values: np.ndarray
    clean: float
    corrupted: float
    direction: str


def attribution_patching(backbone, clean: Inputs, corrupted: Inputs, sites: Sequence[Site], metric: Metric,
                         direction: str = "denoising") -> AttributionResult:  # fmt: skip
    """Attribution patching for every site from two forward passes (the source run, the base run with gradients)
    and one backward pass: the gradient of ``metric`` (summed over the batch of one) with respect to each site's
    activation in the base run, times the activation difference (source - base), summed over positions and
    features (the head's slice for head sites)."""
    if direction not in ("denoising", "noising"):
        raise InterventionError(f"direction {direction!r} is not 'denoising' or 'noising'")
    sites = list(sites)
    check_pair(clean, corrupted)
    _validate(backbone, sites, clean)
    base, src = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    wholes = {}
    for s in sites:
        w = s.at(None)
        wholes[w.key] = w
    src_vals, src_out = capture(backbone, src, list(wholes.values()), return_output=True)
    # one zero leaf per hooked tensor: d metric / d leaf = d metric / d activation
    points: dict = {}
    for s in sites:
        m, how, _ = hook_point(backbone, s)
        points.setdefault((m, how), None)
    leaves: dict = {}
    acts: dict = {}

    def make(key):
        def edit(x):
            z = torch.zeros_like(x, requires_grad=True)
            leaves[key] = z
            acts[key] = x.detach()
            return x + z

        return edit

    with torch.enable_grad(), _hooks(backbone, {k: make(k) for k in points}):
        base_out = forward(backbone, base)
        m_val = metric(base_out)
        m_val.sum().backward()
    values = np.zeros(len(sites))
    for i, s in enumerate(sites):
        m, how, sl = hook_point(backbone, s)
        g = leaves[(m, how)].grad
        if g is None:
            raise InterventionError(f"site {s.key}: the metric does not depend on it (no gradient reached it)")
        a = acts[(m, how)]
        sel = (slice(None), _pos_index(s.positions, a.device), sl if sl is not None else slice(None))
        delta = src_vals[s.at(None).key].to(a.device) - a[:, :, sl if sl is not None else slice(None)]
        delta = delta[:, _pos_index(s.positions, a.device)]
        values[i] = float((g[sel] * delta).sum())
    with torch.no_grad():
        clean_v = float(metric(src_out if direction == "denoising" else base_out)[0])
        corr_v = float(metric(base_out if direction == "denoising" else src_out)[0])
    return AttributionResult(sites, values, clean_v, corr_v, direction)


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two score vectors (attribution patching vs real patching), scipy."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise InterventionError(f"rank_correlation: {a.shape} vs {b.shape} scores")
    return float(spearmanr(a, b).statistic)

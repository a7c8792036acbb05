"""The tutorial's remote-code model as a backbone: ``Wav2Vec2ForMultiHeadMultiLabelClassification``
(wav2vec2 + dropout + mean over time of the last hidden state + ``classifier1..3``), loaded only with
the user's explicit ``trust_remote_code=true`` and split into an :class:`HFBackbone` over its
``wav2vec2`` and its three linear heads.

The heads become an utterance classifier in the job layer (``src/jobs/utterance.py``:
``convert_multihead_model``, ``convert_to_checkpoint``); this module builds backbones only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from src.backbones.base import BackboneError

MULTIHEAD_HEADS = ("action", "object", "location")  # classifier1/2/3 of Wav2Vec2ForMultiHeadMultiLabelClassification


class RemoteCodeError(BackboneError):
    """A remote-code model refused (no explicit trust) or not of the expected shape; the message says why."""


def check_trust(model_id: str, trust_remote_code) -> None:
    """RemoteCodeError unless ``trust_remote_code`` is exactly True (a string "yes" is not consent)."""
    if trust_remote_code is not True:
        raise RemoteCodeError(
            f"model {model_id!r} is defined by its own Python files (configuration_*.py / modeling_*.py, "
            "'remote code'), which transformers would import and run on this machine. It is loaded only with an "
            "explicit backbone.trust_remote_code=true: read those files first (and pin backbone.revision)."
        )


def load_remote_audio_classifier(model_id: str, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoModelForAudioClassification.from_pretrained(model_id, trust_remote_code=True)``, in eval mode,
    only when ``trust_remote_code`` is explicitly true (with a warning); otherwise a RemoteCodeError saying why."""
    import warnings

    check_trust(model_id, trust_remote_code)
    warnings.warn(f"loading {model_id!r} with trust_remote_code=True: its modeling code runs on this machine"
                  + ("" if revision else " (no revision pinned: the code may change between runs)"), stacklevel=2)  # fmt: skip
    from transformers import AutoModelForAudioClassification

    from src.backbones.hf import hub_error

    try:
        model = AutoModelForAudioClassification.from_pretrained(model_id, trust_remote_code=True, revision=revision)
    except OSError as e:
        raise hub_error(model_id, e) from e
    return model.eval()


def head_labels(config, sizes: Sequence[int], names: Sequence[str]) -> dict[str, list[str]]:
    """Class labels per head from the combined ``id2label`` (head k's labels follow head k-1's), else ``<head>_<c>``."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    out, lo = {}, 0
    usable = len(id2label) == sum(sizes) and sorted(id2label) == list(range(sum(sizes)))
    for name, n in zip(names, sizes):
        labels = [id2label[lo + c] for c in range(n)] if usable else [f"{name}_{c}" for c in range(n)]
        if len(set(labels)) != n:
            labels = [f"{name}_{c}" for c in range(n)]
        out[name] = labels
        lo += n
    return out


def multihead_parts(model, model_id: str, name: str | None = None, normalize: bool | None = None,
                    heads: Sequence[str] = MULTIHEAD_HEADS):  # fmt: skip
    """``(backbone, labels, linears, layer)`` of a multi-head wav2vec2 classifier: an HFBackbone over its
    ``wav2vec2``, the class labels and ``Linear`` of each head, and the state the heads read
    (``last_hidden_state``: state N for post-LN encoders, ``final_norm`` for stable-LN ones)."""
    from src.backbones.hf import HFBackbone

    base = getattr(model, "wav2vec2", None)
    lins = [getattr(model, f"classifier{k + 1}", None) for k in range(len(heads))]
    if base is None or any(not isinstance(m, torch.nn.Linear) for m in lins):
        raise RemoteCodeError(f"{type(model).__name__} ({model_id}) has no wav2vec2 + classifier1..{len(heads)} "
                              "Linear heads: not a multi-head wav2vec2 classifier")  # fmt: skip
    backbone = HFBackbone.from_model(base, model_id, name=name, normalize=normalize)
    labels = head_labels(model.config, [m.out_features for m in lins], heads)
    layer = "final_norm" if backbone.final_norm_module() is not None else backbone.num_layers - 1
    return backbone, labels, dict(zip(heads, lins)), layer


def multihead_backbone(model_id: str, trust_remote_code: bool = False, normalize: bool | None = None,
                       name: str | None = None, revision: str | None = None, pretrained: bool = True, seed: int = 0,
                       attn_implementation: str | None = None):  # fmt: skip
    """Hydra target for ``experiment=tutorial_attribution``: the HFBackbone of the remote-code multi-head
    model (``trust_remote_code`` must be true). ``pretrained``/``seed``/``attn_implementation`` are accepted
    for config compatibility with conf/backbone/local.yaml; the heads are kept as
    ``backbone.converted_heads`` = ``(labels, linears, layer)``."""
    del seed, attn_implementation
    if not pretrained:
        raise RemoteCodeError("backbone.pretrained=false is not supported for the converted remote-code model")
    model = load_remote_audio_classifier(model_id, trust_remote_code=trust_remote_code, revision=revision)
    backbone, labels, linears, layer = multihead_parts(model, model_id, name=name, normalize=normalize)
    backbone.converted_heads = (labels, linears, layer)
    return backbone

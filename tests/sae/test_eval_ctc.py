"""SAE evaluation on a ``*ForCTC`` model: the CTC log-prob of the clean greedy path, spliced in."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from src.activations import ActivationCache
from src.analyses.base import AnalysisContext
from src.analyses.sae_eval import SAEEval, sae_split
from src.backbones.hf import HFBackbone
from src.datamodules.corpus import TextGridCorpus
from src.sae import save_sae
from src.sae.eval import Item, ctc_forward, splice
from tests.builders import save_tiny_ctc_model
from tests.sae.helpers import exact_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["group", "layer"])
def ctc(request, tmp_path_factory, tone_corpus_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_tiny_ctc_model(
            tmp_path_factory.mktemp(f"sae_ctc_{request.param}"), "wav2vec2", request.param
        )
        bb = HFBackbone(str(path), attn_implementation="eager").eval()
        from transformers import AutoModelForCTC

        ref = AutoModelForCTC.from_pretrained(str(path), attn_implementation="eager").eval()
    corpus = TextGridCorpus(tone_corpus_dir)
    acts = ActivationCache(tmp_path_factory.mktemp("sae_ctc_cache"), dtype="float32", progress=False).get(
        bb, corpus
    )
    return bb, ref, corpus, acts


def _ref_ll(ref, bb, wave: torch.Tensor) -> tuple[float, int]:
    """The CTC log-likelihood of the greedy path under transformers' own *ForCTC forward (the reference)."""
    batch, _, _ = bb.prepare([wave])
    with torch.no_grad():
        lp = torch.log_softmax(ref(batch).logits.float(), -1)[0]  # (T, V)
    path, prev = [], None
    for v in lp.argmax(-1).tolist():
        if v != 0 and v != prev:
            path.append(v)
        prev = v
    loss = torch.nn.functional.ctc_loss(lp[:, None], torch.tensor([path]), torch.tensor([len(lp)]),
                                        torch.tensor([len(path)]), blank=0, reduction="sum")  # fmt: skip
    return -float(loss), len(lp)


def test_identity_splice_and_the_clean_ctc_logprob(ctc):
    bb, ref, corpus, acts = ctc
    w = torch.as_tensor(np.asarray(corpus[0].audio, dtype=np.float32))
    items = [Item(corpus.ids[0], w, int(bb.num_frames(len(w))), "x")]
    with torch.no_grad():
        clean = ctc_forward(bb, items)["log_probs"][0]
        for k in range(len(bb.layer_names)):
            with splice(bb, k, torch.nn.Identity()):
                assert torch.equal(ctc_forward(bb, items)["log_probs"][0], clean)
    split = sae_split(corpus, {}, 0)
    tmp = acts.path.parent / "saes_ctc"
    save_sae(exact_sae(acts.hidden_size, "1"), tmp / "layer_1")
    res = SAEEval(sae=str(tmp), probe=False).run(
        AnalysisContext(acts, corpus, seed=0, backbone_factory=lambda: bb)
    )
    by = {r["metric"]: r["value"] for r in res.rows}
    ll, frames = zip(*[_ref_ll(ref, bb, torch.as_tensor(np.asarray(corpus[int(u)].audio, dtype=np.float32)))
                       for u in split["test"]])  # fmt: skip
    assert by["ctc_logprob_clean"] == pytest.approx(sum(ll) / sum(frames), rel=1e-5)
    assert by["ctc_logprob_sae"] == by["ctc_logprob_clean"] and by["loss_recovered"] == 1.0
    assert by["ctc_logprob_zero"] != by["ctc_logprob_clean"]

"""task=stress from ARPAbet stress digits on a corpus with only a phones tier (MFA TextGrids in the
LibriSpeech layout, as MFA writes them with an ARPAbet dictionary): items, labels, vowel identity and
pooled frames against a literal loop over the frame times; auto source; a corpus without stress marks."""

from __future__ import annotations

import pytest

from src.activations import ActivationCache
from src.backbones.features import SpectralBaseline
from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.librispeech import LibriSpeechCorpus
from src.datamodules.tasks import StressClassification
from tests.corpus_writers import grid_utterances
from tests.corpus_writers.librispeech import write_librispeech

ARPA = {"a": "AA1", "i": "IY0", "o": "OW2", "s": "S", "m": "M"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stress")
    utts = grid_utterances(4)
    for u in utts:
        u.tiers["phones"] = [Interval(iv.start, iv.end, ARPA[iv.label]) for iv in u.tiers["phones"]]
    write_librispeech(tmp / "LS", utts, condensed=False, textgrid_root=tmp / "mfa")
    corpus = LibriSpeechCorpus(tmp / "LS", alignments_root=tmp / "mfa")
    assert "syllables" not in corpus.annotation(0).tiers
    acts = ActivationCache(tmp / "cache", dtype="float32", progress=False).get(SpectralBaseline("mfcc"), corpus)
    return corpus, acts


def _literal(corpus, acts, secondary="1"):
    """(utterance, label, vowel, first row, end row) of every vowel with a digit, by a plain loop."""
    out = []
    for u in range(len(corpus)):
        times = acts.frame_times(u)
        for iv in corpus.annotation(u).tiers["phones"]:
            if iv.label[-1] not in "012":
                continue
            label = iv.label[-1]
            if label == "2":
                if secondary == "drop":
                    continue
                label = secondary
            rows = [k for k, t in enumerate(times) if iv.start <= t < iv.end]
            out.append((u, label, iv.label[:-1].lower(), acts.offsets[u] + rows[0], acts.offsets[u] + rows[-1] + 1))
    return out


@pytest.mark.parametrize("secondary", ["1", "0", "drop"])
def test_digit_items_match_a_literal_loop(setup, secondary):
    corpus, acts = setup
    task = StressClassification(secondary=secondary)  # source auto: no syllables tier -> digits
    assert task.source_for(corpus) == "digits"
    task.validate(corpus)  # needs only the phones tier
    data = task.build(acts, corpus, control_types=True)
    ref = _literal(corpus, acts, secondary)
    assert len(ref) > 5
    got = [(int(u), data.classes[y], str(v), int(lo), int(hi))
           for u, y, v, lo, hi in zip(data.utt, data.y, data.extra["vowel"], data.lo, data.hi)]  # fmt: skip
    assert got == ref
    assert list(data.types) == [r[2] for r in ref]  # the vowel-identity control types
    n2 = sum(iv.label == "OW2" for u in range(len(corpus)) for iv in corpus.annotation(u).tiers["phones"])
    assert data.counts["syllables_secondary_stress"] == n2 > 0


def test_syllables_tier_wins_in_auto_and_explicit_digits(tone_corpus_dir, setup):
    from src.datamodules.corpus import TextGridCorpus

    tones = TextGridCorpus(tone_corpus_dir)
    assert StressClassification().source_for(tones) == "syllables"
    assert StressClassification(source="digits").required_tiers() == ["phones"]
    assert StressClassification().required_tiers() == ["syllables", "phones"]
    corpus, acts = setup
    with pytest.raises(CorpusError, match="secondary stress '2' in the 'phones' label 'OW2'"):
        StressClassification(secondary="error").build(acts, corpus)


def test_no_stress_marks_is_a_clear_error(tmp_path):
    utts = grid_utterances(2)  # tone phones without digits, no syllables tier (as TIMIT or Buckeye)
    write_librispeech(tmp_path / "LS", utts, condensed=False, textgrid_root=tmp_path / "mfa")
    corpus = LibriSpeechCorpus(tmp_path / "LS", alignments_root=tmp_path / "mfa")
    acts = ActivationCache(tmp_path / "cache", dtype="float32", progress=False).get(SpectralBaseline("mfcc"), corpus)
    with pytest.raises(CorpusError, match=r"no vowel with an ARPAbet stress digit .* this corpus marks no lexical stress"):
        StressClassification().build(acts, corpus)

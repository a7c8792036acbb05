"""The spoken-commands corpus: template/slot inventory, sentence selection, a tiny Festival build,
and train.py task=commands end to end on a tiny backbone."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

from src.datamodules.commands import (
    NONE,
    SLOTS,
    CommandsCorpus,
    command_item,
    enumerate_sentences,
    load_inventory,
    render,
    select_sentences,
)
from src.datamodules.corpus import CorpusError
from src.datamodules.synth import FestivalError, sentence_words

HAS_FESTIVAL = shutil.which("festival") is not None


def needs_festival(test):
    return pytest.mark.festival(pytest.mark.skipif(not HAS_FESTIVAL, reason="festival is not on PATH")(test))


@pytest.fixture(scope="module")
def inventory():
    return load_inventory()


@pytest.fixture(scope="module")
def sentences(inventory):
    return enumerate_sentences(inventory)


def test_render_marks_slot_words():
    words, marks = render("please turn the {object} [off]( in the {location})", "lights", "kitchen")
    assert words == "please turn the lights off in the kitchen".split()
    assert marks == {"action": (4,), "object": (3,), "location": (7,)}
    words, marks = render("switch the( {location}) {object} [on]", "light", None)
    assert words == ["switch", "the", "light", "on"] and marks == {"action": (3,), "object": (2,), "location": ()}


def test_every_slot_word_is_in_its_sentence_at_its_index(inventory, sentences):
    surface = inventory["surface"]
    for s in sentences:
        words = s.words
        assert sentence_words(s.text) == words
        assert s.slot_words["action"], s  # every command has a word that determines its action
        for slot in ("object", "location"):
            value, idx = s.slots[slot], s.slot_words[slot]
            if value == NONE:
                assert idx == (), s
            else:
                said = " ".join(words[k] for k in idx)
                assert said in surface[slot][value], (s, said)
                assert list(idx) == list(range(idx[0], idx[0] + len(idx)))  # contiguous
        marked = [w for k in s.slot_words["action"] for w in [words[k]]]
        assert all(f"[{w}]" in s.template or any(w in t.split() for t in s.template.split("[")[1:]) for w in marked)


def test_every_slot_value_has_two_phrasings_and_labels_are_unique(inventory, sentences):
    templates = defaultdict(set)
    for s in sentences:
        for slot in SLOTS:
            templates[(slot, s.slots[slot])].add(s.template)
    for slot in SLOTS:
        for value in inventory["slots"][slot]:
            assert len(templates[(slot, value)]) >= 2, (slot, value, templates[(slot, value)])
    texts = [s.text for s in sentences]
    assert len(texts) == len(set(texts))  # each text has one slot set (enumerate checks conflicts)
    assert len({s.combo for s in sentences}) == 31


def test_selection_is_balanced_and_deterministic(sentences):
    sel = select_sentences(sentences, 155, seed=0)
    assert [s.text for s in sel] == [s.text for s in select_sentences(sentences, 155, seed=0)]
    assert [s.text for s in sel] != [s.text for s in select_sentences(sentences, 155, seed=1)]
    per_combo = Counter(s.combo for s in sel)
    pool = Counter(s.combo for s in sentences)
    # round-robin: every combination gets 5, or all it has (change language/none has 4), one gets the rest
    assert len(per_combo) == 31
    assert all(per_combo[c] in (min(5, pool[c]), 6) for c in pool) and sum(per_combo.values()) == 155
    first = select_sentences(sentences, 31, seed=0)
    assert len({s.combo for s in first}) == 31  # one round covers every combination
    with pytest.raises(CorpusError, match="num_sentences=10000"):
        select_sentences(sentences, 10000)


def test_bad_template_is_an_error(tmp_path, inventory):
    bad = json.loads(json.dumps(inventory))
    bad["actions"]["bring"]["templates"].append("bring me the {object}!")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    # "!" is not a word token: the renderer drops it, so the sentence still reads as words...
    assert enumerate_sentences(load_inventory(tmp_path / "bad.json"))
    bad["actions"]["bring"]["objects"].append("spoon")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CorpusError, match="spoon"):
        enumerate_sentences(load_inventory(tmp_path / "bad.json"))


@needs_festival
def test_tiny_festival_build_stores_slot_words_that_match_the_words_tier(tmp_path):
    c = CommandsCorpus(tmp_path / "commands", voices=["kal"], num_sentences=4, progress=False)
    assert c.name == "commands" and len(c) == 4 and c.built
    for i in range(len(c)):
        item = command_item(c, i)
        words = [w.label for w in c.annotation(i).tier("words")]
        assert item.utterance == c.ids[i] and item.text == c.annotation(i).text
        assert words == item.text.split()
        for slot, idx in item.slot_words.items():
            for k in idx:
                assert words[k] in item.text.split()
        assert item.slots == c.commands[c.sentence_index(i)].slots
        assert c.annotation(i).tier("words")[item.slot_words["action"][0]].end > 0
    # a words tier that does not read the command fails naming the utterance
    c.commands[0] = type(c.commands[0])("turn on the lamp", c.commands[0].slots, c.commands[0].slot_words, "x")
    with pytest.raises(FestivalError, match=f"{c.ids[0]}.*Festival's words tier"):
        c.check_words()
    again = CommandsCorpus(tmp_path / "commands", voices=["kal"], num_sentences=4, progress=False)
    assert not again.built  # cached under root


@needs_festival
def test_train_py_commands_end_to_end(tmp_path, tiny_w2v2_dir):
    from src.analyses.base import load_classifier
    from src.probes.utterance import UtteranceClassifier
    from tests.helpers import run_cli

    run = tmp_path / "run"
    args = ["experiment=commands", "backbone=local", f"backbone.model_id={tiny_w2v2_dir}", "backbone.name=tiny",
            f"data.root={tmp_path / 'data' / 'commands'}", "data.voices=[kal]", "data.num_sentences=31",
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'outputs'}", "cache.progress=false",
            "logger=none", "n_boot=50", "task.max_epochs=20", "task.layer=2"]  # fmt: skip
    run_cli("train.py", args, run)
    df = pd.read_csv(run / "results.csv")
    acc = df[(df.metric == "accuracy") & (df.split == "test")]
    assert sorted(acc.target) == ["action", "location", "object"]
    assert ((acc.ci_low <= acc.value + 1e-12) & (acc.value <= acc.ci_high + 1e-12)).all() and (acc.unit == "text").all()
    assert set(df.metric) == {"accuracy", "accuracy_majority_baseline"} and (df.layer == 2).all()
    assert (run / "accuracy_per_head.png").exists()
    stable = tmp_path / "outputs" / "classifiers" / "tiny_commands_2_seed0.pt"
    assert stable.exists() and (run / "classifier.pt").read_bytes() == stable.read_bytes()
    clf, meta = UtteranceClassifier.load(stable)
    assert meta["corpus"] == "commands" and meta["seed"] == 0 and clf.layer == 2
    assert set(meta["splits"]) == {"train", "val", "test"}
    # the reported test accuracy is the checkpoint's accuracy on the live model
    backbone, clf, meta = load_classifier(stable)
    corpus = CommandsCorpus(tmp_path / "data" / "commands", voices=["kal"], num_sentences=31)
    ids = corpus.ids
    correct = []
    for uid in meta["splits"]["test"]:
        i = ids.index(uid)
        from src.probes.utterance import live_states

        out = clf(*live_states(backbone, torch.from_numpy(corpus[i].audio)))
        item = corpus.command_item(i)
        correct.append(clf.heads["action"][int(out["action"].argmax())] == item.slots["action"])
    np.testing.assert_allclose(np.mean(correct), acc.set_index("target").value["action"], atol=1e-12)
    # ensure_classifier (the analyses' checkpoint: auto) finds the stable checkpoint: nothing is retrained
    from hydra import compose, initialize_config_dir

    from src.jobs.utterance import ensure_classifier
    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=args)
    before = stable.stat().st_mtime_ns
    assert ensure_classifier(cfg) == stable and stable.stat().st_mtime_ns == before

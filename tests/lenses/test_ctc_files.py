"""CTC head and tuned-lens files: damaged or foreign files name the file and the rebuild command
(never torch's advice to load with weights_only=False); saves are atomic; the CLI checks --out
is writable before training; utterances with no phones are counted as empty, not too short."""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pytest
import torch

from src.datamodules.corpus import Interval
from src.jobs.ctc_head import check_writable
from src.lenses import ctc
from tests.lenses.helpers import _splits, toy

TORCH_ADVICE = ("weights_only", "will likely succeed", "trusted source")


def _head():
    torch.manual_seed(0)
    return ctc.CTCHead(6, [ctc.BLANK, "a", "b"], norm="none", layer="3", backbone="bb@1")


def _assert_clean(e, path):
    msg = str(e.value)
    assert not any(a in msg for a in TORCH_ADVICE), msg
    assert (
        e.value.__cause__ is None and e.value.__context__ is None
    )  # the traceback does not show torch's text
    assert str(path) in msg


# ----------------------------------------------------------------------------- damaged and foreign files


def test_truncated_head_is_damaged_with_the_rebuild_command(tmp_path):
    f = _head().save(tmp_path / "h.pt")
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(ctc.CTCHeadError) as e:
        ctc.CTCHead.load(f)
    assert str(e.value).startswith(f"{f} is not a readable CTC head file: it is damaged (truncated or overwritten) "
                                   "or not a checkpoint of this project")  # fmt: skip
    assert str(e.value).endswith(f"Rebuild it with: python -m src.jobs.ctc_head --out {f}")
    _assert_clean(e, f)


def test_foreign_pickle_is_not_a_checkpoint_of_this_project_and_torch_advice_is_not_echoed(tmp_path):
    f = tmp_path / "foreign.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.zeros(2)}, f)  # weights_only refuses Namespace
    with pytest.raises(Exception) as raw:  # what torch says on its own (the text the CLI used to show)
        torch.load(f, weights_only=True)
    assert "weights_only" in str(raw.value)
    with pytest.raises(ctc.CTCHeadError, match=r"not a checkpoint of this project \(UnpicklingError\)") as e:
        ctc.CTCHead.load(f)
    _assert_clean(e, f)
    with pytest.raises(ctc.CTCHeadError, match="not a checkpoint of this project") as e:
        ctc.TunedLens.load(f)
    _assert_clean(e, f)


def test_foreign_state_dict_names_the_rebuild_command(tmp_path):
    f = tmp_path / "sd.pt"
    torch.save({"weight": torch.zeros(2)}, f)  # loads, but is not ours
    with pytest.raises(ctc.CTCHeadError, match=rf"is not a CTC head file of format .*Rebuild it with: python -m "
                                               rf"src\.jobs\.ctc_head --out {f}"):  # fmt: skip
        ctc.CTCHead.load(f)


def test_tuned_lens_files_name_the_head_command(tmp_path):
    lens = ctc.TunedLens(6, ["0", "1"])
    f = lens.save(tmp_path / "ctc_head_tiny_tuned_lens.pt")
    want = (f"Rebuild it with: python -m src.jobs.ctc_head --measure --out {tmp_path / 'ctc_head_tiny.pt'} "
            "(writes ctc_head_tiny_tuned_lens.pt beside the head)")  # fmt: skip
    with open(f, "r+b") as fh:
        fh.seek(0)
        fh.write(b"\x00" * 64)  # overwrite the zip header
    with pytest.raises(ctc.CTCHeadError) as e:
        ctc.TunedLens.load(f)
    assert "damaged" in str(e.value) and str(e.value).endswith(want)
    _assert_clean(e, f)
    with pytest.raises(ctc.CTCHeadError, match=rf"does not exist\. {want[:30]}"):
        ctc.TunedLens.load(tmp_path / "none_tuned_lens.pt")
    bad = tmp_path / "bad_tuned_lens.pt"
    torch.save({"format": ctc.LENS_FORMAT, "config": {"dim": 5, "layers": ["0", "1"]},
                "state_dict": lens.state_dict()}, bad)  # fmt: skip
    with pytest.raises(ctc.CTCHeadError, match=r"bad_tuned_lens\.pt: the weights do not fit its config"):
        ctc.TunedLens.load(bad)


# ----------------------------------------------------------------------------- atomic saves


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    head = _head()
    f = head.save(tmp_path / "h.pt")
    before = f.read_bytes()

    def broken(obj, fh, *a, **kw):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        head.save(f)
    with pytest.raises(OSError, match="No space left"):
        ctc.TunedLens(6, ["0"]).save(tmp_path / "l.pt")
    monkeypatch.undo()
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["h.pt"]
    assert ctc.CTCHead.load(f).config() == head.config()


def test_saved_files_get_the_umask_mode_not_a_private_temp_mode(tmp_path):
    old = os.umask(0o022)
    try:
        f = _head().save(tmp_path / "h.pt")
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- the CLI checks --out first


def test_cli_refuses_an_unwritable_out_before_loading_or_training(tmp_path, monkeypatch):
    import src.jobs.common
    from src.jobs import ctc_head

    calls = []
    monkeypatch.setattr(src.jobs.common, "load_activations", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(ctc_head, "_compose", lambda *a: calls.append(a))
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "head.pt"
    with pytest.raises(ctc.CTCHeadError, match=rf"cannot write --out {out}: {blocker} is not writable .*nothing was "
                                                r"trained"):  # fmt: skip
        ctc_head.main(["--out", str(out)])
    with pytest.raises(ctc.CTCHeadError, match=r"is a directory"):
        ctc_head.main(["--out", str(tmp_path)])
    assert calls == []


def test_check_writable_on_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with open(ro / "x", "xb"):
            pytest.skip("running as root: a 0555 folder is still writable")
    except PermissionError:
        pass
    finally:
        (ro / "x").unlink(missing_ok=True)
    with pytest.raises(ctc.CTCHeadError, match=rf"cannot write --out {ro / 'h.pt'}: {ro} is not writable "
                                                r"\(Permission denied\)"):  # fmt: skip
        check_writable(ro / "h.pt")


def test_check_writable_accepts_a_new_folder_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "deeper" / "h.pt"
    assert check_writable(out) == out
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []


# ----------------------------------------------------------------------------- empty phone tiers


def test_empty_phone_tiers_are_counted_as_empty_with_a_warning(caplog):
    corpus, acts = toy(short=(5,))
    corpus._utts[1].tiers["phones"] = []  # an empty tier
    corpus._utts[2].tiers["phones"] = [Interval(0.0, 0.3, "sil")]  # only silence: empty after normalisation
    sp = _splits(len(corpus))  # train: utterances 0..23
    with caplog.at_level(logging.WARNING, logger="src.lenses.ctc"):
        heads = ctc.train_ctc_probes(acts, corpus, [0], splits=sp, max_epochs=1, batch_size=8)
    m = heads["0"].metrics
    assert (m["train_skipped_empty"], m["train_skipped_too_short"], m["train_utterances"]) == (2, 1, 21)
    assert (m["val_skipped_empty"], m["val_skipped_too_short"], m["val_utterances"]) == (0, 0, 8)
    assert any("2 of 24 train utterances have an empty 'phones' tier" in r.getMessage()
               and "s1_001" in r.getMessage() and "s0_002" in r.getMessage() for r in caplog.records)  # fmt: skip


def test_a_split_with_only_empty_tiers_says_so():
    corpus, acts = toy(n_utts=10)
    for u in corpus._utts[6:8]:
        u.tiers["phones"] = []
    sp = {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 10)}
    with pytest.raises(ctc.CTCHeadError, match=r"no val utterance .*2 utterances in the split: 2 with an empty "
                                               r"'phones' tier, 0 too short"):  # fmt: skip
        ctc.train_ctc_probes(acts, corpus, [0], splits=sp, max_epochs=1)

"""src/progress.py: a tqdm bar on a terminal, plain lines (stage, done/total, elapsed, remaining) elsewhere;
the Lightning callback; and the lines of real stages run with their output going to a file."""

from __future__ import annotations

import io
import logging
import re

import pytest

import src.progress as P
from src.progress import format_seconds, lightning_callback, progress

LINE = re.compile(
    r"^\[progress\] (?P<desc>.+?): (?P<done>\d+)/(?:at most )?(?P<total>\d+) (?P<unit>.+?) \((?P<pct>\d+)%\), "
    r"elapsed (?P<elapsed>\S+), remaining (?:at most )?~(?P<eta>[^,\s]+)(?:, (?P<postfix>.+))?$"
)


class FakeClock:
    """Monotonic time that moves only when told (no test sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(P, "_clock", c)
    for k in (P.ENV_MODE, P.ENV_EVERY, P.ENV_PERCENT):
        monkeypatch.delenv(k, raising=False)
    return c


def slow(items, clock, seconds):
    """A fake slow iterable: each item takes ``seconds`` of the fake clock."""
    for x in items:
        clock.t += seconds
        yield x


def test_lines_name_stage_done_total_elapsed_and_remaining(clock):
    out = io.StringIO()
    got = [x for x in progress(slow(range(10), clock, 3.0), total=10, desc="dimred layers", unit="layer", every=5,
                               stream=out)]  # fmt: skip
    assert got == list(range(10))  # the items pass through unchanged
    lines = out.getvalue().splitlines()
    # a line when >= 5 s passed since the last one: after items 2 (6 s), 4 (12 s), 6 (18 s), 8 (24 s); then "done"
    assert lines == [
        "[progress] dimred layers: 2/10 layer (20%), elapsed 6.0s, remaining ~24s",
        "[progress] dimred layers: 4/10 layer (40%), elapsed 12s, remaining ~18s",
        "[progress] dimred layers: 6/10 layer (60%), elapsed 18s, remaining ~12s",
        "[progress] dimred layers: 8/10 layer (80%), elapsed 24s, remaining ~6.0s",
        "[progress] dimred layers: done, 10/10 layer in 30s",
    ]
    for line in lines[:-1]:  # remaining = elapsed / done * (total - done) for a constant pace
        m = LINE.match(line)
        done, total = int(m["done"]), int(m["total"])
        assert m["eta"] == format_seconds(3.0 * (total - done))


def test_update_form_percent_lines_and_env_interval(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_EVERY, "1000")  # the interval never fires: only the 25 % steps do
    out = io.StringIO()
    with progress(total=8, desc="training", unit="epoch", percent=25, stream=out) as bar:
        for _ in range(8):
            clock.t += 10
            bar.update(1)
    assert out.getvalue().splitlines() == [
        "[progress] training: 2/8 epoch (25%), elapsed 20s, remaining ~1m00s",
        "[progress] training: 4/8 epoch (50%), elapsed 40s, remaining ~40s",
        "[progress] training: 6/8 epoch (75%), elapsed 1m00s, remaining ~20s",
        "[progress] training: done, 8/8 epoch in 1m20s",
    ]


def test_unknown_total_short_stage_and_failures(clock):
    out = io.StringIO()
    for _ in progress(slow(iter(range(3)), clock, 30.0), desc="stream", unit="chunk", every=20, stream=out):
        pass
    assert out.getvalue().splitlines() == [
        "[progress] stream: 1 chunk, elapsed 30s",
        "[progress] stream: 2 chunk, elapsed 1m00s",
        "[progress] stream: 3 chunk, elapsed 1m30s",
        "[progress] stream: done, 3 chunk in 1m30s",
    ]
    quiet = io.StringIO()  # faster than the interval: nothing at all
    for _ in progress(slow(range(5), clock, 1.0), desc="fast", every=20, stream=quiet):
        pass
    assert quiet.getvalue() == ""
    failed = io.StringIO()  # an error inside the stage: no "done" line
    with pytest.raises(RuntimeError), progress(total=4, desc="boom", every=0, stream=failed) as bar:
        bar.update(1)
        raise RuntimeError("x")
    assert failed.getvalue().splitlines() == ["[progress] boom: 1/4 it (25%), elapsed 0.0s, remaining ~0.0s"]
    early = io.StringIO()  # left early (early stopping): "stopped", not "done"
    for k in progress(slow(range(10), clock, 5.0), total=10, desc="epochs", unit="epoch", every=0, stream=early):
        if k == 2:
            break
    assert early.getvalue().splitlines()[-1] == "[progress] epochs: stopped at 2/10 epoch after 15s"


def test_wrap_counts_nested_loops_once(clock):
    out = io.StringIO()
    bar = progress(total=6, desc="faithfulness utterance 1/1", unit="attributions", every=0, stream=out)
    for _ in range(2):
        for m in bar.wrap(["a", "b", "c"]):
            clock.t += 1
            if m == "b":
                continue  # counted all the same
    bar.close()
    lines = out.getvalue().splitlines()
    assert [LINE.match(x)["done"] for x in lines[:-1]] == ["1", "2", "3", "4", "5"]
    assert lines[-1] == "[progress] faithfulness utterance 1/1: done, 6/6 attributions in 6.0s"


def test_terminal_gets_a_tqdm_bar_and_no_lines(clock):
    from tqdm import tqdm

    tty = TTY()
    bar = progress(range(5), desc="CCA", unit="pair", every=0, stream=tty, leave=True)
    assert isinstance(bar._bar, tqdm)
    assert list(bar) == list(range(5))
    text = tty.getvalue()
    assert "CCA" in text and "\r" in text and "5/5" in text  # tqdm's carriage-return redraws
    assert "[progress]" not in text
    assert P.resolve_mode(None, TTY()) == "bar" and P.resolve_mode(None, io.StringIO()) == "log"


def test_modes_from_the_environment(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_MODE, "off")
    out = io.StringIO()
    for _ in progress(slow(range(3), clock, 60.0), desc="x", every=0, stream=out):
        pass
    assert out.getvalue() == ""
    monkeypatch.setenv(P.ENV_MODE, "log")  # lines even on a terminal
    tty = TTY()
    for _ in progress(range(2), desc="y", every=0, stream=tty):
        pass
    assert tty.getvalue().startswith("[progress] y: 1/2")
    monkeypatch.setenv(P.ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match="SPEECHINTERP_PROGRESS"):
        progress(range(2))
    monkeypatch.setenv(P.ENV_MODE, "auto")
    monkeypatch.setenv(P.ENV_EVERY, "soon")
    with pytest.raises(ValueError, match="SPEECHINTERP_PROGRESS_EVERY='soon'"):
        progress(range(2), stream=io.StringIO())


def test_lines_go_to_the_logger_when_logging_is_set_up(clock, caplog):
    caplog.set_level(logging.INFO, logger="speechinterp")
    for _ in progress(slow(range(2), clock, 30.0), total=2, desc="mutual information", unit="layer"):
        pass
    msgs = [r.getMessage() for r in caplog.records if r.name == "speechinterp.progress"]
    assert msgs == ["[progress] mutual information: 1/2 layer (50%), elapsed 30s, remaining ~30s",
                    "[progress] mutual information: done, 2/2 layer in 1m00s"]  # fmt: skip


def test_format_seconds():
    assert [format_seconds(s) for s in (0.04, 9.95, 10, 59.4, 60, 125, 3599, 3600, 3725)] == [
        "0.0s", "9.9s", "10s", "59s", "1m00s", "2m05s", "59m59s", "1h00m", "1h02m"]  # fmt: skip


# -- Lightning ---------------------------------------------------------------------------------


def _tiny_fit(tmp_path, callbacks, epochs=3, **trainer_kw):
    import lightning as L
    import torch

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 2)), batch_size=5)  # 4 batches
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=callbacks, **trainer_kw)  # fmt: skip
    trainer.fit(M(), data)
    return trainer


def test_lightning_callback_lines_when_not_a_terminal(tmp_path, clock):
    out = io.StringIO()
    cb = lightning_callback("probe training (LinearProbe, layers 0-3)", every=0, stream=out)
    trainer = _tiny_fit(tmp_path, [cb])
    assert trainer.progress_bar_callback.is_disabled  # Lightning's bar is off in a log file
    lines = out.getvalue().splitlines()
    ms = [LINE.match(x) for x in lines[:-1]]
    assert all(ms), lines
    assert [int(m["done"]) for m in ms] == list(range(1, 12)) and {m["total"] for m in ms} == {"12"}
    assert {m["desc"] for m in ms} == {"probe training (LinearProbe, layers 0-3)"}
    assert lines[0].endswith("epoch 1/3") and lines[-2].endswith("epoch 3/3")
    assert lines[-1].startswith("[progress] probe training (LinearProbe, layers 0-3): done, 12 batches")


def test_lightning_callback_on_a_terminal(tmp_path, clock):
    tty = TTY()  # Lightning's own bar is there: the callback stays silent
    trainer = _tiny_fit(tmp_path, [lightning_callback("fit", every=0, stream=tty)], epochs=1)
    assert not trainer.progress_bar_callback.is_disabled and tty.getvalue() == ""
    tty = TTY()  # no Lightning bar (enable_progress_bar=False): the callback draws one
    _tiny_fit(tmp_path, [lightning_callback("CTC head training", every=0, stream=tty)], epochs=2,
              enable_progress_bar=False)  # fmt: skip
    text = tty.getvalue()  # tqdm redraws with carriage returns (throttled; the bar is cleared at the end)
    assert "CTC head training:" in text and "0/8 [" in text and "\r" in text and "[progress]" not in text


def test_probe_training_reports_its_layers(tmp_path, clock, monkeypatch, caplog):
    """fit_probe (the probe and the control task) adds the callback; a test trainer factory's own kwargs stay intact."""
    import functools

    import lightning as L
    import torch

    from src.probes.linear import LinearProbe
    from src.probes.pipeline import SplitArrays, fit_probe

    monkeypatch.setenv(P.ENV_EVERY, "0")
    caplog.set_level(logging.INFO, logger="speechinterp")
    g = torch.Generator().manual_seed(0)
    arrays = {s: SplitArrays(torch.randn(n, 2, 3, generator=g), torch.randint(0, 2, (n,), generator=g),
                             torch.zeros(n, dtype=torch.long).numpy(), None)
              for s, n in (("train", 40), ("val", 10))}  # fmt: skip

    def trainer_factory(**kw):
        return L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)  # fmt: skip

    fit_probe(functools.partial(LinearProbe, min_steps=0, patience=0), arrays, "classification", 2, trainer_factory,
              batch_size=20, layer_ids=[3, 5], what="control-task probe")  # fmt: skip
    msgs = [r.getMessage() for r in caplog.records if r.name == "speechinterp.progress"]
    assert msgs and all(m.startswith("[progress] control-task probe training (LinearProbe, layers 3,5)") for m in msgs)
    assert msgs[-1].split(": ", 1)[1].startswith("done, 4 batches")  # 2 epochs x 2 batches


# -- real stages, their output going to a file ---------------------------------------------------


def _run_to_file(script: str, overrides: list[str], run_dir, log_path) -> str:
    """Run an entry point with stdout and stderr redirected to one file (not a terminal); return that file."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
           P.ENV_EVERY: "0", P.ENV_MODE: "auto"}  # fmt: skip
    env.pop(P.ENV_PERCENT, None)
    with open(log_path, "w") as f:
        proc = subprocess.run([sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={run_dir}"],
                              cwd=run_dir.parent, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
    text = log_path.read_bytes().decode()  # keeps carriage returns (read_text would turn them into newlines)
    assert proc.returncode == 0, text[-6000:]
    return text


def _progress_lines(text: str, prefix: str) -> list[re.Match]:
    lines = [x for x in text.splitlines() if "[progress] " + prefix in x]
    return [LINE.search(x[x.index("[progress]") :]) or x for x in lines]


def test_train_py_logs_extraction_probe_control_and_mdl_progress_to_a_file(tmp_path, tone_corpus_dir, tiny_w2v2_dir):
    run = tmp_path / "run"
    text = _run_to_file("train.py", [
        "data=textgrid", f"data.root={tone_corpus_dir}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'outputs'}", "backbone=local", f"backbone.model_id={tiny_w2v2_dir}",
        "backbone.name=tiny", "logger=none", "trainer.max_epochs=2", "probe.min_steps=0", "probe.patience=0",
        "n_boot=20", "split.by=utterance", "split.test_fraction=0.25", "split.val_fraction=0.25", "task.min_count=1",
        "controls.selectivity=true", "controls.mdl=true", "cache.batch_size=2",
    ], run, tmp_path / "train.out")  # fmt: skip
    assert "\r" not in text and "Loading weights" not in text  # no bar redraws in a file (ours, Lightning's, HF's)
    extraction = _progress_lines(text, "extraction tiny on ")
    assert extraction and all(isinstance(m, re.Match) for m in extraction[:-1]), extraction
    assert [int(m["done"]) for m in extraction[:-1]] == list(range(1, int(extraction[0]["total"])))
    assert "done" in extraction[-1]
    for stage in ("probe training (LinearProbe, layers 0-3)",
                  "control-task probe training (LinearProbe, layers 0-3)"):  # fmt: skip
        lines = _progress_lines(text, stage)
        assert len(lines) >= 2 and isinstance(lines[0], re.Match) and lines[0]["unit"] == "batches", (stage, text[-3000:])
        assert lines[0]["postfix"] == "epoch 1/2" and "done" in lines[-1]
    mdl = _progress_lines(text, "MDL online code")
    assert [int(m["done"]) for m in mdl[:-1]] == [1, 2, 3] and mdl[0]["total"] == "4" and mdl[0]["unit"] == "layer"
    assert (run / "results.csv").exists()


def test_an_analysis_loop_logs_its_layers(monkeypatch, caplog):
    """A real analysis (dimred on the fake phone caches of tests/analyses) in a non-terminal session."""
    import numpy as np

    from src.analyses.base import AnalysisContext
    from src.analyses.dimred import DimReduction
    from tests.analyses.phone_fakes import phone_corpus, prototype_acts

    monkeypatch.setenv(P.ENV_EVERY, "0")
    monkeypatch.setenv(P.ENV_MODE, "auto")
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="speechinterp")
    phones = ["aa", "iy", "s", "m"]
    rng = np.random.default_rng(0)
    corpus = phone_corpus([list(rng.choice(phones, size=8)) for _ in range(6)], ["s1", "s2"] * 3)
    acts = prototype_acts(corpus, {p: np.eye(8)[i][None].repeat(3, 0) for i, p in enumerate(phones)}, noise=0.5, seed=1)
    DimReduction(methods=["pca"], layers=None, min_count=1, max_items=None, seed=0).run(AnalysisContext(acts, corpus))
    lines = [r.getMessage() for r in caplog.records if r.name == "speechinterp.progress"]
    ms = [LINE.match(x) for x in lines[:-1]]
    assert [(m["desc"], m["done"], m["total"], m["unit"]) for m in ms] == [("dimred layers", "1", "3", "layer"),
                                                                          ("dimred layers", "2", "3", "layer")]  # fmt: skip
    assert lines[-1].startswith("[progress] dimred layers: done, 3/3 layer in ")


def test_a_bound_says_at_most_and_the_done_line_counts_what_ran(clock):
    """Training that may stop early (max_epochs, patience) knows only an upper bound: lines say so, and the
    final line gives the batches that ran, not the bound."""
    out = io.StringIO()
    p = P.Progress(total=100, desc="probe training", unit="batches", every=0, mode="log", stream=out, bound=True)
    for _ in range(3):
        clock.t += 1.0
        p.update(1)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[progress] probe training: 1/at most 100 batches (1%), elapsed 1.0s, remaining at most ~1m39s"
    assert lines[-1].startswith("[progress] probe training: done, 3 batches in ")

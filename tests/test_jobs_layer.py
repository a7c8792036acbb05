"""The job layer's and the rooms' rules, read from the code's own imports (ast): the entry points import only
src/jobs/, no package under src/ imports src/jobs/, nothing below the analyses imports src/analyses/, probes import
no backbone, the lens analyses import no sibling analysis, functional/ and backbones/ stay at the bottom, model internals are read
only inside src/backbones/, and analyses get the classifier an ``auto`` checkpoint
needs from the context's factory (a hand-built context: an explicit path)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from src.analyses.base import AnalysisContext, AnalysisError

ROOT = Path(__file__).resolve().parents[1]
DEPRECATED_REEXPORT: set[str] = set()


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def test_entry_points_import_only_the_job_layer():
    for name in ("train.py", "analyze.py", "build_cache.py"):
        ours = [m for m in _imports(ROOT / name) if m == "src" or m.startswith("src.")]
        assert ours and all(m.startswith("src.jobs.") for m in ours), (name, ours)


def test_no_package_imports_the_job_layer():
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("src/jobs/") or rel in DEPRECATED_REEXPORT:
            continue
        offenders += [(rel, m) for m in _imports(path) if m == "src.jobs" or m.startswith("src.jobs.")]
    assert offenders == []


def _src_imports(under: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import of ``src.*`` in the files under ``src/<under>``."""
    out = []
    for path in sorted((ROOT / "src" / under).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        out += [(rel, m) for m in _imports(path) if m == "src" or m.startswith("src.")]
    return out


def test_nothing_below_the_analyses_imports_them():
    offenders = [(f, m) for f, m in _src_imports("") if m.startswith("src.analyses")
                 and not f.startswith(("src/analyses/", "src/jobs/"))]  # fmt: skip
    assert offenders == []


def test_probes_import_no_backbone():
    assert [(f, m) for f, m in _src_imports("probes") if m.startswith("src.backbones")] == []


def test_lens_room_and_lens_analyses():
    """src/lenses/ sits below the analyses; the lens analyses share through it and analyses/base.py, not a sibling."""
    assert [(f, m) for f, m in _src_imports("lenses") if m.startswith(("src.analyses", "src.jobs"))] == []
    lens_analyses = {"src/analyses/ctc_lens.py", "src/analyses/decoder_lens.py", "src/analyses/logit_lens.py"}
    siblings = [(f, m) for f, m in _src_imports("analyses")
                if m.startswith("src.analyses.") and m != "src.analyses.base" and f in lens_analyses]  # fmt: skip
    assert siblings == []
    users = {f for f, m in _src_imports("") if m == "src.analyses.decoder_lens"}
    assert users == set(), users  # the live analyses took select_utterances from it; now analyses/base.py


def test_functional_and_backbones_stay_at_the_bottom():
    """src/functional/ imports nothing of src/ outside itself; backbones never import a corpus reader."""
    assert [(f, m) for f, m in _src_imports("functional") if not m.startswith("src.functional")] == []
    assert [(f, m) for f, m in _src_imports("backbones") if m.startswith("src.datamodules")] == []


# what only src/backbones/ may touch: the model's own submodules and the backbones' private methods
MODEL_INTERNALS = ("model.model.decoder", ".proj_out", ".feature_extractor.", "encoder.layers", "backbone._", "bb._")


def test_model_internals_only_inside_the_backbones():
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("src/backbones/"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            offenders += [(rel, i, s) for s in MODEL_INTERNALS if s in code]
    assert offenders == []


def test_classifier_factory_receives_seed_and_overrides(tmp_path):
    calls = []

    def factory(seed, overrides):
        calls.append((seed, overrides))
        return str(tmp_path / f"c{seed}.pt")

    ctx = AnalysisContext(None, None, seed=3, classifier_factory=factory)
    assert ctx.classifier(3) == tmp_path / "c3.pt"
    assert ctx.classifier(1, ("experiment=commands",)) == tmp_path / "c1.pt"
    assert calls == [(3, None), (1, ["experiment=commands"])]


def test_auto_checkpoint_without_the_job_layer_says_to_give_a_path(tmp_path):
    from src.analyses.faithfulness import checkpoint_path

    ctx = AnalysisContext(None, None)  # built by hand, as tests and notebooks do
    with pytest.raises(AnalysisError, match="give a checkpoint path"):
        ctx.classifier(0)
    with pytest.raises(AnalysisError, match="give a checkpoint path"):
        checkpoint_path(ctx, "auto", ["experiment=commands"], 0)
    given = tmp_path / "classifier.pt"
    given.write_bytes(b"x")
    assert checkpoint_path(ctx, str(given), [], 0) == given  # an explicit path needs no factory
    with pytest.raises(AnalysisError, match="no such file"):
        checkpoint_path(ctx, str(tmp_path / "missing.pt"), [], 0)


def test_short_dirname_keeps_short_names_and_cuts_long_ones_distinctly():
    from src.jobs.common import short_dirname

    assert short_dirname("probe.layer=0,probe=ridge") == "probe.layer=0,probe=ridge"
    a = "data.root=x," + ",".join(f"key{i}=value{i}" for i in range(40))
    b = a.replace("value39", "value40")
    sa, sb = short_dirname(a), short_dirname(b)
    assert len(sa.encode()) <= 120 and len(sb.encode()) <= 120 and sa != sb
    assert sa.startswith(a[:100])
    assert len(short_dirname("é" * 200).encode()) <= 120  # cut on a character boundary

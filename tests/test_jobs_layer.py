"""The job layer's rules, read from the code's own imports (ast): the entry points import only src/jobs/,
no package under src/ imports src/jobs/, and analyses get the
classifier an ``auto`` checkpoint needs from the context's factory (a hand-built context: an explicit path)."""

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

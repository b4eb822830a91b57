"""The import rule and the structure rules hold, and each check fails on a planted violation.

The layer contract is import-linter's (pyproject.toml ``[tool.importlinter]``); the private-name and
function-length rules are ``tools/check_structure.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make install)")


def _checker():
    spec = importlib.util.spec_from_file_location("check_structure", REPO / "tools" / "check_structure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _copy(tmp_path: Path) -> Path:
    """The package and its contract in a scratch folder, so a violation can be planted."""
    shutil.copytree(REPO / "evalharness", tmp_path / "evalharness", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300)


def _plant(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef planted_violation() -> None:\n    {line}\n")


def test_layer_contract_holds_and_fails_on_a_planted_upward_import(tmp_path: Path) -> None:
    good = _lint(REPO)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    assert "1 kept, 0 broken" in good.stdout
    root = _copy(tmp_path)
    # a lazy import inside a function counts as much as one at the top (the old circle hid in such imports)
    _plant(root / "evalharness" / "core" / "stats.py", "from evalharness.analysis import compare  # noqa")
    bad = _lint(root)
    assert bad.returncode != 0
    assert "evalharness.core is not allowed to import evalharness.analysis" in bad.stdout


def test_analysis_and_pipeline_may_not_import_each_other(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _plant(root / "evalharness" / "analysis" / "compare.py", "from evalharness.pipeline import runner  # noqa")
    bad = _lint(root)
    assert bad.returncode != 0
    assert "evalharness.analysis is not allowed to import evalharness.pipeline" in bad.stdout


def test_no_private_name_crosses_a_module_and_no_long_function() -> None:
    found = _checker().violations(REPO / "evalharness")
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("line", ["from evalharness.core.stats import _planted_private",
                                  "from evalharness.core import stats; stats._planted_private()"])
def test_private_check_fails_on_a_planted_private_import(tmp_path: Path, line: str) -> None:
    root = _copy(tmp_path)
    _plant(root / "evalharness" / "store.py", line)
    found = _checker().violations(root / "evalharness")
    assert any("evalharness.core.stats._planted_private" in f for f in found), found


def test_length_check_fails_on_a_planted_long_function(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (root / "evalharness" / "core" / "long.py").write_text(f"def too_long() -> None:\n{body}\n")
    found = _checker().violations(root / "evalharness")
    assert any("too_long is 71 lines" in f for f in found), found


def test_the_package_root_exports_the_library_entry_points() -> None:
    import evalharness

    for name in evalharness.__all__:
        assert callable(getattr(evalharness, name)), name
    # the README's library example imports these from the root
    from evalharness import build_table, regress, resolve, run_spec  # noqa: F401


def test_every_task_module_exposes_its_paired_comparison() -> None:
    """compare and regress find a task's paired test by name (``evalharness.tasks.<name>.paired``): a re-export
    that a linter's autofix removed would silently turn every Δ cell into "no paired comparison"."""
    import importlib

    from evalharness.tasks.base import known_tasks

    for name in known_tasks():
        module = importlib.import_module(f"evalharness.tasks.{name}")
        assert callable(getattr(module, "paired", None)), name
        assert getattr(module, "TASK_CLASS", None) is not None, name

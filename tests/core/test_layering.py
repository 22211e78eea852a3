"""The layering of DEVELOPERS.md, checked: `lint-imports` (import-linter) runs the contracts of
pyproject.toml over every import of `src/modelcycle`, those inside functions included. The core
imports no adapter and no framework, the adapters meet only in the core, and nothing but the
command line imports the command line. A copy of the source with one import too many shows
that a broken contract fails the run and names the import.
"""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import modelcycle

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
"""import-linter's console script in the venv the tests run in (the dev dependency group)."""
CORE = "The core imports no adapter and no framework"
ADAPTERS = "Adapters meet only in the core"


def contract(name: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (found,) = [c for c in contracts if c["name"] == name]
    return found


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the `src/modelcycle` and the pyproject.toml of `project`."""
    assert LINT_IMPORTS.is_file(), f"no {LINT_IMPORTS}: sync the dev group (uv sync --all-groups)"
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9][0-9]* kept, 0 broken\.", result.stdout), result.stdout


def test_every_module_is_core_or_adapter():
    modules = {f"modelcycle.{module.name}" for module in pkgutil.iter_modules(modelcycle.__path__)}
    unplaced = modules - set(contract(CORE)["source_modules"]) - set(contract(ADAPTERS)["modules"]) - {"modelcycle.cli"}
    assert not unplaced, f"name {sorted(unplaced)} in a contract of pyproject.toml: core or adapter?"


@pytest.mark.parametrize(("module", "leak", "broken", "named"), [
    ("registry.py", "from modelcycle.serving import gateway", CORE,
     "modelcycle.registry -> modelcycle.serving.gateway"),
    ("monitoring/drift.py", "import kopf", CORE, "modelcycle.monitoring.drift -> kopf"),
    ("serving/gateway.py", "from modelcycle.operator import resources", ADAPTERS,
     "modelcycle.serving.gateway -> modelcycle.operator.resources"),
])
def test_one_import_too_many_breaks_the_contract(tmp_path, module, leak, broken, named):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "src" / "modelcycle" / module
    path.write_text(path.read_text() + f"\n\ndef _leak():\n    {leak}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken} BROKEN" in result.stdout, result.stdout
    assert named in result.stdout, result.stdout

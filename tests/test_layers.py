"""The layers contract is real: lint-imports passes on the tree and fails once the base imports a model package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=120)


def test_a_base_module_importing_the_retriever_breaks_the_layers_contract(tmp_path: Path) -> None:
    for package in ("assistant", "simulator", "retriever"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    clean = lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 kept, 0 broken" in clean.stdout

    (tmp_path / "assistant" / "core" / "layer_probe.py").write_text(
        '"""A base module that reaches up into a model package."""\n\nimport retriever.model  # noqa: F401\n')
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "assistant.core.layer_probe -> retriever.model" in broken.stdout
    assert "1 kept, 1 broken" in broken.stdout


def test_the_public_api_imports_from_the_package_root() -> None:
    code = ("import sys; from assistant import load_catalog; "
            "print(len(load_catalog('demo:50')), 'torch' in sys.modules); "
            "from assistant import Assistant, load_catalog; print(Assistant.__name__, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # the catalog alone loads no torch; the model stack comes with `Assistant`
    assert run.stdout.split() == ["50", "False", "Assistant", "True"]

"""Packaging truth: the version is stated once per file and agrees, and every third-party package the
code imports is declared in pyproject.toml (a dependency or an extra)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import anogan

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503: case, '-', '_' and '.' alike)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_version_agrees_with_pyproject():
    assert anogan.__version__ == _project()["version"]


def test_changelog_has_an_entry_for_the_version():
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {anogan.__version__}" in changelog


def test_every_imported_third_party_package_is_declared():
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    sources = sorted((REPO / "src" / "anogan").rglob("*.py")) + [REPO / "train.py", REPO / "predict.py"]
    third_party = _imported_top_level(sources) - set(sys.stdlib_module_names) - {"anogan"}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(third_party):
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_check_sees_an_undeclared_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nimport yaml\nfrom numpy import linalg\nfrom . import sibling\n\ndef f():\n    import scipy.stats\n"
    )
    assert _imported_top_level([source]) == {"os", "yaml", "numpy", "scipy"}

"""The package's layers: imports run one way (entry points -> engine -> building blocks -> config, utils)."""

import ast
from pathlib import Path

import anogan

PACKAGE = Path(anogan.__file__).parent
# a subpackage may import its own layer's or a lower layer's subpackages, never a higher one's
LAYERS = {
    "cli": 5,
    "deploy": 4,
    "engine": 3,
    "reporting": 2.5,
    "data": 2,
    "scorers": 2,
    "post_processing": 2,
    "models": 1.5,
    "metrics": 1.5,
    "config": 1,
    "utils": 0,
}


def _imports() -> dict[tuple[str, str], list[str]]:
    """(importing subpackage, imported subpackage) -> where, for every import in the package (also inside functions)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:  # anogan/__init__.py: the API, imported lazily on attribute access
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names if node.module == "anogan")]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "anogan" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != rel.parts[0]:
                    edges.setdefault((rel.parts[0], parts[1]), []).append(f"{rel}:{node.lineno}")
    return edges


def test_every_module_lives_in_a_layer():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py"]
    assert {p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "conf"} == set(LAYERS)


def test_imports_run_one_way():
    upward = {f"{a} -> {b}": where for (a, b), where in _imports().items() if LAYERS[b] > LAYERS[a]}
    assert upward == {}


def test_subpackages_import_no_circle():
    graph: dict[str, set[str]] = {}
    for a, b in _imports():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert [p for p in graph if reaches(p, p, set())] == []


def test_config_imports_nothing_but_utils():
    assert {b for (a, b) in _imports() if a == "config"} <= {"utils"}


def test_transform_set_names_declared_in_config_match_the_sets():
    from anogan.config.choices import TRANSFORM_SET_NAMES
    from anogan.models.transforms import TRANSFORM_SETS

    assert tuple(TRANSFORM_SETS) == TRANSFORM_SET_NAMES


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 70


def test_modules_and_functions_stay_small():
    """No module of the package over MAX_MODULE_LINES lines, no function (or method) over MAX_FUNCTION_LINES."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(PACKAGE)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    assert too_long == []

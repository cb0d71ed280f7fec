"""The package's shape: imports run one way down the pipeline, and no function is too long to
read on one screen."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO

PACKAGE = REPO / "code" / "budgetnet"
# Each layer may import itself and the layers before it, never one after it. Evaluation comes
# before training because training validates with evaluation's infer() and metrics.
LAYERS = ("base", "data", "models", "evaluation", "training", "submission", "cli")
BASE = {"errors", "files", "runtime", "runs", "tables", "__init__"}
MAX_FUNCTION_LINES = 80
MODULES = sorted(PACKAGE.rglob("*.py"))


def layer_of(module: str) -> int:
    """budgetnet.<part>[.<module>] -> its index in LAYERS."""
    part = module.split(".")[1] if "." in module else "__init__"
    return LAYERS.index("base" if part in BASE else part)


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST) -> set[str]:
    """Every budgetnet module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("budgetnet.") and _exists(name)}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_every_module_belongs_to_a_layer():
    for path in MODULES:
        assert layer_of(module_name(path)) >= 0  # raises ValueError for a stray folder


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_down_the_pipeline(path):
    name = module_name(path)
    if name == "budgetnet":
        return
    tree = ast.parse(path.read_text())
    upward = [m for m in imported_modules(tree) if layer_of(m) > layer_of(name)]
    assert not upward, f"{name} ({LAYERS[layer_of(name)]}) imports later layers: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_function_is_longer_than_a_screen(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_scripts_import_the_library_not_each_other():
    scripts = {path.stem for path in (REPO / "code").glob("*.py")}
    for path in [*(REPO / "code").glob("*.py"), REPO / "inference.py"]:
        tree = ast.parse(path.read_text())
        names = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [])
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not names & scripts, f"{path.name} imports {names & scripts}"


def test_no_module_imports_itself_back():
    """No import circle, inside a layer too (a function-level import hides one from Python,
    not from the reader): every module's imports, followed, never lead back to it."""
    graph = {}
    for path in MODULES:
        name = module_name(path)
        graph[name] = {m for m in imported_modules(ast.parse(path.read_text())) if m in _NAMES}
        graph[name] -= {name} | _packages_of(name)  # a package's own __init__ is not a circle
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself back through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])


_NAMES = {module_name(path) for path in MODULES}


def _packages_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}

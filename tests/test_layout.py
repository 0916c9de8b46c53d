"""The layout of issue 27: a small kit notebooks reach through `import helpers as hp` (each public module
says its names in `__all__`, everything else is underscored), the kit never imports the tool, no import
cycles among the kit's and the tool's modules, and no function longer than a screen."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("data", "models", "training", "textgen", "metrics", "plots", "inference", "artifacts", "device",
                  "planning", "notebook")
MAX_NAMES = 84  # "at most about 80": the top level and every public module's __all__ together
MAX_FUNCTION_LINES = 60


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _defined_names(path: Path) -> list[str]:
    """Module-level names a file defines itself: functions, classes and assigned names (not imports)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return names


def test_notebooks_reach_at_most_about_80_names():
    top = dir(helpers)
    assert sorted(top) == sorted(set(PUBLIC_MODULES) | {"train", "evaluate", "TrainConfig", "History", "plan",
                                                       "find_lr"}), top
    per_module = {name: len(importlib.import_module(f"helpers.{name}").__all__) for name in PUBLIC_MODULES}
    total = len(top) + sum(per_module.values())
    assert total <= MAX_NAMES, f"{total} names ({len(top)} at the top, per module: {per_module})"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_other_name_of_a_public_module_is_underscored(name):
    module = importlib.import_module(f"helpers.{name}")
    public = getattr(module, "__all__", None)
    assert public is not None, f"helpers/{name}.py defines no __all__"
    assert len(set(public)) == len(public), f"helpers.{name}.__all__ repeats a name"
    missing = [n for n in public if not hasattr(module, n)]
    assert not missing, f"helpers.{name}.__all__ names what the module lacks: {missing}"
    loose = [n for n in _defined_names(ROOT / "helpers" / f"{name}.py")
             if n not in public and not n.startswith("_")]
    assert not loose, f"helpers/{name}.py: not in __all__ and not underscored: {sorted(set(loose))}"


def test_the_kit_imports_nothing_from_the_tool():
    code = ("import pkgutil, sys, helpers\n"
            "for info in pkgutil.walk_packages(helpers.__path__, 'helpers.'):\n"
            "    __import__(info.name)\n"
            "print(sorted(m for m in sys.modules if m == 'workbook' or m.startswith('workbook.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def _module_names() -> dict[str, Path]:
    names = {}
    for path in _python_files("helpers", "workbook"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(current: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The project's modules one import statement names (`from . import x` names x, `from .x import y` x)."""
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = current if path.name == "__init__.py" else current.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        found = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {name for name in found if name in modules and name != current}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_counting_every_import_statement():
    """Every import counts, also those inside functions: a lazy import hides a cycle, it does not remove it."""
    modules = _module_names()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _imported(name, path, node, modules)
    cycles = _cycles(graph)
    assert not cycles, "\n".join(
        f"cycle: {cycle}: " + "; ".join(f"{a} -> {sorted(graph[a] & set(cycle))}" for a in cycle) for cycle in cycles)
    kit_to_tool = sorted((a, b) for a in graph for b in graph[a]
                         if a.startswith("helpers") and b.startswith("workbook"))
    assert not kit_to_tool, kit_to_tool


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _python_files("helpers", "workbook"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # from `def` to its last line (decorators not counted)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_kit_reference_lists_every_public_name():
    """docs/kit.md is the kit's reference: every module and every name in a module's `__all__` is in it."""
    import importlib

    import helpers

    text = (Path(__file__).resolve().parent.parent / "docs" / "kit.md").read_text()
    missing = [f"hp.{name}" for name in dir(helpers) if f"hp.{name}" not in text]
    for module in helpers._MODULES:
        mod = importlib.import_module(f"helpers.{module}")
        missing += [f"hp.{module}.{name}" for name in mod.__all__ if f"`{name}" not in text]
    assert not missing, f"docs/kit.md does not list {missing}: .venv/bin/python tests/scripts/write_kit_reference.py"

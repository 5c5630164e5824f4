"""Layering checks: every module imports on its own, no import cycles, light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import abaw

ROOT = Path(abaw.__file__).parent
# Packages whose modules must stay small (one job per module).
SIZED = ("pipeline", "heads", "commands")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        name = ".".join(("abaw",) + p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = p
    return out


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=ROOT.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imported first, with no abaw module loaded before it (an import-order cycle
    through a package __init__ only shows when its module is the first one imported)."""
    names = sorted(_modules())
    code = ("import importlib, sys\nbad = []\n"
            f"for n in {names!r}:\n"
            "    for m in [m for m in sys.modules if m == 'abaw' or m.startswith('abaw.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module(n)\n"
            "    except Exception as e:\n        bad.append(f'{n}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad))")
    assert _run(code).strip() == ""


@pytest.mark.parametrize("module", ["abaw", "abaw.cache", "abaw.cli", "abaw.config", "abaw.rundir", "abaw.results",
                                    "abaw.schedule", "abaw.fingerprint", "abaw.io"])
def test_light_modules_do_not_import_torch(module):
    assert _run(f"import sys, {module}; print('torch' in sys.modules)").strip() == "False"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """abaw modules `name` imports (module level or in functions), with the package __init__s
    that importing them runs (those not already running above `name`)."""
    is_pkg = path.name == "__init__.py"
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            while t and t not in own:
                found.add(t)
                t = t.rpartition(".")[0]
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_modules_stay_small():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()
           if n.count(".") == 1 or (n.count(".") > 1 and n.split(".")[1] in SIZED)}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}


def test_finetune_imports_nothing_else_from_pipeline():
    modules = _modules()
    for n, p in modules.items():
        if n.startswith("abaw.pipeline.finetune"):
            other = {m for m in _imports(n, p, modules) if m.startswith("abaw.pipeline.")
                     and not m.startswith("abaw.pipeline.finetune")}
            assert other == set(), n

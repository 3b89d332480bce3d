"""The package's structure, read from its source (ast), not from its behaviour.

Dependencies point one way: faces (api, cli, experiment) -> scale -> experiments -> runs -> engine / methods / models
/ data; export and report are side rooms that read run and experiment directories; base modules below all. No private
name crosses a module, no file is over 400 lines, and no import circle closes, not even through an import inside a
function.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kdlab"
BASE = {"config", "configparse", "errors", "registry", "files", "rundir", "expdir", "plugins", "batch", "console",
        "codeid", "tracking", "__init__", "__main__"}
FACES = {"cli", "api", "experiment"}
ROOMS = {"scale", "experiments", "runs", "engine", "methods", "models", "data", "report", "export"}
BELOW_BASE = FACES | ROOMS

# what each room must never import (kdlab.<name>)
FORBIDDEN = {
    "api": {"cli"},
    "experiment": {"cli"},
    "scale": FACES,
    "experiments": FACES | {"scale"},
    "runs": FACES | {"scale", "experiments", "report", "export"},
    "export": FACES | {"scale", "experiments", "runs"},
    "report": FACES | {"scale", "experiments", "runs", "export"},
    "engine": FACES | {"scale", "experiments", "runs", "report", "export", "methods", "models"},
    "methods": FACES | {"scale", "experiments", "runs", "report", "export", "engine", "data"},
    "models": FACES | {"scale", "experiments", "runs", "report", "export", "engine", "methods", "data"},
    "data": FACES | {"scale", "experiments", "runs", "report", "export", "engine", "methods", "models"},
    **{name: BELOW_BASE for name in BASE - {"__init__", "__main__"}},
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every kdlab import in a file, at any depth (functions included)."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return [(m, names, line) for m, names, line in found if m == "kdlab" or m.startswith("kdlab.")]


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def layer_files():
    for path in sources():
        layer = layer_of(path)
        if layer in FORBIDDEN:
            yield layer, path


@pytest.mark.parametrize("layer, path", list(layer_files()), ids=lambda x: str(x).split("kdlab/")[-1])
def test_no_upward_imports(layer, path):
    rooms = set()
    for module, names, _ in imported(path):
        parts = module.split(".")
        if len(parts) > 1:
            rooms.add(parts[1])
        else:  # from kdlab import x
            rooms.update(names)
    bad = rooms & FORBIDDEN[layer]
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports kdlab.{', kdlab.'.join(sorted(bad))}"


def test_every_file_belongs_to_a_room():
    unknown = sorted({layer_of(p) for p in sources()} - BASE - FACES - ROOMS)
    assert not unknown, f"files outside the known rooms and base modules: {unknown}"


def test_no_private_name_crosses_a_module():
    bad = []
    for path in sources():
        for module, names, line in imported(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(p.startswith("_") and not p.startswith("__") for p in module.split(".")):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}: {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_no_file_over_400_lines():
    long = [f"{p.relative_to(PACKAGE)}: {n}" for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def import_graph() -> dict[str, set[str]]:
    """Module -> the kdlab modules it imports (a ``from kdlab.x import y`` where y is a module counts as x.y)."""
    modules = {module_name(p) for p in sources()}
    graph: dict[str, set[str]] = {}
    for path in sources():
        edges = set()
        for module, names, _ in imported(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            edges.update(targets or [module])
        graph[module_name(path)] = {e for e in edges if e in modules and e != module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (as a list of modules), or None. Imports of a package's own ``__init__`` by its
    submodules are not edges of a circle of code (Python runs ``__init__`` first, by design)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):  # a submodule importing its own package
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_inside_functions_say_why():
    """An import inside a function (to keep start-up fast, or for an optional package) has a comment saying why, on
    its line or above its block of imports."""
    bad = []
    for path in sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and not _explained(lines, inner.lineno - 1):
                    bad.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not bad, "imports inside functions without a reason:\n" + "\n".join(sorted(set(bad)))


def _explained(lines: list[str], index: int) -> bool:
    if "#" in lines[index]:
        return True
    above = index - 1
    while above >= 0 and lines[above].strip().startswith(("from ", "import ", ")")) or (
            above >= 0 and lines[above].startswith(" ") and lines[above].strip().endswith((",", "("))):
        if "#" in lines[above]:
            return True
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_a_folder_named_kdlab_beside_a_script_does_not_shadow_the_package(tmp_path):
    (tmp_path / "kdlab").mkdir()
    (tmp_path / "kdlab" / "notes.txt").write_text("a user's own folder, not the package")
    (tmp_path / "script.py").write_text("import kdlab\nprint(kdlab.__file__)\nprint(kdlab.train.__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert not Path(out.stdout.splitlines()[0]).resolve().is_relative_to(tmp_path.resolve()), out.stdout
    assert Path(out.stdout.splitlines()[0]).parent.parent.name == "src", out.stdout  # the installed src/kdlab

"""Dependencies point one way: cli -> runner -> engine / methods / models / data / report; base modules below all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kdlab"
BASE = {"config", "errors", "registry", "files", "rundir", "plugins", "batch", "console", "codeid"}
TOP = {"cli", "api", "experiment"}  # the user-facing layers

# what each layer must never import (kdlab.<name>)
FORBIDDEN = {
    "api": {"cli"},
    "experiment": {"cli"},
    "runner": TOP,
    "export": TOP | {"runner"},
    "report": TOP | {"runner", "export"},
    "engine": TOP | {"runner", "report", "methods", "models"},
    "methods": TOP | {"runner", "report", "engine", "data"},
    "models": TOP | {"runner", "report", "engine", "methods", "data"},
    "data": TOP | {"runner", "report", "engine", "methods", "models"},
    **{name: TOP | {"runner", "report", "engine", "methods", "models", "data"} for name in BASE},
}


def kdlab_imports(path: Path) -> set[str]:
    """The first component under kdlab of every kdlab module a file imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kdlab" and len(parts) > 1:
                found.add(parts[1])
    return found


def layer_files():
    for layer in FORBIDDEN:
        target = PACKAGE / layer
        files = sorted(target.rglob("*.py")) if target.is_dir() else [PACKAGE / f"{layer}.py"]
        for path in files:
            yield layer, path


@pytest.mark.parametrize("layer, path", list(layer_files()), ids=lambda x: str(x).split("kdlab/")[-1])
def test_no_upward_imports(layer, path):
    bad = kdlab_imports(path) & FORBIDDEN[layer]
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports kdlab.{', kdlab.'.join(sorted(bad))}"

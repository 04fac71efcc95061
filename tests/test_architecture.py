"""The layout's rules that code review alone would let slip: no import circle among the project's modules, and a
config that loads without torch (the policy kinds and dataset formats are plain tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.codedeps import REPO, _imported_names


def _module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (function-level imports included; a package's own
    submodules importing the package are the package's business, not an edge)."""
    modules = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for imported in _imported_names(path, package):
            parts = imported.split(".")
            owner = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules),
                         None)
            if owner is not None and owner != name and not name.startswith(owner + "."):
                deps.add(owner)
        graph[name] = deps
    return graph


def test_no_import_circle() -> None:
    graph = _module_graph()
    assert len(graph) > 40
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(f"import circle: {' -> '.join(path[path.index(node):] + [node])}")
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_loading_a_config_imports_no_torch() -> None:
    code = ("import sys; from pipeline.config import load_config; load_config('smoke'); "
            "sys.exit(sorted(m for m in ('torch', 'h5py', 'gymnasium') if m in sys.modules) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(REPO))})
    assert proc.returncode == 0, f"loading a config imported {proc.stderr or proc.stdout}"

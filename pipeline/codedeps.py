"""The project code a DVC stage runs, listed in dvc.yaml's deps so that editing it reruns the stage.

A stage's code is its script (``stages/<name>.py``) and every project module that script can import: the closure of
its ``import`` statements, read from the source (function-level imports included, ``if TYPE_CHECKING:`` blocks
left out), with the package ``__init__`` files that importing a module runs. A directory whose every module is in
the closure is listed as the directory.

    python -m pipeline.codedeps            # exit 1 and name the stages whose deps in dvc.yaml are out of date
    python -m pipeline.codedeps --write    # rewrite those deps in dvc.yaml (other deps, comments and order stay)

``tests/test_codedeps.py`` runs every stage and checks that each module it imported is covered, and that editing a
module marks exactly the stages whose deps list it as changed (real DVC).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"
CODE_DIRS = (PACKAGE, "stages")  # a dvc.yaml dep under these is code, owned by this module


def _module_file(name: str, search: Iterable[Path]) -> Path | None:
    """The source file of module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``) under ``search``."""
    parts = name.split(".")
    for root in search:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            yield node


def _imported_names(path: Path, package: str | None) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            anchor = (package or "").split(".")[: len((package or "").split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_files(script: Path, repo: Path = REPO) -> set[Path]:
    """Repo-relative paths of ``script`` and every project source file it can import, transitively.

    Modules resolve against the script's own folder (``python stages/x.py`` puts it on ``sys.path``) and the repo
    root; anything else (the standard library, third-party packages) is not project code and is not followed.
    """
    script = (repo / script).resolve()
    search = (script.parent, repo)
    seen: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(script, None)]
    while todo:
        path, package = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, package):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                prefix = ".".join(parts[:i])
                found = _module_file(prefix, search)
                if found is not None and found not in seen:
                    pkg = prefix if found.name == "__init__.py" else ".".join(parts[: i - 1]) or None
                    todo.append((found, pkg))
    return {p.relative_to(repo) for p in seen}


def code_deps(script: str | Path, repo: Path = REPO) -> list[str]:
    """The dvc.yaml deps for a stage run as ``python <script>``: its files, a fully imported folder as the folder."""
    files = imported_files(Path(script), repo)

    def complete(folder: Path) -> bool:
        return all(p.relative_to(repo) in files for p in (repo / folder).rglob("*.py") if "__pycache__" not in p.parts)

    deps = set()
    for f in files:
        top, folder = None, f.parent
        while folder.parts[:1] == (PACKAGE,) and complete(folder):  # the widest folder of the package imported whole
            top, folder = folder, folder.parent
        deps.add((top or f).as_posix())
    return sorted(d for d in deps if not any(d.startswith(other + "/") for other in deps))


def _stage_script(cmd: str) -> str | None:
    """``python stages/x.py ...`` -> ``stages/x.py``."""
    words = str(cmd).split()
    return words[1] if len(words) > 1 and words[0] in ("python", "python3") and words[1].endswith(".py") else None


def _is_code(dep: str) -> bool:
    return str(dep).split("/", 1)[0] in CODE_DIRS


def sync_dvc_yaml(path: Path = REPO / "dvc.yaml", write: bool = False) -> list[str]:
    """Compare (and with ``write``, replace) every stage's code deps with :func:`code_deps` of its script.

    Returns the names of the stages whose deps were out of date. Other deps keep their order, after the code.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own layout
    doc = yaml.load(path.read_text())
    stale = []
    for name, stage in doc["stages"].items():
        script = _stage_script(stage.get("cmd", ""))
        if script is None:
            continue
        deps = stage.setdefault("deps", [])
        wanted = code_deps(script, path.parent)
        if [d for d in deps if _is_code(d)] == wanted:
            continue
        stale.append(name)
        for i in reversed(range(len(deps))):  # in place, so the comments on the other deps stay with them
            if _is_code(deps[i]):
                del deps[i]
        for i, dep in enumerate(wanted):
            deps.insert(i, dep)
    if write and stale:
        with path.open("w") as f:
            yaml.dump(doc, f)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.codedeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the out-of-date deps in dvc.yaml")
    parser.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    args = parser.parse_args(argv)
    stale = sync_dvc_yaml(args.dvc_yaml, write=args.write)
    if not stale:
        print(f"{args.dvc_yaml}: every stage lists the code it imports")
        return 0
    verb = "rewrote" if args.write else "out of date"
    print(f"{args.dvc_yaml}: code deps {verb} for stage(s) {', '.join(stale)}"
          + ("" if args.write else " (python -m pipeline.codedeps --write)"))
    return 0 if args.write else 1


if __name__ == "__main__":
    sys.exit(main())

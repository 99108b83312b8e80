"""The project's own import graph, read from the source (no module is imported).

Every `import` counts, at module level or inside a function, because either one runs the
imported file's code when the stage runs. Importing `a.b.c` also runs the `__init__.py` of `a`
and `a.b`; a package `__init__.py` holding nothing but its docstring is left out, since
changing it cannot change what a stage computes.

    python tests/imports.py stages/train.py     # the deps dvc.yaml should list for it
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("rarespecies", "stages", "flows")


def module_name(path: Path) -> str:
    """`rarespecies/data/split.py` -> `rarespecies.data.split` (packages by their folder)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    """The file of a first-party module or package, or None if there is none."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> list[Path]:
    """Every first-party Python file."""
    return sorted(p for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py"))


def is_docstring_only(path: Path) -> bool:
    """Whether a file holds nothing but (at most) a docstring."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in body)


def _imported_names(path: Path) -> set[str]:
    """Dotted names a file imports (absolute, first-party), `from a import b` as `a.b` too."""
    names: set[str] = set()
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n.split(".")[0] in FIRST_PARTY}


@cache
def direct_imports(path: Path) -> frozenset[Path]:
    """The first-party files one file imports directly, its packages' `__init__.py` included
    unless they only hold a docstring."""
    files: set[Path] = set()
    for name in _imported_names(path):
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            found = module_file(".".join(parts[:end]))
            if found is None:
                continue  # `from a import name`: `a.name` is an attribute, not a module
            if found.name != "__init__.py" or not is_docstring_only(found):
                files.add(found)
    files.discard(path)
    return frozenset(files)


def closure(path: Path) -> set[Path]:
    """`path` and every first-party file it imports, directly or not (its own packages'
    non-empty `__init__.py` included: Python runs them before the module)."""
    seen: set[Path] = set()
    todo = [path, *(p for p in _parent_inits(path) if not is_docstring_only(p))]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(direct_imports(current))
    return seen


def _parent_inits(path: Path) -> list[Path]:
    inits, folder = [], path.parent
    while folder != ROOT and (folder / "__init__.py").is_file():
        inits.append(folder / "__init__.py")
        folder = folder.parent
    return [p for p in inits if p != path]


def cycles() -> list[list[str]]:
    """Import cycles among first-party files, each as the module names along it."""
    graph = {path: direct_imports(path) for path in all_modules()}
    found, state = [], {}

    def visit(node: Path, stack: list[Path]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([module_name(p) for p in stack[stack.index(nxt):]]
                             + [module_name(nxt)])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def relative(paths: set[Path]) -> list[str]:
    """Project-relative POSIX paths, sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for p in paths)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print("\n".join(relative(closure((ROOT / argument).resolve()))))

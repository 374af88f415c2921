"""Check bbt's import graph: circles, reaches into private modules, the client -> server rule.

Reads the source with :mod:`ast` only (nothing is imported), so it runs on any install:

    python scripts/check_imports.py [--root DIR] [--package bbt] [--outside DIR ...]

Every ``import``/``from ... import`` counts, at module level or inside a function (a deferred
import still couples the two modules); ``importlib.import_module("bbt.x")`` with a literal
name counts as one too. Imports under ``if TYPE_CHECKING:`` are kept apart: they never run,
so a circle that needs one of them is listed separately and does not fail the check.

It prints, and exits 1 if any of the first four is non-empty:

- import circles: the strongly connected components (of more than one module, or a module
  importing itself) of the runtime graph;
- private reaches: a module importing another top-level subpackage's private module (one
  with a component that starts with ``_``), e.g. ``bbt.vllm`` importing ``bbt.client._base``.
  ``bbt._version`` and the like belong to ``bbt`` itself and may be imported anywhere;
- client -> server: anything under ``bbt.client`` importing ``bbt.server`` (the client must
  install and run without the server);
- outside reaches: a file of a tree outside the package (``--outside``, by default
  ``benchmarks/`` where the root has one) importing a private module of the package or a
  private name (``_x``) from a public one: such code uses bbt as any user does;
- circles that exist only through TYPE_CHECKING imports (informational).

Edges go to the module named: ``from bbt.client import Service`` is an edge to
``bbt.client``, ``from bbt.client import _base`` one to ``bbt.client._base``. A package's
implicit import of its parent ``__init__`` is not an edge: every package has that circle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int
    typing_only: bool


@dataclass
class Report:
    """What the check found."""

    modules: int = 0
    cycles: list[list[str]] = field(default_factory=list)
    typing_cycles: list[list[str]] = field(default_factory=list)
    private: list[Edge] = field(default_factory=list)
    client_to_server: list[Edge] = field(default_factory=list)
    outside: list[Edge] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.cycles or self.private or self.client_to_server or self.outside)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _walk(node: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under ``node``, with whether it sits in an ``if TYPE_CHECKING:`` body."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, typing_only
                yield from _walk(stmt, typing_only)
            continue
        yield child, typing_only
        yield from _walk(child, typing_only)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(path: Path, root: Path, modules: set[str], package: str) -> list[Edge]:
    """The edges from the module at ``path`` to other modules of ``package``."""
    source = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []

    def add(target: str, node: ast.AST, typing_only: bool) -> None:
        if target == package or target.startswith(package + "."):
            # The nearest module that exists: `import bbt.x.y` with y a name, not a module.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != source:
                line = getattr(node, "lineno", 0)
                edges.append(Edge(source, target, str(path), line, typing_only))

    for node, typing_only in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, typing_only)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, is_package, node.level, node.module)
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            if len(submodules) < len(node.names):
                add(base, node, typing_only)
            for target in submodules:
                add(target, node, typing_only)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node, typing_only)
    return edges


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}
    )
    return (
        named
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _private_owner(target: str, package: str) -> str | None:
    """The top-level subpackage that owns ``target`` if it is a private module, else None."""
    parts = target.split(".")
    if not any(p.startswith("_") and not p.startswith("__") for p in parts[1:]):
        return None
    top = parts[1]
    return package if top.startswith("_") else f"{package}.{top}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def outside_reaches(tree: Path, root: Path, modules: set[str], package: str) -> list[Edge]:
    """Imports, by the files under ``tree`` (outside ``package``), of a private module of
    ``package`` or of a private name from one of its public modules."""
    found: list[Edge] = []
    for path in sorted(tree.rglob("*.py")):
        edges = imports_of(path, root, modules, package)
        found += [e for e in edges if any(_is_private(p) for p in e.target.split("."))]
        source = module_name(path, root)
        for node, typing_only in _walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module != package and not node.module.startswith(package + "."):
                continue
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if _is_private(alias.name) and target not in modules:
                    found.append(Edge(source, target, str(path), node.lineno, typing_only))
    return found


def _top(module: str, package: str) -> str:
    parts = module.split(".")
    return package if len(parts) < 2 else f"{package}.{parts[1]}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components that form a circle, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def check(root: Path, package: str = "bbt", outside: Sequence[Path] = ()) -> Report:
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    edges = [e for f in files for e in imports_of(f, root, modules, package)]
    runtime: dict[str, set[str]] = {m: set() for m in modules}
    everything: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        everything[e.source].add(e.target)
        if not e.typing_only:
            runtime[e.source].add(e.target)
    report = Report(modules=len(modules))
    report.cycles = strongly_connected(runtime)
    report.typing_cycles = [c for c in strongly_connected(everything) if c not in report.cycles]
    seen: set[tuple[str, str]] = set()
    for e in edges:
        owner = _private_owner(e.target, package)
        key = (e.source, e.target)
        if owner not in (None, package) and _top(e.source, package) != owner and key not in seen:
            seen.add(key)
            report.private.append(e)
        client, server = f"{package}.client", f"{package}.server"
        if _top(e.source, package) == client and _top(e.target, package) == server:
            report.client_to_server.append(e)
    for tree in outside:
        report.outside += outside_reaches(tree, root, modules, package)
    return report


def _where(e: Edge, root: Path) -> str:
    kind = " (TYPE_CHECKING)" if e.typing_only else ""
    return f"{Path(e.path).relative_to(root)}:{e.line}: {e.source} -> {e.target}{kind}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--package", default="bbt")
    parser.add_argument(
        "--outside",
        action="append",
        type=Path,
        help="a tree outside the package that may import only its public names "
        "(repeatable; default: benchmarks/ under the root, where there is one)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    trees = args.outside if args.outside is not None else [root / "benchmarks"]
    report = check(root, args.package, [(root / t).resolve() for t in trees if (root / t).is_dir()])
    print(f"{report.modules} modules")
    print(f"import circles: {len(report.cycles)}")
    for cycle in report.cycles:
        print("  " + " <-> ".join(cycle))
    print(f"circles only through TYPE_CHECKING imports (not failing): {len(report.typing_cycles)}")
    for cycle in report.typing_cycles:
        print("  " + " <-> ".join(cycle))
    print(f"imports of another package's private module: {len(report.private)}")
    for e in report.private:
        print("  " + _where(e, root))
    print(f"bbt.client -> bbt.server imports: {len(report.client_to_server)}")
    for e in report.client_to_server:
        print("  " + _where(e, root))
    print(f"private names imported from outside the package: {len(report.outside)}")
    for e in report.outside:
        print("  " + _where(e, root))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's import graph, read from the source with ``ast``: no cycles, and a core that stays a core.

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a lazy import
hides a cycle from Python's import machinery, not from the design). An edge goes to the most specific
module that exists: ``from oodatcaa.core import store`` is an edge to ``oodatcaa.core.store``,
``from oodatcaa.core.store import QueueStore`` also to ``oodatcaa.core.store``. The implicit import of a
parent package (``oodatcaa.core`` when ``oodatcaa.core.store`` is imported) is not an edge, as in grimp
and import-linter.

Besides module cycles, the top-level parts (``oodatcaa.cli``, ``oodatcaa.demo``, ``oodatcaa.core``, ...)
must not import each other in a circle: ``cli -> demo -> cli.render`` is no module cycle, but it
makes the demo depend on the CLI that runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import oodatcaa

PACKAGE_DIR = Path(oodatcaa.__file__).resolve().parent
#: Top-level packages the core must never import, directly or through another oodatcaa module.
CORE_FORBIDDEN = ("oodatcaa.cli", "oodatcaa.roles", "mlx", "mlx_lm", "rich")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """``{dotted module name: source file}`` for every module of the package."""
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Names this module imports: oodatcaa modules resolved as above, others as written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative: level 1 is this module's package (the module itself for an __init__)
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.add(candidate if candidate in known else target)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}``; edges to modules outside the package are kept as written."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-import), each sorted.

    Tarjan's algorithm, iterative, over the oodatcaa-internal edges only.
    """
    internal = {m: sorted(d for d in deps if d in graph) for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(internal):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = internal[node]
            if i < len(deps):
                work.append((node, i + 1))
                nxt = deps[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in internal[node]:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """``{module or external name reached from start: the module that imports it}`` (for the message)."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for dep in graph.get(node, ()):
            if dep not in seen:
                seen[dep] = node
                todo.append(dep)
    return seen


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_reader_sees_lazy_relative_and_from_package_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import json\n"
        "from . import sibling\n"
        "from .. import core\n"
        "from oodatcaa.core.store import QueueStore\n"
        "def later():\n"
        "    from oodatcaa.cli.render import status_table\n")
    known = {"oodatcaa.pkg.sibling", "oodatcaa.core", "oodatcaa.core.store", "oodatcaa.cli.render"}
    assert _imports("oodatcaa.pkg.mod", source, known) == {
        "json", "oodatcaa.pkg.sibling", "oodatcaa.core", "oodatcaa.core.store", "oodatcaa.cli.render"}
    assert "oodatcaa.cli.main" in import_graph()["oodatcaa.__main__"]


def test_the_cycle_finder():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    for cycle in cycles:
        print("import cycle:", " <-> ".join(cycle))
    assert not cycles, f"{len(cycles)} import cycle(s): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_cycles_between_the_top_level_parts():
    # cli -> demo -> cli.render is no module cycle, but the demo would still reach back into the CLI
    graph = import_graph()

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    parts: dict[str, set[str]] = {}
    for module, deps in graph.items():
        parts.setdefault(part(module), set()).update(part(d) for d in deps if d in graph and part(d) != part(module))
    cycles = find_cycles(parts)
    for cycle in cycles:
        print("cycle between parts:", " <-> ".join(cycle))
    assert not cycles, "; ".join(" <-> ".join(c) for c in cycles)


def test_core_never_imports_the_cli_the_roles_mlx_or_rich():
    graph = import_graph()
    bad: list[str] = []
    for module in sorted(m for m in graph if _is_under(m, "oodatcaa.core")):
        for reached, via in sorted(_reachable(graph, module).items()):
            if any(_is_under(reached, forbidden) for forbidden in CORE_FORBIDDEN):
                bad.append(f"{module} reaches {reached} (imported by {via})")
    for line in bad:
        print(line)
    assert not bad, "\n".join(bad)

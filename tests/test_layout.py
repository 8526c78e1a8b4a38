"""The tree's shape: packages import one way, no cycles, no import hidden in a function to dodge one, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("functions", "handlers", "loaders")
MAX_LINES = 400

# Higher imports lower, never the reverse. The contract modules at the bottom of handlers share one rank.
RANKS = {
    "functions": 100,
    "handlers.http": 60, "handlers.tasks": 50, "handlers.generation": 40, "handlers.billing": 30,
    "handlers.accounts": 20, "handlers": 10,
    "loaders.demo": 6, "loaders.adapters": 5, "loaders.speed": 4, "loaders.models": 3, "loaders.storage": 2,
    "loaders": 1,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in PROJECT for p in (ROOT / top).rglob("*.py")}


def layer(module: str) -> str:
    """The longest RANKS key that is the module or one of its packages."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no layer of RANKS")


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def project_imports(tree: ast.AST, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every executed project import; TYPE_CHECKING ones skipped."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names
                             if a.name.split(".")[0] in PROJECT)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module \
                    and child.module.split(".")[0] in PROJECT:
                for alias in child.names:  # `from pkg import module` imports the module itself
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in known else child.module, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules()
    return {name: project_imports(ast.parse(path.read_text()), set(mods)) for name, path in mods.items()}


def test_every_module_belongs_to_a_layer(graph):
    for module in graph:
        layer(module)


def test_imports_point_down_the_layers(graph):
    upward = [f"{src} imports {dst} (line {line})" for src, imports in graph.items() for dst, line, _ in imports
              if RANKS[layer(dst)] > RANKS[layer(src)]]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules(graph):
    edges = {src: {dst for dst, _, _ in imports if dst in graph and dst != src} for src, imports in graph.items()}
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_project_import_inside_a_function_below_the_entry_points(graph):
    # functions/ may import lazily for start-up speed (a CLI command loads only what it runs); below it an import
    # inside a function can only be hiding a cycle.
    hidden = [f"{src}:{line} imports {dst}" for src, imports in graph.items() if layer(src) != "functions"
              for dst, line, inside in imports if inside]
    assert not hidden, "imports inside functions:\n" + "\n".join(hidden)


def test_no_module_over_the_size_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_every_package_says_what_lives_there_and_what_it_may_import():
    bare = [str(p.relative_to(ROOT)) for top in PROJECT for p in (ROOT / top).rglob("__init__.py")
            if len((ast.get_docstring(ast.parse(p.read_text())) or "").split()) < 15]
    assert not bare, "packages without a docstring:\n" + "\n".join(bare)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    # The rules above must be able to fail: a loader importing a handler is upward, and a function-level import
    # is seen as one.
    tree = ast.parse("from handlers.schemas import X\ndef f():\n    from loaders.errors import Y\n")
    found = project_imports(tree, {"handlers.schemas", "loaders.errors"})
    assert found == [("handlers.schemas", 1, False), ("loaders.errors", 3, True)]
    assert RANKS[layer("handlers.schemas")] > RANKS[layer("loaders.models.manager")]

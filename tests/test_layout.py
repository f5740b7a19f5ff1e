"""The package's layout (issue #14): rooms that follow the data flow, imported one way.

``exporter/`` is a few rooms: subpackages (``config``, ``db``, ``collect``, ``collectors``,
``expose``, ``ops``, ``monitoring``) and the top-level modules ``cli``, ``__main__``, ``app`` and
``logs``. ``ALLOWED`` says which rooms each room may import. Its arrows point only downwards (the
table itself is checked for cycles): cli -> ops -> app -> collect -> db -> expose -> config ->
collectors, with cli -> monitoring -> expose beside them, never back, so a reader can start at
either end and a change that needs an arrow not in the table has to add it here, where a reviewer
sees it. Imports inside functions and under
``TYPE_CHECKING`` count: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "exporter"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

ALLOWED: dict[str, frozenset[str]] = {
    "__main__": frozenset({"cli"}),
    # the command line: parse, then hand over
    "cli": frozenset({"app", "config", "logs", "monitoring", "ops"}),
    # `tw-exporter monitoring` and the shipped rules and dashboard: names from the catalogue
    "monitoring": frozenset({"collectors", "config", "expose"}),
    # check, demo, sample-data: they may use everything below, including the real wiring
    "ops": frozenset({"app", "collect", "collectors", "config", "db", "expose", "logs"}),
    # wires config -> db -> collect -> expose and runs until a signal
    "app": frozenset(
        {"allocator", "collect", "collectors", "config", "db", "expose", "logs", "pipeline"}
    ),
    # builds database -> collector -> snapshot store (and scheduler, reloader): app and tests
    "pipeline": frozenset({"collect", "collectors", "config", "db", "expose"}),
    "logs": frozenset({"config"}),
    # glibc's mmap threshold, fixed at start (issue #11)
    "allocator": frozenset(),
    # when queries run
    "collect": frozenset({"collectors", "config", "db", "expose"}),
    # how a query reaches PostgreSQL
    "db": frozenset({"collectors", "config", "expose"}),
    # what the operator writes down: nothing served, run or wired
    "config": frozenset({"collectors"}),
    # what is served (the label limits and other settings it serves by come from config)
    "expose": frozenset({"collectors", "config"}),
    # what the built-in queries are
    "collectors": frozenset(),
}
# The package root (``from exporter import __version__``) may be imported by every room.
ROOT_ROOM = ""
# Rooms whose __init__ holds more than a docstring, and why.
INIT_WITH_CODE = {"collectors": "the registry of built-in queries, COLLECTORS"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The exporter modules ``module`` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import submodule` depends on the submodule, not on pkg's __init__
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_ROOM


def _cycle(graph: dict[str, set[str]] | dict[str, frozenset[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_graph_is_read_from_the_sources() -> None:
    graph = _graph()
    assert f"{PACKAGE}.cli" in graph[f"{PACKAGE}.__main__"]
    assert sum(len(targets) for targets in graph.values()) > len(graph)


def test_every_module_lives_in_a_known_room() -> None:
    strays = sorted(m for m in _graph() if _room(m) not in ALLOWED and _room(m) != ROOT_ROOM)
    assert not strays, (
        f"modules outside every room: {strays}; move them into a room or add the room to ALLOWED"
    )


def test_the_allowed_arrows_point_one_way() -> None:
    assert _cycle(ALLOWED) is None, f"ALLOWED has a cycle: {' -> '.join(_cycle(ALLOWED) or [])}"
    assert all(target in ALLOWED for targets in ALLOWED.values() for target in targets)


def test_rooms_import_only_what_the_table_allows() -> None:
    wrong = []
    for module, targets in sorted(_graph().items()):
        for target in sorted(targets):
            source_room, target_room = _room(module), _room(target)
            if target_room in (source_room, ROOT_ROOM):
                continue
            if target_room not in ALLOWED.get(source_room, frozenset()):
                wrong.append(f"{module} -> {target} ({source_room} -> {target_room})")
    assert not wrong, "imports against the layout (tests/test_layout.py ALLOWED):\n" + "\n".join(
        wrong
    )


def test_no_import_cycle_between_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_package_root_imports_nothing_of_its_own() -> None:
    """``from exporter import __version__`` is allowed everywhere because it drags in nothing."""
    assert _graph()[PACKAGE] == set()


def test_each_room_says_what_it_holds_and_is_imported_from_its_modules() -> None:
    """A room's ``__init__`` is its docstring; names are imported from the module that holds them,
    so no ``__init__`` becomes a module everything imports for unrelated reasons."""
    modules = _modules()
    graph = _graph()
    for room in ALLOWED:
        path = ROOT / room / "__init__.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"exporter/{room}/__init__.py has no docstring"
        if room not in INIT_WITH_CODE:
            assert len(tree.body) == 1, f"exporter/{room}/__init__.py holds more than a docstring"
            assert not graph[f"{PACKAGE}.{room}"]
    assert modules

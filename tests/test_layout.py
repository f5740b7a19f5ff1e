"""The package's layout (issues #14, #24): rooms in data-flow order, imported one way.

``exporter/`` is a few rooms: subpackages (``collectors``, ``config``, ``db``, ``expose``,
``collect``, ``ops``, ``monitoring``) and the top-level modules (``pipeline``, ``app``, ``cli``,
``__main__``, ``logs``, ``allocator``). ``FLOW`` puts them in the order data flows: what the
queries are, what the operator configured, the database that runs them, what is served of
their results, the scheduler that moves rows from the database into what is served, and the
wiring and commands on top. A room imports only rooms *before* it in ``FLOW`` (and ``ALLOWED``
says which of those), so no arrow runs back against the data flow; docs/how-it-works.md shows
the same order (checked here). Imports inside functions and under ``TYPE_CHECKING`` count: a
lazy import still ties two modules together. ``WITHIN`` does the same inside a room for the
modules that were split by job (the web config's sections, the HTTP server and its connections).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "exporter"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
HOW_IT_WORKS = ROOT.parent / "docs" / "how-it-works.md"

# The data flow, upstream first: a room may import only rooms listed before it.
FLOW: tuple[str, ...] = (
    # what the built-in queries are: SQL, tables, row -> metric (imports nothing of ours)
    "collectors",
    # what the operator writes down (settings, the queries file naming the queries)
    "config",
    # logging set-up, secrets scrubbed (the DSN's password comes from config)
    "logs",
    # glibc's mmap threshold, fixed at start (issue #11)
    "allocator",
    # how a query reaches PostgreSQL, and why it failed (db.failures)
    "db",
    # what is served: the snapshot store, its health section, HTTP
    "expose",
    # the alert rules, dashboard and runbook, generated from the catalogue
    "monitoring",
    # when queries run: the scheduler runs each on db and writes its rows into expose's store
    "collect",
    # builds database -> collector -> store (+ scheduler, reloader): app, tests, benchmarks
    "pipeline",
    # runs the exporter until a signal: HTTP server, pipeline, HA, DSN files, reloads
    "app",
    # check, demo, sample-data
    "ops",
    # the command line: parse, then hand over
    "cli",
    "__main__",
)
ALLOWED: dict[str, frozenset[str]] = {
    "collectors": frozenset(),
    "config": frozenset({"collectors"}),
    "logs": frozenset({"config"}),
    "allocator": frozenset(),
    "db": frozenset({"collectors", "config"}),
    "expose": frozenset({"collectors", "config", "db"}),
    "monitoring": frozenset({"collectors", "config", "db", "expose"}),
    "collect": frozenset({"collectors", "config", "db", "expose", "logs"}),
    "pipeline": frozenset({"collect", "collectors", "config", "db", "expose"}),
    "app": frozenset(
        {"allocator", "collect", "collectors", "config", "db", "expose", "logs", "pipeline"}
    ),
    "ops": frozenset({"app", "collect", "collectors", "config", "db", "expose", "logs"}),
    "cli": frozenset({"app", "config", "logs", "monitoring", "ops"}),
    "__main__": frozenset({"cli"}),
}
# Inside a room, modules split by job (issue #24) import one way too: the web config's sections
# share ``web_fields`` and never import the file's loader; the HTTP server imports its
# connections, responses, accepting and TLS, never the reverse. Each listed module may import,
# from its own room, only the modules named here.
WITHIN: dict[str, frozenset[str]] = {
    "config.strict_yaml": frozenset(),
    "config.web_fields": frozenset(),
    "config.web_tls": frozenset({"config.web_fields"}),
    "config.basic_auth": frozenset({"config.web_fields"}),
    "config.webconfig": frozenset(
        {"config.basic_auth", "config.strict_yaml", "config.web_fields", "config.web_tls"}
    ),
    "config.http_security": frozenset(
        {"config.basic_auth", "config.settings", "config.web_tls", "config.webconfig"}
    ),
    "expose.responses": frozenset(),
    "expose.tls": frozenset(),
    "expose.accepting": frozenset(),
    "expose.connection": frozenset({"expose.accepting", "expose.responses", "expose.tls"}),
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


def test_every_arrow_points_upstream_in_the_data_flow() -> None:
    """A room imports only rooms before it in ``FLOW``: none runs back against the flow."""
    assert sorted(FLOW) == sorted(ALLOWED), "FLOW and ALLOWED must name the same rooms"
    back = [
        f"{room} -> {target}"
        for room, targets in ALLOWED.items()
        for target in sorted(targets)
        if FLOW.index(target) >= FLOW.index(room)
    ]
    assert not back, f"arrows against the data flow (tests/test_layout.py FLOW): {back}"


def test_how_it_works_shows_the_same_order() -> None:
    """docs/how-it-works.md's layout section lists the rooms in ``FLOW``'s order."""
    text = HOW_IT_WORKS.read_text()
    line = next((row for row in text.splitlines() if row.startswith("Data-flow order:")), None)
    assert line is not None, "docs/how-it-works.md lost its 'Data-flow order:' line"
    assert tuple(re.findall(r"`([\w_]+)`", line)) == FLOW, line


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


def test_modules_split_by_job_import_one_way_inside_their_room() -> None:
    graph = _graph()
    wrong = []
    for module, allowed in sorted(WITHIN.items()):
        name = f"{PACKAGE}.{module}"
        assert name in graph, f"WITHIN names {name}, which does not exist"
        room = _room(name)
        inside = {t.removeprefix(f"{PACKAGE}.") for t in graph[name] if _room(t) == room}
        wrong += [f"{name} -> {PACKAGE}.{t}" for t in sorted(inside - allowed)]
    assert not wrong, "imports against WITHIN (tests/test_layout.py):\n" + "\n".join(wrong)
    assert _cycle(WITHIN) is None

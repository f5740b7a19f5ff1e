"""A test whose tool is missing fails in CI and is skipped, with its reason, elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import require_tool


def test_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        require_tool("no-such-tool-xyz", hint="Debian package nothing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"no-such-tool-xyz is not installed \(Debian"):
        require_tool("no-such-tool-xyz", hint="Debian package nothing")


def _dotted(node: ast.expr) -> str:
    """``pytest.mark.skipif`` for the attribute chain of that name, else ""."""
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return node.id if isinstance(node, ast.Name) else ""


def test_tests_skip_only_through_unavailable() -> None:
    """A plain ``pytest.skip``, ``importorskip``, skip marker or ``except ImportError`` would
    skip silently in CI; ``tests.helpers.unavailable`` fails there instead."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name == "helpers.py":
            continue  # where unavailable() itself skips outside CI
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and _dotted(node.func) in SKIPS:
                found.append(f"{where} {_dotted(node.func)}(...)")
            elif isinstance(node, ast.Attribute) and _dotted(node) in SKIP_MARKS:
                found.append(f"{where} {_dotted(node)}")
            elif isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {_dotted(n) for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                called = {
                    _dotted(n.func)
                    for stmt in node.body
                    for n in ast.walk(stmt)
                    if isinstance(n, ast.Call)
                }
                if caught & {"ImportError", "ModuleNotFoundError"} and not called & UNAVAILABLE:
                    found.append(f"{where} except ImportError without unavailable()")
    assert not found, "skips that CI would not notice:\n" + "\n".join(found)


SKIPS = {"pytest.skip", "pytest.importorskip"}
SKIP_MARKS = {"pytest.mark.skip", "pytest.mark.skipif"}
UNAVAILABLE = {"unavailable", "helpers.unavailable"}


def test_no_module_imports_a_test_module() -> None:
    """Shared fixtures live in conftest.py and shared helpers in support modules (helpers, rig,
    query_oracles, pg_cluster, ...): importing a fixture from another test module runs under two
    names and hides where it comes from."""
    found = []
    for path in sorted([*Path(__file__).parent.glob("*.py"), *BENCHMARKS.glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            found += [
                f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("tests.test_")
            ]
    assert not found, "\n".join(found)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

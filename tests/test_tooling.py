"""A test whose tool is missing fails in CI and is skipped, with its reason, elsewhere."""

from __future__ import annotations

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

"""Small test helpers: HTTP requests and exposition parsing with the real parser."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> HTTPResult:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HTTPResult(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HTTPResult(error.code, dict(error.headers), error.read())


async def ahttp_get(url: str, headers: dict[str, str] | None = None) -> HTTPResult:
    return await asyncio.to_thread(http_get, url, headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, via prometheus_client's parser."""
    result: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in result, f"duplicate sample {key}"
            result[key] = sample.value
    return result


def value(text: str, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    return samples(text).get((name, wanted))


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples(text).items() if n == name}


def unavailable(reason: str) -> NoReturn:
    """A tool or package the test needs is missing: in CI (``CI`` set) that is a failure, since
    ``.ci/run`` must install it; elsewhere the test is skipped with the reason shown."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, *candidates: Path, hint: str = "") -> str:
    """Path of an external tool: the candidates, the virtualenv's bin, then PATH."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file():
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    unavailable(f"{name} is not installed{f' ({hint})' if hint else ''}")


def promtool() -> str:
    return require_tool("promtool", hint="Debian package prometheus")

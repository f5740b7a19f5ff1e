"""Small test helpers: HTTP requests, exposition parsing with the real parser, and a real
Prometheus for the end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import asyncpg
import pytest
import yaml
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
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


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> Mapping[SampleKey, float]:
    """One parse per distinct exposition: tests ask ``value``/``series`` many questions of
    the same scrape, and re-parsing a large one for each (40 queries' health series, say)
    cost seconds of CPU. Read-only, since it is shared between callers."""
    result: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in result, f"duplicate sample {key}"
            result[key] = sample.value
    return MappingProxyType(result)


def samples(text: str) -> dict[SampleKey, float]:
    """Every sample as {(name, sorted labels): value}, via prometheus_client's parser."""
    return dict(_parsed(text))


def value(text: str, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted(labels.items()))
    return _parsed(text).get((name, wanted))


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in _parsed(text).items() if n == name}


def unavailable(reason: str) -> NoReturn:
    """A tool, package or capability the test needs is missing: in CI (``CI`` set) that is a
    failure, since ``.ci/run`` must provide it; elsewhere the test (or, called while a module is
    imported, the whole module) is skipped with the reason shown. The one way a test may skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


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


# ------------------------------------------------------------------ the database


async def execute(dsn: str, sql: str) -> None:
    """Run ``sql`` (one statement or several) on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str) -> object:
    """The first column of the first row of ``sql``, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# ------------------------------------------------------------------ a real Prometheus


def poll_sync(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Return the first truthy result of ``condition`` before the deadline, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


async def poll(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """``poll_sync`` off the event loop (the conditions make blocking HTTP calls)."""
    return await asyncio.to_thread(poll_sync, condition, what, timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        result = http_get(f"{self.url}/api/v1/{path}?{query}")
        body = json.loads(result.body)
        assert result.status == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, seconds: int = 10) -> list[dict[str, Any]]:
        end = time.time()
        data = self.api(
            "query_range", query=expr, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step="1"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def prometheus_binary() -> str:
    return require_tool("prometheus", hint="Debian package prometheus")


def start_prometheus(binary: str, directory: Path, config: dict[str, Any]) -> Prometheus:
    """A real Prometheus on a free port with ``config`` (written to ``directory``, where its
    TSDB and log go too), ready to answer queries. Its first scrape comes ~5 s after the
    start: Prometheus applies discovered targets on a 5 s tick. Stop it with ``stop()``."""
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{log.read_text()}")
        try:
            return http_get(f"{prometheus.url}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    try:
        poll_sync(ready, "prometheus to be ready")
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """``{label value: latest value}`` of an instant or range query result."""
    values: dict[str, float] = {}
    for item in result:
        point = item["value"] if "value" in item else item["values"][-1]
        values[item["metric"].get(label, "")] = float(point[1])
    return values


Labels = tuple[tuple[str, str], ...]


def parsed_series(families: Iterable[object], name: str) -> dict[Labels, float]:
    result: dict[Labels, float] = {}
    for family in families:
        for sample in family.samples:  # type: ignore[attr-defined]
            if sample.name == name:
                key = tuple(sorted(sample.labels.items()))
                assert key not in result, f"duplicate series {key}"
                result[key] = sample.value
    return result


@functools.lru_cache(maxsize=8)
def _families(body: bytes, openmetrics: bool) -> tuple[object, ...]:
    """Each exposition parsed once, however many metrics are then read from it (the property
    test reads four from every example)."""
    text = body.decode("utf-8")
    if openmetrics:
        return tuple(parse_openmetrics(text))  # type: ignore[no-untyped-call]
    return tuple(text_string_to_metric_families(text))


def both_formats(text: bytes, openmetrics: bytes, name: str) -> dict[Labels, float]:
    """The series of ``name`` in both formats; they must agree."""
    from_text = parsed_series(_families(text, False), name)
    from_openmetrics = parsed_series(_families(openmetrics, True), name)
    assert from_text == from_openmetrics
    return from_text


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    promtool_path = promtool()
    return subprocess.run(
        [promtool_path, "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def https_get(url: str, ca: Path, auth: tuple[str, str] | None = None) -> HTTPResult:
    context = ssl.create_default_context(cafile=str(ca))
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return HTTPResult(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HTTPResult(error.code, dict(error.headers), error.read())

"""Small test helpers: HTTP requests and exposition parsing with the real parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass

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

"""A multi-host DSN whose first host hangs (issue 23, point 1): real exporter processes against a
private primary and streaming standby, one of them frozen with SIGSTOP (a dead VM, a
black-holed path: the kernel still accepts the TCP connection, nothing ever answers).

asyncpg spends one connect timeout on the whole host list, so the hung host ate it every time
and the next host was never tried; the exporter now connects host by host
(``exporter.db.connect``), each host with its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import psutil
import pytest

from exporter.collectors import QUERY_NAMES
from tests.conftest import ExporterProcess, StartExporter, wait_until
from tests.helpers import ahttp_get, value
from tests.test_faults import fill
from tests.test_replica import Pair, replayed, replication_pair

pytestmark = pytest.mark.slow

LAST_SUCCESS = "tw_exporter_query_last_success_timestamp_seconds"
FLAGS = ("--interval", "1", "--query-timeout", "1", "--log-level", "debug")
# The bound: a successful query within this long after the standby's promotion.
FAILOVER_BOUND = 15.0


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a postmaster (first, so it forks nothing new) and everything below it; SIGCONT
    all of them on exit, whatever happened."""
    postmaster = psutil.Process(pid)
    stopped = [postmaster]
    postmaster.suspend()
    try:
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
                stopped.append(child)
        yield
    finally:
        for process in reversed(stopped):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


@pytest.fixture
def fresh_pair() -> Iterator[Pair]:
    """A primary and standby of this test's own (a promotion cannot be undone), seeded."""
    with replication_pair() as pair:

        async def seed() -> None:
            await fill(pair.primary)
            await replayed(pair)

        asyncio.run(seed())
        yield pair


def hosts_dsn(*ports: int, attrs: str) -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs={attrs}"


async def last_success(process: ExporterProcess) -> float:
    """The newest success time of any query (0 when none yet, or the scrape failed)."""
    try:
        text = (await ahttp_get(process.url + "/metrics")).text
    except OSError:
        return 0.0
    return max(value(text, LAST_SUCCESS, query=q) or 0.0 for q in QUERY_NAMES)


async def succeeded_since(process: ExporterProcess, since: float) -> bool:
    return await last_success(process) > since


async def leads_with_fresh_data(process: ExporterProcess, since: float) -> bool:
    try:
        text = (await ahttp_get(process.url + "/metrics")).text
    except OSError:
        return False
    fresh = max(value(text, LAST_SUCCESS, query=q) or 0.0 for q in QUERY_NAMES) > since
    return value(text, "tw_exporter_leader") == 1 and fresh


async def test_read_write_fails_over_to_the_promoted_standby_while_the_primary_hangs(
    fresh_pair: Pair, exporter_proc: StartExporter
) -> None:
    pair = fresh_pair
    dsn = hosts_dsn(pair.primary_port, pair.standby_port, attrs="read-write")
    plain = exporter_proc("--dsn", dsn, *FLAGS)
    ha = exporter_proc("--dsn", dsn, *FLAGS, "--ha", "--ha-lease", "3")
    await wait_until(lambda: succeeded_since(plain, 0), timeout=15)
    await wait_until(lambda: leads_with_fresh_data(ha, 0), timeout=15)
    with frozen(pair.postmaster("primary")):
        frozen_at = time.time()

        async def down(process: ExporterProcess) -> bool:
            text = (await ahttp_get(process.url + "/metrics")).text
            return value(text, "tw_up") == 0

        await wait_until(lambda: down(plain), timeout=10)
        pair.promote_standby()
        promoted = time.time()
        await wait_until(lambda: succeeded_since(plain, promoted), timeout=FAILOVER_BOUND)
        plain_took = time.time() - promoted
        await wait_until(lambda: leads_with_fresh_data(ha, promoted), timeout=FAILOVER_BOUND)
        ha_took = time.time() - promoted
    print(
        f"frozen for {promoted - frozen_at:.2f}s before the promotion; first success "
        f"{plain_took:.2f}s after it, HA leader with fresh data {ha_took:.2f}s after it"
    )
    assert plain_took <= FAILOVER_BOUND and ha_took <= FAILOVER_BOUND
    for process in (plain, ha):
        assert process.proc.poll() is None, process.logs()
        assert "AttributeError" not in process.logs(), process.logs()


async def test_prefer_standby_with_the_standby_hung_uses_the_primary(
    fresh_pair: Pair, exporter_proc: StartExporter
) -> None:
    pair = fresh_pair
    dsn = hosts_dsn(pair.standby_port, pair.primary_port, attrs="prefer-standby")
    with frozen(pair.postmaster("standby")):
        started = time.time()
        process = exporter_proc("--dsn", dsn, *FLAGS)
        await wait_until(lambda: succeeded_since(process, 0), timeout=10)
        took = time.time() - started
    print(f"first success on the primary {took:.2f}s after the start")
    assert process.proc.poll() is None, process.logs()

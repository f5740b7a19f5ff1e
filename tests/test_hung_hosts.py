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
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import psutil
import pytest

from exporter.collectors import QUERY_NAMES
from exporter.db.connect import Connector, NoSuitableHost, suits
from exporter.db.leader import Leadership
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import REPO, ExporterProcess, StartExporter, exporter_command, wait_until
from tests.helpers import ahttp_get, free_port, value
from tests.pg_cluster import Pair, replayed, replication_pair
from tests.rig import fill

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ the connector itself


@contextlib.contextmanager
def hung_host() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and then nothing ever answers (a
    listening socket nobody accepts on): a hung host without freezing a server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def tcp_host(dsn: str) -> tuple[str, str]:
    """(host:port, /database) of a test database reached over TCP (see ``tcp_db``)."""
    parts = urlsplit(dsn)
    assert parts.hostname, f"not a TCP DSN: {dsn}"
    return f"{parts.hostname}:{parts.port or 5432}", parts.path


@pytest.fixture
async def tcp_db(seeded_db: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The seeded test database over TCP: a host list cannot hold a unix socket directory
    (libpq's rule, and ours), and the embedded server listens on its socket only. There, a
    private copy of it restarted on a loopback port, filled the same way."""
    if urlsplit(seeded_db).hostname:
        yield seeded_db
        return
    server: EmbeddedPostgres = request.getfixturevalue("restartable_pg")
    dsn = server.restart_on_tcp("127.0.0.1", free_port())
    await fill(dsn)
    yield dsn


@contextlib.contextmanager
def hung_first(dsn: str, query: str) -> Iterator[str]:
    """A two-host DSN, a hung host first and then the test database ``dsn`` (over TCP), with
    the parameters ``query``; the hung host listens until the block ends."""
    real, database = tcp_host(dsn)
    with hung_host() as port:
        yield f"postgresql://postgres@127.0.0.1:{port},{real}{database}?{query}"


@pytest.mark.parametrize(
    ("attrs", "primary", "standby", "read_only_primary"),
    [
        ("any", True, True, True),
        ("read-write", True, False, False),
        ("read-only", False, True, True),
        ("primary", True, False, True),
        ("standby", False, True, False),
        ("prefer-standby", False, True, False),
    ],
)
def test_session_attrs_accept_what_libpq_accepts(
    attrs: str, primary: bool, standby: bool, read_only_primary: bool
) -> None:
    assert suits(attrs, standby=False, read_only=False) is primary
    assert suits(attrs, standby=True, read_only=True) is standby
    # a primary with default_transaction_read_only = on
    assert suits(attrs, standby=False, read_only=True) is read_only_primary


async def test_each_host_gets_its_own_timeout_and_a_hung_one_goes_last(tcp_db: str) -> None:
    with hung_first(tcp_db, "target_session_attrs=read-write&connect_timeout=2") as dsn:
        connector = Connector(dsn)
        started = time.monotonic()
        conn = await connector.connect(timeout=30)  # connect_timeout wins: 2 s per host
        first = time.monotonic() - started
        await conn.close()
        started = time.monotonic()
        conn = await connector.connect(timeout=30)
        second = time.monotonic() - started
        await conn.close()
        # The HA lock connection uses the same connector: elected past the hung host.
        leadership = Leadership(Connector(dsn).source, "g", lease=3, connect_timeout=1)
        elected = asyncio.Event()
        leadership.on_elected = elected.set
        leadership.start()
        try:
            await asyncio.wait_for(elected.wait(), 10)
        finally:
            await leadership.close()
    assert 2 <= first < 3, first
    assert second < 0.5, second  # the hung host is tried last now


async def test_no_suitable_host_names_the_attribute_and_how_many_failed(tcp_db: str) -> None:
    with (
        hung_first(tcp_db, "target_session_attrs=standby") as dsn,
        pytest.raises(NoSuitableHost) as caught,
    ):
        await Connector(dsn).connect(timeout=0.5)
    assert str(caught.value) == (
        "none of the 2 host(s) accepts target_session_attrs=standby; 1 did not answer "
        "(TimeoutError)"
    )


async def test_prefer_standby_does_not_wait_again_for_a_standby_that_hung(tcp_db: str) -> None:
    with hung_first(tcp_db, "target_session_attrs=prefer-standby&connect_timeout=2") as dsn:
        connector = Connector(dsn)
        took = []
        for _ in range(2):
            started = time.monotonic()
            conn = await connector.connect(timeout=30)
            took.append(time.monotonic() - started)
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False  # the fallback
            await conn.close()
    assert 2 <= took[0] < 3 and took[1] < 0.5, took


def test_check_reaches_the_primary_past_a_hung_host(tcp_db: str) -> None:
    """``check`` connects like the exporter: it failed with TimeoutError on such a list."""
    with hung_first(tcp_db, "target_session_attrs=read-write") as dsn:
        result = subprocess.run(
            exporter_command("check", "--dsn", dsn, "--query-timeout", "2", "--interval", "5"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert result.stdout.splitlines()[-1] == "check: ok", result.stdout + result.stderr
    assert "connect: ok" in result.stdout

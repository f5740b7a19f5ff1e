"""The docs' shell steps run as written, in their order, on a real server (issue 25).

A newcomer pastes the ``sh`` blocks of docs/your-own-database.md top to bottom; each must work
(``--keep-adding`` until its numbers move, then Ctrl-C). The test runs the lines themselves,
taken from the page, with only the database's address swapped for the test server's: a page
that shows a step the code refuses fails here.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from exporter.collectors import COLLECTORS
from exporter.config import settings as cfg
from exporter.ops.check import CHECK_CONNECTIONS
from tests.conftest import (
    REPO,
    PgServer,
    StartExporter,
    exporter_command,
    run_until,
    wait_until,
    wait_until_sync,
)
from tests.helpers import free_port, http_get, require_tool, series
from tests.pgbouncer import PGBOUNCER, Backend, os_account, start_pgbouncer, stop_pgbouncer

PAGE = REPO / "docs" / "your-own-database.md"
DOC_DSN = re.compile(r"postgresql://postgres@127\.0\.0\.1:5432/(\w+)")


def sh_blocks(text: str, heading: str) -> list[list[str]]:
    """The command lines (comments dropped, split like a shell) of the ``sh`` blocks in the
    section ``heading`` of a page."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


class Shell:
    """Runs a page's commands: ``createdb NAME`` makes a fresh database on the test server that
    stands for NAME, and the page's ``postgresql://postgres@127.0.0.1:5432/NAME`` addresses
    point at it; ``tw-exporter`` is this checkout's, ``psql`` the machine's."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.databases: dict[str, str] = {}
        self.roles: list[str] = []  # cluster-wide: dropped after the databases

    def dsn(self, word: str) -> str:
        return DOC_DSN.sub(
            lambda m: self.server.dsn_for(self.databases.get(m.group(1), m.group(1))), word
        )

    async def createdb(self, name: str) -> None:
        real = f"tw_doc_{name}_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(self.server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{real}"')
        finally:
            await admin.close()
        self.databases[name] = real

    def argv(self, words: list[str]) -> list[str]:
        words = [self.dsn(word) for word in words]
        if words[0] == "tw-exporter":
            return exporter_command(*words[1:])
        if words[0] == "psql":
            return [require_tool("psql", hint="Debian package postgresql-client"), *words[1:]]
        raise AssertionError(f"{PAGE.name}: no rule to run {words[0]!r}")

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(self.server.dsn)
        try:
            for real in self.databases.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{real}" WITH (FORCE)')
            for role in self.roles:
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


@pytest.fixture
async def shell(pg_server: PgServer) -> AsyncIterator[Shell]:
    shell = Shell(pg_server)
    yield shell
    await shell.drop_all()


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def walk(shell: Shell, commands: list[list[str]]) -> list[str]:
    """Run ``commands`` in order; every step must exit 0. Returns each step's output."""
    outputs = []
    for words in commands:
        if words[0] == "createdb":
            await shell.createdb(words[1])
            outputs.append("")
            continue
        argv = shell.argv(words)
        # The docs load the default 200,000 tweets; a tenth keeps the test to seconds and
        # walks the same steps.
        if words[:2] == ["tw-exporter", "sample-data"]:
            argv += ["--tweets", "20000"]
        if "--keep-adding" in words:
            dsn = shell.dsn(words[words.index("--dsn") + 1])
            before = await count(dsn, "tw_tweets")

            async def grew(dsn: str = dsn, before: int = before) -> bool:
                return await count(dsn, "tw_tweets") > before

            outputs.append(await run_until(argv, grew))
            continue
        result = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert result.returncode == 0, f"{shlex.join(words)}:\n{result.stdout}{result.stderr}"
        outputs.append(result.stdout + result.stderr)
    return outputs


async def test_the_schema_then_the_sample_data_steps_run_as_written(shell: Shell) -> None:
    """docs/your-own-database.md: ``createdb tw_app`` and ``exporter/sql/schema.sql``, then the
    sample data section's four lines on a database of its own, then its lines again on the database
    the schema file made (what a reader who followed both sections has)."""
    text = PAGE.read_text()
    schema_steps = sh_blocks(text, "The schema: `exporter/sql/schema.sql`")
    sample_steps = sh_blocks(text, "Sample data: `tw-exporter sample-data`")
    assert [w[:2] for w in sample_steps] == [
        ["createdb", "tw_sample"],
        ["tw-exporter", "sample-data"],
        ["tw-exporter", "sample-data"],
        ["tw-exporter", "check"],
    ]
    assert "--keep-adding" in sample_steps[2]

    await walk(shell, schema_steps)
    outputs = await walk(shell, sample_steps)
    assert "loaded 20000 tweets" in outputs[1]
    assert "nothing loaded" in outputs[2] and "adding tweets, likes" in outputs[2]
    assert "check: ok" in outputs[3]

    # The same sample-data lines on the tables the schema file made (empty: loaded into them).
    on_app = [[w.replace("/tw_sample", "/tw_app") for w in words] for words in sample_steps[1:]]
    outputs = await walk(shell, on_app)
    assert "loading 20000 tweets into the existing empty tables" in outputs[0]
    assert "check: ok" in outputs[2]
    app = shell.server.dsn_for(shell.databases["tw_app"])
    assert await count(app, "tw_tweets") > 20000


# ------------------------------------------------------------------ the PgBouncer section

POOLING = REPO / "docs" / "running-against-your-database.md"
QUERIES_FILE = REPO / "examples" / "queries" / "activity.yml"  # 7 queries: all 5 connections
BUILTINS = {collector.name for collector in COLLECTORS}


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (any level), up to the next heading of its level or above."""
    level = len(heading.split(" ", 1)[0])
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n#{{1,{level}}} ", body, maxsplit=1)[0]


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, content)`` of each fenced block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def ini_settings(block: str) -> dict[str, str]:
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in block.splitlines())
        if _ and not key.strip().startswith(";")
    )


def test_the_documented_pool_sizes_are_the_codes() -> None:
    """The section's ``default_pool_size`` values follow from ``--max-connections``' default
    (and the one connection ``check`` holds), not from a number typed once."""
    text = section(POOLING.read_text(), "### Setting PgBouncer up")
    ini = [ini_settings(content) for lang, content in blocks(text) if lang == "ini"]
    assert ini[0]["pool_mode"] == "transaction" and ini[1]["pool_mode"] == "session"
    assert int(ini[0]["default_pool_size"]) == cfg.DEFAULT_MAX_CONNECTIONS
    assert int(ini[1]["default_pool_size"]) == cfg.DEFAULT_MAX_CONNECTIONS + CHECK_CONNECTIONS


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_the_pgbouncer_section_runs_as_written(
    mode: str,
    shell: Shell,
    exporter_proc: StartExporter,
) -> None:
    """Every step of "Setting PgBouncer up", pasted in order (the session variant with its two
    changed lines), with Debian's PgBouncer: the role, the files, PgBouncer as its own user,
    ``check`` and ``run`` through it. Then the pool size it gives holds: with a queries file
    that keeps all ``--max-connections`` busy, ``check`` beside the exporter still passes and
    no query fails."""
    server = shell.server
    backend = Backend.from_dsn(server.dsn)
    # The database the earlier page made: tw_app with the schema and the sample data.
    await shell.createdb("tw_app")
    app = server.dsn_for(shell.databases["tw_app"])
    await walk(shell, [["tw-exporter", "sample-data", "--dsn", app]])
    role = f"tw_exporter_{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: one of our own
    shell.roles.append(role)
    port = free_port()
    text = section(POOLING.read_text(), "### Setting PgBouncer up")
    steps = blocks(text)
    ini_blocks = [content for lang, content in steps if lang == "ini"]
    env: dict[str, str] = {}
    directory: Path | None = None
    bouncer: subprocess.Popen[str] | None = None
    account = os_account(backend)

    def swap(word: str) -> str:
        word = word.replace("tw_exporter", role).replace(":6432/", f":{port}/")
        return shell.dsn(word)

    try:
        for lang, content in steps:
            if lang == "ini" and content is ini_blocks[0]:
                assert directory is not None, (
                    "the page writes pgbouncer.ini before making its directory"
                )
                settings = ini_settings(content)
                if mode == "session":
                    settings.update(ini_settings(ini_blocks[1]))
                write_ini(directory / "pgbouncer.ini", content, settings, backend, port, shell)
                continue
            if lang != "sh":
                continue
            for line in content.splitlines():
                words = [swap(w) for w in shlex.split(line, comments=True)]
                if not words:
                    continue
                if words[:2] == ["mkdir", "-p"]:
                    directory = Path(tempfile.mkdtemp(prefix="tw-doc-pgbouncer-"))
                    directory.chmod(0o755)  # the account PgBouncer runs as reads it
                elif words[0] == "export":
                    name, _, value = words[1].partition("=")
                    env[name] = value
                elif "exporter/sql/least-privilege.sql" in words:
                    assert not any(w.startswith("role=") for w in words), words
                    await run_step(
                        [*words[:-2], "-v", f"role={role}", *words[-2:]], shell, directory, env
                    )
                elif words[0] == "runuser":
                    assert words[1:3] == ["-u", "postgres"], words
                    assert directory is not None
                    bouncer = run_page_pgbouncer(words[4:], account, directory)
                elif words[:2] == ["tw-exporter", "run"]:
                    assert bouncer is not None, "the page runs the exporter before PgBouncer"
                    await run_and_check_beside(words, env, exporter_proc, app, role)
                else:
                    await run_step(words, shell, directory, env)
        assert bouncer is not None and bouncer.poll() is None
    finally:
        if bouncer is not None:
            stop_pgbouncer(bouncer)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def write_ini(
    path: Path,
    content: str,
    settings: dict[str, str],
    backend: Backend,
    port: int,
    shell: Shell,
) -> None:
    """The page's pgbouncer.ini with the session lines applied; only where PostgreSQL and
    PgBouncer listen (a free port) and the database's real name differ."""
    database = shell.databases["tw_app"]
    lines = []
    for line in content.splitlines():
        key = line.partition("=")[0].strip()
        if line.startswith("tw_app = "):
            assert line == "tw_app = host=127.0.0.1 port=5432 dbname=tw_app", line
            line = f"tw_app = host={backend.host} port={backend.port} dbname={database}"
        elif key == "listen_port":
            line = f"listen_port = {port}"
        elif key in settings and "=" in line:
            line = f"{key} = {settings[key]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)


async def run_step(
    words: list[str], shell: Shell, directory: Path | None, env: dict[str, str]
) -> None:
    """One pasted line in the PgBouncer directory (``> file`` redirection included)."""
    target = None
    if ">" in words:
        words, target = words[: words.index(">")], words[words.index(">") + 1]
    argv = shell.argv(words) if words[0] in ("tw-exporter", "psql") else words
    result = await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=directory or REPO,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, f"{shlex.join(words)}:\n{result.stdout}{result.stderr}"
    if target is not None:
        assert directory is not None
        (directory / target).write_text(result.stdout)
    if words[:2] == ["tw-exporter", "check"]:
        assert "check: ok" in result.stdout, result.stdout


def run_page_pgbouncer(
    argv: list[str], account: pwd.struct_passwd | None, directory: Path
) -> subprocess.Popen[str]:
    """The page's ``pgbouncer`` command line, as the account it runs as, once it listens."""
    binary = require_tool("pgbouncer", PGBOUNCER, hint="Debian package pgbouncer")
    assert argv[0] == str(PGBOUNCER), argv
    return start_pgbouncer([binary, *argv[1:]], directory, account)[0]


async def run_and_check_beside(
    words: list[str], env: dict[str, str], exporter_proc: StartExporter, app: str, role: str
) -> None:
    """``tw-exporter run`` as the page gives it (its port made free) plus a queries file of 7
    queries, so the pool opens all ``--max-connections``; then ``check`` beside it."""
    args = [w if w != "127.0.0.1:10093" else "127.0.0.1:0" for w in words[2:]]
    proc = exporter_proc(*args, "--queries-file", str(QUERIES_FILE), "--interval", "3", env=env)

    async def all_connections_open() -> bool:
        conn = await asyncpg.connect(app)
        try:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
            )
        finally:
            await conn.close()
        return bool(held == cfg.DEFAULT_MAX_CONNECTIONS)

    await wait_until(all_connections_open, timeout=30)
    result = await asyncio.to_thread(
        subprocess.run,
        exporter_command("check", "--queries-file", str(QUERIES_FILE)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **env},
    )
    assert "check: ok" in result.stdout, result.stdout + result.stderr

    def runs_without_errors() -> dict[tuple[tuple[str, str], ...], float]:
        text = http_get(proc.url + "/metrics").text
        errors = series(text, "tw_exporter_query_errors_total")
        assert not any(errors.values()), (
            {k: v for k, v in errors.items() if v},
            proc.logs(),
        )
        return series(text, "tw_exporter_query_duration_seconds_count")

    # Every query ran (the file's own intervals are minutes: once), and the built-in ones
    # (every 3 s) ran again after check, all without an error.
    after_check = runs_without_errors()
    builtins = {k: v for k, v in after_check.items() if dict(k)["query"] in BUILTINS}
    assert len(after_check) == 7 and len(builtins) == 3, after_check

    def ran_again() -> bool:
        runs = runs_without_errors()
        return all(runs[k] > v for k, v in builtins.items())

    await asyncio.to_thread(wait_until_sync, ran_again, 30)

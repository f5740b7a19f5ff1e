"""The docs' shell steps run as written, in their order, on a real server (issue 25).

A newcomer pastes the ``sh`` blocks of docs/your-own-database.md top to bottom; each must work
(``--keep-adding`` until its numbers move, then Ctrl-C). The test runs the lines themselves,
taken from the page, with only the database's address swapped for the test server's: a page
that shows a step the code refuses fails here.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from tests.conftest import REPO, PgServer, exporter_command, wait_until
from tests.helpers import require_tool

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

    def dsn(self, word: str) -> str:
        return DOC_DSN.sub(lambda m: self.server.dsn_for(self.databases[m.group(1)]), word)

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
        finally:
            await admin.close()


@pytest.fixture
async def shell(pg_server: PgServer) -> AsyncIterator[Shell]:
    shell = Shell(pg_server)
    yield shell
    await shell.drop_all()


async def run_until(argv: list[str], moved: Callable[[], Awaitable[bool]]) -> str:
    """Start a long-running step, wait until ``moved()`` holds, then Ctrl-C it: exit 0."""
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
    """docs/your-own-database.md: ``createdb tw_app`` and ``sql/schema.sql``, then the sample
    data section's four lines on a database of its own, then its lines again on the database
    the schema file made (what a reader who followed both sections has)."""
    text = PAGE.read_text()
    schema_steps = sh_blocks(text, "The schema: `sql/schema.sql`")
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

    # The same sample-data lines on the tables sql/schema.sql made (empty: loaded into them).
    on_app = [[w.replace("/tw_sample", "/tw_app") for w in words] for words in sample_steps[1:]]
    outputs = await walk(shell, on_app)
    assert "loading 20000 tweets into the existing empty tables" in outputs[0]
    assert "check: ok" in outputs[2]
    app = shell.server.dsn_for(shell.databases["tw_app"])
    assert await count(app, "tw_tweets") > 20000

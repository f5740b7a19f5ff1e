"""``exporter/sql/least-privilege.sql`` on a real server: the exporter works as that role, and
nothing more.

The role is cluster-wide, so every test creates a uniquely named one and drops it at teardown.
The script is applied once through ``psql`` (how operators run it, with ``-v`` variables) and
once more through asyncpg with the variables substituted (proving it is idempotent and that it
also works where only a driver is at hand).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from exporter.ops import dataset
from exporter.ops.schema_file import SQL_DIR
from tests.conftest import StartExporter, exporter_command, wait_until_sync
from tests.helpers import http_get, series, unavailable, value

SCRIPT = SQL_DIR / "least-privilege.sql"
PSQL = shutil.which("psql")
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


# ------------------------------------------------------------------ helpers


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_script(variables: Mapping[str, str]) -> str:
    """The script as plain SQL for a driver: psql meta-commands dropped, ``:'name'`` replaced."""
    lines = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("\\")]
    return re.sub(r":'([a-z_]+)'", lambda m: quote_literal(variables[m.group(1)]), "\n".join(lines))


def with_credentials(dsn: str, user: str, password: str) -> str:
    """``dsn`` with its user and password replaced (host, database and query kept)."""
    parts = urlsplit(dsn)
    hostinfo = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostinfo}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def apply_with_psql(admin_dsn: str, role: str, password: str) -> subprocess.CompletedProcess[str]:
    assert PSQL is not None
    return subprocess.run(
        [
            PSQL,
            admin_dsn,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"role={role}",
            "-v",
            f"password={password}",
            "-f",
            str(SCRIPT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def apply_with_driver(admin_dsn: str, variables: Mapping[str, str]) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(render_script(variables))
    finally:
        await conn.close()


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    dsn: str  # the test database, logged in as the role
    admin_dsn: str


async def _insert_rows(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO tw_users (id, username, follower_count, verified) VALUES
              (1, 'alice', 500, true), (2, 'bob', 300, false);
            INSERT INTO tw_tweets (id, user_id, like_count, created_at) VALUES
              (1, 1, 10, now() - interval '1 day'), (2, 2, 4, now() - interval '2 days');
            INSERT INTO tw_hashtags (id, tag) VALUES (1, 'python');
            INSERT INTO tw_tweet_hashtags VALUES (1, 1), (2, 1);
            -- A table the exporter has no business reading.
            CREATE TABLE tw_private_messages (id int PRIMARY KEY, body text);
            INSERT INTO tw_private_messages VALUES (1, 'secret');
            """
        )
        if await conn.fetchval("SHOW server_version_num") < "150000":
            # What the script's header tells PostgreSQL <= 14 users to do.
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await conn.close()


@pytest.fixture
async def role(seeded_db: str) -> AsyncIterator[Role]:
    """A unique least-privilege role on ``seeded_db`` (with rows), dropped at teardown."""
    await _insert_rows(seeded_db)
    name = f"tw_exporter_{uuid.uuid4().hex[:10]}"
    password = f"Lp-{secrets.token_urlsafe(12)}"
    created = Role(name, password, with_credentials(seeded_db, name, password), seeded_db)
    try:
        if PSQL is not None:
            result = apply_with_psql(seeded_db, name, password)
            assert result.returncode == 0, result.stderr
            assert password not in result.stdout + result.stderr
        # (Again) through a driver: the script must be idempotent.
        await apply_with_driver(
            seeded_db,
            {"role": name, "schema": "public", "password": password, "connection_limit": "10"},
        )
        yield created
    finally:
        admin = await asyncpg.connect(seeded_db)
        try:
            if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                await admin.execute(f'DROP OWNED BY "{name}"')
                await admin.execute(f'DROP ROLE "{name}"')
        finally:
            await admin.close()


# ------------------------------------------------------------------ the role itself


async def test_role_has_exactly_the_documented_privileges(role: Role) -> None:
    admin = await asyncpg.connect(role.admin_dsn)
    try:
        attrs = await admin.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", role.name)
        assert attrs is not None
        assert attrs["rolcanlogin"]
        for elevated in (
            "rolsuper",
            "rolcreaterole",
            "rolcreatedb",
            "rolreplication",
            "rolbypassrls",
        ):
            assert not attrs[elevated], elevated
        assert attrs["rolconnlimit"] == 10
        config = set(attrs["rolconfig"])
        assert {"default_transaction_read_only=on", "statement_timeout=10s"} <= config

        database = await admin.fetchval("SELECT current_database()")
        assert await admin.fetchval(
            "SELECT has_database_privilege($1, $2, 'CONNECT')", role.name, database
        )
        for privilege in ("CREATE", "TEMPORARY"):
            granted = await admin.fetchval(
                "SELECT count(*) FROM pg_database, aclexplode(datacl) a "
                "WHERE datname = $1 AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)"
                " AND a.privilege_type = $3",
                database,
                role.name,
                privilege,
            )
            assert granted == 0, f"{privilege} granted on the database"
        assert await admin.fetchval("SELECT has_schema_privilege($1, 'public', 'USAGE')", role.name)
        assert not await admin.fetchval(
            "SELECT has_schema_privilege($1, 'public', 'CREATE')", role.name
        )
        for table in dataset.TABLES:
            assert await admin.fetchval(
                "SELECT has_table_privilege($1, $2, 'SELECT')", role.name, table
            ), table
            for privilege in WRITE_PRIVILEGES:
                assert not await admin.fetchval(
                    "SELECT has_table_privilege($1, $2, $3)", role.name, table, privilege
                ), f"{privilege} on {table}"
        assert not await admin.fetchval(
            "SELECT has_table_privilege($1, 'tw_private_messages', 'SELECT')", role.name
        )
        assert not await admin.fetchval(
            "SELECT has_sequence_privilege($1, 'tw_users_id_seq', 'USAGE')", role.name
        )
    finally:
        await admin.close()


async def test_script_refuses_to_adopt_a_privileged_role(role: Role) -> None:
    admin = await asyncpg.connect(role.admin_dsn)
    try:
        me = await admin.fetchrow(
            "SELECT current_user AS name, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await admin.close()
    assert me is not None
    if not me["rolsuper"]:
        unavailable("the test server's admin is not a superuser")
    with pytest.raises(asyncpg.RaiseError, match="elevated attributes"):
        await apply_with_driver(
            role.admin_dsn,
            {"role": me["name"], "schema": "public", "password": "", "connection_limit": "10"},
        )


# ------------------------------------------------------------------ the exporter as the role


async def test_check_and_run_work_as_the_role(role: Role, exporter_proc: StartExporter) -> None:
    env = {"TW_EXPORTER_DSN": role.dsn}
    checked = await asyncio.to_thread(
        subprocess.run,
        exporter_command("check"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "check: ok" in checked.stdout
    assert role.password not in checked.stdout + checked.stderr

    proc = exporter_proc("--interval", "1", env=env)

    def collected() -> bool:
        text = http_get(proc.url + "/metrics").text
        # Each query runs on its own job: wait until all three have been served.
        return (
            value(text, "tw_up") == 1
            and value(text, "tw_platform_tweets", window="7d") == 2
            and bool(series(text, "tw_hashtag_tweets"))
            and bool(series(text, "tw_user_followers"))
        )

    await asyncio.to_thread(wait_until_sync, collected)
    text = http_get(proc.url + "/metrics").text
    assert series(text, "tw_user_followers") == {
        (("username", "alice"), ("verified", "true")): 500.0,
        (("username", "bob"), ("verified", "false")): 300.0,
    }
    assert series(text, "tw_hashtag_tweets") == {(("tag", "python"), ("window", "7d")): 2.0}
    for reason in ("timeout", "connection", "sql"):
        for query in ("top_users", "trending_hashtags", "platform_stats"):
            assert value(text, "tw_exporter_query_errors_total", query=query, reason=reason) == 0
    assert proc.stop() == 0
    assert role.password not in proc.logs()
    assert role.password not in text


# ------------------------------------------------------------------ and nothing else

WRITES = {
    "insert": "INSERT INTO tw_users (id, username, follower_count) VALUES (99, 'mallory', 1)",
    "update": "UPDATE tw_users SET follower_count = 0",
    "delete": "DELETE FROM tw_tweet_hashtags",
    "truncate": "TRUNCATE tw_hashtags CASCADE",
    "create_table": "CREATE TABLE tw_evil (id int)",
    "drop_table": "DROP TABLE tw_tweets CASCADE",
    "alter_table": "ALTER TABLE tw_users ADD COLUMN evil int",
    "nextval": "SELECT nextval('tw_users_id_seq')",
    "setval": "SELECT setval('tw_users_id_seq', 1000)",
    "read_other_table": "SELECT * FROM tw_private_messages",
    # Writes that need no table privilege at all (PostgreSQL 15 allows the large-object ones
    # even in a read-only transaction): the script revokes them.
    "lo_from_bytea": "SELECT lo_from_bytea(0, 'stored by the exporter role')",
    "lo_create": "SELECT lo_create(0)",
    "lo_creat": "SELECT lo_creat(-1)",
    "lo_import": "SELECT lo_import('/etc/hostname')",
    "pg_notify": "SELECT pg_notify('tw_least_privilege', 'sent by the exporter role')",
    "pg_logical_emit_message": "SELECT pg_logical_emit_message(false, 'tw', 'into the WAL')",
}
DENIED = (asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError)


async def test_role_cannot_write(role: Role) -> None:
    conn = await asyncpg.connect(role.dsn)
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await conn.fetchval("SHOW statement_timeout") == "10s"
        for name, sql in WRITES.items():
            try:
                await conn.execute(sql)
            except DENIED:
                continue
            except asyncpg.PostgresError as error:
                pytest.fail(f"{name}: expected a permission or read-only error, got {error!r}")
            pytest.fail(f"{name}: {sql!r} succeeded as the exporter role")
        # The read-only default is only a backstop: any session may turn it off. The grants
        # must stop every write on their own.
        await conn.execute("SET default_transaction_read_only = off")
        for name, sql in WRITES.items():
            try:
                await conn.execute(sql)
            except asyncpg.InsufficientPrivilegeError:
                continue
            except asyncpg.PostgresError as error:
                pytest.fail(f"{name}: expected insufficient_privilege, got {error!r}")
            pytest.fail(f"{name}: {sql!r} succeeded as the exporter role")
    finally:
        await conn.close()

    admin = await asyncpg.connect(role.admin_dsn)
    try:
        counts = [await admin.fetchval(f"SELECT count(*) FROM {t}") for t in dataset.TABLES]
        assert counts == [2, 2, 1, 2]
        assert await admin.fetchval("SELECT to_regclass('tw_evil')") is None
        assert await admin.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == 0
    finally:
        await admin.close()

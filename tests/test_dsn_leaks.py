"""No part of a DSN password in any error (issue 23, point 7).

asyncpg reads a URI with urllib, which ends the user part at the first '#', '/' or '?': a
password holding one unencoded became a port, and ``int()``'s complaint quoted the password's
first part back, from ``check`` and from ``run`` every interval. A DSN file of two lines put
the second line's password into the connect error. Each case here runs the real command and
searches everything it printed for every fragment of the password.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from exporter.config import dsn as dsn_uri
from tests.conftest import REPO, StartExporter, exporter_command, wait_until_sync
from tests.helpers import free_port

# Fragments at least this long are searched for (shorter ones occur in any log by chance).
MIN_FRAGMENT = 4
PASSWORDS = ("S3cr3tA#Frag2nd", "S3cr3tB/Frag2nd", "S3cr3tC?Frag2nd", "S3cr3tD#x/y?Frag4th@z")


def fragments(password: str) -> list[str]:
    parts = [password]
    for separator in "#/?@":
        parts += [p for part in parts for p in part.split(separator)]
    return sorted({p for p in parts if len(p) >= MIN_FRAGMENT})


def assert_no_fragment(password: str, text: str) -> None:
    for fragment in fragments(password):
        assert fragment not in text, (fragment, text)


def closed_dsn(password: str) -> str:
    """Nothing listens on the port: the connect fails, and its error is what is shown."""
    return f"postgresql://tw:{password}@127.0.0.1:{free_port()}/app"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command("check", *args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize("password", PASSWORDS)
def test_check_never_quotes_an_unencoded_password(password: str, tmp_path: Path) -> None:
    dsn = closed_dsn(password)
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn + "\n")
    for args in (("--dsn", dsn), ("--dsn-file", str(dsn_file))):
        result = check(*args, "--query-timeout", "2", "--interval", "5")
        assert result.returncode == 1, result
        # The URI was read as written: the connect reached the port and was refused.
        assert "connect: FAILED" in result.stdout and "refused" in result.stdout.lower(), result
        assert_no_fragment(password, result.stdout + result.stderr)


def test_run_never_quotes_an_unencoded_password(exporter_proc: StartExporter) -> None:
    password = PASSWORDS[-1]
    process = exporter_proc(
        "--dsn", closed_dsn(password), "--interval", "0.5", "--query-timeout", "0.5"
    )
    wait_until_sync(lambda: process.logs().count("failed (connection)") >= 6, timeout=15)
    process.stop()
    assert_no_fragment(password, process.logs())


def test_a_dsn_file_of_two_lines_is_refused_without_showing_a_line(tmp_path: Path) -> None:
    first, second = PASSWORDS[0], PASSWORDS[1]
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(closed_dsn(first) + "\n" + closed_dsn(second) + "\n")
    result = check("--dsn-file", str(dsn_file))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "has 2 lines: expected one line holding the PostgreSQL URI" in lines[0]
    assert "127.0.0.1" not in result.stderr
    for password in (first, second):
        assert_no_fragment(password, result.stdout + result.stderr)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:Pw#1@h:5x432/db", "got host 'h:5x432'"),
        ("postgresql://u:Pw#1@h:70000/db", "ports from 1 to 65535, got 70000"),
        ("postgresql://u:Pw#1@h1,,h2:x/db", "got host 'h2:x'"),
        ("postgresql://u:Pw#1@h/db?target_session_attrs=master", "got 'master'"),
        ("postgresql://u:Pw#1@h/db?connect_timeout=soon", "got 'soon'"),
        ("postgresql://u:Pw#1@h/db?a=1&&b", "name=value pairs"),
        ("postgresql://u:Pw1@h/db#frag", "without '#' after the user part"),
        ("postgresql:///db?host=a,b&port=1,2,3", "2 hosts and 3 ports"),
    ],
)
def test_each_part_is_validated_and_named_without_the_password(dsn: str, expected: str) -> None:
    with pytest.raises(dsn_uri.DsnError) as caught:
        dsn_uri.parse(dsn)
    assert expected in str(caught.value)
    assert "Pw" not in str(caught.value)


def test_per_host_uris_encode_the_password_and_keep_the_rest() -> None:
    parsed = dsn_uri.parse(
        "postgresql://tw:a#b/c?d@h1:5432,[::1]:6432/app?sslmode=disable"
        "&target_session_attrs=read-write&connect_timeout=1"
    )
    assert parsed.hosts == ("h1:5432", "[::1]:6432")
    assert parsed.target_session_attrs == "read-write"
    assert parsed.connect_timeout == dsn_uri.MIN_CONNECT_TIMEOUT  # libpq: at least 2 s
    assert (
        parsed.uri_for("[::1]:6432")
        == "postgresql://tw:a%23b%2Fc%3Fd@[::1]:6432/app?sslmode=disable"
    )
    sockets = dsn_uri.parse("postgresql://tw@/app?host=/run/postgresql&port=5433")
    assert sockets.uri_for(sockets.hosts[0]) == (
        "postgresql://tw@/app?host=%2Frun%2Fpostgresql&port=5433"
    )
    listed = dsn_uri.parse("postgresql://tw@/app?host=h1,h2&port=1,2")
    assert [listed.uri_for(h) for h in listed.hosts] == [
        "postgresql://tw@/app?host=h1&port=1",
        "postgresql://tw@/app?host=h2&port=2",
    ]


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://tw:S3cr3tA#Frag2nd/app", "S3cr3tA#Frag2nd"),  # the '@host' forgotten
        ("postgresql://tw:S3cr3tB/Frag2nd@h:5x432/app", "S3cr3tB/Frag2nd"),
        ("postgresql://tw:S3cr3tC?Frag2nd@h/app?target_session_attrs=x", "S3cr3tC?Frag2nd"),
        ("postgresql://tw:S3cr3tD#Frag2nd@h1:5432,h2:999999/app", "S3cr3tD#Frag2nd"),
        ("postgresql://tw@h/app?password=S3cr3tE#Frag2nd", "S3cr3tE#Frag2nd"),
        ("postgresql://tw@h/app?password=S3cr3tF&connect_timeout=x", "S3cr3tF"),
    ],
)
def test_a_bad_part_is_one_line_naming_it_without_the_password(dsn: str, password: str) -> None:
    result = check("--dsn", dsn)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tw-exporter: error: --dsn: invalid"), lines
    assert_no_fragment(password, result.stderr)

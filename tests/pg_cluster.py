"""Running PostgreSQL's own binaries (initdb, pg_ctl, pg_basebackup) for a private cluster: as
ourselves, or, when the tests run as root (which PostgreSQL refuses), as an OS user that may.
Shared by the TLS and replica tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import unavailable

OS_USERS = ("postgres", "embedded_postgres")  # PostgreSQL refuses to run as root


def server_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: None means "as ourselves" (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in OS_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    unavailable(f"running as root and none of the OS users {OS_USERS} exists to run PostgreSQL")


def run_as(user: pwd.struct_passwd | None, argv: Sequence[str], cwd: Path) -> None:
    command = list(argv) if user is None else ["runuser", "-u", user.pw_name, "--", *argv]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")

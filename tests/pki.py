"""Test certificates made with the openssl CLI: a CA, server, rotated and client certs."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed: {result.stderr}"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> Pair:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return Pair(directory / f"{name}.crt", directory / f"{name}.key")


def issue(directory: Path, ca: Pair, name: str, cn: str, serial: int, usage: str) -> Pair:
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(serial), "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return Pair(directory / f"{name}.crt", directory / f"{name}.key")


@dataclass(frozen=True)
class PKI:
    ca: Pair
    server: Pair  # CN=localhost, serial 1001
    rotated: Pair  # CN=rotated.localhost, serial 2002, same CA
    client: Pair  # clientAuth, signed by ca
    rogue_client: Pair  # clientAuth, signed by an unrelated CA


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to generate test certificates")
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    rogue_ca = make_ca(d, "rogue-ca")
    return PKI(
        ca=ca,
        server=issue(d, ca, "server", "localhost", 1001, "serverAuth"),
        rotated=issue(d, ca, "rotated", "rotated.localhost", 2002, "serverAuth"),
        client=issue(d, ca, "client", "scraper", 3003, "clientAuth"),
        rogue_client=issue(d, rogue_ca, "rogue-client", "intruder", 4004, "clientAuth"),
    )

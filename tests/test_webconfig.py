"""The web config (exporter.config.webconfig, web_tls, basic_auth) against real TLS handshakes on
the exporter's own server, real bcrypt and the real promtool checker.

TLS tests serve through ``MetricsServer``, whose connections upgrade themselves to TLS
(``exporter.expose.tls.start_tls``), so client certificates, protocol limits and certificate
rotation are checked on the path production runs. Certificates come from the ``openssl`` CLI
(the ``cryptography`` package is not a dependency): a CA, a server certificate, a client
certificate, a second server certificate for rotation and an unrelated CA whose client
certificate must be refused.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.collectors import QUERY_NAMES
from exporter.config.basic_auth import BasicAuth
from exporter.config.web_fields import WebConfigError
from exporter.config.web_tls import TLSConfig, TLSContextProvider
from exporter.config.webconfig import WebConfig, load_web_config
from exporter.expose.http import MetricsServer
from exporter.expose.snapshot import SnapshotStore
from tests import helpers
from tests.pki import PKI, Pair

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "web-config"


@pytest.fixture
def config_dir(tmp_path: Path, pki: PKI) -> Path:
    """A directory with server.crt/server.key/ca.crt/rotated.* next to the YAML under test."""
    for name, src in {
        "server.crt": pki.server.cert,
        "server.key": pki.server.key,
        "ca.crt": pki.ca.cert,
        "rotated.crt": pki.rotated.cert,
        "rotated.key": pki.rotated.key,
    }.items():
        shutil.copyfile(src, tmp_path / name)
    return tmp_path


def write_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


TLS_BASE = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

# ------------------------------------------------------------------ the exporter's own TLS server


class _HandshakeErrors(logging.Handler):
    """Collects the TLS handshakes the server refused: ``Connection._handshake`` logs each at
    debug level with the error (port scanners make them routine)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors += [a for a in args if isinstance(a, ssl.SSLError)]

    def reasons(self) -> list[str]:
        return [getattr(e, "reason", None) or str(e) for e in self.errors]


@dataclass
class Server:
    port: int
    handshake_errors: _HandshakeErrors


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[Server]:
    """The exporter's HTTP server (``MetricsServer``) on 127.0.0.1 with ``ctx``: every
    connection is accepted as TCP and upgraded to TLS by the connection itself
    (``exporter.expose.tls.start_tls``), as in production."""
    store = SnapshotStore(
        interval=1, queries=dict.fromkeys(QUERY_NAMES, (1.0, 3.0)), process_metrics=False
    )
    store.render()
    collector = _HandshakeErrors()
    logger = logging.getLogger("exporter.expose.http")  # the connections' logger
    old_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    server = MetricsServer(store, ssl_context=ctx)
    try:
        port = (await server.start("127.0.0.1", 0))[0][1]
        yield Server(port, collector)
    finally:
        await server.close()
        logger.removeHandler(collector)
        logger.setLevel(old_level)


@dataclass
class Fetched:
    body: bytes
    peercert: Any  # ssl.SSLSocket.getpeercert()'s dict
    version: str | None
    cipher: str | None


def fetch_blocking(port: int, client: ssl.SSLContext) -> Fetched:
    """One HTTPS request with a plain blocking ssl socket, as an ordinary client would do it."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        peercert = tls.getpeercert()
        assert peercert is not None
        info = (peercert, tls.version(), cipher and cipher[0])
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ConnectionError("the server closed the connection without answering")
    return Fetched(body, *info)


async def fetch(port: int, client: ssl.SSLContext) -> Fetched:
    """Runs the client in a thread so the asyncio server keeps serving on this loop.

    Raises ssl.SSLError (with OpenSSL's reason) or ConnectionError when the server refuses us.
    """
    return await asyncio.to_thread(fetch_blocking, port, client)


def client_context(pki: PKI, cert: Pair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def common_name(peercert: dict[str, Any]) -> str:
    return str(dict(item[0] for item in peercert["subject"])["commonName"])


def provider_for(config_dir: Path, text: str) -> TLSContextProvider:
    config = load_web_config(write_config(config_dir, text))
    assert config.tls is not None
    return TLSContextProvider(config.tls)


REFUSED = (ssl.SSLError, ConnectionError)


async def assert_refused(server: Server, client: ssl.SSLContext, reason: str) -> None:
    """The client is refused, and the server's handshake failed for `reason` (OpenSSL's)."""
    with pytest.raises(REFUSED):
        await fetch(server.port, client)
    deadline = time.monotonic() + 5
    while reason not in server.handshake_errors.reasons():
        if time.monotonic() > deadline:
            pytest.fail(f"expected server-side {reason}, got {server.handshake_errors.reasons()}")
        await asyncio.sleep(0.01)  # the server logs its side just after the client's failure


# ------------------------------------------------------------------ TLS handshakes


async def test_tls_handshake_serves_the_configured_certificate(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE)
    async with tls_server(provider.server_context) as server:
        got = await fetch(server.port, client_context(pki))
    assert got.body.startswith(b"HTTP/1.1 200 OK")
    assert got.peercert["serialNumber"] == f"{1001:04X}"
    assert common_name(got.peercert) == "localhost"
    assert got.version == "TLSv1.3"


MTLS = TLS_BASE + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"


async def test_require_and_verify_client_cert(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, MTLS)
    assert provider.server_context.verify_mode == ssl.CERT_REQUIRED
    async with tls_server(provider.server_context) as server:
        await assert_refused(server, client_context(pki), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        await assert_refused(
            server, client_context(pki, pki.rogue_client), "CERTIFICATE_VERIFY_FAILED"
        )
        got = await fetch(server.port, client_context(pki, pki.client))
    assert got.body.startswith(b"HTTP/1.1 200 OK")


async def test_require_and_verify_client_cert_over_tls12(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, MTLS)
    client = client_context(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_server(provider.server_context) as server:
        await assert_refused(server, client, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        client.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        assert (await fetch(server.port, client)).version == "TLSv1.2"


async def test_verify_client_cert_if_given(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(
        config_dir,
        TLS_BASE + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
    )
    assert provider.server_context.verify_mode == ssl.CERT_OPTIONAL
    async with tls_server(provider.server_context) as server:
        assert (await fetch(server.port, client_context(pki))).body.startswith(b"HTTP/1.1 200")
        with_cert = await fetch(server.port, client_context(pki, pki.client))
        assert with_cert.body.startswith(b"HTTP/1.1 200")
        await assert_refused(
            server, client_context(pki, pki.rogue_client), "CERTIFICATE_VERIFY_FAILED"
        )


@pytest.mark.parametrize(
    ("auth_type", "mode"),
    [
        ("NoClientCert", ssl.CERT_NONE),
        ("RequestClientCert", ssl.CERT_NONE),
        ("RequireAnyClientCert", ssl.CERT_REQUIRED),
        ("RequireClientCert", ssl.CERT_REQUIRED),
        ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
        ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_type_mapping(config_dir: Path, auth_type: str, mode: ssl.VerifyMode) -> None:
    ca = "" if mode == ssl.CERT_NONE else "  client_ca_file: ca.crt\n"
    provider = provider_for(config_dir, TLS_BASE + f"  client_auth_type: {auth_type}\n" + ca)
    assert provider.server_context.verify_mode == mode


async def test_request_client_cert_accepts_any_client(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE + "  client_auth_type: RequestClientCert\n")
    async with tls_server(provider.server_context) as server:
        for cert in (None, pki.client, pki.rogue_client):
            got = await fetch(server.port, client_context(pki, cert))
            assert got.body.startswith(b"HTTP/1.1 200")


async def test_min_version_tls13_refuses_a_tls12_client(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE + "  min_version: TLS13\n")
    old_client = client_context(pki)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_server(provider.server_context) as server:
        await assert_refused(server, old_client, "UNSUPPORTED_PROTOCOL")
        assert (await fetch(server.port, client_context(pki))).version == "TLSv1.3"


async def test_max_version_tls12(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE + "  max_version: TLS12\n")
    async with tls_server(provider.server_context) as server:
        assert (await fetch(server.port, client_context(pki))).version == "TLSv1.2"


async def test_cipher_suites_restrict_tls12(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(
        config_dir,
        TLS_BASE + "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n",
    )
    async with tls_server(provider.server_context) as server:
        got = await fetch(server.port, client_context(pki))
        assert got.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
        other = client_context(pki)
        other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        await assert_refused(server, other, "NO_SHARED_CIPHER")


async def test_single_curve_preference_is_enforced(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE + "  curve_preferences: [CurveP384]\n")
    async with tls_server(provider.server_context) as server:
        p256_only = client_context(pki)
        p256_only.set_ecdh_curve("prime256v1")
        await assert_refused(server, p256_only, "NO_SUITABLE_KEY_SHARE")
        p384_only = client_context(pki)
        p384_only.set_ecdh_curve("secp384r1")
        assert (await fetch(server.port, p384_only)).body.startswith(b"HTTP/1.1 200")


def test_prefer_server_cipher_suites_sets_the_openssl_option(config_dir: Path) -> None:
    on = provider_for(config_dir, TLS_BASE).server_context
    off = provider_for(config_dir, TLS_BASE + "  prefer_server_cipher_suites: false\n")
    assert on.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert not off.server_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


async def test_inline_pem_cert_key_and_client_ca(tmp_path: Path, pki: PKI) -> None:
    def block(path: Path) -> str:
        return "".join(f"    {line}\n" for line in path.read_text().splitlines())

    text = (
        "tls_server_config:\n"
        f"  cert: |\n{block(pki.server.cert)}"
        f"  key: |\n{block(pki.server.key)}"
        f"  client_ca: |\n{block(pki.ca.cert)}"
        "  client_auth_type: RequireAndVerifyClientCert\n"
    )
    config = load_web_config(write_config(tmp_path, text))
    assert config.tls is not None
    assert "PRIVATE KEY" not in repr(config)
    provider = TLSContextProvider(config.tls)
    async with tls_server(provider.server_context) as server:
        await assert_refused(server, client_context(pki), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        got = await fetch(server.port, client_context(pki, pki.client))
    assert got.peercert["serialNumber"] == f"{1001:04X}"


# ------------------------------------------------------------------ certificate rotation


def replace_file(src: Path, dst: Path) -> None:
    """Atomic replacement, as cert-manager/Kubernetes secret updates do."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


async def wait_for_serial(port: int, client: ssl.SSLContext, serial: int) -> Fetched:
    """New connections until one presents `serial`; fails after a deadline."""
    deadline = time.monotonic() + 15
    seen: list[str] = []
    while True:
        got = await fetch(port, client)
        if got.peercert["serialNumber"] == f"{serial:04X}":
            return got
        seen.append(got.peercert["serialNumber"])
        if time.monotonic() > deadline:
            pytest.fail(f"serial {serial:04X} never served; saw {seen[-5:]}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


async def test_rotated_certificate_is_served_without_restart(config_dir: Path, pki: PKI) -> None:
    provider = provider_for(config_dir, TLS_BASE)
    client = client_context(pki)
    async with tls_server(provider.server_context) as server:
        first = await fetch(server.port, client)
        assert first.peercert["serialNumber"] == f"{1001:04X}"
        replace_file(config_dir / "rotated.key", config_dir / "server.key")
        replace_file(config_dir / "rotated.crt", config_dir / "server.crt")
        got = await wait_for_serial(server.port, client, 2002)
    assert common_name(got.peercert) == "rotated.localhost"
    assert provider.server_context is provider.server_context  # the listener's context is stable


async def test_half_done_rotation_keeps_serving_the_old_certificate(
    config_dir: Path, pki: PKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(TLSContextProvider, "CHECK_INTERVAL", 0.0)  # check on every handshake
    provider = provider_for(config_dir, TLS_BASE)
    client = client_context(pki)
    async with tls_server(provider.server_context) as server:
        replace_file(config_dir / "rotated.crt", config_dir / "server.crt")  # key not yet
        with caplog.at_level(logging.WARNING, logger="exporter.config.webconfig"):
            got = await fetch(server.port, client)
        assert got.peercert["serialNumber"] == f"{1001:04X}"
        assert "cannot be loaded" in caplog.text
        replace_file(config_dir / "rotated.key", config_dir / "server.key")
        await wait_for_serial(server.port, client, 2002)


async def test_files_are_checked_at_most_once_per_second(
    config_dir: Path, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_for(config_dir, TLS_BASE)
    calls = 0
    real = provider._signature

    def counting() -> tuple[tuple[object, ...], ...]:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(provider, "_signature", counting)
    started = time.monotonic()
    async with tls_server(provider.server_context) as server:
        for _ in range(8):
            await fetch(server.port, client_context(pki))
    elapsed = time.monotonic() - started
    assert calls <= int(elapsed / TLSContextProvider.CHECK_INTERVAL) + 1


# ------------------------------------------------------------------ basic auth


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Counts real bcrypt.checkpw calls made by exporter.config.basic_auth."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)  # the module exporter.config.basic_auth calls
    return calls


def login_of(path: Path) -> BasicAuth:
    """The login checker the exporter builds from a web-config file (``http_security``)."""
    return BasicAuth(load_web_config(path).basic_auth_users)


def users_config(tmp_path: Path, **passwords: str) -> BasicAuth:
    lines = ["basic_auth_users:"]
    for user, password in passwords.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"  {user}: {hashed}")
    return login_of(write_config(tmp_path, "\n".join(lines) + "\n"))


def test_basic_auth_right_wrong_unknown_and_cache(
    tmp_path: Path, checkpw_calls: list[bytes]
) -> None:
    config = users_config(tmp_path, alice="s3cret", bob="hunter2")
    assert set(config.users) == {"alice", "bob"}
    assert config.authorize(basic("alice", "s3cret"))
    assert len(checkpw_calls) == 1
    assert config.authorize(basic("alice", "s3cret"))  # cache hit: no bcrypt
    assert config.authorize(basic("alice", "s3cret"))
    assert len(checkpw_calls) == 1

    assert not config.authorize(basic("alice", "wrong"))
    assert not config.authorize(basic("alice", "wrong"))  # failures are not cached
    assert len(checkpw_calls) == 3
    assert not config.authorize(basic("bob", "s3cret"))  # another user's password
    assert len(checkpw_calls) == 4

    assert not config.authorize(basic("mallory", "s3cret"))  # unknown user: still one bcrypt
    assert len(checkpw_calls) == 5
    assert checkpw_calls[-1] not in config.users.values()
    assert checkpw_calls[-1][:7] == config.users["alice"][:7]  # same cost

    assert config.authorize(basic("bob", "hunter2"))
    assert config.authorize(b"basic " + base64.b64encode(b"bob:hunter2"))  # scheme is caseless
    assert len(checkpw_calls) == 6


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer " + base64.b64encode(b"alice:s3cret"),
        b"Basic !!!not-base64!!!",
        b"Basic " + base64.b64encode(b"alice-without-colon"),
        b"Basic " + base64.b64encode(b"\xff\xfe:s3cret"),
        b"Basic " + base64.b64encode(b"alice:s3cret")[:-2],
    ],
)
def test_malformed_authorization_is_refused_without_bcrypt(
    tmp_path: Path, checkpw_calls: list[bytes], header: bytes | None
) -> None:
    config = users_config(tmp_path, alice="s3cret")
    assert not config.authorize(header)
    assert checkpw_calls == []


def test_no_users_means_no_auth(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, ""))
    assert config == WebConfig(tls=None, basic_auth_users={}, headers=())
    assert not config.auth_required
    login = BasicAuth(config.basic_auth_users)
    assert login.authorize(None)
    assert login.authorize(b"Basic garbage")


def test_cache_is_bounded(
    tmp_path: Path, checkpw_calls: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BasicAuth, "CACHE_SIZE", 2)
    config = users_config(tmp_path, a="pa", b="pb", c="pc")
    for user in "abc":
        assert config.authorize(basic(user, "p" + user))
    assert len(checkpw_calls) == 3
    assert config.authorize(basic("c", "pc"))  # still cached
    assert len(checkpw_calls) == 3
    assert config.authorize(basic("a", "pa"))  # evicted: bcrypt again
    assert len(checkpw_calls) == 4


def test_cache_never_lets_a_changed_password_through(
    tmp_path: Path, checkpw_calls: list[bytes]
) -> None:
    config = users_config(tmp_path, alice="s3cret")
    assert config.authorize(basic("alice", "s3cret"))
    assert not config.authorize(basic("alice", "s3cret2"))
    assert not config.authorize(basic("alice", "s3cre"))
    assert len(checkpw_calls) == 3


def test_a_reloaded_config_keeps_the_logins_of_users_whose_hash_is_unchanged(
    tmp_path: Path, checkpw_calls: list[bytes]
) -> None:
    """What a reload does (``MetricsServer.authenticator`` adopts the old cache): alice's
    hash is the same in the new file, bob's changed, carol was removed."""
    old = users_config(tmp_path, alice="a-pw", bob="b-pw", carol="c-pw")
    for user, password in (("alice", "a-pw"), ("bob", "b-pw"), ("carol", "c-pw")):
        assert old.authorize(basic(user, password))
    new_bob = bcrypt.hashpw(b"b-pw", bcrypt.gensalt(rounds=4)).decode()
    text = f"basic_auth_users:\n  alice: {old.users['alice'].decode()}\n"
    new = login_of(write_config(tmp_path, text + f"  bob: {new_bob}\n"))
    new.adopt_cache(old)
    assert new.check_cached(basic("alice", "a-pw")) is True
    assert new.check_cached(basic("bob", "b-pw")) is None  # bcrypt against the new hash
    assert new.check_cached(basic("carol", "c-pw")) is None  # unknown now: decoy bcrypt
    assert list(new._verified) == ["alice"]


def test_passwords_beyond_72_bytes_behave_like_go_and_htpasswd(tmp_path: Path) -> None:
    """bcrypt reads 72 bytes; Go's x/crypto/bcrypt (exporter-toolkit) ignores the rest too."""
    long_password = "x" * 72 + "tail"
    config = users_config(tmp_path, alice="x" * 72)
    assert config.authorize(basic("alice", long_password))
    assert not config.authorize(basic("alice", "x" * 71))


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_hash_prefixes_from_python_bcrypt_are_accepted(tmp_path: Path, prefix: bytes) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4, prefix=prefix)).decode()
    config = login_of(write_config(tmp_path, f"basic_auth_users:\n  u: {hashed}\n"))
    assert config.authorize(basic("u", "pw"))
    y_hash = "$2y$" + hashed[4:]  # htpasswd's prefix, same algorithm
    config = login_of(write_config(tmp_path, f"basic_auth_users:\n  u: '{y_hash}'\n"))
    assert config.authorize(basic("u", "pw"))


# ------------------------------------------------------------------ parsing


def test_empty_and_comment_only_files_mean_no_tls_no_auth(tmp_path: Path) -> None:
    for text in ("", "# nothing\n", "tls_server_config:\nbasic_auth_users:\nhttp_server_config:\n"):
        config = load_web_config(write_config(tmp_path, text))
        assert config.tls is None
        assert dict(config.basic_auth_users) == {}
        assert config.headers == ()
        assert config.http2 is True


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "conf").mkdir()
    shutil.copyfile(pki.server.cert, tmp_path / "certs" / "s.crt")
    shutil.copyfile(pki.server.key, tmp_path / "certs" / "s.key")
    shutil.copyfile(pki.ca.cert, tmp_path / "certs" / "ca.crt")
    path = write_config(
        tmp_path / "conf",
        "tls_server_config:\n  cert_file: ../certs/s.crt\n  key_file: ../certs/s.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ../certs/ca.crt\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "certs" / "s.crt"
    assert config.tls.key_file == tmp_path / "certs" / "s.key"
    assert config.tls.client_ca_file == tmp_path / "certs" / "ca.crt"
    assert config.tls.watched_files == (
        config.tls.cert_file,
        config.tls.key_file,
        config.tls.client_ca_file,
    )


def test_full_tls_section_is_parsed(config_dir: Path) -> None:
    config = load_web_config(
        write_config(
            config_dir,
            TLS_BASE + "  client_auth_type: RequireAndVerifyClientCert\n"
            "  client_ca_file: ca.crt\n  min_version: TLS13\n  max_version: TLS13\n"
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"
            "  prefer_server_cipher_suites: false\n"
            "  curve_preferences: [X25519, CurveP256]\n",
        )
    )
    assert config.tls == TLSConfig(
        cert_file=config_dir / "server.crt",
        key_file=config_dir / "server.key",
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=config_dir / "ca.crt",
        min_version=ssl.TLSVersion.TLSv1_3,
        max_version=ssl.TLSVersion.TLSv1_3,
        cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",),
        prefer_server_cipher_suites=False,
        curve_preferences=("X25519", "CurveP256"),
    )


def test_http_server_config_headers_and_http2(tmp_path: Path) -> None:
    config = load_web_config(
        write_config(
            tmp_path,
            "http_server_config:\n  http2: false\n  headers:\n"
            "    X-Frame-Options: sameorigin\n"
            "    X-Content-Type-Options: nosniff\n"
            "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
            "    X-XSS-Protection: 0\n"
            "    Content-Security-Policy: ''\n",
        )
    )
    assert config.http2 is False
    assert config.headers == (
        ("X-Frame-Options", "sameorigin"),
        ("X-Content-Type-Options", "nosniff"),
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("X-XSS-Protection", "0"),
    )  # the blank Content-Security-Policy means "not set"


@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    key: str | None  # the key the error must name (WebConfigError.key and message)
    promtool_rejects: bool  # promtool 2.42 (exporter-toolkit 0.8) refuses it too
    needle: str = ""  # extra text the message must contain


HASH = "$2y$04$" + "a" * 53
T = "tls_server_config"
H = "http_server_config.headers"
NEEDS_CA = "  client_auth_type: {}\n"

# fmt: off
BAD_CONFIGS = [
    # id, YAML, key named, does promtool 2.42 reject it too, extra text in the message
    Bad("top-unknown", "foo: 1\n", "foo", True),
    Bad("top-list", "- a\n", None, True, "top level"),
    Bad("yaml-syntax", "tls_server_config: [\n", None, True, "invalid YAML at line"),
    Bad("rate-limit", "rate_limit:\n  interval: 1s\n", "rate_limit", True, "not implemented"),
    Bad("tls-not-map", "tls_server_config: [a]\n", T, True),
    Bad("tls-unknown", TLS_BASE + "  bar: 1\n", f"{T}.bar", True),
    Bad("client-allowed-sans", MTLS + "  client_allowed_sans: [a]\n",
        f"{T}.client_allowed_sans", True, "not implemented"),
    Bad("no-key", "tls_server_config:\n  cert_file: server.crt\n", f"{T}.key_file", True),
    Bad("no-cert", "tls_server_config:\n  key_file: server.key\n", f"{T}.cert_file", True),
    Bad("only-min-version", "tls_server_config:\n  min_version: TLS13\n", f"{T}.cert_file", False),
    Bad("cert-and-cert-file", TLS_BASE + "  cert: abc\n", f"{T}.cert", True, "not both"),
    Bad("cert-file-int", "tls_server_config:\n  cert_file: 5\n  key_file: server.key\n",
        f"{T}.cert_file", True),
    Bad("cert-file-missing", "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
        f"{T}.cert_file", True, "nope.crt"),
    Bad("key-mismatch", "tls_server_config:\n  cert_file: server.crt\n  key_file: rotated.key\n",
        f"{T}.cert_file+key_file", True),
    Bad("cert-not-pem", "tls_server_config:\n  cert_file: web.yml\n  key_file: server.key\n",
        f"{T}.cert_file+key_file", True),
    Bad("client-auth-unknown", TLS_BASE + NEEDS_CA.format("Foo"), f"{T}.client_auth_type", True,
        "RequireAndVerifyClientCert"),
    Bad("ca-without-auth", TLS_BASE + "  client_ca_file: ca.crt\n", f"{T}.client_auth_type", True),
    Bad("verify-without-ca", TLS_BASE + NEEDS_CA.format("RequireAndVerifyClientCert"),
        f"{T}.client_ca_file", False),
    Bad("if-given-without-ca", TLS_BASE + NEEDS_CA.format("VerifyClientCertIfGiven"),
        f"{T}.client_ca_file", False),
    Bad("any-without-ca", TLS_BASE + NEEDS_CA.format("RequireAnyClientCert"),
        f"{T}.client_ca_file", False),
    Bad("ca-empty", TLS_BASE + NEEDS_CA.format("RequireAndVerifyClientCert")
        + "  client_ca_file: empty.crt\n", f"{T}.client_ca_file", False),
    Bad("min-unknown", TLS_BASE + "  min_version: TLS14\n", f"{T}.min_version", True, "TLS13"),
    Bad("max-int", TLS_BASE + "  max_version: 13\n", f"{T}.max_version", True),
    Bad("min-above-max", TLS_BASE + "  min_version: TLS13\n  max_version: TLS12\n",
        f"{T}.min_version", False),
    Bad("cipher-insecure",
        TLS_BASE + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA, TLS_AES_128_GCM_SHA256]\n",
        f"{T}.cipher_suites", True, "TLS_RSA_WITH_RC4_128_SHA"),
    Bad("cipher-openssl-name", TLS_BASE + "  cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]\n",
        f"{T}.cipher_suites", True, "ECDHE-RSA-AES128-GCM-SHA256"),
    Bad("cipher-scalar", TLS_BASE + "  cipher_suites: TLS_AES_128_GCM_SHA256\n",
        f"{T}.cipher_suites", True),
    Bad("curve-unknown", TLS_BASE + "  curve_preferences: [P256]\n", f"{T}.curve_preferences",
        True, "P256"),
    Bad("prefer-str", TLS_BASE + "  prefer_server_cipher_suites: 'yes'\n",
        f"{T}.prefer_server_cipher_suites", True),
    Bad("http-unknown", "http_server_config:\n  foo: 1\n", "http_server_config.foo", True),
    Bad("http2-str", "http_server_config:\n  http2: 'yes'\n", "http_server_config.http2", True),
    Bad("headers-list", "http_server_config:\n  headers: [a]\n", H, True),
    Bad("header-not-allowed", "http_server_config:\n  headers:\n    Server: x\n", f"{H}.Server",
        True),
    Bad("header-lowercase", "http_server_config:\n  headers:\n    x-frame-options: deny\n",
        f"{H}.x-frame-options", True),
    Bad("frame-options-value", "http_server_config:\n  headers:\n    X-Frame-Options: DENY\n",
        f"{H}.X-Frame-Options", True, "sameorigin"),
    Bad("frame-options-blank", "http_server_config:\n  headers:\n    X-Frame-Options: ''\n",
        f"{H}.X-Frame-Options", True),
    Bad("content-type-options",
        "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
        f"{H}.X-Content-Type-Options", True, "nosniff"),
    Bad("header-newline",
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\nb"\n',
        f"{H}.Content-Security-Policy", False),
    Bad("header-not-ascii",
        "http_server_config:\n  headers:\n    Content-Security-Policy: default-src \u20ac\n",
        f"{H}.Content-Security-Policy", False, "must be ASCII"),
    Bad("users-list", "basic_auth_users: [alice]\n", "basic_auth_users", True),
    Bad("hash-plaintext", "basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice", True),
    Bad("hash-cost-3", f"basic_auth_users:\n  alice: '{HASH.replace('$04$', '$03$')}'\n",
        "basic_auth_users.alice", True),
    Bad("hash-int", "basic_auth_users:\n  alice: 12345\n", "basic_auth_users.alice", True),
    Bad("hash-md5", "basic_auth_users:\n  alice: $apr1$abc$def\n", "basic_auth_users.alice", True),
    Bad("user-colon", f"basic_auth_users:\n  'a:b': '{HASH}'\n", "basic_auth_users.a:b", False),
    Bad("user-int", f"basic_auth_users:\n  123: '{HASH}'\n", "basic_auth_users", False),
    Bad("user-duplicate", f"basic_auth_users:\n  alice: '{HASH}'\n  alice: '{HASH}'\n", None,
        True, "duplicate key 'alice'"),
]
# fmt: on


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[b.id for b in BAD_CONFIGS])
def test_invalid_config_names_the_key(config_dir: Path, bad: Bad) -> None:
    (config_dir / "empty.crt").write_text("")
    path = write_config(config_dir, bad.text)
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.key == bad.key
    if bad.key is not None:
        assert bad.key in message
    assert bad.needle in message
    assert "hunter2" not in message and HASH[7:] not in message


def test_errors_never_echo_secrets(tmp_path: Path, pki: PKI) -> None:
    secret_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    cases = [
        f"basic_auth_users:\n  alice: {secret_hash}\n  bob: {secret_hash} : oops\n",  # YAML error
        f"basic_auth_users:\n  alice: {secret_hash[:-1]}\n",  # truncated hash
        "basic_auth_users:\n  alice: correct-horse-battery\n",  # a password pasted by mistake
    ]
    key_pem = pki.server.key.read_text()
    key_body = key_pem.splitlines()[1]
    cases.append(
        "tls_server_config:\n  cert: abc\n  key: |\n"
        + "".join(f"    {line}\n" for line in key_pem.splitlines())
    )
    for text in cases:
        with pytest.raises(WebConfigError) as info:
            load_web_config(write_config(tmp_path, text))
        message = str(info.value)
        for secret in (secret_hash[7:29], "correct-horse", key_body):
            assert secret not in message, message


def test_missing_and_unreadable_files_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(WebConfigError, match=r"nope\.yml"):
        load_web_config(missing)
    with pytest.raises(WebConfigError, match=re.escape(str(tmp_path))):
        load_web_config(tmp_path)  # a directory
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(WebConfigError, match=r"binary\.yml"):
        load_web_config(binary)


def test_tls_provider_fails_at_startup_not_per_handshake(config_dir: Path) -> None:
    config = load_web_config(write_config(config_dir, TLS_BASE))
    assert config.tls is not None
    (config_dir / "server.key").unlink()
    with pytest.raises(WebConfigError, match=r"tls_server_config\.key_file"):
        TLSContextProvider(config.tls)


# ------------------------------------------------------------------ promtool


@pytest.fixture(scope="session")
def promtool() -> str:
    """It checks that the examples and bcrypt hashes are valid for Prometheus' own checker."""
    return helpers.promtool()


def promtool_check(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "web-config", str(path)], capture_output=True, text=True, timeout=60
    )


def materialise_example(example: Path, directory: Path, pki: PKI) -> Path:
    """Copy an example next to real files at the relative paths it names."""
    target = directory / example.name
    shutil.copyfile(example, target)
    tls = (yaml.safe_load(example.read_text()) or {}).get("tls_server_config") or {}
    sources = {
        "cert_file": pki.server.cert,
        "key_file": pki.server.key,
        "client_ca_file": pki.ca.cert,
    }
    for key, src in sources.items():
        if key in tls:
            dst = directory / tls[key]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return target


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yml"))


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {"tls-only.yml", "basic-auth.yml", "mtls.yml"}


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
async def test_example_passes_promtool_and_loads(
    example: Path, tmp_path: Path, pki: PKI, promtool: str
) -> None:
    path = materialise_example(example, tmp_path, pki)
    result = promtool_check(promtool, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    config = load_web_config(path)
    assert config.tls is not None
    if example.name == "basic-auth.yml":
        login = BasicAuth(config.basic_auth_users)
        assert login.authorize(basic("prometheus", "change-me"))  # the password its comment names
        assert not login.authorize(basic("prometheus", "wrong"))
    if example.name == "mtls.yml":
        provider = TLSContextProvider(config.tls)
        async with tls_server(provider.server_context) as server:
            await assert_refused(server, client_context(pki), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
            got = await fetch(server.port, client_context(pki, pki.client))
            assert got.body.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_python_bcrypt_hash_is_accepted_by_promtool(
    tmp_path: Path, promtool: str, prefix: bytes
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=10, prefix=prefix)).decode()
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed}\n")
    result = promtool_check(promtool, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert login_of(path).authorize(basic("prometheus", "pw"))


PROMTOOL_AGREES = [b for b in BAD_CONFIGS if b.promtool_rejects]


@pytest.mark.parametrize("bad", PROMTOOL_AGREES, ids=[b.id for b in PROMTOOL_AGREES])
def test_promtool_rejects_what_we_reject(config_dir: Path, promtool: str, bad: Bad) -> None:
    """Parity: where exporter-toolkit refuses a file, we refuse it too (and vice versa above)."""
    path = write_config(config_dir, bad.text)
    result = promtool_check(promtool, path)
    assert result.returncode != 0, f"promtool accepted {bad.id}: {result.stdout}"


def test_promtool_accepts_the_valid_configs_we_accept(config_dir: Path, promtool: str) -> None:
    texts = [
        "",
        TLS_BASE + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"
        "  prefer_server_cipher_suites: false\n  curve_preferences: [CurveP384, X25519]\n",
        TLS_BASE + "  client_auth_type: RequestClientCert\n",
        "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
        "    X-XSS-Protection: 0\n",
    ]
    for text in texts:
        path = write_config(config_dir, text)
        load_web_config(path)
        result = promtool_check(promtool, path)
        assert result.returncode == 0, f"{text!r}: {result.stdout}{result.stderr}"


def test_submit_runs_on_its_own_bounded_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bcrypt runs on the checker's own single thread, BCRYPT_SLOTS checks at most admitted at
    once; the next is refused (None) instead of queueing, and a slot frees when a check ends."""
    import threading

    config = users_config(tmp_path, alice="s3cret")
    gate = threading.Event()
    threads: list[str] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.current_thread().name)
        gate.wait(10)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", held)
    admitted = [config.submit(basic("alice", f"wrong{i}")) for i in range(BasicAuth.BCRYPT_SLOTS)]
    assert all(future is not None for future in admitted)
    assert config.submit(basic("alice", "s3cret")) is None  # full: refused at once
    gate.set()
    assert [future.result(10) for future in admitted if future] == [False] * len(admitted)
    right = config.submit(basic("alice", "s3cret"))
    assert right is not None and right.result(10) is True
    assert set(threads) == {t for t in threads if t.startswith("bcrypt")}
    assert config.check_cached(basic("alice", "s3cret")) is True  # cached: no submit needed

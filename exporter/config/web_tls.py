"""TLS for the web config's ``tls_server_config``: its validation, the server's
:class:`ssl.SSLContext`, and certificate rotation (:class:`TLSContextProvider`).

``client_auth_type`` mapping (Go ``tls.ClientAuthType`` -> Python ``ssl.VerifyMode``)
-------------------------------------------------------------------------------------
OpenSSL, as exposed by Python's :mod:`ssl`, always verifies a client certificate it asks for and
cannot ask for one without verifying it, so only the verifying Go modes map exactly:

========================== ============= ======================================================
Go value                   Python        Notes
========================== ============= ======================================================
NoClientCert (default)     CERT_NONE     exact
RequestClientCert          CERT_NONE     Go asks but never checks the certificate; not asking
                                         is equivalent for access control
RequireAnyClientCert       CERT_REQUIRED stricter: Python cannot require a certificate without
(legacy RequireClientCert)               verifying it, so it must chain to the client CA,
                                         which is therefore required
VerifyClientCertIfGiven    CERT_OPTIONAL exact; client CA required
RequireAndVerifyClientCert CERT_REQUIRED exact; client CA required
========================== ============= ======================================================

Other limits of Python's :mod:`ssl`
-----------------------------------
* ``cipher_suites`` are translated from Go to OpenSSL names and apply to TLS 1.2 and below; the
  TLS 1.3 names are accepted and ignored (Go ignores them as well; Python cannot set TLS 1.3
  suites). Only the names Go's ``tls.CipherSuites()`` returns are accepted, as upstream.
* ``curve_preferences``: Python can restrict key exchange to a single group only
  (``SSLContext.set_ecdh_curve``). One curve is applied exactly; with several, OpenSSL's default
  group list (which contains all four Go curves) is kept and the order cannot be imposed.
* ``min_version: TLS10``/``TLS11`` are set, but OpenSSL 3's default security level may still
  refuse those protocol versions.
* Certificates are re-read when their files change (see :class:`TLSContextProvider`); the rest of
  the file (users, client-auth type, versions) is read at start-up, unlike exporter-toolkit which
  re-reads the whole file on every request.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from exporter.config.web_fields import (
    WebConfigError,
    boolean,
    check_keys,
    choice,
    mapping,
    string,
    string_list,
)

# The logger's name predates this module (it was webconfig's): operators' log filters keep working.
log = logging.getLogger("exporter.config.webconfig")

# --- vocabulary, taken from exporter-toolkit's web/tls_config.go ------------------------------

_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

_CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,  # exporter-toolkit's legacy alias of the above
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_NEEDING_CA = frozenset(
    {
        "RequireAnyClientCert",
        "RequireClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    }
)

# Go's tls.CipherSuites() names -> OpenSSL names. None: a TLS 1.3 suite (not configurable).
_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}

# Go tls.CurveID names -> OpenSSL group names. The ML-KEM hybrids exist in exporter-toolkit
# built with Go >= 1.26; they apply only where the local OpenSSL knows them.
_CURVES: dict[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
    "SecP256r1MLKEM768": "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024": "SecP384r1MLKEM1024",
}


def _no_password() -> bytes:
    """Password callback for load_cert_chain: never prompt on a TTY for an encrypted key."""
    return b""


@contextmanager
def _pem_paths(*pems: str) -> Iterator[list[str]]:
    """Expose in-memory PEM text as file paths, because ``load_cert_chain`` only takes paths.

    Uses an anonymous memory file on Linux so that an inline private key never touches a disk;
    elsewhere a private (0700) temporary directory, removed straight after loading.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds: list[int] = []
        try:
            for pem in pems:
                fd = os.memfd_create("tw-exporter-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, pem.encode())
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="tw-exporter-pem-") as tmp:
        paths = []
        for i, pem in enumerate(pems):
            path = Path(tmp, f"{i}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(pem)
            paths.append(str(path))
        yield paths


def _check_readable(path: Path, key: str) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise WebConfigError(f"cannot read {path}: {exc.strerror or exc}", key) from None


@dataclass(frozen=True)
class TLSConfig:
    """The parsed ``tls_server_config`` section; file paths are absolute.

    Exactly one of ``cert_file``/``cert`` and one of ``key_file``/``key`` is set;
    ``client_auth_type`` is the exporter-toolkit name (see the module docstring for how it maps
    onto :class:`ssl.VerifyMode`).
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        """What Python's ssl does for ``client_auth_type`` (module docstring has the table)."""
        return _CLIENT_AUTH[self.client_auth_type]

    @property
    def watched_files(self) -> tuple[Path, ...]:
        """Files whose change triggers a reload of the TLS context."""
        files = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(f for f in files if f is not None)

    def build_context(self) -> ssl.SSLContext:
        """A new server-side SSLContext, reading the certificate, key and CA files now.

        Raises :class:`WebConfigError` naming the key whose file or value is unusable.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        openssl_ciphers = [c for c in (_CIPHER_SUITES[n] for n in self.cipher_suites) if c]
        if openssl_ciphers:
            try:
                ctx.set_ciphers(":".join(openssl_ciphers))
            except ssl.SSLError:
                raise WebConfigError(
                    "none of the cipher suites is available in this OpenSSL build",
                    "tls_server_config.cipher_suites",
                ) from None
        if len(self.curve_preferences) == 1:
            name = self.curve_preferences[0]
            try:
                ctx.set_ecdh_curve(_CURVES[name])
            except (ValueError, ssl.SSLError):
                raise WebConfigError(
                    f"curve {name!r} is not supported by this OpenSSL build",
                    "tls_server_config.curve_preferences",
                ) from None
        ctx.set_alpn_protocols(["http/1.1"])
        self._load_key_pair(ctx)
        ctx.verify_mode = self.verify_mode
        self._load_client_ca(ctx)
        return ctx

    def _load_key_pair(self, ctx: ssl.SSLContext) -> None:
        cert_key = "tls_server_config.cert_file" if self.cert_file else "tls_server_config.cert"
        key_key = "tls_server_config.key_file" if self.key_file else "tls_server_config.key"
        if self.cert_file:
            _check_readable(self.cert_file, cert_key)
        if self.key_file:
            _check_readable(self.key_file, key_key)
        inline = [pem for pem in (self.cert, self.key) if pem is not None]
        try:
            with _pem_paths(*inline) as tmp_paths:
                it = iter(tmp_paths)
                cert_path = str(self.cert_file) if self.cert_file else next(it)
                key_path = str(self.key_file) if self.key_file else next(it)
                ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            raise WebConfigError(
                f"cannot load the certificate/key pair ({exc.reason or exc}); expected a PEM "
                "certificate and the matching unencrypted PEM private key",
                f"{cert_key}+{key_key.removeprefix('tls_server_config.')}",
            ) from None
        except OSError as exc:
            raise WebConfigError(f"cannot load: {exc.strerror or exc}", cert_key) from None

    def _load_client_ca(self, ctx: ssl.SSLContext) -> None:
        if self.client_ca_file is None and self.client_ca is None:
            return
        key = (
            "tls_server_config.client_ca_file"
            if self.client_ca_file
            else "tls_server_config.client_ca"
        )
        try:
            if self.client_ca_file is not None:
                _check_readable(self.client_ca_file, key)
                ctx.load_verify_locations(cafile=str(self.client_ca_file))
            else:
                ctx.load_verify_locations(cadata=self.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise WebConfigError(
                f"no usable PEM CA certificate ({getattr(exc, 'reason', None) or exc})", key
            ) from None


def parse_tls(raw: object, base_dir: Path) -> TLSConfig | None:
    """The ``tls_server_config`` section, relative paths resolved against ``base_dir``; None
    when the section is absent or empty (plain HTTP). Files are not read here."""
    parent = "tls_server_config"
    section = mapping(raw, parent)
    if not section:
        return None
    check_keys(section, _TLS_KEYS, parent)

    def path(name: str) -> Path | None:
        value = string(section, name, parent)
        return None if value is None else Path(os.path.abspath(base_dir / value))

    cert_file, key_file, ca_file = path("cert_file"), path("key_file"), path("client_ca_file")
    cert, key, ca = (string(section, n, parent) for n in ("cert", "key", "client_ca"))
    for inline, file_, name in (
        (cert, cert_file, "cert"),
        (key, key_file, "key"),
        (ca, ca_file, "client_ca"),
    ):
        if inline is not None and file_ is not None:
            raise WebConfigError(
                f"set either {name} (inline PEM) or {name}_file, not both", f"{parent}.{name}"
            )
    if cert is None and cert_file is None:
        raise WebConfigError(
            "required when tls_server_config is set (or an inline PEM 'cert')",
            f"{parent}.cert_file",
        )
    if key is None and key_file is None:
        raise WebConfigError(
            "required when tls_server_config is set (or an inline PEM 'key')", f"{parent}.key_file"
        )

    auth = string(section, "client_auth_type", parent) or "NoClientCert"
    choice(auth, _CLIENT_AUTH, f"{parent}.client_auth_type")
    has_ca = ca is not None or ca_file is not None
    if auth == "NoClientCert" and has_ca:
        raise WebConfigError(
            "a client CA is configured but client_auth_type is NoClientCert; set "
            "client_auth_type: RequireAndVerifyClientCert (or remove the CA)",
            f"{parent}.client_auth_type",
        )
    if auth in _CLIENT_AUTH_NEEDING_CA and not has_ca:
        raise WebConfigError(
            f"required when client_auth_type is {auth} (the CA that signs client certificates)",
            f"{parent}.client_ca_file",
        )

    versions: dict[str, ssl.TLSVersion] = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = string(section, name, parent) or default
        choice(value, _TLS_VERSIONS, f"{parent}.{name}")
        versions[name] = _TLS_VERSIONS[value]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError("must not be above max_version", f"{parent}.min_version")

    ciphers = string_list(section, "cipher_suites", parent)
    unknown = [c for c in ciphers if c not in _CIPHER_SUITES]
    if unknown:
        raise WebConfigError(
            f"unknown cipher suite(s) {', '.join(unknown)} (expected Go tls.CipherSuites() names: "
            f"{', '.join(_CIPHER_SUITES)})",
            f"{parent}.cipher_suites",
        )
    curves = string_list(section, "curve_preferences", parent)
    unknown = [c for c in curves if c not in _CURVES]
    if unknown:
        raise WebConfigError(
            f"unknown curve(s) {', '.join(unknown)} (expected: {', '.join(_CURVES)})",
            f"{parent}.curve_preferences",
        )

    return TLSConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert=cert,
        key=key,
        client_auth_type=auth,
        client_ca_file=ca_file,
        client_ca=ca,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=boolean(section, "prefer_server_cipher_suites", parent, True),
        curve_preferences=tuple(curves),
    )


class TLSContextProvider:
    """Builds an ssl.SSLContext from TLSConfig and re-reads cert_file/key_file/client_ca_file
    when their mtime/size change (certificate rotation without restart).

    ``loop.create_server(ssl=...)`` takes one context for the lifetime of the listener, so the
    server gets a stable *front* context (:attr:`server_context`) whose ``sni_callback`` runs on
    every ClientHello (with or without SNI). At most once per :attr:`CHECK_INTERVAL` seconds the
    callback stats the watched files; when their mtime, size or inode changed it builds a fresh
    context and switches the connection to it (``ssl_object.context = ...``), which replaces the
    certificate, key and client-CA store for that handshake. Protocol versions, verify mode and
    other per-connection settings still come from the front context, which is fine because
    only the files are reloaded, never the YAML.

    A rotation caught half-way (new certificate, old key) fails to load: the previous context
    stays in use, a warning is logged once, and the files are tried again on the next change.
    The callback never raises, so a broken reload cannot break handshakes.
    """

    CHECK_INTERVAL: ClassVar[float] = 1.0

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        signature = self._signature()
        front = tls.build_context()  # raises WebConfigError: fail at start-up, not per handshake
        front.sni_callback = self._on_client_hello
        self._front = front
        self._current = front
        self._current_signature = signature
        self._failed_signature: tuple[tuple[object, ...], ...] | None = None
        self._next_check = time.monotonic() + self.CHECK_INTERVAL

    @property
    def server_context(self) -> ssl.SSLContext:
        """The context to pass to ``loop.create_server(ssl=...)``."""
        return self._front

    def _signature(self) -> tuple[tuple[object, ...], ...]:
        out: list[tuple[object, ...]] = []
        for path in self._tls.watched_files:
            try:
                st = path.stat()  # follows symlinks, e.g. Kubernetes' ..data swaps
            except OSError as exc:
                out.append((str(path), "error", exc.errno))
            else:
                out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _refresh(self) -> ssl.SSLContext:
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return self._current
            self._next_check = now + self.CHECK_INTERVAL
            signature = self._signature()
            if signature in (self._current_signature, self._failed_signature):
                return self._current
            try:
                ctx = self._tls.build_context()
            except WebConfigError as exc:
                self._failed_signature = signature
                log.warning(
                    "TLS files changed but cannot be loaded, keeping the previous ones: %s", exc
                )
                return self._current
            self._current, self._current_signature = ctx, signature
            self._failed_signature = None
            log.info("reloaded TLS certificate files after a change on disk")
            return ctx

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        try:
            ctx = self._refresh()
            if ctx is not self._front:
                ssl_object.context = ctx
        except Exception:  # a callback exception would abort the handshake with no clear cause
            log.exception(
                "TLS certificate reload check failed; continuing with the current certificate"
            )
